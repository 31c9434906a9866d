//! Table-driven tests of the account state machine over short event scripts.

use crate::account::{AccountState, Cause, Definitions, Effects, Moved, TimerHandle, apply_event, fire_timer};
use crate::journey::compile_journey;
use caravan_schemas::definition::read_document;
use caravan_schemas::input::{DecodeLimits, InputEvent, decode};
use caravan_schemas::output::{ChangeOp, Entity, Origin};
use caravan_schemas::time::{NANOS_PER_SEC, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

mod buying_groups;
mod language;
mod random_journeys;

const DAY: i64 = 86_400 * NANOS_PER_SEC;
const T0: &str = "2026-01-01T00:00:00Z";

fn ts(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("valid ts")
}

fn at(offset_ns: i64) -> String {
    ts(T0).plus(offset_ns).to_rfc3339()
}

fn ev(json: Value) -> InputEvent {
    let mut v = json;
    let obj = v.as_object_mut().expect("object");
    obj.entry("tenant").or_insert(json!("t"));
    obj.entry("ts").or_insert(json!(T0));
    decode(v.to_string().as_bytes(), &DecodeLimits::default()).expect("valid event")
}

fn reference_defs() -> Definitions {
    let text = std::fs::read_to_string(crate::journey::reference_journey_path())
        .expect("reference journey")
        .replace("tenant: bench", "tenant: t");
    let mut defs = Definitions::default();
    defs.publish(compile_journey(&read_document(&text).expect("parses")).expect("valid")).expect("publishes");
    defs
}

/// Applies a script of events to one account; returns all effects, keeping timers for the caller.
struct Script {
    defs: Definitions,
    acct: AccountState,
    seq: u64,
    out: Effects,
    fired: bool,
}

impl Script {
    fn new(defs: Definitions) -> Script {
        Script { defs, acct: AccountState::new("t", "a"), seq: 0, out: Effects::default(), fired: false }
    }

    fn apply(&mut self, json: Value) -> &Effects {
        self.seq += 1;
        let e = ev(json);
        self.out.clear();
        apply_event(&self.defs, &mut self.acct, &e, None, &Cause::record(self.seq, e.ts, &e.event_id), &mut self.out);
        &self.out
    }

    fn fire(&mut self, handle: &TimerHandle, after: &str) -> &Effects {
        self.out.clear();
        self.fired = fire_timer(
            &self.defs,
            &mut self.acct,
            handle,
            &Cause::timer(self.seq, &handle.timer, after),
            &mut self.out,
        );
        &self.out
    }

    fn setup(&mut self, employees: i64, persons: usize) {
        self.apply(
            json!({"type":"account.upserted","event_id":"a0","account_id":"a","attributes":{"employees":employees}}),
        );
        for i in 0..persons {
            self.apply(json!({"type":"person.upserted","event_id":format!("p{i}"),"person_id":format!("p{i}"),"account_id":"a","attributes":{"n":i}}));
        }
    }

    fn enter(&mut self, event_id: &str, when: &str) -> TimerHandle {
        let out = self.apply(json!({"type":"account.audience","event_id":event_id,"ts":when,"account_id":"a","audience_id":"target","status":"entered"}));
        out.armed.last().cloned().expect("a timer is armed")
    }
}

#[test]
fn change_events_are_net_versioned_and_minimal() {
    let mut s = Script::new(Definitions::default());
    let out = s.apply(json!({"type":"account.upserted","event_id":"e1","account_id":"a","attributes":{"x":1,"y":"k"}}));
    assert_eq!(out.changes.len(), 1);
    let c = &out.changes[0];
    assert_eq!((c.op, c.version, c.origin), (ChangeOp::Create, 1, Origin::Input));
    assert_eq!(Value::Object(c.before.to_map()), json!({}));
    assert_eq!(Value::Object(c.after.to_map()), json!({"x":1,"y":"k"}));
    // Same values (1 == 1.0): nothing.
    assert!(
        s.apply(json!({"type":"account.upserted","event_id":"e2","account_id":"a","attributes":{"x":1.0}}))
            .changes
            .is_empty()
    );
    // One changed field and one removed by null.
    let out = s.apply(
        json!({"type":"account.upserted","event_id":"e3","account_id":"a","attributes":{"x":2,"y":null,"z":null}}),
    );
    let c = &out.changes[0];
    assert_eq!((c.op, c.version), (ChangeOp::Update, 2));
    assert_eq!(Value::Object(c.before.to_map()), json!({"x":1,"y":"k"}));
    assert_eq!(Value::Object(c.after.to_map()), json!({"x":2,"y":null}));
    let out = s.apply(json!({"type":"account.deleted","event_id":"e4","account_id":"a"}));
    let c = &out.changes[0];
    assert_eq!((c.op, c.version), (ChangeOp::Delete, 3));
    assert_eq!(Value::Object(c.after.to_map()), json!({}));
    assert_eq!(Value::Object(c.before.to_map()), json!({"x":2}));
    // Deleting again is a no-op; a later upsert is a create whose version continues.
    assert!(s.apply(json!({"type":"account.deleted","event_id":"e5","account_id":"a"})).changes.is_empty());
    let out = s.apply(json!({"type":"account.upserted","event_id":"e6","account_id":"a","attributes":{}}));
    assert_eq!((out.changes[0].op, out.changes[0].version), (ChangeOp::Create, 4));
    assert_eq!(out.changes[0].change_id, crate::ids::change_id("t", "account", "a", 4));
}

/// A journey's change to an entity after an input upsert of it, in the same cause, lands in the same one
/// change event: `before` as before the upsert, `after` with both changes.
#[test]
fn an_upsert_then_an_action_on_the_same_entity_give_one_net_change() {
    use crate::account::Tracker;
    use caravan_schemas::attrs::Attrs;
    let attrs = |v: Value| Attrs::from(v.as_object().cloned().expect("object"));
    let mut s = Script::new(Definitions::default());
    s.apply(json!({"type":"account.upserted","event_id":"e1","account_id":"a","attributes":{"x":1,"y":"k","z":0}}));
    let mut tracker = Tracker::default();
    let acct = &mut s.acct;
    let upsert = attrs(json!({"x":2,"z":0.0,"w":null}));
    tracker.upsert(Entity::Account, "a", true, &mut acct.record.attributes, &upsert, "a");
    tracker.touch_account(acct, Origin::Action, Some(("j", "n")));
    acct.record.attributes.insert("y", json!("m"));
    acct.record.attributes.insert("v", json!(true));
    let mut out = Effects::default();
    tracker.finish(acct, &Cause::record(9, ts(T0), "e9"), &mut out);
    assert_eq!(out.changes.len(), 1);
    let c = &out.changes[0];
    assert_eq!((c.op, c.version, c.origin), (ChangeOp::Update, 2, Origin::Input));
    assert_eq!(Value::Object(c.before.to_map()), json!({"v":null,"x":1,"y":"k"}));
    assert_eq!(Value::Object(c.after.to_map()), json!({"v":true,"x":2,"y":"m"}));
}

#[test]
fn person_changes_delete_and_recreate() {
    let mut s = Script::new(Definitions::default());
    let out =
        s.apply(json!({"type":"person.upserted","event_id":"e1","person_id":"p","account_id":"a","attributes":{}}));
    assert_eq!((out.changes[0].op, out.changes[0].entity_id.as_str()), (ChangeOp::Create, "p"));
    let out = s.apply(json!({"type":"person.deleted","event_id":"e2","person_id":"p"}));
    assert_eq!((out.changes[0].op, out.changes[0].version), (ChangeOp::Delete, 2));
    let out = s
        .apply(json!({"type":"person.upserted","event_id":"e3","person_id":"p","account_id":"a","attributes":{"k":1}}));
    assert_eq!((out.changes[0].op, out.changes[0].version), (ChangeOp::Create, 3));
}

#[test]
fn a_person_who_moves_gets_one_update_carrying_account_id() {
    let defs = Definitions::default();
    let mut a = AccountState::new("t", "a");
    let mut b = AccountState::new("t", "b");
    let mut out = Effects::default();
    let e1 =
        ev(json!({"type":"person.upserted","event_id":"e1","person_id":"p","account_id":"a","attributes":{"k":1}}));
    apply_event(&defs, &mut a, &e1, None, &Cause::record(1, e1.ts, "e1"), &mut out);
    let moved = a.detach(caravan_schemas::output::Entity::Person, "p").expect("p is in a");
    assert!(matches!(moved, Moved::Person(_)));
    assert!(a.persons.is_empty());
    out.clear();
    let e2 =
        ev(json!({"type":"person.upserted","event_id":"e2","person_id":"p","account_id":"b","attributes":{"k":2}}));
    apply_event(&defs, &mut b, &e2, Some((moved, "a".into())), &Cause::record(2, e2.ts, "e2"), &mut out);
    assert_eq!(out.changes.len(), 1);
    let c = &out.changes[0];
    assert_eq!((c.op, c.version, c.account_id.as_str()), (ChangeOp::Update, 2, "b"));
    assert_eq!(Value::Object(c.before.to_map()), json!({"k":1,"account_id":"a"}));
    assert_eq!(Value::Object(c.after.to_map()), json!({"k":2,"account_id":"b"}));
}

#[test]
fn enterprise_path_listens_and_engages_on_a_click() {
    let mut s = Script::new(reference_defs());
    s.setup(5000, 3);
    let out = s.apply(json!({"type":"account.audience","event_id":"in","ts":at(DAY),"account_id":"a","audience_id":"target","status":"entered"}));
    let welcome: Vec<_> = out.actions.iter().map(|a| (a.kind.as_str(), a.person_id.as_deref())).collect();
    assert_eq!(welcome, [("send_email", Some("p0")), ("send_email", Some("p1")), ("send_email", Some("p2"))]);
    assert_eq!(out.armed.len(), 1);
    assert_eq!(out.armed[0].timer.due, ts(T0).0 + DAY + 7 * DAY);
    assert_eq!(s.acct.record.instances[0].node, "ent_listen");
    // A web visit is not what the journey listens for.
    assert!(s.apply(json!({"type":"person.activity","event_id":"v","ts":at(2 * DAY),"person_id":"p1","account_id":"a","activity":"web.visited"})).actions.is_empty());
    let out = s.apply(json!({"type":"person.activity","event_id":"c","ts":at(2 * DAY),"person_id":"p1","account_id":"a","activity":"email.clicked","properties":{"asset_id":"x"}}));
    let kinds: Vec<&str> = out.actions.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["set_account_attribute", "send_alert"]);
    assert_eq!(out.cancelled.len(), 1);
    assert_eq!(out.changes.len(), 1);
    let c = &out.changes[0];
    assert_eq!(c.origin, Origin::Action);
    assert_eq!((c.journey_id.as_deref(), c.node_id.as_deref()), (Some("b2b-journey-v1"), Some("engaged")));
    assert_eq!(Value::Object(c.after.to_map()), json!({"engagement_stage":"engaged"}));
    assert_eq!(out.actions[0].cause_event_id, "c");
    assert!(s.acct.record.instances.is_empty(), "the account exited");
}

