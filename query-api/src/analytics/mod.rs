//! Read-only SQL over the Parquet export (`pulseline_sinks::export`) with DataFusion: each
//! exported dataset is a listing table whose Hive partition columns (`metric`, `date`)
//! prune files when used in WHERE. Shared by `POST /v1/analytics/sql` and `pulseline sql`.
//!
//! Limits, each named by the error it raises: a statement timeout (`SQL_TIMEOUT`), a row
//! limit (`maxRows`; more rows are cut and `truncated` is set), and a memory pool per
//! statement (`SQL_MEMORY_LIMIT`). This module never logs results; callers log the
//! caller, a hash of the text, the row count and the duration.

pub mod guard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use pulseline_sinks::export::ExportSpec;
use serde::Serialize;
use serde_json::Value;

pub use guard::Refusal;

/// The default row limit of an answer.
pub const DEFAULT_MAX_ROWS: usize = 10_000;

/// The engine's limits and tuning.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    /// A statement running longer is cancelled (`SQL_TIMEOUT`).
    pub timeout: Duration,
    /// The largest `maxRows` a caller may ask for.
    pub max_rows: usize,
    /// The memory pool of one statement, in bytes (`SQL_MEMORY_LIMIT` when exceeded).
    pub memory_bytes: usize,
    /// DataFusion's target partitions (parallelism); 0: the number of cores.
    pub target_partitions: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            memory_bytes: 512 * 1024 * 1024,
            target_partitions: 0,
        }
    }
}

/// Why a statement produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("maxRows must be between 1 and {max}")]
    MaxRows { max: usize },
    /// The statement ran past the configured timeout.
    #[error("statement timeout of {0:?} exceeded")]
    Timeout(Duration),
    /// The statement needed more memory than the pool allows.
    #[error("memory limit of {limit_mb} MiB exceeded: {detail}")]
    MemoryLimit { limit_mb: usize, detail: String },
    /// Planning failed (an unknown table or column, a type error): the caller's to fix.
    #[error("{0}")]
    Plan(String),
    /// Execution failed on the data (a cast, a division by zero).
    #[error("{0}")]
    Execution(String),
    /// The export cannot be read (I/O, corrupt files): ours to fix.
    #[error("internal: {0}")]
    Internal(String),
}

impl SqlError {
    /// The code of the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Refused(r) => r.code(),
            SqlError::MaxRows { .. } => "INVALID_PARAMETER",
            SqlError::Timeout(_) => "SQL_TIMEOUT",
            SqlError::MemoryLimit { .. } => "SQL_MEMORY_LIMIT",
            SqlError::Plan(_) => "SQL_PLAN_ERROR",
            SqlError::Execution(_) => "SQL_EXECUTION_ERROR",
            SqlError::Internal(_) => "INTERNAL",
        }
    }

    fn from_datafusion(e: DataFusionError, limits: &SqlLimits) -> Self {
        let root = e.find_root();
        let text = root.to_string();
        match root {
            DataFusionError::ResourcesExhausted(_) => SqlError::MemoryLimit {
                limit_mb: limits.memory_bytes / (1024 * 1024),
                detail: text,
            },
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => SqlError::Plan(e.strip_backtrace()),
            DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) => {
                SqlError::Internal(text)
            }
            _ => SqlError::Execution(e.strip_backtrace()),
        }
    }
}

/// A column of an answer: its name and Arrow type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SqlColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The answer to a statement, in the shape of `POST /v1/analytics/sql`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlAnswer {
    pub columns: Vec<SqlColumn>,
    /// Row-major values: numbers, strings (dates and times as ISO 8601), booleans, null.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<Value>>,
    /// More rows existed than `maxRows`.
    pub truncated: bool,
    pub elapsed_ms: u64,
}

/// A statement's result as Arrow, for callers that write it out (`pulseline sql --format parquet`).
#[derive(Debug)]
pub struct SqlBatches {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
    pub elapsed: Duration,
}

