//! Analysts' SQL over the Parquet export, with DataFusion: each exported dataset is a
//! table (its Hive partition columns `metric` and `date` prune files when a query filters
//! on them), statements are read-only (`guard`), and every query runs under three limits —
//! a statement timeout, a row limit and a memory limit — each refused with its own code.
//!
//! A query gets a fresh DataFusion session: tables list their files at query time, so a
//! partition the exporter just replaced is read whole (old or new, never half), and no
//! query can leave state behind for the next.

mod answer;
mod guard;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::TableScopedPath;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadata, CachedFileMetadataEntry,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use pulseline_sinks::export::{ExportError, ExportRoot, ExportSpec, PART_FILE};
use serde_json::{Value, json};

pub use answer::{SqlAnswer, SqlColumn};
pub use guard::check_read_only;

/// Rows returned when the request does not say.
pub const DEFAULT_MAX_ROWS: usize = 10_000;
/// The largest `maxRows` a request may ask for, unless configured otherwise.
pub const DEFAULT_ROW_LIMIT: usize = 100_000;
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MEMORY_LIMIT_MB: usize = 512;
/// Longest statement accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// The limits every query runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    pub timeout: Duration,
    /// The largest row limit a caller may ask for.
    pub max_rows: usize,
    pub memory_bytes: usize,
    /// DataFusion's parallelism; 0 means one per core.
    pub target_partitions: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_rows: DEFAULT_ROW_LIMIT,
            memory_bytes: DEFAULT_MEMORY_LIMIT_MB * 1024 * 1024,
            target_partitions: 0,
        }
    }
}

/// Why a query was refused or failed. Messages name the rule or the limit; they never
/// quote the statement or any value it read.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("the statement is empty")]
    Empty,
    #[error("the statement is longer than {MAX_SQL_BYTES} bytes")]
    TooLong,
    #[error("{0} statements given; send one SELECT, WITH or EXPLAIN")]
    MultipleStatements(usize),
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("{0} is not allowed: only SELECT, WITH and EXPLAIN run here (read-only)")]
    NotReadOnly(&'static str),
    #[error("the table function `{0}` is not allowed (no function may read files)")]
    FunctionNotAllowed(String),
    /// Unknown tables or columns, type errors: the planner's message.
    #[error("cannot plan the query: {0}")]
    Plan(String),
    #[error("the query failed: {0}")]
    Execution(String),
    #[error("maxRows must be between 1 and {max}")]
    RowLimit { max: usize },
    #[error("the query ran longer than the statement timeout of {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the query needed more than the memory limit of {} MiB", .0 / (1024 * 1024))]
    MemoryLimit(usize),
    /// The export's files could not be read (a partition vanished mid-query, a disk
    /// error): retrying later helps.
    #[error("the export could not be read: {0}")]
    ExportUnavailable(String),
}

impl SqlError {
    /// The stable API code.
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Empty => "SQL_EMPTY",
            SqlError::TooLong => "SQL_TOO_LONG",
            SqlError::MultipleStatements(_) => "SQL_MULTIPLE_STATEMENTS",
            SqlError::Syntax(_) => "SQL_SYNTAX",
            SqlError::NotReadOnly(_) => "SQL_NOT_READ_ONLY",
            SqlError::FunctionNotAllowed(_) => "SQL_FUNCTION_NOT_ALLOWED",
            SqlError::Plan(_) => "SQL_PLAN",
            SqlError::Execution(_) => "SQL_EXECUTION",
            SqlError::RowLimit { .. } => "SQL_ROW_LIMIT",
            SqlError::Timeout(_) => "SQL_TIMEOUT",
            SqlError::MemoryLimit(_) => "SQL_MEMORY_LIMIT",
            SqlError::ExportUnavailable(_) => "EXPORT_UNAVAILABLE",
        }
    }

    /// Whether the same query can succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SqlError::ExportUnavailable(_))
    }

    /// Machine-readable details: which limit, and its value.
    pub fn details(&self) -> Value {
        match self {
            SqlError::RowLimit { max } => json!({ "limit": "rows", "maxRows": max }),
            SqlError::Timeout(d) => json!({ "limit": "timeout", "timeoutMs": d.as_millis() }),
            SqlError::MemoryLimit(b) => json!({ "limit": "memory", "memoryBytes": b }),
            SqlError::TooLong => json!({ "limit": "length", "maxBytes": MAX_SQL_BYTES }),
            SqlError::FunctionNotAllowed(f) => json!({ "function": f }),
            SqlError::NotReadOnly(kind) => json!({ "statement": kind }),
            _ => json!({}),
        }
    }

    fn from_datafusion(e: DataFusionError, limits: &SqlLimits) -> Self {
        let message = e.find_root().strip_backtrace();
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => SqlError::MemoryLimit(limits.memory_bytes),
            DataFusionError::SQL(..) => SqlError::Syntax(message),
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => SqlError::Plan(message),
            DataFusionError::ObjectStore(_)
            | DataFusionError::IoError(_)
            | DataFusionError::ParquetError(_) => SqlError::ExportUnavailable(message),
            _ => SqlError::Execution(message),
        }
    }
}

