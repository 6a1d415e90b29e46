//! The query API on the Scylla read store (`PULSELINE_READ_STORE=scylla`) answers what it
//! answers on Postgres: the same read-model rows are written through both sinks, then two
//! APIs on one gateway database, one per read store, are asked the same questions (every
//! read model, date ranges that cut partitions, every filter) and must give the same
//! bodies, freshness included.
//!
//! - `emulator_*`: against the in-memory CQL emulator (kassandra; no stack needed for
//!   it). It keeps no write timestamps, so the rows are written in version order.
//! - `cluster_*`: against a real Scylla or Cassandra at `SCYLLA_URI` (`host:port`), with
//!   the newer versions written first, so the write timestamps must decide. Without
//!   `SCYLLA_URI` it prints that it did not run.
//!
//! Needs: Postgres (`scripts/stack up`).

mod support;

use chrono::{DateTime, Utc};
use pulseline_query_api::Config;
use pulseline_schemas::AppliedSeqs;
use pulseline_schemas::records::{
    ImpactTier, Period, ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};
use pulseline_sinks::scylla::ReadStoreKind;
use pulseline_sinks::{
    Batch, CqlReadModel, Item, OffsetScope, PartitionSpan, Store, StoredRow, UserProgress,
};
use pulseline_testkit::cql_emulator::CqlEmulator;
use serde_json::Value;
use support::{TestApp, spawn_app};
use uuid::Uuid;

/// A change id of sequence `seq` (index 0): what versions are made of.
fn change(seq: i64) -> i64 {
    seq << 20
}

fn rollup(user: Uuid, metric: &str, period: Period, bucket: &str, seq: i64) -> RollupUpsert {
    let deleted = seq % 5 == 0;
    RollupUpsert {
        user_id: user.to_string(),
        metric: metric.into(),
        period,
        bucket_start: bucket.into(),
        version: change(seq),
        deleted,
        value: (!deleted).then_some(seq as f64 * 100.5),
        min: (!deleted).then_some(1.0),
        max: (!deleted).then_some(seq as f64 * 200.0),
        count: if deleted { 0 } else { seq + 1 },
        sources: if deleted {
            vec![]
        } else {
            vec!["apple_watch:w1".into(), format!("iphone:p{seq}")]
        },
        applied_seq: seq,
    }
}

fn night(user: Uuid, date: &str, seq: i64, deleted: bool) -> SleepNightUpsert {
    let wake = DateTime::parse_from_rfc3339(&format!("{date}T06:30:00+01:00"))
        .unwrap()
        .timestamp_micros();
    SleepNightUpsert {
        user_id: user.to_string(),
        night: date.into(),
        version: change(seq),
        deleted,
        in_bed_minutes: 480.0 + seq as f64,
        asleep_minutes: 430.0,
        awake_minutes: 50.0,
        rem_minutes: Some(90.0),
        deep_minutes: (seq % 2 == 0).then_some(70.0),
        core_minutes: Some(270.0),
        latency_minutes: Some(12.5),
        efficiency: Some(0.896),
        awakenings: 3,
        bed_at: Some(wake - 480 * 60_000_000 + 123),
        wake_at: Some(wake),
        sources: vec!["apple_watch:w1".into()],
        applied_seq: seq,
        unspecified_minutes: 0.0,
        nap_count: i32::from(seq % 3 == 0),
        nap_minutes: if seq % 3 == 0 { 25.0 } else { 0.0 },
    }
}

/// A logged event the session impacts are about.
#[derive(Clone, Copy)]
struct Logged {
    id: &'static str,
    event_type: &'static str,
    product: Option<&'static str>,
    start: &'static str,
}

const COFFEE: Logged = Logged {
    id: "e1",
    event_type: "caffeine",
    product: Some("espresso"),
    start: "2026-03-02T08:15:00.5+01:00",
};
const WORKOUT: Logged = Logged {
    id: "e2",
    event_type: "workout",
    product: None,
    start: "2026-03-05T18:00:00Z",
};
const LATTE: Logged = Logged {
    id: "e3",
    event_type: "caffeine",
    product: Some("latte"),
    start: "2026-03-20T09:00:00-05:00",
};

