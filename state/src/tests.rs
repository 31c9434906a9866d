use super::*;
use crate::delta::{OP_BYTES, Op};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions::default()).expect("store opens")
}

fn person(id: &str, joined: u64) -> PersonRecord {
    let mut attributes = caravan_schemas::attrs::Attrs::default();
    attributes.insert("email", json!(format!("{id}@x")));
    PersonRecord { person_id: id.into(), present: true, attributes, version: 1, joined, ..PersonRecord::default() }
}

/// An ephemeral store serves its own reads, but writes nothing a later open could find: no log records, and
/// no table files flushed when it closes.
#[test]
fn an_ephemeral_store_leaves_nothing_behind_when_it_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store =
            Store::open(dir.path(), &StoreOptions { ephemeral: true, sync_commits: true, ..Default::default() })
                .expect("store opens");
        let mut d = Delta::default();
        d.put_account("t", "a", &AccountRecord { exists: true, version: 1, ..AccountRecord::default() });
        store.commit(&d, &Position { epoch: 1, ..Position::replay() }).expect("commits");
        assert_eq!(store.position().expect("reads").map(|c| c.epoch), Some(1));
        assert!(store.load_account("t", "a").expect("reads").is_some());
    }
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with(".sst")), "nothing was flushed at close: {files:?}");
    let store = open(dir.path());
    assert_eq!(store.position().expect("reads"), None, "nothing was logged");
    assert!(store.load_account("t", "a").expect("reads").is_none());
}

/// Without the log, commits live in the memtables until a flush; closing the store flushes them all.
#[test]
fn a_store_without_the_log_keeps_its_commits_through_a_clean_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store =
            Store::open(dir.path(), &StoreOptions { log_commits: false, ..Default::default() }).expect("store opens");
        let mut d = Delta::default();
        d.put_account("t", "a", &AccountRecord { exists: true, version: 1, ..AccountRecord::default() });
        store.commit(&d, &Position { epoch: 3, ..Position::replay() }).expect("commits");
    }
    let store = open(dir.path());
    assert_eq!(store.position().expect("reads").map(|c| c.epoch), Some(3));
    assert!(store.load_account("t", "a").expect("reads").is_some());
}

#[test]
fn commit_is_durable_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        assert_eq!(store.position().expect("reads"), None);
        let mut d = Delta::default();
        let mut acct = AccountRecord { exists: true, version: 2, ..AccountRecord::default() };
        acct.attributes.insert("employees", json!(1200));
        d.put_account("t", "a", &acct);
        d.put_person("t", "a", &person("p1", 3));
        d.put_person("t", "a", &person("p2", 1));
        let cp = Position {
            epoch: 7,
            input_next: 100,
            input_bytes: 5000,
            seq: 100,
            max_ts: Some(42),
            output_lengths: [1, 2, 3],
            totals: [1, 2, 3, 4, 5, 6],
            ..Position::replay()
        };
        store.commit(&d, &cp).expect("commits");
    }
    let store = open(dir.path());
    let cp = store.position().expect("reads").expect("present");
    assert_eq!(cp.epoch, 7);
    assert_eq!(cp.output_lengths, [1, 2, 3]);
    let stored = store.load_account("t", "a").expect("reads").expect("present");
    assert_eq!(stored.record.attributes.get("employees"), Some(&json!(1200)));
    assert_eq!(stored.persons.len(), 2);
    assert_eq!(store.load_account("t", "zz").expect("reads"), None);
}

#[test]
fn a_delta_counts_the_memory_its_writes_hold() {
    let measured =
        |d: &Delta| d.ops.iter().map(|op| OP_BYTES + op.key.len() + op.value.as_ref().map_or(0, Vec::len)).sum();
    let mut a = Delta::default();
    assert_eq!(a.bytes(), 0);
    a.put_person("t", "a1", &person("p1", 1));
    a.put_person("t", "a1", &person("p1", 2));
    a.delete_person("t", "a1", "p2");
    let mut b = Delta::default();
    b.put_person("t", "a2", &person("p3", 3));
    b.push_changelog_record(&[0, b'k'], Some(b"v")).expect("a changelog record");
    assert_eq!((a.bytes(), b.bytes()), (measured(&a), measured(&b)));
    let before = a.bytes() + b.bytes();
    a.extend(b);
    assert_eq!(a.bytes(), before);
    assert_eq!(a.bytes(), measured(&a));
    // Compacting keeps the last write of p1 only: the count follows.
    a.compact();
    assert_eq!(a.len(), 4);
    assert!(a.bytes() < before);
    assert_eq!(a.bytes(), measured(&a));
}

