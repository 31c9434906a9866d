//! Replay: the embedded mode. One NDJSON input (a file or standard input) through the journeys, into three
//! NDJSON output files, exactly once across crashes, resumable with a state folder.
//!
//! It owns the wiring of the pipeline, a thread per stage, bounded channels between them, batches crossing:
//!
//! ```text
//! reader -> decoders (N) -> router (in order) -> workers (P, by account) -> committer -> files + RocksDB
//! ```
//!
//! Outputs never depend on the number of decoders or workers: the router alone decides order, routing and
//! the watermark; the committer alone decides the order of outputs. The record side of each step (decode,
//! de-duplicate, route) and its account side (apply, timers) are the partition core's ([`crate::core`]),
//! which the Kafka service drives too; this module holds only the replay's threads, files and commit.

mod committer;
mod messages;
mod publish;
mod reader;
mod router;
mod sink;
mod worker;

use crate::EngineError;
use caravan_operators::account::Definitions;
use caravan_schemas::input::DecodeLimits;
use caravan_state::{Store, StoreOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

pub use publish::{stop, stored_definitions};

/// Everything a replay needs to know.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The input: a file, or `-` for standard input.
    pub input: PathBuf,
    /// The folder of the three output files.
    pub out: PathBuf,
    /// The state folder; `None` uses a temporary one (the run is then not resumable).
    pub state: Option<PathBuf>,
    /// Partition workers.
    pub workers: usize,
    /// Decoder threads.
    pub decoders: usize,
    /// Bytes read per chunk (a chunk is decoded, routed and batched as a unit).
    pub chunk_bytes: usize,
    /// Commit at least this often.
    pub commit_interval: Duration,
    /// Commit at least every this many input records.
    pub commit_records: u64,
    /// Commit at least whenever the state writes of the epoch reach this many bytes, as the router reckons
    /// them (256 bytes for each applied record other than an activity): what the epoch's commit holds in
    /// memory (an epoch of upserts writes a record for nearly every input record).
    pub commit_state_bytes: usize,
    /// Allowed disorder of event time: the watermark is the largest `ts` minus this (nanoseconds).
    pub allowed_disorder_ns: i64,
    /// Event ids remembered for de-duplication (0 turns it off).
    pub dedup_window: usize,
    /// Event ids are also forgotten once their event time is this far (nanoseconds) behind the largest one
    /// applied; 0: no age bound.
    pub dedup_max_age_ns: i64,
    /// Accounts cached in memory, over all workers.
    pub cache_accounts: usize,
    /// Person index entries cached in memory.
    pub cache_persons: usize,
    /// Record size and time bounds.
    pub limits: DecodeLimits,
    /// The tenant registry's tenant ids; empty accepts every tenant.
    pub tenants: Vec<String>,
    /// XDM B2B input, every record of this tenant; `None` reads native events.
    pub xdm_tenant: Option<String>,
    /// RocksDB tuning.
    pub store: StoreOptions,
    /// fsync outputs before each commit (for power loss; process crashes are covered without it).
    pub sync: bool,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Set (e.g. by SIGTERM) to stop reading: the records read so far are processed and committed.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The admin server's view, when one serves: it gets the store and the definitions once they are
    /// reconciled, and readiness while the input is read.
    pub admin: Option<crate::admin::Admin>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        ReplayOptions {
            input: PathBuf::from("-"),
            out: PathBuf::from("out"),
            state: None,
            workers: cores,
            decoders: cores,
            chunk_bytes: 1 << 20,
            commit_interval: Duration::from_secs(1),
            commit_records: 250_000,
            commit_state_bytes: 16 << 20,
            allowed_disorder_ns: 5_000_000_000,
            dedup_window: 1_000_000,
            dedup_max_age_ns: 0,
            cache_accounts: 400_000,
            cache_persons: 2_000_000,
            limits: DecodeLimits::default(),
            tenants: Vec::new(),
            xdm_tenant: None,
            store: StoreOptions::default(),
            sync: false,
            progress: false,
            stop: None,
            admin: None,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Input records (lines) read in this run.
    pub records: u64,
    /// Where this run started (records already committed by an earlier run).
    pub resumed_at: u64,
    /// Totals over the whole input so far: applied, rejected, duplicates, actions, changes.
    pub applied: u64,
    /// Rejected records.
    pub rejected: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Applied records that were behind the watermark.
    pub late: u64,
    /// Action records.
    pub actions: u64,
    /// Change events.
    pub changes: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// False when the run was stopped before the end of its input (a rerun resumes it).
    pub complete: bool,
}

impl Summary {
    /// Input records per second in this run.
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn first_error(errors: Vec<EngineError>) -> Option<EngineError> {
    // A thread that stopped because another one failed reports `Stopped`; report the cause.
    let mut stopped = None;
    for e in errors {
        if matches!(e, EngineError::Stopped) {
            stopped = Some(e);
        } else {
            return Some(e);
        }
    }
    stopped
}

/// Runs a replay to the end of its input.
///
/// # Errors
/// Unreadable input, unwritable outputs, a state store failure, or an output folder that does not match the
/// state folder. Bad records are not errors: they go to `rejected.ndjson`.
pub fn replay(opts: &ReplayOptions, defs: Definitions) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let workers = opts.workers.max(1);
    let decoders = opts.decoders.max(1);
    let temp_state;
    let state_dir = match &opts.state {
        Some(dir) => dir.clone(),
        None => {
            temp_state =
                tempfile::tempdir().map_err(|e| EngineError::io("creating a temporary state folder".into(), e))?;
            temp_state.path().to_path_buf()
        }
    };
    // The de-duplication column family keeps at most the window and the epoch being committed.
    let dedup_ids = (opts.dedup_window as u64).saturating_add(opts.commit_records);
    // A temporary state is never opened again, not even after a crash: what only a restart would read (the
    // write-ahead log, the stored epochs of the de-duplication window) is not written. A kept state logs its
    // commits only with --sync: without the log a crash goes back to the last memtable flush, which the
    // output files follow (they are cut back to the position the store reopens with).
    let ephemeral = opts.state.is_none();
    let options = StoreOptions { dedup_ids, ephemeral, log_commits: opts.sync, ..opts.store.clone() };
    let store = Arc::new(Store::open(&state_dir, &options)?);
    let fresh = store.position()?.is_none();
    let mut sink = sink::FileSink::open(&store, Some(&opts.out), opts.sync)?;
    if !fresh {
        let at = sink.position();
        tracing::info!(records = at.input_next, epoch = at.epoch, "Resuming from the state's position.");
    }
    // The folder's definitions on top of those the state published; new versions take effect now, before input
    // resumes, in an epoch of their own.
    let reconciled = publish::reconcile(&store, &defs)?;
    publish::publish_new(&store, &mut sink, &reconciled)?;
    let defs = reconciled.defs;
    let position = sink.position().clone();

    // Input, positioned after what is committed.
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = if opts.input.as_os_str() == "-" {
        let mut stdin = std::io::stdin();
        let skipped = std::io::copy(&mut (&mut stdin).take(position.input_bytes), &mut std::io::sink())
            .map_err(|e| EngineError::io("skipping committed input on standard input".into(), e))?;
        if skipped < position.input_bytes {
            return Err(EngineError::Invalid(
                "standard input is shorter than the input this state has committed".into(),
            ));
        }
        (Box::new(stdin), None)
    } else {
        let mut f = std::fs::File::open(&opts.input)
            .map_err(|e| EngineError::io(format!("opening {}", opts.input.display()), e))?;
        let len = f.metadata().map_err(|e| EngineError::io(format!("reading {}", opts.input.display()), e))?.len();
        if len < position.input_bytes {
            return Err(EngineError::Invalid(format!(
                "{} holds {len} bytes but this state has committed {} bytes of input: it is not the same input",
                opts.input.display(),
                position.input_bytes
            )));
        }
        f.seek(SeekFrom::Start(position.input_bytes))
            .map_err(|e| EngineError::io(format!("seeking in {}", opts.input.display()), e))?;
        (Box::new(std::io::BufReader::with_capacity(1 << 20, f)), Some(len))
    };
    let source_name = if opts.input.as_os_str() == "-" { "-".to_owned() } else { opts.input.display().to_string() };

    // The de-duplication window and the timers, as committed.
    let core = crate::core::Settings {
        rules: crate::core::decode::EdgeRules {
            limits: opts.limits.clone(),
            tenants: Arc::new(opts.tenants.clone()),
            xdm_tenant: opts.xdm_tenant.as_deref().map(caravan_schemas::Id::from),
        },
        allowed_disorder_ns: opts.allowed_disorder_ns,
        dedup_window: opts.dedup_window,
        dedup_max_age_ns: opts.dedup_max_age_ns,
    };
    let (admission, dedup_log) = core.admission(&store, fresh, position.max_ts)?;
    let mut timers: Vec<Vec<caravan_state::StoredTimer>> = (0..workers).map(|_| Vec::new()).collect();
    for t in store.timers()? {
        timers[crate::core::keys::worker_of(crate::core::keys::account_key(&t.tenant, &t.account_id), workers)].push(t);
    }

    let progress = if opts.progress {
        let bar = match total_bytes {
            Some(len) => indicatif::ProgressBar::new(len),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(position.input_bytes);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let defs = Arc::new(defs);
    if let Some(admin) = &opts.admin {
        admin.set_definitions(Arc::clone(&defs));
        admin.add_store(0, Arc::clone(&store));
        admin.set_ready(true);
    }
    let committed = Arc::new(AtomicU64::new(0));
    let start_record = position.seq;
    let start_bytes = position.input_bytes;
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(decoders * 2);
    // Read buffers going back from the decoders to the reader.
    let (free_tx, free_rx) = crossbeam_channel::unbounded();
    let (parsed_tx, parsed_rx) = crossbeam_channel::bounded(decoders * 2 + 2);
    let (commit_tx, commit_rx) = crossbeam_channel::bounded((workers + 1) * 8);
    let mut worker_txs = Vec::new();
    let mut worker_rxs = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(4);
        worker_txs.push(tx);
        worker_rxs.push(rx);
    }

    let result = std::thread::scope(|scope| {
        let store: &Store = &store;
        let reader = {
            let bar = progress.clone();
            let chunk_bytes = opts.chunk_bytes;
            let stop = opts.stop.clone();
            std::thread::Builder::new()
                .name("caravan-reader".into())
                .spawn_scoped(scope, move || {
                    let stopped = || stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
                    let progress = |pos| bar.set_position(pos);
                    let (tx, free) = (&chunk_tx, &free_rx);
                    reader::read_chunks(input, chunk_bytes, start_record, start_bytes, tx, free, &progress, &stopped)
                        .map_err(|e| EngineError::io("reading the input".into(), e))
                })
                .map_err(|e| EngineError::io("starting a thread".into(), e))?
        };
        let (returns, returned) = reader::LineReturns::new(decoders);
        let mut decoder_handles = Vec::new();
        let rules = &core.rules;
        for (i, returned) in returned.into_iter().enumerate() {
            let (rx, tx, rules, free) = (chunk_rx.clone(), parsed_tx.clone(), rules.clone(), free_tx.clone());
            decoder_handles.push(
                std::thread::Builder::new()
                    .name(format!("caravan-decode-{i}"))
                    .spawn_scoped(scope, move || reader::decode_chunks(&rx, &tx, &rules, i, &returned, &free))
                    .map_err(|e| EngineError::io("starting a thread".into(), e))?,
            );
        }
        drop((chunk_rx, parsed_tx, free_tx));
        let mut worker_handles = Vec::new();
        let budget = crate::core::cache::Capacity { accounts: opts.cache_accounts, index: opts.cache_persons };
        let cache = crate::core::cache::Capacity::share(budget, workers, 1);
        for (me, (rx, timers)) in worker_rxs.into_iter().zip(timers).enumerate() {
            let cfg = worker::WorkerConfig { cache, returns: returns.clone() };
            let w = worker::Worker::new(
                cfg,
                Arc::clone(&defs),
                store,
                fresh,
                timers,
                commit_tx.clone(),
                Arc::clone(&committed),
            );
            worker_handles.push(
                std::thread::Builder::new()
                    .name(format!("caravan-worker-{me}"))
                    .spawn_scoped(scope, move || w.run(me, &rx))
                    .map_err(|e| EngineError::io("starting a thread".into(), e))?,
            );
        }
        let committer = {
            let cfg = committer::CommitterConfig { workers, allowed_disorder_ns: opts.allowed_disorder_ns };
            let c = committer::Committer::new(cfg, sink, dedup_log, Arc::clone(&committed));
            std::thread::Builder::new()
                .name("caravan-committer".into())
                .spawn_scoped(scope, move || c.run(&commit_rx))
                .map_err(|e| EngineError::io("starting a thread".into(), e))?
        };
        let router_cfg = router::RouterConfig {
            workers,
            epochs: router::EpochBounds {
                interval: opts.commit_interval,
                records: opts.commit_records,
                state_bytes: opts.commit_state_bytes,
            },
            cache,
            store_ids: !ephemeral,
            source_name,
            returns,
        };
        let router = router::Router::new(
            router_cfg,
            store,
            admission,
            (start_record, start_bytes),
            worker_txs,
            commit_tx,
            Arc::clone(&committed),
        );
        let routed = router.run(&parsed_rx);
        // Closing the router's channels (it is dropped) lets workers and then the committer finish.
        drop(parsed_rx);
        let mut errors = Vec::new();
        if let Err(e) = routed {
            errors.push(e);
        }
        let join_err = |_| EngineError::Internal("a pipeline thread panicked".into());
        let mut reached_end = false;
        match reader.join().map_err(join_err) {
            Ok(Ok((_, eof))) => reached_end = eof,
            Ok(Err(e)) | Err(e) => errors.push(e),
        }
        for h in decoder_handles {
            if h.join().is_err() {
                errors.push(EngineError::Internal("a decoder thread panicked".into()));
            }
        }
        for h in worker_handles {
            match h.join().map_err(join_err) {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => errors.push(e),
            }
        }
        let last = match committer.join().map_err(join_err) {
            Ok(Ok(cp)) => Some(cp),
            Ok(Err(e)) | Err(e) => {
                errors.push(e);
                None
            }
        };
        match (first_error(errors), last) {
            (Some(e), _) => Err(e),
            (None, Some(cp)) => Ok((cp, reached_end)),
            (None, None) => Err(EngineError::Internal("the committer ended without a position".into())),
        }
    });
    progress.finish_and_clear();
    if let Some(admin) = &opts.admin {
        // The store closes here, before a temporary state folder is removed.
        admin.set_ready(false);
        admin.remove_store(0);
    }
    let (cp, complete) = result?;
    Ok(Summary {
        records: cp.seq - start_record,
        resumed_at: start_record,
        applied: cp.totals[0],
        rejected: cp.totals[1],
        duplicates: cp.totals[2],
        actions: cp.totals[3],
        changes: cp.totals[4],
        late: cp.totals[5],
        elapsed: started.elapsed(),
        complete,
    })
}
