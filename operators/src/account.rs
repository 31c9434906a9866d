//! The account state machine: one input event or one timer applied to one account's state.
//!
//! It owns the semantics of SPEC §3.2 and §7 for what this version supports: entities and their change
//! events (net per cause, versioned without gaps), audience membership and journey entry, the execution of
//! nodes, timers armed and cancelled, people moving with their account. Every function here is pure and
//! deterministic: the same state, input and [`Cause`] give the same state and outputs. It is not storage and
//! not scheduling: the engine loads [`AccountState`], keeps the timer queue, and commits what is marked dirty.
//! Nor is it the catalogue of published journeys and templates it reads: [`Definitions`] (and the rules of
//! publication) live in `account/definitions.rs`.
//!
//! ```
//! use caravan_operators::account::{AccountState, Cause, Definitions, Effects, apply_event};
//! use caravan_schemas::input::{decode, DecodeLimits};
//! let defs = Definitions::default();
//! let mut acct = AccountState::new("t", "a");
//! let ev = decode(br#"{"tenant":"t","type":"account.upserted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"n":1}}"#,
//!                 &DecodeLimits::default()).unwrap();
//! let mut out = Effects::default();
//! apply_event(&defs, &mut acct, &ev, None, &Cause::record(1, ev.ts, &ev.event_id), &mut out);
//! assert_eq!(out.changes.len(), 1);
//! assert_eq!(out.changes[0].version, 1);
//! ```

use crate::buying_group::{self, Recompute};
use crate::ids;
use crate::journey::{AccountEvent, Journey};
use crate::runtime::{self, AccountEventValue, StepCx};
use caravan_schemas::Id;
use caravan_schemas::attrs::{Attrs, UndoLog};
use caravan_schemas::input::{AudienceStatus, EventBody, InputEvent};
use caravan_schemas::output::{ActionRecord, ChangeEvent, ChangeOp, Entity, Origin};
use caravan_schemas::state::{AccountRecord, ActivityHistory, OpportunityRecord, PersonRecord, TimerRecord};
use caravan_schemas::time::{Timestamp, TimestampText};
use serde_json::Value;

mod definitions;

pub use crate::runtime::fire_timer;
pub use definitions::Definitions;

/// One person of an account, with a flag telling the engine it must be written back.
#[derive(Clone, Debug, PartialEq)]
pub struct PersonSlot {
    /// The stored record.
    pub record: PersonRecord,
    /// Changed since the engine last took the dirty set (set through [`AccountState`], which keeps count).
    dirty: bool,
}

/// One opportunity of an account, with a flag telling the engine it must be written back.
#[derive(Clone, Debug, PartialEq)]
pub struct OpportunitySlot {
    /// The stored record.
    pub record: OpportunityRecord,
    /// Changed since the engine last took the dirty set (set through [`AccountState`], which keeps count).
    dirty: bool,
}

/// A changed person or opportunity record of an account, to write back ([`AccountState::take_dirty_slots`]).
#[derive(Debug)]
pub enum DirtySlot<'a> {
    /// A person's record.
    Person(&'a PersonRecord),
    /// An opportunity's record.
    Opportunity(&'a OpportunityRecord),
}

/// A person or an opportunity moving from one account to another, with its record.
#[derive(Clone, Debug, PartialEq)]
pub enum Moved {
    /// A person.
    Person(PersonRecord),
    /// An opportunity.
    Opportunity(OpportunityRecord),
}

/// The key of a person id in an account's person index: a hash (a match is confirmed on the id itself).
fn person_key(person_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(person_id.as_bytes());
    h.finish()
}

/// Everything the state machine reads and writes for one account.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountState {
    /// The tenant.
    pub tenant: Id,
    /// The account id.
    pub account_id: Id,
    /// The account record.
    pub record: AccountRecord,
    /// The account record changed since the engine last took the dirty set.
    pub record_dirty: bool,
    /// The account's people (and tombstones of deleted ones), in the order they joined. Only this module adds,
    /// removes or reorders them (keeping `person_keys` beside them); others read them through
    /// [`AccountState::persons`] or change a record in place.
    pub(crate) persons: Vec<PersonSlot>,
    /// [`person_key`] of each of `persons`, in the same order: finding a person (every activity does) reads
    /// this one short array instead of a slot per person, whose records span many cache lines.
    person_keys: Vec<u64>,
    /// The account's opportunities (and tombstones of deleted ones), sorted by id.
    pub opportunities: Vec<OpportunitySlot>,
    /// Some person or opportunity slot is dirty: the engine's write-back looks at the slots only then (most
    /// records, activities, change no person, and the slots of an account span many cache lines).
    slots_dirty: bool,
}

