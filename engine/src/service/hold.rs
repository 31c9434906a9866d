//! Records held at an account while a claim of that account waits for the person stage (Kafka mode, with
//! several input partitions).
//!
//! A partition that is about to bring a person or an opportunity it does not hold to one of its accounts
//! (its first upsert there, or a move from an account of another partition) *claims* it first: the stage
//! asks whoever holds it to give its record up, and the answer carries the record over, so that its
//! versions, attributes, lists and history go on (SPEC §5.8). Until the answer comes, the claiming record and
//! every later record of that account wait here, in the order read, and so does every later record about the
//! claimed entity; then they apply in turn. (The Kafka Streams way: the record travels through the
//! repartition topic, and the new partition applies a first sighting only once the stage has answered.)
//!
//! It owns the queues, their stored form (column family `held`, written in the batch's delta, so they survive
//! a crash exactly like the state they wait for) and the claims not yet answered. It never applies a record
//! itself: the partition task takes each record out in its turn.

use crate::EngineError;

use caravan_operators::account::Moved;
use caravan_schemas::Id;
use caravan_schemas::output::Entity;
use caravan_schemas::state::{CarriedRecord, HeldKind, HeldRecord};
use caravan_state::{Delta, Store};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// A held record with its place in its account's queue.
pub(crate) struct Held {
    pub(crate) seq: u64,
    pub(crate) record: HeldRecord,
}

/// The held records of a partition, by account, and by the person or opportunity they are about.
#[derive(Default)]
pub(crate) struct Holds {
    queues: FxHashMap<(Id, Id), VecDeque<Held>>,
    /// Held records about a person or an opportunity, by its [`crate::core::keys::index_key`]: the account
    /// each waits at, and its sequence number (the order records were held in, over the whole partition).
    about: FxHashMap<u128, VecDeque<(Id, Id, u64)>>,
    /// The next sequence number (orders an account's records in the store).
    next_seq: u64,
}

/// The record a claim carries, as the operators move it.
pub(crate) fn moved(carried: CarriedRecord) -> Moved {
    match carried {
        CarriedRecord::Person(p) => Moved::Person(p),
        CarriedRecord::Opportunity(o) => Moved::Opportunity(o),
    }
}

/// A moved record, as a claim carries it.
pub(crate) fn carried(moved: Moved) -> CarriedRecord {
    match moved {
        Moved::Person(p) => CarriedRecord::Person(p),
        Moved::Opportunity(o) => CarriedRecord::Opportunity(o),
    }
}

/// The unanswered claim a held record is, if it is one: its entity and id.
fn waiting_claim(record: &HeldRecord) -> Option<(Entity, &Id)> {
    match &record.kind {
        HeldKind::Claim { entity, id, answer: None } => Some((*entity, id)),
        _ => None,
    }
}

