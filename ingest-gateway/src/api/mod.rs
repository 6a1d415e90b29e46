//! The HTTP surface: routes, shared state, middleware (request ids, tracing, gzip request
//! decompression, request metrics) and the OpenAPI document. Handlers live in the
//! submodules; errors become the envelope in `error.rs`, nowhere else.

mod batch;
mod body;
mod health;
mod privacy;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use pulseline_service::OpsRouter;
use pulseline_service::auth::JwtVerifier;
use pulseline_service::http::{BearerAuth, observe};
use pulseline_service::ops::OpsApi;
use tower_http::decompression::RequestDecompressionLayer;
use utoipa::OpenApi;

pub use batch::REPLAYED_HEADER;
pub use health::BrokerProbe;

use crate::error::GatewayError;
use crate::ratelimit::UserRateLimiter;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::validate::TimeLimits;

/// Request limits the handlers enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub time: TimeLimits,
}

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub verifier: Arc<JwtVerifier>,
    pub limiter: Arc<UserRateLimiter>,
    pub telemetry: Telemetry,
    pub limits: Limits,
    pub broker: BrokerProbe,
    pub readiness_timeout: Duration,
    pub openapi: Arc<String>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self {
            inner: Arc::new(shared),
        }
    }
}

/// The OpenAPI document of every route.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "pulseline ingest gateway", description = "Write path of pulseline: batch uploads of health samples and user events."),
    paths(
        batch::post_samples,
        batch::post_events,
        privacy::get_privacy,
        privacy::put_privacy,
    ),
    components(schemas(
        crate::model::SamplesBatch,
        crate::model::SourceIn,
        crate::model::SampleIn,
        crate::model::SampleDeletionIn,
        crate::model::DeviceType,
        crate::model::EventsBatch,
        crate::model::EventIn,
        crate::model::EventDeletionIn,
        crate::model::BatchAnswer,
        crate::model::ItemResult,
        crate::model::ItemStatus,
        crate::model::PrivacySettings,
        pulseline_service::http::ErrorEnvelope,
        pulseline_service::http::ErrorBody,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON: the API's routes and the ops routes.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(OpsApi::openapi());
    let Ok(mut doc) = serde_json::to_value(&doc) else {
        return "{}".to_owned();
    };
    // The privacy settings take the catalog's metric codes and nothing else.
    let codes: Vec<&str> = pulseline_schemas::catalog::Catalog::builtin()
        .metrics()
        .map(|m| m.code())
        .collect();
    doc["components"]["schemas"]["PrivacySettings"]["properties"]["blockedMetrics"]["items"] =
        serde_json::json!({ "type": "string", "enum": codes });
    doc.to_string()
}

/// All routes with their middleware (the ops routes are counted and traced too).
pub fn router(state: AppState) -> Router {
    let ready = state.clone();
    let ops = OpsRouter::new(state.telemetry.registry().clone())
        .readiness(move || health::readiness(ready.clone()))
        .openapi(state.openapi.as_ref().clone())
        .build();
    let routes = Router::new()
        .route("/v1/samples:batch", post(batch::post_samples))
        .route("/v1/events:batch", post(batch::post_events))
        .route(
            "/v1/me/privacy",
            get(privacy::get_privacy).put(privacy::put_privacy),
        )
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Unsupported encodings pass through and are refused (415) by the handler, with
        // the error envelope.
        .layer(RequestDecompressionLayer::new().pass_through_unaccepted(true));
    observe(routes, state.telemetry.http().clone()).with_state(state)
}

async fn not_found() -> GatewayError {
    GatewayError::NotFound
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}
