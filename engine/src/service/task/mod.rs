//! A partition task: everything Kafka mode keeps for one input partition, and the processing of its records.
//!
//! It owns the partition's local RocksDB (its own folder, so that a partition moves or is rebuilt as a unit)
//! and drives the partition core over it ([`crate::core`]: de-duplication, the index, the partition's
//! watermark (SPEC §3.2: each input partition carries its own), the account cache and timers). Processing a batch
//! is pure computation on that: it returns the outputs and the state delta, and changes nothing durable. The
//! delta reaches RocksDB only through [`PartitionTask::apply`], after the transaction that carried it to the
//! changelog has committed; after an abort the task is dropped and opened again from the store.
//!
//! It routes and applies events with the same core as a replay (the same admission, operators, timer pass
//! after every record and de-duplication rule), so a partition's outputs equal a replay's of the same records.
//! With several partitions it also plays its part of the person stage ([`super::repartition`]): it reads the
//! same partition number of the two internal topics, tells the stage where its persons live, sends it the
//! records about persons it does not know, applies the records the stage resolved to its accounts, and runs
//! the stage for the persons that hash to it.

mod claims;

use super::hold::{Holds, moved};
use super::repartition::{AccountMessage, Forward, Origin, Outcome, PersonStage, StageCounts, StageMessage};
use crate::EngineError;
use crate::core::accounts::{AccountRef, Accounts, Env, OutputSink};
use crate::core::admit::{Admission, Admit};
use crate::core::cache::Capacity;
use crate::core::decode::{Decoded, Parsed, decode_record};
use crate::core::dedup::EpochLog;
use crate::core::epoch::Epoch;
use crate::core::keys;
use crate::core::outputs::{self, OutKind, OutRecord};
use crate::core::publish::Pass;
use crate::core::routing::unknown_person_detail;
use crate::core::timers::TimerQueue;
use caravan_operators::account::{Cause, Definitions, Effects, Moved};
use caravan_schemas::Id;
use caravan_schemas::input::RejectReason;
use caravan_schemas::output::{RejectedRecord, SourcePosition};
use caravan_schemas::state::{IndexRecord, RouteRecord};
use caravan_schemas::time::Timestamp;
use caravan_state::{Delta, Position, Store, StoreOptions};
use claims::{Hold, Mode};
use std::path::Path;
use std::sync::Arc;

/// The next offset to read of each topic of a partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Next {
    pub(crate) input: i64,
    pub(crate) persons: i64,
    pub(crate) accounts: i64,
}

impl Next {
    /// Where a partition's topics resume after `position`.
    pub(crate) fn at(position: &Position) -> Next {
        Next {
            input: position.input_next,
            persons: position.stage.persons_next,
            accounts: position.stage.accounts_next,
        }
    }

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

/// What processing a batch produced, before it commits: the partition's epoch, and what the same
/// transaction carries besides.
#[derive(Default)]
pub(crate) struct Processed {
    /// Outputs, state delta (the position among its writes) and position.
    pub(crate) epoch: Epoch,
    /// Records for the internal topics of the person stage.
    pub(crate) forwards: Vec<Forward>,
    /// What the person stage did, by [`Outcome`].
    pub(crate) stage: StageCounts,
    /// When each of its input records was read.
    pub(crate) read: Vec<std::time::Instant>,
}

impl Processed {
    /// An epoch with nothing else to carry (a publication, a stop).
    pub(crate) fn of(epoch: Epoch) -> Processed {
        Processed { epoch, ..Processed::default() }
    }

    /// Where the partition's topics resume once it commits.
    pub(crate) fn next(&self) -> Next {
        Next::at(&self.epoch.position)
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
            self.epoch.outputs.push(OutRecord { kind: OutKind::Rejected, key: None, json });
        }
        self.epoch.tally.rejected(reason);
    }
}

/// A Kafka batch gathers outputs as records keyed by account; their order is the order of the causes.
impl OutputSink for Processed {
    fn take(&mut self, effects: &mut Effects, _seq: u64, _timer: Option<(i64, &[u64])>) {
        outputs::take(effects, &mut self.epoch.outputs, &mut self.epoch.tally);
    }
}

/// What a batch has changed so far, besides its outputs.
struct Batch {
    out: Processed,
    /// The next offset of each topic, as the batch's records are read.
    next: Next,
    /// Event ids applied, with their event times (the de-duplication window's epoch).
    applied_ids: Vec<(u128, i64)>,
    /// In processing time, the clock read once for the batch: waits and timeouts count from it.
    clock: Option<i64>,
}

