//! The runtime's main loop, on its own thread: poll a batch, apply it to the per-partition
//! tasks, write outputs + dead letters + changelog + offsets in one transaction, repeat.
//! Rebalances and failures are handled between batches, never inside one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulseline_schemas::dead_letter::{DeadLetterHeaders, reason, stage};
use pulseline_schemas::records::{AvroRecord, SampleChange, UserEventChange};
use pulseline_schemas::wire::RecordDecoder;
use pulseline_schemas::{AvroCodec, topics};
use pulseline_service::Backoff;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::config::{OffsetReset, RuntimeConfig};
use super::error::RuntimeError;
use super::kafka::{
    DeliveryContext, GroupContext, RebalanceEvent, consumer_config, ensure_changelog,
    partition_count, producer_config, user_partition,
};
use super::metrics::{BatchAborted, BatchCommitted, DeadLettered, Restored, RuntimeMetrics};
use super::restore::{ATTEMPT_HEADER, MARKER_KEY, Positions, RANGE_HEADER, Range};
use super::{Faults, Status, restore};
use crate::engine::{
    DAY_MICROS, DynProcessor, DynTask, EncodeOutput, EngineConfig, Outcome, OutputEncoders,
};
use crate::processor::{Input, Stream};

mod assignment;
mod batch;
mod recovery;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The deployed topics the runtime reads and writes.
#[derive(Debug)]
struct Topics {
    inputs: Vec<(String, Stream)>,
    /// Per processor (same order as the registry).
    changelogs: Vec<String>,
    /// Un-prefixed read-model topic -> (deployed name, partition count).
    outputs: HashMap<&'static str, (String, i32)>,
    dead_letter: String,
}

impl Topics {
    fn stream_of(&self, topic: &str) -> Option<Stream> {
        self.inputs
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, s)| *s)
    }
}

/// The tasks of one input partition number, one per processor.
type Tasks = Vec<Box<dyn DynTask>>;
/// A revoked partition's tasks and the changelog ends seen at revocation.
type Standby = (Tasks, Vec<i64>);

/// The inputs' decoders for records written with the compiled-in schemas, and the
/// outputs' encoders.
struct Coders {
    samples: RecordDecoder<SampleChange>,
    events: RecordDecoder<UserEventChange>,
    outputs: OutputEncoders,
}

impl Coders {
    async fn new(
        codec: &AvroCodec,
        processors: &[Box<dyn DynProcessor>],
    ) -> Result<Self, pulseline_schemas::Error> {
        Ok(Self {
            samples: codec.decoder_for().await?,
            events: codec.decoder_for().await?,
            outputs: OutputEncoders::new(processors, codec).await?,
        })
    }
}

/// Why the loop stopped processing a batch without a normal error path.
enum Stop {
    /// Test fault: vanish mid-transaction, as a SIGKILL would.
    Crash,
}

