//! The person stage of Kafka mode: how a record about a person (or an opportunity) that names no account
//! reaches the partition of its account when the input has several partitions (ARCHITECTURE.md, "The person
//! stage").
//!
//! It owns the records of the two internal topics and where they go: partition tasks send the stage, on the
//! persons topic keyed by person (or opportunity), each change of where one lives ([`StageMessage::Route`])
//! and each record about one their partition does not hold ([`StageMessage::Lookup`]); the stage, which for
//! the persons and opportunities of its partition holds where each one lives, sends those records on to the
//! account's partition ([`AccountMessage::Forward`]) and tells a partition to let go of one that moved to an
//! account of another partition ([`AccountMessage::Detach`]). Both topics have one partition per input
//! partition, so a task owns the same partition number of all three and they commit in one transaction.
//!
//! It never decides an event's effect: the account's partition task routes and applies a forwarded record
//! exactly as an input record. Its messages are internal: encoded like state values (a format-version byte,
//! then bincode), never read by anyone else.

use super::task::Processed;
use crate::EngineError;
use crate::core::keys;
use caravan_schemas::Id;
use caravan_schemas::input::RejectReason;
use caravan_schemas::output::Entity;
use caravan_schemas::state::{CarriedRecord, ParkedRecord, RouteRecord};
use caravan_state::Store;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Where an input record was read: rejected records and parked ones name it.
pub(crate) use caravan_schemas::state::KafkaPosition as Origin;

/// A record of the persons topic, for the stage partition of its person or opportunity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StageMessage {
    /// A partition task changed where a person or an opportunity lives (upserted with an account, moved,
    /// deleted).
    Route {
        tenant: Id,
        entity: Entity,
        id: Id,
        route: RouteRecord,
        /// The event time of the record that changed it.
        ts: i64,
    },
    /// An input record about a person or an opportunity that its partition does not hold, as read;
    /// `needs_account`: it is rejected if no account becomes known (a deletion is a no-op instead).
    Lookup { tenant: Id, entity: Entity, id: Id, ts: i64, origin: Origin, raw: Vec<u8>, needs_account: bool },
    /// A partition is about to bring a person or an opportunity it does not hold to `account`: whoever holds
    /// it (alive, or its tombstone) gives its record up first, so that its history goes on there. The
    /// stage becomes its route at once; the claimer applies the record once answered.
    Claim { tenant: Id, entity: Entity, id: Id, account: Id, partition: i32, ts: i64 },
}

/// A record of the accounts topic, for the partition of an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum AccountMessage {
    /// An input record the stage resolved: the partition routes and applies it as if it had read it.
    Forward { origin: Origin, raw: Vec<u8> },
    /// The person or opportunity now lives in an account of another partition: take it out of `account`.
    /// (Written by builds before claims; still honoured when read.)
    Detach { tenant: Id, entity: Entity, id: Id, account: Id },
    /// Give a person or an opportunity up (it is held in `account`, as the stage knows it) to `to_account`
    /// of partition `to_partition`, which claimed it: its record travels there in a [`AccountMessage::Claimed`].
    Surrender { tenant: Id, entity: Entity, id: Id, account: Id, to_partition: i32, to_account: Id },
    /// The answer to a claim of `account`: the entity's record and the account it left, when another
    /// partition held it; none when nobody else did.
    Claimed { tenant: Id, entity: Entity, id: Id, account: Id, carried: Option<(CarriedRecord, Id)> },
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
pub(crate) type StageCounts = [u64; 7];

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
    /// A claim: a partition brings a person or an opportunity it does not hold to one of its accounts.
    Claimed = 5,
    /// A claim answered by the partition that held the entity, which gave its record up.
    Surrendered = 6,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 7] = [
        Outcome::Looked,
        Outcome::Resolved,
        Outcome::Parked,
        Outcome::Released,
        Outcome::Expired,
        Outcome::Claimed,
        Outcome::Surrendered,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Looked => "looked_up",
            Outcome::Resolved => "resolved",
            Outcome::Parked => "parked",
            Outcome::Released => "released",
            Outcome::Expired => "expired",
            Outcome::Claimed => "claimed",
            Outcome::Surrendered => "surrendered",
        }
    }
}

/// The stage partition of a person or an opportunity: a hash of tenant, entity and id, so every instance
/// agrees.
pub(crate) fn stage_partition(tenant: &str, entity: Entity, id: &str, partitions: usize) -> i32 {
    (keys::index_key(entity, tenant, id) as u64 % partitions.max(1) as u64) as i32
}

