//! The write path: the HTTP ingest gateway (validation, dedup, request idempotency, one
//! Postgres transaction per batch) and the outbox relay that publishes accepted changes to
//! Kafka. Binaries: `pulseline-gateway`, `pulseline-relay`.

pub mod outbox;

/// The gateway's and relay's database migrations (versioned files in `migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod hashing;
pub mod model;
pub mod ratelimit;
pub mod relay;
pub mod retention;
pub mod store;
pub mod telemetry;
pub mod validate;
