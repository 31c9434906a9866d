//! Output records (SPEC §4): actions, change events and rejected records, as written to files and topics.
//!
//! It owns the field names and JSON shapes of everything Caravan emits. It is not a sink: it never writes.
//! Serialization is deterministic: maps are ordered by key, optional fields are left out when absent.

use crate::Id;
use crate::attrs::Attrs;
use crate::input::RejectReason;
use crate::time::TimestampText;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) mod ndjson;

fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object"})
}

/// The JSON Schemas of the output records, by file stem: `action`, `change`, `rejected`.
pub fn output_schemas() -> [(&'static str, Value); 3] {
    let to_value = |s: schemars::Schema| s.to_value();
    [
        ("action", to_value(schemars::schema_for!(ActionRecord))),
        ("change", to_value(schemars::schema_for!(ChangeEvent))),
        ("rejected", to_value(schemars::schema_for!(RejectedRecord))),
    ]
}

/// One action to carry out (topic `caravan.actions`, `actions.ndjson`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// The tenant.
    #[schemars(with = "String")]
    pub tenant: Id,
    /// Deterministic id: journey, version, account, node, person, instance number.
    pub action_id: String,
    /// The action kind, e.g. `send_email`.
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: Id,
    /// The action's parameters as written in the journey (without `to`).
    #[schemars(schema_with = "object_schema")]
    pub params: Value,
    /// The journey that ran the action.
    #[schemars(with = "String")]
    pub journey_id: Id,
    /// Its version.
    pub journey_version: u32,
    /// The node that ran the action.
    #[schemars(with = "String")]
    pub node_id: Id,
    /// The account.
    #[schemars(with = "String")]
    pub account_id: Id,
    /// The targeted person, for person actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub person_id: Option<Id>,
    /// Event time of the cause.
    pub ts: TimestampText,
    /// The input record that caused it (for timers: the record after which the timer fired).
    #[schemars(with = "String")]
    pub cause_event_id: Id,
}

/// The entity a change event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// An account.
    Account,
    /// A person.
    Person,
    /// An opportunity.
    Opportunity,
}

impl Entity {
    /// The entity as change events and metric labels write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Account => "account",
            Entity::Person => "person",
            Entity::Opportunity => "opportunity",
        }
    }
}

/// What happened to the entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// First upsert (or first after a delete).
    Create,
    /// Some attributes changed.
    Update,
    /// The entity was deleted.
    Delete,
}

impl ChangeOp {
    /// The op as change events write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "create",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }
}

/// What caused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The input record touched the entity.
    Input,
    /// A journey action changed it.
    Action,
}

impl Origin {
    /// The origin as change events write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Input => "input",
            Origin::Action => "action",
        }
    }
}

/// One net change of an account, person or opportunity (topic `caravan.changes`, `changes.ndjson`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent {
    /// The tenant.
    #[schemars(with = "String")]
    pub tenant: Id,
    /// Deterministic id: entity kind, entity id and version.
    pub change_id: String,
    /// The entity kind.
    pub entity: Entity,
    /// The entity's id.
    #[schemars(with = "String")]
    pub entity_id: Id,
    /// The account the entity belongs to (after the change).
    #[schemars(with = "String")]
    pub account_id: Id,
    /// Create, update or delete.
    pub op: ChangeOp,
    /// The changed fields before (`{}` for a create).
    #[serde(serialize_with = "crate::attrs::serialize_as_object")]
    #[schemars(with = "Map<String, Value>")]
    pub before: Attrs,
    /// The changed fields after (`{}` for a delete).
    #[serde(serialize_with = "crate::attrs::serialize_as_object")]
    #[schemars(with = "Map<String, Value>")]
    pub after: Attrs,
    /// Per-entity version: 1, 2, 3, ... without gaps.
    #[schemars(range(min = 1))]
    pub version: u64,
    /// Event time of the cause.
    pub ts: TimestampText,
    /// Input or action.
    pub origin: Origin,
    /// The cause's input record.
    #[schemars(with = "String")]
    pub cause_event_id: Id,
    /// The journey whose action caused it (origin `action`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub journey_id: Option<Id>,
    /// The node whose action caused it (origin `action`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub node_id: Option<Id>,
}

/// Where a rejected record came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum SourcePosition {
    /// A line of a file (1-based); `-` for standard input.
    File {
        /// The file path as given.
        file: String,
        /// 1-based line number.
        #[schemars(range(min = 1))]
        line: u64,
    },
    /// A Kafka record.
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
}

/// A record that was not applied (topic `caravan.rejected`, `rejected.ndjson`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedRecord {
    /// The reason.
    pub reason: RejectReason,
    /// What is wrong, in words.
    pub detail: String,
    /// The raw record, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The raw record in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// Where it came from.
    pub source: SourcePosition,
}

impl RejectedRecord {
    /// Builds a rejected record, keeping the raw bytes as text or, when they are not UTF-8, as base64.
    pub fn new(reason: RejectReason, detail: String, raw: &[u8], source: SourcePosition) -> RejectedRecord {
        use base64::Engine as _;
        let (raw, raw_base64) = match std::str::from_utf8(raw) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(raw))),
        };
        RejectedRecord { reason, detail, raw, raw_base64, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in schemas (`schemas/json/`) are the ones the types generate. Regenerate with
    /// `CARAVAN_UPDATE_SCHEMAS=1 cargo test --release -p caravan-schemas`.
    #[test]
    fn checked_in_schemas_match_the_types() {
        for (name, schema) in output_schemas() {
            crate::assert_schema_file_current(name, &schema);
        }
    }

    #[test]
    fn records_validate_against_their_schemas_and_bad_ones_do_not() {
        let [(_, action), (_, change), (_, rejected)] = output_schemas();
        let rec = RejectedRecord::new(
            RejectReason::TooLarge,
            "x".into(),
            b"{}",
            SourcePosition::File { file: "f".into(), line: 1 },
        );
        let v = jsonschema::validator_for(&rejected).expect("compiles");
        assert!(v.is_valid(&serde_json::to_value(&rec).expect("serializes")));
        assert!(!v.is_valid(
            &serde_json::json!({"reason": "bad_reason", "detail": "x", "raw": "", "source": {"file": "f", "line": 1}})
        ));
        let v = jsonschema::validator_for(&action).expect("compiles");
        assert!(!v.is_valid(&serde_json::json!({"tenant": "t"})));
        let v = jsonschema::validator_for(&change).expect("compiles");
        assert!(!v.is_valid(&serde_json::json!({"entity": "buying_group"})));
    }

    #[test]
    fn rejected_keeps_raw_as_text_or_base64() {
        let src = SourcePosition::File { file: "in.ndjson".into(), line: 3 };
        let r = RejectedRecord::new(RejectReason::MalformedJson, "x".into(), b"{bad", src.clone());
        let text = serde_json::to_string(&r).expect("serializes");
        assert_eq!(
            text,
            r#"{"reason":"malformed_json","detail":"x","raw":"{bad","source":{"file":"in.ndjson","line":3}}"#
        );
        let r = RejectedRecord::new(RejectReason::MalformedJson, "x".into(), b"\xff\xfe", src);
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(v["raw_base64"], "//4=");
        assert!(v.get("raw").is_none());
    }
}
