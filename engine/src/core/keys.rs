//! The hashes a replay keys its in-memory tables by: event ids for de-duplication, accounts for routing
//! and the workers' caches, persons and opportunities for the index.
//!
//! It owns the choice of hash (XXH3, seeded by the tenant so that nothing collides across tenants by
//! construction of the input). Decoder threads compute what they can, so that the one sequential stage,
//! the router, hashes as little as possible. It must never change a value for an existing input: the
//! de-duplication window is stored as these hashes and routing decides which worker emits what.
//!
//! 128-bit hashes stand for ids where only equality matters (de-duplication, the person index): among the
//! ids a state can hold, a collision is far less likely than a hardware fault. The 64-bit account key only
//! picks a worker and a hash-table bucket; the cache compares the account id itself.

use caravan_schemas::output::Entity;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, xxh3_128_with_seed};

/// The hash of an event id within its tenant, as the de-duplication window stores it.
pub(crate) fn event_hash(tenant: &str, event_id: &str) -> u128 {
    xxh3_128_with_seed(event_id.as_bytes(), xxh3_64(tenant.as_bytes()))
}

/// The key of an account within its tenant: routing and the workers' caches.
pub(crate) fn account_key(tenant: &str, account: &str) -> u64 {
    xxh3_64_with_seed(account.as_bytes(), xxh3_64(tenant.as_bytes()))
}

/// The worker that owns the account of `account_key`.
pub(crate) fn worker_of(account_key: u64, workers: usize) -> usize {
    (account_key % workers as u64) as usize
}

/// The key of a person or an opportunity within its tenant, in the router's index.
pub(crate) fn index_key(entity: Entity, tenant: &str, id: &str) -> u128 {
    let kind: u64 = if entity == Entity::Opportunity { 0x6f70_706f } else { 0x7065_7273 };
    xxh3_128_with_seed(id.as_bytes(), xxh3_64(tenant.as_bytes()) ^ kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_tenants_and_kinds_and_routing_is_stable() {
        assert_ne!(event_hash("t1", "e"), event_hash("t2", "e"));
        assert_ne!(event_hash("t", "1e"), event_hash("t1", "e"));
        assert_ne!(index_key(Entity::Person, "t", "x"), index_key(Entity::Opportunity, "t", "x"));
        assert_ne!(index_key(Entity::Person, "t", "x"), index_key(Entity::Person, "u", "x"));
        assert_ne!(account_key("t", "a"), account_key("u", "a"));
        for n in 1..5 {
            let k = account_key("t", "a");
            assert!(worker_of(k, n) < n);
            assert_eq!(worker_of(k, n), worker_of(account_key("t", "a"), n));
        }
    }
}
