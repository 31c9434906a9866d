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
//!
//! Modules: [`topics`] (created and checked at start), [`restore`] (rebalances, a partition's store from its
//! changelog), [`transaction`] (the sink: one transaction, then the local apply), `task` (a partition's
//! records through the core), `repartition`, `hold` and `task::claims` (the person stage and claims),
//! [`definitions`] (the definitions topic), `kafka` (clients and their callbacks).

pub mod definitions;
mod hold;
mod kafka;
mod repartition;
mod restore;
#[cfg(test)]
mod stage_tests;
mod task;
mod topics;
mod transaction;

pub use transaction::FAIL_BEFORE_OFFSETS;

use crate::EngineError;
use crate::admin::Admin;
use crate::config::{Config, InputFormat, TimeMode};
use crate::core::cache::Capacity;
use crate::core::epoch::Sink;
use crate::telemetry;
use caravan_schemas::Id;
use caravan_schemas::time::Timestamp;
use definitions::{Feed, Published};
use kafka::{REQUEST_TIMEOUT, kafka_error};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::ThreadedProducer;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use task::{InRecord, PartitionTask, Processed, TaskConfig};
use topics::{RunTopics, ensure_topics};

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

fn task_config(cfg: &Config, partitions: usize) -> Result<TaskConfig, EngineError> {
    Ok(TaskConfig {
        input_topic: cfg.topics.input.clone(),
        core: crate::core::Settings {
            rules: crate::core::decode::EdgeRules {
                limits: cfg.input.limits()?,
                tenants: Arc::new(cfg.tenants.iter().map(|t| t.id.clone()).collect()),
                xdm_tenant: cfg.input.tenant.as_deref().filter(|_| cfg.input.format == InputFormat::Xdm).map(Id::from),
            },
            allowed_disorder_ns: cfg.time.allowed_disorder_ns(),
            dedup_window: cfg.input.dedup_window,
            dedup_max_age_ns: cfg.input.dedup_max_age_ns(),
        },
        cache: Capacity::share(
            Capacity { accounts: cfg.state.cache_accounts, index: cfg.state.cache_persons },
            partitions,
            partitions,
        ),
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

/// Runs the service until `stop` is set (SIGTERM/SIGINT): the batch in flight commits, then it returns.
///
/// # Errors
/// A broker or state failure that a restart must recover from (the process should exit non-zero), or a
/// fenced instance (another one took this `kafka.instance_id`).
pub fn run(cfg: &Config, stop: Arc<AtomicBool>, admin: &Admin) -> Result<(), EngineError> {
    kafka::check_features(cfg)?;
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
                Some(Err(e)) => kafka::count_error("input", &e, "poll"),
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
