//! Source priority: which source's samples count where sources overlap (cumulative metrics
//! in rollups; sleep stages later). Decided in ARCHITECTURE.md: by device class, wearable >
//! phone > other devices > manual, ties within a class broken by `sourceId` order (the
//! smaller id wins), so results never depend on arrival order. Configurable globally.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Device classes from highest to lowest priority, each a list of device types. A device
/// type that no class lists ranks with `other` (or last, if no class lists `other`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePriority {
    pub classes: Vec<Vec<String>>,
}

impl Default for SourcePriority {
    fn default() -> Self {
        "apple_watch,wear_os,fitbit,garmin,oura>iphone,android_phone>scale,bp_monitor,glucometer,other>manual"
            .parse()
            .unwrap_or(Self { classes: Vec::new() })
    }
}

/// The priority of one sample's source: lower sorts first and wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'a> {
    pub class: usize,
    pub source_id: &'a str,
}

impl SourcePriority {
    /// The class index of a device type (0 = highest priority).
    pub fn class_of(&self, device_type: &str) -> usize {
        let find = |t: &str| self.classes.iter().position(|c| c.iter().any(|d| d == t));
        find(device_type)
            .or_else(|| find("other"))
            .unwrap_or(self.classes.len())
    }

    pub fn rank<'a>(&self, device_type: &str, source_id: &'a str) -> Rank<'a> {
        Rank {
            class: self.class_of(device_type),
            source_id,
        }
    }
}

/// `a,b>c>d,e`: classes separated by `>`, device types within a class by `,`.
impl FromStr for SourcePriority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let classes: Vec<Vec<String>> = s
            .split('>')
            .map(|c| {
                c.split(',')
                    .map(|d| d.trim().to_owned())
                    .filter(|d| !d.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        if classes.iter().any(Vec::is_empty) {
            return Err(format!("empty device class in source priority `{s}`"));
        }
        Ok(Self { classes })
    }
}

impl fmt::Display for SourcePriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes: Vec<String> = self.classes.iter().map(|c| c.join(",")).collect();
        f.write_str(&classes.join(">"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_order_is_wearable_phone_other_manual() {
        let p = SourcePriority::default();
        assert_eq!(p.classes.len(), 4);
        let order = ["apple_watch", "oura", "iphone", "scale", "manual"];
        let classes: Vec<usize> = order.iter().map(|d| p.class_of(d)).collect();
        assert_eq!(classes, vec![0, 0, 1, 2, 3]);
        assert_eq!(p.class_of("toaster"), p.class_of("other"));
        assert!(p.rank("garmin", "z") < p.rank("iphone", "a"));
        assert!(p.rank("garmin", "a") < p.rank("fitbit", "b"));
        assert_eq!(p.to_string().parse::<SourcePriority>().unwrap(), p);
        assert!("a>>b".parse::<SourcePriority>().is_err());
    }
}
