//! The events a simulated user logs, and how their heart rate responds: a morning coffee
//! (mostly a strong house blend, sometimes decaf), an evening magnesium supplement, and a
//! workout three evenings a week. After a coffee the watch's heart rate is about 15 %
//! higher for two hours (decaf: 2 %), after a workout 8 %, after the supplement 4 % lower,
//! so the impact read models have something to find. Events go up in their own requests
//! (`POST /v1/events:batch`), sometimes before the samples around them and sometimes
//! after; now and then an earlier event is edited (moved) or deleted.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{SimulatedUser, micros_rfc3339};

/// One logged event as the client last wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContent {
    pub event_type: &'static str,
    pub product_id: Option<&'static str>,
    /// UTC microseconds.
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub tz_offset_minutes: i32,
}

impl EventContent {
    fn end(&self) -> i64 {
        self.end_at.unwrap_or(self.start_at)
    }
}

/// One request to `/v1/events:batch`.
#[derive(Debug, Clone)]
pub struct EventUpload {
    pub body: Value,
    /// Items in the request (events + deletions).
    pub items: usize,
    effects: Vec<(String, Option<EventContent>)>,
}

/// The strong coffee, the decaf and the supplement, as products.
pub const HOUSE_BLEND: &str = "espresso-house-blend";
pub const DECAF: &str = "decaf-roast";
pub const SUPPLEMENT: &str = "magnesium-glycinate-200";

const TWO_HOURS: i64 = 2 * 3_600_000_000;

impl SimulatedUser {
    /// The events planned for local date `day` (deterministic per user and date).
    fn planned(&self, day: NaiveDate) -> Vec<(String, EventContent)> {
        let n = u64::try_from(day.to_epoch_days()).unwrap_or_default();
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let at = |h: u32, m: u32| {
            let local = day.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN));
            let guess = local.and_utc() - TimeDelta::minutes(i64::from(self.tz_offset_minutes));
            let offset = self.offset_at(guess);
            (
                (local.and_utc() - TimeDelta::minutes(i64::from(offset))).timestamp_micros(),
                offset,
            )
        };
        let mut out = Vec::new();
        let (coffee, tz) = at(8, rng.random_range(0..30));
        let product = if rng.random_bool(0.7) {
            HOUSE_BLEND
        } else {
            DECAF
        };
        out.push((
            format!("coffee-{day}"),
            EventContent {
                event_type: "caffeine",
                product_id: Some(product),
                start_at: coffee,
                end_at: None,
                tz_offset_minutes: tz,
            },
        ));
        if rng.random_bool(3.0 / 7.0) {
            let (start, tz) = at(18, rng.random_range(0..20));
            out.push((
                format!("workout-{day}"),
                EventContent {
                    event_type: "workout",
                    product_id: None,
                    start_at: start,
                    end_at: Some(start + 45 * 60_000_000),
                    tz_offset_minutes: tz,
                },
            ));
        }
        let (supplement, tz) = at(21, 30);
        out.push((
            format!("supplement-{day}"),
            EventContent {
                event_type: "medication",
                product_id: Some(SUPPLEMENT),
                start_at: supplement,
                end_at: None,
                tz_offset_minutes: tz,
            },
        ));
        out
    }

    /// The local dates whose planned events can matter at `t` (a day either side).
    fn days_around(&self, t: DateTime<Utc>) -> [NaiveDate; 3] {
        let local = (t + TimeDelta::minutes(i64::from(self.offset_at(t)))).date_naive();
        [
            local.checked_sub_days(Days::new(1)).unwrap_or(local),
            local,
            local.checked_add_days(Days::new(1)).unwrap_or(local),
        ]
    }

    /// How much the planned events raise or lower the heart rate at `t`: each event acts
    /// for two hours after its end.
    pub(crate) fn heart_rate_factor(&self, t: DateTime<Utc>) -> f64 {
        let t = t.timestamp_micros();
        self.days_around(DateTime::from_timestamp_micros(t).unwrap_or_default())
            .into_iter()
            .flat_map(|d| self.planned(d))
            .filter(|(_, e)| e.end() <= t && t < e.end() + TWO_HOURS)
            .map(|(_, e)| match (e.event_type, e.product_id) {
                ("caffeine", Some(HOUSE_BLEND)) => 1.15,
                ("caffeine", _) => 1.02,
                ("workout", _) => 1.08,
                _ => 0.96,
            })
            .product()
    }

    /// The next events request: the planned events up to a few hours around where the
    /// watch's uploads have reached (never past `now`), now and then an edit or a deletion
    /// of an earlier one. `None` when there is nothing to send.
    pub fn next_events(&mut self, now: DateTime<Utc>) -> Option<EventUpload> {
        let watch = self.devices.first().map_or(now, |d| d.cursor);
        let upto = (watch + TimeDelta::hours(self.rng.random_range(-4..5))).min(now);
        let mut events = Vec::new();
        let mut effects = Vec::new();
        if upto > self.events_cursor {
            let (from, to) = (
                self.events_cursor.timestamp_micros(),
                upto.timestamp_micros(),
            );
            let mut days: Vec<NaiveDate> = self.days_around(self.events_cursor).to_vec();
            let mut d = days[2];
            while d <= self.days_around(upto)[2] {
                days.push(d);
                d = d.checked_add_days(Days::new(1))?;
            }
            days.dedup();
            for day in days {
                for (id, e) in self.planned(day) {
                    if from <= e.start_at && e.start_at < to && e.end() <= now.timestamp_micros() {
                        effects.push((id, Some(e)));
                    }
                }
            }
            self.events_cursor = upto;
        }
        let logged: Vec<&String> = self.events_expected.keys().collect();
        if !logged.is_empty() && self.rng.random_bool(0.15) {
            let id = logged[self.rng.random_range(0..logged.len())].clone();
            if let Some(mut e) = self.events_expected.get(&id).cloned() {
                if self.rng.random_bool(0.3) {
                    effects.push((id, None));
                } else {
                    // Logged at the wrong time: moved by up to half an hour.
                    let shift = self.rng.random_range(-30..=30) * 60_000_000;
                    e.start_at += shift;
                    e.end_at = e.end_at.map(|end| end + shift);
                    if e.end() <= now.timestamp_micros() {
                        effects.push((id, Some(e)));
                    }
                }
            }
        }
        // One item per event id per request (the gateway would refuse repeats).
        effects.sort_by(|a, b| a.0.cmp(&b.0));
        effects.dedup_by(|a, b| a.0 == b.0);
        if effects.is_empty() {
            return None;
        }
        let mut deletions = Vec::new();
        for (id, e) in &effects {
            match e {
                Some(e) => events.push(event_json(id, e)),
                None => deletions.push(json!({ "eventId": id })),
            }
        }
        let body = json!({
            "requestId": Uuid::from_u128(self.rng.random()).to_string(),
            "events": events,
            "deletions": deletions,
        });
        Some(EventUpload {
            body,
            items: effects.len(),
            effects,
        })
    }

    /// Applies an events request's effects; call it when the gateway answered 2xx.
    pub fn events_acknowledged(&mut self, upload: &EventUpload) {
        for (id, e) in &upload.effects {
            match e {
                Some(e) => {
                    self.events_expected.insert(id.clone(), e.clone());
                }
                None => {
                    self.events_expected.remove(id);
                }
            }
            self.event_log.push((id.clone(), e.clone()));
        }
    }

    /// Every acknowledged event change in order (what the events stream carries, one
    /// change per item): the history a brute-force check replays.
    pub fn event_log(&self) -> &[(String, Option<EventContent>)] {
        &self.event_log
    }
}

