//! `GET /v1/me/impacts/sessions` and `GET /v1/me/impacts/products` against a running
//! application and a real Postgres: rows in range and filtered, deleted rows absent,
//! products with and without a product id, freshness over both input streams (fresh only
//! when samples and events are), parameter errors, and the OpenAPI document.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use support::{TestApp, spawn_app};
use uuid::Uuid;

async fn get(app: &TestApp, user: Uuid, path: &str) -> (u16, Value) {
    app.get_with_token(path, &app.token(user)).await
}

/// A session row as the sink writes it for event `(id, type, product)`, starting at 08:00
/// UTC on `date`.
async fn session(
    app: &TestApp,
    user: Uuid,
    (event, kind, product): (&str, &str, Option<&str>),
    metric: &str,
    date: &str,
    deleted: bool,
) {
    sqlx::query(
        "INSERT INTO session_impact (user_id, event_id, metric, event_type, product_id, \
            start_at, end_at, local_date, baseline_avg, after_avg, delta_percent, \
            baseline_count, after_count, reliable, deleted, version, events_version) \
         VALUES ($1, $2, $3, $4, $5, ($6::date + interval '8 hours')::timestamp AT TIME ZONE 'UTC', \
            NULL, $6::date, 60, 75, 25, 60, 120, true, $7, 1, 1)",
    )
    .bind(user)
    .bind(event)
    .bind(metric)
    .bind(kind)
    .bind(product)
    .bind(date)
    .bind(deleted)
    .execute(&app.pool)
    .await
    .expect("insert session_impact");
}

async fn product(
    app: &TestApp,
    user: Uuid,
    kind: &str,
    product: Option<&str>,
    metric: &str,
    period: i32,
    n: i64,
) {
    sqlx::query(
        "INSERT INTO product_impact (user_id, event_type, product_key, metric, period_days, \
            product_id, n, avg_delta_percent, std_dev, tier, as_of, deleted, version, \
            events_version) \
         VALUES ($1, $2, COALESCE($3, ''), $4, $5, $3, $6, 12.5, 2.25, 'LOW', \
            '2026-06-10T08:00:00Z', false, 1, 1)",
    )
    .bind(user)
    .bind(kind)
    .bind(product)
    .bind(metric)
    .bind(period)
    .bind(n)
    .execute(&app.pool)
    .await
    .expect("insert product_impact");
}