#[test]
fn an_event_exactly_at_the_timeout_does_not_count() {
    let mut s = Script::new(reference_defs());
    s.setup(5000, 1);
    let timer = s.enter("in", T0);
    let due = Timestamp(timer.timer.due).to_rfc3339();
    let out = s.apply(json!({"type":"person.activity","event_id":"c","ts":due,"person_id":"p0","account_id":"a","activity":"email.clicked"}));
    assert!(out.actions.is_empty());
    assert!(out.cancelled.is_empty());
    // One nanosecond earlier counts.
    let just_before = Timestamp(timer.timer.due - 1).to_rfc3339();
    let out = s.apply(json!({"type":"person.activity","event_id":"c2","ts":just_before,"person_id":"p0","account_id":"a","activity":"email.clicked"}));
    assert_eq!(out.actions.len(), 2);
}

#[test]
fn timeout_exits_and_a_stale_timer_does_nothing() {
    let mut s = Script::new(reference_defs());
    s.setup(5000, 2);
    let timer = s.enter("in", T0);
    let out = s.fire(&timer, "later");
    assert!(out.actions.is_empty(), "on_timeout leads to exit");
    assert!(s.fired);
    assert!(s.acct.record.instances.is_empty());
    // Firing the same timer again (e.g. a stale queue entry): nothing.
    let out = s.fire(&timer, "later2");
    assert!(out.actions.is_empty() && out.changes.is_empty());
    assert!(!s.fired);
}

