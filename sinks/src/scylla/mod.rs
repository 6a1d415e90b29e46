//! The ScyllaDB read store (scale-out): one CQL table per read model (`tables`), plus
//! `sink_progress`, `sink_offset` and `schema_migrations`, in one keyspace. Opened by
//! `crate::open("scylla://host:port[,host:port]/keyspace")`.
//!
//! Scylla has no transaction over rows, progress and offsets, so a batch is applied as
//! idempotent, order-free writes in a fixed order (`plan` explains the timestamps):
//! 1. the stored offsets are read and compared with the batch's `expected` ones (a moved
//!    offset refuses the batch, writing nothing, as in Postgres);
//! 2. rows, in unlogged batches of one partition and one write timestamp (the version);
//! 3. progress, each cell with its applied sequence as timestamp (the highest wins);
//! 4. the offsets, last.
//!
//! A crash between 2 and 4 leaves the offsets where they were: the batch is read again
//! and written again with the same timestamps, which changes nothing (no double apply);
//! nothing is skipped because an offset only moves after its rows and progress are
//! stored. Two instances briefly holding one partition (a rebalance) both write the same
//! idempotent cells. What this store does not give is Postgres's atomic visibility: a
//! reader may see a batch's rows before its progress (freshness then under-reports).
//!
//! It owns its keyspace's tables and nothing else. Every read model is kept, those joining
//! two input streams too: `plan::write_timestamp` maps a version pair to one timestamp
//! that orders a row's versions as the pair does.

mod migrate;
pub mod plan;
pub mod settings;
pub mod tables;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use openssl::ssl::{SslConnector, SslMethod};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::{OpenSsl010Config, Session};
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{ExecutionError, PrepareError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch as CqlBatch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use tokio::sync::OnceCell;
use uuid::Uuid;

use pulseline_schemas::{AppliedSeqs, Stream};

use crate::error::SinkError;
use crate::sink::{Applied, Batch, OffsetScope, Sink, SinkFor};
pub use plan::{RetryPolicy, write_timestamp};
pub use settings::{ReadStoreKind, ReadStoreSettings};
pub use tables::CqlReadModel;

/// The contact points, as deployment files set them (`host:port[,host:port]`).
pub const SCYLLA_URI_VAR: &str = "PULSELINE_SCYLLA_URI";
/// The keyspace the sink and the query API use (default `pulseline`).
pub const SCYLLA_KEYSPACE_VAR: &str = "PULSELINE_SCYLLA_KEYSPACE";
/// The keyspace's replication factor when the migration creates it (default 3).
pub const SCYLLA_REPLICATION_FACTOR_VAR: &str = "PULSELINE_SCYLLA_REPLICATION_FACTOR";
/// `true`: connect over TLS, each node's certificate verified against its IP address and
/// the system's CAs (or `PULSELINE_SCYLLA_TLS_CA_FILE`'s).
pub const SCYLLA_TLS_VAR: &str = "PULSELINE_SCYLLA_TLS";
/// A PEM file of the CA(s) the nodes' certificates must chain to; implies TLS.
pub const SCYLLA_TLS_CA_FILE_VAR: &str = "PULSELINE_SCYLLA_TLS_CA_FILE";

/// Rows per unlogged batch at most: Scylla warns above a few kilobytes per batch.
const MAX_BATCH_ROWS: usize = 50;
/// Statements of one batch in flight at once.
const CONCURRENCY: usize = 16;
/// How long connecting (and the protocol handshake) may take at start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows per page of a read.
const READ_PAGE_ROWS: i32 = 1000;

/// Where a `scylla://` URL points: `scylla://[user:password@]host:port[,host:port]/
/// keyspace[?replication_factor=N][&tls=true][&tls_ca_file=PATH]` (the path
/// percent-encoded). `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaTarget {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    /// `Some` when the connection is TLS.
    pub tls: Option<ScyllaTls>,
    credentials: Option<(String, String)>,
}

