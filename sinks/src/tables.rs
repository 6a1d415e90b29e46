//! Where each read model is stored: its table and columns, declared once per read model
//! (the table itself is a migration in `migrations/`). The sink runner, the Postgres
//! store and the registration list (`crate::READ_MODELS`) are generic over it.
//!
//! A row travels to Postgres as one JSON object per row, named by column
//! (`jsonb_to_recordset`), so a declaration is a list of columns and a serde struct, with
//! no per-table SQL. Floats survive exactly: serde writes the shortest decimal that reads
//! back as the same double, and Postgres reads decimals correctly rounded.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use pulseline_schemas::ReadModel;
use pulseline_schemas::records::{
    Period, ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};
use serde::Serialize;
use uuid::Uuid;

use crate::sink::InvalidRecord;

/// A column of a read-model table: its name and Postgres type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub sql_type: &'static str,
}

const fn col(name: &'static str, sql_type: &'static str) -> Column {
    Column { name, sql_type }
}

/// A read model the sinks can store.
///
/// The table must have `user_id uuid`, `version bigint`, `deleted boolean` and
/// `updated_at timestamptz` columns and a primary key of `KEY_COLUMNS` (which start
/// with `user_id`).
pub trait StoredReadModel: ReadModel + Send + Sync {
    /// The Postgres table.
    const TABLE: &'static str;
    /// The primary key, `user_id` first.
    const KEY_COLUMNS: &'static [Column];
    /// Every other written column, `version` and `deleted` included.
    const VALUE_COLUMNS: &'static [Column];
    /// The columns holding the row version, compared in order: `version` alone for a read
    /// model of one stream, `version, events_version` for one of both (`RowVersion`).
    const VERSION_COLUMNS: &'static [&'static str] = &["version"];
    /// One row as the table holds it: serialises to an object with a field per column.
    type Columns: Serialize + Clone + Send + Sync + std::fmt::Debug;

    /// The record as columns; refuses what the table cannot hold (the reason names the
    /// field, never its value).
    fn columns(record: &Self, user_id: Uuid) -> Result<Self::Columns, InvalidRecord>;
}

/// `rollup`: daily and hourly rollups (migrations/1001_rollups.sql).
#[derive(Debug, Clone, Serialize)]
pub struct RollupColumns {
    user_id: Uuid,
    metric: String,
    period: &'static str,
    /// Local wall-clock start of the bucket (midnight for DAY).
    bucket_start: NaiveDateTime,
    value: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    count: i64,
    sources: Vec<String>,
    deleted: bool,
    version: i64,
}

impl StoredReadModel for RollupUpsert {
    const TABLE: &'static str = "rollup";
    const KEY_COLUMNS: &'static [Column] = &[
        col("user_id", "uuid"),
        col("metric", "text"),
        col("period", "text"),
        col("bucket_start", "timestamp"),
    ];
    const VALUE_COLUMNS: &'static [Column] = &[
        col("value", "float8"),
        col("min", "float8"),
        col("max", "float8"),
        col("count", "int8"),
        col("sources", "text[]"),
        col("deleted", "bool"),
        col("version", "int8"),
    ];
    type Columns = RollupColumns;

    fn columns(r: &Self, user_id: Uuid) -> Result<RollupColumns, InvalidRecord> {
        if r.metric.is_empty() {
            return Err(InvalidRecord("metric is empty"));
        }
        let bucket_start = parse_bucket_start(r.period, &r.bucket_start)?;
        // A deleted bucket keeps only its version (the tombstone that blocks resurrection).
        let live = !r.deleted;
        Ok(RollupColumns {
            user_id,
            metric: r.metric.clone(),
            period: r.period.as_str(),
            bucket_start,
            value: r.value.filter(|_| live),
            min: r.min.filter(|_| live),
            max: r.max.filter(|_| live),
            count: if live { r.count } else { 0 },
            sources: if live { r.sources.clone() } else { Vec::new() },
            deleted: r.deleted,
            version: r.version,
        })
    }
}

/// `sleep_night`: one row per user and local date of waking
/// (migrations/1002_sleep_nights.sql).
#[derive(Debug, Clone, Serialize)]
pub struct SleepNightColumns {
    user_id: Uuid,
    night: NaiveDate,
    bed_at: Option<DateTime<Utc>>,
    wake_at: Option<DateTime<Utc>>,
    in_bed_minutes: f64,
    asleep_minutes: f64,
    awake_minutes: f64,
    latency_minutes: Option<f64>,
    efficiency: Option<f64>,
    awakenings: i32,
    rem_minutes: Option<f64>,
    deep_minutes: Option<f64>,
    core_minutes: Option<f64>,
    unspecified_minutes: f64,
    nap_count: i32,
    nap_minutes: f64,
    sources: Vec<String>,
    deleted: bool,
    version: i64,
}