#[test]
fn smb_wait_then_nurture_reaches_people_who_joined_meanwhile() {
    let mut s = Script::new(reference_defs());
    s.setup(10, 2);
    let timer = s.enter("in", T0);
    assert_eq!(timer.timer.due, ts(T0).0 + 2 * DAY);
    assert_eq!(s.acct.record.instances[0].node, "smb_wait");
    // p1 leaves, p9 joins while the account waits.
    s.apply(json!({"type":"person.deleted","event_id":"d1","person_id":"p1"}));
    s.apply(json!({"type":"person.upserted","event_id":"j9","person_id":"p9","account_id":"a","attributes":{}}));
    let out = s.fire(&timer, "tick");
    let to: Vec<_> =
        out.actions.iter().map(|a| (a.node_id.as_str(), a.person_id.as_deref(), a.cause_event_id.as_str())).collect();
    assert_eq!(to, [("nurture", Some("p0"), "tick"), ("nurture", Some("p9"), "tick")]);
    assert_eq!(out.actions[0].ts.0, Timestamp(timer.timer.due));
    assert!(s.acct.record.instances.is_empty());
}

#[test]
fn missing_or_non_numeric_employees_go_smb() {
    for attrs in [json!({}), json!({"employees": "lots"}), json!({"employees": null})] {
        let mut s = Script::new(reference_defs());
        s.apply(json!({"type":"account.upserted","event_id":"a0","account_id":"a","attributes":attrs}));
        s.enter("in", T0);
        assert_eq!(s.acct.record.instances[0].node, "smb_wait");
    }
}

