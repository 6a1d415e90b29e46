//! The gateway's tables in a test database, for the tests of services that read them (the
//! query API reads `user_stream` and `accepted_change` for freshness) without depending on
//! the gateway crate.
//!
//! Why here: in production the gateway migrates its own tables before any reader starts;
//! a reader's tests need the same tables, created by the same files, not a hand-written
//! copy that drifts. Embedding `ingest-gateway/migrations/` (the files, not the crate)
//! keeps the readers free of the gateway's code, and the testkit is already the place that
//! prepares a test's database. Nothing outside tests may use this: a service never runs
//! another service's migrations.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The gateway's migration files. `ignore_missing`: the sinks add their own versions to
/// the same database.
static GATEWAY_MIGRATIONS: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../ingest-gateway/migrations")
};

/// Creates the gateway's tables as the gateway's own migrations do.
pub async fn create_gateway_tables(pool: &PgPool) {
    GATEWAY_MIGRATIONS
        .run(pool)
        .await
        .unwrap_or_else(|e| panic!("running the gateway's migration files: {e}"));
}
