//! De-duplication by event id: the window of the last applied ids in memory, and its stored form, one entry
//! per commit epoch, so that a restart rebuilds exactly the window an uninterrupted run would have.
//!
//! It owns the window's rule (the last `capacity` applied ids, per replay or per Kafka partition) and which
//! stored epochs may go. It never decides whether an event is applied: the caller inserts, and forgets an id
//! that turned out not to be.

use caravan_state::{Delta, Store};
use std::collections::VecDeque;

/// One entry of an [`IdTable`]: an id's hash, its number among applied ids (0: the slot is empty) and its
/// event time.
#[derive(Clone, Copy, Default)]
struct Slot {
    id: u128,
    number: u64,
    ts: i64,
}

/// The window's map from id hash to (number, event time): open addressing with linear probing in one flat
/// array, instead of a general hash map, for two reasons. A slot's address follows from the hash alone, so
/// the router can start loading it records ahead ([`IdTable::prefetch`]); with the map, finding an id cost
/// two dependent cache misses per record (perf: 6.6% of a replay's CPU in the insert). And expired entries
/// leave by backward shifting inside their cluster, so the table never fills with tombstones and never has
/// to be rebuilt larger (the map did, doubling its 64 MiB on the reference workload).
struct IdTable {
    slots: Vec<Slot>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    len: usize,
}

impl IdTable {
    /// A table for `entries` ids at a load of at most three quarters.
    fn with_room_for(entries: usize) -> IdTable {
        let size = (entries.saturating_mul(4) / 3).max(16).next_power_of_two();
        IdTable { slots: vec![Slot::default(); size], mask: size - 1, len: 0 }
    }

    /// Where an id's probe starts: the hashes are uniform, so their low bits serve as they are.
    fn home(&self, id: u128) -> usize {
        id as usize & self.mask
    }

    /// Starts loading the slots where `id` would be found (see [`crate::prefetch`]).
    fn prefetch(&self, id: u128) {
        if let Some(slot) = self.slots.get(self.home(id)) {
            crate::prefetch::lines(slot, 1);
        }
    }

