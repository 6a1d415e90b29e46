//! `pulseline run`: the whole pipeline on the embedded default, driven by simulated users.
//!
//! Starts the gateway and the relay in this process (against the local stack that
//! `scripts/run` brought up), lets simulated users upload for a while (a watch and a phone
//! each: heart rate, steps, sleep; offline backlog, retries, unchanged re-uploads,
//! corrections, deletions), shows progress every second, then checks what Postgres holds
//! against what every client believes it stored, and prints a summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::auth::{Role, issue_hs256_token};
use pulseline_ingest_gateway::config::Config as GatewayConfig;
use pulseline_ingest_gateway::outbox::Stream;
use pulseline_ingest_gateway::relay::{OutboxRelay, RelayConfig};
use pulseline_simulator::{NaturalKey, RequestKind, SimulatedUser, TrafficMix};
use sqlx::PgPool;
use tokio::sync::Mutex;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Simulated users uploading at once.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Seconds of simulated traffic.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Samples per upload (the apps batch their backlog).
    #[arg(long, default_value_t = 300)]
    batch: usize,
    /// Days of offline backlog each user starts with.
    #[arg(long, default_value_t = 14)]
    backlog_days: i64,
    /// Keep the services up after the run, until Ctrl-C.
    #[arg(long)]
    stay_up: bool,
    #[arg(long, env = "PULSELINE_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    gateway_addr: SocketAddr,
    #[arg(long, env = "PULSELINE_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/pulseline")]
    database_url: String,
    #[arg(long, env = "PULSELINE_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    kafka_bootstrap: String,
    #[arg(long, env = "PULSELINE_SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:18081")]
    schema_registry_url: String,
    #[arg(long, env = "PULSELINE_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    items: AtomicU64,
    accepted: AtomicU64,
    updated: AtomicU64,
    duplicates: AtomicU64,
    deleted: AtomicU64,
    rejected: AtomicU64,
    /// Retries of an answered request: the gateway replays the stored answer.
    replayed: AtomicU64,
    failed: AtomicU64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let gateway_config = GatewayConfig {
        addr: args.gateway_addr,
        database_url: args.database_url.clone(),
        kafka_bootstrap: args.kafka_bootstrap.clone(),
        ..GatewayConfig::default()
    };
    let secret = gateway_config.jwt_secret.clone();
    let gateway = Application::build(gateway_config).await.context("starting the gateway")?;
    let gateway_url = format!("http://{}", gateway.local_addr());
    tokio::spawn(gateway.run_until(std::future::pending()));

    let relay = OutboxRelay::build(RelayConfig {
        database_url: args.database_url.clone(),
        kafka_bootstrap: args.kafka_bootstrap.clone(),
        schema_registry_url: args.schema_registry_url.clone(),
        topic_prefix: args.topic_prefix.clone(),
        metrics_addr: "127.0.0.1:0".parse()?,
        ..RelayConfig::default()
    })
    .await
    .context("starting the relay")?;
    let relay_metrics = relay.metrics();
    println!("pulseline run: gateway {gateway_url}, relay metrics http://{}/metrics", relay.metrics_addr());
    tokio::spawn(relay.run_until(std::future::pending::<()>()));

    let pool = PgPool::connect(&args.database_url).await?;
    let now = Utc::now();
    let seed_base = u64::try_from(now.timestamp_millis()).unwrap_or_default();
    let users: Vec<Arc<Mutex<SimulatedUser>>> = (0..args.users)
        .map(|i| {
            let start = now - TimeDelta::days(args.backlog_days);
            Arc::new(Mutex::new(SimulatedUser::new(seed_base + i as u64, start, TrafficMix::default())))
        })
        .collect();
    let tally = Arc::new(Tally::default());
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let http = reqwest::Client::new();
    println!(
        "simulating {} users (watch + phone each, {} days of backlog) for {} s ...",
        args.users, args.backlog_days, args.duration
    );
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.duration);
    let mut clients = Vec::new();
    for user in &users {
        let (user, tally, latencies, http, url, secret) =
            (user.clone(), tally.clone(), latencies.clone(), http.clone(), format!("{gateway_url}/v1/samples:batch"), secret.clone());
        let batch = args.batch;
        clients.push(tokio::spawn(async move {
            let mut u = user.lock().await;
            let token = issue_hs256_token(&secret, u.user_id, Role::User, 24 * 3600);
            while Instant::now() < deadline {
                let upload = u.next_upload(batch, Utc::now());
                if upload.items == 0 {
                    // Caught up with the present: a phone waits for new data.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let sent = Instant::now();
                let answer = post(&http, &url, &token, &upload.body).await;
                tally.requests.fetch_add(1, Ordering::Relaxed);
                tally.items.fetch_add(upload.items as u64, Ordering::Relaxed);
                match answer {
                    Some(_) if upload.kind == RequestKind::Retry => {
                        latencies.lock().await.push(sent.elapsed());
                        tally.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(a) => {
                        latencies.lock().await.push(sent.elapsed());
                        let n = |k: &str| a[k].as_u64().unwrap_or(0);
                        tally.accepted.fetch_add(n("accepted"), Ordering::Relaxed);
                        tally.updated.fetch_add(n("updated"), Ordering::Relaxed);
                        tally.duplicates.fetch_add(n("duplicates"), Ordering::Relaxed);
                        tally.deleted.fetch_add(n("deleted"), Ordering::Relaxed);
                        tally.rejected.fetch_add(n("rejected"), Ordering::Relaxed);
                        u.acknowledged(&upload);
                    }
                    None => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut second = 0;
    while Instant::now() < deadline {
        second += 1;
        tokio::time::sleep_until((began + Duration::from_secs(second)).into()).await;
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap_or(-1);
        println!(
            "  {second:>3}s  requests {:>5}  samples accepted {:>7}  duplicates {:>6}  outbox {:>6}  published {:>7}",
            tally.requests.load(Ordering::Relaxed),
            tally.accepted.load(Ordering::Relaxed) + tally.updated.load(Ordering::Relaxed),
            tally.duplicates.load(Ordering::Relaxed),
            depth,
            relay_metrics.rows_published(Stream::Samples),
        );
    }
    for c in clients {
        c.await?;
    }
    let load_secs = began.elapsed().as_secs_f64();

    // Wait until the relay has published everything the gateway accepted.
    let drain_began = Instant::now();
    loop {
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await?;
        if depth == 0 {
            break;
        }
        ensure!(drain_began.elapsed() < Duration::from_secs(120), "outbox not drained after 120 s ({depth} rows)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mismatches = check_stored_samples(&pool, &users).await?;
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!("summary:");
    println!(
        "  requests {} ({} retries answered from the stored answer, {} failed), items sent {}: accepted {}, updated {}, duplicates {}, deleted {}, rejected {}",
        t(&tally.requests), t(&tally.replayed), t(&tally.failed), t(&tally.items), t(&tally.accepted), t(&tally.updated),
        t(&tally.duplicates), t(&tally.deleted), t(&tally.rejected)
    );
    println!(
        "  ingest {:.0} items/s; upload latency p50 {:.1} ms, p99 {:.1} ms; outbox drained {:.1} s after the load; {} records published",
        t(&tally.items) as f64 / load_secs,
        pct(0.5),
        pct(0.99),
        drain_began.elapsed().as_secs_f64(),
        relay_metrics.rows_published(Stream::Samples),
    );
    if mismatches == 0 {
        println!("  check: Postgres holds exactly what every simulated client believes it stored (last write per key, deletions applied)");
    } else {
        println!("  check FAILED: {mismatches} samples differ between Postgres and the clients' view");
    }
    if args.stay_up {
        let token = issue_hs256_token(&secret, users[0].lock().await.user_id, Role::User, 24 * 3600);
        println!("services stay up; try:");
        println!("  curl -s -H 'Authorization: Bearer {token}' {gateway_url}/openapi.json | head -c 300");
        println!("Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    ensure!(mismatches == 0, "stored samples differ from what the clients sent");
    Ok(())
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
    let resp = http.post(url).bearer_auth(token).json(body).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Compares the gateway's `sample` table with each client's view; returns the differences.
async fn check_stored_samples(pool: &PgPool, users: &[Arc<Mutex<SimulatedUser>>]) -> anyhow::Result<usize> {
    let mut mismatches = 0;
    for user in users {
        let u = user.lock().await;
        let rows: Vec<(String, String, DateTime<Utc>, String, Option<f64>, Option<String>)> = sqlx::query_as(
            "SELECT source_id, source_record_id, start_at, metric, value, category
             FROM sample WHERE user_id = $1 AND NOT deleted",
        )
        .bind(u.user_id)
        .fetch_all(pool)
        .await?;
        let stored: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = rows
            .into_iter()
            .map(|(source_id, source_record_id, start, metric, value, category)| {
                (NaturalKey { source_id, source_record_id, start_at: start.timestamp_micros() }, (metric, value, category))
            })
            .collect();
        let expected: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = u
            .expected()
            .iter()
            .map(|(k, c)| (k.clone(), (c.metric.to_owned(), c.value, c.category.map(str::to_owned))))
            .collect();
        mismatches += expected.iter().filter(|(k, v)| stored.get(*k) != Some(*v)).count();
        mismatches += stored.keys().filter(|k| !expected.contains_key(*k)).count();
    }
    Ok(mismatches)
}
