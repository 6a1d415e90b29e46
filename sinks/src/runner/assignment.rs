//! Partition assignment: the rebalance callback reads the stored offsets from the store
//! and assigns the partitions there, so the consumer never starts from a guessed position.

use super::*;

/// Per assignment: each owned partition's stored next offset (`None`: nothing stored),
/// and an epoch that changes with every rebalance.
#[derive(Debug, Default)]
pub(super) struct AssignmentState {
    pub(super) epoch: u64,
    pub(super) positions: HashMap<i32, Option<i64>>,
    /// Set when the callback could not read the stored offsets; ends the session.
    pub(super) failure: Option<SinkError>,
}

/// The consumer's context: assigns partitions at their stored offsets.
pub(super) struct AssignmentContext {
    pub(super) sink: Arc<dyn Sink>,
    pub(super) scope: OffsetScope,
    pub(super) runtime: Handle,
    pub(super) state: Mutex<AssignmentState>,
}

impl AssignmentContext {
    pub(super) fn lock(&self) -> MutexGuard<'_, AssignmentState> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.scope.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        // The callback runs inside the consumer's poll, on a runtime worker: leave the
        // worker to the others while this thread waits for Postgres.
        let stored = tokio::task::block_in_place(|| {
            self.runtime
                .block_on(self.sink.stored_offsets(&self.scope, &partitions))
        });
        let mut state = self.lock();
        state.epoch += 1;
        state.positions.clear();
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                // Assign nothing: no record is read from a guessed position.
                state.failure = Some(e);
                return;
            }
        };
        let mut with_offsets = TopicPartitionList::new();
        for &p in &partitions {
            let offset = stored
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            if let Err(e) = with_offsets.add_partition_offset(&self.scope.topic, p, offset) {
                state.failure = Some(e.into());
                return;
            }
        }
        if let Err(e) = consumer.assign(&with_offsets) {
            state.failure = Some(e.into());
            return;
        }
        for &p in &partitions {
            state.positions.insert(p, stored.get(&p).copied());
        }
        tracing::info!(partitions = ?partitions, stored = ?stored, "partitions assigned at stored offsets");
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>) {
        let mut state = self.lock();
        state.epoch += 1;
        state.positions.clear();
        if let Err(e) = consumer.unassign() {
            state.failure = Some(e.into());
        }
        tracing::info!("partitions revoked");
    }
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base_consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer),
            other => {
                tracing::error!(error = ?other, "rebalance error");
                self.revoke(base_consumer);
            }
        }
    }
}
