//! A partition task: everything Kafka mode keeps for one input partition, and the processing of its records.
//!
//! It owns the partition's local RocksDB (its own folder, so that a partition moves or is rebuilt as a unit),
//! an account cache in front of it, the person and opportunity index, the de-duplication window, the
//! partition's watermark (SPEC §3.2: each input partition carries its own) and its timers. Processing a batch
//! is pure computation on that: it returns the outputs and the state delta, and changes nothing durable. The
//! delta reaches RocksDB only through [`PartitionTask::apply`], after the transaction that carried it to the
//! changelog has committed; after an abort the task is dropped and opened again from the store.
//!
//! It routes and applies events exactly as a replay does (the same routing decisions, operators, timer pass
//! after every record and de-duplication rule), so a partition's outputs equal a replay's of the same records.
//! With several partitions it also plays its part of the person stage ([`super::repartition`]): it reads the
//! same partition number of the two internal topics, tells the stage where its persons live, sends it the
//! records about persons it does not know, applies the records the stage resolved to its accounts, and runs
//! the stage for the persons that hash to it.

use super::repartition::{AccountMessage, Forward, Origin, Outcome, PersonStage, StageCounts, StageMessage};
use crate::EngineError;
use crate::dedup::{DedupWindow, EpochLog};
use crate::outputs::{self, OutKind, OutRecord};
use crate::replay::Queued;
use crate::replay::keys;
use crate::replay::reader::{Decoded, EdgeRules, Parsed, decode_record};
use crate::routing;
use crate::telemetry::Tally;
use caravan_operators::account::{
    AccountState, Cause, Definitions, Effects, Moved, TimerHandle, apply_event, fire_timer,
};
use caravan_schemas::Id;
use caravan_schemas::input::RejectReason;
use caravan_schemas::output::{Entity, RejectedRecord, SourcePosition};
use caravan_schemas::state::{IndexRecord, RouteRecord, TimerRecord};
use caravan_schemas::time::Timestamp;
use caravan_state::{Delta, Store, StoreOptions};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

/// `meta` name of a partition's progress in its store (and so on its changelog).
const PROGRESS: &str = "partition";

/// What a partition has committed: travels on the changelog with the state it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The next input offset to process.
    pub(crate) input_next: i64,
    /// Largest applied event time (the watermark's base).
    pub(crate) max_ts: Option<i64>,
    /// Commits so far (numbers the de-duplication epochs).
    pub(crate) epoch: u64,
    /// The next definitions-topic offset whose publication this partition has not applied.
    pub(crate) definitions_next: i64,
    /// The next offsets to process of the partition's persons and accounts topics (the person stage).
    pub(crate) persons_next: i64,
    pub(crate) accounts_next: i64,
    /// The sequence number of the last record applied: an input record's offset + 1, or one more than the
    /// record before for a record the person stage forwarded (they order timers and people's joining).
    pub(crate) seq: u64,
    /// Largest event time the partition's person stage has seen (its watermark's base).
    pub(crate) stage_max_ts: Option<i64>,
}

/// [`Progress`] as stores written before the person stage hold it.
#[derive(Deserialize)]
struct ProgressV1 {
    input_next: i64,
    max_ts: Option<i64>,
    epoch: u64,
    definitions_next: i64,
}

impl Progress {
    /// The progress a store has committed (the default for a new one).
    pub(crate) fn read(store: &Store) -> Result<Progress, EngineError> {
        let Some(bytes) = store.meta(PROGRESS)? else { return Ok(Progress::default()) };
        match caravan_schemas::state::decode::<Progress>(&bytes) {
            Ok(p) => Ok(p),
            Err(e) => match caravan_schemas::state::decode::<ProgressV1>(&bytes) {
                Ok(v1) => Ok(Progress {
                    input_next: v1.input_next,
                    max_ts: v1.max_ts,
                    epoch: v1.epoch,
                    definitions_next: v1.definitions_next,
                    seq: v1.input_next.max(0) as u64,
                    ..Progress::default()
                }),
                Err(_) => Err(EngineError::Internal(e.to_string())),
            },
        }
    }

