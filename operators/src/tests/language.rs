//! Tests of the journey language's nodes, actions and conditions (SPEC §3.1, §3.2, §7) on short scripts.

use super::{DAY, Script, T0, at, ts};
use crate::account::{Definitions, TimerHandle};
use crate::journey::{Problem, compile_journey};
use caravan_schemas::definition::read_document;
use caravan_schemas::output::{ChangeOp, Entity, Origin};
use serde_json::{Value, json};

const HEAD: &str = "kind: journey\ntenant: t\nid: j\nversion: 1\naudience: target\n";

fn defs(yaml: &str) -> Definitions {
    let mut defs = Definitions::default();
    let doc = read_document(&format!("{HEAD}{yaml}")).expect("parses");
    defs.publish(compile_journey(&doc).unwrap_or_else(|p| panic!("{p:?}"))).expect("publishes");
    defs
}

fn problems(yaml: &str) -> Vec<Problem> {
    compile_journey(&read_document(&format!("{HEAD}{yaml}")).expect("parses")).err().unwrap_or_default()
}

fn has_problem(p: &[Problem], node: &str, text: &str) -> bool {
    p.iter().any(|x| x.node.as_deref() == Some(node) && x.message.contains(text))
}

/// (node, person) of every action.
fn sent(s: &Script) -> Vec<(String, Option<String>)> {
    s.out.actions.iter().map(|a| (a.node_id.to_string(), a.person_id.as_ref().map(ToString::to_string))).collect()
}

fn pairs(v: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    v.iter().map(|(n, p)| ((*n).to_owned(), p.map(str::to_owned))).collect()
}

fn person(s: &mut Script, id: &str, attrs: Value) {
    s.apply(json!({"type":"person.upserted","event_id":format!("u-{id}-{}", s.seq),"person_id":id,"account_id":"a","attributes":attrs}));
}

fn enter(s: &mut Script, when: &str) {
    s.apply(json!({"type":"account.audience","event_id":format!("in{}", s.seq),"ts":when,"account_id":"a","audience_id":"target","status":"entered"}));
}

fn timers(s: &Script) -> Vec<TimerHandle> {
    let mut t = s.out.armed.clone();
    t.sort_by(|a, b| crate::timers::fire_order(&a.timer, &b.timer));
    t
}

const PEOPLE_SPLIT: &str = "start: split
nodes:
  split:
    split_people:
      - {when: 'person.level == \"exec\"', next: exec_mail}
      - {when: 'person.level == \"none\"', next: joined}
    otherwise: nurture_wait
  exec_mail: {action: {send_email: {asset: brief}}, next: exec_wait}
  exec_wait: {wait: 1d, next: exec_sms}
  exec_sms: {action: {send_sms: {asset: reminder}}, next: joined}
  nurture_wait: {wait: 3d, next: nurture}
  nurture: {action: {send_email: {asset: nurture}}, next: joined}
  joined: {merge: {}, next: after}
  after: {action: {send_email: {asset: all}}}
";

#[test]
fn split_people_paths_of_different_lengths_meet_at_the_merge() {
    let mut s = Script::new(defs(PEOPLE_SPLIT));
    person(&mut s, "e1", json!({"level": "exec"}));
    person(&mut s, "n1", json!({"level": "none"}));
    person(&mut s, "o1", json!({}));
    person(&mut s, "e2", json!({"level": "exec"}));
    enter(&mut s, T0);
    // The exec path runs its first action; the empty path is at the merge at once; two timers wait.
    assert_eq!(sent(&s), pairs(&[("exec_mail", Some("e1")), ("exec_mail", Some("e2"))]));
    let armed = timers(&s);
    assert_eq!(armed.iter().map(|t| t.timer.due).collect::<Vec<_>>(), [ts(T0).0 + DAY, ts(T0).0 + 3 * DAY]);
    assert_eq!(s.acct.record.instances[0].node, "split");
    assert_eq!(s.acct.record.instances[0].branches.len(), 3);
    // The one-day path arrives first: the account still waits for the three-day path.
    s.fire(&armed[0], "tick1");
    assert_eq!(sent(&s), pairs(&[("exec_sms", Some("e1")), ("exec_sms", Some("e2"))]));
    assert_eq!(s.acct.record.instances[0].node, "split");
    // Once the last path arrives, everyone continues past the merge, in join order.
    s.fire(&armed[1], "tick3");
    assert_eq!(
        sent(&s),
        pairs(&[
            ("nurture", Some("o1")),
            ("after", Some("e1")),
            ("after", Some("n1")),
            ("after", Some("o1")),
            ("after", Some("e2")),
        ])
    );
    assert!(s.acct.record.instances.is_empty(), "the journey ended after `after`");
    assert!(s.out.actions.iter().all(|a| a.ts.0.0 == ts(T0).0 + 3 * DAY && a.cause_event_id == "tick3"));
}

