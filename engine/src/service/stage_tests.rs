//! The person stage across two partition tasks, without a broker: the tests carry each batch's records for
//! the internal topics to the task of their partition, as the topics would, and commit every batch to the
//! task's store as the service does after a transaction.

use super::repartition::{Forward, Stage, StageMessage, stage_partition};
use super::task::{InRecord, PartitionTask, Processed, Source};
use crate::config::Config;
use crate::core::outputs::OutKind;
use caravan_operators::account::Definitions;
use caravan_schemas::output::Entity;
use caravan_state::Store;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Two partitions with their stores, and the records in flight on the internal topics.
struct Pair {
    _dirs: Vec<tempfile::TempDir>,
    tasks: Vec<PartitionTask>,
    /// Next offset of each (topic, partition): input, persons, accounts.
    offsets: [[i64; 2]; 3],
    in_flight: VecDeque<Forward>,
    defs: Definitions,
    /// Outputs committed so far, as JSON, with their kind.
    outputs: Vec<(OutKind, Value)>,
    changelog_next: u64,
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.input.unknown_person_wait = std::time::Duration::from_secs(60);
    cfg
}

impl Pair {
    fn new() -> Pair {
        let cfg = super::task_config(&config(), 2).expect("task config");
        let mut dirs = Vec::new();
        let mut tasks = Vec::new();
        for p in 0..2 {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(Store::open(dir.path(), &cfg.store).expect("store"));
            tasks.push(PartitionTask::open(store, p, cfg.clone()).expect("task"));
            dirs.push(dir);
        }
        Pair {
            _dirs: dirs,
            tasks,
            offsets: [[0; 2]; 3],
            in_flight: VecDeque::new(),
            defs: Definitions::default(),
            outputs: Vec::new(),
            changelog_next: 0,
        }
    }

    /// Processes records of one partition and commits the batch.
    fn run(&mut self, partition: usize, records: Vec<(Source, Vec<u8>)>) {
        let records: Vec<InRecord> = records
            .into_iter()
            .map(|(source, payload)| {
                let topic = source as usize;
                let offset = self.offsets[topic][partition];
                self.offsets[topic][partition] += 1;
                InRecord { source, offset, payload: Some(payload), read_at: Instant::now() }
            })
            .collect();
        let done: Processed = self.tasks[partition].process(&self.defs, &records).expect("processes");
        self.changelog_next += 1;
        self.tasks[partition].apply(&done.epoch.delta, self.changelog_next).expect("applies");
        for o in done.epoch.outputs {
            self.outputs.push((o.kind, serde_json::from_slice(&o.json).expect("JSON output")));
        }
        self.in_flight.extend(done.forwards);
    }

    /// An input record read by partition `partition`.
    fn input(&mut self, partition: usize, line: &str) {
        self.run(partition, vec![(Source::Input, line.as_bytes().to_vec())]);
    }

    fn send(&mut self, partition: usize, id: &str, ts: &str, body: &str) {
        self.input(partition, &event(id, ts, body));
    }

