//! The gateway's configuration: one struct, read from flags or `PULSELINE_*` variables,
//! with defaults that work on one machine.
//!
//! Parsing a config never opens a socket or a file (the JWKS file is read when the
//! application is built). `Config::default()` is what the binary gets with no variables
//! set; tests start from it and override fields.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pulseline_service::config::{
    DEFAULT_DATABASE_URL, DEFAULT_DB_ACQUIRE_TIMEOUT_MS, DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_READINESS_TIMEOUT_MS, check_jwt_secret, describe_jwt_secret, env,
};
/// The JWT settings are every API's (`pulseline_service::config`); re-exported because
/// `Config` has fields of these types.
pub use pulseline_service::config::{DEV_JWT_SECRET, Environment};
use pulseline_service::redact_url;

use crate::error::GatewayError;

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const DEFAULT_MAX_BATCH_ITEMS: usize = 2000;
const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20;
const DEFAULT_RATE_LIMIT_BURST: u32 = 40;
const DEFAULT_MAX_FUTURE_SECS: u64 = 600;
const DEFAULT_MAX_AGE_DAYS: u32 = 400;
const DEFAULT_IDEMPOTENCY_RETENTION_DAYS: u32 = 30;
const DEFAULT_SAMPLE_KEY_RETENTION_DAYS: u32 = 400;
const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 3600;
const DEFAULT_RELAY_SHARDS: u16 = crate::outbox::DEFAULT_SHARDS;
const DEFAULT_IN_PROGRESS_WAIT_MS: u64 = 5000;
/// A batch transaction keeps its connection busy (Postgres does the work), so more
/// connections than Postgres has cores to spare only queue inside Postgres, where they
/// slow each other and the relay down; requests wait for a connection here instead.
/// Measured on 2 cores: 8 gives the 16 connections' throughput at half the p99 and a
/// relay that keeps up.
const DEFAULT_DB_POOL_SIZE: u32 = 8;

/// Everything the gateway needs to run. Durations are in the unit their name says.
#[derive(Clone, Parser)]
#[command(
    name = "pulseline-gateway",
    about = "pulseline ingest gateway (HTTP write path)"
)]
pub struct Config {
    /// Listen address (port 0 picks a free port).
    #[arg(long, env = "PULSELINE_GATEWAY_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// Postgres URL of the write path's database.
    #[arg(long, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,

    /// Kafka bootstrap servers, for the readiness check only (the relay publishes).
    #[arg(long, env = env::KAFKA_BOOTSTRAP, default_value = DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,

    /// `development` or `production`; production refuses the development JWT secret.
    #[arg(long = "env", env = env::ENV, value_enum, default_value_t = Environment::Development)]
    pub environment: Environment,

    /// HS256 secret for bearer tokens. The default is the documented development secret.
    #[arg(long, env = env::JWT_SECRET, default_value = DEV_JWT_SECRET, hide_default_value = true, hide_env_values = true)]
    pub jwt_secret: String,

    /// Optional JWKS file: RS256 tokens are verified against its keys (by `kid`).
    #[arg(long, env = env::JWT_JWKS_FILE)]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Largest request body, in bytes, AFTER gzip decompression.
    #[arg(long, env = "PULSELINE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most items (samples + deletions, or events + deletions) in one batch.
    #[arg(long, env = "PULSELINE_MAX_BATCH_ITEMS", default_value_t = DEFAULT_MAX_BATCH_ITEMS)]
    pub max_batch_items: usize,

    /// Sustained requests per second per user.
    #[arg(long, env = "PULSELINE_RATE_LIMIT_PER_SEC", default_value_t = DEFAULT_RATE_LIMIT_PER_SEC)]
    pub rate_limit_per_sec: u32,

    /// Requests a user may send at once above the sustained rate.
    #[arg(long, env = "PULSELINE_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,

    /// How far in the future (clock skew) a sample or event may start or end.
    #[arg(long, env = "PULSELINE_MAX_FUTURE_SECS", default_value_t = DEFAULT_MAX_FUTURE_SECS)]
    pub max_future_secs: u64,

    /// Oldest accepted start time, in days before now (older: TOO_OLD).
    #[arg(long, env = "PULSELINE_MAX_AGE_DAYS", default_value_t = DEFAULT_MAX_AGE_DAYS)]
    pub max_age_days: u32,

    /// How long a request id (and its stored answer) is remembered.
    #[arg(long, env = "PULSELINE_IDEMPOTENCY_RETENTION_DAYS", default_value_t = DEFAULT_IDEMPOTENCY_RETENTION_DAYS)]
    pub idempotency_retention_days: u32,

    /// How long sample and event keys are kept, by start time. Must be >= the max age, so
    /// a re-upload of an expired key is refused as TOO_OLD rather than accepted again.
    #[arg(long, env = "PULSELINE_SAMPLE_KEY_RETENTION_DAYS", default_value_t = DEFAULT_SAMPLE_KEY_RETENTION_DAYS)]
    pub sample_key_retention_days: u32,

    /// How often the retention task runs.
    #[arg(long, env = "PULSELINE_RETENTION_INTERVAL_SECS", default_value_t = DEFAULT_RETENTION_INTERVAL_SECS)]
    pub retention_interval_secs: u64,

    /// Relay shards (must match the relays' setting).
    #[arg(long, env = "PULSELINE_RELAY_SHARDS", default_value_t = DEFAULT_RELAY_SHARDS)]
    pub relay_shards: u16,

    /// How long a duplicate request waits for the original to finish before 409.
    #[arg(long, env = "PULSELINE_IN_PROGRESS_WAIT_MS", default_value_t = DEFAULT_IN_PROGRESS_WAIT_MS)]
    pub in_progress_wait_ms: u64,

