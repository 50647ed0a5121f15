//! State snapshots on the checkpoint store (DESIGN.md §5): a RocksDB checkpoint of the store
//! is uploaded after every epoch, but only files the store has not uploaded before; SST files
//! never change once written, so later snapshots reference the ones already there.
//!
//! Layout under the checkpoint: `state/<executor>/<instance>/<sst>` for shared immutable
//! files and `state/<executor>/<instance>/<epoch>/<file>` for the small files RocksDB rewrites
//! (MANIFEST, CURRENT, OPTIONS). An instance is one life of a local store: a restored store
//! starts a new one, so an abandoned run can never overwrite a file a decision references.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use weir_common::checkpoint::{StateFile, StateSnapshot};
use weir_storage::Location;

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
}

fn io_error(path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether RocksDB may change a file after writing it (then it is uploaded with every snapshot).
fn immutable(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// Uploads the snapshots of one executor's store.
pub struct Snapshots {
    location: Location,
    executor_id: String,
    instance: String,
    /// Immutable files already in the store, by their local name.
    uploaded: HashMap<String, StateFile>,
}

impl Snapshots {
    pub fn new(location: Location, executor_id: &str) -> Self {
        Self {
            location,
            executor_id: executor_id.to_string(),
            instance: new_instance_id(),
            uploaded: HashMap::new(),
        }
    }

    /// The current local store's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A new local store begins: it shares nothing with earlier uploads but `inherited`, the
    /// files of the snapshot it was opened from.
    pub fn start_instance(&mut self, instance: String, inherited: &[StateFile]) {
        self.instance = instance;
        self.uploaded = inherited
            .iter()
            .filter(|f| immutable(&f.name))
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
    }

    /// Uploads the RocksDB checkpoint in `dir` taken after `epoch` and describes it.
    pub async fn upload(
        &mut self,
        epoch: u64,
        dir: &Path,
        key_groups: (u32, u32),
    ) -> Result<StateSnapshot, SnapshotError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            if entry.file_type().map_err(|e| io_error(dir, e))?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let base = format!("state/{}/{}", self.executor_id, self.instance);
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
        let uploaded_bytes = uploaded.iter().map(|f| f.bytes).sum();
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
        Ok(StateSnapshot {
            executor_id: self.executor_id.clone(),
            key_groups,
            files,
            uploaded_bytes,
        })
    }
}

/// A fresh instance id for a new local store.
pub fn new_instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Downloads the files of `snapshot` into `dir` (created), ready to be opened as a store.
pub async fn download(
    location: &Location,
    snapshot: &StateSnapshot,
    dir: &Path,
) -> Result<PathBuf, SnapshotError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| SnapshotError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    futures::stream::iter(snapshot.files.clone())
        .map(|f| {
            let location = location.clone();
            let local = dir.join(&f.name);
            async move {
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
                tokio::fs::write(&local, bytes)
                    .await
                    .map_err(|source| io_error(&local, source))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(dir.to_path_buf())
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
        let first = snapshots.upload(0, local.path(), (0, 8)).await.unwrap();
        assert_eq!(first.uploaded_bytes, 6);
        // The SST stays, one is added, the manifest changes: only the new SST and the
        // manifest are uploaded, and the old SST is shared.
        write("000011.sst", "bbbbbbbb");
        write("MANIFEST-000001", "m2");
        let second = snapshots.upload(1, local.path(), (0, 8)).await.unwrap();
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
        download(&location, &second, restored.path()).await.unwrap();
        let read = |name: &str| std::fs::read_to_string(restored.path().join(name)).unwrap();
        assert_eq!(read("000010.sst"), "aaaa");
        assert_eq!(read("000011.sst"), "bbbbbbbb");
        assert_eq!(read("MANIFEST-000001"), "m2");
        // A new instance shares only what it inherited.
        snapshots.start_instance(new_instance_id(), &[]);
        let third = snapshots.upload(2, local.path(), (0, 8)).await.unwrap();
        assert_eq!(third.uploaded_bytes, 14);
    }
}
