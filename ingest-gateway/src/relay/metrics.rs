//! The relay's metrics and log lines, emitted from one place: each thing that happens is a
//! small event struct whose `emit` updates the counters and writes the log line. Nothing
//! here may log a payload or a value (PHI): ids, counts and error kinds only.

use std::net::SocketAddr;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::RelayError;
use crate::outbox::Stream;

/// The relay's Prometheus collectors, in a registry the relay owns (no global state, so
/// several relays in one test process do not share counters).
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    registry: Registry,
    rows_published: IntCounterVec,
    batches: IntCounter,
    failures: IntCounterVec,
    dead_lettered: IntCounter,
    outbox_depth: IntGauge,
    lag_seconds: Histogram,
}

impl RelayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rows_published = IntCounterVec::new(
            Opts::new(
                "pulseline_relay_rows_published_total",
                "Outbox rows published to Kafka and deleted",
            ),
            &["stream"],
        )?;
        let batches = IntCounter::new(
            "pulseline_relay_batches_total",
            "Batches published and committed",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "pulseline_relay_failures_total",
                "Batches rolled back (rows kept), by error kind",
            ),
            &["kind"],
        )?;
        let dead_lettered = IntCounter::new(
            "pulseline_relay_dead_lettered_total",
            "Poison rows moved to outbox_dead",
        )?;
        let outbox_depth =
            IntGauge::new("pulseline_relay_outbox_depth", "Rows waiting in the outbox")?;
        let lag_seconds = pulseline_service::ops::stage_latency_histogram(
            &registry,
            "pulseline_relay_lag_seconds",
            "Time from enqueue to acknowledged publication",
        )?;
        registry.register(Box::new(rows_published.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(outbox_depth.clone()))?;
        Ok(Self {
            registry,
            rows_published,
            batches,
            failures,
            dead_lettered,
            outbox_depth,
            lag_seconds,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every collector.
    pub fn render(&self) -> String {
        pulseline_service::ops::render(&self.registry)
    }

    pub fn rows_published(&self, stream: Stream) -> u64 {
        self.rows_published
            .with_label_values(&[stream_label(stream)])
            .get()
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.get()
    }
}

fn stream_label(stream: Stream) -> &'static str {
    match stream {
        Stream::Samples => "samples",
        Stream::Events => "events",
    }
}

/// Something the relay reports.
pub(crate) trait RelayEvent {
    fn emit(self, metrics: &RelayMetrics);
}

pub(crate) struct RelayStarted<'a> {
    pub config: &'a super::RelayConfig,
    pub metrics_addr: SocketAddr,
}

impl RelayEvent for RelayStarted<'_> {
    fn emit(self, _: &RelayMetrics) {
        let c = self.config.redacted();
        tracing::info!(
            database_url = %c.database_url,
            kafka_bootstrap = %c.kafka_bootstrap,
            schema_registry_url = %c.schema_registry_url,
            topic_prefix = %c.topic_prefix,
            shards = c.shards,
            batch = c.batch,
            poll_ms = c.poll_ms,
            metrics_addr = %self.metrics_addr,
            "relay started"
        );
    }
}

pub(crate) struct BatchPublished<'a> {
    pub shard: i16,
    pub samples: u64,
    pub events: u64,
    pub dead: u64,
    pub lag_seconds: &'a [f64],
}

impl RelayEvent for BatchPublished<'_> {
    fn emit(self, m: &RelayMetrics) {
        m.rows_published
            .with_label_values(&["samples"])
            .inc_by(self.samples);
        m.rows_published
            .with_label_values(&["events"])
            .inc_by(self.events);
        m.batches.inc();
        for lag in self.lag_seconds {
            m.lag_seconds.observe(*lag);
        }
        let max_lag = self.lag_seconds.iter().copied().fold(0.0_f64, f64::max);
        tracing::debug!(
            shard = self.shard,
            samples = self.samples,
            events = self.events,
            dead = self.dead,
            max_lag_seconds = max_lag,
            "batch published"
        );
    }
}

pub(crate) struct BatchFailed<'a> {
    pub error: &'a RelayError,
}

impl RelayEvent for BatchFailed<'_> {
    fn emit(self, m: &RelayMetrics) {
        m.failures.with_label_values(&[self.error.kind()]).inc();
        tracing::warn!(
            kind = self.error.kind(),
            retryable = self.error.is_retryable(),
            error = %self.error.log_safe(),
            "publishing failed; rows stay in the outbox"
        );
    }
}

pub(crate) struct RowDeadLettered {
    pub outbox_id: i64,
    pub shard: i16,
    pub user_id: uuid::Uuid,
    pub change_seq: i64,
    pub change_index: i32,
    /// A fixed label, never the error text (which may quote the payload).
    pub reason_kind: &'static str,
}

impl RelayEvent for RowDeadLettered {
    fn emit(self, m: &RelayMetrics) {
        m.dead_lettered.inc();
        tracing::error!(
            outbox_id = self.outbox_id,
            shard = self.shard,
            user_id = %self.user_id,
            change_seq = self.change_seq,
            change_index = self.change_index,
            reason = self.reason_kind,
            "poison outbox row moved to outbox_dead"
        );
    }
}

pub(crate) struct DepthMeasured {
    pub rows: i64,
}

impl RelayEvent for DepthMeasured {
    fn emit(self, m: &RelayMetrics) {
        m.outbox_depth.set(self.rows);
    }
}

pub(crate) struct ProducerRebuilt<'a> {
    pub reason: &'a str,
}

impl RelayEvent for ProducerRebuilt<'_> {
    fn emit(self, m: &RelayMetrics) {
        m.failures.with_label_values(&["producer_fatal"]).inc();
        tracing::warn!(
            reason = self.reason,
            "kafka producer hit a fatal error; rebuilt it"
        );
    }
}

pub(crate) struct ListenerLost<'a> {
    pub error: Option<&'a sqlx::Error>,
}

impl RelayEvent for ListenerLost<'_> {
    fn emit(self, m: &RelayMetrics) {
        m.failures.with_label_values(&["listener"]).inc();
        match self.error {
            Some(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling until it is back")
            }
            None => tracing::warn!("LISTEN connection lost; reconnecting, polling meanwhile"),
        }
    }
}

pub(crate) struct RelayStopped;

impl RelayEvent for RelayStopped {
    fn emit(self, _: &RelayMetrics) {
        tracing::info!("relay stopped");
    }
}
