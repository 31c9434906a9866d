//! Byte scans eight bytes at a time (SWAR: SIMD within a register), for the short strings every record is
//! made of: ids, names, attribute values.
//!
//! It owns the two questions the readers and writers ask of every string: where the first byte a JSON string
//! must escape is, and whether a text is all printable ASCII. It is not a parser and allocates nothing.
//!
//! Both rest on the same exactness argument: a flagged byte is found by a subtraction that borrows (or an
//! addition that carries) out of a byte only when that byte is a true hit, and a borrow or carry only spills
//! into the bytes *after* it. So the lowest flagged byte of a word is always the first true hit, and a word
//! with no true hit flags nothing.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The whole 8-byte words of `bytes` (little-endian: the first byte is the lowest), and the bytes after them.
fn words(bytes: &[u8]) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let whole = bytes.len() / 8 * 8;
    let words = bytes[..whole].chunks_exact(8).map(|w| {
        let mut le = [0u8; 8];
        le.copy_from_slice(w);
        u64::from_le_bytes(le)
    });
    (words, &bytes[whole..])
}

/// The index of the first byte of `bytes` that a JSON string must escape (`"`, `\`, or a control byte below
/// `0x20`), if any: where the readers' fast paths stop (a closing quote, or an escape they leave to
/// `serde_json`) and whether the writers can copy a string as it is.
///
/// A byte equal to `"` or `\` is a zero byte after an XOR, and a zero byte or a control byte borrows when
/// `0x01`/`0x20` is subtracted from it.
pub(crate) fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v;
    let (words, rest) = words(bytes);
    let mut at = 0;
    for x in words {
        let hits = (zero_bytes(x ^ (ONES * u64::from(b'"')))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGHS;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|i| at + i)
}

/// Whether every byte is printable ASCII (`0x20..=0x7e`): a byte below `0x20` borrows when `0x20` is
/// subtracted, `0x7f` carries into the high bit when `1` is added, and bytes from `0x80` have it already.
pub(crate) fn printable_ascii(bytes: &[u8]) -> bool {
    let (mut words, rest) = words(bytes);
    words.all(|x| ((x.wrapping_sub(ONES * 0x20) & !x) | x | x.wrapping_add(ONES)) & HIGHS == 0)
        && rest.iter().all(|b| (0x20..0x7f).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes around every boundary the scans test (`"`, `\`, `0x1f`/`0x20`, `0x7e`/`0x7f`/`0x80`, `0xff`),
    /// mostly printable, at every offset of the words and with a tail.
    fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                6 => 0x20u8..0x7f,
                1 => prop_oneof![Just(b'"'), Just(b'\\'), Just(0x1f), Just(0), Just(0x20), Just(0x21)],
                1 => prop_oneof![Just(0x7e), Just(0x7f), Just(0x80), Just(0xff), Just(0x5b), Just(0x5d)],
                1 => any::<u8>(),
            ],
            0..40,
        )
    }

    proptest! {
        /// The word-at-a-time scan finds the same first byte as a byte loop.
        #[test]
        fn first_to_escape_agrees_with_a_byte_loop(bytes in tricky_bytes()) {
            let by_bytes = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(first_to_escape(&bytes), by_bytes, "{:?}", bytes);
        }

        /// The word-at-a-time check agrees with its definition.
        #[test]
        fn printable_ascii_agrees_with_its_definition(bytes in tricky_bytes()) {
            prop_assert_eq!(printable_ascii(&bytes), bytes.iter().all(|b| (0x20..=0x7e).contains(b)), "{:?}", bytes);
        }
    }
}
