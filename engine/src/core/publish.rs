//! The publication passes, the same in both modes: what publishing a journey version or a buying group
//! template, or stopping a journey, does to the accounts a store holds.
//!
//! It owns the passes over a store's accounts: a new newest journey version enters the accounts already in
//! its audience (SPEC §3.2), a new template gives every account with people its group, a stop ends every
//! instance silently and deletes its timers. A pass gathers outputs and a state delta ([`Pass`]) and becomes
//! an epoch of its own ([`Pass::into_epoch`]) that the driver's sink commits like any other; it never
//! commits anything itself.

use super::cache::{load_account, write_dirty};
use super::epoch::Epoch;
use super::outputs::{self, OutRecord};
use super::timers::take_timers;
use crate::EngineError;
use crate::telemetry::Tally;
use caravan_operators::account::{
    AccountState, Cause, Definitions, Effects, enter_on_publish, reassess_groups, stop_journey,
};
use caravan_operators::buying_group::Template;
use caravan_operators::journey::Journey;
use caravan_schemas::time::Timestamp;
use caravan_state::{Delta, Position, Store};
use std::sync::Arc;

/// Outputs and state of a pass over accounts, before they commit.
#[derive(Default)]
pub(crate) struct Pass {
    pub(crate) delta: Delta,
    pub(crate) outputs: Vec<OutRecord>,
    /// Actions and changes emitted.
    pub(crate) tally: Tally,
}

impl Pass {
    /// Takes one account's effects: outputs serialized, timers and changed records into the delta.
    pub(crate) fn take(&mut self, acct: &mut AccountState, out: &mut Effects) {
        let (tenant, account) = (acct.tenant.to_string(), acct.account_id.to_string());
        outputs::take(out, &mut self.outputs, &mut self.tally);
        take_timers(out, &mut self.delta, &tenant, &account, |_| {});
        write_dirty(&mut self.delta, &tenant, &account, acct);
    }

    /// The pass as the epoch after `committed`: its input position stays where it is.
    pub(crate) fn into_epoch(self, committed: &Position) -> Epoch {
        Epoch::after(committed, self.outputs, self.delta, self.tally)
    }
}

/// A new template: every account of its tenant with people gets its group (stage changes reach the journeys
/// already running). `seq` and `ts` place the publication after an input record.
pub(crate) fn template_pass(
    store: &Store,
    defs: &Definitions,
    template: &Template,
    (seq, ts): (u64, Timestamp),
    pass: &mut Pass,
) -> Result<(), EngineError> {
    let mut out = Effects::default();
    let cause_id = format!("publish:{}:{}", template.id, template.version);
    let cause = Cause::control(seq, ts, &cause_id);
    for account in store.accounts_with_people(&template.tenant)? {
        let mut acct = load_account(store, &template.tenant, &account)?;
        reassess_groups(defs, &mut acct, &cause, &mut out);
        pass.take(&mut acct, &mut out);
    }
    Ok(())
}

/// A new journey version: when it is its tenant's newest, the accounts already in its audience enter it.
/// Returns how many entered.
pub(crate) fn entry_pass(
    store: &Store,
    defs: &Definitions,
    journey: &Arc<Journey>,
    (seq, ts): (u64, Timestamp),
    pass: &mut Pass,
) -> Result<u64, EngineError> {
    let newest = defs.newest_for_tenant(&journey.tenant).any(|j| Arc::ptr_eq(j, journey));
    if !newest {
        return Ok(0);
    }
    let mut out = Effects::default();
    let cause_id = format!("publish:{}:{}", journey.id, journey.version);
    let cause = Cause::control(seq, ts, &cause_id);
    let mut entered = 0u64;
    for (account, record) in store.accounts_of(&journey.tenant)? {
        if !record.audiences.iter().any(|a| *a == journey.audience) {
            continue;
        }
        let mut acct = load_account(store, &journey.tenant, &account)?;
        if enter_on_publish(defs, &mut acct, journey, &cause, &mut out) {
            entered += 1;
        }
        pass.take(&mut acct, &mut out);
    }
    tracing::info!(journey = %journey.id, version = journey.version, tenant = %journey.tenant, entered,
        "Published: accounts already in the audience entered.");
    Ok(entered)
}

/// A stop: every instance of the journey in the store ends silently and its timers go. Returns how many ended.
pub(crate) fn stop_pass(store: &Store, tenant: &str, journey_id: &str, pass: &mut Pass) -> Result<u64, EngineError> {
    let mut out = Effects::default();
    let mut ended = 0u64;
    for (account, record) in store.accounts_of(tenant)? {
        if !record.instances.iter().any(|i| i.journey_id == journey_id) {
            continue;
        }
        let mut acct = load_account(store, tenant, &account)?;
        ended += stop_journey(&mut acct, journey_id, &mut out) as u64;
        pass.take(&mut acct, &mut out);
    }
    Ok(ended)
}
