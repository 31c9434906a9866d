//! A partition worker: the only owner of its accounts' state, their cache and their timers.
//!
//! It owns a bounded cache of [`AccountState`] in front of RocksDB and a timer queue. For every batch it
//! applies its own records, runs a timer pass after every applied record of the batch (its own or not: the
//! watermark is global), serializes the outputs, and hands them with the state delta to the committer. It
//! never locks account state: no other thread touches it. It is not the committer: nothing it does is
//! durable until the committer commits the batch.

use super::keys;
use super::messages::{Batch, CommitMsg, Group, Step, WorkerMsg, WorkerPart};
use crate::EngineError;
use crate::prefetch;
use crate::telemetry::Tally;
use caravan_operators::account::{AccountState, Cause, Definitions, Effects, TimerHandle, apply_event, fire_timer};
use caravan_operators::account::{DirtySlot, Moved};
use caravan_schemas::Id;
use caravan_schemas::output::Entity;
use caravan_schemas::state::TimerRecord;
use caravan_state::{Delta, Store};
use crossbeam_channel::{Receiver, Sender};
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes the records of an account that a step marked dirty into a delta, and clears the marks.
pub(crate) fn write_dirty(delta: &mut Delta, tenant: &str, account: &str, state: &mut AccountState) {
    if state.record_dirty {
        delta.put_account(tenant, account, &state.record);
        state.record_dirty = false;
    }
    state.take_dirty_slots(|slot| match slot {
        DirtySlot::Person(p) => delta.put_person(tenant, account, p),
        DirtySlot::Opportunity(o) => delta.put_opportunity(tenant, account, o),
    });
}

/// The `cause_event_id` of a timer of `timer_tenant` firing in the pass after a record: the record's event
/// id when it is of the same tenant, else none (empty): an output never names another tenant's event.
pub(crate) fn timer_cause_id<'a>(record_tenant: &str, record_event_id: &'a str, timer_tenant: &str) -> &'a str {
    if record_tenant == timer_tenant { record_event_id } else { "" }
}

/// Writes the timers a step cancelled and armed (drained from `effects`) into a delta; hands each armed one
/// to `armed` (a worker's or task's queue).
pub(crate) fn take_timers(
    effects: &mut Effects,
    delta: &mut Delta,
    tenant: &str,
    account: &str,
    mut armed: impl FnMut(TimerHandle),
) {
    for h in effects.cancelled.drain(..) {
        delta.delete_timer(tenant, account, (&h.journey_id, h.instance, h.slot));
    }
    for h in effects.armed.drain(..) {
        delta.put_timer(tenant, account, (&h.journey_id, h.instance, h.slot), &h.timer);
        armed(h);
    }
}

/// A timer in a worker's or partition task's queue. Ordered by due time, then arming order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Queued {
    pub(crate) due: i64,
    pub(crate) arm: Vec<u64>,
    pub(crate) tenant: Id,
    pub(crate) account_id: Id,
    pub(crate) journey_id: Id,
    pub(crate) instance: u32,
    pub(crate) slot: u32,
    /// [`keys::account_key`] of the account (last: it takes no part in the order).
    pub(crate) account_key: u64,
}

impl Queued {
    /// A timer as the store holds it.
    pub(crate) fn stored(t: caravan_state::StoredTimer) -> Queued {
        Queued {
            account_key: keys::account_key(&t.tenant, &t.account_id),
            due: t.timer.due,
            arm: t.timer.arm,
            tenant: Id::from(t.tenant),
            account_id: Id::from(t.account_id),
            journey_id: Id::from(t.journey_id),
            instance: t.instance,
            slot: t.slot,
        }
    }

    /// A timer a step armed on an account (`key`: its [`keys::account_key`]).
    pub(crate) fn armed(h: TimerHandle, tenant: &str, account: &str, key: u64) -> Queued {
        Queued {
            due: h.timer.due,
            arm: h.timer.arm,
            tenant: Id::from(tenant),
            account_id: Id::from(account),
            journey_id: h.journey_id,
            instance: h.instance,
            slot: h.slot,
            account_key: key,
        }
    }
}

