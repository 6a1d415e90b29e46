//! The Scylla store. Two kinds of tests, in one file:
//! - `emulator_*`: the wiring against the in-memory CQL emulator (kassandra, started per
//!   test, no stack needed): connect, keyspace and table migration, prepared inserts in
//!   unlogged batches, offsets, selects by partition key, paging. The emulator keeps no
//!   write timestamps, so these tests never check which version wins.
//! - `cluster_*`: the semantics (out-of-order versions, deletions, progress) against a
//!   real Scylla or Cassandra at `SCYLLA_URI` (`host:port`). Without it they print that
//!   they did not run and pass: the one allowed skip.

mod support;

use pulseline_schemas::AppliedSeqs;
use pulseline_schemas::records::{Period, RollupUpsert, SleepNightUpsert};
use pulseline_sinks::{
    Batch, Item, OffsetScope, PartitionSpan, ScyllaSink, Sink, SinkError, SinkFor, Store,
    UserProgress,
};
use pulseline_testkit::cql_emulator::{CqlEmulator, TestCertificate};
use scylla::value::{CqlValue, Row};
use support::{batch, upsert};
use uuid::Uuid;

fn scope() -> OffsetScope {
    OffsetScope {
        consumer: "test-consumer".into(),
        topic: "readmodel.rollups.v1".into(),
    }
}

fn keyspace() -> String {
    format!("t_{}", Uuid::new_v4().simple())
}

fn column(row: &Row, index: usize) -> Option<&CqlValue> {
    row.columns.get(index).and_then(Option::as_ref)
}

/// Rollup buckets of one user: `n` days of STEPS, version `version`.
fn days(user: Uuid, n: usize, version: i64) -> Vec<RollupUpsert> {
    (0..n)
        .map(|d| {
            let date =
                chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(d as u64);
            // Version not divisible by 7: `upsert` deletes every 7th version.
            upsert(user, "STEPS", Period::Day, &date.to_string(), version)
        })
        .collect()
}

async fn emulator_store(emulator: &CqlEmulator) -> ScyllaSink {
    match pulseline_sinks::open(&emulator.url(&keyspace()), 1).await {
        Ok(Store::Scylla(sink)) => std::sync::Arc::try_unwrap(sink).expect("only handle"),
        Ok(other) => panic!("scylla:// opened {other:?}"),
        Err(e) => panic!("opening the emulator store: {e}"),
    }
}

#[tokio::test]
async fn emulator_connects_migrates_idempotently_and_answers_ping() {
    let emulator = CqlEmulator::start().await.unwrap();
    let sink = emulator_store(&emulator).await;
    sink.ping().await.unwrap();
    // Running the migrations again (a restart, a second sink) changes nothing.
    sink.migrate().await.unwrap();
    sink.migrate_model::<RollupUpsert>().await.unwrap();
    sink.migrate_model::<SleepNightUpsert>().await.unwrap();
    let applied = sink
        .session()
        .query_unpaged(
            format!("SELECT version FROM {}.schema_migrations", sink.keyspace()),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut versions: Vec<i32> = applied
        .rows::<(i32,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    versions.sort();
    assert_eq!(versions, vec![1, 1001, 1002]);
    assert_eq!(sink.engine(), "scylla");
}

/// `open` within 20 s (a refused connection must fail, not hang); a timeout panics.
async fn within<T>(open: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), open)
        .await
        .expect("answered within 20 s")
}

/// `url` with TLS on, trusting the CA in `ca`.
fn with_ca(url: &str, ca: &std::path::Path) -> String {
    let ca: String =
        url::form_urlencoded::byte_serialize(ca.to_string_lossy().as_bytes()).collect();
    format!("{url}&tls_ca_file={ca}")
}

