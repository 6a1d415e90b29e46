//! Generates the two streams a user's impact windows read, as the gateway would publish
//! them: heart rate from a watch (instantaneous, every few minutes) and a phone (5-minute
//! intervals) that respond to what the user logs, glucose around meals, steps (not a
//! compared metric); a morning coffee of one of two brands, an evening supplement, meals
//! without a product, workouts with an end, events close enough to overlap. Then the
//! mess: samples uploaded late, corrections, deletions, a sample key changing metric,
//! events edited (moved, end changed, product changed) and deleted, duplicates (a change
//! id sent twice) and multi-item requests. The two streams are interleaved at random,
//! sometimes all events first or all samples first. Change ids increase per user and
//! stream in publication order.

use std::collections::HashMap;

use pulseline_schemas::records::{Operation, SampleChange, UserEventChange};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::processor::Input;

const MIN: i64 = 60_000_000;
/// 2026-06-01T00:00:00Z.
pub const BASE: i64 = 1_780_272_000_000_000;

/// A seeded generator of sample and event changes (deterministic for a seed).
#[derive(Debug)]
pub struct ImpactGen {
    rng: StdRng,
}

/// One item before it gets its change id.
#[derive(Debug, Clone)]
enum Item {
    Sample(SampleChange),
    Event(UserEventChange),
}

