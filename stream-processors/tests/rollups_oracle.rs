//! Property tests: the incremental rollups (through the same engine the runtime uses)
//! equal the brute-force oracle for random change streams, whatever the batching, restarts
//! from the changelog, duplicates, corrections, deletions, multi-item requests and arrival
//! order (`testing::check_against_oracle`, the check every processor uses). No services.

use proptest::prelude::*;
use pulseline_stream_processors::Input;
use pulseline_stream_processors::processors::Rollups;
use pulseline_stream_processors::testing::{
    CheckOptions, Gen, RollupsOracle, check_against_oracle, check_lost_items_are_cleared,
};

fn run(seed: u64, n: usize, max_batch: usize, restart_every: Option<usize>, abort_percent: u32) {
    let mut g = Gen::new(seed);
    let changes: Vec<Input> = g
        .stream(&["user-a", "user-b"], n)
        .into_iter()
        .map(Input::Sample)
        .collect();
    check_against_oracle(
        Rollups::default(),
        &changes,
        &RollupsOracle,
        CheckOptions {
            seed,
            max_batch,
            restart_every,
            abort_percent,
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn incremental_rollups_equal_the_oracle(
        seed in any::<u64>(),
        n in 1usize..250,
        max_batch in 1usize..60,
        restart_every in proptest::option::of(1usize..6),
        abort_percent in prop_oneof![Just(0u32), 1u32..50],
    ) {
        run(seed, n, max_batch, restart_every, abort_percent);
    }
}

#[test]
fn a_long_stream_in_large_batches_equals_the_oracle() {
    run(7, 3000, 500, Some(3), 0);
}

#[test]
fn one_record_per_batch_equals_the_oracle() {
    run(11, 400, 1, None, 0);
}

#[test]
fn aborted_batches_left_visible_are_superseded_by_their_replay() {
    for seed in 0..20 {
        run(100 + seed, 600, 80, Some(4), 40);
    }
}

#[test]
fn the_generator_publishes_requests_of_several_items() {
    let changes = Gen::new(3).stream(&["u"], 200);
    assert!(changes.iter().any(|c| c.change_index > 0));
    // Within a user, change ids never go back except for republished duplicates.
    let ids: Vec<(i64, i32)> = changes
        .iter()
        .map(|c| (c.change_seq, c.change_index))
        .collect();
    assert!(ids.windows(2).filter(|w| w[1] > w[0]).count() > ids.len() / 2);
}

/// After a broker lost records, republished deletions clear the rows of samples the
/// restored state never saw.
#[test]
fn deletions_of_samples_the_state_lost_clear_their_rows() {
    for seed in 0..12 {
        let changes: Vec<Input> = Gen::new(500 + seed)
            .stream(&["user-a", "user-b"], 600)
            .into_iter()
            .map(Input::Sample)
            .collect();
        for every in [2, 5] {
            check_lost_items_are_cleared(Rollups::default, &changes, &RollupsOracle, every);
        }
    }
}
