//! What `/readyz` checks: Postgres answers within the readiness timeout and every table the
//! API reads exists (the gateway's and the sink's migrations have run). The ops routes
//! themselves are `pulseline_service::ops`.

use pulseline_service::ops::Readiness;
use serde_json::json;

use super::AppState;

pub(super) async fn readiness(state: AppState) -> Readiness {
    let check = tokio::time::timeout(state.readiness_timeout, state.store.check()).await;
    match check {
        Ok(Ok(missing)) if missing.is_empty() => Ok(json!({ "postgres": "ok" })),
        Ok(Ok(missing)) => Err(json!({ "postgres": "ok", "missingTables": missing })),
        Ok(Err(e)) => Err(json!({ "postgres": e.to_string() })),
        Err(_) => Err(json!({ "postgres": "timed out" })),
    }
}
