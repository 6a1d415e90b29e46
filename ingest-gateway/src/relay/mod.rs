//! The outbox relay: publishes the rows the gateway enqueued to Kafka, then deletes them.
//!
//! It owns the claim-publish-delete cycle and nothing else; it never writes `sample`,
//! `user_event` or the other gateway tables (only `republish` reads them).
//!
//! One pass, per shard (rotating the starting shard): in one Postgres transaction take
//! `pg_try_advisory_xact_lock(RELAY_LOCK_CLASS, shard)` (skip the shard if another relay
//! holds it), read the shard's oldest rows in id order, Avro-encode them, produce them all
//! with an idempotent producer, await every delivery, and only if all were acknowledged
//! delete the rows and commit. Any failure rolls back: the rows stay and are published again
//! later. So delivery is at least once (a crash between the acknowledgements and the commit
//! republishes the batch), and in effect exactly once because every record carries its
//! change id (userId, changeSeq, changeIndex) and downstream skips changes it has applied.
//!
//! Up to [`CONCURRENT_SHARDS`] shards of a pass are published at once, each in its own
//! transaction under its own lock, so one shard's Postgres round trips and broker
//! acknowledgements overlap another's; a shard is never worked on by two batches at once,
//! and its next batch starts only after the previous one committed. A crash therefore
//! republishes at most the batch in flight of each shard.
//!
//! Published rows are deleted, so there is no "highest id published" watermark: a row with
//! a lower id whose transaction commits after higher ids were published is simply found by
//! a later pass. Nothing is skipped.
//!
//! Per-user order: a user's rows all live in one shard (`outbox::shard_of`), one relay at a
//! time publishes a shard (the advisory lock), rows go out in id order, and a user's ids
//! grow with its sequence (the gateway serialises a user's requests on the `user_stream`
//! row). The idempotent producer keeps order per partition; its records never expire (an
//! expired record is the one way a later record could overtake it) and
//! `enable.gapless.guarantee` turns any other failure that could leave a gap into a fatal
//! error (the producer is rebuilt and the batch republished). So the first occurrences of
//! a user's changes on Kafka are in order; duplicates only ever repeat older changes.
//!
//! Poison rows (a payload that will never decode or encode) move to `outbox_dead` with the
//! reason in the publishing transaction, so they never block their shard. A registry or
//! broker outage is not poison: the batch is rolled back and retried with a back-off.

mod cli;
mod config;
mod error;
mod metrics;
mod republish;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_schemas::wire::RecordEncoder;
use pulseline_schemas::{AvroCodec, AvroRecord, Operation, topics};
use pulseline_service::{Backoff, OpsRouter, shutdown_signal};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OnceCell, watch};
use tokio::task::JoinSet;

pub use cli::{Cli, Command, RepublishArgs, run_cli};
pub use config::RelayConfig;
pub use error::RelayError;
pub use metrics::RelayMetrics;
pub use republish::{RepublishScope, RepublishSummary, StreamChoice, Users, republish};

use crate::outbox::{self, ClaimedRow, OutboxRecord, Stream};
use metrics::{
    BatchFailed, BatchPublished, DepthMeasured, ListenerLost, ProducerRebuilt, RelayEvent,
    RelayStarted, RelayStopped, RowDeadLettered,
};

/// First key of the relay's advisory locks ("plre"); the second is the shard. Distinct
/// from any other advisory lock class used on the same database.
pub const RELAY_LOCK_CLASS: i32 = 0x706c_7265;

/// Shards a relay publishes at the same time (each in its own transaction and connection):
/// a batch mostly waits (Postgres round trips, broker acknowledgements), so several in
/// flight keep the relay busy.
pub const CONCURRENT_SHARDS: usize = 8;

/// What one [`OutboxRelay::drain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainSummary {
    pub published: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    /// Shard visits skipped because another relay held the shard.
    pub shards_busy: u64,
}

