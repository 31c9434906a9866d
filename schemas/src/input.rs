//! Input events (SPEC §2) and their strict decoding from one JSON record.
//!
//! It owns the typed [`InputEvent`] and [`decode`], which turns raw bytes into an event or a [`Rejection`]
//! with the reason SPEC §4 names, following the precedence of SPEC §7 when several reasons apply. It is not
//! the de-duplicator or the router: decoding looks at one record alone and never at state.
//!
//! ```
//! use caravan_schemas::input::{decode, DecodeLimits, EventBody, RejectReason};
//! let limits = DecodeLimits::default();
//! let ok = decode(br#"{"tenant":"t","type":"account.deleted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a"}"#, &limits);
//! assert!(matches!(ok.map(|e| e.body), Ok(EventBody::AccountDeleted { .. })));
//! let bad = decode(br#"{"tenant":"t","type":"account.deleted","event_id":"e1","ts":"2026-01-01T00:00:00Z"}"#, &limits);
//! assert_eq!(bad.unwrap_err().reason, RejectReason::MissingField);
//! ```

use crate::json::StrictValue;
use crate::time::Timestamp;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Why a record was rejected (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not parseable as one JSON object (also duplicate keys, NaN, invalid UTF-8, too deep).
    MalformedJson,
    /// `type` names no known event type.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// The tenant is not in the registry.
    UnknownTenant,
    /// A person event without `account_id` for a person with no known account.
    UnknownPersonAccount,
    /// The record is over the size limit.
    TooLarge,
}

impl RejectReason {
    /// The reason as it is written in rejected records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::UnknownTenant => "unknown_tenant",
            RejectReason::UnknownPersonAccount => "unknown_person_account",
            RejectReason::TooLarge => "too_large",
        }
    }
}

/// A record that cannot be applied, with its reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The reason of SPEC §4.
    pub reason: RejectReason,
    /// What exactly is wrong, naming the field.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection { reason, detail: detail.into() }
    }
}

/// Bounds applied while decoding (SPEC §7).
#[derive(Clone, Debug)]
pub struct DecodeLimits {
    /// Records longer than this many bytes are `too_large`.
    pub max_record_bytes: usize,
    /// The earliest accepted `ts` (inclusive).
    pub ts_min: Timestamp,
    /// The latest accepted `ts` (exclusive).
    pub ts_max: Timestamp,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_record_bytes: 1 << 20,
            ts_min: Timestamp(946_684_800 * crate::time::NANOS_PER_SEC), // 2000-01-01
            ts_max: Timestamp(4_102_444_800 * crate::time::NANOS_PER_SEC), // 2100-01-01
        }
    }
}

/// Membership change of an account in an audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudienceStatus {
    /// The account entered the audience.
    Entered,
    /// The account left the audience.
    Exited,
}

/// The kinds of activity of SPEC §2, besides `custom.<name>`.
pub const ACTIVITY_KINDS: [&str; 12] = [
    "email.sent",
    "email.delivered",
    "email.opened",
    "email.clicked",
    "email.bounced",
    "email.unsubscribed",
    "sms.sent",
    "sms.clicked",
    "web.visited",
    "form.filled",
    "event.registered",
    "event.attended",
];

/// Whether `kind` is an activity kind of SPEC §2.
pub fn is_activity_kind(kind: &str) -> bool {
    ACTIVITY_KINDS.contains(&kind) || kind.strip_prefix("custom.").is_some_and(|n| !n.is_empty())
}

/// One applied-or-rejectable input event with its envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct InputEvent {
    /// The tenant; nothing crosses tenants.
    pub tenant: String,
    /// Unique within the tenant; duplicates are dropped.
    pub event_id: String,
    /// Event time.
    pub ts: Timestamp,
    /// The type-specific fields.
    pub body: EventBody,
}