    /// A `person.upserted` read by `partition`, naming `account` if any.
    fn upsert(&mut self, partition: usize, id: &str, ts: &str, person: &str, account: Option<&str>, attributes: &str) {
        let account = account.map(|a| format!(r#""account_id":"{a}","#)).unwrap_or_default();
        let body = format!(r#""type":"person.upserted","person_id":"{person}",{account}"attributes":{attributes}"#);
        self.send(partition, id, ts, &body);
    }

    /// A `person.activity` without account read by `partition`.
    fn visit(&mut self, partition: usize, id: &str, ts: &str, person: &str) {
        let body =
            format!(r#""type":"person.activity","person_id":"{person}","activity":"web.visited","properties":{{}}"#);
        self.send(partition, id, ts, &body);
    }

    /// A `person.deleted` read by `partition`.
    fn delete(&mut self, partition: usize, id: &str, ts: &str, person: &str) {
        self.send(partition, id, ts, &format!(r#""type":"person.deleted","person_id":"{person}""#));
    }

    /// Delivers the internal records in flight, in order, until none is left; `hold` keeps back the
    /// messages it matches for the end (a slower partition's messages arriving late).
    fn deliver(&mut self, hold: impl Fn(&Forward) -> bool) {
        let mut held = Vec::new();
        while let Some(f) = self.in_flight.pop_front() {
            if hold(&f) {
                held.push(f);
                continue;
            }
            self.deliver_one(f);
        }
        for f in held {
            self.deliver_one(f);
        }
        while let Some(f) = self.in_flight.pop_front() {
            self.deliver_one(f);
        }
    }

    fn deliver_one(&mut self, f: Forward) {
        let source = if f.stage == Stage::Persons { Source::Persons } else { Source::Accounts };
        self.run(f.partition as usize, vec![(source, f.value)]);
    }

    fn of_kind(&self, kind: OutKind) -> Vec<&Value> {
        self.outputs.iter().filter(|(k, _)| *k == kind).map(|(_, v)| v).collect()
    }

    /// The persons and the opportunities an account holds in a partition's store.
    fn held(&self, partition: usize, account: &str) -> (usize, usize) {
        let stored = self.tasks[partition].store().load_account("t", account).expect("reads").unwrap_or_default();
        (stored.persons.iter().filter(|p| p.present).count(), stored.opportunities.iter().filter(|o| o.present).count())
    }

    /// Reopens a partition's task from its store (a restart).
    fn restart(&mut self, partition: usize) {
        let cfg = super::task_config(&config(), 2).expect("task config");
        let store = Arc::clone(self.tasks[partition].store());
        self.tasks[partition] = PartitionTask::open(store, partition as i32, cfg).expect("reopens");
    }
}

fn event(id: &str, ts: &str, body: &str) -> String {
    format!(r#"{{"tenant":"t","event_id":"{id}","ts":"2026-03-01T{ts}Z",{body}}}"#)
}

/// A person whose stage partition is `stage`.
fn person_at(stage: i32, n: usize) -> String {
    (0..)
        .map(|i| format!("p{i}"))
        .filter(|p| stage_partition("t", Entity::Person, p, 2) == stage)
        .nth(n)
        .expect("a person")
}

#[test]
fn a_record_without_account_reaches_its_persons_account_in_another_partition_even_before_the_route() {
    let mut pair = Pair::new();
    // The person's stage partition is 1; the account lives in partition 0; the record arrives at 1.
    let p = person_at(1, 0);
    pair.upsert(0, "e1", "08:00:00", &p, Some("a"), r#"{"title":"VP"}"#);
    pair.upsert(1, "e2", "08:01:00", &p, None, r#"{"title":"CTO"}"#);
    assert!(pair.of_kind(OutKind::Rejected).is_empty(), "partition 1 does not know the person: it asks the stage");
    // The lookup reaches the stage before the route (partition 0 is slower): it waits, then goes on.
    pair.deliver(|f| f.stage == Stage::Persons && f.partition == 1 && pair_is_route(f));
    let changes = pair.of_kind(OutKind::Change);
    let versions: Vec<(String, u64, Value)> = changes
        .iter()
        .filter(|c| c["entity"] == "person")
        .map(|c| {
            (
                c["account_id"].as_str().unwrap_or("").to_owned(),
                c["version"].as_u64().unwrap_or(0),
                c["after"]["title"].clone(),
            )
        })
        .collect();
    assert_eq!(versions, [("a".into(), 1, "VP".into()), ("a".into(), 2, "CTO".into())], "{changes:?}");
    assert!(pair.of_kind(OutKind::Rejected).is_empty());
    assert_eq!(pair.tasks.iter().map(PartitionTask::parked).sum::<usize>(), 0);
}

/// Whether an internal record is a person route (not a lookup).
fn pair_is_route(f: &Forward) -> bool {
    matches!(caravan_schemas::state::decode::<StageMessage>(&f.value), Ok(StageMessage::Route { .. }))
}

#[test]
fn a_waiting_record_survives_a_restart_and_is_rejected_once_its_wait_is_over() {
    let mut pair = Pair::new();
    let unknown = person_at(0, 0);
    let other = person_at(0, 1);
    pair.visit(1, "e1", "08:00:00", &unknown);
    // Deleting a person never known waits too, but ends as the no-op a replay makes, not a rejection.
    let never = person_at(0, 3);
    pair.delete(1, "e0", "08:00:00", &never);
    pair.deliver(|_| false);
    assert_eq!(pair.tasks[0].parked(), 2, "parked at the persons' stage partition");
    pair.restart(0);
    assert_eq!(pair.tasks[0].parked(), 2, "parked records are state");
    // 30 s later (event time) it still waits; a route 2 min later ends its 1 min wait (an update that
    // changes no route does not reach the stage).
    pair.upsert(1, "e2", "08:00:30", &other, Some("b"), r#"{}"#);
    pair.deliver(|_| false);
    assert!(pair.of_kind(OutKind::Rejected).is_empty());
    pair.upsert(1, "e3", "08:02:00", &other, Some("b"), r#"{"x":1}"#);
    pair.deliver(|_| false);
    assert!(pair.of_kind(OutKind::Rejected).is_empty(), "the stage's time moves only with what reaches it");
    let third = person_at(0, 2);
    pair.upsert(1, "e4", "08:02:00", &third, Some("b"), r#"{}"#);
    pair.deliver(|_| false);
    let rejected = pair.of_kind(OutKind::Rejected);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["reason"], "unknown_person_account");
    assert_eq!(rejected[0]["source"]["partition"], 1, "named by where it was read");
    assert_eq!(rejected[0]["source"]["offset"], 0);
    assert_eq!(pair.tasks[0].parked(), 0);
    pair.restart(0);
    assert_eq!(pair.tasks[0].parked(), 0, "the rejection removed it from state");
}

#[test]
fn a_person_moving_to_an_account_of_another_partition_leaves_the_old_one() {
    let mut pair = Pair::new();
    let p = person_at(1, 0);
    pair.upsert(0, "e1", "08:00:00", &p, Some("a"), r#"{}"#);
    pair.deliver(|_| false);
    pair.upsert(1, "e2", "08:01:00", &p, Some("b"), r#"{}"#);
    pair.deliver(|_| false);
    let people_of = |pair: &Pair, part: usize, account: &str| pair.held(part, account).0;
    assert_eq!(people_of(&pair, 0, "a"), 0, "the old account let go of the person");
    assert_eq!(people_of(&pair, 1, "b"), 1);
    // A record about the person read by the old account's partition now reaches the new account.
    pair.upsert(0, "e3", "08:02:00", &p, None, r#"{"title":"CFO"}"#);
    pair.deliver(|_| false);
    let last = pair.of_kind(OutKind::Change).into_iter().rfind(|c| c["entity"] == "person").cloned();
    let last = last.expect("a person change");
    assert_eq!((last["account_id"].as_str(), last["after"]["title"].as_str()), (Some("b"), Some("CFO")));
    assert!(pair.of_kind(OutKind::Rejected).is_empty());
}

#[test]
fn a_deleted_person_has_no_route_and_a_single_partition_rejects_at_once() {
    let mut pair = Pair::new();
    let p = person_at(0, 2);
    pair.upsert(1, "e1", "08:00:00", &p, Some("a"), r#"{}"#);
    pair.delete(1, "e2", "08:00:01", &p);
    pair.deliver(|_| false);
    pair.visit(0, "e3", "08:00:02", &p);
    pair.deliver(|_| false);
    assert_eq!(pair.tasks[0].parked(), 1, "a deleted person's records wait like an unknown one's");

    // One partition: no stage, the record is rejected at once (as a replay does).
    let cfg = super::task_config(&config(), 1).expect("task config");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), &cfg.store).expect("store"));
    let mut task = PartitionTask::open(store, 0, cfg).expect("task");
    let line =
        event("e1", "08:00:00", r#""type":"person.activity","person_id":"x","activity":"web.visited","properties":{}"#);
    let rec = InRecord { source: Source::Input, offset: 0, payload: Some(line.into_bytes()), read_at: Instant::now() };
    let done = task.process(&Definitions::default(), &[rec]).expect("processes");
    assert!(done.forwards.is_empty());
    assert_eq!(done.epoch.outputs.len(), 1);
    assert_eq!(done.epoch.outputs[0].kind, OutKind::Rejected);
}

#[test]
fn an_opportunity_deletion_read_by_another_partition_reaches_its_account_and_moves_leave_the_old_one() {
    let mut pair = Pair::new();
    let opportunity = |pair: &mut Pair, part: usize, id: &str, ts: &str, account: &str| {
        let body = format!(
            r#""type":"opportunity.upserted","opportunity_id":"o1","account_id":"{account}","attributes":{{"stage":"open"}}"#
        );
        pair.send(part, id, ts, &body);
    };
    let changes_of_o1 = |pair: &Pair| -> Vec<(String, String, u64)> {
        pair.of_kind(OutKind::Change)
            .into_iter()
            .filter(|c| c["entity"] == "opportunity")
            .map(|c| {
                let field = |f: &str| c[f].as_str().unwrap_or("").to_owned();
                (field("account_id"), field("op"), c["version"].as_u64().unwrap_or(0))
            })
            .collect()
    };
    opportunity(&mut pair, 0, "e1", "08:00:00", "a");
    pair.deliver(|_| false);
    // Read by partition 1, which does not hold it: without the stage this would be a silent no-op.
    pair.send(1, "e2", "08:01:00", r#""type":"opportunity.deleted","opportunity_id":"o1""#);
    pair.deliver(|_| false);
    assert_eq!(changes_of_o1(&pair), [("a".into(), "create".into(), 1), ("a".into(), "delete".into(), 2)]);
    // Created again on an account of partition 1, then moved to one of partition 0: partition 1 lets go.
    opportunity(&mut pair, 1, "e3", "08:02:00", "b");
    pair.deliver(|_| false);
    opportunity(&mut pair, 0, "e4", "08:03:00", "c");
    pair.deliver(|_| false);
    let held = |pair: &Pair, part: usize, account: &str| pair.held(part, account).1;
    assert_eq!((held(&pair, 1, "b"), held(&pair, 0, "c")), (0, 1), "the old account let go of it");
    assert!(pair.of_kind(OutKind::Rejected).is_empty());
}

#[test]
fn an_unreadable_stage_record_stops_the_task_instead_of_being_dropped() {
    let mut pair = Pair::new();
    for source in [Source::Persons, Source::Accounts] {
        let rec = InRecord { source, offset: 7, payload: Some(vec![99, 1, 2]), read_at: Instant::now() };
        let err = pair.tasks[0].process(&pair.defs, &[rec]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("offset 7") && err.contains("another version"), "{err}");
    }
}

/// A record below a task's position (the consumer started from offsets older than the restored state) was
/// applied already: it is skipped, also where de-duplication would not catch it.
#[test]
fn a_task_skips_records_below_its_position() {
    let mut cfg = config();
    cfg.input.dedup_window = 0;
    let task_cfg = super::task_config(&cfg, 1).expect("task config");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), &task_cfg.store).expect("store"));
    let mut task = PartitionTask::open(Arc::clone(&store), 0, task_cfg.clone()).expect("task");
    let upsert = |n: u32| {
        format!(
            r#"{{"tenant":"t","type":"account.upserted","event_id":"e{n}","ts":"2026-03-01T08:00:0{n}Z","account_id":"a1","attributes":{{"n":{n}}}}}"#
        )
    };
    let rec = |offset: i64, line: String| InRecord {
        source: Source::Input,
        offset,
        payload: Some(line.into_bytes()),
        read_at: Instant::now(),
    };
    let defs = Definitions::default();
    let first = task.process(&defs, &[rec(0, upsert(1)), rec(1, upsert(2))]).expect("processes");
    assert_eq!(first.epoch.outputs.len(), 2, "two changes");
    task.apply(&first.epoch.delta, 1).expect("applies");
    // Opened again from its store, as after a restore, and given offset 1 again (with other content, so that
    // applying it would show), then offset 2.
    drop(task);
    let mut task = PartitionTask::open(store, 0, task_cfg).expect("task");
    let again = task.process(&defs, &[rec(1, upsert(5)), rec(2, upsert(3))]).expect("processes");
    let versions: Vec<u64> = again
        .epoch
        .outputs
        .iter()
        .map(|o| serde_json::from_slice::<Value>(&o.json).expect("JSON")["version"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(versions, [3], "only offset 2 is applied");
    assert_eq!(again.next().input, 3);
}
