//! One partition's Parquet file, built in memory from Postgres rows: typed Arrow builders
//! per declared column, flushed into row groups, finished into bytes that the exporter
//! writes under a temporary name and renames into place.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::ExportError;
use super::dataset::{ExportSpec, Kind};
use super::pseudonym::Pseudonymizer;

/// Rows per Arrow batch handed to the writer.
const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group: large enough for scans (one partition is usually one row
/// group), small enough that a reader can prune inside a large partition.
pub const ROW_GROUP_ROWS: usize = 1_048_576;

/// The writer settings every exported file shares: zstd (level 1: fast to write, smaller
/// than snappy, fast to read), page-level statistics so readers prune row groups and pages.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("pulseline export".to_owned())
        .build()
}

enum ColumnBuilder {
    Text(StringBuilder),
    Float(Float64Builder),
    Int(Int32Builder),
    BigInt(Int64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Time(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Pseudonym | Kind::Text => Self::Text(StringBuilder::new()),
            Kind::Float => Self::Float(Float64Builder::new()),
            Kind::Int => Self::Int(Int32Builder::new()),
            Kind::BigInt => Self::BigInt(Int64Builder::new()),
            Kind::Bool => Self::Bool(BooleanBuilder::new()),
            Kind::Date => Self::Date(Date32Builder::new()),
            Kind::Instant => Self::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Kind::LocalTime => Self::Time(TimestampMicrosecondBuilder::new()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::BigInt(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// Days since 1970-01-01, Arrow's `Date32`.
fn epoch_days(d: NaiveDate) -> i32 {
    let days = d.signed_duration_since(NaiveDate::default()).num_days();
    i32::try_from(days).unwrap_or(i32::MAX)
}

/// A partition file being built.
pub struct PartitionFile {
    spec: ExportSpec,
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    pending: usize,
    rows: u64,
    writer: ArrowWriter<Vec<u8>>,
}

impl std::fmt::Debug for PartitionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionFile")
            .field("dataset", &self.spec.name)
            .field("rows", &self.rows)
            .finish()
    }
}

impl PartitionFile {
    pub fn new(spec: ExportSpec) -> Result<Self, ExportError> {
        let schema = spec.file_schema();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))?;
        Ok(Self {
            builders: spec
                .columns
                .iter()
                .map(|c| ColumnBuilder::new(c.kind))
                .collect(),
            spec,
            schema,
            pending: 0,
            rows: 0,
            writer,
        })
    }

    /// Appends one row of `ExportSpec::rows_sql` (the columns start at index 2).
    pub fn push(&mut self, row: &PgRow, names: &mut Pseudonymizer) -> Result<(), ExportError> {
        for (i, (col, b)) in self.spec.columns.iter().zip(&mut self.builders).enumerate() {
            let at = i + 2;
            match (col.kind, b) {
                (Kind::Pseudonym, ColumnBuilder::Text(b)) => {
                    let v: Option<String> = row.try_get(at)?;
                    b.append_option(v.map(|v| names.pseudonym(&v).to_owned()));
                }
                (Kind::Text, ColumnBuilder::Text(b)) => {
                    b.append_option(row.try_get::<Option<String>, _>(at)?)
                }
                (_, ColumnBuilder::Float(b)) => b.append_option(row.try_get::<Option<f64>, _>(at)?),
                (_, ColumnBuilder::Int(b)) => b.append_option(row.try_get::<Option<i32>, _>(at)?),
                (_, ColumnBuilder::BigInt(b)) => {
                    b.append_option(row.try_get::<Option<i64>, _>(at)?)
                }
                (_, ColumnBuilder::Bool(b)) => b.append_option(row.try_get::<Option<bool>, _>(at)?),
                (_, ColumnBuilder::Date(b)) => {
                    b.append_option(row.try_get::<Option<NaiveDate>, _>(at)?.map(epoch_days))
                }
                (Kind::Instant, ColumnBuilder::Time(b)) => b.append_option(
                    row.try_get::<Option<DateTime<Utc>>, _>(at)?
                        .map(|t| t.timestamp_micros()),
                ),
                (_, ColumnBuilder::Time(b)) => b.append_option(
                    row.try_get::<Option<NaiveDateTime>, _>(at)?
                        .map(|t| t.and_utc().timestamp_micros()),
                ),
                (_, ColumnBuilder::Text(_)) => {
                    return Err(ExportError::Declaration(format!(
                        "{}.{}: text builder for a non-text kind",
                        self.spec.name, col.name
                    )));
                }
            }
        }
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        if self.pending == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.pending = 0;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The finished file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ExportError> {
        self.flush()?;
        Ok(self.writer.into_inner()?)
    }
}
