//! The HTTP contract, against the running gateway and a real Postgres: every request-level
//! error code, every per-item rejection code, 200 vs 207, gzip, payload hashes.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use std::io::Write;

use chrono::TimeDelta;
use flate2::Compression;
use flate2::write::GzEncoder;
use pulseline_service::auth::{Claims, Role};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    at, error_code, hr, hr_series, minutes_ago, samples_batch, spawn_app, spawn_app_with,
};
use uuid::Uuid;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn healthz_openapi_and_not_found() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/samples:batch",
        "/v1/events:batch",
        "/v1/me/privacy",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert!(doc["components"]["schemas"]["BatchAnswer"].is_object());
    let description = doc["paths"]["/v1/samples:batch"]["post"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("every item"),
        "the docs say results list every item: {description}"
    );

    let r = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn authentication_errors() {
    let app = spawn_app().await;
    let body = samples_batch(Uuid::new_v4(), hr_series(1));

    let r = app
        .client
        .post(app.url("/v1/samples:batch"))
        .header("content-type", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await.unwrap()), "UNAUTHENTICATED");

    let forged = pulseline_service::auth::issue_hs256_token(
        "some-other-secret-some-other-secret-1234",
        app.user_id,
        Role::User,
        3600,
    );
    let r = app.post_as("/v1/samples:batch", &forged, &body).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await.unwrap()), "UNAUTHENTICATED");

    let expired = pulseline_service::auth::issue_hs256_token(
        &app.config.jwt_secret,
        app.user_id,
        Role::User,
        -600,
    );
    let r = app.post_as("/v1/samples:batch", &expired, &body).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await.unwrap()), "TOKEN_EXPIRED");

    // A subject that is not a UUID.
    let claims = Claims {
        sub: "alice".into(),
        role: Role::User,
        exp: chrono::Utc::now().timestamp() + 600,
    };
    let not_uuid = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(app.config.jwt_secret.as_bytes()),
    )
    .unwrap();
    let r = app.post_as("/v1/samples:batch", &not_uuid, &body).await;
    assert_eq!(r.status(), 401);

    let analyst = app.token_for(Uuid::new_v4(), Role::Analyst);
    let r = app.post_as("/v1/samples:batch", &analyst, &body).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.json().await.unwrap()), "FORBIDDEN");

    // Auth comes before the body: a garbage body with no token is still a 401.
    let r = app
        .client
        .post(app.url("/v1/samples:batch"))
        .body("{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // An admin may upload on their own account.
    let admin = app.token_for(Uuid::new_v4(), Role::Admin);
    let r = app.post_as("/v1/samples:batch", &admin, &body).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn media_type_and_encoding_errors() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&samples_batch(Uuid::new_v4(), hr_series(1))).unwrap();

    let r = app
        .client
        .post(app.url("/v1/samples:batch"))
        .bearer_auth(&app.token)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        error_code(&r.json().await.unwrap()),
        "UNSUPPORTED_MEDIA_TYPE"
    );

    let r = app
        .client
        .post(app.url("/v1/samples:batch"))
        .bearer_auth(&app.token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a missing Content-Type is refused too");

    let r = app
        .post_raw(
            "/v1/samples:batch",
            &app.token,
            body.clone(),
            &[("content-encoding", "br")],
        )
        .await;
    assert_eq!(r.status(), 415);
    assert_eq!(
        error_code(&r.json().await.unwrap()),
        "UNSUPPORTED_MEDIA_TYPE"
    );

    // With a charset parameter it is fine.
    let r = app
        .client
        .post(app.url("/v1/samples:batch"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn invalid_bodies_name_the_field_and_never_echo_values() {
    let app = spawn_app().await;
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"{\"requestId\": ".to_vec(), None),
        (b"[1, 2]".to_vec(), None),
        (b"".to_vec(), None),
        (serde_json::to_vec(&json!({"source": {"sourceId": "w", "deviceType": "apple_watch"}, "samples": []})).unwrap(), None),
        (
            serde_json::to_vec(&json!({"requestId": "not-a-uuid", "source": {"sourceId": "w", "deviceType": "apple_watch"}})).unwrap(),
            Some("requestId"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "toaster"}})).unwrap(),
            Some("source.deviceType"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "iphone"},
                "samples": [{"sourceRecordId": "r", "metric": "HEART_RATE", "value": "SECRET-77 bpm", "unit": "count/min", "startAt": minutes_ago(1)}]}))
            .unwrap(),
            Some("samples[0].value"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "iphone"},
                "samples": [{"sourceRecordId": "r", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": "SECRET-yesterday"}]}))
            .unwrap(),
            Some("samples[0].startAt"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "iphone"},
                "samples": [{"sourceRecordId": "r", "metric": "HEART_RATE", "value": 70, "unit": "count/min"}]}))
            .unwrap(),
            Some("samples[0]"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "iphone"},
                "samples": [{"sourceRecordId": "r", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": minutes_ago(1), "tzOffset": 60}]}))
            .unwrap(),
            Some("samples[0]"),
        ),
        (
            serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "", "deviceType": "iphone"}})).unwrap(),
            Some("source.sourceId"),
        ),
        (serde_json::to_vec(&json!({"requestId": Uuid::new_v4(), "source": {"sourceId": "w", "deviceType": "iphone"}, "extra": 1})).unwrap(), None),
    ];
    for (body, field) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = app
            .post_raw("/v1/samples:batch", &app.token, body, &[])
            .await;
        assert_eq!(r.status(), 400, "{shown}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(error_code(&answer), "INVALID_BODY", "{shown}");
        let text = answer.to_string();
        assert!(!text.contains("SECRET"), "the error echoes a value: {text}");
        if let Some(field) = field {
            let reported = answer["error"]["details"]["field"]
                .as_str()
                .unwrap_or_default();
            assert!(
                reported.starts_with(field),
                "{shown}: field {reported} should start with {field}; {text}"
            );
        }
    }
    assert_eq!(
        app.last_seq(app.user_id, 1).await,
        0,
        "bad bodies change nothing"
    );
}