#[test]
fn reentry_rules() {
    let yaml = |reentry: &str, version: u32| {
        format!(
            "kind: journey\ntenant: t\nid: r\nversion: {version}\naudience: target\nreentry: {reentry}\nstart: m\nnodes:\n  m: {{action: {{send_alert: {{template: x}}}}}}\n"
        )
    };
    for (reentry, second_entry_runs) in [("never", false), ("after_exit", true)] {
        let mut defs = Definitions::default();
        defs.publish(compile_journey(&read_document(&yaml(reentry, 1)).expect("parses")).expect("valid"))
            .expect("publishes");
        let mut s = Script::new(defs);
        let first = s.apply(json!({"type":"account.audience","event_id":"i1","account_id":"a","audience_id":"target","status":"entered"})).actions.clone();
        assert_eq!(first.len(), 1);
        // Entering again without leaving the audience is no change of membership.
        assert!(s.apply(json!({"type":"account.audience","event_id":"i2","account_id":"a","audience_id":"target","status":"entered"})).actions.is_empty());
        s.apply(json!({"type":"account.audience","event_id":"x1","account_id":"a","audience_id":"target","status":"exited"}));
        let second = s.apply(json!({"type":"account.audience","event_id":"i3","account_id":"a","audience_id":"target","status":"entered"})).actions.clone();
        assert_eq!(!second.is_empty(), second_entry_runs, "{reentry}");
        if let Some(a) = second.first() {
            assert_ne!(a.action_id, first[0].action_id, "instance number is part of the id");
        }
    }
}