impl AccountState {
    /// A new, empty account: it exists only after its first upsert.
    pub fn new(tenant: &str, account_id: &str) -> AccountState {
        AccountState {
            tenant: Id::from(tenant),
            account_id: Id::from(account_id),
            record: AccountRecord::default(),
            record_dirty: false,
            persons: Vec::new(),
            person_keys: Vec::new(),
            opportunities: Vec::new(),
            slots_dirty: false,
        }
    }

    /// Rebuilds an account from stored records (persons in any order; they are put in join order).
    pub fn from_records(
        tenant: &str,
        account_id: &str,
        record: AccountRecord,
        mut persons: Vec<PersonRecord>,
        opportunities: Vec<OpportunityRecord>,
    ) -> Self {
        persons.sort_by_key(|p| p.joined);
        let mut opportunities = opportunities;
        opportunities.sort_by(|a, b| a.opportunity_id.cmp(&b.opportunity_id));
        AccountState {
            tenant: Id::from(tenant),
            account_id: Id::from(account_id),
            record,
            record_dirty: false,
            person_keys: persons.iter().map(|p| person_key(&p.person_id)).collect(),
            persons: persons.into_iter().map(|record| PersonSlot { record, dirty: false }).collect(),
            opportunities: opportunities.into_iter().map(|record| OpportunitySlot { record, dirty: false }).collect(),
            slots_dirty: false,
        }
    }

    fn opportunity_ix(&self, id: &str) -> Option<usize> {
        self.opportunities.binary_search_by(|o| o.record.opportunity_id.as_str().cmp(id)).ok()
    }

    /// Adds an opportunity at its place in id order (the order they are stored and reloaded in, so that
    /// conditions see the same list before and after a reload). Returns its index.
    fn insert_opportunity(&mut self, record: OpportunityRecord) -> usize {
        let at = self.opportunities.partition_point(|o| o.record.opportunity_id < record.opportunity_id);
        self.opportunities.insert(at, OpportunitySlot { record, dirty: true });
        self.slots_dirty = true;
        at
    }

    /// Marks a person to be written back.
    pub(crate) fn mark_person(&mut self, ix: usize) {
        self.persons[ix].dirty = true;
        self.slots_dirty = true;
    }

    /// Marks an opportunity to be written back.
    pub(crate) fn mark_opportunity(&mut self, ix: usize) {
        self.opportunities[ix].dirty = true;
        self.slots_dirty = true;
    }

    /// Adds a person last, to be written back. Returns its index.
    fn push_person(&mut self, record: PersonRecord) -> usize {
        self.person_keys.push(person_key(&record.person_id));
        self.persons.push(PersonSlot { record, dirty: true });
        self.slots_dirty = true;
        self.persons.len() - 1
    }

    /// Whether anything changed since the engine last took the dirty set: the record, or a person or
    /// opportunity slot.
    pub fn is_dirty(&self) -> bool {
        self.record_dirty || self.slots_dirty
    }