impl StoredReadModel for SleepNightUpsert {
    const TABLE: &'static str = "sleep_night";
    const KEY_COLUMNS: &'static [Column] = &[col("user_id", "uuid"), col("night", "date")];
    const VALUE_COLUMNS: &'static [Column] = &[
        col("bed_at", "timestamptz"),
        col("wake_at", "timestamptz"),
        col("in_bed_minutes", "float8"),
        col("asleep_minutes", "float8"),
        col("awake_minutes", "float8"),
        col("latency_minutes", "float8"),
        col("efficiency", "float8"),
        col("awakenings", "int4"),
        col("rem_minutes", "float8"),
        col("deep_minutes", "float8"),
        col("core_minutes", "float8"),
        col("unspecified_minutes", "float8"),
        col("nap_count", "int4"),
        col("nap_minutes", "float8"),
        col("sources", "text[]"),
        col("deleted", "bool"),
        col("version", "int8"),
    ];
    type Columns = SleepNightColumns;

    fn columns(r: &Self, user_id: Uuid) -> Result<SleepNightColumns, InvalidRecord> {
        let night = NaiveDate::parse_from_str(&r.night, "%Y-%m-%d")
            .map_err(|_| InvalidRecord("night is not YYYY-MM-DD"))?;
        let bed_at = r
            .bed_at
            .map(|t| instant(t, "bedAt is out of range"))
            .transpose()?;
        let wake_at = r
            .wake_at
            .map(|t| instant(t, "wakeAt is out of range"))
            .transpose()?;
        let live = !r.deleted;
        if live && r.efficiency.is_some_and(|e| !(0.0..=1.0).contains(&e)) {
            return Err(InvalidRecord("efficiency is outside 0..1"));
        }
        let minutes = [
            r.in_bed_minutes,
            r.asleep_minutes,
            r.awake_minutes,
            r.nap_minutes,
        ];
        if live && minutes.iter().any(|m| !m.is_finite() || *m < 0.0) {
            return Err(InvalidRecord("a minutes figure is negative or not finite"));
        }
        // A deleted night keeps only its version (the tombstone that blocks resurrection).
        let keep = |v: Option<f64>| v.filter(|_| live);
        let num = |v: f64| if live { v } else { 0.0 };
        Ok(SleepNightColumns {
            user_id,
            night,
            bed_at: bed_at.filter(|_| live),
            wake_at: wake_at.filter(|_| live),
            in_bed_minutes: num(r.in_bed_minutes),
            asleep_minutes: num(r.asleep_minutes),
            awake_minutes: num(r.awake_minutes),
            latency_minutes: keep(r.latency_minutes),
            efficiency: keep(r.efficiency),
            awakenings: if live { r.awakenings } else { 0 },
            rem_minutes: keep(r.rem_minutes),
            deep_minutes: keep(r.deep_minutes),
            core_minutes: keep(r.core_minutes),
            unspecified_minutes: num(r.unspecified_minutes),
            nap_count: if live { r.nap_count } else { 0 },
            nap_minutes: num(r.nap_minutes),
            sources: if live { r.sources.clone() } else { Vec::new() },
            deleted: r.deleted,
            version: r.version,
        })
    }
}

/// The columns of a read model of both streams (`RowVersion`).
const TWO_STREAM_VERSION: &[&str] = &["version", "events_version"];

fn instant(micros: i64, what: &'static str) -> Result<DateTime<Utc>, InvalidRecord> {
    DateTime::from_timestamp_micros(micros).ok_or(InvalidRecord(what))
}

fn finite(v: Option<f64>, what: &'static str) -> Result<Option<f64>, InvalidRecord> {
    match v {
        Some(x) if !x.is_finite() => Err(InvalidRecord(what)),
        v => Ok(v),
    }
}

