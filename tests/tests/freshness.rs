//! End to end, every part real and in this process (gateway → relay → stream processors →
//! Postgres sink → query API, on the local stack): every accepted change advances a read
//! model's freshness, including changes that touch none of its rows. Needs
//! `scripts/stack up` (Postgres, broker, schema registry).

mod support;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use support::{Env, at, heart_rate};
use uuid::Uuid;

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
