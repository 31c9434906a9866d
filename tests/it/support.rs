//! Helpers shared by the end-to-end tests: finding the binary, generating workloads, reading outputs.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared folder beside the repository (specs, workload generator).
pub fn shared() -> PathBuf {
    std::env::var_os("CARAVAN_SHARED").map(PathBuf::from).unwrap_or_else(|| root().join("../shared"))
}

/// A test's scratch folder, removed when the test ends unless `CARAVAN_KEEP_TEST_DIRS` is set: then it stays,
/// and its path is printed (with the logs of the instances it ran), to look into a failure after the fact.
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("CARAVAN_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test folder kept: {}", dir.path().display());
    }
    dir
}

/// The `caravan` binary.
pub fn caravan_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARAVAN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = dir.join("caravan");
    assert!(bin.exists(), "{} is missing: build it first (cargo build --release -p caravan-engine)", bin.display());
    bin
}

/// Runs `caravan` with arguments, returning its output.
pub fn caravan(args: &[&str]) -> Output {
    Command::new(caravan_bin()).args(args).env("RUST_LOG", "warn").output().expect("caravan runs")
}

/// Runs a replay and asserts it succeeded.
pub fn replay(defs: &Path, input: &Path, out: &Path, state: Option<&Path>, extra: &[&str]) -> Output {
    let mut args = vec![
        "replay".to_owned(),
        "--definitions".into(),
        defs.display().to_string(),
        "--input".into(),
        input.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--no-progress".into(),
    ];
    if let Some(s) = state {
        args.push("--state".into());
        args.push(s.display().to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = caravan(&refs);
    assert!(
        out.status.success(),
        "replay failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The reference journey's folder.
pub fn reference_definitions() -> PathBuf {
    root().join("benches/b2b-journey-v1")
}

/// Generates the reference workload into `path`; returns the `--expect` counts.
pub fn generate(path: &Path, accounts: u32, persons: u32, events: u32, days: u32, seed: u32) -> BTreeMap<String, u64> {
    let script = shared().join("bench/gen_workload.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--accounts", &accounts.to_string(), "--persons-per-account", &persons.to_string()])
        .args(["--events", &events.to_string(), "--days", &days.to_string(), "--seed", &seed.to_string()])
        .arg("--out")
        .arg(path)
        .arg("--expect")
        .output()
        .expect("python3 runs the generator");
    assert!(out.status.success(), "generator failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let start = text.find('{').expect("expect JSON");
    let end = text.rfind('}').expect("expect JSON");
    serde_json::from_str(&text[start..=end]).expect("expect counts parse")
}

/// Reads an NDJSON file into values.
pub fn read_ndjson(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("every output line is JSON")).collect()
}

/// Counts the outputs of a reference-workload run in the terms of `gen_workload.py --expect`.
pub fn workload_counts(out: &Path) -> BTreeMap<String, u64> {
    let actions = read_ndjson(&out.join("actions.ndjson"));
    let changes = read_ndjson(&out.join("changes.ndjson"));
    let mut c: BTreeMap<String, u64> = BTreeMap::new();
    let mut entered = BTreeSet::new();
    let mut nurtured = BTreeSet::new();
    for a in &actions {
        let kind = a["type"].as_str().expect("type").to_owned();
        match (kind.as_str(), a["node_id"].as_str()) {
            ("send_email", Some("welcome")) => {
                entered.insert(a["account_id"].as_str().unwrap_or_default().to_owned());
            }
            ("send_email", Some("nurture")) => {
                nurtured.insert(a["account_id"].as_str().unwrap_or_default().to_owned());
            }
            ("set_account_attribute", _) => *c.entry("ent_engaged".into()).or_default() += 1,
            _ => {}
        }
        *c.entry(kind).or_default() += 1;
    }
    for ch in &changes {
        let key = format!("{}_changes", ch["entity"].as_str().expect("entity"));
        *c.entry(key).or_default() += 1;
    }
    c.insert("entered".into(), entered.len() as u64);
    c.insert("smb_nurtured".into(), nurtured.len() as u64);
    c
}

/// Asserts that every count the outputs can show equals the reference model's.
pub fn assert_counts_match(out: &Path, expect: &BTreeMap<String, u64>) {
    let got = workload_counts(out);
    for key in
        ["send_email", "send_alert", "account_changes", "person_changes", "entered", "ent_engaged", "smb_nurtured"]
    {
        assert_eq!(got.get(key).copied().unwrap_or(0), expect[key], "count `{key}`: got {got:?}, expected {expect:?}");
    }
}

/// The bytes of the three output files.
pub fn output_bytes(out: &Path) -> [Vec<u8>; 3] {
    ["actions.ndjson", "changes.ndjson", "rejected.ndjson"].map(|f| std::fs::read(out.join(f)).unwrap_or_default())
}

/// Asserts that every record of the three output files validates against its published JSON Schema
/// (`schemas/json/`), with a real validator.
pub fn assert_outputs_match_schemas(out: &Path) {
    for (file, schema) in [("actions.ndjson", "action"), ("changes.ndjson", "change"), ("rejected.ndjson", "rejected")]
    {
        let path = root().join(format!("schemas/json/{schema}.schema.json"));
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("schema JSON");
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        for (i, record) in read_ndjson(&out.join(file)).iter().enumerate() {
            let errors: Vec<String> =
                validator.iter_errors(record).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{file} line {}: {errors:?}\n{record}", i + 1);
        }
    }
}

/// A random stream over few accounts and people: moves, deletes, re-creations, opportunities, audience
/// entries and exits, activities, with time jumps that fire several timers in one pass.
pub fn random_stream(seed: u64, n: usize) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ms: i64 = 1_767_225_600_000; // 2026-01-01
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        ms += match rng.random_range(0..10) {
            0 => rng.random_range(0..3 * 86_400_000), // a jump: many timers due at once
            1..=3 => 0,                               // same instant
            _ => rng.random_range(0..3_600_000),
        };
        // Some records run slightly behind (late ones included).
        let ts_ms = if rng.random_range(0..8) == 0 { ms - rng.random_range(0..20_000) } else { ms };
        let ts = caravan_schemas::time::Timestamp(ts_ms * 1_000_000).to_rfc3339();
        let a = format!("a{}", rng.random_range(0..6));
        let p = format!("p{}", rng.random_range(0..10));
        let o = format!("o{}", rng.random_range(0..4));
        let env = format!(r#""tenant":"t","event_id":"r{i}","ts":"{ts}""#);
        let line = match rng.random_range(0..12) {
            0 => format!(
                r#"{{{env},"type":"account.upserted","account_id":"{a}","attributes":{{"employees":{}}}}}"#,
                rng.random_range(0..3000)
            ),
            1 | 2 => format!(
                r#"{{{env},"type":"person.upserted","person_id":"{p}","account_id":"{a}","attributes":{{"score":{}}}}}"#,
                rng.random_range(0..3)
            ),
            3 => format!(r#"{{{env},"type":"person.deleted","person_id":"{p}"}}"#),
            4 => format!(
                r#"{{{env},"type":"account.audience","account_id":"{a}","audience_id":"target","status":"entered"}}"#
            ),
            5 => format!(
                r#"{{{env},"type":"account.audience","account_id":"{a}","audience_id":"target","status":"exited"}}"#
            ),
            6 => format!(
                r#"{{{env},"type":"opportunity.upserted","opportunity_id":"{o}","account_id":"{a}","attributes":{{"stage":"s{}"}}}}"#,
                rng.random_range(0..3)
            ),
            7 => format!(r#"{{{env},"type":"opportunity.deleted","opportunity_id":"{o}"}}"#),
            8 => format!(r#"{{{env},"type":"account.deleted","account_id":"{a}"}}"#),
            9 => format!(r#"{{{env},"type":"person.activity","person_id":"{p}","activity":"email.clicked"}}"#),
            _ => format!(
                r#"{{{env},"type":"person.activity","person_id":"{p}","account_id":"{a}","activity":"email.clicked"}}"#
            ),
        };
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

/// Three journeys that the random streams exercise: waits, listens (activities and account events), splits
/// over accounts and people (branch timers), person and list actions with `to`, `until`, re-entry and exit on
/// audience exit.
pub fn random_stream_journeys(dir: &Path) -> PathBuf {
    let defs = dir.join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(
        defs.join("a.yaml"),
        "kind: journey\ntenant: t\nid: a\nversion: 1\naudience: target\nreentry: after_exit\nexit_on_audience_exit: true\nstart: hi\nnodes:\n  hi: {action: {send_email: {asset: hi}}, next: w}\n  w: {wait: 1h, next: split}\n  split:\n    split_accounts:\n      - {when: 'account.employees >= 1000 || opportunities.exists(o, o.stage == \"s2\")', next: l}\n    otherwise: w2\n  l: {listen: {activity: email.clicked}, timeout: 2d, next: set, on_timeout: bye}\n  set: {action: {set_account_attribute: {field: hot, value: true}}, next: w2}\n  w2: {wait: 30m, next: bye}\n  bye: {action: {send_email: {asset: bye}}}\n",
    )
    .expect("write");
    std::fs::write(
        defs.join("b.yaml"),
        "kind: journey\ntenant: t\nid: b\nversion: 1\naudience: target\nstart: u\nnodes:\n  u: {wait: {until: '2026-01-02T00:00:00Z'}, next: m}\n  m: {action: {send_alert: {template: x}}, next: n}\n  n: {wait: 6h, next: z}\n  z: {action: {set_account_attribute: {field: late_stage, value: 2}}}\n",
    )
    .expect("write");
    std::fs::write(
        defs.join("c.yaml"),
        r#"kind: journey
tenant: t
id: c
version: 1
audience: target
reentry: after_exit
start: sp
nodes:
  sp:
    split_people:
      - {when: 'person.score >= 1', next: pw}
    otherwise: pm
  pw: {wait: 2h, next: pa}
  pa: {action: {change_person_score: {field: score, by: 1}}, next: m}
  pm: {action: {add_to_list: {list: low}}, next: m}
  m: {merge: {}, next: opp}
  opp: {listen: {account_event: opportunity.changed, where: 'event.after.stage == "s2"'}, timeout: 1d, next: done, on_timeout: done}
  done: {action: {send_email: {asset: done}, to: {where: '"low" in person.lists || activity("email.clicked", "1d") >= 1'}}}
"#,
    )
    .expect("write");
    defs
}

/// GET on the local admin server: status and body (status 0 when nothing answers).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Prometheus text as `name{labels}` -> value.
pub fn series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of a metric.
pub fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter().filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
}
