//! The ops kit stays true to the code: the alert rules, their tests, the dashboard, the runbook and the README
//! name only metrics the engine declares; the dashboard shows every one of them; every alert links to a
//! runbook section that exists.

use crate::support::root;
use std::collections::BTreeSet;

/// The metric names `engine/src/telemetry.rs` declares (`pub const X: &str = "caravan_...";`).
fn declared() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("engine/src/telemetry.rs")).expect("telemetry.rs");
    let names: BTreeSet<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \"caravan_"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(names.len() >= 20, "found the declarations: {names:?}");
    names
}

/// Every `caravan_...` metric name a text mentions, with Prometheus' histogram suffixes taken off.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("caravan_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let before = start.checked_sub(1).map(|b| bytes[b]);
        // `caravan_engine` (a crate, in RUST_LOG filters) and patterns such as `caravan_<thing>` are not metrics.
        let name = &text[start..end];
        if !before.is_some_and(|b| b.is_ascii_alphanumeric()) && name != "caravan_engine" && !name.ends_with('_') {
            let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            out.insert(base.to_owned());
        }
        i = end;
    }
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn ops_files_name_only_declared_metrics_and_the_dashboard_shows_them_all() {
    let declared = declared();
    for path in [
        "ops/prometheus/alerts.yml",
        "ops/prometheus/alerts.test.yml",
        "ops/grafana/caravan.json",
        "ops/RUNBOOK.md",
        "README.md",
    ] {
        let unknown: Vec<String> = mentioned(&read(path)).difference(&declared).cloned().collect();
        assert!(unknown.is_empty(), "{path} names metrics the engine does not declare: {unknown:?}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read("ops/grafana/caravan.json")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expression").to_owned())
        .collect();
    let shown = mentioned(&exprs.join("\n"));
    let missing: Vec<&String> = declared.iter().filter(|m| !shown.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard shows no panel for {missing:?}");
}

#[test]
fn every_alert_links_to_a_runbook_section() {
    let rules = read("ops/prometheus/alerts.yml");
    let runbook = read("ops/RUNBOOK.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.trim().to_lowercase().replace(' ', "-").chars().filter(|c| c.is_alphanumeric() || *c == '-').collect()
        })
        .collect();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let anchor = alert.to_lowercase();
        assert!(anchors.contains(&anchor), "alert {alert} has no `### {alert}` section in ops/RUNBOOK.md");
        assert!(rules.contains(&format!("ops/RUNBOOK.md#{anchor}")), "alert {alert} links to its section");
    }
}
