//! XDM B2B input end to end: `caravan replay --format xdm --tenant T` maps each class to its native event,
//! activities resolve to their person's account, and records without their identity are rejected.

use crate::support::*;
use serde_json::Value;

fn sk(id: &str) -> String {
    format!("{id}@123-ABC-456.Marketo")
}

/// The bundled XDM example (`ops/examples/xdm-events.ndjson`): an account, a person with its account, a person
/// placed by an account-person relation then updated in the namespaced form, an opportunity, two activities of
/// known people, then an activity of an unknown person, one without identity and an unmapped event type.
fn records() -> Vec<Value> {
    read_ndjson(&root().join("ops/examples/xdm-events.ndjson"))
}

#[test]
fn xdm_records_map_to_native_events_and_activities_reach_their_persons_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("xdm.ndjson");
    std::fs::copy(root().join("ops/examples/xdm-events.ndjson"), &input).expect("copy");
    let defs = dir.path().join("defs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let run = replay(&defs, &input, &out, Some(&state), &["--format", "xdm", "--tenant", "acme"]);
    let summary = String::from_utf8_lossy(&run.stdout);
    let rejected_text = std::fs::read_to_string(out.join("rejected.ndjson")).unwrap_or_default();
    assert!(summary.contains("events: 7 applied, 3 rejected"), "{summary}\n{rejected_text}");

    let changes = read_ndjson(&out.join("changes.ndjson"));
    let account = changes.iter().find(|c| c["entity"] == "account").expect("an account change");
    assert_eq!(account["tenant"], "acme");
    assert_eq!(account["entity_id"], sk("100.mkto_org"));
    assert_eq!(account["after"]["name"], "Northwind");
    assert_eq!(account["after"]["employees"], 4200);
    let persons: Vec<&Value> = changes.iter().filter(|c| c["entity"] == "person").collect();
    assert!(persons.iter().any(|p| p["entity_id"] == sk("42") && p["account_id"] == sk("100.mkto_org")));
    // Person 43: placed by the relation, then updated in the namespaced form.
    assert!(
        persons.iter().any(|p| p["entity_id"] == sk("43") && p["after"]["account_role"] == "Influencer"),
        "{persons:?}"
    );
    assert!(
        persons.iter().any(|p| p["entity_id"] == sk("43")
            && p["account_id"] == sk("100.mkto_org")
            && p["after"]["email"] == "raj@northwind.example"),
        "{persons:?}"
    );
    let opp = changes.iter().find(|c| c["entity"] == "opportunity").expect("an opportunity change");
    assert_eq!(
        (opp["entity_id"].as_str(), opp["after"]["stage"].as_str()),
        (Some(sk("9001").as_str()), Some("Negotiation"))
    );

    let rejected = read_ndjson(&out.join("rejected.ndjson"));
    let reasons: Vec<(&str, &str)> =
        rejected.iter().map(|r| (r["reason"].as_str().unwrap_or(""), r["detail"].as_str().unwrap_or(""))).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, "unknown_person_account", "an activity of an unknown person: {reasons:?}");
    assert_eq!(reasons[1], ("missing_field", "missing field `personKey.sourceKey`"));
    assert_eq!(reasons[2].0, "unknown_type");
    let text = std::fs::read_to_string(&input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    for r in &rejected {
        let line = r["source"]["line"].as_u64().expect("line") as usize;
        assert_eq!(r["raw"].as_str(), Some(lines[line - 1]), "the raw record is kept");
    }

    // The account holds both people; their activities were applied to it (not rejected).
    let shown = caravan(&[
        "inspect",
        "--state",
        &state.display().to_string(),
        "--tenant",
        "acme",
        "--account",
        &sk("100.mkto_org"),
    ]);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let view: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let people: Vec<&str> =
        view["persons"].as_array().expect("persons").iter().filter_map(|p| p["person_id"].as_str()).collect();
    assert_eq!(people, [sk("42"), sk("43")]);
    assert_eq!(view["opportunities"][0]["opportunity_id"], sk("9001"));
    assert_outputs_match_schemas(&out);
}

#[test]
fn an_xdm_replay_needs_its_tenant_and_the_tenant_must_be_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("xdm.ndjson");
    std::fs::write(&input, records()[0].to_string() + "\n").expect("write");
    let out_dir = dir.path().join("out");
    let args = |extra: &[&str]| {
        let mut a = vec!["replay", "--definitions", "ops/examples/journeys", "--no-progress", "--input"];
        a.push(input.to_str().expect("utf-8 path"));
        a.extend(["--out", out_dir.to_str().expect("utf-8 path")]);
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        std::process::Command::new(caravan_bin()).current_dir(root()).args(&refs).output().expect("runs")
    };
    let out = run(&["--format", "xdm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant must be set"), "{out:?}");
    let out = run(&["--tenant", "acme"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant is only for"), "{out:?}");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[[tenants]]\nid = \"acme\"\nsandbox = \"s\"\nsubscription = \"u\"\n").expect("write");
    let out = run(&["--format", "xdm", "--tenant", "other", "--config", config.to_str().expect("utf-8 path")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`other` is not in the tenant registry"), "{out:?}");
    let out = run(&["--format", "xdm", "--tenant", "acme", "--config", config.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
