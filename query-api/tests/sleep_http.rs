//! `GET /v1/me/sleep` against a running application and a real Postgres: nights over a
//! range of dates of waking (newest last, deleted nights absent, null stage minutes kept
//! null), freshness of the sleep read model, isolation between users, parameter errors,
//! and the OpenAPI document.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use support::{TestApp, error_code, spawn_app};
use uuid::Uuid;

const RANGE: &str = "from=2026-03-01&to=2026-03-07";

async fn sleep(app: &TestApp, user: Uuid, query: &str) -> (u16, Value) {
    app.get_with_token(&format!("/v1/me/sleep?{query}"), &app.token(user))
        .await
}

/// A night row as the sink writes it; `staged = false`: a phone-only night.
async fn night(app: &TestApp, user: Uuid, date: &str, asleep: f64, staged: bool, deleted: bool) {
    let stage = |m: f64| staged.then_some(m);
    sqlx::query(
        "INSERT INTO sleep_night (user_id, night, bed_at, wake_at, in_bed_minutes, \
            asleep_minutes, awake_minutes, latency_minutes, efficiency, awakenings, \
            rem_minutes, deep_minutes, core_minutes, unspecified_minutes, nap_count, \
            nap_minutes, sources, deleted, version) \
         VALUES ($1, $2::date, ($2::date - interval '2 hours')::timestamp AT TIME ZONE 'UTC', \
            ($2::date + interval '5 hours 30 minutes')::timestamp AT TIME ZONE 'UTC', \
            450, $3, 450 - $3, 12.5, round(($3 / 450)::numeric, 3)::float8, 2, $4, $5, $6, \
            $7, 1, 35, ARRAY['phone-1', 'watch-1'], $8, 1)",
    )
    .bind(user)
    .bind(date)
    .bind(asleep)
    .bind(stage(80.0))
    .bind(stage(60.0))
    .bind(stage(asleep - 160.0))
    .bind(if staged { 20.0 } else { asleep })
    .bind(deleted)
    .execute(&app.pool)
    .await
    .expect("insert sleep_night");
}

/// The sink has applied the user's samples up to `seq` in the sleep nights.
async fn applied(app: &TestApp, user: Uuid, seq: i64) {
    sqlx::query(
        "INSERT INTO sink_progress (read_model, user_id, stream, applied_seq) \
         VALUES ('sleep_nights', $1, 1, $2) \
         ON CONFLICT (read_model, user_id, stream) DO UPDATE SET applied_seq = EXCLUDED.applied_seq",
    )
    .bind(user)
    .bind(seq)
    .execute(&app.pool)
    .await
    .expect("sink_progress");
}

