//! The input topic's contract as a JSON Schema (`schemas/json/input.schema.json`): one record per line or Kafka
//! value, discriminated by `type`.
//!
//! These types exist only to generate the schema that producers validate against; decoding does not use them
//! (it is strict and reports a typed reason, see the parent module). A test keeps the schema in step with the
//! types and checks that it accepts what decoding accepts in the bundled examples and refuses what decoding
//! rejects for a missing field or an unknown type.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

/// An id: a non-empty string without control characters (SPEC §7).
fn id(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "minLength": 1, "pattern": "^[^\\u0000-\\u001f\\u007f]+$"})
}

fn ts(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

fn activity_kind(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut kinds: Vec<Value> = super::ACTIVITY_KINDS.iter().map(|k| Value::from(*k)).collect();
    kinds.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    schemars::json_schema!({"anyOf": [{"enum": kinds}, {"type": "string", "pattern": "^custom\\..+$"}]})
}

/// One input record (SPEC §2). Unknown extra fields are allowed and ignored.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type")]
#[schemars(title = "Caravan input event")]
#[allow(dead_code)]
pub enum InputRecord {
    /// Creates or updates an account: a present key overwrites, `null` removes.
    #[serde(rename = "account.upserted")]
    AccountUpserted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The account.
        #[schemars(schema_with = "id")]
        account_id: String,
        /// Attributes: a present key overwrites, `null` removes.
        attributes: Map<String, Value>,
    },
    /// Deletes an account.
    #[serde(rename = "account.deleted")]
    AccountDeleted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The account.
        #[schemars(schema_with = "id")]
        account_id: String,
    },
    /// Creates or updates a person; `account_id` moves it (optional once known).
    #[serde(rename = "person.upserted")]
    PersonUpserted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The person.
        #[schemars(schema_with = "id")]
        person_id: String,
        /// The account (optional: routed through the person's known account).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "id")]
        account_id: Option<String>,
        /// Attributes: a present key overwrites, `null` removes.
        attributes: Map<String, Value>,
    },
    /// Deletes a person.
    #[serde(rename = "person.deleted")]
    PersonDeleted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The person.
        #[schemars(schema_with = "id")]
        person_id: String,
    },
    /// Creates or updates an opportunity of an account.
    #[serde(rename = "opportunity.upserted")]
    OpportunityUpserted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The opportunity.
        #[schemars(schema_with = "id")]
        opportunity_id: String,
        /// The account.
        #[schemars(schema_with = "id")]
        account_id: String,
        /// Attributes: a present key overwrites, `null` removes.
        attributes: Map<String, Value>,
    },
    /// Deletes an opportunity.
    #[serde(rename = "opportunity.deleted")]
    OpportunityDeleted {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The opportunity.
        #[schemars(schema_with = "id")]
        opportunity_id: String,
    },
    /// An account entered or left an audience.
    #[serde(rename = "account.audience")]
    AccountAudience {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The account.
        #[schemars(schema_with = "id")]
        account_id: String,
        /// The audience.
        #[schemars(schema_with = "id")]
        audience_id: String,
        /// `entered` or `exited`.
        status: super::AudienceStatus,
    },
    /// An activity of a person.
    #[serde(rename = "person.activity")]
    PersonActivity {
        /// `tenant`, `event_id`, `ts`.
        #[serde(flatten)]
        envelope: Envelope,
        /// The person.
        #[schemars(schema_with = "id")]
        person_id: String,
        /// The account (optional: routed through the person's known account).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "id")]
        account_id: Option<String>,
        /// The activity kind (SPEC §2), or `custom.<name>`.
        #[schemars(schema_with = "activity_kind")]
        activity: String,
        /// Properties of the activity (absent: `{}`).
        #[serde(default)]
        properties: Map<String, Value>,
    },
}

/// The fields every record carries besides `type`.
#[derive(Serialize, JsonSchema)]
pub struct Envelope {
    /// The tenant.
    #[schemars(schema_with = "id")]
    pub tenant: String,
    /// Unique within the tenant; a repeated id is a duplicate, dropped and counted.
    #[schemars(schema_with = "id")]
    pub event_id: String,
    /// Event time, strict RFC 3339.
    #[schemars(schema_with = "ts")]
    pub ts: String,
}

/// The JSON Schema of input records.
pub fn input_schema() -> Value {
    schemars::schema_for!(InputRecord).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{DecodeLimits, RejectReason, decode};

    #[test]
    fn input_schema_is_current_and_agrees_with_decoding() {
        let root = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        );
        let schema = input_schema();
        crate::assert_schema_file_current("input", &schema);
        let v = jsonschema::options().should_validate_formats(true).build(&schema).expect("compiles");
        let events = std::fs::read_to_string(root.join("../ops/examples/events.ndjson")).expect("examples");
        let mut checked = 0;
        for line in events.lines() {
            let Ok(value) = serde_json::from_str::<Value>(line) else { continue };
            match decode(line.as_bytes(), &DecodeLimits::default()) {
                Ok(_) => {
                    let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
                    assert!(errors.is_empty(), "{line}: {errors:?}");
                    checked += 1;
                }
                Err(r) if matches!(r.reason, RejectReason::MissingField | RejectReason::UnknownType) => {
                    assert!(!v.is_valid(&value), "{line}");
                }
                Err(_) => {}
            }
        }
        assert!(checked > 30, "the examples were checked: {checked}");
        for bad in [
            r#"{"tenant":"t","type":"person.activity","event_id":"e","ts":"2026-01-01T00:00:00Z","person_id":"p","activity":"email.read"}"#,
            r#"{"tenant":"t","type":"account.deleted","event_id":"","ts":"2026-01-01T00:00:00Z","account_id":"a"}"#,
            r#"{"tenant":"t","type":"account.audience","event_id":"e","ts":"2026-01-01T00:00:00Z","account_id":"a","audience_id":"x","status":"maybe"}"#,
            r#"{"tenant":"t","type":"account.upserted","event_id":"e","ts":"yesterday","account_id":"a","attributes":{}}"#,
        ] {
            let value: Value = serde_json::from_str(bad).expect("json");
            assert!(!v.is_valid(&value), "{bad}");
            assert!(decode(bad.as_bytes(), &DecodeLimits::default()).is_err(), "{bad}");
        }
        let custom = r#"{"tenant":"t","type":"person.activity","event_id":"e","ts":"2026-01-01T00:00:00Z","person_id":"p","activity":"custom.demo_booked","x":1}"#;
        assert!(v.is_valid(&serde_json::from_str::<Value>(custom).expect("json")), "custom kinds and extra fields");
    }
}
