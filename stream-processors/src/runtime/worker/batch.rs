//! One batch, from records to commit: decode, apply to the tasks, render outputs, write
//! outputs, dead letters and changelog entries, then commit the input offsets (in the
//! transaction, or after the writes are acknowledged in at-least-once mode).

use super::*;
use crate::state::ChangelogEntry;
use pulseline_service::ops::record_age_seconds;

struct DeadLetter {
    reason: String,
    detail: String,
    processor: &'static str,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub(super) fn of(
        m: &OwnedMessage,
        reason: &str,
        detail: String,
        processor: &'static str,
    ) -> Self {
        Self {
            reason: reason.to_owned(),
            detail,
            processor,
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// A batch's records, decoded.
struct Decoded {
    /// Index into the batch, and the input.
    inputs: Vec<(usize, Input)>,
    dead: Vec<DeadLetter>,
    /// The offset after each topic-partition's last record in the batch.
    offsets: BTreeMap<(String, i32), i64>,
}

/// What the tasks produced at the end of a batch.
struct Rendered {
    outputs: Vec<Box<dyn EncodeOutput>>,
    encoded: Vec<Vec<u8>>,
    /// (processor index, input partition, entry)
    state_entries: Vec<(usize, i32, ChangelogEntry)>,
    meta_entries: Vec<(usize, i32, ChangelogEntry)>,
}

impl Worker {
    /// One batch: decode, apply, render, write, commit. `Err`: the batch must be retried
    /// (the caller aborts and recovers).
    pub(super) fn process(
        &mut self,
        batch: Vec<OwnedMessage>,
    ) -> Result<Result<(), Stop>, RuntimeError> {
        let started = Instant::now();
        self.batches += 1;
        if self.cfg.transactions {
            self.producer.begin_transaction()?;
        }
        let _ = self.producer.context().take_failures();

        let Decoded {
            inputs,
            mut dead,
            offsets,
        } = self.decode(&batch)?;
        let decoded_at = started.elapsed();
        self.apply(&batch, &inputs, &mut dead)?;
        let rendered = self.render()?;
        let applied_at = started.elapsed();
        self.write_outputs(&rendered)?;
        self.write_dead_letters(&dead)?;
        self.write_changelog(&offsets, &rendered)?;
        if self.faults.take_crash(self.batches) {
            self.producer.flush(CALL_TIMEOUT)?;
            return Ok(Err(Stop::Crash));
        }
        self.commit(&offsets)?;
        for (tp, next) in offsets {
            self.positions.insert(tp, next);
        }
        tracing::debug!(
            decode_ms = decoded_at.as_millis() as u64,
            apply_ms = (applied_at - decoded_at).as_millis() as u64,
            write_commit_ms = (started.elapsed() - applied_at).as_millis() as u64,
            "batch phases"
        );
        let committed_ms = chrono::Utc::now().timestamp_millis();
        BatchCommitted {
            records: batch.len(),
            outputs: rendered.outputs.len(),
            elapsed: started.elapsed(),
            transactional: self.cfg.transactions,
            record_ages: batch
                .iter()
                .filter_map(|m| m.timestamp().to_millis())
                .map(|produced| record_age_seconds(produced, committed_ms))
                .collect(),
        }
        .emit(&self.metrics);
        self.status.committed.fetch_add(1, Ordering::SeqCst);
        self.status
            .consumed
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(Ok(()))
    }

    /// Decodes the batch's records (see `decode_input`); records that can never be inputs
    /// become dead letters. A registry outage is an error: the batch is retried, nothing is
    /// skipped.
    fn decode(&mut self, batch: &[OwnedMessage]) -> Result<Decoded, RuntimeError> {
        let coders = match self.coders.take() {
            Some(c) => c,
            None => self
                .rt
                .block_on(Coders::new(&self.codec, &self.processors))?,
        };
        let coders = &*self.coders.insert(coders);
        let codec = &self.codec;
        let mut dead: Vec<DeadLetter> = Vec::new();
        // Per topic-partition: the offset after its last record, and the records counted
        // (borrowed keys: nothing is allocated per record for the bookkeeping).
        let mut ends: BTreeMap<(&str, i32), (i64, u64)> = BTreeMap::new();
        let mut inputs: Vec<(usize, Input)> = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let end = ends.entry((m.topic(), m.partition())).or_default();
            *end = (m.offset() + 1, end.1 + 1);
            if !self.poison.is_empty()
                && self
                    .poison
                    .contains(&(m.topic().to_owned(), m.partition(), m.offset()))
            {
                dead.push(DeadLetter::of(
                    m,
                    reason::PROCESSOR_PANIC,
                    "a processor panicked on this record".into(),
                    "",
                ));
                continue;
            }
            let Some(stream) = self.topics.stream_of(m.topic()) else {
                continue;
            };
            let Some(payload) = m.payload() else {
                dead.push(DeadLetter::of(
                    m,
                    reason::EMPTY_PAYLOAD,
                    "record without a value".into(),
                    "",
                ));
                continue;
            };
            let decoded = match stream {
                Stream::Samples => {
                    decode_input(&self.rt, codec, &coders.samples, payload).map(Input::Sample)
                }
                Stream::Events => {
                    decode_input(&self.rt, codec, &coders.events, payload).map(Input::Event)
                }
            };
            match decoded {
                Ok(input) => inputs.push((i, input)),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => dead.push(DeadLetter::of(m, reason::UNDECODABLE, e.to_string(), "")),
            }
        }

        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for ((topic, partition), (next, records)) in ends {
            self.metrics
                .records_in
                .with_label_values(&[topic])
                .inc_by(records);
            offsets.insert((topic.to_owned(), partition), next);
        }
        Ok(Decoded {
            inputs,
            dead,
            offsets,
        })
    }

    /// Applies the inputs, in order, to every processor that reads their stream; refusals
    /// become dead letters. A panic poisons the record (dead-lettered on the retry).
    fn apply(
        &mut self,
        batch: &[OwnedMessage],
        inputs: &[(usize, Input)],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), RuntimeError> {
        // Per processor: records applied and skipped as duplicates (counted once a batch).
        let mut counts = vec![(0u64, 0u64); self.processors.len()];
        for (i, input) in inputs {
            let m = &batch[*i];
            let tasks = self.partitions.get_mut(&m.partition()).ok_or_else(|| {
                RuntimeError::Unassigned {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                }
            })?;
            for (p, processor) in self.processors.iter().enumerate() {
                if !processor.inputs().contains(&input.stream()) {
                    continue;
                }
                let task = &mut tasks[p];
                let outcome = catch_unwind(AssertUnwindSafe(|| task.apply(input)));
                let name = processor.name();
                match outcome {
                    Err(_) => {
                        self.poison
                            .insert((m.topic().to_owned(), m.partition(), m.offset()));
                        return Err(RuntimeError::Panic {
                            processor: name,
                            topic: m.topic().to_owned(),
                            partition: m.partition(),
                            offset: m.offset(),
                        });
                    }
                    Ok(Outcome::Applied) => counts[p].0 += 1,
                    Ok(Outcome::Duplicate) => counts[p].1 += 1,
                    Ok(Outcome::NotAnInput) => {}
                    Ok(Outcome::TooLate) => dead.push(DeadLetter::of(
                        m,
                        reason::TOO_LATE,
                        "older than the allowed lateness".into(),
                        name,
                    )),
                    Ok(Outcome::Rejected(r)) => {
                        dead.push(DeadLetter::of(m, r.code, r.detail, name))
                    }
                }
            }
        }
        for (processor, (applied, skipped)) in self.processors.iter().zip(counts) {
            let name = [processor.name()];
            self.metrics
                .records_applied
                .with_label_values(&name)
                .inc_by(applied);
            self.metrics
                .records_skipped
                .with_label_values(&name)
                .inc_by(skipped);
        }

        Ok(())
    }

    /// Ends the batch in every task: the rendered, stamped rows and progress records
    /// (encoded) and the changelog entries; breaches of the flush contract are logged.
    fn render(&mut self) -> Result<Rendered, RuntimeError> {
        let mut outputs: Vec<Box<dyn EncodeOutput>> = Vec::new();
        let mut state_entries = Vec::new();
        let mut meta_entries = Vec::new();
        for (&partition, tasks) in self.partitions.iter_mut() {
            for (p, task) in tasks.iter_mut().enumerate() {
                let name = self.processors[p].name();
                let out = task.finish_batch().map_err(|source| RuntimeError::State {
                    processor: name,
                    source,
                })?;
                if !out.violations.is_empty() {
                    self.metrics
                        .flush_violations
                        .with_label_values(&[name])
                        .inc_by(out.violations.len() as u64);
                    for v in &out.violations {
                        tracing::error!(processor = name, violation = %v, "processor broke the flush contract");
                    }
                }
                if out.is_empty() {
                    continue;
                }
                outputs.extend(out.outputs);
                state_entries.extend(out.state.into_iter().map(|e| (p, partition, e)));
                meta_entries.extend(out.meta.into_iter().map(|e| (p, partition, e)));
            }
        }
        // `decode` made the coders at the start of the batch.
        let encoders = &self
            .coders
            .as_ref()
            .ok_or_else(|| RuntimeError::Config("output encoders missing".into()))?
            .outputs;
        let mut encoded = Vec::with_capacity(outputs.len());
        for o in &outputs {
            let bytes = o.encode(encoders).ok_or_else(|| {
                RuntimeError::Config(format!("no encoder for a record of {}", o.topic()))
            })??;
            encoded.push(bytes);
        }

        Ok(Rendered {
            outputs,
            encoded,
            state_entries,
            meta_entries,
        })
    }

    /// Sends the read-model records, each to its user's partition.
    fn write_outputs(&self, rendered: &Rendered) -> Result<(), RuntimeError> {
        for (o, bytes) in rendered.outputs.iter().zip(&rendered.encoded) {
            let (topic, partitions) = &self.topics.outputs[o.topic()];
            let key = o.key();
            let record = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(bytes.as_slice())
                .partition(user_partition(o.user_id(), *partitions));
            self.send(record)?;
            self.metrics
                .records_out
                .with_label_values(&[topic.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Sends the dead letters with where they came from and why.
    fn write_dead_letters(&self, dead: &[DeadLetter]) -> Result<(), RuntimeError> {
        for d in dead {
            let headers = DeadLetterHeaders {
                reason: &d.reason,
                detail: &d.detail,
                stage: stage::PROCESSOR,
                processor: d.processor,
                source_topic: &d.topic,
                source_partition: d.partition,
                source_offset: d.offset,
            }
            .to_kafka();
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topics.dead_letter).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &d.payload {
                record = record.payload(p.as_slice());
            }
            self.send(record)?;
            DeadLettered {
                reason: &d.reason,
                processor: d.processor,
                topic: &d.topic,
                partition: d.partition,
                offset: d.offset,
            }
            .emit(&self.metrics);
        }
        Ok(())
    }

    /// Sends the changelog: every record names its batch attempt and the input offsets it
    /// covers, plus one marker per partition consumed, so a restore can keep committed
    /// batches only (see `restore`). State entries first, the per-user "applied up to"
    /// (meta) entries last (see engine::BatchOutput::meta).
    fn write_changelog(
        &self,
        offsets: &BTreeMap<(String, i32), i64>,
        rendered: &Rendered,
    ) -> Result<(), RuntimeError> {
        let attempt = format!("{}/{}", self.run_id, self.batches);
        let mut ranges: BTreeMap<i32, String> = BTreeMap::new();
        for (_, partition) in offsets.keys() {
            if ranges.contains_key(partition) {
                continue;
            }
            ranges.insert(*partition, self.range_of(*partition, offsets).encode());
        }
        for (p, partition, e) in rendered.state_entries.iter().chain(&rendered.meta_entries) {
            let range = ranges
                .get(partition)
                .map(String::as_str)
                .unwrap_or_default();
            self.send_changelog(*p, *partition, &e.key, e.value.as_deref(), &attempt, range)?;
        }
        for (partition, range) in &ranges {
            for p in 0..self.processors.len() {
                self.send_changelog(
                    p,
                    *partition,
                    MARKER_KEY,
                    Some(range.as_bytes()),
                    &attempt,
                    range,
                )?;
            }
        }

        Ok(())
    }

    /// Commits the input offsets: in the transaction (exactly once), or, at least once,
    /// after every write of the batch is acknowledged.
    fn commit(&mut self, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if self.cfg.transactions {
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| RuntimeError::Config("consumer has no group metadata".into()))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)?;
            if self.faults.take_failure() {
                return Err(RuntimeError::Injected);
            }
            self.producer.commit_transaction(CALL_TIMEOUT)?;
        } else {
            self.flush_and_check()?;
            if self.faults.take_failure() {
                return Err(RuntimeError::Injected);
            }
            self.consumer.commit(&tpl, CommitMode::Sync)?;
        }
        Ok(())
    }

    /// The input offsets a batch covers on one partition number, per stream: from the
    /// committed position to the position it commits (unchanged for streams it did not
    /// read).
    pub(super) fn range_of(&self, partition: i32, offsets: &BTreeMap<(String, i32), i64>) -> Range {
        let mut range = Range {
            from: Positions::new(),
            to: Positions::new(),
        };
        for (topic, stream) in &self.topics.inputs {
            let key = (topic.clone(), partition);
            let from = self.positions.get(&key).copied().unwrap_or(-1);
            let to = offsets.get(&key).copied().unwrap_or(from);
            range.from.insert(stream.name().to_owned(), from);
            range.to.insert(stream.name().to_owned(), to);
        }
        range
    }

    pub(super) fn send_changelog(
        &self,
        processor: usize,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        attempt: &str,
        range: &str,
    ) -> Result<(), RuntimeError> {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: ATTEMPT_HEADER,
                value: Some(attempt.as_bytes()),
            })
            .insert(Header {
                key: RANGE_HEADER,
                value: Some(range.as_bytes()),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topics.changelogs[processor])
                .partition(partition)
                .key(key)
                .headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.send(record)
    }
}

/// One input record: directly when written with the compiled-in schema, otherwise (an
/// older writer) through the registry, whose lookups are cached after the first of each
/// schema, and schema resolution.
fn decode_input<R: AvroRecord>(
    rt: &tokio::runtime::Runtime,
    codec: &AvroCodec,
    decoder: &RecordDecoder<R>,
    payload: &[u8],
) -> Result<R, pulseline_schemas::Error> {
    match decoder.decode(payload)? {
        Some(record) => Ok(record),
        None => rt.block_on(codec.decode::<R>(payload)),
    }
}