/// Publishes the outbox; see the module documentation for the protocol.
pub struct OutboxRelay {
    inner: Arc<Inner>,
    metrics_listener: Option<TcpListener>,
    metrics_addr: SocketAddr,
    next_shard: u16,
}

/// What the shard batches running at the same time share (each batch is its own task).
struct Inner {
    config: RelayConfig,
    pool: PgPool,
    codec: AvroCodec,
    /// Schema ids resolved once per record type (a failed lookup is tried again later).
    sample_encoder: OnceCell<RecordEncoder<SampleChange>>,
    event_encoder: OnceCell<RecordEncoder<UserEventChange>>,
    /// Replaced after a fatal error, between rounds (no batch in flight).
    producer: Mutex<FutureProducer>,
    /// Set when a batch gave up waiting for its acknowledgements: its records may still be
    /// queued in the producer, so the next batch waits for them first.
    timed_out: AtomicBool,
    metrics: Arc<RelayMetrics>,
    sample_topic: String,
    event_topic: String,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("config", &self.inner.config.redacted())
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// A claimed row ready to produce.
struct Encoded {
    id: i64,
    stream: Stream,
    key: String,
    bytes: Vec<u8>,
    created_at: chrono::DateTime<Utc>,
}

/// A claimed row that will never publish, with why (`kind` is a fixed label for logs; the
/// reason may quote the payload and goes only to `outbox_dead`).
struct Poison {
    kind: &'static str,
    reason: String,
}

enum BatchOutcome {
    Busy,
    Empty,
    Done { published: u64, dead: u64 },
}

impl OutboxRelay {
    /// Connects, runs the migrations, creates the topics and binds the metrics address.
    pub async fn build(config: RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let pool = PgPoolOptions::new()
            // One per shard in flight, one for the depth gauge.
            .max_connections(CONCURRENT_SHARDS as u32 + 1)
            // Every failure rolls the batch back and is retried, so a connection that
            // died while idle costs one retried batch; not a ping per batch.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&config.database_url)
            .await?;
        crate::MIGRATOR.run(&pool).await?;
        topics::ensure_all(&config.kafka_bootstrap, &config.topic_prefix).await?;
        let codec = AvroCodec::new(&config.schema_registry_url, &config.topic_prefix)?;
        let producer = create_producer(&config)?;
        let metrics = Arc::new(RelayMetrics::new().map_err(|e| RelayError::Config(e.to_string()))?);
        let metrics_listener = TcpListener::bind(config.metrics_addr).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        Ok(Self {
            inner: Arc::new(Inner {
                sample_topic: codec.topic_of::<SampleChange>(),
                event_topic: codec.topic_of::<UserEventChange>(),
                config,
                pool,
                codec,
                sample_encoder: OnceCell::new(),
                event_encoder: OnceCell::new(),
                producer: Mutex::new(producer),
                timed_out: AtomicBool::new(false),
                metrics,
            }),
            metrics_listener: Some(metrics_listener),
            metrics_addr,
            next_shard: 0,
        })
    }

