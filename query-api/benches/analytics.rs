//! Analytics bench: DataFusion (this crate's engine) against DuckDB on the same export.
//!
//! 1. Simulates users (`pulseline-simulator`: a watch and a phone each, with retries,
//!    corrections and deletions) and stores each one's final samples (last write per key,
//!    deletions applied) in a fresh Postgres database's `sample` table, as the gateway
//!    would. Rollups and sleep nights are derived from them with SQL (an approximation of
//!    the processors, good enough to give the tables realistic shapes and sizes).
//! 2. Exports with the real exporter (`pulseline_sinks::export`).
//! 3. Runs the analyst queries through DataFusion (`AnalyticsEngine`) and through DuckDB
//!    (`python3 duckdb_runner.py`, `pip install duckdb`), checks that the answers are equal,
//!    prints each query's best-of-N time for both and the ratio, then one JSON line.
//!
//! Run: `source scripts/env.sh && cargo bench -p pulseline-query-api --bench analytics`
//! Settings (environment): BENCH_USERS (125), BENCH_DAYS (30), BENCH_RUNS (3),
//! BENCH_TARGET_PARTITIONS (cores), BENCH_EXPORT_DIR (reuse an export: skips steps 1-2).
//! Needs Postgres (`scripts/stack up`) for steps 1-2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use pulseline_query_api::analytics::{AnalyticsEngine, SqlLimits, json_value};
use pulseline_simulator::{RequestKind, SimulatedUser, TrafficMix};
use pulseline_sinks::export::{ExportConfig, Exporter};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fixed "now" of the simulated data, so the month filters are stable.
fn bench_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn csv_text(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Simulates the users and COPYs their final samples into `sample`; returns the row count.
async fn load_samples(pool: &sqlx::PgPool, users: usize, days: i64) -> anyhow::Result<u64> {
    let now = bench_now();
    let start = now - TimeDelta::days(days);
    let mut total = 0u64;
    let mut conn = pool.acquire().await?;
    for i in 0..users {
        let mut user = SimulatedUser::new(1000 + i as u64, start, TrafficMix::default());
        // Until both devices caught up with `now`: a new-data upload is empty when the
        // device it picked has caught up, so 20 empty ones in a row mean both have.
        let mut idle = 0;
        while idle < 20 {
            let upload = user.next_upload(2000, now);
            match (upload.kind, upload.items) {
                (RequestKind::New, 0) => idle += 1,
                (RequestKind::New, _) => idle = 0,
                _ => {}
            }
            user.acknowledged(&upload);
        }
        let mut csv = String::with_capacity(user.expected().len() * 160);
        for (key, c) in user.expected() {
            let at = |micros: i64| {
                DateTime::from_timestamp_micros(micros)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            };
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},\\x00,false,1,0,{}\n",
                user.user_id,
                csv_text(&key.source_id),
                csv_text(&key.source_record_id),
                at(key.start_at),
                c.metric,
                c.device_type,
                at(c.end_at),
                c.tz_offset_minutes,
                c.value.map(|v| v.to_string()).unwrap_or_default(),
                if c.value.is_some() { "count" } else { "" },
                c.category.unwrap_or_default(),
                at(c.end_at),
            ));
        }
        let mut copy = conn
            .copy_in_raw(
                "COPY sample (user_id, source_id, source_record_id, start_at, metric, device_type, \
                 end_at, tz_offset_minutes, value, unit, category, content_hash, deleted, \
                 change_seq, change_index, accepted_at) FROM STDIN WITH (FORMAT csv)",
            )
            .await?;
        copy.send(csv.into_bytes()).await?;
        total += copy.finish().await?;
    }
    Ok(total)
}

/// Rollups and sleep nights from the samples, by SQL (bench data, not the processors).
async fn derive_read_models(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    for (period, unit) in [("DAY", "day"), ("HOUR", "hour")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollup (user_id, metric, period, bucket_start, value, min, max, count, deleted, version) \
             SELECT user_id, metric, '{period}', date_trunc('{unit}', (start_at AT TIME ZONE 'UTC') + tz_offset_minutes * interval '1 minute'), \
                    CASE WHEN metric = 'STEPS' THEN sum(value) ELSE avg(value) END, min(value), max(value), count(*), false, 1 \
             FROM sample WHERE NOT deleted AND value IS NOT NULL GROUP BY 1, 2, 4"
        )))
        .execute(pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO sleep_night (user_id, night, bed_at, wake_at, in_bed_minutes, asleep_minutes, \
         awake_minutes, awakenings, rem_minutes, deep_minutes, core_minutes, unspecified_minutes, \
         nap_count, nap_minutes, version) \
         SELECT user_id, ((end_at AT TIME ZONE 'UTC') + tz_offset_minutes * interval '1 minute' + interval '12 hours')::date, \
                min(start_at), max(end_at), \
                round(sum(extract(epoch FROM end_at - start_at) / 60)::numeric, 1)::float8, \
                round((sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category <> 'awake'))::numeric, 1)::float8, \
                coalesce(round((sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category = 'awake'))::numeric, 1)::float8, 0), \
                count(*) FILTER (WHERE category = 'awake'), \
                sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category = 'rem'), \
                sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category = 'deep'), \
                sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category = 'core'), \
                0, 0, 0, 1 \
         FROM sample WHERE NOT deleted AND metric = 'SLEEP_STAGE' AND device_type = 'apple_watch' \
         GROUP BY 1, 2 HAVING sum(extract(epoch FROM end_at - start_at) / 60) FILTER (WHERE category <> 'awake') IS NOT NULL",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The analyst queries of issue 11, written so that DataFusion and DuckDB read them alike
