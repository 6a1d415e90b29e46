//! The dead-letter topic's contract (`topics::DEAD_LETTER`): every stage that gives up on a
//! record (the processor runtime, the sinks) writes it there unchanged, with the same
//! headers and the same reason codes, so one consumer or one operator query reads them
//! all. Headers are UTF-8 strings; names are namespaced `pulseline.*` so they do not clash
//! with headers the original record carried.
//!
//! | header                       | value                                               |
//! |------------------------------|-----------------------------------------------------|
//! | `pulseline.reason`           | UPPER_SNAKE code: one of `reason::*`, or a processor's rejection code (`UNKNOWN_METRIC`, ...) |
//! | `pulseline.detail`           | what was wrong, without values (no PHI)             |
//! | `pulseline.stage`            | who gave up: `processor` or `sink`                  |
//! | `pulseline.processor`        | the processor's name (empty when the runtime itself refused the record) |
//! | `pulseline.source.topic`     | where the record was read                           |
//! | `pulseline.source.partition` | its partition (decimal)                             |
//! | `pulseline.source.offset`    | its offset (decimal)                                |

use rdkafka::message::{Header, OwnedHeaders};

/// Header names.
pub mod header {
    pub const REASON: &str = "pulseline.reason";
    pub const DETAIL: &str = "pulseline.detail";
    pub const STAGE: &str = "pulseline.stage";
    pub const PROCESSOR: &str = "pulseline.processor";
    pub const SOURCE_TOPIC: &str = "pulseline.source.topic";
    pub const SOURCE_PARTITION: &str = "pulseline.source.partition";
    pub const SOURCE_OFFSET: &str = "pulseline.source.offset";
}

/// The reasons any stage may give. Processors add their own rejection codes (same
/// UPPER_SNAKE form); these are the ones that are not a processor's judgement.
pub mod reason {
    /// The value is not a decodable record of the topic's schema.
    pub const UNDECODABLE: &str = "UNDECODABLE";
    /// The record has no value.
    pub const EMPTY_PAYLOAD: &str = "EMPTY_PAYLOAD";
    /// It decodes, but breaks a rule of the record type (e.g. a read-model row a sink
    /// cannot store).
    pub const INVALID_RECORD: &str = "INVALID_RECORD";
    /// Older than the allowed lateness of event time.
    pub const TOO_LATE: &str = "TOO_LATE";
    /// A processor panicked on it; replays send it here instead of panicking again.
    pub const PROCESSOR_PANIC: &str = "PROCESSOR_PANIC";
}

/// The `pulseline.stage` values.
pub mod stage {
    pub const PROCESSOR: &str = "processor";
    pub const SINK: &str = "sink";
}

/// The headers of one dead letter.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterHeaders<'a> {
    pub reason: &'a str,
    pub detail: &'a str,
    pub stage: &'a str,
    /// Empty when no processor was involved.
    pub processor: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl DeadLetterHeaders<'_> {
    /// The Kafka headers, in the order of the table above.
    pub fn to_kafka(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        [
            (header::REASON, self.reason),
            (header::DETAIL, self.detail),
            (header::STAGE, self.stage),
            (header::PROCESSOR, self.processor),
            (header::SOURCE_TOPIC, self.source_topic),
            (header::SOURCE_PARTITION, partition.as_str()),
            (header::SOURCE_OFFSET, offset.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(7), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_carry_every_field() {
        let h = DeadLetterHeaders {
            reason: reason::UNDECODABLE,
            detail: "bad magic byte",
            stage: stage::SINK,
            processor: "",
            source_topic: "readmodel.rollups.v1",
            source_partition: 3,
            source_offset: 42,
        }
        .to_kafka();
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(pairs.len(), 7);
        assert_eq!(pairs[0], (header::REASON.into(), "UNDECODABLE".into()));
        assert_eq!(pairs[5], (header::SOURCE_PARTITION.into(), "3".into()));
        assert_eq!(pairs[6], (header::SOURCE_OFFSET.into(), "42".into()));
    }
}
