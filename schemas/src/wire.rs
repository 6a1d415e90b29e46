//! Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro body) through a
//! Confluent-compatible schema registry, via `schema_registry_converter`.
//!
//! Writers register their compiled-in schema under the topic's value subject
//! (`<prefixed topic>-value`, TopicNameStrategy) on first use; the registry refuses a
//! schema that breaks the subject's compatibility rule (BACKWARD). Readers decode with the
//! writer's schema, fetched by id, then resolve to their own compiled-in schema, so a
//! reader with a newer schema reads older records (defaults fill new fields).
//!
//! Schema ids stay valid across a restart of an in-memory registry (the local stack's
//! rivven-schema forgets everything and numbers schemas in the order they first arrive;
//! identical text gets one id whatever the subject). Every codec therefore registers all of
//! pulseline's schemas, in the one order of [`crate::records::ALL_SCHEMAS`], before its
//! first registration and again when a record names an id the registry does not know:
//! whichever process comes first after a restart, the registry hands out the same ids as
//! before, so records already written and writers that kept their cached ids stay valid.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Schema, from_value};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::DecodeResult;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;

use crate::Error;
use crate::readmodel::{ReadModel, ReadModelProgress, ReadModelRecord};
use crate::records::{
    AvroRecord, ProductImpactUpsert, RollupUpsert, SampleChange, SessionImpactUpsert,
    SleepNightUpsert, UserEventChange,
};
use crate::topics;

/// Encodes and decodes records for one deployment (registry URL + topic prefix).
/// Cheap to clone; schema ids are cached after the first lookup.
#[derive(Clone, Debug)]
pub struct AvroCodec {
    settings: SrSettings,
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
    topic_prefix: String,
    /// Set once every schema is registered in the canonical order (see the module doc).
    seeded: Arc<tokio::sync::OnceCell<()>>,
}

