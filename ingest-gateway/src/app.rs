//! The gateway application: built from a `Config` (connects, migrates, binds), then run.
//! Tests build it with port 0 and a private database.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use pulseline_service::auth::JwtVerifier;
use pulseline_service::shutdown_signal;
use tokio::net::TcpListener;

use crate::api::{self, AppState, BrokerProbe, Limits, Shared};
use crate::config::Config;
use crate::error::GatewayError;
use crate::ratelimit::UserRateLimiter;
use crate::retention::{self, RetentionPolicy};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::validate::TimeLimits;

/// How often idle users are dropped from the rate limiter's table.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    retention: RetentionPolicy,
    retention_interval: Duration,
}

impl Application {
    /// Validates the config, connects to Postgres, runs migrations and binds the address.
    pub async fn build(config: Config) -> Result<Self, GatewayError> {
        config.validate()?;
        let verifier = JwtVerifier::new(&config.jwt_secret, config.jwt_jwks_file.as_deref())
            .map_err(|e| GatewayError::Startup(e.to_string()))?;
        let store = Store::connect(
            &config.database_url,
            config.db_pool_size,
            config.db_acquire_timeout(),
            config.relay_shards,
            config.in_progress_wait(),
        )
        .await?;
        store.migrate().await?;
        let telemetry = Telemetry::new()
            .map_err(|e| GatewayError::Startup(format!("metrics registry: {e}")))?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| GatewayError::Startup(format!("binding {}: {e}", config.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| GatewayError::Startup(format!("local address: {e}")))?;

        let state = AppState::new(Shared {
            store,
            verifier: Arc::new(verifier),
            limiter: Arc::new(UserRateLimiter::new(
                config.rate_limit_per_sec,
                config.rate_limit_burst,
            )),
            telemetry,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_batch_items: config.max_batch_items,
                time: TimeLimits {
                    max_future: TimeDelta::seconds(
                        i64::try_from(config.max_future_secs).unwrap_or(i64::MAX / 1000),
                    ),
                    max_age: TimeDelta::days(i64::from(config.max_age_days)),
                },
            },
            broker: BrokerProbe::new(config.kafka_bootstrap.clone()),
            readiness_timeout: config.readiness_timeout(),
            openapi: Arc::new(api::openapi_json()),
        });
        Ok(Self {
            listener,
            addr,
            state,
            retention: RetentionPolicy {
                idempotency: TimeDelta::days(i64::from(config.idempotency_retention_days)),
                sample_keys: TimeDelta::days(i64::from(config.sample_key_retention_days)),
            },
            retention_interval: Duration::from_secs(config.retention_interval_secs.max(1)),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> Result<(), GatewayError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let retention = tokio::spawn(retention::run_periodically(
            self.state.store.pool().clone(),
            self.retention,
            self.retention_interval,
            self.state.telemetry.clone(),
        ));
        let limiter = self.state.limiter.clone();
        let sweeper = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(LIMITER_SWEEP);
            loop {
                ticker.tick().await;
                limiter.forget_idle();
            }
        });
        tracing::info!(addr = %self.addr, "gateway listening");
        let result = axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| GatewayError::Startup(format!("serving: {e}")));
        retention.abort();
        sweeper.abort();
        result
    }
}
