//! A partition task's part in claims (ARCHITECTURE.md, "The person stage", claims): which records must wait
//! at an account and where, what a surrender gives up, and applying an account's held records in turn when
//! the stage answers.
//!
//! It owns the decisions; the queues and their stored form are [`super::super::hold`]'s, and applying a record
//! is [`PartitionTask::input_record`]'s. It never sends anything but claims and answers to the stage.

use super::{Batch, PartitionTask};
use crate::EngineError;
use crate::core::accounts::AccountRef;
use crate::core::keys;
use crate::service::hold::carried;
use crate::service::repartition::{AccountMessage, Origin, StageMessage};
use caravan_operators::account::Definitions;
use caravan_schemas::Id;
use caravan_schemas::output::Entity;
use caravan_schemas::state::{CarriedRecord, HeldKind, HeldRecord, IndexRecord};

/// How a record reaches [`PartitionTask::input_record`].
pub(super) enum Mode {
    /// Read from the input topic: de-duplicated here.
    Read,
    /// Forwarded by the person stage (counted where it was read).
    Forwarded,
    /// Taken out of its account's queue in its turn; `now` is the partition's time when it was read, `seq`
    /// its place among the held records.
    Released { now: i64, seq: u64 },
    /// A claim taken out of its account's queue with the stage's answer: the entity's record and the account
    /// it left, when another partition held it.
    Answered { answer: Option<(CarriedRecord, Id)>, now: i64, seq: u64 },
}

impl Mode {
    /// The partition's time of the record's timer pass when it was held (none: the time after it now).
    pub(super) fn held_now(&self) -> Option<i64> {
        match self {
            Mode::Released { now, .. } | Mode::Answered { now, .. } => Some(*now),
            Mode::Read | Mode::Forwarded => None,
        }
    }

    /// Its place among the held records, if it was held (records held before it came before it).
    pub(super) fn held_seq(&self) -> Option<u64> {
        match self {
            Mode::Released { seq, .. } | Mode::Answered { seq, .. } => Some(*seq),
            Mode::Read | Mode::Forwarded => None,
        }
    }
}

/// A record that cannot apply yet: it waits at `account` as `kind`; `now` is the partition's time after it;
/// `about`, the [`keys::index_key`] of the person or opportunity it is about.
pub(super) struct Hold {
    pub(super) tenant: Id,
    pub(super) account: Id,
    pub(super) kind: HeldKind,
    pub(super) now: i64,
    pub(super) about: Option<u128>,
}

impl PartitionTask {
    /// Holds a record at its account.
    pub(super) fn hold(&mut self, hold: Hold, raw: &[u8], origin: Origin, b: &mut Batch) {
        let record = HeldRecord { raw: raw.to_vec(), now: hold.now, about: hold.about, origin, kind: hold.kind };
        self.holds.hold(hold.tenant, hold.account, record, &mut b.out.epoch.delta);
    }

    /// Whether a record must wait, and where: behind a claim of the entity it is about, behind the held
    /// records of its account, or as a claim of its own (it brings a person or an opportunity this partition
    /// does not hold to one of its accounts). A claim is sent to the stage here.
    pub(super) fn must_wait(
        &mut self,
        event: &caravan_schemas::input::InputEvent,
        route: &crate::core::routing::Route,
        indexed: Option<crate::core::admit::Indexed<'_>>,
        known: Option<&IndexRecord>,
        mode: &Mode,
        b: &mut Batch,
    ) -> Option<Hold> {
        if self.stage.is_none() || matches!(mode, Mode::Answered { .. }) {
            return None;
        }
        let tenant = &event.tenant;
        let now =
            mode.held_now().unwrap_or_else(|| b.clock.unwrap_or_else(|| self.admission.watermark_after(event.ts.0)));
        let about = indexed.map(|i| i.key);
        // A record about a person or an opportunity waits behind every earlier record about it still held
        // (a claim of it, or a record held at an account), so that each entity's records apply in read order.
        if let Some((t, a)) = indexed.and_then(|i| self.holds.waiting_about(i.key, mode.held_seq())) {
            return Some(Hold { tenant: t.clone(), account: a.clone(), kind: HeldKind::Record, now, about });
        }
        // A record taken out in its turn does not wait behind its own account's queue again.
        if let Some(account) =
            route.account.as_ref().filter(|a| !matches!(mode, Mode::Released { .. }) && self.holds.is_held(tenant, a))
        {
            return Some(Hold { tenant: tenant.clone(), account: account.clone(), kind: HeldKind::Record, now, about });
        }
        let (i, update) = (indexed?, route.index_update.as_ref().filter(|u| u.present)?);
        if known.is_some_and(|k| k.present) {
            return None;
        }
        let claim = StageMessage::Claim {
            tenant: tenant.clone(),
            entity: i.entity,
            id: Id::from(i.id),
            account: update.account_id.clone(),
            partition: self.partition,
            ts: event.ts.0,
        };
        b.out.forwards.push(claim.forward(self.cfg.partitions));
        let kind = HeldKind::Claim { entity: i.entity, id: Id::from(i.id), answer: None };
        Some(Hold { tenant: tenant.clone(), account: update.account_id.clone(), kind, now, about })
    }

