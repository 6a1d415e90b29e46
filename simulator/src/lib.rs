//! Simulated users of the upload API: what a fleet of phones and watches sends.
//!
//! Each [`SimulatedUser`] owns a watch and a phone (overlapping step counts, as in real
//! life), produces heart rate with a daily rhythm, steps in the daytime and sleep at night
//! (the watch records stages every 10 minutes and sometimes an afternoon nap; the phone
//! records `in_bed` and `asleep_unspecified` over the same night, uploaded on waking),
//! walking forward through time from a start in the past (so a batch can be days of
//! offline backlog). Half the users travel for three days to a place 6 to 9 hours away:
//! every sample carries the offset of where it was recorded, so days and nights around the
//! trip cross time zones. It mixes in the awkward traffic the gateway must absorb: retries
//! of the same request, unchanged re-uploads, corrections and deletions.
//!
//! Users also log events (a morning coffee, an evening supplement, workouts) that their
//! heart rate responds to (`events`).
//!
//! It also keeps the client's view of what should be stored ([`SimulatedUser::expected`]):
//! the last write per natural key with deletions applied, so a run can be checked against
//! what the pipeline computed. Deterministic for a given seed.

mod events;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

pub use events::{DECAF, EventContent, EventUpload, HOUSE_BLEND, SUPPLEMENT};

/// How often each kind of awkward request occurs (fractions of requests; the rest are new data).
#[derive(Debug, Clone, Copy)]
pub struct TrafficMix {
    pub retry: f64,
    pub duplicate_upload: f64,
    pub correction: f64,
    pub deletion: f64,
}

impl Default for TrafficMix {
    fn default() -> Self {
        Self {
            retry: 0.05,
            duplicate_upload: 0.05,
            correction: 0.05,
            deletion: 0.02,
        }
    }
}

/// What a request is, so the caller can count outcomes by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    New,
    Retry,
    DuplicateUpload,
    Correction,
    Deletion,
}

/// One upload, ready to POST to `/v1/samples:batch`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub kind: RequestKind,
    pub body: Value,
    /// Items in the request (samples + deletions).
    pub items: usize,
    effects: Vec<(NaturalKey, Option<SampleContent>)>,
}

/// The natural key of a sample as the gateway defines it (the user is implied).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NaturalKey {
    pub source_id: String,
    pub source_record_id: String,
    /// Start instant, UTC microseconds.
    pub start_at: i64,
}

/// What the client last wrote under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleContent {
    pub device_type: &'static str,
    pub metric: &'static str,
    pub value: Option<f64>,
    pub category: Option<&'static str>,
    pub start_at: i64,
    pub end_at: i64,
    pub tz_offset_minutes: i32,
}

#[derive(Debug, Clone)]
struct Device {
    source_id: String,
    device_type: &'static str,
    /// Where this device's data has been generated up to.
    cursor: DateTime<Utc>,
    next_record: u64,
}

/// A simulated user with a watch and a phone.
#[derive(Debug)]
pub struct SimulatedUser {
    pub user_id: Uuid,
    /// The offset at home.
    tz_offset_minutes: i32,
    /// A trip: from, until (UTC) and the offset there. Samples carry the offset of where
    /// they were recorded, so nights and days around the trip cross time zones.
    trip: Option<(DateTime<Utc>, DateTime<Utc>, i32)>,
    devices: Vec<Device>,
    mix: TrafficMix,
    rng: StdRng,
    last: Option<(Value, usize)>,
    sent: Vec<(NaturalKey, SampleContent)>,
    expected: BTreeMap<NaturalKey, SampleContent>,
    seed: u64,
    /// Events are planned up to here.
    events_cursor: DateTime<Utc>,
    events_expected: BTreeMap<String, EventContent>,
    event_log: Vec<(String, Option<EventContent>)>,
}

