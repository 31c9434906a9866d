//! The admin endpoints of a running replay (input on a pipe that the test feeds, so the process lives as long
//! as the test needs): `/metrics` follows the events, `/v1` answers queries scoped by tenant and token.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A replay reading standard input, with its admin endpoints on `port`.
struct Streaming {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Streaming {
    fn start(defs: &Path, out: &Path, extra: &[&str]) -> Streaming {
        // A port chosen by the OS, released for the server to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut child = Command::new(caravan_bin())
            .args(["replay", "--no-progress", "--input", "-", "--commit-interval", "20ms"])
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .arg("--definitions")
            .arg(defs)
            .arg("--out")
            .arg(out)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caravan starts");
        let stdin = child.stdin.take();
        let s = Streaming { child, stdin, port };
        s.wait_until("the server answers", |_| true);
        s
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("input still open");
        stdin.write_all(text.as_bytes()).expect("the replay reads its input");
        stdin.flush().expect("flush");
    }

    /// Closes the input and waits for the replay to end.
    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("exits")
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http_get(self.port, path, token)
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics", None);
        assert_eq!(status, 200, "{body}");
        series(&body)
    }

    /// Scrapes until `done` holds (60 s at most); returns the last scrape.
    fn wait_until(&self, what: &str, done: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
        let started = Instant::now();
        loop {
            let (status, body) = http_get(self.port, "/metrics", None);
            let now = series(&body);
            if status == 200 && done(&now) {
                return now;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "waited 60 s for {what}; last scrape:\n{body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Counts output lines by the given fields, as the labels of a metric: `name{l1="v1",l2="v2"}`.
fn count_by(path: &Path, name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let mut c = BTreeMap::new();
    for v in read_ndjson(path) {
        let inner: Vec<String> =
            labels.iter().map(|(label, field)| format!("{label}=\"{}\"", v[*field].as_str().unwrap_or(""))).collect();
        *c.entry(format!("{name}{{{}}}", inner.join(","))).or_default() += 1.0;
    }
    c
}

fn only(m: &BTreeMap<String, f64>, name: &str) -> BTreeMap<String, f64> {
    m.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{"))).map(|(k, v)| (k.clone(), *v)).collect()
}

#[test]
fn metrics_follow_the_events_of_a_streaming_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 120, 3, 6_000, 10, 9);
    let text = std::fs::read_to_string(&input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let out = dir.path().join("out");
    let mut replay = Streaming::start(&reference_definitions(), &out, &[]);

    // Phase 1: half the events, one malformed line and one duplicate.
    let mut phase1 = first.join("\n");
    phase1.push_str("\n{\"tenant\": \"bench\", broken\n");
    phase1.push_str(first[0]);
    phase1.push('\n');
    replay.send(&phase1);
    let m = replay.wait_until("phase 1 committed", |m| {
        total(m, "caravan_events_ingested_total")
            + total(m, "caravan_events_rejected_total")
            + total(m, "caravan_events_duplicate_total")
            >= (first.len() + 2) as f64
    });
    let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
    for l in first {
        let v = json(l);
        let key = format!(
            "caravan_events_ingested_total{{tenant=\"{}\",type=\"{}\"}}",
            v["tenant"].as_str().unwrap_or(""),
            v["type"].as_str().unwrap_or("")
        );
        *by_type.entry(key).or_default() += 1.0;
    }
    assert_eq!(only(&m, "caravan_events_ingested_total"), by_type, "ingested by tenant and type");
    assert_eq!(m.get("caravan_events_rejected_total{reason=\"malformed_json\"}"), Some(&1.0));
    assert_eq!(total(&m, "caravan_events_rejected_total"), 1.0);
    assert_eq!(m.get("caravan_events_duplicate_total{tenant=\"bench\"}"), Some(&1.0));
    let actions_1 = total(&m, "caravan_actions_emitted_total");
    assert!(actions_1 > 0.0, "the first half emits actions");
    assert!(m.get("caravan_commits_total").is_some_and(|n| *n >= 1.0));
    assert!(m.get("caravan_end_to_end_latency_seconds_count").is_some_and(|n| *n >= first.len() as f64));
    assert!(m.contains_key("caravan_watermark_lag_seconds"));

    // Phase 2: the rest. Every counter goes on from where it was.
    replay.send(&(second.join("\n") + "\n"));
    let m = replay.wait_until("phase 2 committed", |m| total(m, "caravan_events_ingested_total") >= lines.len() as f64);
    assert_eq!(total(&m, "caravan_events_ingested_total"), lines.len() as f64);
    // What is committed is on disk: the outputs, counted as the metrics label them.
    let actions = count_by(
        &out.join("actions.ndjson"),
        "caravan_actions_emitted_total",
        &[("tenant", "tenant"), ("journey", "journey_id"), ("type", "type")],
    );
    let changes = count_by(
        &out.join("changes.ndjson"),
        "caravan_changes_emitted_total",
        &[("tenant", "tenant"), ("entity", "entity")],
    );
    assert_eq!(only(&m, "caravan_actions_emitted_total"), actions);
    assert_eq!(only(&m, "caravan_changes_emitted_total"), changes);
    assert!(total(&m, "caravan_actions_emitted_total") > actions_1, "the second half emits more");
    // Accounts at the journey's nodes (counted from committed state): those waiting or listening are counted
    // where they wait, and no more than there are accounts.
    let m = replay.wait_until("accounts counted at nodes", |m| total(m, "caravan_journey_accounts") > 0.0);
    let positions = only(&m, "caravan_journey_accounts");
    assert!(positions.keys().any(|k| k.contains("node=\"smb_wait\"")), "{positions:?}");
    assert!(positions.values().sum::<f64>() <= 120.0, "{positions:?}");
    assert!(replay.finish().success());
}

const TENANTS_CONFIG: &str = r#"
[admin]
token = "operator-secret"

[[tenants]]
id = "alpha"
sandbox = "alpha-prod"
subscription = "sub-alpha"
admin_token = "alpha-secret"

[[tenants]]
id = "beta"
sandbox = "beta-prod"
subscription = "sub-beta"
admin_token = "beta-secret"
"#;

fn journey(tenant: &str) -> String {
    format!(
        "kind: journey\ntenant: {tenant}\nid: welcome\nversion: 1\naudience: buyers\nstart: hello\nnodes:\n  \
         hello:\n    action: {{send_email: {{asset: hello-{tenant}}}}}\n    next: pause\n  \
         pause:\n    wait: 30d\n    next: bye\n  bye:\n    action: {{send_email: {{asset: bye}}}}\n"
    )
}

/// The same account and person ids in both tenants, with different attributes.
fn tenant_events(tenant: &str, n: usize) -> String {
    let mut s = String::new();
    let event = |id: &str, ty: &str, body: &str| {
        format!(
            "{{\"tenant\":\"{tenant}\",\"type\":\"{ty}\",\"event_id\":\"{tenant}-{id}\",\"ts\":\"2026-03-01T08:00:00Z\",{body}}}\n"
        )
    };
    s.push_str(&event(
        "a",
        "account.upserted",
        &format!("\"account_id\":\"acct-1\",\"attributes\":{{\"name\":\"{tenant} corp\"}}"),
    ));
    s.push_str(&event(
        "p",
        "person.upserted",
        &format!(
            "\"account_id\":\"acct-1\",\"person_id\":\"p-1\",\"attributes\":{{\"email\":\"p1@{tenant}.example\"}}"
        ),
    ));
    for i in 0..n {
        s.push_str(&event(
            &format!("aud{i}"),
            "account.audience",
            &format!("\"account_id\":\"acct-{}\",\"audience_id\":\"buyers\",\"status\":\"entered\"", i + 1),
        ));
    }
    s
}

#[test]
fn admin_endpoints_answer_scoped_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    std::fs::write(defs.join("alpha.yaml"), journey("alpha")).expect("write");
    std::fs::write(defs.join("beta.yaml"), journey("beta")).expect("write");
    let config = dir.path().join("caravan.toml");
    std::fs::write(&config, TENANTS_CONFIG).expect("write");
    let out = dir.path().join("out");
    let config_arg = config.display().to_string();
    let mut replay = Streaming::start(&defs, &out, &["--config", &config_arg]);

    // Alpha has two accounts in the journey, beta one; an unregistered tenant's event is rejected.
    let mut events = tenant_events("alpha", 2);
    events.push_str(&tenant_events("beta", 1));
    events.push_str(
        "{\"tenant\":\"gamma\",\"type\":\"account.upserted\",\"event_id\":\"g1\",\"ts\":\"2026-03-01T08:00:00Z\",\
         \"account_id\":\"acct-1\",\"attributes\":{}}\n",
    );
    replay.send(&events);
    replay.wait_until("the events committed and counted at nodes", |m| {
        total(m, "caravan_events_ingested_total") >= 7.0 && total(m, "caravan_journey_accounts") >= 3.0
    });

    // Health and readiness need no token.
    assert_eq!(replay.get("/healthz", None), (200, "ok\n".to_owned()));
    let (status, body) = replay.get("/readyz", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["ready"], true);

    // /v1 needs a token, and a valid one.
    assert_eq!(replay.get("/v1/journeys", None).0, 401);
    assert_eq!(replay.get("/v1/journeys", Some("guess")).0, 401);
    assert_eq!(replay.get("/v1/tenants/alpha/accounts/acct-1", None).0, 401);

    // Journeys: a tenant's token sees its own; the operator's sees both; another tenant's is refused.
    let (status, body) = replay.get("/v1/journeys", Some("alpha-secret"));
    assert_eq!(status, 200, "{body}");
    let list = json(&body)["journeys"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["tenant"], "alpha");
    assert_eq!(list[0]["accounts"], 2);
    assert_eq!(list[0]["nodes"]["pause"], 2, "both accounts wait at `pause`: {body}");
    assert_eq!(list[0]["nodes"]["hello"], 0);
    assert_eq!(replay.get("/v1/journeys?tenant=beta", Some("alpha-secret")).0, 403);
    let (_, body) = replay.get("/v1/journeys", Some("operator-secret"));
    let list = json(&body)["journeys"].as_array().cloned().unwrap_or_default();
    let tenants: Vec<&str> = list.iter().filter_map(|j| j["tenant"].as_str()).collect();
    assert_eq!(tenants, ["alpha", "beta"]);
    assert_eq!(list[1]["nodes"]["pause"], 1);
    let (_, body) = replay.get("/v1/journeys?tenant=beta", Some("operator-secret"));
    assert_eq!(json(&body)["journeys"].as_array().map(Vec::len), Some(1));

    // Accounts: the same id in two tenants is two accounts; each token reaches only its tenant's.
    let (status, body) = replay.get("/v1/tenants/alpha/accounts/acct-1", Some("alpha-secret"));
    assert_eq!(status, 200, "{body}");
    let alpha = json(&body);
    assert_eq!(alpha["tenant"], "alpha");
    assert_eq!(alpha["attributes"]["name"], "alpha corp");
    assert_eq!(alpha["persons"][0]["attributes"]["email"], "p1@alpha.example");
    assert_eq!(alpha["journeys"][0]["node"], "pause");
    assert_eq!(alpha["timers"].as_array().map(Vec::len), Some(1), "the wait's timer: {body}");
    assert!(!body.contains("beta"), "nothing of beta in alpha's account: {body}");
    let (status, body) = replay.get("/v1/tenants/beta/accounts/acct-1", Some("beta-secret"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)["attributes"]["name"], "beta corp");
    assert!(!body.contains("alpha"), "nothing of alpha in beta's account: {body}");
    assert_eq!(replay.get("/v1/tenants/beta/accounts/acct-1", Some("alpha-secret")).0, 403);
    assert_eq!(replay.get("/v1/tenants/alpha/accounts/acct-1", Some("beta-secret")).0, 403);
    // Beta has no acct-2 (alpha has): 404, not alpha's.
    assert_eq!(replay.get("/v1/tenants/alpha/accounts/acct-2", Some("alpha-secret")).0, 200);
    let (status, body) = replay.get("/v1/tenants/beta/accounts/acct-2", Some("beta-secret"));
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].as_str().is_some_and(|e| e.contains("acct-2")), "{body}");
    // An unregistered tenant is unknown, even to operators; its event was rejected, not stored.
    assert_eq!(replay.get("/v1/tenants/gamma/accounts/acct-1", Some("operator-secret")).0, 404);
    assert_eq!(replay.get("/v1/tenants/alpha/accounts/acct-1", Some("operator-secret")).0, 200);
    let m = replay.metrics();
    assert_eq!(m.get("caravan_events_rejected_total{reason=\"unknown_tenant\"}"), Some(&1.0));
    assert!(replay.finish().success());
}