fn event_json(id: &str, e: &EventContent) -> Value {
    let mut v = json!({
        "eventId": id,
        "type": e.event_type,
        "startAt": micros_rfc3339(e.start_at),
        "tzOffsetMinutes": e.tz_offset_minutes,
    });
    if let Some(p) = e.product_id {
        v["productId"] = json!(p);
    }
    if let Some(end) = e.end_at {
        v["endAt"] = json!(micros_rfc3339(end));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrafficMix;

    #[test]
    fn events_follow_the_plan_and_heart_rate_responds() {
        let now = Utc::now();
        let mut u = SimulatedUser::new(5, now - TimeDelta::days(4), TrafficMix::default());
        // Both devices catch up with the present (each upload serves one of them).
        for _ in 0..200 {
            u.next_upload(500, now);
        }
        for _ in 0..200 {
            if let Some(up) = u.next_events(now) {
                u.events_acknowledged(&up);
            }
            if u.events_cursor >= now {
                break;
            }
        }
        let coffees = u
            .event_log()
            .iter()
            .filter(|(id, _)| id.starts_with("coffee-"))
            .count();
        assert!(coffees >= 3, "{:?}", u.event_log());
        let (_, first) = u.planned(now.date_naive() - Days::new(2)).remove(0);
        let after = DateTime::from_timestamp_micros(first.start_at + 30 * 60_000_000).unwrap();
        let before = DateTime::from_timestamp_micros(first.start_at - 30 * 60_000_000).unwrap();
        assert!(u.heart_rate_factor(after) > u.heart_rate_factor(before));
    }
}
