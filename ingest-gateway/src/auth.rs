//! Bearer-token authentication: who the caller is (`sub`, a user UUID) and what they may
//! do (`role`). HS256 with the configured secret; RS256 against a JWKS file when one is
//! configured (keys chosen by `kid`). Runs as an extractor, before the body is read.
//!
//! It never logs a token.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::GatewayError;

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

/// The claims the gateway reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub role: Role,
}

impl AuthUser {
    /// Uploading and changing privacy settings is for users and admins, not analysts.
    pub fn require_uploader(&self) -> Result<(), GatewayError> {
        match self.role {
            Role::User | Role::Admin => Ok(()),
            Role::Analyst => Err(GatewayError::Forbidden(
                "this role may not upload or change user data",
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
    pub fn new(secret: &str, jwks_file: Option<&Path>) -> Result<Self, GatewayError> {
        let jwks = match jwks_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    GatewayError::Startup(format!("reading JWKS file {}: {e}", path.display()))
                })?;
                let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                    GatewayError::Startup(format!("parsing JWKS file {}: {e}", path.display()))
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

    pub fn verify(&self, token: &str) -> Result<AuthUser, GatewayError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| GatewayError::Unauthenticated("malformed bearer token"))?;
        let decoded = match header.alg {
            Algorithm::HS256 => self.decode(token, &self.hs256, Algorithm::HS256),
            Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(GatewayError::Unauthenticated(
                    "RS256 tokens are not configured",
                ))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or(GatewayError::Unauthenticated("RS256 token without kid"))?;
                let jwk = jwks
                    .find(kid)
                    .ok_or(GatewayError::Unauthenticated("unknown key id"))?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|_| GatewayError::Unauthenticated("unusable key"))?;
                self.decode(token, &key, Algorithm::RS256)
            }
            _ => Err(GatewayError::Unauthenticated("unsupported token algorithm")),
        }?;
        let user_id = Uuid::parse_str(&decoded.sub)
            .map_err(|_| GatewayError::Unauthenticated("token subject is not a UUID"))?;
        Ok(AuthUser {
            user_id,
            role: decoded.role,
        })
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<Claims, GatewayError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => GatewayError::TokenExpired,
                ErrorKind::InvalidSignature => {
                    GatewayError::Unauthenticated("invalid token signature")
                }
                _ => GatewayError::Unauthenticated("invalid bearer token"),
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

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<JwtVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(GatewayError::Unauthenticated(
                "missing Authorization: Bearer token",
            ))?;
        let text = value
            .to_str()
            .map_err(|_| GatewayError::Unauthenticated("malformed Authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(GatewayError::Unauthenticated(
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
        assert!(matches!(
            v.verify(&issue_hs256_token(SECRET, user, Role::User, -120)),
            Err(GatewayError::TokenExpired)
        ));
        assert!(matches!(
            v.verify(&issue_hs256_token(
                "another-secret-another-secret-another",
                user,
                Role::User,
                60
            )),
            Err(GatewayError::Unauthenticated(_))
        ));
        assert!(matches!(
            v.verify("not-a-token"),
            Err(GatewayError::Unauthenticated(_))
        ));
    }
}