#[test]
fn prefix_scans_never_leak_across_accounts_or_tenants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    d.put_person("t", "a", &person("p1", 1));
    d.put_person("t", "ab", &person("p2", 1));
    d.put_person("t2", "a", &person("p3", 1));
    d.put_person("t\0", "a", &person("p4", 1));
    store.commit(&d, &Position::replay()).expect("commits");
    let stored = store.load_account("t", "a").expect("reads").expect("present");
    let ids: Vec<&str> = stored.persons.iter().map(|p| p.person_id.as_str()).collect();
    assert_eq!(ids, ["p1"]);
}

#[test]
fn account_timers_and_the_account_scan_stay_within_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    let timer = |due| TimerRecord { due, arm: vec![1] };
    d.put_timer("t", "a", ("j", 1, 0), &timer(1));
    d.put_timer("t", "a", ("k", 2, 1), &timer(2));
    d.put_timer("t", "ab", ("j", 1, 0), &timer(3));
    d.put_timer("t2", "a", ("j", 1, 0), &timer(4));
    for (tenant, account) in [("t", "a"), ("t", "ab"), ("t2", "a")] {
        let rec = AccountRecord { exists: true, version: 1, ..AccountRecord::default() };
        d.put_account(tenant, account, &rec);
    }
    store.commit(&d, &Position::replay()).expect("commits");
    let dues: Vec<i64> = store.timers_of("t", "a").expect("reads").iter().map(|t| t.timer.due).collect();
    assert_eq!(dues, [1, 2]);
    assert!(store.timers_of("t", "").expect("reads").is_empty());
    assert_eq!(store.timers_of("t2", "a").expect("reads").len(), 1);
    let mut seen = Vec::new();
    store.each_account(|t, a, rec| seen.push((t.to_string(), a.to_string(), rec.version))).expect("scans");
    let want = [("t", "a", 1), ("t", "ab", 1), ("t2", "a", 1)].map(|(t, a, v)| (t.to_string(), a.to_string(), v));
    assert_eq!(seen, want);
}

#[test]
fn deletes_and_timers_and_dedup_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    d.put_person("t", "a", &person("p1", 1));
    let timer = TimerRecord { due: -5, arm: vec![1, 0, 0] };
    d.put_timer("t", "a", ("j", 2, 1), &timer);
    d.put_timer("t", "b", ("j", 1, 0), &timer);
    d.put_dedup_epoch(1, &[(1, 10), (u128::MAX, -5)]);
    d.put_dedup_epoch(2, &[(3, i64::MIN)]);
    store.commit(&d, &Position::replay()).expect("commits");
    let mut d = Delta::default();
    d.delete_person("t", "a", "p1");
    d.delete_timer("t", "b", ("j", 1, 0));
    d.delete_dedup_epoch(1);
    store.commit(&d, &Position::replay()).expect("commits");
    assert_eq!(store.load_account("t", "a").expect("reads"), None);
    let timers = store.timers().expect("reads");
    assert_eq!(
        timers,
        vec![StoredTimer {
            tenant: "t".into(),
            account_id: "a".into(),
            journey_id: "j".into(),
            instance: 2,
            slot: 1,
            timer
        }]
    );
    assert_eq!(store.dedup_epochs().expect("reads"), vec![(2, vec![(3, i64::MIN)])]);
}

#[test]
fn a_corrupt_value_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    d.put(PERSON_INDEX, key2("t", "p"), vec![1, 255, 255, 255]);
    d.put(PERSON_INDEX, key2("t", "q"), vec![99, 0]);
    store.commit(&d, &Position::replay()).expect("commits");
    assert!(matches!(store.person_index("t", "p"), Err(StateError::Codec { .. })));
    assert!(matches!(
        store.person_index("t", "q"),
        Err(StateError::Codec { source: CodecError::Version { found: 99 }, .. })
    ));
}