/// Settings of a task.
#[derive(Clone)]
pub(crate) struct TaskConfig {
    /// The input topic (rejected records name it).
    pub(crate) input_topic: String,
    /// The partition core's settings.
    pub(crate) core: crate::core::Settings,
    /// What the task's caches keep: its share of the instance's (`Capacity::share` among the partitions).
    pub(crate) cache: Capacity,
    /// RocksDB tuning of the partition's store (its de-duplication family sized for the window the task
    /// keeps).
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
    /// Where the partition stands after the last batch processed (committed, or about to be: an abort
    /// drops the task).
    pub(crate) position: Position,
    /// The store holds its position in an older form: the next epoch drops it.
    legacy_position: bool,
    /// De-duplication, the index and the partition's event time.
    admission: Admission,
    /// The partition's accounts and timers.
    accounts: Accounts,
    dedup_log: EpochLog,
    /// The last record applied, its tenant and event id (the cause a processing-time tick names).
    last_event: (Id, Id),
    /// The person stage's part on this partition (with several partitions).
    stage: Option<PersonStage>,
    /// Records waiting at their account for a claim's answer (with several partitions).
    holds: Holds,
    /// The account whose held records are being applied: its timers fire among them.
    releasing: Option<(Id, Id)>,
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
        let position = store.position()?.unwrap_or_else(Position::kafka);
        if position.mode != caravan_state::Mode::Kafka {
            return Err(EngineError::Invalid(format!(
                "partition {partition}: its state folder holds a replay's state (written by `{}`)",
                position.mode.command()
            )));
        }
        let legacy_position = store.holds_legacy_position()?;
        let (admission, dedup_log) = cfg.core.admission(&store, false, position.max_ts)?;
        let timers = TimerQueue::stored(store.timers()?);
        let stage = if cfg.partitions > 1 { Some(PersonStage::open(&store)?) } else { None };
        let holds = if cfg.partitions > 1 { Holds::open(&store)? } else { Holds::default() };
        Ok(PartitionTask {
            partition,
            admission,
            accounts: Accounts::new(false, timers),
            cfg,
            store,
            position,
            legacy_position,
            dedup_log,
            last_event: (Id::default(), Id::default()),
            stage,
            holds,
            releasing: None,
        })
    }

    /// The task's store (for publication passes and queries).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Where an input record of the partition was read.
    fn origin(&self, offset: i64) -> Origin {
        Origin { topic: self.cfg.input_topic.clone(), partition: self.partition, offset }
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
            let next = b.next.of(rec.source);
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
                    if let Some(hold) = self.input_record(defs, raw, &origin, Mode::Read, &mut b)? {
                        self.hold(hold, raw, origin, &mut b);
                    }
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
            out: Processed::default(),
            next: self.next(),
            applied_ids: Vec::new(),
            clock: self.cfg.processing_time.then(crate::wall_clock_ns),
        }
    }

    /// The commit this batch will be (its epoch): index entries and accounts written in it stay cached until
    /// it is done.
    fn commit_number(&self) -> u64 {
        self.position.epoch + 1
    }

    /// Routes and applies one record: read from the input, forwarded by the person stage (it was counted for
    /// de-duplication where it was read, and it is not sent to the stage again), or taken out of its
    /// account's queue. `Some` when it must wait instead: the caller holds it.
    fn input_record(
        &mut self,
        defs: &Definitions,
        raw: &[u8],
        origin: &Origin,
        mode: Mode,
        b: &mut Batch,
    ) -> Result<Option<Hold>, EngineError> {
        let decoded = match decode_record(raw, &self.cfg.core.rules) {
            Parsed::Blank => return Ok(None),
            Parsed::Rejected(r, raw) => {
                b.out.reject(r.reason, r.detail, &raw, origin);
                return Ok(None);
            }
            Parsed::Event(d) => d,
        };
        let Decoded { event, dedup: hash, .. } = decoded;
        let forwarded = !matches!(mode, Mode::Read);
        let (route, indexed, known) =
            match self.admission.admit(&self.store, &event, hash, forwarded, &mut b.out.epoch.tally)? {
                Admit::Duplicate => return Ok(None),
                Admit::Routed { route, indexed, known } => (route, indexed, known),
            };
        let tenant = event.tenant.as_str();
        // An event that names no account, about a person or an opportunity this partition does not hold:
        // another partition may, and the stage finds out.
        let waiting = indexed.is_some_and(|i| self.holds.waiting_about(i.key, None).is_some());
        if let Some(i) = indexed.filter(|_| route.account.is_none() && !forwarded && self.stage.is_some() && !waiting) {
            self.admission.accepted(hash, event.ts.0, Some(&mut b.applied_ids));
            let lookup = StageMessage::Lookup {
                tenant: event.tenant.clone(),
                entity: i.entity,
                id: Id::from(i.id),
                ts: event.ts.0,
                origin: origin.clone(),
                raw: raw.to_vec(),
                needs_account: route.unroutable,
            };
            b.out.forwards.push(lookup.forward(self.cfg.partitions));
            b.out.stage[Outcome::Looked as usize] += 1;
            return Ok(None);
        }
        if let Some(hold) = self.must_wait(&event, &route, indexed, known.as_ref(), &mode, b) {
            if !forwarded {
                self.admission.accepted(hash, event.ts.0, Some(&mut b.applied_ids));
            }
            return Ok(Some(hold));
        }
        if route.unroutable {
            self.admission.not_applied(hash, forwarded);
            let detail = unknown_person_detail(event.body.person_id().unwrap_or_default(), false);
            b.out.reject(RejectReason::UnknownPersonAccount, detail, raw, origin);
            return Ok(None);
        }
        let held_now = mode.held_now();
        let mut attach: Option<(Moved, Id)> = match mode {
            Mode::Answered { answer: Some((record, from)), .. } => Some((moved(record), from)),
            _ => None,
        };
        if let (None, Some(from), Some(i)) = (&attach, &route.moving_from, indexed) {
            let at = AccountRef { key: keys::account_key(tenant, from), tenant, account: from };
            match self.accounts.detach(&self.store, at, i.entity, i.id)? {
                Some(moved) => attach = Some((moved, from.clone())),
                None => tracing::warn!(
                    id = i.id,
                    account = from.as_str(),
                    "The index named an account that does not hold the record."
                ),
            }
        }
        let index_write = indexed.zip(route.index_update.clone());
        let commit = self.commit_number();
        let ids = (!forwarded).then_some(&mut b.applied_ids);
        // A record that waited is not late for having waited.
        let event_time = b.clock.is_none() && held_now.is_none();
        let applied = self.admission.applied(
            &event,
            hash,
            forwarded,
            index_write,
            commit,
            ids,
            event_time,
            &mut b.out.epoch.tally,
        );
        if let (true, Some(update), Some(i), true) =
            (applied.index_changed, route.index_update, indexed, self.stage.is_some())
        {
            // The stage learns where the person or the opportunity lives now.
            let route =
                RouteRecord { account_id: update.account_id, partition: self.partition, present: update.present };
            let msg = StageMessage::Route {
                tenant: event.tenant.clone(),
                entity: i.entity,
                id: Id::from(i.id),
                route,
                ts: event.ts.0,
            };
            b.out.forwards.push(msg.forward(self.cfg.partitions));
        }
        let own_offset = if forwarded { 0 } else { (origin.offset + 1) as u64 };
        self.position.seq = (self.position.seq + 1).max(own_offset);
        let seq = self.position.seq;
        if let Some(account) = &route.account {
            let cause = Cause::record(seq, b.clock.map_or(event.ts, Timestamp), &event.event_id);
            let at = AccountRef { key: keys::account_key(tenant, account), tenant, account };
            self.accounts.apply(Env { store: &self.store, defs }, at, &event, attach, &cause, &mut b.out)?;
        }
        let now = held_now.or(b.clock).unwrap_or(applied.watermark);
        self.timer_pass(defs, now, (tenant, &event.event_id), b)?;
        self.last_event = (Id::from(tenant), Id::from(event.event_id.as_str()));
        Ok(None)
    }

    /// Fires the timers due at `now` after the last record (`record`: its tenant and event id), except those
    /// of accounts whose held records must apply first (they are put aside until their turn).
    fn timer_pass(
        &mut self,
        defs: &Definitions,
        now: i64,
        record: (&str, &str),
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        let (holds, releasing) = (&self.holds, &self.releasing);
        let waits = |q: &crate::core::timers::Queued| {
            holds.is_held(&q.tenant, &q.account_id)
                && releasing.as_ref().is_none_or(|(t, a)| *t != q.tenant || *a != q.account_id)
        };
        let env = Env { store: &self.store, defs };
        self.accounts.fire_due(env, now, self.position.seq, record, &mut b.out, waits)
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
            StageMessage::Route { ts, .. } | StageMessage::Lookup { ts, .. } | StageMessage::Claim { ts, .. } => *ts,
        };
        let max_ts = self.position.stage.max_ts.map_or(ts, |m| m.max(ts));
        self.position.stage.max_ts = Some(max_ts);
        // A record waits until this time passes: its event time (by the stage's watermark), or the clock.
        let now = b.clock.unwrap_or_else(|| max_ts.saturating_sub(self.cfg.core.allowed_disorder_ns));
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
            Ok(AccountMessage::Forward { origin, raw }) => {
                if let Some(hold) = self.input_record(defs, &raw, &origin, Mode::Forwarded, b)? {
                    self.hold(hold, &raw, origin, b);
                }
                Ok(())
            }
            Ok(AccountMessage::Surrender { tenant, entity, id, account: _, to_partition, to_account }) => {
                self.surrender_asked(&tenant, entity, id, (to_partition, to_account), offset, b)
            }
            Ok(AccountMessage::Claimed { tenant, entity, id, account, carried }) => {
                self.claim_answered(defs, (&tenant, &account), entity, &id, carried, offset, b)
            }
            Ok(AccountMessage::Detach { tenant, entity, id, account }) => {
                let key = keys::index_key(entity, &tenant, &id);
                let known = self.admission.index.lookup(&self.store, key, entity, &tenant, &id)?;
                if known.is_some_and(|k| k.present && k.account_id == account) {
                    let at =
                        AccountRef { key: keys::account_key(&tenant, &account), tenant: &tenant, account: &account };
                    self.accounts.detach(&self.store, at, entity, &id)?;
                    let gone = IndexRecord { account_id: account.clone(), present: false };
                    let commit = self.commit_number();
                    self.admission.index.set(key, entity, &tenant, &id, gone, commit);
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
        let timers_due = self.accounts.timers_due(now);
        let parked_due = self.stage.as_ref().is_some_and(|s| s.due(now));
        if !timers_due && !parked_due {
            return Ok(None);
        }
        let mut b = self.batch();
        if let Some(stage) = self.stage.as_mut() {
            stage.expire(now, &mut b.out);
        }
        let (tenant, event_id) = self.last_event.clone();
        self.timer_pass(defs, now, (&tenant, &event_id), &mut b)?;
        Ok(Some(self.finish(b)))
    }

    /// The state delta of a batch: the timers armed and cancelled, every account changed, as it stands now;
    /// index entries; the window; the partition's position.
    fn finish(&mut self, b: Batch) -> Processed {
        let Batch { mut out, applied_ids, next, .. } = b;
        let epoch = &mut out.epoch;
        self.position.epoch += 1;
        epoch.delta.extend(self.accounts.write_back(self.position.epoch));
        self.admission.index.write_back(&mut epoch.delta);
        self.position.max_ts = self.admission.max_ts();
        self.position.input_next = next.input;
        self.position.stage.persons_next = next.persons;
        self.position.stage.accounts_next = next.accounts;
        self.position.count(&epoch.tally.totals);
        self.dedup_log.record(&mut epoch.delta, self.position.epoch, &applied_ids, self.position.max_ts);
        self.seal(epoch);
        out
    }

    /// Ends an epoch: its position is the task's, written among its state writes (so that it travels on
    /// the changelog), replacing an older form of the record the first time.
    fn seal(&mut self, epoch: &mut Epoch) {
        epoch.position = self.position.clone();
        epoch.delta.put_position(&epoch.position);
        if std::mem::take(&mut self.legacy_position) {
            epoch.delta.drop_legacy_positions();
        }
    }

    /// Where the partition's topics resume.
    pub(crate) fn next(&self) -> Next {
        Next::at(&self.position)
    }

    /// Writes a committed delta to the local store with the changelog offset it reaches, and keeps the
    /// caches within bounds.
    ///
    /// # Errors
    /// A store write failure (the task must then be dropped).
    pub(crate) fn apply(&mut self, delta: &Delta, changelog_next: u64) -> Result<(), EngineError> {
        self.store.apply_changelog(delta, changelog_next)?;
        // Everything up to this epoch is committed: any entry may go, it only costs a read later.
        let committed = self.position.epoch;
        self.accounts.cache.evict(self.cfg.cache.accounts, committed);
        self.admission.index.evict(self.cfg.cache.index, committed);
        if let Some(stage) = self.stage.as_mut() {
            stage.trim(self.cfg.cache.index);
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

    /// A publication pass as the partition's next epoch, which records that the definitions topic's
    /// publications before `definitions_next` are applied.
    pub(crate) fn publication(&mut self, pass: Pass, definitions_next: i64) -> Epoch {
        let mut epoch = pass.into_epoch(&self.position);
        self.position = epoch.position.clone();
        self.position.definitions_next = definitions_next;
        self.seal(&mut epoch);
        epoch
    }

    /// Records waiting at the person stage, and at accounts for a claim (for metrics).
    pub(crate) fn parked(&self) -> usize {
        self.stage.as_ref().map_or(0, PersonStage::parked_len) + self.holds.len()
    }

    /// Pending timers (for metrics).
    pub(crate) fn timers_pending(&self) -> usize {
        self.accounts.timers_pending()
    }
}
