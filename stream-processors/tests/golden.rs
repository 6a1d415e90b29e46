//! Golden fixtures: each processor's small, readable input and the read model it must
//! produce, committed beside the processor (`src/processors/<name>/golden/`).

use std::path::Path;

use pulseline_stream_processors::processors::{
    ProductImpacts, Rollups, SessionImpacts, SleepNights,
};
use pulseline_stream_processors::testing::golden::{check_golden, check_golden_as};

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

#[test]
fn session_impacts_golden_fixture() {
    check_golden_as(
        SessionImpacts::default,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/processors/impact/golden"),
        "sessions.expected.json",
    );
}

#[test]
fn product_impacts_golden_fixture() {
    check_golden_as(
        ProductImpacts::default,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/processors/impact/golden"),
        "products.expected.json",
    );
}
