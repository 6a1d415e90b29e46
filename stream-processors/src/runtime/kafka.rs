//! Kafka plumbing of the runtime: client settings, the contexts that record rebalances and
//! failed deliveries, the read-model partitioner, and the changelog topics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::config::RuntimeConfig;
use super::error::RuntimeError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Kafka's default partitioner hash (murmur2, as the Java client and librdkafka's
/// `murmur2_random` compute it): the relay partitions inputs by user id with it, and the
/// runtime partitions read models by user id with it, so one user's rows stay in one
/// partition, in order.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a user's records on a topic with `partitions` partitions.
pub fn user_partition(user_id: &str, partitions: i32) -> i32 {
    (murmur2(user_id.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// A rebalance as the main loop sees it (recorded during `poll`, handled between batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Consumer context: records rebalances for the main loop. Callbacks run inside `poll`,
/// which the loop only calls between transactions, so nothing is in flight when they run.
#[derive(Debug, Default)]
pub(crate) struct GroupContext {
    events: Mutex<Vec<RebalanceEvent>>,
}

impl GroupContext {
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    pub fn has_events(&self) -> bool {
        self.events.lock().map(|e| !e.is_empty()).unwrap_or(false)
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect::<Vec<_>>()
        };
        let event = match rebalance {
            Rebalance::Assign(tpl) => RebalanceEvent::Assigned(list(tpl)),
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoked(list(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

/// Producer context: counts deliveries that failed since the last `take_failures`.
#[derive(Debug, Default)]
pub(crate) struct DeliveryContext {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl DeliveryContext {
    pub fn take_failures(&self) -> Option<(u64, String)> {
        let failed = self.failed.swap(0, Ordering::SeqCst);
        let first = self
            .first
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_default();
        (failed > 0).then_some((failed, first))
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

pub(crate) fn consumer_config(cfg: &RuntimeConfig) -> ClientConfig {
    let mut c = pulseline_schemas::kafka::client_config();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap)
        .set("group.id", cfg.group_id())
        .set(
            "client.id",
            format!("pulseline-processor-{}", cfg.instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", cfg.auto_offset_reset.as_config())
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            cfg.heartbeat_interval_ms.to_string(),
        )
        // Eager range assignment: equal partition numbers of co-partitioned input topics
        // (samples, events) go to the same instance, which the per-user join needs.
        .set("partition.assignment.strategy", "range");
    if let Some(id) = &cfg.group_instance_id {
        c.set("group.instance.id", id);
    }
    c
}

pub(crate) fn producer_config(cfg: &RuntimeConfig) -> ClientConfig {
    let mut c = pulseline_schemas::kafka::client_config();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap)
        .set(
            "client.id",
            format!("pulseline-processor-{}", cfg.instance_id),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", cfg.transaction_timeout_ms.to_string());
    if cfg.transactions {
        c.set("transactional.id", cfg.transactional_id()).set(
            "transaction.timeout.ms",
            cfg.transaction_timeout_ms.to_string(),
        );
    }
    c
}

/// Context of the readers that read partitions to their end: end-of-partition is how they
/// know they are done, not an error worth logging.
#[derive(Debug, Default)]
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
            tracing::error!(error = %error, reason, "changelog reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer outside the group that reads assigned partitions to their end (restore).
pub(crate) fn reader_config(cfg: &RuntimeConfig) -> ClientConfig {
    let mut c = pulseline_schemas::kafka::client_config();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap)
        .set("group.id", format!("{}-restore", cfg.group_id()))
        .set(
            "client.id",
            format!("pulseline-processor-{}-restore", cfg.instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Every record, aborted ones included: the restore keeps committed batches itself
        // (`restore`), and a read_committed reader loses committed records on noida-db,
        // which keeps listing an aborted transaction in later fetch responses (librdkafka
        // then skips the producer's later records: STACK.md).
        .set("isolation.level", "read_uncommitted")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    c
}

/// The number of partitions of a topic (it must exist).
pub(crate) fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<i32, RuntimeError> {
    let md = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let count = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if count == 0 {
        return Err(RuntimeError::Config(format!(
            "topic {topic} does not exist (create the topics first: `scripts/stack up` or topics::ensure_all)"
        )));
    }
    Ok(count)
}

/// Creates a processor's changelog topic (compacted, co-partitioned with the inputs) if it
/// does not exist. The runtime owns these internal topics, as Kafka Streams does.
pub(crate) async fn ensure_changelog(
    cfg: &RuntimeConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), RuntimeError> {
    let admin: AdminClient<DefaultClientContext> = pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", &cfg.kafka_bootstrap)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "-1");
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(RuntimeError::Config(format!(
                    "cannot create changelog topic {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // From Apache Kafka's UtilsTest.testMurmur2.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(
                murmur2(data),
                *expected,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        for p in [1, 6, 7] {
            let part = user_partition("0b6e2c8e-4c5f-4a7e-9b1d-1f2e3d4c5b6a", p);
            assert!((0..p).contains(&part));
        }
    }
}