impl SimulatedUser {
    /// A user whose devices start generating data at `start` (in the past).
    pub fn new(seed: u64, start: DateTime<Utc>, mix: TrafficMix) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let user_id = Uuid::from_u128(rng.random());
        let tz_offset_minutes = [-300, -240, 0, 60, 120, 330, 540][rng.random_range(0..7)];
        // Half the users travel for three days, two days after their backlog begins, to a
        // place 6 to 9 hours away (east or west).
        let trip = rng.random_bool(0.5).then(|| {
            let from = start + TimeDelta::days(2) + TimeDelta::hours(rng.random_range(0..24));
            let shift = [-540, -360, 360, 540][rng.random_range(0..4)];
            // Real offsets lie within -12:00..+14:00 (the gateway refuses others): travel
            // the other way when this one would leave that range.
            let there = tz_offset_minutes + shift;
            let there = if (-720..=840).contains(&there) {
                there
            } else {
                tz_offset_minutes - shift
            };
            (from, from + TimeDelta::days(3), there)
        });
        let device = |kind: &'static str, n: u64| Device {
            source_id: format!(
                "{kind}-{:08x}",
                seed.wrapping_mul(31).wrapping_add(n) as u32
            ),
            device_type: kind,
            cursor: start,
            next_record: 0,
        };
        Self {
            user_id,
            tz_offset_minutes,
            trip,
            devices: vec![device("apple_watch", 1), device("iphone", 2)],
            mix,
            rng,
            last: None,
            sent: Vec::new(),
            expected: BTreeMap::new(),
            seed,
            events_cursor: start,
            events_expected: BTreeMap::new(),
            event_log: Vec::new(),
        }
    }

    /// Another app of the user `user_id`, with its own devices (from `seed`), that uploads
    /// at the same time as the user's first app: the gateway must serialise the two. Send
    /// only its samples (its planned events would reuse the first app's event ids).
    pub fn another_app_of(user_id: Uuid, seed: u64, start: DateTime<Utc>, mix: TrafficMix) -> Self {
        Self {
            user_id,
            ..Self::new(seed, start, mix)
        }
    }

    /// The next request this user's app sends, of about `batch` items, never reaching past `now`.
    pub fn next_upload(&mut self, batch: usize, now: DateTime<Utc>) -> Upload {
        let roll: f64 = self.rng.random();
        let m = self.mix;
        if let Some((body, items)) = self.last.clone()
            && roll < m.retry
        {
            return Upload {
                kind: RequestKind::Retry,
                body,
                items,
                effects: Vec::new(),
            };
        }
        let roll = roll - m.retry;
        if !self.sent.is_empty() {
            if roll < m.duplicate_upload {
                return self.reupload(batch, RequestKind::DuplicateUpload);
            }
            if roll < m.duplicate_upload + m.correction {
                return self.reupload(batch, RequestKind::Correction);
            }
            if roll < m.duplicate_upload + m.correction + m.deletion {
                return self.deletion(batch);
            }
        }
        self.new_data(batch, now)
    }

    /// Applies an upload's effects to the expected state; call it when the gateway answered 2xx.
    pub fn acknowledged(&mut self, upload: &Upload) {
        for (key, content) in &upload.effects {
            match content {
                Some(c) => {
                    self.expected.insert(key.clone(), c.clone());
                }
                None => {
                    self.expected.remove(key);
                }
            }
        }
    }

    /// The client's view of what is stored: last write per natural key, deletions applied.
    pub fn expected(&self) -> &BTreeMap<NaturalKey, SampleContent> {
        &self.expected
    }

    /// The offset where the user is at `t`.
    fn offset_at(&self, t: DateTime<Utc>) -> i32 {
        match self.trip {
            Some((from, until, there)) if from <= t && t < until => there,
            _ => self.tz_offset_minutes,
        }
    }

    fn new_data(&mut self, batch: usize, now: DateTime<Utc>) -> Upload {
        let d = self.rng.random_range(0..self.devices.len());
        let mut samples = Vec::with_capacity(batch);
        let mut effects = Vec::with_capacity(batch);
        while samples.len() < batch {
            let device = &self.devices[d];
            let start = device.cursor;
            if start + TimeDelta::minutes(1) > now {
                break; // caught up with the present: upload what there is
            }
            let offset = self.offset_at(start);
            let local_hour = (start + TimeDelta::minutes(i64::from(offset))).hour();
            let asleep = !(7..23).contains(&local_hour);
            let mut minute = Vec::new();
            let hour_phase = f64::from(local_hour) + f64::from(start.minute()) / 60.0;
            let rhythm = 62.0 + 14.0 * ((hour_phase - 4.0) / 24.0 * std::f64::consts::TAU).sin();
            if device.device_type == "apple_watch" {
                let hr = ((rhythm + self.rng.random_range(-4.0..4.0))
                    * self.heart_rate_factor(start))
                .round();
                minute.push(("HEART_RATE", Some(hr), None, 0, 0));
                if asleep && start.minute().is_multiple_of(10) {
                    // The 10-minute stage that ends now: a watch reports a stage once it is
                    // over, so no upload reaches past the present.
                    let stages = ["core", "deep", "rem", "core", "awake"];
                    let stage = stages[self.rng.random_range(0..stages.len())];
                    minute.push(("SLEEP_STAGE", None, Some(stage), 10, 10));
                }
                if local_hour == 14 && start.minute() == 40 && self.rng.random_bool(0.25) {
                    // An afternoon nap 14:00-14:40, uploaded once it is over.
                    minute.push(("SLEEP_STAGE", None, Some("core"), 40, 40));
                }
            }
            if device.device_type == "iphone" && local_hour == 7 && start.minute() == 0 {
                // On waking, the phone uploads the night it measured: in bed 23:00-07:00,
                // asleep 23:20-06:50, over the same hours as the watch's stages.
                minute.push(("SLEEP_STAGE", None, Some("in_bed"), 480, 480));
                minute.push(("SLEEP_STAGE", None, Some("asleep_unspecified"), 460, 450));
            }
            if !asleep {
                let steps = f64::from(self.rng.random_range(0..120u32));
                // The phone counts in 5-minute blocks that overlap the watch's minutes.
                let phone = device.device_type == "iphone";
                if !phone || start.minute().is_multiple_of(5) {
                    let len = if phone { 5 } else { 1 };
                    minute.push((
                        "STEPS",
                        Some(if phone { steps * 4.0 } else { steps }),
                        None,
                        0,
                        len,
                    ));
                }
            }
            let device = &mut self.devices[d];
            // (metric, value, category, minutes before this minute it began, length)
            for (metric, value, category, back_min, len_min) in minute {
                let begin = start - TimeDelta::minutes(back_min);
                let key = NaturalKey {
                    source_id: device.source_id.clone(),
                    source_record_id: format!("r{}", device.next_record),
                    start_at: begin.timestamp_micros(),
                };
                device.next_record += 1;
                let end = begin + TimeDelta::minutes(len_min);
                let content = SampleContent {
                    device_type: device.device_type,
                    metric,
                    value,
                    category,
                    start_at: begin.timestamp_micros(),
                    end_at: end.timestamp_micros(),
                    tz_offset_minutes: offset,
                };
                samples.push(sample_json(&key, &content));
                effects.push((key, Some(content)));
            }
            device.cursor = start + TimeDelta::minutes(1);
        }
        for (key, content) in &effects {
            if let Some(c) = content {
                self.sent.push((key.clone(), c.clone()));
            }
        }
        let device = &self.devices[d];
        self.finish(
            RequestKind::New,
            device.source_id.clone(),
            device.device_type,
            samples,
            Vec::new(),
            effects,
        )
    }

    /// Re-sends earlier samples of one device, unchanged or with new values.
    fn reupload(&mut self, batch: usize, kind: RequestKind) -> Upload {
        let picked = self.pick_sent(batch);
        let Some((source_id, device_type)) = picked
            .first()
            .map(|(k, c)| (k.source_id.clone(), c.device_type))
        else {
            return Upload {
                kind,
                body: json!({}),
                items: 0,
                effects: Vec::new(),
            };
        };
        let mut samples = Vec::new();
        let mut effects = Vec::new();
        for (key, mut content) in picked {
            if kind == RequestKind::Correction {
                if let Some(v) = content.value.as_mut() {
                    *v += 1.0;
                } else {
                    content.category = Some(if content.category == Some("deep") {
                        "core"
                    } else {
                        "deep"
                    });
                }
                if let Some(entry) = self.sent.iter_mut().find(|(k, _)| *k == key) {
                    entry.1 = content.clone();
                }
            }
            samples.push(sample_json(&key, &content));
            effects.push((key, Some(content)));
        }
        self.finish(kind, source_id, device_type, samples, Vec::new(), effects)
    }

    fn deletion(&mut self, batch: usize) -> Upload {
        let picked = self.pick_sent(batch.min(20));
        let Some((source_id, device_type)) = picked
            .first()
            .map(|(k, c)| (k.source_id.clone(), c.device_type))
        else {
            return Upload {
                kind: RequestKind::Deletion,
                body: json!({}),
                items: 0,
                effects: Vec::new(),
            };
        };
        let mut deletions = Vec::new();
        let mut effects = Vec::new();
        for (key, _) in picked {
            deletions.push(json!({ "sourceRecordId": key.source_record_id, "startAt": micros_rfc3339(key.start_at) }));
            self.sent.retain(|(k, _)| *k != key);
            effects.push((key, None));
        }
        self.finish(
            RequestKind::Deletion,
            source_id,
            device_type,
            Vec::new(),
            deletions,
            effects,
        )
    }

    /// A contiguous run of earlier samples of one device.
    fn pick_sent(&mut self, batch: usize) -> Vec<(NaturalKey, SampleContent)> {
        if self.sent.is_empty() {
            return Vec::new();
        }
        let at = self.rng.random_range(0..self.sent.len());
        let source = self.sent[at].0.source_id.clone();
        self.sent[at..]
            .iter()
            .filter(|(k, _)| k.source_id == source)
            .take(batch)
            .cloned()
            .collect()
    }

    fn finish(
        &mut self,
        kind: RequestKind,
        source_id: String,
        device_type: &'static str,
        samples: Vec<Value>,
        deletions: Vec<Value>,
        effects: Vec<(NaturalKey, Option<SampleContent>)>,
    ) -> Upload {
        let items = samples.len() + deletions.len();
        let mut body = json!({
            "requestId": Uuid::from_u128(self.rng.random()).to_string(),
            "source": { "sourceId": source_id, "deviceType": device_type, "name": device_type },
            "samples": samples,
        });
        if !deletions.is_empty() {
            body["deletions"] = Value::Array(deletions);
        }
        self.last = Some((body.clone(), items));
        Upload {
            kind,
            body,
            items,
            effects,
        }
    }
}

