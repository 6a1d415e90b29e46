//! The relay's one error type, with a hint whether trying again can help.

use rdkafka::error::KafkaError;

use crate::outbox::OutboxError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay config: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Some records of a batch were not acknowledged; the whole batch was rolled back.
    #[error("{failed} of {total} deliveries failed, first: {first}")]
    Delivery {
        failed: usize,
        total: usize,
        first: KafkaError,
    },
    /// Acknowledgements did not arrive in time (broker slow or down); the records stay
    /// queued in the producer and the rows are published again later.
    #[error("{pending} records not acknowledged within the delivery timeout")]
    DeliveryTimeout { pending: usize },
    /// The registry or broker could not be reached (or refused for a reason that may pass).
    #[error("schema registry or topics: {0}")]
    Schema(pulseline_schemas::Error),
    /// The registry refuses every record of a topic (e.g. an incompatible schema): a
    /// deployment problem, not a poison row, so nothing is dead-lettered for it.
    #[error("schema of {topic} refused by the registry: {source}")]
    SchemaRefused {
        topic: String,
        source: pulseline_schemas::Error,
    },
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
}

impl From<pulseline_schemas::Error> for RelayError {
    fn from(e: pulseline_schemas::Error) -> Self {
        RelayError::Schema(e)
    }
}

impl RelayError {
    /// Whether the relay should back off and try again (rows stay in the outbox) rather
    /// than stop and wait for an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Database(_)
            | RelayError::Kafka(_)
            | RelayError::Delivery { .. }
            | RelayError::DeliveryTimeout { .. } => true,
            RelayError::Outbox(OutboxError::Database(_)) => true,
            RelayError::Outbox(_) => false,
            RelayError::Schema(e) => e.is_retryable(),
            RelayError::Config(_)
            | RelayError::Migrate(_)
            | RelayError::SchemaRefused { .. }
            | RelayError::Io(_) => false,
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Config(_) => "config",
            RelayError::Database(_) | RelayError::Outbox(OutboxError::Database(_)) => "database",
            RelayError::Outbox(_) => "outbox",
            RelayError::Migrate(_) => "migrate",
            RelayError::Kafka(_) => "kafka",
            RelayError::Delivery { .. } => "delivery",
            RelayError::DeliveryTimeout { .. } => "delivery_timeout",
            RelayError::Schema(_) => "schema",
            RelayError::SchemaRefused { .. } => "schema_refused",
            RelayError::Io(_) => "io",
        }
    }

    /// The message without anything that could quote a record's content (Avro and JSON
    /// errors may echo values, which are PHI): safe for logs.
    pub fn log_safe(&self) -> String {
        match self {
            RelayError::Outbox(OutboxError::Payload(_)) => {
                "outbox payload does not decode".to_owned()
            }
            RelayError::Schema(pulseline_schemas::Error::Avro(_)) => {
                "avro encoding failed".to_owned()
            }
            RelayError::SchemaRefused {
                topic,
                source: pulseline_schemas::Error::Avro(_),
            } => {
                format!("schema of {topic} refused (avro)")
            }
            // A registry error's cause may be a serialisation error quoting the record;
            // network causes (the retriable ones) are safe and useful.
            RelayError::Schema(pulseline_schemas::Error::Registry(e)) if !e.retriable => {
                format!("schema registry: {}", e.error)
            }
            RelayError::SchemaRefused {
                topic,
                source: pulseline_schemas::Error::Registry(e),
            } => {
                format!("schema of {topic} refused by the registry: {}", e.error)
            }
            other => other.to_string(),
        }
    }
}
