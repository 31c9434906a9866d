//! The account side of one partition's step, the same in both modes: apply a routed record to its account,
//! then fire every timer the partition's time has reached, and hand the outputs of each cause to a sink.
//!
//! It owns the partition's account cache, its timer queue and the timer writes not yet written back. A
//! replay worker drives it for the records of the accounts it owns (with the replay's one watermark); a
//! Kafka partition task for its partition's records (with the partition's own). It never routes,
//! de-duplicates or commits: records reach it routed ([`super::admit`]), and what it writes back commits
//! through its driver's sink.

use super::cache::AccountCache;
use super::timers::{Queued, TimerQueue, take_timers, timer_cause_id};
use crate::EngineError;
use caravan_operators::account::{Cause, Definitions, Effects, Moved, apply_event, fire_timer};
use caravan_schemas::input::InputEvent;
use caravan_schemas::output::Entity;
use caravan_state::{Delta, Store};

/// Where the outputs of a step go: a replay worker's batch part, a Kafka task's batch.
pub(crate) trait OutputSink {
    /// Takes (drains) the actions and change events of one cause: record `seq`, or a timer `(due, arming
    /// order)` firing in the pass after it. Called for every cause, also when it emitted nothing.
    fn take(&mut self, effects: &mut Effects, seq: u64, timer: Option<(i64, &[u64])>);
}

/// The account side of a partition: accounts cached in front of the store, pending timers, and the timer
/// writes since the last write-back.
pub(crate) struct Accounts {
    pub(crate) cache: AccountCache,
    timers: TimerQueue,
    /// Timers armed and cancelled since the last write-back.
    pending: Delta,
    /// Due timers put aside until their account's records have caught up ([`Accounts::fire_due`]).
    aside: Vec<Queued>,
    effects: Effects,
}

/// What a step reads besides the account: the store behind the cache, and the definitions in force.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) store: &'a Store,
    pub(crate) defs: &'a Definitions,
}

/// An account a record applies to: its [`super::keys::account_key`], tenant and id.
#[derive(Clone, Copy)]
pub(crate) struct AccountRef<'a> {
    pub(crate) key: u64,
    pub(crate) tenant: &'a str,
    pub(crate) account: &'a str,
}

impl Accounts {
    /// The account side of a partition whose store holds `timers` (`complete`: the store holds no account).
    pub(crate) fn new(complete: bool, timers: TimerQueue) -> Accounts {
        Accounts {
            cache: AccountCache::new(complete),
            timers,
            pending: Delta::default(),
            aside: Vec::new(),
            effects: Effects::default(),
        }
    }

    /// Applies a routed event to its account (with the record of a person or an opportunity moving in from
    /// another account, if any) and hands the outputs to `out`.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn apply(
        &mut self,
        env: Env<'_>,
        at: AccountRef<'_>,
        event: &InputEvent,
        attach: Option<(Moved, caravan_schemas::Id)>,
        cause: &Cause<'_>,
        out: &mut impl OutputSink,
    ) -> Result<(), EngineError> {
        self.effects.clear();
        let effects = &mut self.effects;
        self.cache.step(env.store, at.key, at.tenant, at.account, |state| {
            apply_event(env.defs, state, event, attach, cause, effects);
        })?;
        self.note_timers(at);
        out.take(&mut self.effects, cause.seq, None);
        Ok(())
    }

    /// Takes a person or an opportunity out of `from` (it moves to another account): its record, or `None`
    /// when the account does not hold it.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn detach(
        &mut self,
        store: &Store,
        from: AccountRef<'_>,
        entity: Entity,
        id: &str,
    ) -> Result<Option<Moved>, EngineError> {
        self.cache.detach(store, from.key, from.tenant, from.account, entity, id)
    }

    /// The timer pass after record `seq`: fires every timer due at `now` (the watermark after the record, or
    /// the clock), in (due, arming) order. `record` is the record's tenant and event id (a firing names it as
    /// its cause when of the same tenant). The timers of accounts for which `waits` holds are put aside
    /// instead ([`Accounts::resume_timers`] gives them back): their accounts have records still to apply
    /// before them (a Kafka partition's accounts held behind a claim; a replay passes `|_| false`).
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn fire_due(
        &mut self,
        env: Env<'_>,
        now: i64,
        seq: u64,
        record: (&str, &str),
        out: &mut impl OutputSink,
        waits: impl Fn(&Queued) -> bool,
    ) -> Result<(), EngineError> {
        while let Some(q) = self.timers.pop_due(now) {
            if waits(&q) {
                self.aside.push(q);
                continue;
            }
            let (handle, tenant, account, key) = q.into_handle();
            let cause = Cause::timer(seq, &handle.timer, timer_cause_id(record.0, record.1, &tenant));
            self.effects.clear();
            let effects = &mut self.effects;
            let fired = self.cache.step(env.store, key, &tenant, &account, |state| {
                fire_timer(env.defs, state, &handle, &cause, effects)
            })?;
            if fired {
                self.pending.delete_timer(&tenant, &account, (&handle.journey_id, handle.instance, handle.slot));
                self.note_timers(AccountRef { key, tenant: &tenant, account: &account });
                out.take(&mut self.effects, seq, Some((handle.timer.due, &handle.timer.arm)));
            }
        }
        Ok(())
    }

    /// Gives back the timers put aside for an account ([`Accounts::fire_due`]): they fire in the next
    /// timer pass whose time has come for them.
    pub(crate) fn resume_timers(&mut self, tenant: &str, account: &str) {
        if self.aside.is_empty() {
            return;
        }
        for q in std::mem::take(&mut self.aside) {
            if q.tenant == tenant && q.account_id == account {
                self.timers.push(q);
            } else {
                self.aside.push(q);
            }
        }
    }

    /// Whether a timer is due at `now`.
    pub(crate) fn timers_due(&self, now: i64) -> bool {
        self.timers.any_due(now)
    }

    /// Pending timers.
    pub(crate) fn timers_pending(&self) -> usize {
        self.timers.len() + self.aside.len()
    }

    /// Records the timers a step armed and cancelled, in the queue and in the pending writes.
    fn note_timers(&mut self, at: AccountRef<'_>) {
        let timers = &mut self.timers;
        take_timers(&mut self.effects, &mut self.pending, at.tenant, at.account, |h| {
            timers.push(Queued::armed(h, at.tenant, at.account, at.key));
        });
    }

    /// The state delta since the last write-back: timer writes and every account changed, as it stands now;
    /// the accounts stay pinned in the cache until commit `commit` is done.
    pub(crate) fn write_back(&mut self, commit: u64) -> Delta {
        let mut delta = std::mem::take(&mut self.pending);
        self.cache.write_back(commit, &mut delta);
        delta
    }
}
