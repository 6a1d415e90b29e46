//! What `/readyz` checks: Postgres and the broker answer within the readiness timeout.
//! The ops routes themselves are `pulseline_service::ops`.

use std::sync::Arc;
use std::time::Duration;

use pulseline_service::ops::Readiness;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use tokio::sync::OnceCell;

use super::AppState;

/// Checks the broker with a metadata request. The client is created on first use and
/// kept, so a probe does not start librdkafka threads each time.
pub struct BrokerProbe {
    bootstrap: String,
    client: OnceCell<Arc<BaseConsumer>>,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerProbe")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl BrokerProbe {
    pub fn new(bootstrap: String) -> Self {
        Self {
            bootstrap,
            client: OnceCell::new(),
        }
    }

    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let client = self
            .client
            .get_or_try_init(|| async {
                pulseline_schemas::kafka::client_config()
                    .set("bootstrap.servers", &self.bootstrap)
                    .set("client.id", "pulseline-gateway-readiness")
                    .set(
                        "socket.connection.setup.timeout.ms",
                        timeout.as_millis().max(1000).to_string(),
                    )
                    .create::<BaseConsumer>()
                    .map(Arc::new)
                    .map_err(|e| format!("creating Kafka client: {e}"))
            })
            .await?
            .clone();
        let metadata = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| format!("metadata task: {e}"))?;
        match metadata {
            Ok(0) => Err("broker answered without brokers".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("broker unreachable: {e}")),
        }
    }
}

/// Postgres answers `SELECT 1` and the broker answers a metadata request.
pub(super) async fn readiness(state: AppState) -> Readiness {
    let timeout = state.readiness_timeout;
    let (postgres, kafka) = tokio::join!(
        async {
            match tokio::time::timeout(timeout, state.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        },
        state.broker.check(timeout)
    );
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let checks = json!({ "postgres": show(&postgres), "kafka": show(&kafka) });
    if postgres.is_ok() && kafka.is_ok() {
        Ok(checks)
    } else {
        Err(checks)
    }
}
