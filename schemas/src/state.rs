//! The stored shape of per-account state, and its versioned binary codec.
//!
//! It owns the types that `operators` computes on and `state` stores: [`AccountRecord`], [`PersonRecord`],
//! [`InstanceRecord`], [`OpportunityRecord`], [`IndexRecord`], and [`encode`]/[`decode`], which put a format-version byte in
//! front of a bincode body. It is not storage: no RocksDB here. Types stay plain (no internally tagged enums,
//! no `serde_json::Value` fields except inside [`Attrs`], stored as JSON text) because bincode is not
//! self-describing.

use crate::Id;
use crate::attrs::Attrs;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The format version written before every stored value.
pub const FORMAT_VERSION: u8 = 2;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value was written by another format version.
    #[error("stored value has format version {found}, this build reads {FORMAT_VERSION}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The body could not be decoded.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// Encodes a value: one version byte, then bincode (standard configuration).
///
/// # Panics
/// Never for the types of this module: they always serialize.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoded in a reused buffer, then copied once at its exact size: bincode writes a field (often one
    // byte) at a time, and a fresh vector grew through many reallocations, each a copy.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        buf.push(FORMAT_VERSION);
        bincode::serde::encode_into_std_write(value, buf, bincode::config::standard())
            .expect("state types are plain serde types and always encode");
        buf.clone()
    })
}

/// Decodes a value written by [`encode`].
///
/// # Errors
/// [`CodecError`] on another version byte or a corrupt body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| CodecError::Corrupt(e.to_string())),
        Some((&found, _)) => Err(CodecError::Version { found }),
        None => Err(CodecError::Corrupt("empty value".into())),
    }
}

/// The account's own state: attributes, audiences and journey positions (column family `accounts`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// False before the first upsert and after a delete.
    pub exists: bool,
    /// Current attributes.
    pub attributes: Attrs,
    /// Version of the last change event emitted for the account (0: none yet).
    pub version: u64,
    /// Audiences the account is in, sorted.
    pub audiences: Vec<Id>,
    /// Running journey instances, in journey id order.
    pub instances: Vec<InstanceRecord>,
    /// How many times the account entered each journey (for `reentry` and instance numbers), by journey id.
    pub entries: Vec<(Id, u32)>,
    /// Lists the account is on (`add_account_to_list`), sorted.
    pub lists: Vec<Id>,
    /// Buying groups, by solution interest (sorted). Internal: never on the change stream.
    pub groups: Vec<GroupRecord>,
}

/// The stored part of one buying group: its stage. Members, completeness and engagement are derived from the
/// people's roles and activity history whenever they are read, so they are always current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The solution interest.
    pub solution: Id,
    /// The template version the people's roles were assigned with.
    pub template_version: u32,
    /// The current stage.
    pub stage: Id,
}

/// Where one journey instance of an account stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Journey id.
    pub journey_id: Id,
    /// The version the account entered.
    pub journey_version: u32,
    /// 1 for the first entry, 2 for a re-entry, ...
    pub instance: u32,
    /// The node where the instance waits (a `listen` or `wait`).
    pub node: Id,
    /// The pending timer of that node, if any.
    pub timer: Option<TimerRecord>,
    /// Inside a `split_people` (then `node` is the split): one branch per path that people took.
    pub branches: Vec<BranchRecord>,
}

/// One path of a `split_people` that people took, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    /// The path's index among the split's paths; the number of paths for `otherwise`.
    pub path: u32,
    /// The node where the branch stands: a `wait`, or the `merge` once it arrived.
    pub node: Id,
    /// The pending timer of its `wait`, if any.
    pub timer: Option<TimerRecord>,
    /// The people who took the path, in join order.
    pub people: Vec<Id>,
}

/// A pending timer: its due time and its arming order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Due time (event-time nanoseconds).
    pub due: i64,
    /// Arming order, compared lexicographically (see `operators::timers`).
    pub arm: Vec<u64>,
}

/// One person, stored under its account (column family `persons`, key tenant | account | person).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonRecord {
    /// The person id.
    pub person_id: Id,
    /// False for a deleted person kept only to continue its version numbers.
    pub present: bool,
    /// Current attributes.
    pub attributes: Attrs,
    /// Version of the last change event emitted for the person.
    pub version: u64,
    /// Input sequence number of the record that made the person join the account (orders the people).
    pub joined: u64,
    /// Lists, activity history and buying-group roles: boxed, because most people of a large state have
    /// none of them and 800k people would otherwise carry three empty vectors (72 bytes) each.
    pub extra: Option<Box<PersonExtra>>,
}

