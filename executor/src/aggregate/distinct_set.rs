//! One (window, group, aggregate)'s exact-distinct values in an epoch, collected instead of
//! looked up: each row appends its value with its key group, and the set is sorted by (key
//! group, value) and deduplicated once, when it leaves as runs (one per key group) or when
//! repeats have made it long. Nearly every row of a large set brings a value new to the
//! epoch, so a hash table paid a probe that missed the cache and its growth for each row,
//! and the runs needed the sort anyway.

use weir_common::data::byte_order::{byte_order, word};
use weir_common::query::window::Window;

use crate::state::keys::ValueShards;

/// Appended values after which a set is sorted and deduplicated in place, when they also
/// outnumber its sorted part: the set's memory stays within twice its distinct values plus
/// this many, and each value is sorted a logarithmic number of times.
const COMPACT_AFTER: usize = 1 << 16;

/// Where a value's bytes are in the set, its key group, and its first eight bytes as a
/// number: most comparisons of a sort end there, without reaching for the bytes.
#[derive(Clone, Copy)]
struct Placed {
    kg: u32,
    len: u32,
    start: usize,
    head: u64,
}

impl Placed {
    fn value<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.start..self.start + self.len as usize]
    }
}

pub struct DistinctSet {
    shards: ValueShards,
    key_groups: u32,
    placed: Vec<Placed>,
    bytes: Vec<u8>,
    /// `placed[..sorted]` is in (key group, value) order, each value once.
    sorted: usize,
}

impl DistinctSet {
    pub fn new(window: Window, agg: u8, group: &[u8], key_groups: u32) -> Self {
        Self {
            shards: ValueShards::new(window, agg, group, key_groups),
            key_groups,
            placed: Vec::new(),
            bytes: Vec::new(),
            sorted: 0,
        }
    }

    pub fn add(&mut self, value: &[u8]) {
        let Ok(len) = u32::try_from(value.len()) else {
            // Values come from Arrow string columns, whose i32 offsets keep each under 2 GiB,
            // or are numbers: none reaches here.
            return;
        };
        let kg = self.shards.of(value);
        self.placed.push(Placed {
            kg,
            len,
            start: self.bytes.len(),
            head: word(value),
        });
        self.bytes.extend_from_slice(value);
        let appended = self.placed.len() - self.sorted;
        if appended >= COMPACT_AFTER && appended >= self.sorted {
            self.compact();
        }
    }

    /// Sorts by (key group, value) and keeps each value once, its bytes laid out anew in that
    /// order: the repeats' bytes go.
    fn compact(&mut self) {
        self.sort_dedup();
        let mut laid = Vec::with_capacity(self.placed.iter().map(|p| p.len as usize).sum());
        for p in &mut self.placed {
            let start = laid.len();
            laid.extend_from_slice(p.value(&self.bytes));
            p.start = start;
        }
        self.bytes = laid;
    }

    /// Sorts by (key group, value) and keeps each value once, its bytes where they are.
    fn sort_dedup(&mut self) {
        let bytes = &self.bytes;
        // Heads that differ order their values as the bytes do (see `word`).
        let by_value = |a: &Placed, b: &Placed| {
            (a.head.cmp(&b.head)).then_with(|| byte_order(a.value(bytes), b.value(bytes)))
        };
        if self.placed.len() >= BUCKETS_FROM * self.key_groups as usize {
            // Many values a key group: counting sorts on the heads' leading bytes and the key
            // group leave only values alike in those bytes to compare (see `by_digits`).
            let sorted_bits = by_digits(&mut self.placed, self.key_groups);
            let alike =
                |a: &Placed, b: &Placed| a.kg == b.kg && (a.head ^ b.head) & sorted_bits == 0;
            // Unstable: equal values are the same bytes, so which copy dedup keeps does not
            // matter.
            for alike in self.placed.chunk_by_mut(alike) {
                if alike.len() > 1 {
                    alike.sort_unstable_by(by_value);
                }
            }
        } else {
            self.placed
                .sort_by(|a, b| (a.kg.cmp(&b.kg)).then_with(|| by_value(a, b)));
        }
        self.placed
            .dedup_by(|a, b| a.kg == b.kg && a.head == b.head && a.value(bytes) == b.value(bytes));
        self.sorted = self.placed.len();
    }

