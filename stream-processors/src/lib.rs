//! Stream processors: the exactly-once runtime (consumer group, per-user state with a
//! compacted changelog, Kafka transactions, dead letters, metrics) and the processors that
//! turn samples and events into read models.
//!
//! - `processor`: the `Processor` trait a read model implements (one required method).
//! - `processors`: the processors and the one registration list (`processors::registry`).
//! - `engine`: the Kafka-free core applying records to per-user state (dedup by change id,
//!   lateness, batches, changelog entries), shared by the runtime and the test harness.
//! - `harness`: drive a processor in memory in tests; `oracle`: brute-force rollups.
//! - `runtime`: the Kafka side (consumer group, restore, transactions, DLQ, metrics).

pub mod cli;
pub mod engine;
pub mod harness;
pub mod oracle;
pub mod processor;
pub mod processors;
pub mod runtime;
pub mod state;

pub use processor::{
    Applied, ChangeId, Context, Flush, Input, KeyOf, Processor, ReadModel, Rejection, Stream,
};
