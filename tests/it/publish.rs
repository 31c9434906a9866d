//! Publication and stop across replays of one state folder (SPEC §3.2): a new version enters the accounts
//! already in its audience, once; a version the state published cannot change; `caravan stop` ends every
//! instance silently and keeps the journey closed until a higher version is published.

use crate::support::*;
use std::path::Path;

fn journey(dir: &Path, file: &str, id: &str, version: u32, audience: &str, nodes: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join(file),
        format!(
            "kind: journey\ntenant: t\nid: {id}\nversion: {version}\naudience: {audience}\nreentry: after_exit\nstart: a\nnodes:\n{nodes}"
        ),
    )
    .expect("write");
}

fn audience(id: &str, ts: &str, account: &str, audience: &str, status: &str) -> String {
    format!(
        r#"{{"tenant":"t","type":"account.audience","event_id":"{id}","ts":"{ts}","account_id":"{account}","audience_id":"{audience}","status":"{status}"}}"#
    )
}

fn upsert(id: &str, ts: &str, account: &str) -> String {
    format!(
        r#"{{"tenant":"t","type":"account.upserted","event_id":"{id}","ts":"{ts}","account_id":"{account}","attributes":{{}}}}"#
    )
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

fn nodes_of(out: &Path) -> Vec<(String, String, String)> {
    read_ndjson(&out.join("actions.ndjson"))
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("journey_id"), s("account_id"), s("cause_event_id"))
        })
        .collect()
}

