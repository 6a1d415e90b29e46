//! Impact windows: how a user's body responds to what they log. Two read models from one
//! state, each its own processor: `session_impacts` (one row per event and metric) and
//! `product_impacts` (one row per product, or event type for events without a product,
//! metric and period). Both read the samples and the events stream; event time only.
//!
//! The rules:
//! - **Metrics**: the discrete quantity metrics of `config::DEFAULT_METRICS`
//!   (configurable). A sample of another metric is ignored.
//! - **Windows**: baseline `[start - 60 min, start)`, after `[end, end + 120 min)`, where
//!   end is `endAt`, or `startAt` for an event without an end (configurable per event
//!   type). A window's value is the mean of the samples of the metric whose start lies in
//!   it (each sample once, whatever its source); `baselineCount`, `afterCount`.
//! - **Session row**: exists while at least one window has a sample of the metric.
//!   `deltaPercent` = 100 * (after - baseline) / baseline to 2 decimals, null when a
//!   window has no sample or the baseline is 0. `reliable` when each window has at least
//!   3 samples whose intervals (an instantaneous sample covers 1 minute) cover at least
//!   half of it, and no other event of the user starts in `[baselineStart, afterEnd)`.
//! - **Product row**: per group (event type and product), metric and period of 30 or 90
//!   days ending at `asOf`, the latest start time of the user's live events (so an edit
//!   or deletion of the latest event moves it back): the sessions of the group's events
//!   starting in
//!   `(asOf - period, asOf]`. It exists while one of them has a row. `n` = reliable
//!   sessions with a `deltaPercent`; `avgDeltaPercent` their mean and `stdDev` their
//!   sample standard deviation (n - 1; null below 2), both to 2 decimals; `tier`
//!   INSUFFICIENT below 3, LOW 3-5, MEDIUM 6-11, HIGH from 12 when at least 75 % of the
//!   deltas have one sign (else MEDIUM).
//!
//! Incremental: a sample touches the sessions (and groups) of the events with a window
//! containing its start; an event touches its own sessions under its old and new
//! definition, the sessions of events whose span contains its old or new start (their
//! isolation), and, when `asOf` moves either way, the groups of events within 90 days
//! before its old or new value. `flush`
//! recomputes each touched row from the state (see `state` for what it keeps).

mod config;
mod state;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration};
use pulseline_schemas::records::{
    ImpactTier, ProductImpactKey, ProductImpactUpsert, SessionImpactKey, SessionImpactUpsert,
};

pub use self::config::{DEFAULT_METRICS, ImpactConfig, MetricList, WindowRules, Windows};
pub use self::state::ImpactState;
use self::state::{Affected, EventDef, SessionStats, round2};
use crate::processor::{Context, Flush, Input, Processor, Rejection};

const MINUTE: i64 = 60_000_000;
const DAY: i64 = 24 * 60 * MINUTE;
/// The product periods, in days.
pub const PERIODS: [i32; 2] = [30, 90];

fn apply(
    cfg: &ImpactConfig,
    state: &mut ImpactState,
    input: &Input,
) -> Result<Affected, Rejection> {
    match input {
        Input::Sample(s) => state.apply_sample(cfg, s),
        Input::Event(e) => state.apply_event(cfg, e),
    }
}

/// `session_impacts`: one row per event and metric.
#[derive(Debug, Clone, Default)]
pub struct SessionImpacts {
    config: ImpactConfig,
}

impl SessionImpacts {
    pub fn new(config: ImpactConfig) -> Self {
        Self { config }
    }
}

/// The local date (of the event's offset) an instant falls on.
fn local_date(micros: i64, tz_minutes: i32) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| {
            (t + Duration::minutes(i64::from(tz_minutes)))
                .date_naive()
                .to_string()
        })
        .unwrap_or_default()
}

fn session_row(
    user_id: &str,
    key: &SessionImpactKey,
    def: &EventDef,
    s: &SessionStats,
) -> SessionImpactUpsert {
    SessionImpactUpsert {
        user_id: user_id.to_owned(),
        event_id: key.event_id.clone(),
        metric: key.metric.clone(),
        version: 0,
        events_version: 0,
        deleted: false,
        event_type: def.event_type.clone(),
        product_id: def.product_id.clone(),
        start_at: def.start,
        end_at: def.has_end.then_some(def.end),
        local_date: local_date(def.start, def.tz_minutes),
        baseline_avg: s.baseline.mean(),
        after_avg: s.after.mean(),
        delta_percent: s.delta_percent(),
        baseline_count: s.baseline.count,
        after_count: s.after.count,
        reliable: s.reliable(),
        applied_sample_seq: 0,
        applied_event_seq: 0,
    }
}

impl Processor for SessionImpacts {
    const NAME: &'static str = "session_impacts";
    type State = ImpactState;
    type Output = SessionImpactUpsert;

    fn apply(
        &self,
        ctx: &mut Context<'_, SessionImpactKey>,
        state: &mut ImpactState,
        input: &Input,
    ) -> Result<(), Rejection> {
        for (event_id, metric) in apply(&self.config, state, input)?.sessions {
            ctx.touch(SessionImpactKey { event_id, metric });
        }
        Ok(())
    }

