//! The committer: the one place where a replay's work becomes durable, exactly once.
//!
//! It owns the output files and the commit protocol of replay mode. It gathers, for each batch number, the
//! router's part and every worker's part, puts the outputs in their global order (record, then the timers
//! that fired after it by due time and arming order), and every epoch (a run of whole batches, ended by one
//! the router sealed):
//! 1. appends the epoch's outputs to the three files (through buffers as batches arrive, flushed here);
//! 2. commits, in one RocksDB write batch, the state delta, the de-duplication window's new ids, and a
//!    checkpoint holding the input position and the files' lengths after step 1.
//!
//! On restart the files are cut back to the lengths of the last checkpoint and input resumes from its
//! position. A crash between 1 and 2 leaves output bytes past the checkpoint; they are cut and produced
//! again, identical, because processing is deterministic. This replaces the outbox of DESIGN.md with the same
//! guarantee and without writing every output twice (see ARCHITECTURE.md). It is not a scheduler: it
//! never changes state itself, and it commits only at a sealed batch, the one batch where every worker's part
//! carries all the state it changed in the epoch.

use super::messages::{CommitMsg, RouterPart, WorkerPart};
use crate::EngineError;
use crate::core::dedup::EpochLog;
use crate::telemetry::{self, Tally};
use caravan_state::{Checkpoint, Delta, Store};
use crossbeam_channel::Receiver;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The three output files of a replay, in checkpoint order.
pub(crate) const OUTPUT_FILES: [&str; 3] = ["actions.ndjson", "changes.ndjson", "rejected.ndjson"];

/// Opens the output files and cuts them back to what the checkpoint says is committed (or empties them when
/// nothing is).
///
/// # Errors
/// When a file cannot be opened, or is shorter than the checkpoint says (it was changed behind our back).
pub(crate) fn open_outputs(dir: &Path, lengths: Option<[u64; 3]>) -> Result<[File; 3], EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    let open = |i: usize| -> Result<File, EngineError> {
        let path: PathBuf = dir.join(OUTPUT_FILES[i]);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
        let want = lengths.map_or(0, |l| l[i]);
        let have = f.metadata().map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?.len();
        if have < want {
            return Err(EngineError::Invalid(format!(
                "{} holds {have} bytes but the state's checkpoint says {want} were committed: the output folder \
                 does not belong to this state (use a new --state, or the --out it was used with)",
                path.display()
            )));
        }
        f.set_len(want).map_err(|e| EngineError::io(format!("truncating {}", path.display()), e))?;
        Ok(f)
    };
    Ok([open(0)?, open(1)?, open(2)?])
}

/// Settings of the committer.
pub(crate) struct CommitterConfig {
    pub(crate) workers: usize,
    pub(crate) sync_outputs: bool,
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
    store: &'s Store,
    files: [BufWriter<File>; 3],
    /// Bytes appended to each file since the last commit.
    appended: [u64; 3],
    checkpoint: Checkpoint,
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
        store: &'s Store,
        files: [File; 3],
        checkpoint: Checkpoint,
        dedup_log: EpochLog,
        committed: Arc<AtomicU64>,
    ) -> Committer<'s> {
        Committer {
            cfg,
            store,
            files: files.map(|f| BufWriter::with_capacity(1 << 20, f)),
            appended: [0; 3],
            checkpoint,
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
    /// checkpoint. Batches absorbed after the last seal (a run that stopped on an error) are not committed:
    /// their workers did not write their state.
    ///
    /// # Errors
    /// A failed write of the outputs or the state; the run must stop (a restart recovers).
    pub(crate) fn run(mut self, input: &Receiver<CommitMsg>) -> Result<Checkpoint, EngineError> {
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
        Ok(self.checkpoint)
    }

    /// Appends bytes to one output file (buffered; flushed by `commit`).
    fn append(&mut self, file: usize, bytes: &[u8]) -> Result<(), EngineError> {
        self.files[file]
            .write_all(bytes)
            .map_err(|e| EngineError::io(format!("appending to {}", OUTPUT_FILES[file]), e))?;
        self.appended[file] += bytes.len() as u64;
        Ok(())
    }

    /// Appends a whole batch's outputs in their global order and adds its delta to the epoch.
    fn absorb(&mut self, p: Pending) -> Result<(), EngineError> {
        let Some(router) = p.router else { return Ok(()) };
        let mut groups: Vec<_> = p.workers.iter().flat_map(|w| w.groups.iter().map(move |g| (w, g))).collect();
        groups.sort_by(|(_, a), (_, b)| a.order_key().cmp(&b.order_key()));
        for (w, g) in groups {
            self.append(0, &w.actions[g.actions.clone()])?;
            self.append(1, &w.changes[g.changes.clone()])?;
        }
        self.append(2, &router.rejected)?;
        self.checkpoint.records = router.records_end;
        self.checkpoint.input_bytes = router.bytes_end;
        self.checkpoint.max_ts = router.max_ts;
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
        let epoch = self.checkpoint.epoch + 1;
        for (i, file) in self.files.iter_mut().enumerate() {
            file.flush().map_err(|e| EngineError::io(format!("appending to {}", OUTPUT_FILES[i]), e))?;
            if self.cfg.sync_outputs {
                file.get_ref().sync_data().map_err(|e| EngineError::io(format!("syncing {}", OUTPUT_FILES[i]), e))?;
            }
            self.checkpoint.output_lengths[i] += std::mem::take(&mut self.appended[i]);
        }
        let mut delta = std::mem::take(&mut self.delta);
        delta.compact();
        self.dedup_log.record(&mut delta, epoch, &self.dedup, self.checkpoint.max_ts);
        self.dedup.clear();
        self.checkpoint.epoch = epoch;
        for (total, n) in self.checkpoint.totals.iter_mut().zip(self.tally.totals) {
            *total += n;
        }
        self.store.commit(&delta, &self.checkpoint)?;
        tracing::debug!(epoch, writes = delta.len(), bytes = delta.bytes(), "Epoch committed.");
        self.committed.store(self.last_batch, Ordering::Release);
        let tally = std::mem::take(&mut self.tally);
        telemetry::record_commit(&tally, delta.len(), started.elapsed(), self.reads.first().map(|r| r.0));
        for (read, n) in self.reads.drain(..) {
            telemetry::record_latency(read, n as usize);
        }
        if let Some(max_ts) = self.checkpoint.max_ts {
            telemetry::record_watermark(max_ts.saturating_sub(self.cfg.allowed_disorder_ns));
        }
        Ok(())
    }
}
