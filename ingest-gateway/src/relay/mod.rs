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
mod publish;
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
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OnceCell, watch};
use tokio::task::JoinSet;

pub use cli::{Cli, Command, RepublishArgs, run_cli};
pub use config::RelayConfig;
pub use error::RelayError;
pub use metrics::RelayMetrics;
pub use republish::{
    ChangeIds, ItemKeys, RepublishScope, RepublishSummary, StreamChoice, Users, republish,
};

use self::publish::{BatchOutcome, create_producer};
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
            .connect_with(session_options(&config)?)
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

/// The relay's Postgres sessions end a batch transaction that stalls: a relay that froze
/// (SIGSTOP, a paused VM, a network partition) would otherwise keep its shards' locks until
/// TCP keepalive notices, hours later, and no other relay could publish them. A batch is
/// idle in its transaction only while it awaits acknowledgements, which the delivery
/// timeout bounds; its statements are small and indexed.
fn session_options(config: &RelayConfig) -> Result<PgConnectOptions, RelayError> {
    let idle_ms = config
        .delivery_timeout_ms
        .saturating_add(STALLED_BATCH_GRACE_MS);
    Ok(config.database_url.parse::<PgConnectOptions>()?.options([
        ("idle_in_transaction_session_timeout", idle_ms.to_string()),
        ("statement_timeout", STATEMENT_TIMEOUT_MS.to_string()),
    ]))
}

/// How much longer than the delivery timeout a batch may sit idle in its transaction.
const STALLED_BATCH_GRACE_MS: u64 = 30_000;

/// Ceiling on one relay statement (claim, delete, dead-letter, depth).
const STATEMENT_TIMEOUT_MS: u64 = 60_000;

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
