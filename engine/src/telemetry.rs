//! Every metric Caravan emits, declared once, with its help text; emitted per batch or epoch, never per event.
//!
//! It owns metric names (`caravan_<subsystem>_<noun>_<unit|verb>[_total]`, Prometheus conventions), their
//! labels, the per-batch [`Tally`] that counts by label, and the Prometheus recorder (served by
//! [`crate::admin`]). It is not a logger: logs go through `tracing`.

use caravan_schemas::Id;
use caravan_schemas::input::{EventBody, RejectReason};
use caravan_schemas::output::{ActionRecord, ChangeEvent, Entity};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::{Duration, Instant};

/// Input records applied to state, by tenant and event type.
pub const EVENTS_INGESTED: &str = "caravan_events_ingested_total";
/// Input records rejected, by reason.
pub const EVENTS_REJECTED: &str = "caravan_events_rejected_total";
/// Duplicate input records dropped, by tenant.
pub const EVENTS_DUPLICATE: &str = "caravan_events_duplicate_total";
/// Applied input records that were behind the watermark, by tenant.
pub const EVENTS_LATE: &str = "caravan_events_late_total";
/// Action records emitted, by tenant, journey and action type.
pub const ACTIONS_EMITTED: &str = "caravan_actions_emitted_total";
/// Change events emitted, by tenant and entity.
pub const CHANGES_EMITTED: &str = "caravan_changes_emitted_total";
/// Epochs (replay) or transactions (Kafka) committed.
pub const COMMITS: &str = "caravan_commits_total";
/// State writes per commit.
pub const COMMIT_WRITES: &str = "caravan_commit_writes";
/// Time to write one commit's outputs and state.
pub const COMMIT_DURATION: &str = "caravan_commit_duration_seconds";
/// Input records per commit.
pub const BATCH_RECORDS: &str = "caravan_batch_records";
/// Time from a batch's first record read to its commit.
pub const BATCH_DURATION: &str = "caravan_batch_duration_seconds";
/// Time from reading a record to the commit of its outputs.
pub const END_TO_END_LATENCY: &str = "caravan_end_to_end_latency_seconds";
/// Wall clock minus the watermark (the slowest partition's, in Kafka mode).
pub const WATERMARK_LAG: &str = "caravan_watermark_lag_seconds";
/// Accounts with an instance at a journey node, by tenant, journey, version and node.
pub const JOURNEY_ACCOUNTS: &str = "caravan_journey_accounts";
/// RocksDB's estimate of the live state's size on disk.
pub const STATE_SIZE: &str = "caravan_state_size_bytes";
/// Bytes held by RocksDB's block caches.
pub const BLOCK_CACHE_USAGE: &str = "caravan_state_block_cache_usage_bytes";
/// Timers pending.
pub const TIMERS_PENDING: &str = "caravan_timers_pending";
/// 1 when the state is restored and the engine consumes (`/readyz`), else 0.
pub const READY: &str = "caravan_ready";

/// Kafka transactions committed.
pub const TRANSACTIONS_COMMITTED: &str = "caravan_kafka_transactions_committed_total";
/// Time spent in each phase of a Kafka commit, by phase: `produce` (queueing the records), `offsets` (adding
/// the consumed offsets), `deliver` (waiting for every record's acknowledgement), `commit` (the transaction's
/// commit), `apply` (writing the delta to the local stores).
pub const TRANSACTION_PHASE: &str = "caravan_kafka_transaction_phase_seconds";
/// Kafka transactions aborted.
pub const TRANSACTIONS_ABORTED: &str = "caravan_kafka_transactions_aborted_total";
/// Consumer group rebalance events (revocations and assignments).
pub const REBALANCES: &str = "caravan_kafka_rebalances_total";
/// Errors Kafka clients reported, by `client` (`input`, `output`, `reader`) and `kind` (librdkafka's error code,
/// e.g. `BrokerTransportFailure`, `MessageSizeTooLarge`): none is only logged.
pub const KAFKA_ERRORS: &str = "caravan_kafka_errors_total";
/// Input partitions this instance owns.
pub const PARTITIONS_OWNED: &str = "caravan_kafka_partitions_owned";
/// Records not yet processed, by topic (the input, the person stage's) and partition: the partition's last
/// stable offset minus the position.
pub const CONSUMER_LAG: &str = "caravan_kafka_consumer_lag_records";
/// Changelog records read while restoring partitions.
pub const RESTORED_RECORDS: &str = "caravan_restore_records_total";
/// Time to restore one partition.
pub const RESTORE_DURATION: &str = "caravan_restore_duration_seconds";
/// Records about persons that took the person stage, by outcome: `looked_up` (sent from their input partition
/// to the stage), `resolved` (sent on at once), `parked`, `released` (sent on when the person's account became
/// known), `expired` (rejected after waiting).
pub const PERSON_STAGE_RECORDS: &str = "caravan_kafka_person_stage_records_total";
/// Records waiting at the person stage for their person's account.
pub const PERSON_STAGE_PARKED: &str = "caravan_kafka_person_stage_parked";

