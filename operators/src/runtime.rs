//! Journey instances at run time: entry, node execution, listens, `split_people` branches and timers.
//!
//! It owns SPEC §3.2 and the journey rules of §7 for one account: which journeys it enters, how an instance
//! walks its nodes until it waits or exits, who a person action reaches, and what a due timer or a listened-for
//! event does. Every function is pure and deterministic over [`AccountState`]. It is not the entity logic
//! (upserts, deletes, moves and their change events are `account`'s) and it keeps no queue: armed and
//! cancelled timers are reported in [`Effects`] for the engine.

use crate::account::{AccountState, Cause, Definitions, Effects, TimerHandle, Tracker};
use crate::buying_group::{self, Recompute};
use crate::condition::{Condition, Facts, Var};
use crate::ids;
use crate::journey::{AccountEvent, ActionKind, Journey, ListenFor, Node, NodeIx, Target, WaitSpec};
use caravan_schemas::Id;
use caravan_schemas::definition::Reentry;
use caravan_schemas::output::{ActionRecord, Origin};
use caravan_schemas::state::{BranchRecord, InstanceRecord, TimerRecord};
use caravan_schemas::time::{Timestamp, TimestampText};
use serde_json::{Map, Number, Value};
use std::cell::OnceCell;

/// The timer slot of an instance's own node; branch `b` of a `split_people` uses slot `b + 1`.
pub(crate) const OWN_SLOT: u32 = 0;

/// An account event that listens may wait for, with its `event` value for `where`.
#[derive(Clone, Debug)]
pub(crate) struct AccountEventValue {
    pub(crate) kind: AccountEvent,
    pub(crate) value: Value,
}

/// The context of one step, shared by every runtime function that walks journeys for it: the definitions, the
/// cause, the change tracker and the effects being collected. The account is passed beside it.
///
/// It lives for one step, one cause (or one round of the account events a cause raised): built where that
/// step's changes start being tracked, consumed by [`StepCx::finish`], which emits their net change events. It
/// holds borrows and the tracker (moved in, never cloned), so making one allocates nothing.
pub(crate) struct StepCx<'a, 'c> {
    pub(crate) defs: &'a Definitions,
    /// Its `ts` is the step's "now": the timers it arms and the conditions it reads are measured from it.
    pub(crate) cause: &'a Cause<'c>,
    /// The entities the step touched, for one net change event each.
    pub(crate) tracker: Tracker,
    pub(crate) out: &'a mut Effects,
}

impl<'a, 'c> StepCx<'a, 'c> {
    /// A step with nothing tracked yet.
    pub(crate) fn new(defs: &'a Definitions, cause: &'a Cause<'c>, out: &'a mut Effects) -> StepCx<'a, 'c> {
        StepCx { defs, cause, tracker: Tracker::default(), out }
    }

    /// Ends the step: the net change events of what it touched go to its effects.
    pub(crate) fn finish(self, acct: &mut AccountState) {
        self.tracker.finish(acct, self.cause, self.out);
    }
}

/// The data conditions read, built lazily from the account (once per evaluation site).
pub(crate) struct Env<'a> {
    defs: &'a Definitions,
    acct: &'a AccountState,
    /// The person of a person condition (index into `acct.persons`).
    pub(crate) person: Option<usize>,
    event: Option<&'a Value>,
    /// The group of a stage condition.
    pub(crate) group: Option<&'a Value>,
    now: Timestamp,
    account: OnceCell<Value>,
    opportunities: OnceCell<Value>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(defs: &'a Definitions, acct: &'a AccountState, now: Timestamp) -> Env<'a> {
        Env {
            defs,
            acct,
            person: None,
            event: None,
            group: None,
            now,
            account: OnceCell::new(),
            opportunities: OnceCell::new(),
        }
    }
}

