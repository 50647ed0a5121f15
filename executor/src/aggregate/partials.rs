//! Partial aggregates of one epoch, as they travel from readers to the owners of their key
//! groups: group rows, exact-distinct values and the shard counts of closed windows.
//!
//! Each kind has its own key group (docs/architecture.md, State layout): a group row and a shard
//! count belong to the key group of their group key, a distinct value to the key group of (window,
//! aggregate, group, value), so that a group key with few values spreads its distinct state
//! everywhere.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use weir_common::aggregate::{merge_all, AggKind, AggregateSpec, MergeError, Partial};
use weir_common::job::JobSpec;
use weir_common::keygroup::key_group;
use weir_common::window::{check_event_time, Window, WindowSpec};

use crate::state::keys::{distinct_key_into, key_group_of, operator_of, parse_key, StateKey};

/// A distinct value as its distinct key ([`crate::state::keys::distinct_key`]: its key group,
/// window, aggregate index, group key and value), built alone; epochs write theirs into
/// [`DistinctKeys`] instead.
#[cfg(test)]
pub type DistinctEntry = Vec<u8>;

/// The entry of a distinct value of (window, aggregate `agg`, group) among `key_groups` key
/// groups: its shard is the key group of all four.
#[cfg(test)]
pub fn distinct_entry(
    window: Window,
    agg: u8,
    group: &[u8],
    value: &[u8],
    key_groups: u32,
) -> DistinctEntry {
    let mut key = Vec::new();
    distinct_key_into(&mut key, 0, window, agg, group, value, key_groups);
    key
}

/// Distinct values as their distinct keys, one after another in one buffer: a buffer per key
/// was an allocation and a free per value at every step from the reader to the owner's fold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DistinctKeys {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`.
    ends: Vec<usize>,
}

impl DistinctKeys {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn push(&mut self, key: impl AsRef<[u8]>) {
        self.bytes.extend_from_slice(key.as_ref());
        self.ends.push(self.bytes.len());
    }

    /// Key `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.bytes.get(start..end)
    }

    pub fn iter(&self) -> DistinctIter<'_> {
        DistinctIter {
            keys: self,
            next: 0,
        }
    }

    pub fn append(&mut self, other: &DistinctKeys) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    /// The keys in order, each once (what the owner's fold makes its runs of).
    pub fn sorted_unique(&self) -> Vec<&[u8]> {
        // Distinct keys start with their big-endian key group: placed by their first two bytes
        // (a counting pass), each key group's keys are then sorted on their own, which takes
        // about half the comparisons of one sort over all of them. Missing bytes count as
        // zeros, so the buckets are in byte order and the sort within one settles the rest.
        let bucket = |k: &[u8]| {
            usize::from(u16::from_be_bytes([
                k.first().copied().unwrap_or(0),
                k.get(1).copied().unwrap_or(0),
            ]))
        };
        let Some(last) = self.iter().map(bucket).max() else {
            return Vec::new();
        };
        // starts[b] is where bucket b begins in `keys`, once summed.
        let mut starts = vec![0usize; last + 2];
        for k in self {
            starts[bucket(k) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let mut keys: Vec<&[u8]> = vec![&[]; self.len()];
        let mut next = starts.clone();
        for k in self {
            let b = bucket(k);
            keys[next[b]] = k;
            next[b] += 1;
        }
        for range in starts.windows(2) {
            keys[range[0]..range[1]].sort_unstable();
        }
        keys.dedup();
        keys
    }
}

/// The keys of a [`DistinctKeys`], in the order they were added.
pub struct DistinctIter<'a> {
    keys: &'a DistinctKeys,
    next: usize,
}

impl<'a> Iterator for DistinctIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let key = self.keys.get(self.next)?;
        self.next += 1;
        Some(key)
    }
}

