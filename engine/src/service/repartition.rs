//! The person stage of Kafka mode: how a record about a person that names no account reaches the partition
//! of the person's account when the input has several partitions (ARCHITECTURE.md, "The person stage").
//!
//! It owns the records of the two internal topics and where they go: partition tasks send the stage, on the
//! persons topic keyed by person, each change of a person's account ([`PersonMessage::Route`]) and each
//! record whose person their partition does not know ([`PersonMessage::Lookup`]); the stage, which for the
//! persons of its partition holds where each one lives, sends those records on to the account's partition
//! ([`AccountMessage::Forward`]) and tells a partition to let go of a person that moved to an account of
//! another partition ([`AccountMessage::Detach`]). Both topics have one partition per input partition, so
//! a task owns the same partition number of all three and they commit in one transaction.
//!
//! It never decides an event's effect: the account's partition task routes and applies a forwarded record
//! exactly as an input record. Its messages are internal: encoded like state values (a format-version byte,
//! then bincode), never read by anyone else.

use super::task::Processed;
use crate::EngineError;
use crate::replay::keys;
use caravan_schemas::Id;
use caravan_schemas::input::RejectReason;
use caravan_schemas::output::Entity;
use caravan_schemas::state::{ParkedRecord, RouteRecord};
use caravan_state::Store;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Where an input record was read: rejected records and parked ones name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// A record of the persons topic, for the stage partition of its person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PersonMessage {
    /// A partition task changed where a person lives (a person upserted with an account, moved, deleted).
    Route {
        tenant: Id,
        person: Id,
        route: RouteRecord,
        /// The event time of the record that changed it.
        ts: i64,
    },
    /// An input record about a person that its partition does not know, as read; `needs_account`: it is
    /// rejected if no account becomes known (a deletion is a no-op instead).
    Lookup { tenant: Id, person: Id, ts: i64, origin: Origin, raw: Vec<u8>, needs_account: bool },
}

/// A record of the accounts topic, for the partition of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AccountMessage {
    /// An input record the stage resolved: the partition routes and applies it as if it had read it.
    Forward { origin: Origin, raw: Vec<u8> },
    /// The person now lives in an account of another partition: take it out of `account`.
    Detach { tenant: Id, person: Id, account: Id },
}

/// The two internal topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Persons,
    Accounts,
}

/// One record to produce to an internal topic in the batch's transaction.
#[derive(Clone, Debug)]
pub(crate) struct Forward {
    pub(crate) stage: Stage,
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

/// What the stage did with the records of a batch, for metrics: indexes of [`Outcome`].
pub(crate) type StageCounts = [u64; 5];

/// What happened to a record at the person stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Sent from its input partition to the person stage.
    Looked = 0,
    /// Sent on at once to its account's partition.
    Resolved = 1,
    /// Waiting for its person's account.
    Parked = 2,
    /// Sent on when its person's account became known.
    Released = 3,
    /// Rejected after waiting for as long as `input.unknown_person_wait` allows.
    Expired = 4,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 5] =
        [Outcome::Looked, Outcome::Resolved, Outcome::Parked, Outcome::Released, Outcome::Expired];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Looked => "looked_up",
            Outcome::Resolved => "resolved",
            Outcome::Parked => "parked",
            Outcome::Released => "released",
            Outcome::Expired => "expired",
        }
    }
}

/// The stage partition of a person: a hash of tenant and person, so every instance agrees.
pub(crate) fn person_partition(tenant: &str, person: &str, partitions: usize) -> i32 {
    (xxh3_64_with_seed(person.as_bytes(), xxh3_64(tenant.as_bytes())) % partitions.max(1) as u64) as i32
}

