//! `pulseline chaos`, short and seeded: users upload through the gateway while the gateway,
//! relay, processor and sink (separate processes) are SIGKILLed and restarted, Postgres
//! restarts in immediate mode and the broker restarts. Afterwards every acknowledged change
//! is in Postgres, every read model equals the brute-force oracle over what the clients were
//! acknowledged, and every user is fresh. Needs the workspace's service binaries built
//! (`cargo nextest run --workspace` builds them) and `scripts/stack up` (the registry and
//! noida-db's binary; the run brings its own Postgres cluster and broker).

use std::path::PathBuf;
use std::time::Duration;

use pulseline_cli::chaos::{ChaosConfig, ChaosReport, FAULTS, Fault, noida_binary, run, schedule};
use pulseline_testkit::{Stack, test_seed};

/// target/debug, where cargo put the service binaries beside this test's directory.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf();
    for bin in [
        "pulseline-gateway",
        "pulseline-relay",
        "pulseline-processor",
        "pulseline-sink",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {} (run the whole workspace: cargo nextest run --workspace)",
            dir.display()
        );
    }
    dir
}

fn every_fault() -> Vec<Fault> {
    FAULTS.iter().map(|(_, f)| *f).collect()
}

#[test]
fn a_seed_always_gives_the_same_schedule_with_every_fault() {
    let all = every_fault();
    let a = schedule(42, Duration::from_secs(40), &all);
    assert_eq!(a, schedule(42, Duration::from_secs(40), &all));
    assert_ne!(a, schedule(43, Duration::from_secs(40), &all));
    let kinds: std::collections::BTreeSet<String> = a.iter().map(|s| s.fault.to_string()).collect();
    assert_eq!(kinds.len(), FAULTS.len(), "{a:?}");
    assert!(
        a.windows(2).all(|w| w[0].at < w[1].at),
        "in time order: {a:?}"
    );
    assert!(
        a.iter().all(|s| s.at < Duration::from_secs(32)),
        "within the first 80 %: {a:?}"
    );
}

/// Runs `pulseline chaos` with these faults for `seconds`; panics with the report and the
/// kept logs when a check fails.
async fn chaos(test: &str, default_seed: u64, seconds: u64, faults: Vec<Fault>) -> ChaosReport {
    let seed = test_seed(test, default_seed);
    let duration = Duration::from_secs(seconds);
    let logs = tempfile::tempdir().expect("log directory");
    let report = run(ChaosConfig {
        seed,
        duration,
        users: 3,
        batch: 100,
        backlog_days: 2,
        bin_dir: bin_dir(),
        noida_bin: noida_binary().expect("noida-db (scripts/stack up installs it)"),
        schema_registry_url: Stack::from_env().schema_registry_url,
        log_dir: logs.path().to_path_buf(),
        faults: faults.clone(),
    })
    .await
    .expect("the chaos run completes");
    assert_eq!(report.faults.len(), schedule(seed, duration, &faults).len());
    assert!(report.acknowledged_items > 0, "{report:?}");
    assert!(
        report.oracle.iter().all(|(_, compared, _)| *compared > 0),
        "{report:?}"
    );
    assert!(
        report.passed(),
        "seed {seed} (rerun with PULSELINE_TEST_SEED={seed}); logs kept in {}: {report:?}",
        logs.keep().display()
    );
    report
}

/// Without the broker restarts nothing may be lost anywhere, so no repair runs: the
/// pipeline must converge on its own after SIGKILLs and Postgres crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_services_and_a_crashed_postgres_lose_nothing_and_count_nothing_twice() {
    let faults: Vec<Fault> = every_fault()
        .into_iter()
        .filter(|f| !matches!(f, Fault::RestartBroker | Fault::CrashBroker))
        .collect();
    let report = chaos("chaos-services", 20_261_203, 30, faults).await;
    assert_eq!(report.repaired_users, 0);
}

/// With the broker restarted and SIGKILLed too: noida-db loses records it acknowledged,
/// which the operations commands recover from Postgres. Every read model is a function of
/// the live data (a product impact's `asOf` included), so accepting it again restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_including_broker_restarts_ends_equal_to_the_oracle_after_recovery() {
    chaos("chaos-all", 20_261_202, 40, every_fault()).await;
}
