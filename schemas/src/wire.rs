//! Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro body) through a
//! Confluent-compatible schema registry, via `schema_registry_converter`.
//!
//! Writers register their compiled-in schema under the topic's value subject
//! (`<prefixed topic>-value`, TopicNameStrategy) on first use; the registry refuses a
//! schema that breaks the subject's compatibility rule (BACKWARD). Readers decode with the
//! writer's schema, fetched by id, then resolve to their own compiled-in schema, so a
//! reader with a newer schema reads older records (defaults fill new fields).

use std::time::Duration;

use apache_avro::from_value;
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::Error;
use crate::records::AvroRecord;
use crate::topics;

/// Encodes and decodes records for one deployment (registry URL + topic prefix).
/// Cheap to clone; schema ids are cached after the first lookup.
#[derive(Clone, Debug)]
pub struct AvroCodec {
    encoder: EasyAvroEncoder,
    decoder: EasyAvroDecoder,
    topic_prefix: String,
}

impl AvroCodec {
    /// A codec for the registry at `registry_url`; parsing the URL opens no connection.
    pub fn new(registry_url: &str, topic_prefix: &str) -> Result<Self, Error> {
        let settings = SrSettings::new_builder(registry_url.to_owned())
            .set_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            encoder: EasyAvroEncoder::new(settings.clone()),
            decoder: EasyAvroDecoder::new(settings),
            topic_prefix: topic_prefix.to_owned(),
        })
    }

    /// The deployed (prefixed) topic of a record type.
    pub fn topic_of<R: AvroRecord>(&self) -> String {
        topics::prefixed(&self.topic_prefix, R::TOPIC)
    }

    /// Encodes `record` for its topic, registering the schema on first use.
    pub async fn encode<R: AvroRecord>(&self, record: &R) -> Result<Vec<u8>, Error> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            self.topic_of::<R>(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, R::SCHEMA_TEXT.to_owned()),
        );
        Ok(self.encoder.encode_struct(record, &strategy).await?)
    }

    /// Decodes a record written by any registered (compatible) version of `R`'s schema.
    pub async fn decode<R: AvroRecord>(&self, bytes: &[u8]) -> Result<R, Error> {
        let decoded = self.decoder.decode(Some(bytes)).await?;
        let value = decoded.value.resolve(R::schema())?;
        Ok(from_value::<R>(&value)?)
    }
}
