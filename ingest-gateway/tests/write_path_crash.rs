//! Guarantees 1, 2 and 5 across the whole write path: HTTP uploads from simulated users
//! (new data, retries, unchanged re-uploads, corrections, deletions) go through the real
//! gateway while the relay PROCESS is SIGKILLed at random moments and restarted. Afterwards
//! the records on Kafka are compared with what the gateway acknowledged (every change id it
//! answered accepted/updated/deleted is there, no other, duplicates identical), and the
//! per-user replay of Kafka equals what each client believes it stored.
//! Needs the local stack (`scripts/stack up`).

#[path = "support/relay.rs"]
#[allow(dead_code)]
mod relay_support;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use pulseline_ingest_gateway::outbox::OutboxRecord;
use pulseline_schemas::Operation;
use pulseline_service::auth::{Role, issue_hs256_token};
use pulseline_simulator::{NaturalKey, RequestKind, SimulatedUser, TrafficMix};
use rand::Rng;
use relay_support::{ChangeKey, Harness, SHARDS, assert_per_user_order, change_key};
use tokio::sync::Mutex;

const RELAY_BIN: &str = env!("CARGO_BIN_EXE_pulseline-relay");

fn start_relay(h: &Harness, log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(RELAY_BIN)
        .envs(h.env())
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log fd")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start pulseline-relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_during_http_load_loses_nothing_and_duplicates_nothing_in_effect() {
    let h = Harness::new("e2e-crash").await;
    let mut config = support::test_config(&h.db.url);
    config.relay_shards = SHARDS;
    let app = support::start(config.clone()).await;

    let log = std::env::temp_dir().join(format!("{}relay.log", h.prefix));
    let mut relay = start_relay(&h, &log);

    // Simulated users: a watch and a phone each, 20 days of backlog to upload.
    let start = Utc::now() - TimeDelta::days(20);
    let mix = TrafficMix {
        retry: 0.1,
        duplicate_upload: 0.1,
        correction: 0.1,
        deletion: 0.05,
    };
    let users: Vec<Arc<Mutex<SimulatedUser>>> = (0..6)
        .map(|i| Arc::new(Mutex::new(SimulatedUser::new(100 + i, start, mix))))
        .collect();
    let acked: Arc<Mutex<BTreeSet<ChangeKey>>> = Arc::default();
    let load_for = Duration::from_secs(12);
    let began = Instant::now();

    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let (user, acked, client, url, secret) = (
            user.clone(),
            acked.clone(),
            app.client.clone(),
            app.url("/v1/samples:batch"),
            config.jwt_secret.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut u = user.lock().await;
            let token = issue_hs256_token(&secret, u.user_id, Role::User, 3600);
            let mut kinds: BTreeMap<RequestKind, usize> = BTreeMap::new();
            while began.elapsed() < load_for {
                let upload = u.next_upload(80 + 10 * i, Utc::now());
                if upload.items == 0 {
                    continue;
                }
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&upload.body)
                    .send()
                    .await
                    .expect("gateway answers");
                let status = resp.status().as_u16();
                let answer: serde_json::Value = resp.json().await.expect("json answer");
                assert!(
                    status == 200,
                    "simulated traffic is valid, got {status}: {answer}"
                );
                *kinds.entry(upload.kind).or_default() += 1;
                u.acknowledged(&upload);
                let seq = answer["userSeq"].as_i64().expect("userSeq");
                let mut acked = acked.lock().await;
                for r in answer["results"].as_array().expect("results") {
                    if matches!(
                        r["status"].as_str(),
                        Some("accepted" | "updated" | "deleted")
                    ) {
                        let index = i32::try_from(r["index"].as_i64().expect("index"))
                            .expect("small index");
                        acked.insert((1, u.user_id.to_string(), seq, index));
                    }
                }
            }
            kinds
        }));
    }

    // Meanwhile: SIGKILL the relay at random moments and start it again.
    let mut kills = 0;
    while began.elapsed() < load_for {
        let pause = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        relay.kill().expect("SIGKILL relay"); // std's Child::kill sends SIGKILL on unix
        relay.wait().expect("reap relay");
        kills += 1;
        relay = start_relay(&h, &log);
    }
    let mut kinds: BTreeMap<RequestKind, usize> = BTreeMap::new();
    for c in clients {
        for (k, n) in c.await.expect("client task") {
            *kinds.entry(k).or_default() += n;
        }
    }
    for k in [
        RequestKind::New,
        RequestKind::Retry,
        RequestKind::DuplicateUpload,
        RequestKind::Correction,
        RequestKind::Deletion,
    ] {
        assert!(
            kinds.get(&k).copied().unwrap_or(0) > 0,
            "the load exercised {k:?}: {kinds:?}"
        );
    }

    h.wait_outbox_empty(Duration::from_secs(120)).await;
    relay.kill().expect("stop relay");
    relay.wait().expect("reap relay");
    let published = h.read_all().await;

    // Every acknowledged change is on Kafka, nothing else is, duplicates are identical.
    let acked = acked.lock().await.clone();
    let mut by_change: HashMap<ChangeKey, &OutboxRecord> = HashMap::new();
    let mut duplicates = 0;
    for p in &published {
        let key = change_key(&p.record);
        if let Some(first) = by_change.insert(key.clone(), &p.record) {
            duplicates += 1;
            assert_eq!(
                first, &p.record,
                "a duplicate of {key:?} differs from its first copy"
            );
        }
    }
    let on_kafka: BTreeSet<ChangeKey> = by_change.keys().cloned().collect();
    let missing: Vec<_> = acked.difference(&on_kafka).take(5).collect();
    let extra: Vec<_> = on_kafka.difference(&acked).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged changes never reached Kafka, e.g. {missing:?}",
        acked.difference(&on_kafka).count()
    );
    assert!(
        extra.is_empty(),
        "changes on Kafka the gateway never acknowledged, e.g. {extra:?}"
    );
    assert_per_user_order(&published);

    // Replaying each user's records in change-id order gives what the client believes it stored.
    type Content = (String, Option<f64>, Option<String>);
    let mut replayed: HashMap<String, BTreeMap<NaturalKey, Content>> = HashMap::new();
    let mut ordered: Vec<_> = by_change.values().collect();
    ordered.sort_by_key(|r| change_key(r));
    for r in ordered {
        let OutboxRecord::Sample(s) = r else { continue };
        let key = NaturalKey {
            source_id: s.source_id.clone(),
            source_record_id: s.source_record_id.clone(),
            start_at: s.start_at,
        };
        let state = replayed.entry(s.user_id.clone()).or_default();
        match s.operation {
            Operation::Upsert => {
                state.insert(key, (s.metric.clone(), s.value, s.category.clone()));
            }
            Operation::Delete => {
                state.remove(&key);
            }
        }
    }
    for user in &users {
        let u = user.lock().await;
        let expected: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = u
            .expected()
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    (c.metric.to_owned(), c.value, c.category.map(str::to_owned)),
                )
            })
            .collect();
        let got = replayed.remove(&u.user_id.to_string()).unwrap_or_default();
        assert_eq!(
            got.len(),
            expected.len(),
            "user {}: live samples on Kafka vs client",
            u.user_id
        );
        assert!(
            got == expected,
            "user {}: replayed Kafka content differs from the client's view",
            u.user_id
        );
    }
    eprintln!(
        "{} acknowledged changes, {} records on Kafka ({duplicates} duplicates from {kills} relay kills), requests {kinds:?}",
        acked.len(),
        published.len()
    );
    assert!(kills >= 3, "the relay was killed several times ({kills})");
}
