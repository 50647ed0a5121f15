//! Restores an executor's store from the decision an epoch starts from (docs/architecture.md,
//! Recovery and Rescaling): the snapshots of every owner of that decision that overlap the key
//! groups this executor owns now. When one snapshot covers exactly those key groups it becomes
//! the store as it is; otherwise (key groups moved) the overlapping ranges are copied out of each
//! snapshot. An executor whose store is in place and only gains key groups copies just those in.

use std::path::Path;

use anyhow::{bail, Context};
use weir_common::checkpoint::{CommitRecord, StateFile, StateSnapshot};
use weir_common::query::keygroup::KeyGroups;
use weir_storage::Location;

use crate::state::snapshot;
use crate::state::{remove_dir, StateStore};

/// A restored store and the snapshot files it was opened from (shared with later snapshots);
/// `None` when it was built from parts of snapshots, which no files describe.
pub struct Restored {
    pub store: StateStore,
    pub inherited: Option<Vec<StateFile>>,
    /// Bytes of the snapshots read to build it.
    pub bytes: u64,
}

/// Builds, in `dir`, the store of key groups `owned` as of `decision` (an empty store before
/// the first decision).
pub async fn restore(
    location: &Location,
    decision: Option<&CommitRecord>,
    owned: &KeyGroups,
    dir: &Path,
    key_groups: u32,
) -> anyhow::Result<Restored> {
    let Some(record) = decision else {
        return Ok(Restored {
            store: StateStore::create_empty(dir, key_groups)?,
            inherited: Some(Vec::new()),
            bytes: 0,
        });
    };
    let epoch = record.epoch;
    let sources = sources(record, owned)?;
    if let [only] = sources.as_slice() {
        if only.key_groups == *owned {
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
                bytes: only.bytes(),
            });
        }
    }
    let store = StateStore::create_empty(dir, key_groups)?;
    let bytes = copy_in(location, &sources, owned, &store, dir, key_groups).await?;
    store.set_position(Some(epoch))?;
    Ok(Restored {
        store,
        inherited: None,
        bytes,
    })
}

/// Copies key groups `gained` as of `decision` into `store`, which holds the decision's state of
/// the others it owns; `scratch` is a path for the snapshots read. Answers the bytes read.
pub async fn take_over(
    location: &Location,
    decision: &CommitRecord,
    gained: &KeyGroups,
    store: &StateStore,
    scratch: &Path,
    key_groups: u32,
) -> anyhow::Result<u64> {
    let sources = sources(decision, gained)?;
    copy_in(location, &sources, gained, store, scratch, key_groups).await
}

/// The snapshots of `record` that hold part of `wanted`; an error unless together they hold all
/// of it.
fn sources<'a>(
    record: &'a CommitRecord,
    wanted: &KeyGroups,
) -> anyhow::Result<Vec<&'a StateSnapshot>> {
    let sources: Vec<_> = record.state.iter().filter(|s| s.overlaps(wanted)).collect();
    let covered = sources
        .iter()
        .fold(KeyGroups::default(), |all, s| {
            all.union(&s.key_groups.intersection(wanted))
        })
        .count();
    if covered != wanted.count() {
        bail!(
            "the decision of epoch {} has state for {covered} of key groups {wanted}; \
             the checkpoint is incomplete",
            record.epoch
        );
    }
    Ok(sources)
}

