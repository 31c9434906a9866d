//! Definition documents (SPEC §3): journeys as authors write them, in YAML or JSON.
//!
//! It owns the document shapes and their reading from text. It is not the validator: checking references,
//! cycles and conditions, and compiling to an executable form, is `operators::journey`'s work. Reading is
//! lenient on purpose (nodes stay JSON values here) so that validation can report every problem at once.

use crate::SchemaError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The JSON Schema of journey documents (`schemas/json/journey.schema.json`): what editors and CI check a
/// document against before `caravan validate` applies the rules a schema cannot say (targets, cycles, CEL).
pub fn journey_schema() -> Value {
    schemars::schema_for!(JourneyDoc).to_value()
}

/// The JSON Schema of buying group template documents (`schemas/json/buying_group_template.schema.json`).
pub fn template_schema() -> Value {
    schemars::schema_for!(TemplateDoc).to_value()
}

/// Whether an account may enter a journey again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    /// Once per journey, ever.
    #[default]
    Never,
    /// Again after it exited.
    AfterExit,
}

/// A journey document, with its nodes still unparsed (see [`NodeDoc`]).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Caravan journey")]
pub struct JourneyDoc {
    /// Always `journey`.
    #[schemars(schema_with = "journey_kind")]
    pub kind: String,
    /// The tenant that owns the journey.
    #[schemars(length(min = 1))]
    pub tenant: String,
    /// `[a-z0-9][a-z0-9-]{0,63}`.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9-]{0,63}$"))]
    pub id: String,
    /// A higher version supersedes.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// Accounts enter when they enter this audience.
    pub audience: String,
    /// `never` (default) or `after_exit`.
    #[serde(default)]
    pub reentry: Reentry,
    /// End the instance when the account leaves the audience.
    #[serde(default)]
    pub exit_on_audience_exit: bool,
    /// The first node.
    pub start: String,
    /// The nodes by id.
    #[schemars(with = "BTreeMap<String, NodeDoc>")]
    pub nodes: BTreeMap<String, Value>,
}

fn journey_kind(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"const": "journey"})
}

/// One node as written. Exactly one of the kind fields must be present.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    /// An action: a map with one action kind and an optional `to`.
    #[schemars(with = "Option<ActionDoc>")]
    pub action: Option<Value>,
    /// Ordered account paths.
    pub split_accounts: Option<Vec<PathDoc>>,
    /// Ordered people paths.
    pub split_people: Option<Vec<PathDoc>>,
    /// Where the rest go, for splits.
    pub otherwise: Option<String>,
    /// Closes a `split_people`.
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    pub merge: Option<Value>,
    /// Waits for an event.
    pub listen: Option<ListenDoc>,
    /// How long a `listen` waits.
    pub timeout: Option<String>,
    /// Where a `listen` goes on timeout (absent: exit).
    pub on_timeout: Option<String>,
    /// Waits for a duration or until an instant.
    pub wait: Option<WaitDoc>,
    /// The account leaves the journey.
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    pub exit: Option<Value>,
    /// The next node (absent: exit).
    pub next: Option<String>,
}

/// An action as written: exactly one action kind, and for person actions an optional `to`. Only documents
/// the shape (the engine reads actions leniently to report every problem with its path).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionDoc {
    /// Which people of the account a person action goes to (default: all).
    pub to: Option<TargetDoc>,
    /// Email an asset.
    pub send_email: Option<AssetParams>,
    /// Send a text message.
    pub send_sms: Option<AssetParams>,
    /// Set a person attribute (`null` removes it).
    pub set_person_attribute: Option<FieldValueParams>,
    /// Add `by` to a numeric person attribute (missing or non-numeric starts from 0).
    pub change_person_score: Option<ScoreParams>,
    /// Put the person on a list.
    pub add_to_list: Option<ListParams>,
    /// Take the person off a list.
    pub remove_from_list: Option<ListParams>,
    /// Set an account attribute (`null` removes it).
    pub set_account_attribute: Option<FieldValueParams>,
    /// Alert someone about the account.
    pub send_alert: Option<AlertParams>,
    /// Put the account on a list.
    pub add_account_to_list: Option<ListParams>,
    /// Take the account off a list.
    pub remove_account_from_list: Option<ListParams>,
    /// Move a buying group to a stage.
    pub set_buying_group_stage: Option<StageParams>,
    /// Re-evaluate a buying group now.
    pub reassess_buying_group: Option<SolutionParams>,
}

