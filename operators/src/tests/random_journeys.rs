//! Property tests over random journeys and random event sequences (SPEC §3.2 invariants):
//! - every generated journey is valid (the generator only builds legal shapes);
//! - no action of an instance after that instance ended;
//! - no person gets an action in the step that made it join, and no action of a `split_people` path unless
//!   it was a member when the account reached the split;
//! - the same journey and events give identical outputs twice;
//! - every action id is unique.
//!
//! A small harness plays the engine's part: after each record it fires the timers due at the watermark in
//! (due, arming) order, as the replay workers do.

use super::{NANOS_PER_SEC, Script, at};
use crate::account::{Definitions, Effects, TimerHandle};
use crate::journey::{Journey, Node, compile_journey};
use caravan_schemas::definition::read_document;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A deterministic stream of choices from a seed (xorshift64*).
struct Choices(u64);

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next(items.len() as u64) as usize]
    }
}

const PERSON_ACTIONS: [&str; 6] = [
    "{send_email: {asset: a}}",
    "{send_sms: {asset: s}}",
    "{set_person_attribute: {field: level, value: hot}}",
    "{change_person_score: {field: score, by: 3}}",
    "{add_to_list: {list: l}}",
    "{send_email: {asset: w}, to: {where: 'person.score >= 3 || person.level == \"hot\"'}}",
];
const ACCOUNT_ACTIONS: [&str; 3] = [
    "{send_alert: {to: owner, template: t}}",
    "{set_account_attribute: {field: x, value: 2}}",
    "{add_account_to_list: {list: k}}",
];
const PERSON_CONDITIONS: [&str; 3] =
    ["person.level == \"exec\"", "person.score >= 3", "activity(\"web.visited\", \"2d\") >= 1"];
const ACCOUNT_CONDITIONS: [&str; 3] =
    ["account.x >= 1", "\"k\" in account.lists", "activity(\"email.opened\", \"1d\") > 1"];

/// A random valid journey: a chain of segments, each a node (or a `split_people` block) whose branches only
/// point forward to later segments' heads, so the graph is acyclic and every node reachable.
fn journey_yaml(c: &mut Choices) -> String {
    let segments = 2 + c.next(6) as usize;
    let reentry = if c.next(2) == 0 { "never" } else { "after_exit" };
    let exit_on = c.next(3) == 0;
    let mut nodes: Vec<String> = Vec::new();
    let seg = |i: usize| format!("s{i}");
    for i in 0..segments {
        let last = i + 1 == segments;
        let next = if last { String::new() } else { format!(", next: {}", seg(i + 1)) };
        let forward =
            |c: &mut Choices| if last { None } else { Some(seg(i + 1 + c.next((segments - i - 1) as u64) as usize)) };
        let kind = if last { c.next(3) } else { c.next(7) };
        match kind {
            0 => nodes.push(format!("  {}: {{action: {}{next}}}", seg(i), c.pick(&PERSON_ACTIONS))),
            1 => nodes.push(format!("  {}: {{action: {}{next}}}", seg(i), c.pick(&ACCOUNT_ACTIONS))),
            2 if last => nodes.push(format!("  {}: {{exit: {{}}}}", seg(i))),
            2 => nodes.push(format!("  {}: {{wait: {}h{next}}}", seg(i), 1 + c.next(48))),
            3 => {
                let what = match c.next(3) {
                    0 => "activity: email.clicked".to_owned(),
                    1 => "activity: web.visited, where: 'event.properties.page == \"pricing\"'".to_owned(),
                    _ => "account_event: opportunity.changed, where: 'event.after.stage == \"won\"'".to_owned(),
                };
                let timeout = match (c.next(3), forward(c)) {
                    (0, _) => String::new(),
                    (_, Some(t)) => format!(", timeout: {}h, on_timeout: {t}", 1 + c.next(72)),
                    (_, None) => format!(", timeout: {}h", 1 + c.next(72)),
                };
                nodes.push(format!("  {}: {{listen: {{{what}}}{timeout}{next}}}", seg(i)));
            }
            4 => {
                let target = forward(c).unwrap_or_else(|| seg(i + 1));
                nodes.push(format!(
                    "  {}:\n    split_accounts:\n      - {{when: '{}', next: {target}}}\n    otherwise: {}",
                    seg(i),
                    c.pick(&ACCOUNT_CONDITIONS),
                    seg(i + 1)
                ));
            }
            _ => {
                // A split_people block: 1-2 paths of 0-2 person actions or waits, an optional otherwise, a merge.
                let merge = format!("{}_m", seg(i));
                let mut paths = Vec::new();
                let mut path_nodes = Vec::new();
                let n_paths = 1 + c.next(2) as usize + usize::from(c.next(2) == 0);
                for p in 0..n_paths {
                    let len = c.next(4) as usize;
                    let names: Vec<String> = (0..len).map(|k| format!("{}_p{p}_{k}", seg(i))).collect();
                    for (k, name) in names.iter().enumerate() {
                        let to = names.get(k + 1).unwrap_or(&merge);
                        // Mostly a wait then an action: people join and leave while a path waits.
                        if k % 2 == 0 && c.next(3) > 0 {
                            path_nodes.push(format!("  {name}: {{wait: {}h, next: {to}}}", 1 + c.next(30)));
                        } else {
                            path_nodes.push(format!("  {name}: {{action: {}, next: {to}}}", c.pick(&PERSON_ACTIONS)));
                        }
                    }
                    paths.push(names.first().unwrap_or(&merge).clone());
                }
                let otherwise = if paths.len() > 1 && c.next(2) == 0 { paths.pop() } else { None };
                let mut text = format!("  {}:\n    split_people:", seg(i));
                for p in &paths {
                    text.push_str(&format!("\n      - {{when: '{}', next: {p}}}", c.pick(&PERSON_CONDITIONS)));
                }
                if let Some(o) = otherwise {
                    text.push_str(&format!("\n    otherwise: {o}"));
                }
                nodes.push(text);
                nodes.extend(path_nodes);
                nodes.push(format!("  {merge}: {{merge: {{}}{next}}}"));
            }
        }
    }
    format!(
        "kind: journey\ntenant: t\nid: r\nversion: 1\naudience: target\nreentry: {reentry}\nexit_on_audience_exit: {exit_on}\nstart: s0\nnodes:\n{}\n",
        nodes.join("\n")
    )
}

