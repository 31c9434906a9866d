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

/// SIGKILLs resumable replays of one state at `kills` random points of their progress: each run dies once the
/// changes file (appended to at every commit) has grown past a random share of an uninterrupted run's, so the
/// kills land while work remains however fast or loaded the machine is. Returns how many landed mid-run.
fn kill_at_random_progress(
    rng: &mut rand::rngs::StdRng,
    kills: usize,
    full: &Path,
    out: &Path,
    spawn: impl Fn() -> Child,
) -> usize {
    let size = |dir: &Path| std::fs::metadata(dir.join("changes.ndjson")).map_or(0, |m| m.len());
    let whole = size(full);
    assert!(whole > 100, "the uninterrupted run has changes to cut into");
    let mut targets: Vec<u64> = (0..kills).map(|_| rng.random_range(1..whole * 9 / 10)).collect();
    targets.sort_unstable();
    let mut landed = 0;
    for target in targets {
        let mut child = spawn();
        let started = Instant::now();
        while child.try_wait().expect("status").is_none()
            && size(out) < target
            && started.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().expect("status").is_none() {
            landed += 1;
        }
        // SIGKILL: no chance to flush or clean up.
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }
    landed
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
    // Small memtables: the state (which logs no commits) flushes often, so a kill goes back to a commit in the
    // middle of the run rather than to its start.
    let extra = ["--workers", "2", "--commit-interval", "5ms", "--commit-records", "2000", "--memtables-mib", "4"];
    let killed_mid_run = kill_at_random_progress(&mut rng, 8, &reference, &out, || {
        spawn_replay(&defs, &input, &out, &state, &extra, false)
    });
    eprintln!("{killed_mid_run} of 8 kills hit a running replay");
    assert!(killed_mid_run >= 6, "kills land while the replay runs ({killed_mid_run} of 8)");
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
    generate(&input, 2_000, 4, 800_000, 30, 21);
    let defs = reference_definitions();
    let reference = dir.path().join("reference");
    replay(&defs, &input, &reference, None, &[]);

    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let child = spawn_replay(&defs, &input, &out, &state, &["--commit-interval", "20ms"], true);
    // The signal comes once the run has committed something: early, however fast the machine (a fixed
    // 300 ms let a fast machine finish 400,000 records first).
    let started = Instant::now();
    while std::fs::metadata(out.join("changes.ndjson")).map_or(0, |m| m.len()) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "nothing committed within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
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
    let extra = ["--workers", "3", "--commit-interval", "2ms", "--commit-records", "500", "--memtables-mib", "4"];
    let killed_mid_run = kill_at_random_progress(&mut rng, 6, &reference, &out, || {
        spawn_replay(&defs, &input, &out, &state, &extra, false)
    });
    assert!(killed_mid_run >= 4, "kills land while the replay runs ({killed_mid_run} of 6)");
    replay(&defs, &input, &out, Some(&state), &["--workers", "3"]);
    assert!(output_bytes(&out) == output_bytes(&reference), "outputs differ after crashes (seed {seed})");
}
