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

pub mod contract;
mod fast;

use crate::Id;
use crate::attrs::Attrs;
use crate::json::{StrictValue, StrictVisitor};
use crate::time::Timestamp;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Why a record was rejected (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    // The names as literals (not `ACTIVITY_KINDS.contains`): a match compares by length first and then with
    // inline constant-length compares, where the loop called memcmp per name (every activity record is checked).
    matches!(
        kind,
        "email.sent"
            | "email.delivered"
            | "email.opened"
            | "email.clicked"
            | "email.bounced"
            | "email.unsubscribed"
            | "sms.sent"
            | "sms.clicked"
            | "web.visited"
            | "form.filled"
            | "event.registered"
            | "event.attended"
    ) || kind.strip_prefix("custom.").is_some_and(|n| !n.is_empty())
}

/// One applied-or-rejectable input event with its envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct InputEvent {
    /// The tenant; nothing crosses tenants.
    pub tenant: Id,
    /// Unique within the tenant; duplicates are dropped.
    pub event_id: Id,
    /// Event time.
    pub ts: Timestamp,
    /// The type-specific fields.
    pub body: EventBody,
}

/// The type-specific part of an input event.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)] // field names are those of SPEC §2
pub enum EventBody {
    AccountUpserted { account_id: Id, attributes: Attrs },
    AccountDeleted { account_id: Id },
    PersonUpserted { person_id: Id, account_id: Option<Id>, attributes: Attrs },
    PersonDeleted { person_id: Id },
    OpportunityUpserted { opportunity_id: Id, account_id: Id, attributes: Attrs },
    OpportunityDeleted { opportunity_id: Id },
    AccountAudience { account_id: Id, audience_id: Id, status: AudienceStatus },
    PersonActivity { person_id: Id, account_id: Option<Id>, activity: Id, properties: Attrs },
}

impl EventBody {
    /// Every event type, by [`EventBody::type_index`].
    pub const TYPE_NAMES: [&'static str; 8] = [
        "account.upserted",
        "account.deleted",
        "person.upserted",
        "person.deleted",
        "opportunity.upserted",
        "opportunity.deleted",
        "account.audience",
        "person.activity",
    ];

    /// The index in [`EventBody::TYPE_NAMES`] of the type named `name`, if it is one.
    pub fn type_index_of(name: &str) -> Option<usize> {
        // Literals, not a search of TYPE_NAMES: see `is_activity_kind`. A test holds the two in step.
        Some(match name {
            "account.upserted" => 0,
            "account.deleted" => 1,
            "person.upserted" => 2,
            "person.deleted" => 3,
            "opportunity.upserted" => 4,
            "opportunity.deleted" => 5,
            "account.audience" => 6,
            "person.activity" => 7,
            _ => return None,
        })
    }

    /// The index of this event's type in [`EventBody::TYPE_NAMES`].
    pub fn type_index(&self) -> usize {
        match self {
            EventBody::AccountUpserted { .. } => 0,
            EventBody::AccountDeleted { .. } => 1,
            EventBody::PersonUpserted { .. } => 2,
            EventBody::PersonDeleted { .. } => 3,
            EventBody::OpportunityUpserted { .. } => 4,
            EventBody::OpportunityDeleted { .. } => 5,
            EventBody::AccountAudience { .. } => 6,
            EventBody::PersonActivity { .. } => 7,
        }
    }

    /// The `type` string of this event.
    pub fn type_name(&self) -> &'static str {
        Self::TYPE_NAMES[self.type_index()]
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

/// A top-level field's value: a string (borrowed from the record where it has no escapes), or any other
/// JSON value.
enum Field<'de> {
    Str(Cow<'de, str>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'de>, E> {
        StrictVisitor.visit_f64(v).map(Field::Other)
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        StrictVisitor.visit_seq(seq).map(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        StrictVisitor.visit_map(map).map(Field::Other)
    }
}

/// The names of the top-level fields Caravan reads; matched without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Tenant,
    Type,
    EventId,
    Ts,
    AccountId,
    PersonId,
    OpportunityId,
    AudienceId,
    Status,
    Activity,
    Attributes,
    Properties,
}

impl Key {
    /// The keys whose names start with `first`: a name is compared with these only.
    fn starting_with(first: u8) -> &'static [Key] {
        match first {
            b't' => &[Key::Tenant, Key::Type, Key::Ts],
            b'e' => &[Key::EventId],
            b'a' => &[Key::AccountId, Key::Activity, Key::Attributes, Key::AudienceId],
            b'p' => &[Key::PersonId, Key::Properties],
            b'o' => &[Key::OpportunityId],
            b's' => &[Key::Status],
            _ => &[],
        }
    }

