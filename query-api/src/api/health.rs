//! What `/readyz` checks: Postgres answers within the readiness timeout and every table the
//! API reads there exists (the gateway's and the sink's migrations have run); Scylla
//! answers too when it holds the read models. The ops routes themselves are
//! `pulseline_service::ops`.

use pulseline_service::ops::Readiness;
use serde_json::json;

use super::AppState;

pub(super) async fn readiness(state: AppState) -> Readiness {
    let check = tokio::time::timeout(state.readiness_timeout, state.store.check()).await;
    let postgres = match check {
        Ok(Ok(missing)) if missing.is_empty() => Ok(json!({ "postgres": "ok" })),
        Ok(Ok(missing)) => Err(json!({ "postgres": "ok", "missingTables": missing })),
        Ok(Err(e)) => Err(json!({ "postgres": e.to_string() })),
        Err(_) => Err(json!({ "postgres": "timed out" })),
    };
    let scylla = tokio::time::timeout(state.readiness_timeout, state.store.ping_scylla()).await;
    let scylla = match scylla {
        Ok(None) => return postgres,
        Ok(Some(Ok(()))) => Ok("ok".to_owned()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let ready = postgres.is_ok() && scylla.is_ok();
    let (Ok(mut body) | Err(mut body)) = postgres;
    body["scylla"] = json!(scylla.unwrap_or_else(|e| e));
    if ready { Ok(body) } else { Err(body) }
}
