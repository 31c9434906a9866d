//! Caravan's runtime: sources and sinks, partitioned workers, watermarks and timers, the commit protocol,
//! metrics and the command line.
//!
//! It is not: journey logic (`caravan-operators`), record formats (`caravan-schemas`) or the storage layout
//! (`caravan-state`). It wires them together and owns every thread, file and clock.
//!
//! - [`replay`]: the embedded mode, NDJSON in and out, exactly once across crashes.
//! - [`definitions`]: loading and validating definition files.
//! - [`telemetry`]: metric names and the Prometheus exporter.
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

pub mod config;
mod dedup;
pub mod definitions;
mod error;
mod outputs;
pub mod replay;
mod routing;
pub mod service;
pub mod telemetry;

pub use error::{Domain, EngineError, Result};
