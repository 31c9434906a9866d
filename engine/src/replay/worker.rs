//! A partition worker: the only owner of its accounts' state, their cache and their timers.
//!
//! It owns a bounded cache of [`AccountState`] in front of RocksDB and a timer queue. For every batch it
//! applies its own records, runs a timer pass after every applied record of the batch (its own or not: the
//! watermark is global), serializes the outputs, and hands them with the state delta to the committer. It
//! never locks account state: no other thread touches it. It is not the committer: nothing it does is
//! durable until the committer commits the batch.

use super::messages::{Batch, CommitMsg, Group, Route, WorkerMsg, WorkerPart};
use crate::EngineError;
use caravan_operators::account::{AccountState, Cause, Definitions, Effects, TimerHandle, apply_event, fire_timer};
use caravan_state::{Delta, Store};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A timer in the queue. Ordered by due time, then arming order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    due: i64,
    arm: Vec<u64>,
    tenant: Arc<str>,
    account_id: Arc<str>,
    journey_id: String,
    instance: u32,
}

struct Cached {
    state: AccountState,
    /// The batch that last changed it (0: clean). Not evicted before that batch commits.
    dirty_batch: u64,
    /// Persons detached (moved away) whose stored records must be deleted.
    detached: Vec<String>,
}

/// Settings of a worker.
pub(crate) struct WorkerConfig {
    pub(crate) cache_capacity: usize,
}

