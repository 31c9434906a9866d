//! Kafka mode (`caravan run`): the long-lived service on the platform's topics, exactly once, scaled out by
//! Kafka's consumer group (the Kafka Streams exactly-once v2 model; ARCHITECTURE.md, "Kafka mode").
//!
//! It owns the service loop: poll a batch from the input partitions this instance holds, process each
//! partition's records in its [`task::PartitionTask`], then one transaction carries the outputs, the state
//! deltas (to the changelog partition of the same number) and the consumed offsets with the group's metadata.
//! Only after the commit do the deltas reach the local RocksDB stores, with the changelog offset they reflect.
//! An abort drops the tasks and the positions go back to what the stores say. A partition assigned to this
//! instance is restored first: its local store, then the changelog's tail from the offset it recorded.
//!
//! Nothing is in flight between batches: rebalances (which run inside `poll`) see only committed work, so a
//! revoked partition needs no flush. It never touches another instance's state: partitions move through the
//! changelog, nothing else.

pub mod definitions;
mod hold;
mod kafka;
mod repartition;
#[cfg(test)]
mod stage_tests;
mod task;

use crate::EngineError;
use crate::admin::Admin;
use crate::config::{Config, InputFormat, TimeMode};
use crate::core::epoch::{Epoch, Sink};
use crate::core::outputs::OutKind;
use crate::telemetry::{self, Tally};
use caravan_schemas::Id;
use caravan_schemas::time::Timestamp;
use caravan_state::{Delta, Store};
use definitions::{Feed, Published};
use kafka::{Assignment, REQUEST_TIMEOUT, kafka_error};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use task::{InRecord, PartitionTask, Processed, TaskConfig};

/// How long a restored partition may take to catch up with the group's committed offsets.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The fail point inside an input batch's transaction: its outputs and changelog records are produced, its
/// offsets not yet added (tests set it with `CARAVAN_FAILPOINTS`, e.g. to sleep there and be killed).
pub const FAIL_BEFORE_OFFSETS: &str = "transaction-before-offsets";

/// Sets fail points from `spec`, the value of `CARAVAN_FAILPOINTS`: `name=actions` entries separated by `;`,
/// in the `fail` crate's action syntax (`sleep(5000)`, `50%return`, `1*panic`...). For tests: a fail point
/// changes what the engine does at that point, so production leaves the variable unset.
///
/// # Errors
/// An entry without `=`, or actions the `fail` crate refuses.
pub fn configure_failpoints(spec: &str) -> Result<Vec<String>, EngineError> {
    let mut names = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| EngineError::Invalid(format!("CARAVAN_FAILPOINTS: `{entry}` is not name=actions")))?;
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| EngineError::Invalid(format!("CARAVAN_FAILPOINTS: `{entry}`: {e}")))?;
        names.push(name.trim().to_owned());
    }
    Ok(names)
}

/// How often the definitions topic is read for new publications.
const DEFINITIONS_POLL: Duration = Duration::from_secs(1);

fn ensure_definitions_topic(cfg: &Config) -> Result<(), EngineError> {
    kafka::ensure_topics(cfg, &[(cfg.topics.definitions.clone(), 1, true)])
}

fn task_config(cfg: &Config, partitions: usize) -> Result<TaskConfig, EngineError> {
    Ok(TaskConfig {
        input_topic: cfg.topics.input.clone(),
        core: crate::core::Settings {
            rules: crate::core::decode::EdgeRules {
                limits: cfg.input.limits().map_err(EngineError::Invalid)?,
                tenants: Arc::new(cfg.tenants.iter().map(|t| t.id.clone()).collect()),
                xdm_tenant: cfg.input.tenant.as_deref().filter(|_| cfg.input.format == InputFormat::Xdm).map(Id::from),
            },
            allowed_disorder_ns: cfg.time.allowed_disorder_ns(),
            dedup_window: cfg.input.dedup_window,
            dedup_max_age_ns: cfg.input.dedup_max_age_ns(),
        },
        cache_accounts: (cfg.state.cache_accounts / partitions.max(1)).max(16),
        cache_persons: (cfg.state.cache_persons / partitions.max(1)).max(16),
        // A task commits a transaction at least every commit interval: far fewer ids than the window.
        store: caravan_state::StoreOptions {
            dedup_ids: (cfg.input.dedup_window as u64).saturating_mul(2),
            ..cfg.state.store_options()
        },
        processing_time: cfg.time.mode == TimeMode::Processing,
        partitions,
        unknown_person_wait_ns: cfg.input.unknown_person_wait_ns(),
    })
}

