//! Operating the gateway: 503 while Postgres is down (a PRIVATE cluster, stopped and
//! started by the test), readiness, metrics, retention and start-up refusals.
//!
//! Needs: Postgres (`scripts/stack up`) and the PostgreSQL 15 binaries for the private
//! cluster; `readyz_is_ready_with_postgres_and_broker_up` also needs the broker.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::config::{Config, Environment};
use pulseline_ingest_gateway::retention::{self, RetentionPolicy};
use pulseline_testkit::private_pg::PrivatePostgres;
use serde_json::Value;
use support::{
    error_code, hr_series, samples_batch, spawn_app, spawn_app_with, start, test_config,
};
use uuid::Uuid;

#[tokio::test]
async fn postgres_down_is_503_with_retry_after_and_recovers() {
    let pg = PrivatePostgres::start().expect("a private Postgres cluster");
    let mut config = test_config(&pg.url());
    config.db_acquire_timeout_ms = 1000;
    let app = start(config).await;
    let (status, _) = app
        .post_samples(&samples_batch(Uuid::new_v4(), hr_series(2)))
        .await;
    assert_eq!(status, 200);

    pg.stop().expect("Postgres stopped");
    let started = Instant::now();
    let r = app
        .post(
            "/v1/samples:batch",
            &samples_batch(Uuid::new_v4(), hr_series(2)),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the outage is reported quickly"
    );
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAVAILABLE");
    let r = app
        .client
        .get(app.url("/v1/me/privacy"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "every database route answers 503, not 500");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    pg.start_server().expect("Postgres started again");
    let deadline = Instant::now() + Duration::from_secs(20);
    let request_id = Uuid::new_v4();
    loop {
        let r = app
            .post(
                "/v1/samples:batch",
                &samples_batch(request_id, hr_series(3)),
            )
            .await;
        match r.status().as_u16() {
            200 => {
                let answer: Value = r.json().await.unwrap();
                assert_eq!(
                    answer["accepted"], 1,
                    "two of three were stored before the outage: {answer}"
                );
                assert_eq!(answer["duplicates"], 2);
                break;
            }
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            other => panic!("expected recovery, got {other}: {:?}", r.text().await),
        }
    }
}

#[tokio::test]
async fn readyz_reports_an_unreachable_broker() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|c| {
        c.kafka_bootstrap = format!("127.0.0.1:{port}");
        c.readiness_timeout_ms = 1000;
    })
    .await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAVAILABLE");
    assert_eq!(body["error"]["details"]["postgres"], "ok");
    assert_ne!(body["error"]["details"]["kafka"], "ok");
    // Liveness does not depend on dependencies.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn readyz_is_ready_with_postgres_and_broker_up() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        status, 200,
        "needs the broker of `scripts/stack up` at {}: {body}",
        app.config.kafka_bootstrap
    );
    assert_eq!(body["checks"]["kafka"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_items_and_rejections() {
    let app = spawn_app().await;
    let mut samples = hr_series(3);
    samples.push(serde_json::json!({"sourceRecordId": "x", "metric": "NOPE", "value": 1, "unit": "count", "startAt": support::minutes_ago(1)}));
    let (status, _) = app
        .post_samples(&samples_batch(Uuid::new_v4(), samples))
        .await;
    assert_eq!(status, 207);
    let r = app
        .client
        .get(app.url("/v1/samples:batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let text = app.metrics().await;
    for expected in [
        r#"pulseline_gateway_http_requests_total{route="/v1/samples:batch",status="207"} 1"#,
        r#"pulseline_gateway_items_total{status="accepted",stream="samples"} 3"#,
        r#"pulseline_gateway_items_total{status="rejected",stream="samples"} 1"#,
        r#"pulseline_gateway_rejections_total{code="UNKNOWN_METRIC",stream="samples"} 1"#,
        "pulseline_gateway_batch_duration_seconds_bucket",
        r#"pulseline_gateway_batch_items_count{stream="samples"} 1"#,
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn retention_removes_expired_keys_and_request_ids() {
    let app = spawn_app().await;
    let (status, _) = app
        .post_samples(&samples_batch(Uuid::new_v4(), hr_series(4)))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post_events(&serde_json::json!({"requestId": Uuid::new_v4(), "events": [
            {"eventId": "e", "type": "meal", "startAt": support::minutes_ago(5)}]}))
        .await;
    assert_eq!(status, 200);
    // Age two samples, the event and one request id past their windows.
    sqlx::query("UPDATE sample SET start_at = start_at - interval '401 days' WHERE source_record_id IN ('rec-0', 'rec-1')")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE user_event SET start_at = start_at - interval '401 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE idempotency_key SET created_at = now() - interval '31 days'
         WHERE request_id = (SELECT request_id FROM idempotency_key ORDER BY created_at LIMIT 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let policy = RetentionPolicy {
        idempotency: chrono::TimeDelta::days(30),
        sample_keys: chrono::TimeDelta::days(400),
    };
    let report = retention::run_once(&app.pool, policy, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (report.idempotency_keys, report.samples, report.events),
        (1, 2, 1)
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sample")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
    let again = retention::run_once(&app.pool, policy, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (again.idempotency_keys, again.samples, again.events),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn production_refuses_the_development_secret() {
    let db = pulseline_testkit::Stack::from_env().create_database().await;
    let config = Config {
        environment: Environment::Production,
        ..test_config(&db.url)
    };
    let err = Application::build(config)
        .await
        .expect_err("must refuse the dev secret");
    assert!(err.to_string().contains("PULSELINE_JWT_SECRET"), "{err}");
    let ok = Config {
        environment: Environment::Production,
        jwt_secret: "a-production-secret-of-enough-length-0123456789".into(),
        ..test_config(&db.url)
    };
    assert!(Application::build(ok).await.is_ok());
}

#[tokio::test]
async fn two_applications_share_a_database() {
    // Replicas: both serve, and the second's migrations are a no-op.
    let app = spawn_app().await;
    let second = start(test_config(&app.config.database_url)).await;
    let token = app.token.clone();
    let body = samples_batch(Uuid::new_v4(), hr_series(2));
    let a = second.post_as("/v1/samples:batch", &token, &body).await;
    assert_eq!(a.status(), 200);
    let b = app.post_as("/v1/samples:batch", &token, &body).await;
    assert_eq!(b.status(), 200);
    assert!(b.headers().contains_key("idempotent-replayed"));
}
