//! The JSON shapes of the API's answers (and their OpenAPI schemas).

use serde::Serialize;
use utoipa::ToSchema;

/// `GET /v1/me/rollups` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollupsAnswer {
    /// The metric code, as in the catalog (`STEPS`).
    pub metric: String,
    /// The canonical unit every value is in (`count`, `count/min`, `kg` ...).
    pub unit: String,
    /// `day` or `hour`.
    pub period: String,
    /// Buckets that have samples, oldest first; a bucket without samples is absent.
    pub data: Vec<RollupPoint>,
    pub freshness: Freshness,
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollupPoint {
    /// Local wall-clock start of the bucket, without an offset: `YYYY-MM-DD` (day) or
    /// `YYYY-MM-DDTHH:00:00` (hour), in the time zone each sample was recorded in. Not a
    /// UTC instant: a bucket gathers samples of possibly different offsets (travel, DST),
    /// so no single instant exists; parse it as a local date-time, not as UTC.
    pub local_start: String,
    /// The metric's aggregation: sum (steps, energy ...), average (heart rate ...) or the
    /// latest reading (weight ...). Null for metrics without values (categories).
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Samples that contributed.
    pub count: i64,
    /// Sources that contributed after source-priority resolution.
    pub sources: Vec<String>,
}

/// How far the answer is behind what the gateway accepted for this user, over every
/// input stream the read model reads.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Freshness {
    /// `fresh` iff every stream in `streams` is.
    pub status: FreshnessStatus,
    /// The user's newest accepted sequence of the read model's first input stream
    /// (samples, for every read model that reads samples).
    pub latest_seq: i64,
    /// The sequence of that stream this read model reflects.
    pub applied_seq: i64,
    /// The largest lag of any stream, in seconds; 0 when fresh.
    pub lag_seconds: f64,
    /// Per input stream (`samples`, `events`): each has its own sequence.
    pub streams: Vec<StreamFreshness>,
}

/// The freshness of one input stream of a read model.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamFreshness {
    /// `samples` or `events`.
    pub stream: String,
    pub status: FreshnessStatus,
    /// The user's newest accepted sequence of this stream.
    pub latest_seq: i64,
    /// The sequence of this stream the read model reflects.
    pub applied_seq: i64,
    /// Seconds since the oldest accepted change not yet reflected was accepted; 0 when fresh.
    pub lag_seconds: f64,
}

/// `fresh` iff `appliedSeq == latestSeq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FreshnessStatus {
    Fresh,
    Stale,
}
