//! The rollups state of one user: the live samples per metric (what a bucket is recomputed
//! from). Nothing about what was emitted is kept: every touched row is emitted (see
//! `rollups`), so emissions depend on the changes only.
//!
//! State key choice: samples are kept per user in one table keyed by natural key (one
//! entry per key whatever its metric, so a correction that changes the metric moves it),
//! not split by day. A cumulative sample crossing midnight lives once; recomputing a local
//! day reads the samples overlapping that day's UTC window (start >= window start - longest
//! sample), so no sample is copied into two days and a correction cannot leave a stale copy
//! behind. The per-metric index (keys ordered by start, longest sample, offset range) is
//! derived: rebuilt after a restore.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::compute;
use crate::state::Table;

/// One live sample (canonical unit). `end == start` for a zero-length sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub metric: String,
    pub source_id: String,
    pub source_record_id: String,
    pub device_type: String,
    pub start: i64,
    pub end: i64,
    pub tz_minutes: i32,
    pub value: f64,
}

/// (start, sourceId, sourceRecordId): the natural key without the user, ordered by start.
pub(crate) type SampleKey = (i64, String, String);

/// The derived index of one metric of one user.
#[derive(Debug, Default)]
pub(crate) struct Series {
    /// The metric's live samples, by start.
    keys: BTreeSet<SampleKey>,
    /// Longest `end - start` ever stored (only grows: a safe bound for window queries).
    pub max_len: i64,
    /// Range of `tzOffsetMinutes` ever stored (only widens).
    offsets: Option<(i32, i32)>,
}

impl Series {
    fn note_shape(&mut self, s: &Sample) {
        self.max_len = self.max_len.max(s.end - s.start);
        self.offsets = Some(match self.offsets {
            None => (s.tz_minutes, s.tz_minutes),
            Some((lo, hi)) => (lo.min(s.tz_minutes), hi.max(s.tz_minutes)),
        });
    }

    fn offset_range(&self) -> (i32, i32) {
        self.offsets.unwrap_or((0, 0))
    }

    /// Range of `tzOffsetMinutes` ever stored; `None` before the first sample.
    pub fn offsets(&self) -> Option<(i32, i32)> {
        self.offsets
    }

    /// The UTC window holding every instant that is in local day `day` under some offset
    /// of the series.
    pub fn window(&self, day: i64) -> (i64, i64) {
        let (lo, hi) = self.offset_range();
        (
            day * compute::DAY - compute::offset_micros(hi),
            (day + 1) * compute::DAY - compute::offset_micros(lo),
        )
    }
}

/// The local hours (first, last) whose buckets a sample over `[start, end)` at offset `tz`
/// can change, in a series whose offsets span `offsets` (a superset). For cumulative
/// metrics that is every hour its interval touches under its own offset or any of the
/// series' (a change to it can expose or hide another sample, which lands in its own local
/// hour); otherwise the hour of its start.
pub(crate) fn hours_touched(
    start: i64,
    end: i64,
    tz: i32,
    offsets: Option<(i32, i32)>,
    cumulative: bool,
) -> (i64, i64) {
    if cumulative {
        let (lo, hi) = offsets.map_or((tz, tz), |(lo, hi)| (lo.min(tz), hi.max(tz)));
        let last_instant = if end > start { end - 1 } else { start };
        (
            compute::local_hour(start, lo),
            compute::local_hour(last_instant, hi),
        )
    } else {
        let h = compute::local_hour(start, tz);
        (h, h)
    }
}

/// The rollups state of one user: the `samples` table, and the per-metric index derived
/// from it.
#[derive(Debug, Default)]
pub struct RollupState {
    samples: Table<SampleKey, Sample>,
    series: BTreeMap<String, Series>,
}

crate::state_tables!(RollupState { samples }, restored = RollupState::reindex);

impl RollupState {
    /// Rebuilds the per-metric index from the table (after a restore).
    fn reindex(&mut self) {
        self.series.clear();
        for (key, sample) in self.samples.iter() {
            let series = self.series.entry(sample.metric.clone()).or_default();
            series.note_shape(sample);
            series.keys.insert(key.clone());
        }
    }

    /// The live sample with this natural key, whatever its metric.
    pub(crate) fn find(&self, key: &SampleKey) -> Option<&Sample> {
        self.samples.get(key)
    }

    /// Removes the sample with this natural key, whatever its metric.
    pub(crate) fn take(&mut self, key: &SampleKey) -> Option<Sample> {
        let old = self.samples.remove(key)?;
        if let Some(series) = self.series.get_mut(&old.metric) {
            series.keys.remove(key);
        }
        Some(old)
    }

    /// Stores a sample (the caller removed any previous version of its key).
    pub(crate) fn put(&mut self, key: SampleKey, sample: Sample) {
        let series = self.series.entry(sample.metric.clone()).or_default();
        series.note_shape(&sample);
        series.keys.insert(key.clone());
        self.samples.insert(key, sample);
    }

    pub(crate) fn series(&self, metric: &str) -> Option<&Series> {
        self.series.get(metric)
    }

    /// Samples of `series` starting in `[from, to)`, in key order.
    pub(crate) fn starting_in(&self, series: &Series, from: i64, to: i64) -> Vec<&Sample> {
        if from >= to {
            return Vec::new();
        }
        let lo = (from, String::new(), String::new());
        let hi = (to, String::new(), String::new());
        series
            .keys
            .range(lo..hi)
            .filter_map(|k| self.samples.get(k))
            .collect()
    }

    /// Number of live samples (all metrics).
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }
}