fn dates(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n["date"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn nights_in_the_range_newest_last_with_every_figure() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    night(&app, user, "2026-03-03", 400.0, true, false).await;
    night(&app, user, "2026-03-01", 420.0, false, false).await;
    night(&app, user, "2026-03-04", 380.0, true, true).await; // every sample deleted
    night(&app, user, "2026-03-08", 390.0, true, false).await; // after the range
    night(&app, user, "2026-02-28", 390.0, true, false).await; // before the range
    let long_ago = Utc::now() - TimeDelta::hours(3);
    for seq in 1..=4 {
        app.accepted(user, seq, long_ago).await;
    }
    applied(&app, user, 4).await;

    let (status, body) = sleep(&app, user, RANGE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(dates(&body), ["2026-03-01", "2026-03-03"]);
    assert_eq!(
        body["data"][1],
        json!({
            "date": "2026-03-03",
            "bedAt": "2026-03-02T22:00:00Z",
            "wakeAt": "2026-03-03T05:30:00Z",
            "inBedMinutes": 450.0, "asleepMinutes": 400.0, "awakeMinutes": 50.0,
            "latencyMinutes": 12.5, "efficiency": 0.889, "awakenings": 2,
            "remMinutes": 80.0, "deepMinutes": 60.0, "coreMinutes": 240.0,
            "unspecifiedMinutes": 20.0, "napCount": 1, "napMinutes": 35.0,
            "sources": ["phone-1", "watch-1"]
        })
    );
    // A phone-only night: stage minutes are null, not 0.
    let phone = &body["data"][0];
    assert_eq!(
        (
            &phone["remMinutes"],
            &phone["deepMinutes"],
            &phone["coreMinutes"]
        ),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(phone["unspecifiedMinutes"], 420.0);
    assert_eq!(
        body["freshness"],
        json!({
            "status": "fresh", "latestSeq": 4, "appliedSeq": 4, "lagSeconds": 0.0,
            "streams": [{
                "stream": "samples", "status": "fresh", "latestSeq": 4, "appliedSeq": 4,
                "lagSeconds": 0.0
            }]
        })
    );
}

#[tokio::test]
async fn freshness_is_the_sleep_read_models_own() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    night(&app, user, "2026-03-02", 400.0, true, false).await;
    let now = Utc::now();
    app.accepted(user, 1, now - TimeDelta::hours(2)).await;
    app.accepted(user, 2, now - TimeDelta::seconds(30)).await;
    applied(&app, user, 1).await;
    // The rollups being further along says nothing about the nights.
    app.applied(user, 2).await;

    let (status, body) = sleep(&app, user, RANGE).await;
    assert_eq!(status, 200, "{body}");
    let f = &body["freshness"];
    assert_eq!(f["status"], "stale");
    assert_eq!(
        (f["latestSeq"].as_i64(), f["appliedSeq"].as_i64()),
        (Some(2), Some(1))
    );
    let lag = f["lagSeconds"].as_f64().unwrap();
    assert!(
        (29.0..40.0).contains(&lag),
        "lag of seq 2 (30 s old): {lag}"
    );

    applied(&app, user, 2).await;
    let (_, body) = sleep(&app, user, RANGE).await;
    assert_eq!(body["freshness"]["status"], "fresh");
}

#[tokio::test]
async fn a_user_reads_only_their_own_nights() {
    let app = spawn_app().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    night(&app, alice, "2026-03-02", 400.0, true, false).await;
    app.accepted(alice, 1, Utc::now()).await;
    night(&app, bob, "2026-03-05", 300.0, false, false).await;

    let (_, body) = sleep(&app, bob, RANGE).await;
    assert_eq!(dates(&body), ["2026-03-05"]);
    assert_eq!(body["freshness"]["latestSeq"], 0, "and his own sequence");
    let (_, body) = sleep(&app, alice, RANGE).await;
    assert_eq!(dates(&body), ["2026-03-02"]);
    assert_eq!(body["freshness"]["latestSeq"], 1);

    let (status, body) = sleep(&app, bob, &format!("{RANGE}&userId={alice}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["parameter"], "userId");
}

#[tokio::test]
async fn every_parameter_error_names_the_parameter() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    let r = app
        .client
        .get(app.url(&format!("/v1/me/sleep?{RANGE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await.unwrap()), "UNAUTHENTICATED");

    let cases: [(&str, &str); 8] = [
        ("to=2026-03-02", "from"),
        ("from=2026-03-01", "to"),
        ("from=2026-3-1&to=2026-03-02", "from"),
        ("from=2026-03-01&to=2026-02-30", "to"),
        ("from=2026-03-02&to=2026-03-01", "from"),
        ("from=2025-01-01&to=2026-03-01", "to"),
        ("from=2026-03-01&from=2026-03-01&to=2026-03-02", "from"),
        ("from=2026-03-01&to=2026-03-02&metric=STEPS", "metric"),
    ];
    for (query, parameter) in cases {
        let (status, body) = sleep(&app, user, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(error_code(&body), "INVALID_PARAMETER", "{query}");
        assert_eq!(
            body["error"]["details"]["parameter"], parameter,
            "{query}: {body}"
        );
    }
    let (_, body) = sleep(&app, user, "from=2025-01-01&to=2026-03-01").await;
    assert_eq!(body["error"]["details"]["maxDays"], 366);
    // 366 dates (a leap year's worth) are allowed.
    let (status, _) = sleep(&app, user, "from=2027-03-01&to=2028-02-29").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_openapi_document_describes_the_sleep_route() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    let op = &doc["paths"]["/v1/me/sleep"]["get"];
    assert!(op.is_object(), "route documented");
    assert!(op["responses"]["400"].is_object());
    let night = &doc["components"]["schemas"]["SleepNight"]["properties"];
    for field in [
        "date",
        "bedAt",
        "wakeAt",
        "remMinutes",
        "napCount",
        "unspecifiedMinutes",
    ] {
        assert!(night[field].is_object(), "{field} in the schema");
    }
    let date_doc = night["date"]["description"].as_str().unwrap_or_default();
    assert!(date_doc.contains("local date of waking"), "{date_doc}");
    assert!(
        night["bedAt"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("UTC")
    );
}
