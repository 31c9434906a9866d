//! The router: the one sequential stage of a replay. It puts decoded records back in input order, drops
//! duplicates, routes person events through the person index, keeps the watermark, and cuts batches.
//!
//! It drives the record side of the partition core ([`crate::core::admit`]: the de-duplication window, the
//! person and opportunity index, and the single watermark of a replay: SPEC §3.2, one stream, one
//! watermark, whatever the number of workers) and cuts batches and epochs. It is not a state machine:
//! accounts are the workers' business; a person's or an opportunity's move from one account to another is
//! the only time the router asks a worker for something (`Detach`).

use super::messages::{Batch, CommitMsg, Extra, RouterPart, Step, WorkerMsg};
use super::reader::{ChunkLines, LineReturns, ParsedChunk, ParsedLine, SharedLines};
use crate::EngineError;
use crate::core::admit::{Admission, Admit};
use crate::core::decode::{Decoded, Parsed};
use crate::core::keys::{self, worker_of};
use crate::core::routing::unknown_person_detail;
use crate::prefetch;
use crate::telemetry::Tally;
use caravan_schemas::Id;
use caravan_schemas::input::{EventBody, RejectReason};
use caravan_schemas::output::{RejectedRecord, SourcePosition};
use caravan_state::{Delta, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many lines ahead of the one being routed the router starts loading an event's slot in the
/// de-duplication window (a random place in tens of megabytes): far enough for the load to arrive before the
/// insert, near enough that it is still cached then.
const PREFETCH_AHEAD: usize = 8;

/// The state bytes the router reckons an applied record other than an activity adds to its epoch's writes:
/// about what a person record, its key and its place in the write take ([`EpochBounds::state_bytes`]).
const STATE_WRITE_ESTIMATE: usize = 256;

/// The shortest the router waits for a chunk before it checks whether a quiet input's epoch is due.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// When the router seals an epoch: at the first batch end where any bound is reached.
pub(crate) struct EpochBounds {
    pub(crate) interval: Duration,
    pub(crate) records: u64,
    /// The state writes the epoch may gather, in bytes, reckoned as [`STATE_WRITE_ESTIMATE`] per applied
    /// record other than an activity (upserts, deletes, audience changes each write about one record;
    /// activities mostly none). The writes only exist at the seal, when the workers encode what changed;
    /// the bound keeps that moment's memory small while records are mostly upserts.
    pub(crate) state_bytes: usize,
}

/// The epoch being gathered.
struct Epoch {
    started: Instant,
    /// Input records consumed when it began.
    records_start: u64,
    /// Applied records other than activities.
    writes: usize,
    /// A batch was sent since the last seal.
    unsealed: bool,
}

impl Epoch {
    /// An epoch starting now, after `records_start` input records.
    fn starting(records_start: u64) -> Epoch {
        Epoch { started: Instant::now(), records_start, writes: 0, unsealed: false }
    }
}

/// Settings of the router.
pub(crate) struct RouterConfig {
    /// Partition workers (an account's worker is its key modulo this).
    pub(crate) workers: usize,
    /// When an epoch ends.
    pub(crate) epochs: EpochBounds,
    /// What the caches keep (the router holds the whole index; the workers share the accounts).
    pub(crate) cache: crate::core::cache::Capacity,
    /// Applied event ids go to the committer, for the window's stored epochs (not with a temporary state).
    pub(crate) store_ids: bool,
    /// The input's name, as rejected records give it.
    pub(crate) source_name: String,
    /// Where the router's reference to a routed chunk's lines goes back to be freed.
    pub(crate) returns: LineReturns,
}

pub(crate) struct Router<'s> {
    cfg: RouterConfig,
    store: &'s Store,
    /// De-duplication, the index and event time.
    admission: Admission,
    workers: Vec<Sender<WorkerMsg>>,
    commit: Sender<CommitMsg>,
    committed: Arc<AtomicU64>,
    batch: u64,
    /// The decoded lines of the chunk being routed; batches share them.
    lines: SharedLines,
    steps: Vec<Step>,
    extras: Vec<Extra>,
    part: RouterPart,
    epoch: Epoch,
}

fn empty_part(batch: u64, records_end: u64, bytes_end: u64, max_ts: Option<i64>, read_at: Instant) -> RouterPart {
    RouterPart {
        batch,
        rejected: Vec::new(),
        delta: Delta::default(),
        dedup: Vec::new(),
        records_end,
        bytes_end,
        max_ts,
        tally: Tally::default(),
        read_at,
        seal: false,
    }
}

