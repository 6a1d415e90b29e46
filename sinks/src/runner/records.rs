//! Turning raw records into batch items, and the ones that can never be items into dead
//! letters with where they came from and why.

use super::*;

impl<M: StoredReadModel> SinkRunner<M> {
    /// `Ok(Ok(row))`, or `Ok(Err(..))` for a record that can never be a row (dead letter),
    /// or `Err` when the registry cannot be reached (retry later, nothing is skipped).
    pub(super) async fn decode(
        &self,
        record: &RawRecord,
    ) -> Result<Result<Item<M>, (&'static str, &'static str, String)>, SinkError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(Err((
                reason::EMPTY_PAYLOAD,
                "null payload",
                "null payload".into(),
            )));
        };
        let mut attempt = 0;
        let decoded = loop {
            attempt += 1;
            match self.codec.decode_read_model::<M>(payload).await {
                Ok(decoded) => break decoded,
                Err(e) if e.is_retryable() && attempt < DECODE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    return Ok(Err((
                        reason::UNDECODABLE,
                        "not a decodable row or progress record of this read model",
                        e.to_string(),
                    )));
                }
            }
        };
        Ok(Item::parse(decoded).map_err(|e| (reason::INVALID_RECORD, e.0, e.0.to_owned())))
    }

    /// Copies an unusable record to the dead-letter topic with where it came from and why.
    pub(super) async fn dead_letter(
        &self,
        record: &RawRecord,
        reason: &str,
        detail: &str,
    ) -> Result<(), SinkError> {
        let headers = DeadLetterHeaders {
            reason,
            detail,
            stage: stage::SINK,
            processor: "",
            source_topic: &self.settings.topic,
            source_partition: record.partition,
            source_offset: record.offset,
        }
        .to_kafka();
        let payload = record.payload.as_deref().unwrap_or_default();
        let key = format!("{}:{}", record.partition, record.offset);
        self.dead_letters
            .send(
                FutureRecord::to(&self.settings.dead_letter_topic)
                    .key(&key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| SinkError::Kafka(e))?;
        Ok(())
    }
}
