//! What only a broker with Kafka's transaction semantics allows, on noida-db (tansu shows
//! aborted records to read_committed readers: STACK.md). The broker is the one that
//! `scripts/stack` starts with `PULSELINE_BROKER=noida` (scripts/test starts it), at
//! `PULSELINE_NOIDA_BOOTSTRAP` (scripts/env.sh). If it does not answer, these tests FAIL.
//!
//! - aborted transactions never reach a read_committed reader (a read_uncommitted one sees
//!   them);
//! - a zombie processor (SIGSTOPped past its session timeout, a successor started with the
//!   same instance id, then SIGCONTed) is fenced: it exits with a fencing error and nothing
//!   it did reaches the read model or the changelog after its successor started.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pulseline_stream_processors::testing::Gen;
use pulseline_testkit::Stack;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::kafka::Env;

const USERS: &[&str] = &[
    "3f1c8a52-0d7e-4b8e-9c1a-5e2f7a9b0c11",
    "8a6d2e41-7b3c-4f0a-a1d9-2c4e6f8a0b22",
    "c5b9e7a3-1f2d-4e6c-8b0a-9d7f5e3c1a33",
    "e2a4c6b8-3d5f-4a7c-9e1b-0f2d4c6a8e44",
    "71f3b5d7-9e1a-4c3e-b5f7-d9a1c3e5f755",
    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c66",
];

