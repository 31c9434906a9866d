//! The replay's sink: the three output files and the state store, committing [`Epoch`]s the one way the
//! core's protocol says (`crate::core::epoch`), for the pipeline's epochs, publications and stops alike.
//!
//! It owns the output files, their lengths, and the order of a commit:
//! 1. the epoch's outputs are appended to the files (the pipeline stages its own as its batches arrive, in
//!    their global order: [`FileSink::stage`]), flushed, and synced with `--sync`;
//! 2. one RocksDB write batch holds the delta and the position, which records the files' lengths after 1.
//!
//! On restart the files are cut back to the lengths the store's position records ([`FileSink::open`]). A
//! crash between 1 and 2 leaves bytes past them; they are cut and produced again, identical, because
//! processing is deterministic. This replaces DESIGN.md's outbox with the same guarantee, without writing
//! every output twice (ARCHITECTURE.md). It never decides what an epoch holds or when it ends.

use crate::EngineError;
use crate::core::epoch::{Epoch, Sink};
use crate::core::outputs::{OutKind, OutRecord};
use caravan_state::{Position, Store};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The three output files of a replay, in the order of [`Position::output_lengths`].
pub(crate) const OUTPUT_FILES: [&str; 3] = ["actions.ndjson", "changes.ndjson", "rejected.ndjson"];

/// The file an output record goes to.
fn file_of(kind: OutKind) -> usize {
    match kind {
        OutKind::Action => 0,
        OutKind::Change => 1,
        OutKind::Rejected => 2,
    }
}

/// A replay store's sink: its files (none for a command that emits nothing, such as `caravan stop`).
pub(crate) struct FileSink<'s> {
    store: &'s Store,
    files: Option<[BufWriter<File>; 3]>,
    /// Bytes appended to each file since the last commit.
    appended: [u64; 3],
    /// Sync the files at each commit (`--sync`).
    sync: bool,
    committed: Position,
}

impl<'s> FileSink<'s> {
    /// The sink of `store` writing into the folder `out`, its files cut back to what the store's position
    /// says is committed (emptied when nothing is); `out: None` for a sink that commits state only.
    ///
    /// # Errors
    /// A store written by Kafka mode, a file that cannot be opened, or one shorter than the position says
    /// (the folder does not belong to this state).
    pub(crate) fn open(store: &'s Store, out: Option<&Path>, sync: bool) -> Result<FileSink<'s>, EngineError> {
        let stored = store.position()?;
        if let Some(p) = &stored
            && p.mode != caravan_state::Mode::Replay
        {
            return Err(EngineError::Invalid(format!(
                "this state folder holds a Kafka partition's state (written by `{}`), not a replay's",
                p.mode.command()
            )));
        }
        let files = match out {
            Some(dir) => Some(open_outputs(dir, stored.as_ref().map(|p| p.output_lengths))?),
            None => None,
        };
        Ok(FileSink {
            store,
            files: files.map(|f| f.map(|f| BufWriter::with_capacity(1 << 20, f))),
            appended: [0; 3],
            sync,
            committed: stored.unwrap_or_else(Position::replay),
        })
    }

    /// What the store has committed (a default replay position when nothing).
    pub(crate) fn position(&self) -> &Position {
        &self.committed
    }

    /// Appends bytes (whole NDJSON lines) to one output file in the open epoch: buffered, and durable only
    /// with the epoch's commit.
    ///
    /// # Errors
    /// A write failure, or a sink without files.
    pub(crate) fn stage(&mut self, file: usize, bytes: &[u8]) -> Result<(), EngineError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(files) = self.files.as_mut() else {
            return Err(EngineError::Internal(format!("{} outputs for a sink without files", OUTPUT_FILES[file])));
        };
        files[file].write_all(bytes).map_err(|e| EngineError::io(format!("appending to {}", OUTPUT_FILES[file]), e))?;
        self.appended[file] += bytes.len() as u64;
        Ok(())
    }

    fn stage_records(&mut self, outputs: &[OutRecord]) -> Result<(), EngineError> {
        let mut lines: [Vec<u8>; 3] = Default::default();
        for o in outputs {
            let buf = &mut lines[file_of(o.kind)];
            buf.extend_from_slice(&o.json);
            buf.push(b'\n');
        }
        for (file, bytes) in lines.iter().enumerate() {
            self.stage(file, bytes)?;
        }
        Ok(())
    }

    /// Flushes the staged bytes (and syncs them with `--sync`); returns the files' lengths after them.
    fn flush(&mut self) -> Result<[u64; 3], EngineError> {
        let mut lengths = self.committed.output_lengths;
        if let Some(files) = self.files.as_mut() {
            for (i, file) in files.iter_mut().enumerate() {
                file.flush().map_err(|e| EngineError::io(format!("appending to {}", OUTPUT_FILES[i]), e))?;
                if self.sync && self.appended[i] > 0 {
                    file.get_ref()
                        .sync_data()
                        .map_err(|e| EngineError::io(format!("syncing {}", OUTPUT_FILES[i]), e))?;
                }
            }
        }
        for (length, n) in lengths.iter_mut().zip(std::mem::take(&mut self.appended)) {
            *length += n;
        }
        Ok(lengths)
    }
}

impl Sink for FileSink<'_> {
    /// Commits the replay's one partition's epoch: outputs to the files, then delta and position in one
    /// write batch.
    fn commit(&mut self, epochs: Vec<(i32, Epoch)>) -> Result<(), EngineError> {
        for (_, epoch) in epochs {
            let Epoch { outputs, delta, mut position, .. } = epoch;
            self.stage_records(&outputs)?;
            position.output_lengths = self.flush()?;
            self.store.commit(&delta, &position)?;
            self.committed = position;
        }
        Ok(())
    }
}

/// Opens the output files and cuts them back to `lengths`, what the store has committed (or empties them
/// when nothing is).
///
/// # Errors
/// When a file cannot be opened, or is shorter than the store says (it was changed behind our back).
fn open_outputs(dir: &Path, lengths: Option<[u64; 3]>) -> Result<[File; 3], EngineError> {
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
