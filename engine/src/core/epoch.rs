//! The commit protocol of both modes: an [`Epoch`] value (outputs, state delta, position) that a [`Sink`]
//! makes durable all at once, or not at all.
//!
//! Every change to a partition's state commits this way, whatever caused it: a batch of input records, the
//! timers a processing-time tick fires, a publication or a stop. A driver builds epochs with the core and
//! hands them to its sink:
//!
//! - replay (`crate::replay::sink`): the outputs are appended to the three files, then one RocksDB write
//!   batch holds the delta and the position, which records the files' lengths; a restart cuts the files back
//!   to those lengths;
//! - Kafka (`crate::service`): one transaction holds the outputs, the delta as changelog records (the
//!   position among them) and, for input, the consumed offsets; after its commit the delta is applied to the
//!   local store with the changelog offset it reaches.
//!
//! Either way the position and the state it describes are written together, so a store never says it has
//! done work whose effects it lacks. It never does I/O itself, and never decides when an epoch ends: the
//! drivers do (commit interval, record count, memory).

use crate::EngineError;
use crate::core::outputs::OutRecord;
use crate::telemetry::Tally;
use caravan_state::{Delta, Position};

/// One commit of one partition: what becomes durable together.
#[derive(Default)]
pub(crate) struct Epoch {
    /// Output records, in the order of their causes.
    pub(crate) outputs: Vec<OutRecord>,
    /// The state writes.
    pub(crate) delta: Delta,
    /// Where the partition stands after the epoch (its `epoch` numbers it).
    pub(crate) position: Position,
    /// What the epoch counted (also added to the position's totals).
    pub(crate) tally: Tally,
}

impl Epoch {
    /// The epoch that follows `committed`, with these effects: numbered one more, its counts added to the
    /// totals; the driver moves the input position on.
    pub(crate) fn after(committed: &Position, outputs: Vec<OutRecord>, delta: Delta, tally: Tally) -> Epoch {
        let mut position = committed.clone();
        position.epoch += 1;
        position.count(&tally.totals);
        Epoch { outputs, delta, position, tally }
    }
}

/// Where a driver's epochs become durable.
pub(crate) trait Sink {
    /// Commits one epoch for each partition given, all together or none: when it returns `Ok`, every
    /// epoch's outputs, delta and position are durable; on an error none is, and the driver goes back to the
    /// committed positions (replay: a restart; Kafka: an abort and a rewind).
    ///
    /// # Errors
    /// A failed write or transaction; what to do about it is [`EngineError::retry`]'s answer.
    fn commit(&mut self, epochs: Vec<(i32, Epoch)>) -> Result<(), EngineError>;
}
