//! Property tests: the incremental rollups (through the same engine the runtime uses)
//! equal the brute-force oracle for random change streams, whatever the batching, restarts
//! from the changelog, duplicates, corrections, deletions and arrival order. No services.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use pulseline_schemas::AvroRecord;
use pulseline_stream_processors::Input;
use pulseline_stream_processors::ReadModel;
use pulseline_stream_processors::engine::Outcome;
use pulseline_stream_processors::harness::Harness;
use pulseline_stream_processors::processors::Rollups;
use rand::Rng;
use support::changes::Gen;
use support::oracle;

fn run(seed: u64, n: usize, max_batch: usize, restart_every: Option<usize>, abort_percent: u32) {
    let mut g = Gen::new(seed);
    let changes = g.stream(&["user-a", "user-b"], n);
    let mut h = Harness::new(Rollups::default());
    let mut last_version: HashMap<String, i64> = HashMap::new();
    let mut i = 0;
    let mut batches = 0;
    let mut duplicates = 0;
    while i < changes.len() {
        let k = g.rng.random_range(1..=max_batch).min(changes.len() - i);
        if g.rng.random_range(0..100) < abort_percent {
            // Aborted but visible: the replay below (other boundaries) must supersede it.
            let k2 = g.rng.random_range(1..=max_batch).min(changes.len() - i);
            h.batch_aborted(changes[i..i + k2].iter().cloned().map(Input::Sample));
            last_version.clear();
        }
        let (outcomes, outputs) = h.batch(changes[i..i + k].iter().cloned().map(Input::Sample));
        for o in outputs {
            let v = last_version.entry(AvroRecord::key(o)).or_insert(i64::MIN);
            assert!(
                o.version() > *v,
                "version of {} went from {v} to {}",
                AvroRecord::key(o),
                o.version()
            );
            *v = o.version();
        }
        duplicates += outcomes
            .iter()
            .filter(|o| **o == Outcome::Duplicate)
            .count();
        for (o, c) in outcomes.iter().zip(&changes[i..i + k]) {
            assert!(
                matches!(o, Outcome::Applied | Outcome::Duplicate),
                "{o:?} for {c:?}"
            );
        }
        i += k;
        batches += 1;
        if restart_every.is_some_and(|r| batches % r == 0) {
            h.restart();
        }
    }
    let published_ids: std::collections::HashSet<_> = changes
        .iter()
        .map(|c| (c.user_id.clone(), c.change_seq))
        .collect();
    assert_eq!(duplicates, changes.len() - published_ids.len());

    let expected = oracle::rollups(&changes);
    let actual = support::rows(&h.read_model());
    let problems = oracle::diff(&actual, &expected);
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // And a state rebuilt from the changelog alone gives the same answers from then on.
    h.restart();
    let more = g.stream(&["user-a", "user-b"], 20);
    h.batch(more.iter().cloned().map(Input::Sample));
    let mut all = changes.clone();
    all.extend(more);
    let problems = oracle::diff(&support::rows(&h.read_model()), &oracle::rollups(&all));
    assert!(
        problems.is_empty(),
        "after restart:\n{}",
        problems.join("\n")
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
