//! What one batch becomes in Scylla, decided without a server: the write timestamp of
//! each row, the unlogged batches (one partition and one timestamp each), the progress
//! writes, and the retry loop around every statement. `ScyllaSink` only executes it.
//!
//! Why timestamps: Scylla has no transaction over rows, progress and offsets, so every
//! write is made idempotent and order-free instead. A row is written `USING TIMESTAMP` of
//! its version (the batch's protocol timestamp): a replay writes the same cells with the
//! same timestamp (no change), and a late lower version loses to the newer one already
//! there, in any order. Progress is written with its applied sequence as timestamp, so
//! the highest sequence wins. The offset is written last; a crash before it replays the
//! batch (harmless), never skips it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use pulseline_schemas::RowVersion;
use pulseline_service::Backoff;
use uuid::Uuid;

use crate::sink::{Batch, StoredRow};
use crate::tables::StoredReadModel;

/// The CQL write timestamp of a row: the sum of its version's parts. Every version ->
/// timestamp mapping goes through here.
///
/// Why a sum: a version is a pair (samples, events) ordered lexicographically, and CQL has
/// one timestamp per cell. Along a row's history both parts only grow and at least one
/// grows with each change (`RowVersion`), so the sum grows strictly with the version: the
/// two orders agree on every pair of versions one row can have. A read model of one stream
/// has 0 in the other part, so its timestamp is its version. The parts are change ids
/// (sequence << 20 | index), far below where the sum could overflow; it saturates anyway.
pub fn write_timestamp<M: StoredReadModel>(row: &StoredRow<M>) -> i64 {
    version_timestamp(row.version)
}

fn version_timestamp(version: RowVersion) -> i64 {
    version.samples.saturating_add(version.events)
}

/// Rows of one partition (user) that share one write timestamp: one unlogged batch.
#[derive(Debug)]
pub(crate) struct RowGroup<'a, M: StoredReadModel> {
    pub timestamp: i64,
    pub rows: Vec<&'a StoredRow<M>>,
}