#[test]
fn a_person_who_joins_inside_a_people_path_waits_at_the_merge() {
    let mut s = Script::new(defs(PEOPLE_SPLIT));
    person(&mut s, "e1", json!({"level": "exec"}));
    person(&mut s, "o1", json!({}));
    enter(&mut s, T0);
    let armed = timers(&s);
    // Joins while both paths wait; leaves: o1 is deleted before its path's action.
    person(&mut s, "late", json!({"level": "exec"}));
    s.apply(json!({"type":"person.deleted","event_id":"del-o1","person_id":"o1"}));
    s.fire(&armed[0], "tick1");
    assert_eq!(sent(&s), pairs(&[("exec_sms", Some("e1"))]), "late gets nothing of the path it did not take");
    s.fire(&armed[1], "tick3");
    // o1's path is still waited for, but o1 gets nothing more; late continues with the account.
    assert_eq!(sent(&s), pairs(&[("after", Some("e1")), ("after", Some("late"))]));
}

#[test]
fn a_person_matching_no_path_without_otherwise_waits_at_the_merge() {
    let yaml = "start: split
nodes:
  split:
    split_people:
      - {when: 'person.level == \"exec\"', next: mail}
  mail: {action: {send_email: {asset: brief}}, next: m}
  m: {merge: {}, next: all}
  all: {action: {send_email: {asset: all}}}
";
    let mut s = Script::new(defs(yaml));
    person(&mut s, "x", json!({}));
    person(&mut s, "e", json!({"level": "exec"}));
    enter(&mut s, T0);
    assert_eq!(sent(&s), pairs(&[("mail", Some("e")), ("all", Some("x")), ("all", Some("e"))]));
}

#[test]
fn person_actions_change_people_and_emit_action_changes() {
    let yaml = "start: a
nodes:
  a: {action: {set_person_attribute: {field: stage, value: mql}}, next: b}
  b: {action: {change_person_score: {field: score, by: 5}}, next: c}
  c: {action: {change_person_score: {field: score, by: 0.5}, to: {where: 'person.id == \"p2\"'}}, next: d}
  d: {action: {add_to_list: {list: vip}, to: {where: 'person.score >= 5'}}, next: e}
  e: {action: {add_account_to_list: {list: target-accounts}}, next: f}
  f:
    split_accounts:
      - {when: '\"target-accounts\" in account.lists', next: g}
  g: {action: {send_sms: {asset: hi}, to: {where: '\"vip\" in person.lists && person.stage == \"mql\"'}}, next: h}
  h: {action: {remove_from_list: {list: vip}, to: {role: decision_maker, solution: analytics}}}
";
    let mut s = Script::new(defs(yaml));
    person(&mut s, "p1", json!({"score": "high"}));
    person(&mut s, "p2", json!({"score": 1}));
    enter(&mut s, T0);
    let kinds: Vec<(&str, Option<&str>)> =
        s.out.actions.iter().map(|a| (a.kind.as_str(), a.person_id.as_deref())).collect();
    assert_eq!(
        kinds,
        [
            ("set_person_attribute", Some("p1")),
            ("set_person_attribute", Some("p2")),
            ("change_person_score", Some("p1")),
            ("change_person_score", Some("p2")),
            ("change_person_score", Some("p2")),
            ("add_to_list", Some("p1")),
            ("add_to_list", Some("p2")),
            ("add_account_to_list", None),
            ("send_sms", Some("p1")),
            ("send_sms", Some("p2")),
        ],
        "a role without a buying group targets nobody: no record"
    );
    // One net change per person, from the first action that touched it.
    let changes: Vec<_> = s.out.changes.iter().map(|c| (c.entity_id.as_str(), c.op, c.origin)).collect();
    assert_eq!(changes, [("p1", ChangeOp::Update, Origin::Action), ("p2", ChangeOp::Update, Origin::Action)]);
    let p1 = &s.out.changes[0];
    assert_eq!((p1.journey_id.as_deref(), p1.node_id.as_deref()), (Some("j"), Some("a")));
    // A non-numeric score starts from 0; ints stay ints; a double makes a double.
    assert_eq!(Value::Object(p1.after.to_map()), json!({"score": 5, "stage": "mql"}));
    assert_eq!(Value::Object(s.out.changes[1].after.to_map()), json!({"score": 6.5, "stage": "mql"}));
    assert_eq!(s.out.actions[4].params, json!({"field": "score", "by": 0.5}), "params exclude `to`");
    assert_eq!(s.acct.persons[0].record.lists(), ["vip"]);
    assert_eq!(s.acct.record.lists, ["target-accounts"]);
    assert!(s.out.changes.iter().all(|c| c.entity == Entity::Person), "lists emit no change events");
}

