//! Prometheus metrics served while a replay runs.

use crate::support::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(name) && !l.starts_with('#'))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn metrics_move_while_a_replay_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 2_000, 4, 300_000, 30, 5);
    // A port chosen by the OS, released for the exporter to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut child = Command::new(caravan_bin())
        .args([
            "replay",
            "--no-progress",
            "--commit-interval",
            "10ms",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--definitions")
        .arg(reference_definitions())
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caravan starts");
    let started = Instant::now();
    let mut seen: Vec<f64> = Vec::new();
    while started.elapsed() < Duration::from_secs(30) && child.try_wait().expect("status").is_none() {
        if let Some(v) = scrape(port).and_then(|b| value(&b, "caravan_events_applied_total")) {
            seen.push(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().expect("exits");
    assert!(status.success());
    assert!(!seen.is_empty(), "scraped the exporter while the replay ran");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a counter never goes down: {seen:?}");
    assert!(seen.last().is_some_and(|v| *v > 0.0), "records were counted: {seen:?}");
    assert!(seen.iter().all(|v| *v <= 300_000.0), "never more than the input: {seen:?}");
}
