//! `POST /v1/analytics/sql` against a real export: rows put into Postgres, exported by
//! the real exporter into this app's export directory, queried over HTTP. Analysts only;
//! read-only; limits named; answers equal to the rows. Needs Postgres (`scripts/stack up`).

mod support;

use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_sinks::export::{ExportConfig, Exporter};
use serde_json::{Value, json};
use support::{TestApp, error_code, spawn_app};
use uuid::Uuid;

impl TestApp {
    fn analyst(&self) -> String {
        issue_hs256_token(&self.config.jwt_secret, Uuid::now_v7(), Role::Analyst, 600)
    }

    async fn sql_as(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/v1/analytics/sql"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn sql(&self, sql: &str) -> (u16, Value) {
        self.sql_as(&self.analyst(), json!({ "sql": sql })).await
    }

    async fn export(&self) {
        let config = ExportConfig::local(&self.db.url, &self.export.path().to_string_lossy());
        Exporter::new(self.pool.clone(), &config)
            .expect("exporter")
            .export_once()
            .await
            .expect("export");
    }
}

/// 3 users x 10 days of STEPS and HEART_RATE daily rollups.
async fn seeded() -> TestApp {
    let app = spawn_app().await;
    for u in 0..3 {
        let user = Uuid::now_v7();
        for d in 1..=10 {
            let day = format!("2026-11-{d:02}");
            app.rollup(user, "STEPS", &day, f64::from(1000 * d + u), false).await;
            app.rollup(user, "HEART_RATE", &day, 60.0 + f64::from(d), false).await;
        }
    }
    app.export().await;
    app
}

#[tokio::test]
async fn analysts_query_the_export_and_get_the_rows() {
    let app = seeded().await;
    let (status, body) = app
        .sql(
            "SELECT metric, count(*) AS n, sum(value) AS total, count(DISTINCT subject_id) AS subjects \
             FROM rollups WHERE date BETWEEN '2026-11-01' AND '2026-11-05' GROUP BY metric ORDER BY metric",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["columns"],
        json!([
            {"name": "metric", "type": body["columns"][0]["type"]},
            {"name": "n", "type": "Int64"},
            {"name": "total", "type": "Float64"},
            {"name": "subjects", "type": "Int64"}
        ])
    );
    // STEPS: sum over 3 users and days 1..5 of 1000*d + u = 3 * 15000 + 5 * (0+1+2).
    assert_eq!(
        body["rows"],
        json!([["HEART_RATE", 15, 3.0 * (5.0 * 60.0 + 15.0), 3], ["STEPS", 15, 45015.0, 3]])
    );
    assert_eq!(body["truncated"], json!(false));
    assert!(body["elapsedMs"].is_u64());

    // No user id anywhere; subject ids are 64 hex characters.
    let (_, body) = app.sql("SELECT DISTINCT subject_id FROM rollups").await;
    let ids = body["rows"].as_array().expect("rows");
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|r| r[0].as_str().is_some_and(|s| s.len() == 64)));

    // Dates come back as ISO dates; the partition column prunes (EXPLAIN shows one file group).
    let (status, body) = app
        .sql("SELECT date, value FROM rollups WHERE metric = 'STEPS' AND date = '2026-11-03' ORDER BY value")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["rows"][0][0], json!("2026-11-03"));
    assert_eq!(body["rows"][0][1], json!(3000.0));
}

#[tokio::test]
async fn other_roles_are_forbidden_and_anonymous_callers_unauthenticated() {
    let app = spawn_app().await;
    for role in [Role::User, Role::Admin] {
        let token = issue_hs256_token(&app.config.jwt_secret, Uuid::now_v7(), role, 600);
        let (status, body) = app.sql_as(&token, json!({"sql": "SELECT 1"})).await;
        assert_eq!((status, error_code(&body)), (403, "FORBIDDEN"), "{role:?}");
    }
    let r = app
        .client
        .post(app.url("/v1/analytics/sql"))
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn anything_but_one_read_only_query_is_refused_with_a_specific_code() {
    let app = seeded().await;
    for (sql, code) in [
        ("DROP TABLE rollups", "SQL_DDL_NOT_ALLOWED"),
        ("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'", "SQL_DDL_NOT_ALLOWED"),
        ("INSERT INTO rollups SELECT * FROM rollups", "SQL_DML_NOT_ALLOWED"),
        ("COPY rollups TO '/tmp/stolen.parquet'", "SQL_COPY_NOT_ALLOWED"),
        ("SELECT 1; SELECT 2", "SQL_MULTIPLE_STATEMENTS"),
        ("SELECT * FROM read_parquet('/etc/passwd')", "SQL_FILE_ACCESS_NOT_ALLOWED"),
        ("SELECT * FROM '/etc/passwd'", "SQL_FILE_ACCESS_NOT_ALLOWED"),
        ("SET datafusion.execution.target_partitions = 1", "SQL_NOT_A_QUERY"),
        ("SELEKT 1", "SQL_PARSE_ERROR"),
        ("SELECT * FROM no_such_table", "SQL_PLAN_ERROR"),
    ] {
        let (status, body) = app.sql(sql).await;
        assert_eq!((status, error_code(&body)), (400, code), "{sql}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/stolen.parquet").exists());
}

#[tokio::test]
async fn limits_truncate_rows_and_name_the_limit_hit() {
    let app = seeded().await;
    let token = app.analyst();
    let (status, body) = app
        .sql_as(&token, json!({"sql": "SELECT * FROM rollups", "maxRows": 7}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(7));
    assert_eq!(body["truncated"], json!(true));

    let (status, body) = app
        .sql_as(&token, json!({"sql": "SELECT 1", "maxRows": 100_000_000}))
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_PARAMETER"), "{body}");
    assert_eq!(body["error"]["details"]["parameter"], json!("maxRows"));

    // A cross join far beyond the timeout of a tiny engine.
    let engine = pulseline_query_api::analytics::AnalyticsEngine::new(
        app.export.path(),
        pulseline_query_api::analytics::SqlLimits {
            timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    );
    let slow = "SELECT count(*) FROM generate_series(1, 1000000000) a";
    let err = engine.query(slow, None).await.expect_err("times out");
    assert_eq!(err.code(), "SQL_TIMEOUT");

    // A grouping that cannot fit in 1 MiB (spilling is off).
    let engine = pulseline_query_api::analytics::AnalyticsEngine::new(
        app.export.path(),
        pulseline_query_api::analytics::SqlLimits {
            memory_bytes: 1024 * 1024,
            ..Default::default()
        },
    );
    let big = "SELECT v, count(*) FROM generate_series(1, 5000000) t(v) GROUP BY v";
    let err = engine.query(big, Some(1)).await.expect_err("memory limit");
    assert_eq!(err.code(), "SQL_MEMORY_LIMIT", "{err}");
}

#[tokio::test]
async fn the_openapi_document_covers_the_route() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/openapi.json")).send().await.expect("request");
    let doc: Value = r.json().await.expect("json");
    assert!(doc["paths"]["/v1/analytics/sql"]["post"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["SqlAnswer"].is_object());
}