/// How TLS connections verify the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScyllaTls {
    /// The CA(s) to trust instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ScyllaTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaTarget")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication_factor", &self.replication_factor)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl ScyllaTarget {
    /// Parses a `scylla://` (or `cql://`) URL; the error never repeats the URL (it may
    /// hold a password).
    pub fn parse(url: &str) -> Result<Self, SinkError> {
        let bad = |why: &str| SinkError::Config(format!("scylla URL: {why}"));
        let rest = url
            .strip_prefix("scylla://")
            .or_else(|| url.strip_prefix("cql://"))
            .ok_or_else(|| bad("must start with scylla://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, keyspace) = rest
            .split_once('/')
            .ok_or_else(|| bad("names no keyspace (scylla://host:port/keyspace)"))?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("user without password"))?;
                (Some((user.to_owned(), password.to_owned())), hosts)
            }
            None => (None, authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() || nodes.iter().any(|n| !n.contains(':')) {
            return Err(bad("every contact point must be host:port"));
        }
        if !is_identifier(keyspace) {
            return Err(bad(
                "the keyspace must be lower-case letters, digits and _ (at most 48)",
            ));
        }
        let mut replication_factor = 3;
        let mut tls = None;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "replication_factor" => {
                    replication_factor = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("replication_factor must be a positive integer"))?;
                }
                "tls" => match &*value {
                    "true" => tls = Some(tls.unwrap_or_default()),
                    "false" => {}
                    _ => return Err(bad("tls must be true or false")),
                },
                "tls_ca_file" if !value.is_empty() => {
                    tls = Some(ScyllaTls {
                        ca_file: Some(value.into_owned().into()),
                    });
                }
                _ => {
                    return Err(bad(
                        "unknown query parameter (replication_factor, tls, tls_ca_file)",
                    ));
                }
            }
        }
        Ok(Self {
            nodes,
            keyspace: keyspace.to_owned(),
            replication_factor,
            tls,
            credentials,
        })
    }
}

/// The driver's TLS context: OpenSSL's client defaults (peer verification on; the driver
/// checks each node's certificate against the node's IP address), trusting `ca_file` when
/// given, else the system's CAs. A CA file that cannot be read fails at start.
fn tls_context(tls: &ScyllaTls) -> Result<OpenSsl010Config, SinkError> {
    let tls_error = |e: &dyn std::fmt::Display| SinkError::Config(format!("scylla TLS: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_error(&e))?;
    if let Some(ca) = &tls.ca_file {
        let fail = |e: &dyn std::fmt::Display| {
            SinkError::Config(format!("{SCYLLA_TLS_CA_FILE_VAR} {}: {e}", ca.display()))
        };
        if !ca.is_file() {
            return Err(fail(&"no such file"));
        }
        builder.set_ca_file(ca).map_err(|e| fail(&e))?;
    }
    Ok(OpenSsl010Config::new(builder))
}

fn is_identifier(s: &str) -> bool {
    (1..=48).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The store's metrics (statements, retries, latency): `register` puts them on the
/// sink's `/metrics` (`pulseline_sink_scylla_*`).
#[derive(Debug, Clone)]
pub struct ScyllaMetrics {
    statements: IntCounterVec,
    retries: IntCounterVec,
    seconds: HistogramVec,
}

impl ScyllaMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            statements: IntCounterVec::new(
                Opts::new(
                    "scylla_statements_total",
                    "CQL statements and batches by kind and outcome",
                ),
                &["kind", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "scylla_retries_total",
                    "Statements retried after a retryable failure",
                ),
                &["kind"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "scylla_statement_duration_seconds",
                    "Time per statement or batch, retries included",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
                &["kind"],
            )?,
        })
    }

    /// Adds these metrics to `registry` (the sink's).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.statements.clone()))?;
        registry.register(Box::new(self.retries.clone()))?;
        registry.register(Box::new(self.seconds.clone()))
    }

    /// How many statements of `kind` ended with `outcome` (`ok`, `error`).
    pub fn statements(&self, kind: &str, outcome: &str) -> u64 {
        self.statements.with_label_values(&[kind, outcome]).get()
    }

    pub fn retries(&self, kind: &str) -> u64 {
        self.retries.with_label_values(&[kind]).get()
    }
}

/// The prepared statements every read model shares.
#[derive(Debug)]
struct Shared {
    insert_progress: PreparedStatement,
    insert_offset: PreparedStatement,
    select_offsets: PreparedStatement,
}

/// The Scylla implementation of `Sink`.
#[derive(Debug)]
pub struct ScyllaSink {
    session: Arc<Session>,
    target: ScyllaTarget,
    shared: OnceCell<Shared>,
    /// Per read model (by name): its table migrated and its insert prepared, once.
    models: Mutex<HashMap<&'static str, Arc<OnceCell<PreparedStatement>>>>,
    /// Reads prepared once per statement text (the query API's few fixed reads).
    reads: Mutex<HashMap<String, PreparedStatement>>,
    retry: RetryPolicy,
    metrics: ScyllaMetrics,
}