pub(crate) struct Worker {
    cfg: RuntimeConfig,
    processors: Vec<Box<dyn DynProcessor>>,
    engine: EngineConfig,
    rt: tokio::runtime::Runtime,
    codec: AvroCodec,
    /// Made on the first batch (they need the registry).
    coders: Option<Coders>,
    consumer: BaseConsumer<GroupContext>,
    producer: ThreadedProducer<DeliveryContext>,
    topics: Topics,
    assigned: BTreeSet<(String, i32)>,
    /// Input partition number -> one task per processor.
    partitions: BTreeMap<i32, Vec<Box<dyn DynTask>>>,
    /// Revoked partitions kept with the changelog ends seen at revocation: reused on
    /// reassignment if nobody wrote to their changelogs since.
    standby: HashMap<i32, Standby>,
    /// Records whose processing panicked: dead-lettered on replay instead of applied.
    poison: HashSet<(String, i32, i64)>,
    /// Committed input position per assigned topic-partition (-1: none): where the next
    /// batch starts, recorded with its changelog records (see `restore`).
    positions: BTreeMap<(String, i32), i64>,
    /// Unique per run of this instance: names batch attempts in the changelog.
    run_id: String,
    metrics: RuntimeMetrics,
    faults: Faults,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    batches: u64,
    tokens: f64,
    last_refill: Instant,
    backoff: Backoff,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("instance", &self.cfg.instance_id)
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        cfg: RuntimeConfig,
        processors: Vec<Box<dyn DynProcessor>>,
        metrics: RuntimeMetrics,
        faults: Faults,
        status: Arc<Status>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, RuntimeError> {
        if processors.is_empty() {
            return Err(RuntimeError::Config("no processors registered".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Config(format!("tokio runtime: {e}")))?;
        let codec = AvroCodec::new(&cfg.schema_registry_url, &cfg.topic_prefix)?;
        let consumer: BaseConsumer<GroupContext> =
            consumer_config(&cfg).create_with_context(GroupContext::default())?;
        let producer: ThreadedProducer<DeliveryContext> =
            producer_config(&cfg).create_with_context(DeliveryContext::default())?;

        let prefixed = |t: &str| topics::prefixed(&cfg.topic_prefix, t);
        let streams: BTreeSet<Stream> = processors
            .iter()
            .flat_map(|p| p.inputs().iter().copied())
            .collect();
        let inputs: Vec<(String, Stream)> =
            streams.iter().map(|s| (prefixed(s.topic()), *s)).collect();
        let mut input_partitions = None;
        for (t, _) in &inputs {
            let n = partition_count(&consumer, t)?;
            if input_partitions.is_some_and(|m| m != n) {
                return Err(RuntimeError::Config(format!(
                    "input topics must be co-partitioned; {t} has {n} partitions"
                )));
            }
            input_partitions = Some(n);
        }
        let input_partitions = input_partitions.unwrap_or(1);
        let mut outputs = HashMap::new();
        let mut changelogs = Vec::new();
        for p in &processors {
            let out = prefixed(p.output_topic());
            let n = partition_count(&consumer, &out)?;
            outputs.insert(p.output_topic(), (out, n));
            let changelog = prefixed(&format!("changelog.{}.v1", p.name()));
            rt.block_on(ensure_changelog(&cfg, &changelog, input_partitions))?;
            let n = partition_count(&consumer, &changelog)?;
            if n != input_partitions {
                return Err(RuntimeError::Config(format!(
                    "changelog {changelog} has {n} partitions, the inputs {input_partitions}"
                )));
            }
            changelogs.push(changelog);
        }
        let dead_letter = prefixed(topics::DEAD_LETTER);
        partition_count(&consumer, &dead_letter)?;

        let engine = EngineConfig {
            allowed_lateness_micros: i64::from(cfg.allowed_lateness_days) * DAY_MICROS,
        };
        let now = Instant::now();
        let run_id = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("{}-{nanos}", cfg.instance_id)
        };
        Ok(Self {
            tokens: cfg.max_records_per_second.map_or(0.0, f64::from),
            cfg,
            processors,
            engine,
            rt,
            codec,
            coders: None,
            consumer,
            producer,
            topics: Topics {
                inputs,
                changelogs,
                outputs,
                dead_letter,
            },
            assigned: BTreeSet::new(),
            partitions: BTreeMap::new(),
            standby: HashMap::new(),
            poison: HashSet::new(),
            positions: BTreeMap::new(),
            run_id,
            metrics,
            faults,
            status,
            stop,
            batches: 0,
            last_refill: now,
            backoff: Backoff::new(Duration::from_millis(100), MAX_BACKOFF),
        })
    }

    pub fn run(mut self) -> Result<(), RuntimeError> {
        if self.cfg.transactions {
            // Fences any earlier incarnation of this instance and aborts its open transaction.
            self.producer.init_transactions(CALL_TIMEOUT)?;
        }
        let inputs: Vec<&str> = self.topics.inputs.iter().map(|(t, _)| t.as_str()).collect();
        self.consumer.subscribe(&inputs)?;
        tracing::info!(
            instance = %self.cfg.instance_id,
            group = %self.cfg.group_id(),
            transactions = self.cfg.transactions,
            processors = ?self.processors.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "processor runtime started"
        );
        self.status.running.store(true, Ordering::SeqCst);
        while !self.stop.load(Ordering::SeqCst) {
            let batch = match self.collect() {
                Ok(batch) => batch,
                Err(e) => {
                    self.status.running.store(false, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let events = self.consumer.context().take_events();
            if !events.is_empty() {
                // Records polled around a rebalance are dropped: with eager assignment every
                // partition restarts from its committed offset after it.
                if let Err(e) = self.handle_rebalance(events) {
                    self.recover_loop(e)?;
                }
                continue;
            }
            if batch.is_empty() {
                continue;
            }
            let n = batch.len();
            match self.process(batch) {
                Ok(Ok(())) => {
                    self.backoff.reset();
                }
                Ok(Err(Stop::Crash)) => {
                    tracing::warn!("injected crash: abandoning the open transaction");
                    self.status.running.store(false, Ordering::SeqCst);
                    return Err(RuntimeError::Injected);
                }
                Err(e) if e.is_fatal() => {
                    self.status.running.store(false, Ordering::SeqCst);
                    return Err(e);
                }
                Err(e) => self.recover_loop(e)?,
            }
            self.throttle(n);
        }
        tracing::info!(instance = %self.cfg.instance_id, "processor runtime stopping");
        self.consumer.unsubscribe();
        self.status.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Polls up to `max_batch_records`, waiting at most the linger once a record arrived;
    /// stops early when a rebalance happened. A fatal consumer error (e.g. fenced by a
    /// static member with the same `group.instance.id`) ends the runtime.
    fn collect(&mut self) -> Result<Vec<OwnedMessage>, RuntimeError> {
        let max = match self.cfg.max_records_per_second {
            Some(rate) => self.cfg.max_batch_records.min(rate.max(1) as usize),
            None => self.cfg.max_batch_records,
        };
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let timeout = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    batch.push(m.detach());
                    deadline.get_or_insert_with(|| Instant::now() + self.cfg.linger());
                }
                Some(Err(e)) => {
                    if let Some((_, reason)) = self.consumer.client().fatal_error() {
                        return Err(RuntimeError::ConsumerFatal(reason));
                    }
                    tracing::warn!(error = %e, "consumer error")
                }
                None => {
                    if deadline.is_none() {
                        return Ok(batch);
                    }
                }
            }
            if self.consumer.context().has_events()
                || batch.len() >= max
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Ok(batch);
            }
        }
    }

    fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
        &self,
        mut record: BaseRecord<'_, K, P>,
    ) -> Result<(), RuntimeError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn flush_and_check(&self) -> Result<(), RuntimeError> {
        self.producer.flush(CALL_TIMEOUT)?;
        match self.producer.context().take_failures() {
            Some((failed, first)) => Err(RuntimeError::Delivery { failed, first }),
            None => Ok(()),
        }
    }

    /// Token bucket over consumed records (backfill rate limit), one second of burst.
    fn throttle(&mut self, consumed: usize) {
        let Some(rate) = self.cfg.max_records_per_second else {
            return;
        };
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last_refill).as_secs_f64() * rate).min(rate);
        self.last_refill = now;
        self.tokens -= consumed as f64;
        if self.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-self.tokens / rate);
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                std::thread::sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                );
            }
        }
    }
}
