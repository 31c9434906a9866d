//! Replay of the reference workload: counts equal the reference model, outputs are deterministic.

use crate::support::*;
use std::path::{Path, PathBuf};

/// Replays `input` once per set of flags, each run into its own output and state folders under `dir`;
/// returns each run's output bytes and state folder.
fn replay_each<const N: usize>(dir: &Path, input: &Path, flag_sets: &[[&str; N]]) -> Vec<([Vec<u8>; 3], PathBuf)> {
    flag_sets
        .iter()
        .enumerate()
        .map(|(i, flags)| {
            let (out, state) = (dir.join(format!("out{i}")), dir.join(format!("state{i}")));
            replay(&reference_definitions(), input, &out, Some(&state), flags);
            (output_bytes(&out), state)
        })
        .collect()
}

#[test]
fn reference_workload_counts_equal_the_model_for_several_seeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (seed, accounts, events, days) in [(1u32, 200u32, 12_000u32, 30u32), (7, 120, 8_000, 9), (42, 300, 20_000, 20)]
    {
        let input = dir.path().join(format!("w{seed}.ndjson"));
        let expect = generate(&input, accounts, 4, events, days, seed);
        let out = dir.path().join(format!("out{seed}"));
        replay(&reference_definitions(), &input, &out, None, &[]);
        assert_counts_match(&out, &expect);
        assert!(read_ndjson(&out.join("rejected.ndjson")).is_empty());
        assert_outputs_match_schemas(&out);
    }
}

#[test]
fn outputs_do_not_depend_on_the_number_of_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 150, 3, 15_000, 12, 3);
    let flags = ["1", "2", "5"].map(|workers| ["--workers", workers, "--commit-interval", "5ms"]);
    let runs: Vec<_> = replay_each(dir.path(), &input, &flags).into_iter().map(|r| r.0).collect();
    assert!(!runs[0][0].is_empty());
    assert!(runs[0] == runs[1] && runs[1] == runs[2], "outputs differ between worker counts");
}

#[test]
fn a_small_account_cache_gives_the_same_outputs() {
    // With 16 accounts per worker in memory, accounts are evicted and read back from RocksDB all the time,
    // between commits every few milliseconds: what is evicted must be committed, and what is read back must be
    // the latest state, or outputs would differ from a run that keeps every account in memory.
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 150, 3, 15_000, 12, 4);
    let flags = ["400000", "32"].map(|cache| ["--workers", "2", "--commit-interval", "5ms", "--cache-accounts", cache]);
    let runs: Vec<_> = replay_each(dir.path(), &input, &flags).into_iter().map(|r| r.0).collect();
    assert!(!runs[0][0].is_empty() && !runs[0][1].is_empty());
    assert!(runs[0] == runs[1], "outputs differ with a small account cache");
}

#[test]
fn a_state_memory_budget_commits_more_often_with_the_same_outputs() {
    // With 1 MiB of state writes per epoch and no time or record bound that could trigger first, the memory
    // bound alone must cut the run into many epochs; what commits, and when, must not change a byte.
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 2_000, 3, 20_000, 12, 5);
    let budgets = ["1024", "1"];
    let flags =
        budgets.map(|mib| ["--commit-interval", "1h", "--commit-records", "100000000", "--commit-state-mib", mib]);
    let mut runs = Vec::new();
    for (budget, (bytes, state)) in budgets.into_iter().zip(replay_each(dir.path(), &input, &flags)) {
        runs.push(bytes);
        let shown = caravan(&["inspect", "--state", &state.display().to_string()]);
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("inspect prints JSON");
        let epochs = shown["position"]["epoch"].as_u64().expect("an epoch number");
        if budget == "1" {
            assert!(epochs > 2, "{epochs} epochs with a 1 MiB budget");
        } else {
            assert!(epochs <= 2, "{epochs} epochs with no bound reached");
        }
    }
    assert!(!runs[0][1].is_empty());
    assert!(runs[0] == runs[1], "outputs differ with a small state budget");
}

#[test]
fn a_finished_run_resumed_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 50, 3, 3_000, 10, 5);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    replay(&reference_definitions(), &input, &out, Some(&state), &[]);
    let first = output_bytes(&out);
    let again = replay(&reference_definitions(), &input, &out, Some(&state), &[]);
    assert_eq!(output_bytes(&out), first);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("replayed 0 records"), "{text}");
}

