//! A brute-force model of session and product impacts, sharing no code with the
//! processors: fold each stream to its last change per natural key, then, for every
//! event and metric, scan every sample; coverage is measured by cutting the window at
//! every sample boundary and asking, for each piece, whether any sample covers it.

use std::collections::{BTreeMap, BTreeSet};

use pulseline_schemas::records::{
    Operation, ProductImpactUpsert, SampleChange, SessionImpactUpsert, UserEventChange,
};

use super::Oracle;
use crate::processor::{ChangeId, Input};

const MIN: i64 = 60_000_000;
const DAY: i64 = 1440 * MIN;
const METRICS: &[&str] = &[
    "HEART_RATE",
    "HEART_RATE_VARIABILITY_SDNN",
    "RESPIRATORY_RATE",
    "OXYGEN_SATURATION",
    "BLOOD_GLUCOSE",
    "BLOOD_PRESSURE_SYSTOLIC",
    "BLOOD_PRESSURE_DIASTOLIC",
];

/// What the oracle compares of a session row.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub event_type: String,
    pub product_id: Option<String>,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub baseline_avg: Option<f64>,
    pub after_avg: Option<f64>,
    pub delta_percent: Option<f64>,
    pub counts: (i64, i64),
    pub reliable: bool,
}

/// What the oracle compares of a product row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRow {
    pub n: i64,
    pub avg_delta_percent: Option<f64>,
    pub std_dev: Option<f64>,
    pub tier: String,
    pub as_of: i64,
}

struct Folded {
    /// Per user: live samples of the compared metrics, live events, their latest start.
    samples: BTreeMap<String, Vec<SampleChange>>,
    events: BTreeMap<String, Vec<UserEventChange>>,
    as_of: BTreeMap<String, i64>,
}