/// `session_impact`: one row per user, event and metric (migrations/1003_impacts.sql).
#[derive(Debug, Clone, Serialize)]
pub struct SessionImpactColumns {
    user_id: Uuid,
    event_id: String,
    metric: String,
    event_type: String,
    product_id: Option<String>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    local_date: Option<NaiveDate>,
    baseline_avg: Option<f64>,
    after_avg: Option<f64>,
    delta_percent: Option<f64>,
    baseline_count: i64,
    after_count: i64,
    reliable: bool,
    deleted: bool,
    version: i64,
    events_version: i64,
}

impl StoredReadModel for SessionImpactUpsert {
    const TABLE: &'static str = "session_impact";
    const KEY_COLUMNS: &'static [Column] = &[
        col("user_id", "uuid"),
        col("event_id", "text"),
        col("metric", "text"),
    ];
    const VALUE_COLUMNS: &'static [Column] = &[
        col("event_type", "text"),
        col("product_id", "text"),
        col("start_at", "timestamptz"),
        col("end_at", "timestamptz"),
        col("local_date", "date"),
        col("baseline_avg", "float8"),
        col("after_avg", "float8"),
        col("delta_percent", "float8"),
        col("baseline_count", "int8"),
        col("after_count", "int8"),
        col("reliable", "bool"),
        col("deleted", "bool"),
        col("version", "int8"),
        col("events_version", "int8"),
    ];
    const VERSION_COLUMNS: &'static [&'static str] = TWO_STREAM_VERSION;
    type Columns = SessionImpactColumns;

    fn columns(r: &Self, user_id: Uuid) -> Result<SessionImpactColumns, InvalidRecord> {
        if r.event_id.is_empty() || r.metric.is_empty() {
            return Err(InvalidRecord("eventId or metric is empty"));
        }
        // A deleted session keeps only its version (the tombstone that blocks resurrection).
        let live = !r.deleted;
        let (start_at, end_at, local_date) = if live {
            let date = NaiveDate::parse_from_str(&r.local_date, "%Y-%m-%d")
                .map_err(|_| InvalidRecord("localDate is not YYYY-MM-DD"))?;
            let end = r
                .end_at
                .map(|e| instant(e, "endAt is out of range"))
                .transpose()?;
            (
                Some(instant(r.start_at, "startAt is out of range")?),
                end,
                Some(date),
            )
        } else {
            (None, None, None)
        };
        if live && (r.baseline_count < 0 || r.after_count < 0) {
            return Err(InvalidRecord("a sample count is negative"));
        }
        Ok(SessionImpactColumns {
            user_id,
            event_id: r.event_id.clone(),
            metric: r.metric.clone(),
            event_type: if live {
                r.event_type.clone()
            } else {
                String::new()
            },
            product_id: r.product_id.clone().filter(|_| live),
            start_at,
            end_at,
            local_date,
            baseline_avg: finite(r.baseline_avg, "baselineAvg is not finite")?.filter(|_| live),
            after_avg: finite(r.after_avg, "afterAvg is not finite")?.filter(|_| live),
            delta_percent: finite(r.delta_percent, "deltaPercent is not finite")?.filter(|_| live),
            baseline_count: if live { r.baseline_count } else { 0 },
            after_count: if live { r.after_count } else { 0 },
            reliable: live && r.reliable,
            deleted: r.deleted,
            version: r.version,
            events_version: r.events_version,
        })
    }
}

/// `product_impact`: one row per user, group, metric and period
/// (migrations/1003_impacts.sql).
#[derive(Debug, Clone, Serialize)]
pub struct ProductImpactColumns {
    user_id: Uuid,
    event_type: String,
    /// The product id, or '' for an event type's group (part of the primary key).
    product_key: String,
    metric: String,
    period_days: i32,
    product_id: Option<String>,
    n: i64,
    avg_delta_percent: Option<f64>,
    std_dev: Option<f64>,
    tier: &'static str,
    as_of: Option<DateTime<Utc>>,
    deleted: bool,
    version: i64,
    events_version: i64,
}

