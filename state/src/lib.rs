//! Caravan's durable state in RocksDB: column families, key encoding, atomic commits and recovery reads.
//!
//! It is not: the journey logic (that is `caravan-operators`, which this crate never imports), a cache, or
//! Kafka. It stores what the engine hands it and reads it back.
//!
//! Guarantees:
//! - [`Store::commit`] writes one [`Delta`] and the [`Position`] that it reflects in one RocksDB
//!   `WriteBatch`: after a crash at any point, either both are there or neither is. (Kafka mode puts the
//!   position in the delta itself, [`Delta::put_position`], so that it travels on the changelog.)
//! - After a failed write the store is poisoned: every later call returns [`StateError::Poisoned`], and the
//!   process must restart from the last checkpoint.
//! - [`Store`] is `Send + Sync`; reads may run on any thread while one thread commits.
//!
//! Layout (every key starts with the tenant, so nothing crosses tenants; ids never hold control characters,
//! so `\0` separates key parts unambiguously):
//!
//! | column family | key | value |
//! |---|---|---|
//! | `accounts` | tenant `\0` account | [`AccountRecord`] |
//! | `persons` | tenant `\0` account `\0` person | [`PersonRecord`] (one prefix scan lists an account's people) |
//! | `person_index` | tenant `\0` person | [`IndexRecord`] |
//! | `opportunities` | tenant `\0` account `\0` opportunity | [`OpportunityRecord`] |
//! | `opportunity_index` | tenant `\0` opportunity | [`IndexRecord`] |
//! | `timers` | tenant `\0` account `\0` journey `\0` instance | [`TimerRecord`] |
//! | `dedup` | epoch (u64 big-endian) | the applied event-id hashes of that epoch |
//! | `routes` | tenant `\0` entity `\0` id | [`RouteRecord`] (Kafka mode's person stage) |
//! | `parked` | tenant `\0` entity `\0` id `\0` sequence (u64 big-endian) | [`ParkedRecord`] (the same) |
//! | `held` | tenant `\0` account `\0` sequence (u64 big-endian) | [`HeldRecord`] (the same: records held at an account while it waits for a claim) |
//! | `definitions` | `journey` or `template` `\0` tenant `\0` id `\0` version (u32 big-endian); `stop` `\0` tenant `\0` journey | the published document (JSON); the newest stopped version (older stores: `j`, `b`, `s`, still read) |
//! | `meta` | `position` | [`Position`]: what the store has committed, in both modes (`checkpoint` and `partition` in older stores) |
//! | `meta` | `local.changelog_next` | the changelog offset the store reflects (Kafka mode; local only) |
//! | `meta` | other names | engine values ([`Delta::put_meta`]) |
//!
//! In Kafka mode each [`Delta`] also travels as changelog records ([`Delta::changelog_records`]): the key
//! is the column family's number then the state key, the value the stored bytes or a tombstone.
//!
//! Values carry a format-version byte ([`caravan_schemas::state::encode`]).
//!
//! Modules: `keys` (the families' numbers and every key's form, built and read back), `delta` (the writes of
//! one commit, and their changelog form), `position` (the committed position record and its upgrade); the
//! store itself is here.
//!
//! ```
//! use caravan_state::{Store, Delta, Position, StoreOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
//! let mut delta = Delta::default();
//! delta.put_person_index("t", "p", &caravan_schemas::state::IndexRecord { account_id: "a".into(), present: true });
//! store.commit(&delta, &Position { epoch: 1, ..Position::replay() }).unwrap();
//! assert_eq!(store.person_index("t", "p").unwrap().unwrap().account_id, "a");
//! assert_eq!(store.position().unwrap().unwrap().epoch, 1);
//! ```
#![warn(missing_docs, unreachable_pub)]

mod delta;
mod keys;
mod position;