#[tokio::test]
async fn batch_too_large_by_items_and_by_bytes() {
    let app = spawn_app_with(|c| {
        c.max_batch_items = 10;
        c.max_body_bytes = 64 * 1024;
    })
    .await;
    let (status, body) = app
        .post_samples(&samples_batch(Uuid::new_v4(), hr_series(11)))
        .await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "BATCH_TOO_LARGE");
    let (status, _) = app
        .post_samples(&samples_batch(Uuid::new_v4(), hr_series(10)))
        .await;
    assert_eq!(status, 200);

    // Over the byte limit, uncompressed.
    let mut big = samples_batch(Uuid::new_v4(), hr_series(1));
    big["samples"][0]["metadata"] = json!({ "padding": "x".repeat(70 * 1024) });
    let r = app.post("/v1/samples:batch", &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().await.unwrap()), "BATCH_TOO_LARGE");
}

#[tokio::test]
async fn gzip_is_accepted_and_a_gzip_bomb_is_refused() {
    let app = spawn_app_with(|c| c.max_body_bytes = 256 * 1024).await;
    let body = serde_json::to_vec(&samples_batch(Uuid::new_v4(), hr_series(20))).unwrap();
    let r = app
        .post_raw(
            "/v1/samples:batch",
            &app.token,
            gzip(&body),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 20);

    // 64 MiB of spaces (valid JSON whitespace) around a tiny body: ~64 KiB compressed,
    // far under the limit on the wire, far over it decompressed.
    let mut bomb = vec![b' '; 64 * 1024 * 1024];
    bomb.extend_from_slice(
        &serde_json::to_vec(&samples_batch(Uuid::new_v4(), hr_series(1))).unwrap(),
    );
    let compressed = gzip(&bomb);
    assert!(
        compressed.len() < 256 * 1024,
        "the bomb fits under the limit compressed ({} bytes)",
        compressed.len()
    );
    let r = app
        .post_raw(
            "/v1/samples:batch",
            &app.token,
            compressed,
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().await.unwrap()), "BATCH_TOO_LARGE");

    // Corrupt gzip is a bad body, not a crash.
    let r = app
        .post_raw(
            "/v1/samples:batch",
            &app.token,
            b"not gzip at all".to_vec(),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = app
            .post(
                "/v1/samples:batch",
                &samples_batch(Uuid::new_v4(), hr_series(1)),
            )
            .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(error_code(&r.json().await.unwrap()), "RATE_LIMITED");
        }
    }
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After in whole seconds"
    );
    // Another user is not limited by this one.
    let other = app.token_for(Uuid::new_v4(), Role::User);
    let r = app
        .post_as(
            "/v1/samples:batch",
            &other,
            &samples_batch(Uuid::new_v4(), hr_series(1)),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// The canonical JSON of a one-sample body, written out by hand per RFC 8785 (sorted keys,
/// no whitespace, numbers in their shortest double form): an oracle independent of the
/// gateway's code.
#[tokio::test]
async fn payload_hash_is_sha256_of_the_canonical_body() {
    let app = spawn_app().await;
    let rid = Uuid::new_v4();
    let start = minutes_ago(3);
    let canonical = format!(
        r#"{{"requestId":"{rid}","samples":[{{"endAt":"{start}","metric":"HEART_RATE","sourceRecordId":"r-1","startAt":"{start}","tzOffsetMinutes":120,"unit":"count/min","value":72}}],"source":{{"deviceType":"apple_watch","sourceId":"watch-1"}}}}"#
    );
    let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    // The same content, keys in another order, 72.0 and a pretty-printed layout.
    let sent = format!(
        r#"{{ "payloadHash": "{hash}", "source": {{ "sourceId": "watch-1", "deviceType": "apple_watch" }},
             "samples": [ {{ "value": 72.0, "unit": "count/min", "metric": "HEART_RATE", "sourceRecordId": "r-1",
                             "startAt": "{start}", "endAt": "{start}", "tzOffsetMinutes": 120 }} ],
             "requestId": "{rid}" }}"#
    );
    let r = app
        .post_raw("/v1/samples:batch", &app.token, sent.into_bytes(), &[])
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    let mut wrong = samples_batch(Uuid::new_v4(), vec![hr("r-2", 72.0, &start)]);
    wrong["payloadHash"] = json!(hash);
    let r = app.post("/v1/samples:batch", &wrong).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        error_code(&r.json().await.unwrap()),
        "PAYLOAD_HASH_MISMATCH"
    );
}

