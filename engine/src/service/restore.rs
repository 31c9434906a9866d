//! Partitions arriving and leaving: a newly assigned partition's store restored from its changelog and held
//! to the group's committed offsets, a revoked one closed.
//!
//! It owns the restore (local store, then the changelog's tail from the offset the store recorded) and the
//! reaction to rebalances, which run inside the consumer's `poll`. It never commits anything: nothing is in
//! flight between batches, so a revoked partition has nothing to flush.

use super::Service;
use super::kafka::{self, Assignment, REQUEST_TIMEOUT, kafka_error};
use super::task::{self, InRecord, PartitionTask};
use crate::EngineError;
use crate::telemetry;
use caravan_state::{Delta, Store};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a restored partition may take to catch up with the group's committed offsets.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

impl Service<'_> {
    /// Opens a partition's store and brings it up to the changelog's end.
    pub(super) fn restore(&self, partition: i32) -> Result<PartitionTask, EngineError> {
        let started = Instant::now();
        let dir = task::partition_dir(&self.cfg.state.dir, &self.cfg.topics.input, partition);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let store = Arc::new(Store::open(&dir, &self.task_cfg.store)?);
        let from = i64::try_from(store.changelog_next()?).unwrap_or(i64::MAX);
        let mut delta = Delta::default();
        let mut records = 0u64;
        let next = kafka::read_to_end(&self.restorer, &self.changelog, partition, from, |k, v, offset| {
            delta.push_changelog_record(k, v)?;
            records += 1;
            if delta.len() >= 20_000 {
                store.apply_changelog(&std::mem::take(&mut delta), (offset + 1) as u64)?;
            }
            Ok(())
        })?;
        store.apply_changelog(&delta, next as u64)?;
        metrics::counter!(telemetry::RESTORED_RECORDS).increment(records);
        metrics::histogram!(telemetry::RESTORE_DURATION).record(started.elapsed().as_secs_f64());
        tracing::info!(partition, from, records, took = ?started.elapsed(), "Restored a partition from its changelog.");
        self.admin.add_store(partition, Arc::clone(&store));
        PartitionTask::open(store, partition, self.task_cfg.clone())
    }

    /// Acts on rebalances: revoked tasks close (their work is all committed), assigned ones restore.
    pub(super) fn rebalance(&mut self, collected: &mut Vec<(i32, InRecord)>) -> Result<(), EngineError> {
        let events = std::mem::take(
            &mut *self.consumer.context().events.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for event in events {
            metrics::counter!(telemetry::REBALANCES).increment(1);
            match event {
                Assignment::Revoked(parts) => {
                    // Records read before the revocation are read again by the partition's next owner (or by
                    // us, from the committed offset, when it comes back).
                    collected.retain(|(p, _)| !parts.contains(p));
                    for p in parts {
                        if let Some(task) = self.tasks.remove(&p) {
                            for (topic, _) in self.positions(task.next()) {
                                let (topic, partition) = (topic.to_owned(), p.to_string());
                                metrics::gauge!(telemetry::CONSUMER_LAG, "topic" => topic, "partition" => partition)
                                    .set(0.0);
                            }
                        }
                        self.admin.remove_store(p);
                    }
                    tracing::info!(tasks = self.tasks.len(), "Partitions revoked.");
                }
                Assignment::Assigned(parts) => {
                    self.admin.set_ready(false);
                    for p in parts {
                        if !self.tasks.contains_key(&p) {
                            let t = self.restore(p)?;
                            self.tasks.insert(p, t);
                            self.catch_up_with_offsets(p)?;
                        }
                    }
                    self.admin.set_ready(true);
                    tracing::info!(partitions = ?self.tasks.keys().collect::<Vec<_>>(), "Partitions assigned.");
                }
            }
        }
        metrics::gauge!(telemetry::PARTITIONS_OWNED).set(self.tasks.len() as f64);
        Ok(())
    }

    /// Holds a restored partition to the group's committed offsets. The same transactions wrote both, so after
    /// a complete restore they agree. A changelog read that ended before the last commit's records could be
    /// read (its markers not yet written) leaves the task behind the offsets, and processing on from the
    /// offsets would apply later records to an older state: the changelog is then read again, for up to
    /// [`CATCH_UP_WAIT`]. Past that the offsets win, with a warning: someone moved them on purpose (skipping
    /// input with the group's offset tools). Offsets behind the task (a fetch answered before the markers)
    /// are harmless: the task skips records it has applied.
    pub(super) fn catch_up_with_offsets(&mut self, p: i32) -> Result<(), EngineError> {
        let started = Instant::now();
        loop {
            let Some(task) = self.tasks.get(&p) else { return Ok(()) };
            let ours: Vec<(String, i64)> =
                self.positions(task.next()).into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
            let mut tpl = TopicPartitionList::new();
            for (topic, _) in &ours {
                tpl.add_partition(topic, p);
            }
            let committed = self
                .consumer
                .committed_offsets(tpl, REQUEST_TIMEOUT)
                .map_err(|e| kafka_error("reading the group's committed offsets", e))?;
            let behind: Vec<(String, i64, i64)> = ours
                .into_iter()
                .filter_map(|(topic, next)| match committed.find_partition(&topic, p)?.offset() {
                    Offset::Offset(c) if c > next => Some((topic, next, c)),
                    _ => None,
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if started.elapsed() > CATCH_UP_WAIT {
                tracing::warn!(
                    partition = p,
                    ?behind,
                    "The restored state stays behind the group's committed offsets (topic, restored, committed): \
                     going on from the offsets; the records between are not processed."
                );
                return Ok(());
            }
            tracing::info!(
                partition = p,
                ?behind,
                "The restored state is behind the group's committed offsets: reading the changelog again."
            );
            std::thread::sleep(Duration::from_millis(200));
            // The store closes (task and admin let go of it) before the restore opens it again.
            self.tasks.remove(&p);
            self.admin.remove_store(p);
            let t = self.restore(p)?;
            self.tasks.insert(p, t);
        }
    }
}
