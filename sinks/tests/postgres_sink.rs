//! `PostgresSink` against a real Postgres (a private database per test): the version
//! guard, idempotence, progress, and the offset compare-and-set that makes a batch apply
//! at most once. Needs Postgres from `scripts/stack up`; no broker.

mod support;

use pulseline_schemas::records::{Period, RollupUpsert};
use pulseline_schemas::{AppliedSeqs, ReadModelProgress};
use pulseline_sinks::{
    Applied, Batch, Item, OffsetScope, PartitionSpan, PostgresSink, Sink, SinkError, SinkFor,
    UserProgress,
};
use support::{Harness, Observed, batch, upsert};
use uuid::Uuid;

fn scope() -> OffsetScope {
    OffsetScope {
        consumer: "test-consumer".into(),
        topic: "readmodel.rollups.v1".into(),
    }
}

async fn row(h: &Harness, user: Uuid, bucket: &str) -> Observed {
    h.rows()
        .await
        .into_iter()
        .find(|((u, _, _, b), _)| *u == user.to_string() && b == bucket)
        .map(|(_, o)| o)
        .expect("row exists")
}

#[tokio::test]
async fn an_older_version_after_a_newer_one_does_not_regress() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let v5 = upsert(user, "STEPS", Period::Day, "2026-03-01", 5);
    let v3 = upsert(user, "STEPS", Period::Day, "2026-03-01", 3);

    let first = sink
        .apply(&scope(), &batch(std::slice::from_ref(&v5), None, 1))
        .await
        .unwrap();
    assert_eq!(
        first,
        Applied {
            rows_applied: 1,
            stale_skipped: 0
        }
    );
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

    let stored = row(&h, user, "2026-03-01").await;
    assert_eq!(stored.version, 5);
    assert_eq!(stored.value, v5.value);
    assert_eq!(stored.sources, v5.sources, "sources keep their order");
    // The late record still counts for progress only as far as it goes: never lower.
    assert_eq!(h.progress().await[&user.to_string()], 5);
}

#[tokio::test]
async fn a_deletion_is_a_tombstone_that_a_late_lower_version_cannot_resurrect() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let live = upsert(user, "STEPS", Period::Day, "2026-03-01", 6);
    let deletion = upsert(user, "STEPS", Period::Day, "2026-03-01", 7);
    assert!(deletion.deleted);
    let older = upsert(user, "STEPS", Period::Day, "2026-03-01", 4);

    sink.apply(&scope(), &batch(&[live, deletion], None, 2))
        .await
        .unwrap();
    let after_delete = row(&h, user, "2026-03-01").await;
    assert!(after_delete.deleted);
    assert_eq!(
        (after_delete.version, after_delete.value, after_delete.count),
        (7, None, 0)
    );

    let r = sink
        .apply(&scope(), &batch(&[older], Some(2), 3))
        .await
        .unwrap();
    assert_eq!(r.rows_applied, 0);
    let still = row(&h, user, "2026-03-01").await;
    assert!(
        still.deleted,
        "a lower version must not resurrect a deleted bucket"
    );
    assert_eq!(still.version, 7);

    // A newer upsert (a sample added back) does bring it back.
    let back = upsert(user, "STEPS", Period::Day, "2026-03-01", 8);
    sink.apply(&scope(), &batch(std::slice::from_ref(&back), Some(3), 4))
        .await
        .unwrap();
    let revived = row(&h, user, "2026-03-01").await;
    assert!(!revived.deleted);
    assert_eq!(revived.value, back.value);
}

#[tokio::test]
async fn duplicates_in_and_across_batches_are_idempotent() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let records: Vec<RollupUpsert> = (1..=3)
        .flat_map(|v| {
            [
                upsert(user, "HEART_RATE", Period::Hour, "2026-03-01T05:00:00", v),
                upsert(user, "HEART_RATE", Period::Day, "2026-03-01", v),
            ]
        })
        .collect();
    // In one batch: the same key several times (ON CONFLICT cannot touch a row twice).
    let mut with_dupes = records.clone();
    with_dupes.extend(records.clone());
    let first = sink
        .apply(&scope(), &batch(&with_dupes, None, 12))
        .await
        .unwrap();
    assert_eq!(
        first,
        Applied {
            rows_applied: 2,
            stale_skipped: 10
        }
    );
    let before = h.rows().await;

    let again = sink
        .apply(&scope(), &batch(&records, Some(12), 18))
        .await
        .unwrap();
    assert_eq!(
        again,
        Applied {
            rows_applied: 0,
            stale_skipped: 6
        }
    );
    assert_eq!(h.rows().await, before, "re-applying changes nothing");
    assert_eq!(
        before.len(),
        2,
        "an HOUR and a DAY bucket are different rows"
    );
}