fn fold(changes: &[Input]) -> Folded {
    let mut samples: BTreeMap<(String, i64, String, String), (ChangeId, SampleChange)> =
        BTreeMap::new();
    let mut events: BTreeMap<(String, String), (ChangeId, UserEventChange)> = BTreeMap::new();
    for c in changes {
        match c {
            Input::Sample(s) => {
                let key = (
                    s.user_id.clone(),
                    s.start_at,
                    s.source_id.clone(),
                    s.source_record_id.clone(),
                );
                let id = c.change_id();
                if samples.get(&key).is_none_or(|(held, _)| *held < id) {
                    samples.insert(key, (id, s.clone()));
                }
            }
            Input::Event(e) => {
                let key = (e.user_id.clone(), e.event_id.clone());
                let id = c.change_id();
                if events.get(&key).is_none_or(|(held, _)| *held < id) {
                    events.insert(key, (id, e.clone()));
                }
            }
        }
    }
    let mut out = Folded {
        samples: BTreeMap::new(),
        events: BTreeMap::new(),
        as_of: BTreeMap::new(),
    };
    for (_, s) in samples.into_values() {
        if s.operation == Operation::Upsert && METRICS.contains(&s.metric.as_str()) {
            out.samples.entry(s.user_id.clone()).or_default().push(s);
        }
    }
    for (_, e) in events.into_values() {
        if e.operation == Operation::Upsert {
            let a = out.as_of.entry(e.user_id.clone()).or_insert(e.start_at);
            *a = (*a).max(e.start_at);
            out.events.entry(e.user_id.clone()).or_default().push(e);
        }
    }
    out
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Length of `[from, to)` covered by at least one interval, by brute force.
fn covered(intervals: &[(i64, i64)], from: i64, to: i64) -> i64 {
    let mut cuts: BTreeSet<i64> = BTreeSet::from([from, to]);
    for &(a, b) in intervals {
        cuts.extend([a.clamp(from, to), b.clamp(from, to)]);
    }
    let cuts: Vec<i64> = cuts.into_iter().collect();
    cuts.windows(2)
        .filter(|w| intervals.iter().any(|&(a, b)| a <= w[0] && w[1] <= b))
        .map(|w| w[1] - w[0])
        .sum()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn sessions_of(f: &Folded) -> BTreeMap<(String, String, String), SessionRow> {
    let mut out = BTreeMap::new();
    for (user, events) in &f.events {
        let samples = f.samples.get(user).map(Vec::as_slice).unwrap_or_default();
        for e in events {
            let end = e.end_at.unwrap_or(e.start_at);
            let windows = [(e.start_at - 60 * MIN, e.start_at), (end, end + 120 * MIN)];
            let isolated = !events.iter().any(|o| {
                o.event_id != e.event_id && windows[0].0 <= o.start_at && o.start_at < windows[1].1
            });
            for metric in METRICS {
                let mut values = [Vec::new(), Vec::new()];
                let mut spans = [Vec::new(), Vec::new()];
                let mut sorted: Vec<&SampleChange> =
                    samples.iter().filter(|s| s.metric == *metric).collect();
                sorted.sort_by(|a, b| {
                    (a.start_at, &a.source_id, &a.source_record_id).cmp(&(
                        b.start_at,
                        &b.source_id,
                        &b.source_record_id,
                    ))
                });
                for s in sorted {
                    for (w, &(from, to)) in windows.iter().enumerate() {
                        if from <= s.start_at && s.start_at < to {
                            values[w].push(s.value.unwrap_or(f64::NAN));
                            let until = s
                                .end_at
                                .filter(|e| *e > s.start_at)
                                .unwrap_or(s.start_at + MIN);
                            spans[w].push((s.start_at, until));
                        }
                    }
                }
                if values[0].is_empty() && values[1].is_empty() {
                    continue;
                }
                let (b, a) = (mean(&values[0]), mean(&values[1]));
                let enough = |w: usize| {
                    let (from, to) = windows[w];
                    values[w].len() >= 3 && covered(&spans[w], from, to) * 2 >= to - from
                };
                let delta = match (b, a) {
                    (Some(b), Some(a)) if b != 0.0 => Some(round2(100.0 * (a - b) / b)),
                    _ => None,
                };
                out.insert(
                    (user.clone(), e.event_id.clone(), (*metric).to_owned()),
                    SessionRow {
                        event_type: e.event_type.clone(),
                        product_id: e.product_id.clone(),
                        start_at: e.start_at,
                        end_at: e.end_at,
                        baseline_avg: b,
                        after_avg: a,
                        delta_percent: delta,
                        counts: (values[0].len() as i64, values[1].len() as i64),
                        reliable: isolated && enough(0) && enough(1),
                    },
                );
            }
        }
    }
    out
}

/// Every live session row, keyed like `AvroRecord::key`.
pub fn session_impacts(changes: &[Input]) -> BTreeMap<String, SessionRow> {
    sessions_of(&fold(changes))
        .into_iter()
        .map(|((u, e, m), r)| (format!("{u}|{e}|{m}"), r))
        .collect()
}

/// Every live product row, keyed like `AvroRecord::key`.
pub fn product_impacts(changes: &[Input]) -> BTreeMap<String, ProductRow> {
    let f = fold(changes);
    let sessions = sessions_of(&f);
    let mut out = BTreeMap::new();
    for (user, events) in &f.events {
        let Some(&as_of) = f.as_of.get(user) else {
            continue;
        };
        let groups: BTreeSet<(String, Option<String>)> = events
            .iter()
            .map(|e| (e.event_type.clone(), e.product_id.clone()))
            .collect();
        for (event_type, product) in groups {
            for metric in METRICS {
                for period in [30, 90] {
                    let from = as_of - i64::from(period) * DAY;
                    let rows: Vec<&SessionRow> = events
                        .iter()
                        .filter(|e| e.event_type == event_type && e.product_id == product)
                        .filter(|e| from < e.start_at && e.start_at <= as_of)
                        .filter_map(|e| {
                            sessions.get(&(user.clone(), e.event_id.clone(), (*metric).to_owned()))
                        })
                        .collect();
                    if rows.is_empty() {
                        continue;
                    }
                    let deltas: Vec<f64> = rows
                        .iter()
                        .filter(|r| r.reliable)
                        .filter_map(|r| r.delta_percent)
                        .collect();
                    let n = deltas.len();
                    let avg = mean(&deltas);
                    let std_dev = if n >= 2 {
                        let m = avg.unwrap_or(0.0);
                        Some(round2(
                            (deltas.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64)
                                .sqrt(),
                        ))
                    } else {
                        None
                    };
                    let up = deltas.iter().filter(|d| **d > 0.0).count() as f64;
                    let down = deltas.iter().filter(|d| **d < 0.0).count() as f64;
                    let tier = if n < 3 {
                        "INSUFFICIENT"
                    } else if n < 6 {
                        "LOW"
                    } else if n >= 12 && up.max(down) >= 0.75 * n as f64 {
                        "HIGH"
                    } else {
                        "MEDIUM"
                    };
                    let product_key = product.as_ref().map_or("-".to_owned(), |p| format!("={p}"));
                    out.insert(
                        format!("{user}|{event_type}|{product_key}|{metric}|{period}"),
                        ProductRow {
                            n: n as i64,
                            avg_delta_percent: avg.map(round2),
                            std_dev,
                            tier: tier.to_owned(),
                            as_of,
                        },
                    );
                }
            }
        }
    }
    out
}

fn close(a: Option<f64>, b: Option<f64>, tolerance: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0),
        _ => false,
    }
}