#[test]
fn listens_for_account_events() {
    let yaml = "start: l
nodes:
  l:
    listen: {account_event: opportunity.changed, where: 'event.after.stage == \"won\" && event.op == \"update\"'}
    timeout: 10d
    next: won
    on_timeout: late
  won: {action: {send_alert: {to: sales, template: won}}, next: gone}
  gone:
    listen: {account_event: audience.exited, where: 'event.audience_id == \"fans\"'}
    next: bye
  bye: {action: {send_alert: {template: bye}}}
  late: {exit: {}}
";
    let mut s = Script::new(defs(yaml));
    s.apply(json!({"type":"opportunity.upserted","event_id":"o1","account_id":"a","opportunity_id":"o","attributes":{"stage":"open"}}));
    enter(&mut s, T0);
    assert_eq!(s.out.armed.len(), 1);
    // A change of another field, and a create, are not what `where` asks for.
    s.apply(json!({"type":"opportunity.upserted","event_id":"o2","ts":at(DAY),"account_id":"a","opportunity_id":"o","attributes":{"amount":5}}));
    assert!(s.out.actions.is_empty());
    s.apply(json!({"type":"opportunity.upserted","event_id":"o3","ts":at(DAY),"account_id":"a","opportunity_id":"n","attributes":{"stage":"won"}}));
    assert!(s.out.actions.is_empty(), "op is create");
    // Upserting the same values changes nothing, so no event.
    s.apply(json!({"type":"opportunity.upserted","event_id":"o4","ts":at(DAY),"account_id":"a","opportunity_id":"o","attributes":{"stage":"open"}}));
    assert!(s.out.actions.is_empty());
    s.apply(json!({"type":"opportunity.upserted","event_id":"o5","ts":at(2 * DAY),"account_id":"a","opportunity_id":"o","attributes":{"stage":"won"}}));
    assert_eq!(sent(&s), pairs(&[("won", None)]));
    assert_eq!(s.out.cancelled.len(), 1);
    assert_eq!(s.out.changes.len(), 1, "the opportunity's own change event");
    // audience.exited: only on a change of membership, filtered by `where`.
    let aud = |s: &mut Script, id: &str, audience: &str, status: &str| {
        s.apply(
            json!({"type":"account.audience","event_id":id,"account_id":"a","audience_id":audience,"status":status}),
        );
    };
    aud(&mut s, "x0", "fans", "exited");
    assert!(s.out.actions.is_empty(), "never a member: no change of membership");
    aud(&mut s, "x1", "fans", "entered");
    aud(&mut s, "x2", "other", "entered");
    aud(&mut s, "x3", "other", "exited");
    assert!(s.out.actions.is_empty());
    aud(&mut s, "x4", "fans", "exited");
    assert_eq!(sent(&s), pairs(&[("bye", None)]));
}

