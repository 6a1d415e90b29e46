//! `GET /v1/me/impacts/sessions` and `GET /v1/me/impacts/products`: how the caller's body
//! responded to what they logged, with freshness over both input streams. The user id
//! comes from the token only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::future::BoxFuture;
use pulseline_schemas::records::{ProductImpactUpsert, SessionImpactUpsert};
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;
use pulseline_sinks::{ScyllaSink, SinkError};
use sqlx::PgConnection;
use uuid::Uuid;

use super::AppState;
use super::model::{
    EventTypeParam, PeriodDaysParam, ProductImpact, ProductImpactsAnswer, SessionImpact,
    SessionImpactsAnswer,
};
use crate::error::QueryError;
use crate::params::{ProductImpactsQuery, SessionImpactsQuery};
use crate::store::ReadQuery;

/// Session impacts, with freshness.
///
/// `from` and `to` are local dates of the events' starts (in each event's own offset),
/// both included. Optional filters: `eventType`, `productId`, `metric`. `freshness` has
/// one entry per input stream (samples and events) and is fresh only when both are.
#[utoipa::path(
    get,
    path = "/v1/me/impacts/sessions",
    tag = "read models",
    params(
        ("from" = String, Query, format = Date, description = "First local event date, YYYY-MM-DD"),
        ("to" = String, Query, format = Date, description = "Last local event date, YYYY-MM-DD (inclusive); at most 366 days after `from`"),
        ("eventType" = Option<EventTypeParam>, Query, description = "caffeine, alcohol, medication, meal, workout, meditation or custom"),
        ("productId" = Option<String>, Query, max_length = 256, description = "Only events with this product (1 to 256 characters)"),
        ("metric" = Option<String>, Query, description = "Only this metric (a catalog code, e.g. HEART_RATE)"),
    ),
    responses(
        (status = 200, description = "The sessions and their freshness", body = SessionImpactsAnswer),
        (status = 400, description = "INVALID_PARAMETER; details.parameter names the parameter", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE (database); retry after Retry-After", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn get_sessions(
    caller: AuthUser,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<SessionImpactsAnswer>, QueryError> {
    let q = SessionImpactsQuery::parse(&super::query_pairs(query)?)?;
    let (data, freshness) = super::serve(&state, caller.user_id, &q).await?;
    Ok(Json(SessionImpactsAnswer { data, freshness }))
}

/// Product impacts, with freshness.
///
/// Per product (or event type, for events without a product) and metric: the reliable
/// sessions of the `periodDays` days ending at `asOf`, their mean delta and a confidence
/// tier. `metric` filters. `freshness` covers samples and events.
#[utoipa::path(
    get,
    path = "/v1/me/impacts/products",
    tag = "read models",
    params(
        ("periodDays" = PeriodDaysParam, Query, description = "30 or 90"),
        ("metric" = Option<String>, Query, description = "Only this metric (a catalog code, e.g. HEART_RATE)"),
    ),
    responses(
        (status = 200, description = "The product impacts and their freshness", body = ProductImpactsAnswer),
        (status = 400, description = "INVALID_PARAMETER; details.parameter names the parameter", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE (database); retry after Retry-After", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn get_products(
    caller: AuthUser,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ProductImpactsAnswer>, QueryError> {
    let q = ProductImpactsQuery::parse(&super::query_pairs(query)?)?;
    let (data, freshness) = super::serve(&state, caller.user_id, &q).await?;
    Ok(Json(ProductImpactsAnswer { data, freshness }))
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

type SessionRow = (
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    i64,
    bool,
);

impl ReadQuery for SessionImpactsQuery {
    type Model = SessionImpactUpsert;
    type Point = SessionImpact;

    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<SessionImpact>, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<SessionRow> = sqlx::query_as(
                "SELECT event_id, event_type, product_id, start_at, end_at, metric, \
                        baseline_avg, after_avg, delta_percent, baseline_count, after_count, \
                        reliable \
                 FROM session_impact \
                 WHERE user_id = $1 AND local_date BETWEEN $2 AND $3 AND NOT deleted \
                   AND ($4::text IS NULL OR event_type = $4) \
                   AND ($5::text IS NULL OR product_id = $5) \
                   AND ($6::text IS NULL OR metric = $6) \
                 ORDER BY start_at, event_id COLLATE \"C\", metric COLLATE \"C\"",
            )
            .bind(user)
            .bind(self.from)
            .bind(self.to)
            .bind(self.event_type)
            .bind(self.product_id.as_deref())
            .bind(self.metric)
            .fetch_all(conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| SessionImpact {
                    event_id: r.0,
                    event_type: r.1,
                    product_id: r.2,
                    start_at: instant(r.3),
                    end_at: r.4.map(instant),
                    metric: r.5,
                    baseline_avg: r.6,
                    after_avg: r.7,
                    delta_percent: r.8,
                    baseline_count: r.9,
                    after_count: r.10,
                    reliable: r.11,
                })
                .collect())
        })
    }

    fn fetch_cql<'a>(
        &'a self,
        store: &'a ScyllaSink,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<SessionImpact>, SinkError>> {
        Box::pin(async move {
            // The partition is the user's sessions (keyed by event and metric): read whole,
            // filtered and ordered here as the Postgres query does.
            let cql = format!(
                "SELECT event_id, event_type, product_id, start_at, end_at, metric, \
                        baseline_avg, after_avg, delta_percent, baseline_count, after_count, \
                        reliable, local_date, deleted \
                 FROM {}.session_impact WHERE user_id = ?",
                store.keyspace()
            );
            let rows: Vec<CqlSession> = store.select(&cql, (user,)).await?;
            let mut rows: Vec<(DateTime<Utc>, CqlSession)> = rows
                .into_iter()
                .filter(|r| {
                    r.deleted != Some(true)
                        && r.local_date
                            .is_some_and(|d| (self.from..=self.to).contains(&d))
                        && self
                            .event_type
                            .is_none_or(|t| r.event_type.as_deref() == Some(t))
                        && self
                            .product_id
                            .as_deref()
                            .is_none_or(|p| r.product_id.as_deref() == Some(p))
                        && self.metric.is_none_or(|m| r.metric == m)
                })
                .filter_map(|r| Some((micros(r.start_at?)?, r)))
                .collect();
            rows.sort_by(|(a_at, a), (b_at, b)| {
                (a_at, &a.event_id, &a.metric).cmp(&(b_at, &b.event_id, &b.metric))
            });
            Ok(rows
                .into_iter()
                .map(|(start_at, r)| SessionImpact {
                    event_id: r.event_id,
                    event_type: r.event_type.unwrap_or_default(),
                    product_id: r.product_id,
                    start_at: instant(start_at),
                    end_at: r.end_at.and_then(micros).map(instant),
                    metric: r.metric,
                    baseline_avg: r.baseline_avg,
                    after_avg: r.after_avg,
                    delta_percent: r.delta_percent,
                    baseline_count: r.baseline_count.unwrap_or_default(),
                    after_count: r.after_count.unwrap_or_default(),
                    reliable: r.reliable.unwrap_or_default(),
                })
                .collect())
        })
    }
}

