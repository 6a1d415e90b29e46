//! Rollups: per user, metric and local day (and local hour), the metric's aggregation from
//! the catalog: cumulative sum with source-priority resolution and proration (steps,
//! distance, energy ...), average/min/max (heart rate, glucose ...) or latest (weight, VO2
//! max). Category metrics (sleep stages, workouts) are not rolled up here.
//!
//! Incremental: `apply` updates the live samples and marks the local hours it can change;
//! `flush` (once per user per batch) recomputes each day holding a dirty hour and emits
//! every dirty hour row and the day row, each versioned by the newest change of the batch
//! that touched it (`deleted` when the bucket is empty).
//!
//! Why every dirty row, even unchanged: which rows are emitted, and with which version,
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

use chrono::DateTime;
use pulseline_schemas::records::{Period, RollupUpsert};
use pulseline_schemas::{Aggregation, Catalog, Operation, ValueKind};

use self::compute::{Bucket, PointKind};
pub use self::state::RollupState;
use self::state::{Sample, SampleKey, Series};
use super::priority::SourcePriority;
use crate::processor::{ChangeId, Context, Input, Processor, Rejection, Stream};

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

    /// Removes the live sample with `key` (any metric), marking the days it touched.
    fn remove(&self, state: &mut RollupState, key: &SampleKey, change: ChangeId) {
        if let Some(old) = state.take(key) {
            let cumulative = self.is_cumulative(&old.metric);
            if let Some(series) = state.series_mut(&old.metric) {
                series.mark_dirty(&old, cumulative, change);
            }
        }
    }

    fn recompute_day(&self, series: &Series, metric: &str, day: i64) -> compute::DayBuckets {
        let Some((aggregation, resolved)) = self.aggregation(metric) else {
            return compute::DayBuckets::default();
        };
        let (ws, we) = series.window(day);
        match aggregation {
            Aggregation::CumulativeSum => {
                let candidates: Vec<&Sample> = series
                    .starting_in(ws.saturating_sub(series.max_len), we)
                    .into_iter()
                    .filter(|s| s.end > ws || (s.end == s.start && s.start >= ws))
                    .collect();
                compute::cumulative(&candidates, day, (ws, we), &self.priority, resolved)
            }
            Aggregation::Discrete => {
                compute::by_start(&series.starting_in(ws, we), day, PointKind::Average)
            }
            Aggregation::Latest => {
                compute::by_start(&series.starting_in(ws, we), day, PointKind::Latest)
            }
        }
    }
}

fn day_start(day: i64) -> String {
    DateTime::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn hour_start(hour: i64) -> String {
    DateTime::from_timestamp(hour * 3_600, 0)
        .map(|t| t.format("%Y-%m-%dT%H:00:00").to_string())
        .unwrap_or_default()
}

fn row(
    ctx: &Context<'_, RollupUpsert>,
    metric: &str,
    period: Period,
    bucket_start: String,
    change: ChangeId,
    bucket: Option<Bucket>,
) -> RollupUpsert {
    let deleted = bucket.is_none();
    let b = bucket.unwrap_or(Bucket {
        value: None,
        min: None,
        max: None,
        count: 0,
        sources: Vec::new(),
    });
    RollupUpsert {
        user_id: ctx.user_id().to_owned(),
        metric: metric.to_owned(),
        period,
        bucket_start,
        version: change.version(),
        deleted,
        value: b.value,
        min: b.min,
        max: b.max,
        count: b.count,
        sources: b.sources,
        applied_seq: ctx.applied().seq(Stream::Samples),
    }
}

impl Processor for Rollups {
    const NAME: &'static str = "rollups";
    type State = RollupState;
    type Output = RollupUpsert;

    fn inputs(&self) -> &'static [Stream] {
        &[Stream::Samples]
    }

    fn apply(
        &self,
        ctx: &mut Context<'_, RollupUpsert>,
        state: &mut RollupState,
        input: &Input,
    ) -> Result<(), Rejection> {
        let Input::Sample(s) = input else {
            return Ok(());
        };
        let Some(change) = ctx.change_id() else {
            return Ok(());
        };
        let key: SampleKey = (s.start_at, s.source_id.clone(), s.source_record_id.clone());
        if s.operation == Operation::Delete {
            self.remove(state, &key, change);
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
            self.remove(state, &key, change);
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
            let cumulative = self.is_cumulative(&sample.metric);
            if let Some(series) = state.series_mut(&sample.metric) {
                series.mark_dirty(&sample, cumulative, change);
            }
            return Ok(());
        }
        self.remove(state, &key, change);
        let cumulative = def.aggregation() == Aggregation::CumulativeSum;
        let series = state.put(key, sample.clone());
        series.mark_dirty(&sample, cumulative, change);
        Ok(())
    }

    fn flush(&self, ctx: &mut Context<'_, RollupUpsert>, state: &mut RollupState) {
        for (metric, series) in state.series.iter_mut() {
            let dirty = std::mem::take(&mut series.dirty_hours);
            let mut hours = dirty.into_iter().peekable();
            while let Some(&(first, _)) = hours.peek() {
                let day = first.div_euclid(24);
                let mut fresh = self.recompute_day(series, metric, day);
                let mut day_version = None;
                while let Some((hour, change)) = hours.next_if(|(h, _)| h.div_euclid(24) == day) {
                    day_version = day_version.max(Some(change));
                    let bucket = fresh.hours.remove(&hour);
                    let out = row(ctx, metric, Period::Hour, hour_start(hour), change, bucket);
                    ctx.emit(out);
                }
                if let Some(change) = day_version {
                    let out = row(ctx, metric, Period::Day, day_start(day), change, fresh.day);
                    ctx.emit(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