/// The local stack with noida-db as its broker; panics (fails the test) if it is not up.
fn noida() -> Stack {
    let bootstrap = std::env::var("PULSELINE_NOIDA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "PULSELINE_NOIDA_BOOTSTRAP is not set: run the tests through scripts/test (or \
             `source scripts/env.sh && PULSELINE_BROKER=noida scripts/stack up`)"
        )
    });
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("socket.timeout.ms", "3000")
        .create()
        .unwrap();
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "noida-db does not answer at {bootstrap} (PULSELINE_NOIDA_BOOTSTRAP): {e}; start it \
             with `PULSELINE_BROKER=noida scripts/stack up` (scripts/test does)"
        );
    }
    Stack {
        kafka_bootstrap: bootstrap,
        ..Stack::from_env()
    }
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// Every value of `topic` from the beginning to its end, with the given isolation level.
fn read_values(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "reading {topic} did not end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned()),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}

#[test]
fn aborted_transactions_never_reach_a_read_committed_reader() {
    let stack = noida();
    let topic = format!("{}aborts", stack.unique_prefix("aborts"));
    create_topic(&stack.kafka_bootstrap, &topic, 1);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("transactional.id", format!("{topic}-tx"))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let t = Duration::from_secs(10);
    producer.init_transactions(t).unwrap();
    let batch = |name: &str| (0..50).map(|i| format!("{name}-{i}")).collect::<Vec<_>>();
    for (name, commit) in [
        ("committed1", true),
        ("aborted", false),
        ("committed2", true),
    ] {
        producer.begin_transaction().unwrap();
        for v in batch(name) {
            producer
                .send(BaseRecord::<(), str>::to(&topic).payload(&v))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(t).unwrap();
        if commit {
            producer.commit_transaction(t).unwrap();
        } else {
            producer.abort_transaction(t).unwrap();
        }
    }

    let committed = read_values(&stack.kafka_bootstrap, &topic, "read_committed");
    let expected: Vec<String> = [batch("committed1"), batch("committed2")].concat();
    assert_eq!(
        committed, expected,
        "a read_committed reader must see exactly the committed transactions, in order"
    );
    let uncommitted = read_values(&stack.kafka_bootstrap, &topic, "read_uncommitted");
    let all: Vec<String> = [batch("committed1"), batch("aborted"), batch("committed2")].concat();
    assert_eq!(
        uncommitted, all,
        "a read_uncommitted reader sees the aborted records too"
    );
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

fn processor(env: &Env, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pulseline-processor"))
        .env("PULSELINE_KAFKA_BOOTSTRAP", &env.stack.kafka_bootstrap)
        .env(
            "PULSELINE_SCHEMA_REGISTRY_URL",
            &env.stack.schema_registry_url,
        )
        .env("PULSELINE_TOPIC_PREFIX", &env.prefix)
        // The same instance id: the same transactional id, and (static membership) the same
        // group.instance.id, so the successor takes the zombie's place in the group at once;
        // noida-db never evicts a silent member by session timeout.
        .env("PULSELINE_PROCESSOR_INSTANCE_ID", "z")
        .env("PULSELINE_PROCESSOR_GROUP_INSTANCE_ID", "z")
        .env("PULSELINE_TRANSACTIONS", "true")
        .env("PULSELINE_PROCESSOR_MAX_BATCH", "40")
        .env("PULSELINE_PROCESSOR_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawning pulseline-processor")
}

/// Record counts (read_committed) of the rollups read-model topic and every changelog.
fn committed_output(env: &Env) -> Vec<(String, usize)> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.stack.kafka_bootstrap)
        .create()
        .unwrap();
    let md = probe.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut topics: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| t.starts_with(&env.prefix) && t.contains("changelog"))
        .collect();
    assert!(
        !topics.is_empty(),
        "no changelog topic under {}",
        env.prefix
    );
    topics.sort();
    topics.insert(0, env.topic("readmodel.rollups.v1"));
    topics
        .into_iter()
        .map(|t| {
            let n = env.read_all(&t).len();
            (t, n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_processor_is_fenced_and_writes_nothing_after_its_successor_started() {
    let env = Env::on("zombie", noida()).await;
    let mut g = Gen::new(12);
    let all = g.stream(USERS, 2000);
    env.produce(&all).await;
    let dir = std::env::temp_dir();
    let zombie_log = dir.join(format!("{}zombie.log", env.prefix));
    let successor_log = dir.join(format!("{}successor.log", env.prefix));

    // The zombie-to-be works through the backlog, and is paused mid-way.
    let mut zombie = processor(&env, &zombie_log);
    let deadline = Instant::now() + Duration::from_secs(90);
    while env.rollup_rows().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first processor made no progress; see {}",
            zombie_log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&zombie, "STOP");
    // Past its session timeout (6 s): a broker that evicts would have done so by now.
    tokio::time::sleep(Duration::from_secs(8)).await;

    // The successor: same instance id. It fences the zombie's transactional id (aborting its
    // open transaction) and takes over its group membership, then finishes the backlog.
    let mut successor = processor(&env, &successor_log);
    env.assert_converges(&all, Duration::from_secs(120)).await;
    // Settled: the successor has nothing left to do, so the outputs stop growing.
    let mut settled = committed_output(&env);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = committed_output(&env);
        if now == settled {
            break;
        }
        settled = now;
    }

    // The zombie wakes up: it must find itself fenced and stop, writing nothing.
    signal(&zombie, "CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = zombie.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            zombie.kill().unwrap();
            zombie.wait().unwrap();
            panic!(
                "the zombie did not stop within 60 s of SIGCONT; see {}",
                zombie_log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut log = String::new();
    std::fs::File::open(&zombie_log)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!status.success(), "the zombie must exit with an error");
    // Its last word is the error it exits with (as producer: "This instance has been fenced
    // by a newer instance"; as static group member: a fatal consumer error).
    let exit_error = log
        .lines()
        .rfind(|l| l.contains("pulseline-processor failed"))
        .unwrap_or_default();
    assert!(
        exit_error.to_lowercase().contains("fenced"),
        "the zombie must exit with a fencing error, got {exit_error:?}; its log ends:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed_output(&env),
        settled,
        "the zombie wrote to the read model or the changelog after its successor started"
    );
    env.assert_converges(&all, Duration::from_secs(10)).await;

    signal(&successor, "TERM");
    let exit = successor.wait().unwrap();
    assert!(exit.success(), "the successor stops cleanly: {exit:?}");
    let _ = std::fs::remove_file(&zombie_log);
    let _ = std::fs::remove_file(&successor_log);
}