impl<'a> IntoIterator for &'a DistinctKeys {
    type Item = &'a [u8];
    type IntoIter = DistinctIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The shard count of one exact-distinct aggregate of one (window, group): (window, aggregate
/// index, group key).
pub type ShardKey = (Window, u8, Vec<u8>);

/// What this query's partials look like. Entries that arrive from a peer are checked against
/// it before they are merged, so that a peer of another version, a corrupt stream or a hostile
/// sender fails the run with a clear error instead of reaching the state store.
#[derive(Debug, Clone)]
pub struct Shape {
    aggregates: Vec<AggregateSpec>,
    /// The query's windows; none for a dedup query, which sends rows instead.
    window: Option<WindowSpec>,
    key_groups: u32,
    /// The operator whose entries these are.
    operator: u8,
}

impl Shape {
    /// The shape of each of the job's queries' entries, by operator.
    pub fn all(job: &JobSpec) -> Vec<Self> {
        job.queries
            .iter()
            .enumerate()
            .map(|(op, spec)| {
                let windows = spec.query.windows();
                Self {
                    aggregates: windows.map(|w| w.aggregates.clone()).unwrap_or_default(),
                    window: windows.map(|w| w.window),
                    key_groups: job.key_groups,
                    // At most 64 queries: the index fits.
                    operator: op as u8,
                }
            })
            .collect()
    }

    /// The shape of a one-query job's entries.
    #[cfg(test)]
    pub fn of(job: &JobSpec) -> Self {
        Self::all(job).remove(0)
    }

    /// A dedup query's row: only a dedup query takes them, at an event time in range.
    pub fn check_first_row(&self, event_time: i64) -> Result<(), String> {
        if self.window.is_some() {
            return Err("a raw row sent to a window query".into());
        }
        check_event_time(event_time)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A window of the query's spec: `size` long, aligned, inside the event-time range.
    pub fn check_window(&self, w: Window) -> Result<(), String> {
        let Some(spec) = self.window else {
            return Err(format!("{w:?}: a dedup query has no windows"));
        };
        // The latest window holding its start ends at its end only if it starts there.
        let end = check_event_time(w.start).and_then(|start| spec.last_window_end(start));
        if end == Ok(w.end) && w.end.checked_sub(w.start) == Some(spec.size) {
            Ok(())
        } else {
            Err(format!("{w:?} is not a window of this query"))
        }
    }

    /// The partial states of one group row, when they are one per aggregate, each a state of
    /// its aggregate ([`Partial::admitted`]).
    pub fn admit_partials(&self, partials: Vec<Partial>) -> Result<Vec<Partial>, String> {
        if partials.len() != self.aggregates.len() {
            return Err(format!(
                "{} partial states for {} aggregates",
                partials.len(),
                self.aggregates.len()
            ));
        }
        partials
            .into_iter()
            .zip(&self.aggregates)
            .map(|(p, spec)| {
                let kind = p.kind_name();
                p.admitted(spec)
                    .ok_or_else(|| format!("a {kind} is no state of aggregate `{}`", spec.name))
            })
            .collect()
    }

    /// An aggregate index that names a `count(distinct)`.
    pub fn check_distinct_aggregate(&self, agg: u8) -> Result<(), String> {
        match self.aggregates.get(usize::from(agg)) {
            Some(spec) if spec.kind == AggKind::CountDistinct => Ok(()),
            _ => Err(format!("aggregate {agg} is not a count(distinct)")),
        }
    }

    /// A whole distinct key of this query: its key group, window and aggregate.
    pub fn check_distinct_key(&self, key: &[u8]) -> Result<(), String> {
        let Some(StateKey::Distinct { window, agg, .. }) = parse_key(key) else {
            return Err("not a distinct-value key".into());
        };
        if operator_of(key) != Some(self.operator) {
            return Err(format!(
                "a distinct value of operator {:?} sent to operator {}",
                operator_of(key),
                self.operator
            ));
        }
        let kg = key_group_of(key).unwrap_or(u32::MAX);
        if kg >= self.key_groups {
            return Err(format!(
                "key group {kg} of a distinct value is not one of {}",
                self.key_groups
            ));
        }
        self.check_window(window)?;
        self.check_distinct_aggregate(agg)
    }

    /// The shape of what tests send: windows of 300 µs, `count(*)` then
    /// `count(distinct user)`, 64 key groups.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        let spec = |name: &str, kind| AggregateSpec {
            name: name.into(),
            kind,
            column: None,
            input_type: None,
        };
        Self {
            aggregates: vec![
                spec("n", AggKind::CountStar),
                spec("users", AggKind::CountDistinct),
            ],
            window: Some(WindowSpec::tumbling(300)),
            key_groups: 64,
            operator: 0,
        }
    }
}

/// The maps of one epoch's partials: keys come from the job's own data, and a fast hasher
/// matters here (every input row is hashed at least twice).
pub type FastMap<K, V> = HashMap<K, V, RandomState>;

/// A dedup query's row for its key: the record as read, from where in the epoch's input.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstRow {
    pub event_time: i64,
    /// Where it was read (partition and offset, or file index and line): of several rows of a
    /// key in one epoch, the first in this order is kept, whichever executor reads it.
    pub position: (i32, i64),
    pub record: Vec<u8>,
}

