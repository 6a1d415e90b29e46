//! Query parameters, parsed into types that are valid by construction: handlers and the
//! store never see a raw string. Every refusal names the parameter and the rule.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use pulseline_schemas::records::EVENT_TYPES;
use pulseline_schemas::{Catalog, MetricDef};
use serde_json::json;

use crate::error::QueryError;

/// Rollup bucket length, as the API spells it (`day`, `hour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Hour,
}

impl Period {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Hour => "hour",
        }
    }

    /// The `rollup.period` value the sink writes.
    pub fn stored(self) -> &'static str {
        match self {
            Period::Day => "DAY",
            Period::Hour => "HOUR",
        }
    }

    /// A bucket start as the API shows it: the topic's format.
    pub fn format_start(self, start: NaiveDateTime) -> String {
        match self {
            Period::Day => start.format("%Y-%m-%d").to_string(),
            Period::Hour => start.format("%Y-%m-%dT%H:%M:%S").to_string(),
        }
    }
}

/// The longest ranges a request may ask for, per period.
#[derive(Debug, Clone, Copy)]
pub struct RangeLimits {
    pub max_days_day: u32,
    pub max_days_hour: u32,
}

/// `GET /v1/me/rollups` parameters, checked.
#[derive(Debug, Clone)]
pub struct RollupsQuery {
    pub metric: &'static MetricDef,
    pub period: Period,
    /// First local day, inclusive.
    pub from: NaiveDate,
    /// Last local day, inclusive.
    pub to: NaiveDate,
}

const KNOWN: [&str; 4] = ["metric", "period", "from", "to"];

/// Refuses unknown and repeated parameters (a typo must not silently widen an answer).
fn check_names(pairs: &[(String, String)], known: &[&str]) -> Result<(), QueryError> {
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(QueryError::invalid_with(
                name,
                format!("unknown parameter `{name}`"),
                json!({ "allowed": known }),
            ));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(QueryError::invalid(
                name,
                format!("`{name}` is given more than once"),
            ));
        }
    }
    Ok(())
}

/// The non-empty value of a required parameter.
fn required<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, QueryError> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| QueryError::invalid(name, format!("`{name}` is required")))
}

impl RollupsQuery {
    /// Parses the decoded query pairs. Syntax (400) is checked before existence (404).
    pub fn parse(pairs: &[(String, String)], limits: RangeLimits) -> Result<Self, QueryError> {
        check_names(pairs, &KNOWN)?;
        let get = |name: &str| required(pairs, name);
        let metric = get("metric")?;
        let period = match get("period")?.to_ascii_lowercase().as_str() {
            "day" => Period::Day,
            "hour" => Period::Hour,
            _ => {
                return Err(QueryError::invalid_with(
                    "period",
                    "`period` must be `day` or `hour`",
                    json!({ "allowed": ["day", "hour"] }),
                ));
            }
        };
        let from = parse_date("from", get("from")?)?;
        let to = parse_date("to", get("to")?)?;
        if from > to {
            return Err(QueryError::invalid_with(
                "from",
                "`from` must not be after `to`",
                json!({ "from": from.to_string(), "to": to.to_string() }),
            ));
        }
        let max_days = match period {
            Period::Day => limits.max_days_day,
            Period::Hour => limits.max_days_hour,
        };
        let days = (to - from).num_days() + 1;
        if days > i64::from(max_days) {
            return Err(QueryError::invalid_with(
                "to",
                format!(
                    "the range `from`..`to` covers {days} days; period={} allows at most {max_days}",
                    period.as_str()
                ),
                json!({ "days": days, "maxDays": max_days }),
            ));
        }
        // Codes are UPPER_SNAKE; accept any case from a hand-typed URL.
        let code = metric.to_ascii_uppercase();
        let metric = Catalog::builtin()
            .metric(&code)
            .map_err(|_| QueryError::UnknownMetric(code.clone()))?;
        Ok(Self {
            metric,
            period,
            from,
            to,
        })
    }

    /// Bucket starts in `[start, end)`: from the first day's midnight to the midnight
    /// after the last day, so the last day's hours are included.
    pub fn bucket_range(&self) -> (NaiveDateTime, NaiveDateTime) {
        let start = self.from.and_time(NaiveTime::MIN);
        let end = self
            .to
            .checked_add_signed(TimeDelta::days(1))
            .unwrap_or(NaiveDate::MAX)
            .and_time(NaiveTime::MIN);
        (start, end)
    }
}