fn session(
    user: Uuid,
    event: &Logged,
    metric: &str,
    (samples, events): (i64, i64),
    deleted: bool,
) -> SessionImpactUpsert {
    let Logged {
        id,
        event_type,
        product,
        start,
    } = *event;
    let start_at = DateTime::parse_from_rfc3339(start).unwrap();
    SessionImpactUpsert {
        user_id: user.to_string(),
        event_id: id.into(),
        metric: metric.into(),
        version: change(samples),
        events_version: change(events),
        deleted,
        event_type: event_type.into(),
        product_id: product.map(str::to_owned),
        start_at: start_at.timestamp_micros(),
        end_at: (event_type == "workout").then(|| start_at.timestamp_micros() + 3_600_000_000),
        local_date: start_at.date_naive().to_string(),
        baseline_avg: Some(61.0),
        after_avg: Some(64.0 + samples as f64),
        delta_percent: Some((3.0 + samples as f64) / 61.0 * 100.0),
        baseline_count: 40,
        after_count: 55,
        reliable: samples % 2 == 0,
        applied_sample_seq: samples,
        applied_event_seq: events,
    }
}

fn product(
    user: Uuid,
    event_type: &str,
    product: Option<&str>,
    metric: &str,
    period_days: i32,
    tier: ImpactTier,
) -> ProductImpactUpsert {
    ProductImpactUpsert {
        user_id: user.to_string(),
        event_type: event_type.into(),
        product_id: product.map(str::to_owned),
        metric: metric.into(),
        period_days,
        version: change(6),
        events_version: change(3),
        deleted: false,
        n: 4,
        avg_delta_percent: Some(5.25),
        std_dev: Some(1.5),
        tier,
        as_of: DateTime::parse_from_rfc3339("2026-03-21T00:00:00Z")
            .unwrap()
            .timestamp_micros(),
        applied_sample_seq: 6,
        applied_event_seq: 3,
    }
}

/// Writes `batches` of `M` (each its rows, then the users' progress) to `store`, as the
/// sink runner would, one offset per batch.
async fn write<M: CqlReadModel>(store: &Store, batches: &[(Vec<M>, Vec<UserProgress>)]) {
    let scope = OffsetScope {
        consumer: "parity".into(),
        topic: M::TOPIC.into(),
    };
    for (i, (rows, progress)) in batches.iter().enumerate() {
        let offset = i64::try_from(i).unwrap();
        let items = rows
            .iter()
            .cloned()
            .map(|r| Item::Row(StoredRow::parse(r).expect("valid record")))
            .chain(progress.iter().copied().map(Item::Progress))
            .collect();
        let batch = Batch {
            items,
            spans: vec![PartitionSpan {
                partition: 0,
                expected: (i > 0).then_some(offset),
                next_offset: offset + 1,
            }],
        };
        store
            .sink_for::<M>()
            .apply(&scope, &batch)
            .await
            .unwrap_or_else(|e| panic!("{} batch {i}: {e}", M::NAME));
    }
}

fn progress(user: Uuid, samples: i64, events: i64) -> UserProgress {
    UserProgress {
        user_id: user,
        applied: AppliedSeqs { samples, events },
    }
}

