//! Cross-tenant isolation: two tenants with the same account and person ids, journeys in both, one input
//! interleaved in time. No output of one tenant names the other's events, every tenant's entities end as a
//! run of that tenant alone leaves them, and no query of one finds the other's data.

use crate::support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The reference workload of `seed` as tenant `tenant`, event ids prefixed so the two inputs never share one.
fn workload(dir: &Path, seed: u32, tenant: &str) -> Vec<Value> {
    let path = dir.join(format!("w{seed}.ndjson"));
    generate(&path, 60, 4, 5_000, 10, seed);
    let mut events = read_ndjson(&path);
    for e in &mut events {
        e["tenant"] = Value::from(tenant);
        e["event_id"] = Value::from(format!("{tenant}-{}", e["event_id"].as_str().unwrap_or_default()));
    }
    events
}

/// A tenant's event ids, account ids and person ids.
type Ids = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

fn write_lines(path: &Path, events: &[&Value]) {
    let text: String = events.iter().map(|e| e.to_string() + "\n").collect();
    std::fs::write(path, text).expect("write");
}

/// The reference journey published for each tenant.
fn journeys(dir: &Path, tenants: &[&str]) -> std::path::PathBuf {
    let defs = dir.join("defs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    let text = std::fs::read_to_string(reference_definitions().join("journey.yaml")).expect("journey");
    for t in tenants {
        std::fs::write(defs.join(format!("{t}.yaml")), text.replace("tenant: bench", &format!("tenant: {t}")))
            .expect("write");
    }
    defs
}

fn inspect(state: &Path, tenant: &str, account: &str) -> Option<Value> {
    let out = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", tenant, "--account", account]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

/// What a run leaves of an account's entities, whatever the timing of timers: attributes, people and
/// opportunities with their attributes, audiences.
fn entities(view: &Value) -> Value {
    let pick = |list: &Value, id: &str| -> Vec<(String, Value)> {
        list.as_array()
            .map(|l| {
                l.iter().map(|x| (x[id].as_str().unwrap_or_default().to_owned(), x["attributes"].clone())).collect()
            })
            .unwrap_or_default()
    };
    serde_json::json!({
        "attributes": view["attributes"],
        "audiences": view["audiences"],
        "persons": pick(&view["persons"], "person_id"),
        "opportunities": pick(&view["opportunities"], "opportunity_id"),
    })
}

#[test]
fn two_tenants_with_the_same_ids_never_see_each_others_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (alpha, beta) = (workload(dir.path(), 3, "alpha"), workload(dir.path(), 4, "beta"));
    let defs = journeys(dir.path(), &["alpha", "beta"]);
    // One input, both tenants interleaved in event time (each tenant's events keep their order).
    let mut mixed: Vec<&Value> = alpha.iter().chain(beta.iter()).collect();
    mixed.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    let input = dir.path().join("mixed.ndjson");
    write_lines(&input, &mixed);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    replay(&defs, &input, &out, Some(&state), &[]);
    assert!(read_ndjson(&out.join("rejected.ndjson")).is_empty());

    // Every output names only its own tenant's events, accounts and people.
    let ids = |events: &[Value], field: &str| -> BTreeSet<String> {
        events.iter().filter_map(|e| e[field].as_str().map(str::to_owned)).collect()
    };
    let own: BTreeMap<&str, Ids> = [("alpha", &alpha), ("beta", &beta)]
        .into_iter()
        .map(|(t, events)| (t, (ids(events, "event_id"), ids(events, "account_id"), ids(events, "person_id"))))
        .collect();
    let actions = read_ndjson(&out.join("actions.ndjson"));
    let changes = read_ndjson(&out.join("changes.ndjson"));
    assert!(!actions.is_empty() && !changes.is_empty());
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for rec in actions.iter().chain(changes.iter()) {
        let tenant = rec["tenant"].as_str().expect("tenant");
        *per_tenant.entry(tenant.to_owned()).or_default() += 1;
        let (events, accounts, persons) = &own[tenant];
        let cause = rec["cause_event_id"].as_str().expect("cause");
        assert!(
            events.contains(cause) || cause.is_empty() || cause.starts_with("publish:"),
            "a {tenant} output names another tenant's event `{cause}`: {rec}"
        );
        assert!(accounts.contains(rec["account_id"].as_str().expect("account")), "{rec}");
        if let Some(p) = rec["person_id"].as_str().or(rec["entity_id"].as_str().filter(|_| rec["entity"] == "person")) {
            assert!(persons.contains(p), "{rec}");
        }
    }
    assert_eq!(per_tenant.len(), 2, "both tenants have outputs: {per_tenant:?}");

    // Each tenant's entities end as a run of that tenant alone leaves them; the same ids hold different data.
    let mut differ = 0;
    let alone: Vec<(&str, std::path::PathBuf)> = [("alpha", &alpha), ("beta", &beta)]
        .into_iter()
        .map(|(t, events)| {
            let input = dir.path().join(format!("{t}.ndjson"));
            write_lines(&input, &events.iter().collect::<Vec<_>>());
            let state = dir.path().join(format!("state-{t}"));
            replay(&defs, &input, &dir.path().join(format!("out-{t}")), Some(&state), &[]);
            (t, state)
        })
        .collect();
    let shared_accounts: Vec<&String> = own["alpha"].1.intersection(&own["beta"].1).take(12).collect();
    assert!(shared_accounts.len() >= 10, "the tenants share account ids");
    for account in shared_accounts {
        let mut views = Vec::new();
        for (tenant, solo_state) in &alone {
            let mixed_view = inspect(&state, tenant, account).map(|v| entities(&v));
            let solo_view = inspect(solo_state, tenant, account).map(|v| entities(&v));
            assert_eq!(mixed_view, solo_view, "tenant {tenant}, account {account}");
            views.push(mixed_view);
        }
        differ += usize::from(views[0] != views[1]);
    }
    assert!(differ >= 5, "the same account id holds each tenant's own data ({differ} of 12 differ)");
    // An id that only one tenant has is not found in the other.
    let only_alpha = own["alpha"].2.difference(&own["beta"].2).next().cloned();
    if let Some(person) = only_alpha {
        let account = alpha
            .iter()
            .find(|e| e["person_id"] == person.as_str() && e["account_id"].is_string())
            .and_then(|e| e["account_id"].as_str())
            .expect("the person's account");
        let beta_view = inspect(&state, "beta", account).map(|v| v["persons"].to_string()).unwrap_or_default();
        assert!(!beta_view.contains(&format!("\"{person}\"")), "beta's {account} does not hold alpha's {person}");
    }
}
