//! Sleep nights: per user and local date of waking, the main sleep session ending that
//! date (bed and wake instants, time in bed, asleep, awake, latency, efficiency,
//! awakenings, minutes per stage) and the naps ending that date, from SLEEP_STAGE samples
//! (issue 9). It owns the meaning of a night; it never reads the clock or does I/O.
//!
//! The rules, applied in this order:
//! - **Input**: SLEEP_STAGE samples with an interval (`endAt > startAt`); categories
//!   `in_bed`, `awake`, `asleep_unspecified`, `core` (`light` counts as `core`), `deep`,
//!   `rem`. A zero-length sample has no minutes and is ignored. Other metrics are ignored.
//! - **Slices**: the timeline is cut at every sample boundary. Each slice takes the stage
//!   of the highest-priority source covering it (`SourcePriority`: device class, then the
//!   smaller `sourceId`, exactly as rollups resolve cumulative metrics), so minutes are
//!   never added across sources. Within that source, the most specific stage wins: deep,
//!   rem, core, asleep_unspecified, awake, in_bed (phones record `in_bed` and
//!   `asleep_unspecified` over the same hours). Remaining ties (one source, one stage)
//!   break by `sourceRecordId`, then start, so nothing depends on arrival order.
//! - **Sessions**: resolved intervals merge into one session while the gap between them
//!   is at most 60 minutes; a gap inside a session counts as awake. A longer gap starts a
//!   new session. A session with less than 15 minutes asleep is dropped.
//! - **Night**: a session belongs to the local date of its end (wake time), in the offset
//!   of the sample that wins its last slice. The main sleep of a date is the session ending
//!   that date with the most asleep time (ties: the later one); the others are naps
//!   (`napCount`, `napMinutes` = their asleep minutes), outside the night's figures.
//! - **Figures** of the main sleep, minutes rounded to 0.1: `inBed` = end - start;
//!   `asleep` = core + deep + rem + asleep_unspecified; `awake` = inBed - asleep (awake and
//!   in-bed slices and gaps); rem, deep and core minutes are null when no slice of the
//!   session resolved to one of them (a phone-only night), `unspecified` is always a
//!   number; `latency` = first asleep instant - start; `efficiency` = asleep / inBed to 3
//!   decimals; `awakenings` = bouts of at least 5 minutes that are not asleep (awake or
//!   in-bed slices and gaps, merged while contiguous) between the first and the last
//!   asleep instant; `bedAt`, `wakeAt` (UTC); `sources` that won at least one slice.
//!
//! Incremental: state is the live samples (see `state`). A change touches the nights of
//! every session the changed sample belongs to, before and after the change (a removal
//! can split a session into several, an insertion can merge neighbours, an offset change
//! can move the night), under the offset of every sample ending that session. `flush`
//! recomputes each touched date from the sessions whose end can fall on it (UTC ends
//! within a day of the date, the widest offset) and deletes a date left without a session.
//! Every touched row is rendered, even unchanged, for the reason given in `rollups`.

mod night;
mod state;

use chrono::NaiveDate;
use pulseline_schemas::Operation;
use pulseline_schemas::records::SleepNightUpsert;

use self::night::{MIN_ASLEEP, MINUTE, Session, Stage, StageSample, local_date, minutes, resolve};
use self::state::SampleKey;
pub use self::state::SleepState;
use super::priority::SourcePriority;
use crate::processor::{Context, Flush, Input, Processor, Rejection};

/// The metric this processor reads.
const METRIC: &str = "SLEEP_STAGE";
/// Offsets beyond a day either way are refused (as rollups do); it also bounds the UTC
/// window in which a session ending on a given local date can end.
const MAX_OFFSET_MINUTES: i32 = 24 * 60;
const DAY: i64 = 24 * 60 * MINUTE;

/// The sleep-nights processor. Configuration: the source priority (shared with rollups).
#[derive(Debug, Clone, Default)]
pub struct SleepNights {
    priority: SourcePriority,
}

impl SleepNights {
    pub fn new(priority: SourcePriority) -> Self {
        Self { priority }
    }

    /// Touches the night of every session reaching into `[from, to]` (within the gap).
    fn touch_sessions(
        &self,
        ctx: &mut Context<'_, String>,
        state: &SleepState,
        from: i64,
        to: i64,
    ) {
        for c in state.clusters_around(from, to) {
            for night in c.candidate_nights() {
                ctx.touch(night);
            }
        }
    }

    /// The sessions (at least 15 minutes asleep) that end on local date `night`, by end.
    fn sessions_of(&self, state: &SleepState, night: &str) -> Vec<Session> {
        let Ok(date) = NaiveDate::parse_from_str(night, "%Y-%m-%d") else {
            return Vec::new();
        };
        let Some(midnight) = date.and_hms_opt(0, 0, 0) else {
            return Vec::new();
        };
        let day_start = midnight.and_utc().timestamp_micros();
        let reach = i64::from(MAX_OFFSET_MINUTES) * MINUTE;
        state
            .clusters_around(day_start - reach, day_start + DAY + reach)
            .iter()
            .filter_map(|c| resolve(c, &self.priority))
            .filter(|s| s.night == night && s.asleep >= MIN_ASLEEP)
            .collect()
    }

