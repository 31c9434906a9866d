//! De-duplication by event id: the window of the last applied ids in memory, and its stored form, one entry
//! per commit epoch, so that a restart rebuilds exactly the window an uninterrupted run would have.
//!
//! It owns the window's rule (the last `capacity` applied ids, per replay or per Kafka partition) and which
//! stored epochs may go. It never decides whether an event is applied: the caller inserts, and forgets an id
//! that turned out not to be.

use caravan_state::{Delta, Store};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The last `capacity` applied event ids. After a restart it is rebuilt from the stored epochs, inserted in
/// the same order, so it answers exactly as an uninterrupted run's window would.
///
/// Each id maps to its number in the sequence of applied ids; an id whose number is `capacity` or more
/// behind the latest has left the window. Expired entries are purged in bulk once the map holds half a
/// window more than `capacity`: that costs a sequential scan now and then instead of a second random
/// memory access (the removal of the oldest id) for every record.
pub(crate) struct DedupWindow {
    seen: HashMap<u128, u64, BuildHasherDefault<IdentityHasher>>,
    /// Ids inserted so far: the number of the latest one.
    count: u64,
    capacity: usize,
    /// Purge expired entries once the map holds this many.
    purge_at: usize,
}

impl DedupWindow {
    pub(crate) fn new(capacity: usize) -> DedupWindow {
        let purge_at = capacity.saturating_add((capacity / 2).max(1024));
        let seen = HashMap::with_capacity_and_hasher(purge_at.min(1 << 25), BuildHasherDefault::default());
        DedupWindow { seen, count: 0, capacity, purge_at }
    }

    /// Ids numbered at or below this have left the window.
    fn window_start(&self) -> u64 {
        self.count.saturating_sub(self.capacity as u64)
    }

    /// Remembers an id; false when it is in the window already (a duplicate). One hash lookup for both.
    pub(crate) fn insert(&mut self, h: u128) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let window_start = self.window_start();
        match self.seen.entry(h) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if *e.get() > window_start {
                    return false;
                }
                self.count += 1;
                e.insert(self.count);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.count += 1;
                e.insert(self.count);
            }
        }
        true
    }

    /// Purges expired ids when there are enough of them; called once the last inserted id is known to be
    /// applied.
    pub(crate) fn settle(&mut self) {
        if self.seen.len() >= self.purge_at {
            let window_start = self.window_start();
            self.seen.retain(|_, n| *n > window_start);
        }
    }

    /// Forgets the id remembered last (an event that turned out not to be applied).
    pub(crate) fn forget_last(&mut self, h: u128) {
        if self.capacity > 0 && self.seen.get(&h) == Some(&self.count) {
            self.seen.remove(&h);
            self.count -= 1;
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, h: u128) -> bool {
        self.seen.get(&h).is_some_and(|n| *n > self.window_start())
    }
}

/// The stored epochs of a window: which ones still hold part of it.
#[derive(Default)]
pub(crate) struct EpochLog {
    epochs: VecDeque<(u64, usize)>,
    total: usize,
    capacity: usize,
}

impl EpochLog {
    /// Stores the ids applied in `epoch` and deletes the oldest epochs that the rest make unnecessary.
    pub(crate) fn record(&mut self, delta: &mut Delta, epoch: u64, hashes: &[u128]) {
        if hashes.is_empty() || self.capacity == 0 {
            return;
        }
        delta.put_dedup_epoch(epoch, hashes);
        self.epochs.push_back((epoch, hashes.len()));
        self.total += hashes.len();
        // Drop the oldest epochs while the rest still hold the whole window.
        while let Some(&(old, n)) = self.epochs.front() {
            if self.total - n < self.capacity {
                break;
            }
            delta.delete_dedup_epoch(old);
            self.total -= n;
            self.epochs.pop_front();
        }
    }
}

/// The window and its epoch log as a store committed them.
///
/// # Errors
/// A state read failure.
pub(crate) fn restore(store: &Store, capacity: usize) -> Result<(DedupWindow, EpochLog), caravan_state::StateError> {
    let stored = store.dedup_epochs()?;
    let mut window = DedupWindow::new(capacity);
    let mut log = EpochLog { capacity, ..EpochLog::default() };
    for (epoch, hashes) in &stored {
        for h in hashes {
            let _ = window.insert(*h);
            window.settle();
        }
        log.epochs.push_back((*epoch, hashes.len()));
        log.total += hashes.len();
    }
    Ok((window, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_keeps_the_last_n() {
        let mut w = DedupWindow::new(3);
        for h in 1..=5u128 {
            assert!(w.insert(h));
            w.settle();
        }
        assert!(!w.insert(5), "a duplicate");
        // An id that was not applied after all is forgotten without evicting anything.
        assert!(w.insert(9));
        w.forget_last(9);
        w.settle();
        assert!(!w.contains(9) && w.contains(3));
        assert!(!w.contains(1) && !w.contains(2));
        assert!(w.contains(3) && w.contains(4) && w.contains(5));
        let mut off = DedupWindow::new(0);
        assert!(off.insert(1));
        assert!(!off.contains(1));
    }

    proptest::proptest! {
        /// The window answers like the obvious model (a queue of the last N applied ids) over long runs of
        /// repeats and forgotten ids, across many purges.
        #[test]
        fn dedup_window_matches_a_queue_model(
            capacity in 0usize..40,
            ops in proptest::collection::vec((0u128..60, proptest::bool::weighted(0.1)), 0..4000),
        ) {
            let mut w = DedupWindow::new(capacity);
            w.purge_at = capacity + 3;
            let mut model: std::collections::VecDeque<u128> = std::collections::VecDeque::new();
            for (h, not_applied) in ops {
                let dup = capacity > 0 && model.contains(&h);
                proptest::prop_assert_eq!(w.insert(h), !dup);
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