#[test]
fn account_delete_ends_instances_and_cancels_timers() {
    let mut s = Script::new(reference_defs());
    s.setup(5000, 1);
    let timer = s.enter("in", T0);
    let out = s.apply(json!({"type":"account.deleted","event_id":"del","account_id":"a"}));
    assert_eq!(out.cancelled, vec![timer.clone()]);
    assert!(out.actions.is_empty());
    assert!(s.acct.record.instances.is_empty() && s.acct.record.audiences.is_empty());
    assert!(s.fire(&timer, "x").actions.is_empty());
}

#[test]
fn versions_supersede_and_identical_republication_is_accepted() {
    let doc = |v: u32, asset: &str| {
        read_document(&format!(
            "kind: journey\ntenant: t\nid: v\nversion: {v}\naudience: target\nstart: m\nnodes:\n  m: {{action: {{send_email: {{asset: {asset}}}}}}}\n"
        ))
        .expect("parses")
    };
    let mut defs = Definitions::default();
    defs.publish(compile_journey(&doc(2, "a")).expect("valid")).expect("first");
    defs.publish(compile_journey(&doc(2, "a")).expect("valid")).expect("identical is fine");
    assert!(defs.publish(compile_journey(&doc(2, "b")).expect("valid")).is_err());
    assert!(defs.publish(compile_journey(&doc(1, "a")).expect("valid")).is_err());
    defs.publish(compile_journey(&doc(3, "c")).expect("valid")).expect("newer");
    assert_eq!(defs.newest_for_tenant("t").map(|j| j.version).collect::<Vec<_>>(), [3]);
    assert_eq!(defs.newest_for_tenant("other").count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Over random scripts: the same script twice gives identical outputs, change versions have no gaps, and
    /// no action follows the account's exit.
    #[test]
    fn scripts_are_deterministic_and_versions_gapless(script in proptest::collection::vec((0u8..6, 0u8..4, 0i64..10), 1..40)) {
        let run = || {
            let mut s = Script::new(reference_defs());
            let mut log: Vec<String> = Vec::new();
            let mut pending: Vec<TimerHandle> = Vec::new();
            let mut versions: std::collections::BTreeMap<String, u64> = Default::default();
            for (i, (kind, p, hours)) in script.iter().enumerate() {
                let when = at(i as i64 * 3600 * NANOS_PER_SEC * 6 + hours * 3600 * NANOS_PER_SEC);
                let eid = format!("e{i}");
                let e = match kind {
                    0 => json!({"type":"account.upserted","event_id":eid,"ts":when,"account_id":"a","attributes":{"employees": i64::from(*p) * 700}}),
                    1 => json!({"type":"person.upserted","event_id":eid,"ts":when,"person_id":format!("p{p}"),"account_id":"a","attributes":{"h":hours}}),
                    2 => json!({"type":"person.deleted","event_id":eid,"ts":when,"person_id":format!("p{p}")}),
                    3 => json!({"type":"account.audience","event_id":eid,"ts":when,"account_id":"a","audience_id":"target","status":"entered"}),
                    4 => json!({"type":"person.activity","event_id":eid,"ts":when,"person_id":format!("p{p}"),"account_id":"a","activity":"email.clicked"}),
                    _ => {
                        // Fire every pending timer.
                        let mut outs = Vec::new();
                        for h in std::mem::take(&mut pending) {
                            let out = s.fire(&h, &eid);
                            outs.extend(out.actions.iter().map(|a| a.action_id.clone()));
                            pending.extend(out.armed.iter().cloned());
                        }
                        log.extend(outs);
                        continue;
                    }
                };
                let out = s.apply(e);
                pending.extend(out.armed.iter().cloned());
                log.extend(out.actions.iter().map(|a| a.action_id.clone()));
                for c in &out.changes {
                    let v = versions.entry(c.entity_id.to_string()).or_insert(0);
                    assert_eq!(c.version, *v + 1, "gapless versions");
                    *v = c.version;
                    log.push(serde_json::to_string(c).expect("serializes"));
                }
                if s.acct.record.instances.is_empty() {
                    pending.clear();
                }
            }
            log
        };
        let first = run();
        prop_assert_eq!(&first, &run());
        let mut ids: Vec<&String> = first.iter().filter(|l| l.starts_with("act-")).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), n, "action ids are unique");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The write-back contract the engine relies on: after every record, the slots `take_dirty_slots` hands
    /// over, laid on what it handed before, are exactly the account's people and opportunities.
    #[test]
    fn every_changed_slot_is_handed_back_once(script in proptest::collection::vec((0u8..8, 0u8..4), 1..40)) {
        use crate::account::DirtySlot;
        // A journey counting clicks makes the tenant keep activity history on people (a change that emits
        // no change event).
        let mut defs = reference_defs();
        let counting = "kind: journey\ntenant: t\nid: counts\nversion: 1\naudience: other\nstart: s\nnodes:\n  s:\n    split_accounts:\n      - when: activity(\"email.clicked\", \"30d\") > 0\n        next: done\n    otherwise: done\n  done:\n    exit: {}\n";
        defs.publish(compile_journey(&read_document(counting).expect("parses")).expect("valid")).expect("publishes");
        let mut s = Script::new(defs);
        let mut persons = std::collections::BTreeMap::new();
        let mut opportunities = std::collections::BTreeMap::new();
        for (i, (kind, n)) in script.iter().enumerate() {
            let when = at(i as i64 * 3600 * NANOS_PER_SEC);
            let eid = format!("e{i}");
            let e = match kind {
                0 => json!({"type":"person.upserted","event_id":eid,"ts":when,"person_id":format!("p{n}"),"account_id":"a","attributes":{"i":i}}),
                1 => json!({"type":"person.deleted","event_id":eid,"ts":when,"person_id":format!("p{n}")}),
                2 => json!({"type":"person.activity","event_id":eid,"ts":when,"person_id":format!("p{n}"),"account_id":"a","activity":"email.clicked"}),
                3 => json!({"type":"opportunity.upserted","event_id":eid,"ts":when,"opportunity_id":format!("o{n}"),"account_id":"a","attributes":{"i":i}}),
                4 => json!({"type":"opportunity.deleted","event_id":eid,"ts":when,"opportunity_id":format!("o{n}")}),
                5 => json!({"type":"account.audience","event_id":eid,"ts":when,"account_id":"a","audience_id":"target","status":"entered"}),
                6 => {
                    // The person moves to another account: the engine deletes its record here.
                    if s.acct.detach(Entity::Person, &format!("p{n}")).is_some() {
                        persons.remove(format!("p{n}").as_str());
                    }
                    prop_assert!(s.acct.person_keys_match());
                    continue;
                }
                _ => {
                    // Evicted and reloaded from what was written back.
                    let a = &s.acct;
                    let reloaded = AccountState::from_records(
                        &a.tenant,
                        &a.account_id,
                        a.record.clone(),
                        persons.values().cloned().collect(),
                        opportunities.values().cloned().collect(),
                    );
                    prop_assert_eq!(&reloaded.persons, &s.acct.persons);
                    s.acct = reloaded;
                    prop_assert!(s.acct.person_keys_match());
                    continue;
                }
            };
            s.apply(e);
            prop_assert!(s.acct.person_keys_match(), "the person index follows every change");
            s.acct.take_dirty_slots(|slot| match slot {
                DirtySlot::Person(p) => { persons.insert(p.person_id.clone(), p.clone()); }
                DirtySlot::Opportunity(o) => { opportunities.insert(o.opportunity_id.clone(), o.clone()); }
            });
            let live_persons: std::collections::BTreeMap<_, _> =
                s.acct.persons.iter().map(|p| (p.record.person_id.clone(), p.record.clone())).collect();
            let live_opportunities: std::collections::BTreeMap<_, _> =
                s.acct.opportunities.iter().map(|o| (o.record.opportunity_id.clone(), o.record.clone())).collect();
            prop_assert_eq!(&persons, &live_persons);
            prop_assert_eq!(&opportunities, &live_opportunities);
            let mut again = 0;
            s.acct.take_dirty_slots(|_| again += 1);
            prop_assert_eq!(again, 0, "a second take hands nothing");
        }
    }
}

