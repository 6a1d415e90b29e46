//! The sleep state of one user: every live SLEEP_STAGE sample, keyed by natural key, in
//! one table. Nights are not stored: a night is recomputed from the samples around it, so
//! a correction, a deletion or a sample weeks late can never leave a stale night behind.
//! The longest sample length is derived (rebuilt after a restore) and bounds the window
//! queries.

use super::night::{Cluster, MAX_GAP, StageSample, clusters};
use crate::state::Table;

/// (start, sourceId, sourceRecordId): the natural key without the user, ordered by start.
pub(crate) type SampleKey = (i64, String, String);

/// The sleep state of one user.
#[derive(Debug, Default)]
pub struct SleepState {
    samples: Table<SampleKey, StageSample>,
    /// Longest `end - start` stored since the last restore (only grows until then): a
    /// sample overlapping `[from, ..)` starts at or after `from - max_len`.
    max_len: i64,
}

crate::state_tables!(SleepState { samples }, restored = SleepState::reindex);

impl SleepState {
    fn reindex(&mut self) {
        self.max_len = self
            .samples
            .iter()
            .map(|(_, s)| s.end - s.start)
            .max()
            .unwrap_or(0);
    }

    pub(crate) fn get(&self, key: &SampleKey) -> Option<&StageSample> {
        self.samples.get(key)
    }

    pub(crate) fn remove(&mut self, key: &SampleKey) -> Option<StageSample> {
        self.samples.remove(key)
    }

    pub(crate) fn put(&mut self, key: SampleKey, sample: StageSample) {
        self.max_len = self.max_len.max(sample.end - sample.start);
        self.samples.insert(key, sample);
    }

    /// Samples with `start <= to` and `end >= from` (closed: touching counts).
    fn touching(&self, from: i64, to: i64) -> impl Iterator<Item = &StageSample> {
        let lo = (
            from.saturating_sub(self.max_len),
            String::new(),
            String::new(),
        );
        self.samples
            .range(lo..)
            .take_while(move |(k, _)| k.0 <= to)
            .map(|(_, s)| s)
            .filter(move |s| s.end >= from)
    }

    /// Every cluster (samples chained by gaps of at most `MAX_GAP`) that reaches into
    /// `[from, to]`, complete: the window widens until no sample outside it connects.
    pub(crate) fn clusters_around(&self, from: i64, to: i64) -> Vec<Cluster<'_>> {
        let (mut a, mut b) = (from, to);
        loop {
            let (mut na, mut nb) = (a, b);
            for s in self.touching(a - MAX_GAP, b + MAX_GAP) {
                na = na.min(s.start);
                nb = nb.max(s.end);
            }
            if (na, nb) == (a, b) {
                break;
            }
            (a, b) = (na, nb);
        }
        clusters(self.touching(a - MAX_GAP, b + MAX_GAP).collect())
    }

    /// Number of live samples.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }
}
