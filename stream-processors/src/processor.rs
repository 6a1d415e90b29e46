//! The `Processor` trait: what a read model implements. It owns nothing but the meaning of
//! its read model; consuming, state persistence, change-id deduplication, lateness,
//! transactions and rebalances are the runtime's (see `runtime`), so a processor must never
//! do I/O, read the wall clock or use randomness (replays must give identical outputs).

use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_schemas::{AvroRecord, topics};

use crate::state::State;

/// An input stream a processor can read. Both are keyed by user id and co-partitioned
/// (same partition count, same partitioner), so one runtime task sees all of a user's
/// records of every stream, in order per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// `health.samples.v1`: sample upserts and deletions.
    Samples,
    /// `health.events.v1`: logged user events (sessions).
    Events,
}

impl Stream {
    /// Every stream, in a fixed order.
    pub const ALL: [Stream; 2] = [Stream::Samples, Stream::Events];

    /// A short stable name (metrics, changelog tags).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Samples => "samples",
            Stream::Events => "events",
        }
    }

    /// The un-prefixed topic of the stream.
    pub fn topic(self) -> &'static str {
        match self {
            Stream::Samples => topics::SAMPLES,
            Stream::Events => topics::EVENTS,
        }
    }
}

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
    pub const INDEX_BITS: u32 = 20;

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
            Input::Sample(s) => s.user_id(),
            Input::Event(e) => e.user_id(),
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
}

/// What a processor can see and do while handling one user: who the user is, which change
/// is being applied, what has been applied so far, and where outputs go.
#[derive(Debug)]
pub struct Context<'a, O> {
    user_id: &'a str,
    change: Option<ChangeId>,
    applied: Applied,
    out: &'a mut Vec<O>,
}

impl<'a, O> Context<'a, O> {
    pub(crate) fn new(
        user_id: &'a str,
        change: Option<ChangeId>,
        applied: Applied,
        out: &'a mut Vec<O>,
    ) -> Self {
        Self {
            user_id,
            change,
            applied,
            out,
        }
    }

    /// The user whose state and records these are.
    pub fn user_id(&self) -> &str {
        self.user_id
    }

    /// In `apply`: the change id of the record being applied. In `flush`: `None`.
    pub fn change_id(&self) -> Option<ChangeId> {
        self.change
    }

    /// The last change applied per stream, including the record being applied.
    pub fn applied(&self) -> Applied {
        self.applied
    }

    /// Emits one read-model upsert. Outputs are written in the batch's transaction, after
    /// the batch; the runtime routes them by `AvroRecord::user_id` and keys them by
    /// `AvroRecord::key`.
    pub fn emit(&mut self, output: O) {
        self.out.push(output);
    }
}

/// A stream processor: per-user state in, records in, versioned read-model upserts out.
///
/// Only `apply` is required. The runtime guarantees, per user: records arrive in change-id
/// order per stream, each change at most once (anything at or below the last applied change
/// id is skipped before `apply`), state survives restarts and rebalances (it is restored
/// from the changelog), and `flush` runs once per user at the end of every batch that
/// touched the user. Outputs must be deterministic functions of the state; versions should
/// derive from change ids (`ChangeId::version`), never from offsets or clocks.
pub trait Processor: Send + Sync + std::fmt::Debug + 'static {
    /// Stable name: names the changelog topic (`changelog.<NAME>.v1`) and the metrics.
    /// Renaming it starts the processor from empty state.
    const NAME: &'static str;
    /// Per-user state, persisted through the changelog (see `state::State`).
    type State: State;
    /// The read-model record this processor emits.
    type Output: AvroRecord + std::fmt::Debug + 'static;

    /// The streams this processor reads. Records of other streams never reach `apply`.
    fn inputs(&self) -> &'static [Stream] {
        &[Stream::Samples]
    }

    /// Applies one record to the user's state. Emit outputs here, or (cheaper when a batch
    /// touches the same rows many times) mark rows dirty and emit them in `flush`. Returning
    /// a `Rejection` sends the record to the dead-letter topic; the state must be unchanged.
    fn apply(
        &self,
        ctx: &mut Context<'_, Self::Output>,
        state: &mut Self::State,
        input: &Input,
    ) -> Result<(), Rejection>;

    /// Called once per user at the end of every batch that touched the user.
    fn flush(&self, _ctx: &mut Context<'_, Self::Output>, _state: &mut Self::State) {}
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
