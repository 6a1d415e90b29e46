//! The consuming side of a sink: a consumer-group member on one read model's topic that
//! reads (read_committed), decodes rows and progress records, batches and hands batches to
//! a `SinkFor<M>`, never committing offsets to Kafka.
//!
//! Exactly once, without Kafka's offsets: on every assignment the rebalance callback reads
//! the partitions' next offsets from the store and assigns them explicitly; each batch
//! carries, per partition, the offset it was read from, and the sink commits rows and new
//! offsets together only if the stored offset is still that one. A crash before the
//! commit leaves nothing; a crash after it leaves the offsets past the batch; a zombie
//! instance or a commit retried after a lost answer is refused (`OffsetConflict`) and the
//! consumer starts again from the stored offsets. Records of aborted transactions, which
//! tansu shows read_committed readers, are harmless: writes are version-guarded.
//!
//! Records that cannot be decoded or parsed go to the dead-letter topic with the reason
//! (at least once: a batch retried after a failure may send them again), and their
//! offsets move on, so one bad record never stops a partition.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pulseline_schemas::AvroCodec;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::error::SinkError;
use crate::sink::{Batch, Item, OffsetScope, PartitionSpan, Sink, SinkFor};
use crate::tables::StoredReadModel;
use crate::telemetry::{
    ApplyFailed, BatchApplied, BatchDiscarded, InvalidRecordSeen, OffsetConflictSeen, SinkTelemetry,
};

/// With nothing pending, how often the loop wakes to check for a failed assignment.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Attempts at one batch before the session is restarted (consumer re-created).
const APPLY_ATTEMPTS: u32 = 5;
/// Attempts at decoding a record while the registry is unreachable.
const DECODE_ATTEMPTS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Builds the runner of any read model from what they share (`crate::read_model_runners`).
#[derive(Debug, Clone)]
pub struct RunnerFactory {
    pub settings: RunnerSettings,
    pub topic_prefix: String,
    pub codec: AvroCodec,
    pub telemetry: SinkTelemetry,
}

impl RunnerFactory {
    /// The runner of read model `M`: on `M`'s topic, writing to `store`.
    pub fn runner<M: StoredReadModel>(
        &self,
        store: &crate::Store,
    ) -> Result<Arc<dyn ReadModelRunner>, SinkError> {
        // `settings.group_id` is the base: each read model consumes in its own group.
        let settings = RunnerSettings {
            topic: pulseline_schemas::topics::prefixed(&self.topic_prefix, M::TOPIC),
            group_id: format!("{}.{}", self.settings.group_id, M::NAME),
            ..self.settings.clone()
        };
        Ok(Arc::new(SinkRunner::<M>::new(
            settings,
            store.sink_for::<M>(),
            self.codec.clone(),
            self.telemetry.clone(),
        )?))
    }
}

/// A runner of some read model, as the registration list holds it.
pub trait ReadModelRunner: Send + Sync + std::fmt::Debug {
    /// The read model's name.
    fn read_model(&self) -> &'static str;
    /// Consumes until `shutdown` completes (see `SinkRunner::run`).
    fn run<'a>(
        &'a self,
        shutdown: futures::future::BoxFuture<'a, ()>,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>>;
}

impl<M: StoredReadModel> ReadModelRunner for SinkRunner<M> {
    fn read_model(&self) -> &'static str {
        M::NAME
    }

    fn run<'a>(
        &'a self,
        shutdown: futures::future::BoxFuture<'a, ()>,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(SinkRunner::run(self, shutdown))
    }
}

/// What the runner needs besides the sink; built from `SinkConfig`.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub kafka_bootstrap: String,
    pub group_id: String,
    /// The deployed (prefixed) read-model topic.
    pub topic: String,
    /// The deployed (prefixed) dead-letter topic.
    pub dead_letter_topic: String,
    pub batch_max_records: usize,
    pub batch_linger: Duration,
}

/// Feeds one store with read model `M` from its topic until told to stop.
pub struct SinkRunner<M: StoredReadModel> {
    settings: RunnerSettings,
    sink: Arc<dyn SinkFor<M>>,
    codec: AvroCodec,
    telemetry: SinkTelemetry,
    dead_letters: FutureProducer,
}

