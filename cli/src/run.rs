//! `pulseline run`: the whole pipeline on the embedded default, driven by simulated users.
//!
//! Starts every service in this process (against the local stack that `scripts/run`
//! brought up): the gateway, the relay, the stream processors, the Postgres sink and the
//! query API. Simulated users upload for a while (a watch and a phone each: heart rate,
//! steps, sleep; offline backlog, retries, unchanged re-uploads, corrections, deletions);
//! progress shows every second. Then it waits until every user's read models are fresh,
//! checks what Postgres holds against what every client believes it stored, checks the
//! rollups against the brute-force oracle, and prints a summary with the ingest-to-read-model
//! latency (gateway acknowledgement to the query API reporting the change applied) and the
//! CPU each part used.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{TimeDelta, Utc};
use clap::{Args, Parser};
use pulseline_cli::cpu::CpuSeconds;
use pulseline_cli::pipeline::{Pipeline, PipelineConfig};
use pulseline_cli::{check, clients};
use pulseline_ingest_gateway::outbox::Stream;
use pulseline_simulator::{RequestKind, SimulatedUser, TrafficMix};
use pulseline_stream_processors::Input;
use pulseline_stream_processors::cli::Cli as ProcessorCli;
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
    /// Items per second all users together send (paced evenly); 0: as fast as the clients
    /// go. A steady rate measures freshness under a known load.
    #[arg(long, default_value_t = 0)]
    rate: u64,
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

/// Spreads the users' uploads evenly over time at a fixed total rate.
struct Pacer {
    began: Instant,
    /// Items per second; 0 means unpaced.
    rate: u64,
    /// Items handed out so far: an upload is due when they would have been sent at `rate`.
    scheduled: AtomicU64,
}

impl Pacer {
    async fn wait_turn(&self, items: usize) {
        if self.rate == 0 {
            return;
        }
        let before = self.scheduled.fetch_add(items as u64, Ordering::Relaxed);
        let due = self.began + Duration::from_secs_f64(before as f64 / self.rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
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
    let servers = local_servers(&args);
    let cpu_before = CpuSeconds::now(&servers);
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.duration);
    let pacer = Arc::new(Pacer {
        began,
        rate: args.rate,
        scheduled: AtomicU64::new(0),
    });
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
        let pacer = pacer.clone();
        clients.push(tokio::spawn(async move {
            let mut u = user.lock().await;
            while Instant::now() < deadline {
                let upload = u.next_upload(batch, Utc::now());
                if upload.items == 0 {
                    // Caught up with the present: a phone waits for new data.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                pacer.wait_turn(upload.items).await;
                let sent = Instant::now();
                let answer = clients::post(&http, &url, &token, &upload.body, &tally.retried).await;
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
                    if clients::post(&http, &events_url, &token, &events.body, &tally.retried)
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
    let cpu = CpuSeconds::now(&servers).since(&cpu_before);

    let mismatches = clients::stored_sample_mismatches(&pool, &users).await?;
    let (inputs, user_ids) = clients::client_inputs(&users).await?;
    let served = check::Served::load(&pool, &user_ids).await?;
    print_examples(&served, user_ids.first());
    let [oracle, sleep_check, impact_check] = oracle_checks(&served, &inputs);
    let export_check = export_for_analysts(&args, &pool, &query_url, &pipeline.analyst_token())
        .await
        .context("exporting for analysts")?;
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    let pct = |p: f64| percentile_ms(&lat, p);
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
    println!(
        "  CPU used from the first upload until every user was fresh: {}",
        cpu.summary()
    );
    let mut fl = freshness_latencies.lock().await.clone();
    fl.sort();
    let fpct = |p: f64| percentile_ms(&fl, p);
    println!(
        "  ingest to read model (acknowledged to applied, via the query API's freshness): p50 {:.0} ms, p99 {:.0} ms over {} uploads; all fresh {fresh_after:.1} s after the load",
        fpct(0.5),
        fpct(0.99),
        fl.len(),
    );
    // One line to compare across commits (printed last): the acknowledged-to-readable
    // latency at this load.
    let freshness_line = serde_json::json!({
            "bench": "freshness",
            "rate": args.rate,
            "items_per_s": (t(&tally.items) as f64 / load_secs).round(),
            "seconds": args.duration,
            "users": args.users,
            "ack_to_read_p50_ms": fpct(0.5).round(),
            "ack_to_read_p99_ms": fpct(0.99).round(),
            "uploads": fl.len(),
            "cpu_s": cpu.0.iter().map(|(part, s)| (part.clone(), ((s * 100.0).round() / 100.0).into())).collect::<serde_json::Map<_, _>>(),
    });
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
    println!("{freshness_line}");
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

/// How one read model compares with its brute-force oracle.
struct OracleCheck {
    compared: usize,
    differing: usize,
}

/// Rollups, sleep nights and impacts against their oracles, printing a few differences.
fn oracle_checks(served: &check::Served, inputs: &[Input]) -> [OracleCheck; 3] {
    let checks = check::compare(served, inputs);
    for c in &checks {
        for p in c.problems.iter().take(5) {
            println!("    {} oracle: {p}", c.read_model);
        }
    }
    let mut summaries = checks.into_iter().map(|c| OracleCheck {
        compared: c.compared,
        differing: c.problems.len(),
    });
    std::array::from_fn(|_| {
        summaries.next().unwrap_or(OracleCheck {
            compared: 0,
            differing: 0,
        })
    })
}

/// Prints a few of the sleep nights and the first user's 30-day product impacts.
fn print_examples(served: &check::Served, first_user: Option<&uuid::Uuid>) {
    println!(
        "  sleep nights computed ({} in all; the first few):",
        served.nights.len()
    );
    for (key, n) in served.nights.iter().take(6) {
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
    println!(
        "  impacts computed ({} sessions, {} product rows; the first user's 30-day products):",
        served.sessions.len(),
        served.products.len()
    );
    let first = first_user.map(|u| u.to_string()).unwrap_or_default();
    for (key, p) in served
        .products
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
}

/// The `p` quantile (0..=1) of sorted durations, in milliseconds; 0 when there are none.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The servers whose CPU the run reports, by the port they listen on (when on this
/// machine).
fn local_servers(args: &RunArgs) -> Vec<(&'static str, u16)> {
    let mut servers = Vec::new();
    if let Ok(options) = args
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()
    {
        servers.push(("postgres", options.get_port()));
    }
    if let Some(port) = args
        .kafka_bootstrap
        .split(',')
        .next()
        .and_then(|b| b.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
    {
        servers.push(("broker", port));
    }
    servers
}
