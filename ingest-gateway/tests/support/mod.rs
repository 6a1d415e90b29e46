//! Test support for the gateway's HTTP tests: a running application per test (fresh
//! database, random port), tokens, request helpers and outbox readers.
//!
//! Needs: the local Postgres (`scripts/stack up`). The readiness test also needs the
//! broker; the outage test starts its own private Postgres cluster
//! (`pulseline_testkit::private_pg`).
#![allow(dead_code)]

use std::time::Duration;

use chrono::{SecondsFormat, TimeDelta, Utc};
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::config::Config;
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_testkit::{Stack, TestDatabase};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct TestApp {
    pub address: String,
    pub config: Config,
    pub pool: PgPool,
    pub client: reqwest::Client,
    /// The default caller (role `user`).
    pub user_id: Uuid,
    pub token: String,
    server: JoinHandle<()>,
    // Dropped last: the database outlives the server and the pool.
    pub db: Option<TestDatabase>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Config for tests: port 0, the given database, limits high enough not to get in the way.
pub fn test_config(database_url: &str) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.to_owned(),
        kafka_bootstrap: Stack::from_env().kafka_bootstrap,
        rate_limit_per_sec: 10_000,
        rate_limit_burst: 10_000,
        ..Config::default()
    }
}

/// A running gateway on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A running gateway on a fresh database, with config changes.
pub async fn spawn_app_with(change: impl FnOnce(&mut Config)) -> TestApp {
    let db = Stack::from_env().create_database().await;
    let mut config = test_config(&db.url);
    change(&mut config);
    let mut app = start(config).await;
    app.db = Some(db);
    app
}

/// Starts an application with exactly this config (database already there).
pub async fn start(config: Config) -> TestApp {
    let application = Application::build(config.clone())
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let server = tokio::spawn(async move {
        let _ = application.run_until(std::future::pending()).await;
    });
    let pool = PgPool::connect(&config.database_url)
        .await
        .expect("test pool connects");
    let user_id = Uuid::new_v4();
    let token = issue_hs256_token(&config.jwt_secret, user_id, Role::User, 3600);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        address,
        config,
        pool,
        client,
        user_id,
        token,
        server,
        db: None,
    }
}

impl TestApp {
    pub fn token_for(&self, user_id: Uuid, role: Role) -> String {
        issue_hs256_token(&self.config.jwt_secret, user_id, role, 3600)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POSTs a JSON body with the default user's token.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_as(path, &self.token, body).await
    }

    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, token, serde_json::to_vec(body).unwrap(), &[])
            .await
    }

    /// POSTs raw bytes with `application/json` and extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request sent")
    }

    pub async fn post_samples(&self, body: &Value) -> (u16, Value) {
        let r = self.post("/v1/samples:batch", body).await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }

    pub async fn post_events(&self, body: &Value) -> (u16, Value) {
        let r = self.post("/v1/events:batch", body).await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }

    /// Outbox rows of a user, in id order: (stream, change_seq, change_index, payload).
    pub async fn outbox(&self, user_id: Uuid) -> Vec<(i16, i64, i32, Value)> {
        let rows: Vec<(i16, i64, i32, String)> = sqlx::query_as(
            "SELECT stream, change_seq, change_index, payload::text FROM outbox WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(s, q, i, p)| (s, q, i, serde_json::from_str(&p).unwrap()))
            .collect()
    }

    /// The user's last sequence number of a stream (1 samples, 2 events); 0 if none.
    pub async fn last_seq(&self, user_id: Uuid, stream: i16) -> i64 {
        sqlx::query_scalar("SELECT last_seq FROM user_stream WHERE user_id = $1 AND stream = $2")
            .bind(user_id)
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// "Now" for the whole test process, so the same call gives the same time (and key).
static ANCHOR: std::sync::LazyLock<chrono::DateTime<Utc>> = std::sync::LazyLock::new(Utc::now);

/// RFC 3339 of the test's now + offset, with a +02:00 written offset.
pub fn at(offset: TimeDelta) -> String {
    let t = (*ANCHOR + offset).with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap());
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// An hour ago, shifted by `minutes` (distinct start times for distinct samples).
pub fn minutes_ago(minutes: i64) -> String {
    at(TimeDelta::minutes(-60 - minutes))
}

/// A heart-rate sample.
pub fn hr(record: &str, value: f64, start_at: &str) -> Value {
    json!({ "sourceRecordId": record, "metric": "HEART_RATE", "value": value, "unit": "count/min",
            "startAt": start_at, "endAt": start_at, "tzOffsetMinutes": 120 })
}

/// A samples batch from the source `watch-1`.
pub fn samples_batch(request_id: Uuid, samples: Vec<Value>) -> Value {
    json!({ "requestId": request_id, "source": { "sourceId": "watch-1", "deviceType": "apple_watch" }, "samples": samples })
}

/// `n` distinct heart-rate samples.
pub fn hr_series(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            hr(
                &format!("rec-{i}"),
                60.0 + (i % 40) as f64,
                &minutes_ago(i as i64),
            )
        })
        .collect()
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
