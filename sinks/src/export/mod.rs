//! The Parquet export for analysts: pseudonymised copies of the samples and the read
//! models, laid out Hive style (`<root>/<dataset>/metric=<M>/date=<YYYY-MM-DD>/part-0.parquet`,
//! or `date=` only for datasets without a metric) with a `_manifest.json` per dataset.
//!
//! Source of truth: Postgres (the gateway's `sample` table and the read-model tables), not
//! the topics, so the export never depends on read-model versions and always equals the
//! current rows. Each cycle compares, per partition, the table's row count, latest
//! change time and sum of row versions with the manifest and rewrites the partitions that
//! differ *whole* (`root`: renamed into place on a local disk, one PUT on S3), so a crash
//! leaves the old or the new file, never both, never half, and a re-export never appends.
//! The manifest is written last (on S3 conditionally on the version the cycle started
//! from); a crash before it only means the next cycle rewrites the same partitions again.
//!
//! Bounded delay: a correction, deletion or privacy change reaches the files within one
//! export interval (`PULSELINE_EXPORT_INTERVAL_SECS`, default 300 s) plus one cycle's
//! duration.
//!
//! This module reads Postgres and writes the export root; it never writes Postgres.

mod dataset;
mod datasets;
mod partition;
mod pseudonym;
mod root;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use clap::Parser;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, UpdateVersion};
use pulseline_schemas::records::{
    ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};
use pulseline_service::config::{DEFAULT_DATABASE_URL, Environment, env};
use pulseline_service::redact_url;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

pub use dataset::{Blocking, ExportColumn, ExportSpec, Exported, Kind, column};
pub use datasets::Samples;
pub use partition::{ROW_GROUP_ROWS, writer_properties};
pub use pseudonym::{DEV_EXPORT_KEY, Pseudonymizer};
pub use root::{ExportRoot, Seen};

/// Every exported dataset, one line each. A read model joins the export with its
/// `Exported` impl and a line here.
pub fn datasets() -> Vec<ExportSpec> {
    vec![
        Samples::EXPORT,
        RollupUpsert::EXPORT,
        SleepNightUpsert::EXPORT,
        SessionImpactUpsert::EXPORT,
        ProductImpactUpsert::EXPORT,
    ]
}

/// The default export root: a directory under the working directory, next to the local
/// stack's state (`scripts/env.sh` points it at `.stack/export`).
pub const DEFAULT_EXPORT_DIR: &str = "./export";
/// How often the loop exports: the bound on how late a correction reaches the files.
pub const DEFAULT_EXPORT_INTERVAL_SECS: u64 = 300;
/// The name of each dataset's manifest.
pub const MANIFEST: &str = "_manifest.json";
/// The file name of a partition: deterministic, so a rewrite replaces it.
pub const PART_FILE: &str = "part-0.parquet";
/// Marks a file being written; such a file is never read and is removed by the next cycle.
const TMP_MARK: &str = ".tmp-";

/// What can go wrong exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("export store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("manifest of {dataset}: {reason}")]
    Manifest { dataset: String, reason: String },
    /// A declaration the exporter cannot serve (a bug in an `ExportSpec`).
    #[error("dataset declaration: {0}")]
    Declaration(String),
    /// Another exporter wrote the root's manifest during this cycle (object stores only);
    /// the next cycle starts again from what is there.
    #[error("another exporter wrote {path} during this cycle")]
    Concurrent { path: String },
    /// A partition value that cannot be a path segment.
    #[error("partition value of {dataset} is not path-safe (metric codes are [A-Za-z0-9_.-])")]
    UnsafePartition { dataset: String },
}

/// The exporter's settings (`pulseline-export` and `pulseline run`).
#[derive(Clone, Parser)]
#[command(
    name = "pulseline-export",
    about = "pulseline Parquet export for analysts"
)]
pub struct ExportConfig {
    /// Postgres holding the samples and the read models (one database).
    #[arg(long, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// The export root: a local directory (default `./export`) or `s3://bucket/prefix`
    /// (credentials, region and endpoint from the standard `AWS_*` variables).
    #[arg(long, env = "PULSELINE_EXPORT_DIR", default_value = DEFAULT_EXPORT_DIR)]
    pub export_dir: String,

    /// The HMAC key of the pseudonyms (at least 32 bytes). Default: the development key,
    /// which production refuses.
    #[arg(long, env = "PULSELINE_EXPORT_KEY", default_value = DEV_EXPORT_KEY, hide_default_value = true)]
    pub export_key: String,

    /// `development` or `production`; production refuses the development export key.
    #[arg(long = "env", env = env::ENV, value_enum, default_value_t = Environment::Development)]
    pub environment: Environment,

