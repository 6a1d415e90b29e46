//! The HTTP surface: routes, shared state, middleware (request ids, tracing, request
//! metrics) and the OpenAPI document. Handlers live in the submodules; errors become the
//! envelope in `error.rs`, nowhere else.

mod health;
pub mod model;
mod rollups;
mod sleep;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pulseline_ingest_gateway::auth::JwtVerifier;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::QueryError;
use crate::params::RangeLimits;
use crate::store::{ReadQuery, ReadStore};
use crate::telemetry::{ReadModelAnswered, RequestCompleted, Telemetry};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
pub struct Shared {
    pub store: ReadStore,
    pub verifier: Arc<JwtVerifier>,
    pub telemetry: Telemetry,
    pub limits: RangeLimits,
    pub readiness_timeout: Duration,
    pub openapi: Arc<String>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.inner
    }
}

/// Lets the gateway's `AuthUser` extractor verify tokens with this API's verifier.
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
    info(title = "pulseline query API", description = "Read path of pulseline: per-user read models, each answer with its freshness."),
    paths(
        rollups::get_rollups,
        sleep::get_sleep,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi,
    ),
    components(schemas(
        model::RollupsAnswer,
        model::RollupPoint,
        model::SleepAnswer,
        model::SleepNight,
        model::Freshness,
        model::StreamFreshness,
        model::FreshnessStatus,
        pulseline_ingest_gateway::error::ErrorEnvelope,
        pulseline_ingest_gateway::error::ErrorBody,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

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

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/me/rollups", get(rollups::get_rollups))
        .route("/v1/me/sleep", get(sleep::get_sleep))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track_request))
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
                            // The path only: the query string is not logged.
                            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

/// The query string as pairs (repeats kept, so a parameter given twice can be refused).
fn query_pairs(
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Vec<(String, String)>, QueryError> {
    query
        .map(|q| q.0)
        .map_err(|_| QueryError::invalid("query", "the query string is malformed"))
}

/// Serves one read-model query for the caller: its rows and freshness from one snapshot,
/// counted by read model and freshness. Every read-model handler goes through here.
async fn serve<Q: ReadQuery>(
    state: &AppState,
    user: uuid::Uuid,
    query: &Q,
) -> Result<(Vec<Q::Point>, model::Freshness), QueryError> {
    use pulseline_schemas::ReadModel;
    let (data, freshness) = state.store.read(user, query).await?;
    state.telemetry.emit(ReadModelAnswered {
        read_model: Q::Model::NAME,
        fresh: freshness.status == model::FreshnessStatus::Fresh,
        lag_seconds: freshness.lag_seconds,
        points: data.len(),
    });
    Ok((data, freshness))
}

async fn not_found() -> QueryError {
    QueryError::NotFound
}

async fn method_not_allowed() -> QueryError {
    QueryError::MethodNotAllowed
}

/// Counts every request by matched route and status.
async fn track_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state.telemetry.emit(RequestCompleted {
        route: &route,
        status: response.status().as_u16(),
        elapsed: started.elapsed(),
    });
    response.into_response()
}