    /// Where /metrics and /healthz are served (the bound port when the config said 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn metrics(&self) -> Arc<RelayMetrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// Runs until SIGTERM or ctrl-c, finishing the batch in progress.
    pub async fn run(self) -> Result<(), RelayError> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes (then finishes the batch in progress) or a fatal
    /// error. Retryable errors back off and try again; rows stay in the outbox meanwhile.
    pub async fn run_until<F>(mut self, shutdown: F) -> Result<(), RelayError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let signal_task = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let wake = Arc::new(Notify::new());
        let listener_task = tokio::spawn(listen_for_wakeups(
            self.inner.config.database_url.clone(),
            Arc::clone(&wake),
            Arc::clone(&self.inner.metrics),
        ));
        let server_task = self.metrics_listener.take().map(|listener| {
            // No readiness check: a relay that runs is ready (it retries its dependencies).
            let app: axum::Router = OpsRouter::new(self.inner.metrics.registry().clone()).build();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            })
        });
        RelayStarted {
            config: &self.inner.config,
            metrics_addr: self.metrics_addr,
        }
        .emit(&self.inner.metrics);

        // Between failed passes: 200 ms doubling to 10 s.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut stop = stop_rx.clone();
        let result = loop {
            if *stop.borrow() {
                break Ok(());
            }
            let pause = match self.drain_until(&stop_rx).await {
                Ok(_) => {
                    backoff.reset();
                    None
                }
                Err(e) if e.is_retryable() => Some(backoff.next_delay()),
                Err(e) => break Err(e),
            };
            match pause {
                None => tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.inner.config.poll_interval()) => {}
                    _ = stop.changed() => {}
                },
                Some(delay) => tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                },
            }
        };
        listener_task.abort();
        signal_task.abort();
        if let Some(server) = server_task {
            server.abort();
        }
        RelayStopped.emit(&self.inner.metrics);
        result
    }

    /// Publishes until every shard this relay can lock is empty (rows committed meanwhile
    /// included), then refreshes the depth gauge. A failing shard does not stop the others
    /// in the same round; the first error is returned at the end.
    pub async fn drain(&mut self) -> Result<DrainSummary, RelayError> {
        let (_keep, never) = watch::channel(false);
        self.drain_until(&never).await
    }

    async fn drain_until(
        &mut self,
        stop: &watch::Receiver<bool>,
    ) -> Result<DrainSummary, RelayError> {
        let shards = self.inner.config.shards;
        let mut summary = DrainSummary::default();
        let mut first_error: Option<RelayError> = None;
        // Passes until one finds every lockable shard empty. Within a pass a shard that
        // published is queued again at the back (round robin, no waiting for the slowest
        // shard of a round); one that is empty, busy or failed is done for the pass.
        loop {
            if *stop.borrow() {
                break;
            }
            let start = self.next_shard;
            self.next_shard = (self.next_shard + 1) % shards;
            // < shards <= 4096 (validate), so it fits i16.
            let mut queue: VecDeque<i16> = (0..shards)
                .map(|k| {
                    i16::try_from((u32::from(start) + u32::from(k)) % u32::from(shards))
                        .unwrap_or(0)
                })
                .collect();
            // Several shards at a time, each batch its own task (the relay's work spreads
            // over the runtime's threads); a fatal error starts no new batch.
            let fatal = Arc::new(AtomicBool::new(false));
            let mut running = JoinSet::new();
            let mut moved = 0;
            loop {
                while running.len() < CONCURRENT_SHARDS
                    && !*stop.borrow()
                    && !fatal.load(Ordering::Relaxed)
                    && let Some(shard) = queue.pop_front()
                {
                    let (inner, fatal) = (Arc::clone(&self.inner), Arc::clone(&fatal));
                    running.spawn(async move {
                        let outcome = inner.publish_batch(shard).await;
                        if let Err(e) = &outcome {
                            BatchFailed { error: e }.emit(&inner.metrics);
                            if !e.is_retryable() {
                                fatal.store(true, Ordering::Relaxed);
                            }
                        }
                        (shard, outcome)
                    });
                }
                let Some(joined) = running.join_next().await else {
                    break;
                };
                let (shard, outcome) = joined.unwrap_or_else(|e| {
                    (
                        -1,
                        Err(RelayError::Config(format!("relay batch task failed: {e}"))),
                    )
                });
                match outcome {
                    Ok(BatchOutcome::Busy) => summary.shards_busy += 1,
                    Ok(BatchOutcome::Empty) => {}
                    Ok(BatchOutcome::Done { published, dead }) => {
                        summary.published += published;
                        summary.dead_lettered += dead;
                        summary.batches += 1;
                        moved += published + dead;
                        queue.push_back(shard);
                    }
                    // A fatal error wins over a retryable one: the caller must stop.
                    Err(e) => match &first_error {
                        Some(first) if !first.is_retryable() || e.is_retryable() => {}
                        _ => first_error = Some(e),
                    },
                }
            }
            if first_error.is_some() {
                self.inner.rebuild_producer_if_fatal()?;
            }
            if moved == 0 || first_error.is_some() {
                break;
            }
        }
        let mut conn = self.inner.pool.acquire().await?;
        DepthMeasured {
            rows: outbox::depth(&mut conn).await?,
        }
        .emit(&self.inner.metrics);
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

impl Inner {
    /// One transaction: lock the shard, claim, encode, publish, await, delete, commit.
    async fn publish_batch(&self, shard: i16) -> Result<BatchOutcome, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(RELAY_LOCK_CLASS)
            .bind(i32::from(shard))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(BatchOutcome::Busy);
        }
        let rows = outbox::claim(&mut tx, shard, i64::from(self.config.batch)).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(BatchOutcome::Empty);
        }

        let mut ready = Vec::with_capacity(rows.len());
        let mut poison = Vec::new();
        for row in &rows {
            match self.encode_row(row).await? {
                Ok(encoded) => ready.push(encoded),
                Err(p) => poison.push((row, p)),
            }
        }

        if let Err(e) = self.produce_all(&ready).await {
            // Dropping `tx` would roll back too; saying so keeps the connection clean. The
            // caller rebuilds the producer if the error was fatal to it.
            let _ = tx.rollback().await;
            return Err(e);
        }

        for (row, p) in &poison {
            outbox::dead_letter(&mut tx, row.id, &p.reason).await?;
        }
        let ids: Vec<i64> = ready.iter().map(|r| r.id).collect();
        outbox::delete(&mut tx, &ids).await?;
        tx.commit().await?;

        let now = Utc::now();
        let lags: Vec<f64> = ready
            .iter()
            .map(|r| (now - r.created_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6)
            .collect();
        let samples = ready.iter().filter(|r| r.stream == Stream::Samples).count() as u64;
        let events = ready.len() as u64 - samples;
        for (row, p) in &poison {
            RowDeadLettered {
                outbox_id: row.id,
                shard,
                user_id: row.user_id,
                change_seq: row.change_seq,
                change_index: row.change_index,
                reason_kind: p.kind,
            }
            .emit(&self.metrics);
        }
        BatchPublished {
            shard,
            samples,
            events,
            dead: poison.len() as u64,
            lag_seconds: &lags,
        }
        .emit(&self.metrics);
        Ok(BatchOutcome::Done {
            published: ready.len() as u64,
            dead: poison.len() as u64,
        })
    }

    /// Decodes and Avro-encodes a row. `Ok(Err(_))` is a poison row; `Err(_)` aborts the
    /// batch (outage, or the registry refusing every record of the topic).
    async fn encode_row(&self, row: &ClaimedRow) -> Result<Result<Encoded, Poison>, RelayError> {
        let record = match OutboxRecord::from_row(row.stream, &row.payload) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Poison {
                    kind: "payload",
                    reason: e.to_string(),
                }));
            }
        };
        let stream = record.stream();
        let (key, encoded) = match record {
            OutboxRecord::Sample(s) => (s.key(), self.sample_encoder().await?.encode(&s)),
            OutboxRecord::Event(e) => (e.key(), self.event_encoder().await?.encode(&e)),
        };
        match encoded {
            Ok(bytes) => Ok(Ok(Encoded {
                id: row.id,
                stream,
                key,
                bytes,
                created_at: row.created_at,
            })),
            Err(e) if e.is_retryable() => Err(RelayError::Schema(e)),
            Err(e) => {
                // Blame the row only if a known-good record of the same type encodes.
                if self.canary_encodes(stream).await? {
                    Ok(Err(Poison {
                        kind: "avro",
                        reason: e.to_string(),
                    }))
                } else {
                    Err(RelayError::SchemaRefused {
                        topic: self.topic(stream).to_owned(),
                        source: e,
                    })
                }
            }
        }
    }

    /// The samples encoder, resolving the schema id on first use. A registry that cannot
    /// be reached is retryable; one that refuses the schema refuses every record of the
    /// topic (nothing is dead-lettered for it).
    async fn sample_encoder(&self) -> Result<&RecordEncoder<SampleChange>, RelayError> {
        self.sample_encoder
            .get_or_try_init(|| self.codec.encoder_for::<SampleChange>())
            .await
            .map_err(|e| self.schema_error(Stream::Samples, e))
    }

    async fn event_encoder(&self) -> Result<&RecordEncoder<UserEventChange>, RelayError> {
        self.event_encoder
            .get_or_try_init(|| self.codec.encoder_for::<UserEventChange>())
            .await
            .map_err(|e| self.schema_error(Stream::Events, e))
    }

    fn schema_error(&self, stream: Stream, e: pulseline_schemas::Error) -> RelayError {
        if e.is_retryable() {
            RelayError::Schema(e)
        } else {
            RelayError::SchemaRefused {
                topic: self.topic(stream).to_owned(),
                source: e,
            }
        }
    }

    async fn canary_encodes(&self, stream: Stream) -> Result<bool, RelayError> {
        let result = match stream {
            Stream::Samples => self.sample_encoder().await?.encode(&canary_sample()),
            Stream::Events => self.event_encoder().await?.encode(&canary_event()),
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_retryable() => Err(RelayError::Schema(e)),
            Err(_) => Ok(false),
        }
    }

    fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Samples => &self.sample_topic,
            Stream::Events => &self.event_topic,
        }
    }

    /// Enqueues every record in order, then awaits every delivery (up to the delivery
    /// timeout). Stops enqueueing at the first refusal, so no later record of the batch
    /// can overtake a failed one.
    async fn produce_all(&self, ready: &[Encoded]) -> Result<(), RelayError> {
        let producer = self.producer();
        let deadline = tokio::time::Instant::now() + self.config.delivery_timeout();
        // Records of a timed-out batch may still be queued: wait for them rather than
        // queueing the same rows again behind them (bounds the producer's memory). Other
        // shards' batches in flight are waited for too, then the flag is cleared.
        if self.timed_out.load(Ordering::Acquire) {
            while producer.in_flight_count() > 0 {
                if tokio::time::Instant::now() >= deadline {
                    let pending = usize::try_from(producer.in_flight_count()).unwrap_or(0);
                    return Err(RelayError::DeliveryTimeout { pending });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.timed_out.store(false, Ordering::Release);
        }
        let mut pending = Vec::with_capacity(ready.len());
        let mut refused = None;
        'records: for r in ready {
            let mut record = FutureRecord::to(self.topic(r.stream))
                .key(r.key.as_bytes())
                .payload(&r.bytes);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        refused = Some(e);
                        break 'records;
                    }
                }
            }
        }
        let enqueued = pending.len();
        let Ok(outcomes) = tokio::time::timeout_at(deadline, join_all(pending)).await else {
            self.timed_out.store(true, Ordering::Release);
            return Err(RelayError::DeliveryTimeout { pending: enqueued });
        };
        let mut failed = ready.len() - enqueued;
        let mut first = refused;
        for outcome in outcomes {
            let error = match outcome {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_canceled) => KafkaError::Canceled,
            };
            failed += 1;
            first.get_or_insert(error);
        }
        match first {
            None => Ok(()),
            Some(first) => Err(RelayError::Delivery {
                failed,
                total: ready.len(),
                first,
            }),
        }
    }

    /// A fatal producer error (gapless guarantee, fenced epoch ...) poisons the producer
    /// for good; a new one continues from the rolled-back rows.
    fn rebuild_producer_if_fatal(&self) -> Result<(), RelayError> {
        let mut producer = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_code, reason)) = producer.client().fatal_error() {
            *producer = create_producer(&self.config)?;
            ProducerRebuilt { reason: &reason }.emit(&self.metrics);
        }
        Ok(())
    }

    /// The current producer (a cheap handle).
    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn create_producer(config: &RelayConfig) -> Result<FutureProducer, RelayError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_bootstrap)
        .set("client.id", "pulseline-relay")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Records never expire: an expired queued record is the one failure that lets a
        // later record of its partition through (librdkafka's idempotence docs), which
        // would put a user's changes out of order. The batch gives up waiting instead
        // (`delivery_timeout_ms`) and leaves the records to be delivered later.
        .set("message.timeout.ms", "0")
        // Any other failure that could leave a gap becomes fatal (the producer is rebuilt).
        .set("enable.gapless.guarantee", "true")
        .set("linger.ms", "5")
        // Avro records of one user repeat most strings: lz4 shrinks a batch several times
        // for little CPU, so the broker has less to take in and acknowledges sooner.
        .set("compression.type", "lz4")
        // Keys map to partitions as Java clients map them (Kafka Streams, Connect).
        .set("partitioner", "murmur2_random")
        .create()?)
}

