//! Deterministic output ids: the same cause always gives the same `action_id` and `change_id`.
//!
//! It owns the id scheme: a 128-bit XXH3 hash of the length-prefixed identifying fields, in hex, behind a
//! short prefix. Length prefixes make the encoding injective, so distinct fields never share an id (up to
//! the hash's collision odds, about 2^-64 at a billion ids). It is not a uniqueness check.

fn hash(prefix: &str, parts: &[&[u8]]) -> String {
    // The fields of one id rarely pass 256 bytes: framed on the stack, with no allocation but the id's own.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let len: usize = parts.iter().map(|p| p.len() + 4).sum();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for p in parts {
        buf[at..at + 4].copy_from_slice(&(p.len() as u32).to_le_bytes());
        buf[at + 4..at + 4 + p.len()].copy_from_slice(p);
        at += 4 + p.len();
    }
    let h = xxhash_rust::xxh3::xxh3_128(buf);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = HEX[((h >> ((31 - i) * 4)) & 0xf) as usize];
    }
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    // Hex digits are ASCII.
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
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
        // The hash of the length-framed fields, in hex, whether they fit the stack buffer or not.
        let framed = |parts: &[&[u8]]| {
            let mut f = Vec::new();
            for p in parts {
                f.extend_from_slice(&(p.len() as u32).to_le_bytes());
                f.extend_from_slice(p);
            }
            format!("chg-{:032x}", xxhash_rust::xxh3::xxh3_128(&f))
        };
        let long = "x".repeat(300);
        assert_eq!(
            change_id("t", "person", &long, 7),
            framed(&[b"t", b"person", long.as_bytes(), &7u64.to_le_bytes()])
        );
        assert_eq!(change_id("t", "account", "x", 1), framed(&[b"t", b"account", b"x", &1u64.to_le_bytes()]));
    }
}
