//! The NDJSON text of actions and change events, written by hand: these records are written by the million
//! (about three for every ten input records of the reference workload), and a direct writer costs a fraction
//! of the generic serializer's field-by-field calls and per-byte escape lookups.
//!
//! It owns one promise: `write_json` appends exactly the bytes `serde_json::to_writer` writes for the same
//! record, so the two can never disagree about the output format (a property test holds it to that). It is
//! not a JSON library: nested values (action parameters, attribute values) and strings that need escapes go
//! through `serde_json` itself.

use super::{ActionRecord, ChangeEvent};
use crate::attrs::Attrs;
use serde_json::Value;

/// Appends a value through `serde_json`. Writing a `serde_json::Value` or a string into a `Vec` cannot fail
/// (no I/O, and every map key of a `Value` is a string), so there is no error to lose.
fn serde_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A JSON string. Ids and names rarely need an escape: those go to `serde_json`, the rest is copied.
fn string(out: &mut Vec<u8>, s: &str) {
    if crate::swar::first_to_escape(s.as_bytes()).is_none() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_value(out, s);
    }
}

/// `,"name":` for a name that needs no escape (every name below is a literal).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => string(out, s),
        other => serde_value(out, other),
    }
}

/// An attribute map as a JSON object, in key order (as `attrs::serialize_as_object` writes it; the state
/// store keeps attributes as this text too).
pub(crate) fn object(out: &mut Vec<u8>, attrs: &Attrs) {
    out.push(b'{');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// `,"name":"text"`.
fn field(out: &mut Vec<u8>, name: &str, text: &str) {
    key(out, name);
    string(out, text);
}

/// `,"name":"text"` when there is a text.
fn optional(out: &mut Vec<u8>, name: &str, text: Option<&str>) {
    if let Some(text) = text {
        field(out, name, text);
    }
}

/// `,"name":123`.
fn number(out: &mut Vec<u8>, name: &str, n: u64) {
    key(out, name);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `,"ts":"<RFC 3339>"`.
fn timestamp(out: &mut Vec<u8>, ts: crate::time::Timestamp) {
    key(out, "ts");
    out.push(b'"');
    ts.write_rfc3339(out);
    out.push(b'"');
}

impl ActionRecord {
    /// Appends the record's JSON text (no newline): the same bytes as `serde_json::to_writer`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"tenant\":");
        string(out, &self.tenant);
        field(out, "action_id", &self.action_id);
        field(out, "type", &self.kind);
        key(out, "params");
        value(out, &self.params);
        field(out, "journey_id", &self.journey_id);
        number(out, "journey_version", u64::from(self.journey_version));
        field(out, "node_id", &self.node_id);
        field(out, "account_id", &self.account_id);
        optional(out, "person_id", self.person_id.as_deref());
        timestamp(out, self.ts.0);
        field(out, "cause_event_id", &self.cause_event_id);
        out.push(b'}');
    }
}

impl ChangeEvent {
    /// Appends the record's JSON text (no newline): the same bytes as `serde_json::to_writer`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"tenant\":");
        string(out, &self.tenant);
        field(out, "change_id", &self.change_id);
        field(out, "entity", self.entity.as_str());
        field(out, "entity_id", &self.entity_id);
        field(out, "account_id", &self.account_id);
        field(out, "op", self.op.as_str());
        key(out, "before");
        object(out, &self.before);
        key(out, "after");
        object(out, &self.after);
        number(out, "version", self.version);
        timestamp(out, self.ts.0);
        field(out, "origin", self.origin.as_str());
        field(out, "cause_event_id", &self.cause_event_id);
        optional(out, "journey_id", self.journey_id.as_deref());
        optional(out, "node_id", self.node_id.as_deref());
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{ChangeOp, Entity, Origin};
    use crate::time::{Timestamp, TimestampText};
    use proptest::prelude::*;
    use serde_json::json;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9._-]{1,12}",
            1 => any::<String>(),
            1 => Just("quote \" back \\ tab \t nl \n nul \u{0} del \u{7f} é 😀".to_owned()),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|v| json!(v)),
            any::<u64>().prop_map(|v| json!(v)),
            (-1e12f64..1e12).prop_map(|v| json!(v)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn attrs() -> impl Strategy<Value = Attrs> {
        proptest::collection::btree_map(text(), json_value(), 0..5).prop_map(|m| {
            let mut a = Attrs::default();
            for (k, v) in m {
                a.insert(&k, v);
            }
            a
        })
    }

    fn ts() -> impl Strategy<Value = TimestampText> {
        (946_684_800_000_000_000i64..4_102_444_800_000_000_000).prop_map(|n| TimestampText(Timestamp(n)))
    }

    prop_compose! {
        fn action()(tenant in text(), action_id in text(), kind in text(), params in json_value(),
            journey_id in text(), journey_version in any::<u32>(), node_id in text(), account_id in text(),
            person_id in proptest::option::of(text()), ts in ts(), cause in text()) -> ActionRecord {
            ActionRecord {
                tenant: tenant.into(), action_id, kind: kind.into(), params, journey_id: journey_id.into(),
                journey_version, node_id: node_id.into(), account_id: account_id.into(),
                person_id: person_id.map(Into::into), ts, cause_event_id: cause.into(),
            }
        }
    }

    prop_compose! {
        fn change()(tenant in text(), change_id in text(), entity in 0..3u8, entity_id in text(),
            account_id in text(), op in 0..3u8, before in attrs(), after in attrs(), version in any::<u64>(),
            ts in ts(), action in any::<bool>(), cause in text(), journey in proptest::option::of(text()),
            node in proptest::option::of(text())) -> ChangeEvent {
            ChangeEvent {
                tenant: tenant.into(), change_id,
                entity: [Entity::Account, Entity::Person, Entity::Opportunity][usize::from(entity)],
                entity_id: entity_id.into(), account_id: account_id.into(),
                op: [ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete][usize::from(op)],
                before, after, version, ts, origin: if action { Origin::Action } else { Origin::Input },
                cause_event_id: cause.into(), journey_id: journey.map(Into::into), node_id: node.map(Into::into),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn actions_are_written_as_serde_writes_them(a in action()) {
            let mut ours = Vec::new();
            a.write_json(&mut ours);
            let theirs = serde_json::to_vec(&a).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }

        #[test]
        fn changes_are_written_as_serde_writes_them(c in change()) {
            let mut ours = Vec::new();
            c.write_json(&mut ours);
            let theirs = serde_json::to_vec(&c).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }
    }

    #[test]
    fn numbers_of_every_width() {
        for n in [0, 7, 10, 99, 1_000_000, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, "v", n);
            assert_eq!(out, format!(",\"v\":{n}").into_bytes());
        }
    }
}
