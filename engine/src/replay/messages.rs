//! What crosses thread boundaries in a replay: batches of routed records, worker results, router results.
//!
//! Batches, not records, cross threads. Every batch has a number; the committer needs one part from the
//! router and one from every worker for each batch number before the batch can commit.

use super::reader::SharedLines;
use crate::core::decode::Parsed;
use crate::telemetry::Tally;
use caravan_operators::account::Moved;
use caravan_schemas::Id;
use caravan_schemas::input::InputEvent;
use caravan_schemas::output::Entity;
use caravan_state::Delta;
use std::sync::Arc;
use std::time::Instant;

/// One applied record, routed: what every worker reads of it, in a dense array, while the event itself stays
/// where the decoder put it (in the chunk's lines, shared by the batch), so no stage copies events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    /// The worker that owns the record's account, or [`Step::NOWHERE`] for a record applied with no effect
    /// on any account (e.g. deleting an unknown person); timers still get their pass after it.
    pub(crate) worker: u32,
    /// Index of the record in [`Batch::lines`].
    pub(crate) line: u32,
    /// The watermark after this record (event-time nanoseconds).
    pub(crate) watermark: i64,
    /// Input sequence number: the record's 1-based line.
    pub(crate) seq: u64,
    /// [`crate::core::keys::account_key`] of the account it is applied to (0 when it goes nowhere): the
    /// worker's cache is keyed by it, so that no thread hashes an account id twice.
    pub(crate) account_key: u64,
    /// Index in [`Batch::extras`], or [`Step::NO_EXTRA`].
    pub(crate) extra: u32,
}

impl Step {
    pub(crate) const NOWHERE: u32 = u32::MAX;
    pub(crate) const NO_EXTRA: u32 = u32::MAX;
}

/// What few records carry besides their event.
pub(crate) struct Extra {
    /// The account it is applied to, when the event does not name it (routed through the person index).
    pub(crate) routed_to: Option<Id>,
    /// A person or opportunity moving in from another account, with that account's id.
    pub(crate) attach: Option<Box<(Moved, Id)>>,
}

/// A batch of applied records in input order, shared by every worker: a chunk, or the part of one between
/// two moves.
pub(crate) struct Batch {
    pub(crate) id: u64,
    /// The decoded lines of the chunk the batch comes from (shared with the chunk's other batches).
    /// Holders give their references back to the decoder that built them
    /// ([`LineReturns`](super::reader::LineReturns)).
    pub(crate) lines: SharedLines,
    /// The applied records of the batch, in input order.
    pub(crate) steps: Vec<Step>,
    pub(crate) extras: Vec<Extra>,
    /// The batch ends an epoch: every worker writes the accounts it changed since the last sealed batch into
    /// its part of this one, and the committer commits once it has absorbed it.
    pub(crate) seal: bool,
}

impl Batch {
    /// The event of a step (always there: the router makes steps of events only).
    pub(crate) fn event(&self, step: &Step) -> Option<&InputEvent> {
        match &self.lines.lines.get(step.line as usize)?.parsed {
            Parsed::Event(d) => Some(&d.event),
            _ => None,
        }
    }

    /// The extra of a step, if it has one.
    pub(crate) fn extra(&self, step: &Step) -> Option<&Extra> {
        self.extras.get(step.extra as usize)
    }

    /// The account a step's event is applied to.
    pub(crate) fn account_id<'a>(&'a self, step: &Step, event: &'a InputEvent) -> &'a str {
        self.extra(step).and_then(|x| x.routed_to.as_deref()).or_else(|| event.body.account_id()).unwrap_or_default()
    }
}

/// Work for a worker.
pub(crate) enum WorkerMsg {
    /// Apply the batch's records of this worker and run timer passes after every record.
    Batch(Arc<Batch>),
    /// Remove a person or opportunity from an account (it moves to another one) and reply with its record.
    /// Runs between batches; its writes commit with the next batch.
    Detach {
        entity: Entity,
        tenant: Id,
        account_id: Id,
        /// [`crate::core::keys::account_key`] of `account_id`.
        account_key: u64,
        id: Id,
        reply: crossbeam_channel::Sender<Result<Option<Moved>, crate::EngineError>>,
    },
}

/// The outputs of one cause (a record, or a timer firing after one): ranges of its worker part's buffers.
pub(crate) struct Group {
    /// Input sequence number of the record (for timers: the record after which they fired).
    pub(crate) seq: u64,
    /// For a timer firing: its due time and arming order.
    pub(crate) timer: Option<(i64, Vec<u64>)>,
    /// NDJSON action records, in `WorkerPart::actions`.
    pub(crate) actions: std::ops::Range<usize>,
    /// NDJSON change events, in `WorkerPart::changes`.
    pub(crate) changes: std::ops::Range<usize>,
}

impl Group {
    /// The global output order: record, then the timers that fired after it in (due, arming) order.
    pub(crate) fn order_key(&self) -> (u64, bool, i64, &[u64]) {
        match &self.timer {
            None => (self.seq, false, 0, &[]),
            Some((due, arm)) => (self.seq, true, *due, arm),
        }
    }
}

/// A worker's part of a batch.
pub(crate) struct WorkerPart {
    pub(crate) batch: u64,
    pub(crate) groups: Vec<Group>,
    /// Serialized outputs of every group, back to back.
    pub(crate) actions: Vec<u8>,
    pub(crate) changes: Vec<u8>,
    pub(crate) delta: Delta,
    /// Actions and changes emitted.
    pub(crate) tally: Tally,
}

/// The router's part of a batch.
pub(crate) struct RouterPart {
    pub(crate) batch: u64,
    /// Rejected records of the batch, as NDJSON in input order.
    pub(crate) rejected: Vec<u8>,
    /// Person index writes.
    pub(crate) delta: Delta,
    /// Hashes of the event ids applied in this batch, in order.
    pub(crate) dedup: Vec<(u128, i64)>,
    /// Input consumed after this batch: records (lines) and bytes.
    pub(crate) records_end: u64,
    pub(crate) bytes_end: u64,
    /// Largest applied event time after this batch.
    pub(crate) max_ts: Option<i64>,
    /// Counts in this batch: applied (of which late), rejected, duplicates.
    pub(crate) tally: Tally,
    /// When the chunk the batch comes from was read.
    pub(crate) read_at: Instant,
    /// The batch ends an epoch ([`Batch::seal`]).
    pub(crate) seal: bool,
}

/// Messages to the committer.
pub(crate) enum CommitMsg {
    Router(RouterPart),
    Worker(WorkerPart),
}
