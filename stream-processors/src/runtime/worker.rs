//! The runtime's main loop, on its own thread: poll a batch, apply it to the per-partition
//! tasks, write outputs + dead letters + changelog + offsets in one transaction, repeat.
//! Rebalances and failures are handled between batches, never inside one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulseline_schemas::dead_letter::{DeadLetterHeaders, reason, stage};
use pulseline_schemas::records::{SampleChange, UserEventChange};
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
use crate::engine::{DAY_MICROS, DynProcessor, DynTask, EncodeOutput, EngineConfig, Outcome};
use crate::processor::{Input, Stream};

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

struct DeadLetter {
    reason: String,
    detail: String,
    processor: &'static str,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl DeadLetter {
    fn of(m: &OwnedMessage, reason: &str, detail: String, processor: &'static str) -> Self {
        Self {
            reason: reason.to_owned(),
            detail,
            processor,
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// The tasks of one input partition number, one per processor.
type Tasks = Vec<Box<dyn DynTask>>;
/// A revoked partition's tasks and the changelog ends seen at revocation.
type Standby = (Tasks, Vec<i64>);

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
            let batch = self.collect();
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
    /// stops early when a rebalance happened.
    fn collect(&mut self) -> Vec<OwnedMessage> {
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
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {
                    if deadline.is_none() {
                        return batch;
                    }
                }
            }
            if self.consumer.context().has_events()
                || batch.len() >= max
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return batch;
            }
        }
    }

    fn process(&mut self, batch: Vec<OwnedMessage>) -> Result<Result<(), Stop>, RuntimeError> {
        let started = Instant::now();
        self.batches += 1;
        if self.cfg.transactions {
            self.producer.begin_transaction()?;
        }
        let _ = self.producer.context().take_failures();

        // Decode (the registry lookups are cached after the first of each schema).
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut inputs: Vec<(usize, Input)> = Vec::with_capacity(batch.len());
        let codec = self.codec.clone();
        for (i, m) in batch.iter().enumerate() {
            offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            self.metrics
                .records_in
                .with_label_values(&[m.topic()])
                .inc();
            if self
                .poison
                .contains(&(m.topic().to_owned(), m.partition(), m.offset()))
            {
                dead.push(DeadLetter::of(
                    m,
                    reason::PROCESSOR_PANIC,
                    "a processor panicked on this record".into(),
                    "",
                ));
                continue;
            }
            let Some(stream) = self.topics.stream_of(m.topic()) else {
                continue;
            };
            let Some(payload) = m.payload() else {
                dead.push(DeadLetter::of(
                    m,
                    reason::EMPTY_PAYLOAD,
                    "record without a value".into(),
                    "",
                ));
                continue;
            };
            let decoded = self.rt.block_on(async {
                match stream {
                    Stream::Samples => codec
                        .decode::<SampleChange>(payload)
                        .await
                        .map(Input::Sample),
                    Stream::Events => codec
                        .decode::<UserEventChange>(payload)
                        .await
                        .map(Input::Event),
                }
            });
            match decoded {
                Ok(input) => inputs.push((i, input)),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => dead.push(DeadLetter::of(m, reason::UNDECODABLE, e.to_string(), "")),
            }
        }

        let decoded_at = started.elapsed();
        // Apply, in order, to every processor that reads the stream.
        for (i, input) in &inputs {
            let m = &batch[*i];
            let tasks = self.partitions.get_mut(&m.partition()).ok_or_else(|| {
                RuntimeError::Unassigned {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                }
            })?;
            for (p, processor) in self.processors.iter().enumerate() {
                if !processor.inputs().contains(&input.stream()) {
                    continue;
                }
                let task = &mut tasks[p];
                let outcome = catch_unwind(AssertUnwindSafe(|| task.apply(input)));
                let name = processor.name();
                match outcome {
                    Err(_) => {
                        self.poison
                            .insert((m.topic().to_owned(), m.partition(), m.offset()));
                        return Err(RuntimeError::Panic {
                            processor: name,
                            topic: m.topic().to_owned(),
                            partition: m.partition(),
                            offset: m.offset(),
                        });
                    }
                    Ok(Outcome::Applied) => {
                        self.metrics
                            .records_applied
                            .with_label_values(&[name])
                            .inc();
                    }
                    Ok(Outcome::Duplicate) => {
                        self.metrics
                            .records_skipped
                            .with_label_values(&[name])
                            .inc();
                    }
                    Ok(Outcome::NotAnInput) => {}
                    Ok(Outcome::TooLate) => dead.push(DeadLetter::of(
                        m,
                        reason::TOO_LATE,
                        "older than the allowed lateness".into(),
                        name,
                    )),
                    Ok(Outcome::Rejected(r)) => {
                        dead.push(DeadLetter::of(m, r.code, r.detail, name))
                    }
                }
            }
        }

        // End of batch: outputs and changelog entries of every task touched.
        let mut outputs: Vec<Box<dyn EncodeOutput>> = Vec::new();
        let mut state_entries = Vec::new();
        let mut meta_entries = Vec::new();
        for (&partition, tasks) in self.partitions.iter_mut() {
            for (p, task) in tasks.iter_mut().enumerate() {
                let out = task.finish_batch();
                if out.is_empty() {
                    continue;
                }
                outputs.extend(out.outputs);
                state_entries.extend(out.state.into_iter().map(|e| (p, partition, e)));
                meta_entries.extend(out.meta.into_iter().map(|e| (p, partition, e)));
            }
        }
        let applied_at = started.elapsed();
        let encoded: Vec<Vec<u8>> = self.rt.block_on(async {
            let mut encoded = Vec::with_capacity(outputs.len());
            for o in &outputs {
                encoded.push(o.encode(&codec).await?);
            }
            Ok::<_, pulseline_schemas::Error>(encoded)
        })?;

        // Outputs, dead letters and state first; the per-user "applied up to" entries only
        // once those are acknowledged (see engine::BatchOutput::meta).
        for (o, bytes) in outputs.iter().zip(&encoded) {
            let (topic, partitions) = &self.topics.outputs[o.topic()];
            let key = o.key();
            let record = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(bytes.as_slice())
                .partition(user_partition(o.user_id(), *partitions));
            self.send(record)?;
            self.metrics
                .records_out
                .with_label_values(&[topic.as_str()])
                .inc();
        }
        for d in &dead {
            let headers = DeadLetterHeaders {
                reason: &d.reason,
                detail: &d.detail,
                stage: stage::PROCESSOR,
                processor: d.processor,
                source_topic: &d.topic,
                source_partition: d.partition,
                source_offset: d.offset,
            }
            .to_kafka();
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topics.dead_letter).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &d.payload {
                record = record.payload(p.as_slice());
            }
            self.send(record)?;
            DeadLettered {
                reason: &d.reason,
                topic: &d.topic,
                partition: d.partition,
                offset: d.offset,
            }
            .emit(&self.metrics);
        }
        // Changelog: every record names its batch attempt and the input offsets it covers,
        // plus one marker per partition consumed, so a restore can keep committed batches
        // only (see `restore`). Meta entries go last.
        let attempt = format!("{}/{}", self.run_id, self.batches);
        let mut ranges: BTreeMap<i32, String> = BTreeMap::new();
        for (_, partition) in offsets.keys() {
            if ranges.contains_key(partition) {
                continue;
            }
            ranges.insert(*partition, self.range_of(*partition, &offsets).encode());
        }
        for (p, partition, e) in state_entries.iter().chain(&meta_entries) {
            let range = ranges
                .get(partition)
                .map(String::as_str)
                .unwrap_or_default();
            self.send_changelog(*p, *partition, &e.key, e.value.as_deref(), &attempt, range)?;
        }
        for (partition, range) in &ranges {
            for p in 0..self.processors.len() {
                self.send_changelog(
                    p,
                    *partition,
                    MARKER_KEY,
                    Some(range.as_bytes()),
                    &attempt,
                    range,
                )?;
            }
        }

        if self.faults.take_crash(self.batches) {
            self.producer.flush(CALL_TIMEOUT)?;
            return Ok(Err(Stop::Crash));
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if self.cfg.transactions {
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| RuntimeError::Config("consumer has no group metadata".into()))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)?;
            if self.faults.take_failure() {
                return Err(RuntimeError::Injected);
            }
            self.producer.commit_transaction(CALL_TIMEOUT)?;
        } else {
            self.flush_and_check()?;
            if self.faults.take_failure() {
                return Err(RuntimeError::Injected);
            }
            self.consumer.commit(&tpl, CommitMode::Sync)?;
        }
        for (tp, next) in offsets {
            self.positions.insert(tp, next);
        }
        tracing::debug!(
            decode_ms = decoded_at.as_millis() as u64,
            apply_ms = (applied_at - decoded_at).as_millis() as u64,
            write_commit_ms = (started.elapsed() - applied_at).as_millis() as u64,
            "batch phases"
        );
        BatchCommitted {
            records: batch.len(),
            outputs: outputs.len(),
            elapsed: started.elapsed(),
            transactional: self.cfg.transactions,
        }
        .emit(&self.metrics);
        self.status.committed.fetch_add(1, Ordering::SeqCst);
        self.status
            .consumed
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(Ok(()))
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

    /// The input offsets a batch covers on one partition number, per stream: from the
    /// committed position to the position it commits (unchanged for streams it did not
    /// read).
    fn range_of(&self, partition: i32, offsets: &BTreeMap<(String, i32), i64>) -> Range {
        let mut range = Range {
            from: Positions::new(),
            to: Positions::new(),
        };
        for (topic, stream) in &self.topics.inputs {
            let key = (topic.clone(), partition);
            let from = self.positions.get(&key).copied().unwrap_or(-1);
            let to = offsets.get(&key).copied().unwrap_or(from);
            range.from.insert(stream.name().to_owned(), from);
            range.to.insert(stream.name().to_owned(), to);
        }
        range
    }

    fn send_changelog(
        &self,
        processor: usize,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        attempt: &str,
        range: &str,
    ) -> Result<(), RuntimeError> {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: ATTEMPT_HEADER,
                value: Some(attempt.as_bytes()),
            })
            .insert(Header {
                key: RANGE_HEADER,
                value: Some(range.as_bytes()),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topics.changelogs[processor])
                .partition(partition)
                .key(key)
                .headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.send(record)
    }

    fn flush_and_check(&self) -> Result<(), RuntimeError> {
        self.producer.flush(CALL_TIMEOUT)?;
        match self.producer.context().take_failures() {
            Some((failed, first)) => Err(RuntimeError::Delivery { failed, first }),
            None => Ok(()),
        }
    }

    fn recover_loop(&mut self, error: RuntimeError) -> Result<(), RuntimeError> {
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
    fn recover(&mut self) -> Result<(), RuntimeError> {
        if self.cfg.transactions
            && let Err(e) = self.producer.abort_transaction(CALL_TIMEOUT)
        {
            let e = RuntimeError::from(e);
            if e.is_fatal() {
                return Err(e);
            }
            // No transaction in progress (begin failed): nothing to abort.
            tracing::debug!(error = %e, "abort_transaction");
        }
        let _ = self.producer.context().take_failures();
        std::thread::sleep(self.backoff.current());
        self.standby.clear();
        self.partitions.clear();
        self.refresh_positions()?;
        let numbers: Vec<i32> = self.assigned_numbers().into_iter().collect();
        self.restore(&numbers)?;
        self.rewind()
    }

    fn rewind(&mut self) -> Result<(), RuntimeError> {
        let committed = self.consumer.committed(CALL_TIMEOUT)?;
        self.note_committed(&committed);
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.cfg.auto_offset_reset {
                    OffsetReset::Earliest => Offset::Beginning,
                    OffsetReset::Latest => Offset::End,
                },
            };
            self.consumer
                .seek(e.topic(), e.partition(), offset, CALL_TIMEOUT)?;
        }
        Ok(())
    }

    fn note_committed(&mut self, committed: &TopicPartitionList) {
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
    fn refresh_positions(&mut self) -> Result<(), RuntimeError> {
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

    fn assigned_numbers(&self) -> BTreeSet<i32> {
        self.assigned.iter().map(|(_, p)| *p).collect()
    }

    fn handle_rebalance(&mut self, events: Vec<RebalanceEvent>) -> Result<(), RuntimeError> {
        for event in events {
            match event {
                RebalanceEvent::Revoked(list) => {
                    tracing::info!(partitions = ?list, "partitions revoked");
                    for tp in &list {
                        self.assigned.remove(tp);
                    }
                    let keep = self.assigned_numbers();
                    let gone: Vec<i32> = self
                        .partitions
                        .keys()
                        .copied()
                        .filter(|p| !keep.contains(p))
                        .collect();
                    for p in gone {
                        if let Some(tasks) = self.partitions.remove(&p)
                            && let Ok(ends) = self.changelog_ends(p)
                        {
                            self.standby.insert(p, (tasks, ends));
                        }
                    }
                }
                RebalanceEvent::Assigned(list) => {
                    tracing::info!(partitions = ?list, "partitions assigned");
                    self.assigned.extend(list);
                }
            }
        }
        if let Ok(mut a) = self.status.assigned.lock() {
            *a = self.assigned.iter().cloned().collect();
        }
        self.refresh_positions()?;
        let missing: Vec<i32> = self
            .assigned_numbers()
            .into_iter()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        let mut to_restore = Vec::new();
        for p in missing {
            match self.standby.remove(&p) {
                Some((tasks, ends)) if self.changelog_ends(p).is_ok_and(|now| now == ends) => {
                    tracing::info!(partition = p, "state kept across the rebalance");
                    self.partitions.insert(p, tasks);
                }
                _ => to_restore.push(p),
            }
        }
        self.restore(&to_restore)
    }

    fn changelog_ends(&self, partition: i32) -> Result<Vec<i64>, RuntimeError> {
        self.topics
            .changelogs
            .iter()
            .map(|t| {
                self.consumer
                    .fetch_watermarks(t, partition, Duration::from_secs(5))
                    .map(|(_, high)| high)
                    .map_err(RuntimeError::from)
            })
            .collect()
    }

    fn restore(&mut self, partitions: &[i32]) -> Result<(), RuntimeError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut fresh: BTreeMap<i32, Vec<Box<dyn DynTask>>> = partitions
            .iter()
            .map(|&p| {
                (
                    p,
                    self.processors
                        .iter()
                        .map(|proc| proc.new_task(self.engine))
                        .collect(),
                )
            })
            .collect();
        let mut committed: BTreeMap<i32, Positions> = BTreeMap::new();
        for (topic, stream) in &self.topics.inputs {
            for &p in partitions {
                let at = self
                    .positions
                    .get(&(topic.clone(), p))
                    .copied()
                    .unwrap_or(-1);
                committed
                    .entry(p)
                    .or_default()
                    .insert(stream.name().to_owned(), at);
            }
        }
        for (i, processor) in self.processors.iter().enumerate() {
            let started = Instant::now();
            let name = processor.name();
            let entries = restore::replay(
                &self.cfg,
                &self.topics.changelogs[i],
                partitions,
                &committed,
                |partition, key, value| {
                    let Some(tasks) = fresh.get_mut(&partition) else {
                        return Ok(());
                    };
                    tasks[i]
                        .restore(key, value)
                        .map_err(|source| RuntimeError::State {
                            processor: name,
                            source,
                        })
                },
            )?;
            Restored {
                processor: name,
                partitions,
                entries,
                users: fresh.values().map(|t| t[i].user_count()).sum(),
                elapsed: started.elapsed(),
            }
            .emit(&self.metrics);
        }
        self.partitions.extend(fresh);
        Ok(())
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
