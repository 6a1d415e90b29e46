//! The query API's HTTP contract against a running application and a real Postgres:
//! rollups by day and hour, freshness (fresh, stale with lag), isolation between users,
//! every error code, and the operational endpoints.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use chrono::{TimeDelta, Utc};
use pulseline_service::auth::{Role, issue_hs256_token};
use serde_json::{Value, json};
use support::{TestApp, error_code, spawn_app, spawn_app_with, starts};
use uuid::Uuid;

const DAYS: &str = "metric=STEPS&period=day&from=2026-03-01&to=2026-03-07";

async fn seed_steps(app: &TestApp, user: Uuid) {
    app.rollup(user, "STEPS", "2026-03-01", 1000.0, false).await;
    app.rollup(user, "STEPS", "2026-03-03", 3000.0, false).await;
    app.rollup(user, "STEPS", "2026-03-04", 4000.0, true).await; // all samples deleted
    app.rollup(user, "STEPS", "2026-03-08", 8000.0, false).await; // after the range
    app.rollup(user, "STEPS", "2026-02-28", 2800.0, false).await; // before the range
    app.rollup(user, "HEART_RATE", "2026-03-01", 61.0, false)
        .await; // another metric
}

#[tokio::test]
async fn a_fresh_answer_has_the_users_buckets_and_zero_lag() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    seed_steps(&app, user).await;
    let long_ago = Utc::now() - TimeDelta::hours(3);
    for seq in 1..=5 {
        app.accepted(user, seq, long_ago).await;
    }
    app.applied(user, 5).await;

    let (status, body) = app.rollups(user, DAYS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metric"], "STEPS");
    assert_eq!(body["unit"], "count");
    assert_eq!(body["period"], "day");
    assert_eq!(starts(&body), ["2026-03-01", "2026-03-03"]);
    assert_eq!(
        body["data"][0],
        json!({
            "localStart": "2026-03-01", "value": 1000.0, "min": 999.0, "max": 1001.0, "count": 3,
            "sources": ["apple_watch:w1", "iphone:p1"]
        })
    );
    assert_eq!(
        body["freshness"],
        json!({
            "status": "fresh", "latestSeq": 5, "appliedSeq": 5, "lagSeconds": 0.0,
            "streams": [{
                "stream": "samples", "status": "fresh", "latestSeq": 5, "appliedSeq": 5,
                "lagSeconds": 0.0
            }]
        })
    );
}

#[tokio::test]
async fn a_stale_answer_reports_the_age_of_the_oldest_unapplied_change() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    seed_steps(&app, user).await;
    let now = Utc::now();
    for seq in 1..=5 {
        app.accepted(user, seq, now - TimeDelta::hours(2)).await;
    }
    app.accepted(user, 6, now - TimeDelta::seconds(30)).await;
    app.accepted(user, 7, now - TimeDelta::seconds(10)).await;
    app.applied(user, 5).await;

    let (status, body) = app.rollups(user, DAYS).await;
    assert_eq!(status, 200, "{body}");
    let f = &body["freshness"];
    assert_eq!(f["status"], "stale");
    assert_eq!(
        (f["latestSeq"].as_i64(), f["appliedSeq"].as_i64()),
        (Some(7), Some(5))
    );
    let lag = f["lagSeconds"].as_f64().unwrap();
    assert!(
        (29.0..40.0).contains(&lag),
        "lag of seq 6 (30 s old): {lag}"
    );

    // Once the sink catches up, the same request is fresh.
    app.applied(user, 7).await;
    let (_, body) = app.rollups(user, DAYS).await;
    assert_eq!(body["freshness"]["status"], "fresh");
    assert_eq!(body["freshness"]["lagSeconds"], 0.0);
}

#[tokio::test]
async fn a_user_without_data_gets_an_empty_fresh_answer() {
    let app = spawn_app().await;
    let (status, body) = app.rollups(Uuid::new_v4(), DAYS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]));
    assert_eq!(
        body["freshness"],
        json!({
            "status": "fresh", "latestSeq": 0, "appliedSeq": 0, "lagSeconds": 0.0,
            "streams": [{
                "stream": "samples", "status": "fresh", "latestSeq": 0, "appliedSeq": 0,
                "lagSeconds": 0.0
            }]
        })
    );
    // Accepted but nothing applied yet: stale, with the first change's age.
    let user = Uuid::new_v4();
    app.accepted(user, 1, Utc::now() - TimeDelta::seconds(5))
        .await;
    let (_, body) = app.rollups(user, DAYS).await;
    assert_eq!(body["freshness"]["status"], "stale");
    assert_eq!(body["freshness"]["appliedSeq"], 0);
    assert!(body["freshness"]["lagSeconds"].as_f64().unwrap() >= 4.0);
}