impl Holds {
    /// The held records a store holds.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn open(store: &Store) -> Result<Holds, EngineError> {
        let mut holds = Holds { next_seq: 1, ..Holds::default() };
        for h in store.held()? {
            let (tenant, account) = (Id::from(h.tenant), Id::from(h.account));
            holds.next_seq = holds.next_seq.max(h.seq + 1);
            holds.note_about(&tenant, &account, h.seq, &h.record);
            holds.queues.entry((tenant, account)).or_default().push_back(Held { seq: h.seq, record: h.record });
        }
        Ok(holds)
    }

    fn note_about(&mut self, tenant: &Id, account: &Id, seq: u64, record: &HeldRecord) {
        if let Some(key) = record.about {
            let list = self.about.entry(key).or_default();
            // Kept in sequence order (a record held again keeps its earlier number).
            let at = list.iter().position(|e| e.2 > seq).unwrap_or(list.len());
            list.insert(at, (tenant.clone(), account.clone(), seq));
        }
    }

    fn forget_about(&mut self, seq: u64, record: &HeldRecord) {
        let Some(key) = record.about else { return };
        if let Some(list) = self.about.get_mut(&key) {
            list.retain(|e| e.2 != seq);
            if list.is_empty() {
                self.about.remove(&key);
            }
        }
    }

    /// The account where the newest held record about an entity (by [`crate::core::keys::index_key`])
    /// waits, among those held before sequence number `before` (all of them when `None`): a record about the
    /// entity that comes later must wait behind it, so that each entity's records apply in the order read.
    pub(crate) fn waiting_about(&self, key: u128, before: Option<u64>) -> Option<(&Id, &Id)> {
        let list = self.about.get(&key)?;
        list.iter().rev().find(|e| before.is_none_or(|b| e.2 < b)).map(|(t, a, _)| (t, a))
    }

    /// Whether records of the account wait.
    pub(crate) fn is_held(&self, tenant: &str, account: &str) -> bool {
        self.queues.contains_key(&(Id::from(tenant), Id::from(account)))
    }

    /// Holds a record at the end of its account's queue.
    pub(crate) fn hold(&mut self, tenant: Id, account: Id, record: HeldRecord, delta: &mut Delta) {
        let seq = self.next_seq;
        self.next_seq += 1;
        delta.put_held(&tenant, &account, seq, &record);
        self.note_about(&tenant, &account, seq, &record);
        self.queues.entry((tenant, account)).or_default().push_back(Held { seq, record });
    }

    /// Puts a record taken out in its turn back at the front of its account's queue, as `kind` (it turned out
    /// to need a claim of its own).
    pub(crate) fn hold_again(&mut self, tenant: Id, account: Id, mut held: Held, kind: HeldKind, delta: &mut Delta) {
        held.record.kind = kind;
        delta.put_held(&tenant, &account, held.seq, &held.record);
        self.note_about(&tenant, &account, held.seq, &held.record);
        self.queues.entry((tenant, account)).or_default().push_front(held);
    }

    /// Records the stage's answer to the oldest unanswered claim of the entity at the account; false when
    /// there is none (an answer this partition does not wait for).
    pub(crate) fn answer(
        &mut self,
        tenant: &Id,
        account: &Id,
        entity: Entity,
        id: &Id,
        carried: Option<(CarriedRecord, Id)>,
        delta: &mut Delta,
    ) -> bool {
        let key = (tenant.clone(), account.clone());
        let Some(queue) = self.queues.get_mut(&key) else { return false };
        let Some(held) = queue.iter_mut().find(|h| waiting_claim(&h.record) == Some((entity, id))) else {
            return false;
        };
        if let HeldKind::Claim { answer, .. } = &mut held.record.kind {
            *answer = Some(carried);
        }
        delta.put_held(tenant, account, held.seq, &held.record);
        true
    }

    /// Takes the account's first held record out (and out of the store) if its turn has come: it is not a
    /// claim still waiting for its answer.
    pub(crate) fn next_ready(&mut self, tenant: &Id, account: &Id, delta: &mut Delta) -> Option<Held> {
        let key = (tenant.clone(), account.clone());
        let queue = self.queues.get_mut(&key)?;
        if queue.front().is_some_and(|h| waiting_claim(&h.record).is_some()) {
            return None;
        }
        let held = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        if let Some(h) = &held {
            delta.delete_held(tenant, account, h.seq);
            self.forget_about(h.seq, &h.record);
        }
        held
    }

    /// Records held (for metrics).
    pub(crate) fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::state::KafkaPosition;
    use caravan_state::StoreOptions;

    fn record(offset: i64, kind: HeldKind, about: Option<u128>) -> HeldRecord {
        let origin = KafkaPosition { topic: "in".into(), partition: 0, offset };
        HeldRecord { raw: offset.to_string().into_bytes(), now: offset, about, origin, kind }
    }

    fn claim(id: &str) -> HeldKind {
        HeldKind::Claim { entity: Entity::Person, id: id.into(), answer: None }
    }

    fn offsets(holds: &mut Holds, tenant: &Id, account: &Id, delta: &mut Delta) -> Vec<i64> {
        std::iter::from_fn(|| holds.next_ready(tenant, account, delta)).map(|h| h.record.origin.offset).collect()
    }

    /// An account's records wait behind its claim in read order, survive a reopen, and go once it is answered;
    /// records about the claimed person wait for it wherever they were read.
    #[test]
    fn records_wait_behind_an_unanswered_claim_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
        let (t, a, b) = (Id::from("t"), Id::from("a"), Id::from("b"));
        let p = crate::core::keys::index_key(Entity::Person, "t", "p");
        let mut holds = Holds::open(&store).expect("opens");
        let mut delta = Delta::default();
        holds.hold(t.clone(), a.clone(), record(1, claim("p"), Some(p)), &mut delta);
        holds.hold(t.clone(), a.clone(), record(2, HeldKind::Record, None), &mut delta);
        holds.hold(t.clone(), b.clone(), record(3, HeldKind::Record, Some(p)), &mut delta);
        assert!(holds.is_held("t", "a") && holds.is_held("t", "b") && !holds.is_held("t", "c"));
        assert_eq!(holds.waiting_about(p, None), Some((&t, &b)), "the newest record about p");
        assert_eq!(holds.waiting_about(p, Some(3)), Some((&t, &a)), "the newest before the third: the claim");
        assert_eq!(holds.waiting_about(p, Some(1)), None);
        assert!(offsets(&mut holds, &t, &a, &mut delta).is_empty(), "nothing goes before the answer");
        store.commit(&delta, &caravan_state::Position::replay()).expect("commits");

        let mut holds = Holds::open(&store).expect("reopens");
        let mut delta = Delta::default();
        assert_eq!(holds.len(), 3);
        assert!(!holds.answer(&t, &b, Entity::Person, &"p".into(), None, &mut delta), "no claim of p at b");
        assert!(holds.answer(&t, &a, Entity::Person, &"p".into(), None, &mut delta));
        assert_eq!(holds.waiting_about(p, None), Some((&t, &b)), "the record about p read at b");
        assert_eq!(offsets(&mut holds, &t, &a, &mut delta), [1, 2]);
        assert!(!holds.is_held("t", "a"));
        assert_eq!(offsets(&mut holds, &t, &b, &mut delta), [3]);
        assert_eq!((holds.len(), holds.waiting_about(p, None)), (0, None));
        store.commit(&delta, &caravan_state::Position::replay()).expect("commits");
        assert!(store.held().expect("reads").is_empty(), "every record taken out is deleted from the store");
    }

    /// A record whose turn came but that needs a claim of its own goes back to the front, before the records
    /// read after it, also after a reopen.
    #[test]
    fn a_record_held_again_keeps_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
        let (t, a) = (Id::from("t"), Id::from("a"));
        let mut holds = Holds::open(&store).expect("opens");
        let mut delta = Delta::default();
        holds.hold(t.clone(), a.clone(), record(1, HeldKind::Record, None), &mut delta);
        holds.hold(t.clone(), a.clone(), record(2, HeldKind::Record, None), &mut delta);
        let first = holds.next_ready(&t, &a, &mut delta).expect("its turn");
        holds.hold_again(t.clone(), a.clone(), first, claim("q"), &mut delta);
        store.commit(&delta, &caravan_state::Position::replay()).expect("commits");
        let mut holds = Holds::open(&store).expect("reopens");
        let mut delta = Delta::default();
        assert!(holds.next_ready(&t, &a, &mut delta).is_none(), "the claim waits at the front");
        assert!(holds.answer(&t, &a, Entity::Person, &"q".into(), None, &mut delta));
        assert_eq!(offsets(&mut holds, &t, &a, &mut delta), [1, 2]);
    }
}