#[derive(Clone, Debug)]
enum ModelOp {
    Put(u8, u8),
    Delete(u8),
    Reopen,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        (0u8..6).prop_map(ModelOp::Delete),
        Just(ModelOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The store behaves like a map, across commits and reopens.
    #[test]
    fn store_matches_a_btreemap_model(batches in proptest::collection::vec(proptest::collection::vec(model_op(), 1..8), 1..6)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        for (epoch, ops) in batches.into_iter().enumerate() {
            let mut d = Delta::default();
            let mut pending = model.clone();
            for op in ops {
                match op {
                    ModelOp::Put(k, v) => {
                        let (k, v) = (format!("p{k}"), format!("a{v}"));
                        d.put_person_index("t", &k, &IndexRecord { account_id: v.as_str().into(), present: true });
                        pending.insert(k, v);
                    }
                    ModelOp::Delete(k) => {
                        let k = format!("p{k}");
                        d.delete(PERSON_INDEX, key2("t", &k));
                        pending.remove(&k);
                    }
                    ModelOp::Reopen => {
                        drop(store);
                        store = open(dir.path());
                    }
                }
            }
            // Every other epoch commits the compacted delta: last write per key, sorted.
            if epoch % 2 == 1 {
                let before = d.len();
                d.compact();
                prop_assert!(d.len() <= before.min(6));
            }
            store.commit(&d, &Position { epoch: epoch as u64, ..Position::replay() }).expect("commits");
            model = pending;
            for k in 0..6 {
                let k = format!("p{k}");
                let got = store.person_index("t", &k).expect("reads").map(|r| r.account_id.to_string());
                prop_assert_eq!(got, model.get(&k).cloned());
            }
        }
    }
}

#[test]
fn definitions_stops_and_account_scans_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    // Version 256 has a zero byte in its big-endian form: the key is still read back.
    d.put_definition("t", "j", 256, r#"{"kind":"journey"}"#);
    d.put_definition("t", "j", 1, "{}");
    d.put_definition("u", "k", 3, "{}");
    d.put_template("t", "j", 2, "{}");
    d.put_stop("t", "j", 256);
    let rec = |aud: &str| AccountRecord { exists: true, audiences: vec![aud.into()], ..AccountRecord::default() };
    d.put_account("t", "a1", &rec("x"));
    d.put_account("t", "a2", &rec("y"));
    d.put_account("tt", "a3", &rec("x"));
    store.commit(&d, &Position::replay()).expect("commits");
    let defs = store.definitions().expect("reads");
    let published: Vec<(&str, &str, u32)> =
        defs.published.iter().map(|p| (p.tenant.as_str(), p.id.as_str(), p.version)).collect();
    assert_eq!(published, [("t", "j", 1), ("t", "j", 256), ("u", "k", 3)]);
    assert_eq!(defs.published[1].document, r#"{"kind":"journey"}"#);
    assert_eq!(defs.stopped, [("t".to_owned(), "j".to_owned(), 256)]);
    assert_eq!(defs.templates.len(), 1, "a template of the same id is kept apart");
    assert_eq!((defs.templates[0].id.as_str(), defs.templates[0].version), ("j", 2));
    let accounts: Vec<String> = store.accounts_of("t").expect("scans").into_iter().map(|(a, _)| a).collect();
    assert_eq!(accounts, ["a1", "a2"], "another tenant's accounts are not in the scan");
}

/// A delta shipped as changelog records and applied to another store leaves it holding exactly what the first
/// store's commit holds; applying the same records again (a restore that starts early) changes nothing.
#[test]
fn changelog_records_rebuild_the_same_state_and_reapply_idempotently() {
    let (a_dir, b_dir) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    let mut first = Delta::default();
    first.put_person("t", "acct", &person("p1", 1));
    first.put_person("t", "acct", &person("p2", 2));
    first.put_person_index("t", "p1", &IndexRecord { account_id: "acct".into(), present: true });
    first.put_timer("t", "acct", ("j", 1, 0), &TimerRecord { due: 5, arm: vec![1] });
    first.put_dedup_epoch(1, &[(7, 1), (8, 2)]);
    first.put_meta("partition", vec![1, 2, 3]);
    let mut second = Delta::default();
    second.delete_person("t", "acct", "p2");
    second.delete_timer("t", "acct", ("j", 1, 0));
    let mut shipped = Vec::new();
    for d in [&first, &second] {
        a.commit(d, &Position::replay()).expect("commit");
        shipped.extend(d.changelog_records().map(|(k, v)| (k, v.map(<[u8]>::to_vec))));
    }
    for round in 0..2 {
        let mut restored = Delta::default();
        for (k, v) in &shipped {
            restored.push_changelog_record(k, v.as_deref()).expect("a changelog record");
        }
        b.apply_changelog(&restored, shipped.len() as u64).expect("apply");
        assert_eq!(b.load_account("t", "acct").expect("load"), a.load_account("t", "acct").expect("load"), "{round}");
        assert_eq!(b.person_index("t", "p1").expect("read"), a.person_index("t", "p1").expect("read"));
        assert!(b.timers().expect("timers").is_empty());
        assert_eq!(b.dedup_epochs().expect("dedup"), a.dedup_epochs().expect("dedup"));
        assert_eq!(b.meta("partition").expect("meta"), Some(vec![1, 2, 3]));
        assert_eq!(b.changelog_next().expect("offset"), shipped.len() as u64);
    }
    assert_eq!(a.changelog_next().expect("offset"), 0, "a store that never applied a changelog");
    let mut bad = Delta::default();
    assert!(bad.push_changelog_record(&[200, 1], None).is_err(), "unknown column family");
    assert!(bad.push_changelog_record(&[], Some(b"x")).is_err(), "empty key");
}

#[test]
fn dedup_epochs_stored_without_times_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut d = Delta::default();
    // The layout of earlier builds: the format byte, then 16-byte hashes.
    let mut old = vec![codec::FORMAT_VERSION];
    old.extend_from_slice(&5u128.to_le_bytes());
    old.extend_from_slice(&6u128.to_le_bytes());
    d.put(DEDUP, 1u64.to_be_bytes().to_vec(), old);
    d.put_dedup_epoch(2, &[(7, 42)]);
    store.commit(&d, &Position::replay()).expect("commits");
    let epochs = store.dedup_epochs().expect("reads");
    assert_eq!(epochs, vec![(1, vec![(5, i64::MAX), (6, i64::MAX)]), (2, vec![(7, 42)])]);
}

/// Two stores: one that applied `d`, one that applied the delta rebuilt from `d`'s changelog records (with their
/// folders, which must outlive them).
fn stores_from_delta_and_its_changelog(d: &Delta) -> Vec<(tempfile::TempDir, Store)> {
    let mut replayed = Delta::default();
    for (k, v) in d.changelog_records() {
        replayed.push_changelog_record(&k, v).expect("a changelog record");
    }
    [d, &replayed]
        .into_iter()
        .map(|delta| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open(dir.path());
            store.apply_changelog(delta, 5).expect("applies");
            (dir, store)
        })
        .collect()
}