impl Facts for Env<'_> {
    fn var(&self, var: Var) -> Value {
        match var {
            Var::Account => self.account.get_or_init(|| account_value(self.acct)).clone(),
            Var::Opportunities => self.opportunities.get_or_init(|| opportunities_value(self.acct)).clone(),
            Var::Person => self.person.map_or(Value::Null, |ix| person_value(self.acct, ix)),
            Var::Event => self.event.cloned().unwrap_or(Value::Null),
            Var::Group => self.group.cloned().unwrap_or(Value::Null),
        }
    }

    fn activity(&self, kind: &str, window: i64) -> u64 {
        let since = self.now.0.saturating_sub(window);
        let count = |ix: usize| {
            let p = &self.acct.persons[ix].record;
            p.activity().iter().find(|h| h.kind == kind).map_or(0, |h| h.count_since(since))
        };
        match self.person {
            Some(ix) => count(ix),
            None => (0..self.acct.persons.len()).filter(|&ix| self.acct.persons[ix].record.present).map(count).sum(),
        }
    }

    fn buying_group(&self, solution: &str) -> Value {
        buying_group::group_value(self.defs, self.acct, solution, self.now)
    }

    fn role(&self, solution: &str) -> Value {
        let role = self.person.and_then(|ix| buying_group::role_of(self.acct, ix, solution));
        role.map_or(Value::Null, |r| Value::String(r.to_string()))
    }
}

/// The `account` variable: attributes plus `id`, `audiences` and `lists`.
fn account_value(acct: &AccountState) -> Value {
    let mut m = acct.record.attributes.to_map();
    m.insert("id".into(), Value::String(acct.account_id.to_string()));
    m.insert("audiences".into(), ids_value(&acct.record.audiences));
    m.insert("lists".into(), ids_value(&acct.record.lists));
    Value::Object(m)
}

/// The `person` variable: attributes plus `id` and `lists`.
fn person_value(acct: &AccountState, ix: usize) -> Value {
    let p = &acct.persons[ix].record;
    let mut m = p.attributes.to_map();
    m.insert("id".into(), Value::String(p.person_id.to_string()));
    m.insert("lists".into(), ids_value(p.lists()));
    Value::Object(m)
}

/// The `opportunities` variable: the account's opportunities as maps with their `id`.
fn opportunities_value(acct: &AccountState) -> Value {
    Value::Array(
        acct.opportunities
            .iter()
            .filter(|o| o.record.present)
            .map(|o| {
                let mut m = o.record.attributes.to_map();
                m.insert("id".into(), Value::String(o.record.opportunity_id.to_string()));
                Value::Object(m)
            })
            .collect(),
    )
}

fn ids_value(ids: &[Id]) -> Value {
    Value::Array(ids.iter().map(|a| Value::String(a.to_string())).collect())
}

/// Ends instance `i` silently, cancelling its timers (its own and its branches').
pub(crate) fn end_instance(acct: &mut AccountState, i: usize, out: &mut Effects) {
    let inst = acct.record.instances.remove(i);
    cancel_timers(&inst, out);
    acct.record_dirty = true;
}

/// Reports every pending timer of an instance as cancelled.
pub(crate) fn cancel_timers(inst: &InstanceRecord, out: &mut Effects) {
    let own = inst.timer.iter().map(|t| (OWN_SLOT, t));
    let branches = inst.branches.iter().enumerate().filter_map(|(b, br)| Some((b as u32 + 1, br.timer.as_ref()?)));
    for (slot, timer) in own.chain(branches) {
        out.cancelled.push(TimerHandle {
            journey_id: inst.journey_id.clone(),
            instance: inst.instance,
            slot,
            timer: timer.clone(),
        });
    }
}

/// Enters the account into the newest version of every journey of its tenant whose audience it just entered.
pub(crate) fn enter_journeys(cx: &mut StepCx<'_, '_>, acct: &mut AccountState, audience: &str) {
    let tenant = acct.tenant.clone();
    for journey in cx.defs.newest_for_tenant(&tenant) {
        if journey.audience == audience {
            enter(cx, journey, acct);
        }
    }
}

