//! The Kafka client settings every service shares: how a client proves who it is and
//! checks whom it talks to (`security.protocol`, SASL, the CA file), read from
//! `PULSELINE_KAFKA_*` variables so one deployment file (terraform/, docker-compose) sets
//! them for every binary.
//!
//! Every `ClientConfig` a service builds starts from [`client_config`], so no client can
//! forget them. A bad value fails the service at start ([`check_env`]), naming the
//! variable and never its value; the password never reaches a log (`Debug` redacts it).
//! This module never opens a connection.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use rdkafka::ClientConfig;

/// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's names).
pub const SECURITY_PROTOCOL_VAR: &str = "PULSELINE_KAFKA_SECURITY_PROTOCOL";
/// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `sasl_*` protocol.
pub const SASL_MECHANISM_VAR: &str = "PULSELINE_KAFKA_SASL_MECHANISM";
pub const SASL_USERNAME_VAR: &str = "PULSELINE_KAFKA_SASL_USERNAME";
pub const SASL_PASSWORD_VAR: &str = "PULSELINE_KAFKA_SASL_PASSWORD";
/// A PEM file of CA certificates; unset means the system's trust store.
pub const SSL_CA_LOCATION_VAR: &str = "PULSELINE_KAFKA_SSL_CA_LOCATION";

/// Every variable this module reads, for deployment checks.
pub const ENV_VARS: &[&str] = &[
    SECURITY_PROTOCOL_VAR,
    SASL_MECHANISM_VAR,
    SASL_USERNAME_VAR,
    SASL_PASSWORD_VAR,
    SSL_CA_LOCATION_VAR,
];

/// A Kafka security setting the services refuse to start with. Names the variable and
/// what is wrong with it, never the value (it may be a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct KafkaSecurityError {
    pub var: &'static str,
    pub problem: &'static str,
}

fn invalid(var: &'static str, problem: &'static str) -> KafkaSecurityError {
    KafkaSecurityError { var, problem }
}

/// How clients reach the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's value of `security.protocol`.
    pub fn as_config(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.as_config().eq_ignore_ascii_case(text))
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// SASL credentials. `Debug` shows the mechanism and user, never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    pub mechanism: &'static str,
    pub username: String,
    password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The mechanisms MSK and Confluent Cloud offer with user and password.
const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The validated security settings. The default is plaintext (the local stack).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    pub sasl: Option<SaslCredentials>,
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaSecurity {
    /// Reads and validates the `PULSELINE_KAFKA_*` variables of this process.
    pub fn from_env() -> Result<Self, KafkaSecurityError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads and validates the settings from `lookup` (a variable's value, if set). An
    /// empty value counts as unset, as deployment templates often leave one empty.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KafkaSecurityError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let protocol = match get(SECURITY_PROTOCOL_VAR) {
            None => SecurityProtocol::Plaintext,
            Some(text) => SecurityProtocol::parse(text.trim()).ok_or(invalid(
                SECURITY_PROTOCOL_VAR,
                "must be plaintext, ssl, sasl_plaintext or sasl_ssl",
            ))?,
        };
        let mechanism = get(SASL_MECHANISM_VAR);
        let username = get(SASL_USERNAME_VAR);
        let password = get(SASL_PASSWORD_VAR);
        let sasl = if protocol.uses_sasl() {
            let mechanism = mechanism.ok_or(invalid(
                SASL_MECHANISM_VAR,
                "is required with a sasl_* security protocol",
            ))?;
            let mechanism = SASL_MECHANISMS
                .iter()
                .copied()
                .find(|m| m.eq_ignore_ascii_case(mechanism.trim()))
                .ok_or(invalid(
                    SASL_MECHANISM_VAR,
                    "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ))?;
            Some(SaslCredentials {
                mechanism,
                username: username.ok_or(invalid(
                    SASL_USERNAME_VAR,
                    "is required with a sasl_* security protocol",
                ))?,
                password: password.ok_or(invalid(
                    SASL_PASSWORD_VAR,
                    "is required with a sasl_* security protocol",
                ))?,
            })
        } else {
            // Credentials that would be silently ignored are a deployment mistake.
            for (var, value) in [
                (SASL_MECHANISM_VAR, &mechanism),
                (SASL_USERNAME_VAR, &username),
                (SASL_PASSWORD_VAR, &password),
            ] {
                if value.is_some() {
                    return Err(invalid(
                        var,
                        "is set but the security protocol does not use SASL",
                    ));
                }
            }
            None
        };
        let ssl_ca_location = match get(SSL_CA_LOCATION_VAR) {
            None => None,
            Some(_) if !protocol.uses_tls() => {
                return Err(invalid(
                    SSL_CA_LOCATION_VAR,
                    "is set but the security protocol does not use TLS",
                ));
            }
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(invalid(SSL_CA_LOCATION_VAR, "is not a readable file"));
                }
                Some(path)
            }
        };
        Ok(Self {
            protocol,
            sasl,
            ssl_ca_location,
        })
    }

    /// Sets these settings on a client's configuration.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_config());
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
    }
}