#[test]
fn standard_input_works_and_matches_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 40, 2, 2_000, 10, 9);
    let out_file = dir.path().join("a");
    replay(&reference_definitions(), &input, &out_file, None, &[]);
    let out_stdin = dir.path().join("b");
    let status = std::process::Command::new(caravan_bin())
        .args(["replay", "--definitions"])
        .arg(reference_definitions())
        .args(["--input", "-", "--out"])
        .arg(&out_stdin)
        .stdin(std::fs::File::open(&input).expect("input"))
        .status()
        .expect("runs");
    assert!(status.success());
    let (a, b) = (output_bytes(&out_file), output_bytes(&out_stdin));
    assert_eq!(a[0], b[0]);
    assert_eq!(a[1], b[1]);
}

#[test]
fn people_move_between_accounts_and_timers_fire_after_their_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(
        defs.join("j.yaml"),
        "kind: journey\ntenant: t\nid: j\nversion: 1\naudience: target\nstart: w\nnodes:\n  w: {wait: 1h, next: m}\n  m: {action: {send_email: {asset: x}}}\n",
    )
    .expect("write");
    let lines = [
        r#"{"tenant":"t","type":"person.upserted","event_id":"1","ts":"2026-01-01T00:00:00Z","person_id":"p","account_id":"a","attributes":{"k":1}}"#,
        r#"{"tenant":"t","type":"person.upserted","event_id":"2","ts":"2026-01-01T00:00:00Z","person_id":"q","account_id":"b","attributes":{}}"#,
        r#"{"tenant":"t","type":"account.audience","event_id":"3","ts":"2026-01-01T00:00:00Z","account_id":"a","audience_id":"target","status":"entered"}"#,
        r#"{"tenant":"t","type":"account.audience","event_id":"4","ts":"2026-01-01T00:00:00Z","account_id":"b","audience_id":"target","status":"entered"}"#,
        // p moves from a to b while both wait: at the timers it is b's, not a's.
        r#"{"tenant":"t","type":"person.upserted","event_id":"5","ts":"2026-01-01T00:10:00Z","person_id":"p","account_id":"b","attributes":{"k":1}}"#,
        // An activity without account_id is routed through the person index (to b).
        r#"{"tenant":"t","type":"person.activity","event_id":"6","ts":"2026-01-01T00:20:00Z","person_id":"p","activity":"web.visited"}"#,
        r#"{"tenant":"t","type":"person.activity","event_id":"7","ts":"2026-01-01T00:20:00Z","person_id":"ghost","activity":"web.visited"}"#,
        r#"{"tenant":"t","type":"account.upserted","event_id":"8","ts":"2026-01-01T02:00:00Z","account_id":"c","attributes":{}}"#,
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    for workers in ["1", "3"] {
        let out = dir.path().join(format!("out{workers}"));
        replay(&defs, &input, &out, None, &["--workers", workers]);
        let actions = read_ndjson(&out.join("actions.ndjson"));
        let got: Vec<(String, String, String)> = actions
            .iter()
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
                (s("account_id"), s("person_id"), s("cause_event_id"))
            })
            .collect();
        assert_eq!(
            got,
            [("b".into(), "q".into(), "8".into()), ("b".into(), "p".into(), "8".into())],
            "{workers} workers"
        );
        assert_eq!(actions[0]["ts"], "2026-01-01T01:00:00.000Z");
        let changes = read_ndjson(&out.join("changes.ndjson"));
        let moved: Vec<_> = changes.iter().filter(|c| c["entity_id"] == "p").collect();
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[1]["op"], "update");
        assert_eq!(moved[1]["before"], serde_json::json!({"account_id": "a"}));
        assert_eq!(moved[1]["after"], serde_json::json!({"account_id": "b"}));
        assert_eq!(moved[1]["version"], 2);
        let rejected = read_ndjson(&out.join("rejected.ndjson"));
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0]["reason"], "unknown_person_account");
        assert_eq!(rejected[0]["source"]["line"], 7);
        assert_outputs_match_schemas(&out);
    }
}