    /// The slot holding `id`, or the empty slot where it would go.
    fn probe(&self, id: u128) -> usize {
        let mut i = self.home(id);
        loop {
            let slot = &self.slots[i];
            if slot.number == 0 || slot.id == id {
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn get(&self, id: u128) -> Option<&Slot> {
        let slot = &self.slots[self.probe(id)];
        (slot.number != 0).then_some(slot)
    }

    /// The slot for `id`, found or empty, after growing the table if one more entry would overfill it.
    fn slot_for(&mut self, id: u128) -> usize {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.probe(id)
    }

    /// Puts `id` with its number and time into slot `i` (from [`IdTable::slot_for`]).
    fn put_at(&mut self, i: usize, id: u128, number: u64, ts: i64) {
        if self.slots[i].number == 0 {
            self.len += 1;
        }
        self.slots[i] = Slot { id, number, ts };
    }

    /// Sets `id`'s number and time, adding it when absent.
    fn set(&mut self, id: u128, number: u64, ts: i64) {
        let i = self.slot_for(id);
        self.put_at(i, id, number, ts);
    }

    /// Empties slot `i` and moves back the entries after it in its cluster that may no longer be found
    /// past the gap (an entry moves when its home is not between the gap and itself).
    fn remove_at(&mut self, mut gap: usize) {
        self.len -= 1;
        let mut j = gap;
        loop {
            j = (j + 1) & self.mask;
            let slot = self.slots[j];
            if slot.number == 0 {
                break;
            }
            // Cyclic distances from the entry's home: to the gap, and to where it sits.
            let home = self.home(slot.id);
            if (gap.wrapping_sub(home) & self.mask) < (j.wrapping_sub(home) & self.mask) {
                self.slots[gap] = slot;
                gap = j;
            }
        }
        self.slots[gap] = Slot::default();
    }

    fn remove(&mut self, id: u128) {
        let i = self.probe(id);
        if self.slots[i].number != 0 {
            self.remove_at(i);
        }
    }

    /// Removes every entry `keep` refuses, in one pass. A removal moves later entries of the cluster back
    /// into the gap, so the slot just emptied is looked at again before going on; an entry moved back from
    /// the table's start into its end is looked at twice, which is harmless.
    fn retain(&mut self, keep: impl Fn(&Slot) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            let slot = self.slots[i];
            if slot.number != 0 && !keep(&slot) {
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Doubles the table (only when the window is larger than the size it started with).
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.mask = size - 1;
        for slot in old.into_iter().filter(|s| s.number != 0) {
            let i = self.probe(slot.id);
            self.slots[i] = slot;
        }
    }
}

/// The window of applied event ids: the last `capacity` of them and, with a maximum age, only those whose
/// event time is within `max_age` of the largest event time applied so far. After a restart it is rebuilt from
/// the stored epochs, inserted in the same order, so it answers exactly as an uninterrupted run's would.
///
/// Each id maps to its number in the sequence of applied ids and its event time; an id whose number is
/// `capacity` or more behind the latest, or whose time is too old, has left the window. Expired entries are
/// purged in bulk once the table holds half a window more than `capacity`: that costs a sequential pass now
/// and then instead of a second random memory access (the removal of the oldest id) for every record.
pub(crate) struct DedupWindow {
    seen: IdTable,
    /// Ids inserted so far: the number of the latest one.
    count: u64,
    capacity: usize,
    /// Maximum age in event-time nanoseconds; 0: no age bound.
    max_age: i64,
    /// Largest event time applied (settled) so far.
    max_ts: i64,
    /// Event time of the id inserted last (settled, or forgotten, next).
    last_ts: i64,
    /// Purge expired entries once the table holds this many.
    purge_at: usize,
}

impl DedupWindow {
    pub(crate) fn new(capacity: usize, max_age: i64) -> DedupWindow {
        let purge_at = capacity.saturating_add((capacity / 2).max(1024));
        let seen = IdTable::with_room_for(if capacity == 0 { 0 } else { purge_at.min(1 << 25) });
        DedupWindow { seen, count: 0, capacity, max_age, max_ts: i64::MIN, last_ts: i64::MIN, purge_at }
    }

    /// Ids numbered at or below this have left the window.
    fn window_start(&self) -> u64 {
        self.count.saturating_sub(self.capacity as u64)
    }

    /// Ids with an event time before this have left the window.
    fn oldest_ts(&self) -> i64 {
        if self.max_age > 0 { self.max_ts.saturating_sub(self.max_age) } else { i64::MIN }
    }

    /// Starts loading the part of the window that inserting `h` will read: the router calls it some records
    /// ahead of the insert.
    pub(crate) fn prefetch(&self, h: u128) {
        if self.capacity > 0 {
            self.seen.prefetch(h);
        }
    }

    /// Remembers an id applied at event time `ts`; false when it is in the window already (a duplicate). One
    /// probe for both.
    pub(crate) fn insert(&mut self, h: u128, ts: i64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let (window_start, oldest) = (self.window_start(), self.oldest_ts());
        // One probe answers and places: the slot found is where the id goes.
        let i = self.seen.slot_for(h);
        let slot = self.seen.slots[i];
        if slot.number != 0 && slot.number > window_start && slot.ts >= oldest {
            return false;
        }
        self.count += 1;
        self.seen.put_at(i, h, self.count, ts);
        self.last_ts = ts;
        true
    }

    /// The id inserted last is applied: its time counts, and expired ids are purged when there are enough.
    pub(crate) fn settle(&mut self) {
        self.max_ts = self.max_ts.max(self.last_ts);
        if self.seen.len >= self.purge_at {
            let (window_start, oldest) = (self.window_start(), self.oldest_ts());
            self.seen.retain(|s| s.number > window_start && s.ts >= oldest);
        }
    }

    /// Re-inserts a stored id: it was applied, so it takes the next number whatever the window says now.
    fn reapply(&mut self, h: u128, ts: i64) {
        if self.capacity > 0 {
            self.count += 1;
            self.seen.set(h, self.count, ts);
            self.last_ts = ts;
            self.settle();
        }
    }

    /// Forgets the id remembered last (an event that turned out not to be applied).
    pub(crate) fn forget_last(&mut self, h: u128) {
        if self.capacity > 0 && self.seen.get(h).is_some_and(|s| s.number == self.count) {
            self.seen.remove(h);
            self.count -= 1;
        }
    }

    /// Largest event time applied so far (none before the first).
    fn max_ts(&self) -> Option<i64> {
        (self.max_ts > i64::MIN).then_some(self.max_ts)
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, h: u128) -> bool {
        self.seen.get(h).is_some_and(|s| s.number > self.window_start() && s.ts >= self.oldest_ts())
    }
}

/// The stored epochs of a window: which ones still hold part of it.
#[derive(Default)]
pub(crate) struct EpochLog {
    /// (epoch, entries, largest event time among them).
    epochs: VecDeque<(u64, usize, i64)>,
    total: usize,
    capacity: usize,
    max_age: i64,
}

impl EpochLog {
    /// Stores the ids applied in `epoch` (with their event times) and deletes the oldest epochs that the
    /// rest make unnecessary (by count) or that are all too old (by age, against `max_ts`, the largest event
    /// time applied so far).
    pub(crate) fn record(&mut self, delta: &mut Delta, epoch: u64, entries: &[(u128, i64)], max_ts: Option<i64>) {
        if self.capacity == 0 {
            return;
        }
        if !entries.is_empty() {
            delta.put_dedup_epoch(epoch, entries);
            let newest = entries.iter().map(|(_, t)| *t).max().unwrap_or(i64::MIN);
            self.epochs.push_back((epoch, entries.len(), newest));
            self.total += entries.len();
        }
        let oldest = match max_ts {
            Some(m) if self.max_age > 0 => m.saturating_sub(self.max_age),
            _ => i64::MIN,
        };
        while let Some(&(old, n, newest)) = self.epochs.front() {
            if self.total - n < self.capacity && newest >= oldest {
                break;
            }
            delta.delete_dedup_epoch(old);
            self.total -= n;
            self.epochs.pop_front();
        }
    }
}

/// The window and its epoch log as a store committed them; `max_ts` is the largest event time the store
/// has applied (the age bound counts back from it).
///
/// # Errors
/// A state read failure.
pub(crate) fn restore(
    store: &Store,
    capacity: usize,
    max_age: i64,
    max_ts: Option<i64>,
) -> Result<(DedupWindow, EpochLog), caravan_state::StateError> {
    let stored = store.dedup_epochs()?;
    let mut window = DedupWindow::new(capacity, max_age);
    let mut log = EpochLog { capacity, max_age, ..EpochLog::default() };
    for (epoch, entries) in &stored {
        for (h, ts) in entries {
            window.reapply(*h, *ts);
        }
        let newest = entries.iter().map(|(_, t)| *t).max().unwrap_or(i64::MIN);
        log.epochs.push_back((*epoch, entries.len(), newest));
        log.total += entries.len();
    }
    // Epochs stored by builds that kept no times read as i64::MAX: the committed time is the true latest.
    window.max_ts = match (max_ts, window.max_ts()) {
        (Some(m), _) => m,
        (None, Some(w)) if w < i64::MAX => w,
        _ => i64::MIN,
    };
    Ok((window, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_keeps_the_last_n() {
        let mut w = DedupWindow::new(3, 0);
        for h in 1..=5u128 {
            assert!(w.insert(h, 0));
            w.settle();
        }
        assert!(!w.insert(5, 0), "a duplicate");
        // An id that was not applied after all is forgotten without evicting anything.
        assert!(w.insert(9, 0));
        w.forget_last(9);
        w.settle();
        assert!(!w.contains(9) && w.contains(3));
        assert!(!w.contains(1) && !w.contains(2));
        assert!(w.contains(3) && w.contains(4) && w.contains(5));
        let mut off = DedupWindow::new(0, 0);
        assert!(off.insert(1, 0));
        assert!(!off.contains(1));
    }

    #[test]
    fn an_age_bound_forgets_ids_whose_time_is_too_far_behind() {
        let day = 86_400_000_000_000i64;
        let mut w = DedupWindow::new(1000, 7 * day);
        assert!(w.insert(1, 0));
        w.settle();
        assert!(w.insert(2, 3 * day));
        w.settle();
        assert!(!w.insert(1, 3 * day), "3 days later, a duplicate");
        assert!(w.insert(3, 8 * day));
        w.settle();
        // Time is now day 8: id 1 (day 0) has aged out, id 2 (day 3) has not.
        assert!(!w.contains(1) && w.contains(2));
        assert!(w.insert(1, 8 * day), "applied again once older than the bound");
        w.settle();
        assert!(!w.insert(2, 9 * day), "still a duplicate");
        // The count bound still applies with an age bound.
        let mut small = DedupWindow::new(1, 7 * day);
        assert!(small.insert(1, 0));
        small.settle();
        assert!(small.insert(2, 0));
        small.settle();
        assert!(small.insert(1, 0), "pushed out by count");
    }

    #[test]
    fn the_epoch_log_drops_epochs_that_are_all_too_old_and_a_restore_answers_the_same() {
        let day = 86_400_000_000_000i64;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &caravan_state::StoreOptions::default()).expect("store");
        let (mut w, mut log) = restore(&store, 1000, 2 * day, None).expect("restore");
        let mut max_ts = None;
        for (epoch, entries) in
            [(1u64, vec![(10u128, 0i64), (11, day / 2)]), (2, vec![(12, day)]), (3, vec![(13, 3 * day)])]
        {
            let mut delta = Delta::default();
            for (h, ts) in &entries {
                assert!(w.insert(*h, *ts));
                w.settle();
                max_ts = Some(max_ts.map_or(*ts, |m: i64| m.max(*ts)));
            }
            log.record(&mut delta, epoch, &entries, max_ts);
            store.commit(&delta, &caravan_state::Position::replay()).expect("commit");
        }
        // Day 3 with a two-day bound (ids from day 1 on stay): epoch 1 (days 0 and 0.5) is gone, epoch 2
        // (day 1) stays.
        let epochs: Vec<u64> = store.dedup_epochs().expect("read").iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs, [2, 3]);
        let (again, _) = restore(&store, 1000, 2 * day, max_ts).expect("restore");
        for h in [10u128, 11, 12, 13] {
            assert_eq!(again.contains(h), w.contains(h), "id {h} after a restart");
        }
        assert!(again.contains(13) && again.contains(12) && !again.contains(11) && !again.contains(10));
    }

    proptest::proptest! {
        /// The table answers like a map through sets, removals and bulk removals, with ids crowded onto a
        /// few homes near the end of a small table so that clusters are long and wrap around its start.
        #[test]
        fn the_id_table_answers_like_a_map(
            ops in proptest::collection::vec((0u8..4, 0u128..24, 0u64..6), 0..400),
        ) {
            let mut table = IdTable::with_room_for(8);
            let mut model: std::collections::HashMap<u128, (u64, i64)> = std::collections::HashMap::new();
            let size = table.slots.len() as u128;
            for (op, k, v) in ops {
                // Distinct ids whose homes are among the last four slots (while the table is this size).
                let id = (k << 64) | (size - 1 - k % 4);
                match op {
                    0 | 1 => {
                        table.set(id, v + 1, -(v as i64));
                        model.insert(id, (v + 1, -(v as i64)));
                    }
                    2 => {
                        table.remove(id);
                        model.remove(&id);
                    }
                    _ => {
                        table.retain(|s| s.number > v);
                        model.retain(|_, (n, _)| *n > v);
                    }
                }
                proptest::prop_assert_eq!(table.len, model.len());
                for k in 0..24u128 {
                    let id = (k << 64) | (size - 1 - k % 4);
                    let got = table.get(id).map(|s| (s.number, s.ts));
                    proptest::prop_assert_eq!(got, model.get(&id).copied(), "id {}", k);
                }
            }
        }

        /// The window answers like the obvious model (a queue of the last N applied ids) over long runs of
        /// repeats and forgotten ids, across many purges.
        #[test]
        fn dedup_window_matches_a_queue_model(
            capacity in 0usize..40,
            ops in proptest::collection::vec((0u128..60, proptest::bool::weighted(0.1)), 0..4000),
        ) {
            let mut w = DedupWindow::new(capacity, 0);
            w.purge_at = capacity + 3;
            let mut model: std::collections::VecDeque<u128> = std::collections::VecDeque::new();
            for (h, not_applied) in ops {
                let dup = capacity > 0 && model.contains(&h);
                proptest::prop_assert_eq!(w.insert(h, 0), !dup);
                if dup {
                    continue;
                }
                if not_applied {
                    w.forget_last(h);
                } else {
                    if capacity > 0 {
                        model.push_back(h);
                        if model.len() > capacity {
                            model.pop_front();
                        }
                    }
                    w.settle();
                }
            }
            for h in 0..60u128 {
                proptest::prop_assert_eq!(w.contains(h), model.contains(&h));
            }
        }
    }
}
