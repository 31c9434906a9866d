//! Buying groups (SPEC §3.3): roles, completeness, engagement over time, stages, and journeys using them.

use super::{DAY, Script, at};
use crate::account::Definitions;
use crate::buying_group::compile_template;
use crate::journey::compile_journey;
use caravan_schemas::definition::read_document;
use caravan_schemas::output::Entity;
use serde_json::{Value, json};

const TEMPLATE: &str = r#"kind: buying_group_template
tenant: t
id: analytics-bg
solution_interest: analytics
roles:
  - {role: decision_maker, when: 'person.job_title.contains("CTO") || person.job_title.contains("VP")', required: true}
  - {role: influencer, when: 'person.job_title.contains("Director")', required: true}
  - {role: practitioner, when: 'person.job_title.contains("Engineer") || person.job_title.contains("CTO")'}
engagement: {window: 30d, weights: {email.opened: 1, email.clicked: 3, form.filled: 5}}
stages:
  - {stage: awareness}
  - {stage: engaged, when: buying_group.engagement >= 5}
  - {stage: decision, when: buying_group.completeness >= 1.0 && buying_group.engagement >= 10}
"#;

const JOURNEY: &str = r#"kind: journey
tenant: t
id: bg
version: 1
audience: target
start: wait_decision
nodes:
  wait_decision:
    listen: {account_event: buying_group.stage_changed, where: 'event.stage == "decision" && event.previous_stage == "awareness" && event.solution == "analytics"'}
    next: brief
  brief:
    action: {send_email: {asset: exec-brief}, to: {role: decision_maker, solution: analytics}}
    next: alert
  alert:
    action: {send_alert: {to: sales, template: decision-stage}}
    next: back
  back:
    action: {set_buying_group_stage: {solution: analytics, stage: engaged}}
"#;

fn defs(with_journey: bool) -> Definitions {
    let mut defs = Definitions::default();
    let t = compile_template(&read_document(TEMPLATE).expect("parses")).unwrap_or_else(|p| panic!("{p:?}"));
    defs.publish_template(t).expect("publishes");
    if with_journey {
        let j = compile_journey(&read_document(JOURNEY).expect("parses")).unwrap_or_else(|p| panic!("{p:?}"));
        defs.publish(j).expect("publishes");
    }
    defs
}

fn person(s: &mut Script, id: &str, title: &str) {
    let eid = format!("u-{id}-{}", s.seq);
    s.apply(json!({"type":"person.upserted","event_id":eid,"person_id":id,"account_id":"a","attributes":{"job_title":title}}));
}

fn activity(s: &mut Script, p: &str, kind: &str, day: i64) {
    let eid = format!("act-{}", s.seq);
    s.apply(json!({"type":"person.activity","event_id":eid,"ts":at(day * DAY),"person_id":p,"account_id":"a","activity":kind}));
}

fn group(s: &Script, day: i64) -> Value {
    crate::buying_group::group_value(
        &s.defs,
        &s.acct,
        "analytics",
        caravan_schemas::time::Timestamp::parse_rfc3339(&at(day * DAY)).expect("ts"),
    )
}

fn roles(s: &Script) -> Vec<(String, Option<String>)> {
    (0..s.acct.persons.len())
        .map(|ix| {
            let id = s.acct.persons[ix].record.person_id.to_string();
            (id, crate::buying_group::role_of(&s.acct, ix, "analytics").map(|r| r.to_string()))
        })
        .collect()
}

fn r(id: &str, role: Option<&str>) -> (String, Option<String>) {
    (id.to_owned(), role.map(str::to_owned))
}