    /// Hands every person and opportunity changed since the last call to `write` (the engine writes them
    /// back) and clears the marks. Looks at no slot when none is marked.
    pub fn take_dirty_slots(&mut self, mut write: impl FnMut(DirtySlot<'_>)) {
        if !std::mem::take(&mut self.slots_dirty) {
            return;
        }
        for p in self.persons.iter_mut().filter(|p| p.dirty) {
            write(DirtySlot::Person(&p.record));
            p.dirty = false;
        }
        for o in self.opportunities.iter_mut().filter(|o| o.dirty) {
            write(DirtySlot::Opportunity(&o.record));
            o.dirty = false;
        }
    }

    /// Removes a person or an opportunity from this account (it moves to another one, or is re-created
    /// there after a delete) and hands back its record. The engine deletes its key here in the same commit.
    pub fn detach(&mut self, entity: Entity, id: &str) -> Option<Moved> {
        match entity {
            Entity::Person => self.detach_person(id).map(Moved::Person),
            Entity::Opportunity => {
                let ix = self.opportunity_ix(id)?;
                Some(Moved::Opportunity(self.opportunities.remove(ix).record))
            }
            Entity::Account => None,
        }
    }

    /// The account's people (and tombstones of deleted ones), in the order they joined.
    pub fn persons(&self) -> &[PersonSlot] {
        &self.persons
    }

    fn person_ix(&self, person_id: &str) -> Option<usize> {
        let key = person_key(person_id);
        (0..self.person_keys.len()).find(|&ix| {
            self.person_keys[ix] == key && caravan_schemas::same_id(&self.persons[ix].record.person_id, person_id)
        })
    }

    /// Removes a person from this account (it moves to another one) and hands back its record.
    /// The engine writes the removal (a delete of the person's key here) with the same commit.
    fn detach_person(&mut self, person_id: &str) -> Option<PersonRecord> {
        let ix = self.person_ix(person_id)?;
        self.person_keys.remove(ix);
        Some(self.persons.remove(ix).record)
    }

    /// Moves the person at `ix` to its place in join order (after everyone who joined at or before it) and
    /// returns its new index.
    fn reorder_person(&mut self, ix: usize) -> usize {
        let (slot, key) = (self.persons.remove(ix), self.person_keys.remove(ix));
        let at = self.persons.partition_point(|p| p.record.joined <= slot.record.joined);
        self.persons.insert(at, slot);
        self.person_keys.insert(at, key);
        at
    }

    /// Whether `person_keys` matches `persons` (the invariant every change above keeps).
    #[cfg(test)]
    pub(crate) fn person_keys_match(&self) -> bool {
        self.person_keys.iter().copied().eq(self.persons.iter().map(|p| person_key(&p.record.person_id)))
    }
}

/// What caused a step: an input record, a timer firing after one, or a publication between records.
#[derive(Clone, Debug)]
pub struct Cause<'a> {
    /// Event time of the cause (a timer's due time for a timer).
    pub ts: Timestamp,
    /// The input record (for timers: the one after which it fired).
    pub event_id: &'a str,
    /// Input sequence number of that record.
    pub seq: u64,
    /// The timer that fired, for a timer cause.
    pub timer: Option<&'a TimerRecord>,
    /// A publication applied after record `seq` and its timer pass.
    pub control: bool,
}

impl<'a> Cause<'a> {
    /// The cause for input record number `seq`.
    pub fn record(seq: u64, ts: Timestamp, event_id: &'a str) -> Cause<'a> {
        Cause { ts, event_id, seq, timer: None, control: false }
    }

    /// The cause for a publication applied after input record `seq` (and the timers that fired after it), at
    /// event time `ts`; `id` names it in `cause_event_id`.
    pub fn control(seq: u64, ts: Timestamp, id: &'a str) -> Cause<'a> {
        Cause { ts, event_id: id, seq, timer: None, control: true }
    }

    /// The cause for a timer firing in the pass after input record `seq`.
    pub fn timer(seq: u64, timer: &'a TimerRecord, event_id: &'a str) -> Cause<'a> {
        Cause { ts: Timestamp(timer.due), event_id, seq, timer: Some(timer), control: false }
    }

    /// The arming-order prefix of timers armed by this cause (see [`crate::timers`]).
    pub(crate) fn arm_prefix(&self) -> Vec<u64> {
        match self.timer {
            None if self.control => crate::timers::control_prefix(self.seq),
            None => crate::timers::record_prefix(self.seq),
            Some(t) => crate::timers::timer_prefix(self.seq, t),
        }
    }
}

/// A timer armed or cancelled by a step, for the engine's timer queue and index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerHandle {
    /// The journey.
    pub journey_id: Id,
    /// The instance number.
    pub instance: u32,
    /// Which timer of the instance: 0 for its node's, `b + 1` for branch `b` of a `split_people`.
    pub slot: u32,
    /// Due time and arming order.
    pub timer: TimerRecord,
}

/// The outputs of one step, in execution order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Action records.
    pub actions: Vec<ActionRecord>,
    /// Change events.
    pub changes: Vec<ChangeEvent>,
    /// Timers armed.
    pub armed: Vec<TimerHandle>,
    /// Timers cancelled before they fired.
    pub cancelled: Vec<TimerHandle>,
    arm_count: u64,
    /// Account events raised by actions, not yet delivered to listens.
    pub(crate) pending: Vec<AccountEventValue>,
}

