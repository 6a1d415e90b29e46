//! The query API's metrics and log events, emitted from one place: each event is a small
//! struct that knows which metrics it moves. Handlers call `telemetry.emit(event)`.
//!
//! Nothing here logs a read-model value (PHI): only routes, statuses, counts and lags.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use pulseline_service::http::HttpMetrics;

/// The API's Prometheus registry (one per application, so tests do not share counters).
#[derive(Debug, Clone)]
pub struct Telemetry {
    registry: Registry,
    http: HttpMetrics,
    answers: IntCounterVec,
    lag_seconds: Histogram,
    sql_seconds: HistogramVec,
}

/// One thing that happened, worth a metric and maybe a log line.
pub trait QueryEvent {
    fn emit(self, t: &Telemetry);
}

impl Telemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("pulseline_query".into()), None)?;
        // Request metrics by route and status, recorded by `pulseline_service::http::observe`.
        let http = HttpMetrics::register(&registry)?;
        let answers = IntCounterVec::new(
            Opts::new(
                "read_model_answers_total",
                "Read-model answers by read model and freshness status",
            ),
            &["read_model", "status"],
        )?;
        let lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "freshness_lag_seconds",
                "Freshness lag reported in answers (0 when fresh)",
            )
            .buckets(vec![
                0.0, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
        )?;
        let sql_seconds = HistogramVec::new(
            HistogramOpts::new(
                "analytics_query_seconds",
                "Analysts' SQL queries by outcome (OK or the error code), and their duration",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["outcome"],
        )?;
        registry.register(Box::new(sql_seconds.clone()))?;
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        Ok(Self {
            registry,
            http,
            answers,
            lag_seconds,
            sql_seconds,
        })
    }

    pub fn emit(&self, event: impl QueryEvent) {
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

/// A read-model answer went out with this freshness.
#[derive(Debug)]
pub struct ReadModelAnswered {
    pub read_model: &'static str,
    pub fresh: bool,
    pub lag_seconds: f64,
    pub points: usize,
}

impl QueryEvent for ReadModelAnswered {
    fn emit(self, t: &Telemetry) {
        let status = if self.fresh { "fresh" } else { "stale" };
        t.answers
            .with_label_values(&[self.read_model, status])
            .inc();
        t.lag_seconds.observe(self.lag_seconds);
        tracing::debug!(
            read_model = self.read_model,
            status,
            lag_seconds = self.lag_seconds,
            points = self.points,
            "read model answered"
        );
    }
}

/// An analyst's query finished (or was refused). Logged with a hash of the text, never the
/// text or the rows: an analyst may paste identifying values into a WHERE clause.
#[derive(Debug)]
pub struct AnalyticsQueryRan<'a> {
    pub analyst: uuid::Uuid,
    pub sql_hash: &'a str,
    /// `OK` or the error code.
    pub outcome: &'static str,
    pub rows: usize,
    pub truncated: bool,
    pub elapsed: Duration,
}

impl QueryEvent for AnalyticsQueryRan<'_> {
    fn emit(self, t: &Telemetry) {
        t.sql_seconds
            .with_label_values(&[self.outcome])
            .observe(self.elapsed.as_secs_f64());
        tracing::info!(
            analyst = %self.analyst,
            sql_sha256 = self.sql_hash,
            outcome = self.outcome,
            rows = self.rows,
            truncated = self.truncated,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "analytics query"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_their_metrics() {
        let t = Telemetry::new().unwrap();
        t.emit(ReadModelAnswered {
            read_model: "rollups",
            fresh: false,
            lag_seconds: 1.5,
            points: 3,
        });
        let text = pulseline_service::ops::render(t.registry());
        assert!(
            text.contains(
                r#"pulseline_query_read_model_answers_total{read_model="rollups",status="stale"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("pulseline_query_freshness_lag_seconds_bucket"));
    }
}