/// This process's settings, read once from the environment.
fn process_settings() -> &'static Result<KafkaSecurity, KafkaSecurityError> {
    static SETTINGS: OnceLock<Result<KafkaSecurity, KafkaSecurityError>> = OnceLock::new();
    SETTINGS.get_or_init(KafkaSecurity::from_env)
}

/// Validates this process's Kafka security settings. Every service calls it at start,
/// before it builds a client, so a bad setting stops it there with the variable's name.
pub fn check_env() -> Result<&'static KafkaSecurity, KafkaSecurityError> {
    process_settings().as_ref().map_err(Clone::clone)
}

/// A new client configuration with this process's security settings applied: the one way
/// services start a `ClientConfig`. If the settings are invalid (a caller that skipped
/// [`check_env`]), it fails closed: `security.protocol` is set to a value librdkafka
/// refuses, so the client is never created, rather than falling back to plaintext.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    match process_settings() {
        Ok(security) => security.apply(&mut config),
        Err(_) => {
            config.set("security.protocol", "invalid-pulseline-kafka-settings");
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<KafkaSecurity, KafkaSecurityError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KafkaSecurity::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn unset_means_plaintext() {
        let s = settings(&[]).unwrap();
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("sasl.username"), None);
    }

    #[test]
    fn sasl_ssl_settings_reach_the_client_config() {
        // A real PEM bundle: librdkafka loads the CA file when the client is created.
        let ca = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
        let s = settings(&[
            (SECURITY_PROTOCOL_VAR, "SASL_SSL"),
            (SASL_MECHANISM_VAR, "scram-sha-512"),
            (SASL_USERNAME_VAR, "pulseline"),
            (SASL_PASSWORD_VAR, "hunter2-secret"),
            (SSL_CA_LOCATION_VAR, ca.to_str().unwrap()),
        ])
        .unwrap();
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("pulseline"));
        assert_eq!(c.get("sasl.password"), Some("hunter2-secret"));
        assert_eq!(c.get("ssl.ca.location"), ca.to_str());
        // librdkafka accepts them: the client is created (no broker is contacted yet).
        c.set("bootstrap.servers", "127.0.0.1:1");
        let created: Result<rdkafka::producer::BaseProducer, _> = c.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn the_password_never_reaches_debug_or_errors() {
        let s = settings(&[
            (SECURITY_PROTOCOL_VAR, "sasl_plaintext"),
            (SASL_MECHANISM_VAR, "PLAIN"),
            (SASL_USERNAME_VAR, "u"),
            (SASL_PASSWORD_VAR, "hunter2-secret"),
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let e = settings(&[
            (SECURITY_PROTOCOL_VAR, "plaintext"),
            (SASL_PASSWORD_VAR, "hunter2-secret"),
        ])
        .unwrap_err();
        assert_eq!(e.var, SASL_PASSWORD_VAR);
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn bad_settings_fail_naming_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(SECURITY_PROTOCOL_VAR, "tls")], SECURITY_PROTOCOL_VAR),
            (&[(SECURITY_PROTOCOL_VAR, "sasl_ssl")], SASL_MECHANISM_VAR),
            (
                &[
                    (SECURITY_PROTOCOL_VAR, "sasl_ssl"),
                    (SASL_MECHANISM_VAR, "GSSAPI"),
                ],
                SASL_MECHANISM_VAR,
            ),
            (
                &[
                    (SECURITY_PROTOCOL_VAR, "sasl_ssl"),
                    (SASL_MECHANISM_VAR, "PLAIN"),
                    (SASL_USERNAME_VAR, "u"),
                ],
                SASL_PASSWORD_VAR,
            ),
            (&[(SASL_USERNAME_VAR, "u")], SASL_USERNAME_VAR),
            (
                &[(SSL_CA_LOCATION_VAR, "/etc/hostname")],
                SSL_CA_LOCATION_VAR,
            ),
            (
                &[
                    (SECURITY_PROTOCOL_VAR, "ssl"),
                    (SSL_CA_LOCATION_VAR, "/nonexistent/ca.pem"),
                ],
                SSL_CA_LOCATION_VAR,
            ),
        ];
        for (vars, var) in cases {
            let e = settings(vars).unwrap_err();
            assert_eq!(e.var, *var, "{vars:?}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn an_invalid_setting_fails_closed_in_the_client() {
        let mut c = ClientConfig::new();
        c.set("security.protocol", "invalid-pulseline-kafka-settings")
            .set("bootstrap.servers", "127.0.0.1:1");
        let created: Result<rdkafka::producer::BaseProducer, _> = c.create();
        assert!(created.is_err());
    }
}
