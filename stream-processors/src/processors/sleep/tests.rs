//! Hand-worked cases for sleep nights, one per case of issue 9, each figure computed by
//! hand in the comments. The property tests against the brute-force oracle are in
//! `tests/sleep_oracle.rs`.

use chrono::NaiveDateTime;
use pulseline_schemas::records::{Operation, SampleChange, SleepNightUpsert};

use super::*;
use crate::engine::Outcome;
use crate::harness::Harness;

const WATCH: (&str, &str) = ("watch-1", "apple_watch");
const PHONE: (&str, &str) = ("phone-1", "iphone");

/// The UTC instant of local wall-clock time `local` (`YYYY-MM-DDTHH:MM`) at `tz` minutes.
fn at(local: &str, tz: i32) -> i64 {
    let t = NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M").expect("test time");
    t.and_utc().timestamp_micros() - i64::from(tz) * MINUTE
}

/// Builds changes for user `u` with increasing change ids.
struct B {
    seq: i64,
}

impl B {
    fn new() -> Self {
        Self { seq: 0 }
    }

    fn change(
        &mut self,
        source: (&str, &str),
        rid: &str,
        from: &str,
        to: &str,
        tz: i32,
        stage: &str,
    ) -> SampleChange {
        self.seq += 1;
        SampleChange {
            user_id: "u".into(),
            change_seq: self.seq,
            change_index: 0,
            operation: Operation::Upsert,
            source_id: source.0.into(),
            device_type: source.1.into(),
            source_record_id: rid.into(),
            start_at: at(from, tz),
            metric: "SLEEP_STAGE".into(),
            end_at: Some(at(to, tz)),
            tz_offset_minutes: tz,
            value: None,
            unit: None,
            category: Some(stage.into()),
            metadata_json: None,
            accepted_at: 0,
        }
    }

    /// A sleep-stage upsert at offset +02:00.
    fn s(&mut self, source: (&str, &str), rid: &str, from: &str, to: &str, stage: &str) -> Input {
        Input::Sample(self.change(source, rid, from, to, 120, stage))
    }

    fn delete(&mut self, source: (&str, &str), rid: &str, from: &str, tz: i32) -> Input {
        let mut c = self.change(source, rid, from, from, tz, "core");
        c.operation = Operation::Delete;
        c.end_at = None;
        c.category = None;
        Input::Sample(c)
    }
}

fn run(inputs: Vec<Input>) -> Harness<SleepNights> {
    let mut h = Harness::new(SleepNights::default());
    let (outcomes, _) = h.batch(inputs);
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    h
}

fn night(h: &Harness<SleepNights>, date: &str) -> SleepNightUpsert {
    h.read_model()
        .remove(&format!("u|{date}"))
        .unwrap_or_else(|| panic!("no night {date}: {:?}", h.read_model().keys()))
}

fn nights(h: &Harness<SleepNights>) -> Vec<String> {
    h.read_model().into_values().map(|r| r.night).collect()
}

/// The watch's stages 23:10-06:30 (+02:00) inside the phone's in_bed 22:30-07:00 and
/// asleep 23:00-06:45.
fn watch_and_phone_night(b: &mut B) -> Vec<Input> {
    vec![
        b.s(
            PHONE,
            "p-bed",
            "2026-06-01T22:30",
            "2026-06-02T07:00",
            "in_bed",
        ),
        b.s(
            PHONE,
            "p-sleep",
            "2026-06-01T23:00",
            "2026-06-02T06:45",
            "asleep_unspecified",
        ),
        b.s(WATCH, "w1", "2026-06-01T23:10", "2026-06-02T01:00", "core"),
        b.s(WATCH, "w2", "2026-06-02T01:00", "2026-06-02T02:00", "deep"),
        b.s(WATCH, "w3", "2026-06-02T02:00", "2026-06-02T02:10", "awake"),
        b.s(WATCH, "w4", "2026-06-02T02:10", "2026-06-02T03:00", "rem"),
        b.s(WATCH, "w5", "2026-06-02T03:00", "2026-06-02T06:30", "core"),
    ]
}

