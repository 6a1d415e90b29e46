//! The Kafka-free core that drives one processor over one input partition: per-user state,
//! deduplication by change id, allowed lateness, batches and changelog entries. The Kafka
//! runtime and the in-memory test harness both drive processors through it, so a processor
//! tested with the harness behaves the same in production.
//!
//! It owns the per-user bookkeeping (`UserMeta`: last applied change id per stream and the
//! event-time watermark); it must never do I/O.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use pulseline_schemas::wire::RecordEncoder;
use pulseline_schemas::{AvroCodec, AvroRecord};
use serde::{Deserialize, Serialize};

use pulseline_schemas::{ReadModel, ReadModelProgress, RowVersion};

use crate::processor::{
    Applied, ChangeId, Context, Flush, Input, KeyOf, Processor, Rejection, Stream,
};
use crate::state::{self, ChangelogEntry, State, StateError};

/// Microseconds per day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// Settings of the per-user bookkeeping, shared by every processor of a runtime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// A record whose event time is older than the user's event-time watermark minus this
    /// is not applied and goes to the dead-letter topic as `TOO_LATE`. The default, 400
    /// days, is the gateway's acceptance window: no accepted sample is ever refused.
    pub allowed_lateness_micros: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_micros: 400 * DAY_MICROS,
        }
    }
}

/// What became of one input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied to the user's state.
    Applied,
    /// At or below the user's last applied change id of the stream: skipped.
    Duplicate,
    /// Not an input of this processor: skipped.
    NotAnInput,
    /// Older than the allowed lateness: dead-lettered as `TOO_LATE`.
    TooLate,
    /// Refused by the processor, or a change id out of the versionable range.
    Rejected(Rejection),
}

/// Per-user bookkeeping the runtime persists next to the processor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UserMeta {
    pub applied: Applied,
    /// Latest event time applied (UTC micros): the user's event-time watermark.
    pub watermark: Option<i64>,
}

#[derive(Debug)]
struct UserSlot<S, K> {
    state: S,
    meta: UserMeta,
    /// A change of this batch was consumed (applied or dead-lettered): report progress.
    touched: bool,
    /// Rows touched in this batch, with the version of the newest change that touched each.
    rows: BTreeMap<K, RowVersion>,
}

impl<S: Default, K> Default for UserSlot<S, K> {
    fn default() -> Self {
        Self {
            state: S::default(),
            meta: UserMeta::default(),
            touched: false,
            rows: BTreeMap::new(),
        }
    }
}

/// What a changelog entry is about: a user's bookkeeping, or one entry of one of the
/// user's state tables. Encoded with the state codec; the compacted changelog keeps the
/// latest value of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ChangelogKey {
    Meta {
        user: String,
    },
    Table {
        user: String,
        table: String,
        key: Vec<u8>,
    },
}

impl ChangelogKey {
    fn user(&self) -> &str {
        match self {
            ChangelogKey::Meta { user } | ChangelogKey::Table { user, .. } => user,
        }
    }
}

/// The user a changelog key belongs to (diagnostics, partitioning checks).
pub fn changelog_user(key: &[u8]) -> Option<String> {
    state::decode::<ChangelogKey>("changelog key", key)
        .ok()
        .map(|k| k.user().to_owned())
}

/// The version of a row touched by the change that made `applied` what it is: the last
/// change id of each stream (`RowVersion` says why that pair orders and identifies rows).
/// Its applied sequences (`RowVersion::seqs`) are a function of it alone, so equal
/// versions carry equal content whatever the batch boundaries; the user's progress travels
/// in the progress records, which carry everything applied by the end of the batch.
fn row_version(applied: &Applied) -> RowVersion {
    RowVersion {
        samples: applied.samples.map_or(0, ChangeId::version),
        events: applied.events.map_or(0, ChangeId::version),
    }
}

/// What one batch produced for one processor and partition.
#[derive(Debug)]
pub struct BatchOutput<O> {
    /// Read-model rows, versioned and stamped, per user in key order.
    pub outputs: Vec<O>,
    /// One progress record per user whose changes the batch consumed. Written after
    /// `outputs` (the same partition per user), so a sink never sees progress before rows.
    pub progress: Vec<ReadModelProgress>,
    /// Changed state entries. Written before `meta`.
    pub state: Vec<ChangelogEntry>,
    /// Changed per-user bookkeeping (last applied change ids, watermark), written after
    /// `state` in the same batch.
    pub meta: Vec<ChangelogEntry>,
    /// Breaches of the `flush` contract (a touched row not rendered, a row emitted that
    /// was not touched): processor bugs, reported by the runtime and failed by the harness.
    pub violations: Vec<String>,
}

impl<O> BatchOutput<O> {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
            && self.progress.is_empty()
            && self.state.is_empty()
            && self.meta.is_empty()
    }
}