/// Mergeable partial aggregates (and a dedup query's rows, on their way to their key's owner).
#[derive(Debug, Default)]
pub struct Partials {
    /// Partial states of the aggregates per (window, group key).
    pub groups: FastMap<(Window, Vec<u8>), Vec<Partial>>,
    /// Exact-distinct values. One may be here more than once (each sender dedups its own,
    /// not across senders); the owner's fold keeps and counts each once.
    pub distinct: DistinctKeys,
    /// Distinct counts of windows that closed, summed per (window, aggregate, group) for the
    /// group's owner.
    pub shard_counts: FastMap<ShardKey, i64>,
    /// A dedup query's first row of each key (its encoded key columns) among those read.
    pub firsts: FastMap<Vec<u8>, FirstRow>,
}

impl Partials {
    /// Entries of all kinds.
    pub fn len(&self) -> usize {
        self.groups.len() + self.distinct.len() + self.shard_counts.len() + self.firsts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct values, each counted once (what the owner's fold keeps).
    #[cfg(test)]
    pub fn unique_distinct(&self) -> usize {
        self.distinct.sorted_unique().len()
    }

    /// Merges one group row in.
    pub fn add_group(
        &mut self,
        key: (Window, Vec<u8>),
        partials: Vec<Partial>,
    ) -> Result<(), MergeError> {
        match self.groups.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => merge_all(e.get_mut(), &partials),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(partials);
                Ok(())
            }
        }
    }

    pub fn add_shard_count(&mut self, key: ShardKey, count: i64) -> Result<(), MergeError> {
        let total = self.shard_counts.entry(key).or_default();
        *total = total
            .checked_add(count)
            .ok_or(MergeError::Overflow("shard count"))?;
        Ok(())
    }

    /// Keeps `row` for its dedup `key` unless a row read before it is kept already.
    pub fn add_first(&mut self, key: Vec<u8>, row: FirstRow) {
        match self.firsts.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if row.position < e.get().position {
                    e.insert(row);
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(row);
            }
        }
    }

    /// Merges another set of partials into this one.
    pub fn merge(&mut self, other: Partials) -> Result<(), MergeError> {
        for (key, partials) in other.groups {
            self.add_group(key, partials)?;
        }
        self.distinct.append(&other.distinct);
        for (key, count) in other.shard_counts {
            self.add_shard_count(key, count)?;
        }
        for (key, row) in other.firsts {
            self.add_first(key, row);
        }
        Ok(())
    }

    /// Splits the partials by owner: `owners[kg]` is the index of the owner of key group `kg`,
    /// one of `0..n`. (Epochs route with [`ByOwner`] as partials are produced.)
    #[cfg(test)]
    pub fn split(self, owners: &[usize], n: usize) -> Vec<Partials> {
        let mut out = ByOwner::new(owners, n, 0);
        for (key, partials) in self.groups {
            out.add_group(key, partials).unwrap();
        }
        for key in &self.distinct {
            out.add_distinct(key);
        }
        for (key, count) in self.shard_counts {
            out.add_shard_count(key, count).unwrap();
        }
        for (key, row) in self.firsts {
            out.add_first(key, row);
        }
        out.finish()
    }
}

/// Each operator's partials, by its index in the plan: what one exchange stream carries (its
/// entries tagged with their operator).
#[derive(Debug, Default)]
pub struct PlanPartials(pub Vec<Partials>);

impl PlanPartials {
    /// Entries of every operator.
    pub fn len(&self) -> usize {
        self.0.iter().map(Partials::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Partials::is_empty)
    }

