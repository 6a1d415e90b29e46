//! What the impact processors compare: which metrics, and how long the baseline and after
//! windows are per event type. Parsed from flags/environment (`PULSELINE_IMPACT_METRICS`,
//! `PULSELINE_IMPACT_WINDOWS`); the defaults are the product's documented rules.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::MINUTE;

/// The discrete quantity metrics compared by default.
pub const DEFAULT_METRICS: &[&str] = &[
    "HEART_RATE",
    "HEART_RATE_VARIABILITY_SDNN",
    "RESPIRATORY_RATE",
    "OXYGEN_SATURATION",
    "BLOOD_GLUCOSE",
    "BLOOD_PRESSURE_SYSTOLIC",
    "BLOOD_PRESSURE_DIASTOLIC",
];

/// The two windows around an event: baseline `[start - baseline, start)`, after
/// `[end, end + after)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub baseline_minutes: u32,
    pub after_minutes: u32,
}

impl Windows {
    pub const DEFAULT: Windows = Windows {
        baseline_minutes: 60,
        after_minutes: 120,
    };

    pub fn baseline(self) -> i64 {
        i64::from(self.baseline_minutes) * MINUTE
    }

    pub fn after(self) -> i64 {
        i64::from(self.after_minutes) * MINUTE
    }
}

/// The metrics and windows of the impact processors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpactConfig {
    metrics: Vec<String>,
    default_windows: Windows,
    windows: BTreeMap<String, Windows>,
}

impl Default for ImpactConfig {
    fn default() -> Self {
        Self {
            metrics: DEFAULT_METRICS.iter().map(|m| (*m).to_owned()).collect(),
            default_windows: Windows::DEFAULT,
            windows: BTreeMap::new(),
        }
    }
}

impl ImpactConfig {
    /// Replaces the compared metrics (codes as in the metric catalog).
    pub fn with_metrics(mut self, metrics: MetricList) -> Self {
        self.metrics = metrics.0;
        self
    }

    /// Overrides windows per event type (`default` sets the fallback).
    pub fn with_windows(mut self, windows: WindowRules) -> Self {
        for (event_type, w) in windows.0 {
            if event_type == "default" {
                self.default_windows = w;
            } else {
                self.windows.insert(event_type, w);
            }
        }
        self
    }

    pub fn metrics(&self) -> impl Iterator<Item = &String> {
        self.metrics.iter()
    }

    pub fn tracks(&self, metric: &str) -> bool {
        self.metrics.iter().any(|m| m == metric)
    }

    pub fn windows(&self, event_type: &str) -> Windows {
        self.windows
            .get(event_type)
            .copied()
            .unwrap_or(self.default_windows)
    }

    /// The longest baseline and after windows of any event type (index query bounds).
    pub fn max_windows(&self) -> (i64, i64) {
        self.windows
            .values()
            .chain([&self.default_windows])
            .fold((0, 0), |(b, a), w| (b.max(w.baseline()), a.max(w.after())))
    }
}

/// `HEART_RATE,BLOOD_GLUCOSE`: the metrics to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricList(Vec<String>);

impl FromStr for MetricList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let metrics: Vec<String> = s
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        if metrics.is_empty() {
            return Err("the impact metric list is empty".into());
        }
        if let Some(bad) = metrics.iter().find(|m| {
            !m.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        }) {
            return Err(format!("`{bad}` is not a metric code (UPPER_SNAKE)"));
        }
        Ok(Self(metrics))
    }
}

/// `caffeine=60:120,workout=30:180,default=60:120`: baseline and after minutes per event
/// type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRules(Vec<(String, Windows)>);

impl FromStr for WindowRules {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for rule in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let parse = || -> Option<(String, Windows)> {
                let (event_type, minutes) = rule.split_once('=')?;
                let (b, a) = minutes.split_once(':')?;
                let w = Windows {
                    baseline_minutes: b.trim().parse().ok()?,
                    after_minutes: a.trim().parse().ok()?,
                };
                let sane = (1..=24 * 60).contains(&w.baseline_minutes)
                    && (1..=24 * 60).contains(&w.after_minutes);
                sane.then(|| (event_type.trim().to_owned(), w))
            };
            rules.push(parse().ok_or_else(|| {
                format!(
                    "`{rule}` is not `type=baselineMinutes:afterMinutes` with minutes in 1..=1440"
                )
            })?);
        }
        Ok(Self(rules))
    }
}

impl fmt::Display for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.baseline_minutes, self.after_minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_override_per_event_type() {
        let c = ImpactConfig::default()
            .with_windows("workout=30:180, default=45:90".parse().unwrap())
            .with_metrics("HEART_RATE".parse().unwrap());
        assert_eq!(c.windows("workout").to_string(), "30:180");
        assert_eq!(c.windows("caffeine").to_string(), "45:90");
        assert_eq!(c.max_windows(), (45 * MINUTE, 180 * MINUTE));
        assert!(c.tracks("HEART_RATE") && !c.tracks("BLOOD_GLUCOSE"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule() {
        for bad in [
            "workout",
            "workout=30",
            "workout=0:10",
            "x=1:99999",
            "a=b:c",
        ] {
            let err = bad.parse::<WindowRules>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert!("".parse::<MetricList>().is_err());
        assert!("heart rate".parse::<MetricList>().is_err());
    }
}
