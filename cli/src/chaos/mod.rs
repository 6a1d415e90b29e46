//! `pulseline chaos`: simulated users upload through the gateway while a seeded schedule
//! SIGKILLs and restarts the gateway, relay, processor and sink (each its own process),
//! restarts Postgres in immediate mode and restarts the broker. Then, with everything up
//! again, it checks what the pipeline promises: every acknowledged change is in Postgres,
//! every read model equals the brute-force oracle over what the clients were acknowledged
//! (nothing lost, nothing counted twice), and every user is fresh. The first user has two
//! apps uploading at the same time, and a request cut after its commit (a SIGKILLed
//! gateway, a Postgres crash) is sent again with its requestId and gets the stored answer.
//!
//! It brings its own Postgres cluster and noida-db broker (both are restarted, so never the
//! shared ones) and uses the local stack's schema registry. The same seed gives the same
//! schedule of faults; what the services were doing when each struck differs run to run.

mod processes;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{TimeDelta, Utc};
use pulseline_schemas::topics;
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_service::config::DEV_JWT_SECRET;
use pulseline_simulator::{RequestKind, SimulatedUser, TrafficMix};
use pulseline_testkit::private_pg::PrivatePostgres;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::check::{self, Served};
use crate::clients;
use crate::ops::{reconcile, sink_offsets};
pub use processes::noida_binary;
use processes::{Service, free_port, wait_listening};

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seeds the schedule of faults and the simulated users.
    pub seed: u64,
    /// How long the users upload (faults strike during this time).
    pub duration: Duration,
    pub users: usize,
    /// Samples per upload.
    pub batch: usize,
    /// Days of offline backlog each user starts with.
    pub backlog_days: i64,
    /// Where the service binaries are (`pulseline-gateway`, `-relay`, `-processor`, `-sink`).
    pub bin_dir: PathBuf,
    pub noida_bin: PathBuf,
    pub schema_registry_url: String,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
    /// The kinds of fault to inject (`FAULTS`).
    pub faults: Vec<Fault>,
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a service, start it again after the pause.
    Kill(&'static str),
    /// Postgres stops in immediate mode (as a crash: connections drop, no checkpoint) and
    /// starts again after the pause.
    RestartPostgres,
    /// The broker stops gracefully and starts again after the pause.
    RestartBroker,
    /// SIGKILL the broker (noida-db then loses recent records, topics even), start it
    /// again after the pause.
    CrashBroker,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(service) => write!(f, "SIGKILL {service}"),
            Fault::RestartPostgres => f.write_str("restart Postgres (immediate mode)"),
            Fault::RestartBroker => f.write_str("restart the broker (graceful)"),
            Fault::CrashBroker => f.write_str("SIGKILL the broker"),
        }
    }
}

/// A fault and when it strikes (from the start of the load), and how long the part stays
/// down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at: Duration,
    pub fault: Fault,
    pub down_for: Duration,
}

/// Every kind of fault, by the name `--faults` takes.
pub const FAULTS: [(&str, Fault); 7] = [
    ("gateway", Fault::Kill(GATEWAY)),
    ("relay", Fault::Kill(RELAY)),
    ("processor", Fault::Kill(PROCESSOR)),
    ("sink", Fault::Kill(SINK)),
    ("postgres", Fault::RestartPostgres),
    ("broker", Fault::RestartBroker),
    ("broker-crash", Fault::CrashBroker),
];

/// The seed's faults of the given kinds over `duration`: every kind once, in a seeded
/// order, at seeded times spread over the first 80 % (so the last one heals before the
/// load ends), then more of them in seeded order while time allows (one every 6 s on
/// average).
pub fn schedule(seed: u64, duration: Duration, kinds: &[Fault]) -> Vec<Scheduled> {
    let mut rng = StdRng::seed_from_u64(seed);
    if kinds.is_empty() {
        return Vec::new();
    }
    let window = duration.mul_f64(0.8);
    let count = (window.as_secs() / 6).max(kinds.len() as u64) as usize;
    let mut faults: Vec<Fault> = kinds.to_vec();
    faults.shuffle(&mut rng);
    while faults.len() < count {
        faults.push(kinds[rng.random_range(0..kinds.len())]);
    }
    let slot = window / u32::try_from(count).unwrap_or(u32::MAX);
    faults
        .into_iter()
        .enumerate()
        .map(|(i, fault)| Scheduled {
            at: slot * u32::try_from(i).unwrap_or(0) + slot.mul_f64(rng.random_range(0.1..0.9)),
            fault,
            down_for: Duration::from_millis(rng.random_range(100..1500)),
        })
        .collect()
}

