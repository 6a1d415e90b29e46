//! `pulseline dead-letters list | replay`: the dead-letter topic, read from its start, and
//! its records put back once their cause is fixed.
//!
//! Replay depends on who gave up:
//! - a sink (`stage=sink`): the read-model record goes back to its topic unchanged; the
//!   sink's version guard makes a second copy harmless;
//! - a processor (`stage=processor`): its change id is already behind the processor (it
//!   counts dead-lettered changes as handled), so putting the record back would be skipped.
//!   The item it names is accepted again instead: its current content in Postgres, under a
//!   new change id, through the outbox. A record that cannot be decoded names only its user
//!   (the Kafka key): then all of that user's items of the stream are accepted again.
//!
//! Listing shows headers and keys only, never values (no PHI).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pulseline_ingest_gateway::outbox::{OutboxRecord, Stream};
use pulseline_schemas::dead_letter::{header, stage};
use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_schemas::{AvroCodec, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::{Deployment, Reacceptance};

/// One record of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it sits in the dead-letter topic: `partition:offset` identifies it.
    pub partition: i32,
    pub offset: i64,
    /// The original record's key (the user id for input topics).
    pub key: Option<String>,
    pub reason: String,
    pub detail: String,
    pub stage: String,
    pub processor: String,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    value: Option<Vec<u8>>,
    /// The original record's own headers (the dead-letter ones removed).
    original_headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// `partition:offset`, as `--id` takes it.
    pub fn id(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// Which dead letters a command acts on (all of them when every field is empty).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only these (`partition:offset`, as listed); repeatable.
    #[arg(long = "id", value_parser = parse_id)]
    pub ids: Vec<(i32, i64)>,
    /// Only those a `processor` or a `sink` gave up on.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only those with this reason code (e.g. TOO_LATE, UNDECODABLE).
    #[arg(long)]
    pub reason: Option<String>,
}

impl Selection {
    fn matches(&self, d: &DeadLetter) -> bool {
        (self.ids.is_empty() || self.ids.contains(&(d.partition, d.offset)))
            && self.stage.as_ref().is_none_or(|s| *s == d.stage)
            && self.reason.as_ref().is_none_or(|r| *r == d.reason)
    }
}

fn parse_id(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not partition:offset"))?;
    Ok((
        p.parse().map_err(|_| format!("'{p}' is not a partition"))?,
        o.parse().map_err(|_| format!("'{o}' is not an offset"))?,
    ))
}

/// The selected dead letters, read from the start of the topic to its current end
/// (committed records only).
pub async fn list(
    deployment: &Deployment,
    selection: &Selection,
) -> anyhow::Result<Vec<DeadLetter>> {
    let topic = topics::prefixed(&deployment.topic_prefix, topics::DEAD_LETTER);
    let bootstrap = deployment.kafka_bootstrap.clone();
    let all = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic))
        .await
        .context("reading the dead-letter topic")??;
    Ok(all.into_iter().filter(|d| selection.matches(d)).collect())
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Sink dead letters put back on their read-model topic.
    pub republished_to_topic: usize,
    /// Processor dead letters whose items were accepted again.
    pub reaccepted_letters: usize,
    /// Records that accepting them again put in the outbox.
    pub reaccepted_records: u64,
    /// Processor dead letters that could not be decoded: their user's whole stream was
    /// accepted again.
    pub whole_streams: usize,
    /// Dead letters that could not be replayed, with why.
    pub skipped: Vec<(String, String)>,
}