    fn flush(&self, out: &mut Flush<'_, SessionImpactUpsert>, state: &mut ImpactState) {
        let user = out.user_id().to_owned();
        // Keys come ordered by event: compute each event's stats once.
        let mut current: Option<(&str, BTreeMap<String, SessionStats>)> = None;
        for key in out.touched() {
            if current.as_ref().is_none_or(|(id, _)| *id != key.event_id) {
                current = Some((
                    &key.event_id,
                    state.session_stats(&self.config, &key.event_id),
                ));
            }
            let stats = current.as_ref().and_then(|(_, s)| s.get(&key.metric));
            match (state.event(&key.event_id), stats) {
                (Some(def), Some(s)) if s.exists() => out.emit(session_row(&user, key, def, s)),
                _ => out.delete(key),
            }
        }
    }
}

/// `product_impacts`: one row per product (or event type), metric and period.
#[derive(Debug, Clone, Default)]
pub struct ProductImpacts {
    config: ImpactConfig,
}

impl ProductImpacts {
    pub fn new(config: ImpactConfig) -> Self {
        Self { config }
    }

    /// `stats` memoises each event's session stats within one flush: a group's rows (7
    /// metrics, 2 periods) share the same events.
    fn render(
        &self,
        user_id: &str,
        state: &ImpactState,
        key: &ProductImpactKey,
        stats: &mut HashMap<String, BTreeMap<String, SessionStats>>,
    ) -> Option<ProductImpactUpsert> {
        let as_of = state.as_of()?;
        let group = (key.event_type.clone(), key.product_id.clone());
        let from = as_of.saturating_sub(i64::from(key.period_days) * DAY);
        let mut any = false;
        let mut deltas = Vec::new();
        for id in state.group_events(&group, from, as_of) {
            let event_stats = stats
                .entry(id.clone())
                .or_insert_with(|| state.session_stats(&self.config, id));
            let Some(s) = event_stats.get(&key.metric).filter(|s| s.exists()) else {
                continue;
            };
            any = true;
            if let Some(d) = s.delta_percent().filter(|_| s.reliable()) {
                deltas.push(d);
            }
        }
        if !any {
            return None;
        }
        let summary = DeltaSummary::of(&deltas);
        Some(ProductImpactUpsert {
            user_id: user_id.to_owned(),
            event_type: key.event_type.clone(),
            product_id: key.product_id.clone(),
            metric: key.metric.clone(),
            period_days: key.period_days,
            version: 0,
            events_version: 0,
            deleted: false,
            n: summary.n,
            avg_delta_percent: summary.mean,
            std_dev: summary.std_dev,
            tier: summary.tier,
            as_of,
            applied_sample_seq: 0,
            applied_event_seq: 0,
        })
    }
}

/// The figures of a product impact from its sessions' deltas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaSummary {
    pub n: i64,
    pub mean: Option<f64>,
    pub std_dev: Option<f64>,
    pub tier: ImpactTier,
}

impl DeltaSummary {
    pub fn of(deltas: &[f64]) -> Self {
        let n = deltas.len();
        let mean = (n > 0).then(|| deltas.iter().sum::<f64>() / n as f64);
        let std_dev = mean.filter(|_| n >= 2).map(|m| {
            let ss: f64 = deltas.iter().map(|d| (d - m) * (d - m)).sum();
            round2((ss / (n - 1) as f64).sqrt())
        });
        let positive = deltas.iter().filter(|d| **d > 0.0).count();
        let negative = deltas.iter().filter(|d| **d < 0.0).count();
        let agree = positive.max(negative) * 4 >= n * 3;
        let tier = match n {
            0..3 => ImpactTier::Insufficient,
            3..6 => ImpactTier::Low,
            _ if n >= 12 && agree => ImpactTier::High,
            _ => ImpactTier::Medium,
        };
        Self {
            n: i64::try_from(n).unwrap_or(i64::MAX),
            mean: mean.map(round2),
            std_dev,
            tier,
        }
    }
}

impl Processor for ProductImpacts {
    const NAME: &'static str = "product_impacts";
    type State = ImpactState;
    type Output = ProductImpactUpsert;

    fn apply(
        &self,
        ctx: &mut Context<'_, ProductImpactKey>,
        state: &mut ImpactState,
        input: &Input,
    ) -> Result<(), Rejection> {
        for ((event_type, product_id), metric) in apply(&self.config, state, input)?.groups {
            for period_days in PERIODS {
                ctx.touch(ProductImpactKey {
                    event_type: event_type.clone(),
                    product_id: product_id.clone(),
                    metric: metric.clone(),
                    period_days,
                });
            }
        }
        Ok(())
    }

    fn flush(&self, out: &mut Flush<'_, ProductImpactUpsert>, state: &mut ImpactState) {
        let user = out.user_id().to_owned();
        let mut stats = HashMap::new();
        for key in out.touched() {
            match self.render(&user, state, key, &mut stats) {
                Some(row) => out.emit(row),
                None => out.delete(key),
            }
        }
    }
}

#[cfg(test)]
mod tests;
