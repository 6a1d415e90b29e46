//! Analysts' SQL: DataFusion (the query API's engine, with its limits) against DuckDB on
//! the same Parquet files, in the same run. Builds an export from the simulator (each
//! simulated user's watch and phone: heart rate every minute, steps, sleep stages), in the
//! exporter's layout, schema and writer settings; derives daily rollups and sleep nights
//! from it; runs each query through both engines, checks the answers agree, and prints each
//! query's best time for both and their ratio, then one JSON line with the figures.
//!
//! `cargo bench -p pulseline-query-api --bench sql_vs_duckdb`
//! Needs `python3 -c 'import duckdb'` (`pip install duckdb`). Knobs (env): BENCH_SUBJECTS
//! (60), BENCH_DAYS (64) — about 2,640 samples per subject-day, so 10.1 M rows by default;
//! BENCH_RUNS (3, best of); BENCH_EXPORT_DIR (a temporary directory; kept if given, and
//! reused when it already holds an export); BENCH_QUERIES (comma-separated names: only
//! those); BENCH_EXPLAIN=1 (print DataFusion's `EXPLAIN ANALYZE` of each query first).
//! DataFusion's own options can be set by `DATAFUSION_*` variables, as in the query
//! API (`DATAFUSION_EXECUTION_BATCH_SIZE=16384`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use datafusion::arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use pulseline_query_api::analytics::{SqlAnswer, SqlEngine, SqlLimits};
use pulseline_schemas::catalog::Catalog;
use pulseline_schemas::records::{RollupUpsert, SleepNightUpsert};
use pulseline_simulator::{SimulatedUser, TrafficMix};
use pulseline_sinks::export::{
    DEV_EXPORT_KEY, ExportSpec, Exported, PART_FILE, Pseudonymizer, Samples, writer_properties,
};
use serde_json::{Value, json};

