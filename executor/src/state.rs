//! The window state store: RocksDB under the executor's state directory, written once per epoch
//! in one atomic batch (the epoch's folds, the emitted windows' deletion, the epoch marker).
//! The local store is a cache of the snapshots on the checkpoint store: it starts empty or
//! restored from them, and never needs its write-ahead log (each epoch ends in a snapshot).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use weir_common::aggregate::{decode_partials, encode_partials, Partial};
use weir_common::keygroup::key_group;
use weir_common::window::Window;

use crate::partials::{FastMap, Partials, ShardKey};
use crate::state_keys::{self as keys, StateKey};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("RocksDB at {path}: {source}")]
    Db {
        path: String,
        source: rocksdb::Error,
    },
    #[error("corrupt state entry: {0}")]
    Corrupt(String),
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A window whose watermark has passed: its group key and final partials.
pub struct ClosedRow {
    pub window: Window,
    pub group: Vec<u8>,
    pub partials: Vec<Partial>,
}

/// What closing windows takes out of the store.
#[derive(Default)]
pub struct Closed {
    /// Group rows of the closed windows, with their partials (distinct counts not yet added).
    pub rows: Vec<ClosedRow>,
    /// Distinct counts this store's shards hold for closed windows.
    pub shard_counts: Vec<(ShardKey, i64)>,
    /// Distinct values deleted with the closed windows.
    pub distinct_removed: u64,
}

/// Adds the shard counts of closed windows to their group rows and sorts the rows, so that
/// a replayed epoch stages identical files.
pub fn finish_closed_rows(
    rows: &mut [ClosedRow],
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
        if let Some(p) = rows[i].partials.get_mut(agg) {
            p.add_distinct(count);
        }
    }
    rows.sort_by(|a, b| (a.window, &a.group).cmp(&(b.window, &b.group)));
    Ok(())
}

/// What folding an epoch's partials wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Distinct values the store did not hold before.
    pub new_distinct: u64,
    /// Group rows, distinct values and shard counts written.
    pub rows_written: u64,
}

/// RocksDB-backed state of the key groups this executor owns.
pub struct StateStore {
    db: DB,
    path: String,
    key_groups: u32,
}

const LAST_EPOCH_KEY: &[u8] = b"\xFF\xFFlast_epoch";
const DISTINCT_ENTRIES_KEY: &[u8] = b"\xFF\xFFdistinct_entries";

