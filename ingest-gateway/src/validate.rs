//! Per-item validation: a parsed sample or event either becomes a valid, normalised item
//! (times in UTC microseconds, value in the metric's canonical unit, content hash) or a
//! rejection with a stable code. Pure functions of the item, the catalog, the limits and
//! "now": no I/O (the user's blocked metrics are applied by the store, which reads them).
//!
//! Messages name the rule and the limit, never the item's value (PHI).

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use pulseline_schemas::{Catalog, CatalogError, MetricDef, ValueKind};

use crate::hashing::{ContentHasher, Sha256Hash, canonical_text};
use crate::model::{DeviceType, EventId, EventIn, ProductId, SampleIn, SourceRecordId, Timestamp};

/// Local-time offsets on Earth lie within UTC-14:00..UTC+14:00.
pub const MAX_TZ_OFFSET_MINUTES: i32 = 840;

pub use pulseline_schemas::records::EVENT_TYPES;

/// Why an item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    UnknownMetric,
    UnitMismatch,
    OutOfRange,
    InvalidInterval,
    InFuture,
    TooOld,
    MissingValue,
    InvalidCategory,
    MetricBlocked,
    InvalidTzOffset,
    InvalidEventType,
}

impl RejectCode {
    pub const ALL: &[RejectCode] = &[
        RejectCode::UnknownMetric,
        RejectCode::UnitMismatch,
        RejectCode::OutOfRange,
        RejectCode::InvalidInterval,
        RejectCode::InFuture,
        RejectCode::TooOld,
        RejectCode::MissingValue,
        RejectCode::InvalidCategory,
        RejectCode::MetricBlocked,
        RejectCode::InvalidTzOffset,
        RejectCode::InvalidEventType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownMetric => "UNKNOWN_METRIC",
            RejectCode::UnitMismatch => "UNIT_MISMATCH",
            RejectCode::OutOfRange => "OUT_OF_RANGE",
            RejectCode::InvalidInterval => "INVALID_INTERVAL",
            RejectCode::InFuture => "IN_FUTURE",
            RejectCode::TooOld => "TOO_OLD",
            RejectCode::MissingValue => "MISSING_VALUE",
            RejectCode::InvalidCategory => "INVALID_CATEGORY",
            RejectCode::MetricBlocked => "METRIC_BLOCKED",
            RejectCode::InvalidTzOffset => "INVALID_TZ_OFFSET",
            RejectCode::InvalidEventType => "INVALID_EVENT_TYPE",
        }
    }
}

/// A refused item: code plus a message without the item's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
}

impl Rejection {
    fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn blocked(metric: &str) -> Self {
        Self::new(
            RejectCode::MetricBlocked,
            format!("the user's privacy settings block metric {metric}"),
        )
    }
}

/// The acceptance window of item times.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimits {
    /// Largest allowed lead of start or end over now (clock skew).
    pub max_future: TimeDelta,
    /// Oldest allowed start, before now.
    pub max_age: TimeDelta,
}

/// A sample that passed validation, normalised for storage.
#[derive(Debug, Clone)]
pub struct ValidSample {
    pub source_record_id: SourceRecordId,
    pub metric: &'static MetricDef,
    /// UTC, truncated to microseconds: part of the natural key.
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub tz_offset_minutes: i32,
    /// In the canonical unit; `None` for category metrics.
    pub value: Option<f64>,
    /// The canonical unit.
    pub unit: &'static str,
    /// The canonical category (aliases resolved); `None` for quantity metrics.
    pub category: Option<&'static str>,
    /// JCS text of the metadata.
    pub metadata_json: Option<String>,
    pub content_hash: Sha256Hash,
}

/// An event that passed validation, normalised for storage.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    pub event_id: EventId,
    pub event_type: &'static str,
    pub product_id: Option<ProductId>,
    pub start_at: DateTime<Utc>,
    pub end_at: Option<DateTime<Utc>>,
    pub tz_offset_minutes: i32,
    pub attributes_json: Option<String>,
    pub content_hash: Sha256Hash,
}

/// Truncates to microseconds in UTC, the resolution of Postgres and the Avro records.
pub fn to_utc_micros(t: DateTime<FixedOffset>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or_else(|| t.with_timezone(&Utc))
}

