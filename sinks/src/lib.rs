//! Read-model sinks: versioned upserts from the read-model topics into a read store,
//! exactly once. Postgres (the embedded default) is built; ScyllaDB is not yet. The
//! pseudonymised Parquet export for analysts reads the same tables (`export`).
//!
//! - `sink`: the `Sink` trait (one implementation per engine) and the rows it is fed.
//! - `postgres`: `PostgresSink` and its migrations (versions 1001+).
//! - `runner`: the consumer that feeds a sink, with offsets kept in the store.
//! - `app`/`config`: the `pulseline-sink` process.
//! - `export`: the pseudonymised Parquet export for analysts (`pulseline-export`).
//!
//! This crate owns the read-model tables and the sink's offsets; it never writes the
//! gateway's tables and never commits offsets to Kafka.

pub mod app;
pub mod config;
pub mod error;
pub mod export;
pub mod postgres;
pub mod runner;
pub mod sink;
pub mod tables;
pub mod telemetry;

use std::sync::Arc;

use pulseline_schemas::records::{RollupUpsert, SleepNightUpsert};

pub use app::SinkApplication;
pub use config::SinkConfig;
pub use error::SinkError;
pub use postgres::PostgresSink;
pub use runner::{ReadModelRunner, RunnerSettings, SinkRunner};
pub use sink::{
    Applied, Batch, InvalidRecord, Item, OffsetScope, PartitionSpan, Sink, SinkFor, StoredRow,
    UserProgress,
};
pub use tables::StoredReadModel;

/// An opened read store; the engine is chosen by the URL's scheme.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(Arc<PostgresSink>),
}

impl Store {
    /// The store, whatever it holds (readiness, offsets).
    pub fn sink(&self) -> Arc<dyn Sink> {
        match self {
            Store::Postgres(pg) => pg.clone(),
        }
    }

    /// The store as a writer of read model `M`.
    pub fn sink_for<M: StoredReadModel>(&self) -> Arc<dyn SinkFor<M>> {
        match self {
            Store::Postgres(pg) => pg.clone(),
        }
    }
}

/// Opens (and migrates) the read store a URL names: the scheme chooses the engine.
pub async fn open(url: &str, pool_size: u32) -> Result<Store, SinkError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "postgres" | "postgresql" => {
            let sink = PostgresSink::connect(url, pool_size).await?;
            sink.migrate().await?;
            Ok(Store::Postgres(Arc::new(sink)))
        }
        "scylla" | "cql" => Err(SinkError::Config(
            "the ScyllaDB sink is not built yet; use a postgres:// URL".into(),
        )),
        _ => Err(SinkError::Config(format!(
            "unsupported read-store URL scheme `{scheme}` (expected postgres://)"
        ))),
    }
}

/// Every read model the sinks store, one line each: a runner per read model, each on its
/// own topic, all in one process.
pub fn read_model_runners(
    store: &Store,
    make: &runner::RunnerFactory,
) -> Result<Vec<Arc<dyn ReadModelRunner>>, SinkError> {
    Ok(vec![
        make.runner::<RollupUpsert>(store)?,
        make.runner::<SleepNightUpsert>(store)?,
    ])
}