use delta::{DEDUP_ENTRY_BYTES, DEDUP_TIMED, WRITE_BATCH_HEADER, WRITE_BATCH_RECORD_OVERHEAD, payload};
pub use delta::{DedupEpoch, Delta};
use keys::*;
pub use position::{Mode, Position, StagePosition};

use caravan_schemas::output::Entity;
use caravan_schemas::state::{
    self as codec, AccountRecord, CodecError, HeldRecord, IndexRecord, OpportunityRecord, ParkedRecord, PersonRecord,
    RouteRecord, TimerRecord,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("state value under {key}: {source}")]
    Codec {
        /// The key, escaped.
        key: String,
        /// What went wrong.
        source: CodecError,
    },
    /// An earlier write failed; the store refuses further use.
    #[error("state store is poisoned by an earlier failed write; restart from the last checkpoint")]
    Poisoned,
}

/// Result of state operations.
pub type Result<T> = std::result::Result<T, StateError>;

/// The column families, in the order they are opened.
pub const COLUMN_FAMILIES: [&str; 12] = [
    "accounts",
    "persons",
    "person_index",
    "timers",
    "dedup",
    "meta",
    "opportunities",
    "opportunity_index",
    "definitions",
    "routes",
    "parked",
    "held",
];

/// Tuning of the RocksDB instance.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Shared block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Write buffer (memtable) size per column family, in bytes.
    pub write_buffer_bytes: usize,
    /// Cap on the memtables of all column families together, in bytes.
    pub write_buffer_total_bytes: usize,
    /// fsync every commit (survives power loss, not only process crashes).
    pub sync_commits: bool,
    /// The most event ids the de-duplication window can need stored at once: its capacity plus the largest
    /// commit (whose epoch is kept whole). Sizes the FIFO limit of the `dedup` column family.
    pub dedup_ids: u64,
    /// Nothing will open the store again (a replay's temporary state): commits skip the write-ahead log and
    /// closing does not flush the memtables, since no crash or restart can ever read them back.
    pub ephemeral: bool,
    /// Commits go through RocksDB's write-ahead log. Without it (a replay's state: its output files are cut
    /// back to whatever commit the store reopens at), a crash loses the commits since the last memtable
    /// flush, and every column family flushes together (`atomic_flush`), so the store always reopens at the
    /// end of some commit. Closing the store flushes.
    pub log_commits: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            write_buffer_total_bytes: 64 << 20,
            sync_commits: false,
            dedup_ids: 1_250_000,
            ephemeral: false,
            log_commits: true,
        }
    }
}

/// An account as stored: its record, its people and its opportunities.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredAccount {
    /// The account record (default when only people or opportunities are stored).
    pub record: AccountRecord,
    /// Its people, in key order.
    pub persons: Vec<PersonRecord>,
    /// Its opportunities, in key order.
    pub opportunities: Vec<OpportunityRecord>,
}

/// One published definition version as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDefinition {
    /// The tenant.
    pub tenant: String,
    /// The journey id.
    pub id: String,
    /// The version.
    pub version: u32,
    /// The document as JSON text.
    pub document: String,
}

/// What the `definitions` column family holds: published versions and stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredDefinitions {
    /// Published journey versions, by tenant, journey and version.
    pub published: Vec<StoredDefinition>,
    /// Published buying group template versions, by tenant, template and version.
    pub templates: Vec<StoredDefinition>,
    /// Stopped journeys: tenant, journey, and the newest version the stop applies to.
    pub stopped: Vec<(String, String, u32)>,
}

/// One pending timer as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTimer {
    /// The tenant.
    pub tenant: String,
    /// The account.
    pub account_id: String,
    /// The journey.
    pub journey_id: String,
    /// The instance number.
    pub instance: u32,
    /// Which timer of the instance (0: its node's; `b + 1`: branch `b` of a `split_people`).
    pub slot: u32,
    /// Due time and arming order.
    pub timer: TimerRecord,
}

