//! Every metric Caravan emits, declared once, with its help text; emitted per batch or epoch, never per event.
//!
//! It owns metric names (`caravan_<subsystem>_<noun>_<unit|verb>[_total]`) and the Prometheus exporter's
//! start. It is not a logger: logs go through `tracing`.

use std::net::SocketAddr;
use std::time::Duration;

/// Input records applied to state.
pub const EVENTS_APPLIED: &str = "caravan_events_applied_total";
/// Input records rejected (all reasons).
pub const EVENTS_REJECTED: &str = "caravan_events_rejected_total";
/// Duplicate input records dropped.
pub const EVENTS_DUPLICATE: &str = "caravan_events_duplicate_total";
/// Applied input records that were behind the watermark.
pub const EVENTS_LATE: &str = "caravan_events_late_total";
/// Action records emitted.
pub const ACTIONS_EMITTED: &str = "caravan_actions_emitted_total";
/// Change events emitted.
pub const CHANGES_EMITTED: &str = "caravan_changes_emitted_total";
/// Epochs committed.
pub const COMMITS: &str = "caravan_commits_total";
/// State writes per commit.
pub const COMMIT_WRITES: &str = "caravan_commit_writes";
/// Time to write one epoch's outputs and state.
pub const COMMIT_DURATION: &str = "caravan_commit_duration_seconds";

/// Kafka transactions committed.
pub const TRANSACTIONS_COMMITTED: &str = "caravan_kafka_transactions_committed_total";
/// Kafka transactions aborted.
pub const TRANSACTIONS_ABORTED: &str = "caravan_kafka_transactions_aborted_total";
/// Consumer group rebalance events (revocations and assignments).
pub const REBALANCES: &str = "caravan_kafka_rebalances_total";
/// Input partitions this instance owns.
pub const PARTITIONS_OWNED: &str = "caravan_kafka_partitions_owned";
/// Changelog records read while restoring partitions.
pub const RESTORED_RECORDS: &str = "caravan_restore_records_total";
/// Time to restore one partition.
pub const RESTORE_DURATION: &str = "caravan_restore_duration_seconds";
/// Timers pending.
pub const TIMERS_PENDING: &str = "caravan_timers_pending";

/// Registers the help texts of every metric.
pub fn describe() {
    metrics::describe_counter!(EVENTS_APPLIED, "Input records applied to state.");
    metrics::describe_counter!(EVENTS_REJECTED, "Input records rejected, all reasons.");
    metrics::describe_counter!(EVENTS_DUPLICATE, "Duplicate input records dropped.");
    metrics::describe_counter!(EVENTS_LATE, "Applied input records that were behind the watermark.");
    metrics::describe_counter!(ACTIONS_EMITTED, "Action records emitted.");
    metrics::describe_counter!(CHANGES_EMITTED, "Change events emitted.");
    metrics::describe_counter!(COMMITS, "Epochs committed (outputs, state and input position together).");
    metrics::describe_histogram!(COMMIT_WRITES, "State writes per commit.");
    metrics::describe_counter!(TRANSACTIONS_COMMITTED, "Kafka transactions committed.");
    metrics::describe_counter!(TRANSACTIONS_ABORTED, "Kafka transactions aborted (the batch is processed again).");
    metrics::describe_counter!(REBALANCES, "Consumer group rebalance events (revocations and assignments).");
    metrics::describe_gauge!(PARTITIONS_OWNED, "Input partitions this instance owns.");
    metrics::describe_counter!(RESTORED_RECORDS, "Changelog records read while restoring partitions.");
    metrics::describe_histogram!(RESTORE_DURATION, metrics::Unit::Seconds, "Time to restore one partition.");
    metrics::describe_gauge!(TIMERS_PENDING, "Timers pending on this instance.");
    metrics::describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time to write one epoch's outputs and state."
    );
}

/// Records one committed epoch: applied, rejected, duplicates, actions, changes, late.
pub fn record_epoch(counts: &[u64; 6], writes: usize, took: Duration) {
    let names = [EVENTS_APPLIED, EVENTS_REJECTED, EVENTS_DUPLICATE, ACTIONS_EMITTED, CHANGES_EMITTED, EVENTS_LATE];
    for (name, n) in names.into_iter().zip(counts) {
        metrics::counter!(name).increment(*n);
    }
    metrics::counter!(COMMITS).increment(1);
    metrics::histogram!(COMMIT_WRITES).record(writes as f64);
    metrics::histogram!(COMMIT_DURATION).record(took.as_secs_f64());
}

/// Starts the Prometheus exporter on `addr` (`/metrics`).
///
/// # Errors
/// When the address cannot be bound or a recorder is already installed.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("starting the metrics exporter on {addr}: {e}"))?;
    describe();
    Ok(())
}
