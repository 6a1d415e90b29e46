//! The `sleep_night` table through `PostgresSink` against a real Postgres (a private
//! database per test): the version guard, tombstones that a late lower version cannot
//! resurrect, null stage minutes kept null, progress. Needs Postgres from
//! `scripts/stack up`; no broker.

mod support;

use chrono::{DateTime, NaiveDate, Utc};
use pulseline_schemas::records::SleepNightUpsert;
use pulseline_sinks::{Applied, OffsetScope, PostgresSink, SinkFor, StoredRow};
use support::{Harness, batch};
use uuid::Uuid;

fn scope() -> OffsetScope {
    OffsetScope {
        consumer: "test-consumer".into(),
        topic: "readmodel.sleep_nights.v1".into(),
    }
}

/// A phone-only night (stage minutes null) at `version`; `asleep` tells versions apart.
fn night(user: Uuid, date: &str, version: i64, asleep: f64) -> SleepNightUpsert {
    SleepNightUpsert {
        user_id: user.to_string(),
        night: date.into(),
        version,
        deleted: false,
        in_bed_minutes: 480.0,
        asleep_minutes: asleep,
        awake_minutes: 480.0 - asleep,
        rem_minutes: None,
        deep_minutes: None,
        core_minutes: None,
        latency_minutes: Some(12.5),
        efficiency: Some(0.9),
        awakenings: 2,
        bed_at: Some(1_774_734_000_000_000),
        wake_at: Some(1_774_762_800_000_000),
        sources: vec!["phone-1".into(), "watch-1".into()],
        applied_seq: version,
        unspecified_minutes: asleep,
        nap_count: 1,
        nap_minutes: 35.0,
    }
}

type Stored = (
    f64,
    Option<f64>,
    Option<f64>,
    Option<DateTime<Utc>>,
    i32,
    Vec<String>,
    bool,
    i64,
);

async fn stored(h: &Harness, user: Uuid, date: &str) -> Stored {
    sqlx::query_as(
        "SELECT asleep_minutes, deep_minutes, latency_minutes, bed_at, nap_count, sources, \
                deleted, version \
         FROM sleep_night WHERE user_id = $1 AND night = $2",
    )
    .bind(user)
    .bind(NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap())
    .fetch_one(&h.pool)
    .await
    .expect("row exists")
}

#[tokio::test]
async fn versions_guard_sleep_nights_and_tombstones_block_resurrection() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let v5 = night(user, "2026-03-29", 5, 400.0);
    let v3 = night(user, "2026-03-29", 3, 300.0);

    sink.apply(&scope(), &batch(std::slice::from_ref(&v5), None, 1))
        .await
        .unwrap();
    let late = sink
        .apply(&scope(), &batch(&[v3], Some(1), 2))
        .await
        .unwrap();
    assert_eq!(
        late,
        Applied {
            rows_applied: 0,
            stale_skipped: 1
        }
    );
    let (asleep, deep, latency, bed_at, naps, sources, deleted, version) =
        stored(&h, user, "2026-03-29").await;
    assert_eq!((asleep, version, deleted), (400.0, 5, false));
    assert_eq!(deep, None, "null stage minutes stay null, not 0");
    assert_eq!(latency, Some(12.5));
    assert_eq!(
        bed_at.map(|t| t.timestamp_micros()),
        Some(1_774_734_000_000_000)
    );
    assert_eq!(
        (naps, sources),
        (1, vec!["phone-1".into(), "watch-1".into()])
    );

    // The night's samples all deleted: a tombstone at version 7 keeps only its version.
    let mut gone = night(user, "2026-03-29", 7, 0.0);
    gone.deleted = true;
    sink.apply(&scope(), &batch(&[gone], Some(2), 3))
        .await
        .unwrap();
    sink.apply(
        &scope(),
        &batch(&[night(user, "2026-03-29", 6, 350.0)], Some(3), 4),
    )
    .await
    .unwrap();
    let (asleep, _, latency, bed_at, naps, _, deleted, version) =
        stored(&h, user, "2026-03-29").await;
    assert!(
        deleted,
        "a lower version must not resurrect a deleted night"
    );
    assert_eq!(
        (asleep, latency, bed_at, naps, version),
        (0.0, None, None, 0, 7)
    );

    // Progress of the user on sleep_nights only.
    let progress: Vec<(String, i64)> =
        sqlx::query_as("SELECT read_model, applied_seq FROM sink_progress WHERE user_id = $1")
            .bind(user)
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(progress, vec![("sleep_nights".to_owned(), 7)]);
}

#[test]
fn unusable_sleep_nights_are_refused_naming_the_field() {
    let user = Uuid::new_v4();
    let mut bad_date = night(user, "2026-02-30", 1, 10.0);
    assert_eq!(
        StoredRow::parse(bad_date.clone()).err().map(|e| e.0),
        Some("night is not YYYY-MM-DD")
    );
    bad_date.night = "2026-02-28".into();
    bad_date.efficiency = Some(1.5);
    assert_eq!(
        StoredRow::parse(bad_date).err().map(|e| e.0),
        Some("efficiency is outside 0..1")
    );
    let mut negative = night(user, "2026-02-28", 1, 10.0);
    negative.awake_minutes = -1.0;
    assert!(StoredRow::parse(negative).is_err());
}