    /// The key of a top-level field name, matched without allocating (the `serde_json` reader uses it).
    fn from_name(name: &str) -> Option<Key> {
        let candidates = Key::starting_with(*name.as_bytes().first()?);
        candidates.iter().copied().find(|&key| KEYS[key as usize].0 == name)
    }

    /// The key whose name and closing quote start `rest` (the text just after an opening quote), with the
    /// length of both; `None` when no key's does (an unknown name, or one written with escapes). The fast
    /// reader matches names in place this way instead of scanning each for its closing quote first.
    fn from_quoted(rest: &[u8]) -> Option<(Key, usize)> {
        let candidates = Key::starting_with(*rest.first()?);
        if let Some(word) = rest.first_chunk::<16>() {
            // The usual case: sixteen bytes hold every name with its quote; one masked compare a candidate,
            // where comparing byte slices called memcmp (perf: a seventh of the decoders' time).
            let word = u128::from_le_bytes(*word);
            return candidates.iter().find_map(|&key| {
                let (text, mask, len) = QUOTED_KEYS[key as usize];
                (word & mask == text).then_some((key, len))
            });
        }
        candidates.iter().find_map(|&key| {
            let name = KEYS[key as usize].0.as_bytes();
            (rest.get(name.len()) == Some(&b'"') && rest.starts_with(name)).then_some((key, name.len() + 1))
        })
    }
}

/// Each key's name and closing quote as a little-endian word, the mask of its bytes, and its length.
const QUOTED_KEYS: [(u128, u128, usize); KEYS.len()] = {
    let mut out = [(0, 0, 0); KEYS.len()];
    let mut k = 0;
    while k < KEYS.len() {
        let name = KEYS[k].0.as_bytes();
        assert!(name.len() < 16, "a key name with its quote must fit in sixteen bytes");
        let (mut text, mut mask, mut i) = (0u128, 0u128, 0);
        while i <= name.len() {
            let byte = if i < name.len() { name[i] } else { b'"' };
            text |= (byte as u128) << (8 * i);
            mask |= 0xff << (8 * i);
            i += 1;
        }
        out[k] = (text, mask, name.len() + 1);
        k += 1;
    }
    out
};

/// The name of each key, by its number.
const KEYS: [(&str, Key); 12] = [
    ("tenant", Key::Tenant),
    ("type", Key::Type),
    ("event_id", Key::EventId),
    ("ts", Key::Ts),
    ("account_id", Key::AccountId),
    ("person_id", Key::PersonId),
    ("opportunity_id", Key::OpportunityId),
    ("audience_id", Key::AudienceId),
    ("status", Key::Status),
    ("activity", Key::Activity),
    ("attributes", Key::Attributes),
    ("properties", Key::Properties),
];

/// A top-level key: one Caravan reads, or another one (kept to detect duplicates).
enum KeyOrOther {
    Known(Key),
    Other(String),
}

impl<'de> Deserialize<'de> for KeyOrOther {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyOrOther;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyOrOther, E> {
                Ok(Key::from_name(v).map_or_else(|| KeyOrOther::Other(v.to_owned()), KeyOrOther::Known))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The raw top-level fields of a record, before any check but JSON well-formedness.
#[derive(Default)]
struct Wire<'de> {
    fields: [Option<Field<'de>>; 10],
}

impl<'de> Wire<'de> {
    fn take(&mut self, key: Key) -> Option<Field<'de>> {
        self.fields[key as usize].take()
    }
    fn get(&self, key: Key) -> Option<&Field<'de>> {
        self.fields[key as usize].as_ref()
    }
}