/// The type-specific part of an input event.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)] // field names are those of SPEC §2
pub enum EventBody {
    AccountUpserted { account_id: String, attributes: Map<String, Value> },
    AccountDeleted { account_id: String },
    PersonUpserted { person_id: String, account_id: Option<String>, attributes: Map<String, Value> },
    PersonDeleted { person_id: String },
    OpportunityUpserted { opportunity_id: String, account_id: String, attributes: Map<String, Value> },
    OpportunityDeleted { opportunity_id: String },
    AccountAudience { account_id: String, audience_id: String, status: AudienceStatus },
    PersonActivity { person_id: String, account_id: Option<String>, activity: String, properties: Map<String, Value> },
}

impl EventBody {
    /// The `type` string of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::AccountUpserted { .. } => "account.upserted",
            EventBody::AccountDeleted { .. } => "account.deleted",
            EventBody::PersonUpserted { .. } => "person.upserted",
            EventBody::PersonDeleted { .. } => "person.deleted",
            EventBody::OpportunityUpserted { .. } => "opportunity.upserted",
            EventBody::OpportunityDeleted { .. } => "opportunity.deleted",
            EventBody::AccountAudience { .. } => "account.audience",
            EventBody::PersonActivity { .. } => "person.activity",
        }
    }

    /// The account named by the event itself, if any (person events may omit it).
    pub fn account_id(&self) -> Option<&str> {
        match self {
            EventBody::AccountUpserted { account_id, .. }
            | EventBody::AccountDeleted { account_id }
            | EventBody::OpportunityUpserted { account_id, .. }
            | EventBody::AccountAudience { account_id, .. } => Some(account_id),
            EventBody::PersonUpserted { account_id, .. } | EventBody::PersonActivity { account_id, .. } => {
                account_id.as_deref()
            }
            EventBody::PersonDeleted { .. } | EventBody::OpportunityDeleted { .. } => None,
        }
    }

    /// The person the event is about, if it is a person event.
    pub fn person_id(&self) -> Option<&str> {
        match self {
            EventBody::PersonUpserted { person_id, .. }
            | EventBody::PersonDeleted { person_id }
            | EventBody::PersonActivity { person_id, .. } => Some(person_id),
            _ => None,
        }
    }
}

const TYPES: [&str; 8] = [
    "account.upserted",
    "account.deleted",
    "person.upserted",
    "person.deleted",
    "opportunity.upserted",
    "opportunity.deleted",
    "account.audience",
    "person.activity",
];

/// The raw top-level fields of a record, before any check but JSON well-formedness.
#[derive(Default)]
struct Wire {
    tenant: Option<Value>,
    kind: Option<Value>,
    event_id: Option<Value>,
    ts: Option<Value>,
    account_id: Option<Value>,
    person_id: Option<Value>,
    opportunity_id: Option<Value>,
    audience_id: Option<Value>,
    status: Option<Value>,
    activity: Option<Value>,
    attributes: Option<Value>,
    properties: Option<Value>,
}

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire, A::Error> {
        let mut w = Wire::default();
        let mut others: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "tenant" => &mut w.tenant,
                "type" => &mut w.kind,
                "event_id" => &mut w.event_id,
                "ts" => &mut w.ts,
                "account_id" => &mut w.account_id,
                "person_id" => &mut w.person_id,
                "opportunity_id" => &mut w.opportunity_id,
                "audience_id" => &mut w.audience_id,
                "status" => &mut w.status,
                "activity" => &mut w.activity,
                "attributes" => &mut w.attributes,
                "properties" => &mut w.properties,
                other => {
                    if others.iter().any(|o| o == other) {
                        return Err(de::Error::custom(format_args!("duplicate key `{other}`")));
                    }
                    others.push(other.to_owned());
                    let StrictValue(_) = map.next_value()?;
                    continue;
                }
            };
            let StrictValue(v) = map.next_value()?;
            if slot.replace(v).is_some() {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
        }
        Ok(w)
    }
}

