//! State snapshots on the checkpoint store (docs/architecture.md, State snapshots), incremental
//! twice over. Most epochs upload only their changelog: the write batch they applied to the store.
//! Now and then, when the changelogs since the last base outgrow it (or 16 MiB), the epoch uploads
//! a new base instead: a RocksDB checkpoint of the store, of which only SST files not uploaded
//! before are copied (SSTs never change once written, so bases share them). A snapshot is the last
//! base and the changelogs after it; restoring opens the base and replays them in epoch order. The
//! store thus flushes and compacts only when a base is taken, not after every epoch, and a restore
//! replays at most as much as the base holds (or 16 MiB).
//!
//! Layout under the checkpoint: `state/<executor>/<instance>/<sst>` for shared immutable
//! files, `state/<executor>/<instance>/<epoch>/<file>` for the small files RocksDB rewrites
//! (MANIFEST, CURRENT, OPTIONS) and `state/<executor>/<instance>/changelog/<epoch>` for
//! changelogs. An instance is one life of a local store: a restored store starts a new one, so
//! an abandoned run can never overwrite a file a decision references.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use weir_common::checkpoint::{check_file_name, check_relative_path, StateFile, StateSnapshot};
use weir_common::query::keygroup::KeyGroups;
use weir_storage::Location;

use crate::state::{remove_dir, StateError, StateStore};

/// Files uploaded or downloaded at the same time.
const CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("state snapshot file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state snapshot {location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state snapshot names a file outside the checkpoint: {0}")]
    Path(String),
}

