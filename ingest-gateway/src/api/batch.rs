//! `POST /v1/samples:batch` and `POST /v1/events:batch`: authenticate, rate-limit, read
//! and hash the body, validate every item, then hand the batch to the store.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use pulseline_schemas::Catalog;
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;
use serde_json::Value;

use super::{AppState, body};

use crate::error::GatewayError;
use crate::hashing::{self, Sha256Hash};
use crate::model::{BatchAnswer, EventsBatch, SamplesBatch};
use crate::store::{BatchOutcome, EventBatch, EventItem, SampleBatch, SampleItem, SampleKey};
use crate::telemetry::BatchProcessed;
use crate::validate::{self, to_utc_micros};

/// Header set on an answer served from the stored answer of an earlier identical request.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Upload a batch of samples (and deletions).
///
/// `results` lists every item of the request in index order: samples are indexed
/// 0..samples.len(), deletions samples.len() + i. 200 when no item was rejected, 207 when
/// any was (also when all were). A deletion of an unknown or already deleted key is a
/// `duplicate`. The same requestId with the same payload returns the stored answer again.
#[utoipa::path(
    post,
    path = "/v1/samples:batch",
    tag = "ingest",
    request_body(content = SamplesBatch, content_type = "application/json",
        description = "May be sent with Content-Encoding: gzip; limits apply after decompression."),
    responses(
        (status = 200, description = "Every item accepted, updated, duplicate or deleted", body = BatchAnswer),
        (status = 207, description = "Some or all items rejected (see results[].code)", body = BatchAnswer),
        (status = 400, description = "INVALID_BODY", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 403, description = "FORBIDDEN (role may not upload)", body = ErrorEnvelope),
        (status = 409, description = "REQUEST_IN_PROGRESS (Retry-After)", body = ErrorEnvelope),
        (status = 413, description = "BATCH_TOO_LARGE (body or item count)", body = ErrorEnvelope),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = ErrorEnvelope),
        (status = 422, description = "PAYLOAD_HASH_MISMATCH", body = ErrorEnvelope),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE (Retry-After)", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn post_samples(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    user.require_uploader()?;
    state.limiter.check(user.user_id)?;
    let started = Instant::now();
    let limits = &state.limits;
    let bytes = body::read_json_bytes(&headers, body, limits.max_body_bytes).await?;
    let mut doc = body::parse_document(&bytes)?;
    body::check_document_item_count(&doc, &["samples", "deletions"], limits.max_batch_items)?;
    let (payload_hash, repeated_names) = payload_hash(&mut doc)?;
    drop(doc);
    let batch: SamplesBatch = body::parse_bytes(&bytes, repeated_names)?;
    drop(bytes);
    check_client_hash(batch.payload_hash.as_deref(), payload_hash)?;

    let now = Utc::now();
    let device_type = batch.source.device_type;
    let catalog = Catalog::builtin();
    let mut items = Vec::with_capacity(batch.samples.len() + batch.deletions.len());
    for sample in batch.samples {
        items.push(
            match validate::validate_sample(sample, device_type, catalog, &limits.time, now) {
                Ok(s) => SampleItem::Upsert(s),
                Err(r) => SampleItem::Rejected(r),
            },
        );
    }
    for d in batch.deletions {
        items.push(SampleItem::Delete(SampleKey {
            source_record_id: d.source_record_id,
            start_at: to_utc_micros(d.start_at.0),
        }));
    }
    let outcome = state
        .store
        .ingest_samples(
            user.user_id,
            SampleBatch {
                request_id: batch.request_id,
                payload_hash,
                source_id: batch.source.source_id,
                device_type,
                items,
            },
        )
        .await?;
    Ok(respond(&state, "samples", user, outcome, started))
}