impl AvroCodec {
    /// A codec for the registry at `registry_url`; parsing the URL opens no connection.
    pub fn new(registry_url: &str, topic_prefix: &str) -> Result<Self, Error> {
        let settings = SrSettings::new_builder(registry_url.to_owned())
            .set_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings.clone())),
            settings,
            topic_prefix: topic_prefix.to_owned(),
            seeded: Arc::default(),
        })
    }

    /// Every schema pulseline writes, under its subject, in the order of `ALL_SCHEMAS`.
    fn canonical_strategies(&self) -> [SubjectNameStrategy; 7] {
        [
            self.strategy::<SampleChange>(),
            self.strategy::<UserEventChange>(),
            self.strategy::<RollupUpsert>(),
            self.strategy::<SleepNightUpsert>(),
            self.strategy::<SessionImpactUpsert>(),
            self.strategy::<ProductImpactUpsert>(),
            self.progress_strategy::<RollupUpsert>(),
        ]
    }

    /// Registers every schema in the canonical order (idempotent: a registry that has them
    /// answers with their ids). One registration at a time, so that the first arrival of
    /// each schema at a fresh registry follows the order, whoever else registers too.
    /// `encoder` caches what it registered: a new one asks the registry again.
    async fn register_all(&self, encoder: &AvroEncoder) -> Result<(), Error> {
        for strategy in self.canonical_strategies() {
            let subject = strategy.get_subject()?;
            encoder.get_schema_and_id(&subject, strategy).await?;
        }
        Ok(())
    }

    /// `register_all`, once per codec (and its clones).
    async fn seed(&self) -> Result<(), Error> {
        self.seeded
            .get_or_try_init(|| self.register_all(&self.encoder))
            .await
            .map(|_| ())
    }

    /// The deployed (prefixed) topic of a record type.
    pub fn topic_of<R: AvroRecord>(&self) -> String {
        topics::prefixed(&self.topic_prefix, R::TOPIC)
    }

    /// The registry subject strategy of `R`'s values: TopicNameStrategy with the
    /// compiled-in schema (registered on first use).
    fn strategy<R: AvroRecord>(&self) -> SubjectNameStrategy {
        SubjectNameStrategy::TopicNameStrategyWithSchema(
            self.topic_of::<R>(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, R::SCHEMA_TEXT.to_owned()),
        )
    }

    /// Encodes `record` for its topic, registering the schema on first use.
    pub async fn encode<R: AvroRecord>(&self, record: &R) -> Result<Vec<u8>, Error> {
        self.seed().await?;
        Ok(self
            .encoder
            .encode_struct(record, &self.strategy::<R>())
            .await?)
    }

    /// A synchronous encoder for `R`, for writers of many records: the schema id is looked
    /// up (registering the schema on first use) once, here, with the same registry errors
    /// as [`Self::encode`]; [`RecordEncoder::encode`] then does no lookup, lock or schema
    /// copy per record. Its bytes equal `encode`'s.
    pub async fn encoder_for<R: AvroRecord>(&self) -> Result<RecordEncoder<R>, Error> {
        RecordEncoder::new(self.schema_id::<R>().await?, R::schema())
    }

    /// A synchronous encoder of progress records for read model `M`'s topic, like
    /// [`Self::encoder_for`]; its bytes equal [`Self::encode_progress`]'s.
    pub async fn progress_encoder_for<M: ReadModel>(
        &self,
    ) -> Result<RecordEncoder<ReadModelProgress>, Error> {
        let id = self.id_under(self.progress_strategy::<M>()).await?;
        RecordEncoder::new(id, ReadModelProgress::schema())
    }

    /// A synchronous decoder for records written with `R`'s own compiled-in schema (the
    /// schema id is looked up once, here, like [`Self::encoder_for`]); records written with
    /// another version of the schema still go through [`Self::decode`].
    pub async fn decoder_for<R: AvroRecord>(&self) -> Result<RecordDecoder<R>, Error> {
        RecordDecoder::new(self.schema_id::<R>().await?)
    }

    /// The registry id of `R`'s compiled-in schema under its subject (registered on first
    /// use).
    async fn schema_id<R: AvroRecord>(&self) -> Result<u32, Error> {
        self.id_under(self.strategy::<R>()).await
    }

    /// The registry id of the schema a strategy supplies (registered on first use).
    async fn id_under(&self, strategy: SubjectNameStrategy) -> Result<u32, Error> {
        self.seed().await?;
        let subject = strategy.get_subject()?;
        Ok(self.encoder.get_schema_and_id(&subject, strategy).await?.id)
    }

    /// Decodes a record written by any registered (compatible) version of `R`'s schema.
    pub async fn decode<R: AvroRecord>(&self, bytes: &[u8]) -> Result<R, Error> {
        let decoded = self.decode_value(bytes).await?;
        let value = decoded.value.resolve(R::schema())?;
        Ok(from_value::<R>(&value)?)
    }

    /// Encodes a progress record for the read model `M`'s topic. It is registered under
    /// `<topic>-<record full name>` (TopicRecordNameStrategy): a second record type on the
    /// topic, beside `M`'s rows, so it keeps its place in the partition's order.
    pub async fn encode_progress<M: ReadModel>(
        &self,
        progress: &ReadModelProgress,
    ) -> Result<Vec<u8>, Error> {
        self.seed().await?;
        let strategy = self.progress_strategy::<M>();
        Ok(self.encoder.encode_struct(progress, &strategy).await?)
    }

    fn progress_strategy<M: ReadModel>(&self) -> SubjectNameStrategy {
        SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
            self.topic_of::<M>(),
            SuppliedSchema::new(
                Some(ReadModelProgress::FULL_NAME.to_owned()),
                SchemaType::Avro,
                ReadModelProgress::SCHEMA_TEXT.to_owned(),
            ),
        )
    }

    /// The record with its writer's schema. An id the registry does not know (it
    /// restarted empty) is registered again in the canonical order, then looked up once
    /// more; an id that is still unknown is an error.
    async fn decode_value(&self, bytes: &[u8]) -> Result<DecodeResult, Error> {
        match self.decoder.decode(Some(bytes)).await {
            Err(e) if !e.retriable && bytes.first() == Some(&0) && bytes.len() >= 5 => {
                self.register_all(&AvroEncoder::new(self.settings.clone()))
                    .await?;
                self.decoder.remove_errors_from_cache();
                Ok(self.decoder.decode(Some(bytes)).await?)
            }
            other => Ok(other?),
        }
    }

    /// Decodes one record of the read model `M`'s topic: a row, or a progress record (told
    /// apart by the writer schema's name).
    pub async fn decode_read_model<M: ReadModel>(
        &self,
        bytes: &[u8],
    ) -> Result<ReadModelRecord<M>, Error> {
        let decoded = self.decode_value(bytes).await?;
        let is_progress = decoded
            .name
            .as_ref()
            .is_some_and(|n| n.fullname(None) == ReadModelProgress::FULL_NAME);
        if is_progress {
            let value = decoded.value.resolve(ReadModelProgress::schema())?;
            Ok(ReadModelRecord::Progress(from_value(&value)?))
        } else {
            let value = decoded.value.resolve(M::schema())?;
            Ok(ReadModelRecord::Row(from_value(&value)?))
        }
    }
}

