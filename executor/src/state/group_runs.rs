//! Group runs: the exact-distinct values of every group of one (key group, window, aggregate)
//! kept as one RocksDB value, a run (`distinct_runs`) per group. One value per group cost a
//! memtable insert, a merge when read, a key to sort and parse and an allocation or two at
//! every step, for runs of a few dozen values each: with 256 key groups, ten groups and one
//! or two windows an epoch, about 3 000 keys an executor and epoch, where there are now 300.
//!
//! ```text
//! [groups u32 LE]
//! per group, in byte order of the group keys, each once:
//!   [varint group key length][group key][run length u32 LE][run]
//! ```
//!
//! The union of two unions the runs of the groups both hold and copies the others as they
//! are, each checked; RocksDB unions the operands with it when it flushes, compacts or reads
//! (`distinct_runs::merge`, by the key's layout).

use std::cmp::Ordering;

use prost::encoding::decode_varint;

use crate::state::distinct_runs::{self as runs, RunError};

const HEADER: usize = 4;
const RUN_LEN: usize = 4;

/// Builds group runs from groups given in byte order, each once, and each group's values in
/// byte order, each once.
pub struct GroupRunsWriter {
    buf: Vec<u8>,
    groups: u32,
}

impl GroupRunsWriter {
    /// A writer with room for `bytes` of groups, lengths and values.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER + bytes);
        buf.extend_from_slice(&[0; HEADER]);
        Self { buf, groups: 0 }
    }

    /// Adds `group`'s run of `values` (in byte order, each once).
    pub fn push<'v>(
        &mut self,
        group: &[u8],
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Result<(), RunError> {
        let len_at = self.start_group(group)?;
        runs::append_run(values, &mut self.buf)?;
        self.end_group(len_at)
    }

    /// Writes `group`'s key and room for its run's length; answers where that room is.
    fn start_group(&mut self, group: &[u8]) -> Result<usize, RunError> {
        self.groups = self.groups.checked_add(1).ok_or(RunError::TooMany)?;
        runs::write_len(group.len(), &mut self.buf);
        self.buf.extend_from_slice(group);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; RUN_LEN]);
        Ok(at)
    }

    /// Fills in the length of the run written after `len_at`.
    fn end_group(&mut self, len_at: usize) -> Result<(), RunError> {
        let len = self.buf.len() - len_at - RUN_LEN;
        let len = u32::try_from(len).map_err(|_| RunError::TooMany)?;
        self.buf[len_at..len_at + RUN_LEN].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Adds a group's run as it is, once checked.
    fn copy(&mut self, run: GroupRun<'_>) -> Result<(), RunError> {
        runs::check(run.run)?;
        self.groups = self.groups.checked_add(1).ok_or(RunError::TooMany)?;
        self.buf.extend_from_slice(run.entry);
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..HEADER].copy_from_slice(&self.groups.to_le_bytes());
        self.buf
    }
}

/// One group's run, with the bytes of its whole entry (group key, length and run).
#[derive(Debug, Clone, Copy)]
pub struct GroupRun<'a> {
    pub group: &'a [u8],
    pub run: &'a [u8],
    entry: &'a [u8],
}

/// The groups' runs of a value, in its order; an error ends them. The runs themselves are not
/// read: [`check`] reads them.
pub struct GroupRunsIter<'a> {
    rest: &'a [u8],
    index: u32,
    groups: u32,
}

/// The groups' runs of `value`.
pub fn iter(value: &[u8]) -> Result<GroupRunsIter<'_>, RunError> {
    let header: [u8; HEADER] = value
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(RunError::Short(value.len()))?;
    Ok(GroupRunsIter {
        rest: &value[HEADER..],
        index: 0,
        groups: u32::from_le_bytes(header),
    })
}

