//! Generates change streams as the gateway would publish them for a few users: requests of
//! one or several items (one sequence per request, the items indexed 0, 1, ...), several
//! sources with overlapping samples, corrections, deletions, duplicates (a change id sent
//! twice), out-of-order event times (offline backlog), time-zone changes (DST, travel) and
//! samples crossing midnight. Change ids increase per user in publication order.

use pulseline_schemas::records::{Operation, SampleChange};
use rand::Rng;
use rand::rngs::StdRng;

pub const SOURCES: &[(&str, &str)] = &[
    ("watch-a", "apple_watch"),
    ("watch-b", "garmin"),
    ("phone-1", "iphone"),
    ("scale-1", "scale"),
    ("typed", "manual"),
];

pub const METRICS: &[&str] = &[
    "STEPS",
    "STEPS",
    "ACTIVE_ENERGY",
    "HEART_RATE",
    "WEIGHT",
    "SLEEP_STAGE",
];

const MINUTE: i64 = 60_000_000;
/// 2026-03-28T00:00:00Z: the weekend Europe switches to summer time.
pub const BASE: i64 = 1_774_656_000_000_000;

/// A seeded generator of sample changes (deterministic for a seed).
#[derive(Debug)]
pub struct Gen {
    pub rng: StdRng,
    /// Per user: the last request's sequence and the next index within it.
    ids: std::collections::HashMap<String, (i64, i32)>,
    /// Per user: indexes into `published` of the user's changes.
    by_user: std::collections::HashMap<String, Vec<usize>>,
    /// Items left in the request being published, per user.
    open: std::collections::HashMap<String, usize>,
    pub published: Vec<SampleChange>,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: StdRng::seed_from_u64(seed),
            ids: Default::default(),
            by_user: Default::default(),
            open: Default::default(),
            published: Vec::new(),
        }
    }

    /// The next change id of `user`: the next index of the open request, or a new request
    /// (new sequence, index 0) of one to five items.
    fn next_id(&mut self, user: &str) -> (i64, i32) {
        let left = self.open.entry(user.to_owned()).or_insert(0);
        let id = self.ids.entry(user.to_owned()).or_insert((0, 0));
        if *left == 0 {
            *left = if self.rng.random_bool(0.4) {
                self.rng.random_range(2..=5)
            } else {
                1
            };
            *id = (id.0 + 1, 0);
        }
        *left -= 1;
        let current = *id;
        id.1 += 1;
        current
    }

    fn record(&mut self, s: &SampleChange) {
        self.by_user
            .entry(s.user_id.clone())
            .or_default()
            .push(self.published.len());
        self.published.push(s.clone());
    }

    fn offset(&mut self, source: usize) -> i32 {
        let r = self.rng.random_range(0..10);
        match (source, r) {
            (_, 0) => [330, 345, -300, 840, -720][self.rng.random_range(0..5)],
            (0 | 2, 1..=4) => 60,
            (0 | 2, _) => 120, // CET -> CEST
            (1, _) => -240,
            _ => 0,
        }
    }

    fn fresh(&mut self, user: &str) -> SampleChange {
        let si = self.rng.random_range(0..SOURCES.len());
        let metric = METRICS[self.rng.random_range(0..METRICS.len())];
        let quarter = self.rng.random_range(0..(3 * 96));
        let mut start = BASE + quarter * 15 * MINUTE;
        if self.rng.random_bool(0.2) {
            start += self.rng.random_range(0..15 * MINUTE);
        }
        let mut s = SampleChange {
            user_id: user.to_owned(),
            change_seq: 0,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: SOURCES[si].0.to_owned(),
            device_type: SOURCES[si].1.to_owned(),
            source_record_id: format!("r{}", self.rng.random_range(0..1_000_000)),
            start_at: start,
            metric: metric.to_owned(),
            end_at: None,
            tz_offset_minutes: self.offset(si),
            value: None,
            unit: None,
            category: None,
            metadata_json: None,
            accepted_at: 0,
        };
        self.shape(&mut s);
        s
    }

    /// Interval and value for the sample's metric.
    fn shape(&mut self, s: &mut SampleChange) {
        let len = match s.metric.as_str() {
            "STEPS" | "ACTIVE_ENERGY" => match self.rng.random_range(0..8) {
                0 => 0,
                1 => MINUTE,
                2 | 3 => 15 * MINUTE,
                4 => 60 * MINUTE,
                5 => 90 * MINUTE,
                6 => self.rng.random_range(1..24 * 60) * MINUTE + self.rng.random_range(0..MINUTE),
                _ => 24 * 60 * MINUTE,
            },
            "SLEEP_STAGE" => 30 * MINUTE,
            _ => {
                if self.rng.random_bool(0.5) {
                    0
                } else {
                    MINUTE
                }
            }
        };
        s.end_at = if len == 0 && self.rng.random_bool(0.5) {
            None
        } else {
            Some(s.start_at + len)
        };
        let (value, category) = match s.metric.as_str() {
            "STEPS" => (Some(self.rng.random_range(0..5000) as f64), None),
            "ACTIVE_ENERGY" => (Some(self.rng.random_range(0.0..400.0)), None),
            "HEART_RATE" => (Some(self.rng.random_range(40.0..190.0)), None),
            "WEIGHT" => (Some(self.rng.random_range(50.0..120.0)), None),
            _ => (None, Some("deep".to_owned())),
        };
        s.value = value;
        s.category = category;
    }

    fn publish(&mut self, mut s: SampleChange) -> SampleChange {
        let (seq, index) = self.next_id(&s.user_id);
        s.change_seq = seq;
        s.change_index = index;
        self.record(&s);
        s
    }

    /// One more change for `user`: a new sample, a correction, a deletion, or a
    /// duplicate of an earlier change (same change id, published again).
    pub fn step(&mut self, user: &str) -> SampleChange {
        let mine = self.by_user.get(user).map_or(0, Vec::len);
        let r = self.rng.random_range(0..100);
        if mine == 0 || r < 55 {
            let s = self.fresh(user);
            return self.publish(s);
        }
        let pick = self.published[self.by_user[user][self.rng.random_range(0..mine)]].clone();
        match r {
            55..=74 => {
                // correction of an existing natural key: new value, maybe new interval,
                // offset or even metric
                let mut s = pick;
                s.operation = Operation::Upsert;
                if self.rng.random_bool(0.15) {
                    s.metric = METRICS[self.rng.random_range(0..METRICS.len())].to_owned();
                }
                if self.rng.random_bool(0.3) {
                    s.tz_offset_minutes = self.offset(0);
                }
                self.shape(&mut s);
                self.publish(s)
            }
            75..=89 => {
                let mut s = pick;
                s.operation = Operation::Delete;
                s.end_at = None;
                s.value = None;
                s.category = None;
                s.device_type = String::new();
                self.publish(s)
            }
            _ => {
                // the relay publishing a change again: same change id, same content
                self.record(&pick);
                pick
            }
        }
    }

    /// `n` changes interleaved over `users`, in publication order.
    pub fn stream(&mut self, users: &[&str], n: usize) -> Vec<SampleChange> {
        let first = self.published.len();
        for _ in 0..n {
            let u = users[self.rng.random_range(0..users.len())];
            self.step(u);
        }
        self.published[first..].to_vec()
    }
}
