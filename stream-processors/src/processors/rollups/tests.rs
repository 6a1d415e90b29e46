//! Hand-computed cases for rollups: priority, proration, zero-length samples, DST and
//! midnight, corrections, deletions, rejections. The property tests against the oracle are
//! in `tests/rollups_oracle.rs`.

use std::collections::BTreeMap;

use pulseline_schemas::records::{Operation, Period, RollupUpsert, SampleChange};

use super::*;
use crate::engine::{DAY_MICROS, EngineConfig, Outcome};
use crate::harness::Harness;
use crate::processor::ChangeId;

const MIN: i64 = 60_000_000;
const H: i64 = 60 * MIN;
/// 2026-06-01T00:00:00Z
const T0: i64 = 1_780_272_000_000_000;

struct B {
    seq: i64,
}

impl B {
    fn new() -> Self {
        Self { seq: 0 }
    }

    #[allow(clippy::too_many_arguments)]
    fn sample(
        &mut self,
        metric: &str,
        source: &str,
        device: &str,
        rid: &str,
        start: i64,
        end: Option<i64>,
        tz: i32,
        value: f64,
    ) -> Input {
        self.seq += 1;
        Input::Sample(SampleChange {
            user_id: "u".into(),
            change_seq: self.seq,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: source.into(),
            device_type: device.into(),
            source_record_id: rid.into(),
            start_at: start,
            metric: metric.into(),
            end_at: end,
            tz_offset_minutes: tz,
            value: Some(value),
            unit: None,
            category: None,
            metadata_json: None,
            accepted_at: 0,
        })
    }

    fn steps(
        &mut self,
        source: &str,
        device: &str,
        rid: &str,
        start: i64,
        end: i64,
        v: f64,
    ) -> Input {
        self.sample("STEPS", source, device, rid, start, Some(end), 0, v)
    }

    fn delete(&mut self, metric: &str, source: &str, rid: &str, start: i64) -> Input {
        self.seq += 1;
        Input::Sample(SampleChange {
            user_id: "u".into(),
            change_seq: self.seq,
            change_index: 0,
            operation: Operation::Delete,
            source_id: source.into(),
            device_type: String::new(),
            source_record_id: rid.into(),
            start_at: start,
            metric: metric.into(),
            end_at: None,
            tz_offset_minutes: 0,
            value: None,
            unit: None,
            category: None,
            metadata_json: None,
            accepted_at: 0,
        })
    }
}

fn model(h: &Harness<Rollups>) -> BTreeMap<String, RollupUpsert> {
    h.read_model()
}

fn row<'a>(m: &'a BTreeMap<String, RollupUpsert>, key: &str) -> &'a RollupUpsert {
    m.get(&format!("u|{key}"))
        .unwrap_or_else(|| panic!("no row {key}; rows: {:?}", m.keys().collect::<Vec<_>>()))
}

fn assert_close(a: Option<f64>, b: f64) {
    let a = a.expect("a value");
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
}

#[test]
fn overlapping_sources_are_resolved_by_priority_and_never_double_counted() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    // Phone 10:00-11:00 1000 steps; watch 10:30-11:00 600 steps. The watch wins 10:30-11:00,
    // the phone keeps its first half: 500 + 600.
    h.batch([
        b.steps("phone", "iphone", "p1", T0 + 10 * H, T0 + 11 * H, 1000.0),
        b.steps(
            "watch",
            "apple_watch",
            "w1",
            T0 + 10 * H + 30 * MIN,
            T0 + 11 * H,
            600.0,
        ),
    ]);
    let m = model(&h);
    let day = row(&m, "STEPS|DAY|2026-06-01");
    assert_close(day.value, 1100.0);
    assert_eq!(day.count, 2);
    assert_eq!(day.sources, vec!["phone".to_owned(), "watch".to_owned()]);
    assert_eq!((day.min, day.max), (None, None));
    let hour = row(&m, "STEPS|HOUR|2026-06-01T10:00:00");
    assert_close(hour.value, 1100.0);
    assert_eq!(m.len(), 2);

    // A manual entry over the same hour changes nothing (lowest priority)...
    h.batch([b.steps("me", "manual", "m1", T0 + 10 * H, T0 + 11 * H, 9999.0)]);
    let day = h.read_model()["u|STEPS|DAY|2026-06-01"].clone();
    assert_close(day.value, 1100.0);
    assert_eq!(day.count, 2, "the hidden manual sample did not contribute");
    // ...but fills the hour after, where nothing else is: 9999 over 2h -> half.
    h.batch([b.steps("me", "manual", "m2", T0 + 11 * H, T0 + 13 * H, 10.0)]);
    let m = model(&h);
    assert_close(row(&m, "STEPS|DAY|2026-06-01").value, 1110.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T11:00:00").value, 5.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T12:00:00").value, 5.0);
}

