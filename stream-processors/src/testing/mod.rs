//! Test support shared by every processor's tests (feature `testing`, never in the
//! production surface): a generator of realistic change streams, and one oracle check that
//! drives a processor through the engine the way the runtime does, with random batch
//! boundaries, aborted-but-visible batches, restarts from the changelog and duplicates,
//! and compares the folded read model with a brute-force oracle.

pub mod changes;
pub mod golden;
pub mod impact_changes;
pub mod impact_oracle;
pub mod sleep_changes;
pub mod sleep_oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use pulseline_schemas::{AvroRecord, ReadModel, RowVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::Outcome;
use crate::harness::Harness;
use crate::processor::{ChangeId, Input, Processor};

pub use changes::Gen;
pub use impact_changes::ImpactGen;
pub use impact_oracle::{ProductImpactsOracle, SessionImpactsOracle};
pub use sleep_changes::SleepGen;
pub use sleep_oracle::SleepOracle;

/// A brute-force model of one read model, sharing no code with its processor.
pub trait Oracle<M: ReadModel> {
    /// What the oracle compares: the fields of a row that carry meaning.
    type Row: Debug;
    /// Every live row, keyed like `AvroRecord::key`, from the changes in any order
    /// (a change id seen twice counts once).
    fn expected(&self, changes: &[Input]) -> BTreeMap<String, Self::Row>;
    /// The oracle's view of an emitted row.
    fn observe(&self, row: &M) -> Self::Row;
    /// The differences between two read models (empty when they agree, to the oracle's
    /// tolerance).
    fn diff(
        &self,
        actual: &BTreeMap<String, Self::Row>,
        expected: &BTreeMap<String, Self::Row>,
    ) -> Vec<String>;
}

/// How `check_against_oracle` drives the processor.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Seeds the batch boundaries and aborts.
    pub seed: u64,
    /// Largest batch (records per transaction).
    pub max_batch: usize,
    /// Restart from the changelog after every this many batches (`None`: never).
    pub restart_every: Option<usize>,
    /// Chance, in percent, that a batch is first processed and aborted with its outputs
    /// left visible (as tansu shows them), then replayed with other boundaries.
    pub abort_percent: u32,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            max_batch: 50,
            restart_every: Some(3),
            abort_percent: 10,
        }
    }
}