/// Buckets of the duration histograms, in seconds: 1 ms to 60 s.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the size histograms: 1 to a million.
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

/// Registers the help texts of every metric.
fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(EVENTS_INGESTED, "Input records applied to state, by tenant and event type.");
    metrics::describe_counter!(EVENTS_REJECTED, "Input records rejected, by reason.");
    metrics::describe_counter!(EVENTS_DUPLICATE, "Duplicate input records dropped, by tenant.");
    metrics::describe_counter!(EVENTS_LATE, "Applied input records that were behind the watermark, by tenant.");
    metrics::describe_counter!(ACTIONS_EMITTED, "Action records emitted, by tenant, journey and action type.");
    metrics::describe_counter!(CHANGES_EMITTED, "Change events emitted, by tenant and entity.");
    metrics::describe_counter!(COMMITS, "Commits (outputs, state and input position together).");
    metrics::describe_histogram!(COMMIT_WRITES, "State writes per commit.");
    metrics::describe_histogram!(COMMIT_DURATION, Unit::Seconds, "Time to write one commit's outputs and state.");
    metrics::describe_histogram!(BATCH_RECORDS, "Input records per commit.");
    metrics::describe_histogram!(BATCH_DURATION, Unit::Seconds, "Time from a batch's first record read to its commit.");
    metrics::describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Time from reading an input record to the commit of its outputs."
    );
    metrics::describe_gauge!(WATERMARK_LAG, Unit::Seconds, "Wall clock minus the watermark (the slowest partition's).");
    metrics::describe_gauge!(
        JOURNEY_ACCOUNTS,
        "Accounts with an instance at a journey node (counted from committed state when scraped)."
    );
    metrics::describe_gauge!(STATE_SIZE, Unit::Bytes, "RocksDB's estimate of the live state's size on disk.");
    metrics::describe_gauge!(BLOCK_CACHE_USAGE, Unit::Bytes, "Bytes held by RocksDB's block caches.");
    metrics::describe_gauge!(TIMERS_PENDING, "Timers pending on this instance.");
    metrics::describe_gauge!(READY, "1 when the state is restored and the engine consumes (/readyz), else 0.");
    metrics::describe_counter!(TRANSACTIONS_COMMITTED, "Kafka transactions committed.");
    metrics::describe_histogram!(
        TRANSACTION_PHASE,
        Unit::Seconds,
        "Time in each phase of a Kafka commit: produce, offsets, deliver, commit, apply."
    );
    metrics::describe_counter!(TRANSACTIONS_ABORTED, "Kafka transactions aborted (the batch is processed again).");
    metrics::describe_counter!(REBALANCES, "Consumer group rebalance events (revocations and assignments).");
    metrics::describe_counter!(KAFKA_ERRORS, "Errors Kafka clients reported, by client and librdkafka error code.");
    metrics::describe_gauge!(PARTITIONS_OWNED, "Input partitions this instance owns.");
    metrics::describe_gauge!(CONSUMER_LAG, "Records not yet processed, by topic and partition.");
    metrics::describe_counter!(RESTORED_RECORDS, "Changelog records read while restoring partitions.");
    metrics::describe_histogram!(RESTORE_DURATION, Unit::Seconds, "Time to restore one partition.");
    metrics::describe_counter!(
        PERSON_STAGE_RECORDS,
        "Records about persons that took the person stage, by outcome (looked_up, resolved, parked, released, expired)."
    );
    metrics::describe_gauge!(PERSON_STAGE_PARKED, "Records waiting at the person stage for their person's account.");
}

