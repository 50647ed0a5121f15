//! Driver generations (docs/architecture.md, Driver fencing): only one driver acts on a
//! checkpoint. A starting driver takes the next generation with a create-only
//! `generations/<n>` object, and checks before each plan, decision, Delta commit and cleanup
//! that no `generations/<n+1>` exists; a driver that finds one is fenced and stops.

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::location::Location;
use crate::LogError;

/// The directory of generation records in the checkpoint.
const DIR: &str = "generations";
/// Generation records kept behind the current one (older ones are deleted: only `n + 1` is
/// ever looked at).
const KEEP: u64 = 10;
/// Attempts at taking a generation when other drivers take them at the same time.
const ATTEMPTS: u32 = 20;

/// Who took a generation, for the operator reading the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    /// The driver process's run id (progress and admin show it too).
    pub run_id: String,
    /// The host (pod) it ran on.
    pub host: String,
    pub taken_at_micros: i64,
}

/// A driver's hold on a checkpoint: its generation, checked against newer ones.
#[derive(Clone, Debug)]
pub struct Fence {
    location: Location,
    generation: u64,
}

impl Fence {
    /// Takes the next generation of the checkpoint at `location`.
    pub async fn take(
        location: &Location,
        run_id: &str,
        host: &str,
        now_micros: i64,
    ) -> Result<Self, LogError> {
        for _ in 0..ATTEMPTS {
            let next = latest(location).await?.map_or(1, |g| g + 1);
            let record = Generation {
                generation: next,
                run_id: run_id.to_string(),
                host: host.to_string(),
                taken_at_micros: now_micros,
            };
            let rel = format!("{DIR}/{next}");
            let bytes = serde_json::to_vec_pretty(&record).map_err(|source| LogError::Format {
                location: location.display(&rel),
                source,
            })?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match location
                .store
                .put_opts(&location.path(&rel), PutPayload::from(bytes), opts)
                .await
            {
                Ok(_) => {
                    forget_before(location, next.saturating_sub(KEEP)).await?;
                    return Ok(Self {
                        location: location.clone(),
                        generation: next,
                    });
                }
                // Another driver took it between the listing and the put: try the next.
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(location.store_error(&rel, e).into()),
            }
        }
        Err(LogError::Conflict(location.display(DIR)))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fails with [`LogError::Fenced`] when a newer driver took the checkpoint.
    pub async fn check(&self) -> Result<(), LogError> {
        let newer = self.generation + 1;
        let rel = format!("{DIR}/{newer}");
        match self.location.store.head(&self.location.path(&rel)).await {
            Ok(_) => Err(LogError::Fenced {
                checkpoint: self.location.url.clone(),
                generation: self.generation,
                newer,
            }),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.location.store_error(&rel, e).into()),
        }
    }
}

/// The generations present.
async fn generations(location: &Location) -> Result<Vec<u64>, LogError> {
    Ok(location.numbered(DIR).await?)
}

/// The newest generation taken, if any.
pub async fn latest(location: &Location) -> Result<Option<u64>, LogError> {
    Ok(generations(location).await?.into_iter().max())
}

/// Deletes the records of generations before `first_kept`.
async fn forget_before(location: &Location, first_kept: u64) -> Result<(), LogError> {
    for g in generations(location).await? {
        if g >= first_kept {
            continue;
        }
        let rel = format!("{DIR}/{g}");
        match location.store.delete(&location.path(&rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(location.store_error(&rel, e).into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    async fn local() -> (tempfile::TempDir, Location) {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let location = crate::location::open(url.as_str(), &BTreeMap::new()).unwrap();
        (dir, location)
    }

    #[tokio::test]
    async fn a_newer_driver_fences_the_older_one() {
        let (_dir, location) = local().await;
        let first = Fence::take(&location, "run-a", "host-a", 1).await.unwrap();
        assert_eq!(first.generation(), 1);
        first.check().await.unwrap();
        let second = Fence::take(&location, "run-b", "host-b", 2).await.unwrap();
        assert_eq!(second.generation(), 2);
        second.check().await.unwrap();
        let err = first.check().await.unwrap_err();
        assert!(matches!(
            err,
            LogError::Fenced {
                generation: 1,
                newer: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("generation 2 took over"), "{err}");
    }

    #[tokio::test]
    async fn drivers_starting_together_take_distinct_generations_and_old_records_go() {
        let (_dir, location) = local().await;
        let takes = (0..4).map(|i| {
            let location = location.clone();
            tokio::spawn(async move {
                Fence::take(&location, &format!("run-{i}"), "h", 0)
                    .await
                    .unwrap()
                    .generation()
            })
        });
        let mut taken: Vec<u64> = futures::future::try_join_all(takes).await.unwrap();
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 2, 3, 4]);
        for _ in 0..KEEP + 5 {
            Fence::take(&location, "later", "h", 0).await.unwrap();
        }
        let kept = generations(&location).await.unwrap();
        assert_eq!(kept.len() as u64, KEEP + 1);
        assert_eq!(latest(&location).await.unwrap(), Some(4 + KEEP + 5));
    }
}
