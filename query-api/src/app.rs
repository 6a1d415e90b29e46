//! The query API application: built from a `Config` (connects, migrates the read-model
//! tables, binds), then run. Tests build it with port 0 and a private database.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use pulseline_service::auth::JwtVerifier;
use pulseline_service::shutdown_signal;
use pulseline_sinks::ScyllaSink;
use pulseline_sinks::scylla::{ReadStoreKind, ScyllaTarget};
use tokio::net::TcpListener;

use crate::analytics::SqlEngine;
use crate::api::{self, AppState, Shared};
use crate::config::Config;
use crate::error::QueryError;
use crate::params::RangeLimits;
use crate::store::ReadStore;
use crate::telemetry::Telemetry;

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Validates the config, connects to Postgres (and Scylla when it is the read store),
    /// runs the sink's migrations (if configured) and binds the address.
    pub async fn build(config: Config) -> Result<Self, QueryError> {
        config.validate()?;
        let verifier = JwtVerifier::new(&config.jwt_secret, config.jwt_jwks_file.as_deref())
            .map_err(|e| QueryError::Startup(e.to_string()))?;
        let store = ReadStore::connect(
            &config.database_url,
            config.db_pool_size,
            config.db_acquire_timeout(),
        )
        .await?;
        if config.migrate {
            pulseline_sinks::postgres::MIGRATOR
                .run(store.pool())
                .await
                .map_err(|e| QueryError::Startup(format!("read-model migrations: {e}")))?;
        }
        let telemetry =
            Telemetry::new().map_err(|e| QueryError::Startup(format!("metrics registry: {e}")))?;
        let store = match config.store.read_store {
            ReadStoreKind::Postgres => store,
            ReadStoreKind::Scylla => {
                let scylla = open_scylla(&config).await?;
                // Reads by outcome and their latency: `pulseline_query_scylla_*`.
                scylla
                    .metrics()
                    .register(telemetry.registry())
                    .map_err(|e| QueryError::Startup(format!("metrics registry: {e}")))?;
                store.with_scylla(scylla, config.migrate)
            }
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| QueryError::Startup(format!("binding {}: {e}", config.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| QueryError::Startup(format!("local address: {e}")))?;
        let state = AppState::new(Shared {
            store,
            verifier: Arc::new(verifier),
            telemetry,
            limits: RangeLimits {
                max_days_day: config.max_days_day,
                max_days_hour: config.max_days_hour,
            },
            readiness_timeout: config.readiness_timeout(),
            sql: SqlEngine::open(&config.export_dir.to_string_lossy(), config.sql_limits())
                .map_err(|e| QueryError::Startup(format!("export root: {e}")))?,
            openapi: Arc::new(api::openapi_json()),
        });
        Ok(Self {
            listener,
            addr,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> Result<(), QueryError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), QueryError> {
        tracing::info!(addr = %self.addr, "query API listening");
        axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| QueryError::Startup(format!("serving: {e}")))
    }
}

/// Connects to the Scylla store (and, with `migrate`, runs its base migration; each read
/// model's table is made sure of on its first read).
async fn open_scylla(config: &Config) -> Result<Arc<ScyllaSink>, QueryError> {
    let target = ScyllaTarget::parse(&config.store.url(&config.database_url))
        .map_err(|e| QueryError::Config(e.to_string()))?;
    let scylla = ScyllaSink::connect(target)
        .await
        .map_err(|e| QueryError::Startup(e.to_string()))?;
    if config.migrate {
        scylla
            .migrate()
            .await
            .map_err(|e| QueryError::Startup(format!("scylla migrations: {e}")))?;
    }
    Ok(Arc::new(scylla))
}
