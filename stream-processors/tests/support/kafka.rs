//! Talking to the local stack's broker in tests: produce changes as the relay does (key =
//! user id, murmur2 partitioner), read a read-model topic back and fold it as a
//! version-guarded sink would, and wait until it equals the oracle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pulseline_schemas::records::{RollupUpsert, SampleChange};
use pulseline_schemas::{AvroCodec, AvroRecord, ReadModelRecord, topics};
use pulseline_stream_processors::harness::fold_read_model;
use pulseline_stream_processors::runtime::RuntimeConfig;
use pulseline_testkit::Stack;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::oracle;

/// Key, value and headers of one record.
pub type RawRecord = (Vec<u8>, Option<Vec<u8>>, Vec<(String, String)>);

pub struct Env {
    pub stack: Stack,
    pub prefix: String,
    pub codec: AvroCodec,
    producer: FutureProducer,
}

impl Env {
    pub async fn new(test: &str) -> Self {
        Self::on(test, Stack::from_env()).await
    }

    /// The same on a given stack (e.g. one whose broker is noida-db).
    pub async fn on(test: &str, stack: Stack) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let prefix = stack.unique_prefix(test);
        stack.create_topics(&prefix).await;
        let codec = AvroCodec::new(&stack.schema_registry_url, &prefix).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Self {
            stack,
            prefix,
            codec,
            producer,
        }
    }

    pub fn config(&self, instance: &str) -> RuntimeConfig {
        RuntimeConfig {
            kafka_bootstrap: self.stack.kafka_bootstrap.clone(),
            schema_registry_url: self.stack.schema_registry_url.clone(),
            topic_prefix: self.prefix.clone(),
            instance_id: instance.to_owned(),
            max_batch_records: 200,
            progress_interval_ms: 2_000,
            ..RuntimeConfig::default()
        }
    }

    pub fn topic(&self, name: &str) -> String {
        topics::prefixed(&self.prefix, name)
    }

    /// Publishes changes in order, keyed by user, as the relay does.
    pub async fn produce(&self, changes: &[SampleChange]) {
        let topic = self.codec.topic_of::<SampleChange>();
        let mut encoded = Vec::with_capacity(changes.len());
        for c in changes {
            encoded.push((c.user_id.clone(), self.codec.encode(c).await.unwrap()));
        }
        // Enqueue everything, then wait: the idempotent producer keeps per-partition order.
        let sends: Vec<_> = encoded
            .iter()
            .map(|(user, bytes)| {
                self.producer.send(
                    FutureRecord::to(&topic).key(user.as_bytes()).payload(bytes),
                    Duration::from_secs(10),
                )
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }

    /// Publishes inputs of both streams in order, each on its own topic, keyed by user.
    pub async fn produce_inputs(&self, inputs: &[pulseline_stream_processors::Input]) {
        use pulseline_schemas::records::UserEventChange;
        use pulseline_stream_processors::Input;
        let mut encoded = Vec::with_capacity(inputs.len());
        for i in inputs {
            let (topic, bytes) = match i {
                Input::Sample(s) => (
                    self.codec.topic_of::<SampleChange>(),
                    self.codec.encode(s).await.unwrap(),
                ),
                Input::Event(e) => (
                    self.codec.topic_of::<UserEventChange>(),
                    self.codec.encode(e).await.unwrap(),
                ),
            };
            encoded.push((topic, i.user_id().to_owned(), bytes));
        }
        let sends: Vec<_> = encoded
            .iter()
            .map(|(topic, user, bytes)| {
                self.producer.send(
                    FutureRecord::to(topic).key(user.as_bytes()).payload(bytes),
                    Duration::from_secs(10),
                )
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }

    /// Read model `M` as a version-guarded sink holds it, from its topic.
    pub async fn read_model<M: pulseline_schemas::ReadModel>(&self) -> BTreeMap<String, M> {
        let topic = self.codec.topic_of::<M>();
        let env = self.clone_for_blocking();
        let raw = tokio::task::spawn_blocking(move || env.read_all(&topic))
            .await
            .unwrap();
        let mut rows = Vec::with_capacity(raw.len());
        for (_, payload, _) in raw {
            if let ReadModelRecord::Row(row) = self
                .codec
                .decode_read_model::<M>(&payload.unwrap())
                .await
                .unwrap()
            {
                rows.push(row);
            }
        }
        fold_read_model(&rows)
    }

    /// Publishes raw bytes (poison) keyed by `user`.
    pub async fn produce_raw(&self, user: &str, bytes: &[u8]) {
        let topic = self.codec.topic_of::<SampleChange>();
        self.producer
            .send(
                FutureRecord::to(&topic).key(user.as_bytes()).payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Every record of a topic from the beginning to its current end (read_committed).
    pub fn read_all(&self, topic: &str) -> Vec<RawRecord> {
        self.read_all_as(topic, "read_committed")
    }

    /// The same with the given isolation level. noida-db keeps listing an aborted
    /// transaction in later fetch responses, so a read_committed reader whose reading spans
    /// several responses may skip committed records after an abort; a version-guarded fold
    /// (what the sink does) reads uncommitted.
    pub fn read_all_as(&self, topic: &str, isolation: &str) -> Vec<RawRecord> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.kafka_bootstrap)
            .set(
                "group.id",
                format!("{}reader-{}", self.prefix, uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut remaining = std::collections::BTreeSet::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
                remaining.insert(p);
            }
        }
        let mut out = Vec::new();
        if remaining.is_empty() {
            return out;
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_owned(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        m.key().unwrap_or_default().to_vec(),
                        m.payload().map(<[u8]>::to_vec),
                        headers,
                    ));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    remaining.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    }

    /// Every record on the rollups topic (rows and progress), in topic order per partition.
    pub async fn rollup_records(&self) -> Vec<ReadModelRecord<RollupUpsert>> {
        self.rollup_records_as("read_committed").await
    }

    async fn rollup_records_as(
        &self,
        isolation: &'static str,
    ) -> Vec<ReadModelRecord<RollupUpsert>> {
        let topic = self.codec.topic_of::<RollupUpsert>();
        let env = self.clone_for_blocking();
        let raw = tokio::task::spawn_blocking(move || env.read_all_as(&topic, isolation))
            .await
            .unwrap();
        let mut records = Vec::with_capacity(raw.len());
        for (key, payload, _) in raw {
            let record = self
                .codec
                .decode_read_model::<RollupUpsert>(&payload.unwrap())
                .await
                .unwrap();
            let expected_key = match &record {
                ReadModelRecord::Row(row) => row.key(),
                ReadModelRecord::Progress(p) => p.key().to_owned(),
            };
            assert_eq!(key, expected_key.into_bytes(), "read-model key");
            records.push(record);
        }
        records
    }

    /// Every rollup row on the read-model topic, in topic order per partition.
    pub async fn rollup_rows(&self) -> Vec<RollupUpsert> {
        rows_of(self.rollup_records().await)
    }

    /// The rollups read model as a version-guarded sink holds it (reading uncommitted
    /// records, as the sink does).
    pub async fn rollups(&self) -> BTreeMap<String, RollupUpsert> {
        fold_read_model(&rows_of(self.rollup_records_as("read_uncommitted").await))
    }

    pub async fn dead_letters(&self) -> Vec<BTreeMap<String, String>> {
        let topic = self.topic(topics::DEAD_LETTER);
        let env = self.clone_for_blocking();
        let raw = tokio::task::spawn_blocking(move || env.read_all(&topic))
            .await
            .unwrap();
        raw.into_iter()
            .map(|(_, _, h)| h.into_iter().collect())
            .collect()
    }

    fn clone_for_blocking(&self) -> Env {
        Env {
            stack: self.stack.clone(),
            prefix: self.prefix.clone(),
            codec: self.codec.clone(),
            producer: self.producer.clone(),
        }
    }

    /// Waits until the rollups read model equals the oracle of `changes`; panics with the
    /// differences after `timeout`.
    pub async fn assert_converges(&self, changes: &[SampleChange], timeout: Duration) {
        let expected = oracle::rollups(changes);
        assert!(!expected.is_empty());
        let deadline = Instant::now() + timeout;
        loop {
            let actual = super::rows(&self.rollups().await);
            let problems = oracle::diff(&actual, &expected);
            if problems.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let rows = self.rollup_rows().await;
                for p in problems.iter().take(3) {
                    let key = p
                        .trim_start_matches("missing ")
                        .trim_start_matches("unexpected ");
                    let key = key.split(": ").next().unwrap_or_default();
                    for r in rows.iter().filter(|r| r.key() == key) {
                        eprintln!(
                            "  {key} v={} seq={} deleted={} value={:?} sources={:?}",
                            r.version >> 20,
                            r.applied_seq,
                            r.deleted,
                            r.value,
                            r.sources
                        );
                    }
                }
                panic!(
                    "read model differs from the oracle ({} rows expected, {} differences):\n{}",
                    expected.len(),
                    problems.len(),
                    problems
                        .iter()
                        .take(20)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Waits until `cond` holds (polling), or panics with `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows among read-model records (progress markers left out).
fn rows_of(records: Vec<ReadModelRecord<RollupUpsert>>) -> Vec<RollupUpsert> {
    records
        .into_iter()
        .filter_map(|r| match r {
            ReadModelRecord::Row(row) => Some(row),
            ReadModelRecord::Progress(_) => None,
        })
        .collect()
}
