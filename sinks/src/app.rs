//! The sink process: built from a `SinkConfig` (opens the store, migrates, creates the
//! topics, binds the metrics address), then run until stopped. Tests build it with port 0
//! and a private database and topic prefix.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pulseline_schemas::AvroCodec;
use pulseline_schemas::topics;
use pulseline_service::{OpsRouter, shutdown_signal};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::SinkConfig;
use crate::error::SinkError;
use crate::runner::{ReadModelRunner, RunnerFactory, RunnerSettings};
use crate::sink::Sink;
use crate::telemetry::SinkTelemetry;

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// A built sink, ready to run.
#[derive(Debug)]
pub struct SinkApplication {
    runners: Vec<Arc<dyn ReadModelRunner>>,
    telemetry: SinkTelemetry,
    sink: Arc<dyn Sink>,
    listener: TcpListener,
    metrics_addr: SocketAddr,
}

impl SinkApplication {
    pub async fn build(config: SinkConfig) -> Result<Self, SinkError> {
        config.validate()?;
        let store = crate::open(&config.store_url(), config.db_pool_size).await?;
        if config.create_topics {
            topics::ensure_all(&config.kafka_bootstrap, &config.topic_prefix).await?;
        }
        let codec = AvroCodec::new(&config.schema_registry_url, &config.topic_prefix)?;
        let telemetry = SinkTelemetry::new()
            .map_err(|e| SinkError::Startup(format!("metrics registry: {e}")))?;
        if let crate::Store::Scylla(scylla) = &store {
            scylla
                .metrics()
                .register(telemetry.registry())
                .map_err(|e| SinkError::Startup(format!("metrics registry: {e}")))?;
        }
        let factory = RunnerFactory {
            settings: RunnerSettings {
                kafka_bootstrap: config.kafka_bootstrap.clone(),
                group_id: config.group_base(),
                group_instance_id: config.group_instance_id.clone(),
                topic: String::new(),
                dead_letter_topic: topics::prefixed(&config.topic_prefix, topics::DEAD_LETTER),
                batch_max_records: config.batch_max_records,
                batch_linger: config.batch_linger(),
            },
            topic_prefix: config.topic_prefix.clone(),
            codec,
            telemetry: telemetry.clone(),
        };
        let runners = crate::read_model_runners(&store, &factory)?;
        let sink = store.sink();
        let listener = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|e| SinkError::Startup(format!("binding {}: {e}", config.metrics_addr)))?;
        let metrics_addr = listener
            .local_addr()
            .map_err(|e| SinkError::Startup(format!("local address: {e}")))?;
        Ok(Self {
            runners,
            telemetry,
            sink,
            listener,
            metrics_addr,
        })
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The runner's counters (rows applied, stale skipped, records consumed ...).
    pub fn telemetry(&self) -> SinkTelemetry {
        self.telemetry.clone()
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> Result<(), SinkError> {
        self.run_until(shutdown_signal()).await
    }

    /// Consumes until `shutdown` completes; serves /metrics, /healthz and /readyz meanwhile.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SinkError> {
        let sink = self.sink.clone();
        let router: axum::Router = OpsRouter::new(self.telemetry.registry().clone())
            .readiness(move || {
                let sink = sink.clone();
                async move {
                    match tokio::time::timeout(READINESS_TIMEOUT, sink.ping()).await {
                        Ok(Ok(())) => Ok(json!({ "read_store": "ok" })),
                        Ok(Err(e)) => Err(json!({ "read_store": e.to_string() })),
                        Err(_) => Err(json!({ "read_store": "timed out" })),
                    }
                }
            })
            .build();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, router).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(metrics_addr = %self.metrics_addr, engine = self.sink.engine(), "sink running");
        // Every read model's runner, until the one shutdown; the first failure ends all.
        let shutdown = shutdown.boxed().shared();
        let result = futures::future::try_join_all(
            self.runners.iter().map(|r| r.run(shutdown.clone().boxed())),
        )
        .await
        .map(|_| ());
        server.abort();
        result
    }
}