/// and with a total order, so answers compare row by row.
fn queries() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "daily_totals_per_metric",
            "SELECT metric, date, sum(value) AS total, count(*) AS n FROM samples \
             GROUP BY metric, date ORDER BY metric, date",
        ),
        (
            "heart_rate_percentiles_per_subject",
            "SELECT subject_id, median(value) AS p50, \
             percentile_cont(0.9) WITHIN GROUP (ORDER BY value) AS p90, count(*) AS n \
             FROM samples WHERE metric = 'HEART_RATE' GROUP BY subject_id ORDER BY subject_id",
        ),
        (
            "sleep_by_weekday",
            "SELECT CAST(date_part('dow', night) AS BIGINT) AS dow, avg(asleep_minutes) AS asleep, \
             avg(deep_minutes) AS deep, count(*) AS nights FROM sleep_nights GROUP BY 1 ORDER BY 1",
        ),
        (
            "top_subjects_by_steps_in_a_month",
            "SELECT subject_id, sum(value) AS steps FROM samples WHERE metric = 'STEPS' \
             AND date >= DATE '2026-11-01' AND date < DATE '2026-12-01' \
             GROUP BY subject_id ORDER BY steps DESC, subject_id LIMIT 10",
        ),
        (
            "rollups_joined_with_samples",
            "SELECT r.metric, count(*) AS days, sum(s.n) AS samples, avg(r.value - s.mean) AS drift \
             FROM rollups r JOIN (SELECT subject_id, metric, date, count(*) AS n, avg(value) AS mean \
             FROM samples WHERE value IS NOT NULL GROUP BY subject_id, metric, date) s \
             ON r.subject_id = s.subject_id AND r.metric = s.metric AND r.date = s.date \
             WHERE r.period = 'DAY' GROUP BY r.metric ORDER BY r.metric",
        ),
        (
            "one_metric_one_month_pruned",
            "SELECT count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi \
             FROM samples WHERE metric = 'HEART_RATE' \
             AND date BETWEEN DATE '2026-11-10' AND DATE '2026-11-16'",
        ),
        (
            "count_distinct",
            "SELECT metric, count(DISTINCT subject_id) AS subjects, count(DISTINCT date) AS days, \
             count(DISTINCT start_at) AS instants FROM samples GROUP BY metric ORDER BY metric",
        ),
        (
            "window_7_day_steps",
            "SELECT subject_id, date, total, avg(total) OVER (PARTITION BY subject_id ORDER BY date \
             ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS avg7 FROM (SELECT subject_id, date, \
             sum(value) AS total FROM samples WHERE metric = 'STEPS' GROUP BY subject_id, date) t \
             ORDER BY subject_id, date",
        ),
        (
            "hourly_heart_rate_profile",
            "SELECT CAST(date_part('hour', bucket_start) AS BIGINT) AS hour, avg(value) AS mean, \
             max(max) AS peak FROM rollups WHERE metric = 'HEART_RATE' AND period = 'HOUR' \
             GROUP BY 1 ORDER BY 1",
        ),
    ]
}

/// Equal answers: same shape, strings equal, numbers within a relative 1e-9 (sums in
/// another order differ in the last bits).
fn same(a: &[Vec<Value>], b: &[Vec<Value>]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} rows vs {}", a.len(), b.len()));
    }
    for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
        if ra.len() != rb.len() {
            return Err(format!("row {i}: {} columns vs {}", ra.len(), rb.len()));
        }
        for (j, (x, y)) in ra.iter().zip(rb).enumerate() {
            let ok = match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => x == y,
            };
            if !ok {
                return Err(format!("row {i} column {j}: {x} vs {y}"));
            }
        }
    }
    Ok(())
}

