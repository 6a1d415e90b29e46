//! Throughput of the runtime with the rollups processor, transactions on and off, on the
//! local stack. Ignored by default (it measures, it does not check):
//! `cargo nextest run -p pulseline-stream-processors --test throughput --run-ignored only --no-capture`
//! Debug build numbers; see stream-processors/README.md for the last measurement.

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
        for m in 0..minutes {
            for (source, device) in [("watch", "apple_watch"), ("phone", "iphone")] {
                let seq = out
                    .iter()
                    .filter(|c: &&SampleChange| c.user_id == user)
                    .count() as i64
                    + 1;
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

async fn measure(transactions: bool) {
    let env = Env::new(if transactions { "tput-tx" } else { "tput-alo" }).await;
    let changes = minute_steps(20, 1000);
    env.produce(&changes).await;
    let mut config = env.config("a");
    config.transactions = transactions;
    config.max_batch_records = 5000;
    let handle = Runtime::new(config, registry(&ProcessorsConfig::default()))
        .unwrap()
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
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn throughput_with_and_without_transactions() {
    measure(true).await;
    measure(false).await;
}