/// Enters one journey version, unless the account runs it already or `reentry` forbids it.
pub(crate) fn enter(cx: &mut StepCx<'_, '_>, journey: &Journey, acct: &mut AccountState) -> bool {
    if acct.record.instances.iter().any(|i| i.journey_id == journey.id) {
        return false;
    }
    let entries = acct.record.entries.iter().find(|(j, _)| *j == journey.id).map_or(0, |(_, n)| *n);
    if entries > 0 && journey.reentry == Reentry::Never {
        return false;
    }
    let instance = entries + 1;
    match acct.record.entries.iter_mut().find(|(j, _)| *j == journey.id) {
        Some(e) => e.1 = instance,
        None => {
            acct.record.entries.push((Id::from(journey.id.as_str()), instance));
            acct.record.entries.sort();
        }
    }
    let rec = InstanceRecord {
        journey_id: Id::from(journey.id.as_str()),
        journey_version: journey.version,
        instance,
        node: Id::from(journey.node_name(journey.start)),
        timer: None,
        branches: Vec::new(),
    };
    let at = acct.record.instances.partition_point(|i| i.journey_id.as_str() < journey.id.as_str());
    acct.record.instances.insert(at, rec);
    acct.record_dirty = true;
    run(cx, journey, acct, at, journey.start);
    true
}

/// Delivers an activity to the instances listening for it.
pub(crate) fn on_activity(
    cx: &mut StepCx<'_, '_>,
    acct: &mut AccountState,
    ts: Timestamp,
    person_id: &str,
    activity: &str,
    properties: &caravan_schemas::attrs::Attrs,
) {
    let event = OnceCell::new();
    let make = || serde_json::json!({"activity": activity, "person_id": person_id, "properties": properties.to_map(), "ts": ts.to_rfc3339()});
    deliver(cx, acct, ts, |w| matches!(w, ListenFor::Activity(k) if k == activity), &event, make);
}

/// Delivers an account event to the instances listening for it. Compared with due times by the cause's `ts`.
pub(crate) fn on_account_event(cx: &mut StepCx<'_, '_>, acct: &mut AccountState, ev: &AccountEventValue) {
    let event = OnceCell::new();
    let want = |w: &ListenFor| *w == ListenFor::Account(ev.kind);
    deliver(cx, acct, cx.cause.ts, want, &event, || ev.value.clone());
}

fn deliver(
    cx: &mut StepCx<'_, '_>,
    acct: &mut AccountState,
    ts: Timestamp,
    wants: impl Fn(&ListenFor) -> bool,
    event: &OnceCell<Value>,
    make_event: impl Fn() -> Value,
) {
    let mut i = 0;
    while i < acct.record.instances.len() {
        let inst = &acct.record.instances[i];
        let Some(journey) = cx.defs.get(&acct.tenant, &inst.journey_id, inst.journey_version).cloned() else {
            i += 1;
            continue;
        };
        let Some(Node::Listen { what, condition, next, .. }) =
            journey.node_index(&inst.node).map(|ix| &journey.nodes[ix])
        else {
            i += 1;
            continue;
        };
        // An event counts when its ts is strictly before the timeout's due time.
        let in_time = inst.timer.as_ref().is_none_or(|t| ts.0 < t.due);
        if !wants(what) || !in_time {
            i += 1;
            continue;
        }
        if let Some(cond) = condition {
            let mut env = Env::new(cx.defs, acct, cx.cause.ts);
            env.event = Some(event.get_or_init(&make_event));
            if !cond.eval(&env) {
                i += 1;
                continue;
            }
        }
        let next = *next;
        let inst = &mut acct.record.instances[i];
        if let Some(timer) = inst.timer.take() {
            cx.out.cancelled.push(TimerHandle {
                journey_id: inst.journey_id.clone(),
                instance: inst.instance,
                slot: OWN_SLOT,
                timer,
            });
        }
        acct.record_dirty = true;
        let before = acct.record.instances.len();
        match next {
            Some(n) => run(cx, &journey, acct, i, n),
            None => end_instance(acct, i, cx.out),
        }
        if acct.record.instances.len() == before {
            i += 1;
        }
    }
}