/// Decodes one record (a line without its newline, or a Kafka value).
///
/// # Errors
/// The [`Rejection`] of SPEC §4 and §7: the first reason that applies in the order envelope field missing,
/// envelope field not a string, unknown type, bad `ts`, type field missing, type field invalid.
/// `unknown_tenant`, de-duplication and routing are decided later, by the caller that knows the registry and
/// the state.
pub fn decode(raw: &[u8], limits: &DecodeLimits) -> Result<InputEvent, Rejection> {
    if raw.len() > limits.max_record_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("record of {} bytes is over the limit of {} bytes", raw.len(), limits.max_record_bytes),
        ));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, format!("invalid UTF-8: {e}")))?;
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("number out of range") {
            Rejection::new(RejectReason::InvalidField, msg)
        } else {
            Rejection::new(RejectReason::MalformedJson, msg)
        }
    })?;
    decode_wire(wire, limits)
}

fn missing(name: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("missing field `{name}`"))
}

fn invalid(name: &str, why: &str) -> Rejection {
    Rejection::new(RejectReason::InvalidField, format!("field `{name}` {why}"))
}

/// Checks an id: a non-empty string without control characters.
fn id(name: &str, v: Option<Value>) -> Result<String, Rejection> {
    match v {
        None | Some(Value::Null) => Err(missing(name)),
        Some(Value::String(s)) => {
            if s.is_empty() {
                Err(invalid(name, "is empty"))
            } else if s.chars().any(char::is_control) {
                Err(invalid(name, "contains a control character"))
            } else {
                Ok(s)
            }
        }
        Some(_) => Err(invalid(name, "is not a string")),
    }
}

fn object(name: &str, v: Option<Value>, required: bool) -> Result<Map<String, Value>, Rejection> {
    match v {
        None | Some(Value::Null) if !required => Ok(Map::new()),
        None | Some(Value::Null) => Err(missing(name)),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(invalid(name, "is not an object")),
    }
}

