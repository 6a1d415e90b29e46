//! `POST /v1/analytics/sql` against a running application, a real Postgres and a real
//! Parquet export written by the exporter: answers equal Postgres, subjects are pseudonyms,
//! filters on `metric`/`date` skip other partitions' files, only analysts get in, anything
//! but one read-only query is refused with its own code, and each limit (rows, timeout,
//! memory) answers with the limit it hit.
//!
//! Needs: Postgres (`scripts/stack up`). No broker.

mod support;

use std::path::Path;

use chrono::{DateTime, Utc};
use pulseline_query_api::analytics::{SqlEngine, SqlLimits};
use pulseline_service::auth::Role;
use pulseline_sinks::export::{ExportConfig, ExportRoot, Exporter};
use pulseline_testkit::s3::MotoS3;
use serde_json::{Value, json};
use support::{TestApp, error_code, spawn_app_configured};
use uuid::Uuid;

const DAYS: [&str; 3] = ["2026-11-01", "2026-11-02", "2026-11-03"];

struct Fixture {
    app: TestApp,
    export: tempfile::TempDir,
    users: [Uuid; 2],
}

impl Fixture {
    /// An API over a fresh export of two users' samples (steps and heart rate on three days,
    /// one deleted sample) and daily rollups.
    async fn new(configure: impl FnOnce(&mut pulseline_query_api::Config)) -> Self {
        let export = tempfile::tempdir().expect("temporary directory");
        let dir = export.path().to_path_buf();
        let app = spawn_app_configured(true, |c| {
            c.export_dir = dir;
            configure(c);
        })
        .await;
        let f = Self {
            app,
            export,
            users: [Uuid::now_v7(), Uuid::now_v7()],
        };
        f.seed().await;
        f.export_now().await;
        f
    }

    async fn seed(&self) {
        for (u, user) in self.users.into_iter().enumerate() {
            for (d, day) in DAYS.iter().enumerate() {
                for hour in 0..4 {
                    let at = format!("{day}T{:02}:00:00Z", 8 + hour);
                    let steps = (100 * (u + 1) + 10 * d + hour) as f64;
                    self.sample(user, &format!("s{d}{hour}"), "STEPS", &at, steps, false)
                        .await;
                    let bpm = 60.0 + (u * 5 + d + hour) as f64;
                    self.sample(user, &format!("h{d}{hour}"), "HEART_RATE", &at, bpm, false)
                        .await;
                }
                let at = format!("{day}T20:00:00Z");
                self.sample(user, &format!("x{d}"), "STEPS", &at, 99_999.0, true)
                    .await;
                sqlx::query(
                    "INSERT INTO rollup (user_id, metric, period, bucket_start, value, count, \
                     sources, deleted, version) \
                     SELECT user_id, metric, 'DAY', $2::date::timestamp, sum(value), count(*), \
                     '{watch}', false, 1 FROM sample \
                     WHERE user_id = $1 AND NOT deleted AND start_at::date = $2::date \
                     GROUP BY user_id, metric",
                )
                .bind(user)
                .bind(day)
                .execute(&self.app.pool)
                .await
                .expect("insert rollups");
            }
        }
    }

    async fn sample(
        &self,
        user: Uuid,
        rec: &str,
        metric: &str,
        start: &str,
        value: f64,
        deleted: bool,
    ) {
        let start: DateTime<Utc> = start.parse().expect("instant");
        sqlx::query(
            "INSERT INTO sample (user_id, source_id, source_record_id, start_at, metric, \
             device_type, end_at, tz_offset_minutes, value, unit, category, metadata, \
             content_hash, deleted, change_seq, change_index, accepted_at) \
             VALUES ($1, 'watch', $2, $3, $4, 'WATCH', $3, 0, $5, 'count', NULL, '{}', \
             '\\x00', $6, 1, 0, now())",
        )
        .bind(user)
        .bind(rec)
        .bind(start)
        .bind(metric)
        .bind(value)
        .bind(deleted)
        .execute(&self.app.pool)
        .await
        .expect("insert sample");
    }

    async fn export_now(&self) {
        let config = ExportConfig::local(&self.app.db.url, &self.export.path().to_string_lossy());
        let mut exporter = Exporter::new(self.app.pool.clone(), &config).expect("exporter");
        exporter.export_once().await.expect("export");
    }

