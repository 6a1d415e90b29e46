//! Golden fixtures: each processor's small, readable input and the read model it must
//! produce, committed beside the processor (`src/processors/<name>/golden/`).

use std::path::Path;

use pulseline_stream_processors::processors::{Rollups, SleepNights};
use pulseline_stream_processors::testing::golden::check_golden;

#[test]
fn rollups_golden_fixture() {
    check_golden(
        Rollups::default,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/processors/rollups/golden"),
    );
}

#[test]
fn sleep_nights_golden_fixture() {
    check_golden(
        SleepNights::default,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/processors/sleep/golden"),
    );
}
