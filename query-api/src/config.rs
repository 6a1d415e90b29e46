//! The query API's configuration: one struct, read from flags or `PULSELINE_*` variables,
//! with defaults that work on one machine. Parsing it never opens a socket or a file.
//! The JWT settings are every API's (`pulseline_service::config`: same variables, same
//! development default), so a token the gateway accepts is accepted here.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use pulseline_service::config::{
    DEFAULT_DATABASE_URL, DEFAULT_DB_ACQUIRE_TIMEOUT_MS, DEFAULT_READINESS_TIMEOUT_MS,
    DEV_JWT_SECRET, Environment, check_jwt_secret, describe_jwt_secret, env,
};
use pulseline_service::redact_url;

use crate::analytics::{self, SqlLimits};
use crate::error::QueryError;

const DEFAULT_ADDR: &str = "127.0.0.1:8081";
/// Daily rollups: the gateway's acceptance window (400 days), so any accepted day can be
/// read in one request.
const DEFAULT_MAX_DAYS_DAY: u32 = 400;
/// Hourly rollups: a month (744 points) per request.
const DEFAULT_MAX_DAYS_HOUR: u32 = 31;
const DEFAULT_DB_POOL_SIZE: u32 = 8;

/// Everything the query API needs to run.
#[derive(Clone, Parser)]
#[command(
    name = "pulseline-query-api",
    about = "pulseline query API (read models with freshness)"
)]
pub struct Config {
    /// Listen address (port 0 picks a free port).
    #[arg(long, env = "PULSELINE_QUERY_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// Postgres holding the read models and the gateway's sequences (one database).
    #[arg(long, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Where the read models are (`PULSELINE_READ_STORE`): Postgres (the database above)
    /// or Scylla (`PULSELINE_SCYLLA_*`; the gateway's sequences stay in Postgres).
    #[command(flatten)]
    pub store: pulseline_sinks::scylla::ReadStoreSettings,

    /// `development` or `production`; production refuses the development JWT secret.
    #[arg(long = "env", env = env::ENV, value_enum, default_value_t = Environment::Development)]
    pub environment: Environment,

    /// HS256 secret for bearer tokens (the gateway's). Default: the development secret.
    #[arg(long, env = env::JWT_SECRET, default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Optional JWKS file: RS256 tokens are verified against its keys (by `kid`).
    #[arg(long, env = env::JWT_JWKS_FILE)]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Longest `from`..`to` range, in days, for `period=day`.
    #[arg(long, env = "PULSELINE_QUERY_MAX_DAYS_DAY", default_value_t = DEFAULT_MAX_DAYS_DAY)]
    pub max_days_day: u32,

    /// Longest `from`..`to` range, in days, for `period=hour`.
    #[arg(long, env = "PULSELINE_QUERY_MAX_DAYS_HOUR", default_value_t = DEFAULT_MAX_DAYS_HOUR)]
    pub max_days_hour: u32,

    /// Postgres connections.
    #[arg(long, env = env::DB_POOL_SIZE, default_value_t = DEFAULT_DB_POOL_SIZE)]
    pub db_pool_size: u32,

    /// How long a request waits for a connection before 503 UNAVAILABLE.
    #[arg(long, env = env::DB_ACQUIRE_TIMEOUT_MS, default_value_t = DEFAULT_DB_ACQUIRE_TIMEOUT_MS)]
    pub db_acquire_timeout_ms: u64,

    /// Time limit of the /readyz check.
    #[arg(long, env = env::READINESS_TIMEOUT_MS, default_value_t = DEFAULT_READINESS_TIMEOUT_MS)]
    pub readiness_timeout_ms: u64,

    /// The Parquet export analysts' SQL reads: a directory or `s3://bucket/prefix` (the
    /// exporter's setting; S3 settings from the `AWS_*` variables).
    #[arg(long, env = "PULSELINE_EXPORT_DIR", default_value = pulseline_sinks::export::DEFAULT_EXPORT_DIR)]
    pub export_dir: PathBuf,

    /// Statement timeout of analysts' SQL, in seconds.
    #[arg(long, env = "PULSELINE_SQL_TIMEOUT_SECS", default_value_t = analytics::DEFAULT_TIMEOUT_SECS)]
    pub sql_timeout_secs: u64,

    /// The largest `maxRows` an analyst may ask for (the default is 10,000).
    #[arg(long, env = "PULSELINE_SQL_MAX_ROWS", default_value_t = analytics::DEFAULT_ROW_LIMIT)]
    pub sql_max_rows: usize,

    /// Memory one analyst query may use, in MiB.
    #[arg(long, env = "PULSELINE_SQL_MEMORY_LIMIT_MB", default_value_t = analytics::DEFAULT_MEMORY_LIMIT_MB)]
    pub sql_memory_limit_mb: usize,