fn micros(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t)
}

/// A `session_impact` row as Scylla answers it (instants in microseconds; values null
/// in a deleted session, which keeps only its version).
#[derive(scylla::DeserializeRow)]
struct CqlSession {
    event_id: String,
    event_type: Option<String>,
    product_id: Option<String>,
    start_at: Option<i64>,
    end_at: Option<i64>,
    metric: String,
    baseline_avg: Option<f64>,
    after_avg: Option<f64>,
    delta_percent: Option<f64>,
    baseline_count: Option<i64>,
    after_count: Option<i64>,
    reliable: Option<bool>,
    local_date: Option<NaiveDate>,
    deleted: Option<bool>,
}

type ProductRow = (
    Option<String>,
    String,
    String,
    i32,
    i64,
    Option<f64>,
    Option<f64>,
    String,
    DateTime<Utc>,
);

impl ReadQuery for ProductImpactsQuery {
    type Model = ProductImpactUpsert;
    type Point = ProductImpact;

    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<ProductImpact>, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<ProductRow> = sqlx::query_as(
                "SELECT product_id, event_type, metric, period_days, n, avg_delta_percent, \
                        std_dev, tier, as_of \
                 FROM product_impact \
                 WHERE user_id = $1 AND period_days = $2 AND NOT deleted \
                   AND ($3::text IS NULL OR metric = $3) \
                 ORDER BY event_type COLLATE \"C\", product_key COLLATE \"C\", \
                          metric COLLATE \"C\"",
            )
            .bind(user)
            .bind(self.period_days)
            .bind(self.metric)
            .fetch_all(conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| ProductImpact {
                    product_id: r.0,
                    event_type: r.1,
                    metric: r.2,
                    period_days: r.3,
                    n: r.4,
                    avg_delta_percent: r.5,
                    std_dev: r.6,
                    tier: r.7,
                    as_of: instant(r.8),
                })
                .collect())
        })
    }

    fn fetch_cql<'a>(
        &'a self,
        store: &'a ScyllaSink,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<ProductImpact>, SinkError>> {
        Box::pin(async move {
            // Clustered by event type, product key, metric and period: the user's
            // partition in the Postgres query's order; the period is filtered here.
            let cql = format!(
                "SELECT event_type, product_key, metric, period_days, product_id, n, \
                        avg_delta_percent, std_dev, tier, as_of, deleted \
                 FROM {}.product_impact WHERE user_id = ?",
                store.keyspace()
            );
            let rows: Vec<CqlProduct> = store.select(&cql, (user,)).await?;
            let mut rows: Vec<(DateTime<Utc>, CqlProduct)> = rows
                .into_iter()
                .filter(|r| {
                    r.deleted != Some(true)
                        && r.period_days == self.period_days
                        && self.metric.is_none_or(|m| r.metric == m)
                })
                .filter_map(|r| Some((micros(r.as_of?)?, r)))
                .collect();
            rows.sort_by(|(_, a), (_, b)| {
                (&a.event_type, &a.product_key, &a.metric).cmp(&(
                    &b.event_type,
                    &b.product_key,
                    &b.metric,
                ))
            });
            Ok(rows
                .into_iter()
                .map(|(as_of, r)| ProductImpact {
                    product_id: r.product_id,
                    event_type: r.event_type,
                    metric: r.metric,
                    period_days: r.period_days,
                    n: r.n.unwrap_or_default(),
                    avg_delta_percent: r.avg_delta_percent,
                    std_dev: r.std_dev,
                    tier: r.tier.unwrap_or_default(),
                    as_of: instant(as_of),
                })
                .collect())
        })
    }
}

/// A `product_impact` row as Scylla answers it.
#[derive(scylla::DeserializeRow)]
struct CqlProduct {
    event_type: String,
    product_key: String,
    metric: String,
    period_days: i32,
    product_id: Option<String>,
    n: Option<i64>,
    avg_delta_percent: Option<f64>,
    std_dev: Option<f64>,
    tier: Option<String>,
    as_of: Option<i64>,
    deleted: Option<bool>,
}
