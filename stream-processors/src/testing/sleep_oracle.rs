//! The brute-force oracle for sleep nights (issue 9), written apart from the processor: it
//! shares no code with `processors::sleep` (its own priority table, the default order; its
//! own stage order; its own slicing). From the distinct changes (last write per natural
//! key by change id, deletions applied) it cuts each user's whole timeline at every sample
//! boundary, picks each elementary slice's winner by scanning every sample (O(n^2)), then
//! walks the slices in time order, gaps included, building sessions and their figures.
//!
//! For tests and the demo's end-of-run check; never used on the processing path.

use std::collections::{BTreeMap, BTreeSet};

use chrono::DateTime;
use pulseline_schemas::records::{Operation, SampleChange, SleepNightUpsert};

use super::Oracle;
use crate::processor::Input;

const MIN: i64 = 60_000_000;

/// One expected night: the fields of a `SleepNightUpsert` that carry meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct NightRow {
    pub bed_at: Option<i64>,
    pub wake_at: Option<i64>,
    pub in_bed: f64,
    pub asleep: f64,
    pub awake: f64,
    pub rem: Option<f64>,
    pub deep: Option<f64>,
    pub core: Option<f64>,
    pub unspecified: f64,
    pub latency: Option<f64>,
    pub efficiency: Option<f64>,
    pub awakenings: i32,
    pub nap_count: i32,
    pub nap_minutes: f64,
    pub sources: Vec<String>,
}

/// The sleep-nights oracle.
#[derive(Debug, Default, Clone, Copy)]
pub struct SleepOracle;

/// Default source priority: wearable > phone > other devices > manual.
fn device_class(device: &str) -> u8 {
    match device {
        "apple_watch" | "wear_os" | "fitbit" | "garmin" | "oura" => 0,
        "iphone" | "android_phone" => 1,
        "manual" => 3,
        _ => 2,
    }
}

