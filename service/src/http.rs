//! The HTTP error envelope every pulseline API answers with,
//! `{ "error": { "code", "message", "details" } }`, and the bearer security scheme of the
//! OpenAPI documents: one shape, so clients parse one thing whichever service answered.
//! Each service keeps its own error enum and maps it here, in one place.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
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
    /// Machine-readable context (the offending field, the limit, retryAfterSeconds), or null.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ErrorEnvelope {
    pub fn new(code: &'static str, message: impl Into<String>, details: Value) -> Self {
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
            serde_json::json!({"error": {"code": "X", "message": "m", "details": null}})
        );
    }
}
