//! The events stream: natural key (user, eventId).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use pulseline_schemas::Operation;
use pulseline_schemas::records::UserEventChange;
use sqlx::PgConnection;
use uuid::Uuid;

use super::classify::{Op, Origin, Outcome, StoredState, classify};
use super::{BatchOutcome, Changes, Claim, Store, build_answer, finish_batch, now_micros};
use crate::error::GatewayError;
use crate::hashing::Sha256Hash;
use crate::model::EventId;
use crate::outbox::{self, OutboxBatch, OutboxRecord, Stream};
use crate::validate::{Rejection, ValidEvent};

/// A validated events batch, ready for the transaction.
#[derive(Debug)]
pub struct EventBatch {
    pub request_id: Uuid,
    pub payload_hash: Sha256Hash,
    /// Events then deletions, in request order (index = position).
    pub items: Vec<EventItem>,
}

#[derive(Debug)]
pub enum EventItem {
    Upsert(ValidEvent),
    Delete(EventId),
    Rejected(Rejection),
}

impl EventItem {
    fn key(&self) -> Option<&str> {
        match self {
            EventItem::Upsert(e) => Some(e.event_id.as_str()),
            EventItem::Delete(id) => Some(id.as_str()),
            EventItem::Rejected(_) => None,
        }
    }
}

/// The stored content a DELETE record needs.
struct StoredEvent {
    state: StoredState,
    event_type: String,
    product_id: Option<String>,
    start_at: DateTime<Utc>,
    end_at: Option<DateTime<Utc>>,
    tz_offset_minutes: i32,
}