    /// A partition asks for a person or an opportunity this one holds. It goes once every earlier record about
    /// it here has applied: it waits behind the newest one still held (a claim of its own, or a record about
    /// it). It never waits for records of the account about others: two accounts that each wait for the
    /// other's claim would wait forever.
    pub(super) fn surrender_asked(
        &mut self,
        tenant: &Id,
        entity: Entity,
        id: Id,
        (to_partition, to_account): (i32, Id),
        offset: i64,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        let key = keys::index_key(entity, tenant, &id);
        match self.holds.waiting_about(key, None).map(|(t, a)| (t.clone(), a.clone())) {
            Some((t, a)) => {
                let kind = HeldKind::Surrender { entity, id, to_partition, to_account };
                let origin = Origin { topic: String::new(), partition: self.partition, offset };
                let now = b.clock.or(self.admission.watermark()).unwrap_or(i64::MIN);
                let hold = Hold { tenant: t, account: a, kind, now, about: Some(key) };
                self.hold(hold, &[], origin, b);
                Ok(())
            }
            None => self.surrender(tenant, entity, &id, to_partition, &to_account, b),
        }
    }

    /// The stage's answer to a claim of this partition: the account's records whose turn has come apply.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim_answered(
        &mut self,
        defs: &Definitions,
        (tenant, account): (&Id, &Id),
        entity: Entity,
        id: &Id,
        carried: Option<(CarriedRecord, Id)>,
        offset: i64,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        if self.holds.answer(tenant, account, entity, id, carried, &mut b.out.epoch.delta) {
            return self.release(defs, tenant, account, b);
        }
        tracing::warn!(
            partition = self.partition,
            offset,
            id = id.as_str(),
            account = account.as_str(),
            "An answer to a claim this partition does not wait for: ignored."
        );
        Ok(())
    }

    /// Applies the records held at an account whose turn has come, in order, until one waits for a claim.
    pub(super) fn release(
        &mut self,
        defs: &Definitions,
        tenant: &Id,
        account: &Id,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        // Its timers put aside while it waited fire among its records, as their time came.
        self.accounts.resume_timers(tenant, account);
        self.releasing = Some((tenant.clone(), account.clone()));
        let released = self.release_held(defs, (tenant, account), b);
        self.releasing = None;
        released?;
        if !self.holds.is_held(tenant, account) {
            // Caught up: what the partition's time has reached since fires now.
            let now = b.clock.or(self.admission.watermark());
            if let Some(now) = now {
                let (t, e) = self.last_event.clone();
                self.timer_pass(defs, now, (&t, &e), b)?;
            }
        }
        Ok(())
    }

    /// The loop of [`PartitionTask::release`].
    fn release_held(
        &mut self,
        defs: &Definitions,
        (tenant, account): (&Id, &Id),
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        while let Some(held) = self.holds.next_ready(tenant, account, &mut b.out.epoch.delta) {
            let mode = match &held.record.kind {
                HeldKind::Surrender { entity, id, to_partition, to_account } => {
                    let (entity, id, to_partition, to_account) =
                        (*entity, id.clone(), *to_partition, to_account.clone());
                    self.surrender(tenant, entity, &id, to_partition, &to_account, b)?;
                    continue;
                }
                HeldKind::Claim { answer: Some(answer), .. } => {
                    Mode::Answered { answer: answer.clone(), now: held.record.now, seq: held.seq }
                }
                HeldKind::Record | HeldKind::Claim { answer: None, .. } => {
                    Mode::Released { now: held.record.now, seq: held.seq }
                }
            };
            let (raw, origin) = (held.record.raw.clone(), held.record.origin.clone());
            if let Some(hold) = self.input_record(defs, &raw, &origin, mode, b)? {
                let claim = matches!(hold.kind, HeldKind::Claim { .. });
                if claim && hold.tenant == *tenant && hold.account == *account {
                    // Its turn came and it needs a claim of its own: it waits at the front.
                    self.holds.hold_again(hold.tenant, hold.account, held, hold.kind, &mut b.out.epoch.delta);
                    break;
                }
                // It waits behind a claim of the entity it is about (at another account, or further back).
                self.hold(hold, &raw, origin, b);
            }
        }
        Ok(())
    }

    /// Gives a person or an opportunity up to the account of another partition that claimed it: its record
    /// (alive or a tombstone, wherever this partition holds it) leaves its account and travels in the answer.
    fn surrender(
        &mut self,
        tenant: &Id,
        entity: Entity,
        id: &Id,
        to_partition: i32,
        to_account: &Id,
        b: &mut Batch,
    ) -> Result<(), EngineError> {
        let key = keys::index_key(entity, tenant, id);
        let carried_record = match self.admission.index.lookup(&self.store, key, entity, tenant, id)? {
            Some(k) => {
                let at = AccountRef { key: keys::account_key(tenant, &k.account_id), tenant, account: &k.account_id };
                let record = self.accounts.detach(&self.store, at, entity, id)?;
                if k.present {
                    let gone = IndexRecord { account_id: k.account_id.clone(), present: false };
                    let commit = self.commit_number();
                    self.admission.index.set(key, entity, tenant, id, gone, commit);
                }
                record.map(|r| (carried(r), k.account_id))
            }
            None => None,
        };
        let answer = AccountMessage::Claimed {
            tenant: tenant.clone(),
            entity,
            id: id.clone(),
            account: to_account.clone(),
            carried: carried_record,
        };
        b.out.forwards.push(answer.forward(to_partition, tenant, to_account));
        Ok(())
    }
}
