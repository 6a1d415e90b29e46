//! Throughput of the runtime with the registered processors (rollups, sleep nights),
//! transactions on and off, measured in the same run on the local stack (`scripts/stack
//! up`), printed as samples/s and as the ratio that is the cost of exactly-once; then each
//! processor alone through the in-memory engine (no Kafka), side by side, on its own
//! workload (minute steps for rollups, watch-and-phone nights for sleep):
//! `cargo bench -p pulseline-stream-processors --bench processor_throughput`
//! Knobs (env): BENCH_USERS (20), BENCH_MINUTES (1000 per user, two sources each),
//! BENCH_NIGHTS (30 per user: 48 watch stages and 2 phone samples each).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use pulseline_schemas::records::SampleChange;
use pulseline_stream_processors::harness::Harness;
use pulseline_stream_processors::processors::{ProcessorsConfig, Rollups, SleepNights, registry};
use pulseline_stream_processors::runtime::Runtime;
use pulseline_stream_processors::{Input, Processor};
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

/// Per user and night: the watch's stages every 10 minutes from 23:00 to 07:00 (+01:00)
/// and the phone's in_bed and asleep_unspecified over the same hours.
fn nights(users: usize, nights: i64) -> Vec<SampleChange> {
    const MIN: i64 = 60_000_000;
    let base = 1_780_268_400_000_000; // 2026-05-31T22:00:00Z = 23:00 +01:00
    let stages = ["core", "deep", "core", "rem", "awake", "core"];
    let mut out = Vec::new();
    for u in 0..users {
        let user = format!("00000000-0000-4000-8000-{u:012}");
        let mut seq = 0;
        for n in 0..nights {
            let bed = base + n * 24 * 60 * MIN;
            let mut samples = vec![
                ("phone", "iphone", bed, 480, "in_bed"),
                ("phone", "iphone", bed + 20 * MIN, 450, "asleep_unspecified"),
            ];
            for k in 0..48 {
                samples.push((
                    "watch",
                    "apple_watch",
                    bed + k * 10 * MIN,
                    10,
                    stages[k as usize % 6],
                ));
            }
            for (source, device, start, minutes, stage) in samples {
                seq += 1;
                out.push(SampleChange {
                    user_id: user.clone(),
                    change_seq: seq,
                    change_index: 0,
                    operation: pulseline_schemas::Operation::Upsert,
                    source_id: source.into(),
                    device_type: device.into(),
                    source_record_id: format!("{seq}"),
                    start_at: start,
                    metric: "SLEEP_STAGE".into(),
                    end_at: Some(start + minutes * MIN),
                    tz_offset_minutes: 60,
                    value: None,
                    unit: None,
                    category: Some(stage.into()),
                    metadata_json: None,
                    accepted_at: 0,
                });
            }
        }
    }
    out
}

/// One processor alone through the in-memory engine (the code the runtime runs, without
/// Kafka, transactions or encoding), in batches of 5000: the processor's own cost.
fn engine_only<P: Processor>(processor: P, changes: &[SampleChange]) -> f64 {
    let mut h = Harness::new(processor);
    let started = Instant::now();
    let mut rows = 0;
    for batch in changes.chunks(5000) {
        rows += h.batch(batch.iter().cloned().map(Input::Sample)).1.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "engine only, {}: {} samples in {secs:.2} s = {:.0} samples/s ({rows} rows out)",
        P::NAME,
        changes.len(),
        changes.len() as f64 / secs,
    );
    changes.len() as f64 / secs
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds this process has used (user + system), from /proc/self/stat: the runtime
/// runs in this process, so its CPU over a measurement is the processor's.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<f64>() / 100.0
}

/// One measured run: samples consumed, wall seconds and CPU seconds of this process.
struct Measured {
    samples: u64,
    secs: f64,
    cpu_secs: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.samples as f64 / self.secs
    }
}

async fn measure(transactions: bool) -> Measured {
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
    let cpu_before = cpu_seconds();
    let n = changes.len() as u64;
    wait_for("all consumed", Duration::from_secs(600), || {
        handle.status().consumed_records() >= n
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_seconds() - cpu_before;
    println!(
        "transactions={transactions}: {n} samples in {secs:.2} s = {:.0} samples/s, {cpu_secs:.2} CPU s ({} batches, {} rows out)",
        n as f64 / secs,
        handle.status().committed_batches(),
        handle
            .metrics()
            .count("out", &env.topic("readmodel.rollups.v1")),
    );
    handle.shutdown().await.expect("clean shutdown");
    Measured {
        samples: n,
        secs,
        cpu_secs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let with = measure(true).await;
    let without = measure(false).await;
    let cost = 1.0 - with.rate() / without.rate();
    println!(
        "exactly-once costs {:.0}% of at-least-once throughput (ratio {:.3})",
        cost * 100.0,
        with.rate() / without.rate()
    );
    let users = knob("BENCH_USERS", 20);
    engine_only(
        Rollups::default(),
        &minute_steps(users, knob("BENCH_MINUTES", 1000) as i64),
    );
    engine_only(
        SleepNights::default(),
        &nights(users, knob("BENCH_NIGHTS", 30) as i64),
    );
    // One line to compare across commits (the transactional run's figures).
    println!(
        "{}",
        serde_json::json!({
            "bench": "processor",
            "samples": with.samples,
            "samples_per_s": with.rate().round(),
            "samples_per_s_per_core": (with.samples as f64 / with.cpu_secs.max(1e-9)).round(),
            "transaction_cost": (cost * 1000.0).round() / 1000.0,
        })
    );
}
