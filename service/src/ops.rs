//! The operations endpoints every service serves: `/healthz` (the process answers),
//! `/readyz` (its dependencies answer), `/metrics` (Prometheus text) and, for the HTTP
//! APIs, `/openapi.json`. One builder, so liveness, readiness and metrics look the same in
//! every service and a probe or a scraper needs one configuration.
//!
//! Readiness is the service's business (which dependencies, which timeouts); this module
//! only turns its answer into the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Histogram, HistogramOpts, Registry, TextEncoder};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::http::ErrorEnvelope;

/// How long a client should wait before asking `/readyz` again.
const NOT_READY_RETRY_AFTER: Duration = Duration::from_secs(2);
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A readiness check's answer: `Ok(checks)` when ready, `Err(checks)` when not, where
/// `checks` names each dependency and what it said (`{"postgres": "ok", "kafka": "..."}`).
pub type Readiness = Result<Value, Value>;

type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// Builds the ops routes for one service.
#[derive(Clone)]
pub struct OpsRouter {
    registry: Registry,
    readiness: Option<Check>,
    openapi: Option<Arc<String>>,
}

impl std::fmt::Debug for OpsRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsRouter")
            .field("readiness", &self.readiness.is_some())
            .field("openapi", &self.openapi.is_some())
            .finish_non_exhaustive()
    }
}

impl OpsRouter {
    /// `/metrics` renders `registry` (the service's own, never the global one, so several
    /// services in one test process keep their counters apart).
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            readiness: None,
            openapi: None,
        }
    }

    /// What `/readyz` runs on every request. The check bounds its own time (each service
    /// knows how long its dependencies may take). Without one, a running process is ready.
    pub fn readiness<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Readiness> + Send + 'static,
    {
        self.readiness = Some(Arc::new(move || Box::pin(check())));
        self
    }

    /// Serves this OpenAPI document (JSON) at `/openapi.json`.
    pub fn openapi(mut self, json: String) -> Self {
        self.openapi = Some(Arc::new(json));
        self
    }

    /// The routes, with their state applied: merge them into any router.
    pub fn build<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let with_openapi = self.openapi.is_some();
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics));
        let router = if with_openapi {
            router.route("/openapi.json", get(openapi))
        } else {
            router
        };
        router.with_state(Arc::new(self))
    }
}

/// Buckets (seconds) of every stage's latency histogram (relay lag, processor and sink
/// record age), the same for all so that a dashboard can set the stages side by side.
const STAGE_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A stage's latency histogram, registered in `registry`.
pub fn stage_latency_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
) -> Result<Histogram, prometheus::Error> {
    let histogram = Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(STAGE_LATENCY_BUCKETS.to_vec()),
    )?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// Seconds from a Kafka record's timestamp to `now_ms` (both Unix milliseconds); 0 when
/// the clocks of producer and consumer disagree the other way.
pub fn record_age_seconds(produced_ms: i64, now_ms: i64) -> f64 {
    now_ms.saturating_sub(produced_ms).max(0) as f64 / 1e3
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The ops paths, for a service's OpenAPI document (`doc.merge(OpsApi::openapi())`).
#[derive(Debug, OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics, openapi),
    components(schemas(ErrorEnvelope))
)]
pub struct OpsApi;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Every dependency answered within the readiness timeout.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready; `checks` says what each dependency answered"),
        (status = 503, description = "UNAVAILABLE; details say which dependency failed", body = ErrorEnvelope),
    )
)]
async fn readyz(State(ops): State<Arc<OpsRouter>>) -> Response {
    let answer = match &ops.readiness {
        Some(check) => check().await,
        None => Ok(json!({})),
    };
    match answer {
        Ok(checks) => axum::Json(json!({ "status": "ready", "checks": checks })).into_response(),
        Err(checks) => {
            tracing::warn!(checks = %checks, "not ready");
            ErrorEnvelope::new(
                "UNAVAILABLE",
                "a dependency of the service is unavailable; retry later",
                checks,
            )
            .into_response_with(StatusCode::SERVICE_UNAVAILABLE, Some(NOT_READY_RETRY_AFTER))
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(ops): State<Arc<OpsRouter>>) -> Response {
    let mut response = render(&ops.registry).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    response
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, content_type = "application/json")))]
async fn openapi(State(ops): State<Arc<OpsRouter>>) -> Response {
    let body = ops.openapi.as_deref().cloned().unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use prometheus::IntCounter;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let r = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_metrics() {
        let registry = Registry::new();
        let c = IntCounter::new("things_total", "things").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ready.clone();
        let router: Router = OpsRouter::new(registry)
            .readiness(move || {
                let ready = r.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    if ready {
                        Ok(json!({ "db": "ok" }))
                    } else {
                        Err(json!({ "db": "down" }))
                    }
                }
            })
            .build();

        let (status, _, body) = get(&router, "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"status":"ok"}"#)
        );
        let (status, retry, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("2"));
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
        assert_eq!(body["error"]["details"]["db"], "down");
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["checks"]["db"],
            "ok"
        );
        let (_, _, body) = get(&router, "/metrics").await;
        assert!(body.contains("things_total 1"), "{body}");
        assert_eq!(get(&router, "/openapi.json").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serves_the_openapi_document_when_given() {
        let router: Router = OpsRouter::new(Registry::new())
            .openapi(r#"{"openapi":"3.1.0"}"#.into())
            .build();
        let (status, _, body) = get(&router, "/openapi.json").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"openapi":"3.1.0"}"#)
        );
        let (status, _, _) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "no check: ready");
        let doc = OpsApi::openapi();
        assert!(doc.paths.paths.contains_key("/readyz"));
    }
}
