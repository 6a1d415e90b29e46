//! Which read store a process uses, from `PULSELINE_READ_STORE` and the `PULSELINE_SCYLLA_*`
//! variables that docker-compose.kafka.yml and terraform/ set: one set of flags shared by
//! the sink (and any reader), turned into the URL `crate::open` takes. Parsing never
//! connects.

use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};

use super::{
    SCYLLA_KEYSPACE_VAR, SCYLLA_REPLICATION_FACTOR_VAR, SCYLLA_TLS_CA_FILE_VAR, SCYLLA_TLS_VAR,
    SCYLLA_URI_VAR,
};

/// The engine holding the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ReadStoreKind {
    /// The Postgres database of `PULSELINE_DATABASE_URL` (the default).
    #[default]
    Postgres,
    /// The Scylla cluster of `PULSELINE_SCYLLA_URI`.
    Scylla,
}

/// The read-store choice and where Scylla is.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ReadStoreSettings {
    /// `postgres` (default) or `scylla`.
    #[arg(long, env = "PULSELINE_READ_STORE", value_enum, default_value_t = ReadStoreKind::Postgres)]
    pub read_store: ReadStoreKind,
    /// Scylla contact points, `host:port[,host:port]`.
    #[arg(long, env = SCYLLA_URI_VAR, default_value = "127.0.0.1:9042")]
    pub scylla_uri: String,
    /// The keyspace of the read models.
    #[arg(long, env = SCYLLA_KEYSPACE_VAR, default_value = "pulseline")]
    pub scylla_keyspace: String,
    /// Replication factor of the keyspace when the migration creates it.
    #[arg(long, env = SCYLLA_REPLICATION_FACTOR_VAR, default_value_t = 3)]
    pub scylla_replication_factor: u32,
    /// Connect over TLS, each node's certificate verified (against its IP address) with
    /// the system's CAs or `--scylla-tls-ca-file`'s.
    #[arg(long, env = SCYLLA_TLS_VAR, default_value_t = false, action = ArgAction::Set)]
    pub scylla_tls: bool,
    /// PEM file of the CA(s) the nodes' certificates chain to; implies TLS.
    #[arg(long, env = SCYLLA_TLS_CA_FILE_VAR)]
    pub scylla_tls_ca_file: Option<PathBuf>,
}

impl Default for ReadStoreSettings {
    fn default() -> Self {
        Self {
            read_store: ReadStoreKind::Postgres,
            scylla_uri: "127.0.0.1:9042".into(),
            scylla_keyspace: "pulseline".into(),
            scylla_replication_factor: 3,
            scylla_tls: false,
            scylla_tls_ca_file: None,
        }
    }
}

impl ReadStoreSettings {
    /// The URL of the chosen store: `postgres_url` itself, or the `scylla://` URL.
    pub fn url(&self, postgres_url: &str) -> String {
        match self.read_store {
            ReadStoreKind::Postgres => postgres_url.to_owned(),
            ReadStoreKind::Scylla => {
                let mut url = format!(
                    "scylla://{}/{}?replication_factor={}",
                    self.scylla_uri, self.scylla_keyspace, self.scylla_replication_factor
                );
                if self.scylla_tls {
                    url.push_str("&tls=true");
                }
                if let Some(ca) = &self.scylla_tls_ca_file {
                    let ca = ca.to_string_lossy();
                    let encoded: String =
                        url::form_urlencoded::byte_serialize(ca.as_bytes()).collect();
                    url.push_str(&format!("&tls_ca_file={encoded}"));
                }
                url
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: ReadStoreSettings,
    }

    #[test]
    fn postgres_by_default_scylla_by_choice() {
        let d = Cli::parse_from(["x"]).store;
        assert_eq!(d, ReadStoreSettings::default());
        assert_eq!(d.url("postgres://db/p"), "postgres://db/p");
        let s = Cli::parse_from([
            "x",
            "--read-store",
            "scylla",
            "--scylla-uri",
            "scylla:9042",
            "--scylla-replication-factor",
            "1",
        ])
        .store;
        assert_eq!(
            s.url("postgres://db/p"),
            "scylla://scylla:9042/pulseline?replication_factor=1"
        );
        assert!(super::super::ScyllaTarget::parse(&s.url("")).is_ok());
    }

    #[test]
    fn tls_settings_reach_the_url() {
        let s = Cli::parse_from([
            "x",
            "--read-store",
            "scylla",
            "--scylla-tls",
            "true",
            "--scylla-tls-ca-file",
            "/etc/pulseline/scylla ca.pem",
        ])
        .store;
        let target = super::super::ScyllaTarget::parse(&s.url("")).unwrap();
        let tls = target.tls.expect("TLS on");
        assert_eq!(tls.ca_file, Some("/etc/pulseline/scylla ca.pem".into()));
    }
}
