//! Ingest semantics against the running gateway and a real Postgres: what reaches the
//! outbox (and so Kafka) for new samples, unchanged re-uploads, corrections and deletions;
//! request idempotency under retry storms, concurrent holders and restarts.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use support::{
    TestApp, hr, hr_series, minutes_ago, samples_batch, spawn_app, spawn_app_with, start,
    test_config,
};
use uuid::Uuid;

fn statuses(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn sample_row(app: &TestApp, record: &str) -> (Option<f64>, bool, i64) {
    sqlx::query_as("SELECT value, deleted, change_seq FROM sample WHERE user_id = $1 AND source_record_id = $2")
        .bind(app.user_id)
        .bind(record)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn new_samples_are_stored_and_enqueued_in_order_with_canonical_values() {
    let app = spawn_app().await;
    let start = minutes_ago(30);
    let samples = vec![
        hr("hr-1", 72.0, &start),
        json!({"sourceRecordId": "w-1", "metric": "WEIGHT", "value": 154.3235835, "unit": "lb", "startAt": start}),
        json!({"sourceRecordId": "s-1", "metric": "SLEEP_STAGE", "category": "light", "startAt": minutes_ago(200), "endAt": minutes_ago(150),
               "metadata": {"b": [1, 2], "a": "x"}}),
    ];
    let (status, answer) = app
        .post_samples(&samples_batch(Uuid::new_v4(), samples))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["userSeq"].as_i64()),
        (Some(3), Some(1))
    );

    let outbox = app.outbox(app.user_id).await;
    assert_eq!(outbox.len(), 3);
    for (i, (stream, seq, index, payload)) in outbox.iter().enumerate() {
        assert_eq!((*stream, *seq, *index as usize), (1, 1, i));
        assert_eq!(payload["changeSeq"], 1);
        assert_eq!(payload["changeIndex"], i);
        assert_eq!(payload["operation"], "UPSERT");
        assert_eq!(payload["userId"], app.user_id.to_string());
        assert_eq!(payload["sourceId"], "watch-1");
        assert_eq!(payload["deviceType"], "apple_watch");
    }
    let weight = &outbox[1].3;
    assert_eq!(weight["unit"], "kg");
    assert!(
        (weight["value"].as_f64().unwrap() - 70.0).abs() < 1e-6,
        "{weight}"
    );
    assert_eq!(
        outbox[2].3["category"], "core",
        "aliases are stored canonically"
    );
    assert_eq!(outbox[2].3["metadataJson"], r#"{"a":"x","b":[1,2]}"#);
    assert_eq!(outbox[0].3["tzOffsetMinutes"], 120);

    let accepted: (i64, i32) =
        sqlx::query_as("SELECT seq, items FROM accepted_change WHERE user_id = $1 AND stream = 1")
            .bind(app.user_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(accepted, (1, 3));
    assert_eq!(app.last_seq(app.user_id, 1).await, 1);
}

#[tokio::test]
async fn unchanged_reupload_is_a_duplicate_without_records() {
    let app = spawn_app().await;
    let samples = hr_series(5);
    let (_, first) = app
        .post_samples(&samples_batch(Uuid::new_v4(), samples.clone()))
        .await;
    assert_eq!(first["accepted"], 5);
    // Same samples, new request, 72 written as 72.0 and bpm instead of count/min.
    let respelled: Vec<Value> = samples
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s["unit"] = json!("bpm");
            s
        })
        .collect();
    let (status, again) = app
        .post_samples(&samples_batch(Uuid::new_v4(), respelled))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicates"], 5);
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["userSeq"], 1, "no new sequence number");
    assert_eq!(app.outbox(app.user_id).await.len(), 5, "no new outbox row");
}

#[tokio::test]
async fn correction_is_an_update_with_the_new_value() {
    let app = spawn_app().await;
    let start = minutes_ago(15);
    app.post_samples(&samples_batch(
        Uuid::new_v4(),
        vec![hr("r", 72.0, &start), hr("s", 80.0, &start)],
    ))
    .await;
    let (status, answer) = app
        .post_samples(&samples_batch(
            Uuid::new_v4(),
            vec![hr("r", 75.0, &start), hr("s", 80.0, &start)],
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&answer), vec!["updated", "duplicate"]);
    assert_eq!(answer["userSeq"], 2);
    let outbox = app.outbox(app.user_id).await;
    assert_eq!(outbox.len(), 3);
    let (_, seq, index, payload) = &outbox[2];
    assert_eq!((*seq, *index), (2, 0));
    assert_eq!(payload["value"], 75.0);
    assert_eq!(payload["sourceRecordId"], "r");
    assert_eq!(sample_row(&app, "r").await, (Some(75.0), false, 2));
}