impl Effects {
    /// Empties the outputs, keeping the allocations.
    pub fn clear(&mut self) {
        self.actions.clear();
        self.changes.clear();
        self.armed.clear();
        self.cancelled.clear();
        self.arm_count = 0;
        self.pending.clear();
    }

    /// The rank of the next timer armed in this step.
    pub(crate) fn next_arm(&mut self) -> u64 {
        self.arm_count += 1;
        self.arm_count - 1
    }
}

/// The state of one entity at the first time a cause touched it.
struct Touch {
    entity: Entity,
    id: Id,
    existed: bool,
    attributes: Before,
    account_id: Id,
    origin: Origin,
    by: Option<(Id, Id)>,
}

/// An entity's attributes as they were when a cause first touched it.
enum Before {
    /// A copy.
    Copy(Attrs),
    /// What the upsert that first touched them replaced: the current attributes with this put back, as long
    /// as nothing else changed them since. Every later change touches the entity first
    /// ([`Tracker::touch`]), which turns the log into a copy before the change. An upsert changes a few of
    /// an entity's attributes: copying them all at every upsert was ~8% of a worker's time.
    Undo(UndoLog),
}

impl Before {
    /// The attributes before, given the current ones.
    fn rebuild(self, now: &Attrs) -> Attrs {
        match self {
            Before::Copy(a) => a,
            Before::Undo(log) => {
                let mut a = now.clone();
                a.undo(log);
                a
            }
        }
    }
}

/// Net change tracking for one cause: at most one change event per entity (SPEC §7).
#[derive(Default)]
pub(crate) struct Tracker {
    touched: Vec<Touch>,
}

impl Tracker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn touch(
        &mut self,
        entity: Entity,
        id: &str,
        existed: bool,
        attrs: &Attrs,
        account_id: &str,
        origin: Origin,
        by: Option<(&str, &str)>,
    ) {
        if let Some(t) = self.touched.iter_mut().find(|t| t.entity == entity && t.id == id) {
            if origin == Origin::Input {
                t.origin = Origin::Input;
                t.by = None;
            }
            // `attrs` are about to change again: an undo log would no longer lead back from them.
            if let Before::Undo(log) = &mut t.attributes {
                t.attributes = Before::Copy(Before::Undo(std::mem::take(log)).rebuild(attrs));
            }
            return;
        }
        self.touched.push(Touch {
            entity,
            id: Id::from(id),
            existed,
            attributes: Before::Copy(attrs.clone()),
            account_id: Id::from(account_id),
            origin,
            by: by.map(|(j, n)| (Id::from(j), Id::from(n))),
        });
    }

    /// An input upsert of an entity: merges `upsert` into its attributes `attrs`, as [`Tracker::touch`] then
    /// [`Attrs::merge`] would, keeping only what the merge replaced when this is the cause's first touch.
    pub(crate) fn upsert(
        &mut self,
        entity: Entity,
        id: &str,
        existed: bool,
        attrs: &mut Attrs,
        upsert: &Attrs,
        account_id: &str,
    ) {
        if self.touched.iter().any(|t| t.entity == entity && t.id == id) {
            self.touch(entity, id, existed, attrs, account_id, Origin::Input, None);
            attrs.merge(upsert);
            return;
        }
        let log = attrs.merge_undoable(upsert);
        self.touched.push(Touch {
            entity,
            id: Id::from(id),
            existed,
            attributes: Before::Undo(log),
            account_id: Id::from(account_id),
            origin: Origin::Input,
            by: None,
        });
    }

    pub(crate) fn touch_account(&mut self, acct: &AccountState, origin: Origin, by: Option<(&str, &str)>) {
        let (id, existed) = (acct.account_id.clone(), acct.record.exists);
        self.touch(Entity::Account, &id, existed, &acct.record.attributes, &acct.account_id, origin, by);
    }

    /// Emits the net change events of the cause, in the order the entities were first touched.
    pub(crate) fn finish(self, acct: &mut AccountState, cause: &Cause<'_>, out: &mut Effects) {
        for t in self.touched {
            let (exists, attrs, version) = match t.entity {
                Entity::Account => (acct.record.exists, &acct.record.attributes, &mut acct.record.version),
                Entity::Person => {
                    let Some(ix) = acct.person_ix(&t.id) else { continue };
                    let p = &mut acct.persons[ix];
                    (p.record.present, &p.record.attributes, &mut p.record.version)
                }
                Entity::Opportunity => {
                    let Some(ix) = acct.opportunity_ix(&t.id) else { continue };
                    let o = &mut acct.opportunities[ix];
                    (o.record.present, &o.record.attributes, &mut o.record.version)
                }
            };
            let moved = t.entity != Entity::Account && t.existed && exists && t.account_id != acct.account_id;
            let (op, before, after) = match (t.existed, exists) {
                (false, false) => continue,
                (false, true) => (ChangeOp::Create, Attrs::default(), attrs.clone()),
                (true, false) => (ChangeOp::Delete, t.attributes.rebuild(attrs), Attrs::default()),
                (true, true) => {
                    let (mut before, mut after) = match &t.attributes {
                        Before::Copy(a) => a.diff(attrs),
                        Before::Undo(log) => attrs.diff_undone(log),
                    };
                    if moved {
                        before.insert("account_id", Value::String(t.account_id.to_string()));
                        after.insert("account_id", Value::String(acct.account_id.to_string()));
                    }
                    if before.is_empty() {
                        continue;
                    }
                    (ChangeOp::Update, before, after)
                }
            };
            *version += 1;
            let version = *version;
            let entity_name = t.entity.as_str();
            match t.entity {
                Entity::Account => acct.record_dirty = true,
                Entity::Person => {
                    if let Some(ix) = acct.person_ix(&t.id) {
                        acct.mark_person(ix);
                    }
                }
                Entity::Opportunity => {
                    if let Some(ix) = acct.opportunity_ix(&t.id) {
                        acct.mark_opportunity(ix);
                    }
                }
            }
            let (journey_id, node_id) = match t.by {
                Some((j, n)) => (Some(j), Some(n)),
                None => (None, None),
            };
            out.changes.push(ChangeEvent {
                change_id: ids::change_id(&acct.tenant, entity_name, &t.id, version),
                tenant: acct.tenant.clone(),
                entity: t.entity,
                entity_id: t.id,
                account_id: acct.account_id.clone(),
                op,
                before,
                after,
                version,
                ts: TimestampText(cause.ts),
                origin: t.origin,
                cause_event_id: Id::from(cause.event_id),
                journey_id,
                node_id,
            });
        }
    }
}

