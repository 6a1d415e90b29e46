//! The runtime against the real broker of the local stack (`scripts/stack up`: tansu on
//! PULSELINE_KAFKA_BOOTSTRAP, the schema registry on PULSELINE_SCHEMA_REGISTRY_URL). Every
//! test has its own topic prefix and consumer group. Each compares the rollups read model,
//! folded as a version-guarded sink would, with the brute-force oracle.
//!
//! tansu shows the records of aborted transactions to read_committed readers (STACK.md), so
//! these tests check that results stay right anyway; abort invisibility itself needs
//! Apache Kafka (docker-compose.kafka.yml) and is not asserted here.

mod support;

use std::time::Duration;

use pulseline_schemas::records::{RollupKey, RollupUpsert};
use pulseline_stream_processors::engine::register;
use pulseline_stream_processors::processors::{ProcessorsConfig, Rollups, registry};
use pulseline_stream_processors::runtime::{Faults, Runtime, RuntimeConfig, RuntimeHandle};
use pulseline_stream_processors::testing::Gen;
use pulseline_stream_processors::{Context, Flush, Input, Processor, Rejection};
use support::kafka::{Env, wait_for};

/// Twelve users, spread over the six partitions by the murmur2 partitioner.
const USERS: &[&str] = &[
    "3f1c8a52-0d7e-4b8e-9c1a-5e2f7a9b0c11",
    "8a6d2e41-7b3c-4f0a-a1d9-2c4e6f8a0b22",
    "c5b9e7a3-1f2d-4e6c-8b0a-9d7f5e3c1a33",
    "e2a4c6b8-3d5f-4a7c-9e1b-0f2d4c6a8e44",
    "71f3b5d7-9e1a-4c3e-b5f7-d9a1c3e5f755",
    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c66",
    "9f8e7d6c-5b4a-4f3e-8d2c-1b0a9f8e7d77",
    "5a5b5c5d-6e6f-4a7b-8c8d-9e9f0a0b1c88",
    "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f99",
    "6c7d8e9f-0a1b-4c2d-9e3f-4a5b6c7d8eaa",
    "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5dbb",
    "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9acc",
];

fn start(config: RuntimeConfig, faults: Faults) -> RuntimeHandle {
    Runtime::new(config, registry(&ProcessorsConfig::default()))
        .unwrap()
        .with_faults(faults)
        .start()
}

