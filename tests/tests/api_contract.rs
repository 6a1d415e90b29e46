//! The OpenAPI documents of the gateway and the query API match what the servers do:
//! schemathesis (`pip install schemathesis`, 4.x; `scripts/ensure-tools` installs it) runs
//! every check against each running server, with the settings and the few documented
//! exceptions of `tests/schemathesis.toml`, and the test fails on any finding, any 5xx
//! included. Needs Postgres (`scripts/stack up`); no broker.

use std::path::Path;
use std::process::Command;

use pulseline_ingest_gateway::app::Application as Gateway;
use pulseline_ingest_gateway::config::Config as GatewayConfig;
use pulseline_query_api::{Application as QueryApi, Config as QueryConfig};
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_testkit::Stack;
use uuid::Uuid;

/// Runs schemathesis against `url` with `role`'s token; panics with its report on findings.
fn schemathesis(url: &str, secret: &str, role: Role, only_path: Option<&str>) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let token = issue_hs256_token(secret, Uuid::now_v7(), role, 3600);
    let mut cmd = Command::new("schemathesis");
    cmd.arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--checks", "all", "--seed", "20261201", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(path) = only_path {
        cmd.args(["--include-path", path]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("schemathesis could not start (scripts/ensure-tools installs it): {e}")
    });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the API and its OpenAPI document disagree ({url}, {role:?}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that tested nothing proves nothing.
    assert!(report.contains("generated"), "{report}");
    assert!(!report.contains("Tested: 0"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_does_what_its_openapi_document_says() {
    let db = Stack::from_env().create_database().await;
    let config = GatewayConfig {
        addr: "127.0.0.1:0".parse().expect("address"),
        database_url: db.url.clone(),
        ..GatewayConfig::default()
    };
    let secret = config.jwt_secret.clone();
    let gateway = Gateway::build(config).await.expect("the gateway starts");
    let url = format!("http://{}", gateway.local_addr());
    tokio::spawn(gateway.run_until(std::future::pending()));
    tokio::task::spawn_blocking(move || schemathesis(&url, &secret, Role::User, None))
        .await
        .expect("schemathesis run");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_api_does_what_its_openapi_document_says() {
    let db = Stack::from_env().create_database().await;
    // The gateway's tables exist first, as in production (freshness reads its sequences).
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    pulseline_testkit::create_gateway_tables(&pool).await;
    let export = tempfile::tempdir().expect("temporary directory");
    let config = QueryConfig {
        addr: "127.0.0.1:0".parse().expect("address"),
        database_url: db.url.clone(),
        export_dir: export.path().to_path_buf(),
        ..QueryConfig::default()
    };
    let secret = config.jwt_secret.clone();
    let api = QueryApi::build(config).await.expect("the query API starts");
    let url = format!("http://{}", api.local_addr());
    tokio::spawn(api.run_until(std::future::pending()));
    tokio::task::spawn_blocking(move || {
        // Users read their read models; analysts run SQL (other roles get 403 there).
        schemathesis(&url, &secret, Role::User, None);
        schemathesis(&url, &secret, Role::Analyst, Some("/v1/analytics/sql"));
    })
    .await
    .expect("schemathesis runs");
}
