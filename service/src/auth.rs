//! Bearer-token authentication, shared by every API so that a token one accepts the others
//! accept: who the caller is (`sub`, a user UUID) and what they may do (`role`). HS256 with
//! the configured secret; RS256 against a JWKS file when one is configured (keys chosen by
//! `kid`). `AuthUser` is an axum extractor: it runs before the body is read, and its
//! failures answer with the error envelope.
//!
//! It never logs a token.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::http::ErrorEnvelope;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Uploads and reads their own data.
    User,
    /// Reads pseudonymised exports; may not upload.
    Analyst,
    /// Operates the service; may upload on their own account.
    Admin,
}

/// The claims the services read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
}

/// Why a caller is not let in. Messages are fixed strings: they never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("token expired")]
    TokenExpired,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The JWKS file cannot be read or parsed (start-up only).
    #[error("JWKS: {0}")]
    Keys(String),
}

impl AuthError {
    /// The stable API code of the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "UNAUTHENTICATED",
            AuthError::TokenExpired => "TOKEN_EXPIRED",
            AuthError::Forbidden(_) => "FORBIDDEN",
            AuthError::Keys(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated(_) | AuthError::TokenExpired => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Keys(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The client-facing message.
    pub fn public_message(&self) -> String {
        match self {
            AuthError::Unauthenticated(why) | AuthError::Forbidden(why) => (*why).to_owned(),
            AuthError::TokenExpired => "the bearer token has expired".into(),
            AuthError::Keys(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if let AuthError::Keys(_) = self {
            tracing::error!(error = %self, "request failed");
        }
        ErrorEnvelope::new(self.code(), self.public_message(), Value::Null)
            .into_response_with(self.status(), None)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub role: Role,
}

impl AuthUser {
    /// Uploading and changing privacy settings is for users and admins, not analysts.
    pub fn require_uploader(&self) -> Result<(), AuthError> {
        match self.role {
            Role::User | Role::Admin => Ok(()),
            Role::Analyst => Err(AuthError::Forbidden(
                "this role may not upload or change user data",
            )),
        }
    }

    /// Analysts' SQL is for the analyst role only: users and admins read their own data
    /// through the read-model routes instead.
    pub fn require_analyst(&self) -> Result<(), AuthError> {
        match self.role {
            Role::Analyst => Ok(()),
            Role::User | Role::Admin => Err(AuthError::Forbidden(
                "only tokens with the analyst role may run SQL over the export",
            )),
        }
    }
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    hs256: DecodingKey,
    jwks: Option<JwkSet>,
    leeway_secs: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &"<redacted>")
            .field("jwks_keys", &self.jwks.as_ref().map(|s| s.keys.len()))
            .finish()
    }
}

impl JwtVerifier {
    /// Reads the JWKS file, if any (so this is for start-up, not for requests).
    pub fn new(secret: &str, jwks_file: Option<&Path>) -> Result<Self, AuthError> {
        let jwks = match jwks_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    AuthError::Keys(format!("reading JWKS file {}: {e}", path.display()))
                })?;
                let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                    AuthError::Keys(format!("parsing JWKS file {}: {e}", path.display()))
                })?;
                Some(set)
            }
        };
        Ok(Self {
            hs256: DecodingKey::from_secret(secret.as_bytes()),
            jwks,
            leeway_secs: 30,
        })
    }

    pub fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Unauthenticated("malformed bearer token"))?;
        let decoded = match header.alg {
            Algorithm::HS256 => self.decode(token, &self.hs256, Algorithm::HS256),
            Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Unauthenticated(
                    "RS256 tokens are not configured",
                ))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or(AuthError::Unauthenticated("RS256 token without kid"))?;
                let jwk = jwks
                    .find(kid)
                    .ok_or(AuthError::Unauthenticated("unknown key id"))?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|_| AuthError::Unauthenticated("unusable key"))?;
                self.decode(token, &key, Algorithm::RS256)
            }
            _ => Err(AuthError::Unauthenticated("unsupported token algorithm")),
        }?;
        let user_id = Uuid::parse_str(&decoded.sub)
            .map_err(|_| AuthError::Unauthenticated("token subject is not a UUID"))?;
        Ok(AuthUser {
            user_id,
            role: decoded.role,
        })
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                ErrorKind::InvalidSignature => {
                    AuthError::Unauthenticated("invalid token signature")
                }
                _ => AuthError::Unauthenticated("invalid bearer token"),
            })
    }
}

/// Mints an HS256 token: for development tools, load generators and tests.
pub fn issue_hs256_token(secret: &str, user_id: Uuid, role: Role, ttl_secs: i64) -> String {
    let claims = Claims {
        sub: user_id.to_string(),
        role,
        exp: chrono::Utc::now().timestamp() + ttl_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Any state that can hand out the verifier (`impl FromRef<AppState> for Arc<JwtVerifier>`)
/// can authenticate requests.
impl<S> FromRequestParts<S> for AuthUser
where
    Arc<JwtVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(AuthError::Unauthenticated(
                "missing Authorization: Bearer token",
            ))?;
        let text = value
            .to_str()
            .map_err(|_| AuthError::Unauthenticated("malformed Authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(AuthError::Unauthenticated(
                "Authorization must be `Bearer <token>`",
            ))?;
        Arc::<JwtVerifier>::from_ref(state).verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

    #[test]
    fn hs256_round_trip_and_failures() {
        let v = JwtVerifier::new(SECRET, None).unwrap();
        let user = Uuid::new_v4();
        let ok = v
            .verify(&issue_hs256_token(SECRET, user, Role::User, 60))
            .unwrap();
        assert_eq!(
            ok,
            AuthUser {
                user_id: user,
                role: Role::User
            }
        );
        assert_eq!(
            v.verify(&issue_hs256_token(SECRET, user, Role::User, -120)),
            Err(AuthError::TokenExpired)
        );
        assert!(matches!(
            v.verify(&issue_hs256_token(
                "another-secret-another-secret-another",
                user,
                Role::User,
                60
            )),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            v.verify("not-a-token"),
            Err(AuthError::Unauthenticated(_))
        ));
    }

    #[test]
    fn analysts_may_not_upload() {
        let analyst = AuthUser {
            user_id: Uuid::nil(),
            role: Role::Analyst,
        };
        let e = analyst.require_uploader().unwrap_err();
        assert_eq!((e.code(), e.status()), ("FORBIDDEN", StatusCode::FORBIDDEN));
    }

    #[test]
    fn a_missing_jwks_file_is_a_start_up_error() {
        let e = JwtVerifier::new(SECRET, Some(Path::new("/nonexistent/jwks.json"))).unwrap_err();
        assert!(matches!(e, AuthError::Keys(_)));
    }
}
