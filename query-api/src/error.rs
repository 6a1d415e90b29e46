//! The query API's one error type and its mapping to the shared error envelope
//! `{ "error": { "code", "message", "details" } }` (`pulseline_service::http`, the
//! gateway's too, so clients parse one shape), in one place (`IntoResponse` below).
//! Authentication failures come from the shared extractor and already carry that envelope.
//!
//! Messages name the parameter and the rule, never a stored value.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulseline_service::http::{ErrorEnvelope, retry_after_secs};
use serde_json::{Value, json};

/// Retry-After for 503 answers: long enough for a pool to reconnect.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A query parameter is missing, malformed or out of bounds; `details` says which.
    #[error("invalid parameter {parameter}: {message}")]
    InvalidParameter {
        parameter: String,
        message: String,
        details: Value,
    },
    /// The metric code is not in the catalog.
    #[error("unknown metric `{0}`")]
    UnknownMetric(String),
    /// The request body is not the JSON the route expects.
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// The caller's token does not allow the route.
    #[error(transparent)]
    Auth(#[from] pulseline_service::auth::AuthError),
    /// An analyst's SQL was refused or failed; the code names the rule or limit.
    #[error(transparent)]
    Sql(crate::analytics::SqlError),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Postgres cannot be reached now; retrying later helps.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        details: Option<Value>,
    },
    /// A setting the API refuses to run with (start-up only).
    #[error("configuration: {0}")]
    Config(String),
    /// Start-up failures: binding, migrations, reading the JWKS file.
    #[error("start-up: {0}")]
    Startup(String),
    /// A condition nobody anticipated: a bug, logged with its cause, answered with 500.
    #[error("internal: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn invalid(parameter: &str, message: impl Into<String>) -> Self {
        Self::invalid_with(parameter, message, json!({}))
    }

    /// `extra` (an object) is merged into the details next to `parameter`.
    pub fn invalid_with(parameter: &str, message: impl Into<String>, extra: Value) -> Self {
        let mut details = json!({ "parameter": parameter });
        if let (Some(d), Value::Object(extra)) = (details.as_object_mut(), extra) {
            d.extend(extra);
        }
        QueryError::InvalidParameter {
            parameter: parameter.to_owned(),
            message: message.into(),
            details,
        }
    }

    /// Whether the same request can succeed later (`Retryable` vs `Fatal`).
    pub fn is_retryable(&self) -> bool {
        match self {
            QueryError::Unavailable { .. } => true,
            QueryError::Sql(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The stable API code of the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::InvalidParameter { .. } => "INVALID_PARAMETER",
            QueryError::UnknownMetric(_) => "UNKNOWN_METRIC",
            QueryError::InvalidBody(_) => "INVALID_BODY",
            QueryError::Auth(e) => e.code(),
            QueryError::Sql(e) => e.code(),
            QueryError::NotFound => "NOT_FOUND",
            QueryError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            QueryError::Unavailable { .. } => "UNAVAILABLE",
            QueryError::Config(_) | QueryError::Startup(_) | QueryError::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::InvalidParameter { .. } | QueryError::InvalidBody(_) => {
                StatusCode::BAD_REQUEST
            }
            QueryError::Auth(e) => e.status(),
            QueryError::Sql(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Sql(_) => StatusCode::BAD_REQUEST,
            QueryError::UnknownMetric(_) | QueryError::NotFound => StatusCode::NOT_FOUND,
            QueryError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            QueryError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Config(_) | QueryError::Startup(_) | QueryError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The client-facing message; internal causes stay in the logs.
    fn public_message(&self) -> String {
        match self {
            QueryError::InvalidParameter { message, .. } => message.clone(),
            QueryError::Unavailable { .. } => {
                "a dependency of the service (its database) is unavailable; retry later".into()
            }
            QueryError::Auth(e) => e.public_message(),
            QueryError::Config(_) | QueryError::Startup(_) | QueryError::Internal(_) => {
                "internal error".into()
            }
            other => other.to_string(),
        }
    }

    fn details(&self) -> Value {
        match self {
            QueryError::InvalidParameter { details, .. } => details.clone(),
            QueryError::UnknownMetric(metric) => json!({ "metric": metric }),
            QueryError::Sql(e) => {
                let mut d = e.details();
                if let (true, Some(obj)) = (e.is_retryable(), d.as_object_mut()) {
                    obj.insert(
                        "retryAfterSeconds".into(),
                        json!(retry_after_secs(UNAVAILABLE_RETRY_AFTER)),
                    );
                }
                d
            }
            QueryError::Unavailable { details, .. } => {
                let mut d = details.clone().unwrap_or_else(|| json!({}));
                if let Some(obj) = d.as_object_mut() {
                    obj.insert(
                        "retryAfterSeconds".into(),
                        json!(retry_after_secs(UNAVAILABLE_RETRY_AFTER)),
                    );
                }
                d
            }
            _ => Value::Null,
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !self.is_retryable() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else if self.is_retryable() {
            tracing::warn!(code = self.code(), error = %self, "dependency unavailable");
        }
        let retry_after = self.is_retryable().then_some(UNAVAILABLE_RETRY_AFTER);
        ErrorEnvelope::new(self.code(), self.public_message(), self.details())
            .into_response_with(status, retry_after)
    }
}

/// The shared classification: connection-level and transient failures are 503,
/// everything else is a bug.
impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        if pulseline_service::db::is_unavailable(&e) {
            QueryError::Unavailable {
                reason: e.to_string(),
                details: None,
            }
        } else {
            QueryError::Internal(format!("database: {e}"))
        }
    }
}

/// A failed Scylla read: retryable ones (a timeout, an unreachable node) are 503 like a
/// Postgres outage; anything else (a statement Scylla refuses, a row of an unexpected
/// shape) is a bug, 500.
impl From<pulseline_sinks::SinkError> for QueryError {
    fn from(e: pulseline_sinks::SinkError) -> Self {
        if e.is_retryable() {
            QueryError::Unavailable {
                reason: e.to_string(),
                details: None,
            }
        } else {
            QueryError::Internal(format!("read store: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = QueryError::invalid_with("to", "too long", json!({ "maxDays": 31 }));
        assert_eq!(
            (e.code(), e.status()),
            ("INVALID_PARAMETER", StatusCode::BAD_REQUEST)
        );
        assert_eq!(e.details(), json!({ "parameter": "to", "maxDays": 31 }));
        let e = QueryError::UnknownMetric("NOPE".into());
        assert_eq!(
            (e.code(), e.status()),
            ("UNKNOWN_METRIC", StatusCode::NOT_FOUND)
        );
        let e: QueryError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.is_retryable());
    }
}