/// Keys looked up per multi-get while folding.
const LOOKUP_SLICE: usize = 4096;

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Folding looks up every key of an epoch, most of them new; every epoch's snapshot flushes
    // a small SST, so without Bloom filters each miss reads every level-0 file.
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
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
        // Opened by its column family so that the handle multi-gets need is there.
        let opts = options();
        let cfs = [(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone())];
        let db = DB::open_cf_with_opts(&opts, path, cfs).map_err(|source| StateError::Db {
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

    /// Copies the entries of key groups `range` from the store at `source` into this one and
    /// answers how many exact-distinct entries came with them.
    pub fn copy_range_from(&self, source: &Path, range: Range<u32>) -> Result<u64, StateError> {
        let from = DB::open_for_read_only(&Options::default(), source, false).map_err(|e| {
            StateError::Db {
                path: source.display().to_string(),
                source: e,
            }
        })?;
        let lower = keys::kg_lower(range.start);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::kg_lower(range.end));
        let mut batch = WriteBatch::default();
        let mut distinct = 0;
        for item in from.iterator_opt(IteratorMode::From(&lower, Direction::Forward), ro) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if matches!(keys::parse_key(&key), Some(StateKey::Distinct)) {
                distinct += 1;
            }
            batch.put(&key, &value);
            if batch.len() >= 10_000 {
                self.write(std::mem::take(&mut batch))?;
            }
        }
        self.write(batch)?;
        Ok(distinct)
    }

    /// Records which epoch the store holds and its distinct-entry count (after a restore).
    pub fn set_position(
        &self,
        epoch: Option<u64>,
        distinct_entries: u64,
    ) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        match epoch {
            Some(e) => batch.put(LAST_EPOCH_KEY, e.to_be_bytes()),
            None => batch.delete(LAST_EPOCH_KEY),
        }
        batch.put(
            DISTINCT_ENTRIES_KEY,
            (distinct_entries as i64).to_be_bytes(),
        );
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

    /// Exact-distinct entries the store holds.
    pub fn distinct_entries(&self) -> Result<u64, StateError> {
        let v = self.db.get(DISTINCT_ENTRIES_KEY).map_err(|e| self.err(e))?;
        match v {
            Some(b) => Ok(read_count(&b)?.max(0) as u64),
            None => Ok(0),
        }
    }

    /// Adds the partials of the key groups this store owns to `batch`, merging with what the
    /// store holds; a distinct value that came more than once counts once.
    pub fn fold(&self, partials: Partials, batch: &mut WriteBatch) -> Result<Folded, StateError> {
        let Partials {
            groups, distinct, ..
        } = partials;
        let mut folded = Folded {
            rows_written: groups.len() as u64,
            ..Folded::default()
        };
        for ((window, group), partials) in &groups {
            let kg = key_group(group, self.key_groups);
            let key = keys::group_key(kg, *window, group);
            let merged = match self.db.get_pinned(&key).map_err(|e| self.err(e))? {
                Some(bytes) => {
                    let mut existing = decode_partials(&bytes)
                        .map_err(|e| StateError::Corrupt(format!("group row: {e}")))?;
                    for (a, b) in existing.iter_mut().zip(partials) {
                        a.merge(b);
                    }
                    existing
                }
                None => partials.clone(),
            };
            let value = encode_partials(&merged)
                .map_err(|e| StateError::Corrupt(format!("encoding group row: {e}")))?;
            batch.put(&key, value);
        }
        // Entries are their state keys: sorted, they are deduplicated and looked up in slices
        // with one multi-get each (RocksDB probes each filter and block once per slice, not
        // once per key), and the batch's keys reach the memtable in order.
        let mut distinct_keys = distinct;
        distinct_keys.sort_unstable();
        distinct_keys.dedup();
        folded.rows_written += distinct_keys.len() as u64;
        // Sorted, so that the shard counts too are looked up and written in key order.
        let mut new_per_shard: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for slice in distinct_keys.chunks(LOOKUP_SLICE) {
            let present = self.get_many(slice.iter().map(Vec::as_slice))?;
            for (key, value) in slice.iter().zip(present) {
                if value.is_none() {
                    batch.put(key, []);
                    folded.new_distinct += 1;
                    let shard = keys::shard_count_key_of(key).ok_or_else(|| {
                        StateError::Corrupt("a distinct key without its shard".into())
                    })?;
                    *new_per_shard.entry(shard).or_default() += 1;
                }
            }
        }
        drop(distinct_keys);
        let shards: Vec<(Vec<u8>, i64)> = new_per_shard.into_iter().collect();
        folded.rows_written += shards.len() as u64;
        for slice in shards.chunks(LOOKUP_SLICE) {
            let current = self.get_many(slice.iter().map(|(key, _)| key.as_slice()))?;
            for ((key, added), current) in slice.iter().zip(current) {
                let current = match current {
                    Some(b) => read_count(&b)?,
                    None => 0,
                };
                batch.put(key, (current + added).to_be_bytes());
            }
        }
        Ok(folded)
    }

    /// The values of sorted `keys`, in their order.
    fn get_many<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| StateError::Corrupt("the default column family is missing".into()))?;
        self.db
            .batched_multi_get_cf(cf, keys, true)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(|e| self.err(e)))
            .collect()
    }

    /// Reads every window of `key_groups` closed under `watermark` and adds their deletion to
    /// `batch`: the group rows this store owns, and the shard counts it holds for the groups'
    /// owners (who sum them into their rows).
    pub fn take_closed(
        &self,
        key_groups: Range<u32>,
        watermark: i64,
        aggregates: usize,
        batch: &mut WriteBatch,
    ) -> Result<Closed, StateError> {
        let mut closed = Closed::default();
        for kg in key_groups {
            let lower = keys::kg_lower(kg);
            let upper = keys::kg_closed_upper(kg, watermark);
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(upper.clone());
            let iter = self
                .db
                .iterator_opt(IteratorMode::From(&lower, Direction::Forward), ro);
            for item in iter {
                let (key, value) = item.map_err(|e| self.err(e))?;
                match keys::parse_key(&key) {
                    Some(StateKey::Group { window, group }) => {
                        let partials = decode_partials(&value)
                            .map_err(|e| StateError::Corrupt(format!("group row: {e}")))?;
                        if partials.len() != aggregates {
                            return Err(StateError::Corrupt(format!(
                                "group row has {} aggregates, the job {aggregates}",
                                partials.len()
                            )));
                        }
                        closed.rows.push(ClosedRow {
                            window,
                            group: group.to_vec(),
                            partials,
                        });
                    }
                    Some(StateKey::ShardCount { window, agg, group }) => {
                        closed
                            .shard_counts
                            .push(((window, agg, group.to_vec()), read_count(&value)?));
                    }
                    Some(StateKey::Distinct) => closed.distinct_removed += 1,
                    None => return Err(StateError::Corrupt("unparseable state key".into())),
                }
            }
            batch.delete_range(&lower, &upper);
        }
        Ok(closed)
    }

    /// Applies an epoch's batch together with its marker and the new distinct-entry count.
    pub fn commit_epoch(
        &self,
        epoch: u64,
        mut batch: WriteBatch,
        distinct_entries: u64,
    ) -> Result<(), StateError> {
        batch.put(LAST_EPOCH_KEY, epoch.to_be_bytes());
        batch.put(
            DISTINCT_ENTRIES_KEY,
            (distinct_entries as i64).to_be_bytes(),
        );
        self.write(batch)
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

fn read_count(bytes: &[u8]) -> Result<i64, StateError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StateError::Corrupt("shard count is not 8 bytes".into()))?;
    Ok(i64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(w: Window, names: &[&str]) -> Partials {
        let mut p = Partials::default();
        for v in names {
            p.distinct
                .push(crate::partials::distinct_entry(w, 1, b"g", v.as_bytes(), 8));
        }
        p
    }

    #[test]
    fn a_value_sent_twice_counts_once_and_closing_sums_the_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::create_empty(&dir.path().join("db"), 8).unwrap();
        let w = Window { start: 0, end: 300 };
        let mut batch = WriteBatch::default();
        let folded = store
            .fold(values(w, &["u1", "u2", "u1", "u3", "u2"]), &mut batch)
            .unwrap();
        assert_eq!(folded.new_distinct, 3);
        store.commit_epoch(0, batch, 3).unwrap();
        let mut batch = WriteBatch::default();
        let folded = store
            .fold(values(w, &["u3", "u4", "u1", "u4"]), &mut batch)
            .unwrap();
        assert_eq!(folded.new_distinct, 1);
        store.commit_epoch(1, batch, 4).unwrap();
        assert_eq!(store.distinct_entries().unwrap(), 4);
        let mut batch = WriteBatch::default();
        let closed = store.take_closed(0..8, 300, 3, &mut batch).unwrap();
        let counted: i64 = closed.shard_counts.iter().map(|(_, c)| *c).sum();
        assert_eq!(counted, 4);
        assert_eq!(closed.distinct_removed, 4);
    }
}
