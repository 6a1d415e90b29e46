//! One shard's batch: claim in id order, encode (rows that can never publish become
//! poison), produce everything, await every acknowledgement, delete and commit. See the
//! module doc of `relay` for why this is at least once and in effect exactly once.

use super::*;

/// A claimed row ready to produce.
pub(super) struct Encoded {
    id: i64,
    stream: Stream,
    key: String,
    bytes: Vec<u8>,
    created_at: chrono::DateTime<Utc>,
}

/// A claimed row that will never publish, with why (`kind` is a fixed label for logs; the
/// reason may quote the payload and goes only to `outbox_dead`).
pub(super) struct Poison {
    kind: &'static str,
    reason: String,
}

pub(super) enum BatchOutcome {
    Busy,
    Empty,
    Done { published: u64, dead: u64 },
}

impl Inner {
    /// One transaction: lock the shard, claim, encode, publish, await, delete, commit.
    pub(super) async fn publish_batch(&self, shard: i16) -> Result<BatchOutcome, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(RELAY_LOCK_CLASS)
            .bind(i32::from(shard))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(BatchOutcome::Busy);
        }
        let rows = outbox::claim(&mut tx, shard, i64::from(self.config.batch)).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(BatchOutcome::Empty);
        }

        let mut ready = Vec::with_capacity(rows.len());
        let mut poison = Vec::new();
        for row in &rows {
            match self.encode_row(row).await? {
                Ok(encoded) => ready.push(encoded),
                Err(p) => poison.push((row, p)),
            }
        }

        if let Err(e) = self.produce_all(&ready).await {
            // Dropping `tx` would roll back too; saying so keeps the connection clean. The
            // caller rebuilds the producer if the error was fatal to it.
            let _ = tx.rollback().await;
            return Err(e);
        }

        for (row, p) in &poison {
            outbox::dead_letter(&mut tx, row.id, &p.reason).await?;
        }
        let ids: Vec<i64> = ready.iter().map(|r| r.id).collect();
        outbox::delete(&mut tx, &ids).await?;
        tx.commit().await?;

        let now = Utc::now();
        let lags: Vec<f64> = ready
            .iter()
            .map(|r| (now - r.created_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6)
            .collect();
        let samples = ready.iter().filter(|r| r.stream == Stream::Samples).count() as u64;
        let events = ready.len() as u64 - samples;
        for (row, p) in &poison {
            RowDeadLettered {
                outbox_id: row.id,
                shard,
                user_id: row.user_id,
                change_seq: row.change_seq,
                change_index: row.change_index,
                reason_kind: p.kind,
            }
            .emit(&self.metrics);
        }
        BatchPublished {
            shard,
            samples,
            events,
            dead: poison.len() as u64,
            lag_seconds: &lags,
        }
        .emit(&self.metrics);
        Ok(BatchOutcome::Done {
            published: ready.len() as u64,
            dead: poison.len() as u64,
        })
    }

    /// Decodes and Avro-encodes a row. `Ok(Err(_))` is a poison row; `Err(_)` aborts the
    /// batch (outage, or the registry refusing every record of the topic).
    async fn encode_row(&self, row: &ClaimedRow) -> Result<Result<Encoded, Poison>, RelayError> {
        let record = match OutboxRecord::from_row(row.stream, &row.payload) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Poison {
                    kind: "payload",
                    reason: e.to_string(),
                }));
            }
        };
        let stream = record.stream();
        let (key, encoded) = match record {
            OutboxRecord::Sample(s) => (s.key(), self.sample_encoder().await?.encode(&s)),
            OutboxRecord::Event(e) => (e.key(), self.event_encoder().await?.encode(&e)),
        };
        match encoded {
            Ok(bytes) => Ok(Ok(Encoded {
                id: row.id,
                stream,
                key,
                bytes,
                created_at: row.created_at,
            })),
            Err(e) if e.is_retryable() => Err(RelayError::Schema(e)),
            Err(e) => {
                // Blame the row only if a known-good record of the same type encodes.
                if self.canary_encodes(stream).await? {
                    Ok(Err(Poison {
                        kind: "avro",
                        reason: e.to_string(),
                    }))
                } else {
                    Err(RelayError::SchemaRefused {
                        topic: self.topic(stream).to_owned(),
                        source: e,
                    })
                }
            }
        }
    }

    /// The samples encoder, resolving the schema id on first use. A registry that cannot
    /// be reached is retryable; one that refuses the schema refuses every record of the
    /// topic (nothing is dead-lettered for it).
    async fn sample_encoder(&self) -> Result<&RecordEncoder<SampleChange>, RelayError> {
        self.sample_encoder
            .get_or_try_init(|| self.codec.encoder_for::<SampleChange>())
            .await
            .map_err(|e| self.schema_error(Stream::Samples, e))
    }

    async fn event_encoder(&self) -> Result<&RecordEncoder<UserEventChange>, RelayError> {
        self.event_encoder
            .get_or_try_init(|| self.codec.encoder_for::<UserEventChange>())
            .await
            .map_err(|e| self.schema_error(Stream::Events, e))
    }

    fn schema_error(&self, stream: Stream, e: pulseline_schemas::Error) -> RelayError {
        if e.is_retryable() {
            RelayError::Schema(e)
        } else {
            RelayError::SchemaRefused {
                topic: self.topic(stream).to_owned(),
                source: e,
            }
        }
    }

    async fn canary_encodes(&self, stream: Stream) -> Result<bool, RelayError> {
        let result = match stream {
            Stream::Samples => self.sample_encoder().await?.encode(&canary_sample()),
            Stream::Events => self.event_encoder().await?.encode(&canary_event()),
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_retryable() => Err(RelayError::Schema(e)),
            Err(_) => Ok(false),
        }
    }

    fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Samples => &self.sample_topic,
            Stream::Events => &self.event_topic,
        }
    }

    /// Enqueues every record in order, then awaits every delivery (up to the delivery
    /// timeout). Stops enqueueing at the first refusal, so no later record of the batch
    /// can overtake a failed one.
    async fn produce_all(&self, ready: &[Encoded]) -> Result<(), RelayError> {
        let producer = self.producer();
        let deadline = tokio::time::Instant::now() + self.config.delivery_timeout();
        // Records of a timed-out batch may still be queued: wait for them rather than
        // queueing the same rows again behind them (bounds the producer's memory). Other
        // shards' batches in flight are waited for too, then the flag is cleared.
        if self.timed_out.load(Ordering::Acquire) {
            while producer.in_flight_count() > 0 {
                if tokio::time::Instant::now() >= deadline {
                    let pending = usize::try_from(producer.in_flight_count()).unwrap_or(0);
                    return Err(RelayError::DeliveryTimeout { pending });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.timed_out.store(false, Ordering::Release);
        }
        let mut pending = Vec::with_capacity(ready.len());
        let mut refused = None;
        'records: for r in ready {
            let mut record = FutureRecord::to(self.topic(r.stream))
                .key(r.key.as_bytes())
                .payload(&r.bytes);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        refused = Some(e);
                        break 'records;
                    }
                }
            }
        }
        let enqueued = pending.len();
        let Ok(outcomes) = tokio::time::timeout_at(deadline, join_all(pending)).await else {
            self.timed_out.store(true, Ordering::Release);
            return Err(RelayError::DeliveryTimeout { pending: enqueued });
        };
        let mut failed = ready.len() - enqueued;
        let mut first = refused;
        for outcome in outcomes {
            let error = match outcome {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_canceled) => KafkaError::Canceled,
            };
            failed += 1;
            first.get_or_insert(error);
        }
        match first {
            None => Ok(()),
            Some(first) => Err(RelayError::Delivery {
                failed,
                total: ready.len(),
                first,
            }),
        }
    }

    /// A fatal producer error (gapless guarantee, fenced epoch ...) poisons the producer
    /// for good; a new one continues from the rolled-back rows.
    pub(super) fn rebuild_producer_if_fatal(&self) -> Result<(), RelayError> {
        let mut producer = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_code, reason)) = producer.client().fatal_error() {
            *producer = create_producer(&self.config)?;
            ProducerRebuilt { reason: &reason }.emit(&self.metrics);
        }
        Ok(())
    }

    /// The current producer (a cheap handle).
    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(super) fn create_producer(config: &RelayConfig) -> Result<FutureProducer, RelayError> {
    Ok(pulseline_schemas::kafka::client_config()
        .set("bootstrap.servers", &config.kafka_bootstrap)
        .set("client.id", "pulseline-relay")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Records never expire: an expired queued record is the one failure that lets a
        // later record of its partition through (librdkafka's idempotence docs), which
        // would put a user's changes out of order. The batch gives up waiting instead
        // (`delivery_timeout_ms`) and leaves the records to be delivered later.
        .set("message.timeout.ms", "0")
        // Any other failure that could leave a gap becomes fatal (the producer is rebuilt).
        .set("enable.gapless.guarantee", "true")
        .set("linger.ms", "5")
        // Avro records of one user repeat most strings: lz4 shrinks a batch several times
        // for little CPU, so the broker has less to take in and acknowledges sooner.
        .set("compression.type", "lz4")
        // Keys map to partitions as Java clients map them (Kafka Streams, Connect).
        .set("partitioner", "murmur2_random")
        .create()?)
}

/// Valid records used to tell a poison row from a registry refusing a whole topic.
fn canary_sample() -> SampleChange {
    SampleChange {
        user_id: uuid::Uuid::nil().to_string(),
        change_seq: 0,
        change_index: 0,
        operation: Operation::Upsert,
        source_id: "canary".to_owned(),
        device_type: "other".to_owned(),
        source_record_id: "canary".to_owned(),
        start_at: 0,
        metric: "steps".to_owned(),
        end_at: Some(0),
        tz_offset_minutes: 0,
        value: Some(0.0),
        unit: Some("count".to_owned()),
        category: None,
        metadata_json: None,
        accepted_at: 0,
    }
}

fn canary_event() -> UserEventChange {
    UserEventChange {
        user_id: uuid::Uuid::nil().to_string(),
        change_seq: 0,
        change_index: 0,
        operation: Operation::Upsert,
        event_id: "canary".to_owned(),
        event_type: "other".to_owned(),
        product_id: None,
        start_at: 0,
        end_at: None,
        tz_offset_minutes: 0,
        attributes_json: None,
        accepted_at: 0,
    }
}
