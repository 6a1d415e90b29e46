//! The write path: the HTTP ingest gateway (validation, dedup, request idempotency, one
//! Postgres transaction per batch) and the outbox relay that publishes accepted changes to
//! Kafka. Binaries: `pulseline-gateway`, `pulseline-relay`.

pub mod outbox;

/// The gateway's and relay's database migrations (versioned files in `migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