fn io_error(path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Changelogs since the last base may grow to the base's size, and to this much at least.
pub const MIN_CHANGELOG_BYTES: u64 = 16 << 20;

/// Snapshot files whose name starts so are changelogs, not RocksDB files.
const CHANGELOG_PREFIX: &str = "changelog-";

pub(crate) fn is_changelog(name: &str) -> bool {
    name.starts_with(CHANGELOG_PREFIX)
}

/// Whether a file never changes once written (then later snapshots share it).
fn immutable(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob") || is_changelog(name)
}

fn total_bytes(files: &[StateFile]) -> u64 {
    files.iter().map(|f| f.bytes).sum()
}

/// Uploads the snapshots of one executor's store.
pub struct Snapshots {
    location: Location,
    executor_id: String,
    instance: String,
    /// Immutable files of the last base already in the store, by their local name.
    uploaded: HashMap<String, StateFile>,
    /// The last base's files.
    base: Vec<StateFile>,
    /// The changelogs of the epochs after the last base, in epoch order.
    changelogs: Vec<StateFile>,
    /// The store holds what no base and changelogs describe (key groups copied in): the next
    /// snapshot must be a base.
    needs_base: bool,
    /// `MIN_CHANGELOG_BYTES` (tests lower it).
    min_changelog_bytes: u64,
}

impl Snapshots {
    pub fn new(location: Location, executor_id: &str) -> Self {
        Self {
            location,
            executor_id: executor_id.to_string(),
            instance: new_instance_id(),
            uploaded: HashMap::new(),
            base: Vec::new(),
            changelogs: Vec::new(),
            needs_base: false,
            min_changelog_bytes: MIN_CHANGELOG_BYTES,
        }
    }

    #[cfg(test)]
    pub fn set_min_changelog_bytes(&mut self, bytes: u64) {
        self.min_changelog_bytes = bytes;
    }

    /// The current local store's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A new local store begins: it shares nothing with earlier uploads but `inherited`, the
    /// files of the snapshot it was opened from (its base and changelogs); `None` when it was
    /// built otherwise (from parts of other snapshots), so that its first snapshot is a base.
    pub fn start_instance(&mut self, instance: String, inherited: Option<&[StateFile]>) {
        self.instance = instance;
        self.needs_base = inherited.is_none();
        let (changelogs, base): (Vec<StateFile>, Vec<StateFile>) = inherited
            .unwrap_or_default()
            .iter()
            .cloned()
            .partition(|f| is_changelog(&f.name));
        self.uploaded = base
            .iter()
            .filter(|f| immutable(&f.name))
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        self.base = base;
        self.changelogs = changelogs;
    }

    /// The store gained or lost key groups outside an epoch's changelog: the next snapshot is a
    /// base, since no changelog describes the change.
    pub fn store_changed(&mut self) {
        self.needs_base = true;
    }

    /// Snapshots `store` after `epoch`, whose changelog (the batch it applied) is given: by
    /// uploading the changelog, or a new base when the changelogs would outgrow the last one.
    /// A base is a RocksDB checkpoint taken into `scratch` (removed afterwards).
    pub async fn take(
        &mut self,
        epoch: u64,
        changelog: Vec<u8>,
        store: &StateStore,
        scratch: &Path,
        key_groups: &KeyGroups,
    ) -> Result<StateSnapshot, SnapshotError> {
        if !self.wants_base(changelog.len() as u64) {
            return self.upload_changelog(epoch, changelog, key_groups).await;
        }
        remove_dir(scratch)?;
        if let Some(parent) = scratch.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        tokio::task::block_in_place(|| store.checkpoint(scratch))?;
        let snapshot = self.upload_base(epoch, scratch, key_groups).await?;
        remove_dir(scratch)?;
        Ok(snapshot)
    }

    /// Whether the snapshot after an epoch whose changelog has `changelog_bytes` should be a
    /// new base: when the changelogs would outgrow the base (and the minimum).
    fn wants_base(&self, changelog_bytes: u64) -> bool {
        if self.needs_base {
            return true;
        }
        let logged = total_bytes(&self.changelogs) + changelog_bytes;
        logged > total_bytes(&self.base).max(self.min_changelog_bytes)
    }

    fn base_path(&self) -> String {
        format!("state/{}/{}", self.executor_id, self.instance)
    }

    fn snapshot(&self, key_groups: &KeyGroups, uploaded_bytes: u64) -> StateSnapshot {
        let mut files = self.base.clone();
        files.extend(self.changelogs.iter().cloned());
        StateSnapshot {
            executor_id: self.executor_id.clone(),
            key_groups: key_groups.clone(),
            files,
            uploaded_bytes,
        }
    }

    /// Uploads the changelog of `epoch` and describes the snapshot it completes.
    async fn upload_changelog(
        &mut self,
        epoch: u64,
        changelog: Vec<u8>,
        key_groups: &KeyGroups,
    ) -> Result<StateSnapshot, SnapshotError> {
        // Zero-padded so that names sort in epoch order.
        let name = format!("{CHANGELOG_PREFIX}{epoch:020}");
        let path = format!("{}/changelog/{epoch:020}", self.base_path());
        let bytes = changelog.len() as u64;
        self.location
            .store
            .put(&self.location.path(&path), PutPayload::from(changelog))
            .await
            .map_err(|source| SnapshotError::Store {
                location: self.location.display(&path),
                source,
            })?;
        self.changelogs.push(StateFile { name, path, bytes });
        Ok(self.snapshot(key_groups, bytes))
    }

    /// Uploads the RocksDB checkpoint in `dir` taken after `epoch` as the new base (the
    /// changelogs before it are no longer needed) and describes the snapshot.
    async fn upload_base(
        &mut self,
        epoch: u64,
        dir: &Path,
        key_groups: &KeyGroups,
    ) -> Result<StateSnapshot, SnapshotError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            if entry.file_type().map_err(|e| io_error(dir, e))?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let base = self.base_path();
        let mut files = Vec::with_capacity(names.len());
        let mut to_upload = Vec::new();
        for name in names {
            match self.uploaded.get(&name) {
                Some(f) if immutable(&name) => files.push(f.clone()),
                _ => {
                    let path = if immutable(&name) {
                        format!("{base}/{name}")
                    } else {
                        format!("{base}/{epoch}/{name}")
                    };
                    to_upload.push((dir.join(&name), name, path));
                }
            }
        }
        // Owned values in each upload: borrowed ones make the stream's future not `Send`.
        let uploaded: Vec<StateFile> = futures::stream::iter(to_upload)
            .map(|(local, name, path)| {
                let location = self.location.clone();
                async move {
                    let bytes = tokio::fs::read(&local)
                        .await
                        .map_err(|e| io_error(&local, e))?;
                    let size = bytes.len() as u64;
                    location
                        .store
                        .put(&location.path(&path), PutPayload::from(bytes))
                        .await
                        .map_err(|source| SnapshotError::Store {
                            location: location.display(&path),
                            source,
                        })?;
                    Ok::<_, SnapshotError>(StateFile {
                        name,
                        path,
                        bytes: size,
                    })
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let uploaded_bytes = total_bytes(&uploaded);
        for f in uploaded {
            if immutable(&f.name) {
                self.uploaded.insert(f.name.clone(), f.clone());
            }
            files.push(f);
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        // Files RocksDB has deleted locally will not be referenced again by this instance.
        self.uploaded
            .retain(|name, _| files.iter().any(|f| f.name == *name));
        self.base = files;
        self.changelogs.clear();
        self.needs_base = false;
        Ok(self.snapshot(key_groups, uploaded_bytes))
    }
}

/// A fresh instance id for a new local store.
pub fn new_instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Reads one snapshot file from the checkpoint store; its name and path must stay inside the
/// state directory and the checkpoint (a decision is read back from storage others can write).
async fn fetch(location: Location, f: StateFile) -> Result<(StateFile, Bytes), SnapshotError> {
    check_file_name(&f.name)
        .and_then(|()| check_relative_path(&f.path))
        .map_err(SnapshotError::Path)?;
    let store_err = |source| SnapshotError::Store {
        location: location.display(&f.path),
        source,
    };
    let bytes = location
        .store
        .get(&location.path(&f.path))
        .await
        .map_err(store_err)?
        .bytes()
        .await
        .map_err(store_err)?;
    Ok((f, bytes))
}

/// Downloads the base of `snapshot` (its RocksDB files) into `dir` (created).
async fn download_base(
    location: &Location,
    snapshot: &StateSnapshot,
    dir: &Path,
) -> Result<(), SnapshotError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error(dir, e))?;
    // Owned files in the stream: borrowed ones make its futures not `Send`.
    let base: Vec<StateFile> = snapshot
        .files
        .iter()
        .filter(|f| !is_changelog(&f.name))
        .cloned()
        .collect();
    futures::stream::iter(base)
        .map(|f| fetch(location.clone(), f))
        .buffer_unordered(CONCURRENCY)
        .and_then(|(f, bytes)| async move {
            let local = dir.join(&f.name);
            tokio::fs::write(&local, bytes)
                .await
                .map_err(|source| io_error(&local, source))
        })
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Opens, in `dir` (emptied first), the store `snapshot` describes: its base downloaded, then
/// its changelogs replayed in epoch order as they arrive (a few in memory at a time).
pub async fn open(
    location: &Location,
    snapshot: &StateSnapshot,
    dir: &Path,
    key_groups: u32,
) -> Result<StateStore, SnapshotError> {
    remove_dir(dir)?;
    download_base(location, snapshot, dir).await?;
    let store = tokio::task::block_in_place(|| StateStore::open(dir, key_groups))?;
    let mut changelogs: Vec<StateFile> = snapshot
        .files
        .iter()
        .filter(|f| is_changelog(&f.name))
        .cloned()
        .collect();
    changelogs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut arriving = futures::stream::iter(changelogs)
        .map(|f| fetch(location.clone(), f))
        .buffered(CONCURRENCY);
    while let Some((_, changelog)) = arriving.try_next().await? {
        tokio::task::block_in_place(|| store.replay(&changelog))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn only_new_immutable_files_are_uploaded_again() {
        let store = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(store.path()).unwrap();
        let location = weir_storage::open(url.as_str(), &BTreeMap::new()).unwrap();
        let mut snapshots = Snapshots::new(location.clone(), "e1");
        let local = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| std::fs::write(local.path().join(name), body).unwrap();
        write("000010.sst", "aaaa");
        write("MANIFEST-000001", "m1");
        let first = snapshots
            .upload_base(0, local.path(), &KeyGroups::range(0, 8))
            .await
            .unwrap();
        assert_eq!(first.uploaded_bytes, 6);
        // The SST stays, one is added, the manifest changes: only the new SST and the
        // manifest are uploaded, and the old SST is shared.
        write("000011.sst", "bbbbbbbb");
        write("MANIFEST-000001", "m2");
        let second = snapshots
            .upload_base(1, local.path(), &KeyGroups::range(0, 8))
            .await
            .unwrap();
        assert_eq!(second.uploaded_bytes, 10);
        assert_eq!(second.bytes(), 14);
        let shared = |s: &StateSnapshot| {
            s.files
                .iter()
                .find(|f| f.name == "000010.sst")
                .unwrap()
                .path
                .clone()
        };
        assert_eq!(shared(&first), shared(&second));
        let manifests: Vec<_> = [&first, &second]
            .iter()
            .map(|s| {
                s.files
                    .iter()
                    .find(|f| f.name.starts_with("MANIFEST"))
                    .unwrap()
                    .path
                    .clone()
            })
            .collect();
        assert_ne!(manifests[0], manifests[1]);
        // Downloading the second snapshot gives back the files as they were.
        let restored = tempfile::tempdir().unwrap();
        download_base(&location, &second, restored.path())
            .await
            .unwrap();
        let read = |name: &str| std::fs::read_to_string(restored.path().join(name)).unwrap();
        assert_eq!(read("000010.sst"), "aaaa");
        assert_eq!(read("000011.sst"), "bbbbbbbb");
        assert_eq!(read("MANIFEST-000001"), "m2");
        // A new instance shares only what it inherited.
        snapshots.start_instance(new_instance_id(), Some(&[]));
        let third = snapshots
            .upload_base(2, local.path(), &KeyGroups::range(0, 8))
            .await
            .unwrap();
        assert_eq!(third.uploaded_bytes, 14);
    }
}
