//! `pulseline reconcile`: recomputes every read model of one user or all from what Postgres
//! accepted (the `sample` and `user_event` tables, the system of record) with the
//! brute-force oracles, and reports every difference from what the read store serves. With
//! `--repair`, the differing users' data is accepted again under new change ids (through the
//! outbox; a running pipeline applies it), then, once their read models are fresh, they are
//! compared again.

use std::time::Duration;

use anyhow::ensure;
use chrono::{DateTime, Utc};
use pulseline_ingest_gateway::relay::{ChangeIds, RepublishScope, Users, republish};
use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use pulseline_stream_processors::Input;
use sqlx::PgPool;
use uuid::Uuid;

use crate::check::{self, Served};

/// One user's differences, per read model.
#[derive(Debug)]
pub struct UserDifferences {
    pub user: Uuid,
    /// (read model, difference) pairs.
    pub problems: Vec<(&'static str, String)>,
}

/// What a comparison found.
#[derive(Debug, Default)]
pub struct Report {
    pub users: usize,
    /// Rows the oracles expect, all read models together.
    pub compared: usize,
    pub differing: Vec<UserDifferences>,
}

impl Report {
    pub fn differences(&self) -> usize {
        self.differing.iter().map(|u| u.problems.len()).sum()
    }
}

/// Compares the read models of `user` (or every user with accepted data) with the oracles.
pub async fn compare(pool: &PgPool, user: Option<Uuid>) -> anyhow::Result<Report> {
    let users = match user {
        Some(u) => vec![u],
        None => {
            sqlx::query_scalar(
                "SELECT user_id FROM sample UNION SELECT user_id FROM user_event ORDER BY 1",
            )
            .fetch_all(pool)
            .await?
        }
    };
    let mut report = Report {
        users: users.len(),
        ..Report::default()
    };
    for user in users {
        let inputs = accepted_inputs(pool, user).await?;
        let served = Served::load(pool, &[user]).await?;
        let mut problems = Vec::new();
        for c in check::compare(&served, &inputs) {
            report.compared += c.compared;
            problems.extend(c.problems.into_iter().map(|p| (c.read_model, p)));
        }
        if !problems.is_empty() {
            report.differing.push(UserDifferences { user, problems });
        }
    }
    Ok(report)
}

/// Accepts all of the users' current data again under new change ids; returns how many
/// records went into the outbox.
pub async fn repair(pool: &PgPool, shards: u16, users: &[Uuid]) -> anyhow::Result<u64> {
    let mut records = 0;
    for user in users {
        let scope = RepublishScope {
            users: Users::One(*user),
            change_ids: ChangeIds::Renew,
            ..RepublishScope::default()
        };
        let summary = republish(pool, shards, &scope).await?;
        records += summary.samples + summary.events;
    }
    Ok(records)
}

/// Waits until every read model of the users is fresh (what the query API reports).
pub async fn wait_until_fresh(
    pool: &PgPool,
    users: &[Uuid],
    within: Duration,
) -> anyhow::Result<()> {
    let stale = check::wait_fresh(pool, users, within).await?;
    ensure!(
        stale == 0,
        "{stale} users' read models still stale after {} s (is the pipeline running?)",
        within.as_secs()
    );
    Ok(())
}

/// (source, record, start, metric, device, end, offset, value, unit, category, seq, index)
type SampleTuple = (
    String,
    String,
    DateTime<Utc>,
    String,
    String,
    DateTime<Utc>,
    i32,
    Option<f64>,
    Option<String>,
    Option<String>,
    i64,
    i32,
);

/// (event, type, product, start, end, offset, seq, index)
type EventTuple = (
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i32,
    i64,
    i32,
);

/// The user's live samples and events as Postgres holds them, as oracle inputs.
async fn accepted_inputs(pool: &PgPool, user: Uuid) -> sqlx::Result<Vec<Input>> {
    let samples: Vec<SampleTuple> = sqlx::query_as(
        "SELECT source_id, source_record_id, start_at, metric, device_type, end_at,
                tz_offset_minutes, value, unit, category, change_seq, change_index
         FROM sample WHERE user_id = $1 AND NOT deleted",
    )
    .bind(user)
    .fetch_all(pool)
    .await?;
    let events: Vec<EventTuple> = sqlx::query_as(
        "SELECT event_id, event_type, product_id, start_at, end_at, tz_offset_minutes,
                change_seq, change_index
         FROM user_event WHERE user_id = $1 AND NOT deleted",
    )
    .bind(user)
    .fetch_all(pool)
    .await?;
    let user_id = user.to_string();
    let mut inputs: Vec<Input> = samples
        .into_iter()
        .map(|s| {
            Input::Sample(SampleChange {
                user_id: user_id.clone(),
                change_seq: s.10,
                change_index: s.11,
                operation: Operation::Upsert,
                source_id: s.0,
                source_record_id: s.1,
                start_at: s.2.timestamp_micros(),
                metric: s.3,
                device_type: s.4,
                end_at: Some(s.5.timestamp_micros()),
                tz_offset_minutes: s.6,
                value: s.7,
                unit: s.8,
                category: s.9,
                metadata_json: None,
                accepted_at: 0,
            })
        })
        .collect();
    inputs.extend(events.into_iter().map(|e| {
        Input::Event(UserEventChange {
            user_id: user_id.clone(),
            change_seq: e.6,
            change_index: e.7,
            operation: Operation::Upsert,
            event_id: e.0,
            event_type: e.1,
            product_id: e.2,
            start_at: e.3.timestamp_micros(),
            end_at: e.4.map(|t| t.timestamp_micros()),
            tz_offset_minutes: e.5,
            attributes_json: None,
            accepted_at: 0,
        })
    }));
    Ok(inputs)
}
