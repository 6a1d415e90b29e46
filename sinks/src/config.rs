//! The sink's configuration: one struct, read from flags or `PULSELINE_*` variables, with
//! defaults that work on one machine. Parsing it never opens a socket.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Parser};
use pulseline_service::config::{
    DEFAULT_CREATE_TOPICS, DEFAULT_DATABASE_URL, DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_SCHEMA_REGISTRY_URL, env,
};
use pulseline_service::redact_url;

use crate::error::SinkError;

const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9102";
const DEFAULT_BATCH_MAX_RECORDS: usize = 1000;
const DEFAULT_BATCH_LINGER_MS: u64 = 20;
const DEFAULT_DB_POOL_SIZE: u32 = 4;
/// The group ids' base after the topic prefix; the prefix keeps tests' groups apart.
const GROUP_SUFFIX: &str = "pulseline-sink";

/// Everything the sink needs to run.
#[derive(Clone, Parser)]
#[command(
    name = "pulseline-sink",
    about = "pulseline read-model sink: rollups topic -> read store"
)]
pub struct SinkConfig {
    /// The Postgres read store (and the URL used when `read_store` is `postgres`); a
    /// `scylla://` URL here also works.
    #[arg(long, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Postgres or Scylla (`PULSELINE_READ_STORE`, `PULSELINE_SCYLLA_*`).
    #[command(flatten)]
    pub store: crate::scylla::ReadStoreSettings,

    /// Kafka bootstrap servers.
    #[arg(long, env = env::KAFKA_BOOTSTRAP, default_value = DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,

    /// Confluent-compatible schema registry.
    #[arg(long, env = env::SCHEMA_REGISTRY_URL, default_value = DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,

    /// Prefix of every topic, registry subject and (by default) the group id.
    #[arg(long, env = env::TOPIC_PREFIX, default_value = "")]
    pub topic_prefix: String,

    /// Base of the consumer group ids: each read model's runner is its own group,
    /// `<base>.<read model>` (also the `consumer` of its stored offsets). Default base:
    /// `<prefix>pulseline-sink`. Changing it starts over from the beginning.
    #[arg(long, env = "PULSELINE_SINK_GROUP_ID")]
    pub group_id: Option<String>,

    /// Static group membership (`group.instance.id`; each read model's consumer appends its
    /// topic): stable per sink instance. A restarted sink with the same id gets its
    /// partitions back at once instead of after the broker evicts the dead member (noida-db
    /// never does). A static member does not leave the group on stop.
    #[arg(long, env = "PULSELINE_SINK_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Most records per transaction.
    #[arg(long, env = "PULSELINE_SINK_BATCH_MAX_RECORDS", default_value_t = DEFAULT_BATCH_MAX_RECORDS)]
    pub batch_max_records: usize,

    /// How long the first record of a batch waits for more before the batch commits:
    /// the freshness cost of batching.
    #[arg(long, env = "PULSELINE_SINK_BATCH_LINGER_MS", default_value_t = DEFAULT_BATCH_LINGER_MS)]
    pub batch_linger_ms: u64,

    /// Read-store connections.
    #[arg(long, env = env::DB_POOL_SIZE, default_value_t = DEFAULT_DB_POOL_SIZE)]
    pub db_pool_size: u32,

    /// Where /metrics, /healthz and /readyz listen (port 0 picks a free port).
    #[arg(long, env = "PULSELINE_SINK_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Create the topics at start-up if they are missing.
    #[arg(long, env = env::CREATE_TOPICS, default_value_t = DEFAULT_CREATE_TOPICS, action = ArgAction::Set)]
    pub create_topics: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            store: Default::default(),
            kafka_bootstrap: DEFAULT_KAFKA_BOOTSTRAP.to_owned(),
            schema_registry_url: DEFAULT_SCHEMA_REGISTRY_URL.to_owned(),
            topic_prefix: String::new(),
            group_id: None,
            group_instance_id: None,
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            db_pool_size: DEFAULT_DB_POOL_SIZE,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9102)),
            create_topics: DEFAULT_CREATE_TOPICS,
        }
    }
}

impl SinkConfig {
    /// Refuses values that would make the sink misbehave rather than fail.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |what: &str| Err(SinkError::Config(what.to_owned()));
        if self.batch_max_records == 0 || self.batch_max_records > 100_000 {
            return bad("batch_max_records must be in 1..=100000");
        }
        if self.db_pool_size == 0 {
            return bad("db_pool_size must be > 0");
        }
        if self.group_id.as_deref().is_some_and(str::is_empty) {
            return bad("group_id must not be empty");
        }
        if self.group_instance_id.as_deref().is_some_and(str::is_empty) {
            return bad("group_instance_id must not be empty");
        }
        Ok(())
    }

    /// The base of every runner's group id (see `group_id`).
    pub fn group_base(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}{GROUP_SUFFIX}", self.topic_prefix))
    }

    /// The consumer group of one read model's runner. One group per read model, not one
    /// per process: runners on different topics in one group rebalance each other (and
    /// the embedded broker does not assign mixed subscriptions correctly).
    pub fn group_id(&self, read_model: &str) -> String {
        format!("{}.{read_model}", self.group_base())
    }

    /// The URL `crate::open` gets: the chosen read store's.
    pub fn store_url(&self) -> String {
        self.store.url(&self.database_url)
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }
}

/// Printed at start: every setting, the database password redacted.
impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("store", &self.store)
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("schema_registry_url", &self.schema_registry_url)
            .field("topic_prefix", &self.topic_prefix)
            .field("group_base", &self.group_base())
            .field("group_instance_id", &self.group_instance_id)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_linger_ms", &self.batch_linger_ms)
            .field("db_pool_size", &self.db_pool_size)
            .field("metrics_addr", &self.metrics_addr)
            .field("create_topics", &self.create_topics)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let parsed = SinkConfig::parse_from(["pulseline-sink"]);
        let d = SinkConfig::default();
        assert_eq!(parsed.batch_max_records, d.batch_max_records);
        assert_eq!(parsed.batch_linger_ms, d.batch_linger_ms);
        assert!(d.validate().is_ok());
        assert_eq!(d.group_id("rollups"), "pulseline-sink.rollups");
        let prefixed = SinkConfig {
            topic_prefix: "t-x.".into(),
            ..SinkConfig::default()
        };
        assert_eq!(prefixed.group_id("rollups"), "t-x.pulseline-sink.rollups");
        let off = SinkConfig::parse_from(["pulseline-sink", "--create-topics", "false"]);
        assert!(!off.create_topics);
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = SinkConfig {
            database_url: "postgres://app:hunter2@db:5432/pulseline".into(),
            ..SinkConfig::default()
        };
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("postgres://app:***@db:5432/pulseline"));
    }

    #[test]
    fn bad_values_are_refused() {
        let c = SinkConfig {
            batch_max_records: 0,
            ..SinkConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
