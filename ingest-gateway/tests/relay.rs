//! The outbox relay against the real stack: Postgres, the Kafka-protocol broker and the
//! schema registry (`scripts/stack up`). Every test has its own database and topic prefix.

#[path = "support/relay.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulseline_ingest_gateway::outbox::{self, OutboxRecord, Stream};
use pulseline_ingest_gateway::relay::{OutboxRelay, RelayConfig};
use pulseline_schemas::Operation;
use pulseline_testkit::private_pg::PrivatePostgres;
use rand::{Rng, SeedableRng};
use support::{
    ChangeKey, Harness, SHARDS, assert_per_user_order, change_key, event, occurrences, sample,
};
use uuid::Uuid;

const RELAY_BIN: &str = env!("CARGO_BIN_EXE_pulseline-relay");

/// Starts `relay.run_until` in a task; the returned sender stops it.
fn spawn_relay(
    relay: OutboxRelay,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), pulseline_ingest_gateway::relay::RelayError>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(relay.run_until(async move {
        let _ = stop_rx.await;
    }));
    (stop_tx, handle)
}

/// Every expected change on Kafka exactly once, nothing else, content unchanged, in order.
fn expect_exactly_once(
    published: &[support::Published],
    expected: &HashMap<ChangeKey, OutboxRecord>,
) {
    let committed = Committed {
        sure: expected.clone(),
        unsure: Vec::new(),
    };
    let duplicates = expect_nothing_lost_and_only_identical_duplicates(published, &committed);
    assert_eq!(
        duplicates, 0,
        "published more than once: {duplicates} records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_every_record_once_in_user_order_woken_by_notify() {
    let h = Harness::new("relay-basic").await;
    // A poll interval far beyond the test's patience: only NOTIFY can wake the relay.
    let config = RelayConfig {
        poll_ms: 600_000,
        batch: 40,
        ..h.config()
    };
    let relay = OutboxRelay::build(config).await.expect("relay builds");
    let metrics = relay.metrics();
    let metrics_addr = relay.metrics_addr();
    let (stop, handle) = spawn_relay(relay);

    let users: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let mut expected = HashMap::new();
    for round in 1..=5_i64 {
        for (u, user) in users.iter().enumerate() {
            let n = 1 + (round as usize * 7 + u * 3) % 30;
            let mut records: Vec<OutboxRecord> =
                (0..n).map(|i| sample(*user, round, i as i32)).collect();
            if u % 3 == 0 {
                records.push(event(*user, round, 0));
            }
            for r in &records {
                expected.insert(change_key(r), r.clone());
            }
            h.enqueue(*user, &records).await;
        }
    }
    h.wait_outbox_empty(Duration::from_secs(60)).await;

    let client = reqwest::Client::new();
    let text = client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        text.contains("pulseline_relay_rows_published_total"),
        "{text}"
    );
    assert!(
        text.contains("pulseline_relay_lag_seconds_bucket"),
        "{text}"
    );
    let health = client
        .get(format!("http://{metrics_addr}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert!(health.status().is_success());

    let _ = stop.send(());
    handle
        .await
        .expect("relay task")
        .expect("relay stopped cleanly");
    let published_rows =
        metrics.rows_published(Stream::Samples) + metrics.rows_published(Stream::Events);
    assert_eq!(published_rows, expected.len() as u64);

    let published = h.read_all().await;
    assert_eq!(published.len(), expected.len());
    expect_exactly_once(&published, &expected);
    assert_per_user_order(&published);
    assert_eq!(h.outbox_len().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_id_committed_late_is_still_published() {
    let h = Harness::new("relay-late-commit").await;
    let mut relay = OutboxRelay::build(h.config()).await.expect("relay builds");
    let (early, late) = (Uuid::new_v4(), Uuid::new_v4());

    // T1 takes the lower ids and stays open while T2 commits higher ids.
    let early_records: Vec<_> = (0..3).map(|i| sample(early, 1, i)).collect();
    let mut t1 = h.pool.begin().await.expect("begin t1");
    outbox::enqueue(&mut t1, early, SHARDS, &early_records)
        .await
        .expect("enqueue t1");
    let late_records: Vec<_> = (0..3).map(|i| sample(late, 1, i)).collect();
    h.enqueue(late, &late_records).await;
    let ids: Vec<(Uuid, i64)> = sqlx::query_as("SELECT user_id, id FROM outbox ORDER BY id")
        .fetch_all(&mut *t1)
        .await
        .expect("ids");
    assert!(
        ids.first().is_some_and(|(u, _)| *u == early),
        "T1 must hold the lowest ids: {ids:?}"
    );

    let first = relay.drain().await.expect("first pass");
    assert_eq!(first.published, 3);
    let after_first = h.read_all().await;
    let users: HashSet<String> = after_first.iter().map(|p| p.change_key().1).collect();
    assert_eq!(users, HashSet::from([late.to_string()]));

    t1.commit().await.expect("commit t1");
    let second = relay.drain().await.expect("second pass");
    assert_eq!(
        second.published, 3,
        "the late-committed lower ids were skipped"
    );

    let expected: HashMap<_, _> = early_records
        .iter()
        .chain(&late_records)
        .map(|r| (change_key(r), r.clone()))
        .collect();
    let published = h.read_all().await;
    expect_exactly_once(&published, &expected);
    assert_per_user_order(&published);
}

/// Starts the relay binary against the harness; its JSON log goes to `log`.
fn start_relay_process(h: &Harness, log: &std::path::Path, extra_env: &[(&str, &str)]) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(RELAY_BIN);
    cmd.envs(h.env())
        .envs(extra_env.iter().copied())
        .env("RUST_LOG", "info,pulseline_ingest_gateway=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log fd")))
        .stderr(Stdio::from(file));
    cmd.spawn().expect("start pulseline-relay")
}

async fn wait_for_log(log: &std::path::Path, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {} within {within:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the load committed. `unsure`: batches whose COMMIT got no answer (Postgres went
/// down during it); each is wholly committed or not at all.
#[derive(Debug, Default)]
struct Committed {
    sure: HashMap<ChangeKey, OutboxRecord>,
    unsure: Vec<Vec<OutboxRecord>>,
}

type Acked = Arc<Mutex<Committed>>;

/// Keeps enqueueing committed batches for `users` (one task, so a user's ids grow with its
/// sequence, as the gateway's row lock ensures) until `stop`; records what was committed.
/// Rides out Postgres outages: a batch that failed before its COMMIT is sent again
/// unchanged (nothing of it was committed); one whose COMMIT failed is recorded as unsure
/// and its sequence number never reused.
async fn load(
    pool: sqlx::PgPool,
    users: Vec<Uuid>,
    acked: Acked,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut next_seq: HashMap<(Uuid, bool), i64> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let user = users[rng.random_range(0..users.len())];
        let events = rng.random_bool(0.2);
        let seq = next_seq.entry((user, events)).or_insert(0);
        *seq += 1;
        let n = rng.random_range(1..=20);
        let records: Vec<OutboxRecord> = (0..n)
            .map(|i| {
                if events {
                    event(user, *seq, i)
                } else {
                    sample(user, *seq, i)
                }
            })
            .collect();
        let committed = loop {
            let enqueued = async {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                outbox::enqueue(&mut tx, user, SHARDS, &records)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(tx)
            };
            match enqueued.await {
                Ok(tx) => break tx.commit().await.is_ok(),
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        {
            let mut acked = acked.lock().expect("acked lock");
            if committed {
                for r in records {
                    acked.sure.insert(change_key(&r), r);
                }
            } else {
                acked.unsure.push(records);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..8))).await;
    }
}

/// Starts one `load` task per `chunk` users, seeded from `seed`.
fn start_loads(
    pool: &sqlx::PgPool,
    users: &[Uuid],
    chunk: usize,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    users
        .chunks(chunk)
        .enumerate()
        .map(|(i, users)| {
            tokio::spawn(load(
                pool.clone(),
                users.to_vec(),
                Arc::clone(acked),
                Arc::clone(stop),
                seed.wrapping_add(i as u64 + 1),
            ))
        })
        .collect()
}

/// What at-least-once publication promises after crashes: every committed change is on
/// Kafka, nothing else is (an unsure batch: all of it or none), every copy equals the
/// committed change, and a user's first occurrences are in order. Returns the duplicates.
fn expect_nothing_lost_and_only_identical_duplicates(
    published: &[support::Published],
    committed: &Committed,
) -> usize {
    let counts = occurrences(published);
    let missing: Vec<_> = committed
        .sure
        .keys()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} committed changes lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let mut known: HashMap<ChangeKey, &OutboxRecord> =
        committed.sure.iter().map(|(k, r)| (k.clone(), r)).collect();
    for batch in &committed.unsure {
        let on_kafka = batch
            .iter()
            .filter(|r| counts.contains_key(&change_key(r)))
            .count();
        assert!(
            on_kafka == 0 || on_kafka == batch.len(),
            "a batch whose commit was unsure is on Kafka in part: {on_kafka} of {}",
            batch.len()
        );
        known.extend(batch.iter().map(|r| (change_key(r), r)));
    }
    let unknown: Vec<_> = counts.keys().filter(|k| !known.contains_key(*k)).collect();
    assert!(
        unknown.is_empty(),
        "published something never committed: {unknown:?}"
    );
    for p in published {
        assert_eq!(
            &p.record,
            known[&p.change_key()],
            "a duplicate differs from the committed change"
        );
    }
    assert_per_user_order(published);
    published.len() - counts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_processes_lose_nothing_and_duplicate_only_identically() {
    const KILLS: usize = 5;
    let seed = pulseline_testkit::test_seed("killed_relay_processes", 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = Harness::new("relay-crash").await;
    let log_dir = std::env::temp_dir().join(format!("pulseline-relay-crash-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    println!("relay logs: {}", log_dir.display());
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let all_users: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let loads = start_loads(&h.pool, &all_users, 6, &acked, &stop, seed);

    let small_batches = [("PULSELINE_RELAY_BATCH", "50")];
    for kill in 1..=KILLS {
        let log = log_dir.join(format!("relay-{kill}.log"));
        let mut child = start_relay_process(&h, &log, &small_batches);
        // Kill while it publishes, not while it starts (connecting takes about a second).
        wait_for_log(&log, "batch published", Duration::from_secs(30)).await;
        let after = rng.random_range(100..1500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        let pending = h.outbox_len().await;
        child.kill().expect("SIGKILL relay"); // std's kill is SIGKILL on unix
        child.wait().expect("reap relay");
        eprintln!(
            "kill {kill}/{KILLS}: {after} ms after its first published batch, \
             {pending} outbox rows pending"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load task");
    }

    let mut last = start_relay_process(&h, &log_dir.join("relay-last.log"), &small_batches);
    h.wait_outbox_empty(Duration::from_secs(120)).await;
    let status = terminate(&mut last);
    assert!(
        status.success(),
        "relay exited with {status} on SIGTERM (logs: {})",
        log_dir.display()
    );

    let committed = std::mem::take(&mut *acked.lock().expect("acked lock"));
    assert!(committed.unsure.is_empty(), "Postgres stayed up");
    let published = h.read_all().await;
    let duplicates = expect_nothing_lost_and_only_identical_duplicates(&published, &committed);
    println!(
        "acknowledged {} changes; published {} records, {duplicates} duplicates caused by {KILLS} kills",
        committed.sure.len(),
        published.len(),
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_relay_loses_nothing_and_duplicates_only_identically() {
    const RESTARTS: usize = 3;
    let seed = pulseline_testkit::test_seed("postgres_restarted_under_the_relay", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pg = PrivatePostgres::start().expect("a private Postgres cluster");
    let h = Harness::on(pg.stack(), "relay-pg-restart").await;
    let config = RelayConfig {
        batch: 50,
        poll_ms: 100,
        ..h.config()
    };
    let relay = OutboxRelay::build(config).await.expect("relay builds");
    let metrics = relay.metrics();
    let (stop_relay, handle) = spawn_relay(relay);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let users: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let loads = start_loads(&h.pool, &users, 4, &acked, &stop, seed);

    let mut restarted_with_rows_pending = 0;
    for restart in 1..=RESTARTS {
        // Restart once the relay has published since the last restart, a while into it.
        let published_before = metrics.rows_published(Stream::Samples);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.rows_published(Stream::Samples) == published_before {
            assert!(
                Instant::now() < deadline,
                "the relay published nothing for 60 s after restart {}",
                restart - 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = rng.random_range(50..800);
        let down = rng.random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        let pending = h.outbox_len().await;
        tokio::task::block_in_place(|| pg.restart_immediate(Duration::from_millis(down)))
            .expect("Postgres restarted");
        if pending > 0 {
            restarted_with_rows_pending += 1;
        }
        eprintln!(
            "restart {restart}/{RESTARTS}: {after} ms after the relay published, \
             {pending} outbox rows pending, Postgres down for {down} ms"
        );
    }
    assert!(
        restarted_with_rows_pending > 0,
        "no restart happened with rows in the outbox: the relay was never caught at work"
    );
    // Let the load go on a moment on the restarted server, then drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load task");
    }
    h.wait_outbox_empty(Duration::from_secs(120)).await;
    let _ = stop_relay.send(());
    handle
        .await
        .expect("relay task")
        .expect("the relay rode out the restarts");

    let committed = std::mem::take(&mut *acked.lock().expect("acked lock"));
    let published = h.read_all().await;
    let duplicates = expect_nothing_lost_and_only_identical_duplicates(&published, &committed);
    println!(
        "committed {} changes ({} batches unsure); published {} records, {duplicates} duplicates \
         after {RESTARTS} Postgres restarts",
        committed.sure.len(),
        committed.unsure.len(),
        published.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_everything_once_in_order() {
    let h = Harness::new("relay-two").await;
    let config = RelayConfig {
        batch: 20,
        poll_ms: 50,
        ..h.config()
    };
    let a = OutboxRelay::build(config.clone()).await.expect("relay a");
    let b = OutboxRelay::build(config).await.expect("relay b");
    let (metrics_a, metrics_b) = (a.metrics(), b.metrics());
    let (stop_a, handle_a) = spawn_relay(a);
    let (stop_b, handle_b) = spawn_relay(b);

    let users: Vec<Uuid> = (0..24).map(|_| Uuid::new_v4()).collect();
    let mut expected = HashMap::new();
    let mut seq: HashMap<Uuid, i64> = HashMap::new();
    for step in 0..240 {
        let user = users[(step * 7) % users.len()];
        let s = seq.entry(user).or_insert(0);
        *s += 1;
        let records: Vec<_> = (0..(1 + step % 9) as i32)
            .map(|i| sample(user, *s, i))
            .collect();
        for r in &records {
            expected.insert(change_key(r), r.clone());
        }
        h.enqueue(user, &records).await;
    }
    h.wait_outbox_empty(Duration::from_secs(90)).await;
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    handle_a.await.expect("task a").expect("relay a");
    handle_b.await.expect("task b").expect("relay b");
    println!(
        "relay a published {}, relay b {}",
        metrics_a.rows_published(Stream::Samples),
        metrics_b.rows_published(Stream::Samples)
    );

    let published = h.read_all().await;
    expect_exactly_once(&published, &expected);
    assert_per_user_order(&published);
}

/// Inserts the current state of `user`'s samples and events as the gateway keeps it.
async fn insert_current_rows(h: &Harness, user: Uuid) {
    let samples = [
        // (source_record_id, start offset s, value, deleted, seq, index)
        ("a", 0, 61.0, false, 1_i64, 0_i32),
        ("b", 600, 62.5, false, 1, 1),
        ("c", 1200, 70.0, true, 2, 0),
    ];
    for (rid, offset, value, deleted, seq, index) in samples {
        sqlx::query(
            "INSERT INTO sample (user_id, source_id, source_record_id, start_at, metric, device_type,
                 end_at, tz_offset_minutes, value, unit, metadata, content_hash, deleted, change_seq,
                 change_index, accepted_at)
             VALUES ($1, 'watch-1', $2, '2024-03-01T08:00:00Z'::timestamptz + make_interval(secs => $3),
                 'heart_rate', 'apple_watch', '2024-03-01T08:00:00Z'::timestamptz + make_interval(secs => $3),
                 60, $4, 'count/min', '{\"k\": 1}', '\\x00', $5, $6, $7, now())",
        )
        .bind(user)
        .bind(rid)
        .bind(f64::from(offset))
        .bind(value)
        .bind(deleted)
        .bind(seq)
        .bind(index)
        .execute(&h.pool)
        .await
        .expect("insert sample");
    }
    for (eid, deleted, seq) in [("e1", false, 1_i64), ("e2", true, 2)] {
        sqlx::query(
            "INSERT INTO user_event (user_id, event_id, event_type, product_id, start_at, end_at,
                 tz_offset_minutes, attributes, content_hash, deleted, change_seq, change_index, accepted_at)
             VALUES ($1, $2, 'caffeine', 'espresso', '2024-03-01T07:00:00Z', NULL, 60, '{\"mg\": 80}',
                 '\\x00', $3, $4, 0, now())",
        )
        .bind(user)
        .bind(eid)
        .bind(deleted)
        .bind(seq)
        .execute(&h.pool)
        .await
        .expect("insert event");
    }
    sqlx::query(
        "INSERT INTO user_stream (user_id, stream, last_seq) VALUES ($1, 1, 2), ($1, 2, 2)",
    )
    .bind(user)
    .execute(&h.pool)
    .await
    .expect("insert user_stream");
}

fn run_relay_command(h: &Harness, args: &[&str]) {
    let out = Command::new(RELAY_BIN)
        .envs(h.env())
        .args(args)
        .output()
        .expect("run pulseline-relay");
    assert!(
        out.status.success(),
        "pulseline-relay {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_puts_current_rows_back_with_their_change_ids() {
    let h = Harness::new("relay-republish").await;
    let (u, v) = (Uuid::new_v4(), Uuid::new_v4());
    insert_current_rows(&h, u).await;
    insert_current_rows(&h, v).await;
    let mut relay = OutboxRelay::build(h.config()).await.expect("relay builds");

    // Everything published once (as the gateway would have), then republish U only.
    run_relay_command(&h, &["republish", "--all-users"]);
    assert_eq!(relay.drain().await.expect("first drain").published, 10);
    run_relay_command(&h, &["republish", "--user", &u.to_string()]);
    assert_eq!(relay.drain().await.expect("second drain").published, 5);

    let published = h.read_all().await;
    assert_per_user_order(&published);
    let counts = occurrences(&published);
    for (key, n) in &counts {
        let want = if key.1 == u.to_string() { 2 } else { 1 };
        assert_eq!(*n, want, "{key:?}");
    }
    let u_keys: Vec<(i16, i64, i32)> = counts
        .keys()
        .filter(|k| k.1 == u.to_string())
        .map(|k| (k.0, k.2, k.3))
        .collect();
    assert_eq!(
        u_keys,
        [(1, 1, 0), (1, 1, 1), (1, 2, 0), (2, 1, 0), (2, 2, 0)]
    );

    // The republished records carry the rows' current content; deletions, as the gateway
    // writes them, the key, the metric or type and product, the times and no values.
    let last_of_u: BTreeMap<ChangeKey, &OutboxRecord> = published
        .iter()
        .filter(|p| p.key == u.to_string())
        .map(|p| (p.change_key(), &p.record))
        .collect();
    for record in last_of_u.values() {
        match record {
            OutboxRecord::Sample(s) if s.source_record_id == "c" => {
                assert_eq!(s.operation, Operation::Delete);
                assert_eq!(
                    (s.value, s.unit.as_deref(), s.metadata_json.as_deref()),
                    (None, None, None)
                );
                assert_eq!(s.metric, "heart_rate");
                assert_eq!(s.start_at, 1_709_280_000_000_000 + 1_200_000_000);
                assert_eq!(s.end_at, Some(s.start_at));
            }
            OutboxRecord::Sample(s) => {
                assert_eq!(s.operation, Operation::Upsert);
                let expected = if s.source_record_id == "a" {
                    61.0
                } else {
                    62.5
                };
                assert_eq!(s.value, Some(expected));
                assert_eq!(s.metadata_json.as_deref(), Some(r#"{"k": 1}"#));
                assert_eq!(s.tz_offset_minutes, 60);
            }
            OutboxRecord::Event(e) if e.event_id == "e2" => {
                assert_eq!(e.operation, Operation::Delete);
                assert_eq!(
                    (e.product_id.as_deref(), e.attributes_json.as_deref()),
                    (Some("espresso"), None)
                );
                assert_eq!(e.event_type, "caffeine");
            }
            OutboxRecord::Event(e) => {
                assert_eq!(e.operation, Operation::Upsert);
                assert_eq!(e.product_id.as_deref(), Some("espresso"));
            }
        }
    }

    // A time range and one stream: only samples starting at or after 08:10 (b, c) of both users.
    run_relay_command(
        &h,
        &[
            "republish",
            "--all-users",
            "--stream",
            "samples",
            "--from",
            "2024-03-01T09:10:00+01:00",
        ],
    );
    assert_eq!(relay.drain().await.expect("third drain").published, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_dead_lettered_without_blocking_their_shard() {
    let h = Harness::new("relay-poison").await;
    let mut relay = OutboxRelay::build(h.config()).await.expect("relay builds");
    let user = Uuid::new_v4();
    let shard = outbox::shard_of(user, SHARDS);

    let good_before = sample(user, 1, 0);
    h.enqueue(user, std::slice::from_ref(&good_before)).await;
    let mut poison_ids = Vec::new();
    for (stream, payload, seq) in [
        (
            1_i16,
            format!(r#"{{"userId": "{user}", "changeSeq": 2}}"#),
            2_i64,
        ), // missing fields
        (
            9,
            serde_json::to_string(&serde_json::json!({"userId": user})).expect("json"),
            3,
        ), // unknown stream
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload)
             VALUES ($1, $2, $3, $4, 0, $5::json) RETURNING id",
        )
        .bind(shard)
        .bind(stream)
        .bind(user)
        .bind(seq)
        .bind(payload)
        .fetch_one(&h.pool)
        .await
        .expect("insert poison");
        poison_ids.push(id);
    }
    let good_after = [sample(user, 4, 0), sample(user, 4, 1)];
    h.enqueue(user, &good_after).await;

    let summary = relay.drain().await.expect("drain");
    assert_eq!((summary.published, summary.dead_lettered), (3, 2));
    assert_eq!(relay.metrics().dead_lettered(), 2);
    assert_eq!(h.outbox_len().await, 0);

    let dead: Vec<(i64, i16, String)> =
        sqlx::query_as("SELECT id, stream, reason FROM outbox_dead ORDER BY id")
            .fetch_all(&h.pool)
            .await
            .expect("outbox_dead");
    assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), poison_ids);
    assert!(dead[0].2.contains("missing field"), "reason: {}", dead[0].2);
    assert!(
        dead[1].2.contains("unknown stream 9"),
        "reason: {}",
        dead[1].2
    );

    let expected: HashMap<_, _> = std::iter::once(&good_before)
        .chain(&good_after)
        .map(|r| (change_key(r), r.clone()))
        .collect();
    let published = h.read_all().await;
    expect_exactly_once(&published, &expected);
    assert_per_user_order(&published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_keeps_rows_and_dead_letters_nothing() {
    let h = Harness::new("relay-registry-down").await;
    let down = RelayConfig {
        schema_registry_url: "http://127.0.0.1:1".to_owned(),
        ..h.config()
    };
    let mut relay = OutboxRelay::build(down)
        .await
        .expect("relay builds without the registry");
    let user = Uuid::new_v4();
    let records = [sample(user, 1, 0), event(user, 1, 0)];
    h.enqueue(user, &records).await;

    let err = relay
        .drain()
        .await
        .expect_err("the registry is unreachable");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(h.outbox_len().await, 2);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead")
        .fetch_one(&h.pool)
        .await
        .expect("count");
    assert_eq!(dead, 0);

    let mut relay = OutboxRelay::build(h.config()).await.expect("relay builds");
    assert_eq!(relay.drain().await.expect("registry is back").published, 2);
    let expected: HashMap<_, _> = records.iter().map(|r| (change_key(r), r.clone())).collect();
    expect_exactly_once(&h.read_all().await, &expected);
}