    /// Postgres connections (about 2-4 per Postgres core is plenty: each runs a whole
    /// batch transaction).
    #[arg(long, env = env::DB_POOL_SIZE, default_value_t = DEFAULT_DB_POOL_SIZE)]
    pub db_pool_size: u32,

    /// How long a request waits for a Postgres connection before 503 UNAVAILABLE.
    #[arg(long, env = env::DB_ACQUIRE_TIMEOUT_MS, default_value_t = DEFAULT_DB_ACQUIRE_TIMEOUT_MS)]
    pub db_acquire_timeout_ms: u64,

    /// Time limit of each /readyz check (Postgres, broker).
    #[arg(long, env = env::READINESS_TIMEOUT_MS, default_value_t = DEFAULT_READINESS_TIMEOUT_MS)]
    pub readiness_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            kafka_bootstrap: DEFAULT_KAFKA_BOOTSTRAP.to_owned(),
            environment: Environment::Development,
            jwt_secret: DEV_JWT_SECRET.to_owned(),
            jwt_jwks_file: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            rate_limit_per_sec: DEFAULT_RATE_LIMIT_PER_SEC,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            max_future_secs: DEFAULT_MAX_FUTURE_SECS,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            idempotency_retention_days: DEFAULT_IDEMPOTENCY_RETENTION_DAYS,
            sample_key_retention_days: DEFAULT_SAMPLE_KEY_RETENTION_DAYS,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            relay_shards: DEFAULT_RELAY_SHARDS,
            in_progress_wait_ms: DEFAULT_IN_PROGRESS_WAIT_MS,
            db_pool_size: DEFAULT_DB_POOL_SIZE,
            db_acquire_timeout_ms: DEFAULT_DB_ACQUIRE_TIMEOUT_MS,
            readiness_timeout_ms: DEFAULT_READINESS_TIMEOUT_MS,
        }
    }
}

impl Config {
    /// Refuses settings the gateway must not run with. Called by `Application::build`.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |msg: String| Err(GatewayError::Config(msg));
        check_jwt_secret(self.environment, &self.jwt_secret)
            .map_err(|msg| GatewayError::Config(msg.to_owned()))?;
        if self.sample_key_retention_days < self.max_age_days {
            return bad(format!(
                "PULSELINE_SAMPLE_KEY_RETENTION_DAYS ({}) must be >= PULSELINE_MAX_AGE_DAYS ({}): an expired key \
                 would otherwise be accepted again as new",
                self.sample_key_retention_days, self.max_age_days
            ));
        }
        if self.rate_limit_per_sec == 0 || self.rate_limit_burst == 0 {
            return bad("rate limit and burst must be > 0".into());
        }
        if self.max_batch_items == 0 || self.max_body_bytes == 0 {
            return bad("max batch items and max body bytes must be > 0".into());
        }
        if self.relay_shards == 0 || self.db_pool_size == 0 {
            return bad("relay shards and pool size must be > 0".into());
        }
        Ok(())
    }

    pub fn in_progress_wait(&self) -> Duration {
        Duration::from_millis(self.in_progress_wait_ms)
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    pub fn readiness_timeout(&self) -> Duration {
        Duration::from_millis(self.readiness_timeout_ms)
    }
}

/// Printed at start: every setting, secrets redacted.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = describe_jwt_secret(&self.jwt_secret);
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("environment", &self.environment)
            .field("jwt_secret", &secret)
            .field("jwt_jwks_file", &self.jwt_jwks_file)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch_items", &self.max_batch_items)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("max_future_secs", &self.max_future_secs)
            .field("max_age_days", &self.max_age_days)
            .field(
                "idempotency_retention_days",
                &self.idempotency_retention_days,
            )
            .field("sample_key_retention_days", &self.sample_key_retention_days)
            .field("retention_interval_secs", &self.retention_interval_secs)
            .field("relay_shards", &self.relay_shards)
            .field("in_progress_wait_ms", &self.in_progress_wait_ms)
            .field("db_pool_size", &self.db_pool_size)
            .field("db_acquire_timeout_ms", &self.db_acquire_timeout_ms)
            .field("readiness_timeout_ms", &self.readiness_timeout_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_defaults_equal_default() {
        // Parse from an empty command line; variables set in the test environment would
        // leak in, so compare only fields nobody sets while testing.
        let parsed = Config::parse_from(["pulseline-gateway"]);
        let d = Config::default();
        assert_eq!(parsed.max_body_bytes, d.max_body_bytes);
        assert_eq!(parsed.max_batch_items, d.max_batch_items);
        assert_eq!(parsed.rate_limit_per_sec, d.rate_limit_per_sec);
        assert_eq!(parsed.rate_limit_burst, d.rate_limit_burst);
        assert_eq!(parsed.in_progress_wait_ms, d.in_progress_wait_ms);
        assert_eq!(parsed.relay_shards, d.relay_shards);
        assert_eq!(d.addr.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn production_refuses_the_dev_secret() {
        let mut c = Config {
            environment: Environment::Production,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.jwt_secret = "a-real-secret-that-is-long-enough-0123456789".into();
        assert!(c.validate().is_ok());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn key_retention_shorter_than_max_age_is_refused() {
        let c = Config {
            sample_key_retention_days: 10,
            max_age_days: 400,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config {
            jwt_secret: "super-secret-value-that-nobody-may-see-123".into(),
            database_url: "postgres://app:hunter2@db:5432/pulseline".into(),
            ..Config::default()
        };
        let printed = format!("{c:?}");
        assert!(!printed.contains("super-secret"));
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("postgres://app:***@db:5432/pulseline"));
    }
}