    /// Where the partition's topics resume.
    pub(crate) fn next(&self) -> Next {
        Next { input: self.input_next, persons: self.persons_next, accounts: self.accounts_next }
    }
}

/// The next offset to read of each topic of a partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Next {
    pub(crate) input: i64,
    pub(crate) persons: i64,
    pub(crate) accounts: i64,
}

impl Next {
    /// The next offset of the topic a record came from.
    fn of(&mut self, source: Source) -> &mut i64 {
        match source {
            Source::Input => &mut self.input,
            Source::Persons => &mut self.persons,
            Source::Accounts => &mut self.accounts,
        }
    }
}

/// The topic a record of the partition came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Input,
    Persons,
    Accounts,
}

/// One record of the partition.
pub(crate) struct InRecord {
    pub(crate) source: Source,
    pub(crate) offset: i64,
    pub(crate) payload: Option<Vec<u8>>,
    /// When it was polled (the start of its end-to-end latency).
    pub(crate) read_at: std::time::Instant,
}

/// What processing a batch produced, before it commits.
#[derive(Default)]
pub(crate) struct Processed {
    pub(crate) outputs: Vec<OutRecord>,
    pub(crate) delta: Delta,
    /// The next offsets after the batch.
    pub(crate) next: Next,
    /// Records for the internal topics of the person stage.
    pub(crate) forwards: Vec<Forward>,
    /// What the batch counted.
    pub(crate) tally: Tally,
    /// What the person stage did, by [`Outcome`].
    pub(crate) stage: StageCounts,
    /// When each of its input records was read.
    pub(crate) read: Vec<std::time::Instant>,
}

impl Processed {
    /// Nothing done yet, resuming at `next`.
    pub(crate) fn at(next: Next) -> Processed {
        Processed { next, ..Processed::default() }
    }

    /// Adds a rejected record, named by where it was read.
    pub(crate) fn reject(&mut self, reason: RejectReason, detail: String, raw: &[u8], origin: &Origin) {
        tracing::debug!(reason = reason.as_str(), %detail, partition = origin.partition, offset = origin.offset,
            "Record rejected.");
        let source =
            SourcePosition::Kafka { topic: origin.topic.clone(), partition: origin.partition, offset: origin.offset };
        let rec = RejectedRecord::new(reason, detail, raw, source);
        // A rejected record holds only strings and numbers: it always serializes.
        if let Ok(json) = serde_json::to_vec(&rec) {
            self.outputs.push(OutRecord { kind: OutKind::Rejected, key: None, json });
        }
        self.tally.rejected(reason);
    }
}

/// What a batch has changed so far, besides its outputs.
struct Batch {
    out: Processed,
    /// Accounts changed.
    dirty: Vec<(Id, Id)>,
    /// Index entries changed.
    index_dirty: Vec<(u128, Entity, Id, Id)>,
    /// Event ids applied, with their event times (the de-duplication window's epoch).
    applied_ids: Vec<(u128, i64)>,
    /// In processing time, the clock read once for the batch: waits and timeouts count from it.
    clock: Option<i64>,
}

/// Settings of a task.
#[derive(Clone)]
pub(crate) struct TaskConfig {
    pub(crate) input_topic: String,
    pub(crate) rules: EdgeRules,
    pub(crate) allowed_disorder_ns: i64,
    pub(crate) dedup_window: usize,
    /// De-duplication's age bound in event-time nanoseconds (0: none).
    pub(crate) dedup_max_age_ns: i64,
    pub(crate) cache_accounts: usize,
    /// Person and opportunity index entries kept in memory.
    pub(crate) cache_persons: usize,
    pub(crate) store: StoreOptions,
    /// Processing time: the wall clock, not the watermark, drives timers and stamps causes.
    pub(crate) processing_time: bool,
    /// Input partitions; with more than one, the person stage runs.
    pub(crate) partitions: usize,
    /// How long a record about an unknown person waits at the person stage, ns.
    pub(crate) unknown_person_wait_ns: i64,
}

