//! Hand-worked cases for impact windows, each figure computed by hand in the comments.
//! The property tests against the brute-force oracle are in `tests/impact_oracle.rs`.

use pulseline_schemas::records::{Operation, SampleChange, UserEventChange};

use super::*;
use crate::engine::Outcome;
use crate::harness::Harness;

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000_000;

/// The instant `hh:mm` on day `day` after T0 (UTC).
fn at(day: i64, hh: i64, mm: i64) -> i64 {
    T0 + day * DAY + (hh * 60 + mm) * MINUTE
}

/// Builds the two streams of user `u`, each with its own increasing change ids.
#[derive(Default)]
struct B {
    sample_seq: i64,
    event_seq: i64,
}

impl B {
    fn hr(&mut self, rid: &str, start: i64, value: f64) -> Input {
        self.sample_seq += 1;
        Input::Sample(SampleChange {
            user_id: "u".into(),
            change_seq: self.sample_seq,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: "watch-1".into(),
            device_type: "apple_watch".into(),
            source_record_id: rid.into(),
            start_at: start,
            metric: "HEART_RATE".into(),
            end_at: None,
            tz_offset_minutes: 120,
            value: Some(value),
            unit: Some("count/min".into()),
            category: None,
            metadata_json: None,
            accepted_at: 0,
        })
    }

    /// One instantaneous heart-rate sample a minute over `[from, to)`, all `value`.
    fn hr_minutes(&mut self, tag: &str, from: i64, to: i64, value: f64) -> Vec<Input> {
        (from..to)
            .step_by(MINUTE as usize)
            .map(|t| self.hr(&format!("{tag}{t}"), t, value))
            .collect()
    }

    fn event(
        &mut self,
        id: &str,
        kind: &str,
        product: Option<&str>,
        start: i64,
        end: Option<i64>,
    ) -> Input {
        self.event_seq += 1;
        Input::Event(UserEventChange {
            user_id: "u".into(),
            change_seq: self.event_seq,
            change_index: 0,
            operation: Operation::Upsert,
            event_id: id.into(),
            event_type: kind.into(),
            product_id: product.map(str::to_owned),
            start_at: start,
            end_at: end,
            tz_offset_minutes: 120,
            attributes_json: None,
            accepted_at: 0,
        })
    }

    /// A deletion carries the deleted event's type, product and times, as the gateway
    /// publishes it.
    fn delete_event(&mut self, id: &str, kind: &str, product: Option<&str>, start: i64) -> Input {
        self.event_seq += 1;
        Input::Event(UserEventChange {
            user_id: "u".into(),
            change_seq: self.event_seq,
            change_index: 0,
            operation: Operation::Delete,
            event_id: id.into(),
            event_type: kind.into(),
            product_id: product.map(str::to_owned),
            start_at: start,
            end_at: None,
            tz_offset_minutes: 120,
            attributes_json: None,
            accepted_at: 0,
        })
    }
}

fn sessions(h: &Harness<SessionImpacts>) -> Vec<SessionImpactUpsert> {
    h.read_model().into_values().collect()
}

fn run(h: &mut Harness<SessionImpacts>, inputs: Vec<Input>) {
    let (outcomes, _) = h.batch(inputs);
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
}

/// Caffeine at 08:00 (no end): baseline 07:00-08:00 at 60 bpm, after 08:00-10:00 at 75.
fn coffee_morning(b: &mut B, day: i64, id: &str) -> Vec<Input> {
    let mut v = b.hr_minutes(&format!("{id}b"), at(day, 7, 0), at(day, 8, 0), 60.0);
    v.extend(b.hr_minutes(&format!("{id}a"), at(day, 8, 0), at(day, 10, 0), 75.0));
    v.push(b.event(id, "caffeine", Some("espresso"), at(day, 8, 0), None));
    v
}

#[test]
fn caffeine_from_60_to_75_is_plus_25_percent_and_reliable() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    run(&mut h, coffee_morning(&mut b, 0, "e1"));
    let rows = sessions(&h);
    assert_eq!(rows.len(), 1, "only heart rate has samples");
    let r = &rows[0];
    assert_eq!(
        (r.event_id.as_str(), r.metric.as_str()),
        ("e1", "HEART_RATE")
    );
    // 100 * (75 - 60) / 60 = 25.00; 60 and 120 one-minute samples cover both windows whole.
    assert_eq!((r.baseline_avg, r.after_avg), (Some(60.0), Some(75.0)));
    assert_eq!(r.delta_percent, Some(25.0));
    assert_eq!((r.baseline_count, r.after_count), (60, 120));
    assert!(r.reliable);
    assert_eq!(r.product_id.as_deref(), Some("espresso"));
    assert_eq!(r.local_date, "2026-06-01");
    assert_eq!((r.applied_sample_seq, r.applied_event_seq), (180, 1));
}

