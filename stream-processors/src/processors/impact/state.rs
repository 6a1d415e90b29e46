//! The impact state of one user: the live events and the live samples of the compared
//! metrics (`asOf`, the latest live start, comes from the index by start). Sessions and product impacts are
//! not stored: they are recomputed from these, so a late sample, an edited event or a
//! deletion can never leave a stale row behind, and the state after applying a prefix of
//! each stream is the same whatever order the two were interleaved in.
//!
//! Two indexes of the events, by start and by end, are derived (rebuilt after a restore)
//! and answer "which events have a window containing this instant".
//!
//! Size: per user, one entry per live event (about 60 bytes) and per live sample of a
//! compared metric (about 50 bytes with its key). A watch measuring heart rate every 5
//! minutes plus a few other readings a day gives about 110,000 samples and 1,500 events a
//! user-year: about 6 MB in memory and on the changelog. Samples are kept for as long as
//! an event can still arrive for them (the acceptance window, 400 days by default).

use std::collections::{BTreeMap, BTreeSet};

use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use serde::{Deserialize, Serialize};

use super::MINUTE;
use super::config::ImpactConfig;
use crate::processor::Rejection;
use crate::state::Table;

/// A logged event, as its windows need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EventDef {
    pub event_type: String,
    pub product_id: Option<String>,
    pub start: i64,
    /// `endAt`, or `startAt` for an event without an end.
    pub end: i64,
    pub has_end: bool,
    pub tz_minutes: i32,
}

/// Which product impacts an event counts in: its type and product (if any).
pub(crate) type Group = (String, Option<String>);

impl EventDef {
    /// The definition a record carries (an upsert's, or a deletion's last content).
    fn of(e: &UserEventChange) -> Self {
        Self {
            event_type: e.event_type.clone(),
            product_id: e.product_id.clone(),
            start: e.start_at,
            end: e.end_at.unwrap_or(e.start_at),
            has_end: e.end_at.is_some(),
            tz_minutes: e.tz_offset_minutes,
        }
    }

    pub fn group(&self) -> Group {
        (self.event_type.clone(), self.product_id.clone())
    }
}

/// One sample of a compared metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reading {
    pub metric: String,
    pub value: f64,
    /// End of the time it covers: `endAt`, or one minute after the start for an
    /// instantaneous sample.
    pub covers_until: i64,
}

/// (start, sourceId, sourceRecordId): the natural key without the user, ordered by start.
type SampleKey = (i64, String, String);

/// A window's samples of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct WindowStats {
    pub count: i64,
    pub sum: f64,
    /// Time covered by the union of the samples' intervals, clipped to the window.
    pub covered: i64,
    pub length: i64,
}

impl WindowStats {
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    fn enough(&self) -> bool {
        self.count >= 3 && self.covered * 2 >= self.length
    }
}

/// One event's response in one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SessionStats {
    pub baseline: WindowStats,
    pub after: WindowStats,
    /// No other event starts between the baseline's start and the after window's end.
    pub isolated: bool,
}

impl SessionStats {
    /// Whether the session has a row: a sample in at least one window.
    pub fn exists(&self) -> bool {
        self.baseline.count + self.after.count > 0
    }

    pub fn reliable(&self) -> bool {
        self.isolated && self.baseline.enough() && self.after.enough()
    }

