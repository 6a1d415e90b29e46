//! Rollups: per user, metric and local day (and local hour), the metric's aggregation from
//! the catalog: cumulative sum with source-priority resolution and proration (steps,
//! distance, energy ...), average/min/max (heart rate, glucose ...) or latest (weight, VO2
//! max). Category metrics (sleep stages, workouts) are not rolled up here.
//!
//! Incremental: `apply` updates the live samples and touches the hour and day rows it can
//! change; `flush` (once per user per batch) recomputes each day holding a touched row and
//! renders every touched row (a tombstone when the bucket is empty). The runtime versions
//! each row by the newest change of the batch that touched it.
//!
//! Why every touched row, even unchanged: which rows are emitted, and with which version,
//! must depend on the changes only, not on where batches end. A batch that was aborted
//! may still be visible to sinks (tansu shows aborted records, STACK.md) with rows at
//! version v; its replay, with other batch boundaries, re-applies the change behind v and
//! so re-emits each of those rows at a version >= v, and equal versions carry equal
//! content (the content of a row after the last change that touches it). Emitting only
//! rows that changed would let the aborted row win.
//!
//! See `compute` for the interval math and `state` for what is kept.

mod compute;
mod state;

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use pulseline_schemas::records::{Period, RollupKey, RollupUpsert, SampleChange};
use pulseline_schemas::{Aggregation, Catalog, Operation, ValueKind};

use self::compute::{Bucket, PointKind};
pub use self::state::RollupState;
use self::state::{Sample, SampleKey, hours_touched};
use super::priority::SourcePriority;
use crate::processor::{Context, Flush, Input, Processor, Rejection};

/// The rollups processor. Configuration: the source priority of cumulative metrics.
#[derive(Debug, Clone)]
pub struct Rollups {
    catalog: &'static Catalog,
    priority: SourcePriority,
}

impl Default for Rollups {
    fn default() -> Self {
        Self::new(SourcePriority::default())
    }
}

impl Rollups {
    pub fn new(priority: SourcePriority) -> Self {
        Self {
            catalog: Catalog::builtin(),
            priority,
        }
    }

    /// How a metric aggregates; `None` for metrics rollups ignore (categories, unknown).
    fn aggregation(&self, metric: &str) -> Option<(Aggregation, bool)> {
        let def = self.catalog.metric(metric).ok()?;
        (def.kind() == ValueKind::Quantity).then(|| (def.aggregation(), def.priority_resolved()))
    }

    fn is_cumulative(&self, metric: &str) -> bool {
        matches!(
            self.aggregation(metric),
            Some((Aggregation::CumulativeSum, _))
        )
    }

    /// Removes the live sample with `key` (any metric), touching the rows it was in.
    /// Returns whether the state held it.
    fn remove(
        &self,
        ctx: &mut Context<'_, RollupKey>,
        state: &mut RollupState,
        key: &SampleKey,
    ) -> bool {
        let Some(old) = state.take(key) else {
            return false;
        };
        self.touch(ctx, state, &old);
        true
    }

    /// Touches every hour row, and the day rows, that `s` can change.
    fn touch(&self, ctx: &mut Context<'_, RollupKey>, state: &RollupState, s: &Sample) {
        let Some(series) = state.series(&s.metric) else {
            return;
        };
        let (first, last) = hours_touched(
            s.start,
            s.end,
            s.tz_minutes,
            series.offsets(),
            self.is_cumulative(&s.metric),
        );
        self.touch_hours(ctx, &s.metric, first, last);
    }

    /// A deletion of a sample the state does not hold still touches the rows it could have
    /// changed, as if it were held (under its own offset too, which the state may never
    /// have seen). Normally there are none; but after a broker lost records, the read model
    /// can hold rows of samples the restored state never saw (the changelog and the output
    /// topic lose different records), and the repair, a republish of every item with its
    /// deletions, must clear them.
    fn touch_lost(&self, ctx: &mut Context<'_, RollupKey>, state: &RollupState, s: &SampleChange) {
        if self.aggregation(&s.metric).is_none() {
            return;
        }
        let (first, last) = hours_touched(
            s.start_at,
            s.end_at.unwrap_or(s.start_at),
            s.tz_offset_minutes,
            state.series(&s.metric).and_then(|series| series.offsets()),
            self.is_cumulative(&s.metric),
        );
        self.touch_hours(ctx, &s.metric, first, last);
    }

    fn touch_hours(&self, ctx: &mut Context<'_, RollupKey>, metric: &str, first: i64, last: i64) {
        for hour in first..=last {
            ctx.touch(RollupKey {
                metric: metric.to_owned(),
                period: Period::Hour,
                bucket_start: hour_start(hour),
            });
        }
        for day in first.div_euclid(24)..=last.div_euclid(24) {
            ctx.touch(RollupKey {
                metric: metric.to_owned(),
                period: Period::Day,
                bucket_start: day_start(day),
            });
        }
    }

    fn recompute_day(&self, state: &RollupState, metric: &str, day: i64) -> compute::DayBuckets {
        let (Some((aggregation, resolved)), Some(series)) =
            (self.aggregation(metric), state.series(metric))
        else {
            return compute::DayBuckets::default();
        };
        let (ws, we) = series.window(day);
        match aggregation {
            Aggregation::CumulativeSum => {
                let candidates: Vec<&Sample> = state
                    .starting_in(series, ws.saturating_sub(series.max_len), we)
                    .into_iter()
                    .filter(|s| s.end > ws || (s.end == s.start && s.start >= ws))
                    .collect();
                compute::cumulative(&candidates, day, (ws, we), &self.priority, resolved)
            }
            Aggregation::Discrete => {
                compute::by_start(&state.starting_in(series, ws, we), day, PointKind::Average)
            }
            Aggregation::Latest => {
                compute::by_start(&state.starting_in(series, ws, we), day, PointKind::Latest)
            }
        }
    }
}

