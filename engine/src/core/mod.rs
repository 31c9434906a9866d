//! The partition core: everything both modes do to a record between decoding it and committing its effects,
//! written once, below both drivers.
//!
//! A partition (the replay's one stream, or one Kafka input partition) is driven through it the same way:
//!
//! ```text
//! raw record -> decode (bad -> rejected) -> admit: de-duplicate, route through the index
//!            -> [driver: a move's detach and attach, the person stage]
//!            -> applied: index write, id remembered, event time -> accounts: apply, timer pass
//!            -> outputs serialized -> write-back: a state delta -> [driver: commit]
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
//! - [`position`]: a store's committed position, whichever driver wrote it.

pub(crate) mod accounts;
pub(crate) mod admit;
pub(crate) mod cache;
pub(crate) mod decode;
pub(crate) mod dedup;
pub(crate) mod keys;
pub(crate) mod outputs;
pub(crate) mod position;
pub(crate) mod publish;
pub(crate) mod routing;
pub(crate) mod timers;
