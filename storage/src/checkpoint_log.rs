//! The checkpoint log on an object store (docs/architecture.md, State snapshots): `metadata.json`,
//! `offsets/<epoch>`, `commits/<epoch>`. Plans and decisions are written with create-only puts, so
//! a second driver on the same checkpoint fails instead of overwriting history.

use std::collections::BTreeMap;

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_common::checkpoint::{CommitRecord, EpochPlan, Metadata, ScaleRecord};

use crate::fence::Fence;
use crate::location::{Location, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("checkpoint: {0}")]
    Storage(#[from] StorageError),
    #[error("checkpoint {location}: unreadable record: {source}")]
    Format {
        location: String,
        source: serde_json::Error,
    },
    #[error("checkpoint {0} already holds a different record; is another driver running on this checkpoint?")]
    Conflict(String),
    #[error(
        "this driver (generation {generation}) is fenced: driver generation {newer} took over \
         checkpoint {checkpoint}; it stops without writing anything more"
    )]
    Fenced {
        checkpoint: String,
        generation: u64,
        newer: u64,
    },
}

/// The log of one job's checkpoint. Once it holds a driver's [`Fence`], every write and
/// deletion first checks that no newer driver took the checkpoint.
#[derive(Clone)]
pub struct CheckpointLog {
    location: Location,
    fence: Option<Fence>,
}

