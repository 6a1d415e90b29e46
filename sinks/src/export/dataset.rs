//! What an exported dataset is: a declaration (`ExportSpec`) of where its rows live in
//! Postgres, how they partition, and which columns leave the building, and how. The
//! exporter is generic over it; a read model joins the export with one `Exported` impl
//! and one line in `crate::export::datasets()`.
//!
//! A declaration never names an identifying column as plain output: the user id and
//! product ids only leave as `Kind::Pseudonym` (keyed HMAC), and free text, device names,
//! source record ids and metadata are simply not declared.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// How a column is read from Postgres and written to Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text (or `uuid::text`) identifier, written as hex(HMAC-SHA-256(export key, text)).
    Pseudonym,
    /// `text`.
    Text,
    /// `double precision`.
    Float,
    /// `integer`.
    Int,
    /// `bigint`.
    BigInt,
    /// `boolean`.
    Bool,
    /// `date`.
    Date,
    /// `timestamptz`: a UTC instant (Parquet timestamp, microseconds, adjusted to UTC).
    Instant,
    /// `timestamp`: a local wall-clock time (Parquet timestamp, microseconds, no zone).
    LocalTime,
}

impl Kind {
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Kind::Pseudonym | Kind::Text => DataType::Utf8,
            Kind::Float => DataType::Float64,
            Kind::Int => DataType::Int32,
            Kind::BigInt => DataType::Int64,
            Kind::Bool => DataType::Boolean,
            Kind::Date => DataType::Date32,
            Kind::Instant => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::LocalTime => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }
}

/// One exported column: its Parquet name and the SQL expression (over the source table,
/// aliased `t`) that yields it.
#[derive(Debug, Clone, Copy)]
pub struct ExportColumn {
    pub name: &'static str,
    pub sql: &'static str,
    pub kind: Kind,
}

/// A column declaration, `const`-friendly.
pub const fn column(name: &'static str, sql: &'static str, kind: Kind) -> ExportColumn {
    ExportColumn { name, sql, kind }
}

/// Which of a user's blocked metrics (`user_privacy.blocked_metrics`) withhold a row.
#[derive(Debug, Clone, Copy)]
pub enum Blocking {
    /// The row's own metric (the partition's `metric` expression).
    ByMetric,
    /// A fixed metric the whole dataset derives from (sleep nights from `SLEEP_STAGE`).
    Metric(&'static str),
}

/// Everything the exporter needs to know about one dataset.
///
/// The source table must have `user_id uuid` and `deleted boolean`; rows with
/// `deleted = true` (tombstones) are never exported.
#[derive(Debug, Clone, Copy)]
pub struct ExportSpec {
    /// The directory under the export root, and the SQL table name analysts use.
    pub name: &'static str,
    /// The Postgres table (the source of truth).
    pub table: &'static str,
    /// SQL of the `metric` partition value; `None`: the dataset partitions by date only.
    pub metric: Option<&'static str>,
    /// SQL of the `date` partition value (a `date`).
    pub date: &'static str,
    /// SQL of a timestamp that moves whenever a row changes (soft deletions included).
    pub changed_at: &'static str,
    /// SQL of the row's version, which only ever grows when the row changes. Its sum per
    /// partition moves on every change even when a writer's transaction commits with a
    /// change time older than one the exporter already saw (`now()` is the transaction's
    /// start), which the latest change time alone would miss.
    pub version: &'static str,
    /// Which blocked metrics withhold a row.
    pub blocking: Blocking,
    /// The exported columns, in file order (the partition columns are not in the files).
    pub columns: &'static [ExportColumn],
    /// SQL `ORDER BY` inside a partition: a stable order makes re-exports byte-identical
    /// and compresses better.
    pub order_by: &'static str,
}

impl ExportSpec {
    /// The Arrow schema of the files (without the Hive partition columns).
    pub fn file_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.kind.data_type(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// A short signature of the declaration: a manifest written under another one is
    /// rewritten whole (columns were added, renamed or retyped).
    pub(crate) fn signature(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}:{:?}:{}", c.name, c.kind, c.sql))
            .collect();
        format!(
            "{}|{}|{:?}|{}|{:?}|{}|{}|{}",
            self.table,
            self.metric.unwrap_or("-"),
            self.blocking,
            self.date,
            cols,
            self.order_by,
            self.changed_at,
            self.version
        )
    }

    /// `NOT deleted` and not blocked by the user's privacy settings.
    fn exported_rows_filter(&self) -> String {
        let blocked = match (self.blocking, self.metric) {
            (Blocking::ByMetric, Some(m)) => format!("({m})"),
            (Blocking::ByMetric, None) => "NULL::text".to_owned(),
            (Blocking::Metric(code), _) => format!("'{}'", code.replace('\'', "''")),
        };
        format!(
            "NOT t.deleted AND NOT EXISTS (SELECT 1 FROM user_privacy p \
             WHERE p.user_id = t.user_id AND {blocked} = ANY(p.blocked_metrics))"
        )
    }

    fn metric_sql(&self) -> String {
        match self.metric {
            Some(m) => format!("({m})::text"),
            None => "NULL::text".to_owned(),
        }
    }

    /// Per partition: (metric, date, rows in the table tombstones included, latest change,
    /// sum of versions as text).
    pub(crate) fn fingerprint_sql(&self) -> String {
        format!(
            "SELECT {metric} AS metric, ({date})::date AS date, count(*) AS n, \
             max({changed}) AS changed_at, sum(({version})::numeric)::text AS versions \
             FROM {table} t GROUP BY 1, 2",
            metric = self.metric_sql(),
            date = self.date,
            changed = self.changed_at,
            version = self.version,
            table = self.table,
        )
    }

    /// The exported rows of the given partitions (`$1 text[]` metrics, `$2 date[]` dates;
    /// a dataset without metric partitions ignores `$1`), ordered by partition: the
    /// exporter cuts files where the partition changes.
    pub(crate) fn rows_sql(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| c.sql.to_owned()).collect();
        let matches = match self.metric {
            Some(_) => format!(
                "({m}, ({d})::date) IN (SELECT * FROM unnest($1::text[], $2::date[]))",
                m = self.metric_sql(),
                d = self.date
            ),
            None => format!(
                "({d})::date IN (SELECT unnest($2::date[])) AND cardinality($1::text[]) >= 0",
                d = self.date
            ),
        };
        format!(
            "SELECT {metric} AS __metric, ({date})::date AS __date, {cols} FROM {table} t \
             WHERE {matches} AND {filter} ORDER BY 1, 2, {order}",
            metric = self.metric_sql(),
            date = self.date,
            cols = cols.join(", "),
            table = self.table,
            filter = self.exported_rows_filter(),
            order = self.order_by,
        )
    }
}

/// A read model (or the samples table) that is exported: one impl, one line in
/// `crate::export::datasets()`.
pub trait Exported {
    const EXPORT: ExportSpec;
}