/// Whether a failed statement can succeed if tried again (a timeout, an overloaded or
/// unreachable node), as opposed to a statement Scylla will always refuse.
pub(crate) fn is_retryable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::BadQuery(_) | ExecutionError::UseKeyspaceError(_) => false,
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt })
        | ExecutionError::LastAttemptError(first_attempt) => attempt_is_retryable(first_attempt),
        _ => true,
    }
}

fn attempt_is_retryable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => db.can_speculative_retry(),
        RequestAttemptError::SerializationError(_) => false,
        _ => true,
    }
}

fn execution_error(what: &str, e: &ExecutionError) -> SinkError {
    SinkError::Scylla {
        message: format!("{what}: {e}"),
        retryable: is_retryable(e),
    }
}

impl ScyllaSink {
    /// Connects to the contact points (round-robin over the nodes: no token awareness,
    /// which needs a partitioner not every CQL server reports); fails fast if none
    /// answers. Writes and offset reads use LOCAL_QUORUM.
    pub async fn connect(target: ScyllaTarget) -> Result<Self, SinkError> {
        let policy = DefaultPolicy::builder().token_aware(false).build();
        let profile = ExecutionProfile::builder()
            .load_balancing_policy(policy)
            .consistency(Consistency::LocalQuorum)
            .request_timeout(Some(Duration::from_secs(10)))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&target.nodes)
            .connection_timeout(Duration::from_secs(5))
            // The store reads no schema metadata (no token awareness, statements built
            // from declarations): not fetching it spares the cluster and the start.
            .fetch_schema_metadata(false)
            .default_execution_profile_handle(profile.into_handle())
            // Offsets are written with client-side, monotonic timestamps (rows and
            // progress carry their own).
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
        if let Some((user, password)) = &target.credentials {
            builder = builder.user(user, password);
        }
        if let Some(tls) = &target.tls {
            builder = builder.tls_context(Some(tls_context(tls)?));
        }
        // The builder's own timeout covers the TCP connect only; a node that accepts and
        // then never answers (a TLS client at a plain-text port, a stuck proxy) would
        // hold the start forever.
        let session = tokio::time::timeout(START_TIMEOUT, builder.build())
            .await
            .map_err(|_| SinkError::Scylla {
                message: format!(
                    "connecting to {:?}: no answer within {START_TIMEOUT:?} (TLS on one side only?)",
                    target.nodes
                ),
                retryable: true,
            })?
            .map_err(|e| SinkError::Scylla {
                message: format!("connecting to {:?}: {e}", target.nodes),
                retryable: true,
            })?;
        Ok(Self {
            session: Arc::new(session),
            target,
            shared: OnceCell::new(),
            models: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            retry: RetryPolicy::default(),
            metrics: ScyllaMetrics::new()
                .map_err(|e| SinkError::Startup(format!("scylla metrics: {e}")))?,
        })
    }

    /// Opens the store a `scylla://` URL names and runs its base migration.
    pub async fn open(url: &str) -> Result<Self, SinkError> {
        let sink = Self::connect(ScyllaTarget::parse(url)?).await?;
        sink.migrate().await?;
        Ok(sink)
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.target.keyspace
    }

    pub fn metrics(&self) -> &ScyllaMetrics {
        &self.metrics
    }

    /// Creates the keyspace and the shared tables (idempotent, versioned: see `migrate`).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        migrate::run(self, &migrate::base(&self.target)).await
    }

    /// Creates `M`'s table (its own migration version) and prepares its insert.
    pub async fn migrate_model<M: CqlReadModel>(&self) -> Result<(), SinkError> {
        self.model_insert::<M>().await.map(|_| ())
    }

    /// Runs one CQL statement (no values) with the store's retries; for migrations.
    async fn run_ddl(&self, kind: &'static str, cql: &str) -> Result<(), SinkError> {
        self.retried(kind, || async move {
            self.session.query_unpaged(cql, ()).await.map(|_| ())
        })
        .await
    }

    /// `op` with retries, counted and timed under `kind`.
    async fn retried<T, F, Fut>(&self, kind: &'static str, mut op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ExecutionError>>,
    {
        let started = Instant::now();
        let out = plan::with_retries(
            self.retry,
            is_retryable,
            |_| self.metrics.retries.with_label_values(&[kind]).inc(),
            &mut op,
        )
        .await;
        self.metrics
            .seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .statements
            .with_label_values(&[kind, outcome])
            .inc();
        out.map_err(|e| execution_error(kind, &e))
    }

    async fn prepare(&self, cql: String) -> Result<PreparedStatement, SinkError> {
        self.retried("prepare", || async {
            self.session
                .prepare(cql.clone())
                .await
                .map_err(ExecutionError::from)
        })
        .await
    }

    async fn shared(&self) -> Result<&Shared, SinkError> {
        self.shared
            .get_or_try_init(|| async {
                let ks = &self.target.keyspace;
                Ok::<_, SinkError>(Shared {
                    insert_progress: self
                        .prepare(format!(
                            "INSERT INTO {ks}.sink_progress (read_model, user_id, stream, applied_seq) \
                             VALUES (?, ?, ?, ?)"
                        ))
                        .await?,
                    insert_offset: self
                        .prepare(format!(
                            "INSERT INTO {ks}.sink_offset (consumer, topic, partition, next_offset) \
                             VALUES (?, ?, ?, ?)"
                        ))
                        .await?,
                    select_offsets: self
                        .prepare(format!(
                            "SELECT partition, next_offset FROM {ks}.sink_offset \
                             WHERE consumer = ? AND topic = ?"
                        ))
                        .await?,
                })
            })
            .await
    }

    async fn model_insert<M: CqlReadModel>(&self) -> Result<PreparedStatement, SinkError> {
        let cell = {
            let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
            models.entry(M::NAME).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            migrate::run(self, &[migrate::model::<M>(&self.target)?]).await?;
            self.prepare(tables::insert_row::<M>(&self.target.keyspace))
                .await
        })
        .await
        .cloned()
    }

    /// Every stored offset of a scope, by partition.
    async fn offsets(&self, scope: &OffsetScope) -> Result<HashMap<i32, i64>, SinkError> {
        let shared = self.shared().await?;
        let result = self
            .retried("select_offsets", || {
                self.session.execute_unpaged(
                    &shared.select_offsets,
                    (scope.consumer.as_str(), scope.topic.as_str()),
                )
            })
            .await?;
        let rows = result.into_rows_result().map_err(|e| SinkError::Scylla {
            message: format!("reading offsets: {e}"),
            retryable: false,
        })?;
        let fail = |e: &dyn std::fmt::Display| SinkError::Scylla {
            message: format!("reading offsets: {e}"),
            retryable: false,
        };
        rows.rows::<(i32, i64)>()
            .map_err(|e| fail(&e))?
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| fail(&e))
    }

    async fn apply_batch<M: CqlReadModel>(
        &self,
        scope: &OffsetScope,
        batch: &Batch<M>,
    ) -> Result<Applied, SinkError> {
        let insert = self.model_insert::<M>().await?;
        let shared = self.shared().await?;

        // 1. The offsets must be the ones the batch was read from.
        let stored = self.offsets(scope).await?;
        for span in &batch.spans {
            if stored.get(&span.partition).copied() != span.expected {
                return Err(SinkError::OffsetConflict {
                    topic: scope.topic.clone(),
                    partition: span.partition,
                    expected: span.expected,
                });
            }
        }

        // 2. Rows: one unlogged batch per partition and write timestamp.
        let groups = plan::row_groups(batch, MAX_BATCH_ROWS);
        let written: usize = groups.iter().map(|g| g.rows.len()).sum();
        let mut cql_batches = Vec::with_capacity(groups.len());
        for group in &groups {
            let mut cql = CqlBatch::new(BatchType::Unlogged);
            let mut values: Vec<Vec<Option<CqlValue>>> = Vec::with_capacity(group.rows.len());
            for row in &group.rows {
                cql.append_statement(insert.clone());
                values.push(tables::row_values::<M>(&row.columns).map_err(|e| {
                    SinkError::Config(format!("{} row cannot be written: {e}", M::NAME))
                })?);
            }
            cql.set_timestamp(Some(group.timestamp));
            cql_batches.push((cql, values));
        }
        // Futures collected first: a lazy `map` in the stream trips the compiler's
        // higher-ranked lifetime check for the boxed `Send` future.
        let writes: Vec<_> = cql_batches
            .iter()
            .map(|(cql, values)| self.retried("row_batch", move || self.session.batch(cql, values)))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await?;

        // 3. Progress: the applied sequence is the cell's timestamp, so the highest wins.
        let progress = plan::progress_writes(batch);
        let writes: Vec<_> = progress
            .iter()
            .map(|&(user, stream, seq)| {
                let mut statement = shared.insert_progress.clone();
                statement.set_timestamp(Some(seq));
                async move {
                    self.retried("progress", || {
                        self.session
                            .execute_unpaged(&statement, (M::NAME, user, stream, seq))
                    })
                    .await
                }
            })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await?;

        // 4. The offsets, last.
        for span in &batch.spans {
            self.retried("offset", || {
                self.session.execute_unpaged(
                    &shared.insert_offset,
                    (
                        scope.consumer.as_str(),
                        scope.topic.as_str(),
                        span.partition,
                        span.next_offset,
                    ),
                )
            })
            .await?;
        }
        let all = batch.rows().count();
        Ok(Applied {
            rows_applied: written as u64,
            stale_skipped: (all - written) as u64,
        })
    }

    /// One user's rows of `M`, every column, read page by page (`page_size` rows a page):
    /// the tests' view of what was written, and their check of paging.
    pub async fn user_rows<M: CqlReadModel>(
        &self,
        user: Uuid,
        page_size: i32,
    ) -> Result<Vec<scylla::value::Row>, SinkError> {
        self.model_insert::<M>().await?;
        let names: Vec<&str> = tables::columns::<M>().map(|c| c.name).collect();
        let cql = format!(
            "SELECT {} FROM {}.{} WHERE user_id = ?",
            names.join(", "),
            self.target.keyspace,
            M::TABLE
        );
        self.select_paged(&cql, (user,), page_size).await
    }

    /// Every row a read selects, page by page (`READ_PAGE_ROWS` a page), as `T`: the query
    /// API's reads. `cql` is prepared on first use and kept; a read is not retried (the
    /// caller answers 503 and its client retries).
    pub async fn select<T>(&self, cql: &str, values: impl SerializeRow) -> Result<Vec<T>, SinkError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.select_paged(cql, values, READ_PAGE_ROWS).await
    }

    /// `select` with `page_size` rows a page.
    pub async fn select_paged<T>(
        &self,
        cql: &str,
        values: impl SerializeRow,
        page_size: i32,
    ) -> Result<Vec<T>, SinkError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let started = Instant::now();
        let out = self.select_unmetered(cql, values, page_size).await;
        self.metrics
            .seconds
            .with_label_values(&["read"])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .statements
            .with_label_values(&["read", outcome])
            .inc();
        out
    }

    async fn select_unmetered<T>(
        &self,
        cql: &str,
        values: impl SerializeRow,
        page_size: i32,
    ) -> Result<Vec<T>, SinkError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let cached = self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cql)
            .cloned();
        let mut statement = match cached {
            Some(s) => s,
            None => {
                let s = self.prepare(cql.to_owned()).await?;
                self.reads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(cql.to_owned(), s.clone());
                s
            }
        };
        statement.set_page_size(page_size.max(1));
        let fail = |e: &dyn std::fmt::Display| SinkError::Scylla {
            message: format!("read: {e}"),
            retryable: true,
        };
        let pager = self
            .session
            .execute_iter(statement, values)
            .await
            .map_err(|e| fail(&e))?;
        // A type mismatch is the caller's bug, not worth a retry.
        let rows = pager.rows_stream::<T>().map_err(|e| SinkError::Scylla {
            message: format!("read: {e}"),
            retryable: false,
        })?;
        rows.try_collect().await.map_err(|e| fail(&e))
    }

    /// The applied sequence of each stream of `read_model` for `user` (0 where the sink
    /// has stored none): the `appliedSeq` of the query API's freshness.
    pub async fn applied_seqs(
        &self,
        read_model: &str,
        user: Uuid,
    ) -> Result<AppliedSeqs, SinkError> {
        let cql = format!(
            "SELECT stream, applied_seq FROM {}.sink_progress WHERE read_model = ? AND user_id = ?",
            self.target.keyspace
        );
        let rows: Vec<(i32, i64)> = self.select(&cql, (read_model, user)).await?;
        let mut applied = AppliedSeqs::default();
        for (stream, seq) in rows {
            if stream == i32::from(Stream::Samples.id()) {
                applied.samples = seq;
            } else if stream == i32::from(Stream::Events.id()) {
                applied.events = seq;
            }
        }
        Ok(applied)
    }
}

