//! Retention of state snapshots (docs/architecture.md, State layout): the snapshots of the last N
//! decisions are kept; every file under the checkpoint's `state/` that none of them references is
//! deleted (older snapshots' files, what failed runs uploaded); after a crash, uploads it cut
//! short too. Runs between epochs, when nothing uploads.

use std::collections::{BTreeSet, VecDeque};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use weir_common::checkpoint::CommitRecord;
use weir_storage::{CheckpointLog, LogError};

/// The files each retained decision references.
pub struct StateRetention {
    keep: usize,
    retained: VecDeque<(u64, BTreeSet<String>)>,
}

impl StateRetention {
    pub fn new(keep: u32) -> Self {
        Self {
            keep: keep.max(1) as usize,
            retained: VecDeque::new(),
        }
    }

    /// Reads the retained decisions up to `last` from the log (after a restart).
    pub async fn load(&mut self, log: &CheckpointLog, last: u64) -> Result<(), LogError> {
        let first = last.saturating_sub(self.keep as u64 - 1);
        for epoch in first..=last {
            if let Some(record) = log.commit(epoch).await? {
                self.record(&record);
            }
        }
        Ok(())
    }

    /// Adds a decision; the oldest falls out once more than `keep` are held.
    pub fn record(&mut self, record: &CommitRecord) {
        let files = record
            .state
            .iter()
            .flat_map(|s| s.files.iter().map(|f| f.path.clone()))
            .collect();
        self.retained.retain(|(e, _)| *e != record.epoch);
        self.retained.push_back((record.epoch, files));
        while self.retained.len() > self.keep {
            self.retained.pop_front();
        }
    }

    /// Deletes what uploads cut short by a crash left under `state/` (object_store's listings
    /// hide them, so [`Self::collect`] never sees them); answers how many. Only a dead process
    /// leaves them: the driver calls it at start and after failed runs, not every epoch.
    pub async fn remove_interrupted_uploads(&self, log: &CheckpointLog) -> Result<usize, LogError> {
        log.check_fence().await?;
        Ok(log.location().remove_interrupted_writes("state", true)?)
    }

    /// Deletes the state files no retained decision references; answers how many.
    pub async fn collect(&self, log: &CheckpointLog) -> Result<usize, LogError> {
        log.check_fence().await?;
        let location = log.location();
        let keep: BTreeSet<&str> = self
            .retained
            .iter()
            .flat_map(|(_, files)| files.iter().map(String::as_str))
            .collect();
        let root = location.path("state");
        let listed: Vec<_> = location
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| location.store_error("state", e))?;
        let prefix = format!("{}/", location.root.as_ref());
        let mut deleted = 0;
        for meta in listed {
            let full = meta.location.as_ref();
            let rel = if location.root.as_ref().is_empty() {
                full
            } else {
                full.strip_prefix(&prefix).unwrap_or(full)
            };
            if keep.contains(rel) {
                continue;
            }
            match location.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(location.store_error(rel, e).into()),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use std::collections::BTreeMap;
    use weir_common::checkpoint::{StateFile, StateSnapshot};
    use weir_common::query::keygroup::KeyGroups;

    fn record(epoch: u64, paths: &[&str]) -> CommitRecord {
        CommitRecord {
            epoch,
            state: vec![StateSnapshot {
                executor_id: "e".into(),
                key_groups: KeyGroups::range(0, 4),
                files: paths
                    .iter()
                    .map(|p| StateFile {
                        name: p.rsplit('/').next().unwrap().into(),
                        path: p.to_string(),
                        bytes: 1,
                    })
                    .collect(),
                uploaded_bytes: 0,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn files_of_the_retained_decisions_stay_and_the_rest_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let log = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        let all = [
            "state/e/i1/1.sst",
            "state/e/i1/2.sst",
            "state/e/i1/0/MANIFEST-1",
            "state/e/i1/1/MANIFEST-1",
            "state/e/i1/2/MANIFEST-1",
            "state/e/i2/9.sst",
        ];
        for p in all {
            log.location()
                .store
                .put(&log.location().path(p), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let mut retention = StateRetention::new(2);
        retention.record(&record(0, &["state/e/i1/1.sst", "state/e/i1/0/MANIFEST-1"]));
        retention.record(&record(
            1,
            &[
                "state/e/i1/1.sst",
                "state/e/i1/2.sst",
                "state/e/i1/1/MANIFEST-1",
            ],
        ));
        retention.record(&record(2, &["state/e/i1/2.sst", "state/e/i1/2/MANIFEST-1"]));
        // An executor killed inside a local upload leaves its staging file, unlisted.
        let cut_short = dir.path().join("state/e/i3/4.sst#2");
        std::fs::create_dir_all(cut_short.parent().unwrap()).unwrap();
        std::fs::write(&cut_short, b"x").unwrap();
        // Epoch 0 fell out; i2 was a failed run's upload.
        assert_eq!(retention.collect(&log).await.unwrap(), 2);
        // i3 was one cut short.
        assert_eq!(retention.remove_interrupted_uploads(&log).await.unwrap(), 1);
        assert!(!cut_short.exists());
        for (p, kept) in all.iter().zip([true, true, false, true, true, false]) {
            assert_eq!(dir.path().join(p).exists(), kept, "{p}");
        }
    }
}
