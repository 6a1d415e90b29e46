//! The interval math of one night, pure and allocation-light: resolving overlapping
//! samples into one stage per elementary slice, grouping the resolved timeline into
//! sessions, and the figures of a session. No state, no I/O; times are UTC microseconds
//! and every duration stays an integer until the final 0.1-minute rounding, so results do
//! not depend on summation order.

use std::collections::BTreeSet;

use chrono::DateTime;
use serde::{Deserialize, Serialize};

use super::super::priority::SourcePriority;

pub(crate) const MINUTE: i64 = 60_000_000;
/// Resolved intervals at most this far apart belong to one session.
pub(crate) const MAX_GAP: i64 = 60 * MINUTE;
/// A session with less asleep time is dropped.
pub(crate) const MIN_ASLEEP: i64 = 15 * MINUTE;
/// An awake bout shorter than this is not an awakening.
pub(crate) const MIN_AWAKENING: i64 = 5 * MINUTE;

/// A sleep stage, ordered from the most specific to the least: within one source, a slice
/// covered by several of its samples takes the smallest (phones record `in_bed` and
/// `asleep_unspecified` over the same hours; the asleep sample must win).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Stage {
    Deep,
    Rem,
    Core,
    Unspecified,
    Awake,
    InBed,
}

impl Stage {
    /// The catalog's category (`light` is canonicalised to `core` by the gateway; accepted
    /// here too so a replay of older records cannot dead-letter).
    pub fn parse(category: &str) -> Option<Stage> {
        Some(match category {
            "deep" => Stage::Deep,
            "rem" => Stage::Rem,
            "core" | "light" => Stage::Core,
            "asleep_unspecified" => Stage::Unspecified,
            "awake" => Stage::Awake,
            "in_bed" => Stage::InBed,
            _ => return None,
        })
    }

    pub fn is_asleep(self) -> bool {
        matches!(
            self,
            Stage::Deep | Stage::Rem | Stage::Core | Stage::Unspecified
        )
    }
}

/// One live SLEEP_STAGE sample (`end > start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StageSample {
    pub source_id: String,
    pub source_record_id: String,
    pub device_type: String,
    pub start: i64,
    pub end: i64,
    pub tz_minutes: i32,
    pub stage: Stage,
}

/// A slice of the resolved timeline: `[start, end)` with the winning sample's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slice<'a> {
    start: i64,
    end: i64,
    stage: Stage,
    winner: &'a StageSample,
}

/// Samples connected by gaps of at most `MAX_GAP` (sorted by start): one candidate
/// session, before resolution.
#[derive(Debug)]
pub(crate) struct Cluster<'a> {
    pub samples: Vec<&'a StageSample>,
    pub start: i64,
    pub end: i64,
}

impl Cluster<'_> {
    /// The local dates the cluster's end can fall on: under the offset of each sample
    /// ending it (one of them wins the last slice, and its offset names the night).
    pub fn candidate_nights(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.end == self.end)
            .map(|s| local_date(self.end, s.tz_minutes))
            .collect()
    }
}

/// Groups samples (any order) into clusters: a sample starting at most `MAX_GAP` after
/// the furthest end so far joins the current cluster.
pub(crate) fn clusters<'a>(mut samples: Vec<&'a StageSample>) -> Vec<Cluster<'a>> {
    samples.sort_by(|a, b| {
        (a.start, &a.source_id, &a.source_record_id).cmp(&(
            b.start,
            &b.source_id,
            &b.source_record_id,
        ))
    });
    let mut out: Vec<Cluster<'a>> = Vec::new();
    for s in samples {
        match out.last_mut() {
            Some(c) if s.start - c.end <= MAX_GAP => {
                c.end = c.end.max(s.end);
                c.samples.push(s);
            }
            _ => out.push(Cluster {
                samples: vec![s],
                start: s.start,
                end: s.end,
            }),
        }
    }
    out
}