const CONVERGE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_corrections_deletions_and_backlog_equal_the_oracle() {
    let env = Env::new("oracle").await;
    let mut g = Gen::new(1);
    let changes = g.stream(USERS, 1500);
    env.produce(&changes).await;
    // Poison: bytes that are not Avro, and a sample of a metric nobody knows.
    env.produce_raw(USERS[0], b"not avro at all").await;
    let mut unknown = changes[0].clone();
    unknown.change_seq = 1_000_000;
    unknown.metric = "NOT_A_METRIC".into();
    unknown.value = Some(1.0);
    unknown.operation = pulseline_schemas::Operation::Upsert;
    env.produce(std::slice::from_ref(&unknown)).await;

    let handle = start(env.config("a"), Faults::default());
    env.assert_converges(&changes, CONVERGE).await;

    let dead = env.dead_letters().await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|h| h["pulseline.reason"].as_str())
        .collect();
    assert!(reasons.contains(&"UNDECODABLE"), "{reasons:?}");
    assert!(reasons.contains(&"UNKNOWN_METRIC"), "{reasons:?}");
    assert_eq!(reasons.len(), 2, "{dead:?}");
    let skipped = handle.metrics().count("skipped", "rollups");
    let distinct: std::collections::HashSet<_> = changes
        .iter()
        .map(|c| (c.user_id.clone(), c.change_seq, c.change_index))
        .collect();
    assert_eq!(
        skipped as usize,
        changes.len() - distinct.len(),
        "duplicates skipped"
    );
    // The dead-lettered record still advanced its user's progress on the read model.
    let last_progress = env
        .rollup_records()
        .await
        .into_iter()
        .filter_map(|r| match r {
            pulseline_schemas::ReadModelRecord::Progress(p) if p.user_id == unknown.user_id => {
                Some(p.samples_seq)
            }
            _ => None,
        })
        .next_back();
    assert_eq!(last_progress, Some(1_000_000));
    assert!(handle.status().aborted_batches() == 0);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_transaction_and_restarts_restore_state_from_the_changelog() {
    let env = Env::new("restart").await;
    let mut g = Gen::new(2);
    let first = g.stream(USERS, 1200);
    env.produce(&first).await;

    // Instance "a" dies in its 3rd batch after producing outputs and changelog entries,
    // before committing: the transaction stays open, as after a SIGKILL.
    let mut config = env.config("a");
    config.max_batch_records = 50;
    let faults = Faults::default();
    faults.crash_at_batch(3);
    let crashed = start(config.clone(), faults);
    wait_for("the injected crash", CONVERGE, || crashed.is_finished()).await;
    assert!(crashed.join().is_err());

    // The same instance restarts (same transactional id: its open transaction is aborted),
    // restores from the changelog, and is stopped gracefully in the middle of the backlog.
    let second = start(config.clone(), Faults::default());
    wait_for("some progress", CONVERGE, || {
        second.status().committed_batches() >= 5
    })
    .await;
    assert!(
        second.metrics().count("restored", "rollups") > 0,
        "state came from the changelog"
    );
    second.shutdown().await.unwrap();

    let more = g.stream(USERS, 400);
    env.produce(&more).await;
    let third = start(config, Faults::default());
    let mut all = first.clone();
    all.extend(more);
    env.assert_converges(&all, CONVERGE).await;
    assert!(third.metrics().count("restored", "rollups") > 0);
    third.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_then_recovery_equal_the_oracle() {
    let env = Env::new("abort").await;
    let mut g = Gen::new(3);
    let changes = g.stream(USERS, 1000);
    env.produce(&changes).await;
    let mut config = env.config("a");
    config.max_batch_records = 100;
    let faults = Faults::default();
    faults.fail_next_commits(3);
    let handle = start(config, faults);
    env.assert_converges(&changes, CONVERGE).await;
    assert!(handle.status().aborted_batches() >= 3);
    assert!(handle.metrics().count("transactions", "abort") >= 3);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_mode_with_failures_gives_the_same_read_model() {
    let env = Env::new("alo").await;
    let mut g = Gen::new(4);
    let changes = g.stream(USERS, 1000);
    env.produce(&changes).await;
    let mut config = env.config("a");
    config.transactions = false;
    config.max_batch_records = 100;
    let faults = Faults::default();
    // Outputs and changelog written, offsets not committed: the batch is consumed again.
    faults.fail_next_commits(2);
    let handle = start(config, faults);
    env.assert_converges(&changes, CONVERGE).await;
    assert!(handle.status().aborted_batches() >= 2);
    assert!(
        handle.metrics().count("skipped", "rollups") > 0,
        "replayed changes were skipped"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_leaving_mid_stream_equal_the_oracle() {
    let env = Env::new("rebalance").await;
    let mut g = Gen::new(5);
    let first = g.stream(USERS, 600);
    env.produce(&first).await;
    let mut config = env.config("a");
    config.max_batch_records = 50;
    let a = start(config.clone(), Faults::default());
    config.instance_id = "b".into();
    let b = start(config, Faults::default());
    wait_for("both instances assigned", CONVERGE, || {
        !a.status().assigned().is_empty() && !b.status().assigned().is_empty()
    })
    .await;
    let second = g.stream(USERS, 600);
    env.produce(&second).await;
    wait_for("progress on both", CONVERGE, || {
        a.status().committed_batches() > 0 && b.status().committed_batches() > 0
    })
    .await;
    a.shutdown().await.unwrap();
    let third = g.stream(USERS, 600);
    env.produce(&third).await;
    let all: Vec<_> = first.into_iter().chain(second).chain(third).collect();
    env.assert_converges(&all, CONVERGE).await;
    // Both input topics, partition for partition (co-partitioned: a user's samples and
    // events meet in one instance).
    wait_for("b owns every partition of both inputs", CONVERGE, || {
        let assigned = b.status().assigned();
        let numbers: std::collections::BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        assigned.len() == 12 && numbers.len() == 6
    })
    .await;
    b.shutdown().await.unwrap();
}

/// Samples and events interleaved, on two co-partitioned topics, through two instances
/// of which one leaves: each user's samples and events meet in one instance, and both
/// impact read models equal the brute-force oracle.
#[tokio::test]
async fn impacts_over_both_streams_and_a_rebalance_equal_the_oracle() {
    use pulseline_schemas::records::{ProductImpactUpsert, SessionImpactUpsert};
    use pulseline_stream_processors::testing::{
        ImpactGen, Oracle, ProductImpactsOracle, SessionImpactsOracle,
    };
    let env = Env::new("impacts").await;
    let inputs = ImpactGen::new(17).stream(&["user-a", "user-b", "user-c", "user-d"], 2400);
    let (first, rest) = inputs.split_at(inputs.len() / 2);
    let a = start(env.config("a"), Faults::default());
    let b = start(env.config("b"), Faults::default());
    env.produce_inputs(first).await;
    wait_for("both instances assigned", CONVERGE, || {
        !a.status().assigned().is_empty() && !b.status().assigned().is_empty()
    })
    .await;
    a.shutdown().await.unwrap();
    env.produce_inputs(rest).await;
    let want_sessions = SessionImpactsOracle.expected(&inputs);
    let want_products = ProductImpactsOracle.expected(&inputs);
    assert!(want_sessions.len() > 20 && !want_products.is_empty());
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let sessions: std::collections::BTreeMap<_, _> = env
            .read_model::<SessionImpactUpsert>()
            .await
            .iter()
            .map(|(k, r)| (k.clone(), SessionImpactsOracle.observe(r)))
            .collect();
        let products: std::collections::BTreeMap<_, _> = env
            .read_model::<ProductImpactUpsert>()
            .await
            .iter()
            .map(|(k, r)| (k.clone(), ProductImpactsOracle.observe(r)))
            .collect();
        let mut problems = SessionImpactsOracle.diff(&sessions, &want_sessions);
        problems.extend(ProductImpactsOracle.diff(&products, &want_products));
        if problems.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} differences from the oracle:\n{}",
            problems.len(),
            problems[..problems.len().min(10)].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.shutdown().await.unwrap();
}

/// A processor that panics on one metric: the runtime must dead-letter the record, not loop.
#[derive(Debug, Default)]
struct Panicky;

impl Processor for Panicky {
    const NAME: &'static str = "panicky";
    type State = ();
    type Output = RollupUpsert;

    fn apply(
        &self,
        _: &mut Context<'_, RollupKey>,
        _: &mut (),
        input: &Input,
    ) -> Result<(), Rejection> {
        if let Input::Sample(s) = input
            && s.metric == "PANIC_ME"
        {
            panic!("test processor panics on purpose");
        }
        Ok(())
    }

    fn flush(&self, _: &mut Flush<'_, RollupUpsert>, _: &mut ()) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_dead_letters_the_record_instead_of_crash_looping() {
    let env = Env::new("panic").await;
    let mut g = Gen::new(6);
    let changes = g.stream(USERS, 400);
    env.produce(&changes[..200]).await;
    let mut poison = changes[0].clone();
    poison.change_seq = 900_000;
    poison.metric = "PANIC_ME".into();
    env.produce(std::slice::from_ref(&poison)).await;
    env.produce(&changes[200..]).await;
    let processors = vec![register(Rollups::default()), register(Panicky)];
    let handle = Runtime::new(env.config("a"), processors).unwrap().start();
    env.assert_converges(&changes, CONVERGE).await;
    let dead = env.dead_letters().await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|h| h["pulseline.reason"].as_str())
        .collect();
    assert_eq!(reasons, vec!["PROCESSOR_PANIC"]);
    assert!(handle.status().aborted_batches() >= 1);
    assert!(handle.status().running());
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_respects_the_rate_limit_and_reports_lag() {
    let env = Env::new("backfill").await;
    let mut g = Gen::new(7);
    let changes = g.stream(USERS, 900);
    env.produce(&changes).await;
    let mut config = env.config("a");
    config.max_records_per_second = Some(300);
    let started = std::time::Instant::now();
    let handle = start(config, Faults::default());
    env.assert_converges(&changes, CONVERGE).await;
    // 300 in the first second's burst, then 300/s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    wait_for("a lag report", CONVERGE, || {
        handle
            .metrics()
            .render()
            .contains("pulseline_processor_input_lag_records{")
    })
    .await;
    // Every committed input record's age (relay publication to commit) was observed, once.
    let ages_observed = || {
        handle
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("pulseline_processor_record_age_seconds_count "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    wait_for("every record's age observed", CONVERGE, || {
        ages_observed() == Some(handle.status().consumed_records())
    })
    .await;
    assert!(ages_observed() >= Some(changes.len() as u64));
    handle.shutdown().await.unwrap();
}

/// The binary, SIGKILLed at random moments while it works through a backlog, restarted each
/// time with the same instance id; then a SIGTERM for a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_killed_at_random_moments_still_equals_the_oracle() {
    use rand::{Rng, SeedableRng};
    let env = Env::new("sigkill").await;
    let mut g = Gen::new(8);
    let mut all = g.stream(USERS, 1500);
    env.produce(&all).await;
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pulseline-processor"))
            .env("PULSELINE_KAFKA_BOOTSTRAP", &env.stack.kafka_bootstrap)
            .env(
                "PULSELINE_SCHEMA_REGISTRY_URL",
                &env.stack.schema_registry_url,
            )
            .env("PULSELINE_TOPIC_PREFIX", &env.prefix)
            .env("PULSELINE_PROCESSOR_INSTANCE_ID", "k")
            // Static membership: the restarted instance takes its partitions back at once
            // instead of waiting for the broker to evict the killed member (noida-db never
            // does: without this the test failed there with "no progress").
            .env("PULSELINE_PROCESSOR_GROUP_INSTANCE_ID", "k")
            .env("PULSELINE_TRANSACTIONS", "true")
            .env("PULSELINE_PROCESSOR_MAX_BATCH", "40")
            .env("PULSELINE_PROCESSOR_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning pulseline-processor")
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut seen = 0;
    for round in 0..3 {
        let mut child = spawn();
        // Kill once the read model has grown (the instance is mid-backlog), after a random
        // extra moment.
        let deadline = std::time::Instant::now() + CONVERGE;
        loop {
            let rows = env.rollup_rows().await.len();
            if rows > seen {
                seen = rows;
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no progress in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let more = g.stream(USERS, 300);
        env.produce(&more).await;
        all.extend(more);
    }
    let mut child = spawn();
    env.assert_converges(&all, CONVERGE).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful stop on SIGTERM: {exit:?}");
}