/// The analyst queries: (name, SQL both engines run unchanged).
const QUERIES: &[(&str, &str)] = &[
    (
        "daily_totals_per_metric",
        "SELECT metric, date, count(*) AS n, sum(value) AS total FROM samples \
         GROUP BY metric, date ORDER BY metric, date",
    ),
    (
        "heart_rate_percentiles_per_subject",
        "SELECT subject_id, \
         percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS p50, \
         percentile_cont(0.95) WITHIN GROUP (ORDER BY value) AS p95 \
         FROM samples WHERE metric = 'HEART_RATE' GROUP BY subject_id ORDER BY subject_id",
    ),
    (
        "sleep_by_weekday",
        "SELECT date_part('dow', night) AS weekday, count(*) AS nights, \
         avg(asleep_minutes) AS asleep, avg(in_bed_minutes) AS in_bed \
         FROM sleep_nights GROUP BY 1 ORDER BY 1",
    ),
    (
        "top_subjects_by_steps_in_a_month",
        "SELECT subject_id, sum(value) AS steps FROM samples \
         WHERE metric = 'STEPS' AND date >= DATE '2026-02-01' AND date < DATE '2026-03-01' \
         GROUP BY subject_id ORDER BY steps DESC, subject_id LIMIT 10",
    ),
    (
        "rollups_joined_with_samples",
        "SELECT r.metric, count(*) AS days, sum(CASE WHEN abs(r.count - s.n) = 0 THEN 1 ELSE 0 END) AS agree \
         FROM rollups r JOIN (SELECT subject_id, metric, date, count(*) AS n FROM samples \
         GROUP BY subject_id, metric, date) s \
         ON r.subject_id = s.subject_id AND r.metric = s.metric AND r.date = s.date \
         GROUP BY r.metric ORDER BY r.metric",
    ),
    (
        "one_metric_one_month",
        "SELECT count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi \
         FROM samples WHERE metric = 'HEART_RATE' \
         AND date >= DATE '2026-01-15' AND date < DATE '2026-02-15'",
    ),
    (
        "count_distinct",
        "SELECT metric, count(DISTINCT subject_id) AS subjects, count(DISTINCT date) AS days, \
         count(DISTINCT start_at) AS instants FROM samples GROUP BY metric ORDER BY metric",
    ),
    (
        "seven_day_moving_average",
        "SELECT count(*) AS n, sum(avg7) AS total FROM (SELECT avg(value) OVER \
         (PARTITION BY subject_id ORDER BY date ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS avg7 \
         FROM rollups WHERE metric = 'STEPS') w",
    ),
    (
        "sleep_stage_minutes",
        "SELECT category, count(*) AS n, sum(date_part('epoch', end_at) - date_part('epoch', start_at)) / 60 AS minutes \
         FROM samples WHERE metric = 'SLEEP_STAGE' GROUP BY category ORDER BY category",
    ),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One exported sample, as the `samples` dataset holds it.
struct Row {
    subject: Arc<str>,
    start: i64,
    end: i64,
    offset: i32,
    value: Option<f64>,
    unit: &'static str,
    category: Option<&'static str>,
    device: &'static str,
}

type Partitions = BTreeMap<(String, NaiveDate), Vec<Row>>;

fn local_date(micros: i64, offset_minutes: i32) -> NaiveDate {
    let t = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default()
        + TimeDelta::minutes(i64::from(offset_minutes));
    t.date_naive()
}

/// Every subject's samples, by (metric, local date).
fn simulate(subjects: usize, days: i64) -> (Partitions, usize) {
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
    let now = start + TimeDelta::days(days);
    let mix = TrafficMix {
        retry: 0.0,
        duplicate_upload: 0.0,
        correction: 0.0,
        deletion: 0.0,
    };
    let catalog = Catalog::builtin();
    let units: BTreeMap<&str, &'static str> = catalog
        .metrics()
        .map(|m| (m.code(), m.canonical_unit()))
        .collect();
    let mut names = Pseudonymizer::new(DEV_EXPORT_KEY).unwrap_or_else(|e| panic!("{e}"));
    let mut parts = Partitions::new();
    let mut rows = 0;
    for s in 0..subjects {
        let mut user = SimulatedUser::new(1000 + s as u64, start, mix);
        // Each upload comes from one of the two devices, at random: stop once both are
        // caught up (a run of empty uploads).
        let mut empty = 0;
        while empty < 16 {
            let upload = user.next_upload(5_000, now);
            empty = if upload.items == 0 { empty + 1 } else { 0 };
            user.acknowledged(&upload);
        }
        let subject: Arc<str> = names.pseudonym(&user.user_id.to_string()).into();
        for c in user.expected().values() {
            let unit = units.get(c.metric).copied().unwrap_or("");
            parts
                .entry((
                    c.metric.to_owned(),
                    local_date(c.start_at, c.tz_offset_minutes),
                ))
                .or_default()
                .push(Row {
                    subject: subject.clone(),
                    start: c.start_at,
                    end: c.end_at,
                    offset: c.tz_offset_minutes,
                    value: c.value,
                    unit,
                    category: c.category,
                    device: c.device_type,
                });
            rows += 1;
        }
    }
    (parts, rows)
}

fn write_partition(
    root: &Path,
    spec: &ExportSpec,
    metric: Option<&str>,
    date: NaiveDate,
    batch: RecordBatch,
) {
    let mut dir = root.join(spec.name);
    if let Some(m) = metric {
        dir = dir.join(format!("metric={m}"));
    }
    dir = dir.join(format!("date={date}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = std::fs::File::create(dir.join(PART_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()))
        .unwrap_or_else(|e| panic!("{e}"));
    w.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    w.close().unwrap_or_else(|e| panic!("{e}"));
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("{e}"))
}

const UTC: &str = "UTC";

fn write_samples(root: &Path, parts: &mut Partitions) {
    let spec = Samples::EXPORT;
    for ((metric, date), rows) in parts.iter_mut() {
        rows.sort_by(|a, b| (&a.subject, a.start).cmp(&(&b.subject, b.start)));
        let mut subject = StringBuilder::new();
        let mut start = TimestampMicrosecondBuilder::new().with_timezone(UTC);
        let mut end = TimestampMicrosecondBuilder::new().with_timezone(UTC);
        let mut offset = Int32Builder::new();
        let mut value = Float64Builder::new();
        let mut unit = StringBuilder::new();
        let mut category = StringBuilder::new();
        let mut device = StringBuilder::new();
        for r in rows.iter() {
            subject.append_value(&r.subject);
            start.append_value(r.start);
            end.append_value(r.end);
            offset.append_value(r.offset);
            value.append_option(r.value);
            unit.append_value(r.unit);
            category.append_option(r.category);
            device.append_value(r.device);
        }
        let b = batch(
            spec.file_schema(),
            vec![
                Arc::new(subject.finish()),
                Arc::new(start.finish()),
                Arc::new(end.finish()),
                Arc::new(offset.finish()),
                Arc::new(value.finish()),
                Arc::new(unit.finish()),
                Arc::new(category.finish()),
                Arc::new(device.finish()),
            ],
        );
        write_partition(root, &spec, Some(metric), *date, b);
    }
}

/// Daily rollups per (subject, metric, local date): the sum for steps, the mean otherwise.
fn write_rollups(root: &Path, parts: &Partitions) {
    let spec = RollupUpsert::EXPORT;
    for ((metric, date), rows) in parts {
        if metric == "SLEEP_STAGE" {
            continue;
        }
        let mut by_subject: BTreeMap<&str, (f64, f64, f64, i64)> = BTreeMap::new();
        for r in rows {
            let v = r.value.unwrap_or_default();
            let e =
                by_subject
                    .entry(&r.subject)
                    .or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
            e.0 += v;
            e.1 = e.1.min(v);
            e.2 = e.2.max(v);
            e.3 += 1;
        }
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_micros();
        let mut subject = StringBuilder::new();
        let mut period = StringBuilder::new();
        let mut bucket = TimestampMicrosecondBuilder::new();
        let (mut value, mut min, mut max) = (
            Float64Builder::new(),
            Float64Builder::new(),
            Float64Builder::new(),
        );
        let mut count = Int64Builder::new();
        for (s, (sum, lo, hi, n)) in by_subject {
            subject.append_value(s);
            period.append_value("DAY");
            bucket.append_value(midnight);
            value.append_value(if metric == "STEPS" {
                sum
            } else {
                sum / n as f64
            });
            min.append_value(lo);
            max.append_value(hi);
            count.append_value(n);
        }
        let b = batch(
            spec.file_schema(),
            vec![
                Arc::new(subject.finish()),
                Arc::new(period.finish()),
                Arc::new(bucket.finish()),
                Arc::new(value.finish()),
                Arc::new(min.finish()),
                Arc::new(max.finish()),
                Arc::new(count.finish()),
            ],
        );
        write_partition(root, &spec, Some(metric), *date, b);
    }
}

/// A night's bed and wake instants, then its in-bed, asleep, awake, REM, deep and core
/// minutes.
type NightFigures = [f64; 8];

/// One night per (subject, local date of the last stage ending before noon): stage minutes
/// from the watch's stages.
fn write_sleep_nights(root: &Path, parts: &Partitions) {
    let spec = SleepNightUpsert::EXPORT;
    // (night, subject) -> (bed, wake, in bed, asleep, awake, rem, deep, core)
    let mut nights: BTreeMap<(NaiveDate, Arc<str>), NightFigures> = BTreeMap::new();
    for ((metric, _), rows) in parts {
        if metric != "SLEEP_STAGE" {
            continue;
        }
        for r in rows.iter().filter(|r| r.device == "apple_watch") {
            let minutes = (r.end - r.start) as f64 / 60e6;
            let night = local_date(r.end + 12 * 3_600_000_000, r.offset);
            let e = nights.entry((night, r.subject.clone())).or_insert([
                f64::MAX,
                f64::MIN,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ]);
            e[0] = e[0].min(r.start as f64);
            e[1] = e[1].max(r.end as f64);
            e[2] += minutes;
            let slot = match r.category {
                Some("awake") => 4,
                Some("rem") => 5,
                Some("deep") => 6,
                _ => 7,
            };
            e[slot] += minutes;
            if slot != 4 {
                e[3] += minutes;
            }
        }
    }
    let mut by_date: BTreeMap<NaiveDate, Vec<(Arc<str>, NightFigures)>> = BTreeMap::new();
    for ((night, subject), f) in nights {
        by_date.entry(night).or_default().push((subject, f));
    }
    for (night, rows) in by_date {
        let mut subject = StringBuilder::new();
        let mut date = Date32Builder::new();
        let mut bed = TimestampMicrosecondBuilder::new().with_timezone(UTC);
        let mut wake = TimestampMicrosecondBuilder::new().with_timezone(UTC);
        let mut floats: Vec<Float64Builder> = (0..9).map(|_| Float64Builder::new()).collect();
        let mut awakenings = Int32Builder::new();
        let mut naps = Int32Builder::new();
        let mut nap_minutes = Float64Builder::new();
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        for (s, f) in &rows {
            subject.append_value(s);
            date.append_value((night - epoch).num_days() as i32);
            bed.append_value(f[0] as i64);
            wake.append_value(f[1] as i64);
            // in_bed, asleep, awake, latency, efficiency, rem, deep, core, unspecified
            let values = [f[2], f[3], f[4], 0.0, f[3] / f[2], f[5], f[6], f[7], 0.0];
            for (b, v) in floats.iter_mut().zip(values) {
                b.append_value(v);
            }
            awakenings.append_value((f[4] / 10.0) as i32);
            naps.append_value(0);
            nap_minutes.append_value(0.0);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(subject.finish()),
            Arc::new(date.finish()),
            Arc::new(bed.finish()),
            Arc::new(wake.finish()),
        ];
        let mut floats = floats
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef);
        columns.extend(floats.by_ref().take(5));
        columns.push(Arc::new(awakenings.finish()));
        columns.extend(floats);
        columns.push(Arc::new(naps.finish()));
        columns.push(Arc::new(nap_minutes.finish()));
        write_partition(root, &spec, None, night, batch(spec.file_schema(), columns));
    }
}

/// Values both engines can be compared by: numbers to 9 significant digits, the rest as
/// text.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            if f == 0.0 {
                json!(0.0)
            } else {
                let digits = 9 - f.abs().log10().ceil() as i32;
                let scale = 10f64.powi(digits);
                json!((f * scale).round() / scale)
            }
        }
        Value::String(s) => json!(s.trim_end_matches("T00:00:00")),
        other => other.clone(),
    }
}

