//! The sink's metrics and log events, emitted from one place: each event is a small
//! struct (`BatchApplied { .. }`) that knows which metrics it moves and what it logs.
//!
//! Nothing here logs a read-model value (PHI): only counts, partitions, offsets, reasons.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The sink's Prometheus registry (one per runner, so tests in one process do not share
/// counters). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SinkTelemetry {
    registry: Registry,
    rows_applied: IntCounter,
    stale_skipped: IntCounter,
    records_consumed: IntCounter,
    batch_seconds: Histogram,
    batch_records: Histogram,
    record_age_seconds: Histogram,
    invalid_records: IntCounterVec,
    offset_conflicts: IntCounter,
    batches_discarded: IntCounter,
    apply_failures: IntCounter,
}

/// One thing that happened, worth a metric and maybe a log line.
pub trait SinkEvent {
    fn emit(self, t: &SinkTelemetry);
}

impl SinkTelemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("pulseline_sink".into()), None)?;
        let rows_applied = IntCounter::with_opts(Opts::new(
            "rows_applied_total",
            "Read-model rows inserted or replaced by a newer version",
        ))?;
        let stale_skipped = IntCounter::with_opts(Opts::new(
            "stale_versions_skipped_total",
            "Records not written because the row already had this or a newer version",
        ))?;
        let records_consumed = IntCounter::with_opts(Opts::new(
            "records_consumed_total",
            "Records in committed batches (each record counted once, in the batch that committed it)",
        ))?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "batch_apply_duration_seconds",
                "Time to write one batch and its offsets in one transaction",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let batch_records = Histogram::with_opts(
            HistogramOpts::new("batch_records", "Records per committed batch").buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
            ]),
        )?;
        let record_age_seconds = pulseline_service::ops::stage_latency_histogram(
            &registry,
            "record_age_seconds",
            "Time from a record's Kafka timestamp (the processor produced it) to its batch being applied: the sink stage's latency",
        )?;
        let invalid_records = IntCounterVec::new(
            Opts::new(
                "invalid_records_total",
                "Records that could not be decoded or parsed, sent to the dead-letter topic",
            ),
            &["reason"],
        )?;
        let offset_conflicts = IntCounter::with_opts(Opts::new(
            "offset_conflicts_total",
            "Batches refused because their stored offset had moved (fenced or retried commit)",
        ))?;
        let batches_discarded = IntCounter::with_opts(Opts::new(
            "batches_discarded_total",
            "Uncommitted batches dropped on a rebalance (re-read by the partitions' owner)",
        ))?;
        let apply_failures = IntCounter::with_opts(Opts::new(
            "apply_failures_total",
            "Failed attempts to apply a batch (retried)",
        ))?;
        registry.register(Box::new(rows_applied.clone()))?;
        registry.register(Box::new(stale_skipped.clone()))?;
        registry.register(Box::new(records_consumed.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(batch_records.clone()))?;
        registry.register(Box::new(invalid_records.clone()))?;
        registry.register(Box::new(offset_conflicts.clone()))?;
        registry.register(Box::new(batches_discarded.clone()))?;
        registry.register(Box::new(apply_failures.clone()))?;
        Ok(Self {
            registry,
            rows_applied,
            stale_skipped,
            records_consumed,
            batch_seconds,
            batch_records,
            record_age_seconds,
            invalid_records,
            offset_conflicts,
            batches_discarded,
            apply_failures,
        })
    }

    pub fn emit(&self, event: impl SinkEvent) {
        event.emit(self);
    }

    /// Rows written so far (for tests and the demo's summary).
    pub fn rows_applied(&self) -> u64 {
        self.rows_applied.get()
    }

    /// Records skipped as stale or duplicate so far.
    pub fn stale_skipped(&self) -> u64 {
        self.stale_skipped.get()
    }

    /// Records in committed batches so far.
    pub fn records_consumed(&self) -> u64 {
        self.records_consumed.get()
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A batch committed: rows, progress and offsets.
#[derive(Debug)]
pub struct BatchApplied {
    pub records: usize,
    pub partitions: usize,
    pub rows_applied: u64,
    pub stale_skipped: u64,
    pub elapsed: Duration,
    /// Seconds from each record's Kafka timestamp to the commit.
    pub record_ages: Vec<f64>,
}

impl SinkEvent for BatchApplied {
    fn emit(self, t: &SinkTelemetry) {
        t.rows_applied.inc_by(self.rows_applied);
        t.stale_skipped.inc_by(self.stale_skipped);
        t.records_consumed.inc_by(self.records as u64);
        t.batch_seconds.observe(self.elapsed.as_secs_f64());
        t.batch_records.observe(self.records as f64);
        for age in &self.record_ages {
            t.record_age_seconds.observe(*age);
        }
        tracing::debug!(
            records = self.records,
            partitions = self.partitions,
            rows_applied = self.rows_applied,
            stale_skipped = self.stale_skipped,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "batch applied"
        );
    }
}

/// A record could not be decoded or parsed; it goes to the dead-letter topic.
#[derive(Debug)]
pub struct InvalidRecordSeen {
    pub partition: i32,
    pub offset: i64,
    /// A dead-letter reason code (`pulseline_schemas::dead_letter::reason`).
    pub reason: &'static str,
    /// A fixed description: decoder errors can quote values, so they go only to the
    /// dead-letter record's header, never to the log.
    pub detail: &'static str,
}

impl SinkEvent for InvalidRecordSeen {
    fn emit(self, t: &SinkTelemetry) {
        t.invalid_records.with_label_values(&[self.reason]).inc();
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            detail = self.detail,
            "record sent to the dead-letter topic"
        );
    }
}