    /// Operator `op`'s partials, made empty if there were none.
    pub fn operator(&mut self, op: u8) -> &mut Partials {
        let i = usize::from(op);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, Partials::default);
        }
        &mut self.0[i]
    }

    /// Takes operator `op`'s partials out.
    pub fn take(&mut self, op: u8) -> Partials {
        self.0
            .get_mut(usize::from(op))
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Merges another stream's partials in, operator by operator.
    pub fn merge(&mut self, other: PlanPartials) -> Result<(), MergeError> {
        for (op, partials) in other.0.into_iter().enumerate() {
            let op = u8::try_from(op).map_err(|_| MergeError::Overflow("operator index"))?;
            self.operator(op).merge(partials)?;
        }
        Ok(())
    }

    /// Per peer, what each operator sends it: `by_operator[op][peer]` regrouped by peer.
    pub fn by_peer(by_operator: Vec<Vec<Partials>>, peers: usize) -> Vec<PlanPartials> {
        let mut out: Vec<PlanPartials> = (0..peers).map(|_| PlanPartials::default()).collect();
        for (op, parts) in by_operator.into_iter().enumerate() {
            for (peer, part) in parts.into_iter().enumerate() {
                if let Some(to) = out.get_mut(peer) {
                    if to.0.len() <= op {
                        to.0.resize_with(op + 1, Partials::default);
                    }
                    to.0[op] = part;
                }
            }
        }
        out
    }
}

/// Partials sorted by the owner of their key groups as they are added: `owners[kg]` is the
/// index of the owner of key group `kg`, one of `0..n`.
pub struct ByOwner<'a> {
    owners: &'a [usize],
    /// The operator whose partials these are (its distinct keys carry it).
    op: u8,
    parts: Vec<Partials>,
    /// Where a distinct value's key is built before it is copied to its owner's.
    scratch: Vec<u8>,
}

impl<'a> ByOwner<'a> {
    pub fn new(owners: &'a [usize], n: usize, op: u8) -> Self {
        Self {
            owners,
            op,
            parts: (0..n).map(|_| Partials::default()).collect(),
            scratch: Vec::new(),
        }
    }

    /// The job's number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.owners.len() as u32
    }

    fn owner(&mut self, kg: u32) -> &mut Partials {
        let last = self.parts.len() - 1;
        let to = self.owners.get(kg as usize).copied().unwrap_or(0).min(last);
        &mut self.parts[to]
    }

    pub fn add_group(
        &mut self,
        key: (Window, Vec<u8>),
        partials: Vec<Partial>,
    ) -> Result<(), MergeError> {
        let kg = key_group(&key.1, self.key_groups());
        self.owner(kg).add_group(key, partials)
    }

    /// Adds a distinct value's distinct key.
    #[cfg(test)]
    pub fn add_distinct(&mut self, key: &[u8]) {
        self.owner(distinct_key_group(key)).distinct.push(key);
    }

    /// Adds a distinct value of (window, aggregate `agg`, group) as its distinct key.
    pub fn add_distinct_value(&mut self, window: Window, agg: u8, group: &[u8], value: &[u8]) {
        let mut key = std::mem::take(&mut self.scratch);
        let kg = distinct_key_into(
            &mut key,
            self.op,
            window,
            agg,
            group,
            value,
            self.key_groups(),
        );
        self.owner(kg).distinct.push(&key);
        self.scratch = key;
    }

    pub fn add_shard_count(&mut self, key: ShardKey, count: i64) -> Result<(), MergeError> {
        let kg = key_group(&key.2, self.key_groups());
        self.owner(kg).add_shard_count(key, count)
    }

    /// Adds a dedup query's row for `key`, in the key group of the key.
    pub fn add_first(&mut self, key: Vec<u8>, row: FirstRow) {
        let kg = key_group(&key, self.key_groups());
        self.owner(kg).add_first(key, row);
    }

    /// The partials of each owner, by index.
    pub fn finish(self) -> Vec<Partials> {
        self.parts
    }
}

