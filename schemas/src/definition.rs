//! Definition documents (SPEC §3): journeys as authors write them, in YAML or JSON.
//!
//! It owns the document shapes and their reading from text. It is not the validator: checking references,
//! cycles and conditions, and compiling to an executable form, is `operators::journey`'s work. Reading is
//! lenient on purpose (nodes stay JSON values here) so that validation can report every problem at once.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Whether an account may enter a journey again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    /// Once per journey, ever.
    #[default]
    Never,
    /// Again after it exited.
    AfterExit,
}

/// A journey document, with its nodes still unparsed (see [`NodeDoc`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyDoc {
    /// Always `journey`.
    pub kind: String,
    /// The tenant that owns the journey.
    pub tenant: String,
    /// `[a-z0-9][a-z0-9-]{0,63}`.
    pub id: String,
    /// A higher version supersedes.
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
    pub nodes: BTreeMap<String, Value>,
}

/// One node as written. Exactly one of the kind fields must be present.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    /// An action: a map with one action kind and an optional `to`.
    pub action: Option<Value>,
    /// Ordered account paths.
    pub split_accounts: Option<Vec<PathDoc>>,
    /// Ordered people paths.
    pub split_people: Option<Vec<PathDoc>>,
    /// Where the rest go, for splits.
    pub otherwise: Option<String>,
    /// Closes a `split_people`.
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
    pub exit: Option<Value>,
    /// The next node (absent: exit).
    pub next: Option<String>,
}

/// One path of a split.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathDoc {
    /// A CEL condition.
    pub when: String,
    /// The node the path leads to.
    pub next: String,
}

/// What a `listen` waits for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenDoc {
    /// An activity kind by any person of the account.
    pub activity: Option<String>,
    /// Or an account event.
    pub account_event: Option<String>,
    /// An optional CEL condition over `event`.
    #[serde(rename = "where")]
    pub condition: Option<String>,
}

/// A wait: a duration (`2d`) or `{until: <RFC 3339>}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaitDoc {
    /// `30m`, `6h`, `2d`, `1w`.
    Duration(String),
    /// An instant.
    Until {
        /// RFC 3339.
        until: String,
    },
}

/// Reads a definition file's text into a JSON value: JSON when it parses as JSON, else YAML.
///
/// # Errors
/// The parser's message (with line and column) when the text is neither.
pub fn read_document(text: &str) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| e.to_string())
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

    #[test]
    fn wait_forms() {
        let d: WaitDoc = serde_json::from_value(serde_json::json!("2d")).expect("duration");
        assert!(matches!(d, WaitDoc::Duration(s) if s == "2d"));
        let u: WaitDoc = serde_json::from_value(serde_json::json!({"until": "2026-01-01T00:00:00Z"})).expect("until");
        assert!(matches!(u, WaitDoc::Until { .. }));
    }
}
