//! A replay worker: the only owner of its share of the accounts, their cache and their timers.
//!
//! It drives the account side of the partition core ([`crate::core::accounts`]) for the records of the
//! accounts it owns: for every batch it applies its own records, runs a timer pass after every applied record
//! of the batch (its own or not: the watermark is global), serializes the outputs into its batch part, and at
//! an epoch's sealed batch hands the state delta to the committer. It never locks account state: no other
//! thread touches it. It is not the committer: nothing it does is durable until the committer commits.

use super::messages::{Batch, CommitMsg, Group, Step, WorkerMsg, WorkerPart};
use crate::EngineError;
use crate::core::accounts::{AccountRef, Accounts, Env, OutputSink};
use crate::core::timers::TimerQueue;
use crate::prefetch;
use crate::telemetry::Tally;
use caravan_operators::account::{Cause, Definitions, Effects, Moved};
use caravan_schemas::output::Entity;
use caravan_state::{Delta, Store};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Its caches' share of the run's (only its `accounts` is used: the router holds the index).
    pub(crate) cache: crate::core::cache::Capacity,
    /// Where the worker's reference to a batch's lines goes back to be freed.
    pub(crate) returns: super::reader::LineReturns,
}

pub(crate) struct Worker<'s> {
    cfg: WorkerConfig,
    defs: Arc<Definitions>,
    store: &'s Store,
    accounts: Accounts,
    commit: Sender<CommitMsg>,
    committed: Arc<AtomicU64>,
    /// The sizes of the last batch's outputs: the next batch's buffers start that large, instead of growing
    /// to it through reallocations that copy everything written so far.
    last_output: OutputSizes,
}

/// A worker's part gathers its causes' outputs as NDJSON, each cause a group placed by its order key.
impl OutputSink for WorkerPart {
    fn take(&mut self, effects: &mut Effects, seq: u64, timer: Option<(i64, &[u64])>) {
        if effects.actions.is_empty() && effects.changes.is_empty() {
            return;
        }
        let (a0, c0) = (self.actions.len(), self.changes.len());
        for a in effects.actions.drain(..) {
            a.write_json(&mut self.actions);
            self.actions.push(b'\n');
            self.tally.action(&a);
        }
        for c in effects.changes.drain(..) {
            c.write_json(&mut self.changes);
            self.changes.push(b'\n');
            self.tally.change(&c);
        }
        let timer = timer.map(|(due, arm)| (due, arm.to_vec()));
        self.groups.push(Group { seq, timer, actions: a0..self.actions.len(), changes: c0..self.changes.len() });
    }
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
        Worker {
            cfg,
            defs,
            store,
            accounts: Accounts::new(fresh, TimerQueue::stored(timers)),
            commit,
            committed,
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
                    match self.detach(entity, account_key, &tenant, &account_id, &id) {
                        // The router waits for this reply; if it is gone, the run is stopping anyway.
                        Ok(moved) => drop(reply.send(Ok(moved))),
                        // The router reports the failure and stops the run; so does this worker.
                        Err(e) => {
                            let text = format!("detaching {id} from account {account_id}: {e}");
                            return Err(match reply.send(Err(e)) {
                                Ok(()) => EngineError::Stopped,
                                Err(_) => EngineError::Internal(text),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Detaches a person or opportunity between batches. The account stays pinned (on the write-back list)
    /// until the next sealed batch carries the removal.
    fn detach(
        &mut self,
        entity: Entity,
        key: u64,
        tenant: &str,
        account: &str,
        id: &str,
    ) -> Result<Option<Moved>, EngineError> {
        self.accounts.detach(self.store, AccountRef { key, tenant, account }, entity, id)
    }

    /// Starts loading what applying a step will read first: its decoded line, and its account's cache entry
    /// (found by the key alone, without reading any entry: a wrong guess only wastes the hint).
    fn prefetch(&self, batch: &Batch, step: &Step) {
        if let Some(line) = batch.lines.lines.get(step.line as usize) {
            prefetch::lines(line, 4);
        }
        if let Some(cached) = self.accounts.cache.guess(step.account_key) {
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
        let env = Env { store: self.store, defs: &defs };
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
                let at = AccountRef {
                    key: step.account_key,
                    tenant: event.tenant.as_str(),
                    account: batch.account_id(step, event),
                };
                let cause = Cause::record(step.seq, event.ts, &event.event_id);
                let attach = batch.extra(step).and_then(|x| x.attach.as_deref()).cloned();
                self.accounts.apply(env, at, event, attach, &cause, &mut part)?;
            }
            // The timer pass after every applied record (its record is read only when a timer is due).
            if self.accounts.timers_due(step.watermark) {
                let record = batch.event(step).map_or(("", ""), |e| (e.tenant.as_str(), e.event_id.as_str()));
                self.accounts.fire_due(env, step.watermark, step.seq, record, &mut part, |_| false)?;
            }
        }
        self.last_output =
            OutputSizes { actions: part.actions.len(), changes: part.changes.len(), groups: part.groups.len() };
        // A sealed batch carries the epoch's state delta: every account changed since the last seal, as it
        // stands now, and the timers armed and cancelled since.
        if batch.seal {
            part.delta = self.accounts.write_back(batch.id);
        }
        self.commit.send(CommitMsg::Worker(part)).map_err(|_| EngineError::Stopped)?;
        self.accounts.cache.evict(self.cfg.cache.accounts, self.committed.load(Ordering::Acquire));
        Ok(())
    }
}
