//! End to end, every part real and in this process (gateway → relay → stream processors →
//! Postgres sink → query API, on the local stack): every accepted change advances a read
//! model's freshness, including changes that touch none of its rows. Needs
//! `scripts/stack up` (Postgres, broker, schema registry).

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeDelta, Utc};
use pulseline_cli::pipeline::{Pipeline, PipelineConfig};
use pulseline_testkit::{Stack, TestDatabase};
use serde_json::{Value, json};
use uuid::Uuid;

/// The whole pipeline on a private database and topic prefix.
struct Env {
    _db: TestDatabase,
    p: Pipeline,
    http: reqwest::Client,
}

impl Env {
    /// Starts every service; the processors dead-letter records more than a day older
    /// than the user's newest (`TOO_LATE`), so a test can provoke a dead letter.
    async fn start(test: &str) -> Self {
        let stack = Stack::from_env();
        let db = stack.create_database().await;
        let prefix = stack.unique_prefix(test);
        stack.create_topics(&prefix).await;
        let mut config = PipelineConfig::new(
            &db.url,
            &stack.kafka_bootstrap,
            &stack.schema_registry_url,
            &prefix,
        );
        config.runtime.allowed_lateness_days = 1;
        let p = Pipeline::start(config).await.expect("the pipeline starts");
        Self {
            _db: db,
            p,
            http: reqwest::Client::new(),
        }
    }

    /// Uploads one batch; returns the user's sequence after it.
    async fn upload(&self, user: Uuid, samples: Vec<Value>) -> i64 {
        let body = json!({
            "requestId": Uuid::new_v4(),
            "source": { "sourceId": "watch-1", "deviceType": "apple_watch" },
            "samples": samples,
        });
        let answer: Value = self
            .http
            .post(format!("{}/v1/samples:batch", self.p.gateway_url))
            .bearer_auth(self.p.token(user))
            .json(&body)
            .send()
            .await
            .expect("gateway answers")
            .json()
            .await
            .expect("JSON answer");
        assert_eq!(answer["accepted"], 1, "{answer}");
        answer["userSeq"].as_i64().expect("userSeq")
    }

    async fn rollups(&self, user: Uuid, metric: &str) -> Value {
        let today = Utc::now().date_naive();
        let url = format!(
            "{}/v1/me/rollups?metric={metric}&period=day&from={}&to={}",
            self.p.query_url,
            today - TimeDelta::days(20),
            today + TimeDelta::days(1)
        );
        let response = self
            .http
            .get(url)
            .bearer_auth(self.p.token(user))
            .send()
            .await
            .expect("query API answers");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON answer")
    }

    /// Waits until the user's sleep nights are fresh at `seq`; returns the answer.
    async fn sleep_fresh_at(&self, user: Uuid, seq: i64) -> Value {
        let today = Utc::now().date_naive();
        let url = format!(
            "{}/v1/me/sleep?from={}&to={}",
            self.p.query_url,
            today - TimeDelta::days(20),
            today + TimeDelta::days(1)
        );
        let began = Instant::now();
        loop {
            let response = self
                .http
                .get(&url)
                .bearer_auth(self.p.token(user))
                .send()
                .await
                .expect("query API answers");
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.expect("JSON answer");
            let f = &answer["freshness"];
            if f["status"] == "fresh" && f["appliedSeq"] == seq {
                return answer;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "sleep still not fresh at {seq} after 60 s: {f}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the user's rollups are fresh at `seq`; returns the answer.
    async fn fresh_at(&self, user: Uuid, metric: &str, seq: i64) -> Value {
        let began = Instant::now();
        loop {
            let answer = self.rollups(user, metric).await;
            let f = &answer["freshness"];
            if f["status"] == "fresh" && f["appliedSeq"] == seq {
                assert_eq!(f["latestSeq"], seq, "{answer}");
                return answer;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "still not fresh at {seq} after 60 s: {f}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn at(minutes_ago: i64) -> String {
    (Utc::now() - TimeDelta::minutes(minutes_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn heart_rate(record: &str, minutes_ago: i64) -> Value {
    json!({"sourceRecordId": record, "metric": "HEART_RATE", "value": 61.0,
           "unit": "count/min", "startAt": at(minutes_ago)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_that_touch_no_rollup_row_still_end_fresh() {
    let p = Env::start("fresh").await;

    // A category the rollups ignore: a user whose only upload is one sleep stage.
    let sleeper = Uuid::new_v4();
    let seq = p
        .upload(
            sleeper,
            vec![
                json!({"sourceRecordId": "s-1", "metric": "SLEEP_STAGE", "category": "light",
                        "startAt": at(200), "endAt": at(150)}),
            ],
        )
        .await;
    assert_eq!(seq, 1);

    // A dead-lettered record: accepted by the gateway (inside its window), then refused by
    // the processor as older than its allowed lateness (one day behind the newest sample).
    let late = Uuid::new_v4();
    let recent_day = (Utc::now() - TimeDelta::minutes(5)).date_naive();
    p.upload(late, vec![heart_rate("hr-now", 5)]).await;
    let seq_late = p
        .upload(late, vec![heart_rate("hr-old", 10 * 24 * 60)])
        .await;
    assert_eq!(seq_late, 2);

    let answer = p.fresh_at(sleeper, "HEART_RATE", 1).await;
    assert_eq!(answer["data"], json!([]), "a sleep stage makes no rollup");
    // ... but a night: 50 minutes of light (core) sleep, through the sleep read model.
    let nights = p.sleep_fresh_at(sleeper, 1).await;
    let night = &nights["data"][0];
    assert_eq!(nights["data"].as_array().map(Vec::len), Some(1), "{nights}");
    assert_eq!(
        (
            &night["asleepMinutes"],
            &night["coreMinutes"],
            &night["sources"]
        ),
        (&json!(50.0), &json!(50.0), &json!([night["sources"][0]])),
        "{nights}"
    );

    let answer = p.fresh_at(late, "HEART_RATE", 2).await;
    let days: Vec<&Value> = answer["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| &d["localStart"])
        .collect();
    assert_eq!(
        days,
        vec![&json!(recent_day.to_string())],
        "only today's sample is in the rollups: the old one was dead-lettered"
    );
    // Every registered processor reads samples and refuses it, each with its own dead
    // letter (naming the processor), so a replay can put it back to each.
    let metrics = p.p.processors.metrics().render();
    for processor in pulseline_stream_processors::processors::registered_names() {
        assert!(
            metrics.contains(&format!(
                r#"pulseline_processor_dead_letters_total{{processor="{processor}",reason="TOO_LATE"}} 1"#
            )),
            "{metrics}"
        );
    }

    p.p.processors.shutdown().await.expect("processors stop");
}
