//! What the sink tests share: a private database (and topic prefix) per test, record
//! builders, a producer that writes rollup upserts in Kafka transactions (committed or
//! aborted), and readers of the sink's tables.
//! Needs the local stack (`scripts/stack up`): Postgres, the broker and the registry.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pulseline_schemas::AvroCodec;
use pulseline_schemas::records::{Period, RollupUpsert};
use pulseline_sinks::{Batch, Item, PartitionSpan, SinkConfig, StoredReadModel};
use pulseline_testkit::{Stack, TestDatabase};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::PgPool;
use uuid::Uuid;

pub const PARTITIONS: i32 = 6;

/// A test's private database (with the sink's tables) and, for broker tests, topics.
pub struct Harness {
    pub stack: Stack,
    pub db: TestDatabase,
    pub prefix: String,
    pub pool: PgPool,
}

impl Harness {
    /// A database with the sink's tables; no topics.
    pub async fn database_only() -> Self {
        Self::database_on(Stack::from_env()).await
    }

    /// A database with the sink's tables on `stack`'s Postgres server (e.g. a private
    /// cluster the test restarts); no topics.
    pub async fn database_on(stack: Stack) -> Self {
        let db = stack.create_database().await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&db.url)
            .await
            .expect("connect to the test database");
        pulseline_sinks::postgres::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations");
        Self {
            stack,
            db,
            prefix: String::new(),
            pool,
        }
    }

    /// A database plus this test's own topics.
    pub async fn with_topics(test: &str) -> Self {
        Self::with_topics_on(Stack::from_env(), test).await
    }

    /// `with_topics`, with the database on `stack`'s Postgres server.
    pub async fn with_topics_on(stack: Stack, test: &str) -> Self {
        let mut h = Self::database_on(stack).await;
        h.prefix = h.stack.unique_prefix(test);
        h.stack.create_topics(&h.prefix).await;
        h
    }

    /// The sink config for this test: its database and prefix, a free metrics port, small
    /// batches so that a run has many transactions.
    pub fn config(&self, batch_max_records: usize) -> SinkConfig {
        SinkConfig {
            database_url: self.db.url.clone(),
            store: Default::default(),
            kafka_bootstrap: self.stack.kafka_bootstrap.clone(),
            schema_registry_url: self.stack.schema_registry_url.clone(),
            topic_prefix: self.prefix.clone(),
            group_id: None,
            group_instance_id: None,
            batch_max_records,
            batch_linger_ms: 5,
            db_pool_size: 2,
            metrics_addr: "127.0.0.1:0".parse().expect("address"),
            create_topics: false,
        }
    }

    pub fn topic(&self) -> String {
        format!("{}readmodel.rollups.v1", self.prefix)
    }

    pub fn group(&self) -> String {
        self.config(1).group_id("rollups")
    }

    /// Stored next offsets of this test's consumer.
    pub async fn stored_offsets(&self) -> BTreeMap<i32, i64> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM sink_offset WHERE consumer = $1 AND topic = $2",
        )
        .bind(self.group())
        .bind(self.topic())
        .fetch_all(&self.pool)
        .await
        .expect("offsets");
        rows.into_iter().collect()
    }

    /// Waits until the stored offsets equal `expected`, or panics with what they are.
    pub async fn wait_for_offsets(&self, expected: &BTreeMap<i32, i64>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let stored = self.stored_offsets().await;
            if &stored == expected {
                return;
            }
            if Instant::now() > deadline {
                panic!("offsets did not reach {expected:?} within {within:?}: {stored:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some offset is stored (the sink has committed at least one batch).
    pub async fn wait_for_progress(&self, within: Duration) -> BTreeMap<i32, i64> {
        let deadline = Instant::now() + within;
        loop {
            let stored = self.stored_offsets().await;
            if !stored.is_empty() {
                return stored;
            }
            assert!(
                Instant::now() < deadline,
                "no batch committed within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every rollup row as `Observed`, by key.
    pub async fn rows(&self) -> BTreeMap<Key, Observed> {
        let rows: Vec<StoredRow> = sqlx::query_as(
            "SELECT user_id, metric, period, \
                        CASE period WHEN 'DAY' THEN to_char(bucket_start, 'YYYY-MM-DD') \
                             ELSE to_char(bucket_start, 'YYYY-MM-DD\"T\"HH24:MI:SS') END, \
                        version, deleted, value, count, sources FROM rollup",
        )
        .fetch_all(&self.pool)
        .await
        .expect("rows");
        rows.into_iter()
            .map(|(u, m, p, b, version, deleted, value, count, sources)| {
                (
                    (u.to_string(), m, p, b),
                    Observed {
                        version,
                        deleted,
                        value,
                        count,
                        sources,
                    },
                )
            })
            .collect()
    }

    /// Each user's applied samples sequence for the rollups.
    pub async fn progress(&self) -> BTreeMap<String, i64> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT user_id, applied_seq FROM sink_progress WHERE read_model = 'rollups' AND stream = 1",
        )
        .fetch_all(&self.pool)
        .await
        .expect("progress");
        rows.into_iter().map(|(u, s)| (u.to_string(), s)).collect()
    }
}

/// A `rollup` row as `rows()` selects it.
type StoredRow = (
    Uuid,
    String,
    String,
    String,
    i64,
    bool,
    Option<f64>,
    i64,
    Vec<String>,
);

/// (user, metric, PERIOD, bucketStart as on the topic).
pub type Key = (String, String, String, String);

/// A row as stored, in the terms a test compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub version: i64,
    pub deleted: bool,
    pub value: Option<f64>,
    pub count: i64,
    pub sources: Vec<String>,
}

pub fn period_name(p: Period) -> &'static str {
    match p {
        Period::Day => "DAY",
        Period::Hour => "HOUR",
    }
}

/// The record a deterministic processor emits for (key, version): a replay, a duplicate or
/// the leftover of an aborted transaction carries exactly the same content. Every 7th
/// version is a deletion.
pub fn upsert(
    user: Uuid,
    metric: &str,
    period: Period,
    bucket: &str,
    version: i64,
) -> RollupUpsert {
    let deleted = version % 7 == 0;
    RollupUpsert {
        user_id: user.to_string(),
        metric: metric.to_owned(),
        period,
        bucket_start: bucket.to_owned(),
        version,
        deleted,
        value: (!deleted).then_some(version as f64 * 1.5),
        min: (!deleted).then_some(1.0),
        max: (!deleted).then_some(version as f64 * 2.0),
        count: if deleted { 0 } else { version },
        sources: if deleted {
            vec![]
        } else {
            vec![format!("watch-{}", version % 3), "phone".to_owned()]
        },
        applied_seq: version,
    }
}

/// What the table must hold after `records` were applied in any order, any number of times.
pub fn expected_rows(records: &[RollupUpsert]) -> BTreeMap<Key, Observed> {
    let mut newest: BTreeMap<Key, &RollupUpsert> = BTreeMap::new();
    for r in records {
        let key = key_of(r);
        let e = newest.entry(key).or_insert(r);
        if r.version > e.version {
            *e = r;
        }
    }
    newest
        .into_iter()
        .map(|(k, r)| {
            (
                k,
                Observed {
                    version: r.version,
                    deleted: r.deleted,
                    value: r.value,
                    count: r.count,
                    sources: r.sources.clone(),
                },
            )
        })
        .collect()
}

pub fn expected_progress(records: &[RollupUpsert]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in records {
        let e = m.entry(r.user_id.clone()).or_insert(r.applied_seq);
        *e = (*e).max(r.applied_seq);
    }
    m
}

pub fn key_of(r: &RollupUpsert) -> Key {
    (
        r.user_id.clone(),
        r.metric.clone(),
        period_name(r.period).to_owned(),
        r.bucket_start.clone(),
    )
}

/// Every record of a user goes to one partition, as the processor does.
pub fn partition_of(user: &str) -> i32 {
    let sum: u32 = user.bytes().map(u32::from).sum();
    (sum % PARTITIONS as u32) as i32
}

/// Writes records to the rollups topic in Kafka transactions.
pub struct RollupProducer {
    producer: FutureProducer,
    codec: AvroCodec,
    topic: String,
    /// Highest offset written per partition (committed or aborted: tansu shows both).
    pub last_offsets: BTreeMap<i32, i64>,
}

impl RollupProducer {
    pub async fn new(h: &Harness) -> Self {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &h.stack.kafka_bootstrap)
            .set(
                "transactional.id",
                format!("{}test-producer-{}", h.prefix, Uuid::new_v4()),
            )
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init transactions");
        Self {
            producer,
            codec: AvroCodec::new(&h.stack.schema_registry_url, &h.prefix).expect("codec"),
            topic: h.topic(),
            last_offsets: BTreeMap::new(),
        }
    }

    /// Sends `records` (each to its user's partition) in one transaction; commits or aborts.
    pub async fn transaction(&mut self, records: &[RollupUpsert], commit: bool) {
        let mut payloads = Vec::with_capacity(records.len());
        for r in records {
            payloads.push((
                partition_of(&r.user_id),
                key_string(r),
                self.codec.encode(r).await.expect("encode"),
            ));
        }
        self.raw_transaction(&payloads, commit).await;
    }

    /// Sends raw payloads (for undecodable records) in one transaction.
    pub async fn raw_transaction(&mut self, payloads: &[(i32, String, Vec<u8>)], commit: bool) {
        self.producer.begin_transaction().expect("begin");
        let sends = payloads.iter().map(|(partition, key, payload)| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .partition(*partition)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            let delivery = result.map_err(|(e, _)| e).expect("delivered");
            let last = self.last_offsets.entry(delivery.partition).or_insert(-1);
            *last = (*last).max(delivery.offset);
        }
        if commit {
            self.producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit");
        } else {
            self.producer
                .abort_transaction(Duration::from_secs(30))
                .expect("abort");
        }
    }

    /// The next offsets a sink that read everything must have stored.
    pub fn expected_offsets(&self) -> BTreeMap<i32, i64> {
        self.last_offsets
            .iter()
            .map(|(&p, &o)| (p, o + 1))
            .collect()
    }
}

fn key_string(r: &RollupUpsert) -> String {
    let (u, m, p, b) = key_of(r);
    format!("{u}|{m}|{p}|{b}")
}

/// One batch of `records` (all valid) read from partition 0, from the stored offset
/// `expected` up to `next_offset`.
pub fn batch<M: StoredReadModel>(
    records: &[M],
    expected: Option<i64>,
    next_offset: i64,
) -> Batch<M> {
    Batch {
        items: records
            .iter()
            .cloned()
            .map(|r| Item::Row(pulseline_sinks::StoredRow::parse(r).expect("valid record")))
            .collect(),
        spans: vec![PartitionSpan {
            partition: 0,
            expected,
            next_offset,
        }],
    }
}