#[tokio::test]
async fn deletion_is_a_delete_record_and_unknown_deletions_are_duplicates() {
    let app = spawn_app().await;
    let start = minutes_ago(20);
    app.post_samples(&samples_batch(Uuid::new_v4(), vec![hr("r", 72.0, &start)]))
        .await;

    let mut body = samples_batch(Uuid::new_v4(), vec![]);
    body["deletions"] = json!([
        {"sourceRecordId": "r", "startAt": start},
        {"sourceRecordId": "never-uploaded", "startAt": start},
    ]);
    let (status, answer) = app.post_samples(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), vec!["deleted", "duplicate"]);
    assert_eq!(
        answer["results"][0]["index"], 0,
        "deletions are indexed after samples (none here)"
    );
    assert_eq!(answer["userSeq"], 2);
    let outbox = app.outbox(app.user_id).await;
    assert_eq!(outbox.len(), 2);
    let delete = &outbox[1].3;
    assert_eq!(delete["operation"], "DELETE");
    assert_eq!(delete["sourceRecordId"], "r");
    assert_eq!(
        delete["metric"], "HEART_RATE",
        "the DELETE record carries the metric"
    );
    assert_eq!(delete["value"], Value::Null);
    assert!(sample_row(&app, "r").await.1, "soft-deleted");

    // Deleting again is a duplicate; uploading again after a deletion is accepted.
    body["requestId"] = json!(Uuid::new_v4());
    let (_, again) = app.post_samples(&body).await;
    assert_eq!(statuses(&again), vec!["duplicate", "duplicate"]);
    assert_eq!(again["userSeq"], 2);
    let (_, back) = app
        .post_samples(&samples_batch(Uuid::new_v4(), vec![hr("r", 72.0, &start)]))
        .await;
    assert_eq!(statuses(&back), vec!["accepted"]);
    assert_eq!(sample_row(&app, "r").await, (Some(72.0), false, 3));
    assert_eq!(app.outbox(app.user_id).await.len(), 3);
}

#[tokio::test]
async fn items_with_the_same_key_apply_in_request_order() {
    let app = spawn_app().await;
    let start = minutes_ago(40);
    let mut body = samples_batch(
        Uuid::new_v4(),
        vec![
            hr("k", 70.0, &start),
            hr("k", 70.0, &start),
            hr("k", 71.0, &start),
        ],
    );
    body["deletions"] = json!([{"sourceRecordId": "k", "startAt": start}]);
    let (status, answer) = app.post_samples(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        statuses(&answer),
        vec!["accepted", "duplicate", "updated", "deleted"]
    );
    assert_eq!(
        answer["results"][3]["index"], 3,
        "the deletion's index is samples.len() + 0"
    );
    let outbox = app.outbox(app.user_id).await;
    let ops: Vec<(i32, &str)> = outbox
        .iter()
        .map(|(_, _, i, p)| (*i, p["operation"].as_str().unwrap()))
        .collect();
    assert_eq!(ops, vec![(0, "UPSERT"), (2, "UPSERT"), (3, "DELETE")]);
    assert_eq!(sample_row(&app, "k").await, (Some(71.0), true, 1));
}