impl<'s> Router<'s> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: RouterConfig,
        store: &'s Store,
        admission: Admission,
        start: (u64, u64),
        workers: Vec<Sender<WorkerMsg>>,
        commit: Sender<CommitMsg>,
        committed: Arc<AtomicU64>,
    ) -> Router<'s> {
        Router {
            cfg,
            store,
            workers,
            commit,
            committed,
            batch: 1,
            lines: Arc::new(ChunkLines { decoder: 0, lines: Vec::new() }),
            steps: Vec::new(),
            extras: Vec::new(),
            part: empty_part(1, start.0, start.1, admission.max_ts(), Instant::now()),
            admission,
            epoch: Epoch::starting(start.0),
        }
    }

    /// Consumes decoded chunks (in any order) until the input ends, then sends the last batch.
    ///
    /// # Errors
    /// A state read failure, or a worker or the committer gone (their own error is the one to report).
    pub(crate) fn run(mut self, input: &Receiver<ParsedChunk>) -> Result<(), EngineError> {
        let mut pending: BTreeMap<u64, ParsedChunk> = BTreeMap::new();
        let mut next = 0u64;
        loop {
            // A quiet input (a pipe with nothing new) must not hold back what was routed: once the interval
            // is up, an empty batch seals the epoch. (At least 1 ms: a zero interval must not spin while the
            // decoders work.)
            let wait = self.cfg.epochs.interval.saturating_sub(self.epoch.started.elapsed()).max(MIN_WAIT);
            let chunk = match input.recv_timeout(wait) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Timeout) => {
                    if self.epoch.unsealed {
                        self.flush_with(true)?;
                    } else {
                        self.epoch.started = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            pending.insert(chunk.id, chunk);
            while let Some(chunk) = pending.remove(&next) {
                let lines = Arc::new(chunk.lines);
                self.part.read_at = chunk.read_at;
                let done = std::mem::replace(&mut self.lines, Arc::clone(&lines));
                self.cfg.returns.give_back(done);
                // Sized once for the chunk: grown push by push, these copied themselves over and over.
                self.steps.reserve(lines.lines.len());
                if self.cfg.store_ids {
                    self.part.dedup.reserve(lines.lines.len());
                }
                for (ix, line) in lines.lines.iter().enumerate() {
                    // Two stages: the line (written by a decoder on another core) twice as far ahead, then,
                    // from that line, the event's slot in the window.
                    if let Some(far) = lines.lines.get(ix + 2 * PREFETCH_AHEAD) {
                        prefetch::lines(far, 4);
                    }
                    if let Some(Parsed::Event(ahead)) = lines.lines.get(ix + PREFETCH_AHEAD).map(|l| &l.parsed) {
                        self.admission.dedup.prefetch(ahead.dedup);
                    }
                    self.route_line(line, ix as u32)?;
                }
                self.flush()?;
                next += 1;
            }
        }
        if !pending.is_empty() {
            return Err(EngineError::Internal("input chunks were lost between decoding and routing".into()));
        }
        // The input ended: what was routed since the last seal commits.
        if self.epoch.unsealed {
            self.flush_with(true)?;
        }
        Ok(())
    }

    fn reject(&mut self, reason: RejectReason, detail: String, raw: &[u8], line: u64) {
        tracing::debug!(reason = reason.as_str(), %detail, line, "Record rejected.");
        let rec =
            RejectedRecord::new(reason, detail, raw, SourcePosition::File { file: self.cfg.source_name.clone(), line });
        // A rejected record always serializes: it holds only strings and numbers.
        if serde_json::to_writer(&mut self.part.rejected, &rec).is_ok() {
            self.part.rejected.push(b'\n');
        }
        self.part.tally.rejected(reason);
    }

    fn route_line(&mut self, line: &ParsedLine, ix: u32) -> Result<(), EngineError> {
        match &line.parsed {
            Parsed::Blank => {}
            Parsed::Rejected(r, raw) => self.reject(r.reason, r.detail.clone(), raw, line.line),
            Parsed::Event(decoded) => self.route_event(decoded, ix, line.line)?,
        }
        // Only now is the line consumed: a batch cut inside `route_event` (a move) must not claim it.
        self.part.records_end = line.line;
        self.part.bytes_end = line.end_byte;
        Ok(())
    }

    fn route_event(&mut self, decoded: &Decoded, ix: u32, line: u64) -> Result<(), EngineError> {
        let Decoded { event, dedup: hash, named_account, raw } = decoded;
        let (hash, named_account) = (*hash, *named_account);
        let (route, indexed) = match self.admission.admit(self.store, event, hash, false, &mut self.part.tally)? {
            Admit::Duplicate => return Ok(()),
            Admit::Routed { route, indexed, .. } => (route, indexed),
        };
        let tenant = event.tenant.as_str();
        if route.unroutable {
            self.admission.not_applied(hash, false);
            let detail = unknown_person_detail(event.body.person_id().unwrap_or_default(), false);
            self.reject(RejectReason::UnknownPersonAccount, detail, raw.as_deref().unwrap_or_default(), line);
            return Ok(());
        }
        let mut attach = None;
        if let (Some(from), Some(i)) = (route.moving_from, indexed) {
            // The detach must run after every earlier record of the old account: cut the batch here.
            self.flush()?;
            let (tx, rx) = crossbeam_channel::bounded(1);
            let from_key = keys::account_key(tenant, &from);
            let w = worker_of(from_key, self.cfg.workers);
            let msg = WorkerMsg::Detach {
                entity: i.entity,
                tenant: Id::from(tenant),
                account_id: from.clone(),
                account_key: from_key,
                id: Id::from(i.id),
                reply: tx,
            };
            self.workers[w].send(msg).map_err(|_| EngineError::Stopped)?;
            match rx.recv().map_err(|_| EngineError::Stopped)? {
                Ok(Some(moved)) => attach = Some(Box::new((moved, from))),
                Ok(None) => tracing::warn!(
                    id = i.id,
                    account = from.as_str(),
                    "The index named an account that does not hold the record."
                ),
                Err(e) => return Err(e),
            }
        }
        let index_write = indexed.zip(route.index_update);
        let ids = self.cfg.store_ids.then_some(&mut self.part.dedup);
        let applied =
            self.admission.applied(event, hash, false, index_write, self.batch, ids, true, &mut self.part.tally);
        if !matches!(event.body, EventBody::PersonActivity { .. }) {
            self.epoch.writes += 1;
        }
        self.part.max_ts = self.admission.max_ts();
        let (route, account_key, routed_to) = match route.account {
            Some(a) => {
                // The decoder hashed the account the event names (every route above prefers it to the
                // index); only an account found through the index is hashed here.
                let (key, routed_to) = match named_account {
                    Some(k) => (k, None),
                    None => (keys::account_key(tenant, &a), Some(a)),
                };
                (worker_of(key, self.cfg.workers) as u32, key, routed_to)
            }
            None => (Step::NOWHERE, 0, None),
        };
        let extra = if routed_to.is_some() || attach.is_some() {
            self.extras.push(Extra { routed_to, attach });
            (self.extras.len() - 1) as u32
        } else {
            Step::NO_EXTRA
        };
        self.steps.push(Step { worker: route, line: ix, watermark: applied.watermark, seq: line, account_key, extra });
        Ok(())
    }

    /// Sends the current batch to every worker and the router's part to the committer, sealing the epoch
    /// with it when a bound of [`EpochBounds`] is reached.
    fn flush(&mut self) -> Result<(), EngineError> {
        let bounds = &self.cfg.epochs;
        let seal = self.epoch.started.elapsed() >= bounds.interval
            || self.part.records_end.saturating_sub(self.epoch.records_start) >= bounds.records
            || self.epoch.writes.saturating_mul(STATE_WRITE_ESTIMATE) >= bounds.state_bytes;
        self.flush_with(seal)
    }

    fn flush_with(&mut self, seal: bool) -> Result<(), EngineError> {
        let batch = self.batch;
        let mut delta = Delta::default();
        self.admission.index.write_back(&mut delta);
        let (records_end, bytes_end) = (self.part.records_end, self.part.bytes_end);
        let next_part = empty_part(batch + 1, records_end, bytes_end, self.admission.max_ts(), self.part.read_at);
        let mut part = std::mem::replace(&mut self.part, next_part);
        part.delta = delta;
        part.seal = seal;
        self.epoch = match seal {
            true => Epoch::starting(part.records_end),
            false => Epoch { unsealed: true, ..self.epoch },
        };
        let shared = Arc::new(Batch {
            id: batch,
            lines: Arc::clone(&self.lines),
            steps: std::mem::take(&mut self.steps),
            extras: std::mem::take(&mut self.extras),
            seal,
        });
        for w in &self.workers {
            w.send(WorkerMsg::Batch(Arc::clone(&shared))).map_err(|_| EngineError::Stopped)?;
        }
        self.commit.send(CommitMsg::Router(part)).map_err(|_| EngineError::Stopped)?;
        self.batch += 1;
        // Index entries whose batch has committed may go.
        self.admission.index.evict(self.cfg.cache.index, self.committed.load(Ordering::Acquire));
        Ok(())
    }
}
