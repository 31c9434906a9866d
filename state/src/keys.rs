//! Keys of the state: the column families' numbers (also the changelog's wire format: a changelog record's
//! key is the family's number, then the state key), how each family's keys are built, and reading the parts
//! of a key back.
//!
//! Ids never hold control characters (decoding refuses them), so `\0` separates key parts unambiguously and
//! one prefix scan lists an account's people. It never changes a number or a key's form for an existing
//! state: stores and changelogs written before hold them.

use crate::{Result, StateError};
use caravan_schemas::output::Entity;
use caravan_schemas::state::CodecError;

pub(crate) fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

pub(crate) fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

pub(crate) fn timer_key(tenant: &str, account: &str, journey: &str, instance: u32, slot: u32) -> Vec<u8> {
    let mut k = key3(tenant, account, journey);
    k.push(0);
    k.extend_from_slice(&instance.to_be_bytes());
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// What a key of the `definitions` family holds, named by its first part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DefinitionKind {
    /// `journey` tenant `\0` id `\0` version (u32 BE): a published journey version's document.
    Journey,
    /// `template` tenant `\0` id `\0` version (u32 BE): a published buying group template's document.
    Template,
    /// `stop` tenant `\0` journey: the newest version a stop applies to.
    Stop,
}

impl DefinitionKind {
    /// The key's first part as written now.
    fn prefix(self) -> &'static str {
        match self {
            DefinitionKind::Journey => "journey",
            DefinitionKind::Template => "template",
            DefinitionKind::Stop => "stop",
        }
    }

    /// The kind a key's first part names: the descriptive name, or the single letter stores written before
    /// it hold (`j`, `b`, `s`), which are still read.
    pub(crate) fn of(prefix: &[u8]) -> Option<DefinitionKind> {
        match prefix {
            b"journey" | b"j" => Some(DefinitionKind::Journey),
            b"template" | b"b" => Some(DefinitionKind::Template),
            b"stop" | b"s" => Some(DefinitionKind::Stop),
            _ => None,
        }
    }
}

/// The key of a published journey or template version.
pub(crate) fn definition_key(kind: DefinitionKind, tenant: &str, id: &str, version: u32) -> Vec<u8> {
    let mut k = key3(kind.prefix(), tenant, id);
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The key of a journey's stop.
pub(crate) fn stop_key(tenant: &str, id: &str) -> Vec<u8> {
    key3(DefinitionKind::Stop.prefix(), tenant, id)
}

pub(crate) const ACCOUNTS: usize = 0;
pub(crate) const PERSONS: usize = 1;
pub(crate) const PERSON_INDEX: usize = 2;
pub(crate) const TIMERS: usize = 3;
pub(crate) const DEDUP: usize = 4;
pub(crate) const META: usize = 5;
pub(crate) const DEFINITIONS: usize = 8;
/// `meta` key of the changelog offset a store reflects (never itself on the changelog).
pub(crate) const LOCAL_CHANGELOG_NEXT: &[u8] = b"local.changelog_next";
pub(crate) const OPPORTUNITIES: usize = 6;
pub(crate) const OPPORTUNITY_INDEX: usize = 7;
pub(crate) const ROUTES: usize = 9;
pub(crate) const PARKED: usize = 10;
pub(crate) const HELD: usize = 11;

/// tenant `\0` entity `\0` id: a route (the entity as change events name it).
pub(crate) fn route_key(tenant: &str, entity: Entity, id: &str) -> Vec<u8> {
    key3(tenant, entity.as_str(), id)
}

pub(crate) fn parked_key(tenant: &str, entity: Entity, id: &str, seq: u64) -> Vec<u8> {
    let mut k = route_key(tenant, entity, id);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn held_key(tenant: &str, account: &str, seq: u64) -> Vec<u8> {
    let mut k = key2(tenant, account);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn escape(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "|")
}

pub(crate) fn bad_key(key: &[u8], what: &str) -> StateError {
    StateError::Codec { key: escape(key), source: CodecError::Corrupt(format!("bad {what} key")) }
}

/// The text parts and the trailing sequence number (u64 big-endian) of a key `part \0 ... part \0 seq`.
pub(crate) fn sequenced_key<const N: usize>(key: &[u8], what: &str) -> Result<([String; N], u64)> {
    let corrupt = || bad_key(key, what);
    let (head, seq) = key.split_at(key.len().checked_sub(8).ok_or_else(corrupt)?);
    let head = head.strip_suffix(&[0]).ok_or_else(corrupt)?;
    let mut parts = head.splitn(N, |b| *b == 0);
    let mut texts: [String; N] = std::array::from_fn(|_| String::new());
    for text in &mut texts {
        let part = parts.next().ok_or_else(corrupt)?;
        *text = String::from_utf8(part.to_vec()).map_err(|_| corrupt())?;
    }
    Ok((texts, u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?)))
}
