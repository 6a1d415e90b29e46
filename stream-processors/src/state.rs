//! Per-user processor state and how it travels through the changelog.
//!
//! A processor's state is a plain Rust value per user. The runtime persists it as a set of
//! changelog entries (sub-key -> value, `None` = removed) on a compacted topic, writing only
//! the entries that changed in a batch, and rebuilds it on partition assignment by replaying
//! the entries in order. `Table` is the ready-made state for processors that need a map;
//! a processor with derived indexes implements `State` itself (see the rollups state).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One changed state entry of one user: the runtime prefixes the key with the user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    pub key: Vec<u8>,
    /// `None`: the entry was removed (a tombstone on the compacted changelog).
    pub value: Option<Vec<u8>>,
}

/// A changelog entry that could not be read back: a bug or an incompatible state format.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode state {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot decode state {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown state key {0:?}")]
    UnknownKey(String),
}

/// State the runtime can persist and restore. `drain_changes` must report every entry
/// changed since its last call (latest content, or `None` if removed), and replaying all
/// entries ever drained through `restore`, in order, onto `Default` must rebuild an equal
/// state. Encodings must round-trip exactly (store floats as bits, see `f64_bits`).
pub trait State: Default + Send + std::fmt::Debug + 'static {
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError>;
    fn drain_changes(&mut self, out: &mut Vec<ChangelogEntry>) -> Result<(), StateError>;
}

/// Stateless processors.
impl State for () {
    fn restore(&mut self, key: &[u8], _: Option<&[u8]>) -> Result<(), StateError> {
        Err(StateError::UnknownKey(
            String::from_utf8_lossy(key).into_owned(),
        ))
    }
    fn drain_changes(&mut self, _: &mut Vec<ChangelogEntry>) -> Result<(), StateError> {
        Ok(())
    }
}

/// Serialises a state value or key (JSON: deterministic for a given value, readable when
/// debugging a changelog). A failure (a map with non-string keys, say) is an error, never
/// an empty entry that would restore as something else.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(|source| StateError::Encode { what, source })
}

/// The inverse of `encode`.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Decode { what, source })
}

/// serde helper storing an `f64` as its IEEE bits, so a value restored from the changelog is
/// bit-identical to the one stored (decimal text may not round-trip).
pub mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }

    /// The same for `Option<f64>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&v.to_bits()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<u64>::deserialize(d).map(|o| o.map(f64::from_bits))
        }
    }
}

/// An ordered map that records which keys changed, for processors whose state is a map.
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

impl<K, V> State for Table<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
    V: Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
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

    #[test]
    fn a_table_restored_from_its_changes_is_equal() {
        let mut t: Table<(String, i64), f64> = Table::default();
        let mut log = Vec::new();
        t.insert(("a".into(), 1), 0.1 + 0.2);
        t.insert(("b".into(), 2), 2.0);
        t.drain_changes(&mut log).unwrap();
        t.remove(&("b".into(), 2));
        t.insert(("c".into(), 3), f64::MIN_POSITIVE);
        t.drain_changes(&mut log).unwrap();
        let mut back: Table<(String, i64), f64> = Table::default();
        for e in &log {
            back.restore(&e.key, e.value.as_deref()).unwrap();
        }
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            t.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn f64_bits_round_trip_exactly() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct W(#[serde(with = "f64_bits")] f64);
        for v in [0.1 + 0.2, 1e-300, -0.0, 123456.789e10] {
            let back: W = decode("w", &encode("w", &W(v)).unwrap()).unwrap();
            assert_eq!(back.0.to_bits(), v.to_bits());
        }
    }
}