#[test]
fn a_new_version_enters_the_accounts_already_in_its_audience_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (defs, out, state, input) =
        (dir.path().join("defs"), dir.path().join("out"), dir.path().join("state"), dir.path().join("in.ndjson"));
    journey(&defs, "a.yaml", "welcome", 1, "target", "  a: {action: {send_alert: {template: hi}}}\n");
    write_lines(
        &input,
        &[
            upsert("u1", "2026-01-01T00:00:00Z", "x"),
            audience("f1", "2026-01-01T01:00:00Z", "x", "fans", "entered"),
            audience("f2", "2026-01-01T02:00:00Z", "y", "fans", "entered"),
            audience("f3", "2026-01-01T03:00:00Z", "z", "fans", "entered"),
            audience("g3", "2026-01-01T04:00:00Z", "z", "fans", "exited"),
        ],
    );
    replay(&defs, &input, &out, Some(&state), &[]);
    assert!(nodes_of(&out).is_empty(), "no journey listens to `fans` yet");
    // A journey for `fans` appears: x and y (still members) enter at once, at the input's event time.
    journey(
        &defs,
        "b.yaml",
        "fan-club",
        1,
        "fans",
        "  a: {action: {send_alert: {template: welcome-fan}}, next: w}\n  w: {wait: 1h, next: b}\n  b: {action: {send_alert: {template: later}}}\n",
    );
    replay(&defs, &input, &out, Some(&state), &[]);
    let published = [
        ("fan-club".to_owned(), "x".to_owned(), "publish:fan-club:1".to_owned()),
        ("fan-club".to_owned(), "y".to_owned(), "publish:fan-club:1".to_owned()),
    ];
    assert_eq!(nodes_of(&out), published);
    let actions = read_ndjson(&out.join("actions.ndjson"));
    assert_eq!(actions[0]["ts"], "2026-01-01T04:00:00.000Z");
    // Running again publishes nothing more; later input fires the wait and enters new members normally.
    replay(&defs, &input, &out, Some(&state), &[]);
    assert_eq!(nodes_of(&out), published);
    let mut more = std::fs::read_to_string(&input).expect("reads");
    more.push_str(&audience("f4", "2026-01-01T06:00:00Z", "w", "fans", "entered"));
    more.push('\n');
    std::fs::write(&input, more).expect("write");
    replay(&defs, &input, &out, Some(&state), &[]);
    let n = nodes_of(&out);
    assert_eq!(n.len(), 5, "{n:?}");
    assert_eq!(
        &n[2..],
        [
            ("fan-club".to_owned(), "w".to_owned(), "f4".to_owned()),
            ("fan-club".to_owned(), "x".to_owned(), "f4".to_owned()),
            ("fan-club".to_owned(), "y".to_owned(), "f4".to_owned()),
        ]
    );
    assert_outputs_match_schemas(&out);
    // The same version with another document is refused, with the journey named; nothing changes.
    journey(&defs, "b.yaml", "fan-club", 1, "fans", "  a: {action: {send_alert: {template: other}}}\n");
    let run = caravan(&[
        "replay",
        "--no-progress",
        "--definitions",
        &defs.display().to_string(),
        "--input",
        &input.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--state",
        &state.display().to_string(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("fan-club") && err.contains("higher version"), "{err}");
    assert_eq!(nodes_of(&out).len(), 5);
}

#[test]
fn stop_ends_instances_silently_until_a_higher_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (defs, out, state, input) =
        (dir.path().join("defs"), dir.path().join("out"), dir.path().join("state"), dir.path().join("in.ndjson"));
    let nodes = "  a: {action: {send_alert: {template: hi}}, next: w}\n  w: {wait: 2d, next: b}\n  b: {action: {send_alert: {template: bye}}}\n";
    journey(&defs, "j.yaml", "j", 1, "target", nodes);
    let mut lines = vec![
        audience("i1", "2026-01-01T00:00:00Z", "x", "target", "entered"),
        audience("i2", "2026-01-01T00:00:00Z", "y", "target", "entered"),
    ];
    write_lines(&input, &lines);
    replay(&defs, &input, &out, Some(&state), &[]);
    assert_eq!(nodes_of(&out).len(), 2);
    let stop = caravan(&["stop", "--state", &state.display().to_string(), "--tenant", "t", "j"]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(String::from_utf8_lossy(&stop.stdout).contains("2 instances ended"));
    let inspect = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", "t", "--account", "x"]);
    let shown: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    assert_eq!(shown["journeys"], serde_json::json!([]));
    assert_eq!(shown["timers"], serde_json::json!([]));
    // Time passes beyond the wait, and a new account enters: nothing, the journey is stopped.
    lines.push(audience("i3", "2026-01-05T00:00:00Z", "z", "target", "entered"));
    write_lines(&input, &lines);
    replay(&defs, &input, &out, Some(&state), &[]);
    assert_eq!(nodes_of(&out).len(), 2);
    // Unknown journey or tenant: a clear error.
    let bad = caravan(&["stop", "--state", &state.display().to_string(), "--tenant", "other", "j"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no journey `j`"));
    // Version 2: the accounts in the audience enter again (a stop counts as an exit for `after_exit`).
    journey(&defs, "j.yaml", "j", 2, "target", nodes);
    replay(&defs, &input, &out, Some(&state), &[]);
    let n = nodes_of(&out);
    assert_eq!(n.len(), 5, "{n:?}");
    assert!(n[2..].iter().all(|(j, _, cause)| j == "j" && cause == "publish:j:2"), "{n:?}");
    let versions: Vec<i64> = read_ndjson(&out.join("actions.ndjson"))
        .iter()
        .map(|a| a["journey_version"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(versions, [1, 1, 2, 2, 2]);
}

#[test]
fn a_new_template_gives_existing_accounts_their_groups_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (defs, out, state, input) =
        (dir.path().join("defs"), dir.path().join("out"), dir.path().join("state"), dir.path().join("in.ndjson"));
    journey(&defs, "a.yaml", "welcome", 1, "target", "  a: {action: {send_alert: {template: hi}}}\n");
    let person = |id: &str, title: &str| {
        format!(
            r#"{{"tenant":"t","type":"person.upserted","event_id":"{id}","ts":"2026-01-01T00:00:00Z","person_id":"{id}","account_id":"x","attributes":{{"job_title":"{title}"}}}}"#
        )
    };
    write_lines(&input, &[person("boss", "CTO"), person("dev", "Engineer")]);
    replay(&defs, &input, &out, Some(&state), &[]);
    let inspect = || {
        let shown = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", "t", "--account", "x"]);
        serde_json::from_slice::<serde_json::Value>(&shown.stdout).expect("json")
    };
    assert_eq!(inspect()["buying_groups"], serde_json::json!({}));
    std::fs::write(
        defs.join("bg.yaml"),
        "kind: buying_group_template\ntenant: t\nid: bg\nsolution_interest: data\nroles:\n  - {role: boss, when: 'person.job_title == \"CTO\"', required: true}\nengagement: {window: 7d, weights: {email.opened: 1}}\nstages:\n  - {stage: new}\n  - {stage: staffed, when: buying_group.completeness >= 1.0}\n",
    )
    .expect("write");
    replay(&defs, &input, &out, Some(&state), &[]);
    let group = &inspect()["buying_groups"]["data"];
    assert_eq!(group["stage"], "staffed", "created at publication and advanced at once");
    assert_eq!(group["members"], serde_json::json!([{"id": "boss", "role": "boss"}]));
    assert!(read_ndjson(&out.join("changes.ndjson")).iter().all(|c| c["entity"] == "person"));
}
