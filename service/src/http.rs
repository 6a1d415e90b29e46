//! The HTTP error envelope every pulseline API answers with,
//! `{ "error": { "code", "message", "details" } }`, and the bearer security scheme of the
//! OpenAPI documents: one shape, so clients parse one thing whichever service answered.
//! Each service keeps its own error enum and maps it here, in one place. Also the request
//! plumbing every API wraps its routes in (`observe`): request ids, tracing, metrics.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Serialize;
use serde_json::Value;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};

/// The error envelope, as documented in the OpenAPI documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable UPPER_SNAKE code (INVALID_BODY, UNAUTHENTICATED, TOKEN_EXPIRED, FORBIDDEN,
    /// RATE_LIMITED, UNAVAILABLE, NOT_FOUND, INTERNAL ...; each API documents its own).
    pub code: &'static str,
    pub message: String,
    /// Machine-readable context (the offending field, the limit, retryAfterSeconds); an
    /// empty object when there is nothing to add, so clients can always index it.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ErrorEnvelope {
    /// `details` of null (nothing to add) is sent as `{}`, as the OpenAPI document declares.
    pub fn new(code: &'static str, message: impl Into<String>, details: Value) -> Self {
        let details = match details {
            Value::Null => Value::Object(serde_json::Map::new()),
            other => other,
        };
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
                details,
            },
        }
    }

    /// The response: `status`, the envelope as JSON, and `Retry-After` (whole seconds)
    /// when the client should come back.
    pub fn into_response_with(self, status: StatusCode, retry_after: Option<Duration>) -> Response {
        let mut response = (status, axum::Json(self)).into_response();
        if let Some(d) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        response
    }
}

/// Whole seconds for Retry-After, rounded up, at least 1 (0 would invite a busy loop).
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// OpenAPI modifier declaring the `bearer` (JWT) security scheme the APIs use.
#[derive(Debug)]
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Request metrics of an HTTP API: requests by matched route and status, and latency by
/// route. Registered in the service's own registry (whose prefix names the service).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { requests, seconds })
    }

    fn completed(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps every route of an API (ops routes and fallbacks included): an `x-request-id`
/// (kept from the client or a new UUID, echoed in the answer), a tracing span per request
/// with the method, the path (never the query string, which may name user data) and the
/// request id, a log line per answer, and the request metrics. Bodies are never logged.
pub fn observe<S>(router: Router<S>, metrics: HttpMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(middleware::from_fn_with_state(metrics, track_request))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            let request_id = req
                                .headers()
                                .get(REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// Counts every request by matched route (`unmatched` for the fallback) and status.
async fn track_request(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.completed(&route, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn envelope_shape_and_retry_after() {
        let r = ErrorEnvelope::new("RATE_LIMITED", "slow down", Value::Null).into_response_with(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let json = serde_json::to_value(ErrorEnvelope::new("X", "m", Value::Null)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "X", "message": "m", "details": {}}})
        );
    }

    #[tokio::test]
    async fn observe_counts_requests_by_route_and_sets_a_request_id() {
        use axum::body::Body;
        use tower::ServiceExt;
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        let router: Router = observe(
            Router::new().route("/things/{id}", axum::routing::get(|| async { "ok" })),
            metrics,
        );
        for path in ["/things/1", "/things/2", "/nope"] {
            let r = router
                .clone()
                .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(r.headers().contains_key("x-request-id"));
        }
        let text = crate::ops::render(&registry);
        assert!(
            text.contains(r#"http_requests_total{route="/things/{id}",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{route="unmatched",status="404"} 1"#),
            "{text}"
        );
    }
}