    fn render(&self, user_id: &str, night: &str, sessions: &[Session]) -> Option<SleepNightUpsert> {
        // Most asleep wins; on a tie the later session (sessions come ordered by end).
        let main = sessions
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (s.asleep, *i))
            .map(|(i, _)| i)?;
        let m = &sessions[main];
        let naps: Vec<&Session> = sessions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != main)
            .map(|(_, s)| s)
            .collect();
        let staged = |v: i64| m.has_stages().then(|| minutes(v));
        let in_bed = m.in_bed();
        Some(SleepNightUpsert {
            user_id: user_id.to_owned(),
            night: night.to_owned(),
            version: 0,
            deleted: false,
            in_bed_minutes: minutes(in_bed),
            asleep_minutes: minutes(m.asleep),
            awake_minutes: minutes(in_bed - m.asleep),
            rem_minutes: staged(m.rem),
            deep_minutes: staged(m.deep),
            core_minutes: staged(m.core),
            latency_minutes: Some(minutes(m.latency)),
            efficiency: Some((m.asleep as f64 / in_bed as f64 * 1000.0).round() / 1000.0),
            awakenings: m.awakenings,
            bed_at: Some(m.start),
            wake_at: Some(m.end),
            sources: m.sources.clone(),
            applied_seq: 0,
            unspecified_minutes: minutes(m.unspecified),
            nap_count: i32::try_from(naps.len()).unwrap_or(i32::MAX),
            nap_minutes: minutes(naps.iter().map(|s| s.asleep).sum()),
        })
    }
}

/// The sample a SLEEP_STAGE upsert stores, `None` for one without minutes; a rejection
/// for what no night can be computed from (no values in the detail: no PHI).
fn parse(s: &pulseline_schemas::records::SampleChange) -> Result<Option<StageSample>, Rejection> {
    let category = s.category.as_deref().ok_or_else(|| {
        Rejection::new("MISSING_CATEGORY", "SLEEP_STAGE sample without a category")
    })?;
    let stage = Stage::parse(category).ok_or_else(|| {
        Rejection::new(
            "UNKNOWN_CATEGORY",
            "SLEEP_STAGE category is not a sleep stage",
        )
    })?;
    let end = s.end_at.unwrap_or(s.start_at);
    if end < s.start_at {
        return Err(Rejection::new("INVALID_INTERVAL", "endAt before startAt"));
    }
    if !(-MAX_OFFSET_MINUTES..=MAX_OFFSET_MINUTES).contains(&s.tz_offset_minutes) {
        return Err(Rejection::new(
            "INVALID_TZ_OFFSET",
            "tzOffsetMinutes outside [-1440, 1440]",
        ));
    }
    Ok((end > s.start_at).then(|| StageSample {
        source_id: s.source_id.clone(),
        source_record_id: s.source_record_id.clone(),
        device_type: s.device_type.clone(),
        start: s.start_at,
        end,
        tz_minutes: s.tz_offset_minutes,
        stage,
    }))
}

impl Processor for SleepNights {
    const NAME: &'static str = "sleep_nights";
    type State = SleepState;
    type Output = SleepNightUpsert;

    fn apply(
        &self,
        ctx: &mut Context<'_, String>,
        state: &mut SleepState,
        input: &Input,
    ) -> Result<(), Rejection> {
        let Input::Sample(s) = input else {
            return Ok(());
        };
        let key: SampleKey = (s.start_at, s.source_id.clone(), s.source_record_id.clone());
        // Whatever this key held before goes (a deletion, a correction, or a key whose
        // metric changed away from SLEEP_STAGE); validation first so a rejection changes
        // nothing.
        let new = if s.operation == Operation::Upsert && s.metric == METRIC {
            parse(s)?
        } else {
            None
        };
        let old = state.get(&key).cloned();
        // A deletion of a sample the state does not hold stands in for it with its own span
        // and renders the night it could have ended: after a broker lost records, the read
        // model can hold a night whose samples the restored state never saw (the changelog
        // and the output topic lose different records), and the repair, a republish of
        // every item with its deletions, must clear it.
        let lost = match (&old, s.operation, s.end_at) {
            (None, Operation::Delete, Some(end)) if s.metric == METRIC => {
                ctx.touch(local_date(end, s.tz_offset_minutes));
                Some((s.start_at, end))
            }
            _ => None,
        };
        if old.is_none() && new.is_none() && lost.is_none() {
            return Ok(());
        }
        let spans: Vec<(i64, i64)> = old
            .iter()
            .chain(&new)
            .map(|s| (s.start, s.end))
            .chain(lost)
            .collect();
        for &(from, to) in &spans {
            self.touch_sessions(ctx, state, from, to);
        }
        state.remove(&key);
        if let Some(n) = new {
            state.put(key, n);
        }
        for &(from, to) in &spans {
            self.touch_sessions(ctx, state, from, to);
        }
        Ok(())
    }

    fn flush(&self, out: &mut Flush<'_, SleepNightUpsert>, state: &mut SleepState) {
        let user = out.user_id().to_owned();
        for night in out.touched() {
            let sessions = self.sessions_of(state, night);
            match self.render(&user, night, &sessions) {
                Some(row) => out.emit(row),
                None => out.delete(night),
            }
        }
    }
}

#[cfg(test)]
mod tests;
