//! The interval math of rollups: the buckets of one local day (the day and its hours)
//! computed from the samples that can contribute to it. Pure functions over a slice of
//! samples; the state decides which samples and which days.
//!
//! Local time of a sample = UTC + its own `tzOffsetMinutes`, so a bucket is "the local day
//! D as each contributing sample saw it" (DST and travel are handled per sample).
//!
//! Cumulative metrics: the UTC timeline is cut at every sample boundary; each elementary
//! slice takes its value from the highest-priority source covering it (every sample of that
//! source covering the slice contributes `value * slice / sample length`), and each
//! contribution is further cut at the contributing sample's local hour boundaries, so a
//! sample crossing an hour or midnight is split proportionally. A zero-length sample counts
//! fully at its instant unless a sample of a higher-priority source covers that instant
//! (`start <= t < end`, or another zero-length sample at `t`). `min`/`max` stay empty: the
//! sum is the figure; `count`/`sources` are the samples/sources that won at least one slice
//! (or counted point) in the bucket.
//!
//! Discrete metrics: each sample counts once, in the bucket of its local start: average,
//! min, max. Latest: the value of the sample with the latest start (ties: larger
//! `sourceId`, then `sourceRecordId`), with min/max/count/sources over the bucket.

use std::collections::BTreeMap;

use super::state::Sample;
use crate::processors::priority::{Rank, SourcePriority};

pub(crate) const HOUR: i64 = 3_600_000_000;
pub(crate) const DAY: i64 = 24 * HOUR;

pub(crate) fn offset_micros(tz_minutes: i32) -> i64 {
    i64::from(tz_minutes) * 60_000_000
}

/// Local hour index (hours since 1970-01-01T00:00 local) of a UTC instant.
pub(crate) fn local_hour(t: i64, tz_minutes: i32) -> i64 {
    (t + offset_micros(tz_minutes)).div_euclid(HOUR)
}

/// Local day index (days since 1970-01-01 local) of a UTC instant.
pub(crate) fn local_day(t: i64, tz_minutes: i32) -> i64 {
    (t + offset_micros(tz_minutes)).div_euclid(DAY)
}

/// One bucket's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: i64,
    pub sources: Vec<String>,
}

/// The buckets of one local day: the day itself and its non-empty hours (by hour index).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct DayBuckets {
    pub day: Option<Bucket>,
    pub hours: BTreeMap<i64, Bucket>,
}

fn sources_of(samples: &[&Sample], members: &mut Vec<usize>) -> (i64, Vec<String>) {
    members.sort_unstable();
    members.dedup();
    let mut sources: Vec<String> = members
        .iter()
        .map(|&i| samples[i].source_id.clone())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    (members.len() as i64, sources)
}

#[derive(Default)]
struct SumAcc {
    sum: f64,
    members: Vec<usize>,
}