#[test]
fn exit_on_audience_exit_ends_the_instance_before_listens_hear_it() {
    let yaml = "exit_on_audience_exit: true
start: l
nodes:
  l: {listen: {account_event: audience.exited}, next: n}
  n: {action: {send_alert: {template: t}}}
";
    let mut s = Script::new(defs(yaml));
    enter(&mut s, T0);
    s.apply(
        json!({"type":"account.audience","event_id":"x","account_id":"a","audience_id":"target","status":"exited"}),
    );
    assert!(s.out.actions.is_empty());
    assert!(s.acct.record.instances.is_empty());
}

#[test]
fn activity_counts_feed_conditions_within_their_window() {
    let yaml = "start: w
nodes:
  w: {wait: 10d, next: s}
  s:
    split_accounts:
      - {when: 'activity(\"web.visited\", \"7d\") >= 3', next: hot}
    otherwise: cold
  hot: {action: {send_email: {asset: hot}, to: {where: 'activity(\"web.visited\", \"7d\") >= 2'}}}
  cold: {action: {send_alert: {template: cold}}}
";
    let visit = |s: &mut Script, id: &str, p: &str, day: i64| {
        s.apply(json!({"type":"person.activity","event_id":id,"ts":at(day * DAY),"person_id":p,"account_id":"a","activity":"web.visited"}));
    };
    let mut s = Script::new(defs(yaml));
    person(&mut s, "p1", json!({}));
    person(&mut s, "p2", json!({}));
    enter(&mut s, T0);
    let timer = s.out.armed[0].clone();
    visit(&mut s, "v0", "p1", 1); // outside the 7-day window at day 10
    visit(&mut s, "v1", "p1", 3); // exactly at the window's start: counts (ts >= now - window)
    visit(&mut s, "v2", "p1", 5);
    visit(&mut s, "v3", "p2", 6);
    s.fire(&timer, "t");
    assert_eq!(sent(&s), pairs(&[("hot", Some("p1"))]));
    // Without the activity on day 3 the account has only two in the window.
    let mut s = Script::new(defs(yaml));
    person(&mut s, "p1", json!({}));
    enter(&mut s, T0);
    let timer = s.out.armed[0].clone();
    visit(&mut s, "v0", "p1", 1);
    visit(&mut s, "v2", "p1", 5);
    visit(&mut s, "v3", "p1", 6);
    s.fire(&timer, "t");
    assert_eq!(sent(&s), pairs(&[("cold", None)]));
    // Kinds no condition counts are not kept.
    let mut s = Script::new(Definitions::default());
    person(&mut s, "p1", json!({}));
    visit(&mut s, "v", "p1", 1);
    assert!(s.acct.persons[0].record.extra.is_none(), "no history, no extras");
}