/// The running service's Kafka clients and tasks.
struct Service<'c> {
    cfg: &'c Config,
    task_cfg: TaskConfig,
    consumer: BaseConsumer<kafka::InputContext>,
    producer: ThreadedProducer<kafka::OutputContext>,
    restorer: BaseConsumer<kafka::ReaderContext>,
    changelog: String,
    /// The person stage's topics (persons, accounts), with several partitions.
    stage_topics: Option<(String, String)>,
    feed: Feed,
    tasks: BTreeMap<i32, PartitionTask>,
    admin: Admin,
}

impl Service<'_> {
    /// Opens a partition's store and brings it up to the changelog's end.
    fn restore(&self, partition: i32) -> Result<PartitionTask, EngineError> {
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
    fn rebalance(&mut self, collected: &mut Vec<(i32, InRecord)>) -> Result<(), EngineError> {
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
    fn catch_up_with_offsets(&mut self, p: i32) -> Result<(), EngineError> {
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

    /// Runs the publications of the definitions topic that a task has not applied yet, each in a
    /// transaction of its own before the task processes more input.
    fn publish_pending(&mut self) -> Result<(), EngineError> {
        let feed_next = self.feed.next;
        let partitions: Vec<i32> =
            self.tasks.iter().filter(|(_, t)| t.position.definitions_next < feed_next).map(|(p, _)| *p).collect();
        for p in partitions {
            let Some(task) = self.tasks.get_mut(&p) else { continue };
            let mut pass = crate::core::publish::Pass::default();
            let at = (task.position.seq, Timestamp(task.position.max_ts.unwrap_or(0)));
            let defs = Arc::clone(&self.feed.defs);
            for (offset, published) in &self.feed.log {
                if *offset < task.position.definitions_next {
                    continue;
                }
                match published {
                    Published::Template(t) => {
                        crate::core::publish::template_pass(task.store(), &defs, t, at, &mut pass)?
                    }
                    Published::Journey(j) => {
                        crate::core::publish::entry_pass(task.store(), &defs, j, at, &mut pass)?;
                    }
                    Published::Stop { tenant, journey } => {
                        crate::core::publish::stop_pass(task.store(), tenant, journey, &mut pass)?;
                    }
                }
            }
            let epoch = task.publication(pass, feed_next);
            self.commit(vec![(p, epoch)])?;
            // The pass changed accounts and timers through the store: start the task afresh from it.
            if let Some(task) = self.tasks.remove(&p) {
                self.tasks.insert(p, task.reload()?);
            }
        }
        Ok(())
    }

    /// One transaction: each partition's epoch (outputs, changelog records with the position) and what it
    /// carries besides (the person stage's records), and with `offsets` the consumed positions; then the
    /// local stores. On failure the transaction aborts and the tasks restart from their stores.
    fn transact(&mut self, done: BTreeMap<i32, Processed>, offsets: bool) -> Result<(), EngineError> {
        let first_read = done.values().filter_map(|p| p.read.iter().min()).min().copied();
        let started = Instant::now();
        self.producer.context().delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.producer.context().reset();
        match self.transaction(&done, offsets) {
            Ok(()) => tracing::debug!(took = ?started.elapsed(), partitions = done.len(), "Transaction committed."),
            // A fenced producer or a fatal client error cannot abort: the process stops (another instance
            // holds its transactional id, or the client is unusable).
            Err(e) if e.retry() == crate::Retry::Never => return Err(e),
            Err(e) => {
                metrics::counter!(telemetry::TRANSACTIONS_ABORTED).increment(1);
                tracing::warn!(error = %e, "Transaction failed: aborting and going back to the committed state.");
                self.producer
                    .abort_transaction(REQUEST_TIMEOUT)
                    .map_err(|e| kafka_error("aborting a transaction", e))?;
                self.rewind()?;
                return Ok(());
            }
        }
        metrics::counter!(telemetry::TRANSACTIONS_COMMITTED).increment(1);
        let delivered =
            self.producer.context().delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut tally = Tally::default();
        let mut stage = repartition::StageCounts::default();
        let mut writes = 0usize;
        let mut phase = Instant::now();
        for (p, processed) in done {
            let Some(task) = self.tasks.get_mut(&p) else { continue };
            let next = delivered.get(&p).map_or(0, |o| (o + 1) as u64);
            let next = next.max(task.store().changelog_next()?);
            task.apply(&processed.epoch.delta, next)?;
            writes += processed.epoch.delta.len();
            tally.merge(processed.epoch.tally);
            for (s, n) in stage.iter_mut().zip(processed.stage) {
                *s += n;
            }
            for read in processed.read {
                telemetry::record_latency(read, 1);
            }
        }
        telemetry::record_phase("apply", &mut phase);
        telemetry::record_commit(&tally, writes, started.elapsed(), first_read);
        for (outcome, n) in repartition::Outcome::ALL.iter().zip(stage) {
            if n > 0 {
                metrics::counter!(telemetry::PERSON_STAGE_RECORDS, "outcome" => outcome.as_str()).increment(n);
            }
        }
        Ok(())
    }

    /// Sets the gauges that follow the tasks: timers, consumer lag per partition, watermark lag.
    fn record_gauges(&self) {
        metrics::gauge!(telemetry::TIMERS_PENDING)
            .set(self.tasks.values().map(PartitionTask::timers_pending).sum::<usize>() as f64);
        if self.stage_topics.is_some() {
            metrics::gauge!(telemetry::PERSON_STAGE_PARKED)
                .set(self.tasks.values().map(PartitionTask::parked).sum::<usize>() as f64);
        }
        let ends = self.consumer.context().ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        // The consumer's position steps over transaction markers (the person stage's topics are written in
        // transactions), which the task's next offset does not: the lag is the end minus the further one.
        let positions: HashMap<(String, i32), i64> = self
            .consumer
            .position()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (p, task) in &self.tasks {
            for (topic, next) in self.positions(task.next()) {
                let key = (topic.to_owned(), *p);
                if let Some(end) = ends.get(&key) {
                    let at = positions.get(&key).copied().unwrap_or(next).max(next);
                    let lag = (end - at).max(0);
                    metrics::gauge!(telemetry::CONSUMER_LAG, "topic" => key.0, "partition" => p.to_string())
                        .set(lag as f64);
                }
            }
        }
        if !self.task_cfg.processing_time
            && let Some(slowest) = self.tasks.values().filter_map(|t| t.position.max_ts).min()
        {
            telemetry::record_watermark(slowest.saturating_sub(self.task_cfg.core.allowed_disorder_ns));
        }
    }

    fn transaction(&self, done: &BTreeMap<i32, Processed>, offsets: bool) -> Result<(), EngineError> {
        let topics = &self.cfg.topics;
        let mut phase = Instant::now();
        self.producer.begin_transaction().map_err(|e| kafka_error("beginning a transaction", e))?;
        for (p, processed) in done {
            for o in &processed.epoch.outputs {
                let topic = match o.kind {
                    OutKind::Action => &topics.actions,
                    OutKind::Change => &topics.changes,
                    OutKind::Rejected => &topics.rejected,
                };
                let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(&o.json);
                if let Some(k) = &o.key {
                    rec = rec.key(k.as_str());
                }
                self.send(rec)?;
            }
            if let Some((persons, accounts)) = &self.stage_topics {
                for f in &processed.forwards {
                    let topic = if f.stage == repartition::Stage::Persons { persons } else { accounts };
                    self.send(
                        BaseRecord::<[u8], [u8]>::to(topic).key(&f.key).payload(&f.value).partition(f.partition),
                    )?;
                }
            }
            for (key, value) in processed.epoch.delta.changelog_records() {
                let mut rec = BaseRecord::<[u8], [u8]>::to(&self.changelog).key(&key).partition(*p);
                if let Some(v) = value {
                    rec = rec.payload(v);
                }
                self.send(rec)?;
            }
        }
        telemetry::record_phase("produce", &mut phase);
        if offsets {
            // The batch's outputs and changelog records are in the open transaction; its offsets are not.
            fail::fail_point!(FAIL_BEFORE_OFFSETS);
            let mut tpl = TopicPartitionList::new();
            for (p, processed) in done {
                for (topic, next) in self.positions(processed.next()) {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(next))
                        .map_err(|e| kafka_error("listing offsets", e))?;
                }
            }
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| EngineError::Internal("the input consumer has no group metadata".into()))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &group, REQUEST_TIMEOUT)
                .map_err(|e| kafka_error("adding offsets to the transaction", e))?;
            telemetry::record_phase("offsets", &mut phase);
        }
        // Wait until everything is acknowledged: the changelog offsets the stores record come from the
        // reports. (The commit would flush too, but through rust-rdkafka's flush, which waits in steps of
        // up to 100 ms.) The count of librdkafka settles a moment after the last report.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.producer.context().wait_delivered(REQUEST_TIMEOUT);
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
        }
        telemetry::record_phase("deliver", &mut phase);
        self.producer.commit_transaction(REQUEST_TIMEOUT).map_err(|e| kafka_error("committing a transaction", e))?;
        telemetry::record_phase("commit", &mut phase);
        if let Some(f) = self.producer.context().failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        {
            return Err(EngineError::Invalid(f));
        }
        Ok(())
    }

    /// Serves the rebalances that leaving the group starts (and a join still in flight when a stop came
    /// early) until the consumer has been quiet for half a second, at most 10 s, so that dropping it has none
    /// left: rust-rdkafka's close serves a pending assignment with a call that can wait forever (seen when
    /// SIGTERM came during the first join). Records polled now are not processed: they were not committed.
    fn settle_group(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_event = Instant::now();
        while Instant::now() < deadline && last_event.elapsed() < Duration::from_millis(500) {
            if self.consumer.poll(Duration::from_millis(50)).is_some() {
                last_event = Instant::now();
            }
            let mut events = self.consumer.context().events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !events.is_empty() {
                events.clear();
                last_event = Instant::now();
            }
        }
    }

    /// Which of a task's topics a record came from.
    fn source_of(&self, topic: &str) -> task::Source {
        match &self.stage_topics {
            Some((persons, _)) if persons == topic => task::Source::Persons,
            Some((_, accounts)) if accounts == topic => task::Source::Accounts,
            _ => task::Source::Input,
        }
    }

    /// The topics a task reads, each with the next offset of `next`.
    fn positions(&self, next: task::Next) -> Vec<(&str, i64)> {
        let mut out = vec![(self.cfg.topics.input.as_str(), next.input)];
        if let Some((persons, accounts)) = &self.stage_topics {
            out.push((persons.as_str(), next.persons));
            out.push((accounts.as_str(), next.accounts));
        }
        out
    }

    fn send<K: rdkafka::message::ToBytes + ?Sized>(&self, mut rec: BaseRecord<'_, K, [u8]>) -> Result<(), EngineError> {
        self.producer.context().sending();
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.producer.context().not_sent();
                    return Err(kafka_error("producing", e));
                }
            }
        }
    }

    /// Processing time: fires the due timers of every partition (quiet ones included) in one transaction.
    fn tick(&mut self) -> Result<(), EngineError> {
        let now = crate::wall_clock_ns();
        let defs = Arc::clone(&self.feed.defs);
        let mut done = BTreeMap::new();
        for (p, t) in &mut self.tasks {
            if let Some(out) = t.tick(&defs, now)? {
                done.insert(*p, out);
            }
        }
        if done.is_empty() { Ok(()) } else { self.transact(done, false) }
    }

    /// After an abort: every task restarts from its store and the consumer goes back to its position.
    fn rewind(&mut self) -> Result<(), EngineError> {
        let parts: Vec<i32> = self.tasks.keys().copied().collect();
        for p in parts {
            if let Some(task) = self.tasks.remove(&p) {
                let task = task.reload()?;
                for (topic, next) in self.positions(task.next()) {
                    self.consumer
                        .seek(topic, p, Offset::Offset(next), REQUEST_TIMEOUT)
                        .map_err(|e| kafka_error("seeking back after an abort", e))?;
                }
                self.tasks.insert(p, task);
            }
        }
        Ok(())
    }

    /// Processes each partition's records in its task, partitions in parallel.
    fn process(&mut self, collected: Vec<(i32, InRecord)>) -> Result<BTreeMap<i32, Processed>, EngineError> {
        let mut by_partition: BTreeMap<i32, Vec<InRecord>> = BTreeMap::new();
        for (p, r) in collected {
            by_partition.entry(p).or_default().push(r);
        }
        let defs = Arc::clone(&self.feed.defs);
        let mut work: Vec<(&mut PartitionTask, Vec<InRecord>)> =
            self.tasks.iter_mut().filter_map(|(p, t)| by_partition.remove(p).map(|r| (t, r))).collect();
        let results: Vec<Result<(i32, Processed), EngineError>> = if work.len() == 1 {
            work.drain(..).map(|(t, r)| t.process(&defs, &r).map(|out| (t.partition, out))).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = work
                    .drain(..)
                    .map(|(t, r)| {
                        let defs = &defs;
                        s.spawn(move || t.process(defs, &r).map(|out| (t.partition, out)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| Err(EngineError::Internal("a partition task panicked".into())))
                    })
                    .collect()
            })
        };
        results.into_iter().collect()
    }
}