/// `to`: people selected by buying-group role or by a condition.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetDoc {
    /// A buying-group role (with `solution`).
    pub role: Option<String>,
    /// The solution interest of the buying group (with `role`).
    pub solution: Option<String>,
    /// A CEL person condition.
    #[serde(rename = "where")]
    pub condition: Option<String>,
}

/// `{asset}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetParams {
    /// The asset to send.
    pub asset: String,
}

/// `{field, value}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldValueParams {
    /// The attribute.
    pub field: String,
    /// Its new value; `null` removes it.
    pub value: Value,
}

/// `{field, by}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// The numeric attribute.
    pub field: String,
    /// How much to add (negative subtracts).
    pub by: f64,
}

/// `{list}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// The list.
    pub list: String,
}

/// `{to, template}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertParams {
    /// Who is alerted (e.g. `account_owner`).
    pub to: Option<String>,
    /// The alert template.
    pub template: String,
}

/// `{solution, stage}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageParams {
    /// The solution interest.
    pub solution: String,
    /// The stage.
    pub stage: String,
}

/// `{solution}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SolutionParams {
    /// The solution interest.
    pub solution: String,
}

/// A buying group template document (SPEC §3.3): the roles of a buying group for one solution interest, how
/// engagement is counted, and the stages a group moves through.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Caravan buying group template")]
pub struct TemplateDoc {
    /// Always `buying_group_template`.
    pub kind: String,
    /// The tenant that owns the template.
    #[schemars(length(min = 1))]
    pub tenant: String,
    /// `[a-z0-9][a-z0-9-]{0,63}`.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9-]{0,63}$"))]
    pub id: String,
    /// A higher version supersedes (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub version: u32,
    /// The solution interest: one template per tenant and solution interest.
    #[schemars(length(min = 1))]
    pub solution_interest: String,
    /// Ordered roles: a person takes the first whose condition holds.
    pub roles: Vec<RoleDoc>,
    /// How engagement is counted.
    pub engagement: EngagementDoc,
    /// Ordered stages; the first is the initial stage.
    pub stages: Vec<StageDoc>,
}

fn one() -> u32 {
    1
}

/// One role of a template.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDoc {
    /// The role's name.
    pub role: String,
    /// A CEL person condition.
    pub when: String,
    /// Whether completeness counts it.
    #[serde(default)]
    pub required: bool,
}

/// Engagement: the weighted count of members' activities inside the window.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngagementDoc {
    /// The window (`30d`).
    pub window: String,
    /// Weight per activity kind.
    pub weights: BTreeMap<String, f64>,
}

/// One stage of a template.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageDoc {
    /// The stage's name.
    pub stage: String,
    /// A CEL condition over `buying_group` (and the account); absent: always holds.
    pub when: Option<String>,
}

/// One path of a split.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathDoc {
    /// A CEL condition.
    pub when: String,
    /// The node the path leads to.
    pub next: String,
}

/// What a `listen` waits for.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenDoc {
    /// An activity kind by any person of the account.
    pub activity: Option<String>,
    /// Or an account event: `audience.exited`, `opportunity.changed`, `buying_group.stage_changed`.
    #[serde(default)]
    #[schemars(schema_with = "account_event_names")]
    pub account_event: Option<String>,
    /// An optional CEL condition over `event`.
    #[serde(rename = "where")]
    pub condition: Option<String>,
}

/// The account events a `listen` can wait for.
pub const ACCOUNT_EVENTS: [&str; 3] = ["audience.exited", "opportunity.changed", "buying_group.stage_changed"];

fn account_event_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["string", "null"], "enum": ["audience.exited", "opportunity.changed", "buying_group.stage_changed", null]})
}