/// Valid records used to tell a poison row from a registry refusing a whole topic.
fn canary_sample() -> SampleChange {
    SampleChange {
        user_id: uuid::Uuid::nil().to_string(),
        change_seq: 0,
        change_index: 0,
        operation: Operation::Upsert,
        source_id: "canary".to_owned(),
        device_type: "other".to_owned(),
        source_record_id: "canary".to_owned(),
        start_at: 0,
        metric: "steps".to_owned(),
        end_at: Some(0),
        tz_offset_minutes: 0,
        value: Some(0.0),
        unit: Some("count".to_owned()),
        category: None,
        metadata_json: None,
        accepted_at: 0,
    }
}

fn canary_event() -> UserEventChange {
    UserEventChange {
        user_id: uuid::Uuid::nil().to_string(),
        change_seq: 0,
        change_index: 0,
        operation: Operation::Upsert,
        event_id: "canary".to_owned(),
        event_type: "other".to_owned(),
        product_id: None,
        start_at: 0,
        end_at: None,
        tz_offset_minutes: 0,
        attributes_json: None,
        accepted_at: 0,
    }
}

/// Turns NOTIFYs into wake-ups. A lost connection also wakes the relay (notifications may
/// have been missed) and is retried forever; the poll interval covers the gap.
async fn listen_for_wakeups(database_url: String, wake: Arc<Notify>, metrics: Arc<RelayMetrics>) {
    loop {
        match PgListener::connect(&database_url).await {
            Ok(mut listener) => match listener.listen(outbox::NOTIFY_CHANNEL).await {
                Ok(()) => {
                    wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => wake.notify_one(),
                            Ok(None) => {
                                // try_recv reconnects and re-listens on the next call.
                                ListenerLost { error: None }.emit(&metrics);
                                wake.notify_one();
                            }
                            Err(e) => {
                                ListenerLost { error: Some(&e) }.emit(&metrics);
                                break;
                            }
                        }
                    }
                }
                Err(e) => ListenerLost { error: Some(&e) }.emit(&metrics),
            },
            Err(e) => ListenerLost { error: Some(&e) }.emit(&metrics),
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let m = RelayMetrics::new().expect("distinct, valid metric names");
        BatchPublished {
            shard: 0,
            samples: 2,
            events: 1,
            dead: 0,
            lag_seconds: &[0.1, 0.2, 0.3],
        }
        .emit(&m);
        let text = m.render();
        assert!(
            text.contains(r#"pulseline_relay_rows_published_total{stream="samples"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("pulseline_relay_lag_seconds_count 3"),
            "{text}"
        );
        assert_eq!(m.rows_published(Stream::Events), 1);
    }
}
