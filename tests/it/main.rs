//! End-to-end tests: they drive the `caravan` binary on files, as a user would.
//!
//! The binary is the one cargo built next to this test binary (`target/<profile>/caravan`), or the one named
//! by `CARAVAN_BIN`. The reference workload comes from `../shared/bench/gen_workload.py` (or `CARAVAN_SHARED`).

mod support;

mod admin;
mod bad_input;
mod buying_groups;
mod crash;
mod kafka;
mod kafka_moves;
mod kafka_support;
mod ops;
mod publish;
mod replay;
mod tenants;
mod validate;
mod xdm;
