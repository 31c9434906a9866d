//! The partition core: everything both modes do to a record between decoding it and committing its effects,
//! written once, below both drivers.
//!
//! A partition (the replay's one stream, or one Kafka input partition) is driven through it the same way:
//!
//! ```text
//! raw record -> decode (bad -> rejected) -> admit: de-duplicate, route through the index
//!            -> [driver: a move's detach and attach, the person stage]
//!            -> applied: index write, id remembered, event time -> accounts: apply, timer pass
//!            -> outputs serialized -> write-back: a state delta -> an epoch -> [driver's sink: commit]
//! ```
//!
//! The replay driver (`crate::replay`) runs admission on its router thread and the account side on its
//! workers, one per share of the accounts; the Kafka driver (`crate::service`) runs both in one partition
//! task. Neither driver imports the other: what both need lives here. It is not I/O: reading files or
//! topics, committing files, write batches or transactions are the drivers'.
//!
//! - [`decode`]: one record to an event, a rejection or a blank, with the hashes routing needs.
//! - [`keys`]: the hashes tables are keyed by.
//! - [`dedup`]: the de-duplication window and its stored epochs.
//! - [`routing`]: where an event goes (pure).
//! - [`admit`]: de-duplication, routing through the index cache, event time.
//! - [`cache`]: account and index caches, the eviction rule, write-back into a delta.
//! - [`accounts`]: apply and the timer pass on a partition's accounts.
//! - [`timers`]: the timer queue and its order.
//! - [`outputs`]: serialized output records.
//! - [`publish`]: the publication passes (entry, template, stop) over a store.
//! - [`epoch`]: the commit protocol: an epoch value (outputs, delta, position) and the sink that commits it.

pub(crate) mod accounts;
pub(crate) mod admit;
pub(crate) mod cache;
pub(crate) mod decode;
pub(crate) mod dedup;
pub(crate) mod epoch;
pub(crate) mod keys;
pub(crate) mod outputs;
pub(crate) mod publish;
pub(crate) mod routing;
pub(crate) mod timers;

use crate::EngineError;
use caravan_state::Store;

/// What the partition core is set to, the same in both modes (each driver fills it from its own options).
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    /// What the edge checks beyond a record's own form.
    pub(crate) rules: decode::EdgeRules,
    /// Allowed disorder of event time: the watermark is the largest `ts` minus this (nanoseconds).
    pub(crate) allowed_disorder_ns: i64,
    /// Event ids remembered for de-duplication (0 turns it off).
    pub(crate) dedup_window: usize,
    /// De-duplication's age bound in event-time nanoseconds (0: none).
    pub(crate) dedup_max_age_ns: i64,
}

impl Settings {
    /// The admission of a stream whose store has committed events up to `max_ts`, with the window its
    /// stored epochs hold, and those epochs; `complete_index`: the store holds no index entry.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn admission(
        &self,
        store: &Store,
        complete_index: bool,
        max_ts: Option<i64>,
    ) -> Result<(admit::Admission, dedup::EpochLog), EngineError> {
        let (window, log) = dedup::restore(store, self.dedup_window, self.dedup_max_age_ns, max_ts)?;
        Ok((admit::Admission::new(window, complete_index, max_ts, self.allowed_disorder_ns), log))
    }
}
