//! The settings every service shares, named once. Each binary has its own `Config` (clap,
//! flags and `PULSELINE_*` variables, defaults that work on one machine), and the settings
//! that mean the same thing in every service use the same variable and default from here:
//! a deployment sets `PULSELINE_DB_POOL_SIZE` in each service's environment, not under a
//! name that changes with the service. Listen addresses stay per service
//! (`PULSELINE_<SERVICE>_METRICS_ADDR`, ...) so that every service can run on one machine;
//! settings only one service has are that service's (new ones are named
//! `PULSELINE_<SERVICE>_<SETTING>`, like `PULSELINE_SINK_GROUP_ID`).

use clap::ValueEnum;

/// Variable names of the shared settings.
pub mod env {
    pub const DATABASE_URL: &str = "PULSELINE_DATABASE_URL";
    pub const KAFKA_BOOTSTRAP: &str = "PULSELINE_KAFKA_BOOTSTRAP";
    pub const SCHEMA_REGISTRY_URL: &str = "PULSELINE_SCHEMA_REGISTRY_URL";
    pub const TOPIC_PREFIX: &str = "PULSELINE_TOPIC_PREFIX";
    /// Postgres connections of this process.
    pub const DB_POOL_SIZE: &str = "PULSELINE_DB_POOL_SIZE";
    /// How long a request waits for a connection before it is refused as unavailable.
    pub const DB_ACQUIRE_TIMEOUT_MS: &str = "PULSELINE_DB_ACQUIRE_TIMEOUT_MS";
    /// Time limit of the `/readyz` checks.
    pub const READINESS_TIMEOUT_MS: &str = "PULSELINE_READINESS_TIMEOUT_MS";
    /// Create the topics of `schemas/topics.toml` at start-up if missing (idempotent).
    pub const CREATE_TOPICS: &str = "PULSELINE_CREATE_TOPICS";
    pub const ENV: &str = "PULSELINE_ENV";
    pub const JWT_SECRET: &str = "PULSELINE_JWT_SECRET";
    pub const JWT_JWKS_FILE: &str = "PULSELINE_JWT_JWKS_FILE";
}

/// The local stack's Postgres (`scripts/stack up`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/pulseline";
/// The local stack's broker.
pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:29092";
/// The local stack's schema registry.
pub const DEFAULT_SCHEMA_REGISTRY_URL: &str = "http://127.0.0.1:18081";
/// Creating missing topics is idempotent, and a service that starts before whoever else
/// would have created them should work rather than fail: on by default, everywhere.
pub const DEFAULT_CREATE_TOPICS: bool = true;
pub const DEFAULT_DB_ACQUIRE_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_READINESS_TIMEOUT_MS: u64 = 2000;

/// The development JWT secret, documented so local clients can mint tokens. A config
/// with `PULSELINE_ENV=production` refuses to start with it.
pub const DEV_JWT_SECRET: &str = "pulseline-dev-secret-do-not-use-in-production";

/// Where a service runs: production refuses development defaults (the JWT secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// The JWT settings every HTTP service checks the same way; the message names the
/// variable to fix.
pub fn check_jwt_secret(environment: Environment, secret: &str) -> Result<(), &'static str> {
    if environment == Environment::Production && secret == DEV_JWT_SECRET {
        return Err(
            "PULSELINE_ENV=production refuses the development JWT secret: set PULSELINE_JWT_SECRET",
        );
    }
    if secret.len() < 32 {
        return Err("PULSELINE_JWT_SECRET must be at least 32 bytes");
    }
    Ok(())
}

/// How a JWT secret is printed in a config dump.
pub fn describe_jwt_secret(secret: &str) -> &'static str {
    if secret == DEV_JWT_SECRET {
        "<development default>"
    } else {
        "<redacted>"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_the_dev_secret() {
        assert!(check_jwt_secret(Environment::Production, DEV_JWT_SECRET).is_err());
        assert!(check_jwt_secret(Environment::Development, DEV_JWT_SECRET).is_ok());
        assert!(check_jwt_secret(Environment::Development, "short").is_err());
        assert_eq!(describe_jwt_secret("x".repeat(40).as_str()), "<redacted>");
    }
}
