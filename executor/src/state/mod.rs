//! The window state store: RocksDB under the executor's state directory, written once per epoch
//! in one atomic batch (the epoch's folds, the emitted windows' deletion, the epoch marker).
//! Exact-distinct values are merged in blind, without a read, as one run per key group, window,
//! aggregate and group (`distinct_runs`): whether a value is new is only asked when its window
//! closes, by counting the run RocksDB's merge operator has unioned (see `keys`). The other
//! parts: snapshots of the store on the checkpoint store (`snapshot`) and restoring from them
//! (`restore`).
//! The local store is a cache of the snapshots on the checkpoint store: it starts empty or
//! restored from them, and never needs its write-ahead log (each epoch ends in a snapshot).

pub mod dedup;
pub mod distinct_runs;
pub mod group_runs;
pub mod keys;
pub mod restore;
pub mod snapshot;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use weir_common::query::aggregate::{decode_partials, encode_partials, merge_all, Partial};
use weir_common::query::keygroup::{key_group, KeyGroups};
use weir_common::query::window::{Window, WindowSpec};

use crate::aggregate::partials::{DistinctRun, FastMap, Partials, ShardKey};
use crate::state::distinct_runs as runs;
use crate::state::keys::StateKey;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("RocksDB at {path}: {source}")]
    Db {
        path: String,
        source: rocksdb::Error,
    },
    #[error("corrupt state entry: {0}")]
    Corrupt(String),
    #[error("corrupt state entry: {0}")]
    Run(#[from] runs::RunError),
    #[error("{what}: {source}")]
    Merge {
        what: String,
        source: weir_common::query::aggregate::MergeError,
    },
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A window's row of one group: its group key and partials (final once the window closed).
pub struct WindowRow {
    pub window: Window,
    pub group: Vec<u8>,
    pub partials: Vec<Partial>,
}

/// What closing windows takes out of the store.
#[derive(Default)]
pub struct Closed {
    /// Group rows of the closed windows, with their partials (distinct counts not yet added).
    pub rows: Vec<WindowRow>,
    /// Distinct values this store's shards hold for closed windows, counted.
    pub shard_counts: Vec<(ShardKey, i64)>,
    /// Distinct values deleted with the closed windows.
    pub distinct_removed: u64,
}

/// Adds distinct counts from the shards (of closed windows, or what an update-mode epoch added
/// to each) to their group rows and sorts the rows, so that a replayed epoch stages identical
/// files.
pub fn add_shard_counts(
    rows: &mut [WindowRow],
    shard_counts: &FastMap<ShardKey, i64>,
) -> Result<(), StateError> {
    let index: HashMap<(Window, &[u8]), usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.window, r.group.as_slice()), i))
        .collect();
    let mut additions = Vec::with_capacity(shard_counts.len());
    for ((window, agg, group), count) in shard_counts {
        let i = index.get(&(*window, group.as_slice())).ok_or_else(|| {
            StateError::Corrupt(format!(
                "a distinct count arrived for window {window:?} without its group row"
            ))
        })?;
        additions.push((*i, usize::from(*agg), *count));
    }
    for (i, agg, count) in additions {
        let window = rows[i].window;
        let p = rows[i].partials.get_mut(agg).ok_or_else(|| {
            StateError::Corrupt(format!(
                "a distinct count arrived for aggregate {agg} of window {window:?}, which has no such aggregate"
            ))
        })?;
        p.add_distinct(count).map_err(|source| StateError::Merge {
            what: format!("summing the distinct counts of window {window:?}"),
            source,
        })?;
    }
    rows.sort_by(|a, b| (a.window, &a.group).cmp(&(b.window, &b.group)));
    Ok(())
}

/// Runs by group: (group key, run).
type ByGroup<'v> = Vec<(&'v [u8], &'v [u8])>;

/// The (window, aggregate) of `key`, a distinct run's key, and each group's run in `value`,
/// its value: group runs, or a run of one group under a key of the layout of earlier versions.
fn operand_runs<'v>(
    key: &'v [u8],
    value: &'v [u8],
) -> Result<((Window, u8), ByGroup<'v>), StateError> {
    match keys::parse_key(key) {
        Some(StateKey::GroupRuns { window, agg }) => Ok((
            (window, agg),
            group_runs::iter(value)?
                .map(|r| r.map(|r| (r.group, r.run)))
                .collect::<Result<_, _>>()?,
        )),
        Some(StateKey::Run { window, agg, group }) => Ok(((window, agg), vec![(group, value)])),
        _ => Err(StateError::Corrupt("unparseable distinct run key".into())),
    }
}

/// How many different values `values` holds (it is left sorted).
fn count_unique(values: &mut Vec<&[u8]>) -> u64 {
    values.sort_unstable();
    values.dedup();
    values.len() as u64
}

/// What folding an epoch's partials wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Distinct values written (once each per epoch; the store may hold some of them already).
    pub distinct_written: u64,
    /// Group rows and distinct values written.
    pub rows_written: u64,
}

/// What update mode's fold produced.
pub struct CountedFold {
    /// The epoch's group rows merged with the store's, not written yet.
    pub rows: Vec<WindowRow>,
    /// Distinct values each of this store's shards gained, per (window, aggregate, group).
    pub gains: Vec<(ShardKey, i64)>,
    pub folded: Folded,
}

/// RocksDB-backed state of the key groups this executor owns.
pub struct StateStore {
    db: DB,
    path: String,
    key_groups: u32,
}

const LAST_EPOCH_KEY: &[u8] = b"\xFF\xFFlast_epoch";

