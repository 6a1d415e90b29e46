//! The rollups state of one user: the live samples per metric (what a bucket is recomputed
//! from). Nothing about what was emitted is kept: every touched row is emitted (see
//! `rollups`), so emissions depend on the changes only.
//!
//! State key choice: samples are kept per user and metric, ordered by start, not split by
//! day. A cumulative sample crossing midnight lives once; recomputing a local day reads the
//! samples overlapping that day's UTC window (start >= window start - longest sample), so
//! no sample is copied into two days and a correction cannot leave a stale copy behind.
//!
//! Changelog entries: `s<natural key>` -> sample (one entry per natural key, whatever its
//! metric, so a correction that changes the metric moves it). Derived fields (longest
//! sample, offset range) are rebuilt on restore.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::compute;
use crate::state::{ChangelogEntry, State, StateError, decode, encode, f64_bits};

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
    #[serde(with = "f64_bits")]
    pub value: f64,
}

/// (start, sourceId, sourceRecordId): the natural key without the user, ordered by start.
pub(crate) type SampleKey = (i64, String, String);

/// One metric of one user.
#[derive(Debug, Default)]
pub(crate) struct Series {
    pub samples: BTreeMap<SampleKey, Sample>,
    /// Longest `end - start` ever stored (only grows: a safe bound for window queries).
    pub max_len: i64,
    /// Range of `tzOffsetMinutes` ever stored (only widens).
    pub offsets: Option<(i32, i32)>,
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

    /// The local hours (first, last) whose buckets `s` can change (a superset). For
    /// cumulative metrics that is every hour its interval touches under any offset of the
    /// series (a change to `s` can expose or hide another sample, which lands in its own
    /// local hour); otherwise the hour of its start.
    pub fn hours_touched(&self, s: &Sample, cumulative: bool) -> (i64, i64) {
        if cumulative {
            let (lo, hi) = self.offset_range();
            let last_instant = if s.end > s.start { s.end - 1 } else { s.start };
            (
                compute::local_hour(s.start, lo),
                compute::local_hour(last_instant, hi),
            )
        } else {
            let h = compute::local_hour(s.start, s.tz_minutes);
            (h, h)
        }
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

    /// Samples starting in `[from, to)`, in key order.
    pub fn starting_in(&self, from: i64, to: i64) -> Vec<&Sample> {
        if from >= to {
            return Vec::new();
        }
        let lo = (from, String::new(), String::new());
        let hi = (to, String::new(), String::new());
        self.samples.range(lo..hi).map(|(_, s)| s).collect()
    }
}

/// The rollups state of one user.
#[derive(Debug, Default)]
pub struct RollupState {
    pub(crate) series: BTreeMap<String, Series>,
    changed_samples: BTreeSet<SampleKey>,
}

impl RollupState {
    /// The live sample with this natural key, whatever its metric.
    pub(crate) fn find(&self, key: &SampleKey) -> Option<&Sample> {
        self.series.values().find_map(|s| s.samples.get(key))
    }

    /// Removes the sample with this natural key from whichever metric holds it.
    pub(crate) fn take(&mut self, key: &SampleKey) -> Option<Sample> {
        let old = self
            .series
            .values_mut()
            .find_map(|s| s.samples.remove(key))?;
        self.changed_samples.insert(key.clone());
        Some(old)
    }

    /// Stores a sample (the caller removed any previous version of its key).
    pub(crate) fn put(&mut self, key: SampleKey, sample: Sample) -> &mut Series {
        self.changed_samples.insert(key.clone());
        let series = self.series.entry(sample.metric.clone()).or_default();
        series.note_shape(&sample);
        series.samples.insert(key, sample);
        series
    }

    /// Number of live samples (all metrics).
    pub fn sample_count(&self) -> usize {
        self.series.values().map(|s| s.samples.len()).sum()
    }
}

const SAMPLE_TAG: u8 = b's';

fn tagged(tag: u8, body: Vec<u8>) -> Vec<u8> {
    let mut key = Vec::with_capacity(body.len() + 1);
    key.push(tag);
    key.extend(body);
    key
}

impl State for RollupState {
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        match key.split_first() {
            Some((&SAMPLE_TAG, body)) => {
                let k: SampleKey = decode("rollup sample key", body)?;
                for series in self.series.values_mut() {
                    series.samples.remove(&k);
                }
                if let Some(v) = value {
                    let sample: Sample = decode("rollup sample", v)?;
                    let series = self.series.entry(sample.metric.clone()).or_default();
                    series.note_shape(&sample);
                    series.samples.insert(k, sample);
                }
            }
            _ => {
                return Err(StateError::UnknownKey(
                    String::from_utf8_lossy(key).into_owned(),
                ));
            }
        }
        Ok(())
    }

    fn drain_changes(&mut self, out: &mut Vec<ChangelogEntry>) -> Result<(), StateError> {
        for key in std::mem::take(&mut self.changed_samples) {
            let value = match self.find(&key) {
                Some(sample) => Some(encode("rollup sample", sample)?),
                None => None,
            };
            out.push(ChangelogEntry {
                key: tagged(SAMPLE_TAG, encode("rollup sample key", &key)?),
                value,
            });
        }
        Ok(())
    }
}
