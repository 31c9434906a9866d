//! Buying groups end to end (SPEC §3.3): a template and a journey that waits for the `decision` stage and
//! alerts sales, over a generated population, with the alerts checked exactly against an independent model;
//! and no buying group data on the change stream.

use crate::support::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

const TEMPLATE: &str = r#"kind: buying_group_template
tenant: t
id: analytics-bg
solution_interest: analytics
roles:
  - {role: decision_maker, when: 'person.job_title in ["CTO", "CIO"] || person.job_title.startsWith("VP")', required: true}
  - {role: influencer, when: 'person.job_title.contains("Director")', required: true}
  - {role: practitioner, when: 'person.job_title == "Engineer"'}
engagement: {window: 365d, weights: {email.opened: 1, email.clicked: 3, form.filled: 5}}
stages:
  - {stage: awareness}
  - {stage: decision, when: buying_group.completeness >= 1.0 && buying_group.engagement >= 12}
"#;

const JOURNEY: &str = r#"kind: journey
tenant: t
id: decision-alert
version: 1
audience: target
start: wait
nodes:
  wait:
    listen: {account_event: buying_group.stage_changed, where: 'event.stage == "decision"'}
    next: alert
  alert:
    action: {send_alert: {to: sales, template: decision}}
"#;

const TITLES: [&str; 7] = ["CTO", "VP Data", "Director of IT", "Engineer", "Analyst", "Intern", "CIO"];
const KINDS: [(&str, u32); 4] = [("email.opened", 1), ("email.clicked", 3), ("form.filled", 5), ("web.visited", 0)];

fn role(title: &str) -> Option<&'static str> {
    if ["CTO", "CIO"].contains(&title) || title.starts_with("VP") {
        Some("decision_maker")
    } else if title.contains("Director") {
        Some("influencer")
    } else if title == "Engineer" {
        Some("practitioner")
    } else {
        None
    }
}

#[test]
fn a_journey_waiting_for_the_decision_stage_alerts_exactly_the_accounts_that_reach_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(defs.join("bg.yaml"), TEMPLATE).expect("write");
    std::fs::write(defs.join("journey.yaml"), JOURNEY).expect("write");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut lines = Vec::new();
    let mut titles: BTreeMap<String, &str> = BTreeMap::new();
    let mut account_of: BTreeMap<String, String> = BTreeMap::new();
    let ts = |minute: u64| {
        caravan_schemas::time::Timestamp(1_767_225_600_000_000_000 + minute as i64 * 60_000_000_000).to_rfc3339()
    };
    let accounts = 60;
    for a in 0..accounts {
        let account = format!("acct{a}");
        lines.push(format!(r#"{{"tenant":"t","type":"account.audience","event_id":"in{a}","ts":"{}","account_id":"{account}","audience_id":"target","status":"entered"}}"#, ts(0)));
        for p in 0..rng.random_range(1..6) {
            let person = format!("{account}-p{p}");
            let title = TITLES[rng.random_range(0..TITLES.len())];
            lines.push(format!(r#"{{"tenant":"t","type":"person.upserted","event_id":"u-{person}","ts":"{}","person_id":"{person}","account_id":"{account}","attributes":{{"job_title":"{title}"}}}}"#, ts(1)));
            titles.insert(person.clone(), title);
            account_of.insert(person, account.clone());
        }
    }
    // Activities, without account_id: they route through the person index.
    let people: Vec<String> = titles.keys().cloned().collect();
    let mut activities = Vec::new();
    for i in 0..1500u64 {
        let person = people[rng.random_range(0..people.len())].clone();
        let (kind, _) = KINDS[rng.random_range(0..KINDS.len())];
        lines.push(format!(r#"{{"tenant":"t","type":"person.activity","event_id":"act{i}","ts":"{}","person_id":"{person}","activity":"{kind}"}}"#, ts(10 + i)));
        activities.push((format!("act{i}"), person, kind));
    }
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");

    // The model: per account, the required roles present, and members' weighted activities; the first
    // activity at which both thresholds hold is the cause of the account's only alert.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut engagement: BTreeMap<String, u32> = BTreeMap::new();
    for (id, person, kind) in &activities {
        let account = &account_of[person];
        if role(titles[person]).is_none() || expected.contains_key(account) {
            continue;
        }
        let weight = KINDS.iter().find(|(k, _)| k == kind).map_or(0, |(_, w)| *w);
        let e = engagement.entry(account.clone()).or_insert(0);
        *e += weight;
        let roles: BTreeSet<&str> =
            account_of.iter().filter(|(_, a)| *a == account).filter_map(|(p, _)| role(titles[p.as_str()])).collect();
        if *e >= 12 && roles.contains("decision_maker") && roles.contains("influencer") {
            expected.insert(account.clone(), id.clone());
        }
    }
    assert!(
        expected.len() >= 5 && expected.len() < accounts,
        "the population reaches decision only sometimes: {}",
        expected.len()
    );

    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    replay(&defs, &input, &out, Some(&state), &["--workers", "2"]);
    assert_outputs_match_schemas(&out);
    let alerts: BTreeMap<String, String> = read_ndjson(&out.join("actions.ndjson"))
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "send_alert");
            (
                a["account_id"].as_str().unwrap_or_default().to_owned(),
                a["cause_event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(alerts, expected);
    // The groups can be read with `caravan inspect`.
    let (account, _) = expected.iter().next().expect("one account reached decision");
    let shown = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", "t", "--account", account]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("inspect prints JSON");
    let group = &shown["buying_groups"]["analytics"];
    assert_eq!(group["stage"], "decision");
    assert_eq!(group["completeness"], 1.0);
    assert!(group["engagement"].as_f64().is_some_and(|e| e >= 12.0), "{group}");
    assert!(group["members"].as_array().is_some_and(|m| m.iter().any(|x| x["role"] == "decision_maker")));
    // Buying group data never reaches the change stream: only persons changed here (their creation).
    let changes = read_ndjson(&out.join("changes.ndjson"));
    assert_eq!(changes.len(), people.len());
    for c in &changes {
        assert_eq!(c["entity"], "person");
        let text = c.to_string();
        assert!(!text.contains("decision_maker") && !text.contains("awareness") && !text.contains("roles"), "{text}");
    }
}