#[test]
fn routes_and_parked_records_round_trip_through_the_changelog() {
    let parked = |until: i64, offset: i64| ParkedRecord {
        until,
        raw: format!("{{\"n\":{offset}}}").into_bytes(),
        origin: caravan_schemas::state::KafkaPosition { topic: "in".into(), partition: 2, offset },
        needs_account: offset % 20 == 0,
    };
    let (person, opportunity) = (caravan_schemas::output::Entity::Person, caravan_schemas::output::Entity::Opportunity);
    let mut d = Delta::default();
    d.put_route("t", person, "p", &RouteRecord { account_id: "a".into(), partition: 1, present: true });
    d.put_parked("t", person, "p", 9, &parked(5, 90));
    d.put_parked("t", person, "p", 3, &parked(4, 30));
    d.put_parked("t", person, "q", 1, &parked(6, 10));
    d.put_parked("u", person, "p", 2, &parked(7, 20));
    d.put_parked("t", opportunity, "p", 4, &parked(8, 40));
    d.delete_parked("t", person, "q", 1);
    // A store rebuilt from the changelog records holds the same routes and parked records.
    for (_dir, store) in stores_from_delta_and_its_changelog(&d) {
        let route = store.route("t", person, "p").expect("reads").expect("present");
        assert_eq!((route.account_id.as_str(), route.partition, route.present), ("a", 1, true));
        assert_eq!(store.route("u", person, "p").expect("reads"), None, "routes stay within their tenant");
        assert_eq!(store.route("t", opportunity, "p").expect("reads"), None, "and their entity");
        let got: Vec<_> = store
            .parked()
            .expect("reads")
            .into_iter()
            .map(|s| (s.tenant, s.entity, s.id, s.seq, s.record.origin.offset))
            .collect();
        let want = [
            ("t", opportunity, "p", 4, 40),
            ("t", person, "p", 3, 30),
            ("t", person, "p", 9, 90),
            ("u", person, "p", 2, 20),
        ];
        assert_eq!(got, want.map(|(t, e, p, s, o)| (t.to_owned(), e, p.to_owned(), s, o)), "in key order");
    }
}