#[test]
fn watch_and_phone_overlapping_never_add_minutes_across_sources() {
    let h = run(watch_and_phone_night(&mut B::new()));
    let n = night(&h, "2026-06-02");
    // Slices: 22:30-23:00 phone in_bed, 23:00-23:10 phone asleep (10), 23:10-06:30 the
    // watch (core 110 + 210, deep 60, awake 10, rem 50), 06:30-06:45 phone asleep (15),
    // 06:45-07:00 phone in_bed.
    assert_eq!(n.bed_at, Some(at("2026-06-01T22:30", 120)));
    assert_eq!(n.wake_at, Some(at("2026-06-02T07:00", 120)));
    assert_eq!(n.in_bed_minutes, 510.0);
    assert_eq!(n.asleep_minutes, 455.0); // 10 + 320 + 60 + 50 + 15
    assert_eq!(n.awake_minutes, 55.0); // 30 in bed + 10 awake + 15 in bed
    assert_eq!(n.core_minutes, Some(320.0));
    assert_eq!(n.deep_minutes, Some(60.0));
    assert_eq!(n.rem_minutes, Some(50.0));
    assert_eq!(n.unspecified_minutes, 25.0);
    assert_eq!(n.latency_minutes, Some(30.0));
    assert_eq!(n.efficiency, Some(0.892)); // 455 / 510 = 0.8921...
    assert_eq!(n.awakenings, 1); // 02:00-02:10; the in-bed ends are outside the asleep span
    assert_eq!(n.sources, vec!["phone-1", "watch-1"]);
    assert_eq!((n.nap_count, n.nap_minutes), (0, 0.0));
    assert_eq!(nights(&h), vec!["2026-06-02"]);
}

#[test]
fn a_night_crossing_midnight_belongs_to_the_date_of_waking() {
    let mut b = B::new();
    let h = run(vec![
        b.s(WATCH, "a", "2026-06-01T23:00", "2026-06-02T00:30", "core"),
        b.s(WATCH, "b", "2026-06-02T00:30", "2026-06-02T06:00", "deep"),
    ]);
    assert_eq!(nights(&h), vec!["2026-06-02"]);
    let n = night(&h, "2026-06-02");
    assert_eq!((n.in_bed_minutes, n.asleep_minutes), (420.0, 420.0));
    assert_eq!((n.core_minutes, n.deep_minutes), (Some(90.0), Some(330.0)));
    assert_eq!((n.latency_minutes, n.efficiency), (Some(0.0), Some(1.0)));
}

#[test]
fn an_afternoon_nap_is_counted_apart_from_the_night() {
    let mut b = B::new();
    let mut inputs = watch_and_phone_night(&mut b);
    inputs.extend([
        // 14:00-14:40 asleep: a nap of the same date.
        b.s(WATCH, "nap", "2026-06-02T14:00", "2026-06-02T14:40", "core"),
        // 10 minutes asleep: under 15, dropped.
        b.s(
            PHONE,
            "doze",
            "2026-06-02T17:00",
            "2026-06-02T17:10",
            "asleep_unspecified",
        ),
    ]);
    let h = run(inputs);
    let n = night(&h, "2026-06-02");
    assert_eq!((n.nap_count, n.nap_minutes), (1, 40.0));
    // The night's own figures are those of the main sleep only.
    assert_eq!(n.asleep_minutes, 455.0);
    assert_eq!(n.wake_at, Some(at("2026-06-02T07:00", 120)));
}

#[test]
fn a_70_minute_gap_splits_two_sessions_and_a_60_minute_gap_does_not() {
    let mut b = B::new();
    let h = run(vec![
        b.s(WATCH, "a", "2026-06-01T21:00", "2026-06-01T23:00", "core"),
        // 70 minutes without a sample: a new session, waking on the next date.
        b.s(WATCH, "b", "2026-06-02T00:10", "2026-06-02T06:00", "core"),
    ]);
    assert_eq!(nights(&h), vec!["2026-06-01", "2026-06-02"]);
    assert_eq!(night(&h, "2026-06-01").asleep_minutes, 120.0);
    let n = night(&h, "2026-06-02");
    assert_eq!((n.in_bed_minutes, n.latency_minutes), (350.0, Some(0.0)));

    let mut b = B::new();
    let h = run(vec![
        b.s(WATCH, "a", "2026-06-01T21:00", "2026-06-01T23:00", "core"),
        // Exactly 60 minutes: one session, the gap counts as awake (one awakening).
        b.s(WATCH, "b", "2026-06-02T00:00", "2026-06-02T06:00", "core"),
    ]);
    assert_eq!(nights(&h), vec!["2026-06-02"]);
    let n = night(&h, "2026-06-02");
    assert_eq!(
        (n.in_bed_minutes, n.asleep_minutes, n.awake_minutes),
        (540.0, 480.0, 60.0)
    );
    assert_eq!(n.awakenings, 1);
    assert_eq!(n.efficiency, Some(0.889)); // 480 / 540
}

