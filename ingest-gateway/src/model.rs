//! The HTTP contract's bodies: what clients send and what the gateway answers.
//!
//! Parse, don't validate: identifiers and timestamps are newtypes that are valid by
//! construction, so handlers never see raw strings. Structured objects refuse unknown
//! fields (a typo like `tzOffset` must not be silently ignored); free-form `metadata` and
//! `attributes` take any JSON. Deserialisation errors never carry the offending value (PHI):
//! see `api::body` for how messages are built.

use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! bounded_string {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            /// Accepts 1..=MAX_CHARS characters without control characters.
            pub fn parse(s: String) -> Result<Self, String> {
                let n = s.chars().count();
                if n == 0 || n > Self::MAX_CHARS {
                    return Err(format!("must be 1 to {} characters long", Self::MAX_CHARS));
                }
                if s.chars().any(char::is_control) {
                    return Err("must not contain control characters".to_owned());
                }
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_string!(
    /// The client's id of one data source (a device or app install).
    SourceId,
    128
);
bounded_string!(
    /// The source's own id of one sample (e.g. a HealthKit UUID).
    SourceRecordId,
    256
);
bounded_string!(
    /// The client's id of one user event.
    EventId,
    256
);
bounded_string!(
    /// A product (e.g. a coffee brand or a medication) an event refers to.
    ProductId,
    256
);

/// An RFC 3339 instant with its written offset (the offset is the default time zone of
/// the item when `tzOffsetMinutes` is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<FixedOffset>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(Timestamp)
            .map_err(|_| {
                de::Error::custom(
                    "must be an RFC 3339 timestamp with an offset (e.g. 2024-05-01T07:30:00+02:00)",
                )
            })
    }
}

/// The kind of device a source is; decides source priority downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    AppleWatch,
    Iphone,
    AndroidPhone,
    WearOs,
    Fitbit,
    Garmin,
    Oura,
    Scale,
    BpMonitor,
    Glucometer,
    Manual,
    Other,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::AppleWatch => "apple_watch",
            DeviceType::Iphone => "iphone",
            DeviceType::AndroidPhone => "android_phone",
            DeviceType::WearOs => "wear_os",
            DeviceType::Fitbit => "fitbit",
            DeviceType::Garmin => "garmin",
            DeviceType::Oura => "oura",
            DeviceType::Scale => "scale",
            DeviceType::BpMonitor => "bp_monitor",
            DeviceType::Glucometer => "glucometer",
            DeviceType::Manual => "manual",
            DeviceType::Other => "other",
        }
    }
}

/// `POST /v1/samples:batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SamplesBatch {
    /// Client-chosen id of this request; a retry reuses it (idempotency key with the user).
    pub request_id: Uuid,
    /// Optional SHA-256 (lowercase hex) of the RFC 8785 canonical JSON of this body without
    /// `payloadHash`; a mismatch is refused with 422 PAYLOAD_HASH_MISMATCH.
    #[serde(default)]
    pub payload_hash: Option<String>,
    pub source: SourceIn,
    /// Samples to add or replace, indexed 0..samples.len() in `results`.
    #[serde(default)]
    pub samples: Vec<SampleIn>,
    /// Samples of `source` to delete by natural key, indexed samples.len() + i in `results`.
    #[serde(default)]
    pub deletions: Vec<SampleDeletionIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIn {
    #[schema(value_type = String, example = "watch-1234", min_length = 1, max_length = 128, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub source_id: SourceId,
    pub device_type: DeviceType,
    #[serde(default)]
    pub name: Option<String>,
}

/// One sample. Quantity metrics need `value` and `unit`; category metrics need `category`
/// (a `value` sent with a category metric is ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SampleIn {
    #[schema(value_type = String, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub source_record_id: SourceRecordId,
    /// Metric code from the catalog, e.g. HEART_RATE.
    pub metric: String,
    #[serde(default)]
    pub value: Option<f64>,
    /// A unit the metric accepts; the value is stored in the metric's canonical unit.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub start_at: Timestamp,
    /// Defaults to `startAt` (an instantaneous sample).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<Timestamp>,
    /// Local-time offset (-840..=840); defaults to the offset written in `startAt`.
    #[serde(default, deserialize_with = "integral_i32")]
    #[schema(minimum = -2147483648, maximum = 2147483647)]
    pub tz_offset_minutes: Option<i32>,
    /// Free-form JSON kept with the sample.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub metadata: Option<Value>,
}