/// Applies one input event routed to this account.
///
/// `attach` carries the record of a person or opportunity that moves here from another account (or is
/// re-created after a delete there), detached from it by the engine before this call, with that account's id.
pub fn apply_event(
    defs: &Definitions,
    acct: &mut AccountState,
    ev: &InputEvent,
    attach: Option<(Moved, Id)>,
    cause: &Cause<'_>,
    out: &mut Effects,
) {
    let mut tracker = Tracker::default();
    let mut account_event: Option<AccountEventValue> = None;
    let changes_before = out.changes.len();
    // Whose buying-group roles the record may change (`None`: groups are not re-evaluated).
    let mut roles = Some(Recompute::Account);
    let mut entered: Option<&Id> = None;
    match &ev.body {
        EventBody::AccountUpserted { attributes, .. } => {
            let (account, existed) = (&acct.account_id, acct.record.exists);
            tracker.upsert(Entity::Account, account, existed, &mut acct.record.attributes, attributes, account);
            acct.record.exists = true;
            acct.record_dirty = true;
        }
        EventBody::AccountDeleted { .. } => {
            if acct.record.exists {
                tracker.touch_account(acct, Origin::Input, None);
                acct.record.exists = false;
                acct.record.attributes.clear();
                acct.record.audiences.clear();
                acct.record.lists.clear();
                acct.record.groups.clear();
                for inst in std::mem::take(&mut acct.record.instances) {
                    runtime::cancel_timers(&inst, out);
                }
                acct.record_dirty = true;
            }
            roles = None;
        }
        EventBody::PersonUpserted { person_id, attributes, .. } => {
            let seq = cause.seq;
            let (ix, joins) = match (acct.person_ix(person_id), attach) {
                (Some(ix), _) => (ix, !acct.persons[ix].record.present),
                (None, Some((Moved::Person(record), from))) => {
                    let (present, attrs) = (record.present, record.attributes.clone());
                    let ix = acct.push_person(record);
                    tracker.touch(Entity::Person, person_id, present, &attrs, &from, Origin::Input, None);
                    (ix, true)
                }
                (None, _) => {
                    let record = PersonRecord { person_id: person_id.clone(), ..PersonRecord::default() };
                    (acct.push_person(record), true)
                }
            };
            let slot = &mut acct.persons[ix];
            let existed = slot.record.present;
            tracker.upsert(
                Entity::Person,
                person_id,
                existed,
                &mut slot.record.attributes,
                attributes,
                &acct.account_id,
            );
            if joins {
                slot.record.joined = seq;
            }
            slot.record.present = true;
            acct.mark_person(ix);
            // Keep join order: a person who (re)joins goes last.
            roles = Some(Recompute::Person(acct.reorder_person(ix)));
        }
        EventBody::PersonDeleted { person_id } => {
            if let Some(ix) = acct.person_ix(person_id).filter(|&ix| acct.persons[ix].record.present) {
                let p = &acct.persons[ix].record;
                tracker.touch(Entity::Person, person_id, true, &p.attributes, &acct.account_id, Origin::Input, None);
                let slot = &mut acct.persons[ix];
                slot.record.present = false;
                slot.record.attributes.clear();
                acct.mark_person(ix);
                roles = Some(Recompute::Person(ix));
            }
        }
        EventBody::AccountAudience { audience_id, status, .. } => match status {
            AudienceStatus::Entered => {
                if let Err(at) = acct.record.audiences.binary_search(audience_id) {
                    acct.record.audiences.insert(at, audience_id.clone());
                    acct.record_dirty = true;
                    entered = Some(audience_id);
                }
            }
            AudienceStatus::Exited => {
                if let Ok(at) = acct.record.audiences.binary_search(audience_id) {
                    acct.record.audiences.remove(at);
                    acct.record_dirty = true;
                    let ending: Vec<usize> = (0..acct.record.instances.len())
                        .filter(|&i| {
                            let inst = &acct.record.instances[i];
                            defs.get(&acct.tenant, &inst.journey_id, inst.journey_version)
                                .is_some_and(|j| j.exit_on_audience_exit && j.audience == *audience_id)
                        })
                        .collect();
                    for i in ending.into_iter().rev() {
                        runtime::end_instance(acct, i, out);
                    }
                    // With `exit_on_audience_exit` the instance ended before the event reaches listens.
                    let mut value = serde_json::Map::new();
                    value.insert("audience_id".into(), Value::String(audience_id.to_string()));
                    account_event = Some(AccountEventValue { kind: AccountEvent::AudienceExited, value: value.into() });
                }
            }
        },
        EventBody::PersonActivity { person_id, activity, .. } => {
            if let Some(retention) = defs.activity_retention(&acct.tenant, activity)
                && let Some(ix) = acct.person_ix(person_id).filter(|&ix| acct.persons[ix].record.present)
            {
                record_activity(acct, ix, activity, ev.ts, retention);
            }
            // Only buying groups need to know whose activity it is: without templates, finding the person
            // (a cache miss or two on a large state) is skipped.
            roles = if defs.has_templates(&acct.tenant) {
                acct.person_ix(person_id).map(|ix| Recompute::Activity(ix, activity.as_str()))
            } else {
                None
            };
        }
        EventBody::OpportunityUpserted { opportunity_id, attributes, .. } => {
            let ix = match (acct.opportunity_ix(opportunity_id), attach) {
                (Some(ix), _) => ix,
                (None, Some((Moved::Opportunity(record), from))) => {
                    let (present, attrs) = (record.present, record.attributes.clone());
                    tracker.touch(Entity::Opportunity, opportunity_id, present, &attrs, &from, Origin::Input, None);
                    acct.insert_opportunity(record)
                }
                (None, _) => {
                    let record =
                        OpportunityRecord { opportunity_id: opportunity_id.clone(), ..OpportunityRecord::default() };
                    acct.insert_opportunity(record)
                }
            };
            let slot = &mut acct.opportunities[ix];
            let existed = slot.record.present;
            let attrs = &mut slot.record.attributes;
            tracker.upsert(Entity::Opportunity, opportunity_id, existed, attrs, attributes, &acct.account_id);
            slot.record.present = true;
            acct.mark_opportunity(ix);
        }
        EventBody::OpportunityDeleted { opportunity_id } => {
            if let Some(ix) = acct.opportunity_ix(opportunity_id).filter(|&ix| acct.opportunities[ix].record.present) {
                let o = &acct.opportunities[ix].record;
                tracker.touch(
                    Entity::Opportunity,
                    opportunity_id,
                    true,
                    &o.attributes,
                    &acct.account_id,
                    Origin::Input,
                    None,
                );
                let slot = &mut acct.opportunities[ix];
                slot.record.present = false;
                slot.record.attributes.clear();
                acct.mark_opportunity(ix);
            }
        }
    }
    // Buying groups follow the record before journeys react to it (SPEC §7).
    let stage_changes = match roles {
        Some(who) if defs.has_templates(&acct.tenant) => buying_group::evaluate(defs, acct, ev.ts, who, None),
        _ => Vec::new(),
    };
    let mut cx = StepCx { defs, cause, tracker, out };
    if let Some(audience) = entered {
        runtime::enter_journeys(&mut cx, acct, audience);
    }
    if let EventBody::PersonActivity { person_id, activity, properties, .. } = &ev.body {
        runtime::on_activity(&mut cx, acct, ev.ts, person_id, activity, properties);
    }
    cx.finish(acct);
    // Account events reach listens once the record's own changes are applied; what the listens do is a
    // further part of the same cause (it never touches the opportunity or audience that caused it).
    let mut events = runtime::opportunity_events(&out.changes[changes_before..]);
    events.extend(account_event);
    events.extend(stage_changes);
    if !events.is_empty() && !acct.record.instances.is_empty() {
        let mut cx = StepCx::new(defs, cause, out);
        for event in &events {
            runtime::on_account_event(&mut cx, acct, event);
        }
        cx.finish(acct);
    }
    runtime::deliver_pending(defs, acct, cause, out);
}