impl<M: StoredReadModel> std::fmt::Debug for SinkRunner<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkRunner")
            .field("read_model", &M::NAME)
            .field("settings", &self.settings)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl<M: StoredReadModel> SinkRunner<M> {
    /// Creates the dead-letter producer; opens no consumer yet.
    pub fn new(
        settings: RunnerSettings,
        sink: Arc<dyn SinkFor<M>>,
        codec: AvroCodec,
        telemetry: SinkTelemetry,
    ) -> Result<Self, SinkError> {
        if settings.batch_max_records == 0 {
            return Err(SinkError::Config("batch_max_records must be > 0".into()));
        }
        let dead_letters: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("client.id", "pulseline-sink-dead-letters")
            .create()?;
        Ok(Self {
            settings,
            sink,
            codec,
            telemetry,
            dead_letters,
        })
    }

    pub fn telemetry(&self) -> &SinkTelemetry {
        &self.telemetry
    }

    fn scope(&self) -> OffsetScope {
        OffsetScope {
            consumer: self.settings.group_id.clone(),
            topic: self.settings.topic.clone(),
        }
    }

    /// Consumes until `shutdown` completes (then applies what is pending and returns).
    /// Retryable failures (broker, store, offset conflicts) restart the consumer after a
    /// backoff; others end the run. Needs a multi-threaded Tokio runtime: the rebalance
    /// callback reads the stored offsets synchronously (`block_in_place`).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SinkError> {
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            return Err(SinkError::Config(
                "the sink runner needs a multi-threaded Tokio runtime".into(),
            ));
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.session(shutdown.as_mut()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "sink session failed; restarting the consumer");
                    tokio::select! {
                        () = shutdown.as_mut() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One consumer-group membership, from joining to an error or shutdown.
    async fn session(
        &self,
        mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<(), SinkError> {
        let context = AssignmentContext {
            sink: self.sink.clone() as Arc<dyn Sink>,
            scope: self.scope(),
            runtime: Handle::current(),
            state: Mutex::new(AssignmentState::default()),
        };
        let consumer: StreamConsumer<AssignmentContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka_bootstrap)
            .set("group.id", &self.settings.group_id)
            .set("client.id", "pulseline-sink")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only reached for partitions without a stored offset (we assign Beginning) or
            // with one past the log end (the broker lost the topic and it was republished).
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            // Eager: the callback assigns the whole assignment with stored offsets.
            .set("partition.assignment.strategy", "range")
            .set("enable.partition.eof", "false")
            .create_with_context(context)?;
        consumer.subscribe(&[&self.settings.topic])?;
        tracing::info!(topic = %self.settings.topic, group = %self.settings.group_id, "sink consumer joined");

        let mut pending = PendingBatch::default();
        loop {
            if let Some(e) = consumer.context().lock().failure.take() {
                return Err(e);
            }
            let deadline = pending.started.map_or_else(
                || Instant::now() + IDLE_TICK,
                |t| t + self.settings.batch_linger,
            );
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    if !pending.is_empty() {
                        self.flush(&consumer, &mut pending).await?;
                    }
                    tracing::info!("sink consumer stopping");
                    return Ok(());
                }
                received = consumer.recv() => match received {
                    Ok(message) => {
                        let partition = message.partition();
                        let offset = message.offset();
                        let payload = message.payload().map(<[u8]>::to_vec);
                        drop(message);
                        pending.accept(&consumer, partition, offset, payload, &self.telemetry);
                        if pending.len() >= self.settings.batch_max_records {
                            self.flush(&consumer, &mut pending).await?;
                        }
                    }
                    Err(e) => {
                        // librdkafka recovers from transport errors by itself.
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    if !pending.is_empty() {
                        self.flush(&consumer, &mut pending).await?;
                    }
                }
            }
        }
    }

    /// Decodes, dead-letters, applies and records the pending batch; on success the
    /// partitions' expected offsets move to the batch's ends.
    async fn flush(
        &self,
        consumer: &StreamConsumer<AssignmentContext>,
        pending: &mut PendingBatch,
    ) -> Result<(), SinkError> {
        let records = std::mem::take(&mut pending.records);
        let spans: Vec<PartitionSpan> = std::mem::take(&mut pending.spans).into_values().collect();
        pending.started = None;
        if consumer.context().lock().epoch != pending.epoch {
            // A rebalance happened since these were read; the partitions restarted at
            // their stored offsets, so the records will be read again.
            self.telemetry.emit(BatchDiscarded {
                records: records.len(),
            });
            return Ok(());
        }
        let mut batch = Batch::<M> {
            items: Vec::with_capacity(records.len()),
            spans,
        };
        let mut dead = Vec::new();
        for record in &records {
            match self.decode(record).await? {
                Ok(item) => batch.items.push(item),
                Err((reason, detail, header)) => {
                    self.telemetry.emit(InvalidRecordSeen {
                        partition: record.partition,
                        offset: record.offset,
                        reason,
                        detail,
                    });
                    dead.push((record, reason, header));
                }
            }
        }
        for (record, reason, header) in dead {
            self.dead_letter(record, reason, &header).await?;
        }

        let scope = self.scope();
        let mut attempt = 0;
        let (applied, elapsed) = loop {
            attempt += 1;
            let started = Instant::now();
            match self.sink.apply(&scope, &batch).await {
                Ok(applied) => break (applied, started.elapsed()),
                Err(e @ SinkError::OffsetConflict { .. }) => {
                    self.telemetry.emit(OffsetConflictSeen {
                        error: &e.to_string(),
                    });
                    return Err(e);
                }
                Err(e) if e.is_retryable() && attempt < APPLY_ATTEMPTS => {
                    self.telemetry.emit(ApplyFailed {
                        attempt,
                        error: &e.to_string(),
                    });
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.telemetry.emit(BatchApplied {
            records: records.len(),
            partitions: batch.spans.len(),
            rows_applied: applied.rows_applied,
            stale_skipped: applied.stale_skipped,
            elapsed,
        });
        let mut state = consumer.context().lock();
        if state.epoch == pending.epoch {
            for span in &batch.spans {
                state
                    .positions
                    .insert(span.partition, Some(span.next_offset));
            }
        }
        Ok(())
    }

    /// `Ok(Ok(row))`, or `Ok(Err(..))` for a record that can never be a row (dead letter),
    /// or `Err` when the registry cannot be reached (retry later, nothing is skipped).
    async fn decode(
        &self,
        record: &RawRecord,
    ) -> Result<Result<Item<M>, (&'static str, &'static str, String)>, SinkError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(Err(("undecodable", "null payload", "null payload".into())));
        };
        let mut attempt = 0;
        let decoded = loop {
            attempt += 1;
            match self.codec.decode_read_model::<M>(payload).await {
                Ok(decoded) => break decoded,
                Err(e) if e.is_retryable() && attempt < DECODE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    return Ok(Err((
                        "undecodable",
                        "not a decodable row or progress record of this read model",
                        e.to_string(),
                    )));
                }
            }
        };
        Ok(Item::parse(decoded).map_err(|e| ("invalid", e.0, e.0.to_owned())))
    }

    /// Copies an unusable record to the dead-letter topic with where it came from and why.
    async fn dead_letter(
        &self,
        record: &RawRecord,
        reason: &str,
        detail: &str,
    ) -> Result<(), SinkError> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "pulseline.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "pulseline.detail",
                value: Some(detail),
            })
            .insert(Header {
                key: "pulseline.source.topic",
                value: Some(self.settings.topic.as_str()),
            })
            .insert(Header {
                key: "pulseline.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "pulseline.source.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "pulseline.stage",
                value: Some("sink"),
            });
        let payload = record.payload.as_deref().unwrap_or_default();
        let key = format!("{}:{}", record.partition, record.offset);
        self.dead_letters
            .send(
                FutureRecord::to(&self.settings.dead_letter_topic)
                    .key(&key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| SinkError::Kafka(e))?;
        Ok(())
    }
}

