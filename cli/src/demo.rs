//! The demo of what runs today: a sample record encoded as Avro in the Confluent wire format
//! (schema registered with the registry), produced to the broker keyed by user, consumed
//! back, decoded and compared.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use pulseline_schemas::records::SampleChange;
use pulseline_schemas::{AvroCodec, AvroRecord, Catalog, Operation, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(
        long,
        env = "PULSELINE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:29092"
    )]
    kafka_bootstrap: String,
    #[arg(
        long,
        env = "PULSELINE_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    schema_registry_url: String,
    #[arg(long, env = "PULSELINE_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// How many sample records to send.
    #[arg(long, default_value_t = 5)]
    samples: u32,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    topics::ensure_all(&args.kafka_bootstrap, &args.topic_prefix)
        .await
        .context("creating topics")?;
    let codec = AvroCodec::new(&args.schema_registry_url, &args.topic_prefix)?;
    let topic = codec.topic_of::<SampleChange>();
    let user = uuid::Uuid::new_v4().to_string();
    let heart_rate = Catalog::builtin().metric("HEART_RATE")?;
    let now = chrono::Utc::now();

    // A user's watch reports heart rate in bpm; the catalog converts it to the canonical unit.
    let records: Vec<SampleChange> = (0..args.samples)
        .map(|i| {
            let start = now - chrono::TimeDelta::minutes(i64::from(args.samples - i));
            let bpm = 60.0 + f64::from(i % 20);
            Ok(SampleChange {
                user_id: user.clone(),
                change_seq: 1,
                change_index: i32::try_from(i)?,
                operation: Operation::Upsert,
                source_id: "watch-demo".into(),
                device_type: "apple_watch".into(),
                source_record_id: format!("demo-{i}"),
                start_at: start.timestamp_micros(),
                metric: heart_rate.code().to_owned(),
                end_at: Some(start.timestamp_micros()),
                tz_offset_minutes: 0,
                value: Some(heart_rate.to_canonical(bpm, "bpm")?),
                unit: Some(heart_rate.canonical_unit().to_owned()),
                category: None,
                metadata_json: None,
                accepted_at: now.timestamp_micros(),
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let producer: FutureProducer = pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", &args.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let consumer: StreamConsumer = pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", &args.kafka_bootstrap)
        // Partitions are assigned by hand below; the group id is required but never joined.
        .set("group.id", format!("{}demo-reader", args.topic_prefix))
        .set("enable.auto.commit", "false")
        .create()?;

    println!(
        "pulseline demo: {} heart-rate samples for user {user}",
        records.len()
    );
    let started = Instant::now();
    let mut bytes_sent = 0;
    let mut first: Option<(i32, i64)> = None;
    for record in &records {
        let payload = codec.encode(record).await?;
        bytes_sent += payload.len();
        let delivery = producer
            .send(
                FutureRecord::to(&topic)
                    .key(&record.key())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        first.get_or_insert((delivery.partition, delivery.offset));
        println!(
            "  sent  {} {:>5.1} {} -> {topic}[{}]@{} ({} bytes, schema id {})",
            record.source_record_id,
            record.value.unwrap_or_default(),
            record.unit.as_deref().unwrap_or(""),
            delivery.partition,
            delivery.offset,
            payload.len(),
            u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]),
        );
    }
    // Read back from where the first record landed: all of a user's records share a partition.
    let (partition, offset) = first.context("no record was sent")?;
    let mut from = TopicPartitionList::new();
    from.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    consumer.assign(&from)?;
    let mut received = Vec::new();
    while received.len() < records.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no record came back from the broker within 30 s")??;
        let decoded: SampleChange = codec.decode(msg.payload().unwrap_or_default()).await?;
        if decoded.user_id == user {
            println!(
                "  got   {} from partition {} offset {}",
                decoded.source_record_id,
                msg.partition(),
                msg.offset()
            );
            received.push(decoded);
        }
    }
    ensure!(received == records, "records came back changed");
    println!(
        "ok: {} records ({bytes_sent} bytes of Avro) made the round trip unchanged in {:.0} ms",
        received.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