fn micros_rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn sample_json(key: &NaturalKey, c: &SampleContent) -> Value {
    let mut s = json!({
        "sourceRecordId": key.source_record_id,
        "metric": c.metric,
        "startAt": micros_rfc3339(c.start_at),
        "endAt": micros_rfc3339(c.end_at),
        "tzOffsetMinutes": c.tz_offset_minutes,
    });
    match (c.value, c.category) {
        (Some(v), _) => {
            s["value"] = json!(v);
            s["unit"] = json!(if c.metric == "HEART_RATE" {
                "count/min"
            } else {
                "count"
            });
        }
        (None, Some(cat)) => s["category"] = json!(cat),
        (None, None) => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_deterministic_and_expected_state_follows_acknowledgements() {
        let start = Utc::now() - TimeDelta::days(3);
        let now = Utc::now();
        let mut a = SimulatedUser::new(7, start, TrafficMix::default());
        let mut b = SimulatedUser::new(7, start, TrafficMix::default());
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let ua = a.next_upload(50, now);
            let ub = b.next_upload(50, now);
            assert_eq!(ua.body, ub.body, "same seed, same traffic");
            kinds.insert(ua.kind);
            a.acknowledged(&ua);
        }
        assert!(
            kinds.len() >= 4,
            "the mix produces several kinds: {kinds:?}"
        );
        assert!(!a.expected().is_empty());
        assert!(b.expected().is_empty(), "nothing acknowledged for b");
    }

    #[test]
    fn deletions_remove_and_corrections_replace_in_the_expected_state() {
        let start = Utc::now() - TimeDelta::days(1);
        let mix = TrafficMix {
            retry: 0.0,
            duplicate_upload: 0.0,
            correction: 0.0,
            deletion: 0.0,
        };
        let mut u = SimulatedUser::new(1, start, mix);
        let first = u.next_upload(10, Utc::now());
        u.acknowledged(&first);
        assert_eq!(u.expected().len(), first.items);
        let fix = u.reupload(3, RequestKind::Correction);
        u.acknowledged(&fix);
        let del = u.deletion(2);
        u.acknowledged(&del);
        assert_eq!(u.expected().len(), first.items - del.items);
        let (key, content) = &fix.effects[0];
        if let Some(now) = u.expected().get(key) {
            assert_eq!(Some(now), content.as_ref());
        }
    }

    #[test]
    fn every_offset_is_one_the_gateway_accepts() {
        for seed in 0..200 {
            let u = SimulatedUser::new(seed, Utc::now(), TrafficMix::default());
            if let Some((_, _, there)) = u.trip {
                assert!((-720..=840).contains(&there), "seed {seed}: {there}");
            }
        }
    }

    #[test]
    fn uploads_never_reach_past_now() {
        // Every hour of a day and a few minutes past each: sleep stages, naps and phone
        // blocks all end by then.
        let day = DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for step in 0..24 * 6 {
            let now = day + TimeDelta::minutes(step * 10 + 3);
            for seed in [3, 4] {
                let mut u =
                    SimulatedUser::new(seed, now - TimeDelta::minutes(30), TrafficMix::default());
                for _ in 0..10 {
                    let up = u.next_upload(500, now);
                    for s in up.body["samples"].as_array().into_iter().flatten() {
                        let end =
                            DateTime::parse_from_rfc3339(s["endAt"].as_str().unwrap()).unwrap();
                        assert!(end <= now + TimeDelta::minutes(5), "now {now}: ends {end}");
                    }
                }
            }
        }
    }
}