/// The watermark under which the store's windows were last taken out: every window ending at
/// or before it is gone (deleted).
const CLOSED_THROUGH_KEY: &[u8] = b"\xFF\xFFclosed_through";

/// Keys from the first (inclusive) to the second (exclusive).
type KeyRange = (Vec<u8>, Vec<u8>);

/// Entries of one closing range deleted one by one; past them, the range is deleted whole.
const POINT_DELETES_PER_RANGE: usize = 1024;

/// What [`StateStore::take_ranges`] visits: an entry, or the end of a range once its entries
/// were visited.
enum Scanned<'a> {
    Entry { key: &'a [u8], value: &'a [u8] },
    RangeEnd,
}

/// A RocksDB write batch starts with its sequence number (8 bytes) and record count (4).
const WRITE_BATCH_HEADER: usize = 12;

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_merge_operator_associative(runs::MERGE_OPERATOR_NAME, runs::merge);
    // No Bloom filters: distinct values are written blind and read only by the scans that
    // close windows, so point lookups are the few group rows an epoch folds (one per window
    // and group), while every snapshot's flush and every compaction would hash each key into
    // a filter.
    opts
}

/// Removes a directory and what it holds; a missing one is fine.
pub fn remove_dir(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

impl StateStore {
    /// Opens the store at `path` as it is (an empty directory gives an empty store).
    pub fn open(path: &Path, key_groups: u32) -> Result<Self, StateError> {
        let db = DB::open(&options(), path).map_err(|source| StateError::Db {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            path: path.display().to_string(),
            key_groups,
        })
    }

    /// Opens an empty store at `path`, removing whatever was there.
    pub fn create_empty(path: &Path, key_groups: u32) -> Result<Self, StateError> {
        remove_dir(path)?;
        Self::open(path, key_groups)
    }

    /// Writes a RocksDB checkpoint of the store into `dir` (which must not exist): hard links
    /// to its SST files plus a fresh manifest, after flushing what is in memory.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StateError> {
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| self.err(e))
    }

    /// Copies the entries of key groups `range` from `source` into this store.
    pub fn copy_range_from(
        &self,
        source: &StateStore,
        range: Range<u32>,
    ) -> Result<(), StateError> {
        let lower = keys::kg_lower(range.start);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::kg_lower(range.end));
        let mut batch = WriteBatch::default();
        for item in source
            .db
            .iterator_opt(IteratorMode::From(&lower, Direction::Forward), ro)
        {
            let (key, value) = item.map_err(|e| source.err(e))?;
            batch.put(&key, &value);
            if batch.len() >= 10_000 {
                self.write(std::mem::take(&mut batch))?;
            }
        }
        self.write(batch)
    }

    /// Removes every entry of key groups `gone` (they moved to another executor).
    pub fn drop_key_groups(&self, gone: &KeyGroups) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for &(start, end) in gone.ranges() {
            batch.delete_range(keys::kg_lower(start), keys::kg_lower(end));
        }
        self.write(batch)
    }

    /// Applies an epoch's changelog (as `commit_epoch` answered it) to the store.
    pub fn replay(&self, changelog: &[u8]) -> Result<(), StateError> {
        // RocksDB reads the batch's own header, which holds its record count.
        if changelog.len() < WRITE_BATCH_HEADER {
            return Err(StateError::Corrupt(format!(
                "a changelog of {} bytes is shorter than its header",
                changelog.len()
            )));
        }
        self.write(WriteBatch::from_data(changelog))
    }

    /// Records which epoch the store holds (after a restore).
    pub fn set_position(&self, epoch: Option<u64>) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        match epoch {
            Some(e) => batch.put(LAST_EPOCH_KEY, e.to_be_bytes()),
            None => batch.delete(LAST_EPOCH_KEY),
        }
        self.write(batch)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StateError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    fn err(&self, source: rocksdb::Error) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The last epoch whose changes this store holds.
    pub fn last_epoch(&self) -> Result<Option<u64>, StateError> {
        let v = self.db.get(LAST_EPOCH_KEY).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| b.try_into().ok().map(u64::from_be_bytes)))
    }

    /// Adds window aggregate `op`'s partials of the key groups this store owns to `batch`,
    /// merging with what the store holds; a distinct value that came more than once counts
    /// once.
    pub fn fold(
        &self,
        op: u8,
        partials: Partials,
        batch: &mut WriteBatch,
    ) -> Result<Folded, StateError> {
        let Partials {
            groups, distinct, ..
        } = partials;
        let rows = self.merge_groups(op, groups)?;
        self.write_rows(op, &rows, batch)?;
        let mut folded = self.fold_distinct(distinct, batch, None)?;
        folded.rows_written += rows.len() as u64;
        Ok(folded)
    }

    /// Update mode's fold: merges the group rows with what the store holds but answers them
    /// instead of writing them (the distinct values their windows gained in every shard are
    /// still to be added: see [`Self::write_rows`]); merges the distinct values into `batch`
    /// and answers how many each of this store's shards gained. Unlike [`Self::fold`] it reads
    /// every run it adds to, which is what counting new values costs.
    pub fn fold_counting(
        &self,
        op: u8,
        partials: Partials,
        batch: &mut WriteBatch,
    ) -> Result<CountedFold, StateError> {
        let Partials {
            groups, distinct, ..
        } = partials;
        let rows = self.merge_groups(op, groups)?;
        let mut gains = Vec::new();
        let mut folded = self.fold_distinct(distinct, batch, Some(&mut gains))?;
        folded.rows_written += rows.len() as u64;
        Ok(CountedFold {
            rows,
            gains,
            folded,
        })
    }

    /// The epoch's group rows merged with what the store holds for them.
    fn merge_groups(
        &self,
        op: u8,
        groups: FastMap<(Window, Vec<u8>), Vec<Partial>>,
    ) -> Result<Vec<WindowRow>, StateError> {
        let mut rows = Vec::with_capacity(groups.len());
        for ((window, group), mut partials) in groups {
            let kg = key_group(&group, self.key_groups);
            let key = keys::group_key(op, kg, window, &group);
            if let Some(bytes) = self.db.get_pinned(&key).map_err(|e| self.err(e))? {
                let mut existing = decode_partials(&bytes)
                    .map_err(|e| StateError::Corrupt(format!("group row: {e}")))?;
                merge_all(&mut existing, &partials).map_err(|source| StateError::Merge {
                    what: format!("folding the partials of window {window:?}"),
                    source,
                })?;
                partials = existing;
            }
            rows.push(WindowRow {
                window,
                group,
                partials,
            });
        }
        Ok(rows)
    }

    /// Puts window aggregate `op`'s group rows into `batch`.
    pub fn write_rows(
        &self,
        op: u8,
        rows: &[WindowRow],
        batch: &mut WriteBatch,
    ) -> Result<(), StateError> {
        for row in rows {
            let kg = key_group(&row.group, self.key_groups);
            let value = encode_partials(&row.partials)
                .map_err(|e| StateError::Corrupt(format!("encoding group row: {e}")))?;
            batch.put(keys::group_key(op, kg, row.window, &row.group), value);
        }
        Ok(())
    }

    /// Merges the epoch's distinct values into `batch`; with `gains`, also counts how many of
    /// each run's values the store did not hold yet.
    fn fold_distinct(
        &self,
        mut distinct: Vec<DistinctRun>,
        batch: &mut WriteBatch,
        mut gains: Option<&mut Vec<(ShardKey, i64)>>,
    ) -> Result<Folded, StateError> {
        // Values arrive as runs, in byte order under their run keys: a run that came from one
        // sender is merged in as it came, blind (no read: RocksDB unions it with what the store
        // holds); the runs of one key from several senders are unioned first. Looking each
        // value up to count new ones cost more than reading, decoding and aggregating the
        // events; append mode leaves the counting to the window's close.
        distinct.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut written = 0u64;
        for same in distinct.chunk_by(|a, b| a.key == b.key) {
            let key = &same[0].key;
            let operand = match same {
                [one] => Cow::Borrowed(&one.run[..]),
                _ => Cow::Owned(runs::union_at(key, same.iter().map(|r| &r.run[..]))?),
            };
            let ((window, agg), by_group) = operand_runs(key, &operand)?;
            written += by_group
                .iter()
                .map(|(_, run)| runs::count(run).map(u64::from))
                .sum::<Result<u64, _>>()?;
            if let Some(gains) = gains.as_deref_mut() {
                for (group, gained) in self.count_new(key, &by_group)? {
                    gains.push(((window, agg, group.to_vec()), gained));
                }
            }
            batch.merge(key, operand);
        }
        Ok(Folded {
            distinct_written: written,
            rows_written: written,
        })
    }

    /// How many values of each group's run of `by_group` (an operand about to be merged at
    /// `key`) the store does not hold yet, for the groups that gain any: the store holds a
    /// (key group, window, aggregate)'s values in its group runs, and those a store of an
    /// earlier version wrote in runs of one group beside them (sorting just before).
    fn count_new<'g>(
        &self,
        key: &[u8],
        by_group: &[(&'g [u8], &[u8])],
    ) -> Result<Vec<(&'g [u8], i64)>, StateError> {
        let (lower, upper) = keys::runs_of_key_range(key)
            .ok_or_else(|| StateError::Corrupt("unparseable distinct run key".into()))?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let entries = self
            .db
            .iterator_opt(IteratorMode::From(&lower, Direction::Forward), ro)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        // A key group's value holds the runs of every group of its window and aggregate; only
        // the groups the operand brings values to are read.
        let wanted: HashSet<&[u8]> = by_group.iter().map(|(group, _)| *group).collect();
        let mut held: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
        for (key, value) in &entries {
            let (_, by_group) = operand_runs(key, value)?;
            for (group, run) in by_group {
                if wanted.contains(group) {
                    runs::values_into(run, held.entry(group).or_default())?;
                }
            }
        }
        let mut gains = Vec::new();
        for (group, run) in by_group {
            let mut values = Vec::new();
            runs::values_into(run, &mut values)?;
            let gained = match held.get_mut(group) {
                None => values.len(),
                Some(held) => {
                    held.sort_unstable();
                    values
                        .iter()
                        .filter(|v| held.binary_search(v).is_err())
                        .count()
                }
            };
            if gained > 0 {
                gains.push((*group, gained as i64));
            }
        }
        Ok(gains)
    }

    /// Reads every window of `key_groups` closed under `watermark` and adds their deletion to
    /// `batch`: the group rows this store owns, and the distinct values its shards hold for
    /// the groups' owners, counted (the owners sum the shards into their rows).
    pub fn take_closed(
        &self,
        op: u8,
        key_groups: Range<u32>,
        watermark: i64,
        windows: &WindowSpec,
        aggregates: usize,
        batch: &mut WriteBatch,
    ) -> Result<Closed, StateError> {
        let mut closed = Closed::default();
        let last_end = windows.last_end_at_or_before(watermark);
        let Some(ranges) = self.closing_ranges(key_groups, watermark, last_end)? else {
            return Ok(closed);
        };
        // Values that stores of earlier versions keep one key each or in runs of one group,
        // per (window, aggregate, group) of the key group being scanned: counted with the
        // group's run in the group runs of the same (window, aggregate) if there is one (they
        // sort after them), else on their own at the key group's end.
        let mut legacy: FastMap<ShardKey, Vec<Vec<u8>>> = FastMap::default();
        self.take_ranges(&ranges, batch, |scanned, _| {
            let (key, value) = match scanned {
                Scanned::Entry { key, value } => (key, value),
                Scanned::RangeEnd => {
                    for (shard, old) in legacy.drain() {
                        let mut values: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
                        let count = count_unique(&mut values);
                        closed.distinct_removed += count;
                        closed.shard_counts.push((shard, count as i64));
                    }
                    return Ok(());
                }
            };
            // Other operators' entries up to the watermark are theirs to read; their
            // deletion here ends them too, as their own closing under the same watermark does.
            if keys::operator_of(key) != Some(op) {
                return Ok(());
            }
            match keys::parse_key(key) {
                Some(StateKey::Group { window, group }) => {
                    let partials = decode_partials(value)
                        .map_err(|e| StateError::Corrupt(format!("group row: {e}")))?;
                    if partials.len() != aggregates {
                        return Err(StateError::Corrupt(format!(
                            "group row has {} aggregates, the job {aggregates}",
                            partials.len()
                        )));
                    }
                    closed.rows.push(WindowRow {
                        window,
                        group: group.to_vec(),
                        partials,
                    });
                }
                Some(StateKey::GroupRuns { window, agg }) => {
                    for run in group_runs::iter(value)? {
                        let run = run?;
                        let shard = (window, agg, run.group.to_vec());
                        // Stores of this version hold no values of the layouts before.
                        let old = match legacy.is_empty() {
                            true => None,
                            false => legacy.remove(&shard),
                        };
                        let count = match old {
                            None => u64::from(runs::count(run.run)?),
                            Some(old) => {
                                let mut values = Vec::new();
                                runs::values_into(run.run, &mut values)?;
                                values.extend(old.iter().map(Vec::as_slice));
                                count_unique(&mut values)
                            }
                        };
                        closed.distinct_removed += count;
                        closed.shard_counts.push((shard, count as i64));
                    }
                }
                // A run of one group (earlier versions): counted with the group's run in the
                // group runs after it, if any, else at the key group's end.
                Some(StateKey::Run { window, agg, group }) => {
                    let mut values = Vec::new();
                    runs::values_into(value, &mut values)?;
                    legacy
                        .entry((window, agg, group.to_vec()))
                        .or_default()
                        .extend(values.iter().map(|v| v.to_vec()));
                }
                Some(StateKey::Distinct {
                    window,
                    agg,
                    group,
                    value,
                }) => legacy
                    .entry((window, agg, group.to_vec()))
                    .or_default()
                    .push(value.to_vec()),
                // Counted again from the values above; deleted with the window.
                Some(StateKey::LegacyShardCount) => {}
                None => return Err(StateError::Corrupt("unparseable state key".into())),
            }
            Ok(())
        })?;
        batch.put(CLOSED_THROUGH_KEY, watermark.to_be_bytes());
        Ok(closed)
    }

    /// Visits the entries of `ranges` (in key order, ranges one after another in key order),
    /// each range's end after its entries, and adds the deletion of every entry visited to
    /// `batch`. One iterator seeks from range to range: opening one a range (128 key groups
    /// an executor of 2) cost about as much as reading the closed windows' entries, since
    /// each opening builds iterators over the memtable, its range deletions and every SST
    /// file.
    ///
    /// Each entry gets a deletion of its own, and a range holding more than
    /// [`POINT_DELETES_PER_RANGE`] entries (values of a store of an earlier version, one key
    /// each) one range deletion instead: range deletions stay in the memtable until it
    /// flushes, and each later iterator reads them all: one a key group at each closing
    /// made closing about four times as costly (docs/benchmarks.md), where a closing
    /// deletes a few keys a key group.
    fn take_ranges(
        &self,
        ranges: &[KeyRange],
        batch: &mut WriteBatch,
        mut visit: impl FnMut(Scanned<'_>, &mut WriteBatch) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let Some((_, last_upper)) = ranges.last() else {
            return Ok(());
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(last_upper.clone());
        let mut entries = self.db.raw_iterator_opt(ro);
        for range in ranges {
            let (lower, upper) = range;
            entries.seek(lower);
            let mut in_range = 0usize;
            while let (Some(key), Some(value)) = (entries.key(), entries.value()) {
                if key >= upper.as_slice() {
                    break;
                }
                if in_range < POINT_DELETES_PER_RANGE {
                    batch.delete(key);
                }
                in_range += 1;
                visit(Scanned::Entry { key, value }, batch)?;
                entries.next();
            }
            entries.status().map_err(|e| self.err(e))?;
            if in_range > POINT_DELETES_PER_RANGE {
                batch.delete_range(lower, upper);
            }
            visit(Scanned::RangeEnd, batch)?;
        }
        Ok(())
    }

    /// The part of each of `key_groups` that closing under `watermark` scans and deletes:
    /// from the first key an earlier closing left (windows taken by an earlier epoch are
    /// deleted, but their keys stay in the memtable until the next flush, and seeking past
    /// them again cost more than the count) up to the watermark. `None` when an earlier
    /// closing went as far; none when nothing can have ended since it: entries end only at
    /// or before `last_end` (the latest window end up to the watermark, or the watermark
    /// itself). A scan would then only seek onto the first key past each range, an open
    /// window's, and merging a large window's runs there every epoch cost more than the epoch.
    fn closing_ranges(
        &self,
        key_groups: Range<u32>,
        watermark: i64,
        last_end: i64,
    ) -> Result<Option<Vec<KeyRange>>, StateError> {
        let taken = self.closed_through()?;
        if taken.is_some_and(|t| t >= watermark) {
            return Ok(None);
        }
        if taken.is_some_and(|t| t >= last_end) {
            return Ok(Some(Vec::new()));
        }
        let ranges = key_groups.map(|kg| {
            let lower = match taken {
                Some(t) => keys::kg_closed_upper(kg, t),
                None => keys::kg_lower(kg),
            };
            (lower, keys::kg_closed_upper(kg, watermark))
        });
        Ok(Some(ranges.collect()))
    }

    /// The watermark the store's windows were last taken out under, when it knows it (a store
    /// built by copying key groups in does not).
    fn closed_through(&self) -> Result<Option<i64>, StateError> {
        let v = self.db.get(CLOSED_THROUGH_KEY).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| b.try_into().ok().map(i64::from_be_bytes)))
    }

    /// Applies an epoch's batch together with its marker, and answers the batch as bytes: the
    /// epoch's changelog, which `replay` applies to a store restored from the epoch before.
    pub fn commit_epoch(&self, epoch: u64, mut batch: WriteBatch) -> Result<Vec<u8>, StateError> {
        batch.put(LAST_EPOCH_KEY, epoch.to_be_bytes());
        let changelog = batch.data().to_vec();
        self.write(batch)?;
        Ok(changelog)
    }

    /// Every entry (key, value), in key order.
    #[cfg(test)]
    pub fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.db
            .iterator(IteratorMode::Start)
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    /// Estimated number of state entries.
    pub fn estimated_rows(&self) -> u64 {
        self.property("rocksdb.estimate-num-keys")
    }

    /// Memory the store holds: memtables and the block cache.
    pub fn memory_bytes(&self) -> u64 {
        self.property("rocksdb.cur-size-all-mem-tables")
            + self.property("rocksdb.block-cache-usage")
    }

    /// Size of the store's live SST files.
    pub fn disk_bytes(&self) -> u64 {
        self.property("rocksdb.live-sst-files-size")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windows of the tests: 300 long, one after another from 0.
    const TUMBLING: WindowSpec = WindowSpec {
        size: 300,
        slide: 300,
        start: 0,
    };

    /// An empty store of 8 key groups, in a directory removed when the first is dropped.
    fn empty_store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::create_empty(&dir.path().join("db"), 8).unwrap();
        (dir, store)
    }

    /// Distinct values of (w, aggregate 1, group "g"), each as if from a sender of its own: a
    /// value named twice arrives in two runs of one key.
    fn values(w: Window, names: &[&str]) -> Partials {
        let mut p = Partials::default();
        for v in names {
            p.distinct.extend(crate::aggregate::partials::distinct_runs(
                0,
                w,
                1,
                b"g",
                &[v.as_bytes()],
                8,
            ));
        }
        p
    }

    /// The keys an earlier version kept for values of (w, aggregate 1, group "g"), one each.
    fn legacy_keys(w: Window, names: &[&str]) -> Vec<Vec<u8>> {
        let shards = keys::ValueShards::new(w, 1, b"g", 8);
        names
            .iter()
            .map(|v| keys::distinct_key(shards.of(v.as_bytes()), w, 1, b"g", v.as_bytes()))
            .collect()
    }

    /// Closing reads and deletes the closed windows of the key groups asked for only, one
    /// key group after another: their open windows, and the windows of the key groups
    /// between and around them, stay for a later closing.
    #[test]
    fn closing_takes_the_closed_windows_of_the_key_groups_asked_for_only() {
        let (_dir, store) = empty_store();
        let (early, late) = (
            Window { start: 0, end: 300 },
            Window {
                start: 300,
                end: 600,
            },
        );
        let groups: Vec<Vec<u8>> = (0..64).map(|i| format!("g{i}").into_bytes()).collect();
        let rows: Vec<WindowRow> = [early, late]
            .into_iter()
            .flat_map(|window| {
                groups.iter().map(move |group| WindowRow {
                    window,
                    group: group.clone(),
                    partials: vec![Partial::Count(1)],
                })
            })
            .collect();
        let mut batch = WriteBatch::default();
        store.write_rows(0, &rows, &mut batch).unwrap();
        store.commit_epoch(0, batch).unwrap();
        // What `store` takes out of `key_groups` under `watermark`, as (window, group).
        let taken = |store: &StateStore, key_groups: Range<u32>, watermark: i64| {
            let mut batch = WriteBatch::default();
            let closed = store
                .take_closed(0, key_groups, watermark, &TUMBLING, 1, &mut batch)
                .unwrap();
            store.commit_epoch(1, batch).unwrap();
            let mut rows: Vec<(Window, Vec<u8>)> = closed
                .rows
                .into_iter()
                .map(|r| (r.window, r.group))
                .collect();
            rows.sort();
            rows
        };
        let expected = |windows: &[Window], key_groups: Range<u32>| {
            let mut rows: Vec<(Window, Vec<u8>)> = windows
                .iter()
                .flat_map(|w| groups.iter().map(move |g| (*w, g.clone())))
                .filter(|(_, g)| key_groups.contains(&key_group(g, 8)))
                .collect();
            rows.sort();
            rows
        };
        let owned = expected(&[early], 2..5);
        assert!(!owned.is_empty() && owned.len() < groups.len());
        assert_eq!(taken(&store, 2..5, 300), owned);
        // What the store kept: the early window of the other key groups, and the late window
        // of all. (Read from a copy, which does not know that the store closed through 300,
        // so closing it starts at each key group's first window.)
        let copy_dir = tempfile::tempdir().unwrap();
        let copy = StateStore::create_empty(&copy_dir.path().join("db"), 8).unwrap();
        copy.copy_range_from(&store, 0..8).unwrap();
        let mut rest = expected(&[early], 0..2);
        rest.extend(expected(&[early], 5..8));
        rest.extend(expected(&[late], 0..8));
        rest.sort();
        assert_eq!(taken(&copy, 0..8, 600), rest);
    }

    /// Update mode counts, per epoch, only the values a window did not hold yet, whether the
    /// run it joins is flushed to disk or still in the memtable.
    #[test]
    fn update_mode_counts_what_each_epoch_adds_to_a_window() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let gained = |names: &[&str], epoch: u64| {
            let mut batch = WriteBatch::default();
            let counted = store
                .fold_counting(0, values(w, names), &mut batch)
                .unwrap();
            store.commit_epoch(epoch, batch).unwrap();
            assert!(counted
                .gains
                .iter()
                .all(|((window, agg, group), _)| *window == w && *agg == 1 && group == b"g"));
            counted.gains.iter().map(|(_, n)| n).sum::<i64>()
        };
        assert_eq!(gained(&["u1", "u2", "u1", "u3", "u2"], 0), 3);
        store.db.flush().unwrap();
        assert_eq!(gained(&["u3", "u4", "u1", "u4"], 1), 1);
        assert_eq!(gained(&["u2", "u4"], 2), 0);
        assert_eq!(gained(&["u0", "u5", "u9"], 3), 3);
        // What the window closes with agrees with the gains' sum.
        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 300, &TUMBLING, 3, &mut batch)
            .unwrap();
        assert_eq!(closed.distinct_removed, 7);
    }

    /// Update mode counts a group's values against that group's own only, while a key group's
    /// value holds the runs of other groups too, and an epoch that brings values to one group
    /// gains nothing for the others.
    #[test]
    fn update_mode_counts_a_group_against_its_own_values_only() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let of = |group: &[u8], names: &[&str]| -> Vec<DistinctRun> {
            names
                .iter()
                .flat_map(|v| {
                    crate::aggregate::partials::distinct_runs(0, w, 1, group, &[v.as_bytes()], 8)
                })
                .collect()
        };
        let gains = |runs: Vec<DistinctRun>, epoch: u64| {
            let mut partials = Partials::default();
            partials.distinct.extend(runs);
            let mut batch = WriteBatch::default();
            let counted = store.fold_counting(0, partials, &mut batch).unwrap();
            store.commit_epoch(epoch, batch).unwrap();
            let mut by_group = std::collections::BTreeMap::new();
            for ((_, _, group), gained) in counted.gains {
                *by_group
                    .entry(String::from_utf8(group).unwrap())
                    .or_insert(0) += gained;
            }
            by_group
        };
        let names = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
        let first = gains([of(b"a", &names[..4]), of(b"b", &names[2..])].concat(), 0);
        assert_eq!(first, [("a".into(), 4), ("b".into(), 6)].into());
        // Group a again: two values it holds, two only group b holds, one new to both.
        let second = gains(of(b"a", &["u1", "u2", "u5", "u6", "u9"]), 1);
        assert_eq!(second, [("a".into(), 3)].into());
    }

    #[test]
    fn a_value_sent_twice_counts_once_and_closing_sums_the_shards() {
        let (dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let mut batch = WriteBatch::default();
        let folded = store
            .fold(0, values(w, &["u1", "u2", "u1", "u3", "u2"]), &mut batch)
            .unwrap();
        assert_eq!(folded.distinct_written, 3);
        store.commit_epoch(0, batch).unwrap();
        // The first epoch's run on disk, the second's in the memtable: unioned when read.
        store.db.flush().unwrap();
        let mut batch = WriteBatch::default();
        let folded = store
            .fold(0, values(w, &["u3", "u4", "u1", "u4"]), &mut batch)
            .unwrap();
        assert_eq!(folded.distinct_written, 3);
        store.commit_epoch(1, batch).unwrap();
        // Another window's values are not counted with this one's.
        let mut batch = WriteBatch::default();
        let later = Window {
            start: 300,
            end: 600,
        };
        store
            .fold(0, values(later, &["u9", "u1"]), &mut batch)
            .unwrap();
        store.commit_epoch(2, batch).unwrap();
        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 300, &TUMBLING, 3, &mut batch)
            .unwrap();
        let counted: i64 = closed.shard_counts.iter().map(|(_, c)| *c).sum();
        assert_eq!(counted, 4);
        assert_eq!(closed.distinct_removed, 4);
        // Only the closed window's (window, aggregate, group) is counted.
        assert!(closed
            .shard_counts
            .iter()
            .all(|((window, agg, group), _)| *window == w && *agg == 1 && group == b"g"));
        store.commit_epoch(3, batch).unwrap();

        // Under the same watermark again, nothing is left to take.
        let mut batch = WriteBatch::default();
        let again = store
            .take_closed(0, 0..8, 300, &TUMBLING, 3, &mut batch)
            .unwrap();
        assert_eq!((again.shard_counts.len(), again.distinct_removed), (0, 0));
        store.commit_epoch(4, batch).unwrap();
        // The next window is counted alone, though the first one's keys are still in the
        // memtable behind their deletions.
        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 900, &TUMBLING, 3, &mut batch)
            .unwrap();
        let counted: Vec<_> = closed
            .shard_counts
            .iter()
            .map(|((window, _, _), n)| (*window, *n))
            .collect();
        assert_eq!(counted.iter().map(|(_, n)| n).sum::<i64>(), 2);
        assert!(counted.iter().all(|(window, _)| *window == later));
        store.commit_epoch(5, batch).unwrap();
        let left: Vec<_> = store
            .entries()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(&crate::state::keys::META_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A store that does not know what was taken (key groups copied in) scans them whole.
        let copy = StateStore::create_empty(&dir.path().join("copy"), 8).unwrap();
        let mut batch = WriteBatch::default();
        copy.fold(0, values(w, &["u1", "u2"]), &mut batch).unwrap();
        copy.fold(0, values(later, &["u3"]), &mut batch).unwrap();
        copy.commit_epoch(0, batch).unwrap();
        let mut batch = WriteBatch::default();
        let closed = copy
            .take_closed(0, 0..8, 600, &TUMBLING, 3, &mut batch)
            .unwrap();
        assert_eq!(closed.distinct_removed, 3);
    }

    /// Distinct counts per window of `store`, all key groups, taken under `watermark`.
    fn counts(store: &StateStore, watermark: i64) -> Vec<(Window, i64)> {
        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, watermark, &TUMBLING, 3, &mut batch)
            .unwrap();
        let mut sums: Vec<(Window, i64)> = Vec::new();
        for ((window, _, _), n) in closed.shard_counts {
            match sums.iter_mut().find(|(w, _)| *w == window) {
                Some((_, sum)) => *sum += n,
                None => sums.push((window, n)),
            }
        }
        sums.sort();
        sums
    }

    #[test]
    fn runs_of_many_epochs_are_unioned_by_flushes_and_compactions() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        // 20 epochs of 50 users each out of 200, every one flushed (as a snapshot does), so
        // that compactions merge runs on disk as well.
        let mut expected = std::collections::BTreeSet::new();
        for epoch in 0..20u64 {
            let users: Vec<String> = (0..50)
                .map(|i| format!("user-{}", (epoch * 37 + i * 7) % 200))
                .collect();
            expected.extend(users.iter().cloned());
            let names: Vec<&str> = users.iter().map(String::as_str).collect();
            let mut batch = WriteBatch::default();
            store.fold(0, values(w, &names), &mut batch).unwrap();
            store.commit_epoch(epoch, batch).unwrap();
            store.db.flush().unwrap();
        }
        store.db.compact_range::<&[u8], &[u8]>(None, None);
        assert_eq!(counts(&store, 300), [(w, expected.len() as i64)]);
    }

    /// The runs of one group that an earlier version wrote for (window, aggregate 1, `group`):
    /// one a key group, as merge operands under their own keys.
    fn earlier_runs(batch: &mut WriteBatch, w: Window, group: &[u8], names: &[&str]) {
        let shards = keys::ValueShards::new(w, 1, group, 8);
        let mut by_kg: std::collections::BTreeMap<u32, Vec<&[u8]>> = Default::default();
        for v in names {
            by_kg
                .entry(shards.of(v.as_bytes()))
                .or_default()
                .push(v.as_bytes());
        }
        for (kg, mut values) in by_kg {
            values.sort();
            let mut run = runs::RunWriter::default();
            for v in values {
                run.push(v).unwrap();
            }
            batch.merge(keys::run_key(0, kg, w, 1, group), run.finish());
        }
    }

    /// A store of an earlier version holds runs of one group (and values one key each); this
    /// version's group runs join them: a window's count is each group's values once, whether
    /// they are in the runs of one group, the group runs or both, and update mode counts as
    /// new only what neither holds.
    #[test]
    fn runs_of_one_group_written_by_earlier_versions_are_counted_with_group_runs() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let later = Window {
            start: 300,
            end: 600,
        };
        let last = Window {
            start: 600,
            end: 900,
        };
        let mut batch = WriteBatch::default();
        earlier_runs(&mut batch, w, b"g", &["u1", "u2", "u3"]);
        earlier_runs(&mut batch, w, b"h", &["x1", "x2"]);
        earlier_runs(&mut batch, later, b"g", &["u7"]);
        // Values one key each: with runs of their group, and in a window of their own.
        for key in legacy_keys(w, &["u3", "u9"]) {
            batch.put(key, []);
        }
        for key in legacy_keys(last, &["u6", "u8"]) {
            batch.put(key, []);
        }
        store.commit_epoch(0, batch).unwrap();
        let mut batch = WriteBatch::default();
        let counted = store
            .fold_counting(0, values(w, &["u2", "u3", "u4", "u5"]), &mut batch)
            .unwrap();
        // u2 and u3 are in the runs of one group: u4 and u5 are new (u9, held one key each,
        // is not looked up by update mode, which stores of those versions did not run).
        let gained: i64 = counted.gains.iter().map(|(_, n)| n).sum();
        assert_eq!(gained, 2);
        store.commit_epoch(1, batch).unwrap();
        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 900, &TUMBLING, 3, &mut batch)
            .unwrap();
        let mut by_group: std::collections::BTreeMap<(Window, Vec<u8>), i64> = Default::default();
        for ((window, agg, group), n) in closed.shard_counts {
            assert_eq!(agg, 1);
            *by_group.entry((window, group)).or_default() += n;
        }
        let expected: std::collections::BTreeMap<(Window, Vec<u8>), i64> = [
            ((w, b"g".to_vec()), 6),
            ((w, b"h".to_vec()), 2),
            ((later, b"g".to_vec()), 1),
            ((last, b"g".to_vec()), 2),
        ]
        .into();
        assert_eq!(by_group, expected);
        assert_eq!(closed.distinct_removed, 11);
    }

    /// Closing deletes every entry it took: a key group's few keys one by one, and the
    /// values of a store of an earlier version (one key each, more than
    /// `POINT_DELETES_PER_RANGE` in a key group) with their range whole. The open window
    /// stays, and is counted alone when it closes.
    #[test]
    fn closing_deletes_what_it_took_however_many_keys_a_key_group_holds() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let open = Window {
            start: 300,
            end: 600,
        };
        let names: Vec<String> = (0..12_000).map(|i| format!("user-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut batch = WriteBatch::default();
        for key in legacy_keys(w, &names) {
            batch.put(key, []);
        }
        store.commit_epoch(0, batch).unwrap();
        let mut batch = WriteBatch::default();
        store
            .fold(0, values(w, &["new-1", "user-1"]), &mut batch)
            .unwrap();
        store
            .fold(0, values(open, &["user-1", "user-2"]), &mut batch)
            .unwrap();
        store.commit_epoch(1, batch).unwrap();
        let window_of = |key: &[u8]| match keys::parse_key(key) {
            Some(StateKey::Distinct { window, .. } | StateKey::GroupRuns { window, .. }) => {
                Some(window)
            }
            _ => None,
        };
        let per_kg = |window: Window| {
            let mut n = [0usize; 8];
            for (key, _) in store.entries() {
                if window_of(&key) == Some(window) {
                    n[keys::key_group_of(&key).unwrap() as usize] += 1;
                }
            }
            n
        };
        // The first closing deletes key groups past the bound, the second a few keys each.
        let before = per_kg(w);
        assert!(
            before.iter().all(|&n| n > POINT_DELETES_PER_RANGE),
            "{before:?}"
        );

        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 300, &TUMBLING, 3, &mut batch)
            .unwrap();
        assert_eq!(closed.distinct_removed, 12_001);
        store.commit_epoch(2, batch).unwrap();
        assert_eq!(per_kg(w), [0; 8]);
        assert_ne!(per_kg(open), [0; 8]);

        let mut batch = WriteBatch::default();
        let closed = store
            .take_closed(0, 0..8, 600, &TUMBLING, 3, &mut batch)
            .unwrap();
        assert_eq!(closed.distinct_removed, 2);
        store.commit_epoch(3, batch).unwrap();
        assert_eq!(per_kg(open), [0; 8]);
        let left: Vec<_> = store
            .entries()
            .into_iter()
            .filter(|(key, _)| !key.starts_with(b"\xFF\xFF"))
            .collect();
        assert!(left.is_empty(), "{} entries left", left.len());
    }

    /// A watermark that reached no window's end since the last closing closes nothing and
    /// reads nothing: not even the open window's runs (made unreadable here), which only the
    /// closing under their end reads.
    #[test]
    fn closing_reads_nothing_until_a_window_ends() {
        let (_dir, store) = empty_store();
        let (first, open) = (
            Window { start: 0, end: 300 },
            Window {
                start: 300,
                end: 600,
            },
        );
        for (epoch, w) in [(0, first), (1, open)] {
            let mut batch = WriteBatch::default();
            store.fold(0, values(w, &["u1", "u2"]), &mut batch).unwrap();
            store.commit_epoch(epoch, batch).unwrap();
        }
        let close = |watermark: i64, epoch: u64| {
            let mut batch = WriteBatch::default();
            let closed = store.take_closed(0, 0..8, watermark, &TUMBLING, 3, &mut batch);
            store.commit_epoch(epoch, batch).unwrap();
            closed.map(|c| c.shard_counts.len())
        };
        assert!(close(300, 2).unwrap() > 0);
        let mut batch = WriteBatch::default();
        for (key, _) in store.entries() {
            if keys::is_group_runs_key(&key)
                && keys::parse_key(&key).is_some_and(|k| {
                    k == StateKey::GroupRuns {
                        window: open,
                        agg: 1,
                    }
                })
            {
                batch.merge(&key, [1, 0, 0, 0, 9]);
            }
        }
        store.commit_epoch(3, batch).unwrap();
        assert_eq!(close(450, 4).unwrap(), 0);
        assert_eq!(close(599, 5).unwrap(), 0);
        assert!(close(600, 6).is_err());
    }

    #[test]
    fn a_corrupt_run_fails_the_read_instead_of_counting_wrong() {
        let (_dir, store) = empty_store();
        let w = Window { start: 0, end: 300 };
        let mut batch = WriteBatch::default();
        store.fold(0, values(w, &["u1"]), &mut batch).unwrap();
        store.commit_epoch(0, batch).unwrap();
        let (run_key, _) = store
            .entries()
            .into_iter()
            .find(|(k, _)| keys::is_group_runs_key(k))
            .unwrap();
        let mut batch = WriteBatch::default();
        batch.merge(&run_key, [1, 0, 0, 0, 9]);
        store.commit_epoch(1, batch).unwrap();
        let mut batch = WriteBatch::default();
        assert!(store
            .take_closed(0, 0..8, 300, &TUMBLING, 3, &mut batch)
            .is_err());
    }
}