/// Installs the Prometheus recorder (histograms with fixed buckets) and returns the handle that renders it.
///
/// # Errors
/// [`EngineError::Invalid`] when a recorder is already installed in this process.
pub fn install_recorder() -> Result<PrometheusHandle, crate::EngineError> {
    let invalid = |e: String| crate::EngineError::Invalid(e);
    let durations = [COMMIT_DURATION, BATCH_DURATION, END_TO_END_LATENCY, RESTORE_DURATION, TRANSACTION_PHASE];
    let mut builder = PrometheusBuilder::new();
    for name in durations {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), DURATION_BUCKETS)
            .map_err(|e| invalid(e.to_string()))?;
    }
    for name in [COMMIT_WRITES, BATCH_RECORDS] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), SIZE_BUCKETS)
            .map_err(|e| invalid(e.to_string()))?;
    }
    let handle = builder.install_recorder().map_err(|e| invalid(format!("installing the metrics recorder: {e}")))?;
    describe();
    Ok(handle)
}

/// Index of each count in [`Tally::totals`] (the order of a replay checkpoint's totals).
pub(crate) mod total {
    pub(crate) const APPLIED: usize = 0;
    pub(crate) const REJECTED: usize = 1;
    pub(crate) const DUPLICATES: usize = 2;
    pub(crate) const ACTIONS: usize = 3;
    pub(crate) const CHANGES: usize = 4;
    pub(crate) const LATE: usize = 5;
}

/// Every reject reason, by [`reason_index`].
const REASONS: [RejectReason; 7] = [
    RejectReason::MalformedJson,
    RejectReason::UnknownType,
    RejectReason::MissingField,
    RejectReason::InvalidField,
    RejectReason::UnknownTenant,
    RejectReason::UnknownPersonAccount,
    RejectReason::TooLarge,
];

/// The position of a reason in [`REASONS`] (a new reason does not compile until it has one).
fn reason_index(r: RejectReason) -> usize {
    match r {
        RejectReason::MalformedJson => 0,
        RejectReason::UnknownType => 1,
        RejectReason::MissingField => 2,
        RejectReason::InvalidField => 3,
        RejectReason::UnknownTenant => 4,
        RejectReason::UnknownPersonAccount => 5,
        RejectReason::TooLarge => 6,
    }
}

/// Entities of change events, by [`entity_index`].
const ENTITIES: [Entity; 3] = [Entity::Account, Entity::Person, Entity::Opportunity];

fn entity_index(e: Entity) -> usize {
    match e {
        Entity::Account => 0,
        Entity::Person => 1,
        Entity::Opportunity => 2,
    }
}

/// One labeled count: metric, labels, count.
type Series = (&'static str, Vec<(&'static str, String)>, u64);

/// One tenant's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TenantTally {
    tenant: Id,
    /// By [`EventBody::type_index`](caravan_schemas::input::EventBody::type_index).
    ingested: [u64; 8],
    duplicates: u64,
    late: u64,
    /// By [`entity_index`].
    changes: [u64; 3],
}

/// What a batch or an epoch counted: the totals, and the same by label for the metrics.
///
/// Counted on the hot path, so kept dense: tenants are few (a list scanned by id), event types, reasons and
/// entities are array positions, and the (tenant, journey, action type) triples a batch emits are few too.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    /// Applied, rejected, duplicates, actions, changes, late (indexes in [`total`]).
    pub(crate) totals: [u64; 6],
    tenants: Vec<TenantTally>,
    rejected: [u64; 7],
    /// ((tenant, journey, action type), actions).
    actions: Vec<((Id, Id, Id), u64)>,
}

impl Tally {
    fn tenant(&mut self, tenant: &str) -> &mut TenantTally {
        let ix = match self.tenants.iter().position(|t| t.tenant == tenant) {
            Some(ix) => ix,
            None => {
                self.tenants.push(TenantTally { tenant: Id::from(tenant), ..TenantTally::default() });
                self.tenants.len() - 1
            }
        };
        &mut self.tenants[ix]
    }

