//! Restores an executor's store from the decision an epoch starts from (docs/architecture.md,
//! Recovery): the snapshots of every owner of that decision that overlap the key groups this
//! executor owns now. When one snapshot covers exactly those key groups it becomes the store as it
//! is; otherwise (key groups moved) the overlapping ranges are copied out of each snapshot.

use std::path::Path;

use anyhow::{bail, Context};
use weir_common::checkpoint::{CommitRecord, StateFile};
use weir_storage::Location;

use crate::state::snapshot;
use crate::state::{remove_dir, StateStore};

/// A restored store and the snapshot files it was opened from (shared with later snapshots);
/// `None` when it was built from parts of snapshots, which no files describe.
pub struct Restored {
    pub store: StateStore,
    pub inherited: Option<Vec<StateFile>>,
}

/// Builds, in `dir`, the store of key groups `range` as of `decision` (an empty store before
/// the first decision).
pub async fn restore(
    location: &Location,
    decision: Option<&CommitRecord>,
    range: (u32, u32),
    dir: &Path,
    key_groups: u32,
) -> anyhow::Result<Restored> {
    let Some(record) = decision else {
        return Ok(Restored {
            store: StateStore::create_empty(dir, key_groups)?,
            inherited: Some(Vec::new()),
        });
    };
    let epoch = record.epoch;
    let sources: Vec<_> = record.state.iter().filter(|s| s.overlaps(range)).collect();
    let covered: u32 = sources
        .iter()
        .map(|s| s.key_groups.1.min(range.1) - s.key_groups.0.max(range.0))
        .sum();
    if covered != range.1 - range.0 {
        bail!(
            "the decision of epoch {epoch} has state for {covered} of key groups {}..{}; \
             the checkpoint is incomplete",
            range.0,
            range.1
        );
    }
    if let [only] = sources.as_slice() {
        if only.key_groups == range {
            let store = snapshot::open(location, only, dir, key_groups)
                .await
                .with_context(|| format!("restoring {}'s state snapshot", only.executor_id))?;
            let at = store.last_epoch()?;
            if at != Some(epoch) {
                bail!(
                    "the snapshot of {} for epoch {epoch} holds epoch {at:?}",
                    only.executor_id
                );
            }
            return Ok(Restored {
                store,
                inherited: Some(only.files.clone()),
            });
        }
    }
    let store = StateStore::create_empty(dir, key_groups)?;
    for (i, source) in sources.iter().enumerate() {
        let from = dir.with_extension(format!("source-{i}"));
        let source_store = snapshot::open(location, source, &from, key_groups)
            .await
            .with_context(|| format!("restoring {}'s state snapshot", source.executor_id))?;
        let part = source.key_groups.0.max(range.0)..source.key_groups.1.min(range.1);
        tokio::task::block_in_place(|| store.copy_range_from(&source_store, part)).with_context(
            || format!("copying key groups from {}'s snapshot", source.executor_id),
        )?;
        drop(source_store);
        remove_dir(&from)?;
    }
    store.set_position(Some(epoch))?;
    Ok(Restored {
        store,
        inherited: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::partials::{distinct_entry, distinct_key_group, Partials};
    use crate::state::keys::kg_lower;
    use crate::state::snapshot::Snapshots;
    use std::collections::BTreeMap;
    use weir_common::window::Window;

    const K: u32 = 8;

    /// The distinct values `store` holds in the window that closes at 300.
    fn distinct_values(store: &StateStore) -> u64 {
        let mut batch = rocksdb::WriteBatch::default();
        let closed = store.take_closed(0..K, 300, 1, &mut batch).unwrap();
        let counted: i64 = closed.shard_counts.iter().map(|(_, c)| *c).sum();
        assert_eq!(counted as u64, closed.distinct_removed);
        closed.distinct_removed
    }

    /// A store with 200 distinct values spread over all key groups, snapshotted after epoch 3.
    async fn decided_store(location: &Location, dir: &Path) -> (CommitRecord, BTreeMap<u32, u64>) {
        let store = StateStore::create_empty(&dir.join("live"), K).unwrap();
        let mut partials = Partials::default();
        let w = Window { start: 0, end: 300 };
        let mut per_kg: BTreeMap<u32, u64> = BTreeMap::new();
        for i in 0..200u32 {
            let entry = distinct_entry(w, 1, b"g", &i.to_be_bytes(), K);
            *per_kg.entry(distinct_key_group(&entry)).or_default() += 1;
            partials.distinct.push(entry);
        }
        let mut batch = rocksdb::WriteBatch::default();
        store.fold(partials, &mut batch).unwrap();
        let changelog = store.commit_epoch(3, batch).unwrap();
        let mut snapshots = Snapshots::new(location.clone(), "a");
        let snapshot = snapshots
            .take(3, changelog, &store, &dir.join("scratch"), (0, K))
            .await
            .unwrap();
        let record = CommitRecord {
            epoch: 3,
            state: vec![snapshot],
            ..Default::default()
        };
        (record, per_kg)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_owner_gets_exactly_its_key_groups_from_the_decision() {
        let tmp = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(tmp.path().join("checkpoint")).unwrap();
        let location = weir_storage::open(url.as_str(), &BTreeMap::new()).unwrap();
        let (record, per_kg) = decided_store(&location, tmp.path()).await;

        // The same key groups: the snapshot becomes the store, sharing its files.
        let whole = restore(&location, Some(&record), (0, K), &tmp.path().join("r1"), K)
            .await
            .unwrap();
        assert_eq!(whole.store.last_epoch().unwrap(), Some(3));
        assert_eq!(distinct_values(&whole.store), 200);
        assert_eq!(whole.inherited.as_ref(), Some(&record.state[0].files));

        // Part of them (executors were added): only those entries are copied.
        let part = restore(&location, Some(&record), (2, 5), &tmp.path().join("r2"), K)
            .await
            .unwrap();
        let expected: u64 = (2..5).map(|kg| per_kg.get(&kg).copied().unwrap_or(0)).sum();
        assert!(expected > 0 && expected < 200);
        assert_eq!(part.store.last_epoch().unwrap(), Some(3));
        assert_eq!(distinct_values(&part.store), expected);
        assert!(part.inherited.is_none());

        // Before any decision the store is empty; a decision without the key groups is refused.
        let empty = restore(&location, None, (0, K), &tmp.path().join("r3"), K)
            .await
            .unwrap();
        assert_eq!(empty.store.last_epoch().unwrap(), None);
        let mut partial_record = record.clone();
        partial_record.state[0].key_groups = (0, 4);
        let err = restore(
            &location,
            Some(&partial_record),
            (2, 6),
            &tmp.path().join("r4"),
            K,
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("incomplete"), "{err:#}");
    }

    /// Epoch `e`'s changes: distinct values and a group row in the windows ending at 300 and
    /// 600, and from epoch 4 on the first window closed (a range deletion per key group).
    fn epoch_batch(store: &StateStore, e: u64) -> rocksdb::WriteBatch {
        let mut batch = rocksdb::WriteBatch::default();
        let mut partials = Partials::default();
        for end in [300, 600] {
            let w = Window {
                start: end - 300,
                end,
            };
            if e >= 4 && end == 300 {
                continue;
            }
            for i in 0..400 * (e as u32 + 1) {
                partials.distinct.push(distinct_entry(
                    w,
                    1,
                    b"g",
                    &(i * 7 + e as u32).to_be_bytes(),
                    K,
                ));
            }
            partials.groups.insert(
                (w, b"g".to_vec()),
                vec![weir_common::aggregate::Partial::Count(e as i64 + 1)],
            );
        }
        if e == 4 {
            store.take_closed(0..K, 300, 1, &mut batch).unwrap();
        }
        store.fold(partials, &mut batch).unwrap();
        batch
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_snapshot_base_or_changelog_restores_the_store_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(tmp.path().join("checkpoint")).unwrap();
        let location = weir_storage::open(url.as_str(), &BTreeMap::new()).unwrap();
        let store = StateStore::create_empty(&tmp.path().join("live"), K).unwrap();
        let mut snapshots = Snapshots::new(location.clone(), "a");
        // Changelogs may grow to the base's size: some epochs upload a base, most not.
        snapshots.set_min_changelog_bytes(0);
        let mut bases = 0;
        for e in 0..8u64 {
            let batch = epoch_batch(&store, e);
            let changelog = store.commit_epoch(e, batch).unwrap();
            let snapshot = snapshots
                .take(e, changelog, &store, &tmp.path().join("scratch"), (0, K))
                .await
                .unwrap();
            let changelogs = snapshot
                .files
                .iter()
                .filter(|f| snapshot::is_changelog(&f.name))
                .count();
            if changelogs == 0 {
                bases += 1;
            }
            let record = CommitRecord {
                epoch: e,
                state: vec![snapshot],
                ..Default::default()
            };
            let dir = tmp.path().join(format!("restored-{e}"));
            let restored = restore(&location, Some(&record), (0, K), &dir, K)
                .await
                .unwrap();
            assert_eq!(restored.store.entries(), store.entries(), "epoch {e}");
            // A store built from part of the snapshot holds those key groups as they were,
            // and its first snapshot is a base (no changelog describes what was copied).
            let dir = tmp.path().join(format!("part-{e}"));
            let part = restore(&location, Some(&record), (2, 6), &dir, K)
                .await
                .unwrap();
            let (lower, upper) = (kg_lower(2), kg_lower(6));
            let expected: Vec<_> = store
                .entries()
                .into_iter()
                .filter(|(k, _)| k[..] >= lower[..] && k[..] < upper[..])
                .collect();
            let held: Vec<_> = part
                .store
                .entries()
                .into_iter()
                .filter(|(k, _)| k[..] < kg_lower(K)[..])
                .collect();
            assert_eq!(held, expected, "epoch {e}, key groups 2..6");
            let mut from_part = Snapshots::new(location.clone(), "b");
            from_part.start_instance(crate::state::snapshot::new_instance_id(), None);
            from_part.set_min_changelog_bytes(u64::MAX);
            let batch = rocksdb::WriteBatch::default();
            let changelog = part.store.commit_epoch(e + 1, batch).unwrap();
            let next = from_part
                .take(
                    e + 1,
                    changelog,
                    &part.store,
                    &tmp.path().join("scratch-b"),
                    (2, 6),
                )
                .await
                .unwrap();
            assert!(next.files.iter().all(|f| !snapshot::is_changelog(&f.name)));
            assert!(next.files.iter().any(|f| f.name.ends_with(".sst")));
        }
        // The sizes chosen make both kinds: bases, and snapshots with changelogs.
        assert!((2..8).contains(&bases), "{bases} bases in 8 epochs");
    }
}