#[test]
fn held_records_round_trip_through_the_changelog_in_account_and_sequence_order() {
    use caravan_schemas::state::{CarriedRecord, HeldKind, HeldRecord, KafkaPosition};
    let held = |offset: i64, kind: HeldKind| HeldRecord {
        raw: format!("{{\"n\":{offset}}}").into_bytes(),
        now: offset * 1000,
        about: Some(offset as u128),
        origin: KafkaPosition { topic: "in".into(), partition: 1, offset },
        kind,
    };
    let carried = CarriedRecord::Person(person("p", 3));
    let claim = HeldKind::Claim {
        entity: caravan_schemas::output::Entity::Person,
        id: "p".into(),
        answer: Some(Some((carried, "old".into()))),
    };
    let mut d = Delta::default();
    d.put_held("t", "b", 7, &held(70, HeldKind::Record));
    d.put_held("t", "a", 300, &held(30, HeldKind::Record));
    d.put_held("t", "a", 2, &held(20, claim.clone()));
    d.put_held("u", "a", 1, &held(10, HeldKind::Record));
    d.put_held("t", "b", 8, &held(80, HeldKind::Record));
    d.delete_held("t", "b", 8);
    for (_dir, store) in stores_from_delta_and_its_changelog(&d) {
        let got: Vec<_> = store
            .held()
            .expect("reads")
            .into_iter()
            .map(|s| (s.tenant, s.account, s.seq, s.record.origin.offset))
            .collect();
        let want = [("t", "a", 2, 20), ("t", "a", 300, 30), ("t", "b", 7, 70), ("u", "a", 1, 10)];
        assert_eq!(got, want.map(|(t, a, s, o)| (t.to_owned(), a.to_owned(), s, o)), "in key order");
        let first = store.held().expect("reads").remove(0);
        assert_eq!(first.record.kind, claim, "a claim keeps its answer and the record it carries");
    }
}

proptest! {
    /// Compaction keeps the last write of every key, in column family and key order: the same as a stable
    /// sort of whole keys followed by keeping each key's last write.
    #[test]
    fn compact_keeps_the_last_write_of_each_key_in_key_order(
        ops in proptest::collection::vec((0usize..3, proptest::collection::vec(0u8..4, 0..20), any::<Option<u8>>()), 0..60)
    ) {
        let mut delta = Delta::default();
        for (cf, key, value) in &ops {
            delta.ops.push(Op { cf: *cf, key: key.clone(), value: value.map(|v| vec![v]) });
        }
        let mut want: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut sorted: Vec<&(usize, Vec<u8>, Option<u8>)> = ops.iter().collect();
        sorted.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (cf, key, value) in sorted {
            let value = value.map(|v| vec![v]);
            match want.last_mut() {
                Some(last) if last.0 == *cf && last.1 == *key => last.2 = value,
                _ => want.push((*cf, key.clone(), value)),
            }
        }
        delta.compact();
        let got: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> =
            delta.ops.iter().map(|op| (op.cf, op.key.clone(), op.value.clone())).collect();
        prop_assert_eq!(got, want);
    }
}

/// A store written before the position record: a delta that holds only the old `meta` value (as the old
/// engine wrote it), applied without a position.
fn store_with_legacy(dir: &Path, key: &[u8], value: Vec<u8>) -> Store {
    let store = open(dir);
    let mut d = Delta::default();
    d.put(keys::META, key.to_vec(), value);
    store.apply_changelog(&d, 0).expect("applies");
    store
}

#[test]
fn a_replay_checkpoint_of_an_older_store_reads_as_its_position_and_the_next_commit_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = position::LegacyCheckpoint {
        epoch: 4,
        records: 120,
        input_bytes: 9000,
        max_ts: Some(77),
        output_lengths: [10, 20, 30],
        totals: [1, 2, 3, 4, 5, 6],
    };
    let store = store_with_legacy(dir.path(), b"checkpoint", codec::encode(&old));
    assert!(store.holds_legacy_position().expect("reads"));
    let read = store.position().expect("reads").expect("present");
    let want = Position {
        mode: Mode::Replay,
        epoch: 4,
        input_next: 120,
        input_bytes: 9000,
        seq: 120,
        max_ts: Some(77),
        output_lengths: [10, 20, 30],
        totals: [1, 2, 3, 4, 5, 6],
        ..Position::default()
    };
    assert_eq!(read, want);
    let next = Position { epoch: 5, ..want };
    store.commit(&Delta::default(), &next).expect("commits");
    assert!(!store.holds_legacy_position().expect("reads"), "the old record is gone");
    assert_eq!(store.position().expect("reads"), Some(next));
}