/// A wait: a duration (`2d`) or `{until: <RFC 3339>}`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WaitDoc {
    /// `30m`, `6h`, `2d`, `1w`.
    Duration(#[schemars(pattern(r"^[0-9]+[smhdw]$"))] String),
    /// An instant.
    Until {
        /// RFC 3339.
        #[schemars(extend("format" = "date-time"))]
        until: String,
    },
}

/// Reads a definition file's text into a JSON value: JSON when it parses as JSON, else YAML.
///
/// # Errors
/// [`SchemaError::Document`] with the parser's message (with line and column) when the text is neither.
pub fn read_document(text: &str) -> Result<Value, SchemaError> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| SchemaError::Document(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_and_json() {
        let y = read_document("kind: journey\nversion: 2\nnodes: {a: {exit: {}}}\n").expect("yaml");
        assert_eq!(y["version"], 2);
        let j = read_document(r#"{"kind":"journey","nodes":{}}"#).expect("json");
        assert_eq!(j["kind"], "journey");
        assert!(read_document("a: [").is_err());
    }

    /// The checked-in schema (`schemas/json/journey.schema.json`) is the one the types generate; every
    /// bundled journey validates against it and a broken one does not. Regenerate with
    /// `CARAVAN_UPDATE_SCHEMAS=1 cargo test --release -p caravan-schemas`.
    #[test]
    fn journey_schema_is_current_and_accepts_the_bundled_journeys() {
        let root = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        );
        let schema = journey_schema();
        crate::assert_schema_file_current("journey", &schema);
        let v = jsonschema::validator_for(&schema).expect("compiles");
        let mut files = vec![root.join("../benches/b2b-journey-v1/journey.yaml")];
        for dir in ["../ops/examples/journeys"] {
            for e in std::fs::read_dir(root.join(dir)).expect("examples exist") {
                files.push(e.expect("entry").path());
            }
        }
        let templates = jsonschema::validator_for(&template_schema()).expect("compiles");
        for f in &files {
            let doc = read_document(&std::fs::read_to_string(f).expect("reads")).expect("parses");
            let v = if doc["kind"] == "buying_group_template" { &templates } else { &v };
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", f.display());
        }
        let bad = read_document("kind: journey\ntenant: t\nid: Bad\nversion: 0\naudience: a\nstart: s\nnodes: {s: {action: {send_email: {}}, colour: red}}\n").expect("parses");
        let errors: Vec<String> = v.iter_errors(&bad).map(|e| e.instance_path().to_string()).collect();
        for want in ["/id", "/version", "/nodes/s", "/nodes/s/action"] {
            assert!(errors.iter().any(|e| e == want), "missing {want} in {errors:?}");
        }
    }

    #[test]
    fn template_schema_is_current() {
        let schema = template_schema();
        crate::assert_schema_file_current("buying_group_template", &schema);
        let v = jsonschema::validator_for(&schema).expect("compiles");
        let good = read_document("kind: buying_group_template\ntenant: t\nid: bg\nsolution_interest: s\nroles: [{role: r, when: 'true', required: true}]\nengagement: {window: 30d, weights: {email.opened: 1}}\nstages: [{stage: a}, {stage: b, when: 'buying_group.engagement > 1'}]\n").expect("parses");
        assert!(v.is_valid(&good));
        let bad = read_document(
            "kind: buying_group_template\ntenant: t\nid: bg\nsolution_interest: s\nroles: []\nstages: []\n",
        )
        .expect("parses");
        assert!(!v.is_valid(&bad), "engagement is required");
    }

    #[test]
    fn wait_forms() {
        let d: WaitDoc = serde_json::from_value(serde_json::json!("2d")).expect("duration");
        assert!(matches!(d, WaitDoc::Duration(s) if s == "2d"));
        let u: WaitDoc = serde_json::from_value(serde_json::json!({"until": "2026-01-01T00:00:00Z"})).expect("until");
        assert!(matches!(u, WaitDoc::Until { .. }));
    }
}