/// Enters an account into a journey version just published, when the account is already in its audience
/// (SPEC §3.2: "when a version is published, the accounts already in its audience enter at once"). Returns
/// whether it entered.
pub fn enter_on_publish(
    defs: &Definitions,
    acct: &mut AccountState,
    journey: &Journey,
    cause: &Cause<'_>,
    out: &mut Effects,
) -> bool {
    let in_audience = acct.record.audiences.binary_search_by(|a| a.as_str().cmp(&journey.audience)).is_ok();
    if !in_audience || defs.is_stopped(&journey.tenant, &journey.id, journey.version) {
        return false;
    }
    let mut cx = StepCx::new(defs, cause, out);
    let entered = runtime::enter(&mut cx, journey, acct);
    cx.finish(acct);
    entered
}

/// Re-evaluates every buying group of the account from scratch (a template was published): roles of
/// everyone, groups created or dropped, stages advanced; stage changes reach the journeys listening.
pub fn reassess_groups(defs: &Definitions, acct: &mut AccountState, cause: &Cause<'_>, out: &mut Effects) {
    out.pending.extend(buying_group::evaluate(defs, acct, cause.ts, Recompute::Everyone, None));
    runtime::deliver_pending(defs, acct, cause, out);
}

/// Ends every instance of a journey in this account at once, silently, cancelling its timers
/// (`caravan stop`). Returns how many ended.
pub fn stop_journey(acct: &mut AccountState, journey_id: &str, out: &mut Effects) -> usize {
    let mut ended = 0;
    while let Some(i) = acct.record.instances.iter().position(|inst| inst.journey_id == journey_id) {
        runtime::end_instance(acct, i, out);
        ended += 1;
    }
    ended
}

/// Adds one activity to a person's history of its kind.
fn record_activity(acct: &mut AccountState, ix: usize, kind: &str, ts: Timestamp, retention: i64) {
    let history = &mut acct.persons[ix].record.extra_mut().activity;
    let at = match history.binary_search_by(|h| h.kind.as_str().cmp(kind)) {
        Ok(at) => at,
        Err(at) => {
            history.insert(at, ActivityHistory { kind: Id::from(kind), times: Vec::new() });
            at
        }
    };
    history[at].record(ts.0, ts.0, retention);
    acct.mark_person(ix);
}
