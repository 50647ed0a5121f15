//! Ordering short byte strings eight bytes a step. Exact-distinct values (user ids and the
//! like) are a few bytes long: a call to `memcmp` for each comparison (what slice comparison
//! compiles to) cost more than the comparison.

use std::cmp::Ordering;

/// The first eight bytes (fewer: zeros after them) as a big-endian number. Of two strings
/// whose numbers differ, the smaller number is the string first in byte order.
#[inline]
pub fn word(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        // A short tail, byte by byte: a copy of a length known only at run time would call
        // `memcpy`.
        None => bytes
            .iter()
            .enumerate()
            .fold(0, |w, (i, &b)| w | (u64::from(b) << (56 - 8 * i))),
    }
}

/// Byte order, as `<[u8]>::cmp` answers it.
#[inline]
pub fn byte_order(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let (x, y) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 8 <= n {
        match word(&x[i..]).cmp(&word(&y[i..])) {
            Ordering::Equal => i += 8,
            unequal => return unequal,
        }
    }
    // The tails are as long as each other: their words compare as they do.
    word(&x[i..])
        .cmp(&word(&y[i..]))
        .then(a.len().cmp(&b.len()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, Just};
    use proptest::{collection, prop_assert_eq, prop_oneof, proptest};

    use super::*;

    proptest! {
        /// Byte order eight bytes a step is the slices' own order: zero bytes, prefixes and
        /// lengths around eight included; so is the order of two strings' words where they
        /// differ.
        #[test]
        fn byte_order_is_the_order_of_the_slices(
            a in collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()], 0..20),
            b in collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()], 0..20),
            shared in 0usize..20,
        ) {
            // Often one a prefix of the other, or the two alike up to a point.
            let b: Vec<u8> = a.iter().take(shared).chain(&b).copied().collect();
            for (x, y) in [(&a, &b), (&b, &a), (&a, &a)] {
                prop_assert_eq!(byte_order(x, y), x.cmp(y));
                let (wx, wy) = (word(x), word(y));
                if wx != wy {
                    prop_assert_eq!(wx.cmp(&wy), x.cmp(y));
                }
            }
        }
    }
}