/// Delivers the account events that a step's actions raised (buying group stage changes), until none is left.
/// Journeys are acyclic and each delivery moves instances forward, so this ends; the bound only guards
/// against a bug turning into a hang.
pub(crate) fn deliver_pending(defs: &Definitions, acct: &mut AccountState, cause: &Cause<'_>, out: &mut Effects) {
    for _ in 0..10_000 {
        let events = std::mem::take(&mut out.pending);
        if events.is_empty() {
            return;
        }
        let mut cx = StepCx::new(defs, cause, out);
        for event in &events {
            on_account_event(&mut cx, acct, event);
        }
        cx.finish(acct);
    }
}

/// Fires a due timer; returns whether it was still pending. A timer that no longer matches its instance
/// (cancelled, or the instance moved on) does nothing and returns false.
pub fn fire_timer(
    defs: &Definitions,
    acct: &mut AccountState,
    handle: &TimerHandle,
    cause: &Cause<'_>,
    out: &mut Effects,
) -> bool {
    let Some(i) = acct
        .record
        .instances
        .iter()
        .position(|inst| inst.journey_id == handle.journey_id && inst.instance == handle.instance)
    else {
        return false;
    };
    let inst = &mut acct.record.instances[i];
    let slot = match handle.slot {
        OWN_SLOT => &mut inst.timer,
        b => match inst.branches.get_mut(b as usize - 1) {
            Some(br) => &mut br.timer,
            None => return false,
        },
    };
    if slot.as_ref() != Some(&handle.timer) {
        return false;
    }
    *slot = None;
    acct.record_dirty = true;
    let Some(journey) = defs.get(&acct.tenant, &inst.journey_id, inst.journey_version).cloned() else {
        return true;
    };
    let mut cx = StepCx::new(defs, cause, out);
    if handle.slot == OWN_SLOT {
        let next = match journey.node_index(&inst.node).map(|ix| &journey.nodes[ix]) {
            Some(Node::Listen { on_timeout, .. }) => *on_timeout,
            Some(Node::Wait { next, .. }) => *next,
            _ => None,
        };
        match next {
            Some(n) => run(&mut cx, &journey, acct, i, n),
            None => end_instance(acct, i, cx.out),
        }
    } else {
        let b = handle.slot as usize - 1;
        let at = inst.branches[b].node.clone();
        let next = match journey.node_index(&at).map(|ix| &journey.nodes[ix]) {
            Some(Node::Wait { next, .. }) => *next,
            _ => None,
        };
        if let Some(n) = next {
            run_branch(&mut cx, &journey, acct, i, b, n);
        }
        join_if_merged(&mut cx, &journey, acct, i);
    }
    cx.finish(acct);
    deliver_pending(defs, acct, cause, out);
    true
}