/// A record as read, before decoding.
#[derive(Debug)]
struct RawRecord {
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
}

/// Records read since the last commit, with the assignment epoch they were read in.
#[derive(Debug, Default)]
struct PendingBatch {
    epoch: u64,
    started: Option<Instant>,
    records: Vec<RawRecord>,
    spans: BTreeMap<i32, PartitionSpan>,
}

impl PendingBatch {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.spans.is_empty()
    }

    /// Adds a record if it belongs to the current assignment and is past what is stored.
    fn accept(
        &mut self,
        consumer: &StreamConsumer<AssignmentContext>,
        partition: i32,
        offset: i64,
        payload: Option<Vec<u8>>,
        telemetry: &SinkTelemetry,
    ) {
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
        self.records.push(RawRecord {
            partition,
            offset,
            payload,
        });
    }
}

/// Per assignment: each owned partition's stored next offset (`None`: nothing stored),
/// and an epoch that changes with every rebalance.
#[derive(Debug, Default)]
struct AssignmentState {
    epoch: u64,
    positions: HashMap<i32, Option<i64>>,
    /// Set when the callback could not read the stored offsets; ends the session.
    failure: Option<SinkError>,
}

/// The consumer's context: assigns partitions at their stored offsets.
struct AssignmentContext {
    sink: Arc<dyn Sink>,
    scope: OffsetScope,
    runtime: Handle,
    state: Mutex<AssignmentState>,
}

impl AssignmentContext {
    fn lock(&self) -> MutexGuard<'_, AssignmentState> {
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