impl Sink for ScyllaSink {
    fn engine(&self) -> &'static str {
        "scylla"
    }

    fn stored_offsets<'a>(
        &'a self,
        scope: &'a OffsetScope,
        partitions: &'a [i32],
    ) -> BoxFuture<'a, Result<HashMap<i32, i64>, SinkError>> {
        Box::pin(async move {
            let mut all = self.offsets(scope).await?;
            all.retain(|p, _| partitions.contains(p));
            Ok(all)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.retried("ping", || {
                self.session
                    .query_unpaged("SELECT key FROM system.local", ())
            })
            .await
            .map(|_| ())
        })
    }
}

impl<M: CqlReadModel> SinkFor<M> for ScyllaSink {
    fn apply<'a>(
        &'a self,
        scope: &'a OffsetScope,
        batch: &'a Batch<M>,
    ) -> BoxFuture<'a, Result<Applied, SinkError>> {
        Box::pin(self.apply_batch(scope, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t =
            ScyllaTarget::parse("scylla://a:9042,b:9042/pulseline?replication_factor=1").unwrap();
        assert_eq!(t.nodes, vec!["a:9042", "b:9042"]);
        assert_eq!(
            (t.keyspace.as_str(), t.replication_factor),
            ("pulseline", 1)
        );
        let t = ScyllaTarget::parse("scylla://u:s3cret@h:9042/ks").unwrap();
        assert_eq!(t.replication_factor, 3);
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in [
            "scylla://h:9042",
            "scylla://h/ks",
            "scylla://h:9042/Bad-Name",
            "scylla://h:9042/ks?replication_factor=0",
            "scylla://h:9042/ks?consistency=one",
            "postgres://h/ks",
        ] {
            let e = ScyllaTarget::parse(bad).unwrap_err();
            assert!(matches!(e, SinkError::Config(_)), "{bad}");
        }
        let e = ScyllaTarget::parse("scylla://u:s3cret@h/ks").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn tls_is_off_unless_asked_for_and_a_ca_file_implies_it() {
        assert_eq!(ScyllaTarget::parse("scylla://h:9042/ks").unwrap().tls, None);
        let t = ScyllaTarget::parse("scylla://h:9042/ks?tls=true").unwrap();
        assert_eq!(t.tls, Some(ScyllaTls::default()));
        let t =
            ScyllaTarget::parse("scylla://h:9042/ks?tls_ca_file=%2Fetc%2Fscylla%20ca.pem").unwrap();
        assert_eq!(
            t.tls.and_then(|t| t.ca_file),
            Some("/etc/scylla ca.pem".into())
        );
        assert!(ScyllaTarget::parse("scylla://h:9042/ks?tls=yes").is_err());
    }

    #[test]
    fn an_unreadable_ca_file_fails_at_start_naming_the_setting() {
        let tls = ScyllaTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let e = tls_context(&tls).err().expect("refused").to_string();
        assert!(
            e.contains("PULSELINE_SCYLLA_TLS_CA_FILE /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let e = tls_context(&ScyllaTls {
            ca_file: Some(garbage),
        })
        .err()
        .expect("refused");
        assert!(matches!(e, SinkError::Config(_)), "{e}");
        assert!(tls_context(&ScyllaTls::default()).is_ok(), "system CAs");
    }

    #[test]
    fn timeouts_and_overload_are_retried_bad_statements_are_not() {
        use scylla::errors::DbError;
        let db = |e: DbError| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "why".into()))
        };
        assert!(is_retryable(&ExecutionError::RequestTimeout(
            Duration::from_secs(1)
        )));
        assert!(is_retryable(&db(DbError::Overloaded)));
        assert!(is_retryable(&db(DbError::IsBootstrapping)));
        assert!(!is_retryable(&db(DbError::SyntaxError)));
        assert!(!is_retryable(&db(DbError::Invalid)));
        assert!(!is_retryable(&ExecutionError::PrepareError(
            PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(DbError::SyntaxError, "x".into()),
            }
        )));
        let e = execution_error("row_batch", &db(DbError::Overloaded));
        assert!(e.is_retryable());
        assert!(e.to_string().starts_with("scylla: row_batch:"), "{e}");
    }
}