#[test]
fn a_night_during_which_the_offset_changes_is_measured_in_utc() {
    // 2026-03-29, Europe: 02:00 CET becomes 03:00 CEST. Bed 23:00 +01:00 (22:00Z),
    // wake 07:00 +02:00 (05:00Z): seven hours in bed, not eight.
    let mut b = B::new();
    let before = b.change(
        WATCH,
        "a",
        "2026-03-28T23:00",
        "2026-03-29T02:00",
        60,
        "core",
    );
    let after = b.change(
        WATCH,
        "b",
        "2026-03-29T03:00",
        "2026-03-29T07:00",
        120,
        "deep",
    );
    assert_eq!(before.end_at, Some(after.start_at), "contiguous in UTC");
    let h = run(vec![Input::Sample(before), Input::Sample(after)]);
    assert_eq!(nights(&h), vec!["2026-03-29"]);
    let n = night(&h, "2026-03-29");
    assert_eq!(n.in_bed_minutes, 420.0);
    assert_eq!((n.core_minutes, n.deep_minutes), (Some(180.0), Some(240.0)));
    assert_eq!(n.wake_at, Some(at("2026-03-29T05:00", 0)));

    // Flying west to New York (-04:00) during the night: the session ends 01:30Z, 21:30 on
    // the 28th in New York, so the night is the 28th although Europe was already on the
    // 29th: the offset of the sample ending the session names the night.
    let mut b = B::new();
    let h = run(vec![
        Input::Sample(b.change(
            WATCH,
            "c",
            "2026-03-28T23:00",
            "2026-03-29T01:00",
            60,
            "core",
        )),
        Input::Sample(b.change(
            WATCH,
            "d",
            "2026-03-28T20:00",
            "2026-03-28T21:30",
            -240,
            "core",
        )),
    ]);
    assert_eq!(nights(&h), vec!["2026-03-28"]);
    assert_eq!(night(&h, "2026-03-28").in_bed_minutes, 210.0);
}

#[test]
fn a_correction_that_moves_a_stage_recomputes_the_night() {
    let mut b = B::new();
    let mut h = run(watch_and_phone_night(&mut b));
    let before = night(&h, "2026-06-02");
    // The watch re-labels its 01:00-02:00 deep sample as rem (same natural key).
    let (outcomes, rows) =
        h.batch([b.s(WATCH, "w2", "2026-06-02T01:00", "2026-06-02T02:00", "rem")]);
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(rows.len(), 1);
    let n = night(&h, "2026-06-02");
    assert_eq!((n.deep_minutes, n.rem_minutes), (Some(0.0), Some(110.0)));
    assert_eq!(n.asleep_minutes, before.asleep_minutes);
    assert!(n.version > before.version);
    // Then moves its end: 01:00-01:30 rem leaves 01:30-02:00 to the phone's asleep.
    h.batch([b.s(WATCH, "w2", "2026-06-02T01:00", "2026-06-02T01:30", "rem")]);
    let n = night(&h, "2026-06-02");
    assert_eq!((n.rem_minutes, n.unspecified_minutes), (Some(80.0), 55.0));
}

#[test]
fn deleting_a_whole_night_deletes_its_row() {
    let mut b = B::new();
    let mut h = run(watch_and_phone_night(&mut b));
    let keys = [
        (PHONE, "p-bed", "2026-06-01T22:30"),
        (PHONE, "p-sleep", "2026-06-01T23:00"),
        (WATCH, "w1", "2026-06-01T23:10"),
        (WATCH, "w2", "2026-06-02T01:00"),
        (WATCH, "w3", "2026-06-02T02:00"),
        (WATCH, "w4", "2026-06-02T02:10"),
    ];
    let deletes: Vec<Input> = keys
        .iter()
        .map(|(s, r, t)| b.delete(*s, r, t, 120))
        .collect();
    h.batch(deletes);
    // Only w5 (03:00-06:30 core) is left: still a night, smaller.
    assert_eq!(night(&h, "2026-06-02").asleep_minutes, 210.0);
    let (_, rows) = h.batch([b.delete(WATCH, "w5", "2026-06-02T03:00", 120)]);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].deleted, "a tombstone: {:?}", rows[0]);
    assert!(rows[0].version > 0, "tombstones keep their version");
    assert!(h.read_model().is_empty());
    assert_eq!(h.task().state("u").map(|s| s.sample_count()), Some(0));
}

#[test]
fn an_upload_three_weeks_late_updates_its_night() {
    let mut b = B::new();
    let mut h = run(vec![b.s(
        WATCH,
        "w",
        "2026-06-01T23:00",
        "2026-06-02T06:00",
        "core",
    )]);
    // Three weeks of other nights.
    for d in 2..23 {
        let (from, to) = (
            format!("2026-06-{d:02}T23:00"),
            format!("2026-06-{:02}T06:00", d + 1),
        );
        h.batch([b.s(WATCH, &format!("w{d}"), &from, &to, "core")]);
    }
    assert_eq!(night(&h, "2026-06-02").in_bed_minutes, 420.0);
    // The phone syncs three weeks later: its in_bed from 22:30 for that first night.
    let (outcomes, rows) = h.batch([b.s(
        PHONE,
        "late",
        "2026-06-01T22:30",
        "2026-06-02T06:30",
        "in_bed",
    )]);
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(
        rows.iter().map(|r| r.night.as_str()).collect::<Vec<_>>(),
        ["2026-06-02"]
    );
    let n = night(&h, "2026-06-02");
    assert_eq!(
        (n.in_bed_minutes, n.asleep_minutes, n.latency_minutes),
        (480.0, 420.0, Some(30.0))
    );
    assert_eq!(n.applied_seq, b.seq);
}