/// Upload a batch of user events (and deletions by eventId).
///
/// Same answers and idempotency as the samples batch: `results` lists every item, events
/// indexed 0..events.len(), deletions events.len() + i; 207 when any item was rejected.
#[utoipa::path(
    post,
    path = "/v1/events:batch",
    tag = "ingest",
    request_body(content = EventsBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "Every item accepted, updated, duplicate or deleted", body = BatchAnswer),
        (status = 207, description = "Some or all items rejected (see results[].code)", body = BatchAnswer),
        (status = 400, description = "INVALID_BODY", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 403, description = "FORBIDDEN", body = ErrorEnvelope),
        (status = 409, description = "REQUEST_IN_PROGRESS", body = ErrorEnvelope),
        (status = 413, description = "BATCH_TOO_LARGE", body = ErrorEnvelope),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = ErrorEnvelope),
        (status = 422, description = "PAYLOAD_HASH_MISMATCH", body = ErrorEnvelope),
        (status = 429, description = "RATE_LIMITED", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    user.require_uploader()?;
    state.limiter.check(user.user_id)?;
    let started = Instant::now();
    let limits = &state.limits;
    let bytes = body::read_json_bytes(&headers, body, limits.max_body_bytes).await?;
    let mut doc = body::parse_document(&bytes)?;
    body::check_document_item_count(&doc, &["events", "deletions"], limits.max_batch_items)?;
    let (payload_hash, repeated_names) = payload_hash(&mut doc)?;
    drop(doc);
    let batch: EventsBatch = body::parse_bytes(&bytes, repeated_names)?;
    drop(bytes);
    check_client_hash(batch.payload_hash.as_deref(), payload_hash)?;

    let now = Utc::now();
    let mut items = Vec::with_capacity(batch.events.len() + batch.deletions.len());
    for event in batch.events {
        items.push(match validate::validate_event(event, &limits.time, now) {
            Ok(e) => EventItem::Upsert(e),
            Err(r) => EventItem::Rejected(r),
        });
    }
    items.extend(
        batch
            .deletions
            .into_iter()
            .map(|d| EventItem::Delete(d.event_id)),
    );
    let outcome = state
        .store
        .ingest_events(
            user.user_id,
            EventBatch {
                request_id: batch.request_id,
                payload_hash,
                items,
            },
        )
        .await?;
    Ok(respond(&state, "events", user, outcome, started))
}

/// The payload hash, and whether some object repeated a member name.
fn payload_hash(doc: &mut hashing::Json<'_>) -> Result<(Sha256Hash, bool), GatewayError> {
    hashing::document_hash(doc)
        .map_err(|e| GatewayError::invalid_body(format!("cannot canonicalise the body: {e}")))
}

fn check_client_hash(sent: Option<&str>, computed: Sha256Hash) -> Result<(), GatewayError> {
    match sent {
        Some(hex) if !computed.matches_hex(hex) => Err(GatewayError::PayloadHashMismatch(
            "payloadHash does not match the SHA-256 of the canonical (RFC 8785) body without payloadHash",
        )),
        _ => Ok(()),
    }
}

fn respond(
    state: &AppState,
    stream: &'static str,
    user: AuthUser,
    outcome: BatchOutcome,
    started: Instant,
) -> Response {
    let status = StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::OK);
    let replayed = matches!(outcome, BatchOutcome::Replayed { .. });
    match &outcome {
        BatchOutcome::Committed {
            answer, rejections, ..
        } => state.telemetry.emit(BatchProcessed {
            stream,
            user_id: user.user_id,
            user_seq: answer.user_seq,
            accepted: answer.accepted,
            updated: answer.updated,
            duplicates: answer.duplicates,
            deleted: answer.deleted,
            rejections,
            elapsed: started.elapsed(),
            replayed: false,
        }),
        BatchOutcome::Replayed { body, .. } => state.telemetry.emit(BatchProcessed {
            stream,
            user_id: user.user_id,
            user_seq: body
                .get("userSeq")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            accepted: 0,
            updated: 0,
            duplicates: 0,
            deleted: 0,
            rejections: &[],
            elapsed: started.elapsed(),
            replayed: true,
        }),
    }
    let body = match outcome.into_body_json() {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
