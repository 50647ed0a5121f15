//! Partial aggregates of one epoch, as they travel from readers to the owners of their key
//! groups: group rows, exact-distinct values and the shard counts of closed windows.
//!
//! Each kind has its own key group (docs/architecture.md, State layout): a group row and a shard
//! count belong to the key group of their group key, a distinct value to the key group of (window,
//! aggregate, group, value), so that a group key with few values spreads its distinct state
//! everywhere.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use weir_common::job::JobSpec;
use weir_common::query::aggregate::{merge_all, AggKind, AggregateSpec, MergeError, Partial};
use weir_common::query::keygroup::key_group;
use weir_common::query::window::{check_event_time, Window, WindowSpec};

#[cfg(test)]
use crate::aggregate::distinct_set::DistinctSet;
use crate::aggregate::distinct_set::{Shard, Shards};
use crate::state::distinct_runs::{self as runs, RunError};
use crate::state::group_runs::{self, GroupRunsWriter};
#[cfg(test)]
use crate::state::keys::ValueShards;
use crate::state::keys::{self, key_group_of, operator_of, parse_key, StateKey};

/// The exact-distinct values of one (key group, window, aggregate, group) as one run (in byte
/// order, each once; `crate::state::distinct_runs`) under the run's key: how pre-aggregation
/// hands a set's values on, how they travel, and the merge operand the owner's fold writes.
/// One per value cost a key, a copy and a sort step per value from routing to the fold.
#[derive(Debug, Clone, PartialEq)]
pub struct DistinctRun {
    pub key: Vec<u8>,
    pub run: Vec<u8>,
}

/// The runs of the distinct values `values` of (window, aggregate `agg`, group) of operator
/// `op` among `key_groups` key groups, as pre-aggregation makes them.
#[cfg(test)]
pub fn distinct_runs(
    op: u8,
    window: Window,
    agg: u8,
    group: &[u8],
    values: &[&[u8]],
    key_groups: u32,
) -> Vec<DistinctRun> {
    let owners = vec![0; key_groups as usize];
    let mut out = ByOwner::new(&owners, 1, op);
    out.add_distinct_set(window, agg, group, values.iter().copied())
        .expect("a set of test values");
    out.finish().pop().map(|p| p.distinct).unwrap_or_default()
}

/// Bytes of runs after which a key group's group runs of one (window, aggregate) go on in
/// another value under the same key.
const GROUP_RUNS_BYTES: usize = 256 << 10;

