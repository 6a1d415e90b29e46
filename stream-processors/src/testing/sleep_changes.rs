//! Generates sleep-stage change streams for a few users, as the gateway would publish
//! them: a watch recording stages and a phone recording `in_bed` and `asleep_unspecified`
//! over the same nights, naps, gaps around the 60-minute session limit, offsets that
//! change (DST, travel, mid-night), samples uploaded late (the planned samples are
//! published out of order), corrections (stage, interval, offset, metric), deletions,
//! whole nights deleted in one request, duplicates (a change id sent twice) and
//! multi-item requests. Change ids increase per user in publication order.

use std::collections::HashMap;

use pulseline_schemas::records::{Operation, SampleChange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIN: i64 = 60_000_000;
/// 2026-03-28T00:00:00Z: the weekend Europe switches to summer time.
pub const BASE: i64 = 1_774_656_000_000_000;

const STAGES: &[&str] = &["core", "core", "deep", "rem", "awake", "asleep_unspecified"];

/// A seeded generator of sleep-stage changes (deterministic for a seed).
#[derive(Debug)]
pub struct SleepGen {
    rng: StdRng,
    /// Per user: samples planned but not yet published (taken mostly in order).
    planned: HashMap<String, Vec<SampleChange>>,
    /// Per user: the last request's sequence and the next index within it.
    ids: HashMap<String, (i64, i32)>,
    open: HashMap<String, usize>,
    by_user: HashMap<String, Vec<usize>>,
    pub published: Vec<SampleChange>,
}

impl SleepGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            planned: HashMap::new(),
            ids: HashMap::new(),
            open: HashMap::new(),
            by_user: HashMap::new(),
            published: Vec::new(),
        }
    }

    fn sample(
        &mut self,
        user: &str,
        source: (&str, &str),
        start: i64,
        len: i64,
        tz: i32,
        category: &str,
    ) -> SampleChange {
        SampleChange {
            user_id: user.to_owned(),
            change_seq: 0,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: source.0.to_owned(),
            device_type: source.1.to_owned(),
            source_record_id: format!("r{}", self.rng.random_range(0..1_000_000_000)),
            start_at: start,
            metric: "SLEEP_STAGE".to_owned(),
            end_at: Some(start + len),
            tz_offset_minutes: tz,
            value: None,
            unit: None,
            category: Some(category.to_owned()),
            metadata_json: None,
            accepted_at: 0,
        }
    }

    /// Plans `nights` nights of sleep (and some naps) for `user`.
    fn plan(&mut self, user: &str, nights: i64) -> Vec<SampleChange> {
        let mut out = Vec::new();
        let watch = if self.rng.random_bool(0.8) {
            ("watch-a", "apple_watch")
        } else {
            ("watch-b", "garmin")
        };
        let phone = ("phone-1", "iphone");
        for n in 0..nights {
            let tz: i32 = match self.rng.random_range(0..10) {
                0 => -300,
                1 => 540,
                2..=5 => 60,
                _ => 120,
            };
            // Bedtime 21:00-01:00 local, seconds jitter sometimes.
            let mut t = BASE + n * 24 * 60 * MIN + (21 * 60 + self.rng.random_range(0..240)) * MIN
                - i64::from(tz) * MIN;
            if self.rng.random_bool(0.2) {
                t += self.rng.random_range(0..60) * 1_000_000;
            }
            let bed = t;
            let mut tz_now = tz;
            let watch_on = self.rng.random_bool(0.8);
            let blocks = self.rng.random_range(1..25);
            for _ in 0..blocks {
                if self.rng.random_bool(0.08) {
                    // A gap around the 60-minute session limit.
                    t += self.rng.random_range(50..75) * MIN;
                }
                if self.rng.random_bool(0.05) {
                    tz_now = if tz_now == 60 { 120 } else { 60 }; // DST or travel mid-night
                }
                let len = self.rng.random_range(3..60) * MIN;
                if watch_on {
                    let stage = STAGES[self.rng.random_range(0..STAGES.len())];
                    let s = self.sample(user, watch, t, len, tz_now, stage);
                    out.push(s);
                }
                t += len;
            }
            if !watch_on || self.rng.random_bool(0.7) {
                let lead = self.rng.random_range(0..40) * MIN;
                let trail = self.rng.random_range(0..20) * MIN;
                let s = self.sample(
                    user,
                    phone,
                    bed - lead,
                    t - bed + lead + trail,
                    tz_now,
                    "in_bed",
                );
                out.push(s);
                let mut a = bed + self.rng.random_range(0..30) * MIN;
                while a < t {
                    let len = self.rng.random_range(20..200) * MIN;
                    let s = self.sample(
                        user,
                        phone,
                        a,
                        len.min(t - a).max(MIN),
                        tz_now,
                        "asleep_unspecified",
                    );
                    out.push(s);
                    a += len + self.rng.random_range(0..70) * MIN;
                }
            }
            if self.rng.random_bool(0.3) {
                // An afternoon nap (13:00-17:00 local).
                let start =
                    BASE + n * 24 * 60 * MIN + (13 * 60 + self.rng.random_range(0..240)) * MIN
                        - i64::from(tz) * MIN;
                let src = if self.rng.random_bool(0.5) {
                    watch
                } else {
                    phone
                };
                let len = self.rng.random_range(5..90) * MIN;
                let stage = if src == phone {
                    "asleep_unspecified"
                } else {
                    "core"
                };
                let s = self.sample(user, src, start, len, tz, stage);
                out.push(s);
            }
        }
        // Publication order: mostly in time order, some uploads weeks late (moved back).
        for i in 0..out.len() {
            if self.rng.random_bool(0.15) {
                let j = self.rng.random_range(i..out.len());
                out.swap(i, j);
            }
        }
        out.reverse(); // popped from the end
        out
    }

    fn next_id(&mut self, user: &str, items: Option<usize>) -> (i64, i32) {
        let left = self.open.entry(user.to_owned()).or_insert(0);
        let id = self.ids.entry(user.to_owned()).or_insert((0, 0));
        if *left == 0 {
            *left = items.unwrap_or_else(|| {
                if self.rng.random_bool(0.4) {
                    self.rng.random_range(2..=5)
                } else {
                    1
                }
            });
            *id = (id.0 + 1, 0);
        }
        *left -= 1;
        let current = *id;
        id.1 += 1;
        current
    }

    fn publish(&mut self, mut s: SampleChange) {
        let (seq, index) = self.next_id(&s.user_id, None);
        s.change_seq = seq;
        s.change_index = index;
        self.record(s);
    }

    fn record(&mut self, s: SampleChange) {
        self.by_user
            .entry(s.user_id.clone())
            .or_default()
            .push(self.published.len());
        self.published.push(s);
    }

    fn pick(&mut self, user: &str) -> Option<SampleChange> {
        let mine = self.by_user.get(user)?;
        let i = mine[self.rng.random_range(0..mine.len())];
        Some(self.published[i].clone())
    }

    /// One more step for `user`: the next planned sample, a correction, a deletion, a
    /// whole night deleted, or a duplicate.
    pub fn step(&mut self, user: &str) {
        if !self.planned.contains_key(user) {
            let plan = self.plan(user, 21);
            self.planned.insert(user.to_owned(), plan);
        }
        let r = self.rng.random_range(0..100);
        let picked = if r >= 60 { self.pick(user) } else { None };
        match (r, picked) {
            (60..=77, Some(mut s)) => {
                if s.operation == Operation::Delete || s.metric != "SLEEP_STAGE" {
                    // Re-uploading a deleted (or non-sleep) key: a full sleep sample again.
                    s.metric = "SLEEP_STAGE".to_owned();
                    s.value = None;
                    s.category = Some("core".to_owned());
                    s.end_at = Some(s.start_at + 30 * MIN);
                    s.device_type = match s.source_id.as_str() {
                        "phone-1" => "iphone",
                        "watch-b" => "garmin",
                        _ => "apple_watch",
                    }
                    .to_owned();
                }
                s.operation = Operation::Upsert;
                match self.rng.random_range(0..5) {
                    0 => {
                        s.category = Some(STAGES[self.rng.random_range(0..STAGES.len())].to_owned())
                    }
                    1 => s.end_at = Some(s.start_at + self.rng.random_range(1..90) * MIN),
                    2 => s.tz_offset_minutes = [60, 120, -300][self.rng.random_range(0..3)],
                    3 => s.metric = "HEART_RATE".to_owned(),
                    _ => {
                        s.metric = "SLEEP_STAGE".to_owned();
                        s.category = Some("deep".to_owned());
                        s.end_at = Some(s.start_at + self.rng.random_range(1..40) * MIN);
                    }
                }
                if s.metric == "HEART_RATE" {
                    s.category = None;
                    s.value = Some(60.0);
                }
                self.publish(s);
            }
            (78..=89, Some(mut s)) => {
                s.operation = Operation::Delete;
                s.end_at = None;
                s.category = None;
                s.value = None;
                s.device_type = String::new();
                self.publish(s);
            }
            (90..=91, Some(s)) => {
                // The whole night around `s` deleted in one request.
                let mine = self.by_user[user].clone();
                let victims: Vec<SampleChange> = mine
                    .iter()
                    .map(|&i| self.published[i].clone())
                    .filter(|o| {
                        o.operation == Operation::Upsert
                            && (o.start_at - s.start_at).abs() < 8 * 60 * MIN
                    })
                    .collect();
                let mut keys: Vec<(i64, String, String)> = victims
                    .iter()
                    .map(|o| (o.start_at, o.source_id.clone(), o.source_record_id.clone()))
                    .collect();
                keys.sort();
                keys.dedup();
                let n = keys.len();
                for (k, key) in keys.into_iter().enumerate() {
                    let (seq, index) = self.next_id(user, if k == 0 { Some(n) } else { None });
                    let mut d = s.clone();
                    (d.start_at, d.source_id, d.source_record_id) = key;
                    d.operation = Operation::Delete;
                    d.end_at = None;
                    d.category = None;
                    d.change_seq = seq;
                    d.change_index = index;
                    self.record(d);
                }
            }
            (92.., Some(s)) => self.record(s), // the relay publishing a change again
            _ => {
                let next = self.planned.get_mut(user).and_then(Vec::pop);
                match next {
                    Some(s) => self.publish(s),
                    None => {
                        if let Some(s) = self.pick(user) {
                            self.record(s);
                        }
                    }
                }
            }
        }
    }

    /// `n` changes interleaved over `users`, in publication order.
    pub fn stream(&mut self, users: &[&str], n: usize) -> Vec<SampleChange> {
        let first = self.published.len();
        while self.published.len() - first < n {
            let u = users[self.rng.random_range(0..users.len())];
            self.step(u);
        }
        self.published[first..].to_vec()
    }
}