/// Encodes records of one type with a schema id resolved in advance
/// ([`AvroCodec::encoder_for`]): the Confluent wire format, i.e. magic byte 0, the schema id
/// as 4 big-endian bytes, then the Avro datum written with `R`'s compiled-in schema (the
/// schema registered under that id).
pub struct RecordEncoder<R> {
    schema_id: u32,
    writer: GenericDatumWriter<'static>,
    _record: PhantomData<fn(&R)>,
}

impl<R> std::fmt::Debug for RecordEncoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordEncoder")
            .field("schema_id", &self.schema_id)
            .finish_non_exhaustive()
    }
}

impl<R: Serialize> RecordEncoder<R> {
    fn new(schema_id: u32, schema: &'static Schema) -> Result<Self, Error> {
        Ok(Self {
            schema_id,
            writer: GenericDatumWriter::builder(schema).build()?,
            _record: PhantomData,
        })
    }

    /// The registry id the records are tagged with.
    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// `record` in the wire format (the same bytes as [`AvroCodec::encode`]).
    pub fn encode(&self, record: &R) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::with_capacity(256);
        self.encode_into(record, &mut bytes)?;
        Ok(bytes)
    }

    /// Appends `record` in the wire format to `out` (left as it was on error).
    pub fn encode_into(&self, record: &R, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.push(0);
        out.extend_from_slice(&self.schema_id.to_be_bytes());
        if let Err(e) = self.writer.write_ser(out, record) {
            out.truncate(start);
            return Err(e.into());
        }
        Ok(())
    }
}

/// Decodes records of one type that were written with its own schema straight into the
/// type ([`AvroCodec::decoder_for`]): no registry lookup, lock, intermediate value tree or
/// schema resolution per record. That is every record of a deployment whose writers and
/// readers run one version. Through the value tree it cost the processor about 40 % of
/// its CPU per record.
pub struct RecordDecoder<R> {
    schema_id: u32,
    reader: GenericDatumReader<'static>,
    _record: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for RecordDecoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder")
            .field("schema_id", &self.schema_id)
            .finish_non_exhaustive()
    }
}

impl<R: AvroRecord> RecordDecoder<R> {
    fn new(schema_id: u32) -> Result<Self, Error> {
        Ok(Self {
            schema_id,
            reader: GenericDatumReader::builder(R::schema()).build()?,
            _record: PhantomData,
        })
    }

