//! Caravan's record formats: input events, definition documents, output records and stored state shapes.
//!
//! It is not: a parser of files, a sink, or storage. It does no I/O; everything here is a type, a codec or a
//! pure check over one record. Every other crate depends on it, and it depends on none of them.
//!
//! - [`input`]: the events of SPEC §2 and their strict decoding, with the rejection reasons of SPEC §4.
//! - [`output`]: actions, change events and rejected records.
//! - [`definition`]: journey documents as written.
//! - [`state`]: the stored shape of account state, with a versioned binary codec.
//! - [`time`]: event time, strict RFC 3339 and durations.
//! - [`json`]: strict JSON reading and JSON-value equality.
//! - [`attrs`]: the compact attribute map of stored entities.
//! - [`SchemaError`]: why a text is not a definition document, a timestamp or a duration.
//!
//! ```
//! use caravan_schemas::input::{decode, DecodeLimits};
//! let e = decode(br#"{"tenant":"t","type":"person.deleted","event_id":"e","ts":"2026-01-01T00:00:00Z","person_id":"p"}"#,
//!                &DecodeLimits::default()).unwrap();
//! assert_eq!(e.body.person_id(), Some("p"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod attrs;
pub mod definition;
mod error;
pub mod input;
pub mod json;
pub mod output;
pub mod state;
mod swar;
pub mod time;
pub mod xdm;

pub use error::{Result, SchemaError};

/// Asserts that `schemas/json/<name>.schema.json` holds exactly the schema the types generate; with
/// `CARAVAN_UPDATE_SCHEMAS` set, writes it first (`CARAVAN_UPDATE_SCHEMAS=1 cargo test --release -p caravan-schemas`).
#[cfg(test)]
pub(crate) fn assert_schema_file_current(name: &str, schema: &serde_json::Value) {
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("json");
    let path = dir.join(format!("{name}.schema.json"));
    let text = serde_json::to_string_pretty(schema).expect("serializes") + "\n";
    if std::env::var_os("CARAVAN_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(&path, &text).expect("write");
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(stored, text, "{} is stale: regenerate it (CARAVAN_UPDATE_SCHEMAS=1)", path.display());
    assert!(jsonschema::meta::is_valid(schema), "{name} is a valid JSON Schema");
}

/// An identifier or short name (tenant, event, account, person, attribute key): stored inline up to 24
/// bytes, so the ids of a typical event cost no heap allocation.
pub type Id = compact_str::CompactString;

/// Whether two ids are equal, comparing their lengths and last bytes before the rest: ids of one kind
/// tend to share their length and a long prefix (`p012443-1`, `p012443-2`), so most unequal pairs are told
/// apart without a call to `memcmp`. The hot paths search people of an account this way.
#[inline]
pub fn same_id(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().last() == b.as_bytes().last() && a == b
}