    /// The set's values, by key group in key-group order, each group's in byte order and each
    /// value once.
    pub fn into_shards(mut self) -> Shards {
        // The runs copy the values out: laying them out anew first would copy them twice.
        if self.sorted < self.placed.len() {
            self.sort_dedup();
        }
        Shards {
            placed: self.placed,
            bytes: self.bytes,
        }
    }
}

/// Values a key group on average from which a set is sorted by counting (`by_digits`).
const BUCKETS_FROM: usize = 8;

/// Head bytes a set is sorted on by counting before values alike in them are compared.
const HEAD_DIGITS: u32 = 3;

/// Sorts `placed` by key group and, within each, by the `HEAD_DIGITS` most significant bytes
/// of the heads that differ anywhere in the set: a stable counting sort on each of those
/// bytes, least significant first, then on each byte of the key group. Answers the head bits
/// sorted on: values of a key group alike in them are in arrival order, still to be compared,
/// and there are few (user ids of a set share their first bytes, so the bytes that differ are
/// the ones that sort). A comparison sort of each key group's values mispredicted most of its
/// branches.
fn by_digits(placed: &mut Vec<Placed>, key_groups: u32) -> u64 {
    let first = placed.first().map_or(0, |p| p.head);
    let differ = placed.iter().fold(0, |d, p| d | (p.head ^ first));
    // The byte the highest differing bit is in, and the digits below it down to the last.
    let top = (63 - differ.leading_zeros().min(63)) / 8;
    let last = top.saturating_sub(HEAD_DIGITS - 1);
    let mut from = std::mem::take(placed);
    let mut to = from.clone();
    for byte in last..=top {
        let shift = 8 * byte;
        if (differ >> shift) & 0xFF != 0 {
            counting_pass(&from, &mut to, |p| (p.head >> shift) as u8);
            std::mem::swap(&mut from, &mut to);
        }
    }
    let mut shift = 0;
    while shift < 32 && (key_groups.saturating_sub(1) >> shift) != 0 {
        counting_pass(&from, &mut to, |p| (p.kg >> shift) as u8);
        std::mem::swap(&mut from, &mut to);
        shift += 8;
    }
    *placed = from;
    u64::MAX << (8 * last)
}

/// Places `from` into `to` (as long) ordered by `digit`, keeping the order of equal digits.
fn counting_pass(from: &[Placed], to: &mut [Placed], digit: impl Fn(&Placed) -> u8) {
    let mut next = [0usize; 256];
    for p in from {
        next[usize::from(digit(p))] += 1;
    }
    let mut start = 0;
    for slot in &mut next {
        let count = *slot;
        *slot = start;
        start += count;
    }
    for p in from {
        let at = &mut next[usize::from(digit(p))];
        to[*at] = *p;
        *at += 1;
    }
}

/// A set's values, sorted and deduplicated.
pub struct Shards {
    placed: Vec<Placed>,
    bytes: Vec<u8>,
}

impl Shards {
    /// Each key group's values, key groups in order.
    pub fn iter(&self) -> impl Iterator<Item = Shard<'_>> {
        self.placed
            .chunk_by(|a, b| a.kg == b.kg)
            .map(|placed| Shard {
                kg: placed[0].kg,
                placed,
                bytes: &self.bytes,
            })
    }
}

/// The values of one key group of a set.
pub struct Shard<'a> {
    pub kg: u32,
    placed: &'a [Placed],
    bytes: &'a [u8],
}

impl<'a> Shard<'a> {
    /// The values, in byte order, each once.
    pub fn values(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.placed.iter().map(|p| p.value(self.bytes))
    }