#[test]
fn ties_within_a_class_break_by_source_id_and_the_order_is_configurable() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    h.batch([
        b.steps("garmin-z", "garmin", "a", T0, T0 + H, 100.0),
        b.steps("fitbit-a", "fitbit", "b", T0, T0 + H, 70.0),
    ]);
    let m = model(&h);
    let day = row(&m, "STEPS|DAY|2026-06-01");
    assert_close(day.value, 70.0);
    assert_eq!(day.sources, vec!["fitbit-a".to_owned()]);

    // Phones first: the phone wins over the watch.
    let mut b = B::new();
    let mut h = Harness::new(Rollups::new("iphone>apple_watch>manual".parse().unwrap()));
    h.batch([
        b.steps("watch", "apple_watch", "w", T0, T0 + H, 100.0),
        b.steps("phone", "iphone", "p", T0, T0 + H, 80.0),
    ]);
    assert_close(row(&model(&h), "STEPS|DAY|2026-06-01").value, 80.0);
}

#[test]
fn samples_crossing_an_hour_or_midnight_are_prorated() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    // 23:30 -> 00:30 local (UTC+2): 21:30Z -> 22:30Z; 600 steps, half on each day.
    let start = T0 + 21 * H + 30 * MIN;
    h.batch([b.sample(
        "STEPS",
        "w",
        "apple_watch",
        "x",
        start,
        Some(start + H),
        120,
        600.0,
    )]);
    let m = model(&h);
    assert_close(row(&m, "STEPS|DAY|2026-06-01").value, 300.0);
    assert_close(row(&m, "STEPS|DAY|2026-06-02").value, 300.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T23:00:00").value, 300.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-02T00:00:00").value, 300.0);
    assert_eq!(row(&m, "STEPS|DAY|2026-06-02").count, 1);
    // A 24-hour sample 12:00 -> 12:00 splits 12/24 and 12/24 across the two days.
    h.batch([b.sample(
        "STEPS",
        "phone",
        "iphone",
        "d",
        T0 + 12 * H,
        Some(T0 + 36 * H),
        0,
        2400.0,
    )]);
    let m = model(&h);
    // The watch wins 21:30Z-22:30Z, so the phone keeps 11 h of the 1st and 12 h of the 2nd.
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T12:00:00").value, 100.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T21:00:00").value, 50.0);
    let phone_day1 = 2400.0 * (11.0 / 24.0);
    let phone_day2 = 2400.0 * (12.0 / 24.0);
    // Local days differ per sample: the phone is UTC, the watch UTC+2.
    assert_close(row(&m, "STEPS|DAY|2026-06-01").value, 300.0 + phone_day1);
    assert_close(row(&m, "STEPS|DAY|2026-06-02").value, 300.0 + phone_day2);
}