/// 72 and 72.0 are the same payload: the second request is a replay of the first, not a
/// 422, and changes nothing.
#[tokio::test]
async fn integer_and_float_spellings_hash_alike() {
    let app = spawn_app().await;
    let rid = Uuid::new_v4();
    let start = minutes_ago(5);
    let body = |value: &str| {
        format!(
            r#"{{"requestId":"{rid}","source":{{"sourceId":"watch-1","deviceType":"apple_watch"}},
                "samples":[{{"sourceRecordId":"r","metric":"HEART_RATE","value":{value},"unit":"count/min","startAt":"{start}"}}]}}"#
        )
        .into_bytes()
    };
    let first = app
        .post_raw("/v1/samples:batch", &app.token, body("72"), &[])
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let second = app
        .post_raw("/v1/samples:batch", &app.token, body("72.0"), &[])
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    let third = app
        .post_raw("/v1/samples:batch", &app.token, body("72.5"), &[])
        .await;
    assert_eq!(
        third.status(),
        422,
        "a different value is a different payload"
    );
    assert_eq!(app.outbox(app.user_id).await.len(), 1);
}

#[tokio::test]
async fn every_per_sample_code_and_207() {
    let app = spawn_app().await;
    let ok = minutes_ago(10);
    let samples = vec![
        hr("ok", 72.0, &ok),
        json!({"sourceRecordId": "a", "metric": "HEART_RATES", "value": 1, "unit": "count/min", "startAt": ok}),
        json!({"sourceRecordId": "b", "metric": "HEART_RATE", "value": 70, "unit": "kg", "startAt": ok}),
        json!({"sourceRecordId": "c", "metric": "HEART_RATE", "value": 4000, "unit": "count/min", "startAt": ok}),
        json!({"sourceRecordId": "d", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": ok, "endAt": at(TimeDelta::minutes(-200))}),
        json!({"sourceRecordId": "e", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": at(TimeDelta::hours(2))}),
        json!({"sourceRecordId": "f", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": at(TimeDelta::days(-500))}),
        json!({"sourceRecordId": "g", "metric": "HEART_RATE", "unit": "count/min", "startAt": ok}),
        json!({"sourceRecordId": "h", "metric": "SLEEP_STAGE", "category": "dreaming", "startAt": ok, "endAt": minutes_ago(-20)}),
        json!({"sourceRecordId": "i", "metric": "HEART_RATE", "value": 70, "unit": "count/min", "startAt": ok, "tzOffsetMinutes": 2000}),
        json!({"sourceRecordId": "j", "metric": "STEPS", "value": 10, "unit": "count", "startAt": at(TimeDelta::days(-3)), "endAt": at(TimeDelta::days(-1))}),
    ];
    let expected = [
        None,
        Some("UNKNOWN_METRIC"),
        Some("UNIT_MISMATCH"),
        Some("OUT_OF_RANGE"),
        Some("INVALID_INTERVAL"),
        Some("IN_FUTURE"),
        Some("TOO_OLD"),
        Some("MISSING_VALUE"),
        Some("INVALID_CATEGORY"),
        Some("INVALID_TZ_OFFSET"),
        Some("INVALID_INTERVAL"),
    ];
    let (status, answer) = app
        .post_samples(&samples_batch(Uuid::new_v4(), samples))
        .await;
    assert_eq!(status, 207, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"], 10);
    assert_eq!(answer["userSeq"], 1);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), expected.len(), "results list every item");
    for (i, (result, code)) in results.iter().zip(expected).enumerate() {
        assert_eq!(result["index"], i);
        assert_eq!(result["code"].as_str(), code, "item {i}: {result}");
        assert_eq!(
            result["status"],
            if code.is_some() {
                "rejected"
            } else {
                "accepted"
            }
        );
        if code.is_some() {
            let message = result["message"].as_str().unwrap();
            assert!(
                !message.contains("4000") && !message.contains("dreaming"),
                "message echoes a value: {message}"
            );
        }
    }
    let outbox = app.outbox(app.user_id).await;
    assert_eq!(outbox.len(), 1, "only the valid sample is published");
    assert_eq!(outbox[0].3["sourceRecordId"], "ok");
}

#[tokio::test]
async fn all_valid_is_200_and_all_rejected_is_207_changing_nothing() {
    let app = spawn_app().await;
    let (status, answer) = app
        .post_samples(&samples_batch(Uuid::new_v4(), hr_series(3)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["accepted"], 3);
    assert_eq!(answer["rejected"], 0);

    let other = app.token_for(Uuid::new_v4(), Role::User);
    let bad = samples_batch(
        Uuid::new_v4(),
        vec![
            json!({"sourceRecordId": "x", "metric": "NOPE", "value": 1, "unit": "count", "startAt": minutes_ago(1)}),
        ],
    );
    let r = app.post_as("/v1/samples:batch", &other, &bad).await;
    assert_eq!(r.status(), 207);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["rejected"], 1);
    assert_eq!(answer["userSeq"], 0, "nothing changed, no sequence number");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "no record for the all-rejected batch");
}

#[tokio::test]
async fn metric_blocked_after_privacy_put() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/v1/me/privacy"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"blockedMetrics": []})
    );

    let put = |body: Value, token: String| {
        let app = &app;
        async move {
            app.client
                .put(app.url("/v1/me/privacy"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put(
        json!({"blockedMetrics": ["HEART_RATE", "NOT_A_METRIC"]}),
        app.token.clone(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let analyst = app.token_for(app.user_id, Role::Analyst);
    assert_eq!(
        put(json!({"blockedMetrics": ["HEART_RATE"]}), analyst)
            .await
            .status(),
        403
    );
    let r = put(
        json!({"blockedMetrics": ["HEART_RATE", "BLOOD_GLUCOSE", "HEART_RATE"]}),
        app.token.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"blockedMetrics": ["BLOOD_GLUCOSE", "HEART_RATE"]})
    );

    let steps = json!({"sourceRecordId": "s", "metric": "STEPS", "value": 100, "unit": "count", "startAt": minutes_ago(30), "endAt": minutes_ago(25)});
    let (status, answer) = app
        .post_samples(&samples_batch(
            Uuid::new_v4(),
            vec![hr("h", 70.0, &minutes_ago(1)), steps],
        ))
        .await;
    assert_eq!(status, 207);
    assert_eq!(answer["results"][0]["code"], "METRIC_BLOCKED");
    assert_eq!(answer["results"][1]["status"], "accepted");
    let outbox = app.outbox(app.user_id).await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].3["metric"], "STEPS");

    // Another user is not affected.
    let other = app.token_for(Uuid::new_v4(), Role::User);
    let r = app
        .post_as(
            "/v1/samples:batch",
            &other,
            &samples_batch(Uuid::new_v4(), vec![hr("h", 70.0, &minutes_ago(1))]),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn events_batch_codes_and_records() {
    let app = spawn_app().await;
    let (t90, t60, t30) = (minutes_ago(90), minutes_ago(60), minutes_ago(30));
    let body = json!({
        "requestId": Uuid::new_v4(),
        "events": [
            {"eventId": "e1", "type": "caffeine", "productId": "espresso", "startAt": t90, "attributes": {"mg": 80}},
            {"eventId": "e2", "type": "workout", "startAt": t60, "endAt": t30, "tzOffsetMinutes": -300},
            {"eventId": "e3", "type": "nap", "startAt": minutes_ago(60)},
            {"eventId": "e4", "type": "meal", "startAt": minutes_ago(10), "endAt": minutes_ago(20)},
            {"eventId": "e5", "type": "meal", "startAt": at(TimeDelta::hours(1))},
        ]
    });
    let (status, answer) = app.post_events(&body).await;
    assert_eq!(status, 207, "{answer}");
    assert_eq!(answer["accepted"], 2);
    let codes: Vec<Option<&str>> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        vec![
            None,
            None,
            Some("INVALID_EVENT_TYPE"),
            Some("INVALID_INTERVAL"),
            Some("IN_FUTURE")
        ]
    );
    assert_eq!(answer["userSeq"], 1);

    // Correction of e1, duplicate e2, deletion of e2 after it, deletion of an unknown id.
    let body = json!({
        "requestId": Uuid::new_v4(),
        "events": [
            {"eventId": "e1", "type": "caffeine", "productId": "espresso", "startAt": t90, "attributes": {"mg": 120}},
            {"eventId": "e2", "type": "workout", "startAt": t60, "endAt": t30, "tzOffsetMinutes": -300},
        ],
        "deletions": [{"eventId": "e2"}, {"eventId": "never"}]
    });
    let (status, answer) = app.post_events(&body).await;
    assert_eq!(status, 200, "{answer}");
    let statuses: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["updated", "duplicate", "deleted", "duplicate"]
    );
    assert_eq!(answer["userSeq"], 2);
    assert_eq!(
        app.last_seq(app.user_id, 1).await,
        0,
        "events have their own sequence"
    );

    let outbox = app.outbox(app.user_id).await;
    let summary: Vec<(i16, i64, i32, &str, &str)> = outbox
        .iter()
        .map(|(s, q, i, p)| {
            (
                *s,
                *q,
                *i,
                p["eventId"].as_str().unwrap(),
                p["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, 1, 0, "e1", "UPSERT"),
            (2, 1, 1, "e2", "UPSERT"),
            (2, 2, 0, "e1", "UPSERT"),
            (2, 2, 2, "e2", "DELETE")
        ]
    );
    assert_eq!(outbox[2].3["attributesJson"], r#"{"mg":120}"#);
    assert_eq!(
        outbox[3].3["eventType"], "workout",
        "the DELETE record carries the deleted event's type"
    );
}

/// RS256 against a JWKS file (a test-only key pair in tests/support/, never used elsewhere).
#[tokio::test]
async fn rs256_tokens_are_verified_against_the_jwks_file() {
    let support = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");
    let app = spawn_app_with(|c| {
        c.jwt_jwks_file = Some(format!("{support}/rs256_test_jwks.json").into())
    })
    .await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{support}/rs256_test_key.pem")).unwrap(),
    )
    .unwrap();
    let sign = |kid: &str, user: Uuid| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let claims = Claims {
            sub: user.to_string(),
            role: Role::User,
            exp: chrono::Utc::now().timestamp() + 600,
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let user = Uuid::new_v4();
    let body = samples_batch(Uuid::new_v4(), hr_series(1));
    let r = app
        .post_as("/v1/samples:batch", &sign("test-key-1", user), &body)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.outbox(user).await.len(),
        1,
        "the token's subject is the user"
    );
    let r = app
        .post_as("/v1/samples:batch", &sign("other-key", user), &body)
        .await;
    assert_eq!(r.status(), 401);

    // Without a JWKS file, RS256 tokens are refused.
    let plain = spawn_app().await;
    let r = plain
        .post_as("/v1/samples:batch", &sign("test-key-1", user), &body)
        .await;
    assert_eq!(r.status(), 401);
}

/// The configured limit (8 MiB by default) is the limit: no framework default (axum's
/// 2 MB) cuts in below it.
#[tokio::test]
async fn bodies_up_to_the_configured_limit_are_accepted() {
    let app = spawn_app().await;
    let mut body = samples_batch(Uuid::new_v4(), hr_series(1));
    body["samples"][0]["metadata"] = json!({ "padding": "x".repeat(3 * 1024 * 1024) });
    let r = app.post("/v1/samples:batch", &body).await;
    assert_eq!(r.status(), 200);
}