#[test]
fn a_kafka_progress_of_an_older_store_reads_as_its_position_in_both_its_forms() {
    let old = position::LegacyProgress {
        input_next: 50,
        max_ts: Some(9),
        epoch: 3,
        definitions_next: 2,
        persons_next: 7,
        accounts_next: 8,
        seq: 61,
        stage_max_ts: Some(5),
    };
    let v1 = position::LegacyProgressV1 { input_next: 50, max_ts: Some(9), epoch: 3, definitions_next: 2 };
    let base = Position {
        mode: Mode::Kafka,
        epoch: 3,
        input_next: 50,
        max_ts: Some(9),
        definitions_next: 2,
        ..Position::default()
    };
    let stage = StagePosition { persons_next: 7, accounts_next: 8, max_ts: Some(5) };
    let cases = [
        (codec::encode(&old), Position { seq: 61, stage, ..base.clone() }),
        // Before the person stage: the sequence was the input offset.
        (codec::encode(&v1), Position { seq: 50, ..base }),
    ];
    let mut last = None;
    for (bytes, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_legacy(dir.path(), b"partition", bytes);
        assert_eq!(store.position().expect("reads"), Some(want.clone()));
        last = Some((dir, store, want));
    }
    let (_dir, store, read) = last.expect("two cases");
    // Kafka mode writes its position through the changelog: the first delta drops the old record.
    let mut d = Delta::default();
    d.put_position(&Position { epoch: 4, ..read.clone() });
    d.drop_legacy_positions();
    let mut replayed = Delta::default();
    for (k, v) in d.changelog_records() {
        replayed.push_changelog_record(&k, v).expect("a changelog record");
    }
    store.apply_changelog(&replayed, 1).expect("applies");
    assert!(!store.holds_legacy_position().expect("reads"));
    assert_eq!(store.position().expect("reads"), Some(Position { epoch: 4, ..read }));
}

#[test]
fn a_corrupt_position_is_an_error_that_names_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_legacy(dir.path(), b"position", vec![codec::FORMAT_VERSION, 0xff]);
    let e = store.position().expect_err("corrupt").to_string();
    assert!(e.contains("position"), "{e}");
}

#[test]
fn definitions_under_the_single_letter_keys_of_older_stores_still_read_beside_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // As stores written before the descriptive prefixes hold them: `j`/`b`/`s` then the key's parts.
    let legacy = |letter: &str, tenant: &str, id: &str, version: Option<u32>| {
        let mut k = keys::key3(letter, tenant, id);
        if let Some(v) = version {
            k.push(0);
            k.extend_from_slice(&v.to_be_bytes());
        }
        k
    };
    let mut d = Delta::default();
    d.put(keys::DEFINITIONS, legacy("j", "t", "onboard", Some(1)), b"{\"v\":1}".to_vec());
    d.put(keys::DEFINITIONS, legacy("b", "t", "bg", Some(1)), b"{}".to_vec());
    d.put(keys::DEFINITIONS, legacy("s", "t", "onboard", None), 1u32.to_be_bytes().to_vec());
    store.commit(&d, &Position::replay()).expect("commits");
    // Later publications and a later stop, written now.
    let mut d = Delta::default();
    d.put_definition("t", "onboard", 2, "{\"v\":2}");
    d.put_definition("t", "alpha", 1, "{}");
    d.put_template("t", "bg", 2, "{}");
    d.put_stop("t", "onboard", 2);
    store.commit(&d, &Position::replay()).expect("commits");

    let defs = store.definitions().expect("reads");
    let published: Vec<(&str, &str, u32)> =
        defs.published.iter().map(|p| (p.tenant.as_str(), p.id.as_str(), p.version)).collect();
    assert_eq!(published, [("t", "alpha", 1), ("t", "onboard", 1), ("t", "onboard", 2)], "one list, in order");
    assert_eq!(defs.published[1].document, "{\"v\":1}");
    let templates: Vec<u32> = defs.templates.iter().map(|t| t.version).collect();
    assert_eq!(templates, [1, 2]);
    assert_eq!(defs.stopped, [("t".to_owned(), "onboard".to_owned(), 2)], "the newest stop wins");
}