impl CheckpointLog {
    /// Opens the log at a `file://`, `s3://` or `memory://` URL.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self, LogError> {
        Ok(Self {
            location: crate::location::open(url, options)?,
            fence: None,
        })
    }

    /// Takes the next driver generation of the checkpoint; from now on the log acts only while
    /// it holds it. Answers the generation.
    pub async fn take_generation(
        &mut self,
        run_id: &str,
        host: &str,
        now_micros: i64,
    ) -> Result<u64, LogError> {
        let fence = Fence::take(&self.location, run_id, host, now_micros).await?;
        let generation = fence.generation();
        self.fence = Some(fence);
        Ok(generation)
    }

    /// The driver's hold on the checkpoint, once taken.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Fails with [`LogError::Fenced`] when a newer driver took the checkpoint.
    pub async fn check_fence(&self) -> Result<(), LogError> {
        match &self.fence {
            Some(f) => f.check().await,
            None => Ok(()),
        }
    }

    pub fn url(&self) -> &str {
        &self.location.url
    }

    /// The checkpoint's object store (state snapshots live under `state/`).
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn store_err(&self, rel: &str, source: object_store::Error) -> LogError {
        LogError::Storage(self.location.store_error(rel, source))
    }

    async fn read<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>, LogError> {
        match self.location.store.get(&self.location.path(rel)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| self.store_err(rel, e))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| LogError::Format {
                        location: self.location.display(rel),
                        source,
                    })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(rel, e)),
        }
    }

    /// Writes a record once; writing the same record again is a no-op (a replayed step).
    async fn create<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        rel: &str,
        value: &T,
    ) -> Result<(), LogError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| LogError::Format {
            location: rel.into(),
            source,
        })?;
        self.check_fence().await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .location
            .store
            .put_opts(&self.location.path(rel), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => match self.read::<T>(rel).await? {
                Some(existing) if existing == *value => Ok(()),
                _ => Err(LogError::Conflict(self.location.display(rel))),
            },
            Err(e) => Err(self.store_err(rel, e)),
        }
    }

    pub async fn metadata(&self) -> Result<Option<Metadata>, LogError> {
        self.read("metadata.json").await
    }

    pub async fn write_metadata(&self, m: &Metadata) -> Result<(), LogError> {
        self.create("metadata.json", m).await
    }

    /// `scale.json`: the executor count the job was last scaled to, when it ever was.
    pub async fn scale(&self) -> Result<Option<ScaleRecord>, LogError> {
        self.read("scale.json").await
    }

    /// Replaces `scale.json` (a fenced driver's write is refused).
    pub async fn write_scale(&self, record: &ScaleRecord) -> Result<(), LogError> {
        let rel = "scale.json";
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| LogError::Format {
            location: rel.into(),
            source,
        })?;
        self.check_fence().await?;
        self.location
            .store
            .put(&self.location.path(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.store_err(rel, e))
    }

    pub async fn plan(&self, epoch: u64) -> Result<Option<EpochPlan>, LogError> {
        self.read(&format!("offsets/{epoch}")).await
    }

    pub async fn write_plan(&self, plan: &EpochPlan) -> Result<(), LogError> {
        self.create(&format!("offsets/{}", plan.epoch), plan).await
    }

    pub async fn commit(&self, epoch: u64) -> Result<Option<CommitRecord>, LogError> {
        self.read(&format!("commits/{epoch}")).await
    }

    pub async fn write_commit(&self, record: &CommitRecord) -> Result<(), LogError> {
        self.create(&format!("commits/{}", record.epoch), record)
            .await
    }

    /// The highest epoch number present under `dir` (`offsets` or `commits`).
    pub async fn latest(&self, dir: &str) -> Result<Option<u64>, LogError> {
        Ok(self.epochs(dir).await?.into_iter().max())
    }

    /// The epoch numbers present under `dir` (`offsets` or `commits`).
    async fn epochs(&self, dir: &str) -> Result<Vec<u64>, LogError> {
        Ok(self.location.numbered(dir).await?)
    }

    /// Deletes the decision and plan of `epoch` (the decision first: a plan without its
    /// decision is only ever read when it is the latest). Recovery reads only the latest of
    /// each, so an epoch whose state snapshots are no longer retained is forgotten whole.
    pub async fn forget(&self, epoch: u64) -> Result<(), LogError> {
        self.check_fence().await?;
        for rel in [format!("commits/{epoch}"), format!("offsets/{epoch}")] {
            match self.location.store.delete(&self.location.path(&rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_err(&rel, e)),
            }
        }
        Ok(())
    }

    /// Deletes what writes cut short by a crash left in the log (see
    /// [`Location::remove_interrupted_writes`]); answers how many.
    pub async fn remove_interrupted_writes(&self) -> Result<usize, LogError> {
        self.check_fence().await?;
        let mut removed = 0;
        for dir in ["", "offsets", "commits"] {
            removed += self.location.remove_interrupted_writes(dir, false)?;
        }
        Ok(removed)
    }

    /// Forgets every epoch before `first_kept` still in the log (left by a crash between two
    /// deletions, or by a run with a longer retention); answers how many.
    pub async fn prune_before(&self, first_kept: u64) -> Result<usize, LogError> {
        let mut old: Vec<u64> = self.epochs("commits").await?;
        old.extend(self.epochs("offsets").await?);
        old.retain(|e| *e < first_kept);
        old.sort_unstable();
        old.dedup();
        for epoch in &old {
            self.forget(*epoch).await?;
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weir_common::checkpoint::PartitionRange;

    fn plan(epoch: u64, end: i64) -> EpochPlan {
        EpochPlan {
            epoch,
            topic: "t".into(),
            ranges: vec![PartitionRange {
                partition: 0,
                start: 0,
                end,
            }],
            watermark_micros: None,
            planned_at_micros: 1,
            assignment: vec![],
            lost: vec![],
            files: vec![],
        }
    }

    /// Once a newer driver took the checkpoint, the older one's log writes and deletes nothing.
    #[tokio::test]
    async fn a_fenced_log_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut old = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        assert_eq!(old.take_generation("a", "h", 0).await.unwrap(), 1);
        old.write_plan(&plan(0, 10)).await.unwrap();
        let mut new = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        assert_eq!(new.take_generation("b", "h", 0).await.unwrap(), 2);
        let fenced = |r: Result<(), LogError>| {
            matches!(
                r,
                Err(LogError::Fenced {
                    generation: 1,
                    newer: 2,
                    ..
                })
            )
        };
        assert!(fenced(old.write_plan(&plan(1, 20)).await));
        assert!(fenced(old.forget(0).await));
        assert!(fenced(old.check_fence().await));
        assert_eq!(old.latest("offsets").await.unwrap(), Some(0));
        new.write_plan(&plan(1, 20)).await.unwrap();
    }

    #[tokio::test]
    async fn plans_and_decisions_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let log = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        assert_eq!(log.latest("offsets").await.unwrap(), None);
        log.write_plan(&plan(0, 10)).await.unwrap();
        log.write_plan(&plan(1, 20)).await.unwrap();
        // The same plan again is a replay; a different one is another driver.
        log.write_plan(&plan(1, 20)).await.unwrap();
        assert!(matches!(
            log.write_plan(&plan(1, 25)).await,
            Err(LogError::Conflict(_))
        ));
        assert_eq!(log.latest("offsets").await.unwrap(), Some(1));
        assert_eq!(log.plan(1).await.unwrap(), Some(plan(1, 20)));
        let record = CommitRecord {
            epoch: 0,
            end_offsets: BTreeMap::from([(0, 10)]),
            next_watermark_micros: Some(5),
            decided_at_micros: 2,
            ..Default::default()
        };
        log.write_commit(&record).await.unwrap();
        assert_eq!(log.commit(0).await.unwrap(), Some(record));
        assert_eq!(log.latest("commits").await.unwrap(), Some(0));
        assert_eq!(log.commit(1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn old_epochs_are_forgotten_and_the_latest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let log = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        for epoch in 0..6 {
            log.write_plan(&plan(epoch, 10 * epoch as i64))
                .await
                .unwrap();
            if epoch < 5 {
                let record = CommitRecord {
                    epoch,
                    ..Default::default()
                };
                log.write_commit(&record).await.unwrap();
            }
        }
        log.forget(0).await.unwrap();
        // Forgetting what is gone already is no error.
        log.forget(0).await.unwrap();
        assert_eq!(log.plan(0).await.unwrap(), None);
        assert_eq!(log.commit(0).await.unwrap(), None);
        assert_eq!(log.prune_before(3).await.unwrap(), 2);
        assert_eq!(log.prune_before(3).await.unwrap(), 0);
        for epoch in 0..3 {
            assert_eq!(log.plan(epoch).await.unwrap(), None, "{epoch}");
            assert_eq!(log.commit(epoch).await.unwrap(), None, "{epoch}");
        }
        assert_eq!(log.latest("commits").await.unwrap(), Some(4));
        assert_eq!(log.latest("offsets").await.unwrap(), Some(5));
        assert_eq!(log.plan(5).await.unwrap(), Some(plan(5, 50)));
        let left = std::fs::read_dir(dir.path().join("commits"))
            .unwrap()
            .count()
            + std::fs::read_dir(dir.path().join("offsets"))
                .unwrap()
                .count();
        assert_eq!(left, 5);
    }

    /// A driver killed inside a local put leaves `commits/6#1`; the next one removes it and
    /// nothing else (records, `scale.json`, state and generations stay).
    #[tokio::test]
    async fn files_of_interrupted_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut log = CheckpointLog::open(url.as_str(), &BTreeMap::new()).unwrap();
        log.take_generation("a", "h", 0).await.unwrap();
        log.write_plan(&plan(6, 60)).await.unwrap();
        log.write_scale(&ScaleRecord {
            executors: 2,
            started_with: 1,
            reason: "test".into(),
            at_micros: 0,
        })
        .await
        .unwrap();
        let leftovers = ["commits/6#1", "offsets/7#12", "scale.json#3"];
        for rel in leftovers
            .iter()
            .chain(&["state/e/000012.sst", "commits/#1"])
        {
            let file = dir.path().join(rel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, b"{").unwrap();
        }
        assert_eq!(log.remove_interrupted_writes().await.unwrap(), 3);
        for rel in leftovers {
            assert!(!dir.path().join(rel).exists(), "{rel}");
        }
        for rel in [
            "offsets/6",
            "scale.json",
            "state/e/000012.sst",
            "commits/#1",
        ] {
            assert!(dir.path().join(rel).exists(), "{rel}");
        }
        assert_eq!(log.latest("offsets").await.unwrap(), Some(6));
    }
}