fn decode_wire(mut w: Wire, limits: &DecodeLimits) -> Result<InputEvent, Rejection> {
    // 1. envelope fields present.
    for (name, v) in [("tenant", &w.tenant), ("type", &w.kind), ("event_id", &w.event_id), ("ts", &w.ts)] {
        if matches!(v, None | Some(Value::Null)) {
            return Err(missing(name));
        }
    }
    // 2. envelope fields are strings (ids: non-empty, no control characters).
    let tenant = id("tenant", w.tenant.take())?;
    let Some(Value::String(kind)) = w.kind.take() else { return Err(invalid("type", "is not a string")) };
    let event_id = id("event_id", w.event_id.take())?;
    let Some(Value::String(ts_text)) = w.ts.take() else { return Err(invalid("ts", "is not a string")) };
    // 3. known type.
    if !TYPES.contains(&kind.as_str()) {
        return Err(Rejection::new(RejectReason::UnknownType, format!("unknown event type `{kind}`")));
    }
    // 4. (unknown tenant: decided by the caller.) 5. ts.
    let ts = Timestamp::parse_rfc3339(&ts_text).map_err(|e| invalid("ts", &format!("is invalid: {e}")))?;
    if ts < limits.ts_min || ts >= limits.ts_max {
        return Err(invalid(
            "ts",
            &format!("is outside the accepted range {} to {}", limits.ts_min.to_rfc3339(), limits.ts_max.to_rfc3339()),
        ));
    }
    // 6 and 7. type fields: all presence checks first, then validity.
    let need = |names: &[&str], w: &Wire| -> Result<(), Rejection> {
        for &n in names {
            let v = match n {
                "account_id" => &w.account_id,
                "person_id" => &w.person_id,
                "opportunity_id" => &w.opportunity_id,
                "audience_id" => &w.audience_id,
                "status" => &w.status,
                "activity" => &w.activity,
                _ => &w.attributes,
            };
            if matches!(v, None | Some(Value::Null)) {
                return Err(missing(n));
            }
        }
        Ok(())
    };
    let opt_id = |name: &str, v: Option<Value>| match v {
        None | Some(Value::Null) => Ok(None),
        other => id(name, other).map(Some),
    };
    let body = match kind.as_str() {
        "account.upserted" => {
            need(&["account_id", "attributes"], &w)?;
            EventBody::AccountUpserted {
                account_id: id("account_id", w.account_id)?,
                attributes: object("attributes", w.attributes, true)?,
            }
        }
        "account.deleted" => {
            need(&["account_id"], &w)?;
            EventBody::AccountDeleted { account_id: id("account_id", w.account_id)? }
        }
        "person.upserted" => {
            need(&["person_id", "attributes"], &w)?;
            EventBody::PersonUpserted {
                person_id: id("person_id", w.person_id)?,
                account_id: opt_id("account_id", w.account_id)?,
                attributes: object("attributes", w.attributes, true)?,
            }
        }
        "person.deleted" => {
            need(&["person_id"], &w)?;
            EventBody::PersonDeleted { person_id: id("person_id", w.person_id)? }
        }
        "opportunity.upserted" => {
            need(&["opportunity_id", "account_id", "attributes"], &w)?;
            EventBody::OpportunityUpserted {
                opportunity_id: id("opportunity_id", w.opportunity_id)?,
                account_id: id("account_id", w.account_id)?,
                attributes: object("attributes", w.attributes, true)?,
            }
        }
        "opportunity.deleted" => {
            need(&["opportunity_id"], &w)?;
            EventBody::OpportunityDeleted { opportunity_id: id("opportunity_id", w.opportunity_id)? }
        }
        "account.audience" => {
            need(&["account_id", "audience_id", "status"], &w)?;
            let account_id = id("account_id", w.account_id)?;
            let audience_id = id("audience_id", w.audience_id)?;
            let status = match w.status {
                Some(Value::String(s)) if s == "entered" => AudienceStatus::Entered,
                Some(Value::String(s)) if s == "exited" => AudienceStatus::Exited,
                _ => return Err(invalid("status", "is neither \"entered\" nor \"exited\"")),
            };
            EventBody::AccountAudience { account_id, audience_id, status }
        }
        _ => {
            need(&["person_id", "activity"], &w)?;
            let person_id = id("person_id", w.person_id)?;
            let account_id = opt_id("account_id", w.account_id)?;
            let activity = match w.activity {
                Some(Value::String(s)) if is_activity_kind(&s) => s,
                Some(Value::String(s)) => return Err(invalid("activity", &format!("names no activity kind: `{s}`"))),
                _ => return Err(invalid("activity", "is not a string")),
            };
            EventBody::PersonActivity {
                person_id,
                account_id,
                activity,
                properties: object("properties", w.properties, false)?,
            }
        }
    };
    Ok(InputEvent { tenant, event_id, ts, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(line: &str) -> Option<RejectReason> {
        decode(line.as_bytes(), &DecodeLimits::default()).err().map(|r| r.reason)
    }

    const ENV: &str = r#""tenant":"t","event_id":"e1","ts":"2026-01-01T00:00:00Z""#;

    #[test]
    fn each_bad_record_gets_its_reason() {
        use RejectReason::*;
        let cases: Vec<(String, Option<RejectReason>)> = vec![
            ("{not json".into(), Some(MalformedJson)),
            ("[1,2]".into(), Some(MalformedJson)),
            ("\"text\"".into(), Some(MalformedJson)),
            (format!(r#"{{{ENV},"type":"account.deleted","account_id":"a","account_id":"b"}}"#), Some(MalformedJson)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a","attributes":{{"x":NaN}}}}"#), Some(MalformedJson)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a","attributes":{{"x":1e400}}}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a","attributes":{{"x":1,"x":2}}}}"#), Some(MalformedJson)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a","extra":1,"extra":2,"attributes":{{}}}}"#), Some(MalformedJson)),
            (r#"{"type":"account.deleted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a"}"#.into(), Some(MissingField)),
            (r#"{"tenant":7,"type":"account.deleted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a"}"#.into(), Some(InvalidField)),
            (r#"{"tenant":"t","type":"nope","event_id":"e1","ts":"bad"}"#.into(), Some(UnknownType)),
            (r#"{"tenant":"t","type":"account.deleted","event_id":"e1","ts":"2026-01-01"}"#.into(), Some(InvalidField)),
            (r#"{"tenant":"t","type":"account.deleted","event_id":"e1","ts":"1999-12-31T23:59:59Z","account_id":"a"}"#.into(), Some(InvalidField)),
            (r#"{"tenant":"t","type":"account.deleted","event_id":"e1","ts":"2100-01-01T00:00:00Z","account_id":"a"}"#.into(), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.deleted"}}"#), Some(MissingField)),
            (format!(r#"{{{ENV},"type":"account.deleted","account_id":5}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.deleted","account_id":""}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.deleted","account_id":"a\u0001"}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a"}}"#), Some(MissingField)),
            (format!(r#"{{{ENV},"type":"account.upserted","account_id":"a","attributes":[]}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"account.audience","account_id":"a","audience_id":"x","status":"in"}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"person.activity","person_id":"p","activity":"email.read"}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"person.activity","person_id":"p","activity":"custom.demo"}}"#), None),
            (format!(r#"{{{ENV},"type":"person.activity","person_id":"p","activity":"custom."}}"#), Some(InvalidField)),
            (format!(r#"{{{ENV},"type":"person.upserted","person_id":"p","attributes":{{}},"unknown":[1]}}"#), None),
            // Missing beats invalid among type fields.
            (format!(r#"{{{ENV},"type":"opportunity.upserted","opportunity_id":5,"attributes":{{}}}}"#), Some(MissingField)),
        ];
        for (line, want) in cases {
            assert_eq!(reason(&line), want, "{line}");
        }
    }

    #[test]
    fn invalid_utf8_and_too_large() {
        let limits = DecodeLimits { max_record_bytes: 64, ..DecodeLimits::default() };
        let r = decode(b"{\"tenant\":\"\xff\"}", &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::MalformedJson);
        let big = format!(r#"{{{ENV},"type":"account.deleted","account_id":"{}"}}"#, "a".repeat(100));
        assert_eq!(decode(big.as_bytes(), &limits).unwrap_err().reason, RejectReason::TooLarge);
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        let deep = format!(
            r#"{{{ENV},"type":"account.upserted","account_id":"a","attributes":{{"x":{}1{}}}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(reason(&deep), Some(RejectReason::MalformedJson));
    }

    #[test]
    fn decodes_every_type() {
        let line = format!(
            r#"{{{ENV},"type":"person.activity","person_id":"p","account_id":"a","activity":"email.clicked","properties":{{"asset_id":"w"}}}}"#
        );
        let e = decode(line.as_bytes(), &DecodeLimits::default()).expect("valid");
        assert_eq!(e.tenant, "t");
        assert!(
            matches!(&e.body, EventBody::PersonActivity { activity, account_id: Some(a), .. } if activity == "email.clicked" && a == "a")
        );
        assert_eq!(e.body.type_name(), "person.activity");
        let line =
            format!(r#"{{{ENV},"type":"account.audience","account_id":"a","audience_id":"target","status":"exited"}}"#);
        let e = decode(line.as_bytes(), &DecodeLimits::default()).expect("valid");
        assert!(matches!(e.body, EventBody::AccountAudience { status: AudienceStatus::Exited, .. }));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, &DecodeLimits::default());
        }

        #[test]
        fn never_panics_on_mutated_records(cut in 0usize..200, byte in any::<u8>()) {
            let mut line = format!(r#"{{{ENV},"type":"person.upserted","person_id":"p","account_id":"a","attributes":{{"k":[1,{{"z":null}}]}}}}"#).into_bytes();
            let at = cut % line.len();
            line[at] = byte;
            if let Err(r) = decode(&line, &DecodeLimits::default()) {
                prop_assert!(!r.detail.is_empty());
            }
        }
    }
}
