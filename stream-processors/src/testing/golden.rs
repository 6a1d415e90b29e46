//! Golden fixtures: a small input a person can read (one change per line) and the read
//! model a processor must produce from it, committed next to the processor. The check runs
//! the input as one batch and as one batch per record (the answers must agree), and
//! compares the folded read model with `expected.json`. `PULSELINE_BLESS=1` rewrites the
//! expected file instead (then read the diff before committing it).
//!
//! Input lines (JSON), `#` lines are comments:
//! `{"user":"u1","seq":1,"index":0,"op":"UPSERT","source":"watch-1","device":"apple_watch",
//!   "record":"r1","metric":"STEPS","start":"2026-03-28T23:30:00+01:00",
//!   "end":"2026-03-29T00:30:00+01:00","value":120}`: times carry the sample's offset,
//! `op` defaults to UPSERT, `index` to 0, `end`, `value` and `category` are optional.
//! A line with `event` is a logged event (the events stream, its own `seq`):
//! `{"user":"u1","seq":1,"event":"coffee-1","type":"caffeine","product":"espresso",
//!   "start":"2026-06-01T08:00:00+02:00"}` (`product`, `end` optional).

use std::path::Path;

use chrono::DateTime;
use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use serde::Deserialize;

use crate::harness::Harness;
use crate::processor::{Input, Processor};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    user: String,
    seq: i64,
    #[serde(default)]
    index: i32,
    #[serde(default = "upsert")]
    op: Operation,
    source: String,
    #[serde(default)]
    device: String,
    record: String,
    metric: String,
    start: String,
    end: Option<String>,
    value: Option<f64>,
    category: Option<String>,
}

/// A line of the events stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    user: String,
    seq: i64,
    #[serde(default)]
    index: i32,
    #[serde(default = "upsert")]
    op: Operation,
    event: String,
    #[serde(rename = "type")]
    event_type: String,
    product: Option<String>,
    start: String,
    end: Option<String>,
}

fn upsert() -> Operation {
    Operation::Upsert
}

fn parse_line(n: usize, text: &str) -> Input {
    let time = |t: &str| {
        DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("input line {n}: {t}: {e}"))
    };
    if text.contains("\"event\"") {
        let e: EventLine = serde_json::from_str(text)
            .unwrap_or_else(|err| panic!("input line {n}: {err}: {text}"));
        let start = time(&e.start);
        return Input::Event(UserEventChange {
            user_id: e.user,
            change_seq: e.seq,
            change_index: e.index,
            operation: e.op,
            event_id: e.event,
            event_type: e.event_type,
            product_id: e.product,
            start_at: start.timestamp_micros(),
            end_at: e.end.as_deref().map(|t| time(t).timestamp_micros()),
            tz_offset_minutes: start.offset().local_minus_utc() / 60,
            attributes_json: None,
            accepted_at: 0,
        });
    }
    let line: Line =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("input line {n}: {e}: {text}"));
    let start = time(&line.start);
    Input::Sample(SampleChange {
        user_id: line.user,
        change_seq: line.seq,
        change_index: line.index,
        operation: line.op,
        source_id: line.source,
        device_type: line.device,
        source_record_id: line.record,
        start_at: start.timestamp_micros(),
        metric: line.metric,
        end_at: line.end.as_deref().map(|t| time(t).timestamp_micros()),
        tz_offset_minutes: start.offset().local_minus_utc() / 60,
        value: line.value,
        unit: None,
        category: line.category,
        metadata_json: None,
        accepted_at: 0,
    })
}

/// Reads `<dir>/input.jsonl`, runs `make()`'s processor over it, and compares the read
/// model with `<dir>/expected.json` (see the module doc).
pub fn check_golden<P: Processor>(make: impl Fn() -> P, dir: &Path)
where
    P::Output: serde::Serialize,
{
    check_golden_as(make, dir, "expected.json");
}

/// `check_golden` with another expected file: processors sharing one input (the two
/// impact read models) keep one expected file each.
pub fn check_golden_as<P: Processor>(make: impl Fn() -> P, dir: &Path, expected: &str)
where
    P::Output: serde::Serialize,
{
    let input_path = dir.join("input.jsonl");
    let text = std::fs::read_to_string(&input_path)
        .unwrap_or_else(|e| panic!("{}: {e}", input_path.display()));
    let inputs: Vec<Input> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| parse_line(n + 1, l))
        .collect();

    let mut whole = Harness::new(make());
    whole.batch(inputs.iter().cloned());
    let mut one_by_one = Harness::new(make());
    for input in &inputs {
        one_by_one.batch([input.clone()]);
    }
    let rows: Vec<P::Output> = whole.read_model().into_values().collect();
    let other: Vec<P::Output> = one_by_one.read_model().into_values().collect();
    let actual = serde_json::to_value(&rows).expect("rows serialise");
    assert_eq!(
        actual,
        serde_json::to_value(&other).expect("rows serialise"),
        "one batch and one batch per record disagree"
    );

    let expected_path = dir.join(expected);
    if std::env::var_os("PULSELINE_BLESS").is_some() {
        let pretty = serde_json::to_string_pretty(&actual).expect("json");
        std::fs::write(&expected_path, pretty + "\n").expect("writing expected.json");
        return;
    }
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())),
    )
    .expect("expected.json is JSON");
    assert_eq!(
        actual,
        expected,
        "read model differs from {} (PULSELINE_BLESS=1 rewrites it)",
        expected_path.display()
    );
}