/// `GET /v1/me/sleep` parameters, checked: a range of dates of waking, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl SleepQuery {
    /// The longest range, in dates of waking (a year, leap years included).
    pub const MAX_DAYS: i64 = 366;
    const KNOWN: [&'static str; 2] = ["from", "to"];

    pub fn parse(pairs: &[(String, String)]) -> Result<Self, QueryError> {
        check_names(pairs, &Self::KNOWN)?;
        let (from, to) = date_range(pairs, Self::MAX_DAYS)?;
        Ok(Self { from, to })
    }
}

/// `GET /v1/me/impacts/sessions` parameters, checked: a range of local event dates, both
/// included, and optional filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImpactsQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub event_type: Option<&'static str>,
    pub product_id: Option<String>,
    pub metric: Option<&'static str>,
}

impl SessionImpactsQuery {
    /// The longest range, in local event dates.
    pub const MAX_DAYS: i64 = 366;
    const KNOWN: [&'static str; 5] = ["from", "to", "eventType", "productId", "metric"];

    pub fn parse(pairs: &[(String, String)]) -> Result<Self, QueryError> {
        check_names(pairs, &Self::KNOWN)?;
        let (from, to) = date_range(pairs, Self::MAX_DAYS)?;
        let event_type = match optional(pairs, "eventType") {
            None => None,
            Some(t) => Some(*EVENT_TYPES.iter().find(|k| **k == t).ok_or_else(|| {
                QueryError::invalid_with(
                    "eventType",
                    "`eventType` is not an event type",
                    json!({ "allowed": EVENT_TYPES }),
                )
            })?),
        };
        let product_id = match optional(pairs, "productId") {
            Some(p) if p.chars().count() > MAX_PRODUCT_ID_CHARS => {
                return Err(QueryError::invalid(
                    "productId",
                    format!("`productId` is longer than {MAX_PRODUCT_ID_CHARS} characters"),
                ));
            }
            p => p.map(str::to_owned),
        };
        Ok(Self {
            from,
            to,
            event_type,
            product_id,
            metric: optional_metric(pairs)?,
        })
    }
}

/// `GET /v1/me/impacts/products` parameters, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductImpactsQuery {
    pub period_days: i32,
    pub metric: Option<&'static str>,
}

impl ProductImpactsQuery {
    /// The periods product impacts are computed over.
    pub const PERIODS: [i32; 2] = [30, 90];
    const KNOWN: [&'static str; 2] = ["periodDays", "metric"];

    pub fn parse(pairs: &[(String, String)]) -> Result<Self, QueryError> {
        check_names(pairs, &Self::KNOWN)?;
        let period_days = required(pairs, "periodDays")?
            .parse::<i32>()
            .ok()
            .filter(|p| Self::PERIODS.contains(p))
            .ok_or_else(|| {
                QueryError::invalid_with(
                    "periodDays",
                    "`periodDays` must be 30 or 90",
                    json!({ "allowed": Self::PERIODS }),
                )
            })?;
        Ok(Self {
            period_days,
            metric: optional_metric(pairs)?,
        })
    }
}

/// The gateway's limit on product ids.
const MAX_PRODUCT_ID_CHARS: usize = 256;

/// The value of an optional parameter (absent or empty: `None`).
fn optional<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// An optional `metric` filter: a catalog code, any case.
fn optional_metric(pairs: &[(String, String)]) -> Result<Option<&'static str>, QueryError> {
    let Some(m) = optional(pairs, "metric") else {
        return Ok(None);
    };
    Catalog::builtin()
        .metric(&m.to_ascii_uppercase())
        .map(|def| Some(def.code()))
        .map_err(|_| QueryError::invalid("metric", "`metric` is not a metric code of the catalog"))
}

/// Required `from` and `to` dates, in order, covering at most `max_days` days.
fn date_range(
    pairs: &[(String, String)],
    max_days: i64,
) -> Result<(NaiveDate, NaiveDate), QueryError> {
    let from = parse_date("from", required(pairs, "from")?)?;
    let to = parse_date("to", required(pairs, "to")?)?;
    if from > to {
        return Err(QueryError::invalid_with(
            "from",
            "`from` must not be after `to`",
            json!({ "from": from.to_string(), "to": to.to_string() }),
        ));
    }
    let days = (to - from).num_days() + 1;
    if days > max_days {
        return Err(QueryError::invalid_with(
            "to",
            format!("the range `from`..`to` covers {days} days; at most {max_days} are allowed"),
            json!({ "days": days, "maxDays": max_days }),
        ));
    }
    Ok((from, to))
}

