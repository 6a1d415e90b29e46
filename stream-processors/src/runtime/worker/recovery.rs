//! Recovery between batches: abort, reload the assigned partitions' state from their
//! changelogs, rewind the consumer to the committed offsets, back off, retry.

use super::*;

/// Calls to `abort_transaction` before the producer is replaced.
const ABORT_ATTEMPTS: u32 = 2;
/// How long one `abort_transaction` call may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    pub(super) fn recover_loop(&mut self, error: RuntimeError) -> Result<(), RuntimeError> {
        let mut error = error;
        loop {
            if error.is_fatal() {
                self.status.running.store(false, Ordering::SeqCst);
                return Err(error);
            }
            let text = error.to_string();
            BatchAborted {
                kind: error.kind(),
                error: &text,
            }
            .emit(&self.metrics);
            self.status.aborted.fetch_add(1, Ordering::SeqCst);
            match self.recover() {
                Ok(()) => return Ok(()),
                Err(e) => error = e,
            }
            std::thread::sleep(self.backoff.next_delay());
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }

    /// Abort, reload every assigned partition from its changelog, rewind the consumer to
    /// the committed offsets.
    pub(super) fn recover(&mut self) -> Result<(), RuntimeError> {
        if self.cfg.transactions {
            self.abort_or_replace_producer()?;
        }
        let _ = self.producer.context().take_failures();
        std::thread::sleep(self.backoff.current());
        self.standby.clear();
        self.partitions.clear();
        self.refresh_positions()?;
        let numbers: Vec<i32> = self.assigned_numbers().into_iter().collect();
        self.restore(&numbers)?;
        self.rewind(&numbers)
    }

    /// Aborts the open transaction. An abort that times out is resumed by calling it again
    /// (librdkafka's contract); one that still cannot finish (seen on tansu after an error
    /// that needs an epoch bump: every later call then fails with "conflicting
    /// abort_transaction") is given up, and the producer is replaced by a new one with the
    /// same transactional id, whose `init_transactions` fences the old one and aborts its
    /// transaction on the broker.
    fn abort_or_replace_producer(&mut self) -> Result<(), RuntimeError> {
        for _ in 0..ABORT_ATTEMPTS {
            let e = match self.producer.abort_transaction(ABORT_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let state_error = matches!(
                &e,
                KafkaError::Transaction(t) if t.code() == RDKafkaErrorCode::State
            );
            let e = RuntimeError::from(e);
            if e.is_fatal() {
                return Err(e);
            }
            if state_error {
                // No transaction in progress (begin failed): nothing to abort.
                tracing::debug!(error = %e, "abort_transaction");
                return Ok(());
            }
            tracing::warn!(error = %e, "abort_transaction did not complete; retrying");
        }
        tracing::warn!("abort_transaction cannot complete; replacing the producer");
        let producer: ThreadedProducer<DeliveryContext> =
            producer_config(&self.cfg).create_with_context(DeliveryContext::default())?;
        producer.init_transactions(CALL_TIMEOUT)?;
        let stuck = std::mem::replace(&mut self.producer, producer);
        // Destroying a producer with a transaction in flight can wait on the broker: not on
        // the processing thread.
        std::thread::spawn(move || drop(stuck));
        Ok(())
    }

    /// Seeks the assigned input partitions numbered `partitions` to `positions`: the
    /// committed offsets their state was just restored for. Not to a fresh read of the
    /// committed offsets: a transaction of a killed instance that completes on the broker
    /// in between would move them past the restored state, and its records would be
    /// skipped (restoring too little and re-reading is safe: inputs are deduplicated by
    /// change id).
    pub(super) fn rewind(&mut self, partitions: &[i32]) -> Result<(), RuntimeError> {
        for (topic, partition) in &self.assigned {
            if !partitions.contains(partition) {
                continue;
            }
            let offset = match self.positions.get(&(topic.clone(), *partition)) {
                Some(&o) if o >= 0 => Offset::Offset(o),
                _ => match self.cfg.auto_offset_reset {
                    OffsetReset::Earliest => Offset::Beginning,
                    OffsetReset::Latest => Offset::End,
                },
            };
            self.consumer
                .seek(topic, *partition, offset, CALL_TIMEOUT)?;
        }
        Ok(())
    }

    pub(super) fn note_committed(&mut self, committed: &TopicPartitionList) {
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            self.positions
                .insert((e.topic().to_owned(), e.partition()), offset);
        }
    }

    /// Reads the group's committed offsets of the assigned input partitions.
    pub(super) fn refresh_positions(&mut self) -> Result<(), RuntimeError> {
        self.positions.clear();
        if self.assigned.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &self.assigned {
            tpl.add_partition(topic, *partition);
        }
        let committed = self.consumer.committed_offsets(tpl, CALL_TIMEOUT)?;
        self.note_committed(&committed);
        Ok(())
    }
}
