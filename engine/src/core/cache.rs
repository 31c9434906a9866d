//! The in-memory state of one partition in front of RocksDB: accounts (with their people and opportunities)
//! and the person and opportunity index, each bounded, each written back into a state delta.
//!
//! It owns the one eviction rule of both modes: an entry may leave once the commit that wrote its last
//! change is done (a reload from RocksDB must never see an older state), and a cache past its capacity
//! drops down to three quarters of it. A replay worker writes back once an epoch and evicts what its
//! committer has committed; a Kafka partition task writes back every batch and evicts after its
//! transaction. It never commits anything itself and never decides what a record does.

use super::keys;
use crate::EngineError;
use caravan_operators::account::{AccountState, DirtySlot};
use caravan_schemas::Id;
use caravan_schemas::output::Entity;
use caravan_schemas::state::IndexRecord;
use caravan_state::{Delta, Store, StoredAccount};
use hashbrown::HashTable;
use rustc_hash::FxHashMap;

/// How many entries a partition's caches keep: a share of the instance's budget (`state.cache_accounts`,
/// `state.cache_persons`), the same rule in both modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capacity {
    /// Accounts in an [`AccountCache`].
    pub(crate) accounts: usize,
    /// Person and opportunity entries in an [`IndexCache`].
    pub(crate) index: usize,
}

impl Capacity {
    /// One owner's share: the account budget split among `account_owners` (replay: workers; Kafka:
    /// partitions), the index budget among `index_owners` (replay: the one router), at least 16 each.
    pub(crate) fn share(budget: Capacity, account_owners: usize, index_owners: usize) -> Capacity {
        Capacity {
            accounts: (budget.accounts / account_owners.max(1)).max(16),
            index: (budget.index / index_owners.max(1)).max(16),
        }
    }
}

/// How many entries a cache of `len` entries drops to get back within `capacity`: none while it is within,
/// else down to three quarters of the capacity (so that eviction, a scan, runs seldom).
pub(crate) fn excess(len: usize, capacity: usize) -> usize {
    if len <= capacity { 0 } else { len - capacity / 4 * 3 }
}

/// An account as the store holds it, or a new one.
///
/// # Errors
/// A store read failure.
pub(crate) fn load_account(store: &Store, tenant: &str, account: &str) -> Result<AccountState, EngineError> {
    Ok(match store.load_account(tenant, account)? {
        Some(StoredAccount { record, persons, opportunities }) => {
            AccountState::from_records(tenant, account, record, persons, opportunities)
        }
        None => AccountState::new(tenant, account),
    })
}

/// Writes the records of an account that a step marked dirty into a delta, and clears the marks.
pub(crate) fn write_dirty(delta: &mut Delta, tenant: &str, account: &str, state: &mut AccountState) {
    if state.record_dirty {
        delta.put_account(tenant, account, &state.record);
        state.record_dirty = false;
    }
    state.take_dirty_slots(|slot| match slot {
        DirtySlot::Person(p) => delta.put_person(tenant, account, p),
        DirtySlot::Opportunity(o) => delta.put_opportunity(tenant, account, o),
    });
}

/// A cached account.
pub(crate) struct Cached {
    pub(crate) state: AccountState,
    /// Changed since the last write-back, on the write-back list: not evicted.
    listed: bool,
    /// The commit (a replay's sealed batch, a task's epoch) that last wrote it (0: never). Not evicted
    /// before it is done.
    dirty_batch: u64,
    /// Persons and opportunities detached (moved away) whose stored records must be deleted.
    detached: Vec<(Entity, String)>,
}

impl Cached {
    /// Whether a step changed the account and it is not yet on the write-back list (it is then marked as
    /// listed). Only changed accounts are listed: the write-back finds each again, long after its cache lines
    /// are gone, and most records (activities) change nothing.
    fn newly_changed(&mut self) -> bool {
        let first = (self.state.is_dirty() || !self.detached.is_empty()) && !self.listed;
        self.listed |= first;
        first
    }
}