fn one_journey(dir: &std::path::Path, yaml_nodes: &str) -> std::path::PathBuf {
    let defs = dir.join("defs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    std::fs::write(
        defs.join("j.yaml"),
        format!("kind: journey\ntenant: t\nid: j\nversion: 1\naudience: target\nstart: w\nnodes:\n{yaml_nodes}"),
    )
    .expect("write");
    defs
}

fn account_line(id: &str, ts: &str, account: &str) -> String {
    format!(
        r#"{{"tenant":"t","type":"account.upserted","event_id":"{id}","ts":"{ts}","account_id":"{account}","attributes":{{}}}}"#
    )
}

#[test]
fn a_timer_fires_once_the_watermark_reaches_its_due_time_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = one_journey(dir.path(), "  w: {wait: 1h, next: m}\n  m: {action: {send_alert: {template: x}}}\n");
    let lines = [
        r#"{"tenant":"t","type":"account.audience","event_id":"in","ts":"2026-01-01T00:00:00Z","account_id":"a","audience_id":"target","status":"entered"}"#.to_owned(),
        // Watermark = 01:00:04.999 - 5 s: one millisecond short of the due time.
        account_line("short", "2026-01-01T01:00:04.999Z", "b"),
        // A late record (behind the watermark) is applied but moves nothing.
        account_line("late", "2026-01-01T00:00:01Z", "c"),
        // Watermark = due exactly: the timer fires right after this record.
        account_line("exact", "2026-01-01T01:00:05Z", "d"),
        account_line("after", "2026-01-01T01:00:06Z", "e"),
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.path().join("out");
    let run = replay(&defs, &input, &out, None, &[]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("5 applied, 0 rejected, 0 duplicates, 1 late"));
    let actions = read_ndjson(&out.join("actions.ndjson"));
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["cause_event_id"], "exact");
    assert_eq!(actions[0]["ts"], "2026-01-01T01:00:00.000Z");
    let changes = read_ndjson(&out.join("changes.ndjson"));
    let order: Vec<&str> = changes.iter().map(|c| c["cause_event_id"].as_str().unwrap_or_default()).collect();
    assert_eq!(order, ["short", "late", "exact", "after"], "the late record was applied");
}

#[test]
fn reaching_the_end_of_input_fires_nothing_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = one_journey(dir.path(), "  w: {wait: 1h, next: m}\n  m: {action: {send_alert: {template: x}}}\n");
    let lines = [
        r#"{"tenant":"t","type":"account.audience","event_id":"in","ts":"2026-01-01T00:00:00Z","account_id":"a","audience_id":"target","status":"entered"}"#.to_owned(),
        account_line("x", "2026-01-01T00:59:00Z", "b"),
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    replay(&defs, &input, &out, Some(&state), &[]);
    assert!(read_ndjson(&out.join("actions.ndjson")).is_empty());
    let inspect = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", "t", "--account", "a"]);
    assert!(inspect.status.success());
    let state_json: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect prints JSON");
    assert_eq!(state_json["journeys"][0]["node"], "w");
    assert_eq!(state_json["timers"][0]["due"], "2026-01-01T01:00:00.000Z");
}

