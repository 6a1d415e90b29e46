//! The sink end to end against the real broker, registry and Postgres: records written in
//! Kafka transactions (some aborted, which tansu still shows read_committed readers, some
//! unusable), consumed, applied; stopped and restarted mid-stream; dropped in the middle
//! of a transaction; the binary killed with SIGKILL. Each test has its own database, topic
//! prefix and consumer group. Needs `scripts/stack up`.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pulseline_schemas::records::{Period, RollupUpsert};
use pulseline_sinks::{ScyllaSink, SinkApplication};
use pulseline_testkit::cql_emulator::CqlEmulator;
use pulseline_testkit::private_pg::PrivatePostgres;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::{
    Harness, Key, Observed, RollupProducer, expected_progress, expected_rows, partition_of, upsert,
};
use tokio::sync::oneshot;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);

/// Records for `users`: every key gets versions 1..=n, in a shuffled order per key with
/// duplicates, so older versions arrive after newer ones. Grouped per user (per-user order
/// in one partition is what the processor guarantees, not per-key version order).
fn workload(rng: &mut StdRng, users: &[Uuid], max_version: i64) -> Vec<RollupUpsert> {
    let mut out = Vec::new();
    for &user in users {
        let mut versions = Vec::new();
        for (metric, period, bucket) in [
            ("STEPS", Period::Day, "2026-03-01"),
            ("STEPS", Period::Day, "2026-03-02"),
            ("STEPS", Period::Hour, "2026-03-01T07:00:00"),
            ("HEART_RATE", Period::Hour, "2026-03-01T07:00:00"),
        ] {
            for v in 1..=rng.random_range(1..=max_version) {
                versions.push(upsert(user, metric, period, bucket, v));
                if rng.random_bool(0.2) {
                    versions.push(upsert(user, metric, period, bucket, v)); // duplicate
                }
            }
        }
        versions.shuffle(rng);
        out.extend(versions);
    }
    out
}

/// Splits records into transactions of `size`, each committed.
async fn produce_committed(p: &mut RollupProducer, records: &[RollupUpsert], size: usize) {
    for chunk in records.chunks(size) {
        p.transaction(chunk, true).await;
    }
}

