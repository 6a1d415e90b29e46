//! Avro schemas: each parses; each change keeps BACKWARD compatibility with the previous
//! committed version; every record type round-trips through the real schema registry and
//! the real broker (`scripts/stack up`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use pulseline_schemas::records::*;
use pulseline_schemas::{AvroCodec, AvroRecord, Operation};
use pulseline_testkit::Stack;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("schemas/ has a parent")
        .to_owned()
}

#[test]
fn every_avsc_file_parses_and_is_compiled_in() {
    let dir = repo_root().join("schemas/avro");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("schemas/avro exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    on_disk.sort();
    let mut compiled: Vec<String> = ALL_SCHEMAS.iter().map(|(f, _)| f.to_string()).collect();
    compiled.sort();
    assert_eq!(
        on_disk, compiled,
        "every .avsc must have a Rust type (records.rs)"
    );
    for (file, text) in ALL_SCHEMAS {
        Schema::parse_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// The distinct committed versions of `path`, oldest first, each with its short commit id (a commit
/// that left the text as it was adds nothing).
fn committed_versions(path: &str) -> Vec<(String, String)> {
    let root = repo_root();
    let log = Command::new("git")
        .args(["log", "--reverse", "--format=%H", "--", path])
        .current_dir(&root)
        .output()
        .expect("git is installed (the compatibility check reads schema history from git)");
    assert!(
        log.status.success(),
        "git log failed (the compatibility check needs the repository's history): {}",
        String::from_utf8_lossy(&log.stderr)
    );
    let mut versions: Vec<(String, String)> = Vec::new();
    for commit in String::from_utf8_lossy(&log.stdout).lines() {
        let show = Command::new("git")
            .args(["show", &format!("{commit}:{path}")])
            .current_dir(&root)
            .output()
            .expect("git show runs");
        if !show.status.success() {
            continue; // deleted in that commit
        }
        let text = String::from_utf8_lossy(&show.stdout).into_owned();
        if versions.last().is_none_or(|(_, last)| *last != text) {
            versions.push((commit[..12].to_owned(), text));
        }
    }
    versions
}

/// BACKWARD: a reader with the new schema reads every record written with the old one.
fn backward_compatible(old: &str, new: &str) -> Result<(), String> {
    let old = Schema::parse_str(old).map_err(|e| e.to_string())?;
    let new = Schema::parse_str(new).map_err(|e| e.to_string())?;
    match SchemaCompatibility::can_read(&old, &new).map_err(|e| e.to_string())? {
        Compatibility::Full => Ok(()),
        // Partial: some old records (an enum symbol or union branch) would fail to resolve.
        Compatibility::Partial => Err("only partially compatible".into()),
    }
}

/// Schema changes in the history when this check was written (rollup_upsert,
/// session_impact_upsert and sleep_night_upsert each changed once); history only grows, so
/// fewer compared pairs means the check did not see the history (a shallow clone, a copy
/// without `.git`) and proves nothing.
const SCHEMA_CHANGES_AT_LEAST: usize = 3;

#[test]
fn every_schema_change_is_backward_compatible_with_the_previous_committed_version() {
    let mut compared = Vec::new();
    for (file, text) in ALL_SCHEMAS {
        let path = format!("schemas/avro/{file}");
        // Every committed change, then the working copy against the last commit.
        let mut versions = committed_versions(&path);
        if versions.last().is_none_or(|(_, last)| last != text) {
            versions.push(("working copy".to_owned(), (*text).to_owned()));
        }
        for pair in versions.windows(2) {
            let ((old_commit, old), (new_commit, new)) = (&pair[0], &pair[1]);
            backward_compatible(old, new).unwrap_or_else(|e| {
                panic!(
                    "{path} in {new_commit} breaks BACKWARD compatibility with its version in \
                     {old_commit}: {e}"
                )
            });
            compared.push(format!("{file}: {old_commit} -> {new_commit}"));
        }
    }
    eprintln!(
        "compared {} schema version pair(s): {compared:#?}",
        compared.len()
    );
    assert!(
        compared.len() >= SCHEMA_CHANGES_AT_LEAST,
        "compared {} schema version pairs, expected at least {SCHEMA_CHANGES_AT_LEAST}: \
         is the git history there (`git fetch --unshallow`)?",
        compared.len()
    );
}

#[test]
fn the_compatibility_check_catches_breaking_changes() {
    let old = SampleChange::SCHEMA_TEXT;
    // A new required field without a default: new readers cannot read old records.
    let added_required = old.replacen(
        r#"{"name": "userId", "type": "string", "doc": "UUID of the user; also the Kafka key."},"#,
        r#"{"name": "userId", "type": "string"}, {"name": "mandatory", "type": "long"},"#,
        1,
    );
    assert_ne!(added_required, old, "test edit applied");
    assert!(backward_compatible(old, &added_required).is_err());
    // A field type narrowed from double to int.
    let narrowed = old.replacen(
        r#""type": ["null", "double"]"#,
        r#""type": ["null", "int"]"#,
        1,
    );
    assert_ne!(narrowed, old);
    assert!(backward_compatible(old, &narrowed).is_err());
    // Adding an optional field with a default is fine.
    let added_optional = old.replacen(
        r#"{"name": "userId", "type": "string", "doc": "UUID of the user; also the Kafka key."},"#,
        r#"{"name": "userId", "type": "string"}, {"name": "note", "type": ["null", "string"], "default": null},"#,
        1,
    );
    assert!(backward_compatible(old, &added_optional).is_ok());
}

fn sample() -> SampleChange {
    SampleChange {
        user_id: "0b8c7a53-3f0e-4d59-9d7c-52b3a6f1c001".into(),
        change_seq: 42,
        change_index: 3,
        operation: Operation::Upsert,
        source_id: "watch-1".into(),
        device_type: "apple_watch".into(),
        source_record_id: "hk-123".into(),
        start_at: 1_763_900_000_000_000,
        metric: "HEART_RATE".into(),
        end_at: Some(1_763_900_060_000_000),
        tz_offset_minutes: 60,
        value: Some(72.5),
        unit: Some("count/min".into()),
        category: None,
        metadata_json: Some(r#"{"motion":"still"}"#.into()),
        accepted_at: 1_763_900_100_000_000,
    }
}

fn deletion() -> SampleChange {
    SampleChange {
        operation: Operation::Delete,
        end_at: None,
        value: None,
        unit: None,
        metadata_json: None,
        ..sample()
    }
}

fn event() -> UserEventChange {
    UserEventChange {
        user_id: "0b8c7a53-3f0e-4d59-9d7c-52b3a6f1c001".into(),
        change_seq: 7,
        change_index: 0,
        operation: Operation::Upsert,
        event_id: "coffee-1".into(),
        event_type: "caffeine".into(),
        product_id: Some("espresso".into()),
        start_at: 1_763_900_000_000_000,
        end_at: None,
        tz_offset_minutes: -300,
        attributes_json: Some(r#"{"mg":80}"#.into()),
        accepted_at: 1_763_900_000_500_000,
    }
}

fn rollup() -> RollupUpsert {
    RollupUpsert {
        user_id: "u".into(),
        metric: "STEPS".into(),
        period: Period::Hour,
        bucket_start: "2026-11-23T08:00:00".into(),
        version: 99,
        deleted: false,
        value: Some(1234.0),
        min: None,
        max: None,
        count: 3,
        sources: vec!["watch-1".into(), "phone-1".into()],
        applied_seq: 12,
    }
}

fn sleep_night() -> SleepNightUpsert {
    SleepNightUpsert {
        user_id: "u".into(),
        night: "2026-11-23".into(),
        version: 5,
        deleted: false,
        in_bed_minutes: 480.0,
        asleep_minutes: 440.0,
        awake_minutes: 40.0,
        rem_minutes: Some(100.0),
        deep_minutes: Some(80.0),
        core_minutes: None,
        latency_minutes: Some(12.0),
        efficiency: Some(0.916),
        awakenings: 3,
        bed_at: Some(1_763_850_000_000_000),
        wake_at: Some(1_763_878_800_000_000),
        sources: vec!["watch-1".into()],
        applied_seq: 4,
        unspecified_minutes: 260.0,
        nap_count: 1,
        nap_minutes: 25.5,
    }
}

fn impact() -> SessionImpactUpsert {
    SessionImpactUpsert {
        user_id: "u".into(),
        event_id: "coffee-1".into(),
        event_type: "caffeine".into(),
        product_id: None,
        metric: "HEART_RATE".into(),
        version: 8,
        events_version: 3,
        deleted: false,
        start_at: 1_763_900_000_000_000,
        end_at: Some(1_763_901_800_000_000),
        local_date: "2025-11-23".into(),
        baseline_avg: Some(64.0),
        after_avg: Some(70.4),
        delta_percent: Some(10.0),
        baseline_count: 30,
        after_count: 28,
        reliable: true,
        applied_sample_seq: 40,
        applied_event_seq: 7,
    }
}

fn product_impact() -> ProductImpactUpsert {
    ProductImpactUpsert {
        user_id: "u".into(),
        event_type: "caffeine".into(),
        product_id: Some("espresso".into()),
        metric: "HEART_RATE".into(),
        period_days: 30,
        version: 9,
        events_version: 4,
        deleted: false,
        n: 6,
        avg_delta_percent: Some(12.5),
        std_dev: Some(3.25),
        tier: ImpactTier::Medium,
        as_of: 1_763_900_000_000_000,
        applied_sample_seq: 41,
        applied_event_seq: 8,
    }
}

async fn roundtrip<R: AvroRecord + PartialEq + std::fmt::Debug>(codec: &AvroCodec, record: R) {
    let bytes = codec
        .encode(&record)
        .await
        .expect("encode through the registry");
    assert_eq!(
        bytes[0], 0,
        "Confluent wire format starts with magic byte 0"
    );
    let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4-byte schema id"));
    assert!(id > 0 || bytes.len() > 5, "schema id and body present");
    let back: R = codec
        .decode(&bytes)
        .await
        .expect("decode through the registry");
    assert_eq!(back, record);
}

#[tokio::test]
async fn every_record_type_round_trips_through_the_real_registry() {
    let stack = Stack::from_env();
    let prefix = stack.unique_prefix("registry");
    let codec = AvroCodec::new(&stack.schema_registry_url, &prefix).expect("codec");
    roundtrip(&codec, sample()).await;
    roundtrip(&codec, deletion()).await;
    roundtrip(&codec, event()).await;
    roundtrip(&codec, rollup()).await;
    roundtrip(&codec, sleep_night()).await;
    roundtrip(&codec, impact()).await;
    roundtrip(&codec, product_impact()).await;

    // The registry holds one subject per topic, under the test's prefix.
    let subjects: Vec<String> = reqwest_subjects(&stack.schema_registry_url).await;
    assert!(
        subjects.contains(&format!("{prefix}health.samples.v1-value")),
        "{subjects:?}"
    );
}

/// Lists registry subjects with a plain HTTP/1.1 request (no extra client crate needed).
async fn reqwest_subjects(url: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(authority)
        .await
        .expect("registry reachable");
    let req = format!("GET /subjects HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read");
    let json = body.split("\r\n\r\n").nth(1).expect("http body");
    let json = json.trim();
    // Tolerate chunked encoding: take the JSON array between the outer brackets.
    let start = json.find('[').expect("json array");
    let end = json.rfind(']').expect("json array end");
    serde_json::from_str(&json[start..=end]).expect("subjects are a JSON array of strings")
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_by_the_registry() {
    let stack = Stack::from_env();
    let prefix = stack.unique_prefix("compat");
    let codec = AvroCodec::new(&stack.schema_registry_url, &prefix).expect("codec");
    codec
        .encode(&sample())
        .await
        .expect("first version registers");
    let subject = format!("{prefix}health.samples.v1-value");
    let breaking = SampleChange::SCHEMA_TEXT.replacen(
        r#"{"name": "userId", "type": "string", "doc": "UUID of the user; also the Kafka key."},"#,
        r#"{"name": "userId", "type": "string"}, {"name": "mandatory", "type": "long"},"#,
        1,
    );
    let status = post_schema(&stack.schema_registry_url, &subject, &breaking).await;
    assert_eq!(
        status, 409,
        "registry must refuse a BACKWARD-incompatible schema"
    );
}

async fn post_schema(url: &str, subject: &str, schema: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let body = serde_json::json!({ "schema": schema }).to_string();
    let mut conn = tokio::net::TcpStream::connect(authority)
        .await
        .expect("registry reachable");
    let req = format!(
        "POST /subjects/{subject}/versions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.expect("read");
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status line")
}

#[tokio::test]
async fn records_travel_through_the_real_broker_keyed_by_user() {
    let stack = Stack::from_env();
    let prefix = stack.unique_prefix("broker");
    stack.create_topics(&prefix).await;
    let codec = AvroCodec::new(&stack.schema_registry_url, &prefix).expect("codec");
    let topic = codec.topic_of::<SampleChange>();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let records = vec![
        sample(),
        deletion(),
        SampleChange {
            change_seq: 43,
            ..sample()
        },
    ];
    let mut partitions = Vec::new();
    for r in &records {
        let payload = codec.encode(r).await.expect("encode");
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&r.key()).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
        partitions.push(delivery.partition);
    }
    assert!(
        partitions.windows(2).all(|w| w[0] == w[1]),
        "one user, one partition: {partitions:?}"
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", format!("{prefix}reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut got = Vec::new();
    while got.len() < records.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("records arrive within 60 s")
            .expect("consume");
        assert_eq!(msg.key(), Some(records[0].key().as_bytes()));
        let decoded: SampleChange = codec
            .decode(msg.payload().expect("payload"))
            .await
            .expect("decode");
        got.push(decoded);
    }
    assert_eq!(got, records, "same records, same order");
}

/// A private rivven-schema on a free port, started the way `scripts/stack` starts the
/// shared one (`rivven-schema serve --host 127.0.0.1 --port <port>`): restarting it
/// disturbs no other test. Like the shared one it keeps schemas in memory only.
struct PrivateRegistry {
    port: u16,
    child: std::process::Child,
}

impl PrivateRegistry {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Self::spawn(port);
        Self::wait_until_listening(port);
        Self { port, child }
    }

    fn spawn(port: u16) -> std::process::Child {
        Command::new("rivven-schema")
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rivven-schema on PATH (`scripts/stack up` installs it)")
    }

    fn wait_until_listening(port: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rivven-schema did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it and starts it again on the same port: everything registered is gone.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port);
        Self::wait_until_listening(self.port);
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes as a reader does, the error as text.
async fn read<R: AvroRecord>(codec: &AvroCodec, bytes: &[u8]) -> Result<R, String> {
    codec.decode(bytes).await.map_err(|e| e.to_string())
}

fn schema_id(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[1..5].try_into().expect("4-byte schema id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_before_a_registry_restart_stay_readable() {
    let mut registry = PrivateRegistry::start();
    let prefix = "t-registry-restart.";
    let url = registry.url();
    let codec = || AvroCodec::new(&url, prefix).expect("codec");
    // Before the restart the writers register samples first, then events.
    let writer = codec();
    let old_sample = writer.encode(&sample()).await.expect("encode");
    let old_event = writer.encode(&event()).await.expect("encode");

    tokio::task::block_in_place(|| registry.restart());

    // After it, restarted writers come back in another order (events first), as nothing
    // orders them; new records can be written and read.
    let restarted_writer = codec();
    let new_event = UserEventChange {
        change_seq: 8,
        ..event()
    };
    let new_sample = SampleChange {
        change_seq: 43,
        ..sample()
    };
    let new_event_bytes = restarted_writer.encode(&new_event).await.expect("write");
    let new_sample_bytes = restarted_writer.encode(&new_sample).await.expect("write");
    // A reader started after the restart: a restarted processor (`decode`) or sink.
    let reader = codec();
    assert_eq!(read(&reader, &new_event_bytes).await, Ok(new_event));
    assert_eq!(read(&reader, &new_sample_bytes).await, Ok(new_sample));
    eprintln!(
        "schema ids before the restart: samples {}, events {}; after: samples {}, events {}",
        schema_id(&old_sample),
        schema_id(&old_event),
        schema_id(&new_sample_bytes),
        schema_id(&new_event_bytes)
    );

    // The records already on the topics, written under the old ids.
    let old_sample_read: Result<SampleChange, _> = read(&reader, &old_sample).await;
    let old_event_read: Result<UserEventChange, _> = read(&reader, &old_event).await;
    // And a writer that ran across the restart (its schema id resolved before it).
    let kept_writer_sample = SampleChange {
        change_seq: 44,
        ..sample()
    };
    let kept_writer_bytes = writer.encode(&kept_writer_sample).await.expect("encode");
    let kept_writer_read: Result<SampleChange, _> = read(&reader, &kept_writer_bytes).await;
    eprintln!(
        "after the restart: old sample -> {old_sample_read:?}\nold event -> \
         {old_event_read:?}\nsample from the writer that kept running (id {}) -> \
         {kept_writer_read:?}",
        schema_id(&kept_writer_bytes)
    );
    assert_eq!(
        old_sample_read,
        Ok(sample()),
        "a sample written before the restart"
    );
    assert_eq!(
        old_event_read,
        Ok(event()),
        "an event written before the restart"
    );
    assert_eq!(
        kept_writer_read,
        Ok(kept_writer_sample),
        "a sample from a writer that kept running across the restart"
    );

    // Restarted again, and this time a reader comes first (a sink restarted before any
    // writer): the id it does not find makes it register the schemas again, in order.
    tokio::task::block_in_place(|| registry.restart());
    let first_reader = codec();
    assert_eq!(read(&first_reader, &old_event).await, Ok(event()));
    assert_eq!(read(&first_reader, &old_sample).await, Ok(sample()));
    // An id that no pulseline schema has stays an error.
    let unknown = [0, 0, 0, 0, 99, 2, 4];
    assert!(read::<SampleChange>(&first_reader, &unknown).await.is_err());
}
