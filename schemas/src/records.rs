//! Rust types of the records on pulseline's topics, one per `.avsc` in `schemas/avro/`.
//!
//! Field names follow the Avro schemas (camelCase); times are UTC microseconds, as the
//! schemas' `timestamp-micros`. The Avro schema is the contract: a test checks that every
//! type here encodes against its schema and decodes back unchanged.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::readmodel::{AppliedSeqs, ReadModel, Stream};

/// A record type that travels on a topic as Avro, with its schema compiled in.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> + Send + Sync {
    /// The schema text, as committed in `schemas/avro/`.
    const SCHEMA_TEXT: &'static str;
    /// The un-prefixed topic the record is written to.
    const TOPIC: &'static str;

    /// The parsed schema (parsed once; a test proves every embedded schema parses).
    fn schema() -> &'static Schema;

    /// The user the record belongs to. Every topic is partitioned by user (the input topics
    /// through their key; read-model topics by choosing the partition explicitly), so all of
    /// a user's records stay in order in one partition.
    fn user_id(&self) -> &str;

    /// The Kafka message key: the user id on input topics; on compacted read-model topics
    /// the read-model key, so compaction keeps the newest version of each row.
    fn key(&self) -> String {
        self.user_id().to_owned()
    }
}

macro_rules! avro_record {
    ($ty:ty, $file:literal, $topic:expr) => {
        avro_record!($ty, $file, $topic, |r: &$ty| r.user_id.clone());
    };
    ($ty:ty, $file:literal, $topic:expr, $key:expr) => {
        impl AvroRecord for $ty {
            const SCHEMA_TEXT: &'static str = include_str!(concat!("../avro/", $file));
            const TOPIC: &'static str = $topic;

            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
                    Schema::parse_str(<$ty as AvroRecord>::SCHEMA_TEXT).expect(concat!(
                        "embedded schema ",
                        $file,
                        " parses (tested)"
                    ))
                });
                &SCHEMA
            }

            fn user_id(&self) -> &str {
                &self.user_id
            }

            fn key(&self) -> String {
                ($key)(self)
            }
        }
    };
}

/// The `ReadModel` methods of a row that reads the samples stream only and carries
/// `version`, `deleted` and `appliedSeq` fields.
macro_rules! samples_row_versioning {
    () => {
        fn version(&self) -> $crate::RowVersion {
            $crate::RowVersion {
                samples: self.version,
                events: 0,
            }
        }

        fn is_deleted(&self) -> bool {
            self.deleted
        }

        fn applied(&self) -> AppliedSeqs {
            AppliedSeqs {
                samples: self.applied_seq,
                events: 0,
            }
        }

        fn stamp(&mut self, version: $crate::RowVersion, applied: AppliedSeqs) {
            self.version = version.samples;
            self.applied_seq = applied.samples;
        }
    };
}

/// Whether a change adds/replaces an item or removes it. Deletions are records carrying the
/// natural key, never null tombstones, because input topics are append-only.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    #[serde(rename = "UPSERT")]
    Upsert,
    #[serde(rename = "DELETE")]
    Delete,
}

/// One accepted change to a user's samples (`health.samples.v1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SampleChange {
    pub user_id: String,
    pub change_seq: i64,
    pub change_index: i32,
    pub operation: Operation,
    pub source_id: String,
    pub device_type: String,
    pub source_record_id: String,
    pub start_at: i64,
    pub metric: String,
    pub end_at: Option<i64>,
    pub tz_offset_minutes: i32,
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub category: Option<String>,
    pub metadata_json: Option<String>,
    pub accepted_at: i64,
}
avro_record!(SampleChange, "sample_change.avsc", crate::topics::SAMPLES);

/// The event types a user can log (the gateway refuses others; impacts group by them).
pub const EVENT_TYPES: &[&str] = &[
    "caffeine",
    "alcohol",
    "medication",
    "meal",
    "workout",
    "meditation",
    "custom",
];

/// One accepted change to a user's logged events (`health.events.v1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserEventChange {
    pub user_id: String,
    pub change_seq: i64,
    pub change_index: i32,
    pub operation: Operation,
    pub event_id: String,
    pub event_type: String,
    pub product_id: Option<String>,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub tz_offset_minutes: i32,
    pub attributes_json: Option<String>,
    pub accepted_at: i64,
}
avro_record!(
    UserEventChange,
    "user_event_change.avsc",
    crate::topics::EVENTS
);

