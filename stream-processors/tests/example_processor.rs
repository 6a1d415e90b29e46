//! The worked example of stream-processors/README.md ("Adding a processor"), compiled and
//! tested here so the README cannot rot: a minimal sleep-nights processor (asleep minutes
//! per night, from SLEEP_STAGE samples), state in a `Table`, tested with the harness.

use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, SleepNightUpsert};
use pulseline_stream_processors::harness::Harness;
use pulseline_stream_processors::state::Table;
use pulseline_stream_processors::{Context, Flush, Input, Processor, Rejection};

// --- the processor file (would be src/processors/sleep_minutes.rs) ---

/// Asleep minutes per user and night (the local date the sample ends on).
#[derive(Debug, Default)]
pub struct SleepMinutes;

/// (night, sourceId, sourceRecordId, start) -> asleep minutes of that sample.
type StageKey = (String, String, String, i64);

fn night_of(s: &SampleChange) -> String {
    let end = s.end_at.unwrap_or(s.start_at) + i64::from(s.tz_offset_minutes) * 60_000_000;
    chrono::DateTime::from_timestamp_micros(end)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

impl Processor for SleepMinutes {
    const NAME: &'static str = "sleep_minutes";
    type State = Table<StageKey, f64>;
    /// Its read model (record, topic, key `night`) is declared in schemas/src/records.rs.
    type Output = SleepNightUpsert;

    fn apply(
        &self,
        ctx: &mut Context<'_, String>,
        stages: &mut Table<StageKey, f64>,
        input: &Input,
    ) -> Result<(), Rejection> {
        let Input::Sample(s) = input else {
            return Ok(());
        };
        if s.metric != "SLEEP_STAGE" {
            return Ok(());
        }
        // A correction may move the sample to another night: drop any previous version.
        let old: Vec<StageKey> = stages
            .iter()
            .filter(|(k, _)| k.1 == s.source_id && k.2 == s.source_record_id && k.3 == s.start_at)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            stages.remove(&k);
            ctx.touch(k.0);
        }
        if s.operation == Operation::Upsert && s.category.as_deref() != Some("awake") {
            let minutes = (s.end_at.unwrap_or(s.start_at) - s.start_at) as f64 / 60e6;
            let night = night_of(s);
            let key = (
                night.clone(),
                s.source_id.clone(),
                s.source_record_id.clone(),
                s.start_at,
            );
            stages.insert(key, minutes);
            ctx.touch(night);
        }
        Ok(())
    }

    fn flush(&self, out: &mut Flush<'_, SleepNightUpsert>, stages: &mut Table<StageKey, f64>) {
        for night in out.touched() {
            let lo = (night.clone(), String::new(), String::new(), i64::MIN);
            let asleep: f64 = stages
                .range(lo..)
                .take_while(|(k, _)| &k.0 == night)
                .map(|(_, m)| m)
                .sum();
            if asleep == 0.0 {
                out.delete(night);
                continue;
            }
            // `version` and `appliedSeq` are the runtime's: left at 0 here.
            out.emit(SleepNightUpsert {
                user_id: out.user_id().to_owned(),
                night: night.clone(),
                version: 0,
                deleted: false,
                in_bed_minutes: asleep,
                asleep_minutes: asleep,
                awake_minutes: 0.0,
                rem_minutes: None,
                deep_minutes: None,
                core_minutes: None,
                latency_minutes: None,
                efficiency: None,
                awakenings: 0,
                bed_at: None,
                wake_at: None,
                sources: Vec::new(),
                applied_seq: 0,
                unspecified_minutes: 0.0,
                nap_count: 0,
                nap_minutes: 0.0,
            });
        }
    }
}

// --- its test, with the same harness as the built-in processors ---

fn stage(seq: i64, rid: &str, start_h: i64, hours: i64, category: &str) -> Input {
    Input::Sample(stage_change(seq, rid, start_h, hours, category))
}

fn stage_change(seq: i64, rid: &str, start_h: i64, hours: i64, category: &str) -> SampleChange {
    const H: i64 = 3_600_000_000;
    let start = 1_780_272_000_000_000 + start_h * H; // 2026-06-01T00:00Z
    SampleChange {
        user_id: "u".into(),
        change_seq: seq,
        change_index: 0,
        operation: Operation::Upsert,
        source_id: "watch".into(),
        device_type: "apple_watch".into(),
        source_record_id: rid.into(),
        start_at: start,
        metric: "SLEEP_STAGE".into(),
        end_at: Some(start + hours * H),
        tz_offset_minutes: 120,
        value: None,
        unit: None,
        category: Some(category.into()),
        metadata_json: None,
        accepted_at: 0,
    }
}

#[test]
fn asleep_minutes_per_night_survive_restarts_and_duplicates() {
    let mut h = Harness::new(SleepMinutes);
    // 22:00Z-01:00Z deep (00:00-03:00 local on the 2nd), then an hour awake.
    h.batch([stage(1, "a", 22, 3, "deep"), stage(2, "b", 25, 1, "awake")]);
    h.restart();
    let (outcomes, _) = h.batch([stage(1, "a", 22, 3, "deep"), stage(3, "c", 26, 2, "rem")]);
    assert_eq!(
        outcomes[0],
        pulseline_stream_processors::engine::Outcome::Duplicate
    );
    let model = h.read_model();
    assert_eq!(model["u|2026-06-02"].asleep_minutes, 300.0);
    // Versions and progress are stamped by the runtime from change ids.
    assert_eq!(model["u|2026-06-02"].version, (3 << 20));
    assert_eq!(model["u|2026-06-02"].applied_seq, 3);
    assert_eq!(h.progress().last().map(|p| p.samples_seq), Some(3));
}

#[test]
fn a_change_that_touches_no_row_still_reports_progress() {
    let mut h = Harness::new(SleepMinutes);
    let mut heart_rate = stage_change(7, "hr", 1, 0, "deep");
    heart_rate.metric = "HEART_RATE".into();
    let (_, rows) = h.batch([Input::Sample(heart_rate)]);
    assert!(rows.is_empty());
    assert_eq!(h.progress().len(), 1);
    assert_eq!(h.progress()[0].samples_seq, 7);
    assert_eq!(h.progress()[0].read_model, "sleep_nights");
}