/// A random event of the account `a`, at hour `hour` of the run.
fn event(c: &mut Choices, i: usize, hour: i64) -> Value {
    let (eid, when) = (format!("e{i}"), at(hour * 3600 * NANOS_PER_SEC));
    let p = format!("p{}", c.next(5));
    match c.next(11) {
        0 => json!({"type":"account.upserted","event_id":eid,"ts":when,"account_id":"a","attributes":{"x": c.next(3)}}),
        1..=3 => {
            let level = ["exec", "staff", "none"][c.next(3) as usize];
            json!({"type":"person.upserted","event_id":eid,"ts":when,"person_id":p,"account_id":"a","attributes":{"level":level}})
        }
        4 => json!({"type":"person.deleted","event_id":eid,"ts":when,"person_id":p}),
        5 => {
            let status = if c.next(3) == 0 { "exited" } else { "entered" };
            json!({"type":"account.audience","event_id":eid,"ts":when,"account_id":"a","audience_id":"target","status":status})
        }
        6 => {
            let stage = ["open", "won"][c.next(2) as usize];
            json!({"type":"opportunity.upserted","event_id":eid,"ts":when,"account_id":"a","opportunity_id":"o1","attributes":{"stage":stage}})
        }
        _ => {
            let kind = ["email.clicked", "email.opened", "web.visited"][c.next(3) as usize];
            let page = ["pricing", "home"][c.next(2) as usize];
            json!({"type":"person.activity","event_id":eid,"ts":when,"person_id":p,"account_id":"a","activity":kind,"properties":{"page":page}})
        }
    }
}

/// What one run produced.
#[derive(Default)]
struct Run {
    outputs: Vec<String>,
    action_ids: Vec<String>,
}

/// The instance number an action belongs to, found by recomputing its id.
fn instance_of(journey: &Journey, a: &caravan_schemas::output::ActionRecord, max: u32) -> Option<u32> {
    (1..=max).find(|&i| {
        crate::ids::action_id(
            &a.tenant,
            &journey.id,
            journey.version,
            &a.account_id,
            &a.node_id,
            a.person_id.as_deref(),
            i,
        ) == a.action_id
    })
}

fn present(s: &Script) -> BTreeSet<String> {
    s.acct.persons.iter().filter(|p| p.record.present).map(|p| p.record.person_id.to_string()).collect()
}

/// What the checker remembers between steps.
#[derive(Default)]
struct Seen {
    run: Run,
    queue: Vec<TimerHandle>,
    /// Instances that stopped running.
    ended: BTreeSet<u32>,
    /// The `split_people` an instance waits in, with who was in the account when it got there.
    at_split: BTreeMap<u32, (String, BTreeSet<String>)>,
}

