//! The brute-force oracle for rollups (ARCHITECTURE.md, "The test oracle"): from the
//! distinct changes (last write per natural key by change id, deletions applied), compute
//! every bucket from scratch by sweeping all elementary slices of the whole timeline. It
//! shares no code with the processor: its own priority table (the default order), its own
//! slicing (every sample boundary and every local hour boundary inside every sample),
//! O(n^2) coverage. Only the catalog (which metric aggregates how) is shared.
//!
//! For tests and the demo's end-of-run check; never used on the processing path.

use std::collections::{BTreeMap, BTreeSet};

use chrono::DateTime;
use pulseline_schemas::records::{Operation, SampleChange};
use pulseline_schemas::{Aggregation, Catalog, ValueKind};

const HOUR: i64 = 3_600_000_000;

/// One expected bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: i64,
    pub sources: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Agg {
    Sum,
    Avg,
    Latest,
}

/// How a metric aggregates, from the catalog; `None` for categories and unknown metrics.
fn aggregation(metric: &str) -> Option<Agg> {
    let def = Catalog::builtin().metric(metric).ok()?;
    if def.kind() != ValueKind::Quantity {
        return None;
    }
    Some(match def.aggregation() {
        Aggregation::CumulativeSum => Agg::Sum,
        Aggregation::Discrete => Agg::Avg,
        Aggregation::Latest => Agg::Latest,
    })
}

/// Default source priority: wearable > phone > other devices > manual.
fn class(device: &str) -> u8 {
    match device {
        "apple_watch" | "wear_os" | "fitbit" | "garmin" | "oura" => 0,
        "iphone" | "android_phone" => 1,
        "manual" => 3,
        _ => 2,
    }
}

#[derive(Debug, Clone)]
struct S {
    source: String,
    record: String,
    device: String,
    start: i64,
    end: i64,
    off: i64,
    value: f64,
}

impl S {
    fn rank(&self) -> (u8, &str) {
        (class(&self.device), &self.source)
    }
    fn len(&self) -> i64 {
        self.end - self.start
    }
    fn hour(&self, t: i64) -> i64 {
        (t + self.off).div_euclid(HOUR)
    }
}

/// The live samples: last change per natural key (user, source, record, start) in change-id
/// order; a change id seen before (a duplicate) changes nothing; DELETE removes.
pub fn distinct(changes: &[SampleChange]) -> Vec<SampleChange> {
    let mut seen = BTreeSet::new();
    let mut live: BTreeMap<(String, String, String, i64), SampleChange> = BTreeMap::new();
    let mut sorted: Vec<&SampleChange> = changes.iter().collect();
    sorted.sort_by_key(|c| (c.user_id.clone(), c.change_seq, c.change_index));
    for c in sorted {
        if !seen.insert((c.user_id.clone(), c.change_seq, c.change_index)) {
            continue;
        }
        let key = (
            c.user_id.clone(),
            c.source_id.clone(),
            c.source_record_id.clone(),
            c.start_at,
        );
        match c.operation {
            Operation::Delete => {
                live.remove(&key);
            }
            Operation::Upsert => {
                live.insert(key, c.clone());
            }
        }
    }
    live.into_values().collect()
}

