//! `pulseline-processor`: flags and environment, the metrics endpoint, signals. Runs every
//! registered processor in one runtime until SIGTERM/SIGINT.

use std::net::SocketAddr;

use clap::Parser;
use pulseline_service::config::{self as shared, env};
use pulseline_service::{OpsRouter, shutdown_signal};
use serde_json::json;

use crate::processors::impact::{MetricList, WindowRules};
use crate::processors::{self, ImpactConfig, ProcessorsConfig, SourcePriority};
use crate::runtime::{OffsetReset, Runtime, RuntimeConfig, RuntimeError};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pulseline-processor",
    about = "Runs pulseline's stream processors"
)]
pub struct Cli {
    #[arg(long, env = env::KAFKA_BOOTSTRAP, default_value = shared::DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,
    #[arg(long, env = env::SCHEMA_REGISTRY_URL, default_value = shared::DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,
    #[arg(long, env = env::TOPIC_PREFIX, default_value = "")]
    pub topic_prefix: String,
    /// Stable per instance (e.g. a pod ordinal): the transactional id derives from it.
    #[arg(long, env = "PULSELINE_PROCESSOR_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,
    /// Exactly-once with Kafka transactions; `false` = at-least-once (same read models).
    #[arg(long, env = "PULSELINE_TRANSACTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub transactions: bool,
    #[arg(long, env = "PULSELINE_PROCESSOR_GROUP_ID")]
    pub group_id: Option<String>,
    /// Static group membership (`group.instance.id`): stable per instance; a restart with
    /// the same id gets its partitions back without waiting for the session timeout.
    #[arg(long, env = "PULSELINE_PROCESSOR_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    #[arg(long, env = "PULSELINE_PROCESSOR_MAX_BATCH", default_value_t = 5000)]
    pub max_batch_records: usize,
    /// Backfill rate limit, records per second (unlimited if absent).
    #[arg(long, env = "PULSELINE_PROCESSOR_MAX_RATE")]
    pub max_records_per_second: Option<u32>,
    #[arg(
        long,
        env = "PULSELINE_PROCESSOR_ALLOWED_LATENESS_DAYS",
        default_value_t = 400
    )]
    pub allowed_lateness_days: u32,
    #[arg(
        long,
        env = "PULSELINE_PROCESSOR_OFFSET_RESET",
        value_enum,
        default_value = "earliest"
    )]
    pub auto_offset_reset: OffsetReset,
    /// Device classes by priority: `a,b>c>d` (wearable > phone > other > manual by default).
    #[arg(long, env = "PULSELINE_SOURCE_PRIORITY")]
    pub source_priority: Option<SourcePriority>,
    /// Metrics the impact read models compare: `HEART_RATE,BLOOD_GLUCOSE` (the discrete
    /// quantity metrics by default).
    #[arg(long, env = "PULSELINE_IMPACT_METRICS")]
    pub impact_metrics: Option<MetricList>,
    /// Impact windows per event type, in minutes: `workout=30:180,default=60:120`
    /// (baseline 60, after 120 by default).
    #[arg(long, env = "PULSELINE_IMPACT_WINDOWS")]
    pub impact_windows: Option<WindowRules>,
    #[arg(
        long,
        env = "PULSELINE_PROCESSOR_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// Create the topics of schemas/topics.toml first if they are missing (idempotent).
    #[arg(long, env = env::CREATE_TOPICS, default_value_t = shared::DEFAULT_CREATE_TOPICS, action = clap::ArgAction::Set)]
    pub create_topics: bool,
}

impl Cli {
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            kafka_bootstrap: self.kafka_bootstrap.clone(),
            schema_registry_url: self.schema_registry_url.clone(),
            topic_prefix: self.topic_prefix.clone(),
            instance_id: self.instance_id.clone(),
            group_id: self.group_id.clone(),
            group_instance_id: self.group_instance_id.clone().filter(|id| !id.is_empty()),
            transactions: self.transactions,
            max_batch_records: self.max_batch_records.max(1),
            max_records_per_second: self.max_records_per_second,
            allowed_lateness_days: self.allowed_lateness_days,
            auto_offset_reset: self.auto_offset_reset,
            ..RuntimeConfig::default()
        }
    }

    pub fn processors_config(&self) -> ProcessorsConfig {
        ProcessorsConfig {
            source_priority: self.source_priority.clone().unwrap_or_default(),
            impact: {
                let mut c = ImpactConfig::default();
                if let Some(m) = self.impact_metrics.clone() {
                    c = c.with_metrics(m);
                }
                if let Some(w) = self.impact_windows.clone() {
                    c = c.with_windows(w);
                }
                c
            },
        }
    }
}

/// Runs until a signal (then finishes the current batch and leaves the group) or until the
/// runtime fails.
pub async fn run(cli: Cli) -> Result<(), RuntimeError> {
    let config = cli.runtime_config();
    let processors_config = cli.processors_config();
    tracing::info!(
        config = ?config,
        source_priority = %processors_config.source_priority,
        metrics_addr = %cli.metrics_addr,
        "pulseline-processor configuration"
    );
    if cli.create_topics {
        pulseline_schemas::topics::ensure_all(&config.kafka_bootstrap, &config.topic_prefix)
            .await?;
    }
    let runtime = Runtime::new(config, processors::registry(&processors_config))?;
    let handle = runtime.start();
    let status = handle.shared_status();
    let app: axum::Router = OpsRouter::new(handle.metrics().registry().clone())
        .readiness(move || {
            let running = status.running();
            async move {
                if running {
                    Ok(json!({ "runtime": "running" }))
                } else {
                    Err(json!({ "runtime": "not running" }))
                }
            }
        })
        .build();
    let listener = tokio::net::TcpListener::bind(cli.metrics_addr)
        .await
        .map_err(|e| RuntimeError::Config(format!("binding {}: {e}", cli.metrics_addr)))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let finished = async {
        while !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("stopping after the current batch"),
        _ = finished => {}
    }
    server.abort();
    handle.shutdown().await
}