#[test]
fn phone_only_nights_have_null_stage_minutes() {
    let mut b = B::new();
    let h = run(vec![
        b.s(
            PHONE,
            "bed",
            "2026-06-01T22:00",
            "2026-06-02T06:00",
            "in_bed",
        ),
        b.s(
            PHONE,
            "a",
            "2026-06-01T22:20",
            "2026-06-02T02:00",
            "asleep_unspecified",
        ),
        b.s(
            PHONE,
            "b",
            "2026-06-02T02:20",
            "2026-06-02T05:50",
            "asleep_unspecified",
        ),
    ]);
    let n = night(&h, "2026-06-02");
    assert_eq!(
        (n.rem_minutes, n.deep_minutes, n.core_minutes),
        (None, None, None)
    );
    assert_eq!(n.unspecified_minutes, 430.0); // 220 + 210
    assert_eq!(n.asleep_minutes, 430.0);
    assert_eq!((n.in_bed_minutes, n.awake_minutes), (480.0, 50.0));
    assert_eq!((n.latency_minutes, n.awakenings), (Some(20.0), 1));
    assert_eq!(n.sources, vec!["phone-1"]);
}

#[test]
fn deleting_the_sample_bridging_two_sessions_splits_them_into_two_nights() {
    let mut b = B::new();
    let mut h = run(vec![
        b.s(WATCH, "a", "2026-06-01T20:00", "2026-06-01T23:00", "core"),
        b.s(
            WATCH,
            "bridge",
            "2026-06-01T23:00",
            "2026-06-02T00:30",
            "awake",
        ),
        b.s(WATCH, "c", "2026-06-02T01:20", "2026-06-02T06:00", "deep"),
    ]);
    assert_eq!(nights(&h), vec!["2026-06-02"]);
    let (_, rows) = h.batch([b.delete(WATCH, "bridge", "2026-06-01T23:00", 120)]);
    // 23:00 -> 01:20 is now 140 minutes without a sample: the evening ends on the 1st.
    let mut touched: Vec<&str> = rows.iter().map(|r| r.night.as_str()).collect();
    touched.sort();
    assert_eq!(touched, ["2026-06-01", "2026-06-02"]);
    assert_eq!(nights(&h), vec!["2026-06-01", "2026-06-02"]);
    assert_eq!(night(&h, "2026-06-01").asleep_minutes, 180.0);
    assert_eq!(night(&h, "2026-06-02").in_bed_minutes, 280.0);
}

#[test]
fn bad_sleep_samples_get_a_specific_rejection_and_change_nothing() {
    let mut b = B::new();
    let mut h = run(watch_and_phone_night(&mut b));
    let before = h.read_model();
    let unknown = b.change(
        WATCH,
        "x",
        "2026-06-02T03:00",
        "2026-06-02T04:00",
        120,
        "dreaming",
    );
    let backwards = b.change(
        WATCH,
        "y",
        "2026-06-02T03:00",
        "2026-06-02T02:00",
        120,
        "core",
    );
    let mut far = b.change(
        WATCH,
        "z",
        "2026-06-02T03:00",
        "2026-06-02T04:00",
        120,
        "core",
    );
    far.tz_offset_minutes = 2000;
    let mut missing = b.change(
        WATCH,
        "w",
        "2026-06-02T03:00",
        "2026-06-02T04:00",
        120,
        "core",
    );
    missing.category = None;
    let (outcomes, rows) = h.batch([unknown, backwards, far, missing].map(Input::Sample));
    let codes: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rejected(r) => r.code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "UNKNOWN_CATEGORY",
            "INVALID_INTERVAL",
            "INVALID_TZ_OFFSET",
            "MISSING_CATEGORY"
        ]
    );
    assert!(rows.is_empty());
    assert_eq!(h.read_model(), before);
}

#[test]
fn nights_survive_a_restart_from_the_changelog() {
    let mut b = B::new();
    let mut h = run(watch_and_phone_night(&mut b));
    h.restart();
    // A correction after the restore still sees every neighbour.
    h.batch([b.s(WATCH, "w3", "2026-06-02T02:00", "2026-06-02T02:10", "rem")]);
    let n = night(&h, "2026-06-02");
    assert_eq!(
        (n.awakenings, n.rem_minutes, n.asleep_minutes),
        (0, Some(60.0), 465.0)
    );
}
