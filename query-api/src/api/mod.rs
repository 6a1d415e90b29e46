//! The HTTP surface: routes, shared state, middleware (request ids, tracing, request
//! metrics) and the OpenAPI document. Handlers live in the submodules; errors become the
//! envelope in `error.rs`, nowhere else.

mod health;
mod impacts;
pub mod model;
mod rollups;
mod sleep;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use pulseline_service::OpsRouter;
use pulseline_service::auth::JwtVerifier;
use pulseline_service::http::{BearerAuth, observe};
use pulseline_service::ops::OpsApi;
use utoipa::OpenApi;

use crate::analytics::SqlEngine;
use crate::error::QueryError;
use crate::params::RangeLimits;
use crate::store::{ReadQuery, ReadStore};
use crate::telemetry::{ReadModelAnswered, Telemetry};

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
    /// Analysts' SQL over the Parquet export.
    pub sql: SqlEngine,
    pub openapi: Arc<String>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.inner
    }
}

/// Lets the shared `AuthUser` extractor verify tokens with this API's verifier.
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
    info(title = "pulseline query API", description = "Read path of pulseline: per-user read models, each answer with its freshness; analysts' read-only SQL over the pseudonymised Parquet export."),
    paths(
        rollups::get_rollups,
        sleep::get_sleep,
        impacts::get_sessions,
        impacts::get_products,
        sql::post_sql,
    ),
    components(schemas(
        model::RollupsAnswer,
        model::RollupPoint,
        model::SleepAnswer,
        model::SleepNight,
        model::SessionImpactsAnswer,
        model::SessionImpact,
        model::ProductImpactsAnswer,
        model::ProductImpact,
        sql::SqlRequest,
        crate::analytics::SqlAnswer,
        crate::analytics::SqlColumn,
        model::EventTypeParam,
        model::PeriodDaysParam,
        model::Freshness,
        model::StreamFreshness,
        model::FreshnessStatus,
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
    doc.to_json().unwrap_or_else(|_| "{}".to_owned())
}

/// All routes with their middleware (the ops routes are counted and traced too).
pub fn router(state: AppState) -> Router {
    let ready = state.clone();
    let ops = OpsRouter::new(state.telemetry.registry().clone())
        .readiness(move || health::readiness(ready.clone()))
        .openapi(state.openapi.as_ref().clone())
        .build();
    let routes = Router::new()
        .route("/v1/me/rollups", get(rollups::get_rollups))
        .route("/v1/me/sleep", get(sleep::get_sleep))
        .route("/v1/me/impacts/sessions", get(impacts::get_sessions))
        .route("/v1/me/impacts/products", get(impacts::get_products))
        .route("/v1/analytics/sql", post(sql::post_sql))
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    observe(routes, state.telemetry.http().clone()).with_state(state)
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
