//! A fuzz harness over both input decoders (native events and XDM records), run by `cargo test` for a bounded
//! number of cases: `CARAVAN_FUZZ_CASES` per decoder (default 50,000), so CI runs it on every change.
//!
//! Inputs start from valid records of every type and class and are mutated the ways hostile producers do:
//! bytes flipped, inserted or cut, keys duplicated, values swapped for huge numbers, control characters,
//! deep nesting, invalid UTF-8. The properties: no input panics a decoder, every rejection carries a reason
//! and a detail, and an accepted event has a non-empty tenant, id and type-consistent body.

use caravan_schemas::input::{DecodeLimits, InputEvent, Rejection, decode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};

fn cases() -> u32 {
    std::env::var("CARAVAN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000)
}

const NATIVE: &[&str] = &[
    r#"{"tenant":"acme","type":"account.upserted","event_id":"e1","ts":"2026-03-01T08:00:00Z","account_id":"a1","attributes":{"name":"N","employees":4200,"tags":["x"],"nested":{"k":null}}}"#,
    r#"{"tenant":"acme","type":"person.upserted","event_id":"e2","ts":"2026-03-01T08:00:00.123+02:00","person_id":"p1","account_id":"a1","attributes":{"email":"p@x"}}"#,
    r#"{"tenant":"acme","type":"person.activity","event_id":"e3","ts":"2026-03-01T08:00:00Z","person_id":"p1","activity":"email.clicked","properties":{"asset_id":"welcome"}}"#,
    r#"{"tenant":"acme","type":"opportunity.upserted","event_id":"e4","ts":"2026-03-01T08:00:00Z","opportunity_id":"o1","account_id":"a1","attributes":{"amount":1.5e3}}"#,
    r#"{"tenant":"acme","type":"account.audience","event_id":"e5","ts":"2026-03-01T08:00:00Z","account_id":"a1","audience_id":"t","status":"entered"}"#,
    r#"{"tenant":"acme","type":"person.deleted","event_id":"e6","ts":"2026-03-01T08:00:00Z","person_id":"p1"}"#,
];

const XDM: &[&str] = &[
    r#"{"_id":"r1","accountKey":{"sourceKey":"100@x.Marketo"},"accountName":"N","accountOrganization":{"numberOfEmployees":4200},"extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:00:00Z"}}"#,
    r#"{"_id":"r2","b2b":{"personKey":{"sourceKey":"42@x.Marketo"},"accountKey":{"sourceKey":"100@x.Marketo"}},"workEmail":{"address":"a@x"},"extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:00:00Z"}}"#,
    r#"{"accountPersonKey":{"sourceKey":"ap"},"accountKey":{"sourceKey":"100@x.Marketo"},"personKey":{"sourceKey":"42@x.Marketo"},"extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:00:00Z"}}"#,
    r#"{"_id":"r4","opportunityKey":{"sourceKey":"9@x.Marketo"},"accountKey":{"sourceKey":"100@x.Marketo"},"opportunityAmount":{"amount":12},"extSourceSystemAudit":{"lastUpdatedDate":"2026-03-01T08:00:00Z"}}"#,
    r#"{"_id":"e1","timestamp":"2026-03-01T09:00:00Z","eventType":"directMarketing.emailClicked","personKey":{"sourceKey":"42@x.Marketo"},"directMarketing":{"mailingName":"w"}}"#,
    r#"{"@id":"e2","xdm:timestamp":"2026-03-01T09:00:00Z","xdm:eventType":"web.formFilledOut","xdm:personKey":{"xdm:sourceKey":"42@x.Marketo"},"marketo:x":1}"#,
];

/// Pieces that hostile records are made of.
const SPLICES: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "1e999",
    "-1e400",
    "18446744073709551616",
    "NaN",
    "\u{0}",
    "\\u0000",
    "\\ud800",
    "\u{7f}",
    "\"tenant\":\"x\",",
    "\"_id\":\"dup\",",
    "\"accountKey\":1,",
    "\"ts\":\"9999-12-31T23:59:59Z\",",
    "\"timestamp\":\"1900-01-01T00:00:00Z\",",
    "\"type\":\"custom\",",
    "\"eventType\":\"x\",",
    "\u{202e}",
    "\t\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Cut(usize, usize),
    Nest(usize),
    Raw(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 0..SPLICES.len()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Mutation::Cut(i, n)),
        (100usize..400).prop_map(Mutation::Nest),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Mutation::Raw),
    ]
}

fn apply(base: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    for m in muts {
        match m {
            Mutation::Flip(i, v) if !b.is_empty() => {
                let at = i % b.len();
                b[at] = *v;
            }
            Mutation::Insert(i, s) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, SPLICES[*s].bytes());
            }
            Mutation::Cut(i, n) if !b.is_empty() => {
                let at = i % b.len();
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Nest(depth) => {
                let mut nested = "[".repeat(*depth).into_bytes();
                nested.extend_from_slice(&b);
                nested.extend(std::iter::repeat_n(b']', *depth));
                b = nested;
            }
            Mutation::Raw(bytes) => b = bytes.clone(),
            _ => {}
        }
    }
    b
}

fn check(result: Result<InputEvent, Rejection>) {
    match result {
        Ok(e) => {
            assert!(!e.tenant.is_empty() && !e.event_id.is_empty(), "{e:?}");
            assert!(!e.body.type_name().is_empty());
        }
        Err(r) => assert!(!r.detail.is_empty() && !r.reason.as_str().is_empty(), "{r:?}"),
    }
}

fn fuzz(name: &str, bases: &'static [&'static str], decoder: fn(&[u8]) -> Result<InputEvent, Rejection>) -> u64 {
    let ran = AtomicU64::new(0);
    let accepted = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let strategy = (0..bases.len(), proptest::collection::vec(mutation(), 0..6));
    runner
        .run(&strategy, |(base, muts)| {
            let raw = apply(bases[base], &muts);
            let result = decoder(&raw);
            if result.is_ok() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            check(result);
            ran.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (ran, accepted) = (ran.into_inner(), accepted.into_inner());
    eprintln!("fuzz {name}: {ran} inputs, {accepted} accepted, {} rejected with a reason", ran - accepted);
    assert!(ran >= u64::from(cases()));
    assert!(accepted > 0 && accepted < ran, "the mutations reach both outcomes ({accepted} of {ran} accepted)");
    ran
}

#[test]
fn native_decoder_never_panics_and_always_gives_a_reason() {
    fuzz("native", NATIVE, |raw| decode(raw, &DecodeLimits::default()));
}

#[test]
fn xdm_decoder_never_panics_and_always_gives_a_reason() {
    fuzz("xdm", XDM, |raw| caravan_schemas::xdm::decode(raw, "acme", &DecodeLimits::default()));
}
