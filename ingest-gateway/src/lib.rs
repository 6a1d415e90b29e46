//! The write path: the HTTP ingest gateway (validation, dedup, request idempotency, one
//! Postgres transaction per batch) and the outbox relay that publishes accepted changes to
//! Kafka. Binaries: `pulseline-gateway`, `pulseline-relay`.

pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod hashing;
pub mod model;
pub mod outbox;
pub mod ratelimit;
pub mod relay;
pub mod retention;
pub mod store;
pub mod telemetry;
pub mod validate;

/// The gateway's and relay's database migrations (versioned files in `migrations/`).
/// Other crates (the sinks) add their own versions to the same database, so versions this
/// crate does not know are expected, not an error.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!()
};