/// Runs instance `i` from node `from` until it waits or exits.
fn run(cx: &mut StepCx<'_, '_>, journey: &Journey, acct: &mut AccountState, i: usize, from: NodeIx) {
    let mut at = Some(from);
    while let Some(n) = at {
        acct.record.instances[i].node = Id::from(journey.node_name(n));
        acct.record_dirty = true;
        at = match &journey.nodes[n] {
            Node::Action { kind, params, to, next } => {
                let people: Vec<usize> = (0..acct.persons.len()).collect();
                execute(cx, journey, acct, i, n, (kind, params, to), &people);
                *next
            }
            Node::SplitAccounts { paths, otherwise } => {
                let env = Env::new(cx.defs, acct, cx.cause.ts);
                paths.iter().find(|(c, _)| c.eval(&env)).map(|(_, t)| *t).or(*otherwise)
            }
            Node::SplitPeople { paths, otherwise, merge } => {
                split_people(cx, journey, acct, i, paths, *otherwise, *merge);
                // The same rule as when a branch's timer fires: on past the merge once every branch is there.
                join_if_merged(cx, journey, acct, i);
                return;
            }
            Node::Merge { next } => *next,
            Node::Listen { timeout, .. } => {
                if let Some(d) = timeout {
                    arm(acct, i, OWN_SLOT, cx.cause.ts.plus(*d), cx.cause, cx.out);
                }
                return;
            }
            Node::Wait { spec, .. } => {
                arm(acct, i, OWN_SLOT, wait_due(spec, cx.cause), cx.cause, cx.out);
                return;
            }
            Node::Exit => None,
        };
    }
    end_instance(acct, i, cx.out);
}

/// When a wait reached by `cause` ends. A passed `until` is due at once: never before its cause, so that
/// outputs keep the order of execution.
fn wait_due(spec: &WaitSpec, cause: &Cause<'_>) -> Timestamp {
    match spec {
        WaitSpec::For(d) => cause.ts.plus(*d),
        WaitSpec::Until(t) => (*t).max(cause.ts),
    }
}

/// Sends each present person down the first path whose condition holds, then runs every branch that people
/// took until it waits or reaches the merge. A person matching no path, without `otherwise`, waits at the merge.
fn split_people(
    cx: &mut StepCx<'_, '_>,
    journey: &Journey,
    acct: &mut AccountState,
    i: usize,
    paths: &[(Condition, NodeIx)],
    otherwise: Option<NodeIx>,
    merge: NodeIx,
) {
    let mut taken: Vec<Vec<Id>> = vec![Vec::new(); paths.len() + 1];
    {
        let mut env = Env::new(cx.defs, acct, cx.cause.ts);
        for ix in 0..acct.persons.len() {
            if !acct.persons[ix].record.present {
                continue;
            }
            env.person = Some(ix);
            let path = paths.iter().position(|(c, _)| c.eval(&env));
            let path = match (path, otherwise) {
                (Some(p), _) => p,
                (None, Some(_)) => paths.len(),
                (None, None) => continue,
            };
            taken[path].push(acct.persons[ix].record.person_id.clone());
        }
    }
    let starts: Vec<NodeIx> = paths.iter().map(|(_, t)| *t).chain(Some(otherwise.unwrap_or(merge))).collect();
    let mut branches = Vec::new();
    for (path, people) in taken.into_iter().enumerate() {
        if !people.is_empty() {
            let node = Id::from(journey.node_name(starts[path]));
            branches.push((BranchRecord { path: path as u32, node, timer: None, people }, starts[path]));
        }
    }
    let inst = &mut acct.record.instances[i];
    inst.branches = branches.iter().map(|(b, _)| b.clone()).collect();
    for (b, (_, start)) in branches.into_iter().enumerate() {
        run_branch(cx, journey, acct, i, b, start);
    }
}

/// Runs branch `b` of instance `i` from `from` until it waits or reaches its merge.
fn run_branch(cx: &mut StepCx<'_, '_>, journey: &Journey, acct: &mut AccountState, i: usize, b: usize, from: NodeIx) {
    let mut at = Some(from);
    while let Some(n) = at {
        acct.record.instances[i].branches[b].node = Id::from(journey.node_name(n));
        acct.record_dirty = true;
        at = match &journey.nodes[n] {
            Node::Action { kind, params, to, next } => {
                // The branch's people who are still in the account, in join order.
                let people: Vec<usize> = {
                    let members = &acct.record.instances[i].branches[b].people;
                    (0..acct.persons.len()).filter(|&ix| members.contains(&acct.persons[ix].record.person_id)).collect()
                };
                execute(cx, journey, acct, i, n, (kind, params, to), &people);
                *next
            }
            Node::Wait { spec, .. } => {
                arm(acct, i, b as u32 + 1, wait_due(spec, cx.cause), cx.cause, cx.out);
                return;
            }
            // The merge (validation allows nothing else on a people path).
            _ => return,
        };
    }
}