/// Local day number (days since 1970-01-01) as `YYYY-MM-DD`.
fn day_start(day: i64) -> String {
    let date = NaiveDate::from_num_days_from_ce_opt(UNIX_EPOCH_CE_DAYS + day as i32)
        .unwrap_or(NaiveDate::MIN);
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// Local hour number (hours since 1970-01-01T00:00) as `YYYY-MM-DDTHH:00:00`.
fn hour_start(hour: i64) -> String {
    format!(
        "{}T{:02}:00:00",
        day_start(hour.div_euclid(24)),
        hour.rem_euclid(24)
    )
}

/// The inverse of `day_start` on the date part of a bucket start.
fn parse_day(bucket_start: &str) -> Option<i64> {
    let date = NaiveDate::parse_from_str(bucket_start.get(..10)?, "%Y-%m-%d").ok()?;
    Some(i64::from(date.num_days_from_ce() - UNIX_EPOCH_CE_DAYS))
}

/// The inverse of `hour_start`.
fn parse_hour(bucket_start: &str) -> Option<i64> {
    let hour: i64 = bucket_start.get(11..13)?.parse().ok()?;
    Some(parse_day(bucket_start)? * 24 + hour)
}

/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

fn row(
    user_id: &str,
    metric: &str,
    period: Period,
    bucket_start: String,
    b: Bucket,
) -> RollupUpsert {
    RollupUpsert {
        user_id: user_id.to_owned(),
        metric: metric.to_owned(),
        period,
        bucket_start,
        version: 0,
        deleted: false,
        value: b.value,
        min: b.min,
        max: b.max,
        count: b.count,
        sources: b.sources,
        applied_seq: 0,
    }
}

impl Processor for Rollups {
    const NAME: &'static str = "rollups";
    type State = RollupState;
    type Output = RollupUpsert;

    fn apply(
        &self,
        ctx: &mut Context<'_, RollupKey>,
        state: &mut RollupState,
        input: &Input,
    ) -> Result<(), Rejection> {
        let Input::Sample(s) = input else {
            return Ok(());
        };
        let key: SampleKey = (s.start_at, s.source_id.clone(), s.source_record_id.clone());
        if s.operation == Operation::Delete {
            if !self.remove(ctx, state, &key) {
                self.touch_lost(ctx, state, s);
            }
            return Ok(());
        }
        let def = self.catalog.metric(&s.metric).map_err(|_| {
            Rejection::new(
                "UNKNOWN_METRIC",
                format!("metric {} is not in the catalog", s.metric),
            )
        })?;
        if def.kind() == ValueKind::Category {
            // Not a rollup metric; if this key held a quantity before, that contribution goes.
            self.remove(ctx, state, &key);
            return Ok(());
        }
        let value = s.value.ok_or_else(|| {
            Rejection::new(
                "MISSING_VALUE",
                format!("{} sample without a value", s.metric),
            )
        })?;
        if !value.is_finite() {
            return Err(Rejection::new(
                "NON_FINITE_VALUE",
                format!("{} sample value is not finite", s.metric),
            ));
        }
        let end = s.end_at.unwrap_or(s.start_at);
        if end < s.start_at {
            return Err(Rejection::new("INVALID_INTERVAL", "endAt before startAt"));
        }
        if !(-24 * 60..=24 * 60).contains(&s.tz_offset_minutes) {
            return Err(Rejection::new(
                "INVALID_TZ_OFFSET",
                "tzOffsetMinutes outside [-1440, 1440]",
            ));
        }
        let sample = Sample {
            metric: s.metric.clone(),
            source_id: s.source_id.clone(),
            source_record_id: s.source_record_id.clone(),
            device_type: s.device_type.clone(),
            start: s.start_at,
            end,
            tz_minutes: s.tz_offset_minutes,
            value,
        };
        if state.find(&key) == Some(&sample) {
            // Same content again (a re-upload with a new change id): nothing changes, but
            // its rows are re-emitted (with the new version and appliedSeq).
            self.touch(ctx, state, &sample);
            return Ok(());
        }
        self.remove(ctx, state, &key);
        state.put(key, sample.clone());
        self.touch(ctx, state, &sample);
        Ok(())
    }

    fn flush(&self, out: &mut Flush<'_, RollupUpsert>, state: &mut RollupState) {
        // Touched keys come in key order: per metric, the day rows, then the hour rows.
        // Group them by (metric, local day) so each day is recomputed once.
        let mut days: BTreeMap<(&str, i64), Vec<&RollupKey>> = BTreeMap::new();
        for key in out.touched() {
            if let Some(day) = parse_day(&key.bucket_start) {
                days.entry((key.metric.as_str(), day))
                    .or_default()
                    .push(key);
            }
        }
        let user = out.user_id().to_owned();
        for ((metric, day), keys) in days {
            let mut fresh = self.recompute_day(state, metric, day);
            for key in keys {
                let bucket = match key.period {
                    Period::Day => fresh.day.take(),
                    Period::Hour => {
                        parse_hour(&key.bucket_start).and_then(|h| fresh.hours.remove(&h))
                    }
                };
                match bucket {
                    Some(b) => {
                        out.emit(row(&user, metric, key.period, key.bucket_start.clone(), b))
                    }
                    None => out.delete(key),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