#[test]
fn a_zero_length_sample_counts_at_its_instant_unless_a_higher_priority_source_covers_it() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    h.batch([
        b.steps("watch", "apple_watch", "w", T0, T0 + H, 100.0),
        // covered by the watch: hidden
        b.steps("phone", "iphone", "p1", T0 + 10 * MIN, T0 + 10 * MIN, 7.0),
        // at the watch's end instant: not covered (intervals are half-open)
        b.steps("phone", "iphone", "p2", T0 + H, T0 + H, 5.0),
        // a point of the watch itself alongside its interval: counts
        b.steps(
            "watch",
            "apple_watch",
            "w2",
            T0 + 5 * MIN,
            T0 + 5 * MIN,
            1.0,
        ),
        // two points at one instant: the higher-priority one wins
        b.steps("phone", "iphone", "p3", T0 + 2 * H, T0 + 2 * H, 3.0),
        b.steps("me", "manual", "m", T0 + 2 * H, T0 + 2 * H, 4.0),
    ]);
    let m = model(&h);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T00:00:00").value, 101.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T01:00:00").value, 5.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T02:00:00").value, 3.0);
    let day = row(&m, "STEPS|DAY|2026-06-01");
    assert_close(day.value, 109.0);
    assert_eq!(day.count, 4);
    // A point without endAt is zero-length too.
    h.batch([b.sample("STEPS", "phone", "iphone", "p4", T0 + 3 * H, None, 0, 2.0)]);
    assert_close(row(&model(&h), "STEPS|DAY|2026-06-01").value, 111.0);
}

#[test]
fn local_day_and_hour_follow_each_samples_offset_across_dst() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00Z).
    let switch = 1_774_746_000_000_000; // 2026-03-29T01:00:00Z
    h.batch([
        b.sample(
            "HEART_RATE",
            "w",
            "apple_watch",
            "a",
            switch - 30 * MIN,
            None,
            60,
            60.0,
        ),
        b.sample(
            "HEART_RATE",
            "w",
            "apple_watch",
            "b",
            switch + 30 * MIN,
            None,
            120,
            80.0,
        ),
        // 23:30Z on the 28th is 00:30 local on the 29th in CET
        b.sample(
            "HEART_RATE",
            "w",
            "apple_watch",
            "c",
            switch - 90 * MIN,
            None,
            60,
            70.0,
        ),
    ]);
    let m = model(&h);
    assert_close(row(&m, "HEART_RATE|HOUR|2026-03-29T01:00:00").value, 60.0);
    assert_close(row(&m, "HEART_RATE|HOUR|2026-03-29T03:00:00").value, 80.0);
    assert_close(row(&m, "HEART_RATE|HOUR|2026-03-29T00:00:00").value, 70.0);
    assert!(!m.contains_key("u|HEART_RATE|HOUR|2026-03-29T02:00:00"));
    let day = row(&m, "HEART_RATE|DAY|2026-03-29");
    assert_close(day.value, 70.0);
    assert_eq!((day.min, day.max, day.count), (Some(60.0), Some(80.0), 3));
}

#[test]
fn latest_takes_the_latest_start_and_discrete_counts_each_sample_once_at_its_start() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    h.batch([
        b.sample("WEIGHT", "scale", "scale", "1", T0 + 8 * H, None, 0, 71.0),
        b.sample("WEIGHT", "me", "manual", "2", T0 + 20 * H, None, 0, 70.0),
        b.sample("WEIGHT", "scale", "scale", "3", T0 + 7 * H, None, 0, 72.0),
        // a heart-rate sample spanning midnight counts once, on the day it starts
        b.sample(
            "HEART_RATE",
            "w",
            "apple_watch",
            "h",
            T0 + 23 * H,
            Some(T0 + 25 * H),
            0,
            65.0,
        ),
    ]);
    let m = model(&h);
    let w = row(&m, "WEIGHT|DAY|2026-06-01");
    assert_eq!(
        (w.value, w.min, w.max, w.count),
        (Some(70.0), Some(70.0), Some(72.0), 3)
    );
    assert_eq!(w.sources, vec!["me".to_owned(), "scale".to_owned()]);
    assert_eq!(row(&m, "HEART_RATE|DAY|2026-06-01").count, 1);
    assert!(!m.contains_key("u|HEART_RATE|DAY|2026-06-02"));
}

