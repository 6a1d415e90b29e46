//! `pulseline-processor`: flags and environment, the metrics endpoint, signals. Runs every
//! registered processor in one runtime until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;

use crate::processors::{self, ProcessorsConfig, SourcePriority};
use crate::runtime::{OffsetReset, Runtime, RuntimeConfig, RuntimeError, RuntimeMetrics, Status};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pulseline-processor",
    about = "Runs pulseline's stream processors"
)]
pub struct Cli {
    #[arg(
        long,
        env = "PULSELINE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka_bootstrap: String,
    #[arg(
        long,
        env = "PULSELINE_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    pub schema_registry_url: String,
    #[arg(long, env = "PULSELINE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Stable per instance (e.g. a pod ordinal): the transactional id derives from it.
    #[arg(long, env = "PULSELINE_PROCESSOR_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,
    /// Exactly-once with Kafka transactions; `false` = at-least-once (same read models).
    #[arg(long, env = "PULSELINE_TRANSACTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub transactions: bool,
    #[arg(long, env = "PULSELINE_PROCESSOR_GROUP_ID")]
    pub group_id: Option<String>,
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
    #[arg(
        long,
        env = "PULSELINE_PROCESSOR_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// Create the topics of schemas/topics.toml first (the local stack does this already).
    #[arg(long, env = "PULSELINE_CREATE_TOPICS", default_value_t = false, action = clap::ArgAction::Set)]
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
        }
    }
}

pub fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .init();
}

#[derive(Clone)]
struct Observed {
    metrics: RuntimeMetrics,
    status: Arc<Status>,
}

async fn metrics(State(o): State<Observed>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        o.metrics.render(),
    )
}

async fn ready(State(o): State<Observed>) -> StatusCode {
    if o.status.running() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .with_state(Observed {
            metrics: handle.metrics().clone(),
            status: handle.shared_status(),
        });
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
        _ = terminated() => tracing::info!("signal received; stopping after the current batch"),
        _ = finished => {}
    }
    server.abort();
    handle.shutdown().await
}