/// A batch was refused because its stored offset had moved.
#[derive(Debug)]
pub struct OffsetConflictSeen<'a> {
    pub error: &'a str,
}

impl SinkEvent for OffsetConflictSeen<'_> {
    fn emit(self, t: &SinkTelemetry) {
        t.offset_conflicts.inc();
        tracing::warn!(
            error = self.error,
            "batch refused: stored offset moved; re-reading from the stored offsets"
        );
    }
}

/// A rebalance made an uncommitted batch obsolete.
#[derive(Debug)]
pub struct BatchDiscarded {
    pub records: usize,
}

impl SinkEvent for BatchDiscarded {
    fn emit(self, t: &SinkTelemetry) {
        t.batches_discarded.inc();
        tracing::info!(
            records = self.records,
            "uncommitted batch dropped on rebalance"
        );
    }
}

/// Applying a batch failed; it will be retried.
#[derive(Debug)]
pub struct ApplyFailed<'a> {
    pub attempt: u32,
    pub error: &'a str,
}

impl SinkEvent for ApplyFailed<'_> {
    fn emit(self, t: &SinkTelemetry) {
        t.apply_failures.inc();
        tracing::warn!(
            attempt = self.attempt,
            error = self.error,
            "applying a batch failed; retrying"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_their_metrics() {
        let t = SinkTelemetry::new().unwrap();
        t.emit(BatchApplied {
            records: 5,
            partitions: 2,
            rows_applied: 3,
            stale_skipped: 2,
            elapsed: Duration::from_millis(4),
            record_ages: vec![0.02, 0.2, 3.0],
        });
        t.emit(InvalidRecordSeen {
            partition: 0,
            offset: 9,
            reason: "UNDECODABLE",
            detail: "bad magic byte",
        });
        let text = pulseline_service::ops::render(t.registry());
        assert!(
            text.contains("pulseline_sink_rows_applied_total 3"),
            "{text}"
        );
        assert!(
            text.contains("pulseline_sink_stale_versions_skipped_total 2"),
            "{text}"
        );
        assert!(
            text.contains(r#"pulseline_sink_invalid_records_total{reason="UNDECODABLE"} 1"#),
            "{text}"
        );
        assert!(text.contains("pulseline_sink_batch_apply_duration_seconds_bucket"));
        assert!(
            text.contains(r#"pulseline_sink_record_age_seconds_bucket{le="0.25"} 2"#)
                && text.contains("pulseline_sink_record_age_seconds_count 3"),
            "{text}"
        );
        assert_eq!(t.records_consumed(), 5);
    }
}