#[test]
fn corrections_replace_deletions_remove_and_empty_buckets_are_deleted_rows() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    h.batch([
        b.steps("w", "apple_watch", "x", T0, T0 + H, 100.0),
        b.steps("w", "apple_watch", "y", T0 + 2 * H, T0 + 3 * H, 50.0),
    ]);
    // Correction of x (same natural key), new value and a longer interval.
    h.batch([b.steps("w", "apple_watch", "x", T0, T0 + 2 * H, 300.0)]);
    let m = model(&h);
    assert_close(row(&m, "STEPS|DAY|2026-06-01").value, 350.0);
    assert_close(row(&m, "STEPS|HOUR|2026-06-01T01:00:00").value, 150.0);
    // Delete y: its hour becomes a deleted row, the day drops to 300.
    let (_, out) = h.batch([b.delete("STEPS", "w", "y", T0 + 2 * H)]);
    let deleted: Vec<&RollupUpsert> = out.iter().filter(|r| r.deleted).collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].bucket_start, "2026-06-01T02:00:00");
    assert_eq!(deleted[0].period, Period::Hour);
    let m = model(&h);
    assert_close(row(&m, "STEPS|DAY|2026-06-01").value, 300.0);
    // Delete x: everything goes, including the day row.
    h.batch([b.delete("STEPS", "w", "x", T0)]);
    assert!(model(&h).is_empty());
    // Deleting what the state does not hold changes nothing, but renders again the rows
    // it could have fed (a broker may have lost the records that held it): here its hour
    // and day, both empty, so tombstones.
    let (outcomes, out) = h.batch([b.delete("STEPS", "w", "nope", T0)]);
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let keys: Vec<(&str, bool)> = out
        .iter()
        .map(|r| (r.bucket_start.as_str(), r.deleted))
        .collect();
    assert_eq!(
        keys,
        vec![("2026-06-01", true), ("2026-06-01T00:00:00", true)]
    );
    assert!(model(&h).is_empty());
}

#[test]
fn a_correction_may_move_a_sample_to_another_metric() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    h.batch([b.steps("w", "apple_watch", "x", T0, T0 + H, 100.0)]);
    h.batch([b.sample(
        "ACTIVE_ENERGY",
        "w",
        "apple_watch",
        "x",
        T0,
        Some(T0 + H),
        0,
        42.0,
    )]);
    let m = model(&h);
    assert!(!m.contains_key("u|STEPS|DAY|2026-06-01"));
    assert_close(row(&m, "ACTIVE_ENERGY|DAY|2026-06-01").value, 42.0);
}

#[test]
fn versions_derive_from_change_ids_and_applied_seq_is_reported() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    let (_, out) = h.batch([b.steps("w", "apple_watch", "x", T0, T0 + H, 1.0)]);
    assert!(
        out.iter()
            .all(|r| r.version == ChangeId::new(1, 0).version() && r.applied_seq == 1)
    );
    // A sample on another day: only that day's rows are emitted, with the new version.
    let (_, out) = h.batch([b.steps("w", "apple_watch", "y", T0 + 48 * H, T0 + 49 * H, 1.0)]);
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|r| r.version == ChangeId::new(2, 0).version() && r.applied_seq == 2)
    );
    // The same content re-uploaded under a new change id re-emits its rows, unchanged but
    // with the new version and appliedSeq.
    let before = h.read_model();
    let (_, out) = h.batch([b.steps("w", "apple_watch", "y", T0 + 48 * H, T0 + 49 * H, 1.0)]);
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|r| r.applied_seq == 3 && r.version == ChangeId::new(3, 0).version())
    );
    for r in out {
        let old = &before[&pulseline_schemas::AvroRecord::key(r)];
        assert_eq!((old.value, old.count), (r.value, r.count));
    }
}

