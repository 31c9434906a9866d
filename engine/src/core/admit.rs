//! The record side of one partition's step, the same in both modes: de-duplicate a decoded event, route it
//! through the person and opportunity index, and once it is applied, write the index, remember its id and
//! move the partition's event time.
//!
//! It owns the de-duplication window, the index cache and the event-time bookkeeping (largest applied `ts`,
//! late records, the watermark) of one stream: a replay's one router, or a Kafka partition task. It never
//! touches an account: moves between accounts (a detach on one worker, or on one partition, then an attach)
//! and the person stage are the driver's business between [`Admission::admit`] and
//! [`Admission::applied`].

use super::cache::IndexCache;
use super::dedup::DedupWindow;
use super::keys;
use super::routing::{self, Route};
use crate::EngineError;
use crate::telemetry::Tally;
use caravan_schemas::input::InputEvent;
use caravan_schemas::output::Entity;
use caravan_state::Store;

/// The index entry an event reads: entity, id and its [`keys::index_key`].
#[derive(Clone, Copy)]
pub(crate) struct Indexed<'e> {
    pub(crate) entity: Entity,
    pub(crate) id: &'e str,
    pub(crate) key: u128,
}

/// What admitting an event decided.
pub(crate) enum Admit<'e> {
    /// Its id was applied already: dropped (and counted).
    Duplicate,
    /// Routed (possibly nowhere, or unroutable: see [`Route::unroutable`]); `known` is the index entry as it
    /// was before the event.
    Routed { route: Route, indexed: Option<Indexed<'e>>, known: Option<caravan_schemas::state::IndexRecord> },
}

/// What applying an event did to the stream's time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Applied {
    /// The index entry changed.
    pub(crate) index_changed: bool,
    /// The watermark after the event (event-time nanoseconds).
    pub(crate) watermark: i64,
}

/// De-duplication, the index and event time of one stream.
pub(crate) struct Admission {
    pub(crate) dedup: DedupWindow,
    pub(crate) index: IndexCache,
    /// Largest applied event time (none before the first).
    max_ts: Option<i64>,
    allowed_disorder_ns: i64,
}

impl Admission {
    /// A stream resuming with `dedup` and its largest applied event time `max_ts`; `complete_index`: the
    /// store holds no index entry (a miss is then an absence).
    pub(crate) fn new(
        dedup: DedupWindow,
        complete_index: bool,
        max_ts: Option<i64>,
        allowed_disorder_ns: i64,
    ) -> Admission {
        Admission { dedup, index: IndexCache::new(complete_index), max_ts, allowed_disorder_ns }
    }

    /// Largest applied event time.
    pub(crate) fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// The watermark now (none before the first applied event).
    pub(crate) fn watermark(&self) -> Option<i64> {
        self.max_ts.map(|m| m.saturating_sub(self.allowed_disorder_ns))
    }

    /// The watermark once an event at `ts` is applied.
    pub(crate) fn watermark_after(&self, ts: i64) -> i64 {
        self.max_ts.map_or(ts, |m| m.max(ts)).saturating_sub(self.allowed_disorder_ns)
    }

    /// De-duplicates (unless `forwarded`: the record was counted where it was read) and routes an event
    /// whose id hashes to `hash`. Its id stays remembered only once [`Admission::applied`] or
    /// [`Admission::accepted`] settles it; [`Admission::not_applied`] forgets it.
    ///
    /// # Errors
    /// A store read failure.
    pub(crate) fn admit<'e>(
        &mut self,
        store: &Store,
        event: &'e InputEvent,
        hash: u128,
        forwarded: bool,
        tally: &mut Tally,
    ) -> Result<Admit<'e>, EngineError> {
        if !forwarded && !self.dedup.insert(hash, event.ts.0) {
            tally.duplicate(&event.tenant);
            return Ok(Admit::Duplicate);
        }
        let tenant = event.tenant.as_str();
        let indexed = routing::indexed(event).map(|(entity, id)| Indexed {
            entity,
            id,
            key: keys::index_key(entity, tenant, id),
        });
        let known = match indexed {
            Some(i) => self.index.lookup(store, i.key, i.entity, tenant, i.id)?,
            None => None,
        };
        Ok(Admit::Routed { route: routing::route(event, known.as_ref()), indexed, known })
    }

    /// The event admitted last is not applied (rejected): its id is forgotten (unless `forwarded`).
    pub(crate) fn not_applied(&mut self, hash: u128, forwarded: bool) {
        if !forwarded {
            self.dedup.forget_last(hash);
        }
    }

    /// The event admitted last is taken without being applied here (sent on elsewhere): its id stays
    /// remembered, and is added to `ids` (the window's stored epoch) when given.
    pub(crate) fn accepted(&mut self, hash: u128, ts: i64, ids: Option<&mut Vec<(u128, i64)>>) {
        self.dedup.settle();
        if let Some(ids) = ids {
            ids.push((hash, ts));
        }
    }

    /// The event admitted last is applied (after any move the driver made): writes its index entry in commit
    /// `commit`, remembers its id (unless `forwarded`), counts it (and whether it is late, when `event_time`:
    /// strictly behind the watermark; it still never moves time back), and moves the event time.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn applied(
        &mut self,
        event: &InputEvent,
        hash: u128,
        forwarded: bool,
        index_write: Option<(Indexed<'_>, caravan_schemas::state::IndexRecord)>,
        commit: u64,
        ids: Option<&mut Vec<(u128, i64)>>,
        event_time: bool,
        tally: &mut Tally,
    ) -> Applied {
        let tenant = event.tenant.as_str();
        let index_changed = match index_write {
            Some((i, rec)) => self.index.set(i.key, i.entity, tenant, i.id, rec, commit),
            None => false,
        };
        if !forwarded {
            self.accepted(hash, event.ts.0, ids);
        }
        tally.applied(tenant, &event.body);
        let ts = event.ts.0;
        if event_time && self.max_ts.is_some_and(|m| ts < m.saturating_sub(self.allowed_disorder_ns)) {
            tally.late(tenant);
        }
        let max_ts = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max_ts);
        Applied { index_changed, watermark: max_ts.saturating_sub(self.allowed_disorder_ns) }
    }
}