fn canonical_rows(rows: &Value) -> Vec<Vec<Value>> {
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().map(canonical).collect())
        .collect()
}

fn export_exists(root: &Path) -> bool {
    ["samples", "rollups", "sleep_nights"]
        .iter()
        .all(|d| root.join(d).is_dir())
}

fn build_export(root: &Path, subjects: usize, days: i64) -> usize {
    let began = Instant::now();
    let (mut parts, rows) = simulate(subjects, days);
    let simulated = began.elapsed();
    write_samples(root, &mut parts);
    write_rollups(root, &parts);
    write_sleep_nights(root, &parts);
    println!(
        "export: {rows} sample rows of {subjects} subjects over {days} days in {} partitions \
         (simulated in {:.1} s, written in {:.1} s) at {}",
        parts.len(),
        simulated.as_secs_f64(),
        (began.elapsed() - simulated).as_secs_f64(),
        root.display()
    );
    rows
}

fn run_duckdb(root: &Path, queries: &[(&str, &str)], runs: usize, threads: usize) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_runner.py");
    let request = json!({
        "root": root,
        "runs": runs,
        "threads": threads,
        "queries": queries.iter().map(|(n, q)| json!({ "name": n, "sql": q })).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    child
        .stdin
        .take()
        .map(|mut s| s.write_all(request.to_string().as_bytes()))
        .transpose()
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "the DuckDB runner failed (is duckdb installed? pip install duckdb)"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("DuckDB runner output: {e}"))
}