/// Replays the given dead letters (see the module's doc for how).
pub async fn replay(
    deployment: &Deployment,
    letters: &[DeadLetter],
) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let samples_topic = topics::prefixed(&deployment.topic_prefix, topics::SAMPLES);
    let events_topic = topics::prefixed(&deployment.topic_prefix, topics::EVENTS);
    let codec = AvroCodec::new(&deployment.schema_registry_url, &deployment.topic_prefix)?;
    let mut again = Reacceptance::default();
    let mut to_topic = Vec::new();
    for d in letters {
        if d.stage == stage::SINK {
            to_topic.push(d);
            continue;
        }
        let stream = if d.source_topic == samples_topic {
            Stream::Samples
        } else if d.source_topic == events_topic {
            Stream::Events
        } else {
            report
                .skipped
                .push((d.id(), format!("unknown source topic {}", d.source_topic)));
            continue;
        };
        match decode(&codec, stream, d.value.as_deref()).await {
            Some(record) => match record_user(&record) {
                Some(user) => again.add_record(user, &record),
                None => {
                    report
                        .skipped
                        .push((d.id(), "no user id in the record".into()));
                    continue;
                }
            },
            None => match d.key.as_deref().and_then(|k| Uuid::parse_str(k).ok()) {
                Some(user) => {
                    again.add_whole_stream(user, stream);
                    report.whole_streams += 1;
                }
                None => {
                    report
                        .skipped
                        .push((d.id(), "undecodable, and its key is no user id".into()));
                    continue;
                }
            },
        }
        report.reaccepted_letters += 1;
    }
    if !again.is_empty() {
        let pool = deployment.pool().await?;
        report.reaccepted_records = again.run(&pool, deployment.relay_shards).await?;
    }
    if !to_topic.is_empty() {
        produce_back(deployment, &to_topic).await?;
        report.republished_to_topic = to_topic.len();
    }
    Ok(report)
}

async fn decode(codec: &AvroCodec, stream: Stream, value: Option<&[u8]>) -> Option<OutboxRecord> {
    let bytes = value?;
    match stream {
        Stream::Samples => codec
            .decode::<SampleChange>(bytes)
            .await
            .ok()
            .map(OutboxRecord::Sample),
        Stream::Events => codec
            .decode::<UserEventChange>(bytes)
            .await
            .ok()
            .map(OutboxRecord::Event),
    }
}

fn record_user(record: &OutboxRecord) -> Option<Uuid> {
    let user = match record {
        OutboxRecord::Sample(s) => &s.user_id,
        OutboxRecord::Event(e) => &e.user_id,
    };
    Uuid::parse_str(user).ok()
}

/// Puts sink dead letters back on their topics with their key and original headers.
async fn produce_back(deployment: &Deployment, letters: &[&DeadLetter]) -> anyhow::Result<()> {
    let producer: FutureProducer = pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", &deployment.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .context("creating the Kafka producer")?;
    for d in letters {
        let headers = d
            .original_headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            });
        let mut record = FutureRecord::to(&d.source_topic).headers(headers);
        if let Some(key) = &d.key {
            record = record.key(key.as_str());
        }
        if let Some(value) = &d.value {
            record = record.payload(value.as_slice());
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("putting {} back on {}", d.id(), d.source_topic))?;
    }
    Ok(())
}

/// Every committed record of the topic, from its start to the end it had when called.
fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("pulseline-ops-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the Kafka consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        bail!("topic {topic} does not exist");
    }
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeSet::new();
    for p in 0..i32::try_from(partitions)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
            remaining.insert(p);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("{topic} was not read to its end within 120 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(dead_letter(&m)),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            None => {}
        }
    }
    Ok(out)
}

fn dead_letter(m: &rdkafka::message::BorrowedMessage<'_>) -> DeadLetter {
    let mut d = DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        reason: String::new(),
        detail: String::new(),
        stage: String::new(),
        processor: String::new(),
        source_topic: String::new(),
        source_partition: None,
        source_offset: None,
        value: m.payload().map(<[u8]>::to_vec),
        original_headers: Vec::new(),
    };
    for h in m.headers().into_iter().flat_map(|h| h.iter()) {
        let text = || String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
        match h.key {
            header::REASON => d.reason = text(),
            header::DETAIL => d.detail = text(),
            header::STAGE => d.stage = text(),
            header::PROCESSOR => d.processor = text(),
            header::SOURCE_TOPIC => d.source_topic = text(),
            header::SOURCE_PARTITION => d.source_partition = text().parse().ok(),
            header::SOURCE_OFFSET => d.source_offset = text().parse().ok(),
            key => d
                .original_headers
                .push((key.to_owned(), h.value.map(<[u8]>::to_vec))),
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_partition_and_offset() {
        assert_eq!(parse_id("0:42"), Ok((0, 42)));
        assert!(parse_id("42").is_err());
        assert!(parse_id("a:1").is_err());
        assert!(parse_id("0:x").is_err());
    }
}
