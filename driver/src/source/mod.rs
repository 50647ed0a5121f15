//! The source as the driver sees it: where the input ends, and what the next epoch reads from
//! where the last decision left off. Kafka: offset ranges per partition, capped by
//! `max_offsets_per_trigger`; files: the next files in name order, capped by
//! `max_files_per_trigger`.

pub mod file_listing;
pub mod kafka_offsets;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use weir_common::checkpoint::{InputFile, PartitionRange};
use weir_common::job::{FileSource, KafkaSource, Source};

use crate::epoch::planner::{initial_offsets, plan_ranges};
use crate::source::file_listing::FileLister;
use crate::source::kafka_offsets::{Bounds, OffsetReader};

pub enum SourceReader {
    Kafka {
        spec: KafkaSource,
        offsets: Arc<OffsetReader>,
    },
    Files {
        spec: FileSource,
        lister: FileLister,
    },
}

/// Where the input ends: the next offset of every partition, or the last file's path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputEnd {
    pub offsets: BTreeMap<i32, i64>,
    pub last_file: Option<String>,
}

/// Where the decided epochs left the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourcePosition {
    /// Next offset per partition; none before the first epoch.
    pub offsets: Option<BTreeMap<i32, i64>>,
    /// Every file up to this path has been read.
    pub files_through: Option<String>,
}

/// What the next epoch reads.
#[derive(Debug, Default)]
pub struct Planned {
    pub ranges: Vec<PartitionRange>,
    /// Offsets skipped because they are no longer retained.
    pub lost: Vec<PartitionRange>,
    pub files: Vec<InputFile>,
    /// A file source's files after `files`, as many as the next epoch may read: what it would
    /// read were it planned now (executors read them ahead).
    pub following: Vec<InputFile>,
    /// The partitions' latest offsets now (progress shows them with the lag).
    pub latest: BTreeMap<i32, i64>,
    /// The offsets the epoch starts from.
    pub start: Option<BTreeMap<i32, i64>>,
}

impl Planned {
    pub fn has_data(&self) -> bool {
        self.ranges.iter().any(|r| r.end > r.start)
            || !self.lost.is_empty()
            || !self.files.is_empty()
    }
}

impl SourceReader {
    /// Connects to the job's source (no records are read here).
    pub fn open(
        source: &Source,
        storage_options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        Ok(match source {
            Source::Kafka(spec) => SourceReader::Kafka {
                spec: spec.clone(),
                offsets: Arc::new(OffsetReader::new(spec)?),
            },
            Source::Files(spec) => SourceReader::Files {
                spec: spec.clone(),
                lister: FileLister::new(
                    weir_storage::location::open(&spec.url, storage_options)
                        .context("opening the file source")?,
                ),
            },
        })
    }

    async fn bounds(offsets: &Arc<OffsetReader>) -> anyhow::Result<BTreeMap<i32, Bounds>> {
        let reader = offsets.clone();
        Ok(tokio::task::spawn_blocking(move || reader.bounds()).await??)
    }

    /// Where the input ends now.
    pub async fn end(&self) -> anyhow::Result<InputEnd> {
        Ok(match self {
            SourceReader::Kafka { offsets, .. } => InputEnd {
                offsets: Self::bounds(offsets)
                    .await?
                    .into_iter()
                    .map(|(p, b)| (p, b.latest))
                    .collect(),
                last_file: None,
            },
            SourceReader::Files { lister, .. } => InputEnd {
                offsets: BTreeMap::new(),
                last_file: lister.list_after(None).await?.pop().map(|f| f.path),
            },
        })
    }

    /// What the epoch after `position` reads, up to `target` (available-now) when given.
    pub async fn plan(
        &self,
        position: &SourcePosition,
        target: Option<&InputEnd>,
    ) -> anyhow::Result<Planned> {
        match self {
            SourceReader::Kafka { spec, offsets } => {
                let bounds = Self::bounds(offsets).await?;
                let start = match &position.offsets {
                    Some(o) => o.clone(),
                    None => initial_offsets(&spec.starting_offsets, &bounds),
                };
                let limit = target.map(|t| t.offsets.clone()).unwrap_or_default();
                let (ranges, losses) =
                    plan_ranges(&start, &bounds, &limit, spec.max_offsets_per_trigger);
                for loss in &losses {
                    if spec.fail_on_data_loss {
                        bail!(
                            "offsets {}..{} of partition {} of {} are no longer retained (fail_on_data_loss is true)",
                            loss.from, loss.to, loss.partition, spec.topic
                        );
                    }
                    tracing::warn!(
                        partition = loss.partition,
                        lost = loss.to - loss.from,
                        "offsets {}..{} are no longer retained; skipping them (fail_on_data_loss is false)",
                        loss.from,
                        loss.to
                    );
                }
                Ok(Planned {
                    ranges,
                    lost: losses
                        .iter()
                        .map(|l| PartitionRange {
                            partition: l.partition,
                            start: l.from,
                            end: l.to,
                        })
                        .collect(),
                    files: Vec::new(),
                    following: Vec::new(),
                    latest: bounds.iter().map(|(p, b)| (*p, b.latest)).collect(),
                    start: Some(start),
                })
            }
            SourceReader::Files { spec, lister } => {
                let mut files = lister
                    .list_after(position.files_through.as_deref())
                    .await
                    .context("listing the file source")?;
                if let Some(t) = target {
                    let last = t.last_file.as_deref();
                    files.retain(|f| last.is_some_and(|l| f.path.as_str() <= l));
                }
                let mut following = Vec::new();
                if let Some(cap) = spec.max_files_per_trigger {
                    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
                    if files.len() > cap {
                        following = files.split_off(cap);
                        following.truncate(cap);
                    }
                }
                Ok(Planned {
                    files,
                    following,
                    ..Planned::default()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[InputFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    /// A file source plans the next files under the cap, and names the ones after them that
    /// the epoch after would read; an available-now target ends both.
    #[tokio::test]
    async fn files_planned_and_the_files_after_them() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("{i}.jsonl")), b"{}\n").unwrap();
        }
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let spec = FileSource {
            url: url.as_str().trim_end_matches('/').to_string(),
            max_files_per_trigger: Some(2),
        };
        let source = SourceReader::open(&Source::Files(spec), &BTreeMap::new()).unwrap();
        let at = |through: Option<&str>| SourcePosition {
            offsets: None,
            files_through: through.map(str::to_string),
        };

        let planned = source.plan(&at(None), None).await.unwrap();
        assert_eq!(names(&planned.files), ["0.jsonl", "1.jsonl"]);
        assert_eq!(names(&planned.following), ["2.jsonl", "3.jsonl"]);
        let planned = source.plan(&at(Some("2.jsonl")), None).await.unwrap();
        assert_eq!(names(&planned.files), ["3.jsonl", "4.jsonl"]);
        assert!(planned.following.is_empty());

        let target = InputEnd {
            offsets: BTreeMap::new(),
            last_file: Some("2.jsonl".into()),
        };
        let planned = source.plan(&at(None), Some(&target)).await.unwrap();
        assert_eq!(names(&planned.files), ["0.jsonl", "1.jsonl"]);
        assert_eq!(names(&planned.following), ["2.jsonl"]);
    }
}
