//! A dedup query's state (docs/architecture.md, State layout): each key this executor owns,
//! remembered until the watermark reaches its first event time plus `within`. An expiry
//! entry per key lets closing find what expires with the same scan up to the watermark that
//! closes windows; a lookup entry per key answers whether a key is remembered.

use std::ops::Range;

use rocksdb::WriteBatch;
use weir_common::query::keygroup::key_group;

use super::keys::{self, dedup_expiry_key, dedup_lookup_key};
use super::{Scanned, StateError, StateStore, CLOSED_THROUGH_KEY};

impl StateStore {
    /// Forgets dedup operator `op`'s keys of `key_groups` that expire at or before
    /// `watermark` (Spark evicts a key once the watermark reaches its expiry), adding their
    /// deletion to `batch`; answers how many. The entries deleted are every operator's
    /// up to the watermark: each operator of the plan closes under the same watermark in the
    /// same epoch, reading its own before the batch applies.
    pub fn take_expired(
        &self,
        op: u8,
        key_groups: Range<u32>,
        watermark: i64,
        batch: &mut WriteBatch,
    ) -> Result<u64, StateError> {
        // An expiry may be any time up to the watermark.
        let Some(ranges) = self.closing_ranges(key_groups, watermark, watermark)? else {
            return Ok(0);
        };
        let mut expired = 0;
        self.take_ranges(&ranges, batch, |scanned, batch| {
            match scanned {
                Scanned::Entry { key: entry, .. } if keys::operator_of(entry) == Some(op) => {
                    let (kg, key) = keys::parse_dedup_expiry(entry)
                        .ok_or_else(|| StateError::Corrupt("not a dedup expiry entry".into()))?;
                    batch.delete(dedup_lookup_key(op, kg, key));
                    expired += 1;
                }
                Scanned::Entry { .. } | Scanned::RangeEnd => {}
            }
            Ok(())
        })?;
        batch.put(CLOSED_THROUGH_KEY, watermark.to_be_bytes());
        Ok(expired)
    }

    /// Which of `keys` the store remembers under `watermark`: a key whose expiry the
    /// watermark has reached counts as forgotten even before this epoch's deletion of it is
    /// applied, as Spark evicts before the next batch reads.
    pub fn remembered(
        &self,
        op: u8,
        keys: &[&[u8]],
        watermark: i64,
    ) -> Result<Vec<bool>, StateError> {
        let lookups: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| dedup_lookup_key(op, key_group(key, self.key_groups), key))
            .collect();
        let mut answers = Vec::with_capacity(keys.len());
        for found in self.db.multi_get(&lookups) {
            let expiry = match found.map_err(|e| self.err(e))? {
                None => None,
                Some(value) => {
                    let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| {
                        StateError::Corrupt("a dedup lookup entry is not 8 bytes".into())
                    })?;
                    Some(i64::from_be_bytes(bytes))
                }
            };
            answers.push(expiry.is_some_and(|expiry| expiry > watermark));
        }
        Ok(answers)
    }

    /// Remembers `key` until `expiry`, in `batch`.
    pub fn remember(&self, op: u8, key: &[u8], expiry: i64, batch: &mut WriteBatch) {
        let kg = key_group(key, self.key_groups);
        batch.put(dedup_expiry_key(op, kg, expiry, key), []);
        batch.put(dedup_lookup_key(op, kg, key), expiry.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> StateStore {
        StateStore::create_empty(&dir.join("db"), 16).unwrap()
    }

    /// The keys the store holds, bookkeeping aside.
    fn entries_left(state: &StateStore) -> Vec<Vec<u8>> {
        state
            .entries()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with(&keys::META_PREFIX))
            .collect()
    }

    /// Spark's trace (StreamingDeduplicationWithinWatermarkSuite): `a` first at 17 s with a
    /// 2 s bound expires at 19; it is remembered under watermark 15 and forgotten under 20,
    /// which also deletes both its entries.
    #[test]
    fn a_key_is_remembered_until_the_watermark_reaches_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut batch = WriteBatch::default();
        state.remember(0, b"a", 19, &mut batch);
        state.remember(0, b"b", 24, &mut batch);
        state.commit_epoch(1, batch).unwrap();
        assert_eq!(
            state.remembered(0, &[b"a", b"b", b"c"], 15).unwrap(),
            [true, true, false]
        );
        // Reached, not yet deleted: already forgotten.
        assert_eq!(state.remembered(0, &[b"a"], 19).unwrap(), [false]);
        let mut batch = WriteBatch::default();
        assert_eq!(state.take_expired(0, 0..16, 20, &mut batch).unwrap(), 1);
        state.commit_epoch(2, batch).unwrap();
        let left = entries_left(&state);
        assert_eq!(left.len(), 2, "b's two entries stay");
        assert!(left.iter().all(|k| k.ends_with(b"b")));
        // A second closing under the same watermark scans nothing.
        let mut batch = WriteBatch::default();
        assert_eq!(state.take_expired(0, 0..16, 20, &mut batch).unwrap(), 0);
    }

    /// Two dedup operators share a store: each remembers and forgets its own keys, the same
    /// key included, when every operator closes under the epoch's watermark (as epochs do).
    #[test]
    fn operators_sharing_a_store_keep_their_keys_apart() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut batch = WriteBatch::default();
        state.remember(0, b"a", 24, &mut batch);
        state.remember(1, b"a", 19, &mut batch);
        state.commit_epoch(1, batch).unwrap();
        assert_eq!(state.remembered(0, &[b"a"], 15).unwrap(), [true]);
        assert_eq!(state.remembered(1, &[b"a"], 15).unwrap(), [true]);
        assert_eq!(state.remembered(2, &[b"a"], 15).unwrap(), [false]);
        let mut batch = WriteBatch::default();
        assert_eq!(state.take_expired(0, 0..16, 20, &mut batch).unwrap(), 0);
        assert_eq!(state.take_expired(1, 0..16, 20, &mut batch).unwrap(), 1);
        state.commit_epoch(2, batch).unwrap();
        assert_eq!(state.remembered(0, &[b"a"], 20).unwrap(), [true]);
        assert_eq!(state.remembered(1, &[b"a"], 0).unwrap(), [false]);
        let left = entries_left(&state);
        assert_eq!(left.len(), 2, "operator 0's two entries stay");
        assert!(left.iter().all(|k| keys::operator_of(k) == Some(0)));
    }
}
