//! The simulated mobile clients' side of a run: how they send (retrying as an app's upload
//! queue does) and what they believe they stored, as the checks compare it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_simulator::{NaturalKey, SampleContent, SimulatedUser};
use pulseline_stream_processors::Input;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Sends one request as a mobile app's upload queue does: a request that failed in a way a
/// retry can fix (no answer, 409 in progress, 429, 5xx) is sent again, unchanged (the same
/// requestId), after a backoff that doubles from 100 ms up to 5 s (or the Retry-After the
/// gateway asked for), for up to 60 s. A request the gateway refused (another 4xx) is not
/// retried. The answer, or None when it never came; `retries` counts the extra attempts.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
    retries: &AtomicU64,
) -> Option<serde_json::Value> {
    const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
    let began = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = match http.post(url).bearer_auth(token).json(body).send().await {
            Ok(resp) if resp.status().is_success() => return resp.json().await.ok(),
            Ok(resp) => {
                let status = resp.status();
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::CONFLICT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    return None;
                }
                resp.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(backoff, Duration::from_secs)
            }
            Err(_) => backoff,
        };
        if began.elapsed() + wait > GIVE_UP_AFTER {
            return None;
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Compares the gateway's `sample` table with each client's view; returns the differences.
/// (source, record, start, metric, value, category) of a live sample in Postgres.
type StoredSampleRow = (
    String,
    String,
    DateTime<Utc>,
    String,
    Option<f64>,
    Option<String>,
);

pub async fn stored_sample_mismatches(
    pool: &PgPool,
    users: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<usize> {
    let mut mismatches = 0;
    for (user, expected) in believed(users).await {
        let rows: Vec<StoredSampleRow> = sqlx::query_as(
            "SELECT source_id, source_record_id, start_at, metric, value, category
             FROM sample WHERE user_id = $1 AND NOT deleted",
        )
        .bind(user)
        .fetch_all(pool)
        .await?;
        let stored: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = rows
            .into_iter()
            .map(
                |(source_id, source_record_id, start, metric, value, category)| {
                    (
                        NaturalKey {
                            source_id,
                            source_record_id,
                            start_at: start.timestamp_micros(),
                        },
                        (metric, value, category),
                    )
                },
            )
            .collect();
        let expected: BTreeMap<NaturalKey, (String, Option<f64>, Option<String>)> = expected
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    (c.metric.to_owned(), c.value, c.category.map(str::to_owned)),
                )
            })
            .collect();
        mismatches += expected
            .iter()
            .filter(|(k, v)| stored.get(*k) != Some(*v))
            .count();
        mismatches += stored.keys().filter(|k| !expected.contains_key(*k)).count();
    }
    Ok(mismatches)
}

/// Each user's samples as their apps believe them stored (a user may have several apps;
/// their devices, so their keys, differ).
async fn believed(
    apps: &[Arc<Mutex<SimulatedUser>>],
) -> BTreeMap<Uuid, BTreeMap<NaturalKey, SampleContent>> {
    let mut users: BTreeMap<Uuid, BTreeMap<NaturalKey, SampleContent>> = BTreeMap::new();
    for app in apps {
        let app = app.lock().await;
        users
            .entry(app.user_id)
            .or_default()
            .extend(app.expected().iter().map(|(k, c)| (k.clone(), c.clone())));
    }
    users
}

/// What the clients believe they stored, as inputs (sample changes, one change id each,
/// and the events they logged), and the users' ids.
pub async fn client_inputs(
    apps: &[Arc<Mutex<SimulatedUser>>],
) -> anyhow::Result<(Vec<Input>, Vec<uuid::Uuid>)> {
    let mut inputs = Vec::new();
    let users = believed(apps).await;
    let user_ids: Vec<Uuid> = users.keys().copied().collect();
    for (user, samples) in users {
        for (i, (key, c)) in samples.iter().enumerate() {
            inputs.push(Input::Sample(SampleChange {
                user_id: user.to_string(),
                change_seq: 1,
                change_index: i32::try_from(i)?,
                operation: Operation::Upsert,
                source_id: key.source_id.clone(),
                device_type: c.device_type.to_owned(),
                source_record_id: key.source_record_id.clone(),
                start_at: c.start_at,
                metric: c.metric.to_owned(),
                end_at: Some(c.end_at),
                tz_offset_minutes: c.tz_offset_minutes,
                value: c.value,
                unit: None,
                category: c.category.map(str::to_owned),
                metadata_json: None,
                accepted_at: 0,
            }));
        }
    }
    for app in apps {
        let u = app.lock().await;
        for (i, (id, e)) in u.event_log().iter().enumerate() {
            inputs.push(Input::Event(UserEventChange {
                user_id: u.user_id.to_string(),
                change_seq: i64::try_from(i)? + 1,
                change_index: 0,
                operation: if e.is_some() {
                    Operation::Upsert
                } else {
                    Operation::Delete
                },
                event_id: id.clone(),
                event_type: e.as_ref().map_or("", |e| e.event_type).to_owned(),
                product_id: e.as_ref().and_then(|e| e.product_id).map(str::to_owned),
                start_at: e.as_ref().map_or(0, |e| e.start_at),
                end_at: e.as_ref().and_then(|e| e.end_at),
                tz_offset_minutes: e.as_ref().map_or(0, |e| e.tz_offset_minutes),
                attributes_json: None,
                accepted_at: 0,
            }));
        }
    }
    Ok((inputs, user_ids))
}
