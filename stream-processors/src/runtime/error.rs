//! The runtime's one error type, with whether retrying (abort, reload, rewind) can help.

use rdkafka::error::KafkaError;

use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("schema registry or avro: {0}")]
    Schema(#[from] pulseline_schemas::Error),
    #[error("state of {processor} cannot be encoded or restored: {source}")]
    State {
        processor: &'static str,
        #[source]
        source: StateError,
    },
    #[error("configuration: {0}")]
    Config(String),
    /// The consumer hit a fatal error: with static membership, another consumer with the
    /// same `group.instance.id` took this one's place (a successor fenced this zombie).
    #[error("consumer fenced or failed fatally: {0}")]
    ConsumerFatal(String),
    #[error("restoring {topic} did not reach the end within the restore timeout")]
    RestoreTimeout { topic: String },
    #[error("{failed} records were not acknowledged: {first}")]
    Delivery { failed: u64, first: String },
    #[error("processor {processor} panicked on {topic}/{partition}@{offset}")]
    Panic {
        processor: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("record from an unassigned partition {topic}/{partition}")]
    Unassigned { topic: String, partition: i32 },
    #[error("injected failure (test)")]
    Injected,
}

impl RuntimeError {
    /// Whether this instance must stop: another instance took over its transactional id
    /// (fenced), the configuration cannot work, or the changelog cannot be read (a bug or
    /// an incompatible state format: retrying would loop). Everything else is retried
    /// after aborting the transaction and reloading state.
    pub fn is_fatal(&self) -> bool {
        match self {
            RuntimeError::Kafka(KafkaError::Transaction(e)) => e.is_fatal(),
            RuntimeError::Config(_)
            | RuntimeError::State { .. }
            | RuntimeError::ConsumerFatal(_) => true,
            _ => false,
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Kafka(_) => "kafka",
            RuntimeError::Schema(_) => "schema",
            RuntimeError::State { .. } => "state",
            RuntimeError::Config(_) => "config",
            RuntimeError::ConsumerFatal(_) => "consumer_fatal",
            RuntimeError::RestoreTimeout { .. } => "restore_timeout",
            RuntimeError::Delivery { .. } => "delivery",
            RuntimeError::Panic { .. } => "panic",
            RuntimeError::Unassigned { .. } => "unassigned",
            RuntimeError::Injected => "injected",
        }
    }
}
