//! Caravan's runtime: sources and sinks, partitioned workers, watermarks and timers, the commit protocol,
//! metrics and the command line.
//!
//! It is not: journey logic (`caravan-operators`), record formats (`caravan-schemas`) or the storage layout
//! (`caravan-state`). It wires them together and owns every thread, file and clock.
//!
//! - `core`: the partition core both modes drive: decoding, de-duplication, routing, the account step and
//!   timers, caches, the publication passes.
//! - [`replay`]: the embedded mode, NDJSON in and out, exactly once across crashes.
//! - [`definitions`]: loading and validating definition files.
//! - [`service`]: Kafka mode, exactly once through transactions.
//! - [`admin`]: the admin HTTP server (`/metrics`, health, journeys, accounts).
//! - [`telemetry`]: metric names, labels and the Prometheus recorder.
//!
//! ```no_run
//! use caravan_engine::{definitions, replay};
//! let defs = definitions::load_dir("ops/examples/journeys".as_ref()).expect("valid definitions");
//! let opts = replay::ReplayOptions {
//!     input: "ops/examples/events.ndjson".into(),
//!     out: "out".into(),
//!     ..replay::ReplayOptions::default()
//! };
//! let summary = replay::replay(&opts, defs).expect("replay runs");
//! println!("{} actions", summary.actions);
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod config;
mod core;
pub mod definitions;
mod error;
mod prefetch;
pub mod replay;
pub mod service;
pub mod telemetry;

pub use error::{Domain, EngineError, KafkaFailure, Result, Retry};

/// The wall clock in nanoseconds since the epoch (processing time, and lags measured against it).
pub(crate) fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
