//! Partition assignment: rebalance events, reuse of a revoked partition's tasks when its
//! changelog did not grow, and the restore of newly owned partitions.

use super::*;

impl Worker {
    pub(super) fn assigned_numbers(&self) -> BTreeSet<i32> {
        self.assigned.iter().map(|(_, p)| *p).collect()
    }

    pub(super) fn handle_rebalance(
        &mut self,
        events: Vec<RebalanceEvent>,
    ) -> Result<(), RuntimeError> {
        for event in events {
            match event {
                RebalanceEvent::Revoked(list) => {
                    tracing::info!(partitions = ?list, "partitions revoked");
                    for tp in &list {
                        self.assigned.remove(tp);
                    }
                    let keep = self.assigned_numbers();
                    let gone: Vec<i32> = self
                        .partitions
                        .keys()
                        .copied()
                        .filter(|p| !keep.contains(p))
                        .collect();
                    for p in gone {
                        if let Some(tasks) = self.partitions.remove(&p)
                            && let Ok(ends) = self.changelog_ends(p)
                        {
                            self.standby.insert(p, (tasks, ends));
                        }
                    }
                }
                RebalanceEvent::Assigned(list) => {
                    tracing::info!(partitions = ?list, "partitions assigned");
                    self.assigned.extend(list);
                }
            }
        }
        if let Ok(mut a) = self.status.assigned.lock() {
            *a = self.assigned.iter().cloned().collect();
        }
        self.refresh_positions()?;
        let missing: Vec<i32> = self
            .assigned_numbers()
            .into_iter()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        let mut to_restore = Vec::new();
        for p in missing {
            match self.standby.remove(&p) {
                Some((tasks, ends)) if self.changelog_ends(p).is_ok_and(|now| now == ends) => {
                    tracing::info!(partition = p, "state kept across the rebalance");
                    self.partitions.insert(p, tasks);
                }
                _ => to_restore.push(p),
            }
        }
        self.restore(&to_restore)?;
        self.rewind(&to_restore)
    }

    pub(super) fn changelog_ends(&self, partition: i32) -> Result<Vec<i64>, RuntimeError> {
        self.topics
            .changelogs
            .iter()
            .map(|t| {
                self.consumer
                    .fetch_watermarks(t, partition, Duration::from_secs(5))
                    .map(|(_, high)| high)
                    .map_err(RuntimeError::from)
            })
            .collect()
    }

    pub(super) fn restore(&mut self, partitions: &[i32]) -> Result<(), RuntimeError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut fresh: BTreeMap<i32, Vec<Box<dyn DynTask>>> = partitions
            .iter()
            .map(|&p| {
                (
                    p,
                    self.processors
                        .iter()
                        .map(|proc| proc.new_task(self.engine))
                        .collect(),
                )
            })
            .collect();
        let mut committed: BTreeMap<i32, Positions> = BTreeMap::new();
        for (topic, stream) in &self.topics.inputs {
            for &p in partitions {
                let at = self
                    .positions
                    .get(&(topic.clone(), p))
                    .copied()
                    .unwrap_or(-1);
                committed
                    .entry(p)
                    .or_default()
                    .insert(stream.name().to_owned(), at);
            }
        }
        for (i, processor) in self.processors.iter().enumerate() {
            let started = Instant::now();
            let name = processor.name();
            let entries = restore::replay(
                &self.cfg,
                &self.topics.changelogs[i],
                partitions,
                &committed,
                |partition, key, value| {
                    let Some(tasks) = fresh.get_mut(&partition) else {
                        return Ok(());
                    };
                    tasks[i]
                        .restore(key, value)
                        .map_err(|source| RuntimeError::State {
                            processor: name,
                            source,
                        })
                },
            )?;
            for tasks in fresh.values_mut() {
                tasks[i].finish_restore();
            }
            Restored {
                processor: name,
                partitions,
                entries,
                users: fresh.values().map(|t| t[i].user_count()).sum(),
                elapsed: started.elapsed(),
            }
            .emit(&self.metrics);
        }
        self.partitions.extend(fresh);
        Ok(())
    }
}
