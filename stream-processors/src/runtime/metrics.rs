//! The runtime's Prometheus collectors and log lines, emitted from one place. Nothing here
//! may log a payload or a value (PHI): topics, partitions, counts and error kinds only.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Collectors in a registry the runtime owns (no global state: several runtimes in one
/// test process keep their own counts).
#[derive(Debug, Clone)]
pub struct RuntimeMetrics {
    registry: Registry,
    pub(crate) records_in: IntCounterVec,
    pub(crate) records_applied: IntCounterVec,
    pub(crate) records_skipped: IntCounterVec,
    pub(crate) records_out: IntCounterVec,
    pub(crate) dead_letters: IntCounterVec,
    pub(crate) flush_violations: IntCounterVec,
    pub(crate) transactions: IntCounterVec,
    pub(crate) batch_seconds: HistogramVec,
    pub(crate) record_age_seconds: Histogram,
    pub(crate) restored_entries: IntCounterVec,
    pub(crate) restore_seconds: HistogramVec,
    pub(crate) input_lag: IntGaugeVec,
}

impl RuntimeMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let records_in = counter(
            "pulseline_processor_records_in_total",
            "Input records consumed",
            &["topic"],
        )?;
        let records_applied = counter(
            "pulseline_processor_records_applied_total",
            "Input records applied to a processor's state",
            &["processor"],
        )?;
        let records_skipped = counter(
            "pulseline_processor_records_skipped_total",
            "Input records skipped because their change id was already applied",
            &["processor"],
        )?;
        let records_out = counter(
            "pulseline_processor_records_out_total",
            "Read-model upserts produced",
            &["topic"],
        )?;
        let dead_letters = counter(
            "pulseline_processor_dead_letters_total",
            "Records sent to the dead-letter topic, by reason and by the processor that refused them (`runtime` when none had them yet: undecodable, empty)",
            &["reason", "processor"],
        )?;
        let flush_violations = counter(
            "pulseline_processor_flush_violations_total",
            "Rows a processor's flush left unrendered or rendered untouched (processor bugs)",
            &["processor"],
        )?;
        let transactions = counter(
            "pulseline_processor_transactions_total",
            "Batches committed or aborted",
            &["outcome"],
        )?;
        let restored_entries = counter(
            "pulseline_processor_restored_entries_total",
            "Changelog entries replayed on partition assignment",
            &["processor"],
        )?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pulseline_processor_batch_seconds",
                "Time to process and commit one batch",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["mode"],
        )?;
        registry.register(Box::new(batch_seconds.clone()))?;
        let record_age_seconds = pulseline_service::ops::stage_latency_histogram(
            &registry,
            "pulseline_processor_record_age_seconds",
            "Time from an input record's Kafka timestamp (the relay published it) to the commit of the batch that processed it: the processor stage's latency",
        )?;
        let restore_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pulseline_processor_restore_seconds",
                "Time to restore a processor's partitions from its changelog",
            )
            .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
            &["processor"],
        )?;
        registry.register(Box::new(restore_seconds.clone()))?;
        let input_lag = IntGaugeVec::new(
            Opts::new(
                "pulseline_processor_input_lag_records",
                "Records between this instance's position and the end of an input partition (backfill progress)",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(input_lag.clone()))?;
        Ok(Self {
            registry,
            records_in,
            records_applied,
            records_skipped,
            records_out,
            dead_letters,
            flush_violations,
            transactions,
            batch_seconds,
            record_age_seconds,
            restored_entries,
            restore_seconds,
            input_lag,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        pulseline_service::ops::render(&self.registry)
    }

    /// Current value of a counter with one label, for tests and the final report.
    pub fn count(&self, name: &str, label: &str) -> u64 {
        let vec = match name {
            "in" => &self.records_in,
            "applied" => &self.records_applied,
            "skipped" => &self.records_skipped,
            "out" => &self.records_out,
            "transactions" => &self.transactions,
            "restored" => &self.restored_entries,
            _ => return 0,
        };
        vec.get_metric_with_label_values(&[label])
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// A batch committed (or, without transactions, its offsets committed).
pub(crate) struct BatchCommitted {
    pub records: usize,
    pub outputs: usize,
    pub elapsed: Duration,
    pub transactional: bool,
    /// Seconds from each input record's Kafka timestamp to the commit.
    pub record_ages: Vec<f64>,
}

impl BatchCommitted {
    pub fn emit(&self, m: &RuntimeMetrics) {
        let mode = if self.transactional {
            "transactional"
        } else {
            "at_least_once"
        };
        m.batch_seconds
            .with_label_values(&[mode])
            .observe(self.elapsed.as_secs_f64());
        for age in &self.record_ages {
            m.record_age_seconds.observe(*age);
        }
        m.transactions.with_label_values(&["commit"]).inc();
        tracing::debug!(
            records = self.records,
            outputs = self.outputs,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "batch committed"
        );
    }
}

/// A batch failed: aborted, state reloaded, consumer rewound.
pub(crate) struct BatchAborted<'a> {
    pub kind: &'a str,
    pub error: &'a str,
}

impl BatchAborted<'_> {
    pub fn emit(&self, m: &RuntimeMetrics) {
        m.transactions.with_label_values(&["abort"]).inc();
        tracing::warn!(
            kind = self.kind,
            error = self.error,
            "batch aborted; reloading state and rewinding"
        );
    }
}

/// A record went to the dead-letter topic.
pub(crate) struct DeadLettered<'a> {
    pub reason: &'a str,
    /// The refusing processor; empty when the runtime refused the record itself.
    pub processor: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DeadLettered<'_> {
    pub fn emit(&self, m: &RuntimeMetrics) {
        let processor = if self.processor.is_empty() {
            "runtime"
        } else {
            self.processor
        };
        m.dead_letters
            .with_label_values(&[self.reason, processor])
            .inc();
        tracing::warn!(
            reason = self.reason,
            processor,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "record dead-lettered"
        );
    }
}

/// A processor's partitions were restored from its changelog.
pub(crate) struct Restored<'a> {
    pub processor: &'a str,
    pub partitions: &'a [i32],
    pub entries: u64,
    pub users: usize,
    pub elapsed: Duration,
}

impl Restored<'_> {
    pub fn emit(&self, m: &RuntimeMetrics) {
        m.restored_entries
            .with_label_values(&[self.processor])
            .inc_by(self.entries);
        m.restore_seconds
            .with_label_values(&[self.processor])
            .observe(self.elapsed.as_secs_f64());
        tracing::info!(
            processor = self.processor,
            partitions = ?self.partitions,
            entries = self.entries,
            users = self.users,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "state restored from changelog"
        );
    }
}

/// Lag measured on the assigned input partitions (backfill progress).
pub(crate) struct Progress<'a> {
    pub lags: &'a [(String, i32, i64)],
    pub consumed: u64,
    pub rate_per_sec: f64,
}

impl Progress<'_> {
    pub fn emit(&self, m: &RuntimeMetrics) {
        let mut total = 0;
        for (topic, partition, lag) in self.lags {
            m.input_lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(*lag);
            total += lag;
        }
        tracing::info!(
            lag_records = total,
            consumed = self.consumed,
            rate_per_sec = self.rate_per_sec as u64,
            partitions = self.lags.len(),
            "progress"
        );
    }
}
