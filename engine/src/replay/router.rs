//! The router: the one sequential stage of a replay. It puts decoded records back in input order, drops
//! duplicates, routes person events through the person index, keeps the watermark, and cuts batches.
//!
//! It owns the person and opportunity indexes (tenant | id -> account) and the de-duplication window, both in memory in
//! front of RocksDB, and the single watermark of a replay (SPEC §3.2: one stream, one watermark, whatever
//! the number of workers). It is not a state machine: accounts are the workers' business; a person's or an
//! opportunity's move from one account to another is the only time the router asks a worker for something
//! (`Detach`).

use super::messages::{Batch, CommitMsg, Item, Route, RouterPart, WorkerMsg};
use super::reader::{Parsed, ParsedChunk, ParsedLine};
use crate::EngineError;
use caravan_schemas::input::{EventBody, InputEvent, RejectReason};
use caravan_schemas::output::{Entity, RejectedRecord, SourcePosition};
use caravan_schemas::state::IndexRecord;
use caravan_state::{Delta, Store};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The hash of an event id within its tenant, as the de-duplication window stores it.
pub(crate) fn event_hash(tenant: &str, event_id: &str) -> u128 {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};
    xxh3_128_with_seed(event_id.as_bytes(), xxh3_64(tenant.as_bytes()))
}

/// The worker that owns an account.
pub(crate) fn worker_of(tenant: &str, account: &str, workers: usize) -> usize {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    (xxh3_64_with_seed(account.as_bytes(), xxh3_64(tenant.as_bytes())) % workers as u64) as usize
}

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The last `capacity` applied event ids, in input order. After a restart it is rebuilt from the stored
/// epochs and trimmed to the same `capacity`, so it holds exactly what an uninterrupted run would hold.
pub(crate) struct DedupWindow {
    set: HashSet<u128, BuildHasherDefault<IdentityHasher>>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl DedupWindow {
    pub(crate) fn new(capacity: usize) -> DedupWindow {
        let set = HashSet::with_capacity_and_hasher(capacity.min(1 << 24), BuildHasherDefault::default());
        DedupWindow { set, order: VecDeque::with_capacity(capacity.min(1 << 24)), capacity }
    }

    /// Remembers an id; false when it was already there (a duplicate). One hash lookup for both.
    pub(crate) fn insert(&mut self, h: u128) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        true
    }