/// One processor's state for one input partition, and the rules for applying records.
#[derive(Debug)]
pub struct PartitionTask<P: Processor> {
    processor: Arc<P>,
    config: EngineConfig,
    users: HashMap<String, UserSlot<P::State, KeyOf<P>>>,
    touched: Vec<String>,
    /// Scratch for the keys one `apply` touches (kept only if it succeeds).
    keys: Vec<KeyOf<P>>,
}

impl<P: Processor> PartitionTask<P> {
    pub fn new(processor: Arc<P>, config: EngineConfig) -> Self {
        Self {
            processor,
            config,
            users: HashMap::new(),
            touched: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Applies one record: dedup by change id, lateness, then the processor. The rows it
    /// touches are rendered in `finish_batch`.
    pub fn apply(&mut self, input: &Input) -> Outcome {
        let stream = input.stream();
        if !<P::Output as ReadModel>::STREAMS.contains(&stream) {
            return Outcome::NotAnInput;
        }
        let change = input.change_id();
        let user = input.user_id();
        let slot = match self.users.get_mut(user) {
            Some(slot) => slot,
            None => self.users.entry(user.to_owned()).or_default(),
        };
        if slot
            .meta
            .applied
            .get(stream)
            .is_some_and(|last| change <= last)
        {
            return Outcome::Duplicate;
        }
        let outcome = if !change.is_versionable() {
            Outcome::Rejected(Rejection::new(
                "INVALID_CHANGE_ID",
                "change id outside the versionable range (index must be < 2^20)",
            ))
        } else if slot.meta.watermark.is_some_and(|w| {
            w.saturating_sub(input.event_time()) > self.config.allowed_lateness_micros
        }) {
            Outcome::TooLate
        } else {
            let mut applied = slot.meta.applied;
            applied.set(stream, change);
            self.keys.clear();
            let mut ctx = Context::new(user, change, applied, &mut self.keys);
            match self.processor.apply(&mut ctx, &mut slot.state, input) {
                Ok(()) => {
                    // Both parts only grow, so this change's version is the newest.
                    let version = row_version(&applied);
                    for key in self.keys.drain(..) {
                        slot.rows.insert(key, version);
                    }
                    slot.meta.watermark = Some(
                        slot.meta
                            .watermark
                            .map_or(input.event_time(), |w| w.max(input.event_time())),
                    );
                    Outcome::Applied
                }
                Err(rejection) => Outcome::Rejected(rejection),
            }
        };
        // Every consumed change counts as handled (applied or dead-lettered), so a replay of
        // it is skipped rather than dead-lettered twice.
        slot.meta.applied.set(stream, change);
        if !slot.touched {
            slot.touched = true;
            self.touched.push(user.to_owned());
        }
        outcome
    }

    /// Ends a batch: for every touched user, `flush` renders the touched rows, the runtime
    /// stamps them, then the user's progress and changelog entries follow.
    pub fn finish_batch(&mut self) -> Result<BatchOutput<P::Output>, StateError> {
        let mut out = BatchOutput {
            outputs: Vec::new(),
            progress: Vec::new(),
            state: Vec::new(),
            meta: Vec::new(),
            violations: Vec::new(),
        };
        let mut sub = Vec::new();
        let mut rendered = BTreeMap::new();
        for user in std::mem::take(&mut self.touched) {
            let Some(slot) = self.users.get_mut(&user) else {
                continue;
            };
            slot.touched = false;
            let applied = slot.meta.applied.seqs();
            if !slot.rows.is_empty() {
                let touched = std::mem::take(&mut slot.rows);
                self.processor.flush(
                    &mut Flush::new(&user, &touched, &mut rendered),
                    &mut slot.state,
                );
                for (key, version) in touched {
                    match rendered.remove(&key) {
                        Some(mut row) => {
                            row.stamp(version, version.seqs());
                            out.outputs.push(row);
                        }
                        None => out.violations.push(format!(
                            "{}: touched row {key:?} was not rendered by flush",
                            P::NAME
                        )),
                    }
                }
                for key in std::mem::take(&mut rendered).into_keys() {
                    out.violations.push(format!(
                        "{}: flush emitted row {key:?}, which no change of the batch touched",
                        P::NAME
                    ));
                }
            }
            out.progress.push(ReadModelProgress::new(
                &user,
                <P::Output as ReadModel>::NAME,
                applied,
            ));
            for (table, entries) in slot.state.tables() {
                sub.clear();
                entries.drain_changes(&mut sub)?;
                for e in sub.drain(..) {
                    let key = ChangelogKey::Table {
                        user: user.clone(),
                        table: table.to_owned(),
                        key: e.key,
                    };
                    out.state.push(ChangelogEntry {
                        key: state::encode("changelog key", &key)?,
                        value: e.value,
                    });
                }
            }
            out.meta.push(ChangelogEntry {
                key: state::encode("changelog key", &ChangelogKey::Meta { user: user.clone() })?,
                value: Some(state::encode("user meta", &slot.meta)?),
            });
        }
        Ok(out)
    }

    /// Replays one changelog entry (partition assignment). Call `finish_restore` after
    /// the last one.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        match state::decode::<ChangelogKey>("changelog key", key)? {
            ChangelogKey::Meta { user } => {
                let slot = self.users.entry(user).or_default();
                slot.meta = match value {
                    Some(v) => state::decode("user meta", v)?,
                    None => UserMeta::default(),
                };
            }
            ChangelogKey::Table { table, .. }
                if P::State::retired_tables().contains(&table.as_str()) => {}
            ChangelogKey::Table { user, table, key } => {
                let slot = self.users.entry(user).or_default();
                let mut tables = slot.state.tables();
                let (_, entries) = tables
                    .iter_mut()
                    .find(|(name, _)| *name == table)
                    .ok_or(StateError::UnknownTable(table))?;
                entries.restore(&key, value)?;
            }
        }
        Ok(())
    }

