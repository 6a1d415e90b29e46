//! What the relay tests share: a private database and topic prefix per test, record
//! builders, reading every record back from Kafka, and the per-user order check.
//! Needs the local stack (`scripts/stack up`): Postgres, the broker and the registry.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pulseline_ingest_gateway::outbox::{self, OutboxRecord};
use pulseline_ingest_gateway::relay::RelayConfig;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_schemas::{AvroCodec, Operation};
use pulseline_testkit::{Stack, TestDatabase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

pub const SHARDS: u16 = 16;

/// A test's private database and topics.
pub struct Harness {
    pub stack: Stack,
    pub db: TestDatabase,
    pub prefix: String,
    pub pool: PgPool,
}

impl Harness {
    pub async fn new(test: &str) -> Self {
        Self::on(Stack::from_env(), test).await
    }

    /// A harness whose database lives on `stack`'s Postgres server (e.g. a private cluster
    /// the test restarts).
    pub async fn on(stack: Stack, test: &str) -> Self {
        let db = stack.create_database().await;
        let prefix = stack.unique_prefix(test);
        stack.create_topics(&prefix).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&db.url)
            .await
            .expect("connect to the test database");
        pulseline_ingest_gateway::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations");
        Self {
            stack,
            db,
            prefix,
            pool,
        }
    }

    /// The relay config for this test: its database and prefix, a free metrics port.
    pub fn config(&self) -> RelayConfig {
        RelayConfig {
            database_url: self.db.url.clone(),
            kafka_bootstrap: self.stack.kafka_bootstrap.clone(),
            schema_registry_url: self.stack.schema_registry_url.clone(),
            topic_prefix: self.prefix.clone(),
            shards: SHARDS,
            batch: 1000,
            poll_ms: 200,
            delivery_timeout_ms: 30_000,
            metrics_addr: "127.0.0.1:0".parse().expect("socket address"),
        }
    }

    /// The same config as environment variables, for the relay binary.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let c = self.config();
        vec![
            ("PULSELINE_DATABASE_URL", c.database_url),
            ("PULSELINE_KAFKA_BOOTSTRAP", c.kafka_bootstrap),
            ("PULSELINE_SCHEMA_REGISTRY_URL", c.schema_registry_url),
            ("PULSELINE_TOPIC_PREFIX", c.topic_prefix),
            ("PULSELINE_RELAY_SHARDS", c.shards.to_string()),
            ("PULSELINE_RELAY_POLL_MS", c.poll_ms.to_string()),
            ("PULSELINE_RELAY_METRICS_ADDR", c.metrics_addr.to_string()),
        ]
    }

    /// Enqueues `records` of `user` in one committed transaction.
    pub async fn enqueue(&self, user: Uuid, records: &[OutboxRecord]) {
        let mut tx = self.pool.begin().await.expect("begin");
        outbox::enqueue(&mut tx, user, SHARDS, records)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    pub async fn wait_outbox_empty(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let n = self.outbox_len().await;
            if n == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "outbox still holds {n} rows after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn codec(&self) -> AvroCodec {
        AvroCodec::new(&self.stack.schema_registry_url, &self.prefix).expect("codec")
    }

    /// Every record on the samples and events topics, in (topic, partition, offset) order.
    pub async fn read_all(&self) -> Vec<Published> {
        let codec = self.codec();
        let topics = [
            codec.topic_of::<SampleChange>(),
            codec.topic_of::<UserEventChange>(),
        ];
        let bootstrap = self.stack.kafka_bootstrap.clone();
        let raw = tokio::task::spawn_blocking(move || read_raw(&bootstrap, &topics))
            .await
            .expect("reader thread");
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let record = if r.topic.ends_with(pulseline_schemas::topics::SAMPLES) {
                OutboxRecord::Sample(
                    codec
                        .decode::<SampleChange>(&r.payload)
                        .await
                        .expect("decode sample"),
                )
            } else {
                OutboxRecord::Event(
                    codec
                        .decode::<UserEventChange>(&r.payload)
                        .await
                        .expect("decode event"),
                )
            };
            out.push(Published {
                topic: r.topic,
                partition: r.partition,
                key: r.key,
                record,
            });
        }
        out
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub record: OutboxRecord,
}

/// (stream id, user, seq, index): what downstream dedups by.
pub type ChangeKey = (i16, String, i64, i32);

impl Published {
    pub fn change_key(&self) -> ChangeKey {
        change_key(&self.record)
    }
}

