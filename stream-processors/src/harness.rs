//! An in-memory harness to test a processor without Kafka, through the same engine the
//! runtime uses (change-id dedup, lateness, batches, changelog entries). Feed batches,
//! restart from the accumulated changelog (as a partition reassignment would), and read
//! the read model a version-guarded sink would hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use pulseline_schemas::{AvroRecord, ReadModel, ReadModelProgress};

use crate::engine::{EngineConfig, Outcome, PartitionTask};
use crate::processor::{Input, Processor};
use crate::state::ChangelogEntry;

/// What a version-guarded sink holds after applying `rows` in any order: per key, the row
/// with the highest version (on equal versions, the later one: equal versions carry equal
/// content when processing is deterministic). Deleted rows are dropped at the end.
pub fn fold_read_model<'a, M: ReadModel>(
    rows: impl IntoIterator<Item = &'a M>,
) -> BTreeMap<String, M> {
    let mut latest: BTreeMap<String, M> = BTreeMap::new();
    for row in rows {
        let key = AvroRecord::key(row);
        if latest
            .get(&key)
            .is_none_or(|held| held.version() <= row.version())
        {
            latest.insert(key, row.clone());
        }
    }
    latest.retain(|_, r| !r.is_deleted());
    latest
}

/// Drives one processor over one simulated partition.
#[derive(Debug)]
pub struct Harness<P: Processor> {
    processor: Arc<P>,
    config: EngineConfig,
    task: PartitionTask<P>,
    changelog: Vec<ChangelogEntry>,
    outputs: Vec<P::Output>,
    progress: Vec<ReadModelProgress>,
}

impl<P: Processor> Harness<P> {
    pub fn new(processor: P) -> Self {
        Self::with_config(processor, EngineConfig::default())
    }

    pub fn with_config(processor: P, config: EngineConfig) -> Self {
        let processor = Arc::new(processor);
        Self {
            task: PartitionTask::new(processor.clone(), config),
            processor,
            config,
            changelog: Vec::new(),
            outputs: Vec::new(),
            progress: Vec::new(),
        }
    }

    /// Processes one batch; returns each record's outcome and the batch's rows. Panics on
    /// a breach of the `flush` contract or a state that cannot be encoded (test support).
    pub fn batch(
        &mut self,
        inputs: impl IntoIterator<Item = Input>,
    ) -> (Vec<Outcome>, &[P::Output]) {
        let outcomes: Vec<Outcome> = inputs.into_iter().map(|i| self.task.apply(&i)).collect();
        let out = self
            .task
            .finish_batch()
            .unwrap_or_else(|e| panic!("finishing a batch: {e}"));
        assert!(
            out.violations.is_empty(),
            "flush contract breached: {:?}",
            out.violations
        );
        self.progress.extend(out.progress);
        self.changelog.extend(out.state);
        self.changelog.extend(out.meta);
        let first = self.outputs.len();
        self.outputs.extend(out.outputs);
        (outcomes, &self.outputs[first..])
    }

    /// Processes a batch whose transaction then aborts on a broker that still shows its
    /// records (tansu): its outputs stay visible to sinks, its changelog entries are
    /// dropped (the runtime's restore keeps committed batches only) and the state is
    /// rebuilt without it. Replay the same inputs afterwards, as the runtime would.
    pub fn batch_aborted(&mut self, inputs: impl IntoIterator<Item = Input>) -> Vec<Outcome> {
        let committed = self.changelog.len();
        let (outcomes, _) = self.batch(inputs);
        self.changelog.truncate(committed);
        self.restart();
        outcomes
    }

    /// Drops the in-memory state and rebuilds it from the changelog written so far, as a
    /// new owner of the partition does.
    pub fn restart(&mut self) {
        let mut task = PartitionTask::new(self.processor.clone(), self.config);
        for e in &self.changelog {
            task.restore(&e.key, e.value.as_deref())
                .unwrap_or_else(|err| panic!("restoring changelog entry: {err}"));
        }
        task.finish_restore();
        self.task = task;
    }

    /// Every output emitted so far, in order.
    pub fn outputs(&self) -> &[P::Output] {
        &self.outputs
    }

    /// Every progress record emitted so far, in order.
    pub fn progress(&self) -> &[ReadModelProgress] {
        &self.progress
    }

    /// Every changelog entry written so far, in order.
    pub fn changelog(&self) -> &[ChangelogEntry] {
        &self.changelog
    }

    pub fn task(&self) -> &PartitionTask<P> {
        &self.task
    }

    /// The read model a version-guarded sink holds after every output so far.
    pub fn read_model(&self) -> BTreeMap<String, P::Output> {
        fold_read_model(&self.outputs)
    }
}