/// Specificity within one source (smaller wins) and whether the stage is sleep.
fn stage_info(category: &str) -> Option<(u8, bool)> {
    match category {
        "deep" => Some((0, true)),
        "rem" => Some((1, true)),
        "core" | "light" => Some((2, true)),
        "asleep_unspecified" => Some((3, true)),
        "awake" => Some((4, false)),
        "in_bed" => Some((5, false)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Live {
    source: String,
    record: String,
    device: String,
    category: String,
    start: i64,
    end: i64,
    offset: i64,
}

impl Live {
    fn order(&self) -> (u8, &str, u8, &str, i64) {
        (
            device_class(&self.device),
            &self.source,
            stage_info(&self.category).map_or(9, |s| s.0),
            &self.record,
            self.start,
        )
    }
}

/// Last write per natural key, by change id; only SLEEP_STAGE upserts with minutes live.
fn live_samples(changes: &[Input]) -> BTreeMap<String, Vec<Live>> {
    let mut seen = BTreeSet::new();
    let mut ordered: Vec<&SampleChange> = Vec::new();
    for c in changes {
        if let Input::Sample(s) = c
            && seen.insert((s.user_id.clone(), s.change_seq, s.change_index))
        {
            ordered.push(s);
        }
    }
    ordered.sort_by_key(|s| (s.user_id.clone(), s.change_seq, s.change_index));
    let mut by_key: BTreeMap<(String, i64, String, String), Option<Live>> = BTreeMap::new();
    for s in ordered {
        let key = (
            s.user_id.clone(),
            s.start_at,
            s.source_id.clone(),
            s.source_record_id.clone(),
        );
        let live = (s.operation == Operation::Upsert && s.metric == "SLEEP_STAGE")
            .then(|| Live {
                source: s.source_id.clone(),
                record: s.source_record_id.clone(),
                device: s.device_type.clone(),
                category: s.category.clone().unwrap_or_default(),
                start: s.start_at,
                end: s.end_at.unwrap_or(s.start_at),
                offset: i64::from(s.tz_offset_minutes) * MIN,
            })
            .filter(|l| l.end > l.start && stage_info(&l.category).is_some());
        by_key.insert(key, live);
    }
    let mut out: BTreeMap<String, Vec<Live>> = BTreeMap::new();
    for ((user, ..), live) in by_key {
        if let Some(l) = live {
            out.entry(user).or_default().push(l);
        }
    }
    out
}

/// A session as the oracle sees it, durations in microseconds.
#[derive(Debug, Default)]
struct Sess {
    start: i64,
    end: i64,
    night: String,
    per_stage: [i64; 6],
    first_asleep: Option<i64>,
    awakenings: i32,
    /// Not-asleep time since the last asleep slice (gaps included).
    pending_awake: i64,
    sources: BTreeSet<String>,
}

impl Sess {
    fn asleep(&self) -> i64 {
        self.per_stage[..4].iter().sum()
    }
}

/// Minutes to 0.1, half away from zero, in integers (durations are never negative).
fn tenth(micros: i64) -> f64 {
    (micros + 3_000_000).div_euclid(6_000_000) as f64 / 10.0
}

fn sessions(samples: &[Live]) -> Vec<Sess> {
    let mut cuts: Vec<i64> = samples.iter().flat_map(|s| [s.start, s.end]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Sess> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let Some(win) = samples
            .iter()
            .filter(|s| s.start <= a && s.end >= b)
            .min_by(|x, y| x.order().cmp(&y.order()))
        else {
            continue; // nothing covers this slice: a gap
        };
        let (spec, asleep) = stage_info(&win.category).unwrap_or((9, false));
        let new_session = match out.last() {
            Some(s) => a - s.end > 60 * MIN,
            None => true,
        };
        if new_session {
            out.push(Sess {
                start: a,
                end: a,
                ..Sess::default()
            });
        }
        let s = out.last_mut().expect("a session is open");
        // The gap (if any) between the last slice and this one is awake time.
        s.pending_awake += a - s.end;
        if asleep {
            if s.first_asleep.is_none() {
                s.first_asleep = Some(a);
            } else if s.pending_awake >= 5 * MIN {
                s.awakenings += 1;
            }
            s.pending_awake = 0;
        } else {
            s.pending_awake += b - a;
        }
        s.per_stage[usize::from(spec)] += b - a;
        s.sources.insert(win.source.clone());
        s.end = b;
        let local = DateTime::from_timestamp_micros(b + win.offset).expect("time in range");
        s.night = local.date_naive().to_string();
    }
    out.retain(|s| s.asleep() >= 15 * MIN);
    out
}

fn night_row(main: &Sess, naps: &[&Sess]) -> NightRow {
    let in_bed = main.end - main.start;
    let asleep = main.asleep();
    let staged = main.per_stage[..3].iter().any(|&m| m > 0);
    let stage = |i: usize| staged.then(|| tenth(main.per_stage[i]));
    NightRow {
        bed_at: Some(main.start),
        wake_at: Some(main.end),
        in_bed: tenth(in_bed),
        asleep: tenth(asleep),
        awake: tenth(in_bed - asleep),
        deep: stage(0),
        rem: stage(1),
        core: stage(2),
        unspecified: tenth(main.per_stage[3]),
        latency: main.first_asleep.map(|t| tenth(t - main.start)),
        efficiency: Some((asleep as f64 / in_bed as f64 * 1000.0).round() / 1000.0),
        awakenings: main.awakenings,
        nap_count: naps.len() as i32,
        nap_minutes: tenth(naps.iter().map(|s| s.asleep()).sum()),
        sources: main.sources.iter().cloned().collect(),
    }
}

/// Every night of every user, keyed `user|date`.
pub fn sleep_nights(changes: &[Input]) -> BTreeMap<String, NightRow> {
    let mut out = BTreeMap::new();
    for (user, samples) in live_samples(changes) {
        let mut by_night: BTreeMap<String, Vec<Sess>> = BTreeMap::new();
        for s in sessions(&samples) {
            by_night.entry(s.night.clone()).or_default().push(s);
        }
        for (night, list) in by_night {
            // Most asleep; on a tie the later one (the list is in time order).
            let mut main = 0;
            for (i, s) in list.iter().enumerate() {
                if s.asleep() >= list[main].asleep() {
                    main = i;
                }
            }
            let naps: Vec<&Sess> = (0..list.len())
                .filter(|&i| i != main)
                .map(|i| &list[i])
                .collect();
            out.insert(format!("{user}|{night}"), night_row(&list[main], &naps));
        }
    }
    out
}

impl Oracle<SleepNightUpsert> for SleepOracle {
    type Row = NightRow;

    fn expected(&self, changes: &[Input]) -> BTreeMap<String, NightRow> {
        sleep_nights(changes)
    }

    fn observe(&self, r: &SleepNightUpsert) -> NightRow {
        NightRow {
            bed_at: r.bed_at,
            wake_at: r.wake_at,
            in_bed: r.in_bed_minutes,
            asleep: r.asleep_minutes,
            awake: r.awake_minutes,
            rem: r.rem_minutes,
            deep: r.deep_minutes,
            core: r.core_minutes,
            unspecified: r.unspecified_minutes,
            latency: r.latency_minutes,
            efficiency: r.efficiency,
            awakenings: r.awakenings,
            nap_count: r.nap_count,
            nap_minutes: r.nap_minutes,
            sources: r.sources.clone(),
        }
    }

    fn diff(
        &self,
        actual: &BTreeMap<String, NightRow>,
        expected: &BTreeMap<String, NightRow>,
    ) -> Vec<String> {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6;
        let close_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => close(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut out = Vec::new();
        for key in actual
            .keys()
            .chain(expected.keys())
            .collect::<BTreeSet<_>>()
        {
            match (actual.get(key), expected.get(key)) {
                (Some(a), Some(e)) => {
                    let same = a.bed_at == e.bed_at
                        && a.wake_at == e.wake_at
                        && close(a.in_bed, e.in_bed)
                        && close(a.asleep, e.asleep)
                        && close(a.awake, e.awake)
                        && close_opt(a.rem, e.rem)
                        && close_opt(a.deep, e.deep)
                        && close_opt(a.core, e.core)
                        && close(a.unspecified, e.unspecified)
                        && close_opt(a.latency, e.latency)
                        && close_opt(a.efficiency, e.efficiency)
                        && a.awakenings == e.awakenings
                        && a.nap_count == e.nap_count
                        && close(a.nap_minutes, e.nap_minutes)
                        && a.sources == e.sources;
                    if !same {
                        out.push(format!("{key}:\n  actual   {a:?}\n  expected {e:?}"));
                    }
                }
                (Some(a), None) => out.push(format!("{key}: unexpected {a:?}")),
                (None, Some(e)) => out.push(format!("{key}: missing {e:?}")),
                (None, None) => {}
            }
        }
        out
    }
}
