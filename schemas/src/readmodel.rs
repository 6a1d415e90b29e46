//! What a read model is, declared once and shared by the processors that emit it, the
//! sinks that store it and the query API that serves it: its record and topic (the
//! `AvroRecord` it is), its row key, its tombstone, and the input streams it reflects.
//!
//! The processor runtime stamps every row's `version` and applied sequences (`stamp`) and
//! writes a `ReadModelProgress` record per user after each batch, on the read model's own
//! topic; processors never set either. This module owns those contracts; it never does I/O.

use std::fmt::Debug;
use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::records::AvroRecord;
use crate::topics;

/// An input stream of the pipeline. Both are keyed by user id and co-partitioned, and each
/// has its own per-user ingest sequence (the gateway's `user_stream`), so freshness is
/// per read model and per stream.
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

    /// A short stable name (metrics, changelog tags, API answers).
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

    /// The stream's number in Postgres (`user_stream.stream`, `sink_progress.stream`),
    /// as the gateway assigns it.
    pub fn id(self) -> i16 {
        match self {
            Stream::Samples => 1,
            Stream::Events => 2,
        }
    }
}

/// The sequence of each input stream a read model has applied for one user (0 = none, or
/// a stream the read model does not read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedSeqs {
    pub samples: i64,
    pub events: i64,
}

impl AppliedSeqs {
    pub fn get(&self, stream: Stream) -> i64 {
        match stream {
            Stream::Samples => self.samples,
            Stream::Events => self.events,
        }
    }
}

/// A row's version: the change ids (as `ChangeId::version` numbers, 0 = none) of each input
/// stream applied when the newest change touching the row was applied. Ordered
/// lexicographically, samples first. Along any interleaving of the two streams both parts
/// only grow, so the version grows with every change that touches the row; and a pair
/// names one prefix of each stream, so equal versions carry equal content as long as the
/// processor's state is a function of the applied prefixes (not of their interleaving).
/// A read model of one stream has 0 in the other part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowVersion {
    pub samples: i64,
    pub events: i64,
}

impl RowVersion {
    /// Bits of a version part below the sequence (the change's index in its request).
    pub const INDEX_BITS: u32 = 20;

    /// The sequences the version's change ids belong to (what a row reports as applied).
    pub fn seqs(self) -> AppliedSeqs {
        AppliedSeqs {
            samples: self.samples >> Self::INDEX_BITS,
            events: self.events >> Self::INDEX_BITS,
        }
    }
}

impl std::fmt::Display for RowVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.samples, self.events)
    }
}

/// A read model: versioned rows keyed by `Key`, each belonging to one user.
///
/// Implement it next to the record (this crate); the runtime, the sinks and the query API
/// are generic over it. Equal keys must give equal `AvroRecord::key` strings (the
/// compacted topic's key) and the reverse.
pub trait ReadModel: AvroRecord + Clone + Debug + 'static {
    /// Stable name: `sink_progress.read_model`, metrics, the export's dataset.
    const NAME: &'static str;
    /// The input streams whose sequences the read model reflects (its freshness).
    const STREAMS: &'static [Stream];
    /// A row's identity within its user.
    type Key: Ord + Clone + Debug + Send + Sync + 'static;

    fn row_key(&self) -> Self::Key;
    /// The row that says "this key has no row any more": it keeps its version so a late,
    /// lower version can never resurrect the row.
    fn tombstone(user_id: &str, key: &Self::Key) -> Self;
    fn version(&self) -> RowVersion;
    fn is_deleted(&self) -> bool;
    /// The applied sequences the row was stamped with.
    fn applied(&self) -> AppliedSeqs;
    /// Sets the version and applied sequences (the runtime's job, never a processor's).
    fn stamp(&mut self, version: RowVersion, applied: AppliedSeqs);
}

/// How far a read model has applied one user's streams (see the module doc).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReadModelProgress {
    pub user_id: String,
    pub read_model: String,
    pub samples_seq: i64,
    pub events_seq: i64,
}

impl ReadModelProgress {
    /// The schema text, as committed in `schemas/avro/`.
    pub const SCHEMA_TEXT: &'static str = include_str!("../avro/read_model_progress.avsc");
    /// The schema's full name: the registry subject's suffix, and how a reader of a
    /// read-model topic tells progress records from rows.
    pub const FULL_NAME: &'static str = "io.pulseline.readmodel.v1.ReadModelProgress";

    pub fn new(user_id: &str, read_model: &str, applied: AppliedSeqs) -> Self {
        Self {
            user_id: user_id.to_owned(),
            read_model: read_model.to_owned(),
            samples_seq: applied.samples,
            events_seq: applied.events,
        }
    }

    /// The parsed schema (parsed once; a test proves it parses).
    pub fn schema() -> &'static Schema {
        static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
            Schema::parse_str(ReadModelProgress::SCHEMA_TEXT)
                .expect("embedded schema read_model_progress.avsc parses (tested)")
        });
        &SCHEMA
    }

    /// The compacted topic's key: the bare user id, which no row key equals (row keys
    /// hold `|`), so compaction keeps the latest progress of each user.
    pub fn key(&self) -> &str {
        &self.user_id
    }

    pub fn applied(&self) -> AppliedSeqs {
        AppliedSeqs {
            samples: self.samples_seq,
            events: self.events_seq,
        }
    }
}

/// One record of a read-model topic, as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadModelRecord<M> {
    Row(M),
    Progress(ReadModelProgress),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_schema_parses_and_names_itself() {
        let Schema::Record(r) = ReadModelProgress::schema() else {
            panic!("not a record schema");
        };
        assert_eq!(r.name.fullname(None), ReadModelProgress::FULL_NAME);
    }

    #[test]
    fn stream_ids_are_the_gateways() {
        assert_eq!(Stream::Samples.id(), 1);
        assert_eq!(Stream::Events.id(), 2);
    }
}