/// The exact-distinct sets of one (window, aggregate), one a group: its group key and its
/// values sorted by key group and value.
pub type GroupSets<'a> = Vec<(&'a [u8], Shards)>;

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

    /// Distinct values of this query: group runs (or a run of one group, as a peer of an
    /// earlier version sends) under the key of one of its key groups, windows and
    /// `count(distinct)` aggregates, whole, each group's values in byte order without repeats.
    pub fn check_distinct_run(&self, key: &[u8], run: &[u8]) -> Result<(), String> {
        let (window, agg, checked) = match parse_key(key) {
            Some(StateKey::GroupRuns { window, agg }) => {
                (window, agg, group_runs::check(run).map(|_| ()))
            }
            Some(StateKey::Run { window, agg, .. }) => (window, agg, runs::check(run).map(|_| ())),
            _ => return Err("not a distinct run's key".into()),
        };
        if operator_of(key) != Some(self.operator) {
            return Err(format!(
                "a distinct run of operator {:?} sent to operator {}",
                operator_of(key),
                self.operator
            ));
        }
        let kg = key_group_of(key).unwrap_or(u32::MAX);
        if kg >= self.key_groups {
            return Err(format!(
                "key group {kg} of a distinct run is not one of {}",
                self.key_groups
            ));
        }
        self.check_window(window)?;
        self.check_distinct_aggregate(agg)?;
        checked.map_err(|e: RunError| e.to_string())
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
    /// Exact-distinct values, as runs. Several senders may send a run of one key, and a value
    /// may be in more than one of them; the owner's fold unions them.
    pub distinct: Vec<DistinctRun>,
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

    /// Distinct values, each counted once per run key and group (what the owner's fold
    /// keeps).
    #[cfg(test)]
    pub fn unique_distinct(&self) -> usize {
        let mut by_key: std::collections::BTreeMap<&[u8], Vec<&[u8]>> = Default::default();
        for r in &self.distinct {
            by_key.entry(&r.key).or_default().push(&r.run);
        }
        by_key
            .iter()
            .map(|(key, rs)| {
                let union = runs::union_at(key, rs.iter().copied()).unwrap();
                group_runs::total(&union).unwrap() as usize
            })
            .sum()
    }

    /// Distinct values over all runs (a value counts once for each run that holds it).
    #[cfg(test)]
    pub fn distinct_values(&self) -> usize {
        self.distinct
            .iter()
            .map(|r| group_runs::total(&r.run).unwrap() as usize)
            .sum()
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
        if self.distinct.is_empty() {
            self.distinct = other.distinct;
        } else {
            self.distinct.extend(other.distinct);
        }
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
        for run in self.distinct {
            out.add_run(run);
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
    /// By owner: it takes only runs of one group (`Topology::one_group_runs`).
    one_group_runs: &'a [bool],
    /// The operator whose partials these are (its distinct keys carry it).
    op: u8,
    parts: Vec<Partials>,
}

impl<'a> ByOwner<'a> {
    pub fn new(owners: &'a [usize], n: usize, op: u8) -> Self {
        Self {
            owners,
            one_group_runs: &[],
            op,
            parts: (0..n).map(|_| Partials::default()).collect(),
        }
    }

    /// Sends the owners marked in `one_group_runs` their distinct values as runs of one group
    /// under a key each, the format of executors that predate group runs.
    pub fn with_one_group_runs(mut self, one_group_runs: &'a [bool]) -> Self {
        self.one_group_runs = one_group_runs;
        self
    }

    /// The job's number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.owners.len() as u32
    }

    fn owner_of(&self, kg: u32) -> usize {
        let last = self.parts.len() - 1;
        self.owners.get(kg as usize).copied().unwrap_or(0).min(last)
    }

    fn owner(&mut self, kg: u32) -> &mut Partials {
        let to = self.owner_of(kg);
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

    /// Adds a run to its key group's owner.
    #[cfg(test)]
    pub fn add_run(&mut self, run: DistinctRun) {
        // A test's run key that names no key group is the test's mistake, not key group 0.
        let kg = key_group_of(&run.key).expect("a run key names its key group");
        self.owner(kg).distinct.push(run);
    }

    /// Adds the distinct values `values` of (window, aggregate `agg`, group) as one run per
    /// key group they fall in.
    #[cfg(test)]
    pub fn add_distinct_set<'v>(
        &mut self,
        window: Window,
        agg: u8,
        group: &[u8],
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Result<(), MergeError> {
        let mut set = DistinctSet::new(window, agg, group, self.key_groups());
        for value in values {
            set.add(value);
        }
        self.add_distinct_sets(window, agg, vec![(group, set.into_shards())])
    }

    /// Adds the sets of (window, aggregate `agg`) of every group (group key, its values sorted
    /// by key group and value) as one group runs value per key group: an owner writes each as
    /// it receives it.
    pub fn add_distinct_sets(
        &mut self,
        window: Window,
        agg: u8,
        mut sets: GroupSets<'_>,
    ) -> Result<(), MergeError> {
        // Group runs hold their groups in byte order.
        sets.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut shards: Vec<(usize, Shard<'_>)> = sets
            .iter()
            .enumerate()
            .flat_map(|(i, (_, set))| set.iter().map(move |shard| (i, shard)))
            .collect();
        shards.sort_by_key(|(i, shard)| (shard.kg, *i));
        let overflow = |_| MergeError::Overflow("values of a distinct run");
        for same_kg in shards.chunk_by(|a, b| a.1.kg == b.1.kg) {
            let kg = same_kg[0].1.kg;
            if self.one_group_runs.get(self.owner_of(kg)) == Some(&true) {
                for (i, shard) in same_kg {
                    let mut run = Vec::with_capacity(4 + shard.run_bytes());
                    runs::append_run(shard.values(), &mut run).map_err(overflow)?;
                    let key = keys::run_key(self.op, kg, window, agg, sets[*i].0);
                    self.owner(kg).distinct.push(DistinctRun { key, run });
                }
                continue;
            }
            let key = keys::group_runs_key(self.op, kg, window, agg);
            // Whole groups at a time, up to GROUP_RUNS_BYTES a value: an exchange row (and
            // message) stays about the size of one group's run, as when each group had its
            // own key; the owner's fold unions the values of one key.
            let group_bytes =
                |(i, shard): &(usize, Shard<'_>)| sets[*i].0.len() + 10 + shard.run_bytes();
            let mut groups = same_kg;
            while !groups.is_empty() {
                // The groups that start below the bound (at least one).
                let mut start = 0;
                let taken = groups
                    .iter()
                    .take_while(|group| {
                        let below = start < GROUP_RUNS_BYTES;
                        start += group_bytes(group);
                        below
                    })
                    .count();
                let bytes = groups[..taken].iter().map(group_bytes).sum();
                let mut runs = GroupRunsWriter::with_capacity(bytes);
                for (i, shard) in &groups[..taken] {
                    runs.push(sets[*i].0, shard.values()).map_err(overflow)?;
                }
                self.owner(kg).distinct.push(DistinctRun {
                    key: key.clone(),
                    run: runs.finish(),
                });
                groups = &groups[taken..];
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn w(start: i64) -> Window {
        Window {
            start,
            end: start + 300,
        }
    }

    /// The sets of every group of a (window, aggregate) leave as one group runs value per key
    /// group their values fall in: each value once, in its group's run in the value of its own
    /// key group, in byte order, the groups in byte order, under the key of (window,
    /// aggregate) of the operator.
    #[test]
    fn sets_become_one_value_of_sorted_runs_per_key_group() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        // Values from a small alphabet, empty ones and repeats among them; groups out of
        // order, the empty group among them.
        let groups: [&[u8]; 3] = [b"view", b"click", b""];
        let values: Vec<Vec<Vec<u8>>> = groups
            .iter()
            .map(|_| {
                (0..3_000)
                    .map(|_| {
                        let len = [0, 1, 2, 3, 8, 20][next(6) as usize];
                        (0..len).map(|_| next(4) as u8).collect()
                    })
                    .collect()
            })
            .collect();
        let owners = vec![0; 16];
        let mut out = ByOwner::new(&owners, 1, 2);
        let sets = groups
            .iter()
            .zip(&values)
            .map(|(group, values)| {
                let mut set = DistinctSet::new(w(600), 1, group, 16);
                for v in values {
                    set.add(v);
                }
                (*group, set.into_shards())
            })
            .collect();
        out.add_distinct_sets(w(600), 1, sets).unwrap();
        let mut seen: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        let mut kgs = Vec::new();
        for r in out.finish().remove(0).distinct {
            let key = parse_key(&r.key);
            assert_eq!(
                key,
                Some(StateKey::GroupRuns {
                    window: w(600),
                    agg: 1
                })
            );
            assert_eq!(operator_of(&r.key), Some(2));
            let kg = key_group_of(&r.key).unwrap();
            kgs.push(kg);
            let in_value: Vec<_> = group_runs::iter(&r.run)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(in_value.windows(2).all(|p| p[0].group < p[1].group));
            let mut count = 0;
            for run in in_value {
                let shards = ValueShards::new(w(600), 1, run.group, 16);
                let mut in_run = Vec::new();
                runs::values_into(run.run, &mut in_run).unwrap();
                assert!(in_run.iter().all(|v| shards.of(v) == kg));
                count += in_run.len() as u64;
                let seen = seen.entry(run.group.to_vec()).or_default();
                seen.extend(in_run.iter().map(|v| v.to_vec()));
            }
            assert_eq!(group_runs::check(&r.run), Ok(count));
        }
        // One value per key group, in key-group order.
        assert!(kgs.windows(2).all(|pair| pair[0] < pair[1]), "{kgs:?}");
        for (group, values) in groups.iter().zip(values) {
            let mut expected = values.clone();
            expected.sort();
            expected.dedup();
            let mut got = seen.remove(*group).unwrap();
            got.sort();
            assert_eq!(got, expected);
        }
    }

    /// A key group's sets too large for one value go in several under its key, whole groups
    /// each, in order, none past the bound by more than its last group; together they hold
    /// every value once.
    #[test]
    fn large_sets_of_a_key_group_go_in_values_of_whole_groups() {
        let groups: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
        let values: Vec<Vec<u8>> = (0..30_000)
            .map(|i| format!("user-{i:07}").into_bytes())
            .collect();
        let owners = vec![0; 1];
        let mut out = ByOwner::new(&owners, 1, 0);
        let sets = groups
            .iter()
            .map(|group| {
                let mut set = DistinctSet::new(w(0), 1, group, 1);
                // Each group a different share of the values: 30 000, 15 000, 10 000, 7 500.
                let every = groups.iter().position(|g| g == group).unwrap() + 1;
                for v in values.iter().step_by(every) {
                    set.add(v);
                }
                (*group, set.into_shards())
            })
            .collect();
        out.add_distinct_sets(w(0), 1, sets).unwrap();
        let runs = out.finish().remove(0).distinct;
        assert!(runs.len() > 1, "{} values", runs.len());
        let key = keys::group_runs_key(0, 0, w(0), 1);
        let mut seen: Vec<(Vec<u8>, u32)> = Vec::new();
        for r in &runs {
            assert_eq!(r.key, key);
            let counts = group_runs::counts(&r.run).unwrap();
            let last = group_runs::iter(&r.run).unwrap().last().unwrap().unwrap();
            assert!(
                r.run.len() - last.run.len() <= GROUP_RUNS_BYTES + 64,
                "{}",
                r.run.len()
            );
            seen.extend(counts.into_iter().map(|(g, n)| (g.to_vec(), n)));
        }
        let expected: Vec<(Vec<u8>, u32)> = vec![
            (b"a".to_vec(), 30_000),
            (b"b".to_vec(), 15_000),
            (b"c".to_vec(), 10_000),
            (b"d".to_vec(), 7_500),
        ];
        assert_eq!(seen, expected);
        let union = runs::union_at(&key, runs.iter().map(|r| &r.run[..])).unwrap();
        assert_eq!(group_runs::total(&union), Ok(62_500));
    }

    /// An owner that predates group runs is sent runs of one group under a key each (as it
    /// reads them); the others get group runs. Every value reaches its key group's owner once,
    /// in its group.
    #[test]
    fn an_owner_that_predates_group_runs_is_sent_runs_of_one_group() {
        let key_groups = 16u32;
        let owners: Vec<usize> = (0..key_groups).map(|kg| usize::from(kg >= 8)).collect();
        let one_group_runs = [false, true];
        let mut out = ByOwner::new(&owners, 2, 0).with_one_group_runs(&one_group_runs);
        let groups: [&[u8]; 2] = [b"view", b"click"];
        let values: Vec<Vec<u8>> = (0..500).map(|i| format!("user-{i}").into_bytes()).collect();
        let sets = groups
            .iter()
            .map(|group| {
                let mut set = DistinctSet::new(w(0), 1, group, key_groups);
                for v in &values {
                    set.add(v);
                }
                (*group, set.into_shards())
            })
            .collect();
        out.add_distinct_sets(w(0), 1, sets).unwrap();
        let mut seen: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for (owner, part) in out.finish().into_iter().enumerate() {
            assert!(!part.distinct.is_empty());
            for r in part.distinct {
                assert_eq!(owners[key_group_of(&r.key).unwrap() as usize], owner);
                let by_group: Vec<(Vec<u8>, &[u8])> = match parse_key(&r.key) {
                    Some(StateKey::Run { group, .. }) if owner == 1 => {
                        vec![(group.to_vec(), &r.run[..])]
                    }
                    Some(StateKey::GroupRuns { .. }) if owner == 0 => group_runs::iter(&r.run)
                        .unwrap()
                        .map(|g| g.map(|g| (g.group.to_vec(), g.run)).unwrap())
                        .collect(),
                    other => panic!("owner {owner}: {other:?}"),
                };
                for (group, run) in by_group {
                    let mut in_run = Vec::new();
                    runs::values_into(run, &mut in_run).unwrap();
                    seen.entry(group)
                        .or_default()
                        .extend(in_run.iter().map(|v| v.to_vec()));
                }
            }
        }
        for group in groups {
            let mut got = seen.remove(group).unwrap();
            got.sort();
            let mut expected = values.clone();
            expected.sort();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn merge_adds_counts_and_unions_values() {
        let mut a = Partials::default();
        a.add_group((w(0), b"click".to_vec()), vec![Partial::Count(2)])
            .unwrap();
        a.distinct = distinct_runs(0, w(0), 1, b"click", &[b"u1"], 16);
        a.add_shard_count((w(-300), 1, b"click".to_vec()), 5)
            .unwrap();
        let mut b = Partials::default();
        b.add_group((w(0), b"click".to_vec()), vec![Partial::Count(3)])
            .unwrap();
        b.distinct = distinct_runs(0, w(0), 1, b"click", &[b"u1", b"u2"], 16);
        b.add_shard_count((w(-300), 1, b"click".to_vec()), 7)
            .unwrap();
        a.merge(b).unwrap();
        assert!(matches!(
            a.groups[&(w(0), b"click".to_vec())][0],
            Partial::Count(5)
        ));
        // u1 came from both: the fold keeps it once (state.rs).
        assert_eq!(a.distinct_values(), 3);
        assert_eq!(a.unique_distinct(), 2);
        assert_eq!(a.shard_counts[&(w(-300), 1, b"click".to_vec())], 12);
    }

    #[test]
    fn split_sends_each_kind_to_the_owner_of_its_key_group() {
        let key_groups = 16u32;
        // Owner 0 holds key groups 0..8, owner 1 holds 8..16.
        let owners: Vec<usize> = (0..key_groups).map(|kg| usize::from(kg >= 8)).collect();
        let mut p = Partials::default();
        let values: Vec<Vec<u8>> = (0..200).map(|i| format!("user-{i}").into_bytes()).collect();
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        p.distinct = distinct_runs(0, w(0), 1, b"click", &values, key_groups);
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
            for run in &part.distinct {
                assert_eq!(owners[key_group_of(&run.key).unwrap() as usize], i);
            }
            // One group key, yet its distinct values land on both owners.
            assert!(
                part.distinct_values() > 50,
                "owner {i}: {}",
                part.distinct_values()
            );
        }
    }
}