#[test]
fn opportunities_are_versioned_moved_and_deleted_through_their_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = one_journey(dir.path(), "  w: {wait: 1h}\n");
    let lines = [
        r#"{"tenant":"t","type":"opportunity.upserted","event_id":"1","ts":"2026-01-01T00:00:00Z","opportunity_id":"x","account_id":"a","attributes":{"stage":"open","amount":100}}"#,
        r#"{"tenant":"t","type":"opportunity.upserted","event_id":"2","ts":"2026-01-01T00:01:00Z","opportunity_id":"x","account_id":"a","attributes":{"amount":100.0}}"#,
        r#"{"tenant":"t","type":"opportunity.upserted","event_id":"3","ts":"2026-01-01T00:02:00Z","opportunity_id":"x","account_id":"b","attributes":{"stage":"won"}}"#,
        r#"{"tenant":"t","type":"opportunity.deleted","event_id":"4","ts":"2026-01-01T00:03:00Z","opportunity_id":"x"}"#,
        r#"{"tenant":"t","type":"opportunity.deleted","event_id":"5","ts":"2026-01-01T00:04:00Z","opportunity_id":"never-seen"}"#,
        r#"{"tenant":"t","type":"opportunity.upserted","event_id":"6","ts":"2026-01-01T00:05:00Z","opportunity_id":"x","account_id":"c","attributes":{}}"#,
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let mut runs = Vec::new();
    for workers in ["1", "3"] {
        let (out, state) = (dir.path().join(format!("out{workers}")), dir.path().join(format!("state{workers}")));
        replay(&defs, &input, &out, Some(&state), &["--workers", workers]);
        let changes = read_ndjson(&out.join("changes.ndjson"));
        let got: Vec<(String, String, i64, String)> = changes
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (s("op"), s("account_id"), c["version"].as_i64().unwrap_or(0), s("cause_event_id"))
            })
            .collect();
        let want = [("create", "a", 1, "1"), ("update", "b", 2, "3"), ("delete", "b", 3, "4"), ("create", "c", 4, "6")];
        let want: Vec<(String, String, i64, String)> =
            want.iter().map(|(o, a, v, e)| ((*o).into(), (*a).into(), *v, (*e).into())).collect();
        assert_eq!(got, want, "{workers} workers");
        assert!(changes.iter().all(|c| c["entity"] == "opportunity"));
        assert_outputs_match_schemas(&out);
        assert_eq!(changes[1]["before"], serde_json::json!({"account_id": "a", "stage": "open"}));
        assert_eq!(changes[1]["after"], serde_json::json!({"account_id": "b", "stage": "won"}));
        let shown = caravan(&["inspect", "--state", &state.display().to_string(), "--tenant", "t", "--account", "c"]);
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("inspect prints JSON");
        assert_eq!(shown["opportunities"][0]["version"], 4);
        runs.push(output_bytes(&out));
    }
    assert!(runs[0] == runs[1]);
}

#[test]
fn random_streams_give_identical_outputs_for_any_worker_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = random_stream_journeys(dir.path());
    for seed in [1u64, 2, 3] {
        let input = dir.path().join(format!("r{seed}.ndjson"));
        std::fs::write(&input, random_stream(seed, 3_000)).expect("write");
        let mut runs = Vec::new();
        for workers in ["1", "2", "4"] {
            let out = dir.path().join(format!("out{seed}-{workers}"));
            replay(&defs, &input, &out, None, &["--workers", workers, "--commit-interval", "1ms"]);
            assert_outputs_match_schemas(&out);
            runs.push(output_bytes(&out));
        }
        assert!(!runs[0][0].is_empty() && !runs[0][1].is_empty(), "seed {seed} produced outputs");
        // Every line is well-formed: the only rejections are activities of people with no account.
        let rejected = read_ndjson(&dir.path().join(format!("out{seed}-1/rejected.ndjson")));
        assert!(rejected.iter().all(|r| r["reason"] == "unknown_person_account"), "{rejected:?}");
        let actions = read_ndjson(&dir.path().join(format!("out{seed}-1/actions.ndjson")));
        for kind in ["send_email", "send_alert", "set_account_attribute", "change_person_score", "add_to_list"] {
            assert!(actions.iter().any(|a| a["type"] == kind), "seed {seed} exercised {kind}");
        }
        assert!(runs[0] == runs[1], "seed {seed}: 1 vs 2 workers differ");
        assert!(runs[0] == runs[2], "seed {seed}: 1 vs 4 workers differ");
        // Change versions have no gaps, entity by entity.
        let mut versions: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for c in read_ndjson(&dir.path().join(format!("out{seed}-1/changes.ndjson"))) {
            let key = (
                c["entity"].as_str().unwrap_or_default().to_owned(),
                c["entity_id"].as_str().unwrap_or_default().to_owned(),
            );
            let v = versions.entry(key.clone()).or_insert(0);
            assert_eq!(c["version"].as_i64(), Some(*v + 1), "{key:?}");
            *v += 1;
        }
    }
}

