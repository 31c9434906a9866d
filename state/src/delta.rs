//! A set of state writes that commit together ([`Delta`]), built by the engine with one method per kind of
//! record, compacted before a commit, and carried as changelog records in Kafka mode.
//!
//! It never touches RocksDB: [`crate::Store`] commits a delta.

use crate::keys::*;
use crate::position::{LEGACY_CHECKPOINT, LEGACY_PROGRESS, POSITION};
use crate::{COLUMN_FAMILIES, Position, Result, StateError};
use caravan_schemas::output::Entity;
use caravan_schemas::state::{
    self as codec, AccountRecord, CodecError, HeldRecord, IndexRecord, OpportunityRecord, ParkedRecord, PersonRecord,
    RouteRecord, TimerRecord,
};

/// One write to apply atomically with others.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub(crate) cf: usize,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

/// A set of writes that commit together.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub(crate) ops: Vec<Op>,
}

/// The memory one write takes besides its key and value.
pub(crate) const OP_BYTES: usize = std::mem::size_of::<Op>();

/// A write's key and value bytes.
pub(crate) fn payload(op: &Op) -> usize {
    op.key.len() + op.value.as_ref().map_or(0, Vec::len)
}

/// One stored de-duplication epoch: its number, and its event-id hashes with their event times.
pub type DedupEpoch = (u64, Vec<(u128, i64)>);

/// Second byte of a de-duplication epoch whose entries carry their event time.
pub(crate) const DEDUP_TIMED: u8 = 1;

/// Bytes of one stored de-duplication entry: the id's 128-bit hash and its event time.
pub(crate) const DEDUP_ENTRY_BYTES: usize = 24;

/// A RocksDB write batch's header: sequence number and count.
pub(crate) const WRITE_BATCH_HEADER: usize = 12;
/// The most a write batch record adds to its key and value: a type byte, the column family and both
/// lengths as varints.
pub(crate) const WRITE_BATCH_RECORD_OVERHEAD: usize = 1 + 5 + 5 + 5;

impl Delta {
    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The memory the writes take (keys, values and their bookkeeping): what holding them until a commit
    /// costs. Counted when asked (a log line), not kept as writes are added.
    pub fn bytes(&self) -> usize {
        self.ops.iter().map(|op| OP_BYTES + payload(op)).sum()
    }

    /// Appends another delta's writes after these (later writes to a key win).
    pub fn extend(&mut self, other: Delta) {
        if self.ops.is_empty() {
            // Taken as it is: no copy of its writes into a vector that would grow for them.
            self.ops = other.ops;
        } else {
            self.ops.extend(other.ops);
        }
    }

