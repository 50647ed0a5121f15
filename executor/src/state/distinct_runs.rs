//! Runs: the exact-distinct values of one (key group, window, aggregate, group), in byte order
//! and each once, instead of one key per value. A key group's runs of every group of a
//! (window, aggregate) are one RocksDB value (`group_runs`).
//!
//! A run is `[count u32 LE]` then, per value in byte order and each once, `[varint length]
//! [bytes]`. An epoch's fold writes its values of each (key group, window, aggregate) as one
//! merge operand; RocksDB unions the operands with [`merge`] when it flushes, compacts or
//! reads, so a value sent in several epochs is kept once after compaction and counted once
//! when its window closes. One key per value cost a memtable insert, a flush and a scan step
//! per value and epoch: about a fifth of an executor's CPU. Stores of earlier versions hold a
//! run of one group as a RocksDB value of its own, which the merge operator unions too.

use std::borrow::Cow;
use std::cmp::Ordering;

use prost::encoding::{decode_varint, encode_varint};
use weir_common::data::byte_order::byte_order;

use crate::state::{group_runs, keys};

/// RocksDB knows the operator by this name; a store written with it cannot be read without it.
pub const MERGE_OPERATOR_NAME: &str = "weir.distinct-union.v1";

const HEADER: usize = 4;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("a distinct run of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("a distinct run's value {index} of {count} is cut short")]
    Truncated { index: u32, count: u32 },
    #[error("a distinct run holds bytes after its {0} values")]
    Trailing(u32),
    #[error("a distinct run would hold more than {} values", u32::MAX)]
    TooMany,
    #[error("a distinct run's value {0} is not after the one before it")]
    Unsorted(u32),
    #[error("a key group's distinct runs are cut short at group {0}")]
    GroupCut(u32),
    #[error("a key group's distinct runs hold bytes after their {0} groups")]
    GroupsTrailing(u32),
    #[error("a key group's distinct run of group {0} is not after the one before it")]
    GroupsUnsorted(u32),
}

/// Builds a run from values given in byte order, each once.
#[derive(Default)]
pub struct RunWriter {
    buf: Vec<u8>,
    count: u32,
}

impl RunWriter {
    /// A writer with room for `bytes` of lengths and values.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER + bytes);
        buf.extend_from_slice(&[0; HEADER]);
        Self { buf, count: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, value: &[u8]) -> Result<(), RunError> {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(&[0; HEADER]);
        }
        self.count = self.count.checked_add(1).ok_or(RunError::TooMany)?;
        write_len(value.len(), &mut self.buf);
        self.buf.extend_from_slice(value);
        Ok(())
    }

    /// The run, leaving the writer empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut run = std::mem::take(&mut self.buf);
        if run.is_empty() {
            run.extend_from_slice(&[0; HEADER]);
        }
        run[..HEADER].copy_from_slice(&self.count.to_le_bytes());
        self.count = 0;
        run
    }
}

/// Appends a whole run of `values` (in byte order, each once) to `out`: its header, then each
/// value's entry.
pub(crate) fn append_run<'v>(
    values: impl IntoIterator<Item = &'v [u8]>,
    out: &mut Vec<u8>,
) -> Result<(), RunError> {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    let mut count = 0u32;
    for value in values {
        count = count.checked_add(1).ok_or(RunError::TooMany)?;
        write_len(value.len(), out);
        out.extend_from_slice(value);
    }
    out[at..at + HEADER].copy_from_slice(&count.to_le_bytes());
    Ok(())
}

/// Writes a value's length as a run holds it (a varint): most values are shorter than 128
/// bytes, one byte without the general encoder's loop.
#[inline]
pub(crate) fn write_len(len: usize, buf: &mut Vec<u8>) {
    match u8::try_from(len) {
        Ok(byte) if byte < 0x80 => buf.push(byte),
        _ => encode_varint(len as u64, buf),
    }
}

/// How many values a run holds (from its header).
pub fn count(run: &[u8]) -> Result<u32, RunError> {
    let header: [u8; HEADER] = run
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(RunError::Short(run.len()))?;
    Ok(u32::from_le_bytes(header))
}

/// A run's values, in the run's order; an error ends them.
struct Values<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
}

impl<'a> Values<'a> {
    fn of(run: &'a [u8]) -> Result<Self, RunError> {
        Ok(Self {
            count: count(run)?,
            rest: &run[HEADER..],
            index: 0,
        })
    }