#[tokio::test]
async fn a_user_reads_only_their_own_rows_and_freshness() {
    let app = spawn_app().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    seed_steps(&app, alice).await;
    app.accepted(alice, 1, Utc::now() - TimeDelta::seconds(20))
        .await;
    app.rollup(bob, "STEPS", "2026-03-02", 222.0, false).await;

    let (_, body) = app.rollups(bob, DAYS).await;
    assert_eq!(starts(&body), ["2026-03-02"], "Bob sees only his bucket");
    assert_eq!(body["freshness"]["latestSeq"], 0, "and his own sequence");
    assert_eq!(body["freshness"]["status"], "fresh");

    let (_, body) = app.rollups(alice, DAYS).await;
    assert_eq!(starts(&body), ["2026-03-01", "2026-03-03"]);
    assert_eq!(body["freshness"]["latestSeq"], 1);

    // There is no way to name another user: the id comes from the token only.
    let (status, body) = app.rollups(bob, &format!("{DAYS}&userId={alice}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["parameter"], "userId");
}

#[tokio::test]
async fn hour_and_day_periods_read_their_own_buckets() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    app.rollup(user, "HEART_RATE", "2026-03-01", 70.0, false)
        .await;
    app.rollup(user, "HEART_RATE", "2026-03-02", 72.0, false)
        .await;
    for hour in [
        "2026-02-28T23:00:00",
        "2026-03-01T00:00:00",
        "2026-03-01T23:00:00",
        "2026-03-02T05:00:00",
        "2026-03-03T00:00:00",
    ] {
        app.rollup(user, "HEART_RATE", hour, 65.0, false).await;
    }

    let (status, body) = app
        .rollups(
            user,
            "metric=heart_rate&period=hour&from=2026-03-01&to=2026-03-02",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["period"], "hour");
    assert_eq!(body["unit"], "count/min");
    assert_eq!(
        starts(&body),
        [
            "2026-03-01T00:00:00",
            "2026-03-01T23:00:00",
            "2026-03-02T05:00:00"
        ],
        "from the first day's midnight to the last day's last hour"
    );

    let (_, body) = app
        .rollups(
            user,
            "metric=HEART_RATE&period=DAY&from=2026-03-01&to=2026-03-01",
        )
        .await;
    assert_eq!(body["period"], "day");
    assert_eq!(starts(&body), ["2026-03-01"]);
    assert_eq!(body["data"][0]["value"], 70.0);
}

#[tokio::test]
async fn every_error_has_its_code_and_names_the_parameter() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();

    // 401: no token, a forged one, an expired one.
    let r = app
        .client
        .get(app.url(&format!("/v1/me/rollups?{DAYS}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await.unwrap()), "UNAUTHENTICATED");
    let forged = issue_hs256_token(
        "another-secret-another-secret-another",
        user,
        Role::User,
        600,
    );
    let (status, body) = app
        .get_with_token(&format!("/v1/me/rollups?{DAYS}"), &forged)
        .await;
    assert_eq!((status, error_code(&body)), (401, "UNAUTHENTICATED"));
    let expired = issue_hs256_token(&app.config.jwt_secret, user, Role::User, -600);
    let (status, body) = app
        .get_with_token(&format!("/v1/me/rollups?{DAYS}"), &expired)
        .await;
    assert_eq!((status, error_code(&body)), (401, "TOKEN_EXPIRED"));
    // Authentication comes first: a bad query without a token is still 401.
    let r = app
        .client
        .get(app.url("/v1/me/rollups?period=week"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // 400: each parameter, named in details.parameter.
    let cases: [(&str, &str); 10] = [
        ("period=day&from=2026-03-01&to=2026-03-02", "metric"),
        ("metric=STEPS&from=2026-03-01&to=2026-03-02", "period"),
        (
            "metric=STEPS&period=week&from=2026-03-01&to=2026-03-02",
            "period",
        ),
        (
            "metric=STEPS&period=day&from=2026-3-1&to=2026-03-02",
            "from",
        ),
        (
            "metric=STEPS&period=day&from=2026-03-01&to=2026-02-30",
            "to",
        ),
        (
            "metric=STEPS&period=day&from=2026-03-02&to=2026-03-01",
            "from",
        ),
        (
            "metric=STEPS&period=day&from=2025-01-01&to=2026-03-01",
            "to",
        ),
        (
            "metric=STEPS&period=hour&from=2026-03-01&to=2026-04-01",
            "to",
        ),
        (
            "metric=STEPS&metric=STEPS&period=day&from=2026-03-01&to=2026-03-02",
            "metric",
        ),
        (
            "metric=STEPS&period=day&from=2026-03-01&to=2026-03-02&limit=5",
            "limit",
        ),
    ];
    for (query, parameter) in cases {
        let (status, body) = app.rollups(user, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(error_code(&body), "INVALID_PARAMETER", "{query}");
        assert_eq!(
            body["error"]["details"]["parameter"], parameter,
            "{query}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(parameter),
            "{body}"
        );
    }
    let (_, body) = app
        .rollups(
            user,
            "metric=STEPS&period=hour&from=2026-03-01&to=2026-04-01",
        )
        .await;
    assert_eq!(body["error"]["details"]["maxDays"], 31);

    // 404: a metric the catalog does not know (after the syntax checks pass).
    let (status, body) = app
        .rollups(
            user,
            "metric=NOT_A_METRIC&period=day&from=2026-03-01&to=2026-03-02",
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "UNKNOWN_METRIC"));
    assert_eq!(body["error"]["details"]["metric"], "NOT_A_METRIC");

    // Unknown routes and methods, in the same envelope.
    let (status, body) = app.get_with_token("/v1/me/nothing", &app.token(user)).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let r = app
        .client
        .post(app.url("/v1/me/rollups"))
        .bearer_auth(app.token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(&r.json().await.unwrap()), "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn operational_endpoints() {
    let app = spawn_app().await;
    let get = |path: &str| app.client.get(app.url(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    app.rollups(Uuid::new_v4(), DAYS).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"pulseline_query_http_requests_total{route="/v1/me/rollups",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"pulseline_query_read_model_answers_total{read_model="rollups",status="fresh"} 1"#
    ));

    let doc: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    let op = &doc["paths"]["/v1/me/rollups"]["get"];
    assert!(op.is_object(), "{doc}");
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["metric", "period", "from", "to"]);
    for schema in ["RollupsAnswer", "RollupPoint", "Freshness", "ErrorEnvelope"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
}

#[tokio::test]
async fn not_ready_until_the_gateways_tables_exist() {
    let app = spawn_app_with(false).await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAVAILABLE");
    assert_eq!(
        body["error"]["details"]["missingTables"],
        json!(["user_stream", "accepted_change"])
    );
}