fn duckdb(root: &Path, runs: usize, threads: usize) -> anyhow::Result<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_runner.py");
    let spec = json!({
        "root": root,
        "runs": runs,
        "threads": threads,
        "queries": queries().iter().map(|(n, s)| json!({"name": n, "sql": s})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("python stdin"))?
        .write_all(spec.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb runner failed (pip install duckdb)"
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = env_or("BENCH_USERS", 125);
    let days: i64 = env_or("BENCH_DAYS", 30);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let target_partitions: usize = env_or("BENCH_TARGET_PARTITIONS", cores);

    let mut setup = json!({});
    let _keep; // the temporary export directory lives until the end
    let _db; // the bench database is dropped at the end
    let root: PathBuf = match std::env::var("BENCH_EXPORT_DIR") {
        Ok(dir) if Path::new(&dir).join("samples").is_dir() => PathBuf::from(dir),
        other => {
            let stack = pulseline_testkit::Stack::from_env();
            let db = stack.create_database().await;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&db.url)
                .await?;
            pulseline_testkit::create_gateway_tables(&pool).await;
            pulseline_sinks::postgres::MIGRATOR.run(&pool).await?;
            let t = Instant::now();
            let rows = load_samples(&pool, users, days).await?;
            derive_read_models(&pool).await?;
            let load_s = t.elapsed().as_secs_f64();
            eprintln!("loaded {rows} samples of {users} users x {days} days in {load_s:.1} s");
            let dir = match other {
                Ok(d) => PathBuf::from(d),
                Err(_) => {
                    let t = tempfile::tempdir()?;
                    let p = t.path().to_path_buf();
                    _keep = Some(t);
                    p
                }
            };
            let t = Instant::now();
            let config = ExportConfig::local(&db.url, &dir.to_string_lossy());
            let reports = Exporter::new(pool.clone(), &config)?.export_once().await?;
            let export_s = t.elapsed().as_secs_f64();
            for r in &reports {
                eprintln!(
                    "exported {}: {} rows in {} partitions",
                    r.dataset, r.rows_total, r.partitions
                );
            }
            eprintln!("export took {export_s:.1} s");
            setup = json!({"sampleRows": rows, "users": users, "days": days,
                "loadSeconds": load_s, "exportSeconds": export_s,
                "exported": reports.iter().map(|r| json!({"dataset": r.dataset, "rows": r.rows_total, "partitions": r.partitions})).collect::<Vec<_>>()});
            _db = Some(db);
            dir
        }
    };

    let engine = AnalyticsEngine::new(
        &root,
        SqlLimits {
            timeout: Duration::from_secs(600),
            max_rows: 10_000_000,
            memory_bytes: 8 << 30,
            target_partitions,
        },
    );
    let mut df_results = serde_json::Map::new();
    for (name, sql) in queries() {
        let mut times = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let result = engine
                .query(sql, Some(10_000_000))
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {}: {e}", e.code()))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            rows = result
                .batches
                .iter()
                .flat_map(|b| {
                    let cols = b.columns().to_vec();
                    (0..b.num_rows())
                        .map(move |i| cols.iter().map(|c| json_value(c, i)).collect::<Vec<_>>())
                })
                .collect();
        }
        df_results.insert(name.to_owned(), json!({"ms": times, "rows": rows}));
    }
    let duck = duckdb(&root, runs, cores)?;

    let best = |v: &Value| {
        v["ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).fold(f64::INFINITY, f64::min))
            .unwrap_or(f64::NAN)
    };
    println!(
        "{:<36} {:>12} {:>12} {:>8}  answers",
        "query", "datafusion", "duckdb", "ratio"
    );
    let mut figures = Vec::new();
    let mut log_sum = 0.0;
    let mut all_equal = true;
    for (name, _) in queries() {
        let d = &df_results[name];
        let k = &duck["results"][name];
        let (dm, km) = (best(d), best(k));
        let ratio = dm / km;
        log_sum += ratio.ln();
        let rows_d: Vec<Vec<Value>> = serde_json::from_value(d["rows"].clone())?;
        let rows_k: Vec<Vec<Value>> = serde_json::from_value(k["rows"].clone())?;
        let verdict = same(&rows_d, &rows_k);
        all_equal &= verdict.is_ok();
        println!(
            "{name:<36} {dm:>9.1} ms {km:>9.1} ms {ratio:>7.2}x  {}",
            match &verdict {
                Ok(()) => format!("equal ({} rows)", rows_d.len()),
                Err(e) => format!("DIFFER: {e}"),
            }
        );
        figures.push(json!({"query": name, "datafusionMs": dm, "duckdbMs": km, "ratio": ratio,
            "rows": rows_d.len(), "equal": verdict.is_ok()}));
    }
    let geomean = (log_sum / queries().len() as f64).exp();
    println!("geometric mean ratio (datafusion / duckdb): {geomean:.2}x");
    println!(
        "{}",
        json!({"bench": "analytics", "duckdbVersion": duck["version"], "targetPartitions": target_partitions,
            "runs": runs, "setup": setup, "geomeanRatio": geomean, "allEqual": all_equal, "queries": figures})
    );
    anyhow::ensure!(all_equal, "DataFusion and DuckDB disagree");
    Ok(())
}