/// The key of an internal record: tenant `\0` id (logs and compaction tools read it; routing does not).
pub(crate) fn key(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + id.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl PersonMessage {
    /// The record to produce for this message.
    pub(crate) fn forward(&self, partitions: usize) -> Forward {
        let (tenant, person) = match self {
            PersonMessage::Route { tenant, person, .. } | PersonMessage::Lookup { tenant, person, .. } => {
                (tenant, person)
            }
        };
        Forward {
            stage: Stage::Persons,
            partition: person_partition(tenant, person, partitions),
            key: key(tenant, person),
            value: caravan_schemas::state::encode(self),
        }
    }
}

impl AccountMessage {
    /// The record to produce for this message, to `partition` (the account's).
    pub(crate) fn forward(&self, partition: i32, tenant: &str, account: &str) -> Forward {
        Forward {
            stage: Stage::Accounts,
            partition,
            key: key(tenant, account),
            value: caravan_schemas::state::encode(self),
        }
    }
}

/// A parked record in memory: its sequence (the persons-topic offset of its lookup), tenant and person.
struct Parked {
    seq: u64,
    tenant: Id,
    person: Id,
    record: ParkedRecord,
}

/// One partition's part of the person stage: where the persons that hash to it live, and the records
/// waiting for a person's account. Routes are cached in front of the store (bounded); parked records are all
/// in memory and in the store, bounded by their wait.
pub(crate) struct PersonStage {
    /// Routes read or written since the cache was last trimmed, by [`keys::index_key`] of the person.
    routes: FxHashMap<u128, Option<RouteRecord>>,
    /// Parked records by person key, oldest first.
    parked: FxHashMap<u128, Vec<Parked>>,
    /// (until, seq, person key) of every parked record, soonest first; released ones are skipped lazily.
    expiry: BinaryHeap<Reverse<(i64, u64, u128)>>,
}

impl PersonStage {
    /// The stage's part of a partition as its store holds it.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn open(store: &Store) -> Result<PersonStage, EngineError> {
        let mut stage =
            PersonStage { routes: FxHashMap::default(), parked: FxHashMap::default(), expiry: BinaryHeap::new() };
        for p in store.parked()? {
            let key = keys::index_key(Entity::Person, &p.tenant, &p.person);
            stage.expiry.push(Reverse((p.record.until, p.seq, key)));
            let parked =
                Parked { seq: p.seq, tenant: Id::from(p.tenant), person: Id::from(p.person), record: p.record };
            stage.parked.entry(key).or_default().push(parked);
        }
        Ok(stage)
    }

    fn route(&mut self, store: &Store, tenant: &str, person: &str) -> Result<(u128, Option<RouteRecord>), EngineError> {
        let key = keys::index_key(Entity::Person, tenant, person);
        if let Some(known) = self.routes.get(&key) {
            return Ok((key, known.clone()));
        }
        let known = store.person_route(tenant, person)?;
        self.routes.insert(key, known.clone());
        Ok((key, known))
    }

    /// Handles one message of the persons topic read at `seq` (its offset); a record parked now waits until
    /// `until`.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn handle(
        &mut self,
        store: &Store,
        msg: PersonMessage,
        seq: u64,
        until: i64,
        out: &mut Processed,
    ) -> Result<(), EngineError> {
        match msg {
            PersonMessage::Lookup { tenant, person, origin, raw, needs_account, .. } => {
                let (key, known) = self.route(store, &tenant, &person)?;
                match known.filter(|r| r.present) {
                    Some(r) => {
                        let fwd = AccountMessage::Forward { origin, raw };
                        out.forwards.push(fwd.forward(r.partition, &tenant, &r.account_id));
                        out.stage[Outcome::Resolved as usize] += 1;
                    }
                    None => {
                        let record = ParkedRecord {
                            until,
                            raw,
                            topic: origin.topic,
                            partition: origin.partition,
                            offset: origin.offset,
                            needs_account,
                        };
                        out.delta.put_parked(&tenant, &person, seq, &record);
                        self.expiry.push(Reverse((until, seq, key)));
                        self.parked.entry(key).or_default().push(Parked { seq, tenant, person, record });
                        out.stage[Outcome::Parked as usize] += 1;
                    }
                }
            }
            PersonMessage::Route { tenant, person, route, .. } => {
                let (key, known) = self.route(store, &tenant, &person)?;
                let known_present = known.as_ref().filter(|k| k.present);
                if !route.present {
                    // A removal stands only for the route it removes (a later move may have overtaken it).
                    if known_present.is_none_or(|k| k.account_id != route.account_id || k.partition != route.partition)
                    {
                        return Ok(());
                    }
                } else if let Some(k) = known_present
                    && k.partition != route.partition
                {
                    // It moved to an account of another partition: the old one lets go of it.
                    let detach = AccountMessage::Detach {
                        tenant: tenant.clone(),
                        person: person.clone(),
                        account: k.account_id.clone(),
                    };
                    out.forwards.push(detach.forward(k.partition, &tenant, &k.account_id));
                }
                if known.as_ref() != Some(&route) {
                    out.delta.put_person_route(&tenant, &person, &route);
                    self.routes.insert(key, Some(route.clone()));
                }
                if route.present {
                    for p in self.parked.remove(&key).unwrap_or_default() {
                        out.delta.delete_parked(&p.tenant, &p.person, p.seq);
                        let origin =
                            Origin { topic: p.record.topic, partition: p.record.partition, offset: p.record.offset };
                        let fwd = AccountMessage::Forward { origin, raw: p.record.raw };
                        out.forwards.push(fwd.forward(route.partition, &tenant, &route.account_id));
                        out.stage[Outcome::Released as usize] += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a parked record's wait is over at `now`.
    pub(crate) fn due(&self, now: i64) -> bool {
        self.expiry.peek().is_some_and(|Reverse((until, ..))| *until < now)
    }

    /// Ends the wait of the parked records whose wait is over at `now`: rejected as `unknown_person_account`,
    /// or, for a deletion, dropped (deleting a person never known is a no-op).
    pub(crate) fn expire(&mut self, now: i64, out: &mut Processed) {
        while let Some(Reverse((until, seq, key))) = self.expiry.peek().copied() {
            if until >= now {
                break;
            }
            self.expiry.pop();
            let Some(list) = self.parked.get_mut(&key) else { continue };
            let Some(ix) = list.iter().position(|p| p.seq == seq) else { continue };
            let p = list.remove(ix);
            if list.is_empty() {
                self.parked.remove(&key);
            }
            out.delta.delete_parked(&p.tenant, &p.person, p.seq);
            out.stage[Outcome::Expired as usize] += 1;
            if !p.record.needs_account {
                continue;
            }
            let origin = Origin { topic: p.record.topic, partition: p.record.partition, offset: p.record.offset };
            let detail = format!(
                "person `{}` has no known account and the event names none (none became known while it waited)",
                p.person
            );
            out.reject(RejectReason::UnknownPersonAccount, detail, &p.record.raw, &origin);
        }
    }

    /// Records waiting (for metrics).
    pub(crate) fn parked_len(&self) -> usize {
        self.parked.values().map(Vec::len).sum()
    }

    /// Keeps the route cache within `capacity` (everything is committed between batches).
    pub(crate) fn trim(&mut self, capacity: usize) {
        if self.routes.len() > capacity {
            self.routes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_a_person_always_has_the_same_stage_partition() {
        let origin = Origin { topic: "in".into(), partition: 2, offset: 41 };
        let lookup = PersonMessage::Lookup {
            tenant: "t".into(),
            person: "p".into(),
            ts: 7,
            origin: origin.clone(),
            raw: b"{}".to_vec(),
            needs_account: true,
        };
        let f = lookup.forward(3);
        assert_eq!(f.stage, Stage::Persons);
        assert_eq!(f.partition, person_partition("t", "p", 3));
        assert_eq!(f.key, b"t\0p");
        assert_eq!(caravan_schemas::state::decode::<PersonMessage>(&f.value).expect("decodes"), lookup);
        let detach = AccountMessage::Detach { tenant: "t".into(), person: "p".into(), account: "a".into() };
        let f = detach.forward(1, "t", "a");
        assert_eq!((f.stage, f.partition), (Stage::Accounts, 1));
        assert_eq!(caravan_schemas::state::decode::<AccountMessage>(&f.value).expect("decodes"), detach);
        // Spread over the partitions, and stable.
        let parts: std::collections::BTreeSet<i32> =
            (0..100).map(|i| person_partition("t", &format!("p{i}"), 4)).collect();
        assert_eq!(parts.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_ne!(person_partition("t", "p", 1000), person_partition("u", "p", 1000), "tenants seed the hash");
    }
}
