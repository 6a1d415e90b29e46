//! The `Sink` trait: what a read store must do so the runner can feed it exactly once,
//! and the parsed rows it is fed. One implementation per engine (Postgres now, ScyllaDB
//! later), chosen by the URL in the config (`crate::connect`), as tansu chooses storage.
//!
//! A sink never talks to Kafka; the runner never writes to a store. The contract between
//! them is positional: a batch carries, per partition, the offset it was read from and the
//! offset after it, and the sink writes rows, progress and the new offsets atomically,
//! refusing the batch if the stored offset is not the one it was read from.

use std::collections::HashMap;
use std::fmt;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use futures::future::BoxFuture;
use pulseline_schemas::records::{Period, RollupUpsert};
use uuid::Uuid;

use crate::error::SinkError;

/// Whose offsets: a consumer name (the group id) and the deployed topic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetScope {
    pub consumer: String,
    pub topic: String,
}

/// One partition's share of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpan {
    pub partition: i32,
    /// The stored next offset the batch was read from; `None` when nothing was stored yet.
    pub expected: Option<i64>,
    /// The offset after the batch's last record of this partition.
    pub next_offset: i64,
}

/// A decoded, validated rollup upsert. Built only by `RollupRow::parse`, so a sink never
/// sees an unparsable user id or bucket start.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub user_id: Uuid,
    pub metric: String,
    pub period: Period,
    /// Local wall-clock start of the bucket (midnight for DAY).
    pub bucket_start: NaiveDateTime,
    pub version: i64,
    pub deleted: bool,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: i64,
    pub sources: Vec<String>,
    /// The user's samples sequence the processor had applied when it emitted this row.
    pub applied_seq: i64,
}

/// Why a record cannot become a row. The reason names the field, never its value (PHI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(pub &'static str);

impl RollupRow {
    /// Parses a record from the topic; refuses what no read store could hold.
    pub fn parse(r: RollupUpsert) -> Result<Self, InvalidRecord> {
        let user_id =
            Uuid::parse_str(&r.user_id).map_err(|_| InvalidRecord("userId is not a UUID"))?;
        if r.metric.is_empty() {
            return Err(InvalidRecord("metric is empty"));
        }
        let bucket_start = parse_bucket_start(r.period, &r.bucket_start)?;
        Ok(Self {
            user_id,
            metric: r.metric,
            period: r.period,
            bucket_start,
            version: r.version,
            deleted: r.deleted,
            value: r.value,
            min: r.min,
            max: r.max,
            count: r.count,
            sources: r.sources,
            applied_seq: r.applied_seq,
        })
    }

    /// The read-model key; two rows with the same key are versions of one row.
    pub fn key(&self) -> (Uuid, &str, Period, NaiveDateTime) {
        (self.user_id, &self.metric, self.period, self.bucket_start)
    }
}

/// `YYYY-MM-DD` for DAY, `YYYY-MM-DDTHH:00:00` for HOUR (a bucket starts on the hour).
fn parse_bucket_start(period: Period, text: &str) -> Result<NaiveDateTime, InvalidRecord> {
    match period {
        Period::Day => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(|d| d.and_time(NaiveTime::MIN))
            .map_err(|_| InvalidRecord("bucketStart of a DAY bucket is not YYYY-MM-DD")),
        Period::Hour => {
            let t = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map_err(|_| {
                InvalidRecord("bucketStart of an HOUR bucket is not YYYY-MM-DDTHH:00:00")
            })?;
            if t.and_utc().timestamp() % 3600 != 0 {
                return Err(InvalidRecord(
                    "bucketStart of an HOUR bucket is not on the hour",
                ));
            }
            Ok(t)
        }
    }
}

/// What one batch brings: rows in topic order and each partition's span. A batch may have
/// spans without rows (every record in it was unusable): its offsets still move.
#[derive(Debug, Clone, Default)]
pub struct RollupBatch {
    pub rows: Vec<RollupRow>,
    pub spans: Vec<PartitionSpan>,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or replaced by a newer version.
    pub rows_applied: u64,
    /// Rows not written because the store (or a later row of the same batch) already had
    /// this or a newer version: duplicates, replays, late lower versions.
    pub stale_skipped: u64,
}

/// A read store the runner feeds. Implementations are cheap to share (`Arc<dyn Sink>`).
pub trait Sink: Send + Sync + fmt::Debug {
    /// The engine's name, for logs and metrics (`postgres`, `scylla`).
    fn engine(&self) -> &'static str;

    /// The stored next offset of each of `partitions` that has one. Called on every
    /// partition assignment; the consumer starts there (or at the beginning).
    fn stored_offsets<'a>(
        &'a self,
        scope: &'a OffsetScope,
        partitions: &'a [i32],
    ) -> BoxFuture<'a, Result<HashMap<i32, i64>, SinkError>>;

    /// Writes the batch's rows (version-guarded), the users' progress and the spans' new
    /// offsets, all or nothing. Refuses with `OffsetConflict`, writing nothing, when a
    /// span's stored offset is not its `expected` one.
    fn apply<'a>(
        &'a self,
        scope: &'a OffsetScope,
        batch: &'a RollupBatch,
    ) -> BoxFuture<'a, Result<Applied, SinkError>>;

    /// Whether the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(period: Period, bucket: &str) -> RollupUpsert {
        RollupUpsert {
            user_id: Uuid::nil().to_string(),
            metric: "STEPS".into(),
            period,
            bucket_start: bucket.into(),
            version: 1,
            deleted: false,
            value: Some(1.0),
            min: None,
            max: None,
            count: 1,
            sources: vec![],
            applied_seq: 1,
        }
    }

    #[test]
    fn parses_day_and_hour_buckets() {
        let d = RollupRow::parse(upsert(Period::Day, "2026-11-23")).unwrap();
        assert_eq!(d.bucket_start.to_string(), "2026-11-23 00:00:00");
        let h = RollupRow::parse(upsert(Period::Hour, "2026-11-23T05:00:00")).unwrap();
        assert_eq!(h.bucket_start.to_string(), "2026-11-23 05:00:00");
    }

    #[test]
    fn refuses_unusable_records() {
        for (period, bucket) in [
            (Period::Day, "2026-11-23T00:00:00"),
            (Period::Day, "2026-02-30"),
            (Period::Hour, "2026-11-23"),
            (Period::Hour, "2026-11-23T05:30:00"),
        ] {
            assert!(
                RollupRow::parse(upsert(period, bucket)).is_err(),
                "{bucket}"
            );
        }
        let mut bad_user = upsert(Period::Day, "2026-11-23");
        bad_user.user_id = "someone".into();
        assert_eq!(
            RollupRow::parse(bad_user),
            Err(InvalidRecord("userId is not a UUID"))
        );
    }
}
