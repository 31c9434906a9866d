//! Deterministic output ids: the same cause always gives the same `action_id` and `change_id`.
//!
//! It owns the id scheme: a 128-bit XXH3 hash of the length-prefixed identifying fields, in hex, behind a
//! short prefix. Length prefixes make the encoding injective, so distinct fields never share an id (up to
//! the hash's collision odds, about 2^-64 at a billion ids). It is not a uniqueness check.

fn hash(prefix: &str, parts: &[&[u8]]) -> String {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
        buf.extend_from_slice(p);
    }
    let h = xxhash_rust::xxh3::xxh3_128(&buf);
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..32).rev() {
        out.push(char::from(HEX[((h >> (i * 4)) & 0xf) as usize]));
    }
    out
}

/// The id of an action: tenant, journey, version, account, node, person (or none), instance number.
pub fn action_id(
    tenant: &str,
    journey: &str,
    version: u32,
    account: &str,
    node: &str,
    person: Option<&str>,
    instance: u32,
) -> String {
    let person = person.map_or(&[][..], str::as_bytes);
    let marker: &[u8] = if person.is_empty() { b"a" } else { b"p" };
    hash(
        "act-",
        &[
            tenant.as_bytes(),
            journey.as_bytes(),
            &version.to_le_bytes(),
            account.as_bytes(),
            node.as_bytes(),
            marker,
            person,
            &instance.to_le_bytes(),
        ],
    )
}

/// The id of a change event: tenant, entity kind, entity id and version.
pub fn change_id(tenant: &str, entity: &str, id: &str, version: u64) -> String {
    hash("chg-", &[tenant.as_bytes(), entity.as_bytes(), id.as_bytes(), &version.to_le_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_separate_fields() {
        assert_eq!(action_id("t", "j", 1, "a", "n", Some("p"), 1), action_id("t", "j", 1, "a", "n", Some("p"), 1));
        assert_ne!(action_id("t", "j", 1, "ab", "n", None, 1), action_id("t", "j", 1, "a", "bn", None, 1));
        assert_ne!(action_id("t", "j", 1, "a", "n", Some("p"), 1), action_id("t", "j", 1, "a", "n", Some("p"), 2));
        assert_ne!(action_id("t", "j", 1, "a", "n", None, 1), action_id("t2", "j", 1, "a", "n", None, 1));
        assert_ne!(change_id("t", "account", "x", 1), change_id("t", "person", "x", 1));
        assert!(change_id("t", "account", "x", 1).starts_with("chg-"));
    }
}