const GATEWAY: &str = "gateway";
const RELAY: &str = "relay";
const PROCESSOR: &str = "processor";
const SINK: &str = "sink";

/// What a chaos run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    /// (seconds into the load, fault, seconds down) of every fault injected.
    pub faults: Vec<(f64, String, f64)>,
    pub requests: u64,
    /// Requests sent again after a failure (same requestId).
    pub resent: u64,
    /// Requests the clients gave up on.
    pub failed: u64,
    pub acknowledged_items: u64,
    /// Live samples where Postgres differs from the clients' view.
    pub stored_mismatches: usize,
    /// (read model, rows compared, differences) against the oracles.
    pub oracle: Vec<(&'static str, usize, usize)>,
    /// Users whose read models were not all fresh at the end.
    pub stale_users: usize,
    /// A few of the differences, for the log.
    pub examples: Vec<String>,
    /// Seconds from the end of the load until every user was fresh.
    pub settled_secs: f64,
    /// Users found stale or different from the oracle over Postgres after the broker
    /// faults, before the recovery (0 when the broker was left alone).
    pub repaired_users: usize,
    /// Parts that exited on their own and were restarted (a processor stops on a fatal
    /// producer error, e.g. when the broker forgot its producer state; as in production, it
    /// is started again).
    pub restarts: Vec<String>,
}

impl ChaosReport {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self.stored_mismatches == 0
            && self.stale_users == 0
            && self.oracle.iter().all(|(_, _, d)| *d == 0)
    }
}

/// The parts of the run and what the faults do to them.
struct Parts {
    postgres: Arc<PrivatePostgres>,
    broker: Service,
    broker_addr: std::net::SocketAddr,
    bootstrap: String,
    prefix: String,
    services: Vec<Service>,
}

impl Parts {
    async fn inject(&mut self, s: &Scheduled) -> anyhow::Result<()> {
        match s.fault {
            Fault::Kill(name) => {
                let service = self
                    .services
                    .iter_mut()
                    .find(|x| x.name == name)
                    .context("no such service")?;
                service.kill()?;
                tokio::time::sleep(s.down_for).await;
                service.start()?;
            }
            Fault::RestartPostgres => {
                let pg = self.postgres.clone();
                let down = s.down_for;
                tokio::task::spawn_blocking(move || pg.restart_immediate(down))
                    .await?
                    .context("restarting Postgres")?;
            }
            Fault::RestartBroker | Fault::CrashBroker => {
                if s.fault == Fault::CrashBroker {
                    self.broker.kill()?;
                } else {
                    self.broker.stop(Duration::from_secs(20)).await?;
                }
                tokio::time::sleep(s.down_for).await;
                self.broker.start()?;
                wait_listening(self.broker_addr, "the broker", Duration::from_secs(30)).await?;
                // Topics it lost are created again, as the services' start-up would.
                topics::ensure_all(&self.bootstrap, &self.prefix).await?;
            }
        }
        Ok(())
    }

    /// A part that died on its own is restarted (as an orchestrator would) and reported.
    fn revive(&mut self) -> anyhow::Result<Vec<String>> {
        let mut revived = Vec::new();
        for s in self
            .services
            .iter_mut()
            .chain(std::iter::once(&mut self.broker))
        {
            if let Some(status) = s.exited() {
                revived.push(format!(
                    "{} exited on its own ({status}); see {}",
                    s.name,
                    s.log().display()
                ));
                s.start()?;
            }
        }
        Ok(revived)
    }
}

