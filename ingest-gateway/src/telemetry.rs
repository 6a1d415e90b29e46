//! The gateway's metrics and log events, emitted from one place: each event is a small
//! struct (`BatchProcessed { .. }`) that knows which counters it moves and what it logs.
//! Handlers call `telemetry.emit(event)`, never a counter directly.
//!
//! Nothing here logs a sample or event value (PHI): only counts, codes, routes and ids.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use pulseline_service::http::HttpMetrics;

use crate::validate::RejectCode;

/// The gateway's Prometheus registry and metric families (one per application, so
/// several applications in one test process do not share counters).
#[derive(Debug, Clone)]
pub struct Telemetry {
    registry: Registry,
    http: HttpMetrics,
    items: IntCounterVec,
    rejections: IntCounterVec,
    batch_seconds: HistogramVec,
    batch_items: HistogramVec,
    replays: IntCounterVec,
    retention_deleted: IntCounterVec,
}

/// One thing that happened, worth a metric and maybe a log line.
pub trait GatewayEvent {
    fn emit(self, t: &Telemetry);
}

impl Telemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("pulseline_gateway".into()), None)?;
        // Request metrics by route and status, recorded by `pulseline_service::http::observe`.
        let http = HttpMetrics::register(&registry)?;
        let items = IntCounterVec::new(
            Opts::new(
                "items_total",
                "Batch items by stream and status (accepted, updated, duplicate, deleted, rejected)",
            ),
            &["stream", "status"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "Rejected items by stream and code"),
            &["stream", "code"],
        )?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "batch_duration_seconds",
                "Time to validate and commit one batch",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["stream"],
        )?;
        let batch_items = HistogramVec::new(
            HistogramOpts::new("batch_items", "Items per batch").buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
            ]),
            &["stream"],
        )?;
        let replays = IntCounterVec::new(
            Opts::new(
                "idempotent_replays_total",
                "Requests answered from a stored answer (same requestId and payload)",
            ),
            &["stream"],
        )?;
        let retention_deleted = IntCounterVec::new(
            Opts::new("retention_deleted_rows_total", "Rows removed by retention"),
            &["table"],
        )?;
        registry.register(Box::new(items.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(batch_items.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(retention_deleted.clone()))?;
        Ok(Self {
            registry,
            http,
            items,
            rejections,
            batch_seconds,
            batch_items,
            replays,
            retention_deleted,
        })
    }

    pub fn emit(&self, event: impl GatewayEvent) {
        event.emit(self);
    }

    /// The HTTP request metrics (`pulseline_service::http::observe` records them).
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A batch was committed (or answered from its stored answer).
#[derive(Debug)]
pub struct BatchProcessed<'a> {
    pub stream: &'static str,
    pub user_id: uuid::Uuid,
    pub user_seq: i64,
    pub accepted: u32,
    pub updated: u32,
    pub duplicates: u32,
    pub deleted: u32,
    pub rejections: &'a [RejectCode],
    pub elapsed: Duration,
    /// Answered from the stored answer of an earlier identical request.
    pub replayed: bool,
}

impl GatewayEvent for BatchProcessed<'_> {
    fn emit(self, t: &Telemetry) {
        let rejected = self.rejections.len() as u64;
        if self.replayed {
            t.replays.with_label_values(&[self.stream]).inc();
            tracing::info!(stream = self.stream, user_id = %self.user_id, user_seq = self.user_seq, "batch replayed from stored answer");
            return;
        }
        let items =
            u64::from(self.accepted + self.updated + self.duplicates + self.deleted) + rejected;
        for (status, n) in [
            ("accepted", u64::from(self.accepted)),
            ("updated", u64::from(self.updated)),
            ("duplicate", u64::from(self.duplicates)),
            ("deleted", u64::from(self.deleted)),
            ("rejected", rejected),
        ] {
            if n > 0 {
                t.items.with_label_values(&[self.stream, status]).inc_by(n);
            }
        }
        for code in self.rejections {
            t.rejections
                .with_label_values(&[self.stream, code.as_str()])
                .inc();
        }
        t.batch_seconds
            .with_label_values(&[self.stream])
            .observe(self.elapsed.as_secs_f64());
        t.batch_items
            .with_label_values(&[self.stream])
            .observe(items as f64);
        tracing::info!(
            stream = self.stream,
            user_id = %self.user_id,
            user_seq = self.user_seq,
            items,
            accepted = self.accepted,
            updated = self.updated,
            duplicates = self.duplicates,
            deleted = self.deleted,
            rejected,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "batch committed"
        );
    }
}

/// The retention task removed expired rows.
#[derive(Debug)]
pub struct RetentionRan {
    pub idempotency_keys: u64,
    pub samples: u64,
    pub events: u64,
}

impl GatewayEvent for RetentionRan {
    fn emit(self, t: &Telemetry) {
        for (table, n) in [
            ("idempotency_key", self.idempotency_keys),
            ("sample", self.samples),
            ("user_event", self.events),
        ] {
            t.retention_deleted.with_label_values(&[table]).inc_by(n);
        }
        tracing::info!(
            idempotency_keys = self.idempotency_keys,
            samples = self.samples,
            events = self.events,
            "retention removed expired rows"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_their_metrics() {
        let t = Telemetry::new().unwrap();
        t.emit(BatchProcessed {
            stream: "samples",
            user_id: uuid::Uuid::nil(),
            user_seq: 1,
            accepted: 2,
            updated: 0,
            duplicates: 1,
            deleted: 0,
            rejections: &[RejectCode::OutOfRange],
            elapsed: Duration::from_millis(2),
            replayed: false,
        });
        let text = pulseline_service::ops::render(t.registry());
        assert!(
            text.contains(r#"pulseline_gateway_items_total{status="accepted",stream="samples"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pulseline_gateway_rejections_total{code="OUT_OF_RANGE",stream="samples"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("pulseline_gateway_batch_items_bucket"),
            "{text}"
        );
    }
}