#[test]
fn validation_of_people_paths_listens_and_targets() {
    // A listen on a people path, a path that never merges, a merge that closes nothing.
    let p = problems(
        "start: s
nodes:
  s:
    split_people:
      - {when: 'person.x == 1', next: l}
    otherwise: w
  l: {listen: {activity: email.opened}, next: m}
  w: {wait: 1d}
  m: {merge: {}}
  stray: {merge: {}}
",
    );
    assert!(has_problem(&p, "l", "people paths hold only person actions and waits"), "{p:?}");
    assert!(has_problem(&p, "w", "must end in its merge"), "{p:?}");
    assert!(p.iter().any(|x| x.node.as_deref() == Some("stray")), "{p:?}");
    // Two merges for one split; an account action on a path; a jump into a path from outside.
    let p = problems(
        "start: s
nodes:
  s:
    split_people:
      - {when: 'person.x == 1', next: m1}
      - {when: 'person.x == 2', next: mail}
      - {when: 'person.x == 3', next: alert}
  mail: {action: {send_email: {asset: x}}, next: m2}
  alert: {action: {send_alert: {template: t}}, next: m2}
  m1: {merge: {}, next: s2}
  m2: {merge: {}}
  s2:
    split_accounts:
      - {when: 'account.x == 1', next: w}
      - {when: 'account.x == 2', next: mail}
  w: {wait: 1d, next: m3}
  m3: {merge: {}}
",
    );
    assert!(has_problem(&p, "s", "all paths must end in the same merge"), "{p:?}");
    assert!(has_problem(&p, "alert", "people paths hold only person actions"), "{p:?}");
    assert!(has_problem(&p, "s2", "leads into `mail`"), "{p:?}");
    assert!(has_problem(&p, "m3", "closes exactly one split_people, this one closes 0"), "{p:?}");
    // Targets, account events and conditions in the right places.
    let p = problems(
        "start: a
nodes:
  a: {action: {send_alert: {template: t}, to: {where: 'true'}}, next: b}
  b: {action: {send_email: {asset: x}, to: {role: r}}, next: c}
  c: {listen: {account_event: account.poked}, next: d}
  d: {listen: {activity: email.opened, account_event: audience.exited}, next: e}
  e: {action: {send_email: {asset: x}, to: {where: 'event.x == 1'}}, next: f}
  f: {action: {change_person_score: {field: s, by: lots}}}
",
    );
    for (node, text) in [
        ("a", "account action: it takes no `to`"),
        ("b", "either `role` with `solution`, or `where`"),
        ("c", "names no account event"),
        ("d", "exactly one of `activity` and `account_event`"),
        ("e", "unknown identifier `event`"),
        ("f", "must be a number"),
    ] {
        assert!(has_problem(&p, node, text), "{node}: {p:?}");
    }
}

#[test]
fn publishing_enters_accounts_already_in_the_audience_and_stop_ends_instances() {
    use crate::account::{Cause, enter_on_publish, stop_journey};
    // The account entered the audience before any journey existed.
    let mut s = Script::new(Definitions::default());
    person(&mut s, "p1", json!({}));
    enter(&mut s, T0);
    assert!(s.acct.record.instances.is_empty());
    let yaml = "reentry: after_exit\nstart: hi\nnodes:\n  hi: {action: {send_email: {asset: hi}}, next: w}\n  w: {wait: 1d, next: bye}\n  bye: {action: {send_alert: {template: t}}}\n";
    let mut defs = defs(yaml);
    let journey = defs.get("t", "j", 1).cloned().expect("published");
    let when = ts(T0).plus(DAY);
    let cause = Cause::control(s.seq, when, "publish:j:1");
    s.out.clear();
    assert!(enter_on_publish(&defs, &mut s.acct, &journey, &cause, &mut s.out));
    assert_eq!(sent(&s), pairs(&[("hi", Some("p1"))]));
    assert_eq!(s.out.actions[0].cause_event_id, "publish:j:1");
    assert_eq!(s.out.armed[0].timer.arm[..2], [s.seq, 2], "armed after the record's own timers");
    // Published again (a restart): the running instance is not entered twice.
    s.out.clear();
    assert!(!enter_on_publish(&defs, &mut s.acct, &journey, &cause, &mut s.out));
    // Stop: the instance ends silently, its timer is cancelled, and the journey admits no new entry.
    s.out.clear();
    assert_eq!(stop_journey(&mut s.acct, "j", &mut s.out), 1);
    assert!(s.out.actions.is_empty() && s.out.cancelled.len() == 1);
    assert_eq!(defs.stop("t", "j"), Some(1));
    s.defs = defs.clone();
    s.apply(
        json!({"type":"account.audience","event_id":"out","account_id":"a","audience_id":"target","status":"exited"}),
    );
    enter(&mut s, &at(3 * DAY));
    assert!(s.out.actions.is_empty() && s.acct.record.instances.is_empty(), "a stopped journey admits nobody");
    assert!(!enter_on_publish(&defs, &mut s.acct, &journey, &cause, &mut s.out));
    // A higher version runs again; the stop counted as an exit, so `after_exit` admits the account again
    // (with `never` it would not).
    let v2 = compile_journey(
        &read_document(&format!("{}{yaml}", HEAD.replace("version: 1", "version: 2"))).expect("parses"),
    )
    .expect("valid");
    defs.publish(v2).expect("publishes");
    assert!(!defs.is_stopped("t", "j", 2) && defs.is_stopped("t", "j", 1));
    let v2 = defs.get("t", "j", 2).cloned().expect("published");
    assert!(enter_on_publish(&defs, &mut s.acct, &v2, &cause, &mut s.out));
    assert_eq!((s.acct.record.instances[0].journey_version, s.acct.record.instances[0].instance), (2, 2));
}

