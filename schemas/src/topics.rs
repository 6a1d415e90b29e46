//! Topic definitions, read from `schemas/topics.toml` (the one place; `scripts/stack` reads
//! the same file), and their creation through the admin API at start-up.
//!
//! Every name is prefixed with the deployment's topic prefix (`PULSELINE_TOPIC_PREFIX`),
//! so parallel tests and environments sharing a broker never see each other's records.

use std::sync::LazyLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::Error;

/// Sample upserts and deletions, keyed by user.
pub const SAMPLES: &str = "health.samples.v1";
/// User events (sessions) that impact windows are computed around, keyed by user.
pub const EVENTS: &str = "health.events.v1";
/// Records that could not be decoded or processed, with the reason in a header
/// (the headers and reasons: `dead_letter`).
pub const DEAD_LETTER: &str = "health.deadletter.v1";
/// Versioned rollup upserts.
pub const ROLLUPS: &str = "readmodel.rollups.v1";
/// Versioned sleep-night upserts.
pub const SLEEP_NIGHTS: &str = "readmodel.sleep_nights.v1";
/// Versioned session-impact upserts (one event, one metric).
pub const SESSION_IMPACTS: &str = "readmodel.session_impacts.v1";
/// Versioned product-impact upserts (one product or event type, one metric, one period).
pub const PRODUCT_IMPACTS: &str = "readmodel.product_impacts.v1";

/// Whether Kafka may drop older records of a key (read models) or only old segments (inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    fn as_config(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic as `topics.toml` defines it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub cleanup_policy: CleanupPolicy,
    /// -1 keeps records forever (compacted read-model topics).
    pub retention_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    topic: Vec<TopicSpec>,
}

const TOPICS_TOML: &str = include_str!("../topics.toml");

static TOPICS: LazyLock<Vec<TopicSpec>> =
    LazyLock::new(|| parse(TOPICS_TOML).expect("embedded topics.toml is valid (tested)"));

fn parse(text: &str) -> Result<Vec<TopicSpec>, Error> {
    let file: TopicsFile = toml::from_str(text).map_err(|e| Error::TopicConfig(e.to_string()))?;
    for t in &file.topic {
        if t.partitions < 1 {
            return Err(Error::TopicConfig(format!(
                "{}: partitions must be >= 1",
                t.name
            )));
        }
    }
    Ok(file.topic)
}

/// Every topic pulseline uses, un-prefixed.
pub fn all() -> &'static [TopicSpec] {
    &TOPICS
}

/// The spec of one un-prefixed topic name.
pub fn spec(name: &str) -> Option<&'static TopicSpec> {
    TOPICS.iter().find(|t| t.name == name)
}

/// The topic name as deployed: prefix + name.
pub fn prefixed(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// Creates every topic of `topics.toml` under `prefix` that does not exist yet, and waits
/// until the broker reports each of them. Safe to call from every service at start-up.
pub async fn ensure_all(bootstrap: &str, prefix: &str) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = crate::kafka::client_config()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let names: Vec<String> = all().iter().map(|t| prefixed(prefix, &t.name)).collect();
    let configs: Vec<(String, String)> = all()
        .iter()
        .map(|t| {
            (
                t.cleanup_policy.as_config().to_owned(),
                t.retention_ms.to_string(),
            )
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = all()
        .iter()
        .zip(&names)
        .zip(&configs)
        .map(|((t, name), (policy, retention))| {
            NewTopic::new(name, t.partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", policy)
                .set("retention.ms", retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    for result in admin.create_topics(&new_topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(Error::TopicCreate { name, code }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_topics_parse_and_cover_every_record_topic() {
        use crate::records::*;
        for topic in [
            SampleChange::TOPIC,
            UserEventChange::TOPIC,
            RollupUpsert::TOPIC,
            SleepNightUpsert::TOPIC,
            SessionImpactUpsert::TOPIC,
            DEAD_LETTER,
        ] {
            assert!(spec(topic).is_some(), "{topic} missing from topics.toml");
        }
    }

    #[test]
    fn inputs_are_append_only_and_read_models_compacted() {
        for t in all() {
            let expected = if t.name.starts_with("readmodel.") {
                CleanupPolicy::Compact
            } else {
                CleanupPolicy::Delete
            };
            assert_eq!(t.cleanup_policy, expected, "{}", t.name);
        }
    }

    #[test]
    fn bad_topic_files_are_refused() {
        let zero = "[[topic]]\nname='x'\npartitions=0\ncleanup_policy='delete'\nretention_ms=1\n";
        assert!(matches!(parse(zero), Err(Error::TopicConfig(_))));
        let unknown =
            "[[topic]]\nname='x'\npartitions=1\ncleanup_policy='forever'\nretention_ms=1\n";
        assert!(matches!(parse(unknown), Err(Error::TopicConfig(_))));
    }
}