/// A partition's accounts, in one hash table keyed by [`keys::account_key`]: a lookup hashes nothing and
/// compares the account id only in the bucket it lands in.
#[derive(Default)]
pub(crate) struct AccountCache {
    accounts: HashTable<Cached>,
    /// Accounts changed since the last write-back. A hot account changes in nearly every replay batch;
    /// written once an epoch instead of once a batch, it is encoded ~90 times less often (perf: encoding was
    /// ~12% of a worker's time).
    dirty: Vec<(u64, Id, Id)>,
    /// Nothing was stored when the run began and nothing was evicted since: a miss is an absence.
    complete: bool,
}

fn key_of(c: &Cached) -> u64 {
    keys::account_key(&c.state.tenant, &c.state.account_id)
}

/// Whether a cached entry is this account (the key already matched).
fn is_account(c: &Cached, tenant: &str, account: &str) -> bool {
    caravan_schemas::same_id(&c.state.account_id, account) && c.state.tenant == tenant
}

/// The cached entry of an account, loaded from the store on a miss (`complete`: a miss is an absence).
fn entry<'c>(
    accounts: &'c mut HashTable<Cached>,
    complete: bool,
    store: &Store,
    key: u64,
    tenant: &str,
    account: &str,
) -> Result<&'c mut Cached, EngineError> {
    Ok(match accounts.entry(key, |c| is_account(c, tenant, account), key_of) {
        hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
        hashbrown::hash_table::Entry::Vacant(e) => {
            let state =
                if complete { AccountState::new(tenant, account) } else { load_account(store, tenant, account)? };
            e.insert(Cached { state, listed: false, dirty_batch: 0, detached: Vec::new() }).into_mut()
        }
    })
}

impl AccountCache {
    /// An empty cache; `complete` when the store holds no account (a miss is then an absence).
    pub(crate) fn new(complete: bool) -> AccountCache {
        AccountCache { complete, ..AccountCache::default() }
    }

    fn find(&mut self, key: u64, tenant: &str, account: &str) -> Option<&mut Cached> {
        self.accounts.find_mut(key, |c| is_account(c, tenant, account))
    }

    /// The entry that `key` lands on, if any, without comparing ids: for a prefetch hint only.
    pub(crate) fn guess(&self, key: u64) -> Option<&Cached> {
        self.accounts.find(key, |_| true)
    }

    /// Runs a step `f` on the account (`key`: its [`keys::account_key`]; loaded from the store on a miss), and
    /// puts it on the write-back list (once) if the step changed it. One lookup for both.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn step<R>(
        &mut self,
        store: &Store,
        key: u64,
        tenant: &str,
        account: &str,
        f: impl FnOnce(&mut AccountState) -> R,
    ) -> Result<R, EngineError> {
        let cached = entry(&mut self.accounts, self.complete, store, key, tenant, account)?;
        let r = f(&mut cached.state);
        if cached.newly_changed() {
            self.dirty.push((key, Id::from(tenant), Id::from(account)));
        }
        Ok(r)
    }

    /// Takes a person or an opportunity out of its account (it moves to another one): its record, or `None`
    /// when the account does not hold it. Its stored record is deleted at the next write-back.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn detach(
        &mut self,
        store: &Store,
        key: u64,
        tenant: &str,
        account: &str,
        entity: Entity,
        id: &str,
    ) -> Result<Option<caravan_operators::account::Moved>, EngineError> {
        let cached = entry(&mut self.accounts, self.complete, store, key, tenant, account)?;
        let moved = cached.state.detach(entity, id);
        if moved.is_some() {
            cached.detached.push((entity, id.to_owned()));
        }
        if cached.newly_changed() {
            self.dirty.push((key, Id::from(tenant), Id::from(account)));
        }
        Ok(moved)
    }

    /// Writes every account changed since the last write-back into `delta`, as it stands now; each stays
    /// pinned until commit `commit` is done ([`AccountCache::evict`]).
    pub(crate) fn write_back(&mut self, commit: u64, delta: &mut Delta) {
        for (key, tenant, account) in std::mem::take(&mut self.dirty) {
            let Some(c) = self.find(key, &tenant, &account) else { continue };
            c.listed = false;
            c.dirty_batch = commit;
            for (entity, id) in c.detached.drain(..) {
                match entity {
                    Entity::Opportunity => delta.delete_opportunity(&tenant, &account, &id),
                    _ => delta.delete_person(&tenant, &account, &id),
                }
            }
            write_dirty(delta, &tenant, &account, &mut c.state);
        }
    }

    /// Keeps the cache within `capacity`: drops accounts whose last change has committed (`committed`: the
    /// last commit done), never one with changes not yet written back.
    pub(crate) fn evict(&mut self, capacity: usize, committed: u64) {
        let mut excess = excess(self.accounts.len(), capacity);
        if excess == 0 {
            return;
        }
        self.accounts.retain(|c| {
            if excess > 0 && !c.listed && c.dirty_batch <= committed {
                excess -= 1;
                false
            } else {
                true
            }
        });
        self.complete = false;
    }
}

