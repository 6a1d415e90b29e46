//! The `Processor` trait: what a read model implements. It owns nothing but the meaning of
//! its read model; consuming, state persistence, change-id deduplication, lateness,
//! transactions and rebalances are the runtime's (see `runtime`), so a processor must never
//! do I/O, read the wall clock or use randomness (replays must give identical outputs).

use std::collections::BTreeMap;

use pulseline_schemas::records::{SampleChange, UserEventChange};
pub use pulseline_schemas::{AppliedSeqs, ReadModel, RowVersion, Stream};

use crate::state::State;

/// The change id the gateway assigns in Postgres: (per-user ingest sequence of the stream,
/// index of the item in its request). Monotonic per user and stream, so "at or below the
/// last applied one" means "already applied" (a replay, a relay duplicate, the leftover of
/// an aborted transaction).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChangeId {
    pub seq: i64,
    pub index: i32,
}

impl ChangeId {
    /// Bits reserved for the index in a read-model version.
    pub const INDEX_BITS: u32 = RowVersion::INDEX_BITS;

    pub fn new(seq: i64, index: i32) -> Self {
        Self { seq, index }
    }

    /// The read-model version derived from this change id: `seq * 2^20 + index`. It orders
    /// like the change id as long as `0 <= index < 2^20` (a request holds far fewer items;
    /// the gateway's batch limit is in the thousands) and `seq < 2^43`, which the runtime
    /// checks on every record before a processor sees it (`is_versionable`).
    pub fn version(self) -> i64 {
        debug_assert!(
            self.is_versionable(),
            "change id {self:?} out of version range"
        );
        (self.seq << Self::INDEX_BITS) | i64::from(self.index)
    }

    /// Whether `version()` is exact and order-preserving for this id.
    pub fn is_versionable(self) -> bool {
        (0..(1 << Self::INDEX_BITS)).contains(&self.index)
            && (0..(1_i64 << (63 - Self::INDEX_BITS))).contains(&self.seq)
    }
}

/// One decoded input record, as a processor sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Sample(SampleChange),
    Event(UserEventChange),
}

impl Input {
    pub fn stream(&self) -> Stream {
        match self {
            Input::Sample(_) => Stream::Samples,
            Input::Event(_) => Stream::Events,
        }
    }

    pub fn user_id(&self) -> &str {
        match self {
            Input::Sample(s) => &s.user_id,
            Input::Event(e) => &e.user_id,
        }
    }

    pub fn change_id(&self) -> ChangeId {
        match self {
            Input::Sample(s) => ChangeId::new(s.change_seq, s.change_index),
            Input::Event(e) => ChangeId::new(e.change_seq, e.change_index),
        }
    }

    /// Event time (UTC microseconds): the start instant of the sample or event.
    pub fn event_time(&self) -> i64 {
        match self {
            Input::Sample(s) => s.start_at,
            Input::Event(e) => e.start_at,
        }
    }
}

/// Why a processor refuses a record. The runtime sends the record to the dead-letter topic
/// with `code` as the `reason` header; it is never retried automatically. A processor that
/// rejects a record must leave the user's state unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Rejection {
    /// Stable UPPER_SNAKE code, e.g. `UNKNOWN_METRIC`.
    pub code: &'static str,
    /// What was wrong, without values (no PHI): field names and metric codes only.
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// The last change applied per stream for one user: what the runtime deduplicates on, and
/// the `appliedSeq` a read model reports for freshness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub samples: Option<ChangeId>,
    pub events: Option<ChangeId>,
}

impl Applied {
    pub fn get(&self, stream: Stream) -> Option<ChangeId> {
        match stream {
            Stream::Samples => self.samples,
            Stream::Events => self.events,
        }
    }

    pub(crate) fn set(&mut self, stream: Stream, id: ChangeId) {
        match stream {
            Stream::Samples => self.samples = Some(id),
            Stream::Events => self.events = Some(id),
        }
    }

    /// The sequence of the stream applied so far (0 before anything), as read models
    /// report it in `appliedSeq`.
    pub fn seq(&self, stream: Stream) -> i64 {
        self.get(stream).map_or(0, |c| c.seq)
    }

    /// The applied sequence of every stream, as read models carry it.
    pub fn seqs(&self) -> AppliedSeqs {
        AppliedSeqs {
            samples: self.seq(Stream::Samples),
            events: self.seq(Stream::Events),
        }
    }
}

/// The row key type of a processor's read model.
pub type KeyOf<P> = <<P as Processor>::Output as ReadModel>::Key;

/// What `apply` can see and do for one change of one user: who the user is, which change
/// is being applied, what has been applied so far, and which read-model rows it touches.
#[derive(Debug)]
pub struct Context<'a, K> {
    user_id: &'a str,
    change: ChangeId,
    applied: Applied,
    touched: &'a mut Vec<K>,
}