/// A parked record as stored, with its key's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredParked {
    /// Its tenant.
    pub tenant: String,
    /// What it is about: a person or an opportunity.
    pub entity: Entity,
    /// The person's or opportunity's id.
    pub id: String,
    /// Its order among that entity's parked records.
    pub seq: u64,
    /// The record.
    pub record: ParkedRecord,
}

/// A held record as stored, with its key's parts.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredHeld {
    /// Its tenant.
    pub tenant: String,
    /// The account it waits at.
    pub account: String,
    /// Its order among the account's held records.
    pub seq: u64,
    /// The record.
    pub record: HeldRecord,
}

/// The RocksDB state store.
pub struct Store {
    db: DB,
    cache: Cache,
    write_opts: WriteOptions,
    poisoned: AtomicBool,
}

fn decode_at<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|source| StateError::Codec { key: escape(key), source })
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// When RocksDB cannot open the directory (held by another process, corrupt, unreadable).
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(options.write_buffer_bytes);
        // An ephemeral store's files live as long as the run: compressing them would only cost CPU.
        cf_opts.set_compression_type(if options.ephemeral {
            rocksdb::DBCompressionType::None
        } else {
            rocksdb::DBCompressionType::Lz4
        });
        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_db_write_buffer_size(options.write_buffer_total_bytes);
        let logged = options.log_commits && !options.ephemeral;
        // Without the log, a flush must take every column family at the same commit.
        db_opts.set_atomic_flush(!logged);
        if options.ephemeral {
            // Without the log, closing would flush every memtable to files about to be deleted. rust-rocksdb's
            // `Options` has no setter for this one; the options string does it. (The copy it returns does not
            // hold the block cache alive on the Rust side: `Store` does.)
            db_opts = db_opts.get_options_from_string("avoid_flush_during_shutdown=true")?;
        }
        // The de-duplication window is random hashes, written once and deleted oldest first: compressing it
        // only burns CPU, and its epochs do not need the bloom filters of point reads.
        let mut dedup_opts = cf_opts.clone();
        dedup_opts.set_compression_type(rocksdb::DBCompressionType::None);
        // Epochs are written in key (time) order and deleted oldest first, so they need no compaction: FIFO
        // drops whole files, oldest first, once the column family passes its size limit, and never rewrites
        // one. Under level compaction, rewriting this churn was most of RocksDB's compaction work. The limit
        // is eight times what the window can hold alive, at least 256 MiB, so that only
        // files whose epochs were already deleted can go; no TTL (a state may rest for months).
        dedup_opts.set_compaction_style(rocksdb::DBCompactionStyle::Fifo);
        let mut fifo = rocksdb::FifoCompactOptions::default();
        fifo.set_max_table_files_size(options.dedup_ids.saturating_mul(DEDUP_ENTRY_BYTES as u64 * 8).max(256 << 20));
        dedup_opts.set_fifo_compaction_options(&fifo);
        dedup_opts.set_ttl(0);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, if *n == "dedup" { dedup_opts.clone() } else { cf_opts.clone() }));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        let mut write_opts = WriteOptions::default();
        // RocksDB refuses a synced write without the log.
        write_opts.set_sync(options.sync_commits && logged);
        write_opts.disable_wal(!logged);
        Ok(Store { db, cache, write_opts, poisoned: AtomicBool::new(false) })
    }

    fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) { Err(StateError::Poisoned) } else { Ok(()) }
    }

    /// A column family's handle (a lookup by name: resolve once per write, not per record).
    fn cf(&self, ix: usize) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(COLUMN_FAMILIES[ix]).expect("every column family is created at open")
    }

    /// Writes a delta and the position it reflects, atomically (and drops a position record of an older
    /// form, so that only the new one is read from then on).
    ///
    /// # Errors
    /// [`StateError::Rocks`] when the write fails (the store is then poisoned), or
    /// [`StateError::Poisoned`] after an earlier failure.
    pub fn commit(&self, delta: &Delta, position: &Position) -> Result<()> {
        self.write_with(
            delta,
            META,
            position::POSITION,
            &codec::encode(position),
            &[position::LEGACY_CHECKPOINT, position::LEGACY_PROGRESS],
        )
    }

    /// Writes a delta, one more value (its position) and the deletes of `meta` keys `gone` in one write batch;
    /// poisons the store on failure.
    fn write_with(&self, delta: &Delta, cf: usize, key: &[u8], value: &[u8], gone: &[&[u8]]) -> Result<()> {
        self.check()?;
        // Sized once: grown by doubling, an epoch's batch (tens of MB) was copied again at every doubling, into
        // fresh pages each time (perf: a sixth of the committer's time in those copies and their page faults).
        let bytes = WRITE_BATCH_HEADER
            + key.len()
            + value.len()
            + delta.ops.iter().map(payload).sum::<usize>()
            + (delta.ops.len() + 1) * WRITE_BATCH_RECORD_OVERHEAD;
        let mut batch = WriteBatch::with_capacity_bytes(bytes);
        let cfs: Vec<&rocksdb::ColumnFamily> = (0..COLUMN_FAMILIES.len()).map(|ix| self.cf(ix)).collect();
        for op in &delta.ops {
            let cf = cfs[op.cf];
            match &op.value {
                Some(v) => batch.put_cf(cf, &op.key, v),
                None => batch.delete_cf(cf, &op.key),
            }
        }
        batch.put_cf(self.cf(cf), key, value);
        for key in gone {
            batch.delete_cf(self.cf(META), key);
        }
        self.db.write_opt(batch, &self.write_opts).map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            StateError::Rocks(e)
        })
    }

    /// Applies a delta that has already committed elsewhere (Kafka mode: to the changelog topic) and records
    /// `changelog_next`, the changelog offset the store now reflects, in the same write. The offset is local:
    /// it never goes to the changelog.
    ///
    /// # Errors
    /// As [`Store::commit`].
    pub fn apply_changelog(&self, delta: &Delta, changelog_next: u64) -> Result<()> {
        self.write_with(delta, META, LOCAL_CHANGELOG_NEXT, &changelog_next.to_be_bytes(), &[])
    }

    /// The changelog offset the store reflects ([`Store::apply_changelog`]), 0 when it never applied one.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn changelog_next(&self) -> Result<u64> {
        self.check()?;
        match self.db.get_cf(self.cf(META), LOCAL_CHANGELOG_NEXT)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| StateError::Codec {
                    key: escape(LOCAL_CHANGELOG_NEXT),
                    source: CodecError::Corrupt("bad changelog offset".into()),
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
            None => Ok(0),
        }
    }

    /// An engine value written with [`Delta::put_meta`].
    ///
    /// # Errors
    /// On a read failure.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.db.get_cf(self.cf(META), name.as_bytes())?)
    }

    /// The last committed position, if any commit happened, in whichever form the store holds it.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn position(&self) -> Result<Option<Position>> {
        self.check()?;
        let meta = self.cf(META);
        if let Some(v) = self.db.get_cf(meta, position::POSITION)? {
            return decode_at(position::POSITION, &v).map(Some);
        }
        if let Some(v) = self.db.get_cf(meta, position::LEGACY_CHECKPOINT)? {
            return decode_at::<position::LegacyCheckpoint>(position::LEGACY_CHECKPOINT, &v).map(|c| Some(c.into()));
        }
        if let Some(v) = self.db.get_cf(meta, position::LEGACY_PROGRESS)? {
            // The newer form first: the older one is a prefix of it, and would read it (leaving bytes over).
            return match decode_at::<position::LegacyProgress>(position::LEGACY_PROGRESS, &v) {
                Ok(p) => Ok(Some(p.into())),
                Err(e) => match decode_at::<position::LegacyProgressV1>(position::LEGACY_PROGRESS, &v) {
                    Ok(p) => Ok(Some(p.into())),
                    Err(_) => Err(e),
                },
            };
        }
        Ok(None)
    }

    /// Whether the store holds its position in an older form: the next commit of a driver that writes the
    /// position through its delta must drop it ([`Delta::drop_legacy_positions`]).
    ///
    /// # Errors
    /// On a read failure.
    pub fn holds_legacy_position(&self) -> Result<bool> {
        self.check()?;
        let meta = self.cf(META);
        Ok(self.db.get_cf(meta, position::LEGACY_CHECKPOINT)?.is_some()
            || self.db.get_cf(meta, position::LEGACY_PROGRESS)?.is_some())
    }

    /// Loads an account with its people and opportunities; `None` when nothing is stored for it.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn load_account(&self, tenant: &str, account: &str) -> Result<Option<StoredAccount>> {
        self.check()?;
        let key = key2(tenant, account);
        let record = match self.db.get_cf(self.cf(ACCOUNTS), &key)? {
            Some(v) => Some(decode_at::<AccountRecord>(&key, &v)?),
            None => None,
        };
        let mut prefix = key;
        prefix.push(0);
        let persons: Vec<PersonRecord> = self.scan(PERSONS, &prefix)?;
        let opportunities: Vec<OpportunityRecord> = self.scan(OPPORTUNITIES, &prefix)?;
        if record.is_none() && persons.is_empty() && opportunities.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoredAccount { record: record.unwrap_or_default(), persons, opportunities }))
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, cf: usize, prefix: &[u8]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(decode_at::<T>(&k, &v)?);
        }
        Ok(out)
    }

    /// Every account record of a tenant, in key order (for passes over all accounts: publish, stop).
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn accounts_of(&self, tenant: &str) -> Result<Vec<(String, AccountRecord)>> {
        self.check()?;
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(ACCOUNTS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let account = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((account, decode_at::<AccountRecord>(&k, &v)?));
        }
        Ok(out)
    }

    /// Calls `f` with every account record (tenant, account id, record), in key order.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn each_account(&self, mut f: impl FnMut(&str, &str, AccountRecord)) -> Result<()> {
        self.check()?;
        for item in self.db.iterator_cf(self.cf(ACCOUNTS), IteratorMode::Start) {
            let (k, v) = item?;
            let corrupt =
                || StateError::Codec { key: escape(&k), source: CodecError::Corrupt("bad account key".into()) };
            let split = k.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
            let tenant = std::str::from_utf8(&k[..split]).map_err(|_| corrupt())?;
            let account = std::str::from_utf8(&k[split + 1..]).map_err(|_| corrupt())?;
            f(tenant, account, decode_at::<AccountRecord>(&k, &v)?);
        }
        Ok(())
    }

    /// The accounts of a tenant that hold person records (present or tombstones), in key order.
    ///
    /// # Errors
    /// On a read failure.
    pub fn accounts_with_people(&self, tenant: &str) -> Result<Vec<String>> {
        self.check()?;
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<String> = Vec::new();
        for item in self.db.iterator_cf(self.cf(PERSONS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let rest = &k[prefix.len()..];
            let account = rest.split(|b| *b == 0).next().unwrap_or_default();
            if out.last().is_none_or(|a| a.as_bytes() != account) {
                out.push(String::from_utf8_lossy(account).into_owned());
            }
        }
        Ok(out)
    }

    /// The published definitions and stops.
    ///
    /// # Errors
    /// On a read failure or a corrupt key.
    pub fn definitions(&self) -> Result<StoredDefinitions> {
        self.check()?;
        let mut out = StoredDefinitions::default();
        for item in self.db.iterator_cf(self.cf(DEFINITIONS), IteratorMode::Start) {
            let (k, v) = item?;
            let corrupt =
                || StateError::Codec { key: escape(&k), source: CodecError::Corrupt("bad definition".into()) };
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
            let kind = k.split(|b| *b == 0).next().and_then(DefinitionKind::of);
            match kind {
                Some(kind @ (DefinitionKind::Journey | DefinitionKind::Template)) => {
                    let (head, version) = k.split_at(k.len().checked_sub(4).ok_or_else(corrupt)?);
                    let parts: Vec<&[u8]> = head.split(|b| *b == 0).collect();
                    let [_, tenant, id, _] = parts.as_slice() else { return Err(corrupt()) };
                    let list = if kind == DefinitionKind::Journey { &mut out.published } else { &mut out.templates };
                    list.push(StoredDefinition {
                        tenant: text(tenant)?,
                        id: text(id)?,
                        version: u32::from_be_bytes(version.try_into().map_err(|_| corrupt())?),
                        document: text(&v)?,
                    });
                }
                Some(DefinitionKind::Stop) => {
                    let parts: Vec<&[u8]> = k.split(|b| *b == 0).collect();
                    let [_, tenant, id] = parts.as_slice() else { return Err(corrupt()) };
                    let version = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt())?);
                    out.stopped.push((text(tenant)?, text(id)?, version));
                }
                None => return Err(corrupt()),
            }
        }
        // A store written before the descriptive prefixes may hold entries under both forms: one list, in
        // (tenant, id, version) order, each version once, and a journey's newest stop.
        for list in [&mut out.published, &mut out.templates] {
            list.sort_by(|a, b| (&a.tenant, &a.id, a.version).cmp(&(&b.tenant, &b.id, b.version)));
            list.dedup_by(|a, b| (&a.tenant, &a.id, a.version) == (&b.tenant, &b.id, b.version));
        }
        out.stopped.sort_by(|a, b| (&a.0, &a.1, std::cmp::Reverse(a.2)).cmp(&(&b.0, &b.1, std::cmp::Reverse(b.2))));
        out.stopped.dedup_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1));
        Ok(out)
    }

    /// Reads a person index entry.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn person_index(&self, tenant: &str, person: &str) -> Result<Option<IndexRecord>> {
        self.index(PERSON_INDEX, tenant, person)
    }

    /// Reads an opportunity index entry.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn opportunity_index(&self, tenant: &str, opportunity: &str) -> Result<Option<IndexRecord>> {
        self.index(OPPORTUNITY_INDEX, tenant, opportunity)
    }

    fn index(&self, cf: usize, tenant: &str, id: &str) -> Result<Option<IndexRecord>> {
        self.get(cf, &key2(tenant, id))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, cf: usize, key: &[u8]) -> Result<Option<T>> {
        self.check()?;
        match self.db.get_cf(self.cf(cf), key)? {
            Some(v) => decode_at(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Reads where the person stage routes a person or an opportunity.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn route(&self, tenant: &str, entity: Entity, id: &str) -> Result<Option<RouteRecord>> {
        self.get(ROUTES, &route_key(tenant, entity, id))
    }

    /// Every parked record, in key order (tenant, entity, id, sequence).
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn parked(&self) -> Result<Vec<StoredParked>> {
        self.check()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(PARKED), IteratorMode::Start) {
            let (k, v) = item?;
            let record: ParkedRecord = decode_at(&k, &v)?;
            let ([tenant, entity, id], seq) = sequenced_key(&k, "parked")?;
            let entity = match entity.as_str() {
                "person" => Entity::Person,
                "opportunity" => Entity::Opportunity,
                _ => return Err(bad_key(&k, "parked")),
            };
            out.push(StoredParked { tenant, entity, id, seq, record });
        }
        Ok(out)
    }

    /// Every held record, in key order (tenant, account, sequence).
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn held(&self) -> Result<Vec<StoredHeld>> {
        self.check()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(HELD), IteratorMode::Start) {
            let (k, v) = item?;
            let record: HeldRecord = decode_at(&k, &v)?;
            let ([tenant, account], seq) = sequenced_key(&k, "held")?;
            out.push(StoredHeld { tenant, account, seq, record });
        }
        Ok(out)
    }

    /// Every pending timer.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn timers(&self) -> Result<Vec<StoredTimer>> {
        self.timers_from(&[])
    }

    /// The pending timers of one account.
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn timers_of(&self, tenant: &str, account: &str) -> Result<Vec<StoredTimer>> {
        let mut prefix = key2(tenant, account);
        prefix.push(0);
        self.timers_from(&prefix)
    }

    /// The timers whose keys start with `prefix`, in key order.
    fn timers_from(&self, prefix: &[u8]) -> Result<Vec<StoredTimer>> {
        self.check()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(TIMERS), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            let timer: TimerRecord = decode_at(&k, &v)?;
            let corrupt = || StateError::Codec { key: escape(&k), source: CodecError::Corrupt("bad timer key".into()) };
            let (head, tail) = k.split_at(k.len().checked_sub(8).ok_or_else(corrupt)?);
            let (inst, slot) = tail.split_at(4);
            let head = head.strip_suffix(&[0]).ok_or_else(corrupt)?;
            let parts: Vec<&[u8]> = head.split(|b| *b == 0).collect();
            let [tenant, account, journey] = parts.as_slice() else { return Err(corrupt()) };
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
            out.push(StoredTimer {
                tenant: text(tenant)?,
                account_id: text(account)?,
                journey_id: text(journey)?,
                instance: u32::from_be_bytes(inst.try_into().map_err(|_| corrupt())?),
                slot: u32::from_be_bytes(slot.try_into().map_err(|_| corrupt())?),
                timer,
            });
        }
        Ok(out)
    }

    /// The de-duplication window: every stored epoch with its event-id hashes and event times, oldest
    /// first. Epochs stored before event times were kept read with the time `i64::MAX` (never too old).
    ///
    /// # Errors
    /// On a read failure or a corrupt value.
    pub fn dedup_epochs(&self) -> Result<Vec<DedupEpoch>> {
        self.check()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(DEDUP), IteratorMode::Start) {
            let (k, v) = item?;
            let corrupt = |why: &str| StateError::Codec { key: escape(&k), source: CodecError::Corrupt(why.into()) };
            let epoch = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| corrupt("bad epoch key"))?);
            let hash = |c: &[u8]| u128::from_le_bytes(c[..16].try_into().expect("16 bytes"));
            // Timed values are 2 + 24n bytes, the older hash-only ones 1 + 16n: never the same length mod 8.
            let entries = match v.split_first() {
                Some((&codec::FORMAT_VERSION, [DEDUP_TIMED, body @ ..])) if body.len() % DEDUP_ENTRY_BYTES == 0 => body
                    .chunks_exact(DEDUP_ENTRY_BYTES)
                    .map(|c| (hash(c), i64::from_le_bytes(c[16..].try_into().expect("8 bytes"))))
                    .collect(),
                Some((&codec::FORMAT_VERSION, body)) if body.len() % 16 == 0 => {
                    body.chunks_exact(16).map(|c| (hash(c), i64::MAX)).collect()
                }
                _ => return Err(corrupt("bad dedup value")),
            };
            out.push((epoch, entries));
        }
        Ok(out)
    }

    /// Bytes held by the store's block cache.
    pub fn block_cache_usage_bytes(&self) -> u64 {
        self.cache.get_usage() as u64
    }

    /// Approximate live data size in bytes, summed over column families.
    pub fn approximate_size_bytes(&self) -> u64 {
        COLUMN_FAMILIES
            .iter()
            .filter_map(|n| self.db.cf_handle(n))
            .filter_map(|cf| self.db.property_int_value_cf(cf, "rocksdb.estimate-live-data-size").ok().flatten())
            .sum()
    }
}

#[cfg(test)]
mod tests;
