//! The Kafka sink: one transaction holds each partition's epoch (outputs to their topics, the state delta
//! with the position as changelog records), the person stage's records and, for input, the consumed
//! offsets; after its commit each task applies its delta to its store (the core's protocol,
//! `crate::core::epoch`).
//!
//! It owns producing, the transaction's steps and what a failure does (abort and rewind, or stop: the
//! decision is `EngineError::retry`'s). It never processes records.

use super::Service;
use super::kafka::{REQUEST_TIMEOUT, kafka_error};
use super::repartition;
use super::task::Processed;
use crate::EngineError;
use crate::core::epoch::{Epoch, Sink};
use crate::core::outputs::OutKind;
use crate::telemetry::{self, Tally};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The fail point inside an input batch's transaction: its outputs and changelog records are produced, its
/// offsets not yet added (tests set it with `CARAVAN_FAILPOINTS`, e.g. to sleep there and be killed).
pub const FAIL_BEFORE_OFFSETS: &str = "transaction-before-offsets";

impl Service<'_> {
    /// One transaction: each partition's epoch (outputs, changelog records with the position) and what it
    /// carries besides (the person stage's records), and with `offsets` the consumed positions; then the
    /// local stores. On failure the transaction aborts and the tasks restart from their stores.
    pub(super) fn transact(&mut self, done: BTreeMap<i32, Processed>, offsets: bool) -> Result<(), EngineError> {
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
}

/// Kafka mode's sink: epochs with nothing else to carry (publications, stops) commit in one transaction of
/// their own, without offsets (their input position does not move).
impl Sink for Service<'_> {
    fn commit(&mut self, epochs: Vec<(i32, Epoch)>) -> Result<(), EngineError> {
        self.transact(epochs.into_iter().map(|(p, epoch)| (p, Processed::of(epoch))).collect(), false)
    }
}