/// What a query produced: at most the row limit, and whether more rows existed.
#[derive(Debug)]
pub struct SqlResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Runs analysts' SQL over one export root.
#[derive(Clone)]
pub struct SqlEngine {
    root: Root,
    datasets: Vec<ExportSpec>,
    limits: SqlLimits,
    caches: CacheManagerConfig,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Rows per batch inside a query: larger than DataFusion's 8,192, because analysts' queries
/// scan millions of rows and per-batch overheads showed (sql_vs_duckdb).
const BATCH_ROWS: usize = 32 * 1024;

/// Memory for the caches every query shares: Parquet footers, and file statistics.
const METADATA_CACHE_BYTES: usize = 64 * 1024 * 1024;
const STATISTICS_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Caches shared by every query's session. Footers and statistics are keyed by the file
/// and checked against its size and modification time, so a partition the exporter
/// replaced is read afresh; file listings are never cached, so a new partition is seen
/// by the next query.
fn shared_caches() -> CacheManagerConfig {
    let statistics =
        DefaultCache::<TableScopedPath, CachedFileMetadata>::new(STATISTICS_CACHE_BYTES);
    let metadata = DefaultCache::<object_store::path::Path, CachedFileMetadataEntry>::new(
        METADATA_CACHE_BYTES,
    );
    CacheManagerConfig::default()
        .with_file_statistics_cache(Some(Arc::new(statistics)))
        .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES)
        .with_file_metadata_cache(Some(Arc::new(metadata)))
        .with_metadata_cache_limit(METADATA_CACHE_BYTES)
        .with_list_files_cache(None)
        .with_list_files_cache_limit(0)
}

/// Where the engine reads the export.
#[derive(Debug, Clone)]
enum Root {
    Dir(PathBuf),
    /// An object store (S3): registered with each session under its bucket URL.
    Store(ExportRoot),
}

impl SqlEngine {
    /// An engine over the export directory `root`, with every dataset the exporter writes.
    pub fn new(root: impl Into<PathBuf>, limits: SqlLimits) -> Self {
        Self::with_root(Root::Dir(root.into()), limits)
    }

    /// An engine over the export root a setting names: a directory or `s3://bucket/prefix`
    /// (the exporter's `PULSELINE_EXPORT_DIR`; S3 settings from the `AWS_*` variables).
    pub fn open(root: &str, limits: SqlLimits) -> Result<Self, ExportError> {
        if root.starts_with("s3://") {
            Ok(Self::over(ExportRoot::open(root)?, limits))
        } else {
            Ok(Self::new(root, limits))
        }
    }

    /// An engine over an open export root.
    pub fn over(root: ExportRoot, limits: SqlLimits) -> Self {
        let root = match root.bucket() {
            Some(_) => Root::Store(root),
            None => Root::Dir(PathBuf::from(root.location())),
        };
        Self::with_root(root, limits)
    }

    fn with_root(root: Root, limits: SqlLimits) -> Self {
        Self {
            root,
            datasets: pulseline_sinks::export::datasets(),
            limits,
            caches: shared_caches(),
        }
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// The tables a query can name: in a directory, the datasets exported at least once;
    /// in an object store, every dataset (one not exported yet reads as empty).
    pub fn tables(&self) -> Vec<&'static str> {
        self.datasets
            .iter()
            .filter(|d| match &self.root {
                Root::Dir(dir) => dir.join(d.name).is_dir(),
                Root::Store(_) => true,
            })
            .map(|d| d.name)
            .collect()
    }