    fn next_value(&mut self) -> Result<Option<&'a [u8]>, RunError> {
        if self.index == self.count {
            if !self.rest.is_empty() {
                return Err(RunError::Trailing(self.count));
            }
            return Ok(None);
        }
        let cut = || RunError::Truncated {
            index: self.index,
            count: self.count,
        };
        // One byte for most lengths, without the general decoder.
        let len = match self.rest.split_first() {
            Some((&byte, after)) if byte < 0x80 => {
                self.rest = after;
                usize::from(byte)
            }
            _ => {
                let len = decode_varint(&mut self.rest).map_err(|_| cut())?;
                usize::try_from(len).map_err(|_| cut())?
            }
        };
        let value = self.rest.get(..len).ok_or_else(cut)?;
        self.rest = &self.rest[len..];
        self.index += 1;
        Ok(Some(value))
    }

    /// The next value, which must come after `last` (the one before it).
    fn next_after(&mut self, last: Option<&[u8]>) -> Result<Option<&'a [u8]>, RunError> {
        let value = self.next_value()?;
        if let (Some(last), Some(value)) = (last, value) {
            if byte_order(last, value) != Ordering::Less {
                return Err(RunError::Unsorted(self.index - 1));
            }
        }
        Ok(value)
    }

    /// How many bytes of the run are still to be read: where the next value's entry (its
    /// length, then its bytes) starts, counted from the run's end.
    fn left(&self) -> usize {
        self.rest.len()
    }
}

/// Appends a run's values to `out`, in the run's order.
pub fn values_into<'a>(run: &'a [u8], out: &mut Vec<&'a [u8]>) -> Result<(), RunError> {
    let mut values = Values::of(run)?;
    // Each value takes at least its length's byte: a header that claims more (a corrupt or
    // hostile run) reserves no more than the bytes could hold.
    out.reserve((values.count as usize).min(values.rest.len()));
    while let Some(value) = values.next_value()? {
        out.push(value);
    }
    Ok(())
}

/// How many values a run from elsewhere (an exchange stream) holds, once it is known to be
/// whole and to hold its values in byte order, each once, as a run written here does: the
/// fold writes such a run as it is, and counts its values by its header.
pub fn check(run: &[u8]) -> Result<u32, RunError> {
    let mut values = Values::of(run)?;
    let mut last = None;
    while let Some(value) = values.next_after(last)? {
        last = Some(value);
    }
    Ok(values.count)
}

/// The union of runs, as one run. Each must hold its values in byte order, each once (as
/// every run written here does; one that does not is an error): the union merges them, two
/// at a time, instead of sorting their values.
pub fn union<'a>(runs: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, RunError> {
    pairwise(runs, check, merge_two, || RunWriter::default().finish())
}

/// The union of `values` merged two at a time by `merge_two` (a lone one checked by `check`,
/// none giving `empty`): each level halves their number, so a value is copied a logarithmic
/// number of times however many there are.
pub(crate) fn pairwise<'a, C>(
    values: impl IntoIterator<Item = &'a [u8]>,
    check: impl Fn(&[u8]) -> Result<C, RunError>,
    merge_two: impl Fn(&[u8], &[u8]) -> Result<Vec<u8>, RunError>,
    empty: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, RunError> {
    let mut level: Vec<Cow<'a, [u8]>> = values.into_iter().map(Cow::Borrowed).collect();
    if let [one] = &level[..] {
        check(one)?;
    }
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut values = level.into_iter();
        while let Some(a) = values.next() {
            next.push(match values.next() {
                Some(b) => Cow::Owned(merge_two(&a, &b)?),
                None => a,
            });
        }
        level = next;
    }
    Ok(match level.pop() {
        Some(value) => value.into_owned(),
        None => empty(),
    })
}

/// One input of [`merge_two`]: its values, and where the entries taken from it but not yet
/// copied out begin (offsets from the run's end, as [`Values::left`] counts).
struct Side<'a> {
    run: &'a [u8],
    values: Values<'a>,
    /// The value read last and not yet taken or skipped, and the offset of its entry.
    head: Option<&'a [u8]>,
    head_at: usize,
    /// Where the entries taken since the last copy begin.
    taken_from: usize,
}

impl<'a> Side<'a> {
    fn of(run: &'a [u8]) -> Result<Self, RunError> {
        let mut values = Values::of(run)?;
        let at = values.left();
        let head = values.next_after(None)?;
        Ok(Self {
            run,
            values,
            head,
            head_at: at,
            taken_from: at,
        })
    }

