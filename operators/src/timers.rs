//! Timer ordering: the arming-order keys that make timer firing independent of partitioning.
//!
//! SPEC §7: timers due together fire in due order, then arming order. A single global counter would give
//! that order in a sequential engine, but partitioned workers cannot share one without coordination. So the
//! arming order is a key that every worker can compute alone and that orders exactly as the global counter
//! would:
//! - a timer armed while applying input record `seq` gets `[seq, 0, k]` (`k`: its rank within that step);
//! - a timer armed while firing timer `T` in the pass after record `seq` gets
//!   `[seq, 1, due(T), arm(T)..., k]`, because within a pass timers fire in `(due, arm)` order;
//! - a timer armed by a publication applied after record `seq` and its timer pass gets `[seq, 2, k]`.
//!
//! Keys compare lexicographically. It is not a queue: the engine keeps the queue.

use caravan_schemas::state::TimerRecord;

/// Maps an i64 due time onto u64 keeping its order.
fn ordered(due: i64) -> u64 {
    (due as u64) ^ (1 << 63)
}

/// The arming prefix for timers armed by input record `seq`.
pub fn record_prefix(seq: u64) -> Vec<u64> {
    vec![seq, 0]
}

/// The arming prefix for timers armed by a publication applied after record `seq` and its timer pass.
pub fn control_prefix(seq: u64) -> Vec<u64> {
    vec![seq, 2]
}

/// The arming prefix for timers armed by firing `timer` in the pass after record `seq`.
pub fn timer_prefix(seq: u64, timer: &TimerRecord) -> Vec<u64> {
    let mut p = Vec::with_capacity(3 + timer.arm.len());
    p.extend_from_slice(&[seq, 1, ordered(timer.due)]);
    p.extend_from_slice(&timer.arm);
    p
}

/// The order in which due timers fire: due time, then arming order.
pub fn fire_order(a: &TimerRecord, b: &TimerRecord) -> std::cmp::Ordering {
    a.due.cmp(&b.due).then_with(|| a.arm.cmp(&b.arm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(due: i64, arm: Vec<u64>) -> TimerRecord {
        TimerRecord { due, arm }
    }

    #[test]
    fn arming_order_matches_a_global_counter() {
        // Armed by record 5, then by record 7: record order.
        let a = t(10, [record_prefix(5), vec![0]].concat());
        let b = t(10, [record_prefix(7), vec![0]].concat());
        assert!(fire_order(&a, &b).is_lt());
        // Armed by record 7 itself before anything armed in the pass after it.
        let parent = t(3, [record_prefix(2), vec![0]].concat());
        let child = t(10, [timer_prefix(7, &parent), vec![0]].concat());
        assert!(fire_order(&b, &child).is_lt());
        // Two children of the same pass: ordered by their parents' firing order.
        let parent2 = t(4, [record_prefix(1), vec![0]].concat());
        let child2 = t(10, [timer_prefix(7, &parent2), vec![0]].concat());
        assert!(fire_order(&child, &child2).is_lt());
        // Negative due times keep their order.
        assert!(ordered(-5) < ordered(3));
    }
}