    /// The record, when `bytes` are in the wire format with `R`'s own schema id; `Ok(None)`
    /// for anything else (another schema version, or no wire-format header), which
    /// [`AvroCodec::decode`] reads or refuses. A body that does not decode is an error.
    pub fn decode(&self, bytes: &[u8]) -> Result<Option<R>, Error> {
        match bytes {
            [0, id @ ..] if id.len() >= 4 && id[..4] == self.schema_id.to_be_bytes() => {
                let mut body = &id[4..];
                Ok(Some(self.reader.read_deser(&mut body)?))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Operation;
    use crate::records::{SampleChange, UserEventChange};
    use pulseline_testkit::Stack;

    fn sample(i: i64) -> SampleChange {
        SampleChange {
            user_id: "7c0e5a4e-1d2b-4c3a-9f00-000000000001".to_owned(),
            change_seq: i,
            change_index: 3,
            operation: if i % 2 == 0 {
                Operation::Upsert
            } else {
                Operation::Delete
            },
            source_id: "apple_watch-1".to_owned(),
            device_type: "apple_watch".to_owned(),
            source_record_id: format!("r{i}"),
            start_at: 1_714_000_000_000_000 + i,
            metric: "HEART_RATE".to_owned(),
            end_at: (i % 3 != 0).then_some(1_714_000_060_000_000),
            tz_offset_minutes: -300,
            value: (i % 2 == 0).then_some(72.5),
            unit: (i % 2 == 0).then(|| "count/min".to_owned()),
            category: (i % 5 == 0).then(|| "deep".to_owned()),
            metadata_json: (i % 4 == 0).then(|| r#"{"a":1}"#.to_owned()),
            accepted_at: 1_714_000_100_000_000,
        }
    }

    fn event(i: i64) -> UserEventChange {
        UserEventChange {
            user_id: "7c0e5a4e-1d2b-4c3a-9f00-000000000002".to_owned(),
            change_seq: i,
            change_index: 0,
            operation: Operation::Upsert,
            event_id: format!("e{i}"),
            event_type: "caffeine".to_owned(),
            product_id: (i % 2 == 0).then(|| "espresso".to_owned()),
            start_at: 1_714_000_000_000_000,
            end_at: None,
            tz_offset_minutes: 60,
            attributes_json: Some(r#"{"mg":80}"#.to_owned()),
            accepted_at: 1_714_000_100_000_000,
        }
    }

    #[tokio::test]
    async fn record_encoder_bytes_equal_encode_and_decode() {
        let stack = Stack::from_env();
        let codec = AvroCodec::new(
            &stack.schema_registry_url,
            &stack.unique_prefix("wire-fast"),
        )
        .expect("codec");
        let samples = codec
            .encoder_for::<SampleChange>()
            .await
            .expect("sample schema registers");
        let events = codec
            .encoder_for::<UserEventChange>()
            .await
            .expect("event schema registers");
        for i in 0..12 {
            let s = sample(i);
            let fast = samples.encode(&s).expect("fast encode");
            assert_eq!(fast, codec.encode(&s).await.expect("encode"), "sample {i}");
            assert_eq!(
                codec.decode::<SampleChange>(&fast).await.expect("decode"),
                s
            );
            let e = event(i);
            let mut buf = vec![9];
            events.encode_into(&e, &mut buf).expect("fast encode");
            assert_eq!(
                buf[1..],
                codec.encode(&e).await.expect("encode")[..],
                "event {i}"
            );
        }
        assert_ne!(samples.schema_id(), events.schema_id());

        let rollups = codec
            .encoder_for::<RollupUpsert>()
            .await
            .expect("rollup schema registers");
        let progress = codec
            .progress_encoder_for::<RollupUpsert>()
            .await
            .expect("progress schema registers");
        let p = ReadModelProgress::new(
            "u",
            "rollups",
            crate::AppliedSeqs {
                samples: 7,
                events: 0,
            },
        );
        let fast = progress.encode(&p).expect("fast encode");
        assert_eq!(
            fast,
            codec
                .encode_progress::<RollupUpsert>(&p)
                .await
                .expect("encode")
        );
        assert_ne!(progress.schema_id(), rollups.schema_id());
        match codec
            .decode_read_model::<RollupUpsert>(&fast)
            .await
            .expect("decode")
        {
            ReadModelRecord::Progress(read) => assert_eq!(read, p),
            ReadModelRecord::Row(_) => panic!("a progress record read as a row"),
        }
    }

    #[tokio::test]
    async fn record_decoder_reads_its_own_schema_and_leaves_the_rest_to_decode() {
        let stack = Stack::from_env();
        let codec = AvroCodec::new(
            &stack.schema_registry_url,
            &stack.unique_prefix("wire-read"),
        )
        .expect("codec");
        let samples = codec
            .decoder_for::<SampleChange>()
            .await
            .expect("sample schema registers");
        let events = codec
            .decoder_for::<UserEventChange>()
            .await
            .expect("event schema registers");
        for i in 0..12 {
            let (s, e) = (sample(i), event(i));
            let s_bytes = codec.encode(&s).await.expect("encode");
            let e_bytes = codec.encode(&e).await.expect("encode");
            assert_eq!(samples.decode(&s_bytes).expect("decodes"), Some(s));
            assert_eq!(events.decode(&e_bytes).expect("decodes"), Some(e));
            // Another schema's id: not this decoder's to read.
            assert_eq!(samples.decode(&e_bytes).expect("no error"), None);
            assert_eq!(events.decode(&s_bytes).expect("no error"), None);
        }
        for not_wire in [&b""[..], &[0, 0, 0][..], &[1, 0, 0, 0, 1, 2][..], b"{}"] {
            assert_eq!(samples.decode(not_wire).expect("no error"), None);
        }
        // Its own header with a cut body is an error, not a record and not a pass.
        let bytes = codec.encode(&sample(2)).await.expect("encode");
        let err = samples
            .decode(&bytes[..bytes.len() - 3])
            .expect_err("cut body");
        assert!(!err.is_retryable(), "{err}");
    }

    #[test]
    fn codecs_register_every_schema_in_the_order_of_all_schemas() {
        let codec = AvroCodec::new("http://127.0.0.1:1", "x.").expect("codec");
        let texts: Vec<String> = codec
            .canonical_strategies()
            .into_iter()
            .map(|s| match s {
                SubjectNameStrategy::TopicNameStrategyWithSchema(_, _, s)
                | SubjectNameStrategy::TopicRecordNameStrategyWithSchema(_, s) => s.schema,
                other => panic!("unexpected strategy {other:?}"),
            })
            .collect();
        let all: Vec<&str> = crate::records::ALL_SCHEMAS
            .iter()
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(texts, all);
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_retryable_error() {
        let codec = AvroCodec::new("http://127.0.0.1:1", "x").expect("codec");
        let err = codec
            .encoder_for::<SampleChange>()
            .await
            .expect_err("nothing listens there");
        assert!(err.is_retryable(), "{err}");
    }
}