fn tz_offset(explicit: Option<i32>, start: &Timestamp) -> Result<i32, Rejection> {
    let minutes = explicit.unwrap_or_else(|| start.0.offset().local_minus_utc() / 60);
    if (-MAX_TZ_OFFSET_MINUTES..=MAX_TZ_OFFSET_MINUTES).contains(&minutes) {
        Ok(minutes)
    } else {
        Err(Rejection::new(
            RejectCode::InvalidTzOffset,
            format!(
                "tzOffsetMinutes must be within -{MAX_TZ_OFFSET_MINUTES}..={MAX_TZ_OFFSET_MINUTES}"
            ),
        ))
    }
}

fn check_window(
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    limits: &TimeLimits,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let latest = now + limits.max_future;
    if start > latest || end.is_some_and(|e| e > latest) {
        return Err(Rejection::new(
            RejectCode::InFuture,
            format!(
                "starts or ends more than {} s after the server's clock",
                limits.max_future.num_seconds()
            ),
        ));
    }
    if start < now - limits.max_age {
        return Err(Rejection::new(
            RejectCode::TooOld,
            format!(
                "starts more than {} days before now",
                limits.max_age.num_days()
            ),
        ));
    }
    Ok(())
}

fn free_form_json(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(canonical_text(&v).unwrap_or_else(|_| v.to_string())),
    }
}

fn catalog_rejection(e: &CatalogError, def: &MetricDef) -> Rejection {
    match e {
        CatalogError::UnitMismatch { .. } => Rejection::new(
            RejectCode::UnitMismatch,
            format!(
                "unit is not accepted for {}; accepted: {}",
                def.code(),
                def.accepted_units().collect::<Vec<_>>().join(", ")
            ),
        ),
        CatalogError::InvalidCategory { .. } if def.kind() == ValueKind::Quantity => {
            Rejection::new(
                RejectCode::InvalidCategory,
                format!("{} is a quantity metric and takes no category", def.code()),
            )
        }
        CatalogError::InvalidCategory { .. } => Rejection::new(
            RejectCode::InvalidCategory,
            format!(
                "category is not one of {}: {}",
                def.code(),
                def.categories().join(", ")
            ),
        ),
        // Non-finite after conversion means absurdly large: out of any plausible range.
        CatalogError::OutOfRange { .. } | CatalogError::NonFinite { .. } => {
            let (min, max) = def.range().unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            Rejection::new(
                RejectCode::OutOfRange,
                format!(
                    "value is outside the plausible range [{min}, {max}] {} of {}",
                    def.canonical_unit(),
                    def.code()
                ),
            )
        }
        CatalogError::UnknownMetric { .. } | CatalogError::Invalid(_) => {
            Rejection::new(RejectCode::UnknownMetric, "unknown metric")
        }
    }
}

/// Validates and normalises one sample of a batch whose source has `device_type`.
pub fn validate_sample(
    sample: SampleIn,
    device_type: DeviceType,
    catalog: &'static Catalog,
    limits: &TimeLimits,
    now: DateTime<Utc>,
) -> Result<ValidSample, Rejection> {
    let def = catalog.metric(&sample.metric).map_err(|_| {
        let shown: String = sample.metric.chars().take(64).collect();
        Rejection::new(
            RejectCode::UnknownMetric,
            format!("unknown metric `{shown}`"),
        )
    })?;

    let start_at = to_utc_micros(sample.start_at.0);
    let end_at = sample.end_at.map_or(start_at, |e| to_utc_micros(e.0));
    if end_at < start_at {
        return Err(Rejection::new(
            RejectCode::InvalidInterval,
            "endAt is before startAt",
        ));
    }
    if end_at - start_at > def.max_interval() {
        return Err(Rejection::new(
            RejectCode::InvalidInterval,
            format!(
                "longer than the {} s a {} sample may span",
                def.max_interval().num_seconds(),
                def.code()
            ),
        ));
    }
    let tz_offset_minutes = tz_offset(sample.tz_offset_minutes, &sample.start_at)?;
    check_window(start_at, Some(end_at), limits, now)?;

    let (value, category) = match def.kind() {
        ValueKind::Quantity => {
            if sample.category.is_some() {
                return Err(Rejection::new(
                    RejectCode::InvalidCategory,
                    format!("{} is a quantity metric and takes no category", def.code()),
                ));
            }
            let Some(raw) = sample.value else {
                return Err(Rejection::new(
                    RejectCode::MissingValue,
                    format!("{} needs a value", def.code()),
                ));
            };
            let Some(unit) = sample.unit.as_deref() else {
                return Err(Rejection::new(
                    RejectCode::UnitMismatch,
                    format!(
                        "{} needs a unit (canonical: {})",
                        def.code(),
                        def.canonical_unit()
                    ),
                ));
            };
            let canonical = def
                .to_canonical(raw, unit)
                .map_err(|e| catalog_rejection(&e, def))?;
            def.check_range(canonical)
                .map_err(|e| catalog_rejection(&e, def))?;
            // One spelling of zero, so -0.0 and 0.0 are the same content.
            (Some(if canonical == 0.0 { 0.0 } else { canonical }), None)
        }
        ValueKind::Category => {
            if let Some(unit) = sample.unit.as_deref() {
                def.to_canonical(0.0, unit)
                    .map_err(|e| catalog_rejection(&e, def))?;
            }
            let Some(category) = sample.category.as_deref() else {
                return Err(Rejection::new(
                    RejectCode::MissingValue,
                    format!("{} needs a category", def.code()),
                ));
            };
            let category = def
                .canonical_category(category)
                .map_err(|e| catalog_rejection(&e, def))?;
            (None, Some(category))
        }
    };

    let metadata_json = free_form_json(sample.metadata);
    let content_hash = ContentHasher::new()
        .str(def.code())
        .str(device_type.as_str())
        .i64(end_at.timestamp_micros())
        .i64(i64::from(tz_offset_minutes))
        .opt_f64(value)
        .str(def.canonical_unit())
        .opt_str(category)
        .opt_str(metadata_json.as_deref())
        .finish();

    Ok(ValidSample {
        source_record_id: sample.source_record_id,
        metric: def,
        start_at,
        end_at,
        tz_offset_minutes,
        value,
        unit: def.canonical_unit(),
        category,
        metadata_json,
        content_hash,
    })
}