/// Deletes the sample (batch source, sourceRecordId, startAt).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SampleDeletionIn {
    #[schema(value_type = String, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub source_record_id: SourceRecordId,
    #[schema(value_type = String, format = DateTime)]
    pub start_at: Timestamp,
}

/// An optional 32-bit integer, also written as a number with a zero fraction (`60.0`):
/// JSON Schema counts that as an integer, so a client or generator may send it.
fn integral_i32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(f))
            .map(|f| f as i64)
    });
    whole
        .and_then(|v| i32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| de::Error::custom("expected a 32-bit integer"))
}

/// `POST /v1/events:batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsBatch {
    pub request_id: Uuid,
    #[serde(default)]
    pub payload_hash: Option<String>,
    /// Events to add or replace, indexed 0..events.len() in `results`.
    #[serde(default)]
    pub events: Vec<EventIn>,
    /// Events to delete by eventId, indexed events.len() + i in `results`.
    #[serde(default)]
    pub deletions: Vec<EventDeletionIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventIn {
    #[schema(value_type = String, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub event_id: EventId,
    /// caffeine | alcohol | medication | meal | workout | meditation | custom
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub product_id: Option<ProductId>,
    #[schema(value_type = String, format = DateTime)]
    pub start_at: Timestamp,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "integral_i32")]
    #[schema(minimum = -2147483648, maximum = 2147483647)]
    pub tz_offset_minutes: Option<i32>,
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub attributes: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventDeletionIn {
    #[schema(value_type = String, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub event_id: EventId,
}

/// What happened to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// New (or previously deleted) key: stored and published.
    Accepted,
    /// Known key with new content: replaced and published.
    Updated,
    /// Known key with the same content, or deletion of an unknown/deleted key: no event.
    Duplicate,
    /// Deletion of a live key: marked deleted and a DELETE record published.
    Deleted,
    /// Refused; `code` says why. Nothing was stored for this item.
    Rejected,
}

/// The result of one item. `index` counts samples (or events) first, then deletions
/// (a deletion's index is items.len() + its position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    pub index: u32,
    pub status: ItemStatus,
    /// Rejection code (UNKNOWN_METRIC, UNIT_MISMATCH, OUT_OF_RANGE, INVALID_INTERVAL,
    /// IN_FUTURE, TOO_OLD, MISSING_VALUE, INVALID_CATEGORY, METRIC_BLOCKED,
    /// INVALID_TZ_OFFSET, INVALID_EVENT_TYPE); absent unless rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to a batch: 200 when nothing was rejected, 207 when anything was (also
/// when everything was). `results` lists EVERY item of the request, in index order.
/// A retry with the same requestId and payload gets this same answer again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAnswer {
    pub request_id: Uuid,
    pub accepted: u32,
    pub updated: u32,
    pub duplicates: u32,
    pub deleted: u32,
    pub rejected: u32,
    /// The user's ingest sequence of this stream after the request (bumped by one iff
    /// the request changed something).
    pub user_seq: i64,
    pub results: Vec<ItemResult>,
}

/// `PUT`/`GET /v1/me/privacy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivacySettings {
    /// Metric codes the user does not want stored; new samples of them are rejected
    /// with METRIC_BLOCKED (already stored samples stay until deleted).
    pub blocked_metrics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn offset(v: Value) -> Result<Option<i32>, String> {
        let event = json!({ "eventId": "e", "type": "meal", "startAt": "2026-01-01T00:00:00Z", "tzOffsetMinutes": v });
        serde_json::from_value::<EventIn>(event)
            .map(|e| e.tz_offset_minutes)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn offsets_are_integers_however_written() {
        assert_eq!(offset(json!(60)), Ok(Some(60)));
        assert_eq!(offset(json!(-300.0)), Ok(Some(-300)));
        assert_eq!(offset(json!(-2147483648.0)), Ok(Some(i32::MIN)));
        assert_eq!(offset(Value::Null), Ok(None));
        for bad in [json!(60.5), json!(2147483648.0), json!(1e300), json!("60")] {
            assert!(offset(bad.clone()).is_err(), "{bad}");
        }
    }
}