/// Continues instance `i` past its merge once every branch has arrived there.
fn join_if_merged(cx: &mut StepCx<'_, '_>, journey: &Journey, acct: &mut AccountState, i: usize) {
    let inst = &acct.record.instances[i];
    let Some(Node::SplitPeople { merge, .. }) = journey.node_index(&inst.node).map(|ix| &journey.nodes[ix]) else {
        return;
    };
    let merge = *merge;
    if inst.branches.iter().all(|b| b.node == journey.node_name(merge) && b.timer.is_none()) {
        acct.record.instances[i].branches.clear();
        run(cx, journey, acct, i, merge);
    }
}

fn arm(acct: &mut AccountState, i: usize, slot: u32, due: Timestamp, cause: &Cause<'_>, out: &mut Effects) {
    let mut arm = cause.arm_prefix();
    arm.push(out.next_arm());
    let timer = TimerRecord { due: due.0, arm };
    let inst = &mut acct.record.instances[i];
    match slot {
        OWN_SLOT => inst.timer = Some(timer.clone()),
        b => inst.branches[b as usize - 1].timer = Some(timer.clone()),
    }
    out.armed.push(TimerHandle { journey_id: inst.journey_id.clone(), instance: inst.instance, slot, timer });
}

/// Runs an action node. `people` are the candidates of a person action (indexes into `acct.persons`, in join
/// order); `to` narrows them.
fn execute(
    cx: &mut StepCx<'_, '_>,
    journey: &Journey,
    acct: &mut AccountState,
    i: usize,
    n: NodeIx,
    (kind, params, to): (&ActionKind, &Value, &Target),
    people: &[usize],
) {
    let StepCx { defs, cause, tracker, out } = cx;
    let instance = acct.record.instances[i].instance;
    let node = journey.node_name(n);
    let record = |acct: &AccountState, person: Option<&str>| ActionRecord {
        tenant: acct.tenant.clone(),
        action_id: ids::action_id(&acct.tenant, &journey.id, journey.version, &acct.account_id, node, person, instance),
        kind: Id::const_new(kind.type_name()),
        params: params.clone(),
        journey_id: Id::from(journey.id.as_str()),
        journey_version: journey.version,
        node_id: Id::from(node),
        account_id: acct.account_id.clone(),
        person_id: person.map(Id::from),
        ts: TimestampText(cause.ts),
        cause_event_id: Id::from(cause.event_id),
    };
    let by = Some((journey.id.as_str(), node));
    if !kind.is_person_action() {
        out.actions.push(record(acct, None));
        match kind {
            ActionKind::SetAccountAttribute { field, value } => {
                tracker.touch_account(acct, Origin::Action, by);
                if value.is_null() {
                    acct.record.attributes.remove(field);
                } else {
                    acct.record.attributes.insert(field, value.clone());
                }
            }
            ActionKind::AddAccountToList { list } => add_to(&mut acct.record.lists, list),
            ActionKind::RemoveAccountFromList { list } => remove_from(&mut acct.record.lists, list),
            // A group exists only where a template does; without one these give only their action record.
            // Stage changes reach listens once this step's journeys have run (`deliver_pending`).
            ActionKind::SetBuyingGroupStage { solution, stage } => {
                out.pending.extend(buying_group::set_stage(defs, acct, solution, stage));
            }
            ActionKind::ReassessBuyingGroup { solution } => {
                let changes = buying_group::evaluate(defs, acct, cause.ts, Recompute::Everyone, Some(solution));
                out.pending.extend(changes);
            }
            _ => {}
        }
        acct.record_dirty = true;
        return;
    }
    let targets: Vec<usize> = {
        let mut env = Env::new(defs, acct, cause.ts);
        people
            .iter()
            .copied()
            .filter(|&ix| acct.persons[ix].record.present)
            .filter(|&ix| match to {
                Target::All => true,
                Target::Where(c) => {
                    env.person = Some(ix);
                    c.eval(&env)
                }
                Target::Role { solution, role } => buying_group::role_of(acct, ix, solution).is_some_and(|r| r == role),
            })
            .collect()
    };
    for ix in targets {
        let person_id = acct.persons[ix].record.person_id.clone();
        out.actions.push(record(acct, Some(&person_id)));
        let slot = &acct.persons[ix];
        let touch = |tracker: &mut Tracker| {
            tracker.touch(
                caravan_schemas::output::Entity::Person,
                &person_id,
                slot.record.present,
                &slot.record.attributes,
                &acct.account_id,
                Origin::Action,
                by,
            );
        };
        match kind {
            ActionKind::SetPersonAttribute { field, value } => {
                touch(tracker);
                let p = &mut acct.persons[ix];
                if value.is_null() {
                    p.record.attributes.remove(field);
                } else {
                    p.record.attributes.insert(field, value.clone());
                }
                acct.mark_person(ix);
            }
            ActionKind::ChangePersonScore { field, by: delta } => {
                touch(tracker);
                let p = &mut acct.persons[ix];
                let score = add_numbers(p.record.attributes.get(field), delta);
                p.record.attributes.insert(field, score);
                acct.mark_person(ix);
            }
            ActionKind::AddToList { list } => {
                add_to(&mut acct.persons[ix].record.extra_mut().lists, list);
                acct.mark_person(ix);
            }
            ActionKind::RemoveFromList { list } => {
                if acct.persons[ix].record.lists().iter().any(|l| l == list) {
                    remove_from(&mut acct.persons[ix].record.extra_mut().lists, list);
                }
                acct.mark_person(ix);
            }
            _ => {}
        }
    }
}