impl<'a, K> Context<'a, K> {
    pub(crate) fn new(
        user_id: &'a str,
        change: ChangeId,
        applied: Applied,
        touched: &'a mut Vec<K>,
    ) -> Self {
        Self {
            user_id,
            change,
            applied,
            touched,
        }
    }

    /// The user whose state and records these are.
    pub fn user_id(&self) -> &str {
        self.user_id
    }

    /// The change id of the record being applied.
    pub fn change_id(&self) -> ChangeId {
        self.change
    }

    /// The last change applied per stream, including the record being applied.
    pub fn applied(&self) -> Applied {
        self.applied
    }

    /// Says that this change can alter the row `key` (a superset is fine: an unchanged row
    /// is emitted again with a newer version). At the end of the batch `flush` renders
    /// every touched row, and the runtime versions it by the newest change that touched it.
    pub fn touch(&mut self, key: K) {
        self.touched.push(key);
    }
}

/// What `flush` sees for one user: the rows touched in the batch, and where their current
/// content goes. Every touched key must get exactly one `emit` or `delete`; the runtime
/// stamps versions and applied sequences, and reports any other row as a contract breach.
#[derive(Debug)]
pub struct Flush<'a, M: ReadModel> {
    user_id: &'a str,
    touched: &'a BTreeMap<M::Key, RowVersion>,
    rows: &'a mut BTreeMap<M::Key, M>,
}

impl<'a, M: ReadModel> Flush<'a, M> {
    pub(crate) fn new(
        user_id: &'a str,
        touched: &'a BTreeMap<M::Key, RowVersion>,
        rows: &'a mut BTreeMap<M::Key, M>,
    ) -> Self {
        Self {
            user_id,
            touched,
            rows,
        }
    }

    /// The user whose rows these are.
    pub fn user_id(&self) -> &str {
        self.user_id
    }

    /// The keys touched in this batch, in key order.
    pub fn touched(&self) -> impl Iterator<Item = &'a M::Key> + use<'a, M> {
        self.touched.keys()
    }

    /// The current content of a touched row (its version is set by the runtime).
    pub fn emit(&mut self, row: M) {
        self.rows.insert(row.row_key(), row);
    }

    /// A touched row that no longer exists: the runtime emits its tombstone.
    pub fn delete(&mut self, key: &M::Key) {
        self.rows
            .insert(key.clone(), M::tombstone(self.user_id, key));
    }
}

/// A stream processor: per-user state in, records in, one read model's rows out.
///
/// Two methods: `apply` changes the state for one record and says which rows it touches;
/// `flush` renders the touched rows at the end of the batch. The runtime guarantees, per
/// user: records arrive in change-id order per stream, each change at most once (anything at
/// or below the last applied change id is skipped before `apply`), state survives restarts
/// and rebalances (restored from the changelog), and `flush` runs once per user at the end
/// of every batch that touched a row of the user. It versions every row by the newest
/// change that touched it and reports the user's progress after every batch, whether or
/// not a row changed. Outputs must be deterministic functions of the state.
///
/// A read model of both streams (samples and events) sees them interleaved in an order
/// that changes between runs (batch boundaries, replays). Its state after applying a
/// prefix of each stream must not depend on that order (keep the current samples and
/// events and derive from them; reject a record only for what it holds itself), because a
/// row's version is the pair of prefixes (`RowVersion`).
pub trait Processor: Send + Sync + std::fmt::Debug + 'static {
    /// Stable name: names the changelog topic (`changelog.<NAME>.v1`) and the metrics.
    /// Renaming it starts the processor from empty state.
    const NAME: &'static str;
    /// Per-user state, persisted through the changelog (see `state::State`).
    type State: State;
    /// The read model this processor emits; its `STREAMS` are the processor's inputs.
    type Output: ReadModel;

    /// Applies one record to the user's state and touches the rows it can change.
    /// Returning a `Rejection` sends the record to the dead-letter topic; the state must
    /// then be unchanged (touches of a rejected record are dropped).
    fn apply(
        &self,
        ctx: &mut Context<'_, KeyOf<Self>>,
        state: &mut Self::State,
        input: &Input,
    ) -> Result<(), Rejection>;

    /// Renders every touched row of one user (`Flush::emit` or `Flush::delete`).
    fn flush(&self, out: &mut Flush<'_, Self::Output>, state: &mut Self::State);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_change_ids() {
        let ids = [
            ChangeId::new(0, 0),
            ChangeId::new(1, 0),
            ChangeId::new(1, 1),
            ChangeId::new(1, (1 << 20) - 1),
            ChangeId::new(2, 0),
            ChangeId::new((1 << 43) - 1, 5),
        ];
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].version() < w[1].version(), "{:?} {:?}", w[0], w[1]);
        }
        assert_eq!(ChangeId::new(3, 7).version(), 3 * (1 << 20) + 7);
        assert!(!ChangeId::new(1, 1 << 20).is_versionable());
        assert!(!ChangeId::new(1, -1).is_versionable());
        assert!(!ChangeId::new(1 << 43, 0).is_versionable());
    }
}