/// The key of an internal record: tenant `\0` id (logs and compaction tools read it; routing does not).
pub(crate) fn key(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + id.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl StageMessage {
    /// The record to produce for this message.
    pub(crate) fn forward(&self, partitions: usize) -> Forward {
        let (tenant, entity, id) = match self {
            StageMessage::Route { tenant, entity, id, .. }
            | StageMessage::Lookup { tenant, entity, id, .. }
            | StageMessage::Claim { tenant, entity, id, .. } => (tenant, *entity, id),
        };
        Forward {
            stage: Stage::Persons,
            partition: stage_partition(tenant, entity, id, partitions),
            key: key(tenant, id),
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

/// A parked record in memory: its sequence (the persons-topic offset of its lookup), tenant, entity and id.
struct Parked {
    seq: u64,
    tenant: Id,
    entity: Entity,
    id: Id,
    record: ParkedRecord,
}

/// A route as known, with its cache key.
type RouteLookup = Result<(u128, Option<RouteRecord>), EngineError>;

/// One partition's part of the person stage: where the persons and opportunities that hash to it live, and
/// the records waiting for their account. Routes are cached in front of the store (bounded); parked records are all
/// in memory and in the store, bounded by their wait.
pub(crate) struct PersonStage {
    /// Routes read or written since the cache was last trimmed, by [`keys::index_key`].
    routes: FxHashMap<u128, Option<RouteRecord>>,
    /// Parked records by [`keys::index_key`], oldest first.
    parked: FxHashMap<u128, Vec<Parked>>,
    /// (until, seq, index key) of every parked record, soonest first; released ones are skipped lazily.
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
            let key = keys::index_key(p.entity, &p.tenant, &p.id);
            stage.expiry.push(Reverse((p.record.until, p.seq, key)));
            let (tenant, id) = (Id::from(p.tenant), Id::from(p.id));
            let parked = Parked { seq: p.seq, tenant, entity: p.entity, id, record: p.record };
            stage.parked.entry(key).or_default().push(parked);
        }
        Ok(stage)
    }

    fn route(&mut self, store: &Store, tenant: &str, entity: Entity, id: &str) -> RouteLookup {
        let key = keys::index_key(entity, tenant, id);
        if let Some(known) = self.routes.get(&key) {
            return Ok((key, known.clone()));
        }
        let known = store.route(tenant, entity, id)?;
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
        msg: StageMessage,
        seq: u64,
        until: i64,
        out: &mut Processed,
    ) -> Result<(), EngineError> {
        match msg {
            StageMessage::Lookup { tenant, entity, id, origin, raw, needs_account, .. } => {
                let (key, known) = self.route(store, &tenant, entity, &id)?;
                match known.filter(|r| r.present) {
                    Some(r) => {
                        let fwd = AccountMessage::Forward { origin, raw };
                        out.forwards.push(fwd.forward(r.partition, &tenant, &r.account_id));
                        out.stage[Outcome::Resolved as usize] += 1;
                    }
                    None => {
                        let record = ParkedRecord { until, raw, origin, needs_account };
                        out.epoch.delta.put_parked(&tenant, entity, &id, seq, &record);
                        self.expiry.push(Reverse((until, seq, key)));
                        self.parked.entry(key).or_default().push(Parked { seq, tenant, entity, id, record });
                        out.stage[Outcome::Parked as usize] += 1;
                    }
                }
            }
            StageMessage::Route { tenant, entity, id, route, .. } => {
                let (key, known) = self.route(store, &tenant, entity, &id)?;
                // Only the partition that holds it speaks for it: it came there through a claim, which made
                // the stage's route first. A route from another partition is older than that claim.
                if known.as_ref().is_some_and(|k| k.partition != route.partition) {
                    return Ok(());
                }
                // A removal stands only for the route it removes (a later move may have overtaken it).
                if !route.present
                    && known.as_ref().filter(|k| k.present).is_none_or(|k| k.account_id != route.account_id)
                {
                    return Ok(());
                }
                self.set_route(key, &tenant, entity, &id, known, route, out);
            }
            StageMessage::Claim { tenant, entity, id, account, partition, .. } => {
                let (key, known) = self.route(store, &tenant, entity, &id)?;
                let answer = match known.as_ref().filter(|k| k.partition != partition) {
                    // Another partition holds it (alive, or its tombstone): it gives the record up, and its
                    // answer carries it to the claimer.
                    Some(k) => {
                        out.stage[Outcome::Surrendered as usize] += 1;
                        let msg = AccountMessage::Surrender {
                            tenant: tenant.clone(),
                            entity,
                            id: id.clone(),
                            account: k.account_id.clone(),
                            to_partition: partition,
                            to_account: account.clone(),
                        };
                        msg.forward(k.partition, &tenant, &k.account_id)
                    }
                    None => {
                        let msg = AccountMessage::Claimed {
                            tenant: tenant.clone(),
                            entity,
                            id: id.clone(),
                            account: account.clone(),
                            carried: None,
                        };
                        msg.forward(partition, &tenant, &account)
                    }
                };
                out.forwards.push(answer);
                out.stage[Outcome::Claimed as usize] += 1;
                let route = RouteRecord { account_id: account, partition, present: true };
                self.set_route(key, &tenant, entity, &id, known, route, out);
            }
        }
        Ok(())
    }

    /// Makes `route` the entity's route, and sends its parked records on when it is present.
    #[allow(clippy::too_many_arguments)]
    fn set_route(
        &mut self,
        key: u128,
        tenant: &Id,
        entity: Entity,
        id: &Id,
        known: Option<RouteRecord>,
        route: RouteRecord,
        out: &mut Processed,
    ) {
        if known.as_ref() != Some(&route) {
            out.epoch.delta.put_route(tenant, entity, id, &route);
            self.routes.insert(key, Some(route.clone()));
        }
        if route.present {
            for p in self.parked.remove(&key).unwrap_or_default() {
                out.epoch.delta.delete_parked(&p.tenant, p.entity, &p.id, p.seq);
                let fwd = AccountMessage::Forward { origin: p.record.origin, raw: p.record.raw };
                out.forwards.push(fwd.forward(route.partition, tenant, &route.account_id));
                out.stage[Outcome::Released as usize] += 1;
            }
        }
    }

    /// Whether a parked record's wait is over at `now`.
    pub(crate) fn due(&self, now: i64) -> bool {
        self.expiry.peek().is_some_and(|Reverse((until, ..))| *until < now)
    }

    /// Ends the wait of the parked records whose wait is over at `now`: rejected as `unknown_person_account`,
    /// or, for a deletion, dropped (deleting a person or an opportunity never known is a no-op).
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
            out.epoch.delta.delete_parked(&p.tenant, p.entity, &p.id, p.seq);
            out.stage[Outcome::Expired as usize] += 1;
            if !p.record.needs_account {
                continue;
            }
            let detail = crate::core::routing::unknown_person_detail(&p.id, true);
            out.reject(RejectReason::UnknownPersonAccount, detail, &p.record.raw, &p.record.origin);
        }
    }

    /// Records waiting (for metrics).
    pub(crate) fn parked_len(&self) -> usize {
        self.parked.values().map(Vec::len).sum()
    }

    /// Keeps the route cache within `capacity` (everything is committed between batches).
    pub(crate) fn trim(&mut self, capacity: usize) {
        crate::core::cache::trim(&mut self.routes, capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_a_person_always_has_the_same_stage_partition() {
        let origin = Origin { topic: "in".into(), partition: 2, offset: 41 };
        let lookup = StageMessage::Lookup {
            tenant: "t".into(),
            entity: Entity::Person,
            id: "p".into(),
            ts: 7,
            origin: origin.clone(),
            raw: b"{}".to_vec(),
            needs_account: true,
        };
        let f = lookup.forward(3);
        assert_eq!(f.stage, Stage::Persons);
        assert_eq!(f.partition, stage_partition("t", Entity::Person, "p", 3));
        assert_eq!(f.key, b"t\0p");
        assert_eq!(caravan_schemas::state::decode::<StageMessage>(&f.value).expect("decodes"), lookup);
        let detach = AccountMessage::Detach {
            tenant: "t".into(),
            entity: Entity::Opportunity,
            id: "o".into(),
            account: "a".into(),
        };
        let f = detach.forward(1, "t", "a");
        assert_eq!((f.stage, f.partition), (Stage::Accounts, 1));
        assert_eq!(caravan_schemas::state::decode::<AccountMessage>(&f.value).expect("decodes"), detach);
        // Spread over the partitions, and stable.
        let parts: std::collections::BTreeSet<i32> =
            (0..100).map(|i| stage_partition("t", Entity::Person, &format!("p{i}"), 4)).collect();
        assert_eq!(parts.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
        let at = |tenant, entity| stage_partition(tenant, entity, "p", 1000);
        assert_ne!(at("t", Entity::Person), at("u", Entity::Person), "tenants seed the hash");
        assert_ne!(at("t", Entity::Person), at("t", Entity::Opportunity), "and entities");
    }
}