    /// Moves past the head, after checking the next value comes after it.
    fn advance(&mut self) -> Result<(), RunError> {
        self.head_at = self.values.left();
        self.head = self.values.next_after(self.head)?;
        Ok(())
    }

    /// Moves past the head without taking it: the side must have no entries waiting.
    fn skip(&mut self) -> Result<(), RunError> {
        self.advance()?;
        self.taken_from = self.head_at;
        Ok(())
    }

    /// Copies the entries taken since the last copy (up to the head's) to `out`.
    fn copy_taken(&mut self, out: &mut Vec<u8>) {
        let end = self.run.len();
        out.extend_from_slice(&self.run[end - self.taken_from..end - self.head_at]);
        self.taken_from = self.head_at;
    }
}

/// The union of two runs, each in byte order and each value once. A value's entry (its
/// length and bytes) is copied as it is, and the entries taken one after another from one
/// run lie side by side there: they leave in one copy when the other run's turn comes.
fn merge_two(a: &[u8], b: &[u8]) -> Result<Vec<u8>, RunError> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    merge_two_into(a, b, &mut out)?;
    Ok(out)
}

/// [`merge_two`], appending the union to `out`.
pub(crate) fn merge_two_into(a: &[u8], b: &[u8], out: &mut Vec<u8>) -> Result<(), RunError> {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    let mut count = 0u32;
    let (mut xs, mut ys) = (Side::of(a)?, Side::of(b)?);
    // The side whose taken entries wait to be copied.
    let mut taking_x = true;
    while let (Some(u), Some(v)) = (xs.head, ys.head) {
        count = count.checked_add(1).ok_or(RunError::TooMany)?;
        match byte_order(u, v) {
            Ordering::Less => {
                if !taking_x {
                    ys.copy_taken(out);
                    taking_x = true;
                }
                xs.advance()?;
            }
            Ordering::Greater => {
                if taking_x {
                    xs.copy_taken(out);
                    taking_x = false;
                }
                ys.advance()?;
            }
            Ordering::Equal => {
                // Taken from the side whose entries wait to be copied, skipped on the other
                // (which has none waiting).
                let (taken, skipped) = if taking_x {
                    (&mut xs, &mut ys)
                } else {
                    (&mut ys, &mut xs)
                };
                taken.advance()?;
                skipped.skip()?;
            }
        }
    }
    // One run is spent: the rest of the other is checked and copied whole.
    let (mut done, mut rest) = if xs.head.is_none() {
        (xs, ys)
    } else {
        (ys, xs)
    };
    done.copy_taken(out);
    while rest.head.is_some() {
        count = count.checked_add(1).ok_or(RunError::TooMany)?;
        rest.advance()?;
    }
    rest.copy_taken(out);
    out[at..at + HEADER].copy_from_slice(&count.to_le_bytes());
    Ok(())
}

/// The union of the values of `key`: group runs (`group_runs`) or, under a key of the layout
/// of earlier versions, runs of one group.
pub fn union_at<'a>(
    key: &[u8],
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, RunError> {
    match keys::is_group_runs_key(key) {
        true => group_runs::union(values),
        false => union(values),
    }
}

