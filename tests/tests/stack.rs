//! The local stack script: idempotent `up`, and a `status` that tells each part apart.

use std::process::Command;
use std::time::{Duration, Instant};

use pulseline_e2e::repo_root;

fn stack(args: &[&str], env: &[(&str, &str)]) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("scripts/stack runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Columns are padded for people; compare with single spaces.
    let text = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.success(), text, started.elapsed())
}

#[test]
fn stack_up_twice_succeeds_and_the_second_is_quick_and_starts_nothing() {
    let (ok, text, _) = stack(&["up"], &[]);
    assert!(ok, "first `stack up` failed:\n{text}");
    let (ok, text, took) = stack(&["up"], &[("PULSELINE_STACK_QUIET", "1")]);
    assert!(ok, "second `stack up` failed:\n{text}");
    assert!(
        text.trim().is_empty(),
        "an up-to-date stack is quiet, got:\n{text}"
    );
    // Everything already answers: no install, no start, no wait. A cold start takes minutes.
    assert!(
        took < Duration::from_secs(20),
        "second `stack up` took {took:?}"
    );
}

#[test]
fn stack_status_reports_each_part() {
    let (ok, text, _) = stack(&["status"], &[]);
    assert!(ok, "status of a running stack failed:\n{text}");
    for part in ["postgres: up", "broker: up", "registry: up"] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
}

#[test]
fn stack_status_names_the_part_that_is_down() {
    // Point the registry at a port where nothing listens: status must say so and fail.
    let (ok, text, _) = stack(
        &["status"],
        &[("PULSELINE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:9")],
    );
    assert!(!ok, "status must fail when a part is down:\n{text}");
    assert!(text.contains("registry: DOWN"), "{text}");
    assert!(text.contains("broker: up"), "{text}");
}

#[test]
fn the_broker_is_a_setting_and_status_reports_both() {
    // scripts/test brings both brokers up; each setting names its own broker and reports
    // the other one.
    for (broker, own, other) in [
        ("noida", "broker: up 127.0.0.1:29092 (noida-db", "tansu: up"),
        ("tansu", "broker: up 127.0.0.1:19092 (tansu", "noida: up"),
    ] {
        let (ok, text, _) = stack(&["status"], &[("PULSELINE_BROKER", broker)]);
        assert!(ok, "status with PULSELINE_BROKER={broker} failed:\n{text}");
        assert!(text.contains(own), "`{own}` missing from:\n{text}");
        assert!(text.contains(other), "`{other}` missing from:\n{text}");
    }
    let (ok, text, _) = stack(&["status"], &[("PULSELINE_BROKER", "kafka")]);
    assert!(!ok, "an unknown broker must be refused:\n{text}");
    assert!(
        text.contains("PULSELINE_BROKER must be tansu or noida"),
        "{text}"
    );
}