#[test]
fn an_event_starting_in_the_after_window_makes_both_unreliable() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    run(&mut h, coffee_morning(&mut b, 0, "e1"));
    // A meal at 09:00: inside e1's after window [08:00, 10:00), and e1 starts inside the
    // meal's span [08:00, 11:00).
    run(&mut h, vec![b.event("e2", "meal", None, at(0, 9, 0), None)]);
    let rows = sessions(&h);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| !r.reliable), "{rows:#?}");
    // The meal: baseline 08:00-09:00 all 75, after 09:00-10:00 at 75 then nothing: +0.00.
    let meal = rows.iter().find(|r| r.event_id == "e2").unwrap();
    assert_eq!(meal.delta_percent, Some(0.0));
    assert_eq!((meal.baseline_count, meal.after_count), (60, 60));
    // Deleting the meal makes the coffee reliable again.
    run(
        &mut h,
        vec![b.delete_event("e2", "meal", None, at(0, 9, 0))],
    );
    let rows = sessions(&h);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].reliable);
}

#[test]
fn a_late_sample_in_the_after_window_changes_the_delta() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    run(&mut h, coffee_morning(&mut b, 0, "e1"));
    // A 121st after sample of 196: after mean = (120 * 75 + 196) / 121 = 76;
    // delta = 100 * 16 / 60 = 26.666... -> 26.67.
    run(&mut h, vec![b.hr("late", at(0, 9, 30) + 1, 196.0)]);
    let r = &sessions(&h)[0];
    assert_eq!(r.after_count, 121);
    assert_eq!(r.after_avg, Some(76.0));
    assert_eq!(r.delta_percent, Some(26.67));
    // A sample outside both windows changes nothing (and touches nothing).
    let before = h.outputs().len();
    run(&mut h, vec![b.hr("far", at(0, 12, 0), 200.0)]);
    assert_eq!(h.outputs().len(), before);
}

#[test]
fn an_edited_end_time_moves_the_after_window() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    let mut v = b.hr_minutes("b", at(0, 6, 0), at(0, 7, 0), 100.0);
    v.extend(b.hr_minutes("w", at(0, 7, 0), at(0, 8, 0), 150.0));
    v.extend(b.hr_minutes("a", at(0, 8, 0), at(0, 10, 0), 90.0));
    // A workout 07:00 without an end: after window 07:00-09:00 = 60 at 150 and 60 at 90,
    // mean 120: +20.00 %.
    v.push(b.event("w1", "workout", None, at(0, 7, 0), None));
    run(&mut h, v);
    assert_eq!(sessions(&h)[0].delta_percent, Some(20.0));
    // Its end set to 08:00: after window 08:00-10:00, all 90: -10.00 %.
    run(
        &mut h,
        vec![b.event("w1", "workout", None, at(0, 7, 0), Some(at(0, 8, 0)))],
    );
    let r = &sessions(&h)[0];
    assert_eq!((r.after_avg, r.delta_percent), (Some(90.0), Some(-10.0)));
    assert_eq!(r.end_at, Some(at(0, 8, 0)));
    assert!(r.reliable);
}

#[test]
fn a_deleted_event_removes_its_rows() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    run(&mut h, coffee_morning(&mut b, 0, "e1"));
    run(
        &mut h,
        vec![b.delete_event("e1", "caffeine", Some("espresso"), at(0, 8, 0))],
    );
    assert!(sessions(&h).is_empty());
    let last = h.outputs().last().unwrap();
    assert!(
        last.deleted && last.events_version > 0,
        "a versioned tombstone"
    );
}

#[test]
fn sparse_samples_are_unreliable_and_a_zero_baseline_has_no_delta() {
    let mut b = B::default();
    let mut h = Harness::new(SessionImpacts::default());
    // Three instantaneous samples per window cover 3 of 60 and 3 of 120 minutes.
    let mut v = vec![];
    for (i, m) in [5, 25, 45].into_iter().enumerate() {
        v.push(b.hr(&format!("b{i}"), at(0, 7, m), 0.0));
        v.push(b.hr(&format!("a{i}"), at(0, 8, m), 80.0));
    }
    v.push(b.event("e1", "caffeine", None, at(0, 8, 0), None));
    run(&mut h, v);
    let r = &sessions(&h)[0];
    assert_eq!((r.baseline_count, r.after_count), (3, 3));
    assert!(!r.reliable, "3 minutes covered of 60");
    assert_eq!((r.baseline_avg, r.delta_percent), (Some(0.0), None));
}