/// RocksDB's merge operator (full and partial): the union of what the key holds and the
/// operands. `None` (a corrupt run) makes RocksDB fail the read, flush or compaction with a
/// corruption error rather than lose values.
pub fn merge(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    match union_at(key, existing.into_iter().chain(operands)) {
        Ok(run) => Some(run),
        Err(e) => {
            tracing::error!(error = %e, "merging distinct runs");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn run(values: &[&str]) -> Vec<u8> {
        let mut w = RunWriter::default();
        for v in values {
            w.push(v.as_bytes()).unwrap();
        }
        w.finish()
    }

    /// A run of `values` as they come, in whatever order.
    fn written<'a>(values: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<u8> {
        let mut w = RunWriter::default();
        for v in values {
            w.push(v).unwrap();
        }
        w.finish()
    }

    fn values(run: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        values_into(run, &mut out).unwrap();
        out.iter()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_run_round_trips_and_counts_its_values() {
        let long = "x".repeat(300);
        let r = run(&["", "a", &long, "user-9"]);
        assert_eq!(count(&r), Ok(4));
        assert_eq!(values(&r), ["", "a", long.as_str(), "user-9"]);
        assert_eq!(count(&run(&[])), Ok(0));
        assert!(values(&run(&[])).is_empty());
    }

    #[test]
    fn the_union_keeps_each_value_once_in_byte_order() {
        let a = run(&["u1", "u3", "u5"]);
        let b = run(&["u2", "u3", "u6"]);
        let c = run(&["u0", "u5"]);
        let u = union([&a[..], &b, &c]).unwrap();
        assert_eq!(values(&u), ["u0", "u1", "u2", "u3", "u5", "u6"]);
        assert_eq!(count(&u), Ok(6));
        // Idempotent: a changelog replayed twice changes nothing.
        assert_eq!(union([&u[..], &a]).unwrap(), u);
        assert_eq!(union([&u[..]]).unwrap(), u);
    }

    proptest::proptest! {
        /// The union of any runs is each of their values once, in byte order, whatever their
        /// number (merged two at a time) and overlap.
        #[test]
        fn the_union_of_any_runs_is_their_sorted_values_once(
            sets in proptest::collection::vec(proptest::collection::btree_set(proptest::collection::vec(0u8..4, 0..10), 0..40), 0..9),
        ) {
            let runs: Vec<Vec<u8>> = sets.iter().map(written).collect();
            let expected: BTreeSet<&Vec<u8>> = sets.iter().flatten().collect();
            let u = union(runs.iter().map(Vec::as_slice)).unwrap();
            let mut got = Vec::new();
            values_into(&u, &mut got).unwrap();
            let expected: Vec<&[u8]> = expected.into_iter().map(Vec::as_slice).collect();
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert_eq!(check(&u), Ok(expected.len() as u32));
        }
    }

    proptest::proptest! {
        /// Runs as anything may write them (out of order, repeats, lengths past a varint's
        /// first byte): the union answers their values once each, in byte order, when every
        /// run holds its values in byte order and once; an error when any does not.
        #[test]
        fn the_union_checks_every_run_it_merges(
            lists in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::collection::vec(0u8..3, 0..4),
                        proptest::collection::vec(0u8..2, 126..131),
                    ],
                    0..12,
                ),
                0..5,
            ),
        ) {
            let runs: Vec<Vec<u8>> = lists.iter().map(written).collect();
            let in_order = lists.iter().all(|l| l.windows(2).all(|p| p[0] < p[1]));
            match union(runs.iter().map(Vec::as_slice)) {
                Ok(u) => {
                    proptest::prop_assert!(in_order, "{lists:?} merged");
                    let expected: BTreeSet<&[u8]> =
                        lists.iter().flatten().map(Vec::as_slice).collect();
                    let mut got = Vec::new();
                    values_into(&u, &mut got).unwrap();
                    proptest::prop_assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
                }
                Err(e) => {
                    proptest::prop_assert!(!in_order, "{lists:?}: {e}");
                    proptest::prop_assert!(matches!(e, RunError::Unsorted(_)), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_run_out_of_order_is_not_merged() {
        let sorted = run(&["a", "c"]);
        let unsorted = run(&["b", "a"]);
        assert_eq!(union([&sorted[..], &unsorted]), Err(RunError::Unsorted(1)));
        assert_eq!(union([&unsorted[..]]), Err(RunError::Unsorted(1)));
        assert_eq!(
            union([&sorted[..], &run(&["a", "a"])]),
            Err(RunError::Unsorted(1))
        );
    }

    #[test]
    fn a_corrupt_run_is_an_error() {
        let r = run(&["user-1", "user-2"]);
        assert_eq!(count(&r[..3]), Err(RunError::Short(3)));
        assert_eq!(
            union([&r[..r.len() - 1]]),
            Err(RunError::Truncated { index: 1, count: 2 })
        );
        let mut extra = r.clone();
        extra.push(0);
        assert_eq!(union([&extra[..]]), Err(RunError::Trailing(2)));
        // A header claiming billions of values is refused, not believed.
        let mut huge = r.clone();
        huge[..HEADER].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            check(&huge),
            Err(RunError::Truncated {
                index: 2,
                count: u32::MAX
            })
        );
    }

    #[test]
    fn a_run_from_elsewhere_must_be_whole_sorted_and_without_repeats() {
        assert_eq!(check(&run(&["", "a", "ab", "b"])), Ok(4));
        assert_eq!(check(&run(&[])), Ok(0));
        assert_eq!(check(&run(&["b", "a"])), Err(RunError::Unsorted(1)));
        assert_eq!(check(&run(&["a", "b", "b"])), Err(RunError::Unsorted(2)));
        let r = run(&["a", "b"]);
        assert_eq!(
            check(&r[..r.len() - 1]),
            Err(RunError::Truncated { index: 1, count: 2 })
        );
    }
}