    /// An input record applied.
    pub(crate) fn applied(&mut self, tenant: &str, event: &EventBody) {
        self.totals[total::APPLIED] += 1;
        self.tenant(tenant).ingested[event.type_index()] += 1;
    }

    /// An applied record that was behind the watermark (counted as applied too).
    pub(crate) fn late(&mut self, tenant: &str) {
        self.totals[total::LATE] += 1;
        self.tenant(tenant).late += 1;
    }

    /// An input record rejected.
    pub(crate) fn rejected(&mut self, reason: RejectReason) {
        self.totals[total::REJECTED] += 1;
        self.rejected[reason_index(reason)] += 1;
    }

    /// A duplicate dropped.
    pub(crate) fn duplicate(&mut self, tenant: &str) {
        self.totals[total::DUPLICATES] += 1;
        self.tenant(tenant).duplicates += 1;
    }

    /// An action emitted (traced at `trace` level with its tenant, account, journey and node).
    pub(crate) fn action(&mut self, a: &ActionRecord) {
        tracing::trace!(tenant = %a.tenant, account = %a.account_id, journey = %a.journey_id, node = %a.node_id,
            action = %a.kind, person = a.person_id.as_deref(), "Action emitted.");
        self.totals[total::ACTIONS] += 1;
        let known = self.actions.iter_mut().find(|((t, j, k), _)| *j == a.journey_id && *k == a.kind && *t == a.tenant);
        match known {
            Some((_, n)) => *n += 1,
            None => self.actions.push(((a.tenant.clone(), a.journey_id.clone(), a.kind.clone()), 1)),
        }
    }

    /// A change event emitted (traced at `trace` level).
    pub(crate) fn change(&mut self, c: &ChangeEvent) {
        tracing::trace!(tenant = %c.tenant, account = %c.account_id, entity = c.entity.as_str(),
            id = %c.entity_id, version = c.version, journey = c.journey_id.as_deref(), "Change emitted.");
        self.totals[total::CHANGES] += 1;
        self.tenant(&c.tenant).changes[entity_index(c.entity)] += 1;
    }

    /// Adds another tally's counts.
    pub(crate) fn merge(&mut self, other: Tally) {
        for (t, n) in self.totals.iter_mut().zip(other.totals) {
            *t += n;
        }
        for (t, n) in self.rejected.iter_mut().zip(other.rejected) {
            *t += n;
        }
        for o in other.tenants {
            let t = self.tenant(&o.tenant);
            for (a, b) in t.ingested.iter_mut().zip(o.ingested) {
                *a += b;
            }
            for (a, b) in t.changes.iter_mut().zip(o.changes) {
                *a += b;
            }
            t.duplicates += o.duplicates;
            t.late += o.late;
        }
        for (key, n) in other.actions {
            match self.actions.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => *m += n,
                None => self.actions.push((key, n)),
            }
        }
    }

    /// Input records counted (applied, rejected or duplicates).
    pub(crate) fn records(&self) -> u64 {
        self.totals[total::APPLIED] + self.totals[total::REJECTED] + self.totals[total::DUPLICATES]
    }

    /// The non-zero counts as (metric, labels, count).
    fn series(&self) -> Vec<Series> {
        let mut out = Vec::new();
        for t in &self.tenants {
            let tenant = || ("tenant", t.tenant.to_string());
            for (ix, n) in t.ingested.iter().enumerate().filter(|(_, n)| **n > 0) {
                out.push((EVENTS_INGESTED, vec![tenant(), ("type", EventBody::TYPE_NAMES[ix].to_string())], *n));
            }
            for (ix, n) in t.changes.iter().enumerate().filter(|(_, n)| **n > 0) {
                out.push((CHANGES_EMITTED, vec![tenant(), ("entity", ENTITIES[ix].as_str().to_string())], *n));
            }
            if t.duplicates > 0 {
                out.push((EVENTS_DUPLICATE, vec![tenant()], t.duplicates));
            }
            if t.late > 0 {
                out.push((EVENTS_LATE, vec![tenant()], t.late));
            }
        }
        for (ix, n) in self.rejected.iter().enumerate().filter(|(_, n)| **n > 0) {
            out.push((EVENTS_REJECTED, vec![("reason", REASONS[ix].as_str().to_string())], *n));
        }
        for ((tenant, journey, kind), n) in &self.actions {
            let labels =
                vec![("tenant", tenant.to_string()), ("journey", journey.to_string()), ("type", kind.to_string())];
            out.push((ACTIONS_EMITTED, labels, *n));
        }
        out
    }

    /// Adds the counts to the metrics.
    fn record(&self) {
        for (name, labels, n) in self.series() {
            metrics::counter!(name, &labels).increment(n);
        }
    }
}