impl SqlBatches {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The JSON answer.
    pub fn to_answer(&self) -> SqlAnswer {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| SqlColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect();
        let mut rows = Vec::with_capacity(self.rows());
        for b in &self.batches {
            let cols: Vec<ArrayRef> = b.columns().to_vec();
            for i in 0..b.num_rows() {
                rows.push(cols.iter().map(|c| json_value(c, i)).collect());
            }
        }
        SqlAnswer {
            columns,
            rows,
            truncated: self.truncated,
            elapsed_ms: u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// One cell as JSON: numbers and booleans as themselves (non-finite floats as strings),
/// everything else as Arrow prints it (ISO 8601 for dates and times).
pub fn json_value(a: &ArrayRef, i: usize) -> Value {
    use arrow::datatypes::*;
    if a.is_null(i) {
        return Value::Null;
    }
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
    };
    match a.data_type() {
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => float(f64::from(a.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_owned()),
        _ => {
            let opts = FormatOptions::default();
            ArrayFormatter::try_new(a.as_ref(), &opts)
                .map(|f| Value::String(f.value(i).to_string()))
                .unwrap_or(Value::Null)
        }
    }
}

/// DataFusion over an export root.
#[derive(Debug, Clone)]
pub struct AnalyticsEngine {
    root: PathBuf,
    datasets: Vec<ExportSpec>,
    limits: SqlLimits,
}

impl AnalyticsEngine {
    /// An engine over `root` (the exporter's `PULSELINE_EXPORT_DIR`) serving every dataset
    /// the exporter writes.
    pub fn new(root: impl Into<PathBuf>, limits: SqlLimits) -> Self {
        Self {
            root: root.into(),
            datasets: pulseline_sinks::export::datasets(),
            limits,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// A session with each dataset registered: a fresh one per statement, so its memory
    /// pool is the statement's and a new partition written by the exporter is seen.
    fn session(&self) -> Result<SessionContext, SqlError> {
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_collect_statistics(true);
        if self.limits.target_partitions > 0 {
            config = config.with_target_partitions(self.limits.target_partitions);
        }
        let opts = config.options_mut();
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            // No spilling: the memory limit is a hard limit, and analysts cannot fill the
            // server's disk with temporary files.
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        for spec in &self.datasets {
            let dir = self.root.join(spec.name);
            if !dir.is_dir() {
                continue;
            }
            let url = ListingTableUrl::parse(format!("{}/", dir.display()))
                .map_err(|e| SqlError::Internal(e.to_string()))?;
            let mut partition_cols = Vec::new();
            if spec.metric.is_some() {
                partition_cols.push(("metric".to_owned(), DataType::Utf8));
            }
            partition_cols.push(("date".to_owned(), DataType::Date32));
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partition_cols);
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(spec.file_schema());
            let table =
                ListingTable::try_new(config).map_err(|e| SqlError::Internal(e.to_string()))?;
            ctx.register_table(spec.name, Arc::new(table))
                .map_err(|e| SqlError::Internal(e.to_string()))?;
        }
        Ok(ctx)
    }

    /// Runs one read-only statement; at most `max_rows` rows (default 10,000).
    pub async fn query(&self, sql: &str, max_rows: Option<usize>) -> Result<SqlBatches, SqlError> {
        let started = Instant::now();
        let max_rows = max_rows.unwrap_or(DEFAULT_MAX_ROWS.min(self.limits.max_rows));
        if max_rows == 0 || max_rows > self.limits.max_rows {
            return Err(SqlError::MaxRows {
                max: self.limits.max_rows,
            });
        }
        guard::check(sql)?;
        let limits = self.limits.clone();
        let run = async {
            let ctx = self.session()?;
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx
                .sql_with_options(sql, options)
                .await
                .map_err(|e| SqlError::from_datafusion(e, &limits))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df
                .execute_stream()
                .await
                .map_err(|e| SqlError::from_datafusion(e, &limits))?;
            let mut batches = Vec::new();
            let mut rows = 0usize;
            let mut truncated = false;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| SqlError::from_datafusion(e, &limits))?;
                let room = max_rows - rows;
                if batch.num_rows() > room {
                    batches.push(batch.slice(0, room));
                    truncated = true;
                    break;
                }
                rows += batch.num_rows();
                batches.push(batch);
                if rows == max_rows {
                    // One more row tells a cut answer from a complete one.
                    truncated = matches!(stream.next().await, Some(Ok(b)) if b.num_rows() > 0);
                    break;
                }
            }
            Ok::<_, SqlError>((schema, batches, truncated))
        };
        let (schema, batches, truncated) = tokio::time::timeout(self.limits.timeout, run)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.timeout))??;
        Ok(SqlBatches {
            schema,
            batches,
            truncated,
            elapsed: started.elapsed(),
        })
    }
}
