//! The whole pipeline in one process (gateway, relay, stream processors, Postgres sink,
//! query API), on a given database, broker, registry and topic prefix: what `pulseline run`
//! drives, and what end-to-end tests start on a private database and prefix.
//!
//! It only wires the services' own `build` functions together; it never changes how one
//! behaves. Each part runs on its own Tokio runtime, whose threads carry the part's name,
//! so that the CPU each part uses shows (`cpu`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pulseline_ingest_gateway::app::Application as Gateway;
use pulseline_ingest_gateway::config::Config as GatewayConfig;
use pulseline_ingest_gateway::relay::{OutboxRelay, RelayConfig, RelayMetrics};
use pulseline_query_api::app::Application as QueryApi;
use pulseline_query_api::config::Config as QueryConfig;
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_sinks::app::SinkApplication;
use pulseline_sinks::config::SinkConfig;
use pulseline_stream_processors::processors::{ProcessorsConfig, registry};
use pulseline_stream_processors::runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use uuid::Uuid;

use crate::cpu::PART_THREAD_PREFIX;

/// Where the pipeline runs and how its processors are set up.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub database_url: String,
    pub kafka_bootstrap: String,
    pub schema_registry_url: String,
    pub topic_prefix: String,
    /// Port 0 picks a free one.
    pub gateway_addr: SocketAddr,
    pub query_addr: SocketAddr,
    /// The processors' settings; its bootstrap, registry and prefix are replaced by the
    /// ones above.
    pub runtime: RuntimeConfig,
    pub processors: ProcessorsConfig,
    /// The Parquet export the query API's analysts' SQL reads.
    pub export_dir: PathBuf,
}

impl PipelineConfig {
    /// Every service on free ports, default settings.
    pub fn new(
        database_url: &str,
        kafka_bootstrap: &str,
        schema_registry_url: &str,
        topic_prefix: &str,
    ) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            database_url: database_url.to_owned(),
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            schema_registry_url: schema_registry_url.to_owned(),
            topic_prefix: topic_prefix.to_owned(),
            gateway_addr: any_port,
            query_addr: any_port,
            runtime: RuntimeConfig::default(),
            processors: ProcessorsConfig::default(),
            export_dir: PathBuf::from(pulseline_sinks::export::DEFAULT_EXPORT_DIR),
        }
    }
}

/// A running pipeline. The services run on their own runtimes until the process ends; the
/// processors stop with `processors.shutdown()`.
#[derive(Debug)]
pub struct Pipeline {
    pub gateway_url: String,
    pub query_url: String,
    pub relay_metrics: Arc<RelayMetrics>,
    pub relay_metrics_addr: SocketAddr,
    pub processors: RuntimeHandle,
    jwt_secret: String,
    config: PipelineConfig,
}