impl Cached {
    /// Whether a step changed the account and it is not yet on the epoch's write-back list (it is then
    /// marked as listed). Only changed accounts are listed: the write-back finds each again, long after its
    /// cache lines are gone, and most records (activities) change nothing.
    fn newly_changed(&mut self) -> bool {
        let first = (self.state.is_dirty() || !self.detached.is_empty()) && !self.listed;
        self.listed |= first;
        first
    }
}

struct Cached {
    state: AccountState,
    /// Changed since the last sealed batch, on the write-back list: not evicted.
    listed: bool,
    /// The sealed batch that last wrote it (0: never). Not evicted before that batch commits.
    dirty_batch: u64,
    /// Persons and opportunities detached (moved away) whose stored records must be deleted.
    detached: Vec<(Entity, String)>,
}

/// The worker's accounts, in one hash table keyed by the router's [`keys::account_key`]: a lookup hashes
/// nothing and compares the account id only in the bucket it lands in.
#[derive(Default)]
struct AccountCache {
    accounts: HashTable<Cached>,
    /// Accounts changed since the last sealed batch: written back into its part, not before. A hot account
    /// changes in nearly every batch; written once an epoch instead of once a batch, it is encoded ~90
    /// times less often (perf: encoding was ~12% of a worker's time).
    dirty: Vec<(u64, Id, Id)>,
    /// Nothing was stored when the run began and nothing was evicted since: a miss is an absence.
    complete: bool,
}

fn key_of(c: &Cached) -> u64 {
    keys::account_key(&c.state.tenant, &c.state.account_id)
}

/// Whether a cached entry is this account (the key already matched).
fn is_account(c: &Cached, tenant: &str, account: &str) -> bool {
    caravan_schemas::same_id(&c.state.account_id, account) && c.state.tenant == tenant
}

impl AccountCache {
    fn find(&mut self, key: u64, tenant: &str, account: &str) -> Option<&mut Cached> {
        self.accounts.find_mut(key, |c| is_account(c, tenant, account))
    }

    /// The account, loaded from the store on a miss.
    fn get(&mut self, store: &Store, key: u64, tenant: &str, account: &str) -> Result<&mut Cached, EngineError> {
        let entry = self.accounts.entry(key, |c| is_account(c, tenant, account), key_of);
        let cached = match entry {
            hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let stored = if self.complete { None } else { store.load_account(tenant, account)? };
                let state = match stored {
                    Some(s) => AccountState::from_records(tenant, account, s.record, s.persons, s.opportunities),
                    None => AccountState::new(tenant, account),
                };
                e.insert(Cached { state, listed: false, dirty_batch: 0, detached: Vec::new() }).into_mut()
            }
        };
        Ok(cached)
    }

    /// Puts an account on the epoch's write-back list (once: [`Cached::newly_changed`]).
    fn note_change(&mut self, key: u64, tenant: &str, account: &str) {
        self.dirty.push((key, Id::from(tenant), Id::from(account)));
    }

    /// Keeps the cache within `capacity`: drops accounts whose last change has committed (never a listed one).
    fn evict(&mut self, capacity: usize, committed: u64) {
        if self.accounts.len() <= capacity {
            return;
        }
        let mut excess = self.accounts.len() - capacity / 4 * 3;
        self.accounts.retain(|c| {
            if excess > 0 && !c.listed && c.dirty_batch <= committed {
                excess -= 1;
                false
            } else {
                true
            }
        });
        self.complete = false;
    }
}

/// How many steps ahead of the one being applied the worker starts loading a step's line and account: far
/// enough for the loads to arrive (a step of the worker's own takes a few thousand cycles), near enough that
/// they are still cached when it gets there.
const PREFETCH_AHEAD: usize = 8;

/// Bytes of actions and changes, and output groups, of a worker's batch part.
#[derive(Clone, Copy, Default)]
struct OutputSizes {
    actions: usize,
    changes: usize,
    groups: usize,
}

/// Settings of a worker.
pub(crate) struct WorkerConfig {
    pub(crate) cache_capacity: usize,
    /// Where the worker's reference to a batch's lines goes back to be freed.
    pub(crate) returns: super::reader::LineReturns,
}