    /// Runs one read-only statement, returning at most `max_rows` rows (the default when
    /// `None`).
    pub async fn query(&self, sql: &str, max_rows: Option<usize>) -> Result<SqlResult, SqlError> {
        let started = Instant::now();
        let max_rows = self.row_limit(max_rows)?;
        if sql.len() > MAX_SQL_BYTES {
            return Err(SqlError::TooLong);
        }
        check_read_only(sql)?;
        let limits = self.limits;
        let work = async {
            let ctx = self.session()?;
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let frame = ctx.sql_with_options(sql, options).await?;
            // One row more than asked tells whether the answer was cut. EXPLAIN ANALYZE
            // must stay the plan's root, and a plan's description is short anyway.
            let frame = match frame.logical_plan() {
                LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => frame,
                _ => frame.limit(0, Some(max_rows + 1))?,
            };
            frame.collect().await
        };
        let batches = tokio::time::timeout(limits.timeout, work)
            .await
            .map_err(|_| SqlError::Timeout(limits.timeout))?
            .map_err(|e| SqlError::from_datafusion(e, &limits))?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let (batches, rows, truncated) = answer::cut(batches, max_rows);
        Ok(SqlResult {
            schema,
            batches,
            rows,
            truncated,
            elapsed: started.elapsed(),
        })
    }

    fn row_limit(&self, asked: Option<usize>) -> Result<usize, SqlError> {
        let max = self.limits.max_rows;
        match asked {
            None => Ok(DEFAULT_MAX_ROWS.min(max)),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(SqlError::RowLimit { max }),
        }
    }

    /// A session with its own memory pool and every exported dataset registered.
    fn session(&self) -> Result<SessionContext, DataFusionError> {
        // DataFusion's own options can be tuned by `DATAFUSION_*` variables; these are
        // pulseline's defaults for them.
        let mut config = SessionConfig::from_env()?.with_collect_statistics(true);
        if std::env::var_os("DATAFUSION_EXECUTION_BATCH_SIZE").is_none() {
            config = config.with_batch_size(BATCH_ROWS);
        }
        if self.limits.target_partitions > 0 {
            config = config.with_target_partitions(self.limits.target_partitions);
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .with_cache_manager(self.caches.clone())
            .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let statistics = ctx.runtime_env().cache_manager.get_file_statistic_cache();
        if let Root::Store(root) = &self.root
            && let Some((url, store)) = root.bucket()
        {
            ctx.register_object_store(url, store.clone());
        }
        for spec in &self.datasets {
            let url = match &self.root {
                Root::Dir(dir) => {
                    let dir = dir.join(spec.name);
                    if !dir.is_dir() {
                        continue;
                    }
                    format!("{}/", dir.display())
                }
                Root::Store(root) => format!("{}/{}/", root.location(), spec.name),
            };
            let table = dataset_table(spec, &url)?.with_cache(statistics.clone());
            ctx.register_table(spec.name, Arc::new(table))?;
        }
        Ok(ctx)
    }
}

/// A dataset as a listing table: its files' schema (declared, not inferred; strings as
/// views) plus the Hive partition columns.
fn dataset_table(spec: &ExportSpec, url: &str) -> Result<ListingTable, DataFusionError> {
    let mut partitions = Vec::new();
    if spec.metric.is_some() {
        partitions.push(("metric".to_owned(), DataType::Utf8View));
    }
    partitions.push(("date".to_owned(), DataType::Date32));
    let extension = PART_FILE.rsplit_once('.').map_or(".parquet", |(_, e)| e);
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(format!(".{extension}"))
        .with_table_partition_cols(partitions);
    let url = ListingTableUrl::parse(url)?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(with_string_views(&spec.file_schema()));
    ListingTable::try_new(config)
}

/// `schema` with its strings read as string views: Parquet's strings decode into views
/// without a copy, and the short ones (metric codes, categories) compare and hash inline;
/// grouping and counting distinct pseudonyms got about a quarter faster (sql_vs_duckdb).
fn with_string_views(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.data_type() == &DataType::Utf8 {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_limits() {
        let e = SqlEngine::new(
            "/nonexistent",
            SqlLimits {
                max_rows: 50,
                ..SqlLimits::default()
            },
        );
        assert_eq!(e.row_limit(None).unwrap(), 50);
        assert_eq!(e.row_limit(Some(7)).unwrap(), 7);
        assert_eq!(e.row_limit(Some(0)).unwrap_err().code(), "SQL_ROW_LIMIT");
        assert_eq!(e.row_limit(Some(51)).unwrap_err().code(), "SQL_ROW_LIMIT");
    }
}
