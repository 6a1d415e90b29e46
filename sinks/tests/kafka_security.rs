//! The sink binary refuses to start with a bad Kafka security setting, naming the
//! variable and never a secret, before it opens any connection. No stack needed.

use std::process::Command;

#[test]
fn the_sink_refuses_a_bad_kafka_security_setting_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_pulseline-sink"))
        .env("PULSELINE_KAFKA_SECURITY_PROTOCOL", "tls")
        .env("PULSELINE_KAFKA_SASL_PASSWORD", "hunter2-secret")
        // Unreachable: a sink that got past the check would fail differently.
        .env("PULSELINE_DATABASE_URL", "postgres://127.0.0.1:1/nothing")
        .env("PULSELINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .expect("the sink binary runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("PULSELINE_KAFKA_SECURITY_PROTOCOL: must be plaintext, ssl"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn the_sink_refuses_sasl_without_credentials() {
    let out = Command::new(env!("CARGO_BIN_EXE_pulseline-sink"))
        .env("PULSELINE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("PULSELINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("PULSELINE_KAFKA_SASL_USERNAME", "svc")
        .env_remove("PULSELINE_KAFKA_SASL_PASSWORD")
        .env("PULSELINE_DATABASE_URL", "postgres://127.0.0.1:1/nothing")
        .output()
        .expect("the sink binary runs");
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        printed.contains("PULSELINE_KAFKA_SASL_PASSWORD: is required"),
        "{printed}"
    );
}
