//! `pulseline run`: the whole pipeline on the embedded default, driven by simulated users.
//!
//! Starts every service in this process (against the local stack that `scripts/run`
//! brought up): the gateway, the relay, the stream processors, the Postgres sink and the
//! query API. Simulated users upload for a while (a watch and a phone each: heart rate,
//! steps, sleep; offline backlog, retries, unchanged re-uploads, corrections, deletions);
//! progress shows every second. Then it waits until every user's read models are fresh,
//! checks what Postgres holds against what every client believes it stored, checks the
//! rollups against the brute-force oracle, and prints a summary with the ingest-to-read-model
//! latency (gateway acknowledgement to the query API reporting the change applied).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Parser};
use pulseline_cli::pipeline::{Pipeline, PipelineConfig};
use pulseline_ingest_gateway::outbox::Stream;
use pulseline_schemas::Operation;
use pulseline_schemas::records::SampleChange;
use pulseline_simulator::{NaturalKey, RequestKind, SimulatedUser, TrafficMix};
use pulseline_stream_processors::cli::Cli as ProcessorCli;
use pulseline_stream_processors::oracle;
use pulseline_stream_processors::processors::registered_names;
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
    #[arg(long, env = "PULSELINE_QUERY_ADDR", default_value = "127.0.0.1:8081")]
    query_addr: SocketAddr,
    #[arg(
        long,
        env = "PULSELINE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/pulseline"
    )]
    database_url: String,
    #[arg(
        long,
        env = "PULSELINE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:29092"
    )]
    kafka_bootstrap: String,
    #[arg(
        long,
        env = "PULSELINE_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    schema_registry_url: String,
    #[arg(long, env = "PULSELINE_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Where the run exports Parquet for analysts at its end.
    #[arg(long, env = "PULSELINE_EXPORT_DIR", default_value = pulseline_sinks::export::DEFAULT_EXPORT_DIR)]
    export_dir: PathBuf,
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
    /// Requests sent again after a failure a retry can fix (same requestId).
    retried: AtomicU64,
    /// Event items (logged events, edits and deletions) acknowledged.
    events: AtomicU64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = PipelineConfig::new(
        &args.database_url,
        &args.kafka_bootstrap,
        &args.schema_registry_url,
        &args.topic_prefix,
    );
    config.gateway_addr = args.gateway_addr;
    config.query_addr = args.query_addr;
    config.export_dir = args.export_dir.clone();
    let processors = ProcessorCli::parse_from(["pulseline-processor"]);
    config.runtime = processors.runtime_config();
    config.processors = processors.processors_config();
    let joining = Instant::now();
    let pipeline = Pipeline::start(config).await?;
    let (gateway_url, query_url) = (pipeline.gateway_url.clone(), pipeline.query_url.clone());
    let relay_metrics = pipeline.relay_metrics.clone();
    let runtime = &pipeline.processors;
    println!(
        "pulseline run: gateway {gateway_url}, relay metrics http://{}/metrics",
        pipeline.relay_metrics_addr
    );
    println!(
        "  processors: {}; sink to Postgres; query API {query_url}",
        registered_names().join(", ")
    );
    // Traffic starts once the processors own their partitions, so latencies measure the
    // pipeline, not a consumer-group join and state restore.
    println!(
        "  processors own {} partitions after {:.1} s",
        runtime.status().assigned().len(),
        joining.elapsed().as_secs_f64()
    );

    let pool = PgPool::connect(&args.database_url).await?;
    let now = Utc::now();
    let seed_base = u64::try_from(now.timestamp_millis()).unwrap_or_default();
    let users: Vec<Arc<Mutex<SimulatedUser>>> = (0..args.users)
        .map(|i| {
            let start = now - TimeDelta::days(args.backlog_days);
            Arc::new(Mutex::new(SimulatedUser::new(
                seed_base + i as u64,
                start,
                TrafficMix::default(),
            )))
        })
        .collect();
    let tally = Arc::new(Tally::default());
    let pending: Arc<Mutex<Vec<(usize, i64, Instant)>>> = Arc::default();
    let freshness_latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let http = reqwest::Client::new();
    println!(
        "simulating {} users (watch + phone each, {} days of backlog) for {} s ...",
        args.users, args.backlog_days, args.duration
    );
    let mut tokens = Vec::with_capacity(users.len());
    for u in &users {
        tokens.push(pipeline.token(u.lock().await.user_id));
    }
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.duration);
    let mut clients = Vec::new();
    for (index, user) in users.iter().enumerate() {
        let (user, tally, latencies, http, url, token, pending) = (
            user.clone(),
            tally.clone(),
            latencies.clone(),
            http.clone(),
            format!("{gateway_url}/v1/samples:batch"),
            tokens[index].clone(),
            pending.clone(),
        );
        let events_url = format!("{gateway_url}/v1/events:batch");
        let batch = args.batch;
        clients.push(tokio::spawn(async move {
            let mut u = user.lock().await;
            while Instant::now() < deadline {
                let upload = u.next_upload(batch, Utc::now());
                if upload.items == 0 {
                    // Caught up with the present: a phone waits for new data.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let sent = Instant::now();
                let answer = post(&http, &url, &token, &upload.body, &tally.retried).await;
                tally.requests.fetch_add(1, Ordering::Relaxed);
                tally
                    .items
                    .fetch_add(upload.items as u64, Ordering::Relaxed);
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
                        tally
                            .duplicates
                            .fetch_add(n("duplicates"), Ordering::Relaxed);
                        tally.deleted.fetch_add(n("deleted"), Ordering::Relaxed);
                        tally.rejected.fetch_add(n("rejected"), Ordering::Relaxed);
                        if n("accepted") + n("updated") + n("deleted") > 0 {
                            let seq = a["userSeq"].as_i64().unwrap_or_default();
                            pending.lock().await.push((index, seq, Instant::now()));
                        }
                        u.acknowledged(&upload);
                    }
                    None => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(events) = u.next_events(Utc::now()) {
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    if post(&http, &events_url, &token, &events.body, &tally.retried)
                        .await
                        .is_some()
                    {
                        tally
                            .events
                            .fetch_add(events.items as u64, Ordering::Relaxed);
                        u.events_acknowledged(&events);
                    } else {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let watcher = tokio::spawn(watch_freshness(
        http.clone(),
        format!("{query_url}/v1/me/rollups"),
        tokens.clone(),
        pending.clone(),
        freshness_latencies.clone(),
    ));

    let mut second = 0;
    while Instant::now() < deadline {
        second += 1;
        tokio::time::sleep_until((began + Duration::from_secs(second)).into()).await;
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap_or(-1);
        let rollups: i64 = sqlx::query_scalar("SELECT count(*) FROM rollup")
            .fetch_one(&pool)
            .await
            .unwrap_or(-1);
        println!(
            "  {second:>3}s  requests {:>5}  samples accepted {:>7}  duplicates {:>6}  outbox {:>6}  published {:>7}  processed {:>7}  rollup rows {:>6}",
            tally.requests.load(Ordering::Relaxed),
            tally.accepted.load(Ordering::Relaxed) + tally.updated.load(Ordering::Relaxed),
            tally.duplicates.load(Ordering::Relaxed),
            depth,
            relay_metrics.rows_published(Stream::Samples),
            runtime.status().consumed_records(),
            rollups,
        );
    }
    for c in clients {
        c.await?;
    }
    let load_secs = began.elapsed().as_secs_f64();

    // Wait until the relay has published everything the gateway accepted.
    let drain_began = Instant::now();
    loop {
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        if depth == 0 {
            break;
        }
        ensure!(
            drain_began.elapsed() < Duration::from_secs(120),
            "outbox not drained after 120 s ({depth} rows)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then until every user's read models have applied every accepted change.
    let fresh_began = Instant::now();
    while !pending.lock().await.is_empty() {
        ensure!(
            fresh_began.elapsed() < Duration::from_secs(180),
            "read models not fresh 180 s after the load ({} acknowledged changes not yet applied)",
            pending.lock().await.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.abort();
    // And until the impact read models have applied every event too (the watcher above
    // follows the samples stream only).
    for (user, token) in tokens.iter().enumerate() {
        loop {
            let answer = http
                .get(format!("{query_url}/v1/me/impacts/products?periodDays=90"))
                .bearer_auth(token)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await?;
            if answer["freshness"]["status"] == "fresh" {
                break;
            }
            ensure!(
                fresh_began.elapsed() < Duration::from_secs(180),
                "impacts of user {user} not fresh 180 s after the load: {}",
                answer["freshness"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fresh_after = fresh_began.elapsed().as_secs_f64();

    let mismatches = check_stored_samples(&pool, &users).await?;
    let oracle = check_rollups(&pool, &users).await?;
    let sleep_check = check_sleep(&pool, &users).await?;
    let impact_check = check_impacts(&pool, &users).await?;
    let export_check = export_for_analysts(&args, &pool, &query_url, &pipeline.analyst_token())
        .await
        .context("exporting for analysts")?;
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!("summary:");
    println!(
        "  requests {} ({} retries answered from the stored answer, {} resent after a failure, {} failed), items sent {}: accepted {}, updated {}, duplicates {}, deleted {}, rejected {}",
        t(&tally.requests),
        t(&tally.replayed),
        t(&tally.retried),
        t(&tally.failed),
        t(&tally.items),
        t(&tally.accepted),
        t(&tally.updated),
        t(&tally.duplicates),
        t(&tally.deleted),
        t(&tally.rejected)
    );
    println!("  events logged, edited or deleted: {}", t(&tally.events));
    println!(
        "  ingest {:.0} items/s; upload latency p50 {:.1} ms, p99 {:.1} ms; outbox drained {:.1} s after the load; {} records published",
        t(&tally.items) as f64 / load_secs,
        pct(0.5),
        pct(0.99),
        drain_began.elapsed().as_secs_f64(),
        relay_metrics.rows_published(Stream::Samples),
    );
    let mut fl = freshness_latencies.lock().await.clone();
    fl.sort();
    let fpct = |p: f64| {
        fl.get(((fl.len() as f64 * p) as usize).min(fl.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "  ingest to read model (acknowledged to applied, via the query API's freshness): p50 {:.0} ms, p99 {:.0} ms over {} uploads; all fresh {fresh_after:.1} s after the load",
        fpct(0.5),
        fpct(0.99),
        fl.len(),
    );
    println!(
        "  processors: {} records consumed, {} transactions committed, {} aborted",
        runtime.status().consumed_records(),
        runtime.status().committed_batches(),
        runtime.status().aborted_batches(),
    );
    println!(
        "  check: {} rollup buckets compared with the brute-force oracle: {} differ",
        oracle.compared, oracle.differing
    );
    println!(
        "  check: {} sleep nights compared with the brute-force sleep oracle: {} differ",
        sleep_check.compared, sleep_check.differing
    );
    println!(
        "  check: {} session and product impacts compared with the brute-force impact oracle: {} differ",
        impact_check.compared, impact_check.differing
    );
    if mismatches == 0 {
        println!(
            "  check: Postgres holds exactly what every simulated client believes it stored (last write per key, deletions applied)"
        );
    } else {
        println!(
            "  check FAILED: {mismatches} samples differ between Postgres and the clients' view"
        );
    }
    println!(
        "  check: {} live rollup rows in Postgres, {} in the export through analysts' SQL",
        export_check.postgres_rollups, export_check.exported_rollups
    );
    if args.stay_up {
        let token = &tokens[0];
        let today = Utc::now().date_naive();
        let from = today - TimeDelta::days(args.backlog_days);
        println!("services stay up; try:");
        println!(
            "  curl -s -H 'Authorization: Bearer {token}' '{query_url}/v1/me/rollups?metric=STEPS&period=day&from={from}&to={today}'"
        );
        println!(
            "  curl -s -H 'Authorization: Bearer {token}' '{query_url}/v1/me/sleep?from={from}&to={today}'"
        );
        println!(
            "  curl -s -H 'Authorization: Bearer {token}' '{query_url}/v1/me/impacts/products?periodDays=30'"
        );
        println!(
            "  curl -s -X POST -H 'Authorization: Bearer {}' '{query_url}/v1/analytics/sql' -d '{{\"sql\": \"SELECT metric, count(*) FROM samples GROUP BY metric\"}}'",
            pipeline.analyst_token()
        );
        println!("Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    pipeline
        .processors
        .shutdown()
        .await
        .context("stopping the processors")?;
    ensure!(
        mismatches == 0,
        "stored samples differ from what the clients sent"
    );
    ensure!(
        oracle.differing == 0,
        "rollups differ from the brute-force oracle"
    );
    ensure!(
        sleep_check.differing == 0,
        "sleep nights differ from the brute-force sleep oracle"
    );
    ensure!(
        impact_check.differing == 0,
        "impacts differ from the brute-force impact oracle"
    );
    ensure!(
        export_check.postgres_rollups == export_check.exported_rollups,
        "the export's rollups differ from Postgres"
    );
    Ok(())
}

/// The analysts' side of the run: one export cycle, one example query through the query
/// API, and the export's rollups counted against Postgres.
struct ExportCheck {
    postgres_rollups: i64,
    exported_rollups: i64,
}

/// The example query printed after a run (and in the README).
const EXAMPLE_SQL: &str = "SELECT metric, count(*) AS samples, count(DISTINCT subject_id) AS subjects, \
     round(avg(value), 1) AS mean FROM samples GROUP BY metric ORDER BY metric";

async fn export_for_analysts(
    args: &RunArgs,
    pool: &PgPool,
    query_url: &str,
    analyst_token: &str,
) -> anyhow::Result<ExportCheck> {
    use pulseline_sinks::export::{ExportConfig, Exporter};
    let dir = args.export_dir.to_string_lossy().into_owned();
    let began = Instant::now();
    let mut exporter = Exporter::new(pool.clone(), &ExportConfig::local(&args.database_url, &dir))?;
    let reports = exporter.export_once().await?;
    let shown: Vec<String> = reports
        .iter()
        .map(|r| format!("{} {} rows", r.dataset, r.rows_total))
        .collect();
    println!(
        "export for analysts: {} ({}) in {:.1} s",
        std::fs::canonicalize(&args.export_dir)
            .unwrap_or_else(|_| args.export_dir.clone())
            .display(),
        shown.join(", "),
        began.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::new();
    let sql = |q: &str| {
        client
            .post(format!("{query_url}/v1/analytics/sql"))
            .bearer_auth(analyst_token)
            .json(&serde_json::json!({ "sql": q }))
            .send()
    };
    let answer: serde_json::Value = sql(EXAMPLE_SQL).await?.error_for_status()?.json().await?;
    println!("  pulseline sql \"{EXAMPLE_SQL}\"");
    let names: Vec<&str> = answer["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    println!(
        "    {}",
        names.iter().map(|n| format!("{n:>18}")).collect::<String>()
    );
    for row in answer["rows"].as_array().into_iter().flatten() {
        let cells: String = row
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| match v {
                serde_json::Value::String(s) => format!("{s:>18}"),
                other => format!("{:>18}", other.to_string()),
            })
            .collect();
        println!("    {cells}");
    }
    let counted: serde_json::Value = sql("SELECT count(*) FROM rollups")
        .await?
        .error_for_status()?
        .json()
        .await?;
    let exported_rollups = counted["rows"][0][0].as_i64().unwrap_or(-1);
    let postgres_rollups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rollup r WHERE NOT r.deleted AND NOT EXISTS \
         (SELECT 1 FROM user_privacy p WHERE p.user_id = r.user_id \
          AND r.metric = ANY(p.blocked_metrics))",
    )
    .fetch_one(pool)
    .await?;
    Ok(ExportCheck {
        postgres_rollups,
        exported_rollups,
    })
}

/// Polls each user's freshness through the query API and records, for every acknowledged
/// upload, the time until the read model reports its sequence applied.
async fn watch_freshness(
    http: reqwest::Client,
    url: String,
    tokens: Vec<String>,
    pending: Arc<Mutex<Vec<(usize, i64, Instant)>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
) {
    let today = Utc::now().date_naive();
    loop {
        let users: BTreeSet<usize> = pending.lock().await.iter().map(|p| p.0).collect();
        for user in users {
            let resp = http
                .get(format!(
                    "{url}?metric=HEART_RATE&period=day&from={today}&to={today}"
                ))
                .bearer_auth(&tokens[user])
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            let Ok(body) = resp.json::<serde_json::Value>().await else {
                continue;
            };
            let applied = body["freshness"]["appliedSeq"].as_i64().unwrap_or(0);
            let now = Instant::now();
            let mut p = pending.lock().await;
            let mut l = latencies.lock().await;
            p.retain(|(u, seq, at)| {
                if *u == user && *seq <= applied {
                    l.push(now - *at);
                    false
                } else {
                    true
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one request as a mobile app's upload queue does: a request that failed in a way a
/// retry can fix (no answer, 409 in progress, 429, 5xx) is sent again, unchanged (the same
/// requestId), after a backoff that doubles from 100 ms up to 5 s (or the Retry-After the
/// gateway asked for), for up to 60 s. A request the gateway refused (another 4xx) is not
/// retried. The answer, or None when it never came; `retries` counts the extra attempts.
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
    retries: &AtomicU64,
) -> Option<serde_json::Value> {
    const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
    let began = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = match http.post(url).bearer_auth(token).json(body).send().await {
            Ok(resp) if resp.status().is_success() => return resp.json().await.ok(),
            Ok(resp) => {
                let status = resp.status();
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::CONFLICT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    return None;
                }
                resp.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(backoff, Duration::from_secs)
            }
            Err(_) => backoff,
        };
        if began.elapsed() + wait > GIVE_UP_AFTER {
            return None;
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Compares the gateway's `sample` table with each client's view; returns the differences.
/// (source, record, start, metric, value, category) of a live sample in Postgres.
type StoredSampleRow = (
    String,
    String,
    DateTime<Utc>,
    String,
    Option<f64>,
    Option<String>,
);

/// (user, metric, period, local start, value, min, max, count, sources) of a rollup row.
type StoredRollupRow = (
    uuid::Uuid,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    Vec<String>,
);

async fn check_stored_samples(
    pool: &PgPool,
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<usize> {
    let mut mismatches = 0;
    for user in users {
        let u = user.lock().await;
        let rows: Vec<StoredSampleRow> = sqlx::query_as(
            "SELECT source_id, source_record_id, start_at, metric, value, category
             FROM sample WHERE user_id = $1 AND NOT deleted",
        )
        .bind(u.user_id)
        .fetch_all(pool)
        .await?;
        let stored: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = rows
            .into_iter()
            .map(
                |(source_id, source_record_id, start, metric, value, category)| {
                    (
                        NaturalKey {
                            source_id,
                            source_record_id,
                            start_at: start.timestamp_micros(),
                        },
                        (metric, value, category),
                    )
                },
            )
            .collect();
        let expected: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = u
            .expected()
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    (c.metric.to_owned(), c.value, c.category.map(str::to_owned)),
                )
            })
            .collect();
        mismatches += expected
            .iter()
            .filter(|(k, v)| stored.get(*k) != Some(*v))
            .count();
        mismatches += stored.keys().filter(|k| !expected.contains_key(*k)).count();
    }
    Ok(mismatches)
}

/// How the rollup table compares with the brute-force oracle.
struct OracleCheck {
    compared: usize,
    differing: usize,
}

/// Recomputes every rollup bucket by brute force from what the clients believe they stored
/// and compares it with the `rollup` table the sink wrote. Only the metrics the oracle
/// covers are compared (heart rate and steps here; sleep stages have no rollup value).
async fn check_rollups(
    pool: &PgPool,
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<OracleCheck> {
    let (changes, user_ids) = client_changes(users).await?;
    let expected = oracle::rollups(&changes);
    let rows: Vec<StoredRollupRow> = sqlx::query_as(
        "SELECT user_id, metric, period,
                CASE period WHEN 'DAY' THEN to_char(bucket_start, 'YYYY-MM-DD')
                            ELSE to_char(bucket_start, 'YYYY-MM-DD\"T\"HH24:00:00') END,
                value, min, max, count, sources
         FROM rollup WHERE user_id = ANY($1) AND NOT deleted AND metric IN ('HEART_RATE', 'STEPS')",
    )
    .bind(&user_ids)
    .fetch_all(pool)
    .await?;
    let actual: BTreeMap<String, oracle::Row> = rows
        .into_iter()
        .map(
            |(user, metric, period, bucket, value, min, max, count, mut sources)| {
                sources.sort();
                (
                    format!("{user}|{metric}|{period}|{bucket}"),
                    oracle::Row {
                        value,
                        min,
                        max,
                        count,
                        sources,
                    },
                )
            },
        )
        .collect();
    let expected: BTreeMap<String, oracle::Row> = expected
        .into_iter()
        .filter(|(k, _)| k.contains("|HEART_RATE|") || k.contains("|STEPS|"))
        .collect();
    let problems = oracle::diff(&actual, &expected);
    for p in problems.iter().take(5) {
        println!("    oracle: {p}");
    }
    Ok(OracleCheck {
        compared: expected.len(),
        differing: problems.len(),
    })
}

/// A stored sleep night: (`user|night`, bed_at, wake_at, in bed, asleep, awake, rem,
/// deep, core, unspecified, latency, efficiency, awakenings, naps, nap minutes, sources).
type StoredNightRow = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    Option<f64>,
    Option<f64>,
    i32,
    i32,
    f64,
    Vec<String>,
);

/// Recomputes every sleep night by brute force (the sleep oracle: minute-independent
/// sweep of the resolved timeline, sharing no code with the processor) from what the
/// clients believe they stored, compares it with the `sleep_night` table the sink wrote,
/// and prints a few of the nights.
async fn check_sleep(
    pool: &PgPool,
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<OracleCheck> {
    use pulseline_stream_processors::Input;
    use pulseline_stream_processors::testing::sleep_oracle::NightRow;
    use pulseline_stream_processors::testing::{Oracle, SleepOracle};

    let (changes, user_ids) = client_changes(users).await?;
    let inputs: Vec<Input> = changes.into_iter().map(Input::Sample).collect();
    let expected = SleepOracle.expected(&inputs);
    let rows: Vec<StoredNightRow> = sqlx::query_as(
        "SELECT user_id::text || '|' || to_char(night, 'YYYY-MM-DD'), bed_at, wake_at, in_bed_minutes,
                asleep_minutes, awake_minutes, rem_minutes, deep_minutes, core_minutes,
                unspecified_minutes, latency_minutes, efficiency, awakenings, nap_count,
                nap_minutes, sources
         FROM sleep_night WHERE user_id = ANY($1) AND NOT deleted ORDER BY user_id, night",
    )
    .bind(&user_ids)
    .fetch_all(pool)
    .await?;
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    let actual: BTreeMap<String, NightRow> = rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                NightRow {
                    bed_at: micros(r.1),
                    wake_at: micros(r.2),
                    in_bed: r.3,
                    asleep: r.4,
                    awake: r.5,
                    rem: r.6,
                    deep: r.7,
                    core: r.8,
                    unspecified: r.9,
                    latency: r.10,
                    efficiency: r.11,
                    awakenings: r.12,
                    nap_count: r.13,
                    nap_minutes: r.14,
                    sources: r.15,
                },
            )
        })
        .collect();
    println!(
        "  sleep nights computed ({} in all; the first few):",
        actual.len()
    );
    for (key, n) in actual.iter().take(6) {
        let night = key.split('|').nth(1).unwrap_or_default();
        println!(
            "    {night}: in bed {:.1} min, asleep {:.1} (deep {:?}, rem {:?}, core {:?}, unspecified {:.1}), latency {:?}, efficiency {:?}, {} awakenings, {} naps ({:.1} min), sources {:?}",
            n.in_bed,
            n.asleep,
            n.deep,
            n.rem,
            n.core,
            n.unspecified,
            n.latency,
            n.efficiency,
            n.awakenings,
            n.nap_count,
            n.nap_minutes,
            n.sources
        );
    }
    let problems = SleepOracle.diff(&actual, &expected);
    for p in problems.iter().take(5) {
        println!("    sleep oracle: {p}");
    }
    Ok(OracleCheck {
        compared: expected.len(),
        differing: problems.len(),
    })
}

/// What the clients believe they stored, as sample changes (one change id each), and the
/// users' ids.
async fn client_changes(
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<(Vec<SampleChange>, Vec<uuid::Uuid>)> {
    let mut changes = Vec::new();
    let mut user_ids = Vec::new();
    for user in users {
        let u = user.lock().await;
        user_ids.push(u.user_id);
        for (i, (key, c)) in u.expected().iter().enumerate() {
            changes.push(SampleChange {
                user_id: u.user_id.to_string(),
                change_seq: 1,
                change_index: i32::try_from(i)?,
                operation: Operation::Upsert,
                source_id: key.source_id.clone(),
                device_type: c.device_type.to_owned(),
                source_record_id: key.source_record_id.clone(),
                start_at: c.start_at,
                metric: c.metric.to_owned(),
                end_at: Some(c.end_at),
                tz_offset_minutes: c.tz_offset_minutes,
                value: c.value,
                unit: None,
                category: c.category.map(str::to_owned),
                metadata_json: None,
                accepted_at: 0,
            });
        }
    }
    Ok((changes, user_ids))
}

/// A stored session impact: (`user|event|metric`, type, product, start, end, baseline,
/// after, delta, counts, reliable).
type StoredSessionRow = (
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    i64,
    bool,
);

/// A stored product impact: (`user|type|product|metric|period`, n, avg, std dev, tier,
/// as of).
type StoredProductRow = (String, i64, Option<f64>, Option<f64>, String, DateTime<Utc>);

/// Recomputes every session and product impact by brute force (the impact oracle, sharing
/// no code with the processors) from what the clients believe they stored and the events
/// they logged, compares them with the tables the sink wrote, and prints a few.
async fn check_impacts(
    pool: &PgPool,
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<OracleCheck> {
    use pulseline_schemas::records::UserEventChange;
    use pulseline_stream_processors::Input;
    use pulseline_stream_processors::testing::impact_oracle::{ProductRow, SessionRow};
    use pulseline_stream_processors::testing::{
        Oracle, ProductImpactsOracle, SessionImpactsOracle,
    };

    let (changes, user_ids) = client_changes(users).await?;
    let mut inputs: Vec<Input> = changes.into_iter().map(Input::Sample).collect();
    for user in users {
        let u = user.lock().await;
        for (i, (id, e)) in u.event_log().iter().enumerate() {
            inputs.push(Input::Event(UserEventChange {
                user_id: u.user_id.to_string(),
                change_seq: i64::try_from(i)? + 1,
                change_index: 0,
                operation: if e.is_some() {
                    Operation::Upsert
                } else {
                    Operation::Delete
                },
                event_id: id.clone(),
                event_type: e.as_ref().map_or("", |e| e.event_type).to_owned(),
                product_id: e.as_ref().and_then(|e| e.product_id).map(str::to_owned),
                start_at: e.as_ref().map_or(0, |e| e.start_at),
                end_at: e.as_ref().and_then(|e| e.end_at),
                tz_offset_minutes: e.as_ref().map_or(0, |e| e.tz_offset_minutes),
                attributes_json: None,
                accepted_at: 0,
            }));
        }
    }
    let sessions: Vec<StoredSessionRow> = sqlx::query_as(
        "SELECT user_id::text || '|' || event_id || '|' || metric, event_type, product_id,
                start_at, end_at, baseline_avg, after_avg, delta_percent, baseline_count,
                after_count, reliable
         FROM session_impact WHERE user_id = ANY($1) AND NOT deleted",
    )
    .bind(&user_ids)
    .fetch_all(pool)
    .await?;
    let sessions: BTreeMap<String, SessionRow> = sessions
        .into_iter()
        .map(|r| {
            (
                r.0,
                SessionRow {
                    event_type: r.1,
                    product_id: r.2,
                    start_at: r.3.timestamp_micros(),
                    end_at: r.4.map(|t| t.timestamp_micros()),
                    baseline_avg: r.5,
                    after_avg: r.6,
                    delta_percent: r.7,
                    counts: (r.8, r.9),
                    reliable: r.10,
                },
            )
        })
        .collect();
    let products: Vec<StoredProductRow> = sqlx::query_as(
        "SELECT user_id::text || '|' || event_type || '|' ||
                CASE WHEN product_id IS NULL THEN '-' ELSE '=' || product_id END || '|' ||
                metric || '|' || period_days, n, avg_delta_percent, std_dev, tier, as_of
         FROM product_impact WHERE user_id = ANY($1) AND NOT deleted",
    )
    .bind(&user_ids)
    .fetch_all(pool)
    .await?;
    let products: BTreeMap<String, ProductRow> = products
        .into_iter()
        .map(|r| {
            (
                r.0,
                ProductRow {
                    n: r.1,
                    avg_delta_percent: r.2,
                    std_dev: r.3,
                    tier: r.4,
                    as_of: r.5.timestamp_micros(),
                },
            )
        })
        .collect();
    println!(
        "  impacts computed ({} sessions, {} product rows; the first user's 30-day products):",
        sessions.len(),
        products.len()
    );
    let first = user_ids.first().map(|u| u.to_string()).unwrap_or_default();
    for (key, p) in products
        .iter()
        .filter(|(k, _)| k.starts_with(&first) && k.ends_with("|30"))
        .take(6)
    {
        let mut parts = key.split('|').skip(1);
        let (kind, product, metric) = (parts.next(), parts.next(), parts.next());
        println!(
            "    {} {} on {}: n {}, average {:?} %, std dev {:?}, tier {}",
            kind.unwrap_or_default(),
            product.unwrap_or_default().trim_start_matches('='),
            metric.unwrap_or_default(),
            p.n,
            p.avg_delta_percent,
            p.std_dev,
            p.tier
        );
    }
    let mut problems =
        SessionImpactsOracle.diff(&sessions, &SessionImpactsOracle.expected(&inputs));
    let expected_products = ProductImpactsOracle.expected(&inputs);
    problems.extend(ProductImpactsOracle.diff(&products, &expected_products));
    for p in problems.iter().take(5) {
        println!("    impact oracle: {p}");
    }
    Ok(OracleCheck {
        compared: sessions.len() + expected_products.len(),
        differing: problems.len(),
    })
}