    /// Seconds between export cycles.
    #[arg(long, env = "PULSELINE_EXPORT_INTERVAL_SECS", default_value_t = DEFAULT_EXPORT_INTERVAL_SECS)]
    pub interval_secs: u64,

    /// Export once and exit.
    #[arg(long)]
    pub once: bool,
}

impl ExportConfig {
    /// Development defaults for a database and a directory (tests, `pulseline run`).
    pub fn local(database_url: &str, export_dir: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            export_dir: export_dir.to_owned(),
            export_key: DEV_EXPORT_KEY.to_owned(),
            environment: Environment::Development,
            interval_secs: DEFAULT_EXPORT_INTERVAL_SECS,
            once: true,
        }
    }

    /// Refuses settings the export must not run with; the message names the variable.
    pub fn validate(&self) -> Result<(), ExportError> {
        if self.environment == Environment::Production && self.export_key == DEV_EXPORT_KEY {
            return Err(ExportError::Config(
                "PULSELINE_ENV=production refuses the development export key: set PULSELINE_EXPORT_KEY".into(),
            ));
        }
        Pseudonymizer::new(&self.export_key).map_err(|e| ExportError::Config(e.into()))?;
        if self.interval_secs == 0 {
            return Err(ExportError::Config(
                "PULSELINE_EXPORT_INTERVAL_SECS must be > 0".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.export_key == DEV_EXPORT_KEY {
            "<development default>"
        } else {
            "<redacted>"
        };
        f.debug_struct("ExportConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("export_dir", &self.export_dir)
            .field("export_key", &key)
            .field("environment", &self.environment)
            .field("interval_secs", &self.interval_secs)
            .field("once", &self.once)
            .finish()
    }
}

/// A partition's identity and what the manifest keeps about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionEntry {
    pub metric: Option<String>,
    pub date: NaiveDate,
    /// Rows in the source table (tombstones and blocked rows included) when exported.
    pub source_rows: i64,
    /// Latest change time in the source table when exported (microseconds).
    pub changed_at: Option<i64>,
    /// Sum of the source rows' versions when exported (decimal text).
    pub versions: Option<String>,
    /// Rows in the file (0: no file, everything was deleted or blocked).
    pub rows: u64,
    pub bytes: u64,
}

/// A dataset's manifest: what the files hold and under which key and settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub dataset: String,
    pub signature: String,
    pub key_fingerprint: String,
    pub privacy_digest: String,
    pub exported_at: Option<DateTime<Utc>>,
    /// By relative directory (`metric=M/date=D` or `date=D`).
    pub partitions: BTreeMap<String, PartitionEntry>,
}

/// What one cycle did to one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatasetReport {
    pub dataset: String,
    pub partitions: usize,
    pub rewritten: usize,
    pub removed: usize,
    pub rows_written: u64,
    pub rows_total: u64,
}

/// Writes the export.
#[derive(Debug)]
pub struct Exporter {
    pool: PgPool,
    root: ExportRoot,
    names: Pseudonymizer,
    datasets: Vec<ExportSpec>,
}

fn path_safe(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && v != "."
        && v != ".."
}

fn partition_dir(metric: Option<&str>, date: NaiveDate) -> String {
    match metric {
        Some(m) => format!("metric={m}/date={date}"),
        None => format!("date={date}"),
    }
}

/// What one cycle read of the export root at its start (`Exporter::snapshot`).
#[derive(Debug)]
pub struct CycleSnapshot {
    datasets: Vec<DatasetSnapshot>,
}

/// One dataset's part of a `CycleSnapshot`.
#[derive(Debug)]
struct DatasetSnapshot {
    manifest: Manifest,
    /// The manifest's version (`None`: there was none).
    seen: Seen,
    /// Every file's version, by path (object stores only).
    files: HashMap<String, UpdateVersion>,
}

impl Exporter {
    /// An exporter over an open pool (which must reach the gateway's and the sinks' tables).
    pub fn new(pool: PgPool, config: &ExportConfig) -> Result<Self, ExportError> {
        config.validate()?;
        Ok(Self {
            pool,
            root: ExportRoot::open(&config.export_dir)?,
            names: Pseudonymizer::new(&config.export_key)
                .map_err(|e| ExportError::Config(e.into()))?,
            datasets: datasets(),
        })
    }