/// The same rows and progress in both stores; `newest_first` writes the later batch of
/// each read model first (only a store honouring write timestamps keeps the answers).
async fn write_everything(stores: &[Store; 2], alice: Uuid, bob: Uuid, newest_first: bool) {
    use Period::{Day, Hour};
    let mut rollups = vec![
        (
            [
                (1..=8)
                    .map(|d| rollup(alice, "STEPS", Day, &format!("2026-03-0{d}"), d))
                    .collect::<Vec<_>>(),
                (5..=8)
                    .map(|h| {
                        let at = format!("2026-03-02T0{h}:00:00");
                        rollup(alice, "HEART_RATE", Hour, &at, h + 1)
                    })
                    .collect(),
                vec![rollup(bob, "STEPS", Day, "2026-03-03", 2)],
            ]
            .concat(),
            vec![progress(alice, 4, 0), progress(bob, 2, 0)],
        ),
        (
            // Later changes: a bucket rewritten, one deleted, one new.
            vec![
                rollup(alice, "STEPS", Day, "2026-03-02", 12),
                rollup(alice, "STEPS", Day, "2026-03-06", 15),
                rollup(alice, "STEPS", Day, "2026-03-09", 13),
            ],
            vec![progress(alice, 15, 0)],
        ),
    ];
    let mut nights = vec![
        (
            vec![
                night(alice, "2026-03-01", 2, false),
                night(alice, "2026-03-02", 3, false),
                night(alice, "2026-03-03", 4, false),
                night(alice, "2026-03-04", 5, false),
            ],
            vec![progress(alice, 5, 0)],
        ),
        (
            vec![
                night(alice, "2026-03-02", 9, false),
                night(alice, "2026-03-03", 10, true),
            ],
            vec![progress(alice, 10, 0)],
        ),
    ];
    let mut sessions = vec![
        (
            vec![
                session(alice, &COFFEE, "HEART_RATE", (4, 1), false),
                session(alice, &COFFEE, "STEPS", (4, 1), false),
                session(alice, &WORKOUT, "HEART_RATE", (5, 2), false),
                session(alice, &LATTE, "HEART_RATE", (5, 3), false),
            ],
            vec![progress(alice, 5, 3)],
        ),
        (
            // New samples change one session; a later event deletes another.
            vec![
                session(alice, &COFFEE, "HEART_RATE", (6, 3), false),
                session(alice, &LATTE, "HEART_RATE", (6, 4), true),
            ],
            vec![progress(alice, 6, 4)],
        ),
    ];
    let products = vec![(
        vec![
            product(
                alice,
                "caffeine",
                Some("espresso"),
                "HEART_RATE",
                30,
                ImpactTier::Low,
            ),
            product(
                alice,
                "caffeine",
                Some("espresso"),
                "HEART_RATE",
                90,
                ImpactTier::Medium,
            ),
            product(alice, "caffeine", None, "HEART_RATE", 30, ImpactTier::Low),
            product(
                alice,
                "workout",
                None,
                "STEPS",
                30,
                ImpactTier::Insufficient,
            ),
            product(
                alice,
                "Caffeine-upper",
                None,
                "HEART_RATE",
                30,
                ImpactTier::High,
            ),
        ],
        vec![progress(alice, 6, 4)],
    )];
    if newest_first {
        rollups.reverse();
        nights.reverse();
        sessions.reverse();
    }
    for store in stores {
        write(store, &rollups).await;
        write(store, &nights).await;
        write(store, &sessions).await;
        write(store, &products).await;
    }
}

/// The gateway's sequences: alice has one accepted sample change not yet applied (an
/// hour old), bob is fresh; alice's events are all applied.
async fn gateway_sequences(app: &TestApp, alice: Uuid, bob: Uuid) {
    let hour_ago = Utc::now() - chrono::TimeDelta::hours(1);
    for seq in 1..=16 {
        app.accepted(alice, seq, hour_ago).await;
    }
    app.accepted(bob, 1, hour_ago).await;
    app.accepted(bob, 2, hour_ago).await;
    sqlx::query("INSERT INTO user_stream (user_id, stream, last_seq) VALUES ($1, 2, 4)")
        .bind(alice)
        .execute(&app.pool)
        .await
        .expect("events stream");
}

const QUESTIONS: &[&str] = &[
    "/v1/me/rollups?metric=STEPS&period=day&from=2026-03-01&to=2026-03-31",
    "/v1/me/rollups?metric=STEPS&period=day&from=2026-03-02&to=2026-03-05",
    "/v1/me/rollups?metric=HEART_RATE&period=hour&from=2026-03-02&to=2026-03-02",
    "/v1/me/rollups?metric=HEART_RATE&period=day&from=2026-03-01&to=2026-03-31",
    "/v1/me/sleep?from=2026-03-01&to=2026-03-31",
    "/v1/me/sleep?from=2026-03-02&to=2026-03-03",
    "/v1/me/impacts/sessions?from=2026-03-01&to=2026-03-31",
    "/v1/me/impacts/sessions?from=2026-03-03&to=2026-03-31",
    "/v1/me/impacts/sessions?from=2026-03-01&to=2026-03-31&eventType=caffeine",
    "/v1/me/impacts/sessions?from=2026-03-01&to=2026-03-31&productId=espresso",
    "/v1/me/impacts/sessions?from=2026-03-01&to=2026-03-31&metric=STEPS",
    "/v1/me/impacts/products?periodDays=30",
    "/v1/me/impacts/products?periodDays=90&metric=HEART_RATE",
    "/v1/me/impacts/products?periodDays=30&metric=STEPS",
];