    async fn sql_as(&self, role: Role, body: Value) -> (u16, Value) {
        let r = self
            .app
            .client
            .post(self.app.url("/v1/analytics/sql"))
            .bearer_auth(self.app.token_as(Uuid::now_v7(), role))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn sql(&self, sql: &str) -> (u16, Value) {
        self.sql_as(Role::Analyst, json!({ "sql": sql })).await
    }

    async fn rows(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.sql(sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"].as_array().expect("rows").clone()
    }
}

#[tokio::test]
async fn answers_equal_postgres_with_typed_columns() {
    let f = Fixture::new(|_| {}).await;
    let (status, body) = f
        .sql(
            "SELECT metric, date, count(*) AS n, sum(value) AS total FROM samples \
             GROUP BY metric, date ORDER BY metric, date",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["columns"],
        json!([
            { "name": "metric", "type": "Utf8" },
            { "name": "date", "type": "Date32" },
            { "name": "n", "type": "Int64" },
            { "name": "total", "type": "Float64" },
        ])
    );
    assert_eq!(body["truncated"], json!(false));
    assert!(body["elapsedMs"].is_u64(), "{body}");
    let expected: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT metric, start_at::date::text, count(*), sum(value) FROM sample \
         WHERE NOT deleted GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&f.app.pool)
    .await
    .expect("expected");
    let expected: Vec<Value> = expected
        .into_iter()
        .map(|(m, d, n, s)| json!([m, d, n, s]))
        .collect();
    assert_eq!(body["rows"].as_array().expect("rows"), &expected);
    assert_eq!(expected.len(), 6);

    // A join of the rollups with the samples agrees with both.
    let joined = f
        .rows(
            "SELECT count(*) FROM rollups r JOIN (SELECT subject_id, metric, date, \
             sum(value) AS total FROM samples GROUP BY 1, 2, 3) s \
             ON r.subject_id = s.subject_id AND r.metric = s.metric AND r.date = s.date \
             WHERE r.value = s.total",
        )
        .await;
    assert_eq!(joined, vec![json!([12])]);
}

/// The same export written to S3 (moto's S3 emulator, started here; not AWS) answers every
/// query as the directory does, partition filters included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_export_root_answers_as_the_directory_does() {
    let f = Fixture::new(|_| {}).await;
    let s3 = tokio::task::spawn_blocking(|| MotoS3::start("analytics"))
        .await
        .expect("join")
        .expect("moto's S3 server");
    let root = ExportRoot::open_with("s3://analytics/export", s3.options()).expect("S3 root");
    let config = ExportConfig::local(&f.app.db.url, &f.export.path().to_string_lossy());
    Exporter::new(f.app.pool.clone(), &config)
        .expect("exporter")
        .with_root(root.clone())
        .export_once()
        .await
        .expect("export to S3");
    let on_s3 = SqlEngine::over(root, SqlLimits::default());
    let on_disk = SqlEngine::new(f.export.path(), SqlLimits::default());
    for sql in [
        "SELECT metric, date, count(*), sum(value) FROM samples GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT subject_id, value FROM rollups WHERE metric = 'STEPS' AND date = '2026-11-02' \
         ORDER BY 1",
        "SELECT count(*) FROM rollups r JOIN samples s ON r.subject_id = s.subject_id \
         AND r.metric = s.metric AND r.date = s.date",
    ] {
        let disk = on_disk.query(sql, None).await.expect("query the directory");
        let s3 = on_s3.query(sql, None).await.expect("query S3");
        assert!(disk.rows > 0, "{sql}");
        let one = |r: &pulseline_query_api::analytics::SqlResult| {
            datafusion::arrow::compute::concat_batches(&r.schema, &r.batches).expect("concat")
        };
        assert_eq!(one(&s3), one(&disk), "{sql}");
    }
}

#[tokio::test]
async fn subjects_are_pseudonyms() {
    let f = Fixture::new(|_| {}).await;
    let subjects = f
        .rows("SELECT DISTINCT subject_id FROM samples ORDER BY subject_id")
        .await;
    assert_eq!(subjects.len(), 2);
    for s in &subjects {
        let s = s[0].as_str().expect("text");
        assert_eq!(s.len(), 64, "{s}");
        for user in f.users {
            assert!(!s.contains(&user.to_string()), "{s}");
        }
    }
}