/// Rollup bucket length.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    #[serde(rename = "DAY")]
    Day,
    #[serde(rename = "HOUR")]
    Hour,
}

/// A versioned upsert of one rollup bucket (`readmodel.rollups.v1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollupUpsert {
    pub user_id: String,
    pub metric: String,
    pub period: Period,
    pub bucket_start: String,
    pub version: i64,
    pub deleted: bool,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: i64,
    pub sources: Vec<String>,
    pub applied_seq: i64,
}
avro_record!(
    RollupUpsert,
    "rollup_upsert.avsc",
    crate::topics::ROLLUPS,
    |r: &RollupUpsert| {
        format!(
            "{}|{}|{}|{}",
            r.user_id,
            r.metric,
            r.period.as_str(),
            r.bucket_start
        )
    }
);

impl Period {
    /// The stored and keyed spelling (`DAY`, `HOUR`), as in the schema's enum.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "DAY",
            Period::Hour => "HOUR",
        }
    }
}

/// A rollup bucket's identity within its user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub metric: String,
    pub period: Period,
    /// As in `RollupUpsert::bucket_start`.
    pub bucket_start: String,
}

impl ReadModel for RollupUpsert {
    const NAME: &'static str = "rollups";
    const STREAMS: &'static [Stream] = &[Stream::Samples];
    type Key = RollupKey;

    fn row_key(&self) -> RollupKey {
        RollupKey {
            metric: self.metric.clone(),
            period: self.period,
            bucket_start: self.bucket_start.clone(),
        }
    }

    fn tombstone(user_id: &str, key: &RollupKey) -> Self {
        RollupUpsert {
            user_id: user_id.to_owned(),
            metric: key.metric.clone(),
            period: key.period,
            bucket_start: key.bucket_start.clone(),
            version: 0,
            deleted: true,
            value: None,
            min: None,
            max: None,
            count: 0,
            sources: Vec::new(),
            applied_seq: 0,
        }
    }

    samples_row_versioning!();
}

/// A versioned upsert of one sleep night (written by the sleep processor).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SleepNightUpsert {
    pub user_id: String,
    pub night: String,
    pub version: i64,
    pub deleted: bool,
    pub in_bed_minutes: f64,
    pub asleep_minutes: f64,
    pub awake_minutes: f64,
    /// Null (not 0) when no slice of the night resolved to a stage (a phone-only night).
    pub rem_minutes: Option<f64>,
    pub deep_minutes: Option<f64>,
    pub core_minutes: Option<f64>,
    pub latency_minutes: Option<f64>,
    pub efficiency: Option<f64>,
    pub awakenings: i32,
    /// UTC instants (microseconds) of the main sleep's start and end.
    pub bed_at: Option<i64>,
    pub wake_at: Option<i64>,
    pub sources: Vec<String>,
    pub applied_seq: i64,
    /// Asleep minutes without a stage (`asleep_unspecified`).
    pub unspecified_minutes: f64,
    /// Sessions ending that date other than the main sleep, and their asleep minutes.
    pub nap_count: i32,
    pub nap_minutes: f64,
}
avro_record!(
    SleepNightUpsert,
    "sleep_night_upsert.avsc",
    crate::topics::SLEEP_NIGHTS,
    |r: &SleepNightUpsert| format!("{}|{}", r.user_id, r.night)
);

impl ReadModel for SleepNightUpsert {
    const NAME: &'static str = "sleep_nights";
    const STREAMS: &'static [Stream] = &[Stream::Samples];
    /// The night: the local date of waking, `YYYY-MM-DD`.
    type Key = String;

    fn row_key(&self) -> String {
        self.night.clone()
    }

    fn tombstone(user_id: &str, night: &String) -> Self {
        SleepNightUpsert {
            user_id: user_id.to_owned(),
            night: night.clone(),
            version: 0,
            deleted: true,
            in_bed_minutes: 0.0,
            asleep_minutes: 0.0,
            awake_minutes: 0.0,
            rem_minutes: None,
            deep_minutes: None,
            core_minutes: None,
            latency_minutes: None,
            efficiency: None,
            awakenings: 0,
            bed_at: None,
            wake_at: None,
            sources: Vec::new(),
            applied_seq: 0,
            unspecified_minutes: 0.0,
            nap_count: 0,
            nap_minutes: 0.0,
        }
    }

