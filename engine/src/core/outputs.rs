//! Output records on their way to a sink: serialized once, with the account that keys them.
//!
//! Replay appends them to NDJSON files, Kafka mode produces them to topics keyed by account; both get them in
//! this one form, so the two modes emit the same bytes. It never decides where a record goes beyond its kind.

use crate::telemetry::Tally;
use caravan_operators::account::Effects;
use caravan_schemas::Id;

/// Which output stream a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutKind {
    Action,
    Change,
    Rejected,
}

/// One serialized output record.
pub(crate) struct OutRecord {
    pub(crate) kind: OutKind,
    /// The account it is about (the Kafka key); none for rejected records.
    pub(crate) key: Option<Id>,
    pub(crate) json: Vec<u8>,
}

/// Serializes a step's actions and change events (drained from `effects`) onto `out`, counting them.
pub(crate) fn take(effects: &mut Effects, out: &mut Vec<OutRecord>, tally: &mut Tally) {
    for a in effects.actions.drain(..) {
        let mut json = Vec::with_capacity(320);
        a.write_json(&mut json);
        tally.action(&a);
        out.push(OutRecord { kind: OutKind::Action, key: Some(a.account_id), json });
    }
    for c in effects.changes.drain(..) {
        let mut json = Vec::with_capacity(320);
        c.write_json(&mut json);
        tally.change(&c);
        out.push(OutRecord { kind: OutKind::Change, key: Some(c.account_id), json });
    }
}
