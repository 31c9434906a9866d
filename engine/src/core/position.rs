//! Where a partition's committed state stands: the position record each driver commits with its state (a
//! replay's [`Checkpoint`], a Kafka partition's [`Progress`]), and reading it one way for the admin server
//! and `caravan inspect`.
//!
//! It owns the Kafka partition's position format (the replay's lives in `caravan-state`, which commits it)
//! and its older form. It never writes: each driver commits its record in the same write as the state it
//! describes.

use crate::EngineError;
use caravan_state::{Checkpoint, Store};
use serde::{Deserialize, Serialize};

/// `meta` name of a partition's progress in its store (and so on its changelog).
pub(crate) const PROGRESS: &str = "partition";

/// What a partition has committed: travels on the changelog with the state it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The next input offset to process.
    pub(crate) input_next: i64,
    /// Largest applied event time (the watermark's base).
    pub(crate) max_ts: Option<i64>,
    /// Commits so far (numbers the de-duplication epochs).
    pub(crate) epoch: u64,
    /// The next definitions-topic offset whose publication this partition has not applied.
    pub(crate) definitions_next: i64,
    /// The next offsets to process of the partition's persons and accounts topics (the person stage).
    pub(crate) persons_next: i64,
    pub(crate) accounts_next: i64,
    /// The sequence number of the last record applied: an input record's offset + 1, or one more than the
    /// record before for a record the person stage forwarded (they order timers and people's joining).
    pub(crate) seq: u64,
    /// Largest event time the partition's person stage has seen (its watermark's base).
    pub(crate) stage_max_ts: Option<i64>,
}

/// [`Progress`] as stores written before the person stage hold it.
#[derive(Deserialize)]
struct ProgressV1 {
    input_next: i64,
    max_ts: Option<i64>,
    epoch: u64,
    definitions_next: i64,
}

impl Progress {
    /// The progress a store has committed (the default for a new one).
    pub(crate) fn read(store: &Store) -> Result<Progress, EngineError> {
        let Some(bytes) = store.meta(PROGRESS)? else { return Ok(Progress::default()) };
        match caravan_schemas::state::decode::<Progress>(&bytes) {
            Ok(p) => Ok(p),
            Err(e) => match caravan_schemas::state::decode::<ProgressV1>(&bytes) {
                Ok(v1) => Ok(Progress {
                    input_next: v1.input_next,
                    max_ts: v1.max_ts,
                    epoch: v1.epoch,
                    definitions_next: v1.definitions_next,
                    seq: v1.input_next.max(0) as u64,
                    ..Progress::default()
                }),
                Err(_) => Err(EngineError::Internal(e.to_string())),
            },
        }
    }
}

/// A store's committed position, whichever driver wrote it.
pub(crate) enum Position {
    /// A replay's checkpoint.
    Replay(Checkpoint),
    /// A Kafka partition's progress.
    Kafka(Progress),
}

impl Position {
    /// The position a store has committed, if any.
    ///
    /// # Errors
    /// A store read failure or a corrupt record.
    pub(crate) fn read(store: &Store) -> Result<Option<Position>, EngineError> {
        if let Some(cp) = store.checkpoint()? {
            return Ok(Some(Position::Replay(cp)));
        }
        if store.meta(PROGRESS)?.is_some() {
            return Ok(Some(Position::Kafka(Progress::read(store)?)));
        }
        Ok(None)
    }

    /// The largest event time committed (the `now` of derived values such as buying group engagement).
    pub(crate) fn max_ts(&self) -> Option<i64> {
        match self {
            Position::Replay(cp) => cp.max_ts,
            Position::Kafka(p) => p.max_ts,
        }
    }
}