/// `current + by`, where a missing or non-numeric current value counts as 0 (SPEC §7). Integers stay
/// integers while they fit; anything else is a double.
fn add_numbers(current: Option<&Value>, by: &Number) -> Value {
    let zero = Number::from(0);
    let cur = match current {
        Some(Value::Number(n)) => n,
        _ => &zero,
    };
    if let (Some(a), Some(b)) = (cur.as_i64(), by.as_i64())
        && let Some(sum) = a.checked_add(b)
    {
        return Value::from(sum);
    }
    let sum = cur.as_f64().unwrap_or(0.0) + by.as_f64().unwrap_or(0.0);
    Number::from_f64(sum).map_or(Value::Null, Value::Number)
}

fn add_to(lists: &mut Vec<Id>, list: &str) {
    if let Err(at) = lists.binary_search_by(|l| l.as_str().cmp(list)) {
        lists.insert(at, Id::from(list));
    }
}

fn remove_from(lists: &mut Vec<Id>, list: &str) {
    if let Ok(at) = lists.binary_search_by(|l| l.as_str().cmp(list)) {
        lists.remove(at);
    }
}

/// The `opportunity.changed` events of a cause's change events, for listens (`opportunity_id`, `op`, `after`).
pub(crate) fn opportunity_events(changes: &[caravan_schemas::output::ChangeEvent]) -> Vec<AccountEventValue> {
    changes
        .iter()
        .filter(|c| c.entity == caravan_schemas::output::Entity::Opportunity)
        .map(|c| {
            let mut m = Map::new();
            m.insert("opportunity_id".into(), Value::String(c.entity_id.to_string()));
            m.insert("op".into(), serde_json::to_value(c.op).unwrap_or(Value::Null));
            m.insert("after".into(), Value::Object(c.after.to_map()));
            AccountEventValue { kind: AccountEvent::OpportunityChanged, value: Value::Object(m) }
        })
        .collect()
}