/// The key group of a distinct value: its shard. Entries are whole keys (the wire checks those
/// it receives), so the key group is always there.
#[cfg(test)]
pub fn distinct_key_group(key: &[u8]) -> u32 {
    key_group_of(key).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: i64) -> Window {
        Window {
            start,
            end: start + 300,
        }
    }

    #[test]
    fn distinct_keys_keep_each_key_whole_and_sort_them_once() {
        let mut a = DistinctKeys::default();
        for key in [&b"b2"[..], b"", b"a", b"b2"] {
            a.push(key);
        }
        let mut b = DistinctKeys::default();
        b.push(b"a1");
        b.push(b"b");
        a.append(&b);
        let all: Vec<&[u8]> = a.iter().collect();
        assert_eq!(all, [&b"b2"[..], b"", b"a", b"b2", b"a1", b"b"]);
        assert_eq!((a.len(), a.get(6)), (6, None));
        assert_eq!(a.sorted_unique(), [&b""[..], b"a", b"a1", b"b", b"b2"]);
    }

    #[test]
    fn keys_sort_in_byte_order_whatever_their_length_and_first_bytes() {
        // Keys from a small alphabet with zeros, empty and one-byte ones among them, many
        // sharing their first two bytes (the buckets) and longer prefixes: the sort must equal
        // the plain byte sort.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut keys = DistinctKeys::default();
        let mut plain: Vec<Vec<u8>> = Vec::new();
        for _ in 0..5_000 {
            let len = [0, 1, 2, 3, 8, 20, 45][next(7) as usize];
            let key: Vec<u8> = (0..len)
                .map(|i| if i < 2 { next(3) as u8 } else { next(4) as u8 })
                .collect();
            keys.push(&key);
            plain.push(key);
        }
        plain.sort();
        plain.dedup();
        let sorted: Vec<&[u8]> = keys.sorted_unique();
        assert_eq!(sorted.len(), plain.len());
        assert!(sorted.iter().zip(&plain).all(|(a, b)| *a == &b[..]));
        assert!(DistinctKeys::default().sorted_unique().is_empty());
    }

    #[test]
    fn merge_adds_counts_and_unions_values() {
        let mut a = Partials::default();
        a.add_group((w(0), b"click".to_vec()), vec![Partial::Count(2)])
            .unwrap();
        a.distinct
            .push(distinct_entry(w(0), 1, b"click", b"u1", 16));
        a.add_shard_count((w(-300), 1, b"click".to_vec()), 5)
            .unwrap();
        let mut b = Partials::default();
        b.add_group((w(0), b"click".to_vec()), vec![Partial::Count(3)])
            .unwrap();
        b.distinct
            .push(distinct_entry(w(0), 1, b"click", b"u1", 16));
        b.distinct
            .push(distinct_entry(w(0), 1, b"click", b"u2", 16));
        b.add_shard_count((w(-300), 1, b"click".to_vec()), 7)
            .unwrap();
        a.merge(b).unwrap();
        assert!(matches!(
            a.groups[&(w(0), b"click".to_vec())][0],
            Partial::Count(5)
        ));
        // u1 came from both: the fold keeps it once (state.rs).
        assert_eq!(a.distinct.len(), 3);
        assert_eq!(a.unique_distinct(), 2);
        assert_eq!(a.shard_counts[&(w(-300), 1, b"click".to_vec())], 12);
    }

    #[test]
    fn split_sends_each_kind_to_the_owner_of_its_key_group() {
        let key_groups = 16u32;
        // Owner 0 holds key groups 0..8, owner 1 holds 8..16.
        let owners: Vec<usize> = (0..key_groups).map(|kg| usize::from(kg >= 8)).collect();
        let mut p = Partials::default();
        for i in 0..200u32 {
            let value = format!("user-{i}").into_bytes();
            p.distinct
                .push(distinct_entry(w(0), 1, b"click", &value, key_groups));
        }
        p.add_group((w(0), b"click".to_vec()), vec![Partial::Count(200)])
            .unwrap();
        p.add_shard_count((w(-300), 1, b"click".to_vec()), 9)
            .unwrap();
        let total = p.len();
        let parts = p.split(&owners, 2);
        assert_eq!(parts.iter().map(Partials::len).sum::<usize>(), total);
        let group_owner = owners[key_group(b"click", key_groups) as usize];
        assert_eq!(parts[group_owner].groups.len(), 1);
        assert_eq!(parts[group_owner].shard_counts.len(), 1);
        for (i, part) in parts.iter().enumerate() {
            for entry in &part.distinct {
                assert_eq!(owners[distinct_key_group(entry) as usize], i);
            }
            // One group key, yet its distinct values land on both owners.
            assert!(
                part.distinct.len() > 50,
                "owner {i}: {}",
                part.distinct.len()
            );
        }
    }
}