fn diff_maps<R: std::fmt::Debug>(
    actual: &BTreeMap<String, R>,
    expected: &BTreeMap<String, R>,
    same: impl Fn(&R, &R) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {k}: {e:?}")),
            Some(a) if !same(a, e) => out.push(format!("{k}: got {a:?}, want {e:?}")),
            Some(_) => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("unexpected {k}: {:?}", actual[k]));
    }
    out
}

/// The session-impacts oracle. Means compare to 1e-9 relative; a delta rounded to two
/// decimals may differ by one unit in the last place when summation order differs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionImpactsOracle;

impl Oracle<SessionImpactUpsert> for SessionImpactsOracle {
    type Row = SessionRow;

    fn expected(&self, changes: &[Input]) -> BTreeMap<String, SessionRow> {
        session_impacts(changes)
    }

    fn observe(&self, r: &SessionImpactUpsert) -> SessionRow {
        SessionRow {
            event_type: r.event_type.clone(),
            product_id: r.product_id.clone(),
            start_at: r.start_at,
            end_at: r.end_at,
            baseline_avg: r.baseline_avg,
            after_avg: r.after_avg,
            delta_percent: r.delta_percent,
            counts: (r.baseline_count, r.after_count),
            reliable: r.reliable,
        }
    }

    fn diff(
        &self,
        actual: &BTreeMap<String, SessionRow>,
        expected: &BTreeMap<String, SessionRow>,
    ) -> Vec<String> {
        diff_maps(actual, expected, |a, e| {
            (
                &a.event_type,
                &a.product_id,
                a.start_at,
                a.end_at,
                a.counts,
                a.reliable,
            ) == (
                &e.event_type,
                &e.product_id,
                e.start_at,
                e.end_at,
                e.counts,
                e.reliable,
            ) && close(a.baseline_avg, e.baseline_avg, 1e-9)
                && close(a.after_avg, e.after_avg, 1e-9)
                && match (a.delta_percent, e.delta_percent) {
                    (Some(x), Some(y)) => (x - y).abs() <= 0.0100001,
                    (x, y) => x == y,
                }
        })
    }
}

/// The product-impacts oracle (averages within 0.011: a session's rounded delta may
/// differ by 0.01 when summation order differs).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProductImpactsOracle;

impl Oracle<ProductImpactUpsert> for ProductImpactsOracle {
    type Row = ProductRow;

    fn expected(&self, changes: &[Input]) -> BTreeMap<String, ProductRow> {
        product_impacts(changes)
    }

    fn observe(&self, r: &ProductImpactUpsert) -> ProductRow {
        ProductRow {
            n: r.n,
            avg_delta_percent: r.avg_delta_percent,
            std_dev: r.std_dev,
            tier: r.tier.as_str().to_owned(),
            as_of: r.as_of,
        }
    }

    fn diff(
        &self,
        actual: &BTreeMap<String, ProductRow>,
        expected: &BTreeMap<String, ProductRow>,
    ) -> Vec<String> {
        let near = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => (x - y).abs() <= 0.011,
            (x, y) => x == y,
        };
        diff_maps(actual, expected, |a, e| {
            (a.n, &a.tier, a.as_of) == (e.n, &e.tier, e.as_of)
                && near(a.avg_delta_percent, e.avg_delta_percent)
                && near(a.std_dev, e.std_dev)
        })
    }
}