/// The parts of a person that journeys and buying groups add, when it has any.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonExtra {
    /// Lists the person is on (`add_to_list`), sorted.
    pub lists: Vec<Id>,
    /// Activity history of the kinds that definitions count, sorted by kind.
    pub activity: Vec<ActivityHistory>,
    /// The person's role in each buying group of its account, by solution interest (sorted).
    pub roles: Vec<(Id, Id)>,
}

impl PersonRecord {
    /// Lists the person is on, sorted.
    pub fn lists(&self) -> &[Id] {
        self.extra.as_ref().map_or(&[], |e| &e.lists)
    }

    /// Activity history, sorted by kind.
    pub fn activity(&self) -> &[ActivityHistory] {
        self.extra.as_ref().map_or(&[], |e| &e.activity)
    }

    /// Buying-group roles, by solution interest.
    pub fn roles(&self) -> &[(Id, Id)] {
        self.extra.as_ref().map_or(&[], |e| &e.roles)
    }

    /// The extra parts, created empty when the person has none yet.
    pub fn extra_mut(&mut self) -> &mut PersonExtra {
        self.extra.get_or_insert_with(Box::default)
    }
}

/// The recent activities of one kind of one person: event times (nanoseconds) with how many activities
/// happened at that time, oldest first. Bounded by the longest window that reads the kind and by a count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityHistory {
    /// The activity kind.
    pub kind: Id,
    /// `(ts, count)`, sorted by time, one entry per distinct time.
    pub times: Vec<(i64, u32)>,
}

impl ActivityHistory {
    /// Most distinct times kept per kind and person; older ones are dropped first.
    pub const MAX_TIMES: usize = 4096;

    /// Records one activity at `ts` and drops what is older than `now - retention` (and beyond the bound).
    pub fn record(&mut self, ts: i64, now: i64, retention: i64) {
        match self.times.binary_search_by_key(&ts, |(t, _)| *t) {
            Ok(i) => self.times[i].1 = self.times[i].1.saturating_add(1),
            Err(i) => self.times.insert(i, (ts, 1)),
        }
        let horizon = now.saturating_sub(retention);
        let old = self.times.partition_point(|(t, _)| *t < horizon);
        let over = self.times.len().saturating_sub(Self::MAX_TIMES);
        self.times.drain(..old.max(over));
    }

    /// How many activities have `ts >= since`.
    pub fn count_since(&self, since: i64) -> u64 {
        let from = self.times.partition_point(|(t, _)| *t < since);
        self.times[from..].iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

/// Where a person or an opportunity lives (column families `person_index` and `opportunity_index`, key
/// tenant | id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// The account that holds the entity's record (also once deleted: its tombstone lives there).
    pub account_id: Id,
    /// False once the entity is deleted: it then has no known account for routing.
    pub present: bool,
}

/// Where Kafka mode's person stage routes a person or an opportunity (column family `routes`, key tenant |
/// entity | id): the account that holds it and the input partition that account's records live in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Its account.
    pub account_id: Id,
    /// The input partition whose task holds that account.
    pub partition: i32,
    /// False once it is deleted: records about it then wait, and are rejected if nothing comes.
    pub present: bool,
}

/// Where a Kafka record was read (rejected and parked records name their input position with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPosition {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// A record about a person or an opportunity whose account the person stage does not know yet (column family
/// `parked`, key tenant | entity | id | sequence): it waits for the route, or ends when its wait is over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRecord {
    /// When it stops waiting: event time (the stage's watermark) or wall-clock time (processing time), ns.
    pub until: i64,
    /// The input record's bytes, as read.
    pub raw: Vec<u8>,
    /// Where it was read.
    pub origin: KafkaPosition,
    /// It cannot apply without an account: rejected as `unknown_person_account` when its wait ends (a
    /// deletion of an entity never known is a no-op instead, as in a replay).
    pub needs_account: bool,
}

/// A person's or an opportunity's record as it travels from one account to another (Kafka mode: from the
/// partition that held it to the one that claims it, so its versions, attributes, lists and history go on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CarriedRecord {
    /// A person (alive, or its tombstone).
    Person(PersonRecord),
    /// An opportunity (alive, or its tombstone).
    Opportunity(OpportunityRecord),
}

/// What a record held at an account is ([`HeldRecord`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HeldKind {
    /// An input record (or one the person stage forwarded), applied in its turn.
    Record,
    /// An input record that brings a person or an opportunity to the account from wherever it lives: applied
    /// once the person stage has answered (`answer`: `None` while waiting; then the entity's record and the
    /// account it came from, if another partition held it).
    Claim {
        /// Person or opportunity.
        entity: crate::output::Entity,
        /// Its id.
        id: Id,
        /// The stage's answer, once it came.
        answer: Option<Option<(CarriedRecord, Id)>>,
    },
    /// The person stage's request to give a person or an opportunity of this account up to the account of
    /// another partition, done in its turn.
    Surrender {
        /// Person or opportunity.
        entity: crate::output::Entity,
        /// Its id.
        id: Id,
        /// The partition and the account it goes to.
        to_partition: i32,
        /// The account it goes to.
        to_account: Id,
    },
}