#[test]
fn removals_null_values_and_actions_without_a_buying_group() {
    let yaml = "start: a
nodes:
  a: {action: {add_to_list: {list: l}}, next: b}
  b: {action: {add_account_to_list: {list: k}}, next: c}
  c: {action: {remove_from_list: {list: l}, to: {where: 'person.id == \"p1\"'}}, next: d}
  d: {action: {remove_account_from_list: {list: k}}, next: e}
  e: {action: {remove_account_from_list: {list: never-added}}, next: f}
  f: {action: {set_person_attribute: {field: title, value: null}}, next: g}
  g: {action: {set_account_attribute: {field: tier, value: null}}, next: h}
  h: {action: {set_buying_group_stage: {solution: analytics, stage: decision}}, next: i}
  i: {action: {reassess_buying_group: {solution: analytics}}, next: j}
  j: {action: {send_email: {asset: x}, to: {where: 'buying_group(\"analytics\") == null && person.role(\"analytics\") == null'}}}
";
    let mut s = Script::new(defs(yaml));
    s.apply(json!({"type":"account.upserted","event_id":"a0","account_id":"a","attributes":{"tier":"gold"}}));
    person(&mut s, "p1", json!({"title": "CTO"}));
    person(&mut s, "p2", json!({}));
    enter(&mut s, T0);
    assert!(s.acct.persons[0].record.lists().is_empty());
    assert_eq!(s.acct.persons[1].record.lists(), ["l"]);
    assert!(s.acct.record.lists.is_empty());
    // Removing an attribute by null: the change carries null after; a person without it changes nothing.
    let changes: Vec<(&str, Value)> =
        s.out.changes.iter().map(|c| (c.entity_id.as_str(), Value::Object(c.after.to_map()))).collect();
    assert_eq!(changes, [("p1", json!({"title": null})), ("a", json!({"tier": null}))]);
    // The buying-group actions give their action record; with no group, conditions read null.
    let tail: Vec<(&str, Option<&str>)> =
        s.out.actions[s.out.actions.len() - 4..].iter().map(|a| (a.kind.as_str(), a.person_id.as_deref())).collect();
    assert_eq!(
        tail,
        [
            ("set_buying_group_stage", None),
            ("reassess_buying_group", None),
            ("send_email", Some("p1")),
            ("send_email", Some("p2"))
        ]
    );
}

#[test]
fn a_listen_without_timeout_waits_for_ever_and_wait_until_in_the_future() {
    let yaml = "start: u
nodes:
  u: {wait: {until: '2026-02-01T00:00:00Z'}, next: l}
  l: {listen: {activity: form.filled}, next: done}
  done: {action: {send_alert: {template: t}}}
";
    let mut s = Script::new(defs(yaml));
    person(&mut s, "p", json!({}));
    enter(&mut s, T0);
    let t = s.out.armed[0].clone();
    assert_eq!(t.timer.due, ts("2026-02-01T00:00:00Z").0);
    s.apply(json!({"type":"person.activity","event_id":"early","ts":at(DAY),"person_id":"p","account_id":"a","activity":"form.filled"}));
    assert!(s.out.actions.is_empty(), "still waiting: the listen is not reached");
    s.fire(&t, "tick");
    assert!(s.out.armed.is_empty(), "no timeout, no timer");
    s.apply(json!({"type":"person.activity","event_id":"late","ts":at(400 * DAY),"person_id":"p","account_id":"a","activity":"form.filled"}));
    assert_eq!(sent(&s), pairs(&[("done", None)]));
}