/// Runs the chaos: sets up, loads, injects the schedule's faults, heals, checks, prints.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let faults = schedule(config.seed, config.duration, &config.faults);
    println!(
        "pulseline chaos: seed {}, {} users for {} s, {} faults scheduled; logs in {}",
        config.seed,
        config.users,
        config.duration.as_secs(),
        faults.len(),
        config.log_dir.display()
    );
    std::fs::create_dir_all(&config.log_dir)?;
    let postgres = Arc::new(
        tokio::task::spawn_blocking(PrivatePostgres::start)
            .await?
            .context("starting a private Postgres cluster")?,
    );
    let database_url = postgres.url();
    let broker_port = free_port()?;
    let bootstrap = format!("127.0.0.1:{broker_port}");
    let broker_data = config.log_dir.join("noida-data");
    std::fs::create_dir_all(&broker_data)?;
    let mut broker = Service::new(
        "broker",
        config.noida_bin.clone(),
        &[
            "start",
            "--host",
            "127.0.0.1",
            "--only",
            "kafka",
            "--kafka-port",
            &broker_port.to_string(),
            "--data-dir",
            &broker_data.to_string_lossy(),
        ],
        Vec::new(),
        &config.log_dir,
    );
    broker.start()?;
    wait_listening(
        ([127, 0, 0, 1], broker_port).into(),
        "the broker",
        Duration::from_secs(30),
    )
    .await?;
    let prefix = format!(
        "chaos{}-{}.",
        config.seed,
        &Uuid::new_v4().simple().to_string()[..8]
    );
    topics::ensure_all(&bootstrap, &prefix)
        .await
        .context("creating the topics")?;

    let gateway_port = free_port()?;
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    let common = vec![
        ("PULSELINE_DATABASE_URL".to_owned(), database_url.clone()),
        ("PULSELINE_KAFKA_BOOTSTRAP".to_owned(), bootstrap.clone()),
        (
            "PULSELINE_SCHEMA_REGISTRY_URL".to_owned(),
            config.schema_registry_url.clone(),
        ),
        ("PULSELINE_TOPIC_PREFIX".to_owned(), prefix.clone()),
        (
            "PULSELINE_GATEWAY_ADDR".to_owned(),
            format!("127.0.0.1:{gateway_port}"),
        ),
        (
            "PULSELINE_RELAY_METRICS_ADDR".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "PULSELINE_SINK_METRICS_ADDR".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "PULSELINE_PROCESSOR_METRICS_ADDR".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "PULSELINE_SINK_GROUP_INSTANCE_ID".to_owned(),
            "chaos-sink".to_owned(),
        ),
        (
            "PULSELINE_PROCESSOR_GROUP_INSTANCE_ID".to_owned(),
            "chaos-processor".to_owned(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let bin = |name: &str| config.bin_dir.join(name);
    let mut gateway = Service::new(
        GATEWAY,
        bin("pulseline-gateway"),
        &[],
        common.clone(),
        &config.log_dir,
    );
    // The gateway migrates the ingest tables: the others start once it listens.
    gateway.start()?;
    wait_listening(
        ([127, 0, 0, 1], gateway_port).into(),
        "the gateway",
        Duration::from_secs(60),
    )
    .await?;
    let mut services = vec![gateway];
    for (name, program) in [
        (RELAY, "pulseline-relay"),
        (SINK, "pulseline-sink"),
        (PROCESSOR, "pulseline-processor"),
    ] {
        let mut s = Service::new(name, bin(program), &[], common.clone(), &config.log_dir);
        s.start()?;
        services.push(s);
    }
    let parts = Arc::new(Mutex::new(Parts {
        postgres,
        broker,
        broker_addr: ([127, 0, 0, 1], broker_port).into(),
        bootstrap: bootstrap.clone(),
        prefix: prefix.clone(),
        services,
    }));
    let restarts: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let supervisor = tokio::spawn(supervise(parts.clone(), restarts.clone()));
    let pool = PgPool::connect(&database_url).await?;
    wait_for_tables(&pool).await?;

    let now = Utc::now();
    let start = now - TimeDelta::days(config.backlog_days);
    let mut users: Vec<Arc<Mutex<SimulatedUser>>> = (0..config.users)
        .map(|i| {
            Arc::new(Mutex::new(SimulatedUser::new(
                config.seed.wrapping_mul(1000) + i as u64,
                start,
                TrafficMix::default(),
            )))
        })
        .collect();
    // The first user's second app (its own watch and phone) uploads at the same time.
    let first_user = match users.first() {
        Some(u) => u.lock().await.user_id,
        None => anyhow::bail!("a chaos run needs at least one user"),
    };
    users.push(Arc::new(Mutex::new(SimulatedUser::another_app_of(
        first_user,
        config.seed.wrapping_mul(1000) + 999,
        start,
        TrafficMix::default(),
    ))));
    let counters = Arc::new(Counters::default());
    let began = Instant::now();
    let deadline = began + config.duration;
    let mut clients_running = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients_running.push(tokio::spawn(client(
            user.clone(),
            gateway_url.clone(),
            config.batch,
            deadline,
            counters.clone(),
            // The second app sends samples only (its events would reuse the first's ids).
            i < config.users,
        )));
    }

    let mut report = ChaosReport {
        seed: config.seed,
        ..ChaosReport::default()
    };
    for s in &faults {
        tokio::time::sleep_until((began + s.at).into()).await;
        let at = began.elapsed().as_secs_f64();
        println!(
            "  {at:>6.1}s  {} (down {:.1} s)",
            s.fault,
            s.down_for.as_secs_f64()
        );
        parts.lock().await.inject(s).await?;
        report
            .faults
            .push((at, s.fault.to_string(), s.down_for.as_secs_f64()));
    }
    for c in clients_running {
        c.await?;
    }
    let load_ended = Instant::now();
    println!(
        "load over after {:.1} s; waiting until every user is fresh ...",
        began.elapsed().as_secs_f64()
    );

    let user_ids: Vec<Uuid> = {
        let mut ids = std::collections::BTreeSet::new();
        for u in &users {
            ids.insert(u.lock().await.user_id);
        }
        ids.into_iter().collect()
    };
    if faults
        .iter()
        .any(|f| matches!(f.fault, Fault::RestartBroker | Fault::CrashBroker))
    {
        // What noida-db loses on a restart (records it had acknowledged, producer state) is
        // recovered as an operator would: the commands, never hand-written SQL.
        check::wait_fresh(&pool, &user_ids, Duration::from_secs(30)).await?;
        report.repaired_users = recover_from_broker_loss(&parts, &pool, &user_ids).await?;
    }
    report.stale_users = check::wait_fresh(&pool, &user_ids, Duration::from_secs(180)).await?;
    if report.stale_users > 0 {
        report.examples.extend(
            check::why_stale(
                &pool,
                &user_ids,
                pulseline_ingest_gateway::outbox::DEFAULT_SHARDS,
            )
            .await?,
        );
    }
    report.settled_secs = load_ended.elapsed().as_secs_f64();
    report.requests = counters.requests.load(Ordering::Relaxed);
    report.resent = counters.resent.load(Ordering::Relaxed);
    report.failed = counters.failed.load(Ordering::Relaxed);
    report.acknowledged_items = counters.acknowledged.load(Ordering::Relaxed);
    report.stored_mismatches = clients::stored_sample_mismatches(&pool, &users).await?;
    let (inputs, _) = clients::client_inputs(&users).await?;
    let served = Served::load(&pool, &user_ids).await?;
    for c in check::compare(&served, &inputs) {
        report.examples.extend(c.problems.iter().take(3).cloned());
        report
            .oracle
            .push((c.read_model, c.compared, c.problems.len()));
    }
    supervisor.abort();
    report.restarts = restarts.lock().map(|r| r.clone()).unwrap_or_default();
    print_report(&report);
    let mut parts = parts.lock().await;
    for s in parts.services.iter_mut() {
        s.stop(Duration::from_secs(10)).await?;
    }
    parts.broker.stop(Duration::from_secs(10)).await?;
    Ok(report)
}

/// The recovery after a broker that may have lost records (README, "Operations"): the
/// sink, stopped, forgets its stored offsets (the logs may have restarted lower) and reads
/// from the start; then every user's data is accepted again under new change ids
/// (`pulseline-relay republish --all-users --renew-change-ids`), since a processor's lost
/// state can hide behind rows that still look right. Returns how many users looked stale or
/// different from the oracle over Postgres (`pulseline reconcile`) before the repair.
async fn recover_from_broker_loss(
    parts: &Mutex<Parts>,
    pool: &PgPool,
    users: &[Uuid],
) -> anyhow::Result<usize> {
    let offsets = {
        let mut parts = parts.lock().await;
        let sink = parts
            .services
            .iter_mut()
            .find(|s| s.name == SINK)
            .context("no sink")?;
        sink.stop(Duration::from_secs(20)).await?;
        let offsets = sink_offsets::reset(pool, &sink_offsets::OffsetSelection::default()).await?;
        sink.start()?;
        offsets
    };
    let mut affected = 0;
    for user in users {
        let stale = check::stale_users(pool, &[*user]).await? > 0;
        if stale || reconcile::compare(pool, Some(*user)).await?.differences() > 0 {
            affected += 1;
        }
    }
    let records = reconcile::repair(
        pool,
        pulseline_ingest_gateway::outbox::DEFAULT_SHARDS,
        users,
    )
    .await?;
    println!(
        "  recovery after the broker faults: sink offsets reset ({offsets} deleted); {affected} of {} users were stale or differed from Postgres; every user's data accepted again ({records} records)",
        users.len()
    );
    Ok(affected)
}

/// Restarts every part that exits on its own, twice a second, and notes it.
async fn supervise(parts: Arc<Mutex<Parts>>, restarts: Arc<std::sync::Mutex<Vec<String>>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let found = parts.lock().await.revive();
        let found = found.unwrap_or_else(|e| vec![format!("could not restart a part: {e:#}")]);
        for f in found {
            println!("  {f}");
            if let Ok(mut r) = restarts.lock() {
                r.push(f);
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    resent: AtomicU64,
    failed: AtomicU64,
    acknowledged: AtomicU64,
}

/// One simulated user's app: uploads samples (and events) until the deadline, resending
/// failed requests as an app's upload queue does.
async fn client(
    user: Arc<Mutex<SimulatedUser>>,
    gateway_url: String,
    batch: usize,
    deadline: Instant,
    counters: Arc<Counters>,
    send_events: bool,
) {
    let http = reqwest::Client::new();
    let mut u = user.lock().await;
    let token = issue_hs256_token(DEV_JWT_SECRET, u.user_id, Role::User, 24 * 3600);
    let samples_url = format!("{gateway_url}/v1/samples:batch");
    let events_url = format!("{gateway_url}/v1/events:batch");
    while Instant::now() < deadline {
        let upload = u.next_upload(batch, Utc::now());
        if upload.items == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match clients::post(&http, &samples_url, &token, &upload.body, &counters.resent).await {
            Some(_) if upload.kind == RequestKind::Retry => {}
            Some(_) => {
                counters
                    .acknowledged
                    .fetch_add(upload.items as u64, Ordering::Relaxed);
                u.acknowledged(&upload);
            }
            None => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !send_events {
            continue;
        }
        if let Some(events) = u.next_events(Utc::now()) {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            if clients::post(&http, &events_url, &token, &events.body, &counters.resent)
                .await
                .is_some()
            {
                u.events_acknowledged(&events);
            } else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until the sink and gateway tables exist (the services migrate them at start).
async fn wait_for_tables(pool: &PgPool) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let present: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('sample', 'rollup', 'sink_progress')",
        )
        .fetch_one(pool)
        .await?;
        if present == 3 {
            return Ok(());
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "the services did not create their tables within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_report(r: &ChaosReport) {
    println!("summary (seed {}):", r.seed);
    println!(
        "  {} faults injected; {} requests, {} resent after a failure, {} given up; {} items acknowledged",
        r.faults.len(),
        r.requests,
        r.resent,
        r.failed,
        r.acknowledged_items
    );
    println!(
        "  every user fresh {:.1} s after the load: {}",
        r.settled_secs,
        if r.stale_users == 0 {
            "yes".to_owned()
        } else {
            format!("NO, {} stale", r.stale_users)
        }
    );
    for restart in &r.restarts {
        println!("  restarted: {restart}");
    }
    if r.repaired_users > 0 {
        println!(
            "  recovery: {} users were stale or different after the broker faults, before every user's data was accepted again",
            r.repaired_users
        );
    }
    println!(
        "  check: Postgres holds what the clients were acknowledged: {} samples differ",
        r.stored_mismatches
    );
    for (model, compared, differing) in &r.oracle {
        println!(
            "  check: {model}: {compared} rows compared with the brute-force oracle: {differing} differ"
        );
    }
    for e in &r.examples {
        println!("    {e}");
    }
    println!("  {}", if r.passed() { "PASSED" } else { "FAILED" });
}
