//! Where a store's committed state stands: one record, [`Position`], for both modes, written in the same
//! write as the state it describes and read back one way.
//!
//! It owns the record's form and its upgrade from the two records stores held before it (a replay's
//! `checkpoint`, a Kafka partition's `partition` progress, both in `meta`): reading falls back to them, and the
//! next commit writes the new record and drops the old one. It never decides what a position means for
//! input or outputs: each driver fills the fields of its mode and leaves the others at zero.
//!
//! ```
//! use caravan_state::{Delta, Position, Store, StoreOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
//! assert_eq!(store.position().unwrap(), None);
//! let position = Position { epoch: 1, input_next: 10, seq: 10, ..Position::replay() };
//! store.commit(&Delta::default(), &position).unwrap();
//! assert_eq!(store.position().unwrap(), Some(position));
//! ```

use serde::{Deserialize, Serialize};

/// `meta` key of the position record.
pub(crate) const POSITION: &[u8] = b"position";
/// `meta` key of a replay's checkpoint before [`Position`] (read, then dropped at the next commit).
pub(crate) const LEGACY_CHECKPOINT: &[u8] = b"checkpoint";
/// `meta` key of a Kafka partition's progress before [`Position`] (the same).
pub(crate) const LEGACY_PROGRESS: &[u8] = b"partition";

/// Which driver commits a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// `caravan replay`: one WriteBatch per epoch, outputs in files.
    #[default]
    Replay,
    /// `caravan run`: one Kafka transaction per epoch (the changelog holds the state), then the local apply.
    Kafka,
}

impl Mode {
    /// The command that writes such a store.
    pub fn command(self) -> &'static str {
        match self {
            Mode::Replay => "caravan replay",
            Mode::Kafka => "caravan run",
        }
    }
}

/// What a store has committed: how far its input, outputs and event time are, in one record for both modes.
/// Fields a mode does not use stay zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The driver that commits the store.
    pub mode: Mode,
    /// Commits so far, 1 for the first (it numbers the de-duplication epochs).
    pub epoch: u64,
    /// The next input record to read: a replay's record number (lines, blank ones included), a Kafka
    /// partition's next input offset.
    pub input_next: i64,
    /// Replay: input bytes consumed (where the next record starts). Kafka: 0.
    pub input_bytes: u64,
    /// The sequence number of the last record applied (it orders timers and people's joining). Replay: equal
    /// to `input_next`. Kafka: an input record's offset + 1, or one more than the record before for a record
    /// the person stage forwarded.
    pub seq: u64,
    /// Largest applied event time (the watermark's base), if any record was applied.
    pub max_ts: Option<i64>,
    /// Replay: the output files' lengths after this epoch (actions, changes, rejected). Kafka: 0 (its outputs
    /// are in topics, committed by the same transaction).
    pub output_lengths: [u64; 3],
    /// Counters since the store began: events applied, rejected, duplicates, actions, changes, late.
    pub totals: [u64; 6],
    /// Kafka: the next definitions-topic offset whose publication this partition has not applied. Replay: 0
    /// (its publications are recorded in the `definitions` family).
    pub definitions_next: i64,
    /// Kafka with several partitions: the person stage's position on this partition.
    pub stage: StagePosition,
}

/// A Kafka partition's position in the person stage's two topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePosition {
    /// The next offset of the persons topic.
    pub persons_next: i64,
    /// The next offset of the accounts topic.
    pub accounts_next: i64,
    /// Largest event time the stage has seen (its watermark's base).
    pub max_ts: Option<i64>,
}

impl Position {
    /// The position of a replay store that has committed nothing.
    pub fn replay() -> Position {
        Position { mode: Mode::Replay, ..Position::default() }
    }

    /// The position of a Kafka partition's store that has committed nothing.
    pub fn kafka() -> Position {
        Position { mode: Mode::Kafka, ..Position::default() }
    }

    /// Adds counters to [`Position::totals`].
    pub fn count(&mut self, totals: &[u64; 6]) {
        for (total, n) in self.totals.iter_mut().zip(totals) {
            *total += n;
        }
    }
}

/// A replay's checkpoint as stores written before [`Position`] hold it.
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacyCheckpoint {
    pub(crate) epoch: u64,
    pub(crate) records: u64,
    pub(crate) input_bytes: u64,
    pub(crate) max_ts: Option<i64>,
    pub(crate) output_lengths: [u64; 3],
    pub(crate) totals: [u64; 6],
}

/// A Kafka partition's progress as stores written before [`Position`] hold it (with the person stage).
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacyProgress {
    pub(crate) input_next: i64,
    pub(crate) max_ts: Option<i64>,
    pub(crate) epoch: u64,
    pub(crate) definitions_next: i64,
    pub(crate) persons_next: i64,
    pub(crate) accounts_next: i64,
    pub(crate) seq: u64,
    pub(crate) stage_max_ts: Option<i64>,
}

/// The same, as stores written before the person stage hold it.
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacyProgressV1 {
    pub(crate) input_next: i64,
    pub(crate) max_ts: Option<i64>,
    pub(crate) epoch: u64,
    pub(crate) definitions_next: i64,
}

impl From<LegacyCheckpoint> for Position {
    fn from(c: LegacyCheckpoint) -> Position {
        Position {
            mode: Mode::Replay,
            epoch: c.epoch,
            input_next: i64::try_from(c.records).unwrap_or(i64::MAX),
            input_bytes: c.input_bytes,
            seq: c.records,
            max_ts: c.max_ts,
            output_lengths: c.output_lengths,
            totals: c.totals,
            ..Position::default()
        }
    }
}

impl From<LegacyProgress> for Position {
    fn from(p: LegacyProgress) -> Position {
        Position {
            mode: Mode::Kafka,
            epoch: p.epoch,
            input_next: p.input_next,
            seq: p.seq,
            max_ts: p.max_ts,
            definitions_next: p.definitions_next,
            stage: StagePosition {
                persons_next: p.persons_next,
                accounts_next: p.accounts_next,
                max_ts: p.stage_max_ts,
            },
            ..Position::default()
        }
    }
}

impl From<LegacyProgressV1> for Position {
    fn from(p: LegacyProgressV1) -> Position {
        Position {
            mode: Mode::Kafka,
            epoch: p.epoch,
            input_next: p.input_next,
            seq: p.input_next.max(0) as u64,
            max_ts: p.max_ts,
            definitions_next: p.definitions_next,
            ..Position::default()
        }
    }
}