/// Copies the part of `wanted` each of `sources` holds into `store`, opening each snapshot
/// beside `dir`. Answers the bytes of the snapshots read.
async fn copy_in(
    location: &Location,
    sources: &[&StateSnapshot],
    wanted: &KeyGroups,
    store: &StateStore,
    dir: &Path,
    key_groups: u32,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for (i, source) in sources.iter().enumerate() {
        let from = dir.with_extension(format!("source-{i}"));
        let source_store = snapshot::open(location, source, &from, key_groups)
            .await
            .with_context(|| format!("restoring {}'s state snapshot", source.executor_id))?;
        bytes += source.bytes();
        for &(start, end) in source.key_groups.intersection(wanted).ranges() {
            tokio::task::block_in_place(|| store.copy_range_from(&source_store, start..end))
                .with_context(|| {
                    format!("copying key groups from {}'s snapshot", source.executor_id)
                })?;
        }
        drop(source_store);
        remove_dir(&from)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::partials::{distinct_runs, Partials};
    use crate::state::keys::kg_lower;
    use crate::state::keys::ValueShards;
    use crate::state::snapshot::Snapshots;
    use std::collections::BTreeMap;
    use weir_common::query::window::Window;

    const K: u32 = 8;

    /// Takes the window that closes at 300 (of windows 300 long) out of `store`, in `batch`.
    fn take_first_window(
        store: &StateStore,
        batch: &mut rocksdb::WriteBatch,
    ) -> crate::state::Closed {
        let windows = weir_common::query::window::WindowSpec::tumbling(300);
        store.take_closed(0, 0..K, 300, &windows, 1, batch).unwrap()
    }

    /// The distinct values `store` holds in the window that closes at 300.
    fn distinct_values(store: &StateStore) -> u64 {
        let mut batch = rocksdb::WriteBatch::default();
        let closed = take_first_window(store, &mut batch);
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
        let values: Vec<[u8; 4]> = (0..200u32).map(u32::to_be_bytes).collect();
        let shards = ValueShards::new(w, 1, b"g", K);
        for v in &values {
            *per_kg.entry(shards.of(v)).or_default() += 1;
        }
        let values: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        partials.distinct = distinct_runs(0, w, 1, b"g", &values, K);
        let mut batch = rocksdb::WriteBatch::default();
        store.fold(0, partials, &mut batch).unwrap();
        let changelog = store.commit_epoch(3, batch).unwrap();
        let mut snapshots = Snapshots::new(location.clone(), "a");
        let snapshot = snapshots
            .take(
                3,
                changelog,
                &store,
                &dir.join("scratch"),
                &KeyGroups::range(0, K),
            )
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
        let whole = restore(
            &location,
            Some(&record),
            &KeyGroups::range(0, K),
            &tmp.path().join("r1"),
            K,
        )
        .await
        .unwrap();
        assert_eq!(whole.store.last_epoch().unwrap(), Some(3));
        assert_eq!(distinct_values(&whole.store), 200);
        assert_eq!(whole.inherited.as_ref(), Some(&record.state[0].files));

        // Part of them (executors were added): only those entries are copied.
        let part = restore(
            &location,
            Some(&record),
            &KeyGroups::range(2, 5),
            &tmp.path().join("r2"),
            K,
        )
        .await
        .unwrap();
        let expected: u64 = (2..5).map(|kg| per_kg.get(&kg).copied().unwrap_or(0)).sum();
        assert!(expected > 0 && expected < 200);
        assert_eq!(part.store.last_epoch().unwrap(), Some(3));
        assert_eq!(distinct_values(&part.store), expected);
        assert!(part.inherited.is_none());

        // Before any decision the store is empty; a decision without the key groups is refused.
        let empty = restore(
            &location,
            None,
            &KeyGroups::range(0, K),
            &tmp.path().join("r3"),
            K,
        )
        .await
        .unwrap();
        assert_eq!(empty.store.last_epoch().unwrap(), None);
        let mut partial_record = record.clone();
        partial_record.state[0].key_groups = KeyGroups::range(0, 4);
        let err = restore(
            &location,
            Some(&partial_record),
            &KeyGroups::range(2, 6),
            &tmp.path().join("r4"),
            K,
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("incomplete"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_store_gains_and_loses_only_the_key_groups_that_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(tmp.path().join("checkpoint")).unwrap();
        let location = weir_storage::open(url.as_str(), &BTreeMap::new()).unwrap();
        let (record, per_kg) = decided_store(&location, tmp.path()).await;
        let values = |groups: &KeyGroups| -> u64 {
            groups
                .groups()
                .map(|kg| per_kg.get(&kg).copied().unwrap_or(0))
                .sum()
        };
        // The store of key groups 0..4 as of the decision.
        let had = KeyGroups::range(0, 4);
        let kept = restore(&location, Some(&record), &had, &tmp.path().join("kept"), K)
            .await
            .unwrap();
        assert_eq!(distinct_values(&kept.store), values(&had));
        // Now it owns 2..3 and 5..7: 0..2 and 3..4 moved away, 5..7 moved here.
        let now = KeyGroups::from_ranges([(2, 3), (5, 7)]);
        kept.store.drop_key_groups(&had.difference(&now)).unwrap();
        let gained = now.difference(&had);
        let read = take_over(
            &location,
            &record,
            &gained,
            &kept.store,
            &tmp.path().join("scratch"),
            K,
        )
        .await
        .unwrap();
        assert_eq!(read, record.state[0].bytes());
        assert!(values(&now) > 0);
        assert_eq!(distinct_values(&kept.store), values(&now));
        assert_eq!(
            kept.store.last_epoch().unwrap(),
            Some(3),
            "still the decision's state"
        );
        // Key groups no snapshot of the decision holds are refused.
        let mut partial = record.clone();
        partial.state[0].key_groups = KeyGroups::range(0, 6);
        let err = take_over(
            &location,
            &partial,
            &KeyGroups::range(5, 7),
            &kept.store,
            &tmp.path().join("scratch2"),
            K,
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("incomplete"), "{err:#}");
    }

    /// Epoch `e`'s changes: distinct values and a group row in the windows ending at 300 and
    /// 600, and from epoch 4 on the first window closed (its keys deleted).
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
            let values: Vec<[u8; 4]> = (0..400 * (e as u32 + 1))
                .map(|i| (i * 7 + e as u32).to_be_bytes())
                .collect();
            let values: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
            partials
                .distinct
                .extend(distinct_runs(0, w, 1, b"g", &values, K));
            partials.groups.insert(
                (w, b"g".to_vec()),
                vec![weir_common::query::aggregate::Partial::Count(e as i64 + 1)],
            );
        }
        if e == 4 {
            take_first_window(store, &mut batch);
        }
        store.fold(0, partials, &mut batch).unwrap();
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
                .take(
                    e,
                    changelog,
                    &store,
                    &tmp.path().join("scratch"),
                    &KeyGroups::range(0, K),
                )
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
            let restored = restore(&location, Some(&record), &KeyGroups::range(0, K), &dir, K)
                .await
                .unwrap();
            assert_eq!(restored.store.entries(), store.entries(), "epoch {e}");
            // A store built from part of the snapshot holds those key groups as they were,
            // and its first snapshot is a base (no changelog describes what was copied).
            let dir = tmp.path().join(format!("part-{e}"));
            let part = restore(&location, Some(&record), &KeyGroups::range(2, 6), &dir, K)
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
                    &KeyGroups::range(2, 6),
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
