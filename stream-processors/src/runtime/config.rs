//! The runtime's configuration: plain data with working defaults; building one never opens
//! a connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a partition without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// From the beginning of the retained input: a new processor backfills history.
    Earliest,
    /// Only new records (a processor that must not see history).
    Latest,
}

impl OffsetReset {
    pub(crate) fn as_config(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub kafka_bootstrap: String,
    pub schema_registry_url: String,
    /// Prefix of every topic (and of the default group and transactional ids).
    pub topic_prefix: String,
    /// Stable id of this instance (e.g. the pod ordinal): the transactional id derives from
    /// it, so a restarted instance fences its predecessor and aborts its open transaction.
    pub instance_id: String,
    /// Consumer group; default `<prefix>pulseline-processors`.
    pub group_id: Option<String>,
    /// Static membership (`group.instance.id`, KIP-345): an instance restarted with the same
    /// id takes its partitions back at once instead of waiting for the broker to evict its
    /// dead predecessor after the session timeout (a broker that never evicts, like noida-db,
    /// would otherwise stall the group), and a successor with the same id fences a paused
    /// predecessor's group membership. A static member does not leave the group when it
    /// stops: its partitions wait for it (or for the session timeout), so give each
    /// instance a stable id (e.g. the pod ordinal). `None`: dynamic membership.
    pub group_instance_id: Option<String>,
    /// Exactly-once (Kafka transactions). `false`: at-least-once, offsets committed after
    /// the outputs are acknowledged; read models are the same thanks to change ids.
    pub transactions: bool,
    /// Most records per batch (= per transaction).
    pub max_batch_records: usize,
    /// How long a batch waits for more records once it has one.
    pub batch_linger_ms: u64,
    /// Broker-side transaction timeout: a transaction left open by a dead instance is
    /// aborted after this, so it cannot block read_committed readers for longer.
    pub transaction_timeout_ms: u64,
    /// Records older than the user's event-time watermark minus this go to the dead-letter
    /// topic (`TOO_LATE`). Default 400 days: the gateway's acceptance window.
    pub allowed_lateness_days: u32,
    /// Backfill rate limit (records per second over all partitions); `None`: unlimited.
    pub max_records_per_second: Option<u32>,
    pub auto_offset_reset: OffsetReset,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Longest a changelog restore may take before the runtime gives up (and retries).
    pub restore_timeout_ms: u64,
    /// How often lag/backfill progress is measured and logged.
    pub progress_interval_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kafka_bootstrap: "127.0.0.1:29092".into(),
            schema_registry_url: "http://127.0.0.1:18081".into(),
            topic_prefix: String::new(),
            instance_id: "0".into(),
            group_id: None,
            group_instance_id: None,
            transactions: true,
            max_batch_records: 5_000,
            batch_linger_ms: 20,
            transaction_timeout_ms: 30_000,
            allowed_lateness_days: 400,
            max_records_per_second: None,
            auto_offset_reset: OffsetReset::Earliest,
            session_timeout_ms: 6_000,
            heartbeat_interval_ms: 500,
            restore_timeout_ms: 120_000,
            progress_interval_ms: 10_000,
        }
    }
}

impl RuntimeConfig {
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}pulseline-processors", self.topic_prefix))
    }

    pub fn transactional_id(&self) -> String {
        format!(
            "{}pulseline-processor-{}",
            self.topic_prefix, self.instance_id
        )
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }
}
