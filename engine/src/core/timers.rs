//! Timers of one partition: the queue of pending timers in due order, how a step's armed and cancelled
//! timers reach the queue and the state delta, and which event a firing names as its cause.
//!
//! It owns the order in which timers fire: due time, then arming order (`operators::timers` computes the
//! arming keys so that this order never depends on the number of workers or partitions). It never decides
//! *when* a partition's time has come: the caller passes the watermark (event time) or the clock.

use super::keys;
use caravan_operators::account::{Effects, TimerHandle};
use caravan_schemas::Id;
use caravan_schemas::state::TimerRecord;
use caravan_state::Delta;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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

impl Queued {
    /// The handle `fire_timer` takes, with the account it is on.
    pub(crate) fn into_handle(self) -> (TimerHandle, Id, Id, u64) {
        let timer = TimerRecord { due: self.due, arm: self.arm };
        let handle = TimerHandle { journey_id: self.journey_id, instance: self.instance, slot: self.slot, timer };
        (handle, self.tenant, self.account_id, self.account_key)
    }
}

/// The pending timers of a partition (a replay worker's or a Kafka partition task's), soonest first.
#[derive(Default)]
pub(crate) struct TimerQueue(BinaryHeap<Reverse<Queued>>);

impl TimerQueue {
    /// The timers a store holds.
    pub(crate) fn stored(timers: impl IntoIterator<Item = caravan_state::StoredTimer>) -> TimerQueue {
        TimerQueue(timers.into_iter().map(|t| Reverse(Queued::stored(t))).collect())
    }

    pub(crate) fn push(&mut self, q: Queued) {
        self.0.push(Reverse(q));
    }

    /// The next timer due at `now` (a watermark or the clock), taken out of the queue.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<Queued> {
        if self.0.peek().is_some_and(|Reverse(t)| t.due <= now) { self.0.pop().map(|Reverse(q)| q) } else { None }
    }

    /// Whether a timer is due at `now`.
    pub(crate) fn any_due(&self, now: i64) -> bool {
        self.0.peek().is_some_and(|Reverse(t)| t.due <= now)
    }

    /// Pending timers.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
