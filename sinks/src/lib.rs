//! Read-model sinks: versioned upserts from the read-model topics into a read store,
//! exactly once. Postgres (the embedded default) is built; ScyllaDB and the Parquet export
//! are not yet.
//!
//! - `sink`: the `Sink` trait (one implementation per engine) and the rows it is fed.
//! - `postgres`: `PostgresSink` and its migrations (versions 1001+).
//! - `runner`: the consumer that feeds a sink, with offsets kept in the store.
//! - `app`/`config`: the `pulseline-sink` process.
//!
//! This crate owns the read-model tables and the sink's offsets; it never writes the
//! gateway's tables and never commits offsets to Kafka.

pub mod app;
pub mod config;
pub mod error;
pub mod postgres;
pub mod runner;
pub mod sink;
pub mod telemetry;

use std::sync::Arc;

pub use app::SinkApplication;
pub use config::SinkConfig;
pub use error::SinkError;
pub use postgres::PostgresSink;
pub use sink::{Applied, OffsetScope, PartitionSpan, RollupBatch, RollupRow, Sink};

/// Opens (and migrates) the read store a URL names: the scheme chooses the engine.
pub async fn open(url: &str, pool_size: u32) -> Result<Arc<dyn Sink>, SinkError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "postgres" | "postgresql" => {
            let sink = PostgresSink::connect(url, pool_size).await?;
            sink.migrate().await?;
            Ok(Arc::new(sink))
        }
        "scylla" | "cql" => Err(SinkError::Config(
            "the ScyllaDB sink is not built yet; use a postgres:// URL".into(),
        )),
        _ => Err(SinkError::Config(format!(
            "unsupported read-store URL scheme `{scheme}` (expected postgres://)"
        ))),
    }
}