/// The queries to run: all, or those BENCH_QUERIES names.
fn chosen_queries() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("BENCH_QUERIES").unwrap_or_default();
    let wanted: Vec<&str> = only.split(',').filter(|n| !n.is_empty()).collect();
    for name in &wanted {
        assert!(
            QUERIES.iter().any(|(n, _)| n == name),
            "BENCH_QUERIES: no query named {name}"
        );
    }
    QUERIES
        .iter()
        .filter(|(n, _)| wanted.is_empty() || wanted.contains(n))
        .copied()
        .collect()
}

fn main() {
    let queries = chosen_queries();
    let subjects = env_usize("BENCH_SUBJECTS", 60);
    let days = env_usize("BENCH_DAYS", 64) as i64;
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let temp;
    let root: PathBuf = match std::env::var("BENCH_EXPORT_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            temp.path().to_path_buf()
        }
    };
    if export_exists(&root) {
        println!("export: reusing {}", root.display());
    } else {
        build_export(&root, subjects, days);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let limits = SqlLimits {
        timeout: Duration::from_secs(600),
        max_rows: 1_000_000,
        memory_bytes: 8 << 30,
        target_partitions: threads,
    };
    let engine = SqlEngine::new(&root, limits);
    if std::env::var("BENCH_EXPLAIN").is_ok_and(|v| v == "1") {
        for (name, sql) in &queries {
            let plan = runtime
                .block_on(engine.query(&format!("EXPLAIN ANALYZE {sql}"), Some(1_000)))
                .unwrap_or_else(|e| panic!("{name}: {} {e}", e.code()));
            let text = SqlAnswer::from_result(&plan)
                .map(|a| json!(a.rows))
                .unwrap_or_else(|e| panic!("{e}"));
            println!("{name}:");
            for row in text.as_array().into_iter().flatten() {
                println!("{}", row[1].as_str().unwrap_or_default());
            }
        }
    }
    let mut datafusion = BTreeMap::new();
    for (name, sql) in &queries {
        let mut best = Duration::MAX;
        let mut answer = None;
        for _ in 0..=runs {
            let result = runtime
                .block_on(engine.query(sql, Some(1_000_000)))
                .unwrap_or_else(|e| panic!("{name}: {} {e}", e.code()));
            // The first run warms the file system cache, as DuckDB's does.
            if answer.is_some() {
                best = best.min(result.elapsed);
            }
            answer = Some(SqlAnswer::from_result(&result).unwrap_or_else(|e| panic!("{e}")));
        }
        let rows = answer.map(|a| json!(a.rows)).unwrap_or_default();
        datafusion.insert(*name, (best, rows));
    }
    let duck = run_duckdb(&root, &queries, runs, threads);
    println!(
        "{:<36} {:>12} {:>12} {:>8}  answers",
        "query", "DataFusion", "DuckDB", "ratio"
    );
    let mut figures = Vec::new();
    let mut log_sum = 0.0;
    let mut all_agree = true;
    for (name, _) in &queries {
        let (df_time, df_rows) = &datafusion[name];
        let d = &duck["queries"][name];
        let duck_ms = d["ms"].as_f64().unwrap_or(f64::NAN);
        let df_ms = df_time.as_secs_f64() * 1e3;
        let ratio = df_ms / duck_ms;
        log_sum += ratio.ln();
        let agree = canonical_rows(df_rows) == canonical_rows(&d["rows"]);
        all_agree &= agree;
        println!(
            "{name:<36} {df_ms:>9.1} ms {duck_ms:>9.1} ms {ratio:>7.2}x  {}",
            if agree { "same" } else { "DIFFER" }
        );
        if !agree {
            println!(
                "  DataFusion: {}",
                df_rows.to_string().chars().take(400).collect::<String>()
            );
            println!(
                "  DuckDB:     {}",
                d["rows"].to_string().chars().take(400).collect::<String>()
            );
        }
        figures.push(json!({ "query": name, "datafusionMs": df_ms, "duckdbMs": duck_ms, "ratio": ratio, "same": agree }));
    }
    let geomean = (log_sum / queries.len() as f64).exp();
    let worst = figures
        .iter()
        .filter_map(|f| f["ratio"].as_f64())
        .fold(0.0, f64::max);
    println!(
        "geometric mean ratio {geomean:.2}x, worst {worst:.2}x (targets: <= 1.0x, every query <= 1.5x)"
    );
    println!(
        "{}",
        json!({
            "bench": "sql_vs_duckdb",
            "duckdb": duck["duckdb"],
            "threads": threads,
            "runs": runs,
            "queries": figures,
            "geomeanRatio": geomean,
            "worstRatio": worst,
            "answersAgree": all_agree,
        })
    );
    assert!(all_agree, "DataFusion and DuckDB answers differ");
}