    /// Connects to the configured database.
    pub async fn connect(config: &ExportConfig) -> Result<Self, ExportError> {
        config.validate()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&config.database_url)
            .await?;
        Self::new(pool, config)
    }

    /// Writes to `root` instead of the configured one (an object store set up in code).
    pub fn with_root(mut self, root: ExportRoot) -> Self {
        self.root = root;
        self
    }

    /// Replaces the dataset list (tests of one dataset; read models added later).
    pub fn with_datasets(mut self, datasets: Vec<ExportSpec>) -> Self {
        self.datasets = datasets;
        self
    }

    /// One export cycle over every dataset.
    pub async fn export_once(&mut self) -> Result<Vec<DatasetReport>, ExportError> {
        let snapshot = self.snapshot().await?;
        self.export_from(snapshot).await
    }

    /// What a cycle reads of the export root before it writes anything: each dataset's
    /// manifest and the versions of its files. `export_once` is `snapshot` then
    /// `export_from`; they are apart so that a test can let another exporter write in
    /// between, as a slow exporter would.
    pub async fn snapshot(&self) -> Result<CycleSnapshot, ExportError> {
        let mut datasets = Vec::with_capacity(self.datasets.len());
        for spec in &self.datasets {
            self.root.remove_leftovers(spec.name).await?;
            let (manifest, seen) = self.read_manifest(spec).await?;
            let files = self.root.file_versions(spec.name).await?;
            datasets.push(DatasetSnapshot {
                manifest,
                seen,
                files,
            });
        }
        Ok(CycleSnapshot { datasets })
    }

    /// The cycle after `snapshot`: every write is conditional on what it read.
    pub async fn export_from(
        &mut self,
        snapshot: CycleSnapshot,
    ) -> Result<Vec<DatasetReport>, ExportError> {
        let digest = self.privacy_digest().await?;
        let mut reports = Vec::new();
        for (spec, read) in self.datasets.clone().into_iter().zip(snapshot.datasets) {
            let started = Instant::now();
            let report = self.export_dataset(&spec, &digest, read).await?;
            tracing::info!(
                dataset = spec.name,
                partitions = report.partitions,
                rewritten = report.rewritten,
                removed = report.removed,
                rows_written = report.rows_written,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "export cycle"
            );
            reports.push(report);
        }
        Ok(reports)
    }

    /// Exports every `interval` until `stop` resolves; a failed cycle is logged and
    /// retried at the next tick (the files stay as the last good cycle left them).
    pub async fn run(mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    if let Err(e) = self.export_once().await {
                        tracing::warn!(error = %e, "export cycle failed; retrying at the next interval");
                    }
                }
            }
        }
    }

    /// A digest of every user's blocked metrics: when it changes, every partition is
    /// rewritten (privacy changes are rare; a per-user diff is not worth its complexity).
    async fn privacy_digest(&self) -> Result<String, ExportError> {
        let row = sqlx::query(
            "SELECT md5(coalesce(string_agg(user_id::text || ':' || \
             array_to_string(blocked_metrics, ','), ';' ORDER BY user_id), '')) FROM user_privacy",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<String, _>(0)?)
    }

    fn manifest_path(spec: &ExportSpec) -> StorePath {
        StorePath::from(format!("{}/{MANIFEST}", spec.name))
    }

    /// The dataset's manifest and the version read (for the conditional write at the end).
    async fn read_manifest(&self, spec: &ExportSpec) -> Result<(Manifest, Seen), ExportError> {
        let Some((bytes, seen)) = self.root.get(&Self::manifest_path(spec)).await? else {
            return Ok((Manifest::default(), None));
        };
        let manifest = serde_json::from_slice(&bytes).map_err(|e| ExportError::Manifest {
            dataset: spec.name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok((manifest, seen))
    }

    async fn export_dataset(
        &mut self,
        spec: &ExportSpec,
        privacy_digest: &str,
        read: DatasetSnapshot,
    ) -> Result<DatasetReport, ExportError> {
        let DatasetSnapshot {
            manifest: old,
            seen,
            files,
        } = read;
        let key_fingerprint = self.names.key_fingerprint();
        let signature = spec.signature();
        let rewrite_all = old.signature != signature
            || old.key_fingerprint != key_fingerprint
            || old.privacy_digest != privacy_digest;

        // The partitions as the source table holds them now.
        let mut current: BTreeMap<String, PartitionEntry> = BTreeMap::new();
        let rows = sqlx::query(sqlx::AssertSqlSafe(spec.fingerprint_sql()))
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let metric: Option<String> = row.try_get(0)?;
            let Some(date) = row.try_get::<Option<NaiveDate>, _>(1)? else {
                continue;
            };
            if metric.as_deref().is_some_and(|m| !path_safe(m)) {
                return Err(ExportError::UnsafePartition {
                    dataset: spec.name.to_owned(),
                });
            }
            let changed: Option<DateTime<Utc>> = row.try_get(3)?;
            current.insert(
                partition_dir(metric.as_deref(), date),
                PartitionEntry {
                    metric,
                    date,
                    source_rows: row.try_get(2)?,
                    changed_at: changed.map(|t| t.timestamp_micros()),
                    versions: row.try_get(4)?,
                    rows: 0,
                    bytes: 0,
                },
            );
        }

        let changed: Vec<String> = current
            .iter()
            .filter(|(dir, now)| {
                rewrite_all
                    || old.partitions.get(*dir).is_none_or(|was| {
                        (was.source_rows, was.changed_at, &was.versions)
                            != (now.source_rows, now.changed_at, &now.versions)
                    })
            })
            .map(|(dir, _)| dir.clone())
            .collect();
        let removed: Vec<String> = old
            .partitions
            .keys()
            .filter(|d| !current.contains_key(*d))
            .cloned()
            .collect();

        let mut report = DatasetReport {
            dataset: spec.name.to_owned(),
            partitions: current.len(),
            rewritten: changed.len(),
            removed: removed.len(),
            ..DatasetReport::default()
        };

        // Unchanged partitions keep their manifest entries.
        for (dir, entry) in current.iter_mut() {
            if let Some(was) = old.partitions.get(dir) {
                entry.rows = was.rows;
                entry.bytes = was.bytes;
            }
        }

        if !changed.is_empty() {
            let written = self
                .write_partitions(spec, &changed, &current, &files)
                .await?;
            for dir in &changed {
                let (rows, bytes) = written.get(dir).copied().unwrap_or((0, 0));
                if rows == 0 {
                    // Everything in it was deleted or blocked: no file.
                    self.delete_if_present(&StorePath::from(format!(
                        "{}/{dir}/{PART_FILE}",
                        spec.name
                    )))
                    .await?;
                }
                if let Some(e) = current.get_mut(dir) {
                    e.rows = rows;
                    e.bytes = bytes;
                }
                report.rows_written += rows;
            }
        }
        for dir in &removed {
            self.delete_if_present(&StorePath::from(format!("{}/{dir}/{PART_FILE}", spec.name)))
                .await?;
        }
        report.rows_total = current.values().map(|e| e.rows).sum();

        let manifest = Manifest {
            dataset: spec.name.to_owned(),
            signature,
            key_fingerprint,
            privacy_digest: privacy_digest.to_owned(),
            exported_at: Some(Utc::now()),
            partitions: current,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| ExportError::Manifest {
            dataset: spec.name.to_owned(),
            reason: e.to_string(),
        })?;
        self.root
            .replace_if_unchanged(&Self::manifest_path(spec), bytes, seen)
            .await?;
        Ok(report)
    }

    async fn delete_if_present(&self, path: &StorePath) -> Result<(), ExportError> {
        match self.root.store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams the changed partitions' rows (ordered by partition) and writes one file per
    /// partition. Returns (rows, bytes) per written partition.
    async fn write_partitions(
        &mut self,
        spec: &ExportSpec,
        changed: &[String],
        current: &BTreeMap<String, PartitionEntry>,
        files: &HashMap<String, UpdateVersion>,
    ) -> Result<BTreeMap<String, (u64, u64)>, ExportError> {
        let mut metrics = Vec::with_capacity(changed.len());
        let mut dates = Vec::with_capacity(changed.len());
        for dir in changed {
            if let Some(e) = current.get(dir) {
                metrics.push(e.metric.clone().unwrap_or_default());
                dates.push(e.date);
            }
        }
        // Built from the static declaration only; values travel as bound parameters.
        let sql = spec.rows_sql();
        let pool = self.pool.clone();
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&metrics)
            .bind(&dates)
            .fetch(&pool);
        let mut written = BTreeMap::new();
        let mut open: Option<(String, partition::PartitionFile)> = None;
        while let Some(row) = rows.try_next().await? {
            let metric: Option<String> = row.try_get(0)?;
            let date: NaiveDate = row.try_get(1)?;
            let dir = partition_dir(metric.as_deref(), date);
            if open.as_ref().is_none_or(|(d, _)| *d != dir) {
                if let Some((d, file)) = open.take() {
                    written.insert(
                        d.clone(),
                        self.finish_partition(spec, &d, file, files).await?,
                    );
                }
                open = Some((dir, partition::PartitionFile::new(*spec)?));
            }
            if let Some((_, file)) = open.as_mut() {
                file.push(&row, &mut self.names)?;
            }
        }
        if let Some((d, file)) = open.take() {
            written.insert(
                d.clone(),
                self.finish_partition(spec, &d, file, files).await?,
            );
        }
        Ok(written)
    }

    async fn finish_partition(
        &self,
        spec: &ExportSpec,
        dir: &str,
        file: partition::PartitionFile,
        files: &HashMap<String, UpdateVersion>,
    ) -> Result<(u64, u64), ExportError> {
        let rows = file.rows();
        let bytes = file.finish()?;
        let len = bytes.len() as u64;
        let path = format!("{}/{dir}/{PART_FILE}", spec.name);
        let seen = files.get(&path).cloned();
        self.root
            .replace_if_unchanged(&StorePath::from(path), bytes, seen)
            .await?;
        Ok((rows, len))
    }
}