#[test]
fn roles_take_the_first_match_and_follow_title_changes_and_moves() {
    let mut s = Script::new(defs(false));
    assert!(s.acct.record.groups.is_empty());
    person(&mut s, "cto", "CTO");
    person(&mut s, "dir", "Director of IT");
    person(&mut s, "eng", "Engineer");
    person(&mut s, "ops", "Operator");
    // The CTO matches decision_maker and practitioner: the first role wins, one role per person.
    assert_eq!(
        roles(&s),
        [
            r("cto", Some("decision_maker")),
            r("dir", Some("influencer")),
            r("eng", Some("practitioner")),
            r("ops", None)
        ]
    );
    assert_eq!(s.acct.record.groups.len(), 1, "a group exists once the account has a person");
    assert_eq!(s.acct.record.groups[0].stage, "awareness");
    // A new title moves the person to another role, or out of the group.
    person(&mut s, "eng", "VP Engineering");
    person(&mut s, "dir", "Operator");
    assert_eq!(roles(&s)[1..3], [r("dir", None), r("eng", Some("decision_maker"))]);
    let members = group(&s, 0)["members"].clone();
    assert_eq!(members, json!([{"id": "cto", "role": "decision_maker"}, {"id": "eng", "role": "decision_maker"}]));
    // Moving away (detached by the engine) leaves the group; deleting does too.
    s.acct.detach(Entity::Person, "cto");
    s.apply(json!({"type":"person.deleted","event_id":"del","person_id":"eng"}));
    assert_eq!(group(&s, 0)["members"], json!([]));
    // No one left: no group.
    s.apply(json!({"type":"person.deleted","event_id":"del2","person_id":"dir"}));
    s.apply(json!({"type":"person.deleted","event_id":"del3","person_id":"ops"}));
    assert!(s.acct.record.groups.is_empty());
    assert_eq!(group(&s, 0), Value::Null);
}

#[test]
fn completeness_counts_required_roles_only() {
    let mut s = Script::new(defs(false));
    person(&mut s, "eng", "Engineer");
    assert_eq!(group(&s, 0)["completeness"], json!(0.0), "an optional role fills nothing");
    person(&mut s, "cto", "CTO");
    assert_eq!(group(&s, 0)["completeness"], json!(0.5));
    person(&mut s, "dir", "Director");
    assert_eq!(group(&s, 0)["completeness"], json!(1.0));
    // Without required roles, completeness is 1.0.
    let text = TEMPLATE.replace("required: true", "required: false");
    let mut d = Definitions::default();
    d.publish_template(compile_template(&read_document(&text).expect("parses")).expect("valid")).expect("publishes");
    let mut s = Script::new(d);
    person(&mut s, "x", "Operator");
    assert_eq!(group(&s, 0)["completeness"], json!(1.0));
}

#[test]
fn engagement_rises_then_falls_as_activities_age_out_and_stages_never_go_back() {
    let mut s = Script::new(defs(false));
    person(&mut s, "cto", "CTO");
    person(&mut s, "ops", "Operator");
    activity(&mut s, "cto", "email.clicked", 1); // 3
    activity(&mut s, "ops", "form.filled", 1); // not a member: 0
    assert_eq!(group(&s, 1)["engagement"], json!(3.0));
    assert_eq!(s.acct.record.groups[0].stage, "awareness");
    activity(&mut s, "cto", "email.opened", 2); // 4
    activity(&mut s, "cto", "email.opened", 3); // 5: engaged
    assert_eq!(s.acct.record.groups[0].stage, "engaged");
    // 30 days after day 1 the click ages out: engagement falls, the stage stays.
    assert_eq!(group(&s, 31)["engagement"], json!(5.0));
    assert_eq!(group(&s, 32)["engagement"], json!(2.0), "day 2 is still inside: ts >= now - window");
    assert_eq!(group(&s, 33)["engagement"], json!(1.0));
    activity(&mut s, "cto", "email.opened", 33);
    assert_eq!(group(&s, 33)["engagement"], json!(2.0));
    assert_eq!(s.acct.record.groups[0].stage, "engaged", "never back by itself");
}

