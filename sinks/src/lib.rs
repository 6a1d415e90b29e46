//! Read-model sinks: versioned upserts from the read-model topics into a read store,
//! exactly once. Postgres (the embedded default) and ScyllaDB (scale-out) are built. The
//! pseudonymised Parquet export for analysts reads the Postgres tables (`export`).
//!
//! - `sink`: the `Sink` trait (one implementation per engine) and the rows it is fed.
//! - `postgres`: `PostgresSink` and its migrations (versions 1001+).
//! - `scylla`: `ScyllaSink`, its CQL tables (`CqlReadModel`) and keyspace migrations.
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
pub mod scylla;
pub mod sink;
pub mod tables;
pub mod telemetry;

use std::sync::Arc;

use pulseline_schemas::records::{
    ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};

pub use app::SinkApplication;
pub use config::SinkConfig;
pub use error::SinkError;
pub use postgres::PostgresSink;
pub use runner::{ReadModelRunner, RunnerSettings, SinkRunner};
pub use scylla::{CqlReadModel, ScyllaSink};
pub use sink::{
    Applied, Batch, InvalidRecord, Item, OffsetScope, PartitionSpan, Sink, SinkFor, StoredRow,
    UserProgress,
};
pub use tables::StoredReadModel;

/// An opened read store; the engine is chosen by the URL's scheme.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(Arc<PostgresSink>),
    Scylla(Arc<ScyllaSink>),
}

impl Store {
    /// The store, whatever it holds (readiness, offsets).
    pub fn sink(&self) -> Arc<dyn Sink> {
        match self {
            Store::Postgres(pg) => pg.clone(),
            Store::Scylla(s) => s.clone(),
        }
    }

    /// The store as a writer of read model `M`.
    pub fn sink_for<M: CqlReadModel>(&self) -> Arc<dyn SinkFor<M>> {
        match self {
            Store::Postgres(pg) => pg.clone(),
            Store::Scylla(s) => s.clone(),
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
        "scylla" | "cql" => Ok(Store::Scylla(Arc::new(ScyllaSink::open(url).await?))),
        _ => Err(SinkError::Config(format!(
            "unsupported read-store URL scheme `{scheme}` (expected postgres:// or scylla://)"
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
        make.runner::<SessionImpactUpsert>(store)?,
        make.runner::<ProductImpactUpsert>(store)?,
    ])
}
