//! The command line's own contract: help, version and argument errors. (Its presence also makes
//! `cargo test` build the `caravan` binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn caravan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_caravan")).args(args).output().expect("caravan runs")
}

#[test]
fn version_and_help() {
    let v = caravan(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("caravan "));
    let h = caravan(&["--help"]);
    let text = String::from_utf8_lossy(&h.stdout);
    for sub in ["validate", "replay", "inspect"] {
        assert!(text.contains(sub), "help lists `{sub}`: {text}");
    }
}

#[test]
fn usage_errors_exit_non_zero_with_a_message() {
    let out = caravan(&["replay", "--input", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--definitions"));
    let out = caravan(&["validate", "/nonexistent/journey.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/journey.yaml"));
    let out = caravan(&["inspect", "--state", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Caravan state folder"));
}
