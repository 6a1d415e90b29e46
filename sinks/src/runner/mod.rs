//! The consuming side of a sink: a consumer-group member on one read model's topic that
//! reads (read_uncommitted: see `session`), decodes rows and progress records, batches and hands batches to
//! a `SinkFor<M>`, never committing offsets to Kafka.
//!
//! Exactly once, without Kafka's offsets: on every assignment the rebalance callback reads
//! the partitions' next offsets from the store and assigns them explicitly; each batch
//! carries, per partition, the offset it was read from, and the sink commits rows and new
//! offsets together only if the stored offset is still that one. A crash before the
//! commit leaves nothing; a crash after it leaves the offsets past the batch; a zombie
//! instance or a commit retried after a lost answer is refused (`OffsetConflict`) and the
//! consumer starts again from the stored offsets. Records of aborted transactions are read
//! and harmless: writes are version-guarded, and the processor's replay of an aborted batch
//! emits the same rows with the same versions.
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
use pulseline_schemas::dead_letter::{DeadLetterHeaders, reason, stage};
use pulseline_service::Backoff;
use pulseline_service::ops::record_age_seconds;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::error::SinkError;
use crate::sink::{Batch, Item, OffsetScope, PartitionSpan, Sink, SinkFor};
use crate::tables::StoredReadModel;
use crate::telemetry::{
    ApplyFailed, BatchApplied, BatchDiscarded, InvalidRecordSeen, OffsetConflictSeen, SinkTelemetry,
};

/// With nothing pending, how often the loop wakes to check for a failed assignment.
mod assignment;
mod pending;
mod records;

use self::assignment::{AssignmentContext, AssignmentState};
use self::pending::{PendingBatch, RawRecord};

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
    pub fn runner<M: crate::CqlReadModel>(
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
    /// Static membership: `group.instance.id` is this, a dot and the topic (one consumer
    /// per read model shares the group). `None`: dynamic membership.
    pub group_instance_id: Option<String>,
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
        let dead_letters: FutureProducer = pulseline_schemas::kafka::client_config()
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
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF);
        loop {
            let started = Instant::now();
            match self.session(shutdown.as_mut()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, backoff_ms = delay.as_millis() as u64, "sink session failed; restarting the consumer");
                    tokio::select! {
                        () = shutdown.as_mut() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
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
        let mut config = pulseline_schemas::kafka::client_config();
        if let Some(id) = &self.settings.group_instance_id {
            config.set("group.instance.id", format!("{id}.{}", self.settings.topic));
        }
        let consumer: StreamConsumer<AssignmentContext> = config
            .set("bootstrap.servers", &self.settings.kafka_bootstrap)
            .set("group.id", &self.settings.group_id)
            .set("client.id", "pulseline-sink")
            // Uncommitted too: writes are version-guarded and processors re-emit an aborted
            // batch identically (module doc), so an aborted record changes nothing, and a
            // row shows as soon as it is produced, not at the commit marker. A
            // read_committed reader would also be stranded by noida-db, which keeps listing
            // an aborted transaction in later fetch responses: librdkafka then skipped every
            // later record of that producer (STACK.md).
            .set("isolation.level", "read_uncommitted")
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
                        let record = RawRecord {
                            partition: message.partition(),
                            offset: message.offset(),
                            produced_ms: message.timestamp().to_millis(),
                            payload: message.payload().map(<[u8]>::to_vec),
                        };
                        drop(message);
                        pending.accept(&consumer, record, &self.telemetry);
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
        let applied_ms = chrono::Utc::now().timestamp_millis();
        self.telemetry.emit(BatchApplied {
            records: records.len(),
            record_ages: records
                .iter()
                .filter_map(|r| r.produced_ms)
                .map(|produced| record_age_seconds(produced, applied_ms))
                .collect(),
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
}
