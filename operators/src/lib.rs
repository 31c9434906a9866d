//! Caravan's journey logic as pure, deterministic functions.
//!
//! It is not: storage, a clock, a source of randomness, or a thread. Given the same account state, the
//! same input (or timer) and the same definitions, every function here returns the same new state and the
//! same outputs; the engine owns scheduling, watermarks, caching and commits.
//!
//! - [`journey`]: the compiled journey, and the validation and compilation of documents into it.
//! - [`buying_group`]: buying group templates, and the groups of an account.
//! - [`condition`]: CEL conditions.
//! - [`account`]: the account state machine (entities, their change events, and the steps it runs).
//! - `runtime` (private): journey instances at run time: entry, nodes, listens, branches, timers.
//! - [`timers`]: the partition-independent arming order of timers.
//! - [`ids`]: deterministic output ids.
//! - [`OperatorError`]: why a publication was refused.
//!
//! ```
//! use caravan_operators::account::{AccountState, Cause, Definitions, Effects, apply_event};
//! use caravan_schemas::input::{decode, DecodeLimits};
//! let ev = decode(br#"{"tenant":"t","type":"person.upserted","event_id":"e","ts":"2026-01-01T00:00:00Z","person_id":"p","account_id":"a","attributes":{}}"#,
//!                 &DecodeLimits::default()).unwrap();
//! let mut acct = AccountState::new("t", "a");
//! let mut out = Effects::default();
//! apply_event(&Definitions::default(), &mut acct, &ev, None, &Cause::record(1, ev.ts, "e"), &mut out);
//! assert_eq!(acct.persons().len(), 1);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod account;
pub mod buying_group;
pub mod condition;
mod error;
pub mod ids;
pub mod journey;
mod runtime;
pub mod timers;

pub use error::{OperatorError, Result};

#[cfg(test)]
mod tests;