pub(crate) struct PartitionTask {
    pub(crate) partition: i32,
    cfg: TaskConfig,
    store: Arc<Store>,
    pub(crate) progress: Progress,
    accounts: FxHashMap<(Id, Id), AccountState>,
    /// Index entries read or written since the cache was last cleared, by [`keys::index_key`].
    index: FxHashMap<u128, Option<IndexRecord>>,
    dedup: DedupWindow,
    dedup_log: EpochLog,
    timers: BinaryHeap<Reverse<Queued>>,
    effects: Effects,
    /// The last record applied, its tenant and event id (the cause a processing-time tick names).
    last_event: (Id, Id),
    /// The person stage's part on this partition (with several partitions).
    stage: Option<PersonStage>,
}

/// Drops entries of a cache grown past `capacity`, down to three quarters of it.
pub(crate) fn trim<K, V>(map: &mut FxHashMap<K, V>, capacity: usize) {
    if map.len() > capacity {
        let mut excess = map.len() - capacity / 4 * 3;
        map.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
}

/// The store folder of a partition.
pub(crate) fn partition_dir(state_dir: &Path, topic: &str, partition: i32) -> std::path::PathBuf {
    state_dir.join(format!("{topic}-{partition}"))
}

impl PartitionTask {
    /// Opens a partition's store as it stands (restore it from the changelog first).
    ///
    /// # Errors
    /// A store that cannot be opened or read.
    pub(crate) fn open(store: Arc<Store>, partition: i32, cfg: TaskConfig) -> Result<PartitionTask, EngineError> {
        let progress = Progress::read(&store)
            .map_err(|e| EngineError::Internal(format!("partition {partition}: stored progress: {e}")))?;
        let (dedup, dedup_log) =
            crate::dedup::restore(&store, cfg.dedup_window, cfg.dedup_max_age_ns, progress.max_ts)?;
        let timers = store.timers()?.into_iter().map(|t| Reverse(Queued::stored(t))).collect();
        let stage = if cfg.partitions > 1 { Some(PersonStage::open(&store)?) } else { None };
        Ok(PartitionTask {
            partition,
            cfg,
            store,
            progress,
            accounts: FxHashMap::default(),
            index: FxHashMap::default(),
            dedup,
            dedup_log,
            timers,
            effects: Effects::default(),
            last_event: (Id::default(), Id::default()),
            stage,
        })
    }

    /// The task's store (for publication passes and queries).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn account(&mut self, tenant: &str, account: &str) -> Result<&mut AccountState, EngineError> {
        let key = (Id::from(tenant), Id::from(account));
        if !self.accounts.contains_key(&key) {
            let state = match self.store.load_account(tenant, account)? {
                Some(s) => AccountState::from_records(tenant, account, s.record, s.persons, s.opportunities),
                None => AccountState::new(tenant, account),
            };
            self.accounts.insert(key.clone(), state);
        }
        self.accounts.get_mut(&key).ok_or_else(|| EngineError::Internal("account cache lost an entry".into()))
    }

    fn lookup(&mut self, entity: Entity, tenant: &str, id: &str) -> Result<Option<IndexRecord>, EngineError> {
        let key = keys::index_key(entity, tenant, id);
        if let Some(known) = self.index.get(&key) {
            return Ok(known.clone());
        }
        let known = match entity {
            Entity::Opportunity => self.store.opportunity_index(tenant, id)?,
            _ => self.store.person_index(tenant, id)?,
        };
        self.index.insert(key, known.clone());
        Ok(known)
    }

    /// Where an input record of the partition was read.
    fn origin(&self, offset: i64) -> Origin {
        Origin { topic: self.cfg.input_topic.clone(), partition: self.partition, offset }
    }

    /// Moves the step's effects into the outputs and the timer queue; notes the changed records.
    fn take_effects(&mut self, tenant: &str, account: &str, out: &mut Processed, dirty: &mut Vec<(Id, Id)>) {
        let timers = &mut self.timers;
        crate::replay::take_timers(&mut self.effects, &mut out.delta, tenant, account, |h| {
            timers.push(Reverse(Queued::armed(h, tenant, account, keys::account_key(tenant, account))));
        });
        outputs::take(&mut self.effects, &mut out.outputs, &mut out.tally);
        dirty.push((Id::from(tenant), Id::from(account)));
    }

    /// Fires every timer due at `watermark`, in (due, arming) order, after record `seq`.
    fn timer_pass(
        &mut self,
        defs: &Definitions,
        watermark: i64,
        seq: u64,
        cause: (&str, &str),
        out: &mut Processed,
        dirty: &mut Vec<(Id, Id)>,
    ) -> Result<(), EngineError> {
        while self.timers.peek().is_some_and(|Reverse(t)| t.due <= watermark) {
            let Some(Reverse(q)) = self.timers.pop() else { break };
            let timer = TimerRecord { due: q.due, arm: q.arm };
            let handle = TimerHandle { journey_id: q.journey_id, instance: q.instance, slot: q.slot, timer };
            let cause_id = crate::replay::timer_cause_id(cause.0, cause.1, &q.tenant);
            let cause = Cause::timer(seq, &handle.timer, cause_id);
            self.effects.clear();
            let mut effects = std::mem::take(&mut self.effects);
            let acct = self.account(&q.tenant, &q.account_id)?;
            let fired = fire_timer(defs, acct, &handle, &cause, &mut effects);
            self.effects = effects;
            if fired {
                out.delta.delete_timer(&q.tenant, &q.account_id, (&handle.journey_id, handle.instance, handle.slot));
                self.take_effects(&q.tenant, &q.account_id, out, dirty);
            }
        }
        Ok(())
    }

    /// Processes a batch of the partition's records (of its three topics, in the order read). Nothing is
    /// durable until [`PartitionTask::apply`]; on an abort the task must be dropped.
    ///
    /// # Errors
    /// A state read failure.
    pub(crate) fn process(&mut self, defs: &Definitions, records: &[InRecord]) -> Result<Processed, EngineError> {
        let _span = tracing::debug_span!("batch", partition = self.partition, records = records.len()).entered();
        let mut b = self.batch();
        let mut applied_before = 0u64;
        for rec in records {
            // A record below the task's position was applied already: the consumer started from offsets
            // older than the restored state (see `Service::catch_up_with_offsets`).
            let next = b.out.next.of(rec.source);
            if rec.offset < *next {
                applied_before += 1;
                continue;
            }
            *next = rec.offset + 1;
            b.out.read.push(rec.read_at);
            let raw = rec.payload.as_deref().unwrap_or_default();
            match rec.source {
                Source::Input => {
                    let origin = self.origin(rec.offset);
                    self.input_record(defs, raw, &origin, false, &mut b)?;
                }
                Source::Persons => self.stage_message(raw, rec.offset, &mut b)?,
                Source::Accounts => self.account_message(defs, raw, rec.offset, &mut b)?,
            }
        }
        if applied_before > 0 {
            tracing::warn!(
                partition = self.partition,
                records = applied_before,
                "Skipped records the partition's state has applied already."
            );
        }
        Ok(self.finish(b))
    }

    fn batch(&self) -> Batch {
        Batch {
            out: Processed::at(self.progress.next()),
            dirty: Vec::new(),
            index_dirty: Vec::new(),
            applied_ids: Vec::new(),
            clock: self.cfg.processing_time.then(crate::wall_clock_ns),
        }
    }

    /// Routes and applies one input record, or one the person stage forwarded (`forwarded`: it was counted
    /// for de-duplication where it was read, and it is not sent to the stage again).
    fn input_record(
        &mut self,
        defs: &Definitions,
        raw: &[u8],
        origin: &Origin,
        forwarded: bool,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        let decoded = match decode_record(raw, &self.cfg.rules) {
            Parsed::Blank => return Ok(()),
            Parsed::Rejected(r, raw) => {
                b.out.reject(r.reason, r.detail, &raw, origin);
                return Ok(());
            }
            Parsed::Event(d) => d,
        };
        let Decoded { event, dedup: hash, .. } = decoded;
        let tenant = event.tenant.as_str();
        if !forwarded && !self.dedup.insert(hash, event.ts.0) {
            b.out.tally.duplicate(tenant);
            return Ok(());
        }
        let indexed = routing::indexed(&event);
        let known = match indexed {
            Some((entity, id)) => self.lookup(entity, tenant, id)?,
            None => None,
        };
        let route = routing::route(&event, known.as_ref());
        // An event that names no account, about a person or an opportunity this partition does not hold:
        // another partition may, and the stage finds out.
        if let Some((entity, id)) = indexed.filter(|_| route.account.is_none() && !forwarded && self.stage.is_some()) {
            self.dedup.settle();
            b.applied_ids.push((hash, event.ts.0));
            let lookup = StageMessage::Lookup {
                tenant: event.tenant.clone(),
                entity,
                id: Id::from(id),
                ts: event.ts.0,
                origin: origin.clone(),
                raw: raw.to_vec(),
                needs_account: route.unroutable,
            };
            b.out.forwards.push(lookup.forward(self.cfg.partitions));
            b.out.stage[Outcome::Looked as usize] += 1;
            return Ok(());
        }
        if route.unroutable {
            if !forwarded {
                self.dedup.forget_last(hash);
            }
            let person = event.body.person_id().unwrap_or_default();
            let detail = format!("person `{person}` has no known account and the event names none");
            b.out.reject(RejectReason::UnknownPersonAccount, detail, raw, origin);
            return Ok(());
        }
        let mut attach: Option<(Moved, Id)> = None;
        if let (Some(from), Some((entity, id))) = (&route.moving_from, indexed) {
            let old = self.account(tenant, from)?;
            match old.detach(entity, id) {
                Some(moved) => {
                    match entity {
                        Entity::Opportunity => b.out.delta.delete_opportunity(tenant, from, id),
                        _ => b.out.delta.delete_person(tenant, from, id),
                    }
                    b.dirty.push((Id::from(tenant), from.clone()));
                    attach = Some((moved, from.clone()));
                }
                None => tracing::warn!(
                    id,
                    account = from.as_str(),
                    "The index named an account that does not hold the record."
                ),
            }
        }
        if let (Some(update), Some((entity, id))) = (route.index_update, indexed)
            && self.set_index(entity, tenant, id, update.clone(), b)
            && self.stage.is_some()
        {
            // The stage learns where the person or the opportunity lives now.
            let route =
                RouteRecord { account_id: update.account_id, partition: self.partition, present: update.present };
            let (tenant, id) = (event.tenant.clone(), Id::from(id));
            let msg = StageMessage::Route { tenant, entity, id, route, ts: event.ts.0 };
            b.out.forwards.push(msg.forward(self.cfg.partitions));
        }
        if !forwarded {
            self.dedup.settle();
            b.applied_ids.push((hash, event.ts.0));
        }
        b.out.tally.applied(tenant, &event.body);
        let ts = event.ts.0;
        if b.clock.is_none()
            && self.progress.max_ts.is_some_and(|m| ts < m.saturating_sub(self.cfg.allowed_disorder_ns))
        {
            b.out.tally.late(tenant);
        }
        let max_ts = self.progress.max_ts.map_or(ts, |m| m.max(ts));
        self.progress.max_ts = Some(max_ts);
        let own_offset = if forwarded { 0 } else { (origin.offset + 1) as u64 };
        self.progress.seq = (self.progress.seq + 1).max(own_offset);
        let seq = self.progress.seq;
        if let Some(account) = &route.account {
            let cause = Cause::record(seq, b.clock.map_or(event.ts, Timestamp), &event.event_id);
            self.effects.clear();
            let mut effects = std::mem::take(&mut self.effects);
            let acct = self.account(tenant, account)?;
            apply_event(defs, acct, &event, attach, &cause, &mut effects);
            self.effects = effects;
            self.take_effects(tenant, account, &mut b.out, &mut b.dirty);
        }
        let watermark = b.clock.unwrap_or_else(|| max_ts.saturating_sub(self.cfg.allowed_disorder_ns));
        self.timer_pass(defs, watermark, seq, (tenant, &event.event_id), &mut b.out, &mut b.dirty)?;
        self.last_event = (Id::from(tenant), Id::from(event.event_id.as_str()));
        Ok(())
    }

    /// Writes an index entry if it changes; true when it did.
    fn set_index(&mut self, entity: Entity, tenant: &str, id: &str, update: IndexRecord, b: &mut Batch) -> bool {
        let key = keys::index_key(entity, tenant, id);
        if self.index.get(&key).and_then(Option::as_ref) == Some(&update) {
            return false;
        }
        self.index.insert(key, Some(update));
        b.index_dirty.push((key, entity, Id::from(tenant), Id::from(id)));
        true
    }

    /// An internal record this version cannot read (written by another version, or damaged): the service
    /// stops rather than drop it; an operator runs the version that wrote it until the topic is drained.
    fn unreadable(&self, topic: &str, offset: i64, e: &caravan_schemas::state::CodecError) -> EngineError {
        EngineError::Internal(format!(
            "partition {}: the person stage's {topic} record at offset {offset} cannot be read ({e}); it was \
             written by another version of Caravan, or damaged",
            self.partition
        ))
    }

    /// A record of the persons topic: this partition's part of the person stage.
    fn stage_message(&mut self, raw: &[u8], offset: i64, b: &mut Batch) -> Result<(), EngineError> {
        let Some(stage) = self.stage.as_mut() else { return Ok(()) };
        let msg = match caravan_schemas::state::decode::<StageMessage>(raw) {
            Ok(m) => m,
            Err(e) => return Err(self.unreadable("persons", offset, &e)),
        };
        let ts = match &msg {
            StageMessage::Route { ts, .. } | StageMessage::Lookup { ts, .. } => *ts,
        };
        let max_ts = self.progress.stage_max_ts.map_or(ts, |m| m.max(ts));
        self.progress.stage_max_ts = Some(max_ts);
        // A record waits until this time passes: its event time (by the stage's watermark), or the clock.
        let now = b.clock.unwrap_or_else(|| max_ts.saturating_sub(self.cfg.allowed_disorder_ns));
        let parked_from = b.clock.unwrap_or(ts);
        stage.handle(&self.store, msg, offset as u64, parked_from + self.cfg.unknown_person_wait_ns, &mut b.out)?;
        stage.expire(now, &mut b.out);
        Ok(())
    }

    /// A record of the accounts topic: a record the person stage resolved to one of this partition's
    /// accounts, or a person or an opportunity to let go of.
    fn account_message(
        &mut self,
        defs: &Definitions,
        raw: &[u8],
        offset: i64,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        match caravan_schemas::state::decode::<AccountMessage>(raw) {
            Ok(AccountMessage::Forward { origin, raw }) => self.input_record(defs, &raw, &origin, true, b),
            Ok(AccountMessage::Detach { tenant, entity, id, account }) => {
                let known = self.lookup(entity, &tenant, &id)?;
                if known.is_some_and(|k| k.present && k.account_id == account) {
                    if self.account(&tenant, &account)?.detach(entity, &id).is_some() {
                        match entity {
                            Entity::Opportunity => b.out.delta.delete_opportunity(&tenant, &account, &id),
                            _ => b.out.delta.delete_person(&tenant, &account, &id),
                        }
                        b.dirty.push((tenant.clone(), account.clone()));
                    }
                    let gone = IndexRecord { account_id: account, present: false };
                    self.set_index(entity, &tenant, &id, gone, b);
                }
                Ok(())
            }
            Err(e) => Err(self.unreadable("accounts", offset, &e)),
        }
    }

    /// Processing time: fires the timers due by `now` on a partition with no input, and rejects the records
    /// whose wait at the person stage is over, in a transaction of their own; `None` when nothing is due.
    ///
    /// # Errors
    /// A state read failure.
    pub(crate) fn tick(&mut self, defs: &Definitions, now: i64) -> Result<Option<Processed>, EngineError> {
        let timers_due = self.timers.peek().is_some_and(|Reverse(t)| t.due <= now);
        let parked_due = self.stage.as_ref().is_some_and(|s| s.due(now));
        if !timers_due && !parked_due {
            return Ok(None);
        }
        let mut b = self.batch();
        if let Some(stage) = self.stage.as_mut() {
            stage.expire(now, &mut b.out);
        }
        let seq = self.progress.seq;
        let (tenant, event_id) = self.last_event.clone();
        self.timer_pass(defs, now, seq, (&tenant, &event_id), &mut b.out, &mut b.dirty)?;
        Ok(Some(self.finish(b)))
    }

    /// The state delta of a batch: every account changed, as it stands now; index entries; the window; the
    /// partition's progress.
    fn finish(&mut self, b: Batch) -> Processed {
        let Batch { mut out, mut dirty, mut index_dirty, applied_ids, .. } = b;
        dirty.sort_unstable();
        dirty.dedup();
        for (tenant, account) in dirty {
            if let Some(state) = self.accounts.get_mut(&(tenant.clone(), account.clone())) {
                crate::replay::write_dirty(&mut out.delta, &tenant, &account, state);
            }
        }
        index_dirty.sort_unstable_by_key(|d| d.0);
        index_dirty.dedup_by_key(|d| d.0);
        for (key, entity, tenant, id) in index_dirty {
            if let Some(Some(rec)) = self.index.get(&key) {
                match entity {
                    Entity::Opportunity => out.delta.put_opportunity_index(&tenant, &id, rec),
                    _ => out.delta.put_person_index(&tenant, &id, rec),
                }
            }
        }
        self.progress.epoch += 1;
        self.progress.input_next = out.next.input;
        self.progress.persons_next = out.next.persons;
        self.progress.accounts_next = out.next.accounts;
        self.dedup_log.record(&mut out.delta, self.progress.epoch, &applied_ids, self.progress.max_ts);
        out.delta.put_meta(PROGRESS, caravan_schemas::state::encode(&self.progress));
        out
    }

    /// Writes a committed delta to the local store with the changelog offset it reaches, and keeps the
    /// caches within bounds.
    ///
    /// # Errors
    /// A store write failure (the task must then be dropped).
    pub(crate) fn apply(&mut self, delta: &Delta, changelog_next: u64) -> Result<(), EngineError> {
        self.store.apply_changelog(delta, changelog_next)?;
        // Everything is committed between batches: any entry may go, it only costs a read later.
        trim(&mut self.accounts, self.cfg.cache_accounts);
        trim(&mut self.index, self.cfg.cache_persons);
        if let Some(stage) = self.stage.as_mut() {
            stage.trim(self.cfg.cache_persons);
        }
        Ok(())
    }

    /// Re-reads the timers from the store (after a publication pass armed or cancelled some).
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn reload(self) -> Result<PartitionTask, EngineError> {
        let PartitionTask { partition, cfg, store, .. } = self;
        PartitionTask::open(store, partition, cfg)
    }

    /// Records the definitions-topic offset whose publications this partition has now applied.
    pub(crate) fn progress_delta(&mut self, definitions_next: i64) -> Delta {
        self.progress.definitions_next = definitions_next;
        self.progress.epoch += 1;
        let mut delta = Delta::default();
        delta.put_meta(PROGRESS, caravan_schemas::state::encode(&self.progress));
        delta
    }

    /// Records waiting at the person stage (for metrics).
    pub(crate) fn parked(&self) -> usize {
        self.stage.as_ref().map_or(0, PersonStage::parked_len)
    }

    /// Pending timers (for metrics).
    pub(crate) fn timers_pending(&self) -> usize {
        self.timers.len()
    }
}