    /// Ends a restore: every user's state rebuilds what it derives from its tables.
    pub fn finish_restore(&mut self) {
        for slot in self.users.values_mut() {
            slot.state.restored();
        }
    }

    /// The bookkeeping of one user (tests, diagnostics).
    pub fn meta(&self, user: &str) -> Option<UserMeta> {
        self.users.get(user).map(|s| s.meta)
    }

    /// The state of one user (tests, diagnostics).
    pub fn state(&self, user: &str) -> Option<&P::State> {
        self.users.get(user).map(|s| &s.state)
    }

    /// Users with state in this partition.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// A read-model record the runtime can route and encode without knowing its type.
pub trait EncodeOutput: Send + Sync + Debug {
    fn user_id(&self) -> &str;
    fn key(&self) -> String;
    /// The un-prefixed topic.
    fn topic(&self) -> &'static str;
    /// The record in the wire format; `None` when `encoders` has none for its type (they
    /// are built from the same processors as the tasks, so that is a bug).
    fn encode(
        &self,
        encoders: &OutputEncoders,
    ) -> Option<Result<Vec<u8>, pulseline_schemas::Error>>;
}

/// The encoders of every registered read model's rows and progress records, built once
/// (their schema ids need the registry) so that encoding a record needs no registry
/// lookup, lock, schema copy or value tree.
#[derive(Default)]
pub struct OutputEncoders(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

/// The progress encoder of read model `M`'s topic (its own type, to be found by type).
struct ProgressEncoder<M>(RecordEncoder<ReadModelProgress>, PhantomData<fn() -> M>);

impl OutputEncoders {
    pub async fn new(
        processors: &[Box<dyn DynProcessor>],
        codec: &AvroCodec,
    ) -> Result<Self, pulseline_schemas::Error> {
        let mut encoders = Self::default();
        for p in processors {
            p.add_encoders(codec, &mut encoders).await?;
        }
        Ok(encoders)
    }

    fn insert<T: Any + Send + Sync>(&mut self, encoder: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(encoder));
    }

    fn get<T: Any>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl Debug for OutputEncoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputEncoders")
            .field("types", &self.0.len())
            .finish()
    }
}

/// A row of read model `M`.
#[derive(Debug)]
struct RowOut<M>(M);

impl<M: ReadModel> EncodeOutput for RowOut<M> {
    fn user_id(&self) -> &str {
        AvroRecord::user_id(&self.0)
    }
    fn key(&self) -> String {
        AvroRecord::key(&self.0)
    }
    fn topic(&self) -> &'static str {
        M::TOPIC
    }
    fn encode(
        &self,
        encoders: &OutputEncoders,
    ) -> Option<Result<Vec<u8>, pulseline_schemas::Error>> {
        Some(encoders.get::<RecordEncoder<M>>()?.encode(&self.0))
    }
}

/// A progress record on read model `M`'s topic.
#[derive(Debug)]
struct ProgressOut<M>(ReadModelProgress, std::marker::PhantomData<fn() -> M>);

impl<M: ReadModel> EncodeOutput for ProgressOut<M> {
    fn user_id(&self) -> &str {
        &self.0.user_id
    }
    fn key(&self) -> String {
        self.0.key().to_owned()
    }
    fn topic(&self) -> &'static str {
        M::TOPIC
    }
    fn encode(
        &self,
        encoders: &OutputEncoders,
    ) -> Option<Result<Vec<u8>, pulseline_schemas::Error>> {
        Some(encoders.get::<ProgressEncoder<M>>()?.0.encode(&self.0))
    }
}