/// Feeds `changes` to `processor` and checks, panicking with the differences:
/// - every record is applied or skipped as a duplicate (no dead letters);
/// - versions of a key only grow across committed batches;
/// - a key emitted twice with the same version carries the same content, across
///   everything emitted, aborted batches included (a sink keeps the first it sees);
/// - each user's last progress record reaches the user's newest change of each stream;
/// - the folded read model equals the oracle's, before and after a final restart.
pub fn check_against_oracle<P, O>(processor: P, changes: &[Input], oracle: &O, opts: CheckOptions)
where
    P: Processor,
    P::Output: PartialEq,
    O: Oracle<P::Output>,
{
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut h = Harness::new(processor);
    let mut last_version: BTreeMap<String, RowVersion> = BTreeMap::new();
    let mut seen: BTreeMap<(String, RowVersion), P::Output> = BTreeMap::new();
    let mut remember = |rows: &[P::Output]| {
        for row in rows {
            let id = (AvroRecord::key(row), row.version());
            match seen.get(&id) {
                Some(first) => assert!(
                    first == row,
                    "key {} version {} emitted with two contents:\n{first:?}\n{row:?}",
                    id.0,
                    id.1
                ),
                None => {
                    seen.insert(id, row.clone());
                }
            }
        }
    };
    let split = changes.len() * 4 / 5;
    let mut i = 0;
    let mut batches = 0;
    let mut duplicates = 0;
    while i < changes.len() {
        let end = if i < split { split } else { changes.len() };
        let k = rng.random_range(1..=opts.max_batch).min(end - i);
        if rng.random_range(0..100) < opts.abort_percent {
            let k2 = rng.random_range(1..=opts.max_batch).min(end - i);
            let before = h.outputs().len();
            h.batch_aborted(changes[i..i + k2].iter().cloned());
            remember(&h.outputs()[before..]);
            last_version.clear();
        }
        let (outcomes, rows) = h.batch(changes[i..i + k].iter().cloned());
        for row in rows {
            let v = last_version
                .entry(AvroRecord::key(row))
                .or_insert(RowVersion {
                    samples: i64::MIN,
                    events: i64::MIN,
                });
            assert!(
                row.version() > *v,
                "version of {} went from {v} to {}",
                AvroRecord::key(row),
                row.version()
            );
            *v = row.version();
        }
        remember(rows);
        for (o, c) in outcomes.iter().zip(&changes[i..i + k]) {
            assert!(
                matches!(o, Outcome::Applied | Outcome::Duplicate),
                "{o:?} for {c:?}"
            );
        }
        duplicates += outcomes
            .iter()
            .filter(|o| **o == Outcome::Duplicate)
            .count();
        i += k;
        batches += 1;
        if i == split || opts.restart_every.is_some_and(|r| batches % r == 0) {
            h.restart();
        }
    }

    let distinct: BTreeSet<(&str, _, ChangeId)> = changes
        .iter()
        .map(|c| (c.user_id(), c.stream(), c.change_id()))
        .collect();
    assert_eq!(
        duplicates,
        changes.len() - distinct.len(),
        "exactly the republished change ids are skipped"
    );
    check_progress::<P>(&h, changes);

    let actual: BTreeMap<String, O::Row> = h
        .read_model()
        .iter()
        .map(|(k, r)| (k.clone(), oracle.observe(r)))
        .collect();
    let problems = oracle.diff(&actual, &oracle.expected(changes));
    assert!(
        problems.is_empty(),
        "{} differences from the oracle:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The repair after a broker lost records: the read model can hold rows fed by items that
/// the processor's restored state never saw (the changelog and the output topic lose
/// different records), and a republish of every item, deletions included, must clear
/// them. Checks that: one processor sees every change; a second never sees the items
/// whose index among the distinct items is a multiple of `every`, and then gets their
/// deletions, shaped as the gateway writes them (the item's last content, no values) under
/// new change ids. Folded over both processors' outputs, the read model must equal the
/// oracle's over what the second saw.
pub fn check_lost_items_are_cleared<P, O>(
    make: impl Fn() -> P,
    changes: &[Input],
    oracle: &O,
    every: usize,
) where
    P: Processor,
    O: Oracle<P::Output>,
{
    let item = |c: &Input| match c {
        Input::Sample(s) => (
            s.user_id.clone(),
            format!("{}|{}|{}", s.source_id, s.source_record_id, s.start_at),
        ),
        Input::Event(e) => (e.user_id.clone(), format!("event|{}", e.event_id)),
    };
    let mut order: Vec<(String, String)> = Vec::new();
    let mut last_content: BTreeMap<(String, String), &Input> = BTreeMap::new();
    for c in changes {
        let k = item(c);
        if !order.contains(&k) {
            order.push(k.clone());
        }
        let upsert = match c {
            Input::Sample(s) => s.operation == pulseline_schemas::Operation::Upsert,
            Input::Event(e) => e.operation == pulseline_schemas::Operation::Upsert,
        };
        // The content Postgres holds: the newest change's (republished duplicates repeat
        // older ones).
        if upsert
            && last_content
                .get(&k)
                .is_none_or(|held| held.change_id() < c.change_id())
        {
            last_content.insert(k, c);
        }
    }
    let lost: BTreeSet<&(String, String)> = order.iter().step_by(every.max(1)).collect();
    let kept: Vec<Input> = changes
        .iter()
        .filter(|c| !lost.contains(&item(c)))
        .cloned()
        .collect();
    let mut next_seq: BTreeMap<(String, pulseline_schemas::Stream), i64> = BTreeMap::new();
    for c in changes {
        let seq = next_seq
            .entry((c.user_id().to_owned(), c.stream()))
            .or_default();
        *seq = (*seq).max(c.change_id().seq + 1);
    }
    let mut deletions: Vec<Input> = lost
        .iter()
        .filter_map(|k| last_content.get(*k))
        .map(|c| {
            let seq = next_seq
                .get_mut(&(c.user_id().to_owned(), c.stream()))
                .expect("every user and stream has a sequence");
            let this = *seq;
            *seq += 1;
            match (*c).clone() {
                Input::Sample(mut s) => {
                    s.operation = pulseline_schemas::Operation::Delete;
                    (s.change_seq, s.change_index) = (this, 0);
                    (s.value, s.unit, s.category, s.metadata_json) = (None, None, None, None);
                    Input::Sample(s)
                }
                Input::Event(mut e) => {
                    e.operation = pulseline_schemas::Operation::Delete;
                    (e.change_seq, e.change_index) = (this, 0);
                    e.attributes_json = None;
                    Input::Event(e)
                }
            }
        })
        .collect();
    // As a republish sends them: per user, the samples, then the events.
    deletions.sort_by(|a, b| (a.user_id(), a.stream()).cmp(&(b.user_id(), b.stream())));
    assert!(!deletions.is_empty(), "the changes lose no item");

    let mut saw_all = Harness::new(make());
    for chunk in changes.chunks(50) {
        saw_all.batch(chunk.iter().cloned());
    }
    let mut saw_less = Harness::new(make());
    for chunk in kept.chunks(50) {
        saw_less.batch(chunk.iter().cloned());
    }
    saw_less.batch(deletions.iter().cloned());
    let actual: BTreeMap<String, O::Row> =
        crate::harness::fold_read_model(saw_all.outputs().iter().chain(saw_less.outputs()))
            .iter()
            .map(|(k, r)| (k.clone(), oracle.observe(r)))
            .collect();
    let mut after: Vec<Input> = kept;
    after.extend(deletions);
    let problems = oracle.diff(&actual, &oracle.expected(&after));
    assert!(
        problems.is_empty(),
        "{} rows left behind by lost items:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Each user's last progress record names the newest change of each stream it read.
fn check_progress<P: Processor>(h: &Harness<P>, changes: &[Input]) {
    let mut newest: BTreeMap<&str, pulseline_schemas::AppliedSeqs> = BTreeMap::new();
    for c in changes {
        let seqs = newest.entry(c.user_id()).or_default();
        match c.stream() {
            pulseline_schemas::Stream::Samples => {
                seqs.samples = seqs.samples.max(c.change_id().seq)
            }
            pulseline_schemas::Stream::Events => seqs.events = seqs.events.max(c.change_id().seq),
        }
    }
    let mut last: BTreeMap<&str, pulseline_schemas::AppliedSeqs> = BTreeMap::new();
    for p in h.progress() {
        last.insert(&p.user_id, p.applied());
    }
    for (user, want) in newest {
        let got = last.get(user).copied().unwrap_or_default();
        for &stream in <P::Output as ReadModel>::STREAMS {
            assert_eq!(
                got.get(stream),
                want.get(stream),
                "last progress of {user} on {}",
                stream.name()
            );
        }
    }
}

/// The rollups oracle (`crate::oracle`) as an `Oracle`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RollupsOracle;

impl Oracle<pulseline_schemas::records::RollupUpsert> for RollupsOracle {
    type Row = crate::oracle::Row;

    fn expected(&self, changes: &[Input]) -> BTreeMap<String, crate::oracle::Row> {
        let samples: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Input::Sample(s) => Some(s.clone()),
                Input::Event(_) => None,
            })
            .collect();
        crate::oracle::rollups(&samples)
    }

    fn observe(&self, r: &pulseline_schemas::records::RollupUpsert) -> crate::oracle::Row {
        crate::oracle::Row {
            value: r.value,
            min: r.min,
            max: r.max,
            count: r.count,
            sources: r.sources.clone(),
        }
    }

    fn diff(
        &self,
        actual: &BTreeMap<String, crate::oracle::Row>,
        expected: &BTreeMap<String, crate::oracle::Row>,
    ) -> Vec<String> {
        crate::oracle::diff(actual, expected)
    }
}