/// Kafka mode's sink: epochs with nothing else to carry (publications, stops) commit in one transaction of
/// their own, without offsets (their input position does not move).
impl Sink for Service<'_> {
    fn commit(&mut self, epochs: Vec<(i32, Epoch)>) -> Result<(), EngineError> {
        self.transact(epochs.into_iter().map(|(p, epoch)| (p, Processed::of(epoch))).collect(), false)
    }
}

/// What [`ensure_topics`] found.
struct RunTopics {
    /// Partitions of the input (and of the changelog and the stage's topics).
    partitions: usize,
    changelog: String,
    /// The person stage's topics (persons, accounts), with several partitions.
    stage: Option<(String, String)>,
}

/// The topics a run reads and writes, created when missing: the input's partition count, the changelog and,
/// with several partitions, the person stage's two topics. Refuses topics whose partition counts do not fit.
fn ensure_topics<C: rdkafka::consumer::ConsumerContext>(
    cfg: &Config,
    consumer: &BaseConsumer<C>,
) -> Result<RunTopics, EngineError> {
    if kafka::partitions_of(consumer, &cfg.topics.input)?.is_none() {
        kafka::ensure_topics(cfg, &[(cfg.topics.input.clone(), cfg.topics.partitions, false)])?;
    }
    // A topic just created may take a moment to show in the metadata.
    let asked = Instant::now();
    let partitions = loop {
        match kafka::partitions_of(consumer, &cfg.topics.input)? {
            Some(n) => break n,
            None if asked.elapsed() < REQUEST_TIMEOUT => std::thread::sleep(Duration::from_millis(200)),
            None => {
                return Err(EngineError::Invalid(format!(
                    "kafka: the input topic `{}` does not exist and could not be created",
                    cfg.topics.input
                )));
            }
        }
    };
    let changelog = cfg.changelog_topic();
    let stage_topics = (partitions > 1).then(|| (cfg.persons_repartition_topic(), cfg.accounts_repartition_topic()));
    let mut topics = vec![
        (changelog.clone(), partitions, true),
        (cfg.topics.actions.clone(), partitions, false),
        (cfg.topics.changes.clone(), partitions, false),
        (cfg.topics.rejected.clone(), partitions, false),
        (cfg.topics.definitions.clone(), 1, true),
    ];
    if let Some((persons, accounts)) = &stage_topics {
        topics.push((persons.clone(), partitions, false));
        topics.push((accounts.clone(), partitions, false));
    }
    kafka::ensure_topics(cfg, &topics)?;
    let mut partitioned = vec![(&changelog, "the changelog keeps one partition per input partition")];
    if let Some((persons, accounts)) = &stage_topics {
        let why = "a task reads the same partition number of the input and of the person stage's topics";
        partitioned.extend([(persons, why), (accounts, why)]);
    }
    for (topic, why) in partitioned {
        let n = kafka::partitions_of(consumer, topic)?.unwrap_or(0);
        let fits = if topic == &changelog { n >= partitions } else { n == partitions };
        if !fits {
            return Err(EngineError::Invalid(format!(
                "kafka: `{topic}` has {n} partitions but the input has {partitions}: they must match ({why})"
            )));
        }
    }
    Ok(RunTopics { partitions, changelog, stage: stage_topics })
}