    samples_row_versioning!();
}

/// A versioned upsert of one metric's response to one user event (`readmodel.session_impacts.v1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionImpactUpsert {
    pub user_id: String,
    pub event_id: String,
    pub metric: String,
    pub version: i64,
    pub events_version: i64,
    pub deleted: bool,
    pub event_type: String,
    pub product_id: Option<String>,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub local_date: String,
    pub baseline_avg: Option<f64>,
    pub after_avg: Option<f64>,
    pub delta_percent: Option<f64>,
    pub baseline_count: i64,
    pub after_count: i64,
    pub reliable: bool,
    pub applied_sample_seq: i64,
    pub applied_event_seq: i64,
}
avro_record!(
    SessionImpactUpsert,
    "session_impact_upsert.avsc",
    crate::topics::SESSION_IMPACTS,
    |r: &SessionImpactUpsert| format!("{}|{}|{}", r.user_id, r.event_id, r.metric)
);

/// A session impact's identity within its user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionImpactKey {
    pub event_id: String,
    pub metric: String,
}

/// The `ReadModel` methods of a row that reads both streams and carries `version`,
/// `eventsVersion`, `deleted`, `appliedSampleSeq` and `appliedEventSeq` fields.
macro_rules! two_stream_row_versioning {
    () => {
        fn version(&self) -> $crate::RowVersion {
            $crate::RowVersion {
                samples: self.version,
                events: self.events_version,
            }
        }

        fn is_deleted(&self) -> bool {
            self.deleted
        }

        fn applied(&self) -> AppliedSeqs {
            AppliedSeqs {
                samples: self.applied_sample_seq,
                events: self.applied_event_seq,
            }
        }

        fn stamp(&mut self, version: $crate::RowVersion, applied: AppliedSeqs) {
            self.version = version.samples;
            self.events_version = version.events;
            self.applied_sample_seq = applied.samples;
            self.applied_event_seq = applied.events;
        }
    };
}

impl ReadModel for SessionImpactUpsert {
    const NAME: &'static str = "session_impacts";
    const STREAMS: &'static [Stream] = &[Stream::Samples, Stream::Events];
    type Key = SessionImpactKey;

    fn row_key(&self) -> SessionImpactKey {
        SessionImpactKey {
            event_id: self.event_id.clone(),
            metric: self.metric.clone(),
        }
    }

    fn tombstone(user_id: &str, key: &SessionImpactKey) -> Self {
        SessionImpactUpsert {
            user_id: user_id.to_owned(),
            event_id: key.event_id.clone(),
            metric: key.metric.clone(),
            version: 0,
            events_version: 0,
            deleted: true,
            event_type: String::new(),
            product_id: None,
            start_at: 0,
            end_at: None,
            local_date: String::new(),
            baseline_avg: None,
            after_avg: None,
            delta_percent: None,
            baseline_count: 0,
            after_count: 0,
            reliable: false,
            applied_sample_seq: 0,
            applied_event_seq: 0,
        }
    }

    two_stream_row_versioning!();
}

/// How far a product impact's sessions agree, by how many there are and their signs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImpactTier {
    Insufficient,
    Low,
    Medium,
    High,
}

impl ImpactTier {
    pub fn as_str(self) -> &'static str {
        match self {
            ImpactTier::Insufficient => "INSUFFICIENT",
            ImpactTier::Low => "LOW",
            ImpactTier::Medium => "MEDIUM",
            ImpactTier::High => "HIGH",
        }
    }
}

/// A versioned upsert of a user's average response to one product or event type in one
/// metric over a period (`readmodel.product_impacts.v1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProductImpactUpsert {
    pub user_id: String,
    pub event_type: String,
    pub product_id: Option<String>,
    pub metric: String,
    pub period_days: i32,
    pub version: i64,
    pub events_version: i64,
    pub deleted: bool,
    pub n: i64,
    pub avg_delta_percent: Option<f64>,
    pub std_dev: Option<f64>,
    pub tier: ImpactTier,
    pub as_of: i64,
    pub applied_sample_seq: i64,
    pub applied_event_seq: i64,
}
avro_record!(
    ProductImpactUpsert,
    "product_impact_upsert.avsc",
    crate::topics::PRODUCT_IMPACTS,
    |r: &ProductImpactUpsert| product_impact_key(
        &r.user_id,
        &r.event_type,
        r.product_id.as_deref(),
        &r.metric,
        r.period_days
    )
);