    /// The values' bytes, with a byte each for the length a run gives it.
    pub fn run_bytes(&self) -> usize {
        self.placed.iter().map(|p| p.len as usize + 1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(values: &[Vec<u8>], key_groups: u32) -> Vec<(u32, Vec<Vec<u8>>)> {
        let w = Window { start: 0, end: 300 };
        let mut set = DistinctSet::new(w, 1, b"click", key_groups);
        for v in values {
            set.add(v);
        }
        let shards = set.into_shards();
        shards
            .iter()
            .map(|shard| (shard.kg, shard.values().map(<[u8]>::to_vec).collect()))
            .collect()
    }

    /// Collects `values` and checks that what leaves is each value once, in its own key group,
    /// in (key group, value) order; answers what left.
    fn leave_once_in_order(
        values: &[Vec<u8>],
        key_groups: u32,
        what: &str,
    ) -> Vec<(u32, Vec<Vec<u8>>)> {
        let shards = ValueShards::new(Window { start: 0, end: 300 }, 1, b"click", key_groups);
        let out = collected(values, key_groups);
        let mut expected: Vec<(u32, Vec<u8>)> =
            values.iter().map(|v| (shards.of(v), v.clone())).collect();
        expected.sort();
        expected.dedup();
        let flat: Vec<(u32, Vec<u8>)> = out
            .iter()
            .flat_map(|(kg, vs)| vs.iter().map(move |v| (*kg, v.clone())))
            .collect();
        assert_eq!(flat, expected, "{what}");
        out
    }

    /// Whatever the repeats, however often the set compacts on the way and however it sorts,
    /// what leaves is each value once, in its own key group, key groups in order and values in
    /// byte order.
    #[test]
    fn values_leave_once_each_by_key_group_in_byte_order() {
        // Sorted whole below 8 values a key group (128 of 16 key groups), by counting sorts
        // from there; 1 000 key groups take two counting passes on the key group. Values
        // differ in their heads' last bytes ("user-" and numbers), in every byte of them (hex)
        // or past them only.
        let cases = [
            (127, 1000u64, 16, "user-"),
            (128, 1000, 16, "user-"),
            (300_000, 50, 16, "user-"),
            (300_000, 1 << 40, 16, "user-"),
            (100_000, 1 << 62, 16, ""),
            (100_000, 1 << 62, 1000, ""),
            (100_000, 30_000, 1000, "user-"),
            (50_000, 30_000, 16, "a-shared-prefix-"),
            // One key group sorts on the heads only; 257 need a second byte of key group.
            (100_000, 30_000, 1, "user-"),
            (100_000, 1 << 62, 257, ""),
        ];
        for (n, alphabet, key_groups, prefix) in cases {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let values: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = state % alphabet;
                    match prefix {
                        "" => format!("{v:016x}").into_bytes(),
                        _ => format!("{prefix}{v}").into_bytes(),
                    }
                })
                .collect();
            let what =
                format!("{n} values of {alphabet} after {prefix:?}, {key_groups} key groups");
            let out = leave_once_in_order(&values, key_groups, &what);
            assert!(out.windows(2).all(|pair| pair[0].0 < pair[1].0));
        }
        assert!(collected(&[], 16).is_empty());
    }

    /// Values shorter than their eight-byte head, zero bytes and prefixes of each other sort
    /// as their bytes do (heads alike fall back to the bytes).
    #[test]
    fn short_values_and_zero_bytes_keep_byte_order() {
        let mut values: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0\0\0\0\0\0\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefghi".to_vec(),
            b"abcdefg".to_vec(),
            vec![255; 9],
        ];
        // Enough copies to take the key-group buckets' path too.
        let many: Vec<Vec<u8>> = (0..2000u32)
            .flat_map(|i| {
                values
                    .iter()
                    .map(move |v| [v.as_slice(), &i.to_be_bytes()].concat())
            })
            .collect();
        values.extend(values.clone());
        for values in [values, many] {
            leave_once_in_order(&values, 16, "short values");
        }
    }

    /// Repeats do not make the set hold every row: it compacts as they come.
    #[test]
    fn a_set_of_few_values_stays_small_however_many_rows_repeat_them() {
        let mut set = DistinctSet::new(Window { start: 0, end: 300 }, 1, b"g", 16);
        for i in 0..1_000_000u32 {
            set.add(format!("user-{}", i % 10).as_bytes());
        }
        assert!(
            set.placed.len() <= 10 + COMPACT_AFTER,
            "{}",
            set.placed.len()
        );
        let shards = set.into_shards();
        let kept: usize = shards.iter().map(|shard| shard.values().count()).sum();
        assert_eq!(kept, 10);
    }
}
