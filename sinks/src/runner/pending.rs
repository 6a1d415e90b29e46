//! The records read since the last commit, and the per-partition spans a batch carries.

use super::*;

/// A record as read, before decoding.
#[derive(Debug)]
pub(super) struct RawRecord {
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// The record's Kafka timestamp (when the processor produced it), in Unix
    /// milliseconds, for the record-age histogram.
    pub(super) produced_ms: Option<i64>,
    pub(super) payload: Option<Vec<u8>>,
}

/// Records read since the last commit, with the assignment epoch they were read in.
#[derive(Debug, Default)]
pub(super) struct PendingBatch {
    pub(super) epoch: u64,
    pub(super) started: Option<Instant>,
    pub(super) records: Vec<RawRecord>,
    pub(super) spans: BTreeMap<i32, PartitionSpan>,
}

impl PendingBatch {
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.spans.is_empty()
    }

    /// Adds a record if it belongs to the current assignment and is past what is stored.
    pub(super) fn accept(
        &mut self,
        consumer: &StreamConsumer<AssignmentContext>,
        record: RawRecord,
        telemetry: &SinkTelemetry,
    ) {
        let RawRecord {
            partition, offset, ..
        } = record;
        let state = consumer.context().lock();
        if state.epoch != self.epoch {
            // A rebalance happened: the new assignment restarted every partition at its
            // stored offset, so whatever is pending will be read again.
            if !self.records.is_empty() {
                telemetry.emit(BatchDiscarded {
                    records: self.records.len(),
                });
            }
            *self = PendingBatch {
                epoch: state.epoch,
                ..PendingBatch::default()
            };
        }
        let Some(&stored) = state.positions.get(&partition) else {
            return; // fetched before a revocation: not ours any more
        };
        drop(state);
        let from = self.spans.get(&partition).map(|s| s.next_offset).or(stored);
        if from.is_some_and(|from| offset < from) {
            return; // already applied (or already in this batch)
        }
        self.started.get_or_insert_with(Instant::now);
        self.spans
            .entry(partition)
            .or_insert(PartitionSpan {
                partition,
                expected: stored,
                next_offset: offset + 1,
            })
            .next_offset = offset + 1;
        self.records.push(record);
    }
}