    /// Drops the oldest ids beyond the capacity; called once the last inserted id is known to be applied,
    /// so that the window is exactly the last `capacity` applied ids.
    pub(crate) fn settle(&mut self) {
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets the id remembered last (an event that turned out not to be applied).
    pub(crate) fn forget_last(&mut self, h: u128) {
        if self.order.back() == Some(&h) {
            self.order.pop_back();
            self.set.remove(&h);
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, h: u128) -> bool {
        self.set.contains(&h)
    }
}

struct IndexSlot {
    rec: Option<IndexRecord>,
    /// The batch that last changed it (0: clean since loaded). Not evicted before that batch commits.
    dirty_batch: u64,
}

/// Settings of the router.
pub(crate) struct RouterConfig {
    pub(crate) workers: usize,
    pub(crate) allowed_disorder_ns: i64,
    pub(crate) index_capacity: usize,
    pub(crate) source_name: String,
}

pub(crate) struct Router<'s> {
    cfg: RouterConfig,
    store: &'s Store,
    /// Nothing was stored when the run began and nothing has been evicted since: a cache miss is an absence.
    complete_cache: bool,
    index: FxHashMap<Box<str>, IndexSlot>,
    dirty: Vec<Box<str>>,
    dedup: DedupWindow,
    max_ts: Option<i64>,
    workers: Vec<Sender<WorkerMsg>>,
    commit: Sender<CommitMsg>,
    committed: Arc<AtomicU64>,
    batch: u64,
    items: Vec<Item>,
    part: RouterPart,
}

/// The in-memory index key: a kind byte (`p` person, `o` opportunity), the tenant, `\0`, the id.
fn index_key(entity: Entity, tenant: &str, id: &str) -> Box<str> {
    let mut k = String::with_capacity(tenant.len() + id.len() + 2);
    k.push(if entity == Entity::Opportunity { 'o' } else { 'p' });
    k.push_str(tenant);
    k.push('\0');
    k.push_str(id);
    k.into_boxed_str()
}

fn empty_part(batch: u64, records_end: u64, bytes_end: u64, max_ts: Option<i64>) -> RouterPart {
    RouterPart {
        batch,
        rejected: Vec::new(),
        delta: Delta::default(),
        dedup: Vec::new(),
        records_end,
        bytes_end,
        max_ts,
        applied: 0,
        rejected_count: 0,
        duplicates: 0,
        late: 0,
    }
}

impl<'s> Router<'s> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: RouterConfig,
        store: &'s Store,
        fresh: bool,
        dedup: DedupWindow,
        max_ts: Option<i64>,
        start: (u64, u64),
        workers: Vec<Sender<WorkerMsg>>,
        commit: Sender<CommitMsg>,
        committed: Arc<AtomicU64>,
    ) -> Router<'s> {
        Router {
            cfg,
            store,
            complete_cache: fresh,
            index: FxHashMap::default(),
            dirty: Vec::new(),
            dedup,
            max_ts,
            workers,
            commit,
            committed,
            batch: 1,
            items: Vec::new(),
            part: empty_part(1, start.0, start.1, max_ts),
        }
    }

    /// Consumes decoded chunks (in any order) until the input ends, then sends the last batch.
    ///
    /// # Errors
    /// A state read failure, or a worker or the committer gone (their own error is the one to report).
    pub(crate) fn run(mut self, input: &Receiver<ParsedChunk>) -> Result<(), EngineError> {
        let mut pending: BTreeMap<u64, ParsedChunk> = BTreeMap::new();
        let mut next = 0u64;
        for chunk in input {
            pending.insert(chunk.id, chunk);
            while let Some(chunk) = pending.remove(&next) {
                self.items.reserve(chunk.lines.len());
                for line in chunk.lines {
                    self.route_line(line)?;
                }
                self.flush()?;
                next += 1;
            }
        }
        if !pending.is_empty() {
            return Err(EngineError::Internal("input chunks were lost between decoding and routing".into()));
        }
        Ok(())
    }

    fn reject(&mut self, reason: RejectReason, detail: String, raw: &[u8], line: u64) {
        let rec =
            RejectedRecord::new(reason, detail, raw, SourcePosition::File { file: self.cfg.source_name.clone(), line });
        // A rejected record always serializes: it holds only strings and numbers.
        if serde_json::to_writer(&mut self.part.rejected, &rec).is_ok() {
            self.part.rejected.push(b'\n');
        }
        self.part.rejected_count += 1;
    }

    fn route_line(&mut self, line: ParsedLine) -> Result<(), EngineError> {
        match line.parsed {
            Parsed::Blank => {}
            Parsed::Rejected(r, raw) => self.reject(r.reason, r.detail, &raw, line.line),
            Parsed::Event(event, raw) => self.route_event(event, raw, line.line)?,
        }
        // Only now is the line consumed: a batch cut inside `route_event` (a move) must not claim it.
        self.part.records_end = line.line;
        self.part.bytes_end = line.end_byte;
        Ok(())
    }

    fn lookup(&mut self, entity: Entity, tenant: &str, id: &str) -> Result<Option<IndexRecord>, EngineError> {
        let key = index_key(entity, tenant, id);
        if let Some(slot) = self.index.get(&key) {
            return Ok(slot.rec.clone());
        }
        let rec = match (self.complete_cache, entity) {
            (true, _) => None,
            (false, Entity::Opportunity) => self.store.opportunity_index(tenant, id)?,
            (false, _) => self.store.person_index(tenant, id)?,
        };
        self.index.insert(key, IndexSlot { rec: rec.clone(), dirty_batch: 0 });
        Ok(rec)
    }

    fn set_index(&mut self, key: Box<str>, rec: IndexRecord) {
        let batch = self.batch;
        match self.index.get_mut(&key) {
            Some(slot) => {
                if slot.dirty_batch != batch {
                    self.dirty.push(key.clone());
                }
                slot.rec = Some(rec);
                slot.dirty_batch = batch;
            }
            None => {
                self.dirty.push(key.clone());
                self.index.insert(key, IndexSlot { rec: Some(rec), dirty_batch: batch });
            }
        }
    }

    fn route_event(&mut self, event: Box<InputEvent>, raw: Option<Vec<u8>>, line: u64) -> Result<(), EngineError> {
        let hash = event_hash(&event.tenant, &event.event_id);
        // Remembered now (one lookup); forgotten again below if the event turns out not to be applied.
        if !self.dedup.insert(hash) {
            self.part.duplicates += 1;
            return Ok(());
        }
        let tenant = event.tenant.as_str();
        // Persons and opportunities are indexed (tenant | id -> account); `indexed` names the entity.
        let indexed: Option<(Entity, &str)> = match &event.body {
            EventBody::PersonUpserted { person_id, .. }
            | EventBody::PersonDeleted { person_id }
            | EventBody::PersonActivity { person_id, .. } => Some((Entity::Person, person_id)),
            EventBody::OpportunityUpserted { opportunity_id, .. }
            | EventBody::OpportunityDeleted { opportunity_id } => Some((Entity::Opportunity, opportunity_id)),
            _ => None,
        };
        // An activity that names its account needs no index (it routes without moving the person).
        let names_account = matches!(&event.body, EventBody::PersonActivity { account_id: Some(_), .. });
        let known = match indexed {
            Some((entity, id)) if !names_account => self.lookup(entity, tenant, id)?,
            _ => None,
        };
        let known_account = known.as_ref().filter(|k| k.present).map(|k| k.account_id.clone());
        let (route_account, index_update): (Option<String>, Option<IndexRecord>) = match &event.body {
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
            other => (other.account_id().map(str::to_owned), None),
        };
        let needs_account = matches!(&event.body, EventBody::PersonUpserted { .. } | EventBody::PersonActivity { .. });
        if route_account.is_none() && needs_account {
            let person = event.body.person_id().unwrap_or_default();
            self.dedup.forget_last(hash);
            let raw = raw.unwrap_or_default();
            self.reject(
                RejectReason::UnknownPersonAccount,
                format!("person `{person}` has no known account and the event names none"),
                &raw,
                line,
            );
            return Ok(());
        }
        // An upsert into another account than the one holding the entity's record (alive, or its
        // tombstone) moves the record: detach it there first.
        let moving_from = match (&index_update, &known) {
            (Some(u), Some(k)) if u.present && k.account_id != u.account_id => Some(k.account_id.clone()),
            _ => None,
        };
        let mut attach = None;
        if let (Some(from), Some((entity, id))) = (moving_from, indexed) {
            // The detach must run after every earlier record of the old account: cut the batch here.
            self.flush()?;
            let (tx, rx) = crossbeam_channel::bounded(1);
            let w = worker_of(tenant, &from, self.cfg.workers);
            let msg = WorkerMsg::Detach {
                entity,
                tenant: tenant.to_owned(),
                account_id: from.clone(),
                id: id.to_owned(),
                reply: tx,
            };
            self.workers[w].send(msg).map_err(|_| EngineError::Stopped)?;
            match rx.recv().map_err(|_| EngineError::Stopped)? {
                Ok(Some(moved)) => attach = Some(Box::new((moved, from))),
                Ok(None) => tracing::warn!(
                    id,
                    account = from.as_str(),
                    "The index named an account that does not hold the record."
                ),
                Err(e) => return Err(EngineError::Internal(e)),
            }
        }
        if let (Some(update), Some((entity, id))) = (index_update, indexed) {
            self.set_index(index_key(entity, tenant, id), update);
        }
        self.dedup.settle();
        self.part.dedup.push(hash);
        self.part.applied += 1;
        let ts = event.ts.0;
        // Late: strictly behind the watermark. Still applied; it only never moves time.
        if self.max_ts.is_some_and(|m| ts < m.saturating_sub(self.cfg.allowed_disorder_ns)) {
            self.part.late += 1;
        }
        let max_ts = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max_ts);
        self.part.max_ts = self.max_ts;
        let (route, routed_to) = match route_account {
            Some(a) => {
                let route = Route::Worker(worker_of(tenant, &a, self.cfg.workers));
                // Keep the routing result only where the event does not name the account itself.
                (route, (event.body.account_id() != Some(a.as_str())).then_some(a))
            }
            None => (Route::Nowhere, None),
        };
        self.items.push(Item {
            seq: line,
            watermark: max_ts.saturating_sub(self.cfg.allowed_disorder_ns),
            route,
            routed_to,
            event,
            attach,
        });
        Ok(())
    }

    /// Sends the current batch to every worker and the router's part to the committer.
    fn flush(&mut self) -> Result<(), EngineError> {
        let batch = self.batch;
        let mut delta = Delta::default();
        for key in self.dirty.drain(..) {
            if let Some(IndexSlot { rec: Some(rec), .. }) = self.index.get(&key) {
                let (kind, rest) = key.split_at(1);
                let (tenant, id) = rest.split_once('\0').unwrap_or(("", rest));
                match kind {
                    "o" => delta.put_opportunity_index(tenant, id, rec),
                    _ => delta.put_person_index(tenant, id, rec),
                }
            }
        }
        let next_part = empty_part(batch + 1, self.part.records_end, self.part.bytes_end, self.max_ts);
        let mut part = std::mem::replace(&mut self.part, next_part);
        part.delta = delta;
        let shared = Arc::new(Batch { id: batch, items: std::mem::take(&mut self.items) });
        for w in &self.workers {
            w.send(WorkerMsg::Batch(Arc::clone(&shared))).map_err(|_| EngineError::Stopped)?;
        }
        self.commit.send(CommitMsg::Router(part)).map_err(|_| EngineError::Stopped)?;
        self.batch += 1;
        self.evict();
        Ok(())
    }

    /// Keeps the index within its capacity: drops clean entries (or entries whose batch has committed).
    fn evict(&mut self) {
        if self.index.len() > self.cfg.index_capacity {
            let mut excess = self.index.len() - self.cfg.index_capacity / 4 * 3;
            let committed = self.committed.load(Ordering::Acquire);
            super::drop_committed(&mut self.index, &mut excess, committed, |s| s.dirty_batch);
            self.complete_cache = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_keeps_the_last_n() {
        let mut w = DedupWindow::new(3);
        for h in 1..=5u128 {
            assert!(w.insert(h));
            w.settle();
        }
        assert!(!w.insert(5), "a duplicate");
        // An id that was not applied after all is forgotten without evicting anything.
        assert!(w.insert(9));
        w.forget_last(9);
        w.settle();
        assert!(!w.contains(9) && w.contains(3));
        assert!(!w.contains(1) && !w.contains(2));
        assert!(w.contains(3) && w.contains(4) && w.contains(5));
        let mut off = DedupWindow::new(0);
        assert!(off.insert(1));
        assert!(!off.contains(1));
    }

    #[test]
    fn hashes_separate_tenants_and_routing_is_stable() {
        assert_ne!(event_hash("t1", "e"), event_hash("t2", "e"));
        assert_ne!(event_hash("t", "1e"), event_hash("t1", "e"));
        for n in 1..5 {
            assert!(worker_of("t", "a", n) < n);
            assert_eq!(worker_of("t", "a", n), worker_of("t", "a", n));
        }
    }
}