    /// Run the sink's migrations at start-up, so the read-model tables exist whichever
    /// service starts first (the sink runs the same, idempotently).
    #[arg(long, env = "PULSELINE_QUERY_MIGRATE", default_value_t = true, action = ArgAction::Set)]
    pub migrate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            store: Default::default(),
            environment: Environment::Development,
            jwt_secret: DEV_JWT_SECRET.to_owned(),
            jwt_jwks_file: None,
            max_days_day: DEFAULT_MAX_DAYS_DAY,
            max_days_hour: DEFAULT_MAX_DAYS_HOUR,
            db_pool_size: DEFAULT_DB_POOL_SIZE,
            db_acquire_timeout_ms: DEFAULT_DB_ACQUIRE_TIMEOUT_MS,
            readiness_timeout_ms: DEFAULT_READINESS_TIMEOUT_MS,
            export_dir: PathBuf::from(pulseline_sinks::export::DEFAULT_EXPORT_DIR),
            sql_timeout_secs: analytics::DEFAULT_TIMEOUT_SECS,
            sql_max_rows: analytics::DEFAULT_ROW_LIMIT,
            sql_memory_limit_mb: analytics::DEFAULT_MEMORY_LIMIT_MB,
            migrate: true,
        }
    }
}

impl Config {
    /// Refuses settings the API must not run with. Called by `Application::build`.
    pub fn validate(&self) -> Result<(), QueryError> {
        let bad = |msg: &str| Err(QueryError::Config(msg.to_owned()));
        check_jwt_secret(self.environment, &self.jwt_secret).or_else(bad)?;
        if self.max_days_day == 0 || self.max_days_hour == 0 {
            return bad("the longest ranges must be at least one day");
        }
        if self.db_pool_size == 0 {
            return bad("the pool size must be > 0");
        }
        if self.sql_timeout_secs == 0 || self.sql_max_rows == 0 || self.sql_memory_limit_mb == 0 {
            return bad("the SQL timeout, row maximum and memory limit must be > 0");
        }
        Ok(())
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    pub fn readiness_timeout(&self) -> Duration {
        Duration::from_millis(self.readiness_timeout_ms)
    }

    /// The limits analysts' queries run under.
    pub fn sql_limits(&self) -> SqlLimits {
        SqlLimits {
            timeout: Duration::from_secs(self.sql_timeout_secs),
            max_rows: self.sql_max_rows,
            memory_bytes: self.sql_memory_limit_mb.saturating_mul(1024 * 1024),
            target_partitions: 0,
        }
    }
}

/// Printed at start: every setting, secrets redacted.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = describe_jwt_secret(&self.jwt_secret);
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("read_store", &self.store.read_store)
            .field("environment", &self.environment)
            .field("jwt_secret", &secret)
            .field("jwt_jwks_file", &self.jwt_jwks_file)
            .field("max_days_day", &self.max_days_day)
            .field("max_days_hour", &self.max_days_hour)
            .field("db_pool_size", &self.db_pool_size)
            .field("db_acquire_timeout_ms", &self.db_acquire_timeout_ms)
            .field("readiness_timeout_ms", &self.readiness_timeout_ms)
            .field("export_dir", &self.export_dir)
            .field("sql_limits", &self.sql_limits())
            .field("migrate", &self.migrate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulseline_sinks::scylla::ReadStoreKind;

    #[test]
    fn defaults_parse_and_validate() {
        let parsed = Config::parse_from(["pulseline-query-api"]);
        let d = Config::default();
        assert_eq!(parsed.max_days_day, d.max_days_day);
        assert_eq!(parsed.max_days_hour, d.max_days_hour);
        assert_eq!(d.addr.to_string(), "127.0.0.1:8081");
        assert!(d.validate().is_ok());
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
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config {
            jwt_secret: "super-secret-value-that-nobody-may-see-123".into(),
            database_url: "postgres://app:hunter2@db:5432/pulseline".into(),
            ..Config::default()
        };
        let printed = format!("{c:?}");
        assert!(!printed.contains("super-secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn the_read_store_is_postgres_unless_scylla_is_chosen() {
        let c = Config::parse_from(["pulseline-query-api"]);
        assert_eq!(c.store.read_store, ReadStoreKind::Postgres);
        c.validate().unwrap();
        let c = Config::parse_from([
            "pulseline-query-api",
            "--read-store",
            "scylla",
            "--scylla-uri",
            "scylla-1:9042,scylla-2:9042",
        ]);
        c.validate().unwrap();
        assert_eq!(c.store.read_store, ReadStoreKind::Scylla);
        assert_eq!(
            c.store.url(&c.database_url),
            "scylla://scylla-1:9042,scylla-2:9042/pulseline?replication_factor=3"
        );
    }
}