struct IndexSlot {
    rec: Option<IndexRecord>,
    /// The commit that last changed it (0: clean since loaded). Not evicted before that commit is done.
    dirty_batch: u64,
}

/// The person and opportunity index (tenant | id -> account), by [`keys::index_key`], in front of RocksDB.
#[derive(Default)]
pub(crate) struct IndexCache {
    slots: FxHashMap<u128, IndexSlot>,
    /// Entries changed since the last write-back: what to write, and the slot to read it from.
    dirty: Vec<(Entity, Id, Id, u128)>,
    /// Nothing was stored when the run began and nothing has been evicted since: a miss is an absence.
    complete: bool,
}

impl IndexCache {
    /// An empty index; `complete` when the store holds none (a miss is then an absence).
    pub(crate) fn new(complete: bool) -> IndexCache {
        IndexCache { complete, ..IndexCache::default() }
    }

    /// The entry of `key` (the [`keys::index_key`] of entity, tenant and id), read from RocksDB on a miss.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn lookup(
        &mut self,
        store: &Store,
        key: u128,
        entity: Entity,
        tenant: &str,
        id: &str,
    ) -> Result<Option<IndexRecord>, EngineError> {
        if let Some(slot) = self.slots.get(&key) {
            return Ok(slot.rec.clone());
        }
        let rec = match (self.complete, entity) {
            (true, _) => None,
            (false, Entity::Opportunity) => store.opportunity_index(tenant, id)?,
            (false, _) => store.person_index(tenant, id)?,
        };
        self.slots.insert(key, IndexSlot { rec: rec.clone(), dirty_batch: 0 });
        Ok(rec)
    }

    /// Sets an entry in commit `commit`; true when it changed.
    pub(crate) fn set(
        &mut self,
        key: u128,
        entity: Entity,
        tenant: &str,
        id: &str,
        rec: IndexRecord,
        commit: u64,
    ) -> bool {
        let slot = self.slots.entry(key).or_insert(IndexSlot { rec: None, dirty_batch: 0 });
        if slot.rec.as_ref() == Some(&rec) {
            // Stored (or about to be) as it is: most upserts do not move anybody.
            return false;
        }
        if slot.dirty_batch != commit {
            self.dirty.push((entity, Id::from(tenant), Id::from(id), key));
        }
        slot.rec = Some(rec);
        slot.dirty_batch = commit;
        true
    }

    /// Writes the entries changed since the last write-back into `delta`.
    pub(crate) fn write_back(&mut self, delta: &mut Delta) {
        for (entity, tenant, id, key) in self.dirty.drain(..) {
            if let Some(IndexSlot { rec: Some(rec), .. }) = self.slots.get(&key) {
                match entity {
                    Entity::Opportunity => delta.put_opportunity_index(&tenant, &id, rec),
                    _ => delta.put_person_index(&tenant, &id, rec),
                }
            }
        }
    }

    /// Keeps the index within `capacity`: drops entries whose last change has committed.
    pub(crate) fn evict(&mut self, capacity: usize, committed: u64) {
        let mut excess = excess(self.slots.len(), capacity);
        if excess == 0 {
            return;
        }
        self.slots.retain(|_, s| {
            if excess > 0 && s.dirty_batch <= committed {
                excess -= 1;
                false
            } else {
                true
            }
        });
        self.complete = false;
    }
}

/// Drops entries of a cache whose every entry is committed, down to three quarters of `capacity` once it has
/// grown past it.
pub(crate) fn trim<K, V>(map: &mut FxHashMap<K, V>, capacity: usize) {
    let mut excess = excess(map.len(), capacity);
    if excess > 0 {
        map.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
}