/// Filters on the partition columns never open other partitions' files: with the heart
/// rate files of one day made unreadable, a query on steps (or on another day) still
/// answers, and only a query that needs the broken file fails, as EXPORT_UNAVAILABLE.
#[tokio::test]
async fn partition_filters_skip_other_files() {
    let f = Fixture::new(|_| {}).await;
    let broken = f
        .export
        .path()
        .join("samples/metric=HEART_RATE/date=2026-11-02/part-0.parquet");
    assert!(broken.is_file(), "{}", broken.display());
    std::fs::write(&broken, b"not parquet").expect("overwrite");
    let steps = f
        .rows("SELECT count(*) FROM samples WHERE metric = 'STEPS'")
        .await;
    assert_eq!(steps, vec![json!([24])]);
    let other_day = f
        .rows("SELECT count(*) FROM samples WHERE date = DATE '2026-11-03'")
        .await;
    assert_eq!(other_day, vec![json!([16])]);
    let (status, body) = f
        .sql("SELECT count(*) FROM samples WHERE metric = 'HEART_RATE'")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "EXPORT_UNAVAILABLE"),
        "{body}"
    );
}

/// Queries share cached footers and statistics: a partition the exporter rewrote after a
/// correction and a deletion is read afresh, and a new partition is seen at once.
#[tokio::test]
async fn a_rewritten_or_new_partition_is_read_afresh() {
    let f = Fixture::new(|_| {}).await;
    let day = "SELECT count(*), sum(value) FROM samples WHERE metric = 'STEPS' AND date = DATE '2026-11-02'";
    assert_eq!(f.rows(day).await, vec![json!([8, 1292.0])]);
    sqlx::query("UPDATE sample SET deleted = true, change_seq = 2 WHERE source_record_id = 's10'")
        .execute(&f.app.pool)
        .await
        .expect("delete");
    sqlx::query("UPDATE sample SET value = 1000, change_seq = 2 WHERE source_record_id = 's11' AND user_id = $1")
        .bind(f.users[0])
        .execute(&f.app.pool)
        .await
        .expect("correct");
    f.sample(
        f.users[0],
        "new",
        "STEPS",
        "2026-11-05T08:00:00Z",
        7.0,
        false,
    )
    .await;
    f.export_now().await;
    // 1292 - (110 + 210) - 111 + 1000 = 1861
    assert_eq!(f.rows(day).await, vec![json!([6, 1861.0])]);
    let new_day = "SELECT count(*) FROM samples WHERE date = DATE '2026-11-05'";
    assert_eq!(f.rows(new_day).await, vec![json!([1])]);
}

/// EXPLAIN and EXPLAIN ANALYZE answer with the plan (ANALYZE with what each step read),
/// not with an internal error from the row limit wrapped around every query.
#[tokio::test]
async fn explain_and_explain_analyze_answer_with_the_plan() {
    let f = Fixture::new(|_| {}).await;
    let query = "SELECT metric, count(*) FROM samples GROUP BY metric";
    for (sql, says) in [
        (format!("EXPLAIN {query}"), "AggregateExec"),
        (format!("EXPLAIN ANALYZE {query}"), "output_rows="),
    ] {
        let rows = f.rows(&sql).await;
        let text = rows
            .iter()
            .filter_map(|r| r[1].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains(says), "{sql}: {text}");
    }
}

