//! Test support for the query API's HTTP tests: a running application per test (fresh
//! database with the gateway's and the sink's tables, random port), tokens, and writers of
//! the rows the API reads (rollups, progress, the gateway's sequences).
//! Needs: the local Postgres (`scripts/stack up`). No broker.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use pulseline_query_api::{Application, Config};
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_testkit::{Stack, TestDatabase, create_gateway_tables};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct TestApp {
    pub address: String,
    pub config: Config,
    pub pool: PgPool,
    pub client: reqwest::Client,
    server: JoinHandle<()>,
    // Dropped last: the database outlives the server and the pool.
    pub db: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A running API on a fresh database where the gateway has migrated (as in production,
/// where the gateway runs first).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(true).await
}

/// `with_gateway_tables = false`: only the sink's tables (the API migrates those itself).
pub async fn spawn_app_with(with_gateway_tables: bool) -> TestApp {
    spawn_app_configured(with_gateway_tables, |_| {}).await
}

/// A running API whose config `configure` adjusts (the database URL and port are set).
pub async fn spawn_app_configured(
    with_gateway_tables: bool,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let db = Stack::from_env().create_database().await;
    let pool = PgPool::connect(&db.url).await.expect("test pool connects");
    if with_gateway_tables {
        // The gateway's own migration files, run by the testkit: this crate depends on
        // neither the gateway's code nor a copy of its schema.
        create_gateway_tables(&pool).await;
    }
    let mut config = Config {
        addr: "127.0.0.1:0".parse().expect("address"),
        database_url: db.url.clone(),
        ..Config::default()
    };
    configure(&mut config);
    let (address, server) = serve(config.clone()).await;
    TestApp {
        address,
        config,
        pool,
        client: reqwest::Client::new(),
        server,
        db,
    }
}

/// Builds and runs an application; (its base URL, the task serving it).
async fn serve(config: Config) -> (String, JoinHandle<()>) {
    let application = Application::build(config)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let server = tokio::spawn(async move {
        let _ = application.run_until(std::future::pending()).await;
    });
    (address, server)
}

/// A second API on a `TestApp`'s database (e.g. reading another read store).
pub struct Sibling {
    pub address: String,
    server: JoinHandle<()>,
}

impl Drop for Sibling {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    /// Another API on this app's database, with `configure`'s changes to its config.
    pub async fn sibling(&self, configure: impl FnOnce(&mut Config)) -> Sibling {
        let mut config = self.config.clone();
        configure(&mut config);
        let (address, server) = serve(config).await;
        Sibling { address, server }
    }

    /// GET `path` on `base` (this app or a sibling) as `user`; (status, body).
    pub async fn get_from(&self, base: &str, path: &str, user: Uuid) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn token(&self, user: Uuid) -> String {
        self.token_as(user, Role::User)
    }

    pub fn token_as(&self, user: Uuid, role: Role) -> String {
        issue_hs256_token(&self.config.jwt_secret, user, role, 600)
    }

    /// GET /v1/me/rollups?<query> as `user`; (status, body).
    pub async fn rollups(&self, user: Uuid, query: &str) -> (u16, Value) {
        self.get_with_token(&format!("/v1/me/rollups?{query}"), &self.token(user))
            .await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A rollup row as the sink writes it. `bucket`: `YYYY-MM-DD` or `YYYY-MM-DDTHH:00:00`.
    pub async fn rollup(&self, user: Uuid, metric: &str, bucket: &str, value: f64, deleted: bool) {
        let (period, start) = if bucket.len() == 10 {
            ("DAY", format!("{bucket}T00:00:00"))
        } else {
            ("HOUR", bucket.to_owned())
        };
        sqlx::query(
            "INSERT INTO rollup (user_id, metric, period, bucket_start, value, min, max, count, sources, deleted, version) \
             VALUES ($1, $2, $3, $4::timestamp, $5, $6, $7, 3, ARRAY['apple_watch:w1', 'iphone:p1'], $8, 1)",
        )
        .bind(user)
        .bind(metric)
        .bind(period)
        .bind(start)
        .bind(value)
        .bind(value - 1.0)
        .bind(value + 1.0)
        .bind(deleted)
        .execute(&self.pool)
        .await
        .expect("insert rollup");
    }

    /// The gateway accepted change `seq` for `user` at `at` (and it is the latest so far).
    pub async fn accepted(&self, user: Uuid, seq: i64, at: DateTime<Utc>) {
        sqlx::query(
            "INSERT INTO user_stream (user_id, stream, last_seq) VALUES ($1, 1, $2) \
             ON CONFLICT (user_id, stream) DO UPDATE SET last_seq = GREATEST(user_stream.last_seq, EXCLUDED.last_seq)",
        )
        .bind(user)
        .bind(seq)
        .execute(&self.pool)
        .await
        .expect("user_stream");
        sqlx::query(
            "INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items) VALUES ($1, 1, $2, $3, 1)",
        )
        .bind(user)
        .bind(seq)
        .bind(at)
        .execute(&self.pool)
        .await
        .expect("accepted_change");
    }

    /// The sink has applied the user's samples up to `seq` in the rollups.
    pub async fn applied(&self, user: Uuid, seq: i64) {
        sqlx::query(
            "INSERT INTO sink_progress (read_model, user_id, stream, applied_seq) VALUES ('rollups', $1, 1, $2) \
             ON CONFLICT (read_model, user_id, stream) DO UPDATE SET applied_seq = EXCLUDED.applied_seq",
        )
        .bind(user)
        .bind(seq)
        .execute(&self.pool)
        .await
        .expect("sink_progress");
    }
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

pub fn starts(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["localStart"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
