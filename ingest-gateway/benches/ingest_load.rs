//! Load benchmark of the write path: many concurrent clients upload 500-sample batches
//! (new data, retries, unchanged re-uploads, corrections, deletions from a watch and a phone
//! per user) to a real gateway, while a real relay publishes the outbox to the local broker.
//!
//! Prints, every second: accepted samples/s, outbox depth and the age of the oldest
//! unpublished row (relay lag); at the end: totals, request latency p50/p99, and the time
//! Postgres takes to COPY the same number of sample rows into a plain table in the same run
//! (the physical floor for durable ingest here), as a ratio.
//!
//! Run: `cargo bench -p pulseline-ingest-gateway --bench ingest_load` after `scripts/stack up`.
//! Knobs (env): BENCH_SECONDS (20), BENCH_CLIENTS (16), BENCH_USERS (64), BENCH_BATCH (500).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::config::Config;
use pulseline_ingest_gateway::relay::OutboxRelay;
use pulseline_ingest_gateway::relay::RelayConfig;
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_simulator::{RequestKind, SimulatedUser, TrafficMix};
use pulseline_testkit::Stack;
use sqlx::PgPool;
use tokio::sync::Mutex;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    updated: AtomicU64,
    deleted: AtomicU64,
    rejected: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = knob("BENCH_SECONDS", 20);
    let clients = knob("BENCH_CLIENTS", 16) as usize;
    let users = knob("BENCH_USERS", 64) as usize;
    let batch = knob("BENCH_BATCH", 500) as usize;

    let stack = Stack::from_env();
    let db = stack.create_database().await;
    let prefix = stack.unique_prefix("bench");
    stack.create_topics(&prefix).await;

    let config = Config {
        addr: "127.0.0.1:0".parse().expect("literal address"),
        database_url: db.url.clone(),
        kafka_bootstrap: stack.kafka_bootstrap.clone(),
        rate_limit_per_sec: 1_000_000,
        rate_limit_burst: 1_000_000,
        ..Config::default()
    };
    let secret = config.jwt_secret.clone();
    let app = Application::build(config).await.expect("gateway builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));

    let relay = OutboxRelay::build(RelayConfig {
        database_url: db.url.clone(),
        kafka_bootstrap: stack.kafka_bootstrap.clone(),
        schema_registry_url: stack.schema_registry_url.clone(),
        topic_prefix: prefix.clone(),
        metrics_addr: "127.0.0.1:0".parse().expect("literal address"),
        ..RelayConfig::default()
    })
    .await
    .expect("relay builds");
    let relay_metrics = relay.metrics();
    tokio::spawn(relay.run_until(std::future::pending::<()>()));

    let pool = PgPool::connect(&db.url).await.expect("bench pool");
    let start = Utc::now() - TimeDelta::days(30);
    let sim: Vec<Arc<Mutex<SimulatedUser>>> = (0..users)
        .map(|i| {
            Arc::new(Mutex::new(SimulatedUser::new(
                i as u64 + 1,
                start,
                TrafficMix::default(),
            )))
        })
        .collect();
    let tokens: Vec<String> = futures_tokens(&sim, &secret).await;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");

    println!(
        "ingest_load: {clients} clients, {users} users, {batch}-sample batches, {seconds} s, topic prefix {prefix}"
    );
    let began = Instant::now();
    let mut workers = Vec::new();
    for c in 0..clients {
        let (sim, tokens, counters, latencies, stop, http, base) = (
            sim.clone(),
            tokens.clone(),
            counters.clone(),
            latencies.clone(),
            stop.clone(),
            http.clone(),
            base.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut u = c;
            while !stop.load(Ordering::Relaxed) {
                // A user's requests are serialised in the gateway; a client holds its user's lock
                // so one simulated phone never races itself.
                let mut user = sim[u % sim.len()].lock().await;
                let upload = user.next_upload(batch, Utc::now());
                if upload.items == 0 {
                    drop(user);
                    u += clients;
                    continue;
                }
                let sent = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/samples:batch"))
                    .bearer_auth(&tokens[u % tokens.len()])
                    .json(&upload.body)
                    .send()
                    .await;
                let took = sent.elapsed();
                counters.requests.fetch_add(1, Ordering::Relaxed);
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let answer: serde_json::Value = r.json().await.unwrap_or_default();
                        let n = |k: &str| answer[k].as_u64().unwrap_or(0);
                        counters
                            .accepted
                            .fetch_add(n("accepted"), Ordering::Relaxed);
                        counters
                            .duplicates
                            .fetch_add(n("duplicates"), Ordering::Relaxed);
                        counters.updated.fetch_add(n("updated"), Ordering::Relaxed);
                        counters.deleted.fetch_add(n("deleted"), Ordering::Relaxed);
                        counters
                            .rejected
                            .fetch_add(n("rejected"), Ordering::Relaxed);
                        if upload.kind != RequestKind::Retry {
                            user.acknowledged(&upload);
                        }
                        latencies.lock().await.push(took);
                    }
                    _ => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(user);
                u += clients;
            }
        }));
    }

    let mut lag_samples = Vec::new();
    let mut last_accepted = 0;
    for t in 1..=seconds {
        tokio::time::sleep_until((began + Duration::from_secs(t)).into()).await;
        let (depth, lag) = outbox_state(&pool).await;
        lag_samples.push(lag);
        let accepted =
            counters.accepted.load(Ordering::Relaxed) + counters.updated.load(Ordering::Relaxed);
        println!(
            "  t={t:>3}s  accepted {:>7}/s  outbox depth {depth:>7}  oldest unpublished {lag:>6.2} s  published {}",
            accepted - last_accepted,
            relay_metrics.rows_published(pulseline_ingest_gateway::outbox::Stream::Samples),
        );
        last_accepted = accepted;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let load_time = began.elapsed();
    let drain_began = Instant::now();
    loop {
        let (depth, _) = outbox_state(&pool).await;
        if depth == 0 || drain_began.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = drain_began.elapsed();

    let accepted = counters.accepted.load(Ordering::Relaxed);
    let updated = counters.updated.load(Ordering::Relaxed);
    let written = accepted + updated;
    let rate = written as f64 / load_time.as_secs_f64();
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    let pct = |p: f64| percentile(&lat, p);
    lag_samples.sort_by(f64::total_cmp);
    let lag_p50 = percentile(&lag_samples, 0.5);
    let lag_max = lag_samples.last().copied().unwrap_or(0.0);
    let lag_p99 = percentile(&lag_samples, 0.99);

    let copy_secs = copy_baseline(&pool, written.max(1)).await;
    let copy_rate = written.max(1) as f64 / copy_secs;

    println!("results:");
    println!(
        "  requests {} (failed {}), samples accepted {accepted}, updated {updated}, duplicates {}, deleted {}, rejected {}",
        counters.requests.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.duplicates.load(Ordering::Relaxed),
        counters.deleted.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
    );
    println!(
        "  gateway: {rate:.0} samples/s written (accepted + updated) over {:.1} s",
        load_time.as_secs_f64()
    );
    println!(
        "  request latency: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
        ms(pct(0.50)),
        ms(pct(0.99)),
        lat.len()
    );
    println!(
        "  relay lag (oldest unpublished row, sampled each second): p50 {lag_p50:.2} s, max {lag_max:.2} s; drain after load {:.2} s",
        drain.as_secs_f64()
    );
    println!(
        "  baseline: COPY of {written} sample rows into a plain table: {copy_secs:.2} s = {copy_rate:.0} rows/s"
    );
    println!("  ratio gateway / COPY floor: {:.3}", rate / copy_rate);
    // One line to compare across commits.
    println!(
        "{}",
        serde_json::json!({
            "bench": "ingest",
            "samples_per_s": rate.round(),
            "copy_rows_per_s": copy_rate.round(),
            "ratio_to_copy": (rate / copy_rate * 1000.0).round() / 1000.0,
            "request_p50_ms": (ms(pct(0.50)) * 10.0).round() / 10.0,
            "request_p99_ms": (ms(pct(0.99)) * 10.0).round() / 10.0,
            "relay_lag_p99_s": (lag_p99 * 100.0).round() / 100.0,
            "relay_drain_s": (drain.as_secs_f64() * 100.0).round() / 100.0,
        })
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn futures_tokens(sim: &[Arc<Mutex<SimulatedUser>>], secret: &str) -> Vec<String> {
    let mut tokens = Vec::with_capacity(sim.len());
    for u in sim {
        tokens.push(issue_hs256_token(
            secret,
            u.lock().await.user_id,
            Role::User,
            24 * 3600,
        ));
    }
    tokens
}

/// Outbox depth and the age in seconds of its oldest row.
async fn outbox_state(pool: &PgPool) -> (i64, f64) {
    sqlx::query_as::<_, (i64, f64)>(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) FROM outbox",
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0.0))
}

/// Seconds Postgres takes to COPY `rows` rows shaped like `sample` rows into a plain table.
async fn copy_baseline(pool: &PgPool, rows: u64) -> f64 {
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS copy_baseline;
         CREATE TABLE copy_baseline (user_id uuid, source_id text, source_record_id text,
           start_at timestamptz, metric text, device_type text, end_at timestamptz,
           tz_offset_minutes int, value float8, unit text, content_hash bytea,
           change_seq bigint, change_index int, accepted_at timestamptz,
           PRIMARY KEY (user_id, source_id, source_record_id, start_at))",
    )
    .execute(&mut *conn)
    .await
    .expect("baseline table");
    let mut data = String::with_capacity(rows as usize * 200);
    let user = uuid::Uuid::new_v4();
    for i in 0..rows {
        data.push_str(&format!(
            "{user}\tapple_watch-1\tr{i}\t2026-10-01 00:00:00+00\tHEART_RATE\tapple_watch\t2026-10-01 00:01:00+00\t60\t72\tcount/min\t\\\\x{i:064x}\t{}\t{}\t2026-11-01 00:00:00+00\n",
            i / 500 + 1,
            i % 500
        ));
    }
    let began = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_baseline FROM STDIN")
        .await
        .expect("copy in");
    copy.send(data.as_bytes()).await.expect("copy data");
    copy.finish().await.expect("copy finish");
    began.elapsed().as_secs_f64()
}

/// The `p` quantile (0..=1) of a sorted slice; the default when it is empty.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}