    /// `100 * (after - baseline) / baseline`, to 2 decimals.
    pub fn delta_percent(&self) -> Option<f64> {
        let (b, a) = (self.baseline.mean()?, self.after.mean()?);
        (b != 0.0).then(|| round2(100.0 * (a - b) / b))
    }
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The rows one change can alter: sessions (event, metric) and product groups (group,
/// metric), before and after it.
#[derive(Debug, Default)]
pub(crate) struct Affected {
    pub sessions: BTreeSet<(String, String)>,
    pub groups: BTreeSet<(Group, String)>,
}

/// The impact state of one user.
#[derive(Debug, Default)]
pub struct ImpactState {
    events: Table<String, EventDef>,
    samples: Table<SampleKey, Reading>,
    by_start: BTreeSet<(i64, String)>,
    by_end: BTreeSet<(i64, String)>,
}

crate::state_tables!(
    ImpactState { events, samples },
    restored = ImpactState::reindex,
    // Held the latest start ever applied, before `asOf` became a function of live events.
    retired = ["as_of"]
);

/// The longest product period: an `asOf` move can change groups with events this far back.
pub(crate) const MAX_PERIOD: i64 = 90 * 24 * 60 * MINUTE;

impl ImpactState {
    fn reindex(&mut self) {
        self.by_start = self
            .events
            .iter()
            .map(|(id, e)| (e.start, id.clone()))
            .collect();
        self.by_end = self
            .events
            .iter()
            .map(|(id, e)| (e.end, id.clone()))
            .collect();
    }

    pub(crate) fn event(&self, id: &str) -> Option<&EventDef> {
        self.events.get(&id.to_owned())
    }

    /// Where the product periods end: the latest start of the user's live events, so
    /// that it depends on what the user holds now, not on the order of their edits.
    pub(crate) fn as_of(&self) -> Option<i64> {
        self.by_start.last().map(|(start, _)| *start)
    }

    /// Number of live samples and events (diagnostics, benches).
    pub fn sizes(&self) -> (usize, usize) {
        (self.samples.len(), self.events.len())
    }

    /// Applies one sample change; returns the rows it can alter.
    pub(crate) fn apply_sample(
        &mut self,
        cfg: &ImpactConfig,
        s: &SampleChange,
    ) -> Result<Affected, Rejection> {
        let key: SampleKey = (s.start_at, s.source_id.clone(), s.source_record_id.clone());
        let new = if s.operation == Operation::Upsert && cfg.tracks(&s.metric) {
            let value = s.value.filter(|v| v.is_finite()).ok_or_else(|| {
                Rejection::new(
                    "MISSING_VALUE",
                    "a compared metric's sample has no finite value",
                )
            })?;
            let end = s.end_at.unwrap_or(s.start_at);
            if end < s.start_at {
                return Err(Rejection::new("INVALID_INTERVAL", "endAt before startAt"));
            }
            Some(Reading {
                metric: s.metric.clone(),
                value,
                covers_until: if end > s.start_at {
                    end
                } else {
                    s.start_at + MINUTE
                },
            })
        } else {
            None
        };
        let old = self.samples.get(&key).cloned();
        let mut affected = Affected::default();
        let mut metrics: BTreeSet<&str> =
            old.iter().chain(&new).map(|r| r.metric.as_str()).collect();
        if s.operation == Operation::Delete && cfg.tracks(&s.metric) {
            // Even one the state does not hold: see `apply_event`.
            metrics.insert(&s.metric);
        }
        if metrics.is_empty() {
            return Ok(affected);
        }
        for (id, e) in self.events_with_window_at(cfg, s.start_at) {
            for m in &metrics {
                affected.sessions.insert((id.clone(), (*m).to_owned()));
                affected.groups.insert((e.group(), (*m).to_owned()));
            }
        }
        match new {
            Some(r) => {
                self.samples.insert(key, r);
            }
            None => {
                self.samples.remove(&key);
            }
        }
        Ok(affected)
    }

    /// Applies one event change; returns the rows it can alter.
    pub(crate) fn apply_event(
        &mut self,
        cfg: &ImpactConfig,
        e: &UserEventChange,
    ) -> Result<Affected, Rejection> {
        let new = match e.operation {
            Operation::Delete => None,
            Operation::Upsert => {
                if e.end_at.is_some_and(|end| end < e.start_at) {
                    return Err(Rejection::new("INVALID_INTERVAL", "endAt before startAt"));
                }
                Some(EventDef::of(e))
            }
        };
        let old = self.events.get(&e.event_id).cloned();
        // A deletion of an event the state does not hold stands in for it with the
        // definition its record carries (the gateway's deletions carry the event's type,
        // product and times). Normally such a deletion alters nothing; but after a broker
        // lost records, the read model can hold rows of an event the restored state never
        // saw or already deleted (the changelog and the output topic lose different
        // records), and the repair, a republish of every item with its deletions, must
        // render them again: its sessions of every compared metric (the samples that fed
        // them may be lost too), its groups, its neighbours' isolation and `asOf`.
        let lost = (old.is_none() && e.operation == Operation::Delete).then(|| EventDef::of(e));
        let mut affected = Affected::default();
        // Its own sessions, under the old and the new definition.
        for def in old.iter().chain(&new) {
            for m in self.metrics_in_windows(cfg, def) {
                affected.sessions.insert((e.event_id.clone(), m.clone()));
                affected.groups.insert((def.group(), m));
            }
        }
        if let Some(def) = &lost {
            for m in cfg.metrics() {
                affected.sessions.insert((e.event_id.clone(), m.clone()));
                affected.groups.insert((def.group(), m.clone()));
            }
        }
        // Events whose isolation its old or new start can change.
        for t in old.iter().chain(&new).chain(&lost).map(|d| d.start) {
            for (id, other) in self.events_spanning(cfg, t) {
                if *id != e.event_id {
                    self.add_all(cfg, &mut affected, id, other);
                }
            }
        }
        // A lost event may have been the latest: `asOf` may move back from its start.
        let before = self.as_of().max(lost.map(|d| d.start));
        if let Some(def) = &old {
            self.by_start.remove(&(def.start, e.event_id.clone()));
            self.by_end.remove(&(def.end, e.event_id.clone()));
            self.events.remove(&e.event_id);
        }
        if let Some(def) = new {
            self.by_start.insert((def.start, e.event_id.clone()));
            self.by_end.insert((def.end, e.event_id.clone()));
            self.events.insert(e.event_id.clone(), def);
        }
        let after = self.as_of();
        if before != after {
            // Product periods end at asOf: the groups of every event either end's periods
            // cover gain or lose sessions.
            let ends = [before, after].into_iter().flatten();
            let from = ends
                .clone()
                .min()
                .map_or(i64::MIN, |a| a.saturating_sub(MAX_PERIOD));
            let to = ends.max().unwrap_or(i64::MIN);
            let moved: Vec<EventDef> = self
                .by_start
                .range((from, String::new())..)
                .take_while(|(s, _)| *s <= to)
                .filter_map(|(_, id)| self.events.get(id).cloned())
                .collect();
            for def in moved {
                for m in self.metrics_in_windows(cfg, &def) {
                    affected.groups.insert((def.group(), m));
                }
            }
        }
        Ok(affected)
    }

    fn add_all(&self, cfg: &ImpactConfig, affected: &mut Affected, id: &str, def: &EventDef) {
        for m in self.metrics_in_windows(cfg, def) {
            affected.sessions.insert((id.to_owned(), m.clone()));
            affected.groups.insert((def.group(), m));
        }
    }

    /// The two windows of an event: `[(from, to)); 2]`, baseline first.
    pub(crate) fn windows_of(cfg: &ImpactConfig, def: &EventDef) -> [(i64, i64); 2] {
        let w = cfg.windows(&def.event_type);
        [
            (def.start - w.baseline(), def.start),
            (def.end, def.end + w.after()),
        ]
    }

    fn samples_in(&self, from: i64, to: i64) -> impl Iterator<Item = (&SampleKey, &Reading)> {
        self.samples
            .range((from, String::new(), String::new())..)
            .take_while(move |(k, _)| k.0 < to)
    }

    /// The metrics with a sample in either window of `def`: the sessions it has.
    fn metrics_in_windows(&self, cfg: &ImpactConfig, def: &EventDef) -> BTreeSet<String> {
        Self::windows_of(cfg, def)
            .iter()
            .flat_map(|&(from, to)| self.samples_in(from, to).map(|(_, r)| r.metric.clone()))
            .collect()
    }

    /// Events with a baseline or after window containing instant `t`.
    fn events_with_window_at(&self, cfg: &ImpactConfig, t: i64) -> BTreeMap<&String, &EventDef> {
        let (max_b, max_a) = cfg.max_windows();
        let starting = self
            .by_start
            .range((t.saturating_add(1), String::new())..)
            .take_while(|(s, _)| *s <= t.saturating_add(max_b));
        let ending = self
            .by_end
            .range((t.saturating_sub(max_a).saturating_add(1), String::new())..)
            .take_while(|(e, _)| *e <= t);
        starting
            .chain(ending)
            .filter_map(|(_, id)| Some((id, self.events.get(id)?)))
            .filter(|(_, e)| {
                Self::windows_of(cfg, e)
                    .iter()
                    .any(|&(from, to)| from <= t && t < to)
            })
            .collect()
    }

    /// Events whose span, from the baseline's start to the after window's end, contains `t`.
    fn events_spanning(&self, cfg: &ImpactConfig, t: i64) -> BTreeMap<&String, &EventDef> {
        let (_, max_a) = cfg.max_windows();
        self.by_end
            .range((t.saturating_sub(max_a).saturating_add(1), String::new())..)
            .filter_map(|(_, id)| Some((id, self.events.get(id)?)))
            .filter(|(_, e)| {
                let [(from, _), (_, to)] = Self::windows_of(cfg, e);
                from <= t && t < to
            })
            .collect()
    }

    /// Every metric's response to event `id` (only metrics with a sample in a window).
    pub(crate) fn session_stats(
        &self,
        cfg: &ImpactConfig,
        id: &str,
    ) -> BTreeMap<String, SessionStats> {
        let Some(def) = self.event(id) else {
            return BTreeMap::new();
        };
        let [baseline, after] = Self::windows_of(cfg, def);
        let isolated = !self
            .by_start
            .range((baseline.0, String::new())..)
            .take_while(|(s, _)| *s < after.1)
            .any(|(_, other)| other != id);
        let mut out: BTreeMap<String, SessionStats> = BTreeMap::new();
        for (which, (from, to)) in [baseline, after].into_iter().enumerate() {
            // Per metric: stats, and the end of the union of intervals so far (samples
            // come ordered by start, so one sweep merges them).
            let mut reach: BTreeMap<&str, i64> = BTreeMap::new();
            for (key, r) in self.samples_in(from, to) {
                let stats = out.entry(r.metric.clone()).or_insert(SessionStats {
                    isolated,
                    ..SessionStats::default()
                });
                let w = if which == 0 {
                    &mut stats.baseline
                } else {
                    &mut stats.after
                };
                w.length = to - from;
                w.count += 1;
                w.sum += r.value;
                let until = r.covers_until.min(to);
                let reached = reach.entry(r.metric.as_str()).or_insert(from);
                let begin = key.0.max(*reached);
                if until > begin {
                    w.covered += until - begin;
                    *reached = until;
                }
            }
        }
        for stats in out.values_mut() {
            stats.baseline.length = baseline.1 - baseline.0;
            stats.after.length = after.1 - after.0;
        }
        out
    }

    /// The events of `group` starting in `(from, to]`, by start.
    pub(crate) fn group_events(&self, group: &Group, from: i64, to: i64) -> Vec<&String> {
        self.by_start
            .range((from.saturating_add(1), String::new())..)
            .take_while(|(s, _)| *s <= to)
            .filter(|(_, id)| self.events.get(id).is_some_and(|e| e.group() == *group))
            .map(|(_, id)| id)
            .collect()
    }
}