/// 50 copies at once, half to each of two gateway replicas on one database: duplicates
/// queue in process on each replica and on the idempotency row across them.
#[tokio::test]
async fn retry_storm_gives_identical_answers_and_one_set_of_records() {
    let app = spawn_app().await;
    let replica = start(test_config(&app.config.database_url)).await;
    let body = samples_batch(Uuid::new_v4(), hr_series(50));
    let answers = join_all((0..50).map(|i| {
        let target = if i % 2 == 0 { &app } else { &replica };
        let token = &app.token;
        let body = &body;
        async move {
            let r = target.post_as("/v1/samples:batch", token, body).await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let (first_status, first) = &answers[0];
    for (status, answer) in &answers {
        assert_eq!(status, first_status, "{answer}");
        assert_eq!(answer, first);
    }
    assert_eq!(*first_status, 200);
    assert_eq!(first["accepted"], 50);
    assert_eq!(first["userSeq"], 1);
    assert_eq!(
        app.outbox(app.user_id).await.len(),
        50,
        "exactly one set of records"
    );
    assert_eq!(app.last_seq(app.user_id, 1).await, 1, "one sequence bump");
    let replays = |text: String| {
        text.lines()
            .find(|l| {
                l.starts_with("pulseline_gateway_idempotent_replays_total{stream=\"samples\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        replays(app.metrics().await) + replays(replica.metrics().await),
        49,
        "one ran, 49 were replayed"
    );
}

#[tokio::test]
async fn same_request_id_with_another_payload_is_422() {
    let app = spawn_app().await;
    let rid = Uuid::new_v4();
    let (status, _) = app.post_samples(&samples_batch(rid, hr_series(2))).await;
    assert_eq!(status, 200);
    let (status, answer) = app.post_samples(&samples_batch(rid, hr_series(3))).await;
    assert_eq!(status, 422);
    assert_eq!(answer["error"]["code"], "PAYLOAD_HASH_MISMATCH");
    // Same requestId on the other endpoint is another payload too.
    let (status, _) = app
        .post_events(&json!({"requestId": rid, "events": []}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(app.outbox(app.user_id).await.len(), 2);
}

#[tokio::test]
async fn request_in_progress_is_409_with_retry_after() {
    let app = spawn_app_with(|c| c.in_progress_wait_ms = 300).await;
    let rid = Uuid::new_v4();
    // Another transaction holds the idempotency row, uncommitted.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO idempotency_key (user_id, request_id, endpoint, payload_hash) VALUES ($1, $2, 1, '\\x00')")
        .bind(app.user_id)
        .bind(rid)
        .execute(&mut *holder)
        .await
        .unwrap();
    let r = app
        .post("/v1/samples:batch", &samples_batch(rid, hr_series(1)))
        .await;
    assert_eq!(r.status(), 409);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "REQUEST_IN_PROGRESS"
    );
    holder.rollback().await.unwrap();

    // Once the holder is gone the request runs.
    let (status, answer) = app.post_samples(&samples_batch(rid, hr_series(1))).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_concurrent_duplicate_waits_for_the_original_answer() {
    let app = spawn_app().await;
    let rid = Uuid::new_v4();
    let body = samples_batch(rid, hr_series(3));
    // Hold the user's stream row so the original request blocks after claiming its key.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO user_stream (user_id, stream) VALUES ($1, 1)")
        .bind(app.user_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let original = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/v1/samples:batch");
        let token = app.token.clone();
        let body = body.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let duplicate = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/v1/samples:batch");
        let token = app.token.clone();
        let body = body.clone();
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.headers().contains_key("idempotent-replayed"),
                r.json::<Value>().await.unwrap(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();
    let original = original.await.unwrap();
    let (replayed, duplicate) = duplicate.await.unwrap();
    assert!(replayed, "the duplicate waited and got the stored answer");
    assert_eq!(original, duplicate);
    assert_eq!(original["accepted"], 3);
    assert_eq!(app.outbox(app.user_id).await.len(), 3);
}

#[tokio::test]
async fn stored_answer_survives_a_restart() {
    let db = pulseline_testkit::Stack::from_env().create_database().await;
    let rid = Uuid::new_v4();
    let body = samples_batch(
        rid,
        vec![
            hr("r", 72.0, &minutes_ago(5)),
            json!({"sourceRecordId": "x", "metric": "NOPE", "value": 1, "unit": "count", "startAt": minutes_ago(5)}),
        ],
    );
    let first_app = start(test_config(&db.url)).await;
    let (status, first) = first_app.post_samples(&body).await;
    assert_eq!(status, 207);
    let token = first_app.token.clone();
    let user = first_app.user_id;
    drop(first_app);

    let mut second_app = start(test_config(&db.url)).await;
    second_app.token = token;
    second_app.user_id = user;
    let r = second_app.post("/v1/samples:batch", &body).await;
    assert_eq!(r.status(), 207, "the stored status too");
    assert!(r.headers().contains_key("idempotent-replayed"));
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    assert_eq!(second_app.outbox(user).await.len(), 1);
    drop(second_app);
    drop(db);
}
