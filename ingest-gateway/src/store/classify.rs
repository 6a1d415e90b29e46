//! Deciding what each item of a batch does to the stored keys: pure, so it is tested on
//! its own. Items apply in request order (samples or events first, then deletions); the
//! state of a key after item i is what item i+1 with the same key sees.
//!
//! - upsert of an unknown or soft-deleted key: `Accepted`
//! - upsert of a live key with the same content hash: `Duplicate` (no record)
//! - upsert of a live key with other content: `Updated`
//! - deletion of a live key: `Deleted` (a DELETE record carrying the live content's key)
//! - deletion of an unknown or already deleted key: `Duplicate` (nothing to remove)

use std::collections::HashMap;
use std::hash::Hash;

use crate::hashing::Sha256Hash;

/// What an item asks for; rejected items are `Skip`.
#[derive(Debug)]
pub(crate) enum Op<K> {
    Upsert { key: K, hash: Sha256Hash },
    Delete { key: K },
    Skip,
}

/// A key's stored state, as read from Postgres at the start of the transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredState {
    pub hash: Sha256Hash,
    pub deleted: bool,
}

/// Where the live content a deletion removes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Stored,
    Item(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Updated,
    Duplicate,
    Deleted(Origin),
    Skipped,
}

#[cfg(test)]
impl Outcome {
    /// Whether the item produces a record (and so needs a sequence number).
    pub fn changes(self) -> bool {
        matches!(
            self,
            Outcome::Accepted | Outcome::Updated | Outcome::Deleted(_)
        )
    }
}

/// The outcomes plus the writes that bring the table to the batch's final state.
#[derive(Debug)]
pub(crate) struct Plan {
    pub outcomes: Vec<Outcome>,
    /// Items whose content to upsert as live: the last changing upsert of each key.
    pub upserts: Vec<usize>,
    /// Deletion items that leave their key deleted (applied after the upserts).
    pub deletes: Vec<usize>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        !self.upserts.is_empty() || !self.deletes.is_empty()
    }
}

#[derive(Clone, Copy)]
struct Current {
    hash: Option<Sha256Hash>,
    live: bool,
    origin: Origin,
}

pub(crate) fn classify<K: Hash + Eq>(ops: &[Op<K>], stored: &HashMap<K, StoredState>) -> Plan {
    let mut state: HashMap<&K, Current> = HashMap::with_capacity(ops.len());
    // Per key: the last changing upsert, and whether the key ends deleted (by which item).
    let mut last_upsert: HashMap<&K, usize> = HashMap::new();
    let mut final_delete: HashMap<&K, Option<usize>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());

    for (i, op) in ops.iter().enumerate() {
        let current = |key: &K, state: &HashMap<&K, Current>| {
            state
                .get(key)
                .copied()
                .unwrap_or_else(|| match stored.get(key) {
                    Some(s) => Current {
                        hash: Some(s.hash),
                        live: !s.deleted,
                        origin: Origin::Stored,
                    },
                    None => Current {
                        hash: None,
                        live: false,
                        origin: Origin::Stored,
                    },
                })
        };
        let outcome = match op {
            Op::Skip => Outcome::Skipped,
            Op::Upsert { key, hash } => {
                let cur = current(key, &state);
                if cur.live && cur.hash == Some(*hash) {
                    Outcome::Duplicate
                } else {
                    state.insert(
                        key,
                        Current {
                            hash: Some(*hash),
                            live: true,
                            origin: Origin::Item(i),
                        },
                    );
                    last_upsert.insert(key, i);
                    final_delete.insert(key, None);
                    if cur.live {
                        Outcome::Updated
                    } else {
                        Outcome::Accepted
                    }
                }
            }
            Op::Delete { key } => {
                let cur = current(key, &state);
                if cur.live {
                    state.insert(key, Current { live: false, ..cur });
                    final_delete.insert(key, Some(i));
                    Outcome::Deleted(cur.origin)
                } else {
                    Outcome::Duplicate
                }
            }
        };
        outcomes.push(outcome);
    }

    let mut upserts: Vec<usize> = last_upsert.into_values().collect();
    upserts.sort_unstable();
    let mut deletes: Vec<usize> = final_delete.into_values().flatten().collect();
    deletes.sort_unstable();
    Plan {
        outcomes,
        upserts,
        deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Sha256Hash {
        Sha256Hash([n; 32])
    }

    fn up(key: &'static str, n: u8) -> Op<&'static str> {
        Op::Upsert { key, hash: h(n) }
    }

    fn del(key: &'static str) -> Op<&'static str> {
        Op::Delete { key }
    }

    #[test]
    fn new_same_changed_and_deleted() {
        let stored = HashMap::from([
            (
                "live",
                StoredState {
                    hash: h(1),
                    deleted: false,
                },
            ),
            (
                "gone",
                StoredState {
                    hash: h(1),
                    deleted: true,
                },
            ),
            (
                "doomed",
                StoredState {
                    hash: h(1),
                    deleted: false,
                },
            ),
        ]);
        let ops = vec![
            up("new", 1),
            up("live", 1),
            up("gone", 1),
            Op::Skip,
            del("doomed"),
            del("unknown"),
            del("gone"),
        ];
        let plan = classify(&ops, &stored);
        use Outcome::*;
        assert_eq!(
            plan.outcomes,
            vec![
                Accepted,
                Duplicate,
                Accepted,
                Skipped,
                Deleted(Origin::Stored),
                Duplicate,
                Deleted(Origin::Item(2))
            ]
        );
        assert_eq!(plan.upserts, vec![0, 2]);
        assert_eq!(plan.deletes, vec![4, 6]);
    }

    #[test]
    fn same_key_twice_applies_in_order() {
        let stored = HashMap::from([(
            "k",
            StoredState {
                hash: h(1),
                deleted: false,
            },
        )]);
        let ops = vec![up("k", 2), up("k", 2), up("k", 3), del("k"), up("k", 3)];
        let plan = classify(&ops, &stored);
        use Outcome::*;
        assert_eq!(
            plan.outcomes,
            vec![
                Updated,
                Duplicate,
                Updated,
                Deleted(Origin::Item(2)),
                Accepted
            ]
        );
        assert_eq!(plan.upserts, vec![4]);
        assert!(plan.deletes.is_empty());
    }

    #[test]
    fn unchanged_batch_changes_nothing() {
        let stored = HashMap::from([(
            "k",
            StoredState {
                hash: h(1),
                deleted: false,
            },
        )]);
        let plan = classify(&[up("k", 1), del("x")], &stored);
        assert!(!plan.changed());
        assert!(plan.outcomes.iter().all(|o| !o.changes()));
    }
}
