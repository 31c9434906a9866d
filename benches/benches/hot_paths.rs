//! Criterion benches of the hot paths: decoding a record, one account step, one RocksDB commit.

use caravan_operators::account::{AccountState, Cause, Definitions, Effects, apply_event};
use caravan_operators::journey::compile_journey;
use caravan_schemas::definition::read_document;
use caravan_schemas::input::{DecodeLimits, decode};
use caravan_schemas::state::PersonRecord;
use caravan_state::{Delta, Position, Store, StoreOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const ACTIVITY: &[u8] = br#"{"tenant":"bench","type":"person.activity","event_id":"e123456","ts":"2026-01-12T05:47:35.172Z","person_id":"p000002-0","account_id":"a000002","activity":"web.visited","properties":{"asset_id":"pricing"}}"#;
const UPSERT: &[u8] = br#"{"tenant":"bench","type":"person.upserted","event_id":"e13","ts":"2026-01-02T15:43:26.896Z","person_id":"p000001-0","account_id":"a000001","attributes":{"email":"u0@a000001.example.com","job_title":"vp","score":40}}"#;

fn decode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("caravan_schemas::input::decode");
    g.throughput(Throughput::Elements(1));
    let limits = DecodeLimits::default();
    g.bench_function("person.activity", |b| b.iter(|| decode(black_box(ACTIVITY), &limits)));
    g.bench_function("person.upserted", |b| b.iter(|| decode(black_box(UPSERT), &limits)));
    g.finish();
}

fn reference_defs() -> Definitions {
    let text = include_str!("../b2b-journey-v1/journey.yaml");
    let mut defs = Definitions::default();
    let journey = compile_journey(&read_document(text).expect("parses")).expect("valid");
    defs.publish(journey).expect("publishes");
    defs
}

/// An account with 8 people that has entered the reference journey and listens (ENT path).
fn listening_account(defs: &Definitions) -> AccountState {
    let mut acct = AccountState::new("bench", "a000002");
    let mut out = Effects::default();
    let mut lines = vec![r#"{"tenant":"bench","type":"account.upserted","event_id":"x0","ts":"2026-01-01T00:00:00Z","account_id":"a000002","attributes":{"employees":5000}}"#.to_owned()];
    for i in 0..8 {
        lines.push(format!(r#"{{"tenant":"bench","type":"person.upserted","event_id":"x{}","ts":"2026-01-01T00:00:00Z","person_id":"p000002-{i}","account_id":"a000002","attributes":{{"email":"u{i}@x","job_title":"vp","score":1}}}}"#, i + 1));
    }
    lines.push(r#"{"tenant":"bench","type":"account.audience","event_id":"x9","ts":"2026-01-01T00:00:00Z","account_id":"a000002","audience_id":"target","status":"entered"}"#.to_owned());
    for (seq, l) in lines.iter().enumerate() {
        let e = decode(l.as_bytes(), &DecodeLimits::default()).expect("valid");
        apply_event(defs, &mut acct, &e, None, &Cause::record(seq as u64 + 1, e.ts, &e.event_id), &mut out);
    }
    acct
}

fn step_bench(c: &mut Criterion) {
    let defs = reference_defs();
    let base = listening_account(&defs);
    let activity = decode(ACTIVITY, &DecodeLimits::default()).expect("valid");
    let upsert = decode(
        br#"{"tenant":"bench","type":"person.upserted","event_id":"e13","ts":"2026-01-02T15:43:26.896Z","person_id":"p000002-3","account_id":"a000002","attributes":{"email":"u3@x","job_title":"cto","score":1}}"#,
        &DecodeLimits::default(),
    )
    .expect("valid");
    let mut g = c.benchmark_group("caravan_operators::account::apply_event");
    g.throughput(Throughput::Elements(1));
    for (name, event) in [("activity_while_listening", &activity), ("person_upsert_one_change", &upsert)] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || (base.clone(), Effects::default()),
                |(acct, out)| {
                    apply_event(&defs, acct, event, None, &Cause::record(100, event.ts, &event.event_id), out)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn commit_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("opens");
    let mut g = c.benchmark_group("caravan_state::Store::commit");
    g.throughput(Throughput::Elements(1000));
    let mut epoch = 0u64;
    g.bench_function("1000_persons", |b| {
        b.iter_batched(
            || {
                let mut d = Delta::default();
                for i in 0..1000 {
                    let mut p = PersonRecord {
                        person_id: format!("p{i}").into(),
                        present: true,
                        version: 2,
                        joined: i,
                        ..PersonRecord::default()
                    };
                    p.attributes.insert("email", serde_json::json!(format!("u{i}@example.com")));
                    p.attributes.insert("score", serde_json::json!(i));
                    d.put_person("bench", &format!("a{}", i % 100), &p);
                }
                d
            },
            |d| {
                epoch += 1;
                store.commit(&d, &Position { epoch, ..Position::replay() }).expect("commits")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode_bench, step_bench, commit_bench);
criterion_main!(benches);
