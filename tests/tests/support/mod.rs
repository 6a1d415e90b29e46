//! The whole pipeline on a private database and topic prefix, and what the end-to-end
//! tests do with it. Each test binary uses a part.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeDelta, Utc};
use pulseline_cli::pipeline::{Pipeline, PipelineConfig};
use pulseline_testkit::{Stack, TestDatabase};
use serde_json::{Value, json};
use uuid::Uuid;

/// The whole pipeline on a private database and topic prefix.
pub struct Env {
    pub db: TestDatabase,
    pub p: Pipeline,
    pub http: reqwest::Client,
}

impl Env {
    /// Starts every service; the processors dead-letter records more than a day older
    /// than the user's newest (`TOO_LATE`), so a test can provoke a dead letter.
    pub async fn start(test: &str) -> Self {
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
            db,
            p,
            http: reqwest::Client::new(),
        }
    }

    /// Uploads one batch (every sample must be accepted); returns the user's sequence
    /// after it.
    pub async fn upload(&self, user: Uuid, samples: Vec<Value>) -> i64 {
        let count = samples.len();
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
        assert_eq!(answer["accepted"], count, "{answer}");
        answer["userSeq"].as_i64().expect("userSeq")
    }

    pub async fn rollups(&self, user: Uuid, metric: &str) -> Value {
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
    pub async fn sleep_fresh_at(&self, user: Uuid, seq: i64) -> Value {
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
    pub async fn fresh_at(&self, user: Uuid, metric: &str, seq: i64) -> Value {
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

pub fn at(minutes_ago: i64) -> String {
    (Utc::now() - TimeDelta::minutes(minutes_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn heart_rate(record: &str, minutes_ago: i64) -> Value {
    json!({"sourceRecordId": record, "metric": "HEART_RATE", "value": 61.0,
           "unit": "count/min", "startAt": at(minutes_ago)})
}

impl Env {
    /// Stops the processors and starts them with other settings.
    pub async fn restart_processors(
        self,
        runtime: pulseline_stream_processors::runtime::RuntimeConfig,
    ) -> Self {
        Self {
            p: self
                .p
                .restart_processors(runtime)
                .await
                .expect("the processors restart"),
            ..self
        }
    }
}
