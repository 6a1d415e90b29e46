//! The `session_impact` and `product_impact` tables through `PostgresSink` against a real
//! Postgres (a private database per test): the two-stream version guard (the pair
//! (version, events_version) compared lexicographically), tombstones that a late lower
//! version cannot resurrect, product rows without a product, and progress on both
//! streams. Needs Postgres from `scripts/stack up`; no broker.

mod support;

use pulseline_schemas::records::{ImpactTier, ProductImpactUpsert, SessionImpactUpsert};
use pulseline_sinks::{OffsetScope, PostgresSink, SinkFor};
use support::{Harness, batch};
use uuid::Uuid;

fn scope(topic: &str) -> OffsetScope {
    OffsetScope {
        consumer: "test-consumer".into(),
        topic: topic.into(),
    }
}

/// A session at version (samples, events); `after` tells versions apart.
fn session(user: Uuid, samples: i64, events: i64, after: f64) -> SessionImpactUpsert {
    SessionImpactUpsert {
        user_id: user.to_string(),
        event_id: "coffee-1".into(),
        metric: "HEART_RATE".into(),
        version: samples,
        events_version: events,
        deleted: false,
        event_type: "caffeine".into(),
        product_id: Some("espresso".into()),
        start_at: 1_780_300_800_000_000,
        end_at: None,
        local_date: "2026-06-01".into(),
        baseline_avg: Some(60.0),
        after_avg: Some(after),
        delta_percent: Some((after - 60.0) / 60.0 * 100.0),
        baseline_count: 60,
        after_count: 120,
        reliable: true,
        applied_sample_seq: samples >> 20,
        applied_event_seq: events >> 20,
    }
}

async fn stored_after(h: &Harness, user: Uuid) -> (Option<f64>, bool, i64, i64) {
    sqlx::query_as(
        "SELECT after_avg, deleted, version, events_version FROM session_impact \
         WHERE user_id = $1 AND event_id = 'coffee-1' AND metric = 'HEART_RATE'",
    )
    .bind(user)
    .fetch_one(&h.pool)
    .await
    .expect("row exists")
}

#[tokio::test]
async fn session_versions_compare_as_pairs_and_tombstones_block_resurrection() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let scope = scope("readmodel.session_impacts.v1");
    let user = Uuid::new_v4();
    const S: i64 = 1 << 20;
    // (samples 5, events 2) then a lower events part with a higher samples part wins;
    // then a higher events part with the same samples part wins; a lower pair loses.
    let steps = [
        ((5 * S, 2 * S, 70.0), 70.0),
        ((6 * S, S, 71.0), 71.0),
        ((6 * S, 3 * S, 72.0), 72.0),
        ((6 * S, 2 * S, 99.0), 72.0),
        ((5 * S, 9 * S, 98.0), 72.0),
    ];
    for (i, ((s, e, after), want)) in steps.into_iter().enumerate() {
        let offset = i64::try_from(i).unwrap();
        sink.apply(
            &scope,
            &batch(
                &[session(user, s, e, after)],
                (i > 0).then_some(offset),
                offset + 1,
            ),
        )
        .await
        .unwrap();
        assert_eq!(stored_after(&h, user).await.0, Some(want), "step {i}");
    }
    // The event deleted: a tombstone at (6, 4) keeps only its version; (6, 3) is stale.
    let mut gone = session(user, 6 * S, 4 * S, 0.0);
    gone.deleted = true;
    sink.apply(&scope, &batch(&[gone], Some(5), 6))
        .await
        .unwrap();
    sink.apply(
        &scope,
        &batch(&[session(user, 6 * S, 3 * S, 75.0)], Some(6), 7),
    )
    .await
    .unwrap();
    assert_eq!(stored_after(&h, user).await, (None, true, 6 * S, 4 * S));

    // Progress on both streams, from the rows' applied sequences.
    let progress: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT stream, applied_seq FROM sink_progress \
         WHERE user_id = $1 AND read_model = 'session_impacts' ORDER BY stream",
    )
    .bind(user)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(progress, vec![(1, 6), (2, 9)]);
}

#[tokio::test]
async fn product_rows_with_and_without_a_product_are_distinct_rows() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let row = |product: Option<&str>, n: i64| ProductImpactUpsert {
        user_id: user.to_string(),
        event_type: "caffeine".into(),
        product_id: product.map(str::to_owned),
        metric: "HEART_RATE".into(),
        period_days: 30,
        version: 1 << 20,
        events_version: 1 << 20,
        deleted: false,
        n,
        avg_delta_percent: Some(12.5),
        std_dev: None,
        tier: ImpactTier::Low,
        as_of: 1_780_300_800_000_000,
        applied_sample_seq: 1,
        applied_event_seq: 1,
    };
    sink.apply(
        &scope("readmodel.product_impacts.v1"),
        &batch(&[row(Some("espresso"), 3), row(None, 4)], None, 1),
    )
    .await
    .unwrap();
    let rows: Vec<(Option<String>, i64, String)> = sqlx::query_as(
        "SELECT product_id, n, tier FROM product_impact WHERE user_id = $1 ORDER BY product_key",
    )
    .bind(user)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (None, 4, "LOW".to_owned()),
            (Some("espresso".to_owned()), 3, "LOW".to_owned())
        ]
    );
}

#[test]
fn records_a_table_cannot_hold_are_refused_by_name() {
    let user = Uuid::new_v4();
    let mut bad = session(user, 1, 1, f64::NAN);
    assert_eq!(
        pulseline_sinks::StoredRow::parse(bad.clone())
            .err()
            .map(|e| e.0),
        Some("afterAvg is not finite")
    );
    bad.after_avg = Some(1.0);
    bad.local_date = "June 1st".into();
    assert_eq!(
        pulseline_sinks::StoredRow::parse(bad).err().map(|e| e.0),
        Some("localDate is not YYYY-MM-DD")
    );
}