/// TLS: over it the store connects, migrates, writes and reads when the node's certificate
/// chains to the configured CA and names the node's IP; it refuses a node whose
/// certificate another CA signed, a node without TLS, and (without TLS) a node with it.
#[tokio::test]
async fn emulator_over_tls_trusts_only_the_configured_ca() {
    let certificate = TestCertificate::localhost().expect("a certificate");
    let emulator = CqlEmulator::start_tls(&certificate).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certificate.pem()).unwrap();

    let sink = within(ScyllaSink::open(&with_ca(&emulator.url(&keyspace()), &ca)))
        .await
        .expect("the store opens over TLS");
    let user = Uuid::new_v4();
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&days(user, 3, 5), None, 3))
        .await
        .expect("a batch over TLS");
    assert_eq!(
        sink.user_rows::<RollupUpsert>(user, 2).await.unwrap().len(),
        3
    );

    let stranger = TestCertificate::localhost().expect("another certificate");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, stranger.pem()).unwrap();
    let untrusted = within(ScyllaSink::open(&with_ca(
        &emulator.url(&keyspace()),
        &other_ca,
    )))
    .await;
    assert!(
        matches!(untrusted, Err(SinkError::Scylla { .. })),
        "a node signed by another CA: {:?}",
        untrusted.err()
    );
    let plain_client = within(ScyllaSink::open(&emulator.url(&keyspace()))).await;
    assert!(
        plain_client.is_err(),
        "a client without TLS talked to a TLS node"
    );
    let plain = CqlEmulator::start().await.unwrap();
    // The emulator never answers a TLS hello: the start gives up after its timeout.
    let plain_node = within(ScyllaSink::open(&with_ca(&plain.url(&keyspace()), &ca))).await;
    match plain_node {
        Err(SinkError::Scylla { message, .. }) => {
            assert!(message.contains("no answer within"), "{message}")
        }
        other => panic!(
            "a TLS client talked to a node without TLS: {:?}",
            other.err()
        ),
    }
}

#[tokio::test]
async fn emulator_writes_batches_and_reads_a_partition_page_by_page() {
    let emulator = CqlEmulator::start().await.unwrap();
    let sink = emulator_store(&emulator).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut records = days(a, 23, 5);
    records.extend(days(b, 4, 6));

    let applied = SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&records, None, 27))
        .await
        .unwrap();
    assert_eq!(applied.rows_applied, 27);
    assert!(sink.metrics().statements("row_batch", "ok") >= 2);

    // One partition, read 5 rows a page: every row of `a`, none of `b`.
    let rows = sink.user_rows::<RollupUpsert>(a, 5).await.unwrap();
    assert_eq!(rows.len(), 23);
    assert!(
        rows.iter()
            .all(|r| column(r, 0) == Some(&CqlValue::Uuid(a)))
    );
    let first = &rows[0];
    assert_eq!(column(first, 1), Some(&CqlValue::Text("STEPS".into())));
    // value = version * 1.5 (support::upsert), version 5
    assert!(first.columns.contains(&Some(CqlValue::Double(7.5))));
    assert_eq!(sink.user_rows::<RollupUpsert>(b, 2).await.unwrap().len(), 4);

    // The offset moved with the batch.
    let offsets = sink.stored_offsets(&scope(), &[0, 1]).await.unwrap();
    assert_eq!(offsets.get(&0), Some(&27));
    assert_eq!(offsets.get(&1), None);
}

#[tokio::test]
async fn emulator_refuses_a_batch_read_from_a_moved_offset() {
    let emulator = CqlEmulator::start().await.unwrap();
    let sink = emulator_store(&emulator).await;
    let user = Uuid::new_v4();
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&days(user, 2, 5), None, 2))
        .await
        .unwrap();
    // Read from offset 0 again (a stale instance): refused, nothing written.
    let stale = batch(&days(Uuid::new_v4(), 1, 6), None, 1);
    let e = SinkFor::<RollupUpsert>::apply(&sink, &scope(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(e, SinkError::OffsetConflict { partition: 0, .. }),
        "{e}"
    );
    assert!(e.is_retryable());
    let wrong = batch(&days(user, 1, 6), Some(1), 3);
    assert!(matches!(
        SinkFor::<RollupUpsert>::apply(&sink, &scope(), &wrong).await,
        Err(SinkError::OffsetConflict { .. })
    ));
    let offsets = sink.stored_offsets(&scope(), &[0]).await.unwrap();
    assert_eq!(offsets.get(&0), Some(&2));
    // The right expected offset goes through.
    let next = batch(&days(user, 1, 6), Some(2), 3);
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &next)
        .await
        .unwrap();
}

