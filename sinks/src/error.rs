//! The sinks' one error type. Every variant says whether trying again can help
//! (`is_retryable`): the runner retries those and stops on the rest.

/// What can go wrong running a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A setting the sink refuses to run with, or a sink URL it cannot serve.
    #[error("configuration: {0}")]
    Config(String),
    /// The read store failed (connection lost, statement failed).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The Scylla store failed; `retryable` says whether the same statement can succeed
    /// later (a timeout or an unreachable node) or never will.
    #[error("scylla: {message}")]
    Scylla { message: String, retryable: bool },
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The schema registry, the Avro codec or topic creation failed.
    #[error("schemas: {0}")]
    Schemas(#[from] pulseline_schemas::Error),
    /// The stored offset of a partition is not the one this batch was read from: another
    /// instance (or an earlier attempt whose commit answer was lost) moved it. Nothing of
    /// the batch was written; the consumer must re-read from the stored offsets.
    #[error("offset of {topic}[{partition}] moved under this consumer (expected {expected:?})")]
    OffsetConflict {
        topic: String,
        partition: i32,
        expected: Option<i64>,
    },
    /// Binding the metrics address, or another start-up step.
    #[error("start-up: {0}")]
    Startup(String),
}

impl SinkError {
    /// Whether the same work can succeed later (`Retryable` vs `Fatal`).
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Database(e) => !matches!(
                e,
                sqlx::Error::Configuration(_)
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::TypeNotFound { .. }
            ),
            SinkError::Kafka(_) | SinkError::OffsetConflict { .. } => true,
            SinkError::Scylla { retryable, .. } => *retryable,
            SinkError::Schemas(e) => e.is_retryable(),
            SinkError::Config(_) | SinkError::Migrate(_) | SinkError::Startup(_) => false,
        }
    }
}
