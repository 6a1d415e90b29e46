//! What integration tests need from the local stack (`scripts/stack up`): its addresses,
//! a private Postgres database per test, and a private topic prefix per test, so tests run
//! in parallel and never see each other's rows or records.
//!
//! The stack is started by the project's scripts (`scripts/test` runs `scripts/stack up`);
//! nothing here starts a server, and nothing here is a mock.

#[cfg(feature = "cql-emulator")]
pub mod cql_emulator;
mod gateway_schema;
pub mod private_pg;
pub mod s3;

use std::env;

pub use gateway_schema::create_gateway_tables;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The seed of a test's random choices (fault timings, workloads): `PULSELINE_TEST_SEED` if
/// set, else `default`. Printed to stderr, so that a failure can be replayed with the seed.
pub fn test_seed(test: &str, default: u64) -> u64 {
    let seed = match env::var("PULSELINE_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("PULSELINE_TEST_SEED={s:?} is not a u64: {e}")),
        Err(_) => default,
    };
    eprintln!("{test}: seed {seed} (replay with PULSELINE_TEST_SEED={seed})");
    seed
}

/// Addresses of the running local stack, from the same variables the services read.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_bootstrap: String,
    pub schema_registry_url: String,
    /// A server URL without a database name; tests create their own databases on it.
    pub postgres_server_url: String,
}

impl Stack {
    /// Reads `PULSELINE_*` variables, defaulting to scripts/env.sh's defaults.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| env::var(name).unwrap_or_else(|_| default.to_owned());
        let host = var("PULSELINE_PG_HOST", "127.0.0.1");
        let port = var("PULSELINE_PG_PORT", "5432");
        let user = var("PULSELINE_PG_USER", "postgres");
        Self {
            kafka_bootstrap: var("PULSELINE_KAFKA_BOOTSTRAP", "127.0.0.1:29092"),
            schema_registry_url: var("PULSELINE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081"),
            postgres_server_url: format!("postgres://{user}@{host}:{port}"),
        }
    }

    /// A topic prefix no other test uses (also scopes registry subjects and group ids).
    pub fn unique_prefix(&self, test: &str) -> String {
        format!(
            "t-{test}-{}.",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    }

    /// Creates every pulseline topic under `prefix`.
    pub async fn create_topics(&self, prefix: &str) {
        pulseline_schemas::topics::ensure_all(&self.kafka_bootstrap, prefix)
            .await
            .unwrap_or_else(|e| {
                panic!("creating topics under {prefix}: {e} (is `scripts/stack up` running?)")
            });
    }

    /// Creates a fresh, empty database; it is dropped when the returned value is dropped.
    pub async fn create_database(&self) -> TestDatabase {
        let name = format!("pulseline_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = self.admin_connection().await;
        // Identifiers cannot be bound as parameters; `name` is generated above, not input.
        sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        TestDatabase {
            url: format!("{}/{name}", self.postgres_server_url),
            name,
            server: self.postgres_server_url.clone(),
        }
    }

    async fn admin_connection(&self) -> PgConnection {
        let url = format!("{}/postgres", self.postgres_server_url);
        PgConnection::connect(&url).await.unwrap_or_else(|e| {
            panic!("connecting to {url}: {e} (is Postgres up? `scripts/stack up`)")
        })
    }
}

/// A private database for one test; dropped (with `FORCE`) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    server: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside or outside a runtime; a short-lived thread with its own
        // runtime keeps this independent of the test's.
        let url = format!("{}/postgres", self.server);
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