#[tokio::test]
async fn emulator_stores_progress_and_batches_of_progress_only() {
    let emulator = CqlEmulator::start().await.unwrap();
    let sink = emulator_store(&emulator).await;
    let user = Uuid::new_v4();
    let only_progress: Batch<RollupUpsert> = Batch {
        items: vec![Item::Progress(UserProgress {
            user_id: user,
            applied: AppliedSeqs {
                samples: 12,
                events: 0,
            },
        })],
        spans: vec![PartitionSpan {
            partition: 3,
            expected: None,
            next_offset: 10,
        }],
    };
    let applied = SinkFor::<RollupUpsert>::apply(&sink, &scope(), &only_progress)
        .await
        .unwrap();
    assert_eq!(applied.rows_applied, 0);
    let progress = sink
        .session()
        .query_unpaged(
            format!(
                "SELECT stream, applied_seq FROM {}.sink_progress WHERE read_model = 'rollups' AND user_id = {user}",
                sink.keyspace()
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let rows: Vec<(i32, i64)> = progress
        .rows::<(i32, i64)>()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, vec![(1, 12)]);
    assert_eq!(
        sink.stored_offsets(&scope(), &[3]).await.unwrap().get(&3),
        Some(&10)
    );
}

/// A real cluster's store, or `None` (printed) when `SCYLLA_URI` is unset.
async fn cluster_store(test: &str) -> Option<ScyllaSink> {
    let Ok(uri) = std::env::var("SCYLLA_URI") else {
        eprintln!("{test}: did not run: SCYLLA_URI is not set (needs a real Scylla/Cassandra)");
        return None;
    };
    let url = format!("scylla://{uri}/{}?replication_factor=1", keyspace());
    Some(ScyllaSink::open(&url).await.expect("opening SCYLLA_URI"))
}

#[tokio::test]
async fn cluster_the_newest_version_wins_in_any_order() {
    let Some(sink) = cluster_store("cluster_the_newest_version_wins_in_any_order").await else {
        return;
    };
    let user = Uuid::new_v4();
    let v9 = upsert(user, "STEPS", Period::Day, "2026-03-01", 9);
    let v5 = upsert(user, "STEPS", Period::Day, "2026-03-01", 5);
    let v7 = upsert(user, "STEPS", Period::Day, "2026-03-01", 7); // a deletion
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&[v9], None, 1))
        .await
        .unwrap();
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&[v5, v7], Some(1), 3))
        .await
        .unwrap();
    let rows = sink.user_rows::<RollupUpsert>(user, 100).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].columns.contains(&Some(CqlValue::Double(9.0 * 1.5))));
}

#[tokio::test]
async fn cluster_a_deletion_by_version_hides_the_row_and_blocks_older_versions() {
    let Some(sink) =
        cluster_store("cluster_a_deletion_by_version_hides_the_row_and_blocks_older_versions")
            .await
    else {
        return;
    };
    let user = Uuid::new_v4();
    let v6 = upsert(user, "STEPS", Period::Day, "2026-03-01", 6);
    let v7 = upsert(user, "STEPS", Period::Day, "2026-03-01", 7); // deleted
    SinkFor::<RollupUpsert>::apply(&sink, &scope(), &batch(&[v7, v6], None, 2))
        .await
        .unwrap();
    let rows = sink.user_rows::<RollupUpsert>(user, 100).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].columns.contains(&Some(CqlValue::Boolean(true))));
    assert!(!rows[0].columns.contains(&Some(CqlValue::Double(6.0 * 1.5))));
}

#[tokio::test]
async fn cluster_progress_keeps_the_highest_sequence() {
    let Some(sink) = cluster_store("cluster_progress_keeps_the_highest_sequence").await else {
        return;
    };
    let user = Uuid::new_v4();
    let progress = |seq: i64, expected: Option<i64>, next: i64| Batch::<RollupUpsert> {
        items: vec![Item::Progress(UserProgress {
            user_id: user,
            applied: AppliedSeqs {
                samples: seq,
                events: 0,
            },
        })],
        spans: vec![PartitionSpan {
            partition: 0,
            expected,
            next_offset: next,
        }],
    };
    SinkFor::apply(&sink, &scope(), &progress(20, None, 1))
        .await
        .unwrap();
    SinkFor::apply(&sink, &scope(), &progress(11, Some(1), 2))
        .await
        .unwrap();
    let rows = sink
        .session()
        .query_unpaged(
            format!(
                "SELECT applied_seq FROM {}.sink_progress WHERE read_model = 'rollups' AND user_id = {user}",
                sink.keyspace()
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let seqs: Vec<i64> = rows
        .rows::<(i64,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(seqs, vec![20]);
}
