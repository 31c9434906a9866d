//! The committer: where the replay pipeline's work becomes durable, exactly once.
//!
//! It gathers, for each batch number, the router's part and every worker's part, stages the outputs in
//! their global order (record, then the timers that fired after it by due time and arming order) into the
//! [`FileSink`] as batches arrive, and at every sealed batch ends the epoch (a run of whole batches): the
//! state delta, the de-duplication window's new ids and the position go to the sink as one [`Epoch`], the
//! core's commit protocol (`crate::core::epoch`). It is not a scheduler: it never changes state itself, and
//! it commits only at a sealed batch, the one batch where every worker's part carries all the state it
//! changed in the epoch.

use super::messages::{CommitMsg, RouterPart, WorkerPart};
use super::sink::FileSink;
use crate::EngineError;
use crate::core::dedup::EpochLog;
use crate::core::epoch::{Epoch, Sink};
use crate::telemetry::{self, Tally};
use caravan_state::{Delta, Position};
use crossbeam_channel::Receiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Settings of the committer.
pub(crate) struct CommitterConfig {
    pub(crate) workers: usize,
    /// The watermark trails the largest event time by this much.
    pub(crate) allowed_disorder_ns: i64,
}

#[derive(Default)]
struct Pending {
    router: Option<RouterPart>,
    workers: Vec<WorkerPart>,
}

pub(crate) struct Committer<'s> {
    cfg: CommitterConfig,
    sink: FileSink<'s>,
    /// Where the epoch being gathered has brought the input.
    next: Position,
    dedup_log: EpochLog,
    committed: Arc<AtomicU64>,
    pending: BTreeMap<u64, Pending>,
    next_batch: u64,
    // The epoch being gathered.
    delta: Delta,
    dedup: Vec<(u128, i64)>,
    last_batch: u64,
    tally: Tally,
    /// The epoch's batches: when each one's chunk was read, and its records.
    reads: Vec<(Instant, u64)>,
}

impl<'s> Committer<'s> {
    pub(crate) fn new(
        cfg: CommitterConfig,
        sink: FileSink<'s>,
        dedup_log: EpochLog,
        committed: Arc<AtomicU64>,
    ) -> Committer<'s> {
        Committer {
            cfg,
            next: sink.position().clone(),
            sink,
            dedup_log,
            committed,
            pending: BTreeMap::new(),
            next_batch: 1,
            delta: Delta::default(),
            dedup: Vec::new(),
            last_batch: 0,
            tally: Tally::default(),
            reads: Vec::new(),
        }
    }

    /// Absorbs batches in order and commits at each sealed one, until every sender is gone; returns the last
    /// committed position. Batches absorbed after the last seal (a run that stopped on an error) are not committed:
    /// their workers did not write their state.
    ///
    /// # Errors
    /// A failed write of the outputs or the state; the run must stop (a restart recovers).
    pub(crate) fn run(mut self, input: &Receiver<CommitMsg>) -> Result<Position, EngineError> {
        for msg in input {
            let batch = match &msg {
                CommitMsg::Router(p) => p.batch,
                CommitMsg::Worker(p) => p.batch,
            };
            let slot = self.pending.entry(batch).or_default();
            match msg {
                CommitMsg::Router(p) => slot.router = Some(p),
                CommitMsg::Worker(p) => slot.workers.push(p),
            }
            while self
                .pending
                .get(&self.next_batch)
                .is_some_and(|p| p.router.is_some() && p.workers.len() == self.cfg.workers)
            {
                let Some(p) = self.pending.remove(&self.next_batch) else { break };
                let sealed = p.router.as_ref().is_some_and(|r| r.seal);
                self.absorb(p)?;
                self.next_batch += 1;
                if sealed {
                    self.commit()?;
                }
            }
        }
        Ok(self.sink.position().clone())
    }

    /// Stages a whole batch's outputs in their global order and adds its delta to the epoch.
    fn absorb(&mut self, p: Pending) -> Result<(), EngineError> {
        let Some(router) = p.router else { return Ok(()) };
        let mut groups: Vec<_> = p.workers.iter().flat_map(|w| w.groups.iter().map(move |g| (w, g))).collect();
        groups.sort_by(|(_, a), (_, b)| a.order_key().cmp(&b.order_key()));
        for (w, g) in groups {
            self.sink.stage(0, &w.actions[g.actions.clone()])?;
            self.sink.stage(1, &w.changes[g.changes.clone()])?;
        }
        self.sink.stage(2, &router.rejected)?;
        self.next.input_next = i64::try_from(router.records_end).unwrap_or(i64::MAX);
        self.next.seq = router.records_end;
        self.next.input_bytes = router.bytes_end;
        self.next.max_ts = router.max_ts;
        let records = router.tally.records();
        if records > 0 {
            self.reads.push((router.read_at, records));
        }
        self.tally.merge(router.tally);
        self.delta.extend(router.delta);
        for w in p.workers {
            self.tally.merge(w.tally);
            self.delta.extend(w.delta);
        }
        self.dedup.extend_from_slice(&router.dedup);
        self.last_batch = router.batch;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        let started = Instant::now();
        let mut delta = std::mem::take(&mut self.delta);
        delta.compact();
        let tally = std::mem::take(&mut self.tally);
        let mut epoch = Epoch::after(&self.next, Vec::new(), delta, tally);
        let number = epoch.position.epoch;
        self.dedup_log.record(&mut epoch.delta, number, &self.dedup, epoch.position.max_ts);
        self.dedup.clear();
        let (writes, bytes, max_ts) = (epoch.delta.len(), epoch.delta.bytes(), epoch.position.max_ts);
        let tally = std::mem::take(&mut epoch.tally);
        self.sink.commit(vec![(0, epoch)])?;
        self.next = self.sink.position().clone();
        tracing::debug!(epoch = number, writes, bytes, "Epoch committed.");
        self.committed.store(self.last_batch, Ordering::Release);
        telemetry::record_commit(&tally, writes, started.elapsed(), self.reads.first().map(|r| r.0));
        for (read, n) in self.reads.drain(..) {
            telemetry::record_latency(read, n as usize);
        }
        if let Some(max_ts) = max_ts {
            telemetry::record_watermark(max_ts.saturating_sub(self.cfg.allowed_disorder_ns));
        }
        Ok(())
    }
}