/// An object field (`attributes`, `properties`): read straight into [`Attrs`] (no B-tree nodes), or any
/// other JSON value, kept to report it as not an object.
enum ObjField {
    Obj(Attrs),
    Other(Value),
}

impl<'de> Deserialize<'de> for ObjField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjVisitor;
        impl<'de> Visitor<'de> for ObjVisitor {
            type Value = ObjField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjField, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<Id>()? {
                    let StrictValue(v) = map.next_value()?;
                    pairs.push((key, v));
                }
                Attrs::from_pairs(pairs)
                    .map(ObjField::Obj)
                    .map_err(|k| de::Error::custom(format_args!("duplicate key `{k}`")))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ObjField, E> {
                Ok(ObjField::Other(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ObjField, E> {
                Ok(ObjField::Other(Value::Number(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ObjField, E> {
                Ok(ObjField::Other(Value::Number(v.into())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ObjField, E> {
                StrictVisitor.visit_f64(v).map(ObjField::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<ObjField, E> {
                Ok(ObjField::Other(Value::String(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<ObjField, E> {
                Ok(ObjField::Other(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ObjField, A::Error> {
                StrictVisitor.visit_seq(seq).map(ObjField::Other)
            }
        }
        d.deserialize_any(ObjVisitor)
    }
}

/// The record as read: the plain fields, and the two object fields.
#[derive(Default)]
struct WireRecord<'de> {
    wire: Wire<'de>,
    attributes: Option<ObjField>,
    properties: Option<ObjField>,
}

impl<'de> Deserialize<'de> for WireRecord<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = WireRecord<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireRecord<'de>, A::Error> {
        let mut w = WireRecord::default();
        let mut others: Vec<String> = Vec::new();
        let dup = |name: &str| de::Error::custom(format_args!("duplicate key `{name}`"));
        while let Some(key) = map.next_key::<KeyOrOther>()? {
            match key {
                KeyOrOther::Other(other) => {
                    if others.contains(&other) {
                        return Err(dup(&other));
                    }
                    let StrictValue(_) = map.next_value()?;
                    others.push(other);
                }
                KeyOrOther::Known(k @ (Key::Attributes | Key::Properties)) => {
                    let v: ObjField = map.next_value()?;
                    let slot = if k == Key::Attributes { &mut w.attributes } else { &mut w.properties };
                    if slot.replace(v).is_some() {
                        return Err(dup(if k == Key::Attributes { "attributes" } else { "properties" }));
                    }
                }
                KeyOrOther::Known(k) => {
                    let v: Field<'de> = map.next_value()?;
                    if w.wire.fields[k as usize].replace(v).is_some() {
                        return Err(dup(KEYS[k as usize].0));
                    }
                }
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
    let text = record_text(raw, limits)?;
    match fast::read(text) {
        Some(wire) => decode_wire(wire, limits),
        None => decode_text(text, limits),
    }
}

/// The checks every input format makes first: the size limit, then UTF-8.
pub(crate) fn record_text<'a>(raw: &'a [u8], limits: &DecodeLimits) -> Result<&'a str, Rejection> {
    if raw.len() > limits.max_record_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("record of {} bytes is over the limit of {} bytes", raw.len(), limits.max_record_bytes),
        ));
    }
    // Checked with SIMD (std's check was ~5% of a decoder's time); only a bad record is checked again, by std,
    // for the position its message gives.
    simdutf8::basic::from_utf8(raw).or_else(|_| {
        std::str::from_utf8(raw).map_err(|e| Rejection::new(RejectReason::MalformedJson, format!("invalid UTF-8: {e}")))
    })
}

/// A JSON parse error as a rejection: a number too large for a double is an invalid field, anything else
/// (syntax, duplicate keys, nesting deeper than 128) malformed JSON.
pub(crate) fn json_rejection(e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if msg.starts_with("number out of range") {
        Rejection::new(RejectReason::InvalidField, msg)
    } else {
        Rejection::new(RejectReason::MalformedJson, msg)
    }
}

/// The full reader: any JSON, every rule, every rejection explained.
fn decode_text(text: &str, limits: &DecodeLimits) -> Result<InputEvent, Rejection> {
    let wire: WireRecord<'_> = serde_json::from_str(text).map_err(|e| json_rejection(&e))?;
    decode_wire(wire, limits)
}

pub(crate) fn missing(name: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("missing field `{name}`"))
}

pub(crate) fn invalid(name: &str, why: &str) -> Rejection {
    Rejection::new(RejectReason::InvalidField, format!("field `{name}` {why}"))
}

/// Checks the text of an id named `name`: non-empty, without control characters.
pub(crate) fn checked_id(name: &str, s: &str) -> Result<Id, Rejection> {
    let control = !crate::swar::printable_ascii(s.as_bytes()) && s.chars().any(char::is_control);
    if s.is_empty() {
        Err(invalid(name, "is empty"))
    } else if control {
        Err(invalid(name, "contains a control character"))
    } else {
        Ok(Id::from(s))
    }
}

/// Reads an RFC 3339 time named `name` and checks it against the accepted range.
pub(crate) fn checked_ts(name: &str, text: &str, limits: &DecodeLimits) -> Result<Timestamp, Rejection> {
    let ts = Timestamp::parse_rfc3339(text).map_err(|e| invalid(name, &format!("is invalid: {e}")))?;
    if ts < limits.ts_min || ts >= limits.ts_max {
        return Err(invalid(
            name,
            &format!("is outside the accepted range {} to {}", limits.ts_min.to_rfc3339(), limits.ts_max.to_rfc3339()),
        ));
    }
    Ok(ts)
}

fn absent(f: Option<&Field<'_>>) -> bool {
    matches!(f, None | Some(Field::Other(Value::Null)))
}

/// Checks an id: a non-empty string without control characters.
fn id(key: Key, v: Option<Field<'_>>) -> Result<Id, Rejection> {
    let name = KEYS[key as usize].0;
    match v {
        None | Some(Field::Other(Value::Null)) => Err(missing(name)),
        Some(Field::Str(s)) => checked_id(name, &s),
        Some(Field::Other(_)) => Err(invalid(name, "is not a string")),
    }
}

fn opt_id(key: Key, v: Option<Field<'_>>) -> Result<Option<Id>, Rejection> {
    if absent(v.as_ref()) { Ok(None) } else { id(key, v).map(Some) }
}

fn object(name: &str, v: Option<ObjField>, required: bool) -> Result<Attrs, Rejection> {
    match v {
        None | Some(ObjField::Other(Value::Null)) if !required => Ok(Attrs::default()),
        None | Some(ObjField::Other(Value::Null)) => Err(missing(name)),
        Some(ObjField::Obj(m)) => Ok(m),
        Some(ObjField::Other(_)) => Err(invalid(name, "is not an object")),
    }
}

fn decode_wire(rec: WireRecord<'_>, limits: &DecodeLimits) -> Result<InputEvent, Rejection> {
    let WireRecord { mut wire, attributes, properties } = rec;
    // 1. envelope fields present.
    for key in [Key::Tenant, Key::Type, Key::EventId, Key::Ts] {
        if absent(wire.get(key)) {
            return Err(missing(KEYS[key as usize].0));
        }
    }
    // 2. envelope fields are strings (ids: non-empty, no control characters).
    let tenant = id(Key::Tenant, wire.take(Key::Tenant))?;
    let Some(Field::Str(kind)) = wire.take(Key::Type) else { return Err(invalid("type", "is not a string")) };
    let event_id = id(Key::EventId, wire.take(Key::EventId))?;
    let Some(Field::Str(ts_text)) = wire.take(Key::Ts) else { return Err(invalid("ts", "is not a string")) };
    // 3. known type.
    let Some(type_index) = EventBody::type_index_of(&kind) else {
        return Err(Rejection::new(RejectReason::UnknownType, format!("unknown event type `{kind}`")));
    };
    // 4. (unknown tenant: decided by the caller.) 5. ts.
    let ts = checked_ts("ts", &ts_text, limits)?;
    // 6 and 7. type fields: all presence checks first, then validity.
    let need = |keys: &[Key], wire: &Wire<'_>| -> Result<(), Rejection> {
        for &k in keys {
            let gone = match k {
                Key::Attributes => matches!(attributes, None | Some(ObjField::Other(Value::Null))),
                _ => absent(wire.get(k)),
            };
            if gone {
                return Err(missing(KEYS[k as usize].0));
            }
        }
        Ok(())
    };
    let body = match type_index {
        0 => {
            need(&[Key::AccountId, Key::Attributes], &wire)?;
            EventBody::AccountUpserted {
                account_id: id(Key::AccountId, wire.take(Key::AccountId))?,
                attributes: object("attributes", attributes, true)?,
            }
        }
        1 => {
            need(&[Key::AccountId], &wire)?;
            EventBody::AccountDeleted { account_id: id(Key::AccountId, wire.take(Key::AccountId))? }
        }
        2 => {
            need(&[Key::PersonId, Key::Attributes], &wire)?;
            EventBody::PersonUpserted {
                person_id: id(Key::PersonId, wire.take(Key::PersonId))?,
                account_id: opt_id(Key::AccountId, wire.take(Key::AccountId))?,
                attributes: object("attributes", attributes, true)?,
            }
        }
        3 => {
            need(&[Key::PersonId], &wire)?;
            EventBody::PersonDeleted { person_id: id(Key::PersonId, wire.take(Key::PersonId))? }
        }
        4 => {
            need(&[Key::OpportunityId, Key::AccountId, Key::Attributes], &wire)?;
            EventBody::OpportunityUpserted {
                opportunity_id: id(Key::OpportunityId, wire.take(Key::OpportunityId))?,
                account_id: id(Key::AccountId, wire.take(Key::AccountId))?,
                attributes: object("attributes", attributes, true)?,
            }
        }
        5 => {
            need(&[Key::OpportunityId], &wire)?;
            EventBody::OpportunityDeleted { opportunity_id: id(Key::OpportunityId, wire.take(Key::OpportunityId))? }
        }
        6 => {
            need(&[Key::AccountId, Key::AudienceId, Key::Status], &wire)?;
            let account_id = id(Key::AccountId, wire.take(Key::AccountId))?;
            let audience_id = id(Key::AudienceId, wire.take(Key::AudienceId))?;
            let status = match wire.take(Key::Status) {
                Some(Field::Str(s)) if s == "entered" => AudienceStatus::Entered,
                Some(Field::Str(s)) if s == "exited" => AudienceStatus::Exited,
                _ => return Err(invalid("status", "is neither \"entered\" nor \"exited\"")),
            };
            EventBody::AccountAudience { account_id, audience_id, status }
        }
        _ => {
            // 7, person.activity.
            need(&[Key::PersonId, Key::Activity], &wire)?;
            let person_id = id(Key::PersonId, wire.take(Key::PersonId))?;
            let account_id = opt_id(Key::AccountId, wire.take(Key::AccountId))?;
            let activity = match wire.take(Key::Activity) {
                Some(Field::Str(s)) if is_activity_kind(&s) => Id::from(s.as_ref()),
                Some(Field::Str(s)) => return Err(invalid("activity", &format!("names no activity kind: `{s}`"))),
                _ => return Err(invalid("activity", "is not a string")),
            };
            EventBody::PersonActivity {
                person_id,
                account_id,
                activity,
                properties: object("properties", properties, false)?,
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
    fn the_literal_name_matches_agree_with_the_name_tables() {
        for (i, name) in EventBody::TYPE_NAMES.iter().enumerate() {
            assert_eq!(EventBody::type_index_of(name), Some(i), "{name}");
            assert_eq!(EventBody::type_index_of(&name[..name.len() - 1]), None);
            assert_eq!(EventBody::type_index_of(&format!("{name}x")), None);
        }
        for kind in ACTIVITY_KINDS {
            assert!(is_activity_kind(kind), "{kind}");
            assert!(!is_activity_kind(&kind.to_uppercase()), "{kind}");
            assert!(!is_activity_kind(&kind[1..]), "{kind}");
        }
        assert!(is_activity_kind("custom.webinar") && !is_activity_kind("custom.") && !is_activity_kind(""));
        for name in EventBody::TYPE_NAMES {
            assert!(!is_activity_kind(name), "{name}");
        }
    }

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