/// A processor as the runtime holds it: type-erased, so one list holds them all.
pub trait DynProcessor: Send + Sync + Debug {
    fn name(&self) -> &'static str;
    fn inputs(&self) -> &'static [Stream];
    /// The un-prefixed read-model topic.
    fn output_topic(&self) -> &'static str;
    fn new_task(&self, config: EngineConfig) -> Box<dyn DynTask>;
    /// Adds the encoders of its rows and progress records.
    fn add_encoders<'a>(
        &'a self,
        codec: &'a AvroCodec,
        into: &'a mut OutputEncoders,
    ) -> BoxFuture<'a, Result<(), pulseline_schemas::Error>>;
}

/// A `PartitionTask` as the runtime holds it. `finish_batch` puts the rows first, then the
/// progress records, in `outputs` (its `progress` is left empty).
pub trait DynTask: Send + Debug {
    fn apply(&mut self, input: &Input) -> Outcome;
    fn finish_batch(&mut self) -> Result<BatchOutput<Box<dyn EncodeOutput>>, StateError>;
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError>;
    fn finish_restore(&mut self);
    fn user_count(&self) -> usize;
}

#[derive(Debug)]
struct Registered<P>(Arc<P>);

#[derive(Debug)]
struct ErasedTask<P: Processor> {
    task: PartitionTask<P>,
}

impl<P: Processor> DynProcessor for Registered<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn inputs(&self) -> &'static [Stream] {
        <P::Output as ReadModel>::STREAMS
    }
    fn output_topic(&self) -> &'static str {
        <P::Output as AvroRecord>::TOPIC
    }
    fn new_task(&self, config: EngineConfig) -> Box<dyn DynTask> {
        Box::new(ErasedTask {
            task: PartitionTask::new(self.0.clone(), config),
        })
    }
    fn add_encoders<'a>(
        &'a self,
        codec: &'a AvroCodec,
        into: &'a mut OutputEncoders,
    ) -> BoxFuture<'a, Result<(), pulseline_schemas::Error>> {
        Box::pin(async move {
            into.insert(codec.encoder_for::<P::Output>().await?);
            let progress = codec.progress_encoder_for::<P::Output>().await?;
            into.insert(ProgressEncoder::<P::Output>(progress, PhantomData));
            Ok(())
        })
    }
}

impl<P: Processor> DynTask for ErasedTask<P> {
    fn apply(&mut self, input: &Input) -> Outcome {
        self.task.apply(input)
    }
    fn finish_batch(&mut self) -> Result<BatchOutput<Box<dyn EncodeOutput>>, StateError> {
        let out = self.task.finish_batch()?;
        let rows = out
            .outputs
            .into_iter()
            .map(|o| Box::new(RowOut(o)) as Box<dyn EncodeOutput>);
        let progress = out.progress.into_iter().map(|p| {
            Box::new(ProgressOut::<P::Output>(p, std::marker::PhantomData)) as Box<dyn EncodeOutput>
        });
        Ok(BatchOutput {
            outputs: rows.chain(progress).collect(),
            progress: Vec::new(),
            state: out.state,
            meta: out.meta,
            violations: out.violations,
        })
    }
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        self.task.restore(key, value)
    }
    fn finish_restore(&mut self) {
        self.task.finish_restore();
    }
    fn user_count(&self) -> usize {
        self.task.user_count()
    }
}

/// Wraps a processor for the registration list (`processors::registry`).
pub fn register<P: Processor>(processor: P) -> Box<dyn DynProcessor> {
    Box::new(Registered(Arc::new(processor)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_keys_name_their_user() {
        let key = ChangelogKey::Table {
            user: "user-1".into(),
            table: "samples".into(),
            key: vec![0, 1, 2],
        };
        let bytes = state::encode("k", &key).unwrap();
        assert_eq!(state::decode::<ChangelogKey>("k", &bytes).unwrap(), key);
        assert_eq!(changelog_user(&bytes).as_deref(), Some("user-1"));
        assert_eq!(changelog_user(b"\xff\xff"), None);
    }

    #[test]
    fn restore_skips_retired_tables_and_refuses_unknown_ones() {
        use crate::processors::SessionImpacts;
        let mut task =
            PartitionTask::new(Arc::new(SessionImpacts::default()), EngineConfig::default());
        let entry = |table: &str| {
            let key = ChangelogKey::Table {
                user: "user-1".into(),
                table: table.into(),
                key: state::encode("k", &()).unwrap(),
            };
            state::encode("k", &key).unwrap()
        };
        let value = state::encode("v", &7_i64).unwrap();
        // Impact state once persisted `as_of`; changelogs written then still restore.
        task.restore(&entry("as_of"), Some(&value)).unwrap();
        assert!(matches!(
            task.restore(&entry("no_such_table"), Some(&value)),
            Err(StateError::UnknownTable(t)) if t == "no_such_table"
        ));
    }
}
