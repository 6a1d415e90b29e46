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

/// `GET /v1/me/sleep` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepAnswer {
    /// One entry per date of waking that has a main sleep, oldest first (newest last); a
    /// date without sleep is absent.
    pub data: Vec<SleepNight>,
    pub freshness: Freshness,
}

/// One night: the main sleep session ending on `date`, and the naps ending that date.
/// Minutes are rounded to 0.1. Overlapping sources never add up: each moment takes the
/// stage of the highest-priority source (watch before phone), so `inBedMinutes` =
/// `asleepMinutes` + `awakeMinutes`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepNight {
    /// The local date of waking, `YYYY-MM-DD`: the date on which the main sleep ended, in
    /// the time-zone offset recorded by the sample that ended it. Not a UTC date.
    pub date: String,
    /// When the main sleep began: a UTC instant, RFC 3339 with `Z`.
    pub bed_at: Option<String>,
    /// When the main sleep ended: a UTC instant, RFC 3339 with `Z`.
    pub wake_at: Option<String>,
    /// `wakeAt` - `bedAt`, gaps of up to 60 minutes included (counted as awake).
    pub in_bed_minutes: f64,
    /// core + deep + rem + unspecified.
    pub asleep_minutes: f64,
    /// In bed and not asleep (awake, in bed, or no sample).
    pub awake_minutes: f64,
    /// From `bedAt` to the first minute asleep.
    pub latency_minutes: Option<f64>,
    /// asleep / in bed, 0..1, to 3 decimals.
    pub efficiency: Option<f64>,
    /// Awake bouts of at least 5 minutes between falling asleep and the final waking.
    pub awakenings: i32,
    /// Null (not 0) when no source recorded stages that night (a phone-only night).
    pub rem_minutes: Option<f64>,
    /// Null (not 0) when no source recorded stages that night.
    pub deep_minutes: Option<f64>,
    /// Light sleep. Null (not 0) when no source recorded stages that night.
    pub core_minutes: Option<f64>,
    /// Asleep without a stage (phones).
    pub unspecified_minutes: f64,
    /// Other sleep sessions (at least 15 minutes asleep) ending on `date`.
    pub nap_count: i32,
    /// Minutes asleep in those naps, not part of the night's figures.
    pub nap_minutes: f64,
    /// Sources whose samples won at least one moment of the main sleep.
    pub sources: Vec<String>,
}
