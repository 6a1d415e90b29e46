//! Property tests: the incremental sleep nights (through the same engine the runtime uses)
//! equal the brute-force sleep oracle for generated sleep streams (watch stages and phone
//! in-bed/asleep over the same nights, naps, gaps around 60 minutes, offset changes, late
//! uploads, corrections, deletions of samples and whole nights, duplicates, multi-item
//! requests), whatever the batching, restarts and aborted-but-visible batches
//! (`testing::check_against_oracle`). No services.

use proptest::prelude::*;
use pulseline_stream_processors::Input;
use pulseline_stream_processors::processors::SleepNights;
use pulseline_stream_processors::testing::{
    CheckOptions, SleepGen, SleepOracle, check_against_oracle, check_lost_items_are_cleared,
};

fn changes(seed: u64, n: usize) -> Vec<Input> {
    SleepGen::new(seed)
        .stream(&["user-a", "user-b"], n)
        .into_iter()
        .map(Input::Sample)
        .collect()
}

fn run(seed: u64, n: usize, max_batch: usize, restart_every: Option<usize>, abort_percent: u32) {
    check_against_oracle(
        SleepNights::default(),
        &changes(seed, n),
        &SleepOracle,
        CheckOptions {
            seed,
            max_batch,
            restart_every,
            abort_percent,
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn incremental_sleep_nights_equal_the_oracle(
        seed in any::<u64>(),
        n in 1usize..400,
        max_batch in 1usize..60,
        restart_every in proptest::option::of(1usize..6),
        abort_percent in prop_oneof![Just(0u32), 1u32..50],
    ) {
        run(seed, n, max_batch, restart_every, abort_percent);
    }
}

#[test]
fn a_long_stream_in_large_batches_equals_the_oracle() {
    run(7, 1500, 500, Some(3), 0);
}

#[test]
fn one_record_per_batch_equals_the_oracle() {
    run(11, 400, 1, None, 0);
}

#[test]
fn aborted_batches_left_visible_are_superseded_by_their_replay() {
    for seed in 0..10 {
        run(100 + seed, 500, 80, Some(4), 40);
    }
}

/// The generator covers what the property is about; a generator that stopped producing
/// naps, phone nights or split sessions would make the property vacuous.
#[test]
fn the_generated_nights_cover_the_cases() {
    let inputs = changes(5, 600);
    let nights = pulseline_stream_processors::testing::sleep_oracle::sleep_nights(&inputs);
    assert!(nights.len() >= 8, "{} nights", nights.len());
    assert!(nights.values().any(|n| n.nap_count > 0), "naps");
    assert!(
        nights.values().any(|n| n.deep.is_none()),
        "phone-only nights"
    );
    assert!(nights.values().any(|n| n.deep.is_some()), "staged nights");
    assert!(nights.values().any(|n| n.awakenings > 0), "awakenings");
    assert!(
        nights.values().any(|n| n.sources.len() > 1),
        "watch and phone both winning"
    );
    let samples: Vec<_> = inputs
        .iter()
        .filter_map(|c| match c {
            Input::Sample(s) => Some(s),
            Input::Event(_) => None,
        })
        .collect();
    assert!(
        samples.iter().any(|s| s.change_index > 0),
        "multi-item requests"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.operation == pulseline_schemas::Operation::Delete),
        "deletions"
    );
}

/// After a broker lost records, republished deletions clear the nights of samples the
/// restored state never saw.
#[test]
fn deletions_of_samples_the_state_lost_clear_their_nights() {
    for seed in 0..12 {
        let changes = changes(500 + seed, 600);
        for every in [2, 5] {
            check_lost_items_are_cleared(SleepNights::default, &changes, &SleepOracle, every);
        }
    }
}