/// Cumulative sum of local day `day`. `samples` must hold every sample overlapping the UTC
/// window `[window.0, window.1)`, which must contain every instant whose local time (under
/// any sample's offset) falls in `day`. With `resolve` false every overlapping sample counts.
pub(crate) fn cumulative(
    samples: &[&Sample],
    day: i64,
    window: (i64, i64),
    priority: &SourcePriority,
    resolve: bool,
) -> DayBuckets {
    let (ws, we) = window;
    let ranks: Vec<Rank<'_>> = samples
        .iter()
        .map(|s| priority.rank(&s.device_type, &s.source_id))
        .collect();
    let mut bounds = Vec::with_capacity(samples.len() * 2);
    let mut spans: Vec<(usize, i64, i64)> = Vec::new(); // (sample, clipped start, clipped end)
    let mut points: Vec<usize> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if s.end > s.start {
            let (a, b) = (s.start.max(ws), s.end.min(we));
            if a < b {
                spans.push((i, a, b));
                bounds.push(a);
                bounds.push(b);
            }
        } else if (ws..we).contains(&s.start) {
            points.push(i);
            bounds.push(s.start);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut starts = spans.clone();
    starts.sort_by_key(|&(_, a, _)| a);
    let mut ends = spans;
    ends.sort_by_key(|&(_, _, b)| b);
    points.sort_by_key(|&i| samples[i].start);

    let mut hours: BTreeMap<i64, SumAcc> = BTreeMap::new();
    let mut active: Vec<usize> = Vec::new();
    let (mut si, mut ei, mut pi) = (0, 0, 0);
    for (bi, &t) in bounds.iter().enumerate() {
        while ei < ends.len() && ends[ei].2 <= t {
            let gone = ends[ei].0;
            if let Some(pos) = active.iter().position(|&x| x == gone) {
                active.swap_remove(pos);
            }
            ei += 1;
        }
        while si < starts.len() && starts[si].1 <= t {
            active.push(starts[si].0);
            si += 1;
        }
        let first_point = pi;
        while pi < points.len() && samples[points[pi]].start == t {
            pi += 1;
        }
        let at_t = &points[first_point..pi];
        if !at_t.is_empty() {
            let best = active.iter().chain(at_t).map(|&x| ranks[x]).min();
            for &p in at_t {
                if resolve && best.is_some_and(|b| b < ranks[p]) {
                    continue;
                }
                let s = samples[p];
                let h = local_hour(t, s.tz_minutes);
                if h.div_euclid(24) == day {
                    let acc = hours.entry(h).or_default();
                    acc.sum += s.value;
                    acc.members.push(p);
                }
            }
        }
        let Some(&t2) = bounds.get(bi + 1) else {
            break;
        };
        if active.is_empty() {
            continue;
        }
        let best = active.iter().map(|&x| ranks[x]).min();
        for &x in &active {
            if resolve && Some(ranks[x]) != best {
                continue;
            }
            let s = samples[x];
            let len = (s.end - s.start) as f64;
            let off = offset_micros(s.tz_minutes);
            let mut cur = t;
            while cur < t2 {
                let h = (cur + off).div_euclid(HOUR);
                let piece_end = ((h + 1) * HOUR - off).min(t2);
                if h.div_euclid(24) == day {
                    let acc = hours.entry(h).or_default();
                    acc.sum += s.value * ((piece_end - cur) as f64 / len);
                    acc.members.push(x);
                }
                cur = piece_end;
            }
        }
    }

    let mut out = DayBuckets::default();
    let mut day_sum = 0.0;
    let mut day_members = Vec::new();
    for (h, mut acc) in hours {
        day_sum += acc.sum;
        day_members.extend_from_slice(&acc.members);
        let (count, sources) = sources_of(samples, &mut acc.members);
        out.hours.insert(
            h,
            Bucket {
                value: Some(acc.sum),
                min: None,
                max: None,
                count,
                sources,
            },
        );
    }
    if !day_members.is_empty() {
        let (count, sources) = sources_of(samples, &mut day_members);
        out.day = Some(Bucket {
            value: Some(day_sum),
            min: None,
            max: None,
            count,
            sources,
        });
    }
    out
}

/// How a non-cumulative bucket turns its samples into a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointKind {
    /// Average of the samples.
    Average,
    /// The sample with the latest start.
    Latest,
}

struct PointAcc<'a> {
    sum: f64,
    min: f64,
    max: f64,
    latest: (i64, &'a str, &'a str, f64),
    members: Vec<usize>,
}

impl<'a> PointAcc<'a> {
    fn new(s: &'a Sample) -> Self {
        Self {
            sum: 0.0,
            min: s.value,
            max: s.value,
            latest: (s.start, &s.source_id, &s.source_record_id, s.value),
            members: Vec::new(),
        }
    }

    fn add(&mut self, i: usize, s: &'a Sample) {
        self.sum += s.value;
        self.min = self.min.min(s.value);
        self.max = self.max.max(s.value);
        let key = (s.start, s.source_id.as_str(), s.source_record_id.as_str());
        if key > (self.latest.0, self.latest.1, self.latest.2) {
            self.latest = (key.0, key.1, key.2, s.value);
        }
        self.members.push(i);
    }

    fn finish(mut self, kind: PointKind, samples: &[&Sample]) -> Bucket {
        let (count, sources) = sources_of(samples, &mut self.members);
        let value = match kind {
            PointKind::Average => self.sum / count as f64,
            PointKind::Latest => self.latest.3,
        };
        Bucket {
            value: Some(value),
            min: Some(self.min),
            max: Some(self.max),
            count,
            sources,
        }
    }
}

/// Discrete and latest metrics: every sample whose local start falls in `day`, once.
/// `samples` may hold others; they are ignored.
pub(crate) fn by_start(samples: &[&Sample], day: i64, kind: PointKind) -> DayBuckets {
    let mut day_acc: Option<PointAcc<'_>> = None;
    let mut hours: BTreeMap<i64, PointAcc<'_>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        if local_day(s.start, s.tz_minutes) != day {
            continue;
        }
        day_acc.get_or_insert_with(|| PointAcc::new(s)).add(i, s);
        hours
            .entry(local_hour(s.start, s.tz_minutes))
            .or_insert_with(|| PointAcc::new(s))
            .add(i, s);
    }
    DayBuckets {
        day: day_acc.map(|a| a.finish(kind, samples)),
        hours: hours
            .into_iter()
            .map(|(h, a)| (h, a.finish(kind, samples)))
            .collect(),
    }
}
