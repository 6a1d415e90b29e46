//! The processor runtime: everything between Kafka and the processors. It owns the consumer
//! group on the input topics, per-partition state restored from a compacted changelog topic
//! per processor (`<prefix>changelog.<name>.v1`, created by the runtime, co-partitioned with
//! the inputs) before processing resumes, one transactional producer per instance that
//! commits outputs, dead letters, changelog entries and input offsets together, the abort /
//! reload / rewind path, dead letters, the backfill rate limit, and metrics.
//!
//! Correctness does not rest on transactions alone (tansu shows aborted records to
//! read_committed readers, STACK.md):
//! - the engine skips any change at or below the user's last applied change id (replays,
//!   relay duplicates, republished history);
//! - the restore keeps the changelog records of committed batches only, found by walking
//!   back from the group's committed offsets (`restore`), so state never runs ahead of the
//!   committed input position whatever the broker shows;
//! - outputs are versioned upserts whose versions and content depend on the changes only,
//!   so a replay supersedes whatever an aborted batch left visible (`processors::rollups`).
//!
//! The same makes `transactions = false` (at-least-once) give the same read models.
//!
//! It must never interpret records beyond decoding them: meaning lives in the processors.

mod config;
mod error;
mod kafka;
mod lag;
mod metrics;
mod restore;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use self::config::{OffsetReset, RuntimeConfig};
pub use self::error::RuntimeError;
pub use self::kafka::{murmur2, user_partition};
pub use self::metrics::RuntimeMetrics;
use crate::engine::DynProcessor;

/// Failure injection for tests (inert unless armed).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    fail_before_commit: Arc<AtomicU32>,
    crash_at_batch: Arc<AtomicU64>,
}

impl Faults {
    /// The next `n` batches fail after producing everything (outputs, changelog, offsets
    /// sent to the transaction) and before the commit: they are aborted and retried.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_before_commit.store(n, Ordering::SeqCst);
    }

    /// Batch number `n` (counting from 1 in this runtime) produces everything, then the
    /// runtime stops dead without committing or aborting, as if killed.
    pub fn crash_at_batch(&self, n: u64) {
        self.crash_at_batch.store(n, Ordering::SeqCst);
    }

    pub(crate) fn take_failure(&self) -> bool {
        self.fail_before_commit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn take_crash(&self, batch: u64) -> bool {
        batch > 0 && self.crash_at_batch.load(Ordering::SeqCst) == batch
    }
}

/// What a running runtime has done so far (for tests and readiness).
#[derive(Debug, Default)]
pub struct Status {
    pub(crate) running: AtomicBool,
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) assigned: Mutex<Vec<(String, i32)>>,
}

impl Status {
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
    pub fn committed_batches(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }
    pub fn aborted_batches(&self) -> u64 {
        self.aborted.load(Ordering::SeqCst)
    }
    pub fn consumed_records(&self) -> u64 {
        self.consumed.load(Ordering::SeqCst)
    }
    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// A runtime to be started: configuration, the registered processors, metrics, faults.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
    processors: Vec<Box<dyn DynProcessor>>,
    metrics: RuntimeMetrics,
    faults: Faults,
}

impl Runtime {
    pub fn new(
        config: RuntimeConfig,
        processors: Vec<Box<dyn DynProcessor>>,
    ) -> Result<Self, RuntimeError> {
        let metrics =
            RuntimeMetrics::new().map_err(|e| RuntimeError::Config(format!("metrics: {e}")))?;
        Ok(Self {
            config,
            processors,
            metrics,
            faults: Faults::default(),
        })
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// Starts the runtime on its own thread (Kafka clients block; the runtime keeps them
    /// off the async executor). Connection and configuration errors end the thread and are
    /// returned by `RuntimeHandle::join`.
    pub fn start(self) -> RuntimeHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Status::default());
        let metrics = self.metrics.clone();
        let (s, st) = (stop.clone(), status.clone());
        let name = format!("processor-{}", self.config.instance_id);
        lag::spawn(
            self.config.clone(),
            self.metrics.clone(),
            status.clone(),
            stop.clone(),
        );
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let worker = worker::Worker::new(
                self.config,
                self.processors,
                self.metrics,
                self.faults,
                st,
                s,
            )?;
            worker.run()
        });
        RuntimeHandle {
            stop,
            status,
            metrics,
            thread: Some(thread.map_err(|e| RuntimeError::Config(format!("spawn: {e}")))),
        }
    }
}

/// A running runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    metrics: RuntimeMetrics,
    thread: Option<Result<JoinHandle<Result<(), RuntimeError>>, RuntimeError>>,
}

impl RuntimeHandle {
    /// Asks the runtime to finish its current batch and leave the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The status, shareable with e.g. a readiness endpoint.
    pub fn shared_status(&self) -> Arc<Status> {
        self.status.clone()
    }

    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// Whether the runtime thread has ended (stopped, failed, or crashed by a fault).
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(Ok(t)) => t.is_finished(),
            _ => true,
        }
    }

    /// Waits for the runtime thread to end (blocking).
    pub fn join(mut self) -> Result<(), RuntimeError> {
        match self.thread.take() {
            Some(Ok(t)) => t
                .join()
                .unwrap_or_else(|_| Err(RuntimeError::Config("runtime thread panicked".into()))),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    /// `stop`, then `join` without blocking the async executor.
    pub async fn shutdown(self) -> Result<(), RuntimeError> {
        self.stop();
        tokio::task::spawn_blocking(move || self.join())
            .await
            .unwrap_or_else(|_| Err(RuntimeError::Config("runtime join panicked".into())))
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
