//! Kafka mode end to end, on a real Kafka-protocol broker: `caravan run` gives the same outputs as a replay,
//! exactly once through crashes, rebalances and lost state folders.

use crate::kafka_support::*;
use crate::support::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Each input partition has its own watermark (SPEC §3.2), so a timer fires after another record than in a
/// replay's single stream: its `cause_event_id` ("the record after which it fired") may differ. Everything
/// else, in each account's order, must be the same.
fn assert_same_as_replay(reference: &Path, got: &Path) {
    let strip = |mut v: Value| {
        v.as_object_mut().map(|o| o.remove("cause_event_id"));
        v
    };
    for file in ["actions.ndjson", "changes.ndjson", "rejected.ndjson"] {
        let read = |dir: &Path| read_ndjson(&dir.join(file)).into_iter().map(strip).collect::<Vec<_>>();
        let (a, b) = (by_account(&read(reference)), by_account(&read(got)));
        assert_eq!(a.len(), b.len(), "{file}: accounts");
        for (account, records) in &a {
            assert_eq!(Some(records), b.get(account), "{file}: account {account}");
        }
    }
}

/// No action or change event twice, and every entity's change versions run 1, 2, 3... with no gap.
/// The cluster's committed outputs, read into `dir/kafka`: the expected counts, the same records as the replay
/// account by account, nothing twice.
fn assert_outputs_right(cluster: &Cluster, dir: &Path, expect: &BTreeMap<String, u64>, reference: &Path) -> PathBuf {
    let got = dir.join("kafka");
    cluster.outputs_to(&got);
    assert_counts_match(&got, expect);
    assert_same_as_replay(reference, &got);
    assert_exactly_once(&got);
    got
}

fn assert_exactly_once(got: &Path) {
    let actions = read_ndjson(&got.join("actions.ndjson"));
    let ids: BTreeSet<&str> = actions.iter().map(|a| a["action_id"].as_str().expect("action_id")).collect();
    assert_eq!(ids.len(), actions.len(), "an action was emitted twice");
    let changes = read_ndjson(&got.join("changes.ndjson"));
    let ids: BTreeSet<&str> = changes.iter().map(|c| c["change_id"].as_str().expect("change_id")).collect();
    assert_eq!(ids.len(), changes.len(), "a change event was emitted twice");
    let mut versions: BTreeMap<(String, String, String), Vec<u64>> = BTreeMap::new();
    for c in &changes {
        let key = (c["tenant"].to_string(), c["entity"].to_string(), c["entity_id"].to_string());
        versions.entry(key).or_default().push(c["version"].as_u64().expect("version"));
    }
    for (entity, v) in versions {
        let expected: Vec<u64> = (1..=v.len() as u64).collect();
        assert_eq!(v, expected, "versions of {entity:?} have a gap or are out of order");
    }
}

const STATIC: &[(&str, &str)] = &[("CARAVAN_KAFKA__STATIC_MEMBERSHIP", "true")];

/// Caches far smaller than the 400 accounts of the test, so that accounts and index entries are dropped and
/// read back from RocksDB all the time.
const SMALL_CACHES: &[(&str, &str)] =
    &[("CARAVAN_STATE__CACHE_ACCOUNTS", "64"), ("CARAVAN_STATE__CACHE_PERSONS", "64")];

fn run_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The reference workload, a replay of it (the outputs to compare with), and a cluster with `partitions` input
/// partitions on which the reference journey is published.
struct Scenario {
    input: std::path::PathBuf,
    expect: BTreeMap<String, u64>,
    reference: std::path::PathBuf,
    cluster: Cluster,
}