impl Store {
    /// Runs one events batch in one transaction (see the module docs of `store`).
    pub async fn ingest_events(
        &self,
        user_id: Uuid,
        batch: EventBatch,
    ) -> Result<BatchOutcome, GatewayError> {
        let _in_flight = self.enter_request(user_id, batch.request_id).await?;
        let begun = match self
            .begin_batch(
                user_id,
                batch.request_id,
                Stream::Events,
                batch.payload_hash,
            )
            .await?
        {
            Claim::Replay { status, body } => return Ok(BatchOutcome::Replayed { status, body }),
            Claim::Fresh(begun) => begun,
        };
        let mut tx = begun.tx;
        let items = batch.items;

        let stored_rows = load_stored(&mut tx, user_id, &items).await?;
        let stored: HashMap<&str, StoredState> = stored_rows
            .iter()
            .map(|(k, s)| (k.as_str(), s.state))
            .collect();
        let stored_info: HashMap<&str, &StoredEvent> =
            stored_rows.iter().map(|(k, s)| (k.as_str(), s)).collect();
        let ops: Vec<Op<&str>> = items
            .iter()
            .map(|item| match (item, item.key()) {
                (EventItem::Upsert(e), Some(key)) => Op::Upsert {
                    key,
                    hash: e.content_hash,
                },
                (EventItem::Delete(_), Some(key)) => Op::Delete { key },
                _ => Op::Skip,
            })
            .collect();
        let plan = classify(&ops, &stored);

        let mut user_seq = begun.last_seq;
        let mut outbox_rows = OutboxBatch::default();
        let mut changed_at = None;
        if plan.changed() {
            user_seq += 1;
            let accepted_at = now_micros();
            changed_at = Some(accepted_at);
            let user = user_id.to_string();
            let mut records = Vec::new();
            for (i, outcome) in plan.outcomes.iter().enumerate() {
                let record = match (outcome, &items[i]) {
                    (Outcome::Accepted | Outcome::Updated, EventItem::Upsert(e)) => {
                        UserEventChange {
                            user_id: user.clone(),
                            change_seq: user_seq,
                            change_index: index_i32(i),
                            operation: Operation::Upsert,
                            event_id: e.event_id.as_str().to_owned(),
                            event_type: e.event_type.to_owned(),
                            product_id: e.product_id.as_ref().map(|p| p.as_str().to_owned()),
                            start_at: e.start_at.timestamp_micros(),
                            end_at: e.end_at.map(|t| t.timestamp_micros()),
                            tz_offset_minutes: e.tz_offset_minutes,
                            attributes_json: e.attributes_json.clone(),
                            accepted_at: accepted_at.timestamp_micros(),
                        }
                    }
                    (Outcome::Deleted(origin), EventItem::Delete(id)) => {
                        let (event_type, product_id, start_at, end_at, tz) = match origin {
                            Origin::Item(j) => match &items[*j] {
                                EventItem::Upsert(e) => (
                                    e.event_type.to_owned(),
                                    e.product_id.as_ref().map(|p| p.as_str().to_owned()),
                                    e.start_at,
                                    e.end_at,
                                    e.tz_offset_minutes,
                                ),
                                _ => {
                                    return Err(GatewayError::Internal(
                                        "deletion origin is not an event".into(),
                                    ));
                                }
                            },
                            Origin::Stored => {
                                let s = stored_info.get(id.as_str()).ok_or_else(|| {
                                    GatewayError::Internal("deleted key was not loaded".into())
                                })?;
                                (
                                    s.event_type.clone(),
                                    s.product_id.clone(),
                                    s.start_at,
                                    s.end_at,
                                    s.tz_offset_minutes,
                                )
                            }
                        };
                        UserEventChange {
                            user_id: user.clone(),
                            change_seq: user_seq,
                            change_index: index_i32(i),
                            operation: Operation::Delete,
                            event_id: id.as_str().to_owned(),
                            event_type,
                            product_id,
                            start_at: start_at.timestamp_micros(),
                            end_at: end_at.map(|t| t.timestamp_micros()),
                            tz_offset_minutes: tz,
                            attributes_json: None,
                            accepted_at: accepted_at.timestamp_micros(),
                        }
                    }
                    _ => continue,
                };
                records.push(OutboxRecord::Event(record));
            }
            write_upserts(
                &mut tx,
                user_id,
                user_seq,
                accepted_at,
                &items,
                &plan.upserts,
            )
            .await?;
            write_deletes(
                &mut tx,
                user_id,
                user_seq,
                accepted_at,
                &items,
                &plan.deletes,
            )
            .await?;
            outbox_rows = OutboxBatch::with_capacity(records.len());
            for r in &records {
                outbox_rows.push_record(r)?;
            }
        }
        let changes = changed_at.map(|at| Changes {
            stream: Stream::Events,
            seq: user_seq,
            accepted_at: at,
            shard: outbox::shard_of(user_id, self.shards),
            outbox: &outbox_rows,
        });

        let rejected: Vec<Option<Rejection>> = items
            .into_iter()
            .map(|item| match item {
                EventItem::Rejected(r) => Some(r),
                _ => None,
            })
            .collect();
        let (answer, codes) = build_answer(batch.request_id, user_seq, &plan.outcomes, &rejected);
        finish_batch(tx, user_id, answer, codes, changes).await
    }
}

fn index_i32(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

async fn load_stored(
    conn: &mut PgConnection,
    user_id: Uuid,
    items: &[EventItem],
) -> Result<Vec<(String, StoredEvent)>, GatewayError> {
    let mut seen = HashSet::with_capacity(items.len());
    let ids: Vec<&str> = items
        .iter()
        .filter_map(EventItem::key)
        .filter(|k| seen.insert(*k))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, Vec<u8>, bool, String, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>, i32)> =
        sqlx::query_as(
            "SELECT event_id, content_hash, deleted, event_type, product_id, start_at, end_at, tz_offset_minutes
             FROM user_event WHERE user_id = $1 AND event_id = ANY($2::text[])",
        )
        .bind(user_id)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, hash, deleted, event_type, product_id, start_at, end_at, tz_offset_minutes)| {
                let hash = Sha256Hash(hash.try_into().unwrap_or([0; 32]));
                (
                    id,
                    StoredEvent {
                        state: StoredState { hash, deleted },
                        event_type,
                        product_id,
                        start_at,
                        end_at,
                        tz_offset_minutes,
                    },
                )
            },
        )
        .collect())
}

