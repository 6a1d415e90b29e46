//! The relay's configuration: plain data with defaults that work on one machine, read from
//! flags or `PULSELINE_*` variables. Parsing it never opens a socket.

use std::net::SocketAddr;
use std::time::Duration;

use pulseline_service::config::{
    DEFAULT_DATABASE_URL, DEFAULT_KAFKA_BOOTSTRAP, DEFAULT_SCHEMA_REGISTRY_URL, env,
};
use pulseline_service::redact_url;
use serde::{Deserialize, Serialize};

use super::RelayError;
use crate::outbox::DEFAULT_SHARDS;

const DEFAULT_BATCH: u32 = 1000;
const DEFAULT_POLL_MS: u64 = 500;
const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9101";

/// Where the relay reads from and publishes to, and how hard it works.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Postgres holding the outbox (the gateway's database).
    #[arg(long, global = true, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = env::KAFKA_BOOTSTRAP, default_value = DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,
    /// Confluent-compatible schema registry.
    #[arg(long, global = true, env = env::SCHEMA_REGISTRY_URL, default_value = DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,
    /// Prefix of every topic and registry subject (isolates tests and environments).
    #[arg(
        long,
        global = true,
        env = env::TOPIC_PREFIX,
        default_value = ""
    )]
    pub topic_prefix: String,
    /// Number of outbox shards; must equal the gateway's, or a user's rows land in a shard
    /// another relay owns and per-user order is lost.
    #[arg(long, global = true, env = "PULSELINE_RELAY_SHARDS", default_value_t = DEFAULT_SHARDS)]
    pub shards: u16,
    /// Rows claimed, published and deleted per transaction.
    #[arg(long, global = true, env = "PULSELINE_RELAY_BATCH", default_value_t = DEFAULT_BATCH)]
    pub batch: u32,
    /// Fallback poll interval: NOTIFY wakes the relay at once, this catches rows whose
    /// notification was missed (listener reconnecting, rows inserted by hand).
    #[arg(long, global = true, env = "PULSELINE_RELAY_POLL_MS", default_value_t = DEFAULT_POLL_MS)]
    pub poll_ms: u64,
    /// How long a batch waits for its acknowledgements before it is rolled back (its rows
    /// are published again later). The records themselves never expire in the producer.
    #[arg(long, global = true, env = "PULSELINE_RELAY_DELIVERY_TIMEOUT_MS", default_value_t = DEFAULT_DELIVERY_TIMEOUT_MS)]
    pub delivery_timeout_ms: u64,
    /// Where /metrics and /healthz listen (port 0 picks a free port).
    #[arg(long, global = true, env = "PULSELINE_RELAY_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            kafka_bootstrap: DEFAULT_KAFKA_BOOTSTRAP.to_owned(),
            schema_registry_url: DEFAULT_SCHEMA_REGISTRY_URL.to_owned(),
            topic_prefix: String::new(),
            shards: DEFAULT_SHARDS,
            batch: DEFAULT_BATCH,
            poll_ms: DEFAULT_POLL_MS,
            delivery_timeout_ms: DEFAULT_DELIVERY_TIMEOUT_MS,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9101)),
        }
    }
}

impl RelayConfig {
    /// Refuses values that would make the relay misbehave rather than fail.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |what: &str| Err(RelayError::Config(what.to_owned()));
        // Shards are stored as smallint; thousands would only mean thousands of empty passes.
        if self.shards == 0 || self.shards > 4096 {
            return bad("shards must be in 1..=4096");
        }
        if self.batch == 0 || self.batch > 100_000 {
            return bad("batch must be in 1..=100000");
        }
        if self.poll_ms == 0 {
            return bad("poll_ms must be >= 1");
        }
        if self.delivery_timeout_ms < 100 {
            return bad("delivery_timeout_ms must be >= 100");
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// The config as it may be logged: the database password replaced.
    pub fn redacted(&self) -> Self {
        Self {
            database_url: redact_url(&self.database_url),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: RelayConfig,
    }

    #[test]
    fn defaults_agree_between_clap_serde_and_default() {
        let from_clap = Cli::try_parse_from(["relay"]).map(|c| c.config);
        // The environment may set PULSELINE_*; only compare when it does not.
        if std::env::vars().all(|(k, _)| !k.starts_with("PULSELINE_")) {
            assert_eq!(from_clap.ok(), Some(RelayConfig::default()));
        }
        let from_serde: RelayConfig = serde_json::from_str("{}").expect("empty config parses");
        assert_eq!(from_serde, RelayConfig::default());
        assert!(RelayConfig::default().validate().is_ok());
        assert_eq!(
            RelayConfig::default().metrics_addr.to_string(),
            DEFAULT_METRICS_ADDR
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<RelayConfig>(r#"{"shard": 3}"#).is_err());
        let zero = RelayConfig {
            shards: 0,
            ..RelayConfig::default()
        };
        assert!(matches!(zero.validate(), Err(RelayError::Config(_))));
        let huge = RelayConfig {
            batch: 1_000_000,
            ..RelayConfig::default()
        };
        assert!(huge.validate().is_err());
    }
}