fn products(h: &Harness<ProductImpacts>) -> Vec<ProductImpactUpsert> {
    h.read_model().into_values().collect()
}

#[test]
fn product_tiers_follow_the_number_of_reliable_sessions() {
    let mut b = B::default();
    let mut h = Harness::new(ProductImpacts::default());
    let mut tiers = Vec::new();
    for day in 0..12 {
        let (outcomes, _) = h.batch(coffee_morning(&mut b, day, &format!("e{day}")));
        assert!(outcomes.iter().all(|o| *o == Outcome::Applied));
        let rows = products(&h);
        let p30 = rows.iter().find(|r| r.period_days == 30).unwrap();
        tiers.push((p30.n, p30.tier));
        assert_eq!(p30.avg_delta_percent, Some(25.0));
        assert_eq!(p30.as_of, at(day, 8, 0));
    }
    use ImpactTier::*;
    assert_eq!(tiers[1], (2, Insufficient));
    assert_eq!(tiers[2], (3, Low));
    assert_eq!(tiers[5], (6, Medium));
    assert_eq!(tiers[11], (12, High));
    let rows = products(&h);
    assert_eq!(rows.len(), 2, "30 and 90 days of one product and metric");
    assert!(
        rows.iter()
            .all(|r| r.product_id.as_deref() == Some("espresso")
                && r.event_type == "caffeine"
                && r.std_dev == Some(0.0))
    );
}

#[test]
fn events_without_a_product_group_by_type_and_periods_end_at_the_latest_live_event() {
    let mut b = B::default();
    let mut h = Harness::new(ProductImpacts::default());
    let mut v = b.hr_minutes("m", at(0, 12, 0), at(0, 15, 0), 70.0);
    v.push(b.event("meal", "meal", None, at(0, 13, 0), None));
    h.batch(v);
    let rows = products(&h);
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.event_type == "meal" && r.product_id.is_none())
    );
    assert!(
        rows.iter()
            .all(|r| r.n == 1 && r.tier == ImpactTier::Insufficient)
    );
    // An event 40 days later moves asOf: the meal leaves the 30-day period (n = 0, and
    // no session: the row goes) but stays in the 90-day one.
    h.batch(vec![b.event("late", "custom", None, at(40, 9, 0), None)]);
    let rows = products(&h);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0].period_days, rows[0].as_of), (90, at(40, 9, 0)));
    // Moved back to day 10, it takes asOf with it (asOf is the latest live start, not the
    // latest ever seen): the meal is within 30 days again.
    h.batch(vec![b.event("late", "custom", None, at(10, 9, 0), None)]);
    let rows = products(&h);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.as_of == at(10, 9, 0) && r.n == 1));
    // Deleted, asOf falls back to the meal's own start.
    h.batch(vec![b.delete_event("late", "custom", None, at(10, 9, 0))]);
    let rows = products(&h);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.as_of == at(0, 13, 0)));
    // The meal deleted too: no event, no product row.
    h.batch(vec![b.delete_event("meal", "meal", None, at(0, 13, 0))]);
    assert!(products(&h).is_empty());
}

#[test]
fn summaries_of_deltas() {
    let s = DeltaSummary::of(&[10.0, 20.0]);
    assert_eq!(
        (s.n, s.mean, s.tier),
        (2, Some(15.0), ImpactTier::Insufficient)
    );
    // Sample standard deviation of 10 and 20: sqrt(50) = 7.07.
    assert_eq!(s.std_dev, Some(7.07));
    assert_eq!(DeltaSummary::of(&[]).mean, None);
    assert_eq!(DeltaSummary::of(&[1.0]).std_dev, None);
    // Twelve sessions, 8 up and 4 down: 67 % agree, not HIGH.
    let mixed: Vec<f64> = (0..12).map(|i| if i < 8 { 5.0 } else { -5.0 }).collect();
    assert_eq!(DeltaSummary::of(&mixed).tier, ImpactTier::Medium);
    let mostly: Vec<f64> = (0..12).map(|i| if i < 9 { 5.0 } else { -5.0 }).collect();
    assert_eq!(DeltaSummary::of(&mostly).tier, ImpactTier::High);
}