/// The topic key: the product is `=`-prefixed (`-` without one), so keys are injective.
fn product_impact_key(
    user: &str,
    event_type: &str,
    product: Option<&str>,
    metric: &str,
    period_days: i32,
) -> String {
    let product = product.map_or_else(|| "-".to_owned(), |p| format!("={p}"));
    format!("{user}|{event_type}|{product}|{metric}|{period_days}")
}

/// A product impact's identity within its user: the group (event type and product, if
/// any), the metric and the period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductImpactKey {
    pub event_type: String,
    pub product_id: Option<String>,
    pub metric: String,
    pub period_days: i32,
}

impl ReadModel for ProductImpactUpsert {
    const NAME: &'static str = "product_impacts";
    const STREAMS: &'static [Stream] = &[Stream::Samples, Stream::Events];
    type Key = ProductImpactKey;

    fn row_key(&self) -> ProductImpactKey {
        ProductImpactKey {
            event_type: self.event_type.clone(),
            product_id: self.product_id.clone(),
            metric: self.metric.clone(),
            period_days: self.period_days,
        }
    }

    fn tombstone(user_id: &str, key: &ProductImpactKey) -> Self {
        ProductImpactUpsert {
            user_id: user_id.to_owned(),
            event_type: key.event_type.clone(),
            product_id: key.product_id.clone(),
            metric: key.metric.clone(),
            period_days: key.period_days,
            version: 0,
            events_version: 0,
            deleted: true,
            n: 0,
            avg_delta_percent: None,
            std_dev: None,
            tier: ImpactTier::Insufficient,
            as_of: 0,
            applied_sample_seq: 0,
            applied_event_seq: 0,
        }
    }

    two_stream_row_versioning!();
}

/// Every schema file with its text, for tests and tooling that walk them all. Also the
/// order in which codecs register them (see `wire`), so it only grows: a schema that
/// changes keeps its old text here and the new one goes last (`avro/registry-order.txt`
/// and a test hold it to that).
pub const ALL_SCHEMAS: &[(&str, &str)] = &[
    ("sample_change.avsc", SampleChange::SCHEMA_TEXT),
    ("user_event_change.avsc", UserEventChange::SCHEMA_TEXT),
    ("rollup_upsert.avsc", RollupUpsert::SCHEMA_TEXT),
    ("sleep_night_upsert.avsc", SleepNightUpsert::SCHEMA_TEXT),
    (
        "session_impact_upsert.avsc",
        SessionImpactUpsert::SCHEMA_TEXT,
    ),
    (
        "product_impact_upsert.avsc",
        ProductImpactUpsert::SCHEMA_TEXT,
    ),
    (
        "read_model_progress.avsc",
        crate::readmodel::ReadModelProgress::SCHEMA_TEXT,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_order_only_grows() {
        use sha2::{Digest, Sha256};
        let recorded: Vec<String> = include_str!("../avro/registry-order.txt")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let now: Vec<String> = ALL_SCHEMAS
            .iter()
            .map(|(file, text)| {
                let hash: String = Sha256::digest(text.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("{file} {hash}")
            })
            .collect();
        assert!(
            now.starts_with(&recorded),
            "a schema registered before changed or moved: records written under its id \
             would decode with another schema after a registry restart. Keep the old text \
             in ALL_SCHEMAS and append the new one.\nrecorded: {recorded:#?}\nnow: {now:#?}"
        );
        assert_eq!(
            now.len(),
            recorded.len(),
            "append the new schema to registry-order.txt"
        );
    }

    #[test]
    fn input_records_are_keyed_by_user_and_read_models_by_row() {
        let rollup = RollupUpsert {
            user_id: "u1".into(),
            metric: "STEPS".into(),
            period: Period::Day,
            bucket_start: "2026-11-23".into(),
            version: 1,
            deleted: false,
            value: None,
            min: None,
            max: None,
            count: 0,
            sources: vec![],
            applied_seq: 0,
        };
        assert_eq!(rollup.key(), "u1|STEPS|DAY|2026-11-23");
        assert_eq!(rollup.user_id(), "u1");
        let hour = RollupUpsert {
            period: Period::Hour,
            ..rollup
        };
        assert_eq!(hour.key(), "u1|STEPS|HOUR|2026-11-23");
    }
}