#[test]
fn duplicates_are_skipped_and_bad_records_rejected_without_changing_state() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    let first = b.steps("w", "apple_watch", "x", T0, T0 + H, 10.0);
    h.batch([first.clone()]);
    let (outcomes, out) = h.batch([first]);
    assert_eq!(outcomes, vec![Outcome::Duplicate]);
    assert!(out.is_empty());

    let unknown = b.sample("NOT_A_METRIC", "w", "apple_watch", "y", T0, None, 0, 1.0);
    let mut missing = b.sample("STEPS", "w", "apple_watch", "x", T0, Some(T0 + H), 0, 1.0);
    if let Input::Sample(s) = &mut missing {
        s.value = None;
    }
    let inverted = b.steps("w", "apple_watch", "x", T0, T0 - 1, 1.0);
    let (outcomes, out) = h.batch([unknown, missing, inverted]);
    let codes: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rejected(r) => r.code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec!["UNKNOWN_METRIC", "MISSING_VALUE", "INVALID_INTERVAL"]
    );
    assert!(out.is_empty());
    assert_close(row(&model(&h), "STEPS|DAY|2026-06-01").value, 10.0);
    // A rejected change still counts as handled: its replay is a duplicate.
    assert_eq!(
        h.task().meta("u").unwrap().applied.samples,
        Some(ChangeId::new(4, 0))
    );
}

#[test]
fn records_older_than_the_allowed_lateness_are_refused_as_too_late() {
    let mut b = B::new();
    let config = EngineConfig {
        allowed_lateness_micros: 2 * DAY_MICROS,
    };
    let mut h = Harness::with_config(Rollups::default(), config);
    h.batch([b.steps(
        "w",
        "apple_watch",
        "x",
        T0 + 10 * DAY_MICROS,
        T0 + 10 * DAY_MICROS + H,
        1.0,
    )]);
    let (outcomes, _) = h.batch([
        b.steps(
            "w",
            "apple_watch",
            "late",
            T0 + 7 * DAY_MICROS,
            T0 + 7 * DAY_MICROS + H,
            1.0,
        ),
        b.steps(
            "w",
            "apple_watch",
            "ok",
            T0 + 9 * DAY_MICROS,
            T0 + 9 * DAY_MICROS + H,
            1.0,
        ),
    ]);
    assert_eq!(outcomes, vec![Outcome::TooLate, Outcome::Applied]);
    // The default keeps everything the gateway accepts (400 days).
    let mut h = Harness::new(Rollups::default());
    let mut b = B::new();
    h.batch([b.steps(
        "w",
        "apple_watch",
        "x",
        T0 + 399 * DAY_MICROS,
        T0 + 399 * DAY_MICROS + 1,
        1.0,
    )]);
    let (outcomes, _) = h.batch([b.steps("w", "apple_watch", "y", T0, T0 + 1, 1.0)]);
    assert_eq!(outcomes, vec![Outcome::Applied]);
}

#[test]
fn category_samples_are_ignored_and_state_survives_a_restart() {
    let mut b = B::new();
    let mut h = Harness::new(Rollups::default());
    let mut stage = b.sample(
        "SLEEP_STAGE",
        "w",
        "apple_watch",
        "s",
        T0,
        Some(T0 + H),
        0,
        0.0,
    );
    if let Input::Sample(s) = &mut stage {
        s.value = None;
        s.category = Some("deep".into());
    }
    let (outcomes, out) = h.batch([stage, b.steps("w", "apple_watch", "x", T0, T0 + H, 5.0)]);
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Applied]);
    assert!(out.iter().all(|r| r.metric == "STEPS"));
    h.restart();
    assert_eq!(h.task().state("u").unwrap().sample_count(), 1);
    let (_, out) = h.batch([b.steps("w", "apple_watch", "y", T0 + H, T0 + 2 * H, 5.0)]);
    let day = out.iter().find(|r| r.period == Period::Day).unwrap();
    assert_close(day.value, 10.0);
}