#[test]
fn opportunities_change_move_and_feed_conditions() {
    let yaml = "kind: journey\ntenant: t\nid: o\nversion: 1\naudience: target\nstart: s\nnodes:\n  s:\n    split_accounts:\n      - {when: 'opportunities.exists(o, o.stage == \"won\")', next: yes}\n    otherwise: no\n  yes: {action: {send_alert: {template: won}}}\n  no: {action: {send_alert: {template: open}}}\n";
    let mut defs = Definitions::default();
    defs.publish(compile_journey(&read_document(yaml).expect("parses")).expect("valid")).expect("publishes");
    let mut s = Script::new(defs);
    let out = s.apply(json!({"type":"opportunity.upserted","event_id":"o1","opportunity_id":"x","account_id":"a","attributes":{"stage":"open","amount":10}}));
    let c = &out.changes[0];
    assert_eq!((c.entity, c.op, c.version), (caravan_schemas::output::Entity::Opportunity, ChangeOp::Create, 1));
    let out = s.apply(json!({"type":"opportunity.upserted","event_id":"o2","opportunity_id":"x","account_id":"a","attributes":{"stage":"won"}}));
    assert_eq!(Value::Object(out.changes[0].before.to_map()), json!({"stage":"open"}));
    let out = s.apply(
        json!({"type":"account.audience","event_id":"in","account_id":"a","audience_id":"target","status":"entered"}),
    );
    assert_eq!(out.actions[0].node_id, "yes", "the split sees the won opportunity");
    let out = s.apply(json!({"type":"opportunity.deleted","event_id":"o3","opportunity_id":"x"}));
    assert_eq!((out.changes[0].op, out.changes[0].version), (ChangeOp::Delete, 3));
    // A deleted opportunity moving to another account is re-created there; its version goes on.
    let moved = s.acct.detach(caravan_schemas::output::Entity::Opportunity, "x").expect("tombstone");
    let mut b = AccountState::new("t", "b");
    let mut out = Effects::default();
    let e = ev(
        json!({"type":"opportunity.upserted","event_id":"o4","opportunity_id":"x","account_id":"b","attributes":{"stage":"new"}}),
    );
    apply_event(&s.defs, &mut b, &e, Some((moved, "a".into())), &Cause::record(99, e.ts, "o4"), &mut out);
    assert_eq!(
        (out.changes[0].op, out.changes[0].version, out.changes[0].account_id.as_str()),
        (ChangeOp::Create, 4, "b")
    );
}

#[test]
fn a_passed_until_is_due_at_its_cause_and_opportunities_keep_id_order() {
    let yaml = "kind: journey\ntenant: t\nid: u\nversion: 1\naudience: target\nstart: w\nnodes:\n  w: {wait: {until: '2020-01-01T00:00:00Z'}, next: m}\n  m: {action: {send_alert: {template: x}}}\n";
    let mut defs = Definitions::default();
    defs.publish(compile_journey(&read_document(yaml).expect("parses")).expect("valid")).expect("publishes");
    let mut s = Script::new(defs);
    s.apply(
        json!({"type":"opportunity.upserted","event_id":"o2","opportunity_id":"o2","account_id":"a","attributes":{}}),
    );
    s.apply(
        json!({"type":"opportunity.upserted","event_id":"o1","opportunity_id":"o1","account_id":"a","attributes":{}}),
    );
    let ids: Vec<&str> = s.acct.opportunities.iter().map(|o| o.record.opportunity_id.as_str()).collect();
    assert_eq!(ids, ["o1", "o2"], "the order a reload gives");
    let timer = s.enter("in", T0);
    assert_eq!(timer.timer.due, ts(T0).0, "due at its cause, not in the past");
}