/// Validates and normalises one user event.
pub fn validate_event(
    event: EventIn,
    limits: &TimeLimits,
    now: DateTime<Utc>,
) -> Result<ValidEvent, Rejection> {
    let Some(&event_type) = EVENT_TYPES.iter().find(|t| **t == event.event_type) else {
        return Err(Rejection::new(
            RejectCode::InvalidEventType,
            format!("type must be one of {}", EVENT_TYPES.join(", ")),
        ));
    };
    let start_at = to_utc_micros(event.start_at.0);
    let end_at = event.end_at.map(|e| to_utc_micros(e.0));
    if end_at.is_some_and(|e| e < start_at) {
        return Err(Rejection::new(
            RejectCode::InvalidInterval,
            "endAt is before startAt",
        ));
    }
    let tz_offset_minutes = tz_offset(event.tz_offset_minutes, &event.start_at)?;
    check_window(start_at, end_at, limits, now)?;

    let attributes_json = free_form_json(event.attributes);
    let content_hash = ContentHasher::new()
        .str(event_type)
        .opt_str(event.product_id.as_ref().map(ProductId::as_str))
        .i64(start_at.timestamp_micros())
        .opt_i64(end_at.map(|e| e.timestamp_micros()))
        .i64(i64::from(tz_offset_minutes))
        .opt_str(attributes_json.as_deref())
        .finish();

    Ok(ValidEvent {
        event_id: event.event_id,
        event_type,
        product_id: event.product_id,
        start_at,
        end_at,
        tz_offset_minutes,
        attributes_json,
        content_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn limits() -> TimeLimits {
        TimeLimits {
            max_future: TimeDelta::seconds(600),
            max_age: TimeDelta::days(400),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn sample(v: serde_json::Value) -> SampleIn {
        serde_json::from_value(v).unwrap()
    }

    fn check(v: serde_json::Value) -> Result<ValidSample, Rejection> {
        validate_sample(
            sample(v),
            DeviceType::AppleWatch,
            Catalog::builtin(),
            &limits(),
            now(),
        )
    }

    fn code(v: serde_json::Value) -> &'static str {
        check(v).unwrap_err().code.as_str()
    }

    #[test]
    fn each_rule_has_its_code() {
        let base = || {
            json!({"sourceRecordId": "r1", "metric": "HEART_RATE", "value": 72, "unit": "count/min",
                   "startAt": "2025-06-01T10:00:00+02:00", "endAt": "2025-06-01T10:00:00+02:00"})
        };
        assert!(check(base()).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert_eq!(code(with("metric", json!("NOPE"))), "UNKNOWN_METRIC");
        assert_eq!(code(with("unit", json!("kg"))), "UNIT_MISMATCH");
        assert_eq!(code(with("unit", serde_json::Value::Null)), "UNIT_MISMATCH");
        assert_eq!(code(with("value", json!(1000))), "OUT_OF_RANGE");
        assert_eq!(
            code(with("value", serde_json::Value::Null)),
            "MISSING_VALUE"
        );
        assert_eq!(
            code(with("endAt", json!("2025-06-01T09:59:59+02:00"))),
            "INVALID_INTERVAL"
        );
        assert_eq!(
            code(with("endAt", json!("2025-06-03T10:00:00+02:00"))),
            "INVALID_INTERVAL"
        );
        let mut future = base();
        future["startAt"] = json!("2025-06-01T12:20:00Z");
        future["endAt"] = json!("2025-06-01T12:20:00Z");
        assert_eq!(code(future), "IN_FUTURE");
        let mut old = base();
        old["startAt"] = json!("2024-01-01T00:00:00Z");
        old["endAt"] = json!("2024-01-01T00:00:00Z");
        assert_eq!(code(old), "TOO_OLD");
        assert_eq!(
            code(with("tzOffsetMinutes", json!(900))),
            "INVALID_TZ_OFFSET"
        );
        assert_eq!(code(with("category", json!("deep"))), "INVALID_CATEGORY");
        let sleep = json!({"sourceRecordId": "s", "metric": "SLEEP_STAGE", "category": "dreaming",
                           "startAt": "2025-06-01T01:00:00Z", "endAt": "2025-06-01T02:00:00Z"});
        assert_eq!(code(sleep.clone()), "INVALID_CATEGORY");
        let mut no_category = sleep;
        no_category.as_object_mut().unwrap().remove("category");
        assert_eq!(code(no_category), "MISSING_VALUE");
    }

    #[test]
    fn normalises_time_unit_and_category() {
        let s = check(
            json!({"sourceRecordId": "r", "metric": "WEIGHT", "value": 154.3236, "unit": "lb",
                             "startAt": "2025-06-01T08:00:00.1234567+02:00"}),
        )
        .unwrap();
        assert_eq!(s.start_at.to_rfc3339(), "2025-06-01T06:00:00.123456+00:00");
        assert_eq!(s.end_at, s.start_at);
        assert_eq!(s.tz_offset_minutes, 120);
        assert_eq!(s.unit, "kg");
        assert!((s.value.unwrap() - 70.0).abs() < 1e-3);
        let c = check(json!({"sourceRecordId": "r", "metric": "SLEEP_STAGE", "category": "light",
                             "startAt": "2025-06-01T01:00:00Z", "endAt": "2025-06-01T02:00:00Z", "tzOffsetMinutes": -300}))
        .unwrap();
        assert_eq!(c.category, Some("core"));
        assert_eq!(c.tz_offset_minutes, -300);
        assert_eq!(c.value, None);
    }

    #[test]
    fn same_content_in_other_units_hashes_alike() {
        let a = check(
            json!({"sourceRecordId": "r", "metric": "HEART_RATE", "value": 72, "unit": "count/min",
                             "startAt": "2025-06-01T10:00:00Z", "metadata": {"a": 1, "b": 2}}),
        )
        .unwrap();
        let b = check(json!({"sourceRecordId": "r", "metric": "HEART_RATE", "value": 72.0, "unit": "bpm",
                             "startAt": "2025-06-01T12:00:00+02:00", "tzOffsetMinutes": 0, "metadata": {"b": 2.0, "a": 1}}))
        .unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        let c = check(
            json!({"sourceRecordId": "r", "metric": "HEART_RATE", "value": 73, "unit": "count/min",
                             "startAt": "2025-06-01T10:00:00Z", "metadata": {"a": 1, "b": 2}}),
        )
        .unwrap();
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn events_are_validated() {
        let ev = |v: serde_json::Value| {
            validate_event(serde_json::from_value(v).unwrap(), &limits(), now())
        };
        assert!(
            ev(json!({"eventId": "e", "type": "caffeine", "startAt": "2025-06-01T08:00:00Z"}))
                .is_ok()
        );
        assert_eq!(
            ev(json!({"eventId": "e", "type": "coffee", "startAt": "2025-06-01T08:00:00Z"}))
                .unwrap_err()
                .code,
            RejectCode::InvalidEventType
        );
        assert_eq!(
            ev(json!({"eventId": "e", "type": "meal", "startAt": "2025-06-01T08:00:00Z", "endAt": "2025-06-01T07:00:00Z"}))
                .unwrap_err()
                .code,
            RejectCode::InvalidInterval
        );
        assert_eq!(
            ev(json!({"eventId": "e", "type": "meal", "startAt": "2025-06-02T08:00:00Z"}))
                .unwrap_err()
                .code,
            RejectCode::InFuture
        );
    }

    fn quantity_metrics() -> Vec<&'static MetricDef> {
        Catalog::builtin()
            .metrics()
            .filter(|m| m.kind() == ValueKind::Quantity)
            .collect()
    }

    fn rfc3339(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    proptest! {
        /// Any sample whose end is before its start is INVALID_INTERVAL, whatever else.
        #[test]
        fn end_before_start_is_invalid_interval(
            metric in prop::sample::select(Catalog::builtin().metrics().map(|m| m.code().to_owned()).collect::<Vec<_>>()),
            start_offset_s in 0i64..(399 * 86_400),
            backwards_us in 1i64..(86_400 * 1_000_000),
            value in -1e6f64..1e6,
        ) {
            let start = now() - TimeDelta::seconds(start_offset_s);
            let end = start - TimeDelta::microseconds(backwards_us);
            let r = check(json!({"sourceRecordId": "r", "metric": metric, "value": value, "unit": "count",
                                 "category": "deep", "startAt": rfc3339(start), "endAt": rfc3339(end)}));
            prop_assert_eq!(r.unwrap_err().code, RejectCode::InvalidInterval);
        }

        /// Any in-range value, written in any unit the metric accepts, is accepted and
        /// stored in the canonical unit (to rounding).
        #[test]
        fn in_range_values_in_any_accepted_unit_are_accepted(
            index in any::<prop::sample::Index>(),
            unit_index in any::<prop::sample::Index>(),
            t in 0.001f64..0.999,
            start_offset_s in 0i64..(399 * 86_400),
        ) {
            let metrics = quantity_metrics();
            let def = metrics[index.index(metrics.len())];
            let units: Vec<&str> = def.accepted_units().collect();
            let unit = units[unit_index.index(units.len())];
            let (min, max) = def.range().unwrap();
            let canonical = min + (max - min) * t;
            let written = def.from_canonical(canonical, unit).unwrap();
            let start = now() - TimeDelta::seconds(start_offset_s);
            let s = check(json!({"sourceRecordId": "r", "metric": def.code(), "value": written, "unit": unit,
                                 "startAt": rfc3339(start)}));
            let s = s.map_err(|r| TestCaseError::fail(format!("{} {unit}: {:?}", def.code(), r)))?;
            let stored = s.value.unwrap();
            prop_assert!((stored - canonical).abs() <= 1e-9 * canonical.abs().max(1.0),
                "{} {unit}: {stored} vs {canonical}", def.code());
            prop_assert_eq!(s.unit, def.canonical_unit());
        }

        /// Any value outside the range (in the canonical unit) is OUT_OF_RANGE.
        #[test]
        fn out_of_range_values_are_refused(
            index in any::<prop::sample::Index>(),
            above in any::<bool>(),
            excess in 1e-6f64..1e6,
        ) {
            let metrics = quantity_metrics();
            let def = metrics[index.index(metrics.len())];
            let (min, max) = def.range().unwrap();
            let value = if above { max + excess * max.abs().max(1.0) } else { min - excess * min.abs().max(1.0) };
            let r = check(json!({"sourceRecordId": "r", "metric": def.code(), "value": value,
                                 "unit": def.canonical_unit(), "startAt": rfc3339(now())}));
            prop_assert_eq!(r.unwrap_err().code, RejectCode::OutOfRange);
        }

        /// Anything starting beyond the future limit is IN_FUTURE; anything older than the
        /// age limit is TOO_OLD.
        #[test]
        fn time_window_is_enforced(ahead_s in 601i64..10_000_000, behind_s in (400 * 86_400 + 1)..(4000i64 * 86_400)) {
            let future = now() + TimeDelta::seconds(ahead_s);
            let r = check(json!({"sourceRecordId": "r", "metric": "STEPS", "value": 10, "unit": "count",
                                 "startAt": rfc3339(future)}));
            prop_assert_eq!(r.unwrap_err().code, RejectCode::InFuture);
            let past = now() - TimeDelta::seconds(behind_s);
            let r = check(json!({"sourceRecordId": "r", "metric": "STEPS", "value": 10, "unit": "count",
                                 "startAt": rfc3339(past)}));
            prop_assert_eq!(r.unwrap_err().code, RejectCode::TooOld);
        }
    }
}