    /// Keeps only the last write of each key and orders the writes by column family and key: the same
    /// effect when committed, fewer memtable inserts (hot accounts are written by many batches of an
    /// epoch), and sorted inserts, which RocksDB's skip list takes much faster than random ones.
    pub fn compact(&mut self) {
        // Sorted through a small index whose first 16 key bytes are an integer: keys share long prefixes
        // (tenant, account), and comparing whole keys with `memcmp` was ~4% of a replay's CPU. Zero padding
        // keeps the integer order the byte order, and ties fall back to the whole key, then to the write
        // order (the later write of a key wins).
        fn head(key: &[u8]) -> u128 {
            let mut b = [0u8; 16];
            let n = key.len().min(16);
            b[..n].copy_from_slice(&key[..n]);
            u128::from_be_bytes(b)
        }
        let ops = &self.ops;
        let mut order: Vec<(usize, u128, usize)> =
            ops.iter().enumerate().map(|(i, op)| (op.cf, head(&op.key), i)).collect();
        order.sort_unstable_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| ops[a.2].key.cmp(&ops[b.2].key)).then(a.2.cmp(&b.2))
        });
        let mut slots: Vec<Option<Op>> = std::mem::take(&mut self.ops).into_iter().map(Some).collect();
        let mut kept: Vec<Op> = Vec::with_capacity(slots.len());
        for (_, _, i) in order {
            let Some(op) = slots[i].take() else { continue };
            match kept.last_mut() {
                Some(last) if last.cf == op.cf && last.key == op.key => *last = op,
                _ => kept.push(op),
            }
        }
        self.ops = kept;
    }

    pub(crate) fn put(&mut self, cf: usize, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op { cf, key, value: Some(value) });
    }

    pub(crate) fn delete(&mut self, cf: usize, key: Vec<u8>) {
        self.ops.push(Op { cf, key, value: None });
    }

    /// Writes an account record.
    pub fn put_account(&mut self, tenant: &str, account: &str, rec: &AccountRecord) {
        self.put(ACCOUNTS, key2(tenant, account), codec::encode(rec));
    }

    /// Writes a person record under its account.
    pub fn put_person(&mut self, tenant: &str, account: &str, rec: &PersonRecord) {
        self.put(PERSONS, key3(tenant, account, &rec.person_id), codec::encode(rec));
    }

    /// Removes a person record from an account (the person moved away).
    pub fn delete_person(&mut self, tenant: &str, account: &str, person: &str) {
        self.delete(PERSONS, key3(tenant, account, person));
    }

    /// Writes a person index entry.
    pub fn put_person_index(&mut self, tenant: &str, person: &str, rec: &IndexRecord) {
        self.put(PERSON_INDEX, key2(tenant, person), codec::encode(rec));
    }

    /// Writes an opportunity record under its account.
    pub fn put_opportunity(&mut self, tenant: &str, account: &str, rec: &OpportunityRecord) {
        self.put(OPPORTUNITIES, key3(tenant, account, &rec.opportunity_id), codec::encode(rec));
    }

    /// Removes an opportunity record from an account (it moved away).
    pub fn delete_opportunity(&mut self, tenant: &str, account: &str, opportunity: &str) {
        self.delete(OPPORTUNITIES, key3(tenant, account, opportunity));
    }

    /// Writes an opportunity index entry.
    pub fn put_opportunity_index(&mut self, tenant: &str, opportunity: &str, rec: &IndexRecord) {
        self.put(OPPORTUNITY_INDEX, key2(tenant, opportunity), codec::encode(rec));
    }

    /// Writes where the person stage routes a person or an opportunity.
    pub fn put_route(&mut self, tenant: &str, entity: Entity, id: &str, rec: &RouteRecord) {
        self.put(ROUTES, route_key(tenant, entity, id), codec::encode(rec));
    }

    /// Parks a record about a person or an opportunity until its route is known (`seq` orders its parked
    /// records).
    pub fn put_parked(&mut self, tenant: &str, entity: Entity, id: &str, seq: u64, rec: &ParkedRecord) {
        self.put(PARKED, parked_key(tenant, entity, id, seq), codec::encode(rec));
    }

    /// Removes a parked record (released to its account, or ended).
    pub fn delete_parked(&mut self, tenant: &str, entity: Entity, id: &str, seq: u64) {
        self.delete(PARKED, parked_key(tenant, entity, id, seq));
    }

    /// Holds a record at its account (`seq` orders an account's held records).
    pub fn put_held(&mut self, tenant: &str, account: &str, seq: u64, rec: &HeldRecord) {
        self.put(HELD, held_key(tenant, account, seq), codec::encode(rec));
    }

    /// Removes a held record (applied).
    pub fn delete_held(&mut self, tenant: &str, account: &str, seq: u64) {
        self.delete(HELD, held_key(tenant, account, seq));
    }

    /// Records a published definition version (its document as JSON text).
    pub fn put_definition(&mut self, tenant: &str, id: &str, version: u32, document: &str) {
        self.put(
            DEFINITIONS,
            definition_key(DefinitionKind::Journey, tenant, id, version),
            document.as_bytes().to_vec(),
        );
    }

    /// Records a published buying group template version (its document as JSON text).
    pub fn put_template(&mut self, tenant: &str, id: &str, version: u32, document: &str) {
        self.put(
            DEFINITIONS,
            definition_key(DefinitionKind::Template, tenant, id, version),
            document.as_bytes().to_vec(),
        );
    }

    /// Records that a journey is stopped for its versions up to `version`.
    pub fn put_stop(&mut self, tenant: &str, id: &str, version: u32) {
        self.put(DEFINITIONS, stop_key(tenant, id), version.to_be_bytes().to_vec());
    }

    /// Writes a pending timer.
    pub fn put_timer(&mut self, tenant: &str, account: &str, id: (&str, u32, u32), timer: &TimerRecord) {
        self.put(TIMERS, timer_key(tenant, account, id.0, id.1, id.2), codec::encode(timer));
    }

    /// Removes a timer (fired or cancelled).
    pub fn delete_timer(&mut self, tenant: &str, account: &str, id: (&str, u32, u32)) {
        self.delete(TIMERS, timer_key(tenant, account, id.0, id.1, id.2));
    }

    /// Records the event-id hashes applied in an epoch.
    pub fn put_dedup_epoch(&mut self, epoch: u64, entries: &[(u128, i64)]) {
        let mut v = Vec::with_capacity(2 + entries.len() * DEDUP_ENTRY_BYTES);
        v.extend_from_slice(&[codec::FORMAT_VERSION, DEDUP_TIMED]);
        for (h, ts) in entries {
            v.extend_from_slice(&h.to_le_bytes());
            v.extend_from_slice(&ts.to_le_bytes());
        }
        self.put(DEDUP, epoch.to_be_bytes().to_vec(), v);
    }

    /// Forgets the event ids of an epoch that left the de-duplication window.
    pub fn delete_dedup_epoch(&mut self, epoch: u64) {
        self.delete(DEDUP, epoch.to_be_bytes().to_vec());
    }

    /// Writes an engine value under `name` in `meta` (the engine encodes it). The name must not be one of
    /// the position records' (`position`, `checkpoint`, `partition`) or start with `local.`: those belong to
    /// [`Delta::put_position`], [`Store::commit`] and [`Store::apply_changelog`].
    pub fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        debug_assert!(
            ![POSITION, LEGACY_CHECKPOINT, LEGACY_PROGRESS].contains(&name.as_bytes()) && !name.starts_with("local.")
        );
        self.put(META, name.as_bytes().to_vec(), value);
    }

    /// Writes the position this delta brings the store to (Kafka mode: it travels on the changelog with the
    /// state it describes). A replay gives its position to [`Store::commit`] instead.
    pub fn put_position(&mut self, position: &Position) {
        self.put(META, POSITION.to_vec(), codec::encode(position));
    }

    /// Deletes a position record of an older form ([`Store::holds_legacy_position`]): once, in the first
    /// delta that puts the new one.
    pub fn drop_legacy_positions(&mut self) {
        self.delete(META, LEGACY_CHECKPOINT.to_vec());
        self.delete(META, LEGACY_PROGRESS.to_vec());
    }

    /// The writes as changelog records, in order: key = column family number (one byte) then the state key;
    /// value = the stored bytes, or `None` for a delete (a tombstone, which compaction keeps last).
    pub fn changelog_records(&self) -> impl Iterator<Item = (Vec<u8>, Option<&[u8]>)> + '_ {
        self.ops.iter().map(|op| {
            let mut key = Vec::with_capacity(op.key.len() + 1);
            key.push(op.cf as u8);
            key.extend_from_slice(&op.key);
            (key, op.value.as_deref())
        })
    }

    /// Appends the write a changelog record stands for (the inverse of [`Delta::changelog_records`]).
    ///
    /// # Errors
    /// [`StateError::Codec`] for an empty key or an unknown column family.
    pub fn push_changelog_record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match key.split_first() {
            Some((&cf, rest)) if usize::from(cf) < COLUMN_FAMILIES.len() => {
                self.ops.push(Op { cf: usize::from(cf), key: rest.to_vec(), value: value.map(<[u8]>::to_vec) });
                Ok(())
            }
            _ => Err(StateError::Codec {
                key: escape(key),
                source: CodecError::Corrupt("not a changelog key (unknown column family)".into()),
            }),
        }
    }
}