/// A record waiting at its account for an earlier claim of that account to be answered (Kafka mode; column
/// family `held`, key tenant | account | sequence): records of an account apply in the order read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldRecord {
    /// The input record's bytes, as read (empty for a surrender).
    pub raw: Vec<u8>,
    /// The partition's time after it when it was read (its watermark, or the clock in processing time): the
    /// timer pass after it, when its turn comes, fires what was due then, so that the account's timers fall
    /// among its records as they would have without the wait.
    pub now: i64,
    /// The person or opportunity it is about, as the engine's index keys it (a hash of tenant, entity and
    /// id), if it is about one: a surrender of that entity waits until it has applied.
    pub about: Option<u128>,
    /// Where it was read.
    pub origin: KafkaPosition,
    /// What it is.
    pub kind: HeldKind,
}

/// One opportunity, stored under its account (column family `opportunities`, key tenant | account | id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpportunityRecord {
    /// The opportunity id.
    pub opportunity_id: Id,
    /// False for a deleted opportunity kept only to continue its version numbers.
    pub present: bool,
    /// Current attributes (`stage`, `amount`, `is_closed`, `is_won`, ...).
    pub attributes: Attrs,
    /// Version of the last change event emitted for it.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, json};

    #[test]
    fn version_byte_is_checked() {
        let rec = IndexRecord { account_id: "a".into(), present: true };
        let mut bytes = encode(&rec);
        assert_eq!(decode::<IndexRecord>(&bytes).expect("round trip"), rec);
        bytes[0] = 9;
        assert!(matches!(decode::<IndexRecord>(&bytes), Err(CodecError::Version { found: 9 })));
        assert!(matches!(decode::<IndexRecord>(&[]), Err(CodecError::Corrupt(_))));
    }

    #[test]
    fn activity_history_counts_inside_the_window_and_forgets_the_rest() {
        let mut h = ActivityHistory::default();
        let day = 86_400_000_000_000;
        for ts in [10 * day, 12 * day, 12 * day, 11 * day] {
            h.record(ts, 12 * day, 30 * day);
        }
        assert_eq!(h.times, vec![(10 * day, 1), (11 * day, 1), (12 * day, 2)]);
        assert_eq!(h.count_since(11 * day), 3, "ts >= since counts");
        assert_eq!(h.count_since(11 * day + 1), 2);
        // 31 days later the first ones fall out of the 30-day retention.
        h.record(41 * day + 1, 41 * day + 1, 30 * day);
        assert_eq!(h.times, vec![(12 * day, 2), (41 * day + 1, 1)]);
        let mut h = ActivityHistory::default();
        for i in 0..(ActivityHistory::MAX_TIMES as i64 + 10) {
            h.record(i, i, i64::MAX);
        }
        assert_eq!(h.times.len(), ActivityHistory::MAX_TIMES);
        assert_eq!(h.times[0].0, 10, "the oldest are dropped first");
    }

    proptest! {
        #[test]
        fn account_records_round_trip(
            keys in proptest::collection::vec("[a-z]{1,8}", 0..6),
            num in any::<i64>(),
            version in any::<u64>(),
            due in any::<i64>(),
            arm in proptest::collection::vec(any::<u64>(), 0..5),
        ) {
            let mut attributes = Map::new();
            for (i, k) in keys.iter().enumerate() {
                attributes.insert(k.clone(), if i % 2 == 0 { json!(num) } else { json!({"s": [k, null, 1.5]}) });
            }
            let rec = AccountRecord {
                exists: true,
                attributes: Attrs::from(attributes),
                version,
                audiences: keys.iter().map(|k| Id::from(k.as_str())).collect(),
                instances: vec![InstanceRecord {
                    journey_id: "j".into(), journey_version: 3, instance: 1, node: "n".into(),
                    timer: Some(TimerRecord { due, arm: arm.clone() }),
                    branches: vec![BranchRecord {
                        path: 1, node: "w".into(), timer: Some(TimerRecord { due, arm }), people: vec!["p".into()],
                    }],
                }],
                entries: vec![("j".into(), 1)],
                lists: vec!["vip".into()],
                groups: vec![GroupRecord { solution: "s".into(), template_version: 2, stage: "k".into() }],
            };
            prop_assert_eq!(decode::<AccountRecord>(&encode(&rec)).expect("round trip"), rec);
        }
    }
}
