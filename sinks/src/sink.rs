//! The `Sink` traits: what a read store must do so the runner can feed it exactly once,
//! and the parsed rows it is fed. One implementation per engine (Postgres now, ScyllaDB
//! later), chosen by the URL in the config (`crate::open`), as tansu chooses storage.
//!
//! A sink never talks to Kafka; the runner never writes to a store. The contract between
//! them is positional: a batch carries, per partition, the offset it was read from and the
//! offset after it, and the sink writes rows, progress and the new offsets atomically,
//! refusing the batch if the stored offset is not the one it was read from.

use std::collections::HashMap;
use std::fmt;

use futures::future::BoxFuture;
use pulseline_schemas::{AppliedSeqs, ReadModelProgress, ReadModelRecord, RowVersion};
use uuid::Uuid;

use crate::error::SinkError;
use crate::tables::StoredReadModel;

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

/// Why a record cannot become a row. The reason names the field, never its value (PHI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(pub &'static str);

/// A decoded, validated row of read model `M`. Built only by `parse`, so a store never
/// sees an unparsable user id or key.
#[derive(Debug, Clone)]
pub struct StoredRow<M: StoredReadModel> {
    pub user_id: Uuid,
    pub key: M::Key,
    pub version: RowVersion,
    pub applied: AppliedSeqs,
    /// The row as the store writes it.
    pub columns: M::Columns,
}

impl<M: StoredReadModel> StoredRow<M> {
    /// Parses a record from the topic; refuses what no read store could hold.
    pub fn parse(record: M) -> Result<Self, InvalidRecord> {
        let user_id = parse_user(record.user_id())?;
        Ok(Self {
            user_id,
            key: record.row_key(),
            version: record.version(),
            applied: record.applied(),
            columns: M::columns(&record, user_id)?,
        })
    }
}

/// A user's progress on one read model: the sequences it reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserProgress {
    pub user_id: Uuid,
    pub applied: AppliedSeqs,
}

impl UserProgress {
    pub fn parse(p: &ReadModelProgress) -> Result<Self, InvalidRecord> {
        Ok(Self {
            user_id: parse_user(&p.user_id)?,
            applied: p.applied(),
        })
    }
}

fn parse_user(text: &str) -> Result<Uuid, InvalidRecord> {
    Uuid::parse_str(text).map_err(|_| InvalidRecord("userId is not a UUID"))
}

/// One usable record of a read-model topic.
#[derive(Debug, Clone)]
pub enum Item<M: StoredReadModel> {
    Row(StoredRow<M>),
    Progress(UserProgress),
}

impl<M: StoredReadModel> Item<M> {
    pub fn parse(record: ReadModelRecord<M>) -> Result<Self, InvalidRecord> {
        match record {
            ReadModelRecord::Row(r) => StoredRow::parse(r).map(Item::Row),
            ReadModelRecord::Progress(p) => {
                if p.read_model != M::NAME {
                    return Err(InvalidRecord("readModel is not this topic's read model"));
                }
                UserProgress::parse(&p).map(Item::Progress)
            }
        }
    }
}

/// What one batch brings: rows and progress in topic order, and each partition's span. A
/// batch may have spans without items (every record in it was unusable): its offsets
/// still move.
#[derive(Debug, Clone)]
pub struct Batch<M: StoredReadModel> {
    pub items: Vec<Item<M>>,
    pub spans: Vec<PartitionSpan>,
}

impl<M: StoredReadModel> Default for Batch<M> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            spans: Vec::new(),
        }
    }
}

impl<M: StoredReadModel> Batch<M> {
    pub fn rows(&self) -> impl Iterator<Item = &StoredRow<M>> {
        self.items.iter().filter_map(|i| match i {
            Item::Row(r) => Some(r),
            Item::Progress(_) => None,
        })
    }

    /// Each user's highest applied sequences in the batch, from rows and progress records
    /// alike, for the streams `M` reads.
    pub fn progress(&self) -> Vec<UserProgress> {
        let mut highest: std::collections::BTreeMap<Uuid, AppliedSeqs> = Default::default();
        for item in &self.items {
            let (user, applied) = match item {
                Item::Row(r) => (r.user_id, r.applied),
                Item::Progress(p) => (p.user_id, p.applied),
            };
            let seqs = highest.entry(user).or_default();
            seqs.samples = seqs.samples.max(applied.samples);
            seqs.events = seqs.events.max(applied.events);
        }
        highest
            .into_iter()
            .map(|(user_id, applied)| UserProgress { user_id, applied })
            .collect()
    }
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

/// A read store, whatever it stores. Implementations are cheap to share.
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

    /// Whether the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// A read store that can hold read model `M`.
pub trait SinkFor<M: StoredReadModel>: Sink {
    /// Writes the batch's rows (version-guarded), the users' progress and the spans' new
    /// offsets, all or nothing. Refuses with `OffsetConflict`, writing nothing, when a
    /// span's stored offset is not its `expected` one.
    fn apply<'a>(
        &'a self,
        scope: &'a OffsetScope,
        batch: &'a Batch<M>,
    ) -> BoxFuture<'a, Result<Applied, SinkError>>;
}