/// Runs the service until `stop` is set (SIGTERM/SIGINT): the batch in flight commits, then it returns.
///
/// # Errors
/// A broker or state failure that a restart must recover from (the process should exit non-zero), or a
/// fenced instance (another one took this `kafka.instance_id`).
pub fn run(cfg: &Config, stop: Arc<AtomicBool>, admin: &Admin) -> Result<(), EngineError> {
    let consumer = kafka::input_consumer(cfg)?;
    let RunTopics { partitions, changelog, stage: stage_topics } = ensure_topics(cfg, &consumer)?;
    let producer = kafka::producer(cfg)?;
    let feed = Feed::open(cfg)?;
    tracing::info!(
        journeys = feed.defs.all().count(),
        templates = feed.defs.all_templates().count(),
        "Definitions read from the definitions topic."
    );
    admin.set_definitions(Arc::clone(&feed.defs));
    let mut subscribed = vec![cfg.topics.input.as_str()];
    if let Some((persons, accounts)) = &stage_topics {
        subscribed.extend([persons.as_str(), accounts.as_str()]);
    }
    consumer.subscribe(&subscribed).map_err(|e| kafka_error("subscribing", e))?;
    let mut svc = Service {
        cfg,
        task_cfg: task_config(cfg, partitions)?,
        consumer,
        producer,
        restorer: kafka::reader(cfg)?,
        changelog,
        stage_topics,
        feed,
        tasks: BTreeMap::new(),
        admin: admin.clone(),
    };
    let mut last_definitions = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let deadline = Instant::now() + cfg.commit.interval;
        let mut collected: Vec<(i32, InRecord)> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline || collected.len() as u64 >= cfg.commit.max_records || stop.load(Ordering::Relaxed) {
                break;
            }
            // Whole milliseconds, rounded up: rust-rdkafka rounds a timeout down, and a poll of less than a
            // millisecond would spin.
            let wait = Duration::from_millis(((deadline - now).as_micros().div_ceil(1000) as u64).min(100));
            let polled = svc.consumer.poll(wait).map(|r| {
                r.map(|m| {
                    let payload = m.payload().map(<[u8]>::to_vec);
                    let source = svc.source_of(m.topic());
                    (m.partition(), InRecord { source, offset: m.offset(), payload, read_at: Instant::now() })
                })
            });
            // Rebalances ran inside that poll, before the record it returned.
            svc.rebalance(&mut collected)?;
            match polled {
                Some(Ok(rec)) => collected.push(rec),
                Some(Err(e)) => tracing::warn!(error = %e, "Consumer error."),
                None => {}
            }
        }
        if last_definitions.elapsed() >= DEFINITIONS_POLL {
            let before = Arc::clone(&svc.feed.defs);
            svc.feed.catch_up()?;
            if !Arc::ptr_eq(&before, &svc.feed.defs) {
                svc.admin.set_definitions(Arc::clone(&svc.feed.defs));
            }
            last_definitions = Instant::now();
        }
        svc.publish_pending()?;
        if !collected.is_empty() {
            let done = svc.process(collected)?;
            svc.transact(done, true)?;
        }
        if svc.task_cfg.processing_time {
            svc.tick()?;
        }
        svc.record_gauges();
    }
    tracing::info!("Stopping: every batch is committed.");
    admin.set_ready(false);
    svc.consumer.unsubscribe();
    svc.settle_group();
    Ok(())
}

#[cfg(test)]
mod failpoint_tests {
    use super::configure_failpoints;

    #[test]
    fn fail_points_are_set_from_the_variable_and_bad_entries_are_refused_with_their_text() {
        let names = configure_failpoints(" unit-test-a=return ; unit-test-b=50%sleep(1);").expect("valid");
        assert_eq!(names, ["unit-test-a", "unit-test-b"]);
        assert!(fail::list().iter().any(|(name, actions)| name == "unit-test-a" && actions == "return"));
        let e = configure_failpoints("unit-test-c").expect_err("no actions").to_string();
        assert!(e.contains("`unit-test-c` is not name=actions"), "{e}");
        let e = configure_failpoints("unit-test-d=sleepy(5)").expect_err("no such action").to_string();
        assert!(e.contains("`unit-test-d=sleepy(5)`"), "{e}");
        fail::remove("unit-test-a");
        fail::remove("unit-test-b");
    }
}
