//! Rebuilding state from a changelog: read the given partitions of a changelog topic from
//! the beginning to their end and hand the entries of committed batches to the partition's
//! task. Processing of those partitions resumes only after this returns.
//!
//! Committed batches only, found here rather than by the broker: the reader reads
//! uncommitted records, because brokers differ (STACK.md): tansu shows aborted records to
//! read_committed readers, not always at once, and noida-db makes librdkafka skip committed
//! records after an abort. So every changelog record carries
//! its batch attempt and the input offsets it covered (`from` = committed position it
//! started at, `to` = position it would commit), and the restore walks back from the
//! group's committed offsets: the attempt that ended where the group committed, then the
//! one that ended where that one started, and so on. Records of attempts off that chain
//! (aborted, crashed, fenced, or whose offsets were never committed in at-least-once mode)
//! are ignored. If the chain cannot be followed to the beginning (compaction removed old
//! records on a real Kafka, or records predate the tags), the records older than the
//! oldest attempt found are trusted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::config::RuntimeConfig;
use super::error::RuntimeError;
use super::kafka::{ReaderContext, reader_config};

/// Header naming the batch attempt that wrote a changelog record.
pub(crate) const ATTEMPT_HEADER: &str = "pulseline.attempt";
/// Header with the input offsets the attempt covered: `stream=from:to;...`.
pub(crate) const RANGE_HEADER: &str = "pulseline.range";
/// Key prefix of runtime records that are not state (the per-batch marker).
pub(crate) const MARKER_KEY: &[u8] = b"\x00batch";

/// Input positions per stream name; -1 = nothing committed.
pub(crate) type Positions = BTreeMap<String, i64>;

/// `from`/`to` per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    pub from: Positions,
    pub to: Positions,
}

impl Range {
    pub fn encode(&self) -> String {
        self.to
            .iter()
            .map(|(s, to)| format!("{s}={}:{to}", self.from.get(s).copied().unwrap_or(-1)))
            .collect::<Vec<_>>()
            .join(";")
    }

    pub fn parse(text: &str) -> Option<Range> {
        let mut range = Range {
            from: Positions::new(),
            to: Positions::new(),
        };
        for part in text.split(';').filter(|p| !p.is_empty()) {
            let (stream, offsets) = part.split_once('=')?;
            // `from` may be -1, so split on the last ':'.
            let (from, to) = offsets.rsplit_once(':')?;
            range.from.insert(stream.to_owned(), from.parse().ok()?);
            range.to.insert(stream.to_owned(), to.parse().ok()?);
        }
        Some(range)
    }
}

struct Record {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    attempt: Option<String>,
}

struct Attempt {
    range: Range,
    first: usize,
    last: usize,
}

/// Which records of one partition to apply, given the group's committed positions.
fn committed_records(
    records: &[Record],
    ranges: &HashMap<String, Range>,
    committed: &Positions,
) -> Vec<bool> {
    let mut attempts: HashMap<&str, Attempt> = HashMap::new();
    for (pos, r) in records.iter().enumerate() {
        let Some(id) = r.attempt.as_deref() else {
            continue;
        };
        let Some(range) = ranges.get(id) else {
            continue;
        };
        attempts
            .entry(id)
            .and_modify(|a| a.last = pos)
            .or_insert(Attempt {
                range: range.clone(),
                first: pos,
                last: pos,
            });
    }
    if attempts.is_empty() {
        return vec![true; records.len()];
    }
    let mut chain: HashSet<&str> = HashSet::new();
    let mut cur = committed.clone();
    let mut reached_start = false;
    loop {
        let at = |s: &String, cur: &Positions| cur.get(s).copied().unwrap_or(-1);
        let next = attempts
            .iter()
            .filter(|(id, a)| {
                !chain.contains(*id) && a.range.to.iter().all(|(s, to)| at(s, &cur) == *to)
            })
            .max_by_key(|(_, a)| a.last);
        let Some((&id, a)) = next else { break };
        chain.insert(id);
        for (s, from) in &a.range.from {
            cur.insert(s.clone(), *from);
        }
        if a.range.from.values().all(|&f| f < 0) {
            reached_start = true;
            break;
        }
        if a.range.from == a.range.to {
            break;
        }
    }
    let oldest = chain.iter().map(|id| attempts[id].first).min();
    records
        .iter()
        .enumerate()
        .map(|(pos, r)| match (r.attempt.as_deref(), oldest) {
            (Some(id), _) if chain.contains(id) => true,
            // Nothing committed by any tagged attempt: state starts empty.
            (_, None) => !committed.values().all(|&c| c < 0),
            // Before the chain: trusted only if the chain did not reach the beginning.
            (_, Some(first)) => pos < first && !reached_start,
        })
        .collect()
}