/// Checks one step's outputs; `before`: the people present when the step began.
fn check_step(
    journey: &Journey,
    s: &Script,
    out: &Effects,
    before: &BTreeSet<String>,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    for h in &out.cancelled {
        seen.queue.retain(|q| q != h);
    }
    seen.queue.extend(out.armed.iter().cloned());
    let entries = s.acct.record.entries.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for a in &out.actions {
        let inst = instance_of(journey, a, entries).ok_or_else(|| TestCaseError::fail("unknown instance"))?;
        prop_assert!(!seen.ended.contains(&inst), "action {} of instance {inst} after it ended", a.node_id);
        if let Some(p) = &a.person_id {
            prop_assert!(before.contains(p.as_str()), "action {} to {p}, who was not in the account", a.node_id);
            if a.node_id.contains("_p") {
                // A split passed within this step has no recorded members: its people are the step's.
                let members = seen
                    .at_split
                    .get(&inst)
                    .filter(|(split, _)| a.node_id.starts_with(&format!("{split}_p")))
                    .map_or(before, |(_, m)| m);
                prop_assert!(
                    members.contains(p.as_str()),
                    "path action {} to {p}, who joined after the split",
                    a.node_id
                );
            }
        }
        seen.run.action_ids.push(a.action_id.to_string());
        seen.run.outputs.push(serde_json::to_string(a).expect("serializes"));
    }
    for ch in &out.changes {
        seen.run.outputs.push(serde_json::to_string(ch).expect("serializes"));
    }
    let running: BTreeMap<u32, &str> = s.acct.record.instances.iter().map(|i| (i.instance, i.node.as_str())).collect();
    for n in 1..=entries {
        match running.get(&n) {
            None => {
                seen.ended.insert(n);
                seen.at_split.remove(&n);
            }
            Some(node) => {
                let at_split =
                    journey.node_index(node).is_some_and(|ix| matches!(journey.nodes[ix], Node::SplitPeople { .. }));
                if !at_split {
                    seen.at_split.remove(&n);
                } else if seen.at_split.get(&n).is_none_or(|(split, _)| split != node) {
                    // Steps that reach a split change no people: who is here now was here at the split.
                    seen.at_split.insert(n, ((*node).to_owned(), present(s)));
                }
            }
        }
    }
    Ok(())
}

fn play(journey: &Journey, yaml: &str, seed: u64, events: usize) -> Result<Run, TestCaseError> {
    let mut defs = Definitions::default();
    defs.publish(compile_journey(&read_document(yaml).expect("parses")).expect("valid")).expect("publishes");
    let mut s = Script::new(defs);
    let mut c = Choices(seed | 1);
    let mut seen = Seen::default();
    let mut hour = 0i64;
    for i in 0..events {
        hour += c.next(8) as i64;
        let e = event(&mut c, i, hour);
        let watermark = caravan_schemas::time::Timestamp::parse_rfc3339(e["ts"].as_str().unwrap_or("")).expect("ts").0;
        let before = present(&s);
        s.apply(e);
        let out = std::mem::take(&mut s.out);
        check_step(journey, &s, &out, &before, &mut seen)?;
        // The timer pass after the record, in (due, arming) order.
        loop {
            seen.queue.sort_by(|a, b| crate::timers::fire_order(&a.timer, &b.timer));
            let Some(t) = seen.queue.first().filter(|t| t.timer.due <= watermark).cloned() else { break };
            seen.queue.remove(0);
            let before = present(&s);
            s.fire(&t, &format!("e{i}"));
            let out = std::mem::take(&mut s.out);
            check_step(journey, &s, &out, &before, &mut seen)?;
        }
    }
    Ok(seen.run)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn random_journeys_keep_the_invariants(seed in any::<u64>(), events in 20usize..100) {
        let mut c = Choices(seed | 1);
        let yaml = journey_yaml(&mut c);
        let journey = compile_journey(&read_document(&yaml).expect("parses"))
            .map_err(|p| TestCaseError::fail(format!("generated journey is invalid: {p:?}\n{yaml}")))?;
        let first = play(&journey, &yaml, seed, events)?;
        let second = play(&journey, &yaml, seed, events)?;
        prop_assert_eq!(&first.outputs, &second.outputs, "same input, same outputs");
        let mut ids = first.action_ids.clone();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), first.action_ids.len(), "action ids are unique");
    }
}