fn scenario(dir: &Path, accounts: u32, events: u32, seed: u32, partitions: usize) -> Scenario {
    let input = dir.join("w.ndjson");
    let expect = generate(&input, accounts, 4, events, 20, seed);
    let reference = dir.join("reference");
    replay(&reference_definitions(), &input, &reference, None, &[]);
    let cluster = Cluster::new(dir, partitions);
    let out = cluster.caravan(&["publish", &reference_definitions().join("journey.yaml").display().to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("published journey/"), "{out:?}");
    Scenario { input, expect, reference, cluster }
}

#[test]
fn run_gives_the_expected_counts_and_the_same_records_as_replay_account_by_account() {
    let dir = test_dir();
    let Scenario { input, expect, reference, cluster } = scenario(dir.path(), 300, 30_000, 5, 3);
    let again = cluster.caravan(&["publish", &reference_definitions().join("journey.yaml").display().to_string()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing new"), "publishing twice is a no-op");
    cluster.produce_file(&input);
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run.log"));
    cluster.wait_caught_up(Duration::from_secs(180));
    let admin = admin_port(&dir.path().join("run.log"));
    assert_admin_after_catching_up(admin, &input, &reference);
    let status = terminate(child);
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", run_log(dir.path(), "run.log"));

    let got = assert_outputs_right(&cluster, dir.path(), &expect, &reference);
    assert_outputs_match_schemas(&got);
}

#[test]
fn sigterm_while_input_flows_commits_the_batch_in_flight_and_a_restart_loses_and_doubles_nothing() {
    let dir = test_dir();
    let Scenario { input, expect, reference, cluster } = scenario(dir.path(), 200, 30_000, 17, 2);
    let end = cluster.produce_file(&input) as i64;
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run-a.log"));
    // Stop it part way: once something is committed and before everything is.
    let started = Instant::now();
    loop {
        let done = cluster.committed();
        if done > 0 {
            assert!(done < end, "the instance finished before the signal: make the input larger");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "nothing committed within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = terminate(child);
    assert!(status.success(), "SIGTERM mid-run exits 0: {status:?}\n{}", run_log(dir.path(), "run-a.log"));
    assert!(run_log(dir.path(), "run-a.log").contains("every batch is committed"), "it says it stopped cleanly");
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run-b.log"));
    cluster.wait_caught_up(Duration::from_secs(180));
    assert!(terminate(child).success());
    assert_outputs_right(&cluster, dir.path(), &expect, &reference);
}

/// An instance that owns every partition and has processed the whole input: ready, no lag, every record
/// counted, and its accounts readable through the admin endpoint.
fn assert_admin_after_catching_up(port: u16, input: &Path, reference: &Path) {
    let (status, body) = http_get(port, "/readyz", None);
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["partitions"], serde_json::json!([0, 1, 2]));
    let records = std::fs::read_to_string(input).expect("input").lines().filter(|l| !l.trim().is_empty()).count();
    // The lag comes from the consumer's statistics (every 5 s): wait for one taken after the last commit.
    let started = std::time::Instant::now();
    let m = loop {
        let (_, body) = http_get(port, "/metrics", None);
        let m = series(&body);
        let lags: Vec<(&String, f64)> = m
            .iter()
            .filter(|(k, _)| k.starts_with("caravan_kafka_consumer_lag_records{"))
            .map(|(k, v)| (k, *v))
            .collect();
        // Every partition of the input, and those of the person stage's topics that saw records (written in
        // transactions: the lag steps over their commit markers).
        let input = lags.iter().filter(|(k, _)| k.contains(".input\"")).count();
        if input == 3 && lags.iter().all(|(_, v)| *v == 0.0) {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "consumer lag never reached 0: {lags:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(total(&m, "caravan_events_ingested_total"), records as f64);
    assert_eq!(m.get("caravan_kafka_partitions_owned"), Some(&3.0));
    assert_eq!(m.get("caravan_ready"), Some(&1.0));
    assert!(total(&m, "caravan_kafka_transactions_committed_total") >= 1.0);
    assert!(m.get("caravan_end_to_end_latency_seconds_count").is_some_and(|n| *n >= records as f64));
    // An account from the replay's outputs is found on the partition that holds it.
    let actions = read_ndjson(&reference.join("actions.ndjson"));
    let account = actions[0]["account_id"].as_str().expect("account_id");
    let (status, body) = http_get(port, &format!("/v1/tenants/bench/accounts/{account}"), None);
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(view["account_id"], account);
    assert!(view["partition"].as_i64().is_some_and(|p| (0..3).contains(&p)), "{body}");
    assert_eq!(http_get(port, "/v1/tenants/bench/accounts/no-such-account", None).0, 404);
}

/// The input split in `parts` slices of whole lines.
fn slices(input: &Path, parts: usize) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(input).expect("input");
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    slices_of(&lines, parts)
}

fn slices_of(lines: &[String], parts: usize) -> Vec<Vec<String>> {
    lines.chunks(lines.len().div_ceil(parts)).map(<[String]>::to_vec).collect()
}

/// Runs `parts.len()` instances in turn, each killed by SIGKILL, while input keeps flowing: each round starts an
/// instance, trickles its slice in beside it (20 pieces, 100 ms apart, so that the instance is busy when it
/// dies; seldom inside a transaction, which is a few milliseconds of each commit interval: the held-transaction
/// test below kills there for certain), and kills it. Even rounds kill at a random moment (seeded by
/// `CARAVAN_CRASH_SEED`, else at random, printed), start-up included; odd rounds first wait until the
/// instance has committed some of the input (the group's offsets moved), then kill it a random moment later,
/// so that kills in the middle of the work happen however slow the machine is.
///
/// Every round's instance has the same instance id (with static membership it takes the killed member's place
/// in the group at once: the test broker never expires a dead member) but a transactional id of its own, and
/// the killed one is fenced right after its death, which aborts its open transaction as a restart with the
/// same transactional id would. The test broker (noida-db 0.2.3) needs both: it never times out an abandoned
/// transaction, and once a producer id has an aborted transaction it lists that transaction in every fetch
/// response that starts past its abort marker, so read_committed consumers (librdkafka included) skip every
/// later record of that producer id. A restart with the same transactional id keeps the producer id, and the
/// instance's later records would vanish from its own changelog and person stage (ARCHITECTURE.md, Kafka
/// mode). The instance started after the rounds uses the default transactional id, never used before.
fn kill_repeatedly(cluster: &Cluster, dir: &Path, parts: &[Vec<String>], env: &[(&str, &str)]) {
    let seed: u64 = std::env::var("CARAVAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("kafka crash test seed {seed} (set CARAVAN_CRASH_SEED to replay it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let state = dir.join("state");
    let mut mid_run = 0;
    for (round, part) in parts.iter().enumerate() {
        let before = cluster.committed();
        let log = dir.join(format!("run-{round}.log"));
        let transactional_id = format!("{}-0.round-{round}", cluster.prefix);
        let env: Vec<(&str, &str)> =
            env.iter().copied().chain([("CARAVAN_KAFKA__TRANSACTIONAL_ID", transactional_id.as_str())]).collect();
        let mut child = cluster.start_with(0, &state, &log, &env);
        std::thread::scope(|s| {
            let feeder = s.spawn(|| {
                for piece in part.chunks(part.len().div_ceil(20).max(1)) {
                    produce_slice(cluster, piece);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            if round % 2 == 0 {
                std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
            } else {
                let t = Instant::now();
                while cluster.committed() <= before
                    && child.try_wait().expect("status").is_none()
                    && t.elapsed() < Duration::from_secs(120)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
            }
            let committed = cluster.committed();
            eprintln!("round {round}: committed {before} at the start, {committed} when killed");
            if child.try_wait().expect("status").is_none() && committed > before {
                mid_run += 1;
            }
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            cluster.fence(&transactional_id);
            feeder.join().expect("feeder");
        });
    }
    // Not asserted (a kill may always land between transactions), but worth seeing when a run is looked at.
    eprintln!("changelog records of aborted transactions: {}", cluster.invisible_records("changelog"));
    assert!(mid_run > 0, "no kill landed after the instance had committed something: {}", run_log(dir, "run-1.log"));
}

fn produce_slice(cluster: &Cluster, slice: &[String]) {
    let refs: Vec<&str> = slice.iter().map(String::as_str).collect();
    cluster.produce(&refs);
}

#[test]
fn sigkill_at_random_points_while_input_flows_loses_and_doubles_nothing() {
    let dir = test_dir();
    let Scenario { input, expect, reference, cluster } = scenario(dir.path(), 300, 40_000, 9, 3);

    let state = dir.path().join("state");
    kill_repeatedly(&cluster, dir.path(), &slices(&input, 8), STATIC);
    let child = cluster.start_with(0, &state, &dir.path().join("run-last.log"), STATIC);
    // The kills may have left nothing to do: the instance must at least have started before the SIGTERM.
    admin_port(&dir.path().join("run-last.log"));
    cluster.wait_caught_up(Duration::from_secs(180));
    let status = terminate(child);
    assert!(status.success(), "{status:?}\n{}", run_log(dir.path(), "run-last.log"));

    assert_outputs_right(&cluster, dir.path(), &expect, &reference);
}

#[test]
fn instances_join_and_leave_and_a_lost_state_folder_restores_from_the_changelog() {
    let dir = test_dir();
    let Scenario { input, expect, reference, cluster } = scenario(dir.path(), 400, 40_000, 13, 4);
    let parts = slices(&input, 5);
    let state = |n: usize| dir.path().join(format!("state-{n}"));
    let log = |n: usize, round: &str| dir.path().join(format!("run-{n}-{round}.log"));
    let t = Instant::now();

    // Two instances share the partitions.
    let a = cluster.start_with(0, &state(0), &log(0, "a"), SMALL_CACHES);
    let b = cluster.start_with(1, &state(1), &log(1, "a"), SMALL_CACHES);
    produce_slice(&cluster, &parts[0]);
    cluster.wait_caught_up(Duration::from_secs(120));
    // A third joins.
    let c = cluster.start_with(2, &state(2), &log(2, "a"), SMALL_CACHES);
    produce_slice(&cluster, &parts[1]);
    cluster.wait_caught_up(Duration::from_secs(120));
    // One leaves: its partitions move to the others through the changelog.
    assert!(terminate(b).success(), "{}", run_log(dir.path(), "run-1-a.log"));
    produce_slice(&cluster, &parts[2]);
    cluster.wait_caught_up(Duration::from_secs(120));
    // Everything stops; the first instance's state folder is lost; it comes back alone and restores all four
    // partitions from the changelog (some of them it never held).
    assert!(terminate(a).success());
    assert!(terminate(c).success());
    std::fs::remove_dir_all(state(0)).expect("remove state");
    let a = cluster.start_with(0, &state(0), &log(0, "b"), SMALL_CACHES);
    produce_slice(&cluster, &parts[3]);
    produce_slice(&cluster, &parts[4]);
    cluster.wait_caught_up(Duration::from_secs(180));
    assert!(terminate(a).success(), "{}", run_log(dir.path(), "run-0-b.log"));
    eprintln!("scaling scenario took {:?}", t.elapsed());
    assert!(run_log(dir.path(), "run-0-b.log").contains("Restored a partition"), "the restore is logged");

    assert_outputs_right(&cluster, dir.path(), &expect, &reference);
}

/// The group's offsets moved past what the changelog holds (input skipped on purpose with the offset tools):
/// the instance reads the changelog again for a while, in case its end was not readable yet, then goes on
/// from the offsets with a warning; the skipped records are not processed.
#[test]
fn offsets_moved_past_the_changelog_win_after_a_wait_with_a_warning() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 1);
    let upsert = |n: usize| {
        format!(
            r#"{{"tenant":"t","type":"account.upserted","event_id":"e{n}","ts":"2026-03-01T08:00:0{n}Z","account_id":"a{n}","attributes":{{"n":{n}}}}}"#
        )
    };
    let lines: Vec<String> = (0..10).map(upsert).collect();
    cluster.produce(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    cluster.commit_offset(0, 6);
    let log = dir.path().join("run.log");
    let child = cluster.start(0, &dir.path().join("state"), &log);
    cluster.wait_caught_up(Duration::from_secs(120));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    let changed: Vec<String> = cluster
        .read_committed("changes")
        .iter()
        .map(|c| c["entity_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(changed, ["a6", "a7", "a8", "a9"], "only the records from the committed offset on");
    let text = run_log(dir.path(), "run.log");
    assert!(text.contains("reading the changelog again") && text.contains("going on from the offsets"), "{text}");
}

#[test]
fn a_tenant_registry_rejects_other_tenants_and_bad_records_name_their_kafka_position() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 1);
    let mut config = std::fs::read_to_string(&cluster.config).expect("config");
    config.push_str("\n[[tenants]]\nid = \"bench\"\nsandbox = \"bench-prod\"\nsubscription = \"sub-bench\"\n");
    std::fs::write(&cluster.config, config).expect("config");

    // A definition of an unregistered tenant is refused at publication.
    let journey = std::fs::read_to_string(reference_definitions().join("journey.yaml")).expect("journey");
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, journey.replace("tenant: bench", "tenant: other")).expect("write");
    let refused = std::process::Command::new(caravan_bin())
        .args(["publish", "--config"])
        .arg(&cluster.config)
        .arg(&other)
        .output()
        .expect("caravan runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tenant `other` is not in the tenant registry"));

    let ok = r#"{"tenant":"bench","type":"account.upserted","event_id":"e1","ts":"2026-03-01T08:00:00Z","account_id":"a1","attributes":{"employees":10}}"#;
    let stranger = r#"{"tenant":"other","type":"account.upserted","event_id":"e2","ts":"2026-03-01T08:00:01Z","account_id":"a1","attributes":{"employees":10}}"#;
    cluster.produce(&[ok, stranger, "{not json", ok]);
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run.log"));
    cluster.wait_caught_up(Duration::from_secs(120));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));

    let rejected = cluster.read_committed("rejected");
    let reasons: Vec<&str> = rejected.iter().map(|r| r["reason"].as_str().expect("reason")).collect();
    assert_eq!(reasons, ["unknown_tenant", "malformed_json"]);
    let offsets: Vec<u64> = rejected.iter().map(|r| r["source"]["offset"].as_u64().expect("offset")).collect();
    assert_eq!(offsets, [1, 2], "each rejection names its record's offset");
    assert!(rejected.iter().all(|r| r["source"]["topic"] == cluster.topic("input").as_str()));
    assert_eq!(rejected[0]["raw"], stranger, "the raw record travels with its rejection");
    // The registered tenant's account changed once; the duplicate (same event id) was dropped.
    let changes = cluster.read_committed("changes");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["tenant"], "bench");
}

#[test]
fn processing_time_fires_a_quiet_partitions_timer_by_the_clock_exactly_once() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 2);
    let journey = dir.path().join("pause.yaml");
    std::fs::write(
        &journey,
        "kind: journey\ntenant: t\nid: pause\nversion: 1\naudience: target\nstart: pause\nnodes:\n  \
         pause:\n    wait: 2s\n    next: alert\n  alert:\n    action: {send_alert: {to: sales, template: paused}}\n",
    )
    .expect("journey");
    cluster.caravan(&["publish", &journey.display().to_string()]);
    // Event times far in the past: in processing time only the wall clock matters.
    let upsert = r#"{"tenant":"t","type":"account.upserted","event_id":"e1","ts":"2020-01-01T00:00:00Z","account_id":"a1","attributes":{}}"#;
    let enter = r#"{"tenant":"t","type":"account.audience","event_id":"e2","ts":"2020-01-01T00:00:00Z","account_id":"a1","audience_id":"target","status":"entered"}"#;
    cluster.produce(&[upsert, enter]);
    let env = [("CARAVAN_TIME__MODE", "processing")];
    let child = cluster.start_with(0, &dir.path().join("state"), &dir.path().join("run.log"), &env);
    cluster.wait_caught_up(Duration::from_secs(60));
    // No more input: the partition is quiet, and the 2 s wait must still end.
    let t = Instant::now();
    let actions = loop {
        let a = cluster.read_committed("actions");
        if !a.is_empty() || t.elapsed() > Duration::from_secs(30) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    assert_eq!(actions.len(), 1, "the timer fired once: {actions:?}\n{}", run_log(dir.path(), "run.log"));
    assert_eq!(actions[0]["type"], "send_alert");
    assert_eq!(actions[0]["cause_event_id"], "e2", "named after the last record before it fired");
    assert_eq!(cluster.read_committed("actions").len(), 1, "and never again");
    // A due time by the clock, not by the 2020 event times.
    let ts = actions[0]["ts"].as_str().expect("ts");
    assert!(ts.starts_with("20") && !ts.starts_with("2020"), "{ts}");
}

#[test]
fn a_stop_on_the_definitions_topic_ends_a_running_journey_on_every_partition() {
    let dir = test_dir();
    let input = dir.path().join("w.ndjson");
    generate(&input, 200, 3, 20_000, 20, 17);
    let cluster = Cluster::new(dir.path(), 2);
    cluster.caravan(&["publish", &reference_definitions().join("journey.yaml").display().to_string()]);
    let parts = slices(&input, 2);
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run.log"));
    produce_slice(&cluster, &parts[0]);
    cluster.wait_caught_up(Duration::from_secs(120));
    let before = cluster.read_committed("actions").len();
    assert!(before > 0, "the journey ran");
    let changes_before = cluster.read_committed("changes").len();
    let out = cluster.caravan(&["stop", "--tenant", "bench", "b2b-journey-v1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to version 1"), "{out:?}");
    // The instance applies the stop within its definitions poll (1 s), before the next input arrives here.
    std::thread::sleep(Duration::from_secs(3));
    produce_slice(&cluster, &parts[1]);
    cluster.wait_caught_up(Duration::from_secs(120));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    let after = cluster.read_committed("actions");
    assert_eq!(after.len(), before, "a stopped journey neither runs nor admits anyone: {:?}", &after[before..]);
    // Without the stop, the second half would have caused actions.
    let reference = dir.path().join("reference");
    replay(&reference_definitions(), &input, &reference, None, &[]);
    assert!(read_ndjson(&reference.join("actions.ndjson")).len() > before, "the check above could not fail");
    // Changes keep flowing: the stop ends journeys, not the accounts' life.
    let changes = cluster.read_committed("changes");
    assert!(changes.len() > changes_before, "entity changes continue after the stop");
    // Stopping a journey the topic never published is refused.
    let unknown = std::process::Command::new(caravan_bin())
        .args(["stop", "--tenant", "bench", "nope", "--config"])
        .arg(&cluster.config)
        .output()
        .expect("caravan runs");
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no journey `nope`"));
}

#[test]
fn a_version_published_while_running_enters_the_accounts_already_in_its_audience_once() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 2);
    let state = dir.path().join("state");
    let child = cluster.start(0, &state, &dir.path().join("run.log"));
    let mut lines = Vec::new();
    for a in ["a1", "a2", "a3"] {
        lines.push(format!(
            r#"{{"tenant":"t","type":"account.upserted","event_id":"u-{a}","ts":"2026-01-01T00:00:00Z","account_id":"{a}","attributes":{{}}}}"#
        ));
    }
    for a in ["a1", "a2"] {
        lines.push(format!(
            r#"{{"tenant":"t","type":"account.audience","event_id":"e-{a}","ts":"2026-01-01T00:00:01Z","account_id":"{a}","audience_id":"target","status":"entered"}}"#
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    cluster.produce(&refs);
    cluster.wait_caught_up(Duration::from_secs(120));
    assert!(cluster.read_committed("actions").is_empty(), "no journey yet");

    let journey = dir.path().join("hello.yaml");
    std::fs::write(
        &journey,
        "kind: journey\ntenant: t\nid: hello\nversion: 1\naudience: target\nstart: alert\nnodes:\n  \
         alert:\n    action: {send_alert: {to: sales, template: hello}}\n",
    )
    .expect("journey");
    cluster.caravan(&["publish", &journey.display().to_string()]);
    let t = Instant::now();
    let actions = loop {
        let a = cluster.read_committed("actions");
        if a.len() >= 2 || t.elapsed() > Duration::from_secs(30) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    let mut accounts: Vec<&str> = actions.iter().map(|a| a["account_id"].as_str().expect("account")).collect();
    accounts.sort_unstable();
    assert_eq!(accounts, ["a1", "a2"], "the audience's accounts entered at publication: {actions:?}");
    assert!(actions.iter().all(|a| a["cause_event_id"] == "publish:hello:1"));
    // A restart does not apply the publication again.
    let child = cluster.start(0, &state, &dir.path().join("run-2.log"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run-2.log"));
    assert_eq!(cluster.read_committed("actions").len(), 2, "entered once");
}

#[test]
fn an_xdm_input_topic_is_read_as_its_configured_tenant() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 1);
    let account = r#"{"_id":"x1","accountKey":{"sourceKey":"100@mkto.Marketo"},"accountName":"Northwind","extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:00:00Z"}}"#;
    let person = r#"{"_id":"x2","b2b":{"personKey":{"sourceKey":"42@mkto.Marketo"},"accountKey":{"sourceKey":"100@mkto.Marketo"}},"extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:01:00Z"}}"#;
    let click = r#"{"_id":"x3","timestamp":"2026-03-01T09:00:00Z","eventType":"directMarketing.emailClicked","personKey":{"sourceKey":"42@mkto.Marketo"}}"#;
    let anonymous = r#"{"_id":"x4","timestamp":"2026-03-01T09:01:00Z","eventType":"directMarketing.emailClicked"}"#;
    cluster.produce(&[account, person, click, anonymous]);
    let env = [("CARAVAN_INPUT__FORMAT", "xdm"), ("CARAVAN_INPUT__TENANT", "bench")];
    let child = cluster.start_with(0, &dir.path().join("state"), &dir.path().join("run.log"), &env);
    cluster.wait_caught_up(Duration::from_secs(120));
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    let changes = cluster.read_committed("changes");
    let entities: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["tenant"].as_str().unwrap_or(""),
                c["entity"].as_str().unwrap_or(""),
                c["entity_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(entities, [("bench", "account", "100@mkto.Marketo"), ("bench", "person", "42@mkto.Marketo")]);
    let rejected = cluster.read_committed("rejected");
    assert_eq!(rejected.len(), 1, "the click resolved through its person; only the anonymous one is rejected");
    assert_eq!(rejected[0]["reason"], "missing_field");
    assert_eq!(rejected[0]["source"]["offset"], 3);
}

/// Enterprise accounts entering the reference journey with three persons and an opportunity each (keyed by
/// account); then, naming no account (keyed by person or opportunity, so mostly read by another partition
/// than the account's), `updates` updates of every person, a click by the first person of each account
/// (which the journey listens for: it then sets an attribute and alerts sales), a deletion of every fifth
/// person and of every second opportunity. The reference journey
/// is published; returns both lists and the replay of all of them, in that order.
struct PersonKeyed {
    known: Vec<String>,
    keyed_by_person: Vec<String>,
    reference: PathBuf,
}

fn person_keyed(cluster: &Cluster, dir: &Path, accounts: usize, updates: usize) -> PersonKeyed {
    let out = cluster.caravan(&["publish", &reference_definitions().join("journey.yaml").display().to_string()]);
    assert!(out.status.success());
    let event = |id: String, second: usize, body: String| {
        let (h, m, s) = (8 + second / 3600, second / 60 % 60, second % 60);
        format!(r#"{{"tenant":"bench","event_id":"{id}","ts":"2026-03-01T{h:02}:{m:02}:{s:02}Z",{body}}}"#)
    };
    let persons = accounts * 3;
    let mut known = Vec::new();
    for a in 0..accounts {
        let body = format!(r#""type":"account.upserted","account_id":"a{a}","attributes":{{"employees":5000}}"#);
        known.push(event(format!("a{a}"), a, body));
    }
    for i in 0..persons {
        let body = format!(
            r#""type":"person.upserted","person_id":"q{i}","account_id":"a{}","attributes":{{"n":{i}}}"#,
            i % accounts
        );
        known.push(event(format!("k{i}"), accounts + i, body));
    }
    for a in 0..accounts {
        let body = format!(
            r#""type":"opportunity.upserted","opportunity_id":"o{a}","account_id":"a{a}","attributes":{{"stage":"open"}}"#
        );
        known.push(event(format!("o{a}"), accounts + persons + a, body));
    }
    for a in 0..accounts {
        let body =
            format!(r#""type":"account.audience","account_id":"a{a}","audience_id":"target","status":"entered""#);
        known.push(event(format!("t{a}"), 2 * accounts + persons + a, body));
    }
    let mut at = 3 * accounts + persons;
    let mut keyed_by_person = Vec::new();
    for round in 0..updates {
        for i in 0..persons {
            let body =
                format!(r#""type":"person.upserted","person_id":"q{i}","attributes":{{"score":{}}}"#, i * 7 + round);
            keyed_by_person.push(event(format!("u{i}.{round}"), at + i, body));
        }
        at += persons;
    }
    for a in 0..accounts {
        let body =
            format!(r#""type":"person.activity","person_id":"q{a}","activity":"email.clicked","properties":{{}}"#);
        keyed_by_person.push(event(format!("c{a}"), at + a, body));
    }
    at += accounts;
    for i in (0..persons).step_by(5) {
        let body = format!(r#""type":"person.deleted","person_id":"q{i}""#);
        keyed_by_person.push(event(format!("d{i}"), at + i, body));
    }
    at += persons;
    for a in (0..accounts).step_by(2) {
        let body = format!(r#""type":"opportunity.deleted","opportunity_id":"o{a}""#);
        keyed_by_person.push(event(format!("x{a}"), at + a, body));
    }
    let input = dir.join("input.ndjson");
    std::fs::write(&input, [known.clone(), keyed_by_person.clone()].concat().join("\n") + "\n").expect("input");
    let reference = dir.join("reference");
    replay(&reference_definitions(), &input, &reference, None, &[]);
    let kinds =
        |kind: &str| read_ndjson(&reference.join("actions.ndjson")).iter().filter(|a| a["type"] == kind).count();
    assert_eq!((kinds("send_email"), kinds("send_alert")), (persons, accounts), "every click reaches its account");
    let changes = read_ndjson(&reference.join("changes.ndjson")).len();
    let expected = 3 * accounts + accounts.div_ceil(2) + persons * (updates + 1) + persons.div_ceil(5);
    assert_eq!(changes, expected, "every record applies");
    PersonKeyed { known, keyed_by_person, reference }
}

/// The committed actions and change events, once there are as many as the replay's (or after two minutes).
fn outputs_when_complete(cluster: &Cluster, reference: &Path) -> (Vec<Value>, Vec<Value>) {
    let expected = |file: &str| read_ndjson(&reference.join(file)).len();
    let (actions, changes) = (expected("actions.ndjson"), expected("changes.ndjson"));
    let started = Instant::now();
    loop {
        let got = (cluster.read_committed("actions"), cluster.read_committed("changes"));
        if (got.0.len() >= actions && got.1.len() >= changes) || started.elapsed() > Duration::from_secs(120) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Each account's actions and each entity's change events, in order, are the replay's (the records of
/// persons of one account were read by different partitions, so their changes may interleave differently).
fn assert_same_as_replay_per_entity(actions: &[Value], changes: &[Value], reference: &Path) {
    let by_entity = |records: &[Value]| {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in records {
            m.entry(format!("{}/{}", r["entity"], r["entity_id"])).or_default().push(r.clone());
        }
        m
    };
    let (got, want) = (by_entity(changes), by_entity(&read_ndjson(&reference.join("changes.ndjson"))));
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).map(|(k, v)| (k, v, got.get(k))).collect();
    assert!(
        differ.is_empty() && got.len() == want.len(),
        "{} entities differ, e.g. {:?}",
        differ.len(),
        differ.first()
    );
    let (got, want) = (by_account(actions), by_account(&read_ndjson(&reference.join("actions.ndjson"))));
    assert_eq!(got, want, "actions, account by account");
}

/// Records about persons that name no account, read by partitions that do not hold the person's account,
/// reach it through the person stage: the same change events as a replay of the same input.
#[test]
fn records_without_account_reach_the_persons_account_through_the_person_stage() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 3);
    let PersonKeyed { known, keyed_by_person, reference } = person_keyed(&cluster, dir.path(), 30, 1);
    let log = dir.path().join("run.log");
    let child = cluster.start(0, &dir.path().join("state"), &log);
    produce_slice(&cluster, &known);
    cluster.wait_caught_up(Duration::from_secs(120));
    produce_slice(&cluster, &keyed_by_person);
    let (actions, changes) = outputs_when_complete(&cluster, &reference);
    let metrics = series(&http_get(admin_port(&log), "/metrics", None).1);
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    assert!(cluster.read_committed("rejected").is_empty(), "{}", run_log(dir.path(), "run.log"));
    assert_same_as_replay_per_entity(&actions, &changes, &reference);
    let resolved = metrics.get(r#"caravan_kafka_person_stage_records_total{outcome="resolved"}"#).copied();
    let looked = metrics.get(r#"caravan_kafka_person_stage_records_total{outcome="looked_up"}"#).copied();
    assert!(resolved.unwrap_or(0.0) > 0.0, "records went through the stage: {metrics:?}");
    assert_eq!(looked, resolved, "every record sent to the stage resolved at once (its route was there)");
}

/// The person stage under SIGKILL: its records, routes, parked records and the records it sends on commit
/// with the rest, so nothing is lost or doubled.
#[test]
fn sigkill_while_person_keyed_records_flow_loses_and_doubles_nothing() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 3);
    let PersonKeyed { known, keyed_by_person, reference } = person_keyed(&cluster, dir.path(), 100, 4);
    // Updates may overtake their person's creation (all is produced while instances die): they wait for it.
    let env = [STATIC[0], ("CARAVAN_INPUT__UNKNOWN_PERSON_WAIT", "1d")];
    let input: Vec<String> = [known, keyed_by_person].concat();
    kill_repeatedly(&cluster, dir.path(), &slices_of(&input, 6), &env);
    let child = cluster.start_with(0, &dir.path().join("state"), &dir.path().join("run-last.log"), &env);
    admin_port(&dir.path().join("run-last.log"));
    finish_like_the_replay(&cluster, dir.path(), child, "run-last.log", &reference);
}

/// Waits for as many outputs as the replay's, stops the instance (logging to `log`), and checks them: nothing
/// rejected, nothing twice, and each entity's change events and each account's actions are the replay's.
fn finish_like_the_replay(cluster: &Cluster, dir: &Path, child: Child, log: &str, reference: &Path) {
    let (actions, changes) = outputs_when_complete(cluster, reference);
    assert!(terminate(child).success(), "{}", run_log(dir, log));
    assert!(cluster.read_committed("rejected").is_empty(), "{}", run_log(dir, log));
    let got = dir.join("kafka");
    cluster.outputs_to(&got);
    assert_exactly_once(&got);
    assert_same_as_replay_per_entity(&actions, &changes, reference);
}

/// A kill inside a transaction, for certain: a fail point holds the instance there (its first input batch's
/// outputs and changelog records produced, its offsets not yet added) until it is killed. Nothing of that
/// transaction is ever visible, and the next instance processes the batch again, once, with the person stage.
/// The held instance has a transactional id of its own, fenced after the kill (see [`kill_repeatedly`]).
#[test]
fn a_kill_inside_a_transaction_leaves_nothing_visible_and_the_batch_is_redone_once() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 3);
    let PersonKeyed { known, keyed_by_person, reference } = person_keyed(&cluster, dir.path(), 30, 2);
    produce_slice(&cluster, &[known, keyed_by_person].concat());
    let state = dir.path().join("state");
    let held = format!("{}-0.held", cluster.prefix);
    // Updates may overtake their person's creation (all is read at once by partitions in parallel): they wait.
    let wait = ("CARAVAN_INPUT__UNKNOWN_PERSON_WAIT", "1d");
    let env = [
        STATIC[0],
        wait,
        ("CARAVAN_KAFKA__TRANSACTIONAL_ID", held.as_str()),
        ("CARAVAN_FAILPOINTS", "transaction-before-offsets=sleep(120000)"),
    ];
    let mut child = cluster.start_with(0, &state, &dir.path().join("held.log"), &env);
    let t = Instant::now();
    // Change events are written by input batches only (the publication pass before them enters no account).
    while cluster.invisible_records("changes") == 0 {
        assert!(t.elapsed() < Duration::from_secs(120), "no open transaction: {}", run_log(dir.path(), "held.log"));
        assert!(child.try_wait().expect("status").is_none(), "{}", run_log(dir.path(), "held.log"));
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    cluster.fence(&held);
    assert!(cluster.invisible_records("changelog") > 0, "the transaction's changelog records are aborted, not gone");
    assert!(cluster.read_committed("changes").is_empty(), "no change event of the aborted transaction is visible");
    assert!(cluster.read_committed("actions").is_empty(), "no action of the aborted transaction is visible");
    assert_eq!(cluster.committed(), 0, "its offsets were never committed");

    let child = cluster.start_with(0, &state, &dir.path().join("run.log"), &[STATIC[0], wait]);
    finish_like_the_replay(&cluster, dir.path(), child, "run.log", &reference);
}

/// XDM activities never name their account: on several partitions, keyed by person, they reach the account
/// of their person through the person stage.
#[test]
fn xdm_activities_keyed_by_person_reach_their_account_through_the_person_stage() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 3);
    // A journey that counts clicks, so that the engine keeps each person's click history (the account view
    // shows it); no account enters it (XDM carries no audience).
    let journey = dir.path().join("clicks.yaml");
    std::fs::write(
        &journey,
        r#"{"kind": "journey", "tenant": "bench", "id": "clicks", "version": 1, "audience": "fans", "start": "check",
            "nodes": {"check": {"split_accounts": [{"when": "activity(\"email.clicked\", \"30d\") >= 1", "next": "hot"}],
                                "otherwise": "cold"},
                      "hot": {"action": {"send_alert": {"to": "sales", "template": "hot"}}},
                      "cold": {"exit": {}}}}"#,
    )
    .expect("journey");
    cluster.caravan(&["publish", &journey.display().to_string()]);
    let account = |n: usize| format!("{n}@mkto.Marketo");
    let person = |n: usize| format!("{}@mkto.Marketo", 1000 + n);
    let mut keyed: Vec<(String, String)> = Vec::new();
    for n in 0..6 {
        keyed.push((account(n), format!(
            r#"{{"_id":"a{n}","accountKey":{{"sourceKey":"{}"}},"accountName":"Account {n}","extSourceSystemAudit":{{"lastUpdatedDate":"2026-03-01T08:00:0{n}Z"}}}}"#,
            account(n)
        )));
        keyed.push((account(n), format!(
            r#"{{"_id":"p{n}","b2b":{{"personKey":{{"sourceKey":"{}"}},"accountKey":{{"sourceKey":"{}"}}}},"extSourceSystemAudit":{{"lastUpdatedDate":"2026-03-01T08:01:0{n}Z"}}}}"#,
            person(n),
            account(n)
        )));
    }
    for n in 0..6 {
        keyed.push((person(n), format!(
            r#"{{"_id":"c{n}","timestamp":"2026-03-01T09:00:0{n}Z","eventType":"directMarketing.emailClicked","personKey":{{"sourceKey":"{}"}}}}"#,
            person(n)
        )));
    }
    let records: Vec<(String, &str)> = keyed.iter().map(|(k, v)| (k.clone(), v.as_str())).collect();
    cluster.produce_keyed(&records);
    let env = [("CARAVAN_INPUT__FORMAT", "xdm"), ("CARAVAN_INPUT__TENANT", "bench")];
    let log = dir.path().join("run.log");
    let child = cluster.start_with(0, &dir.path().join("state"), &log, &env);
    cluster.wait_caught_up(Duration::from_secs(120));
    let port = admin_port(&log);
    let clicks = |n: usize| {
        let (_, body) = http_get(port, &format!("/v1/tenants/bench/accounts/{}", account(n)), None);
        let view: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        view["persons"][0]["activity"]["email.clicked"].as_u64().unwrap_or(0)
    };
    let started = Instant::now();
    while (0..6).any(|n| clicks(n) == 0) && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let counted: Vec<u64> = (0..6).map(clicks).collect();
    let metrics = series(&http_get(port, "/metrics", None).1);
    assert!(terminate(child).success(), "{}", run_log(dir.path(), "run.log"));
    assert_eq!(counted, [1; 6], "each click counted once, on its person's account");
    assert!(cluster.read_committed("rejected").is_empty());
    let staged = total(&metrics, "caravan_kafka_person_stage_records_total");
    assert!(staged > 0.0, "clicks read by another partition than their account's took the stage: {metrics:?}");
}

/// SIGTERM soon after a start that follows a SIGKILL (same static member id, the group's join in flight):
/// the instance leaves cleanly. Closing a consumer whose assignment had not been served yet used to wait
/// forever inside rust-rdkafka; this hit the person-stage crash test with seed 5024383716799934665 (its
/// last run got SIGTERM during its start). The moments tried here do not always land in that window.
#[test]
fn sigterm_during_the_join_after_a_kill_exits_cleanly() {
    let dir = test_dir();
    let cluster = Cluster::new(dir.path(), 3);
    let state = dir.path().join("state");
    for (n, ms) in [100u64, 300, 600, 1000].into_iter().enumerate() {
        let mut first = cluster.start_with(0, &state, &dir.path().join(format!("first-{n}.log")), STATIC);
        admin_port(&dir.path().join(format!("first-{n}.log")));
        std::thread::sleep(Duration::from_secs(2));
        first.kill().expect("SIGKILL");
        first.wait().expect("reaped");
        let log = format!("run-{n}.log");
        let child = cluster.start_with(0, &state, &dir.path().join(&log), STATIC);
        std::thread::sleep(Duration::from_millis(ms));
        let status = terminate(child);
        assert!(status.success(), "SIGTERM {ms} ms after start: {status:?}\n{}", run_log(dir.path(), &log));
    }
}

#[test]
fn a_partitions_state_folder_shows_its_position_in_inspect_and_a_replay_refuses_it() {
    let dir = test_dir();
    let Scenario { input, reference, cluster, .. } = scenario(dir.path(), 40, 1_500, 11, 1);
    cluster.produce_file(&input);
    let state = dir.path().join("state");
    let child = cluster.start(0, &state, &dir.path().join("run.log"));
    cluster.wait_caught_up(Duration::from_secs(120));
    let status = terminate(child);
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", run_log(dir.path(), "run.log"));

    let partition = state.join(format!("{}-0", cluster.topic("input")));
    let shown = caravan(&["inspect", "--state", &partition.display().to_string()]);
    assert!(shown.status.success(), "{shown:?}");
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("inspect prints JSON");
    let position = &shown["position"];
    assert_eq!(position["mode"], "kafka", "{shown}");
    assert_eq!(position["input_next"].as_i64(), Some(cluster.input_end()), "the whole input is committed: {shown}");
    assert_eq!(position["definitions_next"].as_i64(), Some(1), "the one publication is applied: {shown}");
    let reference_actions = std::fs::read_to_string(reference.join("actions.ndjson")).expect("reference actions");
    assert_eq!(position["actions"].as_u64(), Some(reference_actions.lines().count() as u64), "{shown}");
    assert!(position.get("output_lengths").is_none(), "a Kafka partition has no output files: {shown}");

    let out = dir.path().join("out");
    let refused = caravan(&[
        "replay",
        "--definitions",
        &reference_definitions().display().to_string(),
        "--input",
        &input.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--state",
        &partition.display().to_string(),
    ]);
    assert!(!refused.status.success(), "a replay on a Kafka partition's state must fail");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("holds a Kafka partition's state") && err.contains("caravan run"), "{err}");
}

#[test]
fn input_compressed_with_gzip_zstd_and_lz4_gives_the_replays_outputs() {
    let dir = test_dir();
    let Scenario { input, expect, reference, cluster } = scenario(dir.path(), 120, 6_000, 13, 1);
    let text = std::fs::read_to_string(&input).expect("input");
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    // One partition: the three producers' records are read in the file's order, as the replay read them.
    for (codec, part) in ["gzip", "zstd", "lz4"].into_iter().zip(slices_of(&lines, 3)) {
        let part: Vec<&str> = part.iter().map(String::as_str).collect();
        cluster.produce_compressed(&part, codec);
    }
    let child = cluster.start(0, &dir.path().join("state"), &dir.path().join("run.log"));
    cluster.wait_caught_up(Duration::from_secs(120));
    let status = terminate(child);
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", run_log(dir.path(), "run.log"));
    assert_outputs_right(&cluster, dir.path(), &expect, &reference);
    let log = run_log(dir.path(), "run.log");
    assert!(!log.contains("Kafka client error"), "no record failed to decompress:\n{log}");
}
