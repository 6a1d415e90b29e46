//! Property tests: session and product impacts (through the same engine the runtime uses)
//! equal the brute-force impact oracle for generated streams of samples and events
//! interleaved at random (events before their samples, samples before their events),
//! with late samples, corrections, deletions, edited and deleted events, duplicates and
//! multi-item requests, whatever the batching, restarts and aborted-but-visible batches
//! (`testing::check_against_oracle`). No services.

use proptest::prelude::*;
use pulseline_stream_processors::Input;
use pulseline_stream_processors::processors::{ProductImpacts, SessionImpacts};
use pulseline_stream_processors::testing::{
    CheckOptions, ImpactGen, ProductImpactsOracle, SessionImpactsOracle, check_against_oracle,
    check_lost_items_are_cleared, impact_oracle,
};

fn changes(seed: u64, n: usize) -> Vec<Input> {
    ImpactGen::new(seed).stream(&["user-a", "user-b"], n)
}

fn run(seed: u64, n: usize, max_batch: usize, restart_every: Option<usize>, abort_percent: u32) {
    let changes = changes(seed, n);
    let opts = CheckOptions {
        seed,
        max_batch,
        restart_every,
        abort_percent,
    };
    check_against_oracle(
        SessionImpacts::default(),
        &changes,
        &SessionImpactsOracle,
        opts,
    );
    check_against_oracle(
        ProductImpacts::default(),
        &changes,
        &ProductImpactsOracle,
        opts,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_impacts_equal_the_oracle(
        seed in any::<u64>(),
        n in 1usize..900,
        max_batch in 1usize..120,
        restart_every in proptest::option::of(1usize..6),
        abort_percent in prop_oneof![Just(0u32), 1u32..50],
    ) {
        run(seed, n, max_batch, restart_every, abort_percent);
    }
}

#[test]
fn several_days_in_large_batches_equal_the_oracle() {
    run(7, 4000, 700, Some(3), 0);
}

#[test]
fn one_record_per_batch_equals_the_oracle() {
    run(11, 500, 1, None, 0);
}

#[test]
fn aborted_batches_left_visible_are_superseded_by_their_replay() {
    for seed in 0..6 {
        run(100 + seed, 900, 90, Some(4), 40);
    }
}

/// The generator covers what the property is about: reliable and unreliable sessions,
/// products and event types, several metrics, and products with enough sessions for a
/// tier above INSUFFICIENT.
#[test]
fn the_generated_streams_cover_the_cases() {
    let inputs = changes(5, 6000);
    let sessions = impact_oracle::session_impacts(&inputs);
    assert!(sessions.len() >= 20, "{} sessions", sessions.len());
    assert!(sessions.values().any(|s| s.reliable), "reliable sessions");
    assert!(
        sessions.values().any(|s| !s.reliable),
        "unreliable sessions"
    );
    assert!(
        sessions.values().any(|s| s.product_id.is_none()),
        "events without a product"
    );
    assert!(
        sessions.keys().any(|k| k.ends_with("|BLOOD_GLUCOSE")),
        "glucose"
    );
    assert!(
        sessions.values().any(|s| s.end_at.is_some()),
        "events with an end"
    );
    let products = impact_oracle::product_impacts(&inputs);
    assert!(
        products.values().any(|p| p.tier != "INSUFFICIENT"),
        "{products:#?}"
    );
    let events = inputs
        .iter()
        .filter(|i| matches!(i, Input::Event(_)))
        .count();
    assert!(
        events >= 20 && events * 10 < inputs.len(),
        "{events} events"
    );
}

/// After a broker lost records, republished deletions clear the rows of events and samples
/// the restored state never saw.
#[test]
fn deletions_of_items_the_state_lost_clear_their_rows() {
    for seed in 0..12 {
        let changes = changes(500 + seed, 500);
        for every in [2, 5] {
            check_lost_items_are_cleared(
                SessionImpacts::default,
                &changes,
                &SessionImpactsOracle,
                every,
            );
            check_lost_items_are_cleared(
                ProductImpacts::default,
                &changes,
                &ProductImpactsOracle,
                every,
            );
        }
    }
}
