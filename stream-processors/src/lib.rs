//! Stream processors: the exactly-once runtime (consumer group, per-user state with a
//! compacted changelog, Kafka transactions, dead letters, metrics) and the processors that
//! turn samples and events into read models.
//!
//! - `processor`: the `Processor` trait a read model implements (one required method).
//! - `processors`: the processors and the one registration list (`processors::registry`).
//! - `engine`: the Kafka-free core applying records to per-user state (dedup by change id,
//!   lateness, batches, changelog entries), shared by the runtime and the test harness.
//! - `harness`, `oracle`, `testing` (feature `testing`): drive a processor in memory, the
//!   brute-force rollups, a change generator and the one oracle check every processor uses.
//! - `runtime`: the Kafka side (consumer group, restore, transactions, DLQ, metrics).

pub mod cli;
pub mod engine;
#[cfg(any(test, feature = "testing"))]
pub mod harness;
#[cfg(any(test, feature = "testing"))]
pub mod oracle;
pub mod processor;
pub mod processors;
pub mod runtime;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use processor::{
    Applied, ChangeId, Context, Flush, Input, KeyOf, Processor, ReadModel, Rejection, Stream,
};