fn fmt_hour(h: i64) -> String {
    DateTime::from_timestamp(h * 3600, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:00:00")
        .to_string()
}

fn fmt_day(h: i64) -> String {
    DateTime::from_timestamp(h.div_euclid(24) * 86400, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

#[derive(Default, Clone)]
struct Acc {
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    latest: Option<((i64, String, String), f64)>,
    members: BTreeSet<(String, String, i64)>,
}

impl Acc {
    fn add_point(&mut self, s: &S) {
        self.sum += s.value;
        self.min = Some(self.min.map_or(s.value, |m| m.min(s.value)));
        self.max = Some(self.max.map_or(s.value, |m| m.max(s.value)));
        let k = (s.start, s.source.clone(), s.record.clone());
        if self.latest.as_ref().is_none_or(|(lk, _)| &k > lk) {
            self.latest = Some((k, s.value));
        }
        self.members
            .insert((s.source.clone(), s.record.clone(), s.start));
    }

    fn row(&self, agg: Agg) -> Row {
        let count = self.members.len() as i64;
        let sources: BTreeSet<String> = self.members.iter().map(|m| m.0.clone()).collect();
        let sources = sources.into_iter().collect();
        match agg {
            Agg::Sum => Row {
                value: Some(self.sum),
                min: None,
                max: None,
                count,
                sources,
            },
            Agg::Avg => Row {
                value: Some(self.sum / count as f64),
                min: self.min,
                max: self.max,
                count,
                sources,
            },
            Agg::Latest => Row {
                value: self.latest.as_ref().map(|l| l.1),
                min: self.min,
                max: self.max,
                count,
                sources,
            },
        }
    }
}

/// Every non-empty bucket, keyed like `RollupUpsert::key()`, from changes in any order
/// (duplicates of a change id count once).
pub fn rollups(changes: &[SampleChange]) -> BTreeMap<String, Row> {
    let mut groups: BTreeMap<(String, String), Vec<S>> = BTreeMap::new();
    for c in distinct(changes) {
        if aggregation(&c.metric).is_none() {
            continue;
        }
        let Some(value) = c.value else { continue };
        groups
            .entry((c.user_id.clone(), c.metric.clone()))
            .or_default()
            .push(S {
                source: c.source_id.clone(),
                record: c.source_record_id.clone(),
                device: c.device_type.clone(),
                start: c.start_at,
                end: c.end_at.unwrap_or(c.start_at),
                off: i64::from(c.tz_offset_minutes) * 60_000_000,
                value,
            });
    }
    let mut out = BTreeMap::new();
    for ((user, metric), samples) in groups {
        let Some(agg) = aggregation(&metric) else {
            continue;
        };
        // hour index -> accumulator
        let mut hours: BTreeMap<i64, Acc> = BTreeMap::new();
        if agg == Agg::Sum {
            let mut cuts = BTreeSet::new();
            for s in &samples {
                cuts.insert(s.start);
                cuts.insert(s.end);
                let mut h = s.hour(s.start) + 1;
                while h * HOUR - s.off < s.end {
                    cuts.insert(h * HOUR - s.off);
                    h += 1;
                }
            }
            let cuts: Vec<i64> = cuts.into_iter().collect();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let covering: Vec<&S> = samples
                    .iter()
                    .filter(|s| s.len() > 0 && s.start <= a && s.end >= b)
                    .collect();
                let Some(best) = covering.iter().map(|s| s.rank()).min() else {
                    continue;
                };
                for s in covering.iter().filter(|s| s.rank() == best) {
                    let acc = hours.entry(s.hour(a)).or_default();
                    acc.sum += s.value * (b - a) as f64 / s.len() as f64;
                    acc.members
                        .insert((s.source.clone(), s.record.clone(), s.start));
                }
            }
            for p in samples.iter().filter(|s| s.len() == 0) {
                let t = p.start;
                let hidden = samples.iter().any(|r| {
                    r.rank() < p.rank()
                        && ((r.len() > 0 && r.start <= t && t < r.end)
                            || (r.len() == 0 && r.start == t))
                });
                if !hidden {
                    let acc = hours.entry(p.hour(t)).or_default();
                    acc.sum += p.value;
                    acc.members
                        .insert((p.source.clone(), p.record.clone(), p.start));
                }
            }
            let mut days: BTreeMap<i64, Acc> = BTreeMap::new();
            for (h, acc) in &hours {
                let d = days.entry(h.div_euclid(24)).or_default();
                d.sum += acc.sum;
                d.members.extend(acc.members.iter().cloned());
            }
            for (h, acc) in &hours {
                out.insert(
                    format!("{user}|{metric}|HOUR|{}", fmt_hour(*h)),
                    acc.row(agg),
                );
            }
            for (d, acc) in &days {
                out.insert(
                    format!("{user}|{metric}|DAY|{}", fmt_day(d * 24)),
                    acc.row(agg),
                );
            }
        } else {
            let mut days: BTreeMap<i64, Acc> = BTreeMap::new();
            for s in &samples {
                let h = s.hour(s.start);
                hours.entry(h).or_default().add_point(s);
                days.entry(h.div_euclid(24)).or_default().add_point(s);
            }
            for (h, acc) in &hours {
                out.insert(
                    format!("{user}|{metric}|HOUR|{}", fmt_hour(*h)),
                    acc.row(agg),
                );
            }
            for (d, acc) in &days {
                out.insert(
                    format!("{user}|{metric}|DAY|{}", fmt_day(d * 24)),
                    acc.row(agg),
                );
            }
        }
    }
    out
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-9),
        _ => false,
    }
}

/// Compares a folded read model (key -> row fields) with the oracle; returns the
/// differences, empty when equal (values within 1e-6 relative).
pub fn diff(actual: &BTreeMap<String, Row>, expected: &BTreeMap<String, Row>) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => problems.push(format!("missing {k}: expected {e:?}")),
            Some(a) => {
                if !(close(a.value, e.value) && close(a.min, e.min) && close(a.max, e.max))
                    || a.count != e.count
                    || a.sources != e.sources
                {
                    problems.push(format!("{k}: got {a:?}, expected {e:?}"));
                }
            }
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            problems.push(format!("unexpected {k}: {:?}", actual[k]));
        }
    }
    problems
}
