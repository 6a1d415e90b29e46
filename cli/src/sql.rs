//! `pulseline sql "<query>"`: read-only SQL over the Parquet export, in this process, with
//! the query API's engine and rules (one SELECT/WITH/EXPLAIN; timeout, row and memory
//! limits). Prints a table by default, or CSV, JSON (the API's answer), or writes Parquet.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pulseline_query_api::analytics::{AnalyticsEngine, SqlBatches, SqlLimits};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// One SELECT, WITH or EXPLAIN statement over `samples`, `rollups`, `sleep_nights`.
    pub query: String,
    /// The export root (the exporter's).
    #[arg(long, env = "PULSELINE_EXPORT_DIR", default_value = pulseline_sinks::export::DEFAULT_EXPORT_DIR)]
    pub export_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where `--format parquet` writes (required for it).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Most rows to return.
    #[arg(long, default_value_t = pulseline_query_api::analytics::DEFAULT_MAX_ROWS)]
    pub max_rows: usize,
    /// Statement timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let limits = SqlLimits {
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        max_rows: args.max_rows.max(1),
        ..SqlLimits::default()
    };
    let engine = AnalyticsEngine::new(&args.export_dir, limits);
    let result = engine
        .query(&args.query, Some(args.max_rows))
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => print_table(&mut out, &result)?,
        Format::Csv => print_csv(&mut out, &result)?,
        Format::Json => {
            serde_json::to_writer(&mut out, &result.to_answer())?;
            writeln!(out)?;
        }
        Format::Parquet => {
            let path = args
                .output
                .context("--format parquet needs --output <file.parquet>")?;
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = parquet::arrow::ArrowWriter::try_new(
                file,
                result.schema.clone(),
                Some(pulseline_sinks::export::writer_properties()),
            )?;
            for b in &result.batches {
                w.write(b)?;
            }
            w.close()?;
            writeln!(out, "{} rows written to {}", result.rows(), path.display())?;
        }
    }
    if result.truncated {
        eprintln!("(truncated at {} rows; raise --max-rows)", result.rows());
    }
    Ok(())
}

fn cells(result: &SqlBatches) -> (Vec<String>, Vec<Vec<String>>) {
    let answer = result.to_answer();
    let header = answer.columns.iter().map(|c| c.name.clone()).collect();
    let rows = answer
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    (header, rows)
}

/// An aligned text table, as psql prints one.
pub fn print_table(out: &mut impl Write, result: &SqlBatches) -> std::io::Result<()> {
    let (header, rows) = cells(result);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| -> String {
        cols.iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
    };
    writeln!(out, "{}", line(&header))?;
    writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    )?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    writeln!(
        out,
        "({} row{}, {} ms)",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        result.elapsed.as_millis()
    )
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// RFC 4180 CSV with a header line.
pub fn print_csv(out: &mut impl Write, result: &SqlBatches) -> std::io::Result<()> {
    let (header, rows) = cells(result);
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r.iter().map(|c| csv_field(c)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// The example `pulseline run` answers after its export: daily totals per metric.
pub const EXAMPLE_QUERY: &str = "SELECT metric, count(*) AS samples, count(DISTINCT subject_id) AS subjects, \
     min(date) AS first_day, max(date) AS last_day FROM samples GROUP BY metric ORDER BY samples DESC LIMIT 5";

/// `pulseline run`'s last step: export the run's data, say where the files are, and
/// answer one example query over them.
pub async fn export_and_show(database_url: &str, export_dir: &str) -> anyhow::Result<()> {
    let config = pulseline_sinks::export::ExportConfig::local(database_url, export_dir);
    let mut exporter = pulseline_sinks::export::Exporter::connect(&config).await?;
    let reports = exporter.export_once().await?;
    println!("export (pseudonymised Parquet, Hive layout) in {export_dir}:");
    for r in &reports {
        println!(
            "  {:<13} {:>8} rows in {} partitions ({} rewritten this time)",
            r.dataset, r.rows_total, r.partitions, r.rewritten
        );
    }
    let engine = AnalyticsEngine::new(export_dir, SqlLimits::default());
    let result = engine
        .query(EXAMPLE_QUERY, None)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
    println!("  example: pulseline sql --export-dir {export_dir} \"{EXAMPLE_QUERY}\"");
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &result)?;
    println!(
        "  or with DuckDB: duckdb -c \"SELECT metric, count(*) FROM read_parquet('{export_dir}/samples/**/*.parquet', hive_partitioning = true) GROUP BY metric\""
    );
    Ok(())
}