#[tokio::test]
async fn only_analysts_run_sql() {
    let f = Fixture::new(|_| {}).await;
    for role in [Role::User, Role::Admin] {
        let (status, body) = f.sql_as(role, json!({ "sql": "SELECT 1" })).await;
        assert_eq!((status, error_code(&body)), (403, "FORBIDDEN"), "{body}");
    }
    let r = f
        .app
        .client
        .post(f.app.url("/v1/analytics/sql"))
        .json(&json!({ "sql": "SELECT 1" }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = f.sql_as(Role::Analyst, json!({ "sql": "SELECT 1" })).await;
    assert_eq!((status, body["rows"].clone()), (200, json!([[1]])));
}

#[tokio::test]
async fn anything_but_one_read_only_query_is_refused() {
    let f = Fixture::new(|_| {}).await;
    let cases = [
        ("SELECT 1; SELECT 2", "SQL_MULTIPLE_STATEMENTS"),
        ("DROP TABLE samples", "SQL_NOT_READ_ONLY"),
        (
            "INSERT INTO samples SELECT * FROM samples",
            "SQL_NOT_READ_ONLY",
        ),
        ("COPY samples TO '/tmp/leak.csv'", "SQL_NOT_READ_ONLY"),
        (
            "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
            "SQL_NOT_READ_ONLY",
        ),
        (
            "SET datafusion.execution.target_partitions = 1",
            "SQL_NOT_READ_ONLY",
        ),
        (
            "SELECT * FROM read_csv('/etc/passwd')",
            "SQL_FUNCTION_NOT_ALLOWED",
        ),
        ("SELECT * FROM '/etc/passwd'", "SQL_PLAN"),
        ("SELECT * FROM users", "SQL_PLAN"),
        ("SELECT nope FROM samples", "SQL_PLAN"),
        ("SELEKT 1", "SQL_SYNTAX"),
        ("", "SQL_EMPTY"),
    ];
    for (sql, code) in cases {
        let (status, body) = f.sql(sql).await;
        assert_eq!((status, error_code(&body)), (400, code), "{sql}: {body}");
    }
    for body in [
        json!({ "query": "SELECT 1" }),
        json!("SELECT 1"),
        json!({ "sql": 1 }),
    ] {
        let (status, answer) = f.sql_as(Role::Analyst, body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "INVALID_BODY"),
            "{body}"
        );
    }
    let long = format!("SELECT 1 {}", " ".repeat(70_000));
    let (status, body) = f.sql(&long).await;
    assert_eq!((status, error_code(&body)), (400, "SQL_TOO_LONG"), "{body}");
    // Nothing was written next to the export, and the files still answer.
    assert!(!Path::new("/tmp/leak.csv").exists());
    assert_eq!(
        f.rows("SELECT count(*) FROM samples").await,
        vec![json!([48])]
    );
}

#[tokio::test]
async fn row_limit_cuts_and_says_so() {
    let f = Fixture::new(|c| c.sql_max_rows = 20).await;
    let (status, body) = f
        .sql_as(
            Role::Analyst,
            json!({ "sql": "SELECT value FROM samples ORDER BY value", "maxRows": 5 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(5));
    assert_eq!(body["truncated"], json!(true));
    // Without maxRows the default (10,000) is capped by the configured maximum.
    let (_, body) = f.sql("SELECT value FROM samples").await;
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(20));
    assert_eq!(body["truncated"], json!(true));
    let (_, body) = f.sql("SELECT 1 AS one").await;
    assert_eq!(body["truncated"], json!(false));
    let (status, body) = f
        .sql_as(Role::Analyst, json!({ "sql": "SELECT 1", "maxRows": 21 }))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "SQL_ROW_LIMIT"),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["maxRows"], json!(20));
}

#[tokio::test]
async fn timeout_and_memory_limits_name_the_limit() {
    let f = Fixture::new(|c| {
        c.sql_timeout_secs = 1;
        c.sql_memory_limit_mb = 1;
    })
    .await;
    // A scan of 10^12 generated rows into one count: hours of work in almost no memory
    // (the rows stream through in batches), so only the timeout can end it. The scan
    // yields between batches, which is where the timeout takes effect.
    let endless =
        f.sql("SELECT count(*) FROM generate_series(1, 1000000000000) WHERE value % 7 = 3");
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), endless)
        .await
        .expect("the statement timeout (1 s) did not stop the query within 60 s");
    assert_eq!((status, error_code(&body)), (400, "SQL_TIMEOUT"), "{body}");
    assert_eq!(body["error"]["details"]["limit"], json!("timeout"));
    let (status, body) = f
        .sql(
            "SELECT count(*) FROM generate_series(1, 2000000) a \
             JOIN generate_series(1, 2000000) b ON a.value = b.value",
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "SQL_MEMORY_LIMIT"),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["limit"], json!("memory"));
    // The service still answers afterwards.
    assert_eq!(
        f.rows("SELECT count(*) FROM samples").await,
        vec![json!([48])]
    );
}

#[tokio::test]
async fn the_openapi_document_covers_the_route() {
    let f = Fixture::new(|_| {}).await;
    let (status, doc) = f.app.get_with_token("/openapi.json", "").await;
    assert_eq!(status, 200);
    let op = &doc["paths"]["/v1/analytics/sql"]["post"];
    assert!(op["requestBody"].is_object(), "{op}");
    for code in ["200", "400", "401", "403", "503"] {
        assert!(op["responses"][code].is_object(), "{code}: {op}");
    }
    for schema in ["SqlRequest", "SqlAnswer", "SqlColumn"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}
