//! `caravan validate` and the refusal to replay with invalid definitions.

use crate::support::*;

#[test]
fn valid_files_pass() {
    let out = caravan(&["validate", &reference_definitions().join("journey.yaml").display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for entry in std::fs::read_dir(root().join("ops/examples/journeys")).expect("examples exist") {
        let path = entry.expect("entry").path();
        let out = caravan(&["validate", &path.display().to_string()]);
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_problem_is_listed_with_file_node_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: journey\ntenant: t\nid: j\nversion: 1\naudience: x\nstart: a\nnodes:\n  a: {action: {send_email: {asset: w}}, next: b}\n  b: {wait: 2d, next: a}\n  c: {listen: {activity: email.clicked}, timeout: soon}\n",
    )
    .expect("write");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"kind\": ").expect("write");
    let out = caravan(&["validate", &bad.display().to_string(), &broken.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: node `c` at nodes.c.timeout"), "{err}");
    assert!(err.contains("bad.yaml: node `c` at nodes.c: unreachable from `start`"), "{err}");
    assert!(err.contains("cycle: a -> b -> a"), "{err}");
    assert!(err.contains("broken.json:"), "{err}");
    assert!(err.contains("problems found"), "{err}");
}

#[test]
fn replay_refuses_invalid_definitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("j.yaml"),
        "kind: journey\ntenant: t\nid: j\nversion: 1\naudience: x\nstart: nope\nnodes: {}\n",
    )
    .expect("write");
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "").expect("write");
    let out = caravan(&[
        "replay",
        "--definitions",
        &dir.path().display().to_string(),
        "--input",
        &input.display().to_string(),
        "--out",
        &dir.path().join("out").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at start: names no node"));
    assert!(!dir.path().join("out/actions.ndjson").exists(), "nothing runs");
}