impl Pipeline {
    /// Starts every service, then waits (up to 90 s) until the processors own partitions,
    /// so that what follows measures the pipeline rather than a consumer-group join.
    pub async fn start(config: PipelineConfig) -> anyhow::Result<Self> {
        let gateway_config = GatewayConfig {
            addr: config.gateway_addr,
            database_url: config.database_url.clone(),
            kafka_bootstrap: config.kafka_bootstrap.clone(),
            ..GatewayConfig::default()
        };
        let jwt_secret = gateway_config.jwt_secret.clone();
        let gateway_url = on_own_runtime("gateway", async move {
            let gateway = Gateway::build(gateway_config)
                .await
                .context("starting the gateway")?;
            let url = format!("http://{}", gateway.local_addr());
            tokio::spawn(gateway.run_until(std::future::pending()));
            Ok(url)
        })
        .await?;

        let relay_config = RelayConfig {
            database_url: config.database_url.clone(),
            kafka_bootstrap: config.kafka_bootstrap.clone(),
            schema_registry_url: config.schema_registry_url.clone(),
            topic_prefix: config.topic_prefix.clone(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..RelayConfig::default()
        };
        let (relay_metrics, relay_metrics_addr) = on_own_runtime("relay", async move {
            let relay = OutboxRelay::build(relay_config)
                .await
                .context("starting the relay")?;
            let metrics = (relay.metrics(), relay.metrics_addr());
            tokio::spawn(relay.run_until(std::future::pending::<()>()));
            Ok(metrics)
        })
        .await?;

        let sink_config = SinkConfig {
            database_url: config.database_url.clone(),
            kafka_bootstrap: config.kafka_bootstrap.clone(),
            schema_registry_url: config.schema_registry_url.clone(),
            topic_prefix: config.topic_prefix.clone(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SinkConfig::default()
        };
        on_own_runtime("sink", async move {
            let sink = SinkApplication::build(sink_config)
                .await
                .context("starting the sink")?;
            tokio::spawn(sink.run_until(std::future::pending::<()>()));
            Ok(())
        })
        .await?;

        let query_config = QueryConfig {
            addr: config.query_addr,
            database_url: config.database_url.clone(),
            export_dir: config.export_dir.clone(),
            ..QueryConfig::default()
        };
        let query_url = on_own_runtime("query-api", async move {
            let query = QueryApi::build(query_config)
                .await
                .context("starting the query API")?;
            let url = format!("http://{}", query.local_addr());
            tokio::spawn(query.run_until(std::future::pending()));
            Ok(url)
        })
        .await?;

        let processors = start_processors(&config).await?;
        Ok(Self {
            gateway_url,
            query_url,
            relay_metrics,
            relay_metrics_addr,
            processors,
            jwt_secret,
            config,
        })
    }

    /// Stops the stream processors and starts them again with other settings (what an
    /// operator does to fix the cause of dead letters, e.g. a larger allowed lateness).
    pub async fn restart_processors(mut self, runtime: RuntimeConfig) -> anyhow::Result<Self> {
        self.processors
            .shutdown()
            .await
            .context("stopping the stream processors")?;
        self.config.runtime = runtime;
        self.processors = start_processors(&self.config).await?;
        Ok(self)
    }

    /// The database, broker, registry and prefix it runs on.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// A user token the gateway and the query API accept (the development secret).
    pub fn token(&self, user: Uuid) -> String {
        issue_hs256_token(&self.jwt_secret, user, Role::User, 24 * 3600)
    }

    /// An analyst's token (analysts' SQL over the export), for an analyst with no data.
    pub fn analyst_token(&self) -> String {
        issue_hs256_token(&self.jwt_secret, Uuid::now_v7(), Role::Analyst, 24 * 3600)
    }
}

/// Runs `start` (which builds a part and spawns it) on a Tokio runtime of the part's own,
/// its threads named after it, and returns what `start` returned. The runtime lives as
/// long as the process, as the parts do.
async fn on_own_runtime<T: Send + 'static>(
    part: &str,
    start: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{PART_THREAD_PREFIX}{part}"))
        .enable_all()
        .build()
        .with_context(|| format!("starting the {part} runtime"))?;
    let started = runtime.spawn(start);
    // Dropping the runtime would stop the part.
    std::mem::forget(runtime);
    started
        .await
        .with_context(|| format!("starting the {part}"))?
}

/// Starts the processors (on their own thread, `processor-<instance>`), then waits (up to
/// 90 s) until they own partitions.
async fn start_processors(config: &PipelineConfig) -> anyhow::Result<RuntimeHandle> {
    let runtime_config = RuntimeConfig {
        kafka_bootstrap: config.kafka_bootstrap.clone(),
        schema_registry_url: config.schema_registry_url.clone(),
        topic_prefix: config.topic_prefix.clone(),
        ..config.runtime.clone()
    };
    let processors = Runtime::new(runtime_config, registry(&config.processors))
        .context("configuring the stream processors")?
        .start();
    let joining = Instant::now();
    while processors.status().assigned().is_empty() {
        ensure!(
            joining.elapsed() < Duration::from_secs(90),
            "the stream processors got no partitions within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(processors)
}