impl<'a> GroupRunsIter<'a> {
    fn next_run(&mut self) -> Result<Option<GroupRun<'a>>, RunError> {
        if self.index == self.groups {
            if !self.rest.is_empty() {
                return Err(RunError::GroupsTrailing(self.groups));
            }
            return Ok(None);
        }
        let cut = RunError::GroupCut(self.index);
        let entry_start = self.rest;
        let mut rest = self.rest;
        let len = decode_varint(&mut rest).map_err(|_| cut.clone())?;
        let len = usize::try_from(len).map_err(|_| cut.clone())?;
        let group = rest.get(..len).ok_or_else(|| cut.clone())?;
        rest = &rest[len..];
        let run_len: [u8; RUN_LEN] = rest
            .get(..RUN_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| cut.clone())?;
        let run_len = u32::from_le_bytes(run_len) as usize;
        rest = &rest[RUN_LEN..];
        let run = rest.get(..run_len).ok_or(cut)?;
        rest = &rest[run_len..];
        let entry = &entry_start[..entry_start.len() - rest.len()];
        self.rest = rest;
        self.index += 1;
        Ok(Some(GroupRun { group, run, entry }))
    }

    /// The next group's run, whose group must come after `last`'s.
    fn next_after(&mut self, last: Option<&[u8]>) -> Result<Option<GroupRun<'a>>, RunError> {
        let next = self.next_run()?;
        if let (Some(last), Some(next)) = (last, next) {
            if last.cmp(next.group) != Ordering::Less {
                return Err(RunError::GroupsUnsorted(self.index - 1));
            }
        }
        Ok(next)
    }
}

impl<'a> Iterator for GroupRunsIter<'a> {
    type Item = Result<GroupRun<'a>, RunError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_run().transpose()
    }
}

/// Each group's count of values (from its run's header), in the value's order.
pub fn counts(value: &[u8]) -> Result<Vec<(&[u8], u32)>, RunError> {
    iter(value)?
        .map(|r| r.and_then(|r| Ok((r.group, runs::count(r.run)?))))
        .collect()
}

/// The number of values of all groups (from their runs' headers).
pub fn total(value: &[u8]) -> Result<u64, RunError> {
    counts(value).map(|c| c.iter().map(|(_, n)| u64::from(*n)).sum())
}

/// The number of values of a value from elsewhere (an exchange stream), once it is known to be
/// whole, its groups in byte order each once and each run in byte order without repeats.
pub fn check(value: &[u8]) -> Result<u64, RunError> {
    let mut groups = iter(value)?;
    let mut last = None;
    let mut total = 0u64;
    while let Some(run) = groups.next_after(last)? {
        total += u64::from(runs::check(run.run)?);
        last = Some(run.group);
    }
    Ok(total)
}

/// The union of group runs, as one value: each group's runs unioned. Each must hold its
/// groups in byte order, each once, and each run its values so (one that does not is an
/// error).
pub fn union<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, RunError> {
    runs::pairwise(values, check, merge_two, || {
        GroupRunsWriter::with_capacity(0).finish()
    })
}