/// Runs a sink app in a task; the sender stops it gracefully.
fn spawn_sink(
    app: SinkApplication,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), pulseline_sinks::SinkError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_committed_aborted_and_unusable_records_exactly_as_versions_say() {
    let h = Harness::with_topics("sink-e2e").await;
    let mut rng = StdRng::seed_from_u64(1);
    let users: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let records = workload(&mut rng, &users, 6);
    let mut producer = RollupProducer::new(&h).await;
    let (first, second) = records.split_at(records.len() / 2);
    produce_committed(&mut producer, first, 50).await;
    // An aborted transaction whose records a deterministic processor re-emits, identical,
    // in the next (committed) one. tansu shows the aborted ones too; either way the table
    // must end the same.
    producer.transaction(&second[..20], false).await;
    // Unusable records: not Avro at all, and a record whose user id is not a UUID.
    let mut bad = upsert(users[0], "STEPS", Period::Day, "2026-03-01", 99);
    bad.user_id = "not-a-uuid".into();
    let bad_payload = pulseline_schemas::AvroCodec::new(&h.stack.schema_registry_url, &h.prefix)
        .unwrap()
        .encode(&bad)
        .await
        .unwrap();
    let p = partition_of(&users[0].to_string());
    producer
        .raw_transaction(
            &[
                (p, "garbage".into(), b"not avro".to_vec()),
                (p, "bad-user".into(), bad_payload),
            ],
            true,
        )
        .await;
    produce_committed(&mut producer, second, 50).await;

    let app = SinkApplication::build(h.config(100)).await.unwrap();
    let telemetry = app.telemetry();
    let metrics_url = format!("http://{}/metrics", app.metrics_addr());
    let (stop, task) = spawn_sink(app);
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;

    assert_eq!(h.rows().await, expected_rows(&records));
    assert_eq!(h.progress().await, expected_progress(&records));
    let text = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"pulseline_sink_invalid_records_total{reason="UNDECODABLE"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"pulseline_sink_invalid_records_total{reason="INVALID_RECORD"} 1"#),
        "{text}"
    );
    // Whether or not the broker hid the aborted records, every consumed record was
    // either written or skipped as stale, once.
    assert_eq!(
        telemetry.rows_applied() + telemetry.stale_skipped() + 2,
        telemetry.records_consumed()
    );
    // Each consumed record's age (its Kafka timestamp to the commit) was observed once.
    let ages_observed = text
        .lines()
        .find_map(|l| l.strip_prefix("pulseline_sink_record_age_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(ages_observed, Some(telemetry.records_consumed()), "{text}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A sink that has caught up keeps applying what follows an aborted transaction. On
/// noida-db a read_committed consumer did not: the broker lists the aborted transaction in
/// every later fetch response, and librdkafka skipped all later records of its producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_sink_keeps_applying_after_an_aborted_transaction() {
    let h = Harness::with_topics("sink-live-abort").await;
    let mut rng = StdRng::seed_from_u64(4);
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let records = workload(&mut rng, &users, 6);
    let (first, second) = records.split_at(records.len() / 2);
    let mut producer = RollupProducer::new(&h).await;
    produce_committed(&mut producer, first, 40).await;
    let app = SinkApplication::build(h.config(25)).await.unwrap();
    let (stop, task) = spawn_sink(app);
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;

    // Aborted while the sink follows the partitions; a processor's replay re-emits the
    // same records in the committed transactions after it.
    producer
        .transaction(&second[..second.len().min(30)], false)
        .await;
    produce_committed(&mut producer, second, 40).await;
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;
    assert_eq!(h.rows().await, expected_rows(&records));
    assert_eq!(h.progress().await, expected_progress(&records));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_mid_stream_and_restarted_it_ends_at_the_final_versions() {
    let h = Harness::with_topics("sink-restart").await;
    let mut rng = StdRng::seed_from_u64(2);
    let users: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let records = workload(&mut rng, &users, 8);
    let (first, second) = records.split_at(records.len() * 2 / 3);
    let mut producer = RollupProducer::new(&h).await;
    produce_committed(&mut producer, first, 40).await;
    let after_first = producer.expected_offsets();

    let app = SinkApplication::build(h.config(25)).await.unwrap();
    let run1 = app.telemetry();
    let (stop, task) = spawn_sink(app);
    h.wait_for_offsets(&after_first, WITHIN).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(h.rows().await, expected_rows(first));

    // More of the stream arrives while the sink is down: newer and older versions of the
    // same keys, and duplicates of what it already applied.
    produce_committed(&mut producer, second, 40).await;
    let app = SinkApplication::build(h.config(25)).await.unwrap();
    let run2 = app.telemetry();
    let (stop, task) = spawn_sink(app);
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(h.rows().await, expected_rows(&records));
    assert_eq!(h.progress().await, expected_progress(&records));
    // The second run started where the first one stopped: no record consumed twice.
    assert_eq!(
        run1.records_consumed() + run2.records_consumed(),
        records.len() as u64
    );
    assert_eq!(run1.records_consumed(), first.len() as u64);
    for run in [&run1, &run2] {
        assert_eq!(
            run.rows_applied() + run.stale_skipped(),
            run.records_consumed()
        );
    }
}

/// Waits until a backend of this database waits for a lock (the sink's transaction is
/// stuck behind the test's lock, between its first write and its commit).
async fn wait_for_blocked_transaction(h: &Harness) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&h.pool)
        .await
        .unwrap();
        if blocked > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_dropped_inside_a_transaction_applies_nothing_twice() {
    let h = Harness::with_topics("sink-crash").await;
    let mut rng = StdRng::seed_from_u64(3);
    let users: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let records = workload(&mut rng, &users, 8);
    let (first, second) = records.split_at(records.len() / 2);
    let mut producer = RollupProducer::new(&h).await;
    produce_committed(&mut producer, first, 60).await;

    let app = SinkApplication::build(h.config(20)).await.unwrap();
    let run1 = app.telemetry();
    let (_stop, task) = spawn_sink(app);
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;

    // Freeze the sink's next transaction after its offset update and rollup upsert, at
    // the progress upsert; then drop the sink there, as a crash would.
    let mut lock = h.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sink_progress IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let offsets_before_crash = h.stored_offsets().await;
    let rows_before_crash = h.rows().await;
    let consumed_before_crash = run1.records_consumed();
    produce_committed(&mut producer, second, 60).await;
    wait_for_blocked_transaction(&h).await;
    task.abort();
    let _ = task.await;
    lock.commit().await.unwrap();
    // The dropped transaction never committed: offsets and rows are as before it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.stored_offsets().await, offsets_before_crash);
    assert_eq!(h.rows().await, rows_before_crash);
    assert_eq!(run1.records_consumed(), consumed_before_crash);
    assert_eq!(consumed_before_crash, first.len() as u64);

    let app = SinkApplication::build(h.config(20)).await.unwrap();
    let run2 = app.telemetry();
    let (stop, task) = spawn_sink(app);
    h.wait_for_offsets(&producer.expected_offsets(), WITHIN)
        .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(h.rows().await, expected_rows(&records));
    assert_eq!(h.progress().await, expected_progress(&records));
    assert_eq!(
        run2.records_consumed(),
        second.len() as u64,
        "the restarted sink re-read exactly the uncommitted part"
    );
    for run in [&run1, &run2] {
        assert_eq!(
            run.rows_applied() + run.stale_skipped(),
            run.records_consumed()
        );
    }
}

fn start_sink_process(h: &Harness, store: &[(&str, String)], log: &std::path::Path) -> Child {
    let c = h.config(20);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pulseline-sink"))
        .env("PULSELINE_DATABASE_URL", &c.database_url)
        .env("PULSELINE_KAFKA_BOOTSTRAP", &c.kafka_bootstrap)
        .env("PULSELINE_SCHEMA_REGISTRY_URL", &c.schema_registry_url)
        .env("PULSELINE_TOPIC_PREFIX", &c.topic_prefix)
        .env("PULSELINE_SINK_BATCH_MAX_RECORDS", "20")
        .env("PULSELINE_SINK_BATCH_LINGER_MS", "5")
        .env("PULSELINE_SINK_METRICS_ADDR", "127.0.0.1:0")
        // Static membership: the restarted sink takes its partitions back at once. Without
        // it the new member waits for the broker to evict the killed one after the session
        // timeout; noida-db never evicts it, so the test failed there with "no progress".
        .env("PULSELINE_SINK_GROUP_INSTANCE_ID", "sink-0")
        .envs(store.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start pulseline-sink")
}

/// How far through the topic stored offsets are: the sum of their next offsets.
fn position(offsets: &BTreeMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

/// What a read store holds of the rollups, as the kill tests compare it.
trait StoredState {
    async fn offsets(&self) -> BTreeMap<i32, i64>;
    async fn rows(&self) -> BTreeMap<Key, Observed>;
    async fn progress(&self) -> BTreeMap<String, i64>;
}

impl StoredState for Harness {
    async fn offsets(&self) -> BTreeMap<i32, i64> {
        self.stored_offsets().await
    }

    async fn rows(&self) -> BTreeMap<Key, Observed> {
        Harness::rows(self).await
    }

    async fn progress(&self) -> BTreeMap<String, i64> {
        Harness::progress(self).await
    }
}

/// The Scylla store's side of a kill test: its keyspace, read as `Harness` reads Postgres.
struct ScyllaState {
    store: ScyllaSink,
    consumer: String,
    topic: String,
    /// Every user the test produced for (the store is read partition by partition).
    users: std::sync::Mutex<Vec<Uuid>>,
}

impl StoredState for ScyllaState {
    async fn offsets(&self) -> BTreeMap<i32, i64> {
        let cql = format!(
            "SELECT partition, next_offset FROM {}.sink_offset WHERE consumer = ? AND topic = ?",
            self.store.keyspace()
        );
        let rows: Vec<(i32, i64)> = self
            .store
            .select(&cql, (self.consumer.as_str(), self.topic.as_str()))
            .await
            .expect("offsets");
        rows.into_iter().collect()
    }

    async fn rows(&self) -> BTreeMap<Key, Observed> {
        type Row = (
            String,
            String,
            chrono::DateTime<chrono::Utc>,
            i64,
            Option<bool>,
            Option<f64>,
            Option<i64>,
            Option<Vec<String>>,
        );
        let cql = format!(
            "SELECT metric, period, bucket_start, version, deleted, value, count, sources \
             FROM {}.rollup WHERE user_id = ?",
            self.store.keyspace()
        );
        let users = self.users.lock().unwrap().clone();
        let mut out = BTreeMap::new();
        for user in users {
            let rows: Vec<Row> = self.store.select(&cql, (user,)).await.expect("rows");
            for (metric, period, start, version, deleted, value, count, sources) in rows {
                let format = if period == "DAY" {
                    "%Y-%m-%d"
                } else {
                    "%Y-%m-%dT%H:%M:%S"
                };
                let bucket = start.naive_utc().format(format).to_string();
                let deleted = deleted.unwrap_or_default();
                let observed = Observed {
                    version,
                    deleted,
                    // The emulator keeps a cell's old value when a null is written over it
                    // (Scylla writes a tombstone); nothing reads a deleted row's value.
                    value: value.filter(|_| !deleted),
                    count: count.unwrap_or_default(),
                    sources: sources.unwrap_or_default(),
                };
                out.insert((user.to_string(), metric, period, bucket), observed);
            }
        }
        out
    }

    async fn progress(&self) -> BTreeMap<String, i64> {
        let users = self.users.lock().unwrap().clone();
        let mut out = BTreeMap::new();
        for user in users {
            let applied = self
                .store
                .applied_seqs("rollups", user)
                .await
                .expect("progress");
            if applied.samples > 0 {
                out.insert(user.to_string(), applied.samples);
            }
        }
        out
    }
}

/// Waits until the stored offsets differ from `before` (a batch was committed) or reach
/// `expected`.
async fn wait_for_a_commit(
    stored: &impl StoredState,
    before: &BTreeMap<i32, i64>,
    expected: &BTreeMap<i32, i64>,
    log: &std::path::Path,
) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let now = stored.offsets().await;
        if &now != before || &now == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_killed_with_sigkill_mid_stream_recovers_from_its_stored_offsets() {
    let h = Harness::with_topics("sink-kill").await;
    killed_with_sigkill_mid_stream(&h, &h, &[], None, |rng, users| workload(rng, users, 10)).await;
}

/// The same on the Scylla store (the CQL emulator): offsets and progress in the keyspace,
/// rows written before progress, offsets last, so a kill anywhere replays, never skips.
/// The emulator keeps no write timestamps (the last write wins), so each key's versions
/// are produced in order, as the processor emits them; duplicates and replays remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_scylla_store_killed_with_sigkill_mid_stream_recovers_from_its_stored_offsets() {
    let emulator = CqlEmulator::start().await.expect("emulator starts");
    let h = Harness::with_topics("sink-kill-scylla").await;
    let keyspace = format!("t_{}", Uuid::new_v4().simple());
    let store = ScyllaSink::open(&emulator.url(&keyspace))
        .await
        .expect("the keyspace migrates");
    let scylla = ScyllaState {
        store,
        consumer: h.group(),
        topic: h.topic(),
        users: Default::default(),
    };
    let env = [
        ("PULSELINE_READ_STORE", "scylla".to_owned()),
        ("PULSELINE_SCYLLA_URI", emulator.addr().to_string()),
        ("PULSELINE_SCYLLA_KEYSPACE", keyspace.clone()),
        ("PULSELINE_SCYLLA_REPLICATION_FACTOR", "1".to_owned()),
    ];
    killed_with_sigkill_mid_stream(&h, &scylla, &env, Some(&scylla.users), |rng, users| {
        let mut records = workload(rng, users, 10);
        records.sort_by_key(|r| r.version); // stable: duplicates stay, keys interleave
        records
    })
    .await;
}

/// Kills the sink binary (SIGKILL) three times while it has work pending, restarts it,
/// and checks that the store ends with exactly the newest version of every key and each
/// user's highest applied sequence.
async fn killed_with_sigkill_mid_stream(
    h: &Harness,
    stored: &impl StoredState,
    store_env: &[(&str, String)],
    users_seen: Option<&std::sync::Mutex<Vec<Uuid>>>,
    make_workload: impl Fn(&mut StdRng, &[Uuid]) -> Vec<RollupUpsert>,
) {
    const KILLS: usize = 3;
    const ATTEMPTS: usize = 12;
    let seed = pulseline_testkit::test_seed("sink_binary_killed_with_sigkill", 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut producer = RollupProducer::new(h).await;
    let mut records = Vec::new();
    let log = std::env::temp_dir().join(format!("{}sink.log", h.prefix));

    // Each kill must catch the sink with work pending: it committed something since it
    // started and has not consumed everything. A kill that came too late does not count:
    // the next attempt gets more records and a shorter delay.
    let mut max_delay_ms = 40;
    let (mut kills, mut attempts) = (0, 0);
    while kills < KILLS {
        attempts += 1;
        assert!(
            attempts <= ATTEMPTS,
            "only {kills} of {ATTEMPTS} kills caught the sink with work pending"
        );
        if stored.offsets().await == producer.expected_offsets() {
            let users: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
            if let Some(seen) = users_seen {
                seen.lock().unwrap().extend(&users);
            }
            let more = make_workload(&mut rng, &users);
            produce_committed(&mut producer, &more, 80).await;
            records.extend(more);
        }
        let expected = producer.expected_offsets();
        let mut child = start_sink_process(h, store_env, &log);
        let before = stored.offsets().await;
        wait_for_a_commit(stored, &before, &expected, &log).await;
        let delay = rng.random_range(0..max_delay_ms);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The process is gone: what is stored now is what it had committed when killed.
        let at_kill = stored.offsets().await;
        let (started, done, total) = (position(&before), position(&at_kill), position(&expected));
        let rows = stored.rows().await.len();
        if at_kill == expected {
            max_delay_ms = (max_delay_ms / 2).max(1);
            eprintln!(
                "attempt {attempts}: killed {delay} ms after its first commit, the sink had \
                 consumed everything (offsets {total}); not counted, more records and a delay \
                 under {max_delay_ms} ms next"
            );
            continue;
        }
        kills += 1;
        assert!(
            started < done && done < total,
            "killed with work pending: offsets {started} at start < {done} at the kill < {total}"
        );
        eprintln!(
            "kill {kills}/{KILLS} (attempt {attempts}): {delay} ms after its first commit, with \
             work pending: offsets at {done} of {total} (from {started} at its start), {rows} of \
             {} rows written",
            expected_rows(&records).len()
        );
    }
    let mut child = start_sink_process(h, store_env, &log);
    let deadline = std::time::Instant::now() + WITHIN;
    while stored.offsets().await != producer.expected_offsets() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted sink did not catch up; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let differing = differences(&stored.rows().await, &expected_rows(&records));
    assert!(differing.is_empty(), "rows differ: {differing:#?}");
    assert_eq!(stored.progress().await, expected_progress(&records));
    let _ = std::fs::remove_file(&log);
}

/// The keys whose stored row is not the expected one: (key, stored, expected).
fn differences<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    stored: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&K> = stored.keys().chain(expected.keys()).collect();
    keys.into_iter()
        .filter(|k| stored.get(k) != expected.get(k))
        .map(|k| {
            format!(
                "{k:?}: stored {:?}, expected {:?}",
                stored.get(k),
                expected.get(k)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_sink_ends_equal_to_what_was_produced() {
    const RESTARTS: usize = 2;
    let seed = pulseline_testkit::test_seed("postgres_restarted_under_the_sink", 6);
    let mut rng = StdRng::seed_from_u64(seed);
    let pg = PrivatePostgres::start().expect("a private Postgres cluster");
    let h = Harness::with_topics_on(pg.stack(), "sink-pg-restart").await;
    let mut producer = RollupProducer::new(&h).await;
    let mut records = Vec::new();
    let app = SinkApplication::build(h.config(20)).await.unwrap();
    let telemetry = app.telemetry();
    let (stop, task) = spawn_sink(app);

    for restart in 1..=RESTARTS {
        // New records for the sink to work through (one transaction: all visible at once,
        // many batches of 20 for the sink), then a restart while it is at it. Enough of
        // them that the sink cannot finish between its first commit being seen and the
        // restart (with 24 users, ~670 records, it once had, under a full test run).
        let users: Vec<Uuid> = (0..96).map(|_| Uuid::new_v4()).collect();
        let more = workload(&mut rng, &users, 10);
        let before = h.stored_offsets().await;
        producer.transaction(&more, true).await;
        records.extend(more);
        let expected = producer.expected_offsets();
        let log = std::path::Path::new("(in-process sink)");
        wait_for_a_commit(&h, &before, &expected, log).await;
        let at_restart = h.stored_offsets().await;
        let down = rng.random_range(200..1500);
        tokio::task::block_in_place(|| pg.restart_immediate(Duration::from_millis(down)))
            .expect("Postgres restarted");
        let (done, total) = (position(&at_restart), position(&expected));
        eprintln!(
            "restart {restart}/{RESTARTS}: offsets at {done} of {total} (from {}), Postgres \
             down for {down} ms",
            position(&before)
        );
        assert!(
            done < total,
            "the sink had consumed everything before restart {restart}: not a restart under load"
        );
    }
    h.wait_for_offsets(&producer.expected_offsets(), Duration::from_secs(120))
        .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(h.rows().await, expected_rows(&records));
    assert_eq!(h.progress().await, expected_progress(&records));
    assert_eq!(h.stored_offsets().await, producer.expected_offsets());
    eprintln!(
        "{} records produced, {} consumed (batches retried after the restarts read again), \
         {} rows applied, {} stale skipped",
        records.len(),
        telemetry.records_consumed(),
        telemetry.rows_applied(),
        telemetry.stale_skipped()
    );
}

#[test]
fn workloads_have_late_versions_and_duplicates() {
    let mut rng = StdRng::seed_from_u64(7);
    let records = workload(&mut rng, &[Uuid::new_v4(), Uuid::new_v4()], 6);
    let mut newest: BTreeMap<_, i64> = BTreeMap::new();
    let (mut late, mut dupes) = (0, 0);
    for r in &records {
        let v = newest.entry(support::key_of(r)).or_insert(0);
        if r.version < *v {
            late += 1;
        } else if r.version == *v {
            dupes += 1;
        }
        *v = (*v).max(r.version);
    }
    assert!(late > 0 && dupes > 0, "late {late}, duplicates {dupes}");
}