/// `YYYY-MM-DD` of the UTC instant `t` seen at `tz_minutes` east of UTC.
pub(crate) fn local_date(t: i64, tz_minutes: i32) -> String {
    DateTime::from_timestamp_micros(t + i64::from(tz_minutes) * MINUTE)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A resolved session and its figures (durations in microseconds).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Session {
    pub start: i64,
    pub end: i64,
    /// Local date of `end` in the offset of the sample winning the last slice.
    pub night: String,
    pub asleep: i64,
    pub deep: i64,
    pub rem: i64,
    pub core: i64,
    pub unspecified: i64,
    /// First asleep instant minus `start`.
    pub latency: i64,
    pub awakenings: i32,
    /// Sources that won at least one slice, sorted.
    pub sources: Vec<String>,
}

impl Session {
    pub fn in_bed(&self) -> i64 {
        self.end - self.start
    }

    pub fn has_stages(&self) -> bool {
        self.deep + self.rem + self.core > 0
    }
}

/// Which sample wins a slice: the best-ranked source, then within it the most specific
/// stage; remaining ties (same source and stage) by record id, then start, so the winner
/// (and the offset naming the night) never depends on arrival order.
type WinKey<'a> = (usize, &'a str, Stage, &'a str, i64, usize);

/// Resolves a cluster into slices and figures. `None` when it has no asleep time at all
/// (it can then name no night).
pub(crate) fn resolve(cluster: &Cluster<'_>, priority: &SourcePriority) -> Option<Session> {
    let samples = &cluster.samples;
    // Boundaries: every start and end; a sweep keeps the covering samples ordered by rank.
    let mut events: Vec<(i64, bool, usize)> = Vec::with_capacity(samples.len() * 2);
    for (i, s) in samples.iter().enumerate() {
        events.push((s.start, true, i));
        events.push((s.end, false, i));
    }
    events.sort_unstable();
    let key = |i: usize| -> WinKey<'_> {
        let s = samples[i];
        let r = priority.rank(&s.device_type, &s.source_id);
        (
            r.class,
            r.source_id,
            s.stage,
            s.source_record_id.as_str(),
            s.start,
            i,
        )
    };
    let mut active: BTreeSet<WinKey<'_>> = BTreeSet::new();
    let mut slices: Vec<Slice<'_>> = Vec::new();
    let mut k = 0;
    while k < events.len() {
        let t = events[k].0;
        while k < events.len() && events[k].0 == t {
            let (_, is_start, i) = events[k];
            if is_start {
                active.insert(key(i));
            } else {
                active.remove(&key(i));
            }
            k += 1;
        }
        let (Some(best), Some(&(next, _, _))) = (active.first(), events.get(k)) else {
            continue;
        };
        let winner = samples[best.5];
        match slices.last_mut() {
            // Adjacent slices with the same winner merge (fewer slices, same figures).
            Some(last) if last.end == t && std::ptr::eq(last.winner, winner) => last.end = next,
            _ => slices.push(Slice {
                start: t,
                end: next,
                stage: winner.stage,
                winner,
            }),
        }
    }
    figures(cluster, &slices)
}

fn figures(cluster: &Cluster<'_>, slices: &[Slice<'_>]) -> Option<Session> {
    let first_asleep = slices.iter().find(|s| s.stage.is_asleep())?.start;
    let mut by_stage = [0_i64; 6];
    let mut sources = BTreeSet::new();
    for s in slices {
        by_stage[s.stage as usize] += s.end - s.start;
        sources.insert(s.winner.source_id.as_str());
    }
    // Awake bouts between the first and last asleep instants: every stretch that is not
    // asleep (awake or in-bed slices, and gaps) counts, merged while contiguous.
    let mut awakenings = 0;
    let mut bout_start: Option<i64> = None;
    for s in slices.iter().filter(|s| s.stage.is_asleep()) {
        if let Some(b) = bout_start
            && s.start - b >= MIN_AWAKENING
        {
            awakenings += 1;
        }
        bout_start = Some(s.end);
    }
    let last = slices.last()?;
    Some(Session {
        start: cluster.start,
        end: cluster.end,
        night: local_date(cluster.end, last.winner.tz_minutes),
        asleep: by_stage[..4].iter().sum(),
        deep: by_stage[Stage::Deep as usize],
        rem: by_stage[Stage::Rem as usize],
        core: by_stage[Stage::Core as usize],
        unspecified: by_stage[Stage::Unspecified as usize],
        latency: first_asleep - cluster.start,
        awakenings,
        sources: sources.into_iter().map(str::to_owned).collect(),
    })
}

/// Microseconds as minutes rounded to 0.1.
pub(crate) fn minutes(micros: i64) -> f64 {
    (micros as f64 / 6_000_000.0).round() / 10.0
}
