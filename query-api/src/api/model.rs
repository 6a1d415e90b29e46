//! The JSON shapes of the API's answers (and their OpenAPI schemas).

use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

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

/// `GET /v1/me/impacts/sessions` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionImpactsAnswer {
    /// One entry per event and metric with a sample in either window, by event start
    /// (oldest first), then metric.
    pub data: Vec<SessionImpact>,
    /// Over both input streams: samples and events.
    pub freshness: Freshness,
}

/// How one metric responded to one logged event: its mean in the baseline window before
/// the event (`[startAt - 60 min, startAt)` by default) against the window after it
/// (`[endAt, endAt + 120 min)`, from `startAt` for an event without an end).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionImpact {
    pub event_id: String,
    /// caffeine, alcohol, medication, meal, workout, meditation or custom.
    pub event_type: String,
    pub product_id: Option<String>,
    /// UTC instant, RFC 3339 with `Z`.
    pub start_at: String,
    /// UTC instant, RFC 3339 with `Z`; null for an event without an end.
    pub end_at: Option<String>,
    /// The metric code (`HEART_RATE`), in its canonical unit.
    pub metric: String,
    /// Mean of the samples starting in the baseline window; null without one.
    pub baseline_avg: Option<f64>,
    /// Mean of the samples starting in the after window; null without one.
    pub after_avg: Option<f64>,
    /// 100 × (after − baseline) / baseline, to 2 decimals; null when a window has no
    /// sample or the baseline is 0.
    pub delta_percent: Option<f64>,
    pub baseline_count: i64,
    pub after_count: i64,
    /// Each window has at least 3 samples covering at least half of it, and no other
    /// event starts between the baseline's start and the after window's end.
    pub reliable: bool,
}

/// `GET /v1/me/impacts/products` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductImpactsAnswer {
    /// One entry per product (or event type, for events without a product) and metric,
    /// by event type, product, then metric.
    pub data: Vec<ProductImpact>,
    /// Over both input streams: samples and events.
    pub freshness: Freshness,
}

/// A user's average response to a product (or an event type) in one metric over the
/// `periodDays` days ending at `asOf`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductImpact {
    /// Null for the events of `eventType` logged without a product.
    pub product_id: Option<String>,
    pub event_type: String,
    pub metric: String,
    /// 30 or 90.
    pub period_days: i32,
    /// Reliable sessions with a `deltaPercent` in the period.
    pub n: i64,
    /// Mean of their `deltaPercent`, to 2 decimals; null when `n` is 0.
    pub avg_delta_percent: Option<f64>,
    /// Sample standard deviation of their `deltaPercent`, to 2 decimals; null below 2.
    pub std_dev: Option<f64>,
    /// INSUFFICIENT (n < 3), LOW (3–5), MEDIUM (6–11), HIGH (n ≥ 12 with at least 75 % of
    /// the deltas of one sign; otherwise MEDIUM).
    pub tier: String,
    /// The period's end: the latest start time of the user's events (UTC, RFC 3339 with
    /// `Z`); deleting or moving the latest one moves it back. Event time, not the time of
    /// the request.
    pub as_of: String,
}

/// The `eventType` parameter's values (documentation only: the handler parses the text).
/// An empty value, like every empty optional parameter, means "no filter".
#[derive(Debug)]
pub struct EventTypeParam;

impl PartialSchema for EventTypeParam {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(
                pulseline_schemas::records::EVENT_TYPES
                    .iter()
                    .copied()
                    .chain([""]),
            ))
            .into()
    }
}

impl ToSchema for EventTypeParam {}

/// The `periodDays` parameter's values: the product impacts' two periods.
#[derive(Debug)]
pub struct PeriodDaysParam;

impl PartialSchema for PeriodDaysParam {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .enum_values(Some([30, 90]))
            .into()
    }
}

impl ToSchema for PeriodDaysParam {}