/// Records one commit: its counts, state writes, duration, and the batch it carried (records and age: the
/// time since its first record was read).
pub(crate) fn record_commit(tally: &Tally, writes: usize, took: Duration, first_read: Option<Instant>) {
    tally.record();
    metrics::counter!(COMMITS).increment(1);
    metrics::histogram!(COMMIT_WRITES).record(writes as f64);
    metrics::histogram!(COMMIT_DURATION).record(took.as_secs_f64());
    metrics::histogram!(BATCH_RECORDS).record(tally.records() as f64);
    if let Some(first) = first_read {
        metrics::histogram!(BATCH_DURATION).record(first.elapsed().as_secs_f64());
    }
}

/// Records how long a phase of a Kafka commit took (see [`TRANSACTION_PHASE`]), and restarts the clock.
pub(crate) fn record_phase(phase: &'static str, since: &mut Instant) {
    metrics::histogram!(TRANSACTION_PHASE, "phase" => phase).record(since.elapsed().as_secs_f64());
    *since = Instant::now();
}

/// Records the end-to-end latency of `count` records read at `read`, now committed.
pub(crate) fn record_latency(read: Instant, count: usize) {
    if count > 0 {
        metrics::histogram!(END_TO_END_LATENCY).record_many(read.elapsed().as_secs_f64(), count);
    }
}

/// Sets the watermark lag gauge from the watermark (event-time nanoseconds).
pub(crate) fn record_watermark(watermark_ns: i64) {
    let now = crate::wall_clock_ns();
    metrics::gauge!(WATERMARK_LAG).set(now.saturating_sub(watermark_ns) as f64 / 1e9);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> EventBody {
        EventBody::PersonActivity {
            person_id: Id::from("p"),
            account_id: None,
            activity: Id::from("email.clicked"),
            properties: caravan_schemas::attrs::Attrs::default(),
        }
    }

    #[test]
    fn merged_tallies_add_totals_and_series() {
        let mut a = Tally::default();
        a.applied("t1", &activity());
        a.applied("t1", &activity());
        a.rejected(RejectReason::TooLarge);
        let mut b = Tally::default();
        b.applied("t1", &activity());
        b.applied("t2", &EventBody::AccountDeleted { account_id: Id::from("a") });
        b.duplicate("t2");
        b.late("t2");
        b.rejected(RejectReason::TooLarge);
        a.merge(b);
        assert_eq!(a.totals, [4, 2, 1, 0, 0, 1]);
        assert_eq!(a.records(), 7);
        let series = a.series();
        let find = |name: &str, labels: &[(&str, &str)]| {
            series
                .iter()
                .find(|(n, l, _)| {
                    *n == name && l.len() == labels.len() && l.iter().zip(labels).all(|(x, y)| x.0 == y.0 && x.1 == y.1)
                })
                .map(|(_, _, c)| *c)
        };
        assert_eq!(find(EVENTS_INGESTED, &[("tenant", "t1"), ("type", "person.activity")]), Some(3));
        assert_eq!(find(EVENTS_INGESTED, &[("tenant", "t2"), ("type", "account.deleted")]), Some(1));
        assert_eq!(find(EVENTS_REJECTED, &[("reason", "too_large")]), Some(2));
        assert_eq!(find(EVENTS_DUPLICATE, &[("tenant", "t2")]), Some(1));
        assert_eq!(find(EVENTS_LATE, &[("tenant", "t2")]), Some(1));
        assert_eq!(series.len(), 5, "{series:?}");
    }

    #[test]
    fn every_reject_reason_has_its_place() {
        for (ix, r) in REASONS.iter().enumerate() {
            assert_eq!(reason_index(*r), ix, "{r:?}");
        }
    }
}
