//! `pulseline sql "<query>"`: an analyst's read-only SQL over the local Parquet export,
//! with the query API's engine and limits, printed as a table (default), CSV, JSON (the
//! API's answer) or Parquet.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use pulseline_query_api::analytics::{SqlAnswer, SqlEngine, SqlLimits, SqlResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// One SELECT, WITH or EXPLAIN statement. Tables: samples, rollups, sleep_nights,
    /// session_impacts, product_impacts.
    pub query: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write here instead of standard output (required for parquet).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Most rows to print.
    #[arg(long, default_value_t = pulseline_query_api::analytics::DEFAULT_MAX_ROWS)]
    pub max_rows: usize,
    /// The export root (the exporter's `PULSELINE_EXPORT_DIR`): a directory or
    /// `s3://bucket/prefix` (S3 settings from the `AWS_*` variables).
    #[arg(long, env = "PULSELINE_EXPORT_DIR", default_value = pulseline_sinks::export::DEFAULT_EXPORT_DIR)]
    pub export_dir: String,
    /// Statement timeout, in seconds.
    #[arg(long, env = "PULSELINE_SQL_TIMEOUT_SECS", default_value_t = pulseline_query_api::analytics::DEFAULT_TIMEOUT_SECS)]
    pub timeout_secs: u64,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    if !args.export_dir.starts_with("s3://") && !std::path::Path::new(&args.export_dir).is_dir() {
        bail!(
            "no export at {} (run `pulseline run`, or `pulseline-export --once`, or set PULSELINE_EXPORT_DIR)",
            args.export_dir
        );
    }
    let limits = SqlLimits {
        timeout: Duration::from_secs(args.timeout_secs),
        max_rows: args.max_rows.max(1),
        ..SqlLimits::default()
    };
    let engine = SqlEngine::open(&args.export_dir, limits)?;
    let result = match engine.query(&args.query, Some(args.max_rows)).await {
        Ok(result) => result,
        Err(e) => {
            // A refused or failed query is the analyst's to fix: its code and rule, no trace.
            eprintln!("{}: {e}", e.code());
            std::process::exit(2);
        }
    };
    let bytes = render(&result, args.format)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None if args.format == Format::Parquet => {
            bail!("--format parquet needs --output <file>")
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    if result.truncated {
        eprintln!(
            "(cut at {} rows: raise --max-rows to see more)",
            result.rows
        );
    }
    Ok(())
}

/// The result in the chosen format.
pub fn render(result: &SqlResult, format: Format) -> anyhow::Result<Vec<u8>> {
    use datafusion::arrow;
    Ok(match format {
        Format::Table => {
            let mut text = arrow::util::pretty::pretty_format_batches(&result.batches)?.to_string();
            text.push('\n');
            text.push_str(&format!(
                "{} row{} in {} ms\n",
                result.rows,
                if result.rows == 1 { "" } else { "s" },
                result.elapsed.as_millis()
            ));
            text.into_bytes()
        }
        Format::Csv => {
            let mut out = Vec::new();
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for batch in &result.batches {
                writer.write(batch)?;
            }
            drop(writer);
            out
        }
        Format::Json => {
            let answer = SqlAnswer::from_result(result).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = serde_json::to_vec_pretty(&answer)?;
            out.push(b'\n');
            out
        }
        Format::Parquet => {
            let mut out = Vec::new();
            let mut writer = parquet::arrow::ArrowWriter::try_new(
                &mut out,
                result.schema.clone(),
                Some(pulseline_sinks::export::writer_properties()),
            )?;
            for batch in &result.batches {
                writer.write(batch)?;
            }
            writer.close()?;
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn result() -> SqlResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("metric", DataType::Utf8, false),
            Field::new("mean", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["STEPS", "HEART_RATE"])),
                Arc::new(Float64Array::from(vec![Some(158.5), None])),
            ],
        )
        .unwrap();
        SqlResult {
            schema,
            batches: vec![batch],
            rows: 2,
            truncated: false,
            elapsed: Duration::from_millis(4),
        }
    }

    #[test]
    fn every_format_renders_the_rows() {
        let r = result();
        let table = String::from_utf8(render(&r, Format::Table).unwrap()).unwrap();
        assert!(table.contains("| STEPS      | 158.5 |"), "{table}");
        assert!(table.ends_with("2 rows in 4 ms\n"), "{table}");
        let csv = String::from_utf8(render(&r, Format::Csv).unwrap()).unwrap();
        assert_eq!(csv, "metric,mean\nSTEPS,158.5\nHEART_RATE,\n");
        let json: serde_json::Value =
            serde_json::from_slice(&render(&r, Format::Json).unwrap()).unwrap();
        assert_eq!(
            json["rows"],
            serde_json::json!([["STEPS", 158.5], ["HEART_RATE", null]])
        );
        let parquet = render(&r, Format::Parquet).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(parquet),
        )
        .unwrap()
        .build()
        .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
    }
}