/// The gateway accepted `seq` on `stream` (1 samples, 2 events) at `age` ago, and the
/// impact read models applied `applied` of it.
async fn progress(app: &TestApp, user: Uuid, stream: i16, seq: i64, applied: i64) {
    let at = Utc::now() - TimeDelta::seconds(30);
    sqlx::query(
        "INSERT INTO user_stream (user_id, stream, last_seq) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, stream) DO UPDATE SET last_seq = EXCLUDED.last_seq",
    )
    .bind(user)
    .bind(stream)
    .bind(seq)
    .execute(&app.pool)
    .await
    .expect("user_stream");
    sqlx::query(
        "INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items) \
         VALUES ($1, $2, $3, $4, 1) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(stream)
    .bind(seq)
    .bind(at)
    .execute(&app.pool)
    .await
    .expect("accepted_change");
    for model in ["session_impacts", "product_impacts"] {
        sqlx::query(
            "INSERT INTO sink_progress (read_model, user_id, stream, applied_seq) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (read_model, user_id, stream) \
             DO UPDATE SET applied_seq = EXCLUDED.applied_seq",
        )
        .bind(model)
        .bind(user)
        .bind(stream)
        .bind(applied)
        .execute(&app.pool)
        .await
        .expect("sink_progress");
    }
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s["eventId"].as_str().unwrap_or_default(),
                        s["metric"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn sessions_in_range_filtered_with_freshness_over_both_streams() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    session(
        &app,
        user,
        ("c1", "caffeine", Some("espresso")),
        "HEART_RATE",
        "2026-06-01",
        false,
    )
    .await;
    session(
        &app,
        user,
        ("c1", "caffeine", Some("espresso")),
        "BLOOD_GLUCOSE",
        "2026-06-01",
        false,
    )
    .await;
    session(
        &app,
        user,
        ("m1", "meal", None),
        "HEART_RATE",
        "2026-06-02",
        false,
    )
    .await;
    session(
        &app,
        user,
        ("gone", "meal", None),
        "HEART_RATE",
        "2026-06-02",
        true,
    )
    .await;
    session(
        &app,
        user,
        ("late", "meal", None),
        "HEART_RATE",
        "2026-06-09",
        false,
    )
    .await;
    session(
        &app,
        Uuid::new_v4(),
        ("other", "meal", None),
        "HEART_RATE",
        "2026-06-02",
        false,
    )
    .await;
    progress(&app, user, 1, 5, 5).await;
    progress(&app, user, 2, 3, 2).await;

    let range = "/v1/me/impacts/sessions?from=2026-06-01&to=2026-06-07";
    let (status, body) = get(&app, user, range).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        ["c1/BLOOD_GLUCOSE", "c1/HEART_RATE", "m1/HEART_RATE"]
    );
    assert_eq!(
        body["data"][1],
        json!({
            "eventId": "c1", "eventType": "caffeine", "productId": "espresso",
            "startAt": "2026-06-01T08:00:00Z", "endAt": null, "metric": "HEART_RATE",
            "baselineAvg": 60.0, "afterAvg": 75.0, "deltaPercent": 25.0,
            "baselineCount": 60, "afterCount": 120, "reliable": true
        })
    );
    // Samples applied, events behind: stale, and the events stream says so.
    let f = &body["freshness"];
    assert_eq!(f["status"], "stale");
    assert_eq!(f["streams"][0]["stream"], "samples");
    assert_eq!(f["streams"][0]["status"], "fresh");
    assert_eq!(f["streams"][1]["stream"], "events");
    assert_eq!(
        (
            f["streams"][1]["latestSeq"].as_i64(),
            f["streams"][1]["appliedSeq"].as_i64()
        ),
        (Some(3), Some(2))
    );

    for (filter, want) in [
        ("&metric=heart_rate", vec!["c1/HEART_RATE", "m1/HEART_RATE"]),
        ("&eventType=meal", vec!["m1/HEART_RATE"]),
        (
            "&productId=espresso",
            vec!["c1/BLOOD_GLUCOSE", "c1/HEART_RATE"],
        ),
    ] {
        let (_, body) = get(&app, user, &format!("{range}{filter}")).await;
        assert_eq!(ids(&body), want, "{filter}");
    }
    progress(&app, user, 2, 3, 3).await;
    let (_, body) = get(&app, user, range).await;
    assert_eq!(body["freshness"]["status"], "fresh");
}

#[tokio::test]
async fn products_by_period_with_and_without_a_product() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    product(
        &app,
        user,
        "caffeine",
        Some("espresso"),
        "HEART_RATE",
        30,
        4,
    )
    .await;
    product(&app, user, "meal", None, "HEART_RATE", 30, 1).await;
    product(
        &app,
        user,
        "caffeine",
        Some("espresso"),
        "HEART_RATE",
        90,
        9,
    )
    .await;
    product(
        &app,
        user,
        "caffeine",
        Some("espresso"),
        "BLOOD_GLUCOSE",
        30,
        3,
    )
    .await;
    let (status, body) = get(
        &app,
        user,
        "/v1/me/impacts/products?periodDays=30&metric=HEART_RATE",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([
            {"productId": "espresso", "eventType": "caffeine", "metric": "HEART_RATE",
             "periodDays": 30, "n": 4, "avgDeltaPercent": 12.5, "stdDev": 2.25,
             "tier": "LOW", "asOf": "2026-06-10T08:00:00Z"},
            {"productId": null, "eventType": "meal", "metric": "HEART_RATE",
             "periodDays": 30, "n": 1, "avgDeltaPercent": 12.5, "stdDev": 2.25,
             "tier": "LOW", "asOf": "2026-06-10T08:00:00Z"}
        ])
    );
    let (_, body) = get(&app, user, "/v1/me/impacts/products?periodDays=90").await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        body["freshness"]["streams"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn every_parameter_error_names_the_parameter() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    let cases = [
        ("/v1/me/impacts/sessions?to=2026-06-02", "from"),
        (
            "/v1/me/impacts/sessions?from=2026-06-01&to=2026-06-02&eventType=nap",
            "eventType",
        ),
        (
            "/v1/me/impacts/sessions?from=2026-06-01&to=2026-06-02&metric=PULSE",
            "metric",
        ),
        (
            "/v1/me/impacts/sessions?from=2024-06-01&to=2026-06-02",
            "to",
        ),
        (
            "/v1/me/impacts/sessions?from=2026-06-01&to=2026-06-02&userId=x",
            "userId",
        ),
        ("/v1/me/impacts/products", "periodDays"),
        ("/v1/me/impacts/products?periodDays=60", "periodDays"),
        (
            "/v1/me/impacts/products?periodDays=30&metric=nope",
            "metric",
        ),
    ];
    for (path, parameter) in cases {
        let (status, body) = get(&app, user, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER", "{path}");
        assert_eq!(body["error"]["details"]["parameter"], parameter, "{path}");
    }
    let long = "x".repeat(257);
    let (status, _) = get(
        &app,
        user,
        &format!("/v1/me/impacts/sessions?from=2026-06-01&to=2026-06-02&productId={long}"),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_openapi_document_lists_both_reads() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    for path in ["/v1/me/impacts/sessions", "/v1/me/impacts/products"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    assert!(doc["components"]["schemas"]["SessionImpact"].is_object());
    assert!(doc["components"]["schemas"]["ProductImpact"].is_object());
}