fn parse_date(name: &str, value: &str) -> Result<NaiveDate, QueryError> {
    // `%Y` alone would accept "+2026" or a 5-digit year; the API is exactly YYYY-MM-DD.
    let shape_ok = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shape_ok
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| {
            QueryError::invalid_with(
                name,
                format!("`{name}` must be a calendar date YYYY-MM-DD"),
                json!({ "format": "YYYY-MM-DD" }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RangeLimits = RangeLimits {
        max_days_day: 400,
        max_days_hour: 31,
    };

    fn q(pairs: &[(&str, &str)]) -> Result<RollupsQuery, QueryError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        RollupsQuery::parse(&owned, LIMITS)
    }

    fn parameter(e: QueryError) -> String {
        match e {
            QueryError::InvalidParameter { parameter, .. } => parameter,
            other => panic!("expected INVALID_PARAMETER, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_good_query() {
        let r = q(&[
            ("metric", "steps"),
            ("period", "HOUR"),
            ("from", "2026-03-01"),
            ("to", "2026-03-02"),
        ])
        .unwrap();
        assert_eq!(r.metric.code(), "STEPS");
        assert_eq!(r.period, Period::Hour);
        let (start, end) = r.bucket_range();
        assert_eq!(start.to_string(), "2026-03-01 00:00:00");
        assert_eq!(end.to_string(), "2026-03-03 00:00:00");
    }

    #[test]
    fn names_the_offending_parameter() {
        let base = [
            ("metric", "STEPS"),
            ("period", "day"),
            ("from", "2026-03-01"),
            ("to", "2026-03-02"),
        ];
        fn with<'a>(
            base: &[(&'a str, &'a str)],
            name: &'a str,
            value: &'a str,
        ) -> Vec<(&'a str, &'a str)> {
            let mut v: Vec<(&str, &str)> =
                base.iter().copied().filter(|(n, _)| *n != name).collect();
            v.push((name, value));
            v
        }
        assert_eq!(
            parameter(q(&with(&base, "period", "week")).unwrap_err()),
            "period"
        );
        for bad in ["2026-3-01", "2026-02-30", "+2026-01-01", "yesterday", ""] {
            assert_eq!(
                parameter(q(&with(&base, "from", bad)).unwrap_err()),
                "from",
                "{bad}"
            );
        }
        assert_eq!(
            parameter(q(&with(&base, "to", "2026-13-01")).unwrap_err()),
            "to"
        );
        assert_eq!(
            parameter(q(&with(&base, "from", "2026-03-05")).unwrap_err()),
            "from"
        );
        assert_eq!(parameter(q(&base[1..]).unwrap_err()), "metric");
        let mut extra = base.to_vec();
        extra.push(("form", "2026-01-01"));
        assert_eq!(parameter(q(&extra).unwrap_err()), "form");
        let mut twice = base.to_vec();
        twice.push(("to", "2026-03-03"));
        assert_eq!(parameter(q(&twice).unwrap_err()), "to");
    }

    #[test]
    fn range_limits_depend_on_the_period() {
        let day = q(&[
            ("metric", "STEPS"),
            ("period", "day"),
            ("from", "2025-03-01"),
            ("to", "2026-03-01"),
        ]);
        assert!(day.is_ok());
        let hour = q(&[
            ("metric", "STEPS"),
            ("period", "hour"),
            ("from", "2026-03-01"),
            ("to", "2026-04-01"),
        ]);
        assert_eq!(parameter(hour.unwrap_err()), "to");
        let hour = q(&[
            ("metric", "STEPS"),
            ("period", "hour"),
            ("from", "2026-03-01"),
            ("to", "2026-03-31"),
        ]);
        assert!(hour.is_ok());
    }

    #[test]
    fn unknown_metrics_are_404_after_syntax_checks() {
        let e = q(&[
            ("metric", "NOPE"),
            ("period", "day"),
            ("from", "2026-03-01"),
            ("to", "2026-03-01"),
        ])
        .unwrap_err();
        assert!(matches!(e, QueryError::UnknownMetric(ref m) if m == "NOPE"));
        let e = q(&[
            ("metric", "NOPE"),
            ("period", "week"),
            ("from", "2026-03-01"),
            ("to", "2026-03-01"),
        ])
        .unwrap_err();
        assert_eq!(parameter(e), "period");
    }
}