pub fn change_key(r: &OutboxRecord) -> ChangeKey {
    let (seq, index) = r.change_id();
    let user = match r {
        OutboxRecord::Sample(s) => s.user_id.clone(),
        OutboxRecord::Event(e) => e.user_id.clone(),
    };
    (r.stream().id(), user, seq, index)
}

struct Raw {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    payload: Vec<u8>,
}

/// Assigns every partition from the beginning (no group join) and reads until nothing new
/// arrives for a while. Not up to the high watermark: tansu 0.6 reports the base offset of
/// a partition's last batch as its high watermark, so the last batch would be missed.
fn read_raw(bootstrap: &str, topics: &[String]) -> Vec<Raw> {
    const QUIET: Duration = Duration::from_secs(2);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("metadata");
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        assert!(!partitions.is_empty(), "topic {topic} has no partitions");
        for p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Joining the partitions takes a moment before the first record arrives.
    let mut quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        assert!(Instant::now() < deadline, "topics kept growing for 120 s");
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        quiet_until = Instant::now() + QUIET;
        out.push(Raw {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: String::from_utf8(msg.key().unwrap_or_default().to_vec()).expect("utf-8 key"),
            payload: msg.payload().unwrap_or_default().to_vec(),
        });
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    out
}

/// Checks guarantee 5 on what was read: every record is keyed by its user, a user's records
/// of a topic share one partition, and the first occurrences of its change ids are in
/// increasing order (duplicates after a crash may repeat older ids; that is allowed).
pub fn assert_per_user_order(published: &[Published]) {
    let mut partition_of: HashMap<(String, String), i32> = HashMap::new();
    let mut last_first: HashMap<(String, String), (i64, i32)> = HashMap::new();
    let mut seen: std::collections::HashSet<ChangeKey> = std::collections::HashSet::new();
    for p in published {
        let key = p.change_key();
        assert_eq!(p.key, key.1, "record keyed by someone else");
        let user_topic = (p.topic.clone(), key.1.clone());
        let part = *partition_of
            .entry(user_topic.clone())
            .or_insert(p.partition);
        assert_eq!(
            part, p.partition,
            "user {} spread over partitions of {}",
            key.1, p.topic
        );
        if seen.insert(key.clone()) {
            let id = (key.2, key.3);
            if let Some(prev) = last_first.insert(user_topic, id) {
                assert!(
                    prev < id,
                    "user {} in {}: change {id:?} first seen after {prev:?}",
                    key.1,
                    p.topic
                );
            }
        }
    }
}

/// Counts per change key.
pub fn occurrences(published: &[Published]) -> BTreeMap<ChangeKey, usize> {
    let mut m = BTreeMap::new();
    for p in published {
        *m.entry(p.change_key()).or_insert(0) += 1;
    }
    m
}

pub fn sample(user: Uuid, seq: i64, index: i32) -> OutboxRecord {
    OutboxRecord::Sample(SampleChange {
        user_id: user.to_string(),
        change_seq: seq,
        change_index: index,
        operation: Operation::Upsert,
        source_id: "watch-1".to_owned(),
        device_type: "apple_watch".to_owned(),
        source_record_id: format!("r-{seq}-{index}"),
        start_at: 1_700_000_000_000_000 + seq * 60_000_000 + i64::from(index) * 1_000_000,
        metric: "heart_rate".to_owned(),
        end_at: Some(1_700_000_000_000_000 + seq * 60_000_000 + i64::from(index) * 1_000_000),
        tz_offset_minutes: 60,
        value: Some(60.0 + (seq % 40) as f64 + f64::from(index) / 10.0),
        unit: Some("count/min".to_owned()),
        category: None,
        metadata_json: None,
        accepted_at: 1_700_000_000_000_000 + seq,
    })
}

pub fn event(user: Uuid, seq: i64, index: i32) -> OutboxRecord {
    OutboxRecord::Event(UserEventChange {
        user_id: user.to_string(),
        change_seq: seq,
        change_index: index,
        operation: Operation::Upsert,
        event_id: format!("e-{seq}-{index}"),
        event_type: "caffeine".to_owned(),
        product_id: Some("espresso".to_owned()),
        start_at: 1_700_000_000_000_000 + seq * 60_000_000,
        end_at: None,
        tz_offset_minutes: 0,
        attributes_json: Some(r#"{"mg":80}"#.to_owned()),
        accepted_at: 1_700_000_000_000_000 + seq,
    })
}