/// Takes every `lagSeconds` out of an answer (it grows between two requests).
fn lags(body: &mut Value) -> Vec<f64> {
    let mut out = Vec::new();
    match body {
        Value::Object(map) => {
            if let Some(lag) = map.remove("lagSeconds") {
                out.push(lag.as_f64().expect("lagSeconds is a number"));
            }
            for v in map.values_mut() {
                out.extend(lags(v));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| out.extend(lags(v))),
        _ => {}
    }
    out
}

/// Writes everything to Postgres and to the Scylla keyspace at `contact`, then asks both
/// APIs every question as both users. Returns how many answers had rows.
async fn postgres_and_scylla_agree(contact: &str, newest_first: bool) -> usize {
    let app = spawn_app().await;
    let keyspace = format!("t_{}", Uuid::new_v4().simple());
    let scylla_url = format!("scylla://{contact}/{keyspace}?replication_factor=1");
    let scylla = pulseline_sinks::open(&scylla_url, 1)
        .await
        .expect("the Scylla store opens");
    let postgres = pulseline_sinks::open(&app.db.url, 2)
        .await
        .expect("the Postgres store opens");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    write_everything(&[postgres, scylla], alice, bob, newest_first).await;
    gateway_sequences(&app, alice, bob).await;

    let on_scylla = app
        .sibling(|c: &mut Config| {
            c.store.read_store = ReadStoreKind::Scylla;
            c.store.scylla_uri = contact.to_owned();
            c.store.scylla_keyspace = keyspace.clone();
            c.store.scylla_replication_factor = 1;
        })
        .await;
    let mut with_rows = 0;
    for user in [alice, bob] {
        for question in QUESTIONS {
            let (status, mut expected) = app.get_from(&app.address, question, user).await;
            assert_eq!(status, 200, "{question}: {expected}");
            let (status, mut got) = app.get_from(&on_scylla.address, question, user).await;
            assert_eq!(status, 200, "{question} on Scylla: {got}");
            let (lags_pg, lags_scylla) = (lags(&mut expected), lags(&mut got));
            assert_eq!(got, expected, "{question} as {user}");
            assert_eq!(lags_pg.len(), lags_scylla.len());
            for (a, b) in lags_pg.iter().zip(&lags_scylla) {
                assert!((a - b).abs() < 30.0, "{question}: lag {a} vs {b}");
            }
            if expected["data"].as_array().is_some_and(|d| !d.is_empty()) {
                with_rows += 1;
            }
        }
    }
    // The answers are about something (checked by the callers: alice's questions all
    // have rows but one, a metric without daily rollups; bob's only his two of steps).
    // The Scylla reads are on the API's /metrics, by statement kind and outcome.
    let metrics = app
        .client
        .get(format!("{}/metrics", on_scylla.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.lines().any(|l| l
            .starts_with("pulseline_query_scylla_statements_total{kind=\"read\",outcome=\"ok\"}")),
        "{metrics}"
    );
    let (status, mut alice_steps) = app.get_from(&on_scylla.address, QUESTIONS[0], alice).await;
    assert_eq!(status, 200);
    lags(&mut alice_steps);
    let days: Vec<&str> = alice_steps["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["localStart"].as_str().unwrap())
        .collect();
    // Day 5 was deleted from the start (its seq is a multiple of 5), day 6 later.
    assert_eq!(
        days,
        [
            "2026-03-01",
            "2026-03-02",
            "2026-03-03",
            "2026-03-04",
            "2026-03-07",
            "2026-03-08",
            "2026-03-09"
        ]
    );
    assert_eq!(alice_steps["data"][1]["value"], 12.0 * 100.5);
    assert_eq!(alice_steps["freshness"]["status"], "stale");
    assert_eq!(alice_steps["freshness"]["appliedSeq"], 15);
    assert_eq!(alice_steps["freshness"]["latestSeq"], 16);
    with_rows
}

#[tokio::test]
async fn emulator_scylla_answers_equal_postgres_answers_for_every_read_model() {
    let emulator = CqlEmulator::start().await.expect("emulator starts");
    let with_rows = postgres_and_scylla_agree(&emulator.addr().to_string(), false).await;
    assert_eq!(with_rows, QUESTIONS.len() - 1 + 2, "answers with rows");
}

#[tokio::test]
async fn cluster_scylla_answers_equal_postgres_answers_with_versions_out_of_order() {
    let Ok(contact) = std::env::var("SCYLLA_URI") else {
        println!(
            "cluster_scylla_answers_equal_postgres_answers_with_versions_out_of_order: did not run (SCYLLA_URI is unset)"
        );
        return;
    };
    let with_rows = postgres_and_scylla_agree(&contact, true).await;
    assert_eq!(with_rows, QUESTIONS.len() - 1 + 2, "answers with rows");
}