/// The batch's rows as unlogged batches: one row per key (the highest timestamp; a lower
/// one would lose anyway), grouped by user and timestamp, each group at most `max_rows`
/// long (Scylla warns on large batches), in user order.
pub(crate) fn row_groups<M: StoredReadModel>(
    batch: &Batch<M>,
    max_rows: usize,
) -> Vec<RowGroup<'_, M>> {
    let mut newest: BTreeMap<(Uuid, &M::Key), &StoredRow<M>> = BTreeMap::new();
    for row in batch.rows() {
        let entry = newest.entry((row.user_id, &row.key)).or_insert(row);
        if write_timestamp(row) >= write_timestamp(*entry) {
            *entry = row;
        }
    }
    let mut grouped: BTreeMap<(Uuid, i64), Vec<&StoredRow<M>>> = BTreeMap::new();
    for row in newest.into_values() {
        grouped
            .entry((row.user_id, write_timestamp(row)))
            .or_default()
            .push(row);
    }
    let max_rows = max_rows.max(1);
    grouped
        .into_iter()
        .flat_map(|((_, timestamp), rows)| {
            rows.chunks(max_rows)
                .map(|chunk| RowGroup {
                    timestamp,
                    rows: chunk.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One progress cell: (user, stream id, applied sequence), written with the sequence as
/// its timestamp. The stream id is a CQL `int` (the emulator has no `smallint`).
pub(crate) fn progress_writes<M: StoredReadModel>(batch: &Batch<M>) -> Vec<(Uuid, i32, i64)> {
    batch
        .progress()
        .into_iter()
        .flat_map(|p| {
            M::STREAMS
                .iter()
                .map(move |&s| (p.user_id, i32::from(s.id()), p.applied.get(s)))
        })
        .collect()
}

/// How often and how patiently a statement is retried before the batch fails (and the
/// runner restarts the consumer from the stored offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses, or the policy's
/// attempts are spent; waits with exponential backoff between attempts. Safe because every
/// write of the Scylla store is idempotent. `on_retry` is told of each retry (metrics).
pub(crate) async fn with_retries<T, E, F, Fut>(
    policy: RetryPolicy,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E),
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(policy.first_backoff, policy.max_backoff);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.attempts && retryable(&e) => {
                on_retry(&e);
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Item, UserProgress};
    use pulseline_schemas::AppliedSeqs;
    use pulseline_schemas::ReadModel;
    use pulseline_schemas::records::{Period, RollupUpsert};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn row(user: Uuid, version: i64, bucket: &str) -> Item<RollupUpsert> {
        let mut r = crate::tables::tests::upsert(Period::Day, bucket);
        r.user_id = user.to_string();
        r.version = version;
        Item::Row(StoredRow::parse(r).unwrap())
    }

    fn batch(items: Vec<Item<RollupUpsert>>) -> Batch<RollupUpsert> {
        Batch {
            items,
            spans: vec![],
        }
    }

    #[test]
    fn the_write_timestamp_is_the_version() {
        let Item::Row(r) = row(Uuid::nil(), 42, "2026-01-01") else {
            unreachable!()
        };
        assert_eq!(write_timestamp(&r), 42);
    }

    #[test]
    fn two_stream_timestamps_order_a_rows_versions_as_the_pairs_do() {
        // One row's history along an interleaving of the two streams: each change that
        // touches it advances one part (to that stream's newest change id).
        let change = |seq: i64, index: i64| (seq << RowVersion::INDEX_BITS) | index;
        let steps = [
            (true, change(1, 0)),
            (false, change(1, 3)),
            (true, change(2, 0)),
            (true, change(2, 7)),
            (false, change(4, 0)),
            (true, change(9, 1)),
        ];
        let mut version = RowVersion::default();
        let mut history = vec![version];
        for (samples, id) in steps {
            if samples {
                version.samples = id;
            } else {
                version.events = id;
            }
            history.push(version);
        }
        for pair in history.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(
                version_timestamp(pair[0]) < version_timestamp(pair[1]),
                "{} then {}",
                pair[0],
                pair[1]
            );
        }
        // A read model of one stream: the timestamp is its version.
        let one = RowVersion {
            samples: change(5, 2),
            events: 0,
        };
        assert_eq!(version_timestamp(one), change(5, 2));
        let far = RowVersion {
            samples: i64::MAX,
            events: 1,
        };
        assert_eq!(version_timestamp(far), i64::MAX);
    }

    #[test]
    fn groups_are_per_user_and_timestamp_with_the_newest_row_per_key() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let b = batch(vec![
            row(b, 5, "2026-01-01"),
            row(a, 5, "2026-01-01"),
            row(a, 3, "2026-01-01"), // older version of a's first key: dropped
            row(a, 5, "2026-01-02"),
            row(a, 6, "2026-01-03"),
            row(a, 9, "2026-01-01"), // newest of that key: kept, in its own group
        ]);
        let groups = row_groups(&b, 100);
        let shape: Vec<(Uuid, i64, usize)> = groups
            .iter()
            .map(|g| (g.rows[0].user_id, g.timestamp, g.rows.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Uuid::from_u128(1), 5, 1),
                (Uuid::from_u128(1), 6, 1),
                (Uuid::from_u128(1), 9, 1),
                (Uuid::from_u128(2), 5, 1),
            ]
        );
        // Every row of a group is of its partition and has its timestamp.
        for g in &groups {
            assert!(g.rows.iter().all(|r| r.user_id == g.rows[0].user_id));
            assert!(g.rows.iter().all(|r| write_timestamp(*r) == g.timestamp));
        }
    }

    #[test]
    fn large_groups_are_split() {
        let a = Uuid::from_u128(1);
        let items = (1..=5)
            .map(|d| row(a, 7, &format!("2026-01-0{d}")))
            .collect();
        let sizes: Vec<usize> = row_groups(&batch(items), 2)
            .iter()
            .map(|g| g.rows.len())
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn progress_is_the_highest_sequence_per_user_and_stream() {
        let a = Uuid::from_u128(1);
        let mut items = vec![row(a, 3, "2026-01-01"), row(a, 2, "2026-01-02")];
        items.push(Item::Progress(UserProgress {
            user_id: a,
            applied: AppliedSeqs {
                samples: 8,
                events: 0,
            },
        }));
        let writes = progress_writes(&batch(items));
        assert_eq!(writes.len(), RollupUpsert::STREAMS.len());
        assert!(writes.iter().all(|&(u, _, seq)| u == a && seq == 8));
    }

    #[tokio::test]
    async fn retries_retryable_errors_then_gives_up() {
        let policy = RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let mut retries = 0;
        // Fails twice, then works.
        let out: Result<u32, &str> = with_retries(
            policy,
            |_| true,
            |_| retries += 1,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 { Err("timeout") } else { Ok(n) }
            },
        )
        .await;
        assert_eq!(out, Ok(3));
        assert_eq!(retries, 2);

        // Always fails: exactly `attempts` tries.
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), &str> = with_retries(
            policy,
            |_| true,
            |_| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("timeout")
            },
        )
        .await;
        assert_eq!(out, Err("timeout"));
        assert_eq!(calls.load(Ordering::SeqCst), policy.attempts);

        // A fatal error is not retried.
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), &str> = with_retries(
            policy,
            |e| *e != "syntax",
            |_| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("syntax")
            },
        )
        .await;
        assert_eq!(out, Err("syntax"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
