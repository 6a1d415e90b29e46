//! Throughput of the runtime with the rollups processor, transactions on and off, measured
//! in the same run on the local stack (`scripts/stack up`), printed as samples/s and as the
//! ratio that is the cost of exactly-once:
//! `cargo bench -p pulseline-stream-processors --bench processor_throughput`
//! Knobs (env): BENCH_USERS (20), BENCH_MINUTES (1000 per user, two sources each).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use pulseline_schemas::records::SampleChange;
use pulseline_stream_processors::processors::{ProcessorsConfig, registry};
use pulseline_stream_processors::runtime::Runtime;
use support::kafka::{Env, wait_for};

fn minute_steps(users: usize, minutes: i64) -> Vec<SampleChange> {
    const MIN: i64 = 60_000_000;
    let base = 1_780_272_000_000_000;
    let mut out = Vec::new();
    for u in 0..users {
        let user = format!("00000000-0000-4000-8000-{u:012}");
        // Each change is its own request: the user's sequence counts them.
        let mut seq = 0;
        for m in 0..minutes {
            for (source, device) in [("watch", "apple_watch"), ("phone", "iphone")] {
                seq += 1;
                out.push(SampleChange {
                    user_id: user.clone(),
                    change_seq: seq,
                    change_index: 0,
                    operation: pulseline_schemas::Operation::Upsert,
                    source_id: source.into(),
                    device_type: device.into(),
                    source_record_id: format!("{m}"),
                    start_at: base + m * MIN,
                    metric: "STEPS".into(),
                    end_at: Some(base + (m + 1) * MIN),
                    tz_offset_minutes: 60,
                    value: Some(80.0),
                    unit: None,
                    category: None,
                    metadata_json: None,
                    accepted_at: 0,
                });
            }
        }
    }
    out
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn measure(transactions: bool) -> f64 {
    let env = Env::new(if transactions { "tput-tx" } else { "tput-alo" }).await;
    let changes = minute_steps(knob("BENCH_USERS", 20), knob("BENCH_MINUTES", 1000) as i64);
    env.produce(&changes).await;
    let mut config = env.config("a");
    config.transactions = transactions;
    config.max_batch_records = 5000;
    let handle = Runtime::new(config, registry(&ProcessorsConfig::default()))
        .expect("runtime config")
        .start();
    wait_for("assignment", Duration::from_secs(60), || {
        !handle.status().assigned().is_empty()
    })
    .await;
    let started = Instant::now();
    let n = changes.len() as u64;
    wait_for("all consumed", Duration::from_secs(600), || {
        handle.status().consumed_records() >= n
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "transactions={transactions}: {n} samples in {secs:.2} s = {:.0} samples/s ({} batches, {} rows out)",
        n as f64 / secs,
        handle.status().committed_batches(),
        handle
            .metrics()
            .count("out", &env.topic("readmodel.rollups.v1")),
    );
    handle.shutdown().await.expect("clean shutdown");
    n as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let with = measure(true).await;
    let without = measure(false).await;
    println!(
        "exactly-once costs {:.0}% of at-least-once throughput (ratio {:.3})",
        (1.0 - with / without) * 100.0,
        with / without
    );
}
