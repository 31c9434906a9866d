//! Decoding one input record, the same way in both modes: a file line (replay) or a Kafka record's value
//! (service) becomes a valid event with the hashes routing needs, a rejection with its reason, or a blank.
//!
//! It owns what the edge checks beyond a record's own form (size and time bounds, the tenant registry, the
//! XDM source) and which hashes are computed where the record is decoded, in parallel. It never looks at
//! state: de-duplication and routing come after it.

use super::keys;
use caravan_schemas::input::{DecodeLimits, InputEvent, RejectReason, Rejection, decode};

/// One decoded line.
pub(crate) enum Parsed {
    /// An empty or all-whitespace line: skipped, not rejected.
    Blank,
    /// A valid event.
    Event(Decoded),
    /// A bad record, with its raw bytes.
    Rejected(Rejection, Vec<u8>),
}

/// A valid event with the hashes the router needs, computed here, in parallel.
pub(crate) struct Decoded {
    pub(crate) event: InputEvent,
    /// [`keys::event_hash`] of its tenant and event id.
    pub(crate) dedup: u128,
    /// [`keys::account_key`] of the account the event names, if it names one.
    pub(crate) named_account: Option<u64>,
    /// Its raw bytes when routing may still reject it (a person event without `account_id`).
    pub(crate) raw: Option<Vec<u8>>,
}

/// What the edge checks beyond a record's own form: size and time bounds, and the tenant registry.
#[derive(Clone, Debug, Default)]
pub(crate) struct EdgeRules {
    pub(crate) limits: DecodeLimits,
    /// Registered tenants; empty accepts every tenant.
    pub(crate) tenants: std::sync::Arc<Vec<String>>,
    /// XDM input, all of this tenant; none: native events.
    pub(crate) xdm_tenant: Option<caravan_schemas::Id>,
}

/// Decodes one record: a line without its newline, or a Kafka record's value.
pub(crate) fn decode_record(raw: &[u8], rules: &EdgeRules) -> Parsed {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Parsed::Blank;
    }
    let decoded = match &rules.xdm_tenant {
        Some(tenant) => caravan_schemas::xdm::decode(raw, tenant, &rules.limits),
        None => decode(raw, &rules.limits),
    };
    match decoded {
        Ok(event) if !rules.tenants.is_empty() && !rules.tenants.iter().any(|t| t == event.tenant.as_str()) => {
            let detail = format!("tenant `{}` is not in the tenant registry", event.tenant);
            Parsed::Rejected(Rejection { reason: RejectReason::UnknownTenant, detail }, raw.to_vec())
        }
        Ok(event) => {
            let named = event.body.account_id();
            let may_be_unroutable = named.is_none() && event.body.person_id().is_some();
            Parsed::Event(Decoded {
                dedup: keys::event_hash(&event.tenant, &event.event_id),
                named_account: named.map(|a| keys::account_key(&event.tenant, a)),
                raw: may_be_unroutable.then(|| raw.to_vec()),
                event,
            })
        }
        Err(r) => Parsed::Rejected(r, raw.to_vec()),
    }
}
