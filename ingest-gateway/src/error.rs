//! The gateway's one error type and its mapping to the HTTP error envelope
//! `{ "error": { "code", "message", "details" } }` (`pulseline_service::http`, shared by
//! every API), in one place (`IntoResponse` below).
//!
//! Messages never contain sample or event values (PHI): they name the field and the rule.
//! Every known condition has its own status and code; 500 INTERNAL is only for bugs.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulseline_service::auth::AuthError;
use pulseline_service::http::{ErrorEnvelope, retry_after_secs};
use serde_json::{Value, json};

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
    /// No valid bearer token, or a role that may not do this.
    #[error(transparent)]
    Auth(#[from] AuthError),
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
            GatewayError::Auth(e) => e.code(),
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
            GatewayError::Auth(e) => e.status(),
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
            GatewayError::Auth(e) => e.public_message(),
            GatewayError::PayloadHashMismatch(why) => (*why).to_owned(),
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

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else if matches!(self, GatewayError::Unavailable { .. }) {
            tracing::warn!(error = %self, "dependency unavailable");
        }
        ErrorEnvelope::new(self.code(), self.public_message(), self.details())
            .into_response_with(status, self.retry_after())
    }
}

impl From<sqlx::Error> for GatewayError {
    fn from(e: sqlx::Error) -> Self {
        if pulseline_service::db::is_unavailable(&e) {
            GatewayError::unavailable(e.to_string())
        } else {
            GatewayError::Internal(format!("database: {e}"))
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
    fn pool_timeouts_are_unavailable() {
        let e: GatewayError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.is_retryable());
    }
}