/// The bundled examples (`ops/examples/`) through the binary: people paths of different lengths, `to`
/// conditions over activity history, an account-event listen and list actions do what the README says.
#[test]
fn the_bundled_examples_replay_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let examples = root().join("ops/examples");
    replay(&examples.join("journeys"), &examples.join("events.ndjson"), &out, None, &["--workers", "2"]);
    assert_outputs_match_schemas(&out);
    let actions = read_ndjson(&out.join("actions.ndjson"));
    let at = |node: &str| -> Vec<(String, String, String)> {
        actions
            .iter()
            .filter(|a| a["node_id"] == node)
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
                (s("account_id"), s("person_id"), s("ts")[..16].to_owned())
            })
            .collect()
    };
    let t = |a: &str, p: &str, ts: &str| (a.to_owned(), p.to_owned(), ts.to_owned());
    // Executives at once, directors a day later, everyone else straight to the merge.
    assert_eq!(
        at("exec_brief"),
        [
            t("northwind", "nw-ana", "2026-03-01T09:00"),
            t("contoso", "ct-sam", "2026-03-01T09:00"),
            t("fabrikam", "fb-eva", "2026-03-01T09:00")
        ]
    );
    assert_eq!(
        at("director_case"),
        [t("northwind", "nw-raj", "2026-03-02T09:00"), t("fabrikam", "fb-tom", "2026-03-02T09:00")]
    );
    // Northwind's click on the welcome email: only the person who clicked is scored.
    assert_eq!(at("score"), [t("northwind", "nw-raj", "2026-03-02T11:16")]);
    // Contoso (small) gets the nurture after the merge, including Ada who joined during the wait.
    assert_eq!(at("nurture").len(), 3);
    // The webinar: only the attendee is thanked and listed; the closed-won deal marks the account.
    assert_eq!(at("thanks"), [t("northwind", "nw-ana", "2026-03-10T17:30")]);
    assert_eq!(at("attendees"), [t("northwind", "nw-ana", "2026-03-10T17:30")]);
    assert_eq!(at("influenced"), [t("northwind", "-", "2026-03-14T15:00")]);
    assert_eq!(at("recording").len(), 3);
    // Northwind's buying group reaches `decision` when its CTO attends the webinar (with the director's
    // earlier opens and clicks): the decision makers are briefed, sales alerted.
    assert_eq!(at("brief"), [t("northwind", "nw-ana", "2026-03-10T17:30")]);
    assert_eq!(at("alert").iter().filter(|(a, _, ts)| a == "northwind" && ts == "2026-03-10T17:30").count(), 1);
    // Change events from actions name their journey and node.
    let changes = read_ndjson(&out.join("changes.ndjson"));
    let scored: Vec<&serde_json::Value> = changes.iter().filter(|c| c["node_id"] == "score").collect();
    assert_eq!(scored.len(), 1);
    assert_eq!(
        (scored[0]["origin"].as_str(), scored[0]["after"]["engagement_score"].as_i64()),
        (Some("action"), Some(10))
    );
}

#[test]
fn de_duplication_by_count_and_age_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    let event = |id: &str, day: u32, name: &str| {
        format!(
            "{{\"tenant\":\"t\",\"type\":\"account.upserted\",\"event_id\":\"{id}\",\"ts\":\"2026-03-{:02}T00:00:00Z\",\
             \"account_id\":\"a\",\"attributes\":{{\"name\":\"{name}\"}}}}\n",
            day + 1
        )
    };
    let input = dir.path().join("in.ndjson");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let flags = ["--dedup-max-age", "2d", "--dedup-window", "3"];
    // First run: e1 on day 0, e2 on day 3 (e1 is then older than two days), e3..e5 on day 3.
    let first: String = [event("e1", 0, "v1"), event("e2", 3, "v2"), event("e3", 3, "v3")].concat();
    std::fs::write(&input, &first).expect("write");
    replay(&defs, &input, &out, Some(&state), &flags);
    // Second run, resumed from the state: the window is the one the first run committed.
    let second: String = [
        event("e2", 4, "dup"),
        event("e1", 4, "again"),
        event("e4", 4, "v4"),
        event("e5", 4, "v5"),
        event("e2", 4, "x"),
    ]
    .concat();
    std::fs::write(&input, first + &second).expect("write");
    let run = replay(&defs, &input, &out, Some(&state), &flags);
    let text = String::from_utf8_lossy(&run.stdout);
    // e2 (day 3, in the window): a duplicate. e1 (day 0, older than two days): applied again. e4, e5 push
    // e2 out of the three-id window by count, so the last e2 is applied.
    assert!(text.contains("events: 7 applied, 0 rejected, 1 duplicates"), "{text}");
    let names: Vec<String> = read_ndjson(&out.join("changes.ndjson"))
        .iter()
        .filter_map(|c| c["after"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["v1", "v2", "v3", "again", "v4", "v5", "x"]);
}