/// Replays `partitions` of `topic` into `apply(partition, key, value)`; `committed` gives
/// the group's committed input positions per partition. Returns the entries applied.
pub(crate) fn replay(
    cfg: &RuntimeConfig,
    topic: &str,
    partitions: &[i32],
    committed: &BTreeMap<i32, Positions>,
    mut apply: impl FnMut(i32, &[u8], Option<&[u8]>) -> Result<(), RuntimeError>,
) -> Result<u64, RuntimeError> {
    let reader: BaseConsumer<ReaderContext> =
        reader_config(cfg).create_with_context(ReaderContext)?;
    let mut remaining: BTreeSet<i32> = BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            remaining.insert(p);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    if remaining.is_empty() {
        return Ok(0);
    }
    reader.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_millis(cfg.restore_timeout_ms);
    let mut records: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut ranges: HashMap<String, Range> = HashMap::new();
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(RuntimeError::RestoreTimeout {
                topic: topic.to_owned(),
            });
        }
        match reader.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let Some(key) = m.key() else { continue };
                let mut attempt = None;
                if let Some(headers) = m.headers() {
                    let mut range = None;
                    for h in headers.iter() {
                        let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
                        match h.key {
                            ATTEMPT_HEADER => attempt = value.map(str::to_owned),
                            RANGE_HEADER => range = value.and_then(Range::parse),
                            _ => {}
                        }
                    }
                    if let (Some(id), Some(range)) = (&attempt, range) {
                        ranges.entry(id.clone()).or_insert(range);
                    }
                }
                records.entry(m.partition()).or_default().push(Record {
                    key: key.to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    attempt,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let mut applied = 0;
    let none = Positions::new();
    for (partition, records) in records {
        let keep = committed_records(
            &records,
            &ranges,
            committed.get(&partition).unwrap_or(&none),
        );
        let skipped = keep.iter().filter(|k| !**k).count();
        if skipped > 0 {
            tracing::info!(
                topic,
                partition,
                skipped,
                "changelog records of uncommitted batches ignored"
            );
        }
        for (r, keep) in records.iter().zip(keep) {
            if keep && !r.key.starts_with(MARKER_KEY) {
                apply(partition, &r.key, r.value.as_deref())?;
                applied += 1;
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(o: i64) -> Positions {
        [("samples".to_owned(), o)].into()
    }

    fn rec(attempt: &str) -> Record {
        Record {
            key: b"k".to_vec(),
            value: None,
            attempt: Some(attempt.to_owned()),
        }
    }

    fn ranges(list: &[(&str, i64, i64)]) -> HashMap<String, Range> {
        list.iter()
            .map(|(id, f, t)| {
                (
                    (*id).to_owned(),
                    Range {
                        from: pos(*f),
                        to: pos(*t),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn ranges_round_trip() {
        let r = Range {
            from: [("events".to_owned(), -1), ("samples".to_owned(), 73)].into(),
            to: [("events".to_owned(), -1), ("samples".to_owned(), 87)].into(),
        };
        assert_eq!(Range::parse(&r.encode()), Some(r));
        assert_eq!(Range::parse("samples=x"), None);
    }

    #[test]
    fn only_the_chain_of_committed_attempts_is_kept() {
        // a [-1,10] committed; b [10,20] aborted; c [10,15] committed; d [15,30] committed;
        // e [30,40] written but its offsets never committed.
        let records: Vec<Record> = ["a", "a", "b", "b", "c", "d", "d", "e"]
            .iter()
            .map(|a| rec(a))
            .collect();
        let r = ranges(&[
            ("a", -1, 10),
            ("b", 10, 20),
            ("c", 10, 15),
            ("d", 15, 30),
            ("e", 30, 40),
        ]);
        let keep = committed_records(&records, &r, &pos(30));
        assert_eq!(
            keep,
            vec![true, true, false, false, true, true, true, false]
        );
        // Right after b aborted (committed still at 10): only a.
        let keep = committed_records(&records[..4], &r, &pos(10));
        assert_eq!(keep, vec![true, true, false, false]);
        // Nothing committed yet: nothing.
        let keep = committed_records(&records[..4], &r, &pos(-1));
        assert_eq!(keep, vec![false; 4]);
    }

    #[test]
    fn a_broken_chain_trusts_what_precedes_it() {
        // Untagged (older) records, then a chain that does not reach -1.
        let mut records = vec![Record {
            key: b"k".to_vec(),
            value: None,
            attempt: None,
        }];
        records.extend(["x", "y"].iter().map(|a| rec(a)));
        let r = ranges(&[("x", 50, 60), ("y", 60, 70)]);
        assert_eq!(
            committed_records(&records, &r, &pos(70)),
            vec![true, true, true]
        );
        // No tags at all: everything (a broker that filters aborted records itself).
        let untagged = vec![Record {
            key: b"k".to_vec(),
            value: None,
            attempt: None,
        }];
        assert_eq!(
            committed_records(&untagged, &HashMap::new(), &pos(5)),
            vec![true]
        );
    }
}