pub(crate) struct Worker<'s> {
    cfg: WorkerConfig,
    defs: Arc<Definitions>,
    store: &'s Store,
    cache: AccountCache,
    timers: BinaryHeap<Reverse<Queued>>,
    pending: Delta,
    commit: Sender<CommitMsg>,
    committed: Arc<AtomicU64>,
    effects: Effects,
    /// The sizes of the last batch's outputs: the next batch's buffers start that large, instead of growing
    /// to it through reallocations that copy everything written so far.
    last_output: OutputSizes,
}

impl<'s> Worker<'s> {
    pub(crate) fn new(
        cfg: WorkerConfig,
        defs: Arc<Definitions>,
        store: &'s Store,
        fresh: bool,
        timers: Vec<caravan_state::StoredTimer>,
        commit: Sender<CommitMsg>,
        committed: Arc<AtomicU64>,
    ) -> Worker<'s> {
        let timers = timers.into_iter().map(|t| Reverse(Queued::stored(t))).collect();
        Worker {
            cfg,
            defs,
            store,
            cache: AccountCache { complete: fresh, ..AccountCache::default() },
            timers,
            pending: Delta::default(),
            commit,
            committed,
            effects: Effects::default(),
            last_output: OutputSizes::default(),
        }
    }

    pub(crate) fn run(mut self, me: usize, input: &Receiver<WorkerMsg>) -> Result<(), EngineError> {
        for msg in input {
            match msg {
                WorkerMsg::Batch(batch) => {
                    self.batch(me, &batch)?;
                    // The batch (and with it, its reference) is dropped first, so that the last reference
                    // to the lines is always one given back, never the batch's.
                    let lines = Arc::clone(&batch.lines);
                    drop(batch);
                    self.cfg.returns.give_back(lines);
                }
                WorkerMsg::Detach { entity, tenant, account_id, account_key, id, reply } => {
                    let result = self.detach(entity, account_key, &tenant, &account_id, &id).map_err(|e| e.to_string());
                    let failed = result.is_err();
                    // The router waits for this reply; if it is gone, the run is stopping anyway.
                    let _ = reply.send(result);
                    if failed {
                        return Err(EngineError::Internal(format!("detaching {id} from account {account_id} failed")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Detaches a person or opportunity between batches. The account stays pinned (dirty in a batch that
    /// cannot have committed) until the next batch part carries the removal.
    fn detach(
        &mut self,
        entity: Entity,
        key: u64,
        tenant: &str,
        account: &str,
        id: &str,
    ) -> Result<Option<Moved>, EngineError> {
        let cached = self.cache.get(self.store, key, tenant, account)?;
        let moved = cached.state.detach(entity, id);
        if moved.is_some() {
            cached.detached.push((entity, id.to_owned()));
        }
        if cached.newly_changed() {
            self.cache.note_change(key, tenant, account);
        }
        Ok(moved)
    }

    /// Records the timers a step armed and cancelled, in the queue and in the delta.
    fn note_timers(&mut self, key: u64, tenant: &str, account: &str) {
        let timers = &mut self.timers;
        take_timers(&mut self.effects, &mut self.pending, tenant, account, |h| {
            timers.push(Reverse(Queued::armed(h, tenant, account, key)));
        });
    }

    fn take_outputs(&mut self, seq: u64, timer: Option<(i64, Vec<u64>)>, part: &mut WorkerPart) {
        if self.effects.actions.is_empty() && self.effects.changes.is_empty() {
            return;
        }
        let (a0, c0) = (part.actions.len(), part.changes.len());
        for a in self.effects.actions.drain(..) {
            a.write_json(&mut part.actions);
            part.actions.push(b'\n');
            part.tally.action(&a);
        }
        for c in self.effects.changes.drain(..) {
            c.write_json(&mut part.changes);
            part.changes.push(b'\n');
            part.tally.change(&c);
        }
        part.groups.push(Group { seq, timer, actions: a0..part.actions.len(), changes: c0..part.changes.len() });
    }

    /// Starts loading what applying a step will read first: its decoded line, and its account's cache entry
    /// (found by the key alone, without reading any entry: a wrong guess only wastes the hint).
    fn prefetch(&self, batch: &Batch, step: &Step) {
        if let Some(line) = batch.lines.lines.get(step.line as usize) {
            prefetch::lines(line, 4);
        }
        if let Some(cached) = self.cache.accounts.find(step.account_key, |_| true) {
            prefetch::lines(cached, 4);
        }
    }

    fn batch(&mut self, me: usize, batch: &Batch) -> Result<(), EngineError> {
        let _span = tracing::trace_span!("batch", worker = me, batch = batch.id, steps = batch.steps.len()).entered();
        let mut part = WorkerPart {
            batch: batch.id,
            groups: Vec::with_capacity(self.last_output.groups),
            actions: Vec::with_capacity(self.last_output.actions),
            changes: Vec::with_capacity(self.last_output.changes),
            delta: Delta::default(),
            tally: Tally::default(),
        };
        let defs = Arc::clone(&self.defs);
        let me = me as u32;
        for (i, step) in batch.steps.iter().enumerate() {
            if let Some(ahead) = batch.steps.get(i + PREFETCH_AHEAD)
                && ahead.worker == me
            {
                self.prefetch(batch, ahead);
            }
            // Another worker's record is not even read: only its step (owner, watermark) is.
            if step.worker == me
                && let Some(event) = batch.event(step)
            {
                let (tenant, account) = (event.tenant.as_str(), batch.account_id(step, event));
                let cause = Cause::record(step.seq, event.ts, &event.event_id);
                self.effects.clear();
                let cached = self.cache.get(self.store, step.account_key, tenant, account)?;
                let attach = batch.extra(step).and_then(|x| x.attach.as_deref()).cloned();
                apply_event(&defs, &mut cached.state, event, attach, &cause, &mut self.effects);
                if cached.newly_changed() {
                    self.cache.note_change(step.account_key, tenant, account);
                }
                self.note_timers(step.account_key, tenant, account);
                self.take_outputs(step.seq, None, &mut part);
            }
            // The timer pass after every applied record.
            while self.timers.peek().is_some_and(|Reverse(t)| t.due <= step.watermark) {
                let Some(Reverse(q)) = self.timers.pop() else { break };
                let timer = TimerRecord { due: q.due, arm: q.arm };
                let handle = TimerHandle { journey_id: q.journey_id, instance: q.instance, slot: q.slot, timer };
                let cause_id = batch.event(step).map_or("", |e| timer_cause_id(&e.tenant, &e.event_id, &q.tenant));
                let cause = Cause::timer(step.seq, &handle.timer, cause_id);
                self.effects.clear();
                let cached = self.cache.get(self.store, q.account_key, &q.tenant, &q.account_id)?;
                let fired = fire_timer(&defs, &mut cached.state, &handle, &cause, &mut self.effects);
                if cached.newly_changed() {
                    self.cache.note_change(q.account_key, &q.tenant, &q.account_id);
                }
                if fired {
                    self.pending.delete_timer(
                        &q.tenant,
                        &q.account_id,
                        (&handle.journey_id, handle.instance, handle.slot),
                    );
                    self.note_timers(q.account_key, &q.tenant, &q.account_id);
                    self.take_outputs(step.seq, Some((handle.timer.due, handle.timer.arm.clone())), &mut part);
                }
            }
        }
        self.last_output =
            OutputSizes { actions: part.actions.len(), changes: part.changes.len(), groups: part.groups.len() };
        // A sealed batch carries the epoch's state delta: every account changed since the last seal, as it
        // stands now, and the timers armed and cancelled since.
        if batch.seal {
            part.delta = self.write_back(batch.id);
        }
        self.commit.send(CommitMsg::Worker(part)).map_err(|_| EngineError::Stopped)?;
        self.cache.evict(self.cfg.cache_capacity, self.committed.load(Ordering::Acquire));
        Ok(())
    }

    /// The epoch's state delta: its timer writes and every listed account, now pinned until the sealed batch
    /// `seal` commits.
    fn write_back(&mut self, seal: u64) -> Delta {
        let mut delta = std::mem::take(&mut self.pending);
        for (key, tenant, account) in std::mem::take(&mut self.cache.dirty) {
            let Some(c) = self.cache.find(key, &tenant, &account) else { continue };
            c.listed = false;
            c.dirty_batch = seal;
            for (entity, id) in c.detached.drain(..) {
                match entity {
                    Entity::Opportunity => delta.delete_opportunity(&tenant, &account, &id),
                    _ => delta.delete_person(&tenant, &account, &id),
                }
            }
            write_dirty(&mut delta, &tenant, &account, &mut c.state);
        }
        delta
    }
}
