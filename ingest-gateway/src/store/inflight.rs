//! In-process coalescing of concurrent duplicates: requests with the same (user,
//! requestId) queue here, in memory, behind the first one, instead of each holding a
//! Postgres connection while blocked on the idempotency row. A retry storm of 50 copies
//! therefore needs one connection at a time, not 50 (which would exhaust the pool and
//! turn into 503s for everybody). Across gateway replicas the idempotency row's lock
//! still does the same job; this is only the cheap first line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

type Key = (Uuid, Uuid);

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    requests: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a request runs; later duplicates wait for it to drop.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a> {
    registry: &'a InFlight,
    key: Key,
    guard: Option<OwnedMutexGuard<()>>,
}

impl InFlight {
    /// Waits (at most `wait`) until no other request with this key runs in this process.
    /// `None` when the wait ran out: the original is still in progress.
    pub(crate) async fn enter(
        &self,
        user_id: Uuid,
        request_id: Uuid,
        wait: Duration,
    ) -> Option<InFlightGuard<'_>> {
        let key = (user_id, request_id);
        let slot = {
            let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_default().clone()
        };
        let mut guard = InFlightGuard {
            registry: self,
            key,
            guard: None,
        };
        // On timeout `guard` is dropped without a lock, which still cleans the entry up.
        guard.guard = Some(tokio::time::timeout(wait, slot.lock_owned()).await.ok()?);
        Some(guard)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        // Release the slot first, then remove the entry if nobody else holds or awaits it
        // (every clone is taken under the map lock, so the count is exact here).
        self.guard.take();
        let mut map = self
            .registry
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_wait_and_entries_are_removed() {
        let registry = InFlight::default();
        let (u, r) = (Uuid::new_v4(), Uuid::new_v4());
        let first = registry.enter(u, r, Duration::from_secs(1)).await.unwrap();
        assert!(
            registry
                .enter(u, r, Duration::from_millis(50))
                .await
                .is_none(),
            "a duplicate waits, then gives up"
        );
        assert!(
            registry
                .enter(u, Uuid::new_v4(), Duration::from_millis(50))
                .await
                .is_some(),
            "other requests pass"
        );
        drop(first);
        let again = registry
            .enter(u, r, Duration::from_millis(50))
            .await
            .unwrap();
        drop(again);
        assert!(registry.requests.lock().unwrap().is_empty());
    }
}
