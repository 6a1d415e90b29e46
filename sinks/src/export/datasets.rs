//! The exported datasets, one declaration each. Column names are snake_case so that SQL
//! reads them unquoted in DataFusion and DuckDB alike; `subject_id` is the pseudonymised
//! user (the issue's `subjectId`).

use pulseline_schemas::records::{
    ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};

use super::dataset::{Blocking, ExportSpec, Exported, Kind, column};

/// The gateway's `sample` table: the current content of every accepted sample by natural
/// key, soft deletions applied. Partitioned by the sample's local date (its own offset),
/// like the rollups. Not exported: the source and source record ids, metadata.
#[derive(Debug, Clone, Copy)]
pub struct Samples;

/// The local date of a sample, as the rollups bucket it.
const SAMPLE_LOCAL_DATE: &str =
    "((t.start_at AT TIME ZONE 'UTC') + t.tz_offset_minutes * interval '1 minute')::date";

impl Exported for Samples {
    const EXPORT: ExportSpec = ExportSpec {
        name: "samples",
        table: "sample",
        metric: Some("t.metric"),
        date: SAMPLE_LOCAL_DATE,
        changed_at: "t.accepted_at",
        // A correction or deletion takes the user's next change sequence.
        version: "t.change_seq::numeric * 4294967296 + t.change_index",
        blocking: Blocking::ByMetric,
        columns: &[
            column("subject_id", "t.user_id::text", Kind::Pseudonym),
            column("start_at", "t.start_at", Kind::Instant),
            column("end_at", "t.end_at", Kind::Instant),
            column("tz_offset_minutes", "t.tz_offset_minutes", Kind::Int),
            column("value", "t.value", Kind::Float),
            column("unit", "t.unit", Kind::Text),
            column("category", "t.category", Kind::Text),
            column("device_type", "t.device_type", Kind::Text),
        ],
        order_by: "t.user_id, t.start_at, t.source_id, t.source_record_id",
    };
}

impl Exported for RollupUpsert {
    const EXPORT: ExportSpec = ExportSpec {
        name: "rollups",
        table: "rollup",
        metric: Some("t.metric"),
        date: "t.bucket_start::date",
        changed_at: "t.updated_at",
        version: "t.version",
        blocking: Blocking::ByMetric,
        columns: &[
            column("subject_id", "t.user_id::text", Kind::Pseudonym),
            column("period", "t.period", Kind::Text),
            column("bucket_start", "t.bucket_start", Kind::LocalTime),
            column("value", "t.value", Kind::Float),
            column("min", "t.min", Kind::Float),
            column("max", "t.max", Kind::Float),
            column("count", "t.count", Kind::BigInt),
        ],
        order_by: "t.user_id, t.period, t.bucket_start",
    };
}

impl Exported for SleepNightUpsert {
    const EXPORT: ExportSpec = ExportSpec {
        name: "sleep_nights",
        table: "sleep_night",
        metric: None,
        date: "t.night",
        changed_at: "t.updated_at",
        version: "t.version",
        blocking: Blocking::Metric("SLEEP_STAGE"),
        columns: &[
            column("subject_id", "t.user_id::text", Kind::Pseudonym),
            column("night", "t.night", Kind::Date),
            column("bed_at", "t.bed_at", Kind::Instant),
            column("wake_at", "t.wake_at", Kind::Instant),
            column("in_bed_minutes", "t.in_bed_minutes", Kind::Float),
            column("asleep_minutes", "t.asleep_minutes", Kind::Float),
            column("awake_minutes", "t.awake_minutes", Kind::Float),
            column("latency_minutes", "t.latency_minutes", Kind::Float),
            column("efficiency", "t.efficiency", Kind::Float),
            column("awakenings", "t.awakenings", Kind::Int),
            column("rem_minutes", "t.rem_minutes", Kind::Float),
            column("deep_minutes", "t.deep_minutes", Kind::Float),
            column("core_minutes", "t.core_minutes", Kind::Float),
            column("unspecified_minutes", "t.unspecified_minutes", Kind::Float),
            column("nap_count", "t.nap_count", Kind::Int),
            column("nap_minutes", "t.nap_minutes", Kind::Float),
        ],
        order_by: "t.user_id",
    };
}

/// The change-detection figure of a two-stream read model: both version parts count.
const TWO_STREAM_VERSION: &str = "t.version::numeric * 9223372036854775808 + t.events_version";

/// Session impacts, by metric and local event date. The event id is the client's own text,
/// so it is pseudonymised like the user (it still joins sessions of one event).
impl Exported for SessionImpactUpsert {
    const EXPORT: ExportSpec = ExportSpec {
        name: "session_impacts",
        table: "session_impact",
        metric: Some("t.metric"),
        date: "t.local_date",
        changed_at: "t.updated_at",
        version: TWO_STREAM_VERSION,
        blocking: Blocking::ByMetric,
        columns: &[
            column("subject_id", "t.user_id::text", Kind::Pseudonym),
            column("event_id", "t.event_id", Kind::Pseudonym),
            column("event_type", "t.event_type", Kind::Text),
            column("product_id", "t.product_id", Kind::Pseudonym),
            column("start_at", "t.start_at", Kind::Instant),
            column("end_at", "t.end_at", Kind::Instant),
            column("baseline_avg", "t.baseline_avg", Kind::Float),
            column("after_avg", "t.after_avg", Kind::Float),
            column("delta_percent", "t.delta_percent", Kind::Float),
            column("baseline_count", "t.baseline_count", Kind::BigInt),
            column("after_count", "t.after_count", Kind::BigInt),
            column("reliable", "t.reliable", Kind::Bool),
        ],
        order_by: "t.user_id, t.start_at, t.event_id",
    };
}

/// Product impacts, by metric and the UTC date of `as_of`.
impl Exported for ProductImpactUpsert {
    const EXPORT: ExportSpec = ExportSpec {
        name: "product_impacts",
        table: "product_impact",
        metric: Some("t.metric"),
        date: "(t.as_of AT TIME ZONE 'UTC')::date",
        changed_at: "t.updated_at",
        version: TWO_STREAM_VERSION,
        blocking: Blocking::ByMetric,
        columns: &[
            column("subject_id", "t.user_id::text", Kind::Pseudonym),
            column("event_type", "t.event_type", Kind::Text),
            column("product_id", "t.product_id", Kind::Pseudonym),
            column("period_days", "t.period_days", Kind::Int),
            column("n", "t.n", Kind::BigInt),
            column("avg_delta_percent", "t.avg_delta_percent", Kind::Float),
            column("std_dev", "t.std_dev", Kind::Float),
            column("tier", "t.tier", Kind::Text),
            column("as_of", "t.as_of", Kind::Instant),
        ],
        order_by: "t.user_id, t.event_type, t.product_key, t.period_days",
    };
}