impl StoredReadModel for ProductImpactUpsert {
    const TABLE: &'static str = "product_impact";
    const KEY_COLUMNS: &'static [Column] = &[
        col("user_id", "uuid"),
        col("event_type", "text"),
        col("product_key", "text"),
        col("metric", "text"),
        col("period_days", "int4"),
    ];
    const VALUE_COLUMNS: &'static [Column] = &[
        col("product_id", "text"),
        col("n", "int8"),
        col("avg_delta_percent", "float8"),
        col("std_dev", "float8"),
        col("tier", "text"),
        col("as_of", "timestamptz"),
        col("deleted", "bool"),
        col("version", "int8"),
        col("events_version", "int8"),
    ];
    const VERSION_COLUMNS: &'static [&'static str] = TWO_STREAM_VERSION;
    type Columns = ProductImpactColumns;

    fn columns(r: &Self, user_id: Uuid) -> Result<ProductImpactColumns, InvalidRecord> {
        if r.event_type.is_empty() || r.metric.is_empty() {
            return Err(InvalidRecord("eventType or metric is empty"));
        }
        if r.product_id.as_deref() == Some("") {
            return Err(InvalidRecord("productId is empty"));
        }
        if r.period_days <= 0 {
            return Err(InvalidRecord("periodDays is not positive"));
        }
        let live = !r.deleted;
        if live && r.n < 0 {
            return Err(InvalidRecord("n is negative"));
        }
        Ok(ProductImpactColumns {
            user_id,
            event_type: r.event_type.clone(),
            product_key: r.product_id.clone().unwrap_or_default(),
            metric: r.metric.clone(),
            period_days: r.period_days,
            product_id: r.product_id.clone(),
            n: if live { r.n } else { 0 },
            avg_delta_percent: finite(r.avg_delta_percent, "avgDeltaPercent is not finite")?
                .filter(|_| live),
            std_dev: finite(r.std_dev, "stdDev is not finite")?.filter(|_| live),
            tier: r.tier.as_str(),
            as_of: if live {
                Some(instant(r.as_of, "asOf is out of range")?)
            } else {
                None
            },
            deleted: r.deleted,
            version: r.version,
            events_version: r.events_version,
        })
    }
}

/// `YYYY-MM-DD` for DAY, `YYYY-MM-DDTHH:00:00` for HOUR (a bucket starts on the hour).
fn parse_bucket_start(period: Period, text: &str) -> Result<NaiveDateTime, InvalidRecord> {
    match period {
        Period::Day => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(|d| d.and_time(NaiveTime::MIN))
            .map_err(|_| InvalidRecord("bucketStart of a DAY bucket is not YYYY-MM-DD")),
        Period::Hour => {
            let t = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map_err(|_| {
                InvalidRecord("bucketStart of an HOUR bucket is not YYYY-MM-DDTHH:00:00")
            })?;
            if t.and_utc().timestamp() % 3600 != 0 {
                return Err(InvalidRecord(
                    "bucketStart of an HOUR bucket is not on the hour",
                ));
            }
            Ok(t)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sink::StoredRow;

    /// A live STEPS bucket of the nil user, version 1 (tests change what they need).
    pub(crate) fn upsert(period: Period, bucket: &str) -> RollupUpsert {
        RollupUpsert {
            user_id: Uuid::nil().to_string(),
            metric: "STEPS".into(),
            period,
            bucket_start: bucket.into(),
            version: 1,
            deleted: false,
            value: Some(1.0),
            min: None,
            max: None,
            count: 1,
            sources: vec![],
            applied_seq: 1,
        }
    }

    #[test]
    fn parses_day_and_hour_buckets() {
        let d = StoredRow::parse(upsert(Period::Day, "2026-11-23")).unwrap();
        assert_eq!(d.columns.bucket_start.to_string(), "2026-11-23 00:00:00");
        let h = StoredRow::parse(upsert(Period::Hour, "2026-11-23T05:00:00")).unwrap();
        assert_eq!(h.columns.bucket_start.to_string(), "2026-11-23 05:00:00");
    }

    #[test]
    fn refuses_unusable_records() {
        for (period, bucket) in [
            (Period::Day, "2026-11-23T00:00:00"),
            (Period::Day, "2026-02-30"),
            (Period::Hour, "2026-11-23"),
            (Period::Hour, "2026-11-23T05:30:00"),
        ] {
            assert!(
                StoredRow::parse(upsert(period, bucket)).is_err(),
                "{bucket}"
            );
        }
        let mut bad_user = upsert(Period::Day, "2026-11-23");
        bad_user.user_id = "someone".into();
        assert_eq!(
            StoredRow::parse(bad_user).err(),
            Some(InvalidRecord("userId is not a UUID"))
        );
    }

    #[test]
    fn a_deleted_bucket_keeps_only_its_version() {
        let mut r = upsert(Period::Day, "2026-11-23");
        r.deleted = true;
        r.version = 9;
        let c = StoredRow::parse(r).unwrap().columns;
        assert_eq!((c.value, c.count, c.version), (None, 0, 9));
    }
}