#[test]
fn the_furthest_holding_stage_is_taken_and_journeys_hear_it() {
    let mut s = Script::new(defs(true));
    person(&mut s, "cto", "CTO");
    person(&mut s, "dir", "Director");
    person(&mut s, "ops", "Operator");
    s.apply(
        json!({"type":"account.audience","event_id":"in","account_id":"a","audience_id":"target","status":"entered"}),
    );
    // Activities of a non-member count for nothing...
    activity(&mut s, "ops", "form.filled", 1);
    activity(&mut s, "ops", "form.filled", 1);
    assert_eq!(s.acct.record.groups[0].stage, "awareness");
    // ...until the person takes a role: engagement 10 with every required role filled goes straight from
    // awareness to decision (engaged is passed over), and the journey listening reacts in the same step.
    person(&mut s, "ops", "Engineer");
    assert_eq!(s.acct.record.groups[0].stage, "engaged", "moved back by the journey's last action");
    let sent: Vec<(&str, Option<&str>)> =
        s.out.actions.iter().map(|a| (a.node_id.as_str(), a.person_id.as_deref())).collect();
    assert_eq!(sent, [("brief", Some("cto")), ("alert", None), ("back", None)], "to: role reaches the decision maker");
    assert!(s.out.changes.iter().all(|c| c.entity == Entity::Person), "buying groups never reach the change stream");
    // With the same data the group advances again on the next record; the journey has ended.
    activity(&mut s, "cto", "email.opened", 2);
    assert_eq!(s.acct.record.groups[0].stage, "decision");
    assert!(s.out.actions.is_empty());
}

#[test]
fn templates_are_validated_with_paths() {
    let bad = "kind: buying_group_template\ntenant: t\nid: Bad\nsolution_interest: ''\nroles:\n  - {role: a, when: 'event.x == 1'}\n  - {role: a, when: 'person.x == 1'}\nengagement: {window: 0d, weights: {email.read: 1}}\nstages:\n  - {stage: s, when: 'true'}\n  - {stage: t, when: 'buying_group.completeness >= person.x'}\n";
    let problems = compile_template(&read_document(bad).expect("parses")).err().unwrap_or_default();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "id",
        "solution_interest",
        "roles[0].when",
        "roles[1].role",
        "engagement.window",
        "engagement.weights.email.read",
        "stages[0].when",
        "stages[1].when",
    ] {
        assert!(paths.contains(&want), "missing {want} in {problems:?}");
    }
    // Versions: equal with the same document is fine, with another refused, higher supersedes.
    let mut d = defs(false);
    let v1 = compile_template(&read_document(TEMPLATE).expect("parses")).expect("valid");
    d.publish_template(v1).expect("identical republication");
    let changed = TEMPLATE.replace("weights: {", "weights: {web.visited: 2, ");
    assert!(d.publish_template(compile_template(&read_document(&changed).expect("parses")).expect("valid")).is_err());
    let v2 = changed.replace("solution_interest: analytics", "version: 2\nsolution_interest: analytics");
    d.publish_template(compile_template(&read_document(&v2).expect("parses")).expect("valid")).expect("higher");
    assert_eq!(d.template("t", "analytics").map(|t| t.version), Some(2));
    // One template per solution interest.
    let other = TEMPLATE.replace("id: analytics-bg", "id: other-bg");
    assert!(d.publish_template(compile_template(&read_document(&other).expect("parses")).expect("valid")).is_err());
}

#[test]
fn stage_conditions_tell_what_they_read() {
    let t = compile_template(&read_document(TEMPLATE).expect("parses")).expect("valid");
    assert!(!t.stages_read_members && !t.stages_read_account && !t.roles_read_account && !t.roles_read_activity);
    let members = TEMPLATE.replace("buying_group.engagement >= 5", "size(buying_group.members) >= 2").replace(
        "person.job_title.contains(\"Director\")",
        "person.job_title.contains(\"Director\") && account.size > 1",
    );
    let t = compile_template(&read_document(&members).expect("parses")).expect("valid");
    assert!(t.stages_read_members && t.roles_read_account);
    let whole = TEMPLATE.replace("buying_group.engagement >= 5", "size(buying_group) > 0");
    let t = compile_template(&read_document(&whole).expect("parses")).expect("valid");
    assert!(t.stages_read_members, "a variable used whole may read any field");
}
