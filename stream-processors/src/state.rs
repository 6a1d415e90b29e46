//! Per-user processor state, declared as named tables, and how it travels through the
//! changelog.
//!
//! A processor's state is a struct whose persisted parts are `Table`s, declared with
//! `state_tables!` (the field name is the table's name). The runtime persists each table as
//! changelog entries (`(user, table, key) -> value`, `None` = removed) on a compacted
//! topic, writing only the entries changed in a batch, and rebuilds the tables on
//! partition assignment by replaying the entries in order; `State::restored` then rebuilds
//! whatever the processor derives from its tables. Processors only use the `Table` API
//! (get, insert, remove, ranges), so the tables can move from memory to an embedded
//! on-disk store without a processor changing.
//!
//! Keys and values are encoded with postcard: compact, deterministic, floats stored as
//! their bits (a restored value is bit-identical), and every failure is an error, never an
//! empty entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::RangeBounds;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One changed entry of one table of one user; the runtime adds the user and the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    pub key: Vec<u8>,
    /// `None`: the entry was removed (a tombstone on the compacted changelog).
    pub value: Option<Vec<u8>>,
}

/// State that cannot be written or read back: a bug or an incompatible state format.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode state {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot decode state {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("unknown state table {0:?}")]
    UnknownTable(String),
}

/// Encodes a state key or value (see the module doc).
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(value).map_err(|source| StateError::Encode { what, source })
}

/// The inverse of `encode`.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|source| StateError::Decode { what, source })
}

/// A table the runtime can persist and restore, whatever its key and value types.
pub trait StateTable: Send + Debug {
    /// Replays one entry (in changelog order).
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError>;
    /// Every entry changed since the last call: its latest content, or `None` if removed.
    fn drain_changes(&mut self, out: &mut Vec<ChangelogEntry>) -> Result<(), StateError>;
}

/// A processor's per-user state: named tables plus anything derived from them.
/// Implement it with `state_tables!`.
pub trait State: Default + Send + Debug + 'static {
    /// The persisted tables, by name (names are part of the changelog format: renaming
    /// one starts it empty).
    fn tables(&mut self) -> Vec<(&'static str, &mut dyn StateTable)>;

    /// Called once per user after a restore: rebuild derived data (indexes, bounds).
    fn restored(&mut self) {}

    /// Tables an earlier version persisted and this one no longer has: their changelog
    /// entries are skipped on restore instead of failing it.
    fn retired_tables() -> &'static [&'static str] {
        &[]
    }
}

/// Declares a `State` whose tables are the listed fields (each a `Table`), named after
/// them: `state_tables!(SleepState { stages, nights });`. Add `restored = path` to call a
/// `fn(&mut Self)` after a restore.
#[macro_export]
macro_rules! state_tables {
    ($ty:ty { $($table:ident),+ $(,)? } $(, restored = $restored:path)? $(, retired = [$($old:literal),* $(,)?])? $(,)?) => {
        impl $crate::state::State for $ty {
            fn tables(
                &mut self,
            ) -> ::std::vec::Vec<(&'static str, &mut dyn $crate::state::StateTable)> {
                vec![$((stringify!($table), &mut self.$table as &mut dyn $crate::state::StateTable)),+]
            }
            $(fn restored(&mut self) {
                $restored(self)
            })?
            $(fn retired_tables() -> &'static [&'static str] {
                &[$($old),*]
            })?
        }
    };
}

/// Stateless processors.
impl State for () {
    fn tables(&mut self) -> Vec<(&'static str, &mut dyn StateTable)> {
        Vec::new()
    }
}

/// A single table is a state of its own (named `table`).
impl<K, V> State for Table<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + Debug + 'static,
    V: Serialize + DeserializeOwned + Send + Debug + 'static,
{
    fn tables(&mut self) -> Vec<(&'static str, &mut dyn StateTable)> {
        vec![("table", self as &mut dyn StateTable)]
    }
}

/// An ordered map that records which keys changed, for the changelog.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    rows: BTreeMap<K, V>,
    dirty: BTreeSet<K>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V> Table<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.rows.get(key)
    }

    /// Mutable access marks the row changed.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let row = self.rows.get_mut(key)?;
        self.dirty.insert(key.clone());
        Some(row)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.rows.insert(key, value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.rows.remove(key);
        if old.is_some() {
            self.dirty.insert(key.clone());
        }
        old
    }

    pub fn range<R: RangeBounds<K>>(&self, range: R) -> impl Iterator<Item = (&K, &V)> {
        self.rows.range(range)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl<K, V> StateTable for Table<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + Debug + 'static,
    V: Serialize + DeserializeOwned + Send + Debug + 'static,
{
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        let key: K = decode("table key", key)?;
        match value {
            Some(v) => {
                self.rows.insert(key, decode("table value", v)?);
            }
            None => {
                self.rows.remove(&key);
            }
        }
        Ok(())
    }

    fn drain_changes(&mut self, out: &mut Vec<ChangelogEntry>) -> Result<(), StateError> {
        for key in std::mem::take(&mut self.dirty) {
            let value = match self.rows.get(&key) {
                Some(v) => Some(encode("table value", v)?),
                None => None,
            };
            out.push(ChangelogEntry {
                key: encode("table key", &key)?,
                value,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Two {
        a: Table<(String, i64), f64>,
        b: Table<u32, String>,
    }
    state_tables!(Two { a, b });

    fn changes(s: &mut Two) -> Vec<(&'static str, ChangelogEntry)> {
        let mut out = Vec::new();
        for (name, table) in s.tables() {
            let mut entries = Vec::new();
            table.drain_changes(&mut entries).unwrap();
            out.extend(entries.into_iter().map(|e| (name, e)));
        }
        out
    }

    #[test]
    fn a_state_restored_from_its_changes_is_equal_and_floats_are_exact() {
        let mut s = Two::default();
        let mut log = Vec::new();
        s.a.insert(("a".into(), 1), 0.1 + 0.2);
        s.a.insert(("b".into(), 2), f64::NAN);
        s.b.insert(7, "x".into());
        log.extend(changes(&mut s));
        s.a.remove(&("b".into(), 2));
        s.a.insert(("c".into(), 3), f64::MIN_POSITIVE);
        s.a.insert(("d".into(), 4), -0.0);
        log.extend(changes(&mut s));
        let mut back = Two::default();
        for (name, e) in &log {
            let mut tables = back.tables();
            let (_, table) = tables.iter_mut().find(|(n, _)| n == name).unwrap();
            table.restore(&e.key, e.value.as_deref()).unwrap();
        }
        let bits = |t: &Table<(String, i64), f64>| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&back.a), bits(&s.a));
        assert_eq!(back.b.get(&7).map(String::as_str), Some("x"));
        assert!(changes(&mut s).is_empty(), "drained");
    }

    #[test]
    fn an_unreadable_entry_is_an_error_not_a_default() {
        let mut t: Table<u32, f64> = Table::default();
        let err = t
            .restore(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Some(&[1]))
            .unwrap_err();
        assert!(matches!(err, StateError::Decode { .. }), "{err}");
    }
}