/// The union of two group runs: the runs of a group both hold are unioned, the others copied
/// as they are once checked.
fn merge_two(a: &[u8], b: &[u8]) -> Result<Vec<u8>, RunError> {
    let mut out = GroupRunsWriter::with_capacity(a.len() + b.len());
    let (mut xs, mut ys) = (iter(a)?, iter(b)?);
    let (mut x, mut y) = (xs.next_after(None)?, ys.next_after(None)?);
    loop {
        match (x, y) {
            (None, None) => break,
            (Some(u), Some(v)) if u.group == v.group => {
                let len_at = out.start_group(u.group)?;
                runs::merge_two_into(u.run, v.run, &mut out.buf)?;
                out.end_group(len_at)?;
                x = xs.next_after(Some(u.group))?;
                y = ys.next_after(Some(v.group))?;
            }
            (Some(u), Some(v)) if v.group < u.group => {
                out.copy(v)?;
                y = ys.next_after(Some(v.group))?;
            }
            (None, Some(v)) => {
                out.copy(v)?;
                y = ys.next_after(Some(v.group))?;
            }
            (Some(u), _) => {
                out.copy(u)?;
                x = xs.next_after(Some(u.group))?;
            }
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    type Groups = BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>;

    fn written(groups: &Groups) -> Vec<u8> {
        let mut w = GroupRunsWriter::with_capacity(0);
        for (group, values) in groups {
            w.push(group, values.iter().map(Vec::as_slice)).unwrap();
        }
        w.finish()
    }

    fn read(value: &[u8]) -> Groups {
        iter(value)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                let mut values = Vec::new();
                runs::values_into(r.run, &mut values).unwrap();
                (
                    r.group.to_vec(),
                    values.iter().map(|v| v.to_vec()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn group_runs_round_trip_and_count_each_group() {
        let groups: Groups = [
            (b"click".to_vec(), [b"u1".to_vec(), b"u2".to_vec()].into()),
            (b"view".to_vec(), [vec![b'x'; 300]].into()),
            (vec![], [vec![]].into()),
        ]
        .into();
        let value = written(&groups);
        assert_eq!(read(&value), groups);
        assert_eq!(
            counts(&value).unwrap(),
            [(&b""[..], 1), (&b"click"[..], 2), (&b"view"[..], 1)]
        );
        assert_eq!(total(&value), Ok(4));
        assert_eq!(check(&value), Ok(4));
        let empty = union([]).unwrap();
        assert_eq!(total(&empty), Ok(0));
        assert!(read(&empty).is_empty());
    }

    proptest::proptest! {
        /// The union of any group runs holds each group once, with the union of its values,
        /// whatever their number and overlap; it is idempotent, as a changelog replayed twice
        /// must be.
        #[test]
        fn the_union_of_any_group_runs_is_each_groups_union(
            values in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(0u8..3, 0..3),
                    proptest::collection::btree_set(proptest::collection::vec(0u8..4, 0..6), 0..12),
                    0..5,
                ),
                0..7,
            ),
        ) {
            let written: Vec<Vec<u8>> = values.iter().map(written).collect();
            let mut expected: Groups = BTreeMap::new();
            for groups in &values {
                for (group, set) in groups {
                    expected.entry(group.clone()).or_default().extend(set.iter().cloned());
                }
            }
            let u = union(written.iter().map(Vec::as_slice)).unwrap();
            proptest::prop_assert_eq!(read(&u), expected.clone());
            let n: usize = expected.values().map(BTreeSet::len).sum();
            proptest::prop_assert_eq!(check(&u), Ok(n as u64));
            proptest::prop_assert_eq!(union([&u[..], &u[..]]).unwrap(), u);
        }
    }

    /// A value cut short, with bytes after its groups, with groups out of order or a run out
    /// of order is refused by the check and by the union, whichever side it is on.
    #[test]
    fn the_union_and_the_check_refuse_what_is_not_group_runs() {
        let good = written(&[(b"b".to_vec(), [b"u1".to_vec()].into())].into());
        let mut unsorted_groups = GroupRunsWriter::with_capacity(0);
        unsorted_groups.push(b"b", [&b"u1"[..]]).unwrap();
        unsorted_groups.push(b"a", [&b"u1"[..]]).unwrap();
        let mut repeated_group = GroupRunsWriter::with_capacity(0);
        repeated_group.push(b"a", [&b"u1"[..]]).unwrap();
        repeated_group.push(b"a", [&b"u2"[..]]).unwrap();
        let mut unsorted_values = GroupRunsWriter::with_capacity(0);
        unsorted_values.push(b"a", [&b"u2"[..], b"u1"]).unwrap();
        let cases = [
            (good[..good.len() - 1].to_vec(), "cut"),
            ([&good[..], b"x"].concat(), "trailing"),
            (unsorted_groups.finish(), "groups out of order"),
            (repeated_group.finish(), "a group twice"),
            (unsorted_values.finish(), "values out of order"),
            (vec![1, 0], "shorter than its header"),
        ];
        for (bad, what) in cases {
            assert!(check(&bad).is_err(), "{what}");
            assert!(union([&bad[..]]).is_err(), "{what}");
            assert!(union([&good[..], &bad]).is_err(), "{what}");
            assert!(union([&bad[..], &good]).is_err(), "{what}");
        }
    }
}