impl ImpactGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn sample(
        &mut self,
        user: &str,
        src: (&str, &str),
        metric: &str,
        start: i64,
        len: i64,
        value: f64,
    ) -> SampleChange {
        SampleChange {
            user_id: user.to_owned(),
            change_seq: 0,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: src.0.to_owned(),
            device_type: src.1.to_owned(),
            source_record_id: format!("r{}", self.rng.random_range(0..1_000_000_000u32)),
            start_at: start,
            metric: metric.to_owned(),
            end_at: (len > 0).then_some(start + len),
            tz_offset_minutes: 60,
            value: Some(value),
            unit: None,
            category: None,
            metadata_json: None,
            accepted_at: 0,
        }
    }

    fn event(
        &mut self,
        user: &str,
        id: String,
        kind: &str,
        product: Option<&str>,
        start: i64,
        end: Option<i64>,
    ) -> UserEventChange {
        UserEventChange {
            user_id: user.to_owned(),
            change_seq: 0,
            change_index: 0,
            operation: Operation::Upsert,
            event_id: id,
            event_type: kind.to_owned(),
            product_id: product.map(str::to_owned),
            start_at: start,
            end_at: end,
            tz_offset_minutes: 60,
            attributes_json: None,
            accepted_at: 0,
        }
    }

    /// Plans `days` days of one user: events, and samples that respond to them.
    fn plan(&mut self, user: &str, days: i64) -> (Vec<SampleChange>, Vec<UserEventChange>) {
        let (mut samples, mut events) = (Vec::new(), Vec::new());
        let brand = ["coffee-a", "coffee-b"];
        for day in 0..days {
            let d0 = BASE + day * 24 * 60 * MIN;
            // (start, end, heart-rate factor after) of the day's events.
            let mut effects: Vec<(i64, i64, f64)> = Vec::new();
            let coffee = d0 + (7 * 60 + self.rng.random_range(0..90)) * MIN;
            let b = brand[self.rng.random_range(0..2)];
            events.push(self.event(
                user,
                format!("{user}-c{day}"),
                "caffeine",
                Some(b),
                coffee,
                None,
            ));
            effects.push((coffee, coffee, if b == "coffee-a" { 1.2 } else { 1.05 }));
            if self.rng.random_bool(0.6) {
                let meal = d0 + (12 * 60 + self.rng.random_range(0..60)) * MIN;
                events.push(self.event(user, format!("{user}-m{day}"), "meal", None, meal, None));
                effects.push((meal, meal, 1.1));
            }
            if self.rng.random_bool(0.5) {
                // Sometimes right after the coffee: overlapping windows, unreliable.
                let start = if self.rng.random_bool(0.3) {
                    coffee + self.rng.random_range(10..100) * MIN
                } else {
                    d0 + (17 * 60 + self.rng.random_range(0..60)) * MIN
                };
                let end = start + self.rng.random_range(20..70) * MIN;
                events.push(self.event(
                    user,
                    format!("{user}-w{day}"),
                    "workout",
                    None,
                    start,
                    Some(end),
                ));
                effects.push((start, end, 0.9));
            }
            let supplement = d0 + (21 * 60 + self.rng.random_range(0..30)) * MIN;
            events.push(self.event(
                user,
                format!("{user}-s{day}"),
                "medication",
                Some("mag-200"),
                supplement,
                None,
            ));
            effects.push((supplement, supplement, 0.95));
            let factor = |t: i64| {
                effects
                    .iter()
                    .filter(|(_, end, _)| *end <= t && t < end + 120 * MIN)
                    .map(|e| e.2)
                    .product::<f64>()
            };
            // Heart rate from the watch, a few minutes apart, gaps at night.
            let mut t = d0 + 6 * 60 * MIN;
            while t < d0 + 23 * 60 * MIN {
                let v = (62.0 + self.rng.random_range(-4.0..4.0)) * factor(t);
                samples.push(self.sample(
                    user,
                    ("watch", "apple_watch"),
                    "HEART_RATE",
                    t,
                    0,
                    v.round(),
                ));
                t += self.rng.random_range(2..7) * MIN;
            }
            // Phone heart rate over 5-minute intervals in the evening.
            let mut t = d0 + 20 * 60 * MIN;
            while t < d0 + 23 * 60 * MIN {
                let v = 64.0 * factor(t);
                samples.push(self.sample(user, ("phone", "iphone"), "HEART_RATE", t, 5 * MIN, v));
                t += self.rng.random_range(5..15) * MIN;
            }
            // Glucose around the meal, steps all day (not compared).
            for k in 0..6 {
                let t = d0 + (11 * 60 + 30 + k * 25) * MIN;
                let v = 5.2 * factor(t) + self.rng.random_range(0.0..0.5);
                samples.push(self.sample(user, ("meter", "glucometer"), "BLOOD_GLUCOSE", t, 0, v));
            }
            for h in 7..21 {
                let t = d0 + h * 60 * MIN;
                samples.push(self.sample(
                    user,
                    ("watch", "apple_watch"),
                    "STEPS",
                    t,
                    60 * MIN,
                    300.0,
                ));
            }
        }
        (samples, events)
    }

    /// About `n` changes for `users`, both streams interleaved (see the module doc).
    pub fn stream(&mut self, users: &[&str], n: usize) -> Vec<Input> {
        let per_user = (n / users.len().max(1)).max(1);
        let mut streams: Vec<Vec<Item>> = Vec::new();
        for user in users {
            // About 330 samples and 4 events a day before the mess.
            let days = i64::try_from(per_user / 330 + 1).unwrap_or(1).min(30);
            let (samples, events) = self.plan(user, days);
            let mut timed: Vec<(i64, Item)> = samples
                .into_iter()
                .map(|s| (s.start_at, Item::Sample(s)))
                .chain(events.into_iter().map(|e| (e.start_at, Item::Event(e))))
                .collect();
            timed.sort_by_key(|(t, _)| *t);
            let mut items: Vec<Item> = timed.into_iter().map(|(_, i)| i).collect();
            // A tenth arrives late: moved towards the end of the upload.
            for i in 0..items.len() {
                if self.rng.random_bool(0.1) {
                    let j = self.rng.random_range(i..items.len());
                    items.swap(i, j);
                }
            }
            items.truncate(per_user.max(8));
            self.mess(&mut items);
            streams.push(items);
        }
        let mut out = Vec::new();
        for items in streams {
            out.extend(self.publish(items));
        }
        out
    }

    /// Corrections, deletions, metric changes, event edits and deletions, appended.
    fn mess(&mut self, items: &mut Vec<Item>) {
        let extra = items.len() / 8 + 1;
        for _ in 0..extra {
            let pick = items[self.rng.random_range(0..items.len())].clone();
            let change = match pick {
                Item::Sample(mut s) => {
                    match self.rng.random_range(0..4) {
                        0 => s.operation = Operation::Delete,
                        1 => s.metric = "STEPS".into(),
                        _ => s.value = s.value.map(|v| v * 1.5),
                    }
                    Item::Sample(s)
                }
                Item::Event(mut e) => {
                    match self.rng.random_range(0..5) {
                        0 => e.operation = Operation::Delete,
                        1 => {
                            e.start_at += self.rng.random_range(-90..90) * MIN;
                            e.end_at = e.end_at.map(|end| end.max(e.start_at));
                        }
                        2 => e.end_at = Some(e.start_at + self.rng.random_range(0..90) * MIN),
                        3 => e.product_id = Some("coffee-b".into()),
                        _ => e.product_id = None,
                    }
                    Item::Event(e)
                }
            };
            let at = self.rng.random_range(items.len() / 2..=items.len());
            items.insert(at, change);
        }
    }

    /// Assigns change ids per stream (multi-item requests now and then), duplicates a few
    /// changes and interleaves the two streams.
    fn publish(&mut self, items: Vec<Item>) -> Vec<Input> {
        let mut seqs: HashMap<bool, (i64, i32, i32)> = HashMap::new();
        let (mut samples, mut events) = (Vec::new(), Vec::new());
        for item in items {
            let is_event = matches!(item, Item::Event(_));
            let (seq, index, left) = seqs.entry(is_event).or_insert((0, 0, 0));
            if *left == 0 {
                *seq += 1;
                *index = 0;
                *left = if self.rng.random_bool(0.2) {
                    self.rng.random_range(2..6)
                } else {
                    1
                };
            } else {
                *index += 1;
            }
            *left -= 1;
            match item {
                Item::Sample(mut s) => {
                    (s.change_seq, s.change_index) = (*seq, *index);
                    samples.push(Input::Sample(s));
                }
                Item::Event(mut e) => {
                    (e.change_seq, e.change_index) = (*seq, *index);
                    events.push(Input::Event(e));
                }
            }
        }
        for list in [&mut samples, &mut events] {
            // A few republished changes (same id, a later position).
            let dups = list.len() / 30;
            for _ in 0..dups {
                let i = self.rng.random_range(0..list.len());
                let j = self.rng.random_range(i..=list.len());
                let d = list[i].clone();
                list.insert(j, d);
            }
        }
        match self.rng.random_range(0..4) {
            0 => events.into_iter().chain(samples).collect(),
            1 => samples.into_iter().chain(events).collect(),
            _ => {
                // A random merge keeping each stream's order.
                let mut tags: Vec<bool> = std::iter::repeat_n(true, events.len())
                    .chain(std::iter::repeat_n(false, samples.len()))
                    .collect();
                tags.shuffle(&mut self.rng);
                let (mut e, mut s) = (events.into_iter(), samples.into_iter());
                tags.into_iter()
                    .filter_map(|is_event| if is_event { e.next() } else { s.next() })
                    .collect()
            }
        }
    }
}
