//! Where an input event goes: the account it applies to, the person or opportunity index entry it writes, and
//! whether it moves a person or an opportunity away from another account.
//!
//! Pure decisions over one event and what the index knew: [`super::admit`] looks the index up and the drivers
//! act on the answer (the replay router across its workers, a Kafka partition task within itself or through
//! the person stage), so both modes route every event the same way. It never reads state itself.

use caravan_schemas::Id;
use caravan_schemas::input::{EventBody, InputEvent};
use caravan_schemas::output::Entity;
use caravan_schemas::state::IndexRecord;

/// The index entry an event reads and may write, if any: persons and opportunities are indexed
/// (tenant | id -> account). An activity that names its account needs no index (it routes without moving
/// the person).
pub(crate) fn indexed(event: &InputEvent) -> Option<(Entity, &str)> {
    match &event.body {
        EventBody::PersonActivity { account_id: Some(_), .. } => None,
        EventBody::PersonUpserted { person_id, .. }
        | EventBody::PersonDeleted { person_id }
        | EventBody::PersonActivity { person_id, .. } => Some((Entity::Person, person_id)),
        EventBody::OpportunityUpserted { opportunity_id, .. } | EventBody::OpportunityDeleted { opportunity_id } => {
            Some((Entity::Opportunity, opportunity_id))
        }
        _ => None,
    }
}

/// The routing of one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The account it applies to; `None` for an applied no-op (deleting an unknown entity).
    pub(crate) account: Option<Id>,
    /// The index entry to write.
    pub(crate) index_update: Option<IndexRecord>,
    /// A person event with no account named or known: rejected as `unknown_person_account`.
    pub(crate) unroutable: bool,
    /// The account the entity's record (alive, or its tombstone) lives in when this event moves it elsewhere:
    /// detach it there first.
    pub(crate) moving_from: Option<Id>,
}

/// Routes an event given its index entry as known before it (`None`: not indexed, or never seen).
pub(crate) fn route(event: &InputEvent, known: Option<&IndexRecord>) -> Route {
    let known_account = known.filter(|k| k.present).map(|k| k.account_id.clone());
    let (account, index_update): (Option<Id>, Option<IndexRecord>) = match &event.body {
        EventBody::PersonUpserted { account_id, .. } => {
            let target = account_id.clone().or(known_account);
            let update = target.as_ref().map(|t| IndexRecord { account_id: t.clone(), present: true });
            (target, update)
        }
        EventBody::OpportunityUpserted { account_id, .. } => {
            (Some(account_id.clone()), Some(IndexRecord { account_id: account_id.clone(), present: true }))
        }
        // Deleting an unknown (or already deleted) entity is a no-op, but an applied one.
        EventBody::PersonDeleted { .. } | EventBody::OpportunityDeleted { .. } => {
            let update = known_account.as_ref().map(|a| IndexRecord { account_id: a.clone(), present: false });
            (known_account, update)
        }
        EventBody::PersonActivity { account_id, .. } => (account_id.clone().or(known_account), None),
        other => (other.account_id().map(Id::from), None),
    };
    let needs_account = matches!(&event.body, EventBody::PersonUpserted { .. } | EventBody::PersonActivity { .. });
    let moving_from = match (&index_update, known) {
        (Some(u), Some(k)) if u.present && k.account_id != u.account_id => Some(k.account_id.clone()),
        _ => None,
    };
    Route { unroutable: account.is_none() && needs_account, account, index_update, moving_from }
}

/// The `detail` of an `unknown_person_account` rejection (`waited`: after waiting at the person stage).
pub(crate) fn unknown_person_detail(person: &str, waited: bool) -> String {
    let waited = if waited { " (none became known while it waited)" } else { "" };
    format!("person `{person}` has no known account and the event names none{waited}")
}