pub(crate) struct Worker<'s> {
    cfg: WorkerConfig,
    defs: Arc<Definitions>,
    store: &'s Store,
    complete_cache: bool,
    cache: FxHashMap<(Arc<str>, Arc<str>), Cached>,
    dirty: Vec<(Arc<str>, Arc<str>)>,
    timers: BinaryHeap<Reverse<Queued>>,
    pending: Delta,
    commit: Sender<CommitMsg>,
    committed: Arc<AtomicU64>,
    effects: Effects,
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
        let timers = timers
            .into_iter()
            .map(|t| {
                Reverse(Queued {
                    due: t.timer.due,
                    arm: t.timer.arm,
                    tenant: t.tenant.into(),
                    account_id: t.account_id.into(),
                    journey_id: t.journey_id,
                    instance: t.instance,
                })
            })
            .collect();
        Worker {
            cfg,
            defs,
            store,
            complete_cache: fresh,
            cache: FxHashMap::default(),
            dirty: Vec::new(),
            timers,
            pending: Delta::default(),
            commit,
            committed,
            effects: Effects::default(),
        }
    }

    pub(crate) fn run(mut self, me: usize, input: &Receiver<WorkerMsg>) -> Result<(), EngineError> {
        for msg in input {
            match msg {
                WorkerMsg::Batch(batch) => self.batch(me, &batch)?,
                WorkerMsg::Detach { tenant, account_id, person_id, reply } => {
                    let result = self.detach(&tenant, &account_id, &person_id).map_err(|e| e.to_string());
                    let failed = result.is_err();
                    // The router waits for this reply; if it is gone, the run is stopping anyway.
                    let _ = reply.send(result);
                    if failed {
                        return Err(EngineError::Internal(format!("detaching person {person_id} failed")));
                    }
                }
            }
        }
        Ok(())
    }

    fn load(&mut self, tenant: &Arc<str>, account: &Arc<str>) -> Result<&mut Cached, EngineError> {
        let key = (Arc::clone(tenant), Arc::clone(account));
        if !self.cache.contains_key(&key) {
            let stored = if self.complete_cache { None } else { self.store.load_account(tenant, account)? };
            let state = match stored {
                Some((record, persons)) => AccountState::from_records(tenant, account, record, persons),
                None => AccountState::new(tenant, account),
            };
            self.cache.insert(key.clone(), Cached { state, dirty_batch: 0, detached: Vec::new() });
        }
        Ok(self.cache.get_mut(&key).expect("inserted above"))
    }

    fn mark_dirty(&mut self, tenant: &Arc<str>, account: &Arc<str>, batch: u64) {
        if let Some(c) = self.cache.get_mut(&(Arc::clone(tenant), Arc::clone(account)))
            && c.dirty_batch != batch
        {
            c.dirty_batch = batch;
            self.dirty.push((Arc::clone(tenant), Arc::clone(account)));
        }
    }

    fn detach(
        &mut self,
        tenant: &str,
        account: &str,
        person: &str,
    ) -> Result<Option<caravan_schemas::state::PersonRecord>, EngineError> {
        let (tenant, account): (Arc<str>, Arc<str>) = (tenant.into(), account.into());
        let batch = self.committed.load(Ordering::Acquire).max(1) + u64::MAX / 2;
        let cached = self.load(&tenant, &account)?;
        let rec = cached.state.detach_person(person);
        if rec.is_some() {
            cached.detached.push(person.to_owned());
            // Pinned until the next batch's part is built, which takes the dirty list.
            self.mark_dirty(&tenant, &account, batch);
        }
        Ok(rec)
    }

    /// Records the timers a step armed and cancelled, in the queue and in the delta.
    fn note_timers(&mut self, tenant: &Arc<str>, account: &Arc<str>) {
        for h in self.effects.cancelled.drain(..) {
            self.pending.delete_timer(tenant, account, &h.journey_id, h.instance);
        }
        for h in self.effects.armed.drain(..) {
            self.pending.put_timer(tenant, account, &h.journey_id, h.instance, &h.timer);
            self.timers.push(Reverse(Queued {
                due: h.timer.due,
                arm: h.timer.arm,
                tenant: Arc::clone(tenant),
                account_id: Arc::clone(account),
                journey_id: h.journey_id,
                instance: h.instance,
            }));
        }
    }

    fn take_outputs(&mut self, seq: u64, timer: Option<(i64, Vec<u64>)>, part: &mut WorkerPart) {
        if self.effects.actions.is_empty() && self.effects.changes.is_empty() {
            return;
        }
        let mut g = Group { seq, timer, actions: Vec::new(), changes: Vec::new() };
        for a in self.effects.actions.drain(..) {
            // Output records hold only strings, numbers and JSON values: serialization cannot fail.
            if serde_json::to_writer(&mut g.actions, &a).is_ok() {
                g.actions.push(b'\n');
                part.actions += 1;
            }
        }
        for c in self.effects.changes.drain(..) {
            if serde_json::to_writer(&mut g.changes, &c).is_ok() {
                g.changes.push(b'\n');
                part.changes += 1;
            }
        }
        part.groups.push(g);
    }

    fn batch(&mut self, me: usize, batch: &Batch) -> Result<(), EngineError> {
        let mut part =
            WorkerPart { batch: batch.id, groups: Vec::new(), delta: Delta::default(), actions: 0, changes: 0 };
        let defs = Arc::clone(&self.defs);
        for item in &batch.items {
            if item.route == Route::Worker(me) {
                let tenant: Arc<str> = item.event.tenant.as_str().into();
                let account = Arc::clone(&item.account_id);
                self.effects.clear();
                let cause = Cause::record(item.seq, item.event.ts, &item.event.event_id);
                let mut effects = std::mem::take(&mut self.effects);
                let cached = self.load(&tenant, &account)?;
                apply_event(&defs, &mut cached.state, &item.event, item.attach.clone(), &cause, &mut effects);
                self.effects = effects;
                self.mark_dirty(&tenant, &account, batch.id);
                self.note_timers(&tenant, &account);
                self.take_outputs(item.seq, None, &mut part);
            }
            // The timer pass after every applied record.
            while self.timers.peek().is_some_and(|Reverse(t)| t.due <= item.watermark) {
                let Some(Reverse(q)) = self.timers.pop() else { break };
                let handle = TimerHandle {
                    journey_id: q.journey_id,
                    instance: q.instance,
                    timer: caravan_schemas::state::TimerRecord { due: q.due, arm: q.arm },
                };
                let cause = Cause::timer(item.seq, &handle.timer, &item.event.event_id);
                self.effects.clear();
                let mut effects = std::mem::take(&mut self.effects);
                let cached = self.load(&q.tenant, &q.account_id)?;
                let fired = fire_timer(&defs, &mut cached.state, &handle, &cause, &mut effects);
                self.effects = effects;
                if fired {
                    self.pending.delete_timer(&q.tenant, &q.account_id, &handle.journey_id, handle.instance);
                    self.mark_dirty(&q.tenant, &q.account_id, batch.id);
                    self.note_timers(&q.tenant, &q.account_id);
                    self.take_outputs(item.seq, Some((handle.timer.due, handle.timer.arm)), &mut part);
                }
            }
        }
        // The state delta of this batch: every account changed in it, as it stands now.
        part.delta = std::mem::take(&mut self.pending);
        for key in std::mem::take(&mut self.dirty) {
            let Some(c) = self.cache.get_mut(&key) else { continue };
            c.dirty_batch = batch.id;
            for person in c.detached.drain(..) {
                part.delta.delete_person(&key.0, &key.1, &person);
            }
            if c.state.record_dirty {
                part.delta.put_account(&key.0, &key.1, &c.state.record);
                c.state.record_dirty = false;
            }
            for p in c.state.persons.iter_mut().filter(|p| p.dirty) {
                part.delta.put_person(&key.0, &key.1, &p.record);
                p.dirty = false;
            }
        }
        self.commit.send(CommitMsg::Worker(part)).map_err(|_| EngineError::Stopped)?;
        self.evict();
        Ok(())
    }

    /// Keeps the cache within its capacity: drops accounts whose last change has committed.
    fn evict(&mut self) {
        let committed = self.committed.load(Ordering::Acquire);
        if super::evict_committed(&mut self.cache, self.cfg.cache_capacity, committed, |c| c.dirty_batch) {
            self.complete_cache = false;
        }
    }
}
