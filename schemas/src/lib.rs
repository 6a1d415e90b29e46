//! The one source of truth for pulseline's data: the metric catalog, the Avro schemas of
//! every topic with their Rust types, the Confluent wire format, and the topic definitions.
//!
//! Everything that crosses a process boundary is defined here; services never declare
//! their own copy of a record or a topic.

pub mod catalog;
pub mod dead_letter;
pub mod kafka;
pub mod readmodel;
pub mod records;
pub mod topics;
pub mod wire;

pub use catalog::{Aggregation, Catalog, CatalogError, MetricDef, ValueKind};
pub use readmodel::{
    AppliedSeqs, ReadModel, ReadModelProgress, ReadModelRecord, RowVersion, Stream,
};
pub use records::{AvroRecord, Operation};
pub use wire::AvroCodec;

/// Errors of the data layer outside the catalog (which has its own, API-facing codes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("schema registry: {0}")]
    Registry(#[from] schema_registry_converter::error::SRCError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("could not create topic {name}: {code}")]
    TopicCreate {
        name: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
    #[error("invalid topic definitions: {0}")]
    TopicConfig(String),
}

impl Error {
    /// Whether trying again later can help (the registry or broker was unreachable),
    /// as opposed to a record or schema that will never encode.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry(e) => e.retriable,
            Error::Kafka(_) | Error::TopicCreate { .. } => true,
            Error::Avro(_) | Error::TopicConfig(_) => false,
        }
    }
}
