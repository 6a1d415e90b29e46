//! The gateway's one error type and its mapping to the HTTP error envelope
//! `{ "error": { "code", "message", "details" } }`, in one place (`IntoResponse` below).
//!
//! Messages never contain sample or event values (PHI): they name the field and the rule.
//! Every known condition has its own status and code; 500 INTERNAL is only for bugs.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::outbox::OutboxError;

/// Retry-After for 503 answers: long enough for a pool to reconnect.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed JSON or a body that does not match the schema; `field` is the JSON path.
    #[error("invalid body: {message}")]
    InvalidBody {
        message: String,
        field: Option<String>,
    },
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("token expired")]
    TokenExpired,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{items} items in one batch, more than the limit of {limit}")]
    TooManyItems { items: usize, limit: usize },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("payload hash mismatch: {0}")]
    PayloadHashMismatch(&'static str),
    #[error("a request with this requestId is still in progress")]
    RequestInProgress { retry_after: Duration },
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// Postgres (or another dependency) cannot be reached now; retrying later helps.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        details: Option<Value>,
    },
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A setting the gateway refuses to run with (start-up only).
    #[error("configuration: {0}")]
    Config(String),
    /// Start-up failures: binding, migrations, reading the JWKS file.
    #[error("start-up: {0}")]
    Startup(String),
    /// A condition nobody anticipated: a bug, logged with its cause, answered with 500.
    #[error("internal: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn invalid_body(message: impl Into<String>) -> Self {
        GatewayError::InvalidBody {
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidBody {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        GatewayError::Unavailable {
            reason: reason.into(),
            details: None,
        }
    }

    /// Whether the same request can succeed later (the `Retryable` vs `Fatal` hint).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::RequestInProgress { .. }
                | GatewayError::RateLimited { .. }
                | GatewayError::Unavailable { .. }
        )
    }

    /// The stable API code of the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidBody { .. } => "INVALID_BODY",
            GatewayError::Unauthenticated(_) => "UNAUTHENTICATED",
            GatewayError::TokenExpired => "TOKEN_EXPIRED",
            GatewayError::Forbidden(_) => "FORBIDDEN",
            GatewayError::BodyTooLarge { .. } | GatewayError::TooManyItems { .. } => {
                "BATCH_TOO_LARGE"
            }
            GatewayError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            GatewayError::PayloadHashMismatch(_) => "PAYLOAD_HASH_MISMATCH",
            GatewayError::RequestInProgress { .. } => "REQUEST_IN_PROGRESS",
            GatewayError::RateLimited { .. } => "RATE_LIMITED",
            GatewayError::Unavailable { .. } => "UNAVAILABLE",
            GatewayError::NotFound => "NOT_FOUND",
            GatewayError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            GatewayError::Config(_) | GatewayError::Startup(_) | GatewayError::Internal(_) => {
                "INTERNAL"
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidBody { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthenticated(_) | GatewayError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::BodyTooLarge { .. } | GatewayError::TooManyItems { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::PayloadHashMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::RequestInProgress { .. } => StatusCode::CONFLICT,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Config(_) | GatewayError::Startup(_) | GatewayError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RequestInProgress { retry_after }
            | GatewayError::RateLimited { retry_after } => Some(*retry_after),
            GatewayError::Unavailable { .. } => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }

    /// The client-facing message; internal causes stay in the logs.
    fn public_message(&self) -> String {
        match self {
            GatewayError::Unavailable { .. } => {
                "a dependency of the service (its database) is unavailable; retry later".into()
            }
            GatewayError::Config(_) | GatewayError::Startup(_) | GatewayError::Internal(_) => {
                "internal error".into()
            }
            GatewayError::RateLimited { .. } => {
                "too many requests for this user; retry later".into()
            }
            GatewayError::RequestInProgress { .. } => {
                "a request with this requestId is still in progress; retry later for its answer"
                    .into()
            }
            GatewayError::Unauthenticated(why) => (*why).to_owned(),
            GatewayError::Forbidden(why) => (*why).to_owned(),
            GatewayError::PayloadHashMismatch(why) => (*why).to_owned(),
            GatewayError::TokenExpired => "the bearer token has expired".into(),
            other => other.to_string(),
        }
    }

    fn details(&self) -> Value {
        match self {
            GatewayError::InvalidBody {
                field: Some(field), ..
            } => json!({ "field": field }),
            GatewayError::BodyTooLarge { limit } => json!({ "maxBodyBytes": limit }),
            GatewayError::TooManyItems { items, limit } => {
                json!({ "items": items, "maxBatchItems": limit })
            }
            GatewayError::Unavailable {
                details: Some(d), ..
            } => d.clone(),
            _ => match self.retry_after() {
                Some(d) => json!({ "retryAfterSeconds": retry_after_secs(d) }),
                None => Value::Null,
            },
        }
    }
}

/// Whole seconds for Retry-After, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The error envelope, as documented in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// UPPER_SNAKE code: INVALID_BODY, UNAUTHENTICATED, TOKEN_EXPIRED, FORBIDDEN,
    /// BATCH_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, PAYLOAD_HASH_MISMATCH, REQUEST_IN_PROGRESS,
    /// RATE_LIMITED, UNAVAILABLE, NOT_FOUND, METHOD_NOT_ALLOWED, INTERNAL.
    pub code: &'static str,
    pub message: String,
    /// Machine-readable context (the offending field, the limit, retryAfterSeconds), or null.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else if matches!(self, GatewayError::Unavailable { .. }) {
            tracing::warn!(error = %self, "dependency unavailable");
        }
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                code: self.code(),
                message: self.public_message(),
                details: self.details(),
            },
        };
        let mut response = (status, axum::Json(envelope)).into_response();
        if let Some(d) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        response
    }
}

/// Postgres error codes that mean "try again later", not "this request is wrong".
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57") // operator intervention (shutdown, cannot connect now)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available (outside the idempotency step)
}

impl From<sqlx::Error> for GatewayError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => GatewayError::unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_transient_sqlstate(&c)) => {
                GatewayError::unavailable(e.to_string())
            }
            _ => GatewayError::Internal(format!("database: {e}")),
        }
    }
}

impl From<OutboxError> for GatewayError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Database(e) => e.into(),
            other => GatewayError::Internal(format!("outbox: {other}")),
        }
    }
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
    fn pool_timeouts_are_unavailable() {
        let e: GatewayError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.is_retryable());
    }
}
