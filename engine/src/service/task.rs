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
use caravan_schemas::state::{IndexRecord, TimerRecord};
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
}

impl Progress {
    /// The progress a store has committed (the default for a new one).
    pub(crate) fn read(store: &Store) -> Result<Progress, EngineError> {
        match store.meta(PROGRESS)? {
            Some(bytes) => caravan_schemas::state::decode(&bytes).map_err(|e| EngineError::Internal(e.to_string())),
            None => Ok(Progress::default()),
        }
    }
}

/// One input record of the partition.
pub(crate) struct InRecord {
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
    /// The next input offset after the batch.
    pub(crate) input_next: i64,
    /// What the batch counted.
    pub(crate) tally: Tally,
    /// When each of its input records was read.
    pub(crate) read: Vec<std::time::Instant>,
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
}

/// Drops entries of a cache grown past `capacity`, down to three quarters of it.
fn trim<K, V>(map: &mut FxHashMap<K, V>, capacity: usize) {
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

    fn reject(&self, out: &mut Processed, reason: RejectReason, detail: String, raw: &[u8], offset: i64) {
        tracing::debug!(reason = reason.as_str(), %detail, partition = self.partition, offset, "Record rejected.");
        let source = SourcePosition::Kafka { topic: self.cfg.input_topic.clone(), partition: self.partition, offset };
        let rec = RejectedRecord::new(reason, detail, raw, source);
        // A rejected record holds only strings and numbers: it always serializes.
        if let Ok(json) = serde_json::to_vec(&rec) {
            out.outputs.push(OutRecord { kind: OutKind::Rejected, key: None, json });
        }
        out.tally.rejected(reason);
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

    /// Processes a batch of the partition's records in offset order. Nothing is durable until
    /// [`PartitionTask::apply`]; on an abort the task must be dropped.
    ///
    /// # Errors
    /// A state read failure.
    pub(crate) fn process(&mut self, defs: &Definitions, records: &[InRecord]) -> Result<Processed, EngineError> {
        let _span = tracing::debug_span!("batch", partition = self.partition, records = records.len()).entered();
        // In processing time, the clock read once for the batch: waits and timeouts count from it.
        let clock = self.cfg.processing_time.then(crate::wall_clock_ns);
        let mut out = Processed { input_next: self.progress.input_next, ..Processed::default() };
        let mut dirty: Vec<(Id, Id)> = Vec::new();
        let mut index_dirty: Vec<(u128, Entity, Id, Id)> = Vec::new();
        let mut applied_ids: Vec<(u128, i64)> = Vec::new();
        for rec in records {
            out.input_next = rec.offset + 1;
            out.read.push(rec.read_at);
            let raw = rec.payload.as_deref().unwrap_or_default();
            let decoded = match decode_record(raw, &self.cfg.rules) {
                Parsed::Blank => continue,
                Parsed::Rejected(r, raw) => {
                    self.reject(&mut out, r.reason, r.detail, &raw, rec.offset);
                    continue;
                }
                Parsed::Event(d) => d,
            };
            let Decoded { event, dedup: hash, .. } = decoded;
            let tenant = event.tenant.as_str();
            if !self.dedup.insert(hash, event.ts.0) {
                out.tally.duplicate(tenant);
                continue;
            }
            let indexed = routing::indexed(&event);
            let known = match indexed {
                Some((entity, id)) => self.lookup(entity, tenant, id)?,
                None => None,
            };
            let route = routing::route(&event, known.as_ref());
            if route.unroutable {
                self.dedup.forget_last(hash);
                let person = event.body.person_id().unwrap_or_default();
                self.reject(
                    &mut out,
                    RejectReason::UnknownPersonAccount,
                    format!("person `{person}` has no known account and the event names none"),
                    raw,
                    rec.offset,
                );
                continue;
            }
            let mut attach: Option<(Moved, Id)> = None;
            if let (Some(from), Some((entity, id))) = (&route.moving_from, indexed) {
                let old = self.account(tenant, from)?;
                match old.detach(entity, id) {
                    Some(moved) => {
                        match entity {
                            Entity::Opportunity => out.delta.delete_opportunity(tenant, from, id),
                            _ => out.delta.delete_person(tenant, from, id),
                        }
                        dirty.push((Id::from(tenant), from.clone()));
                        attach = Some((moved, from.clone()));
                    }
                    None => tracing::warn!(
                        id,
                        account = from.as_str(),
                        "The index named an account that does not hold the record."
                    ),
                }
            }
            if let (Some(update), Some((entity, id))) = (route.index_update, indexed) {
                let key = keys::index_key(entity, tenant, id);
                if self.index.get(&key).and_then(Option::as_ref) != Some(&update) {
                    self.index.insert(key, Some(update));
                    index_dirty.push((key, entity, Id::from(tenant), Id::from(id)));
                }
            }
            self.dedup.settle();
            applied_ids.push((hash, event.ts.0));
            out.tally.applied(tenant, &event.body);
            let ts = event.ts.0;
            if clock.is_none()
                && self.progress.max_ts.is_some_and(|m| ts < m.saturating_sub(self.cfg.allowed_disorder_ns))
            {
                out.tally.late(tenant);
            }
            let max_ts = self.progress.max_ts.map_or(ts, |m| m.max(ts));
            self.progress.max_ts = Some(max_ts);
            let seq = (rec.offset + 1) as u64;
            if let Some(account) = &route.account {
                let cause = Cause::record(seq, clock.map_or(event.ts, Timestamp), &event.event_id);
                self.effects.clear();
                let mut effects = std::mem::take(&mut self.effects);
                let acct = self.account(tenant, account)?;
                apply_event(defs, acct, &event, attach, &cause, &mut effects);
                self.effects = effects;
                self.take_effects(tenant, account, &mut out, &mut dirty);
            }
            let watermark = clock.unwrap_or_else(|| max_ts.saturating_sub(self.cfg.allowed_disorder_ns));
            self.timer_pass(defs, watermark, seq, (tenant, &event.event_id), &mut out, &mut dirty)?;
            self.last_event = (Id::from(tenant), Id::from(event.event_id.as_str()));
        }
        Ok(self.finish(out, dirty, index_dirty, &applied_ids))
    }

    /// Processing time: fires the timers due by `now` on a partition with no input, in a transaction of
    /// their own; `None` when nothing is due.
    ///
    /// # Errors
    /// A state read failure.
    pub(crate) fn tick(&mut self, defs: &Definitions, now: i64) -> Result<Option<Processed>, EngineError> {
        if self.timers.peek().is_none_or(|Reverse(t)| t.due > now) {
            return Ok(None);
        }
        let mut out = Processed { input_next: self.progress.input_next, ..Processed::default() };
        let mut dirty = Vec::new();
        let seq = self.progress.input_next.max(0) as u64;
        let (tenant, event_id) = self.last_event.clone();
        self.timer_pass(defs, now, seq, (&tenant, &event_id), &mut out, &mut dirty)?;
        Ok(Some(self.finish(out, dirty, Vec::new(), &[])))
    }

    /// The state delta of a batch: every account changed, as it stands now; index entries; the window; the
    /// partition's progress.
    fn finish(
        &mut self,
        mut out: Processed,
        mut dirty: Vec<(Id, Id)>,
        mut index_dirty: Vec<(u128, Entity, Id, Id)>,
        applied_ids: &[(u128, i64)],
    ) -> Processed {
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
        self.progress.input_next = out.input_next;
        self.dedup_log.record(&mut out.delta, self.progress.epoch, applied_ids, self.progress.max_ts);
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

    /// Pending timers (for metrics).
    pub(crate) fn timers_pending(&self) -> usize {
        self.timers.len()
    }
}
