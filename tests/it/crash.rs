//! Crash safety: SIGKILL at random points, rerun the same command, and the outputs end byte-identical to an
//! uninterrupted run.

use crate::support::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a resumable replay in the background, its stdout and stderr piped (to read) or dropped.
fn spawn_replay(defs: &Path, input: &Path, out: &Path, state: &Path, extra: &[&str], piped: bool) -> Child {
    let io = || if piped { Stdio::piped() } else { Stdio::null() };
    Command::new(caravan_bin())
        .args(["replay", "--no-progress"])
        .args(extra)
        .arg("--definitions")
        .arg(defs)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--state")
        .arg(state)
        .stdout(io())
        .stderr(io())
        .spawn()
        .expect("caravan starts")
}

#[test]
fn kill_at_random_points_then_resume_gives_identical_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    let expect = generate(&input, 400, 4, 120_000, 30, 11);
    let defs = reference_definitions();

    let reference = dir.path().join("reference");
    let t = Instant::now();
    replay(&defs, &input, &reference, None, &["--workers", "2"]);
    let full = t.elapsed();
    assert_counts_match(&reference, &expect);

    let seed: u64 = std::env::var("CARAVAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set CARAVAN_CRASH_SEED to replay it); uninterrupted run took {full:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut killed_mid_run = 0;
    for _ in 0..8 {
        let extra = ["--workers", "2", "--commit-interval", "5ms", "--commit-records", "2000"];
        let mut child = spawn_replay(&defs, &input, &out, &state, &extra, false);
        // Each kill lands within the first third of an uninterrupted run's time, so that several land while
        // work remains even when this machine is fast (a wait as long as the run let every kill miss once).
        let wait = rng.random_range(5..(full.as_millis() as u64 / 3).max(10));
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().expect("status").is_none() {
            killed_mid_run += 1;
        }
        // SIGKILL: no chance to flush or clean up.
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }
    eprintln!("{killed_mid_run} of 8 kills hit a running replay");
    assert!(killed_mid_run > 0, "no kill landed while the replay ran");
    replay(&defs, &input, &out, Some(&state), &["--workers", "2"]);
    let (a, b) = (output_bytes(&reference), output_bytes(&out));
    for (i, name) in ["actions", "changes", "rejected"].iter().enumerate() {
        assert!(
            a[i] == b[i],
            "{name}.ndjson differs after crashes (seed {seed}): {} vs {} bytes",
            a[i].len(),
            b[i].len()
        );
    }
}

#[test]
fn sigterm_stops_cleanly_and_a_rerun_finishes_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("w.ndjson");
    generate(&input, 2_000, 4, 400_000, 30, 21);
    let defs = reference_definitions();
    let reference = dir.path().join("reference");
    replay(&defs, &input, &reference, None, &[]);

    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let child = spawn_replay(&defs, &input, &out, &state, &["--commit-interval", "20ms"], true);
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a graceful stop exits 0: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("stopped by a signal after record"), "the run stopped before the end: {stdout}");
    // What was committed is a prefix of the uninterrupted outputs.
    let (partial, full) = (output_bytes(&out), output_bytes(&reference));
    for i in 0..3 {
        assert!(full[i].starts_with(&partial[i]));
    }
    assert!(partial[0].len() < full[0].len() || partial[1].len() < full[1].len());
    replay(&defs, &input, &out, Some(&state), &[]);
    assert!(output_bytes(&out) == full, "the resumed run ends byte-identical to an uninterrupted one");
}

#[test]
fn kills_during_moves_and_deletes_still_give_identical_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = random_stream_journeys(dir.path());
    let input = dir.path().join("r.ndjson");
    std::fs::write(&input, random_stream(7, 60_000)).expect("write");
    let reference = dir.path().join("reference");
    let t = Instant::now();
    replay(&defs, &input, &reference, None, &["--workers", "3"]);
    let full = t.elapsed();

    let seed: u64 = std::env::var("CARAVAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed}; uninterrupted run took {full:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut killed_mid_run = 0;
    for _ in 0..6 {
        let extra = ["--workers", "3", "--commit-interval", "2ms", "--commit-records", "500"];
        let mut child = spawn_replay(&defs, &input, &out, &state, &extra, false);
        std::thread::sleep(Duration::from_millis(rng.random_range(5..(full.as_millis() as u64 / 3).max(10))));
        if child.try_wait().expect("status").is_none() {
            killed_mid_run += 1;
        }
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }
    assert!(killed_mid_run > 0, "no kill landed while the replay ran");
    replay(&defs, &input, &out, Some(&state), &["--workers", "3"]);
    assert!(output_bytes(&out) == output_bytes(&reference), "outputs differ after crashes (seed {seed})");
}