async fn write_upserts(
    conn: &mut PgConnection,
    user_id: Uuid,
    seq: i64,
    accepted_at: DateTime<Utc>,
    items: &[EventItem],
    upserts: &[usize],
) -> Result<(), GatewayError> {
    if upserts.is_empty() {
        return Ok(());
    }
    let n = upserts.len();
    let (
        mut ids,
        mut types,
        mut products,
        mut starts,
        mut ends,
        mut tzs,
        mut attrs,
        mut hashes,
        mut idxs,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &i in upserts {
        let EventItem::Upsert(e) = &items[i] else {
            return Err(GatewayError::Internal(
                "planned upsert is not an event".into(),
            ));
        };
        ids.push(e.event_id.as_str());
        types.push(e.event_type);
        products.push(e.product_id.as_ref().map(|p| p.as_str()));
        starts.push(e.start_at);
        ends.push(e.end_at);
        tzs.push(e.tz_offset_minutes);
        attrs.push(e.attributes_json.as_deref());
        hashes.push(e.content_hash.as_bytes());
        idxs.push(index_i32(i));
    }
    sqlx::query(
        "INSERT INTO user_event (user_id, event_id, event_type, product_id, start_at, end_at, tz_offset_minutes,
                                 attributes, content_hash, deleted, change_seq, change_index, accepted_at)
         SELECT $1, t.id, t.ty, t.prod, t.st, t.en, t.tz, t.attr::jsonb, t.hash, false, $2, t.idx, $3
         FROM UNNEST($4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[], $9::int4[],
                     $10::text[], $11::bytea[], $12::int4[]) AS t(id, ty, prod, st, en, tz, attr, hash, idx)
         ON CONFLICT (user_id, event_id) DO UPDATE SET
             event_type = EXCLUDED.event_type, product_id = EXCLUDED.product_id, start_at = EXCLUDED.start_at,
             end_at = EXCLUDED.end_at, tz_offset_minutes = EXCLUDED.tz_offset_minutes,
             attributes = EXCLUDED.attributes, content_hash = EXCLUDED.content_hash, deleted = false,
             change_seq = EXCLUDED.change_seq, change_index = EXCLUDED.change_index,
             accepted_at = EXCLUDED.accepted_at",
    )
    .bind(user_id)
    .bind(seq)
    .bind(accepted_at)
    .bind(&ids)
    .bind(&types)
    .bind(&products)
    .bind(&starts)
    .bind(&ends)
    .bind(&tzs)
    .bind(&attrs)
    .bind(&hashes)
    .bind(&idxs)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_deletes(
    conn: &mut PgConnection,
    user_id: Uuid,
    seq: i64,
    accepted_at: DateTime<Utc>,
    items: &[EventItem],
    deletes: &[usize],
) -> Result<(), GatewayError> {
    if deletes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(deletes.len());
    let mut idxs = Vec::with_capacity(deletes.len());
    for &i in deletes {
        let EventItem::Delete(id) = &items[i] else {
            return Err(GatewayError::Internal(
                "planned delete is not a deletion".into(),
            ));
        };
        ids.push(id.as_str());
        idxs.push(index_i32(i));
    }
    sqlx::query(
        "UPDATE user_event e SET deleted = true, change_seq = $2, change_index = k.idx, accepted_at = $3
         FROM UNNEST($4::text[], $5::int4[]) AS k(id, idx)
         WHERE e.user_id = $1 AND e.event_id = ANY($4::text[]) AND e.event_id = k.id",
    )
    .bind(user_id)
    .bind(seq)
    .bind(accepted_at)
    .bind(&ids)
    .bind(&idxs)
    .execute(conn)
    .await?;
    Ok(())
}