#[tokio::test]
async fn a_batch_read_from_a_moved_offset_writes_nothing() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let v1 = upsert(user, "STEPS", Period::Day, "2026-03-01", 1);
    sink.apply(&scope(), &batch(&[v1], None, 1)).await.unwrap();

    // The same span again (a retried commit whose answer was lost, or a zombie instance):
    // refused, even though its row is newer, and nothing of it is written.
    let v2 = upsert(user, "STEPS", Period::Day, "2026-03-01", 2);
    let other = upsert(Uuid::new_v4(), "STEPS", Period::Day, "2026-03-01", 9);
    for expected in [None, Some(0), Some(5)] {
        let err = sink
            .apply(&scope(), &batch(&[v2.clone(), other.clone()], expected, 2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SinkError::OffsetConflict { partition: 0, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
    }
    let rows = h.rows().await;
    assert_eq!(rows.len(), 1, "the refused batch's new row was not written");
    assert_eq!(row(&h, user, "2026-03-01").await.version, 1);
    assert_eq!(h.progress().await.len(), 1);

    let stored = sink.stored_offsets(&scope(), &[0, 1]).await.unwrap();
    assert_eq!(stored.into_iter().collect::<Vec<_>>(), vec![(0, 1)]);
    // From the right offset it goes through.
    sink.apply(&scope(), &batch(&[v2], Some(1), 2))
        .await
        .unwrap();
    assert_eq!(row(&h, user, "2026-03-01").await.version, 2);
}

#[tokio::test]
async fn progress_only_rises_and_is_per_user() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut high = upsert(a, "STEPS", Period::Day, "2026-03-01", 3);
    high.applied_seq = 40;
    let mut low = upsert(a, "STEPS", Period::Day, "2026-03-02", 4);
    low.applied_seq = 12;
    let other = upsert(b, "STEPS", Period::Day, "2026-03-01", 2);
    sink.apply(&scope(), &batch(&[high], None, 1))
        .await
        .unwrap();
    sink.apply(&scope(), &batch(&[low, other], Some(1), 3))
        .await
        .unwrap();
    let progress = h.progress().await;
    assert_eq!(progress[&a.to_string()], 40);
    assert_eq!(progress[&b.to_string()], 2);
}

#[tokio::test]
async fn a_batch_of_only_unusable_records_still_moves_its_offsets() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let empty = Batch::<RollupUpsert> {
        items: vec![],
        spans: vec![
            PartitionSpan {
                partition: 3,
                expected: None,
                next_offset: 10,
            },
            PartitionSpan {
                partition: 1,
                expected: None,
                next_offset: 4,
            },
        ],
    };
    assert_eq!(
        SinkFor::<RollupUpsert>::apply(&sink, &scope(), &empty)
            .await
            .unwrap(),
        Applied::default()
    );
    let mut stored: Vec<_> = sink
        .stored_offsets(&scope(), &[1, 3])
        .await
        .unwrap()
        .into_iter()
        .collect();
    stored.sort();
    assert_eq!(stored, vec![(1, 4), (3, 10)]);
}

#[tokio::test]
async fn the_url_scheme_chooses_the_engine() {
    let h = Harness::database_only().await;
    let sink = pulseline_sinks::open(&h.db.url, 1).await.unwrap().sink();
    assert_eq!(sink.engine(), "postgres");
    sink.ping().await.unwrap();
    for url in ["scylla://127.0.0.1/pulseline", "mysql://x/y"] {
        let err = pulseline_sinks::open(url, 1).await.unwrap_err();
        assert!(matches!(err, SinkError::Config(_)), "{err}");
    }
    // A scylla:// URL opens the Scylla store (tests/scylla_sink.rs, on the emulator);
    // with nothing listening, the failure is one a retry can cure.
    let err = pulseline_sinks::open("scylla://127.0.0.1:1/pulseline", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SinkError::Scylla {
                retryable: true,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_progress_record_alone_raises_progress_and_writes_no_row() {
    let h = Harness::database_only().await;
    let sink = PostgresSink::from_pool(h.pool.clone());
    let user = Uuid::new_v4();
    let progress = ReadModelProgress::new(
        &user.to_string(),
        "rollups",
        AppliedSeqs {
            samples: 7,
            events: 3,
        },
    );
    let batch = Batch::<RollupUpsert> {
        items: vec![Item::Progress(UserProgress::parse(&progress).unwrap())],
        spans: vec![PartitionSpan {
            partition: 0,
            expected: None,
            next_offset: 1,
        }],
    };
    let applied = sink.apply(&scope(), &batch).await.unwrap();
    assert_eq!(applied, Applied::default());
    assert!(h.rows().await.is_empty());
    // Only the streams the read model reads: rollups read samples, not events.
    let stored: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT stream, applied_seq FROM sink_progress WHERE user_id = $1 AND read_model = 'rollups'",
    )
    .bind(user)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(stored, vec![(1, 7)]);
}

#[test]
fn a_progress_record_of_another_read_model_is_refused() {
    let p = ReadModelProgress::new(
        &Uuid::new_v4().to_string(),
        "sleep_nights",
        AppliedSeqs::default(),
    );
    let parsed = Item::<RollupUpsert>::parse(pulseline_schemas::ReadModelRecord::Progress(p));
    assert!(parsed.is_err());
}
