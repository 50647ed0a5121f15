//! A Delta sink's `compact:` and `vacuum:` settings: small files merged in the background, and
//! files the table no longer references deleted after a retention (docs/operations.md, Table
//! upkeep).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::job::duration::parse_duration;

/// `compact: {every, min_files, target_file_bytes}` as written (`compact: {}` takes the
/// defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_files: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_file_bytes: Option<u64>,
}

/// `vacuum: {retention, every}` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVacuum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

/// How often a table is compacted, and what is worth it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactSpec {
    /// At most one compaction per interval, the first one interval after the driver starts.
    pub every: Duration,
    /// A partition is compacted once it has this many files smaller than the target.
    pub min_files: usize,
    /// The size compacted files aim at.
    pub target_file_bytes: u64,
}

/// How long files the table no longer references are kept, and how often they are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VacuumSpec {
    pub retention: Duration,
    pub every: Duration,
}

/// What the driver does for a table besides committing to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableUpkeep {
    pub compact: Option<CompactSpec>,
    pub vacuum: Option<VacuumSpec>,
}

impl TableUpkeep {
    pub fn is_empty(&self) -> bool {
        self.compact.is_none() && self.vacuum.is_none()
    }
}

pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(600);
pub const DEFAULT_MIN_FILES: u32 = 16;
/// delta-rs's own default (`delta.targetFileSize`).
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Files of an update-mode output table: each epoch's MERGE rewrites the files holding the
/// rows it changes, so their size bounds what an epoch copies (about 15 000 rows of the
/// reference output per partition; delta-rs copies about a million rows a second).
pub const UPDATE_MODE_FILE_BYTES: u64 = 256 * 1024;
/// Delta's `delta.deletedFileRetentionDuration` default: readers of a version up to a week
/// old still find its files.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_VACUUM_EVERY: Duration = Duration::from_secs(3600);

fn duration(field: &str, raw: Option<&str>, default: Duration) -> Result<Duration, JobError> {
    match raw {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|e| JobError::new(field, e)),
    }
}

/// Validates a sink's `compact:` and `vacuum:` (`field` names the sink, e.g. `sinks[0].delta`).
pub fn parse(
    field: &str,
    compact: Option<&RawCompact>,
    vacuum: Option<&RawVacuum>,
) -> Result<TableUpkeep, JobError> {
    let compact = match compact {
        None => None,
        Some(raw) => {
            let min_files = raw.min_files.unwrap_or(DEFAULT_MIN_FILES);
            if min_files < 2 {
                return Err(JobError::new(
                    format!("{field}.compact.min_files"),
                    "expected at least 2 (one file is compact already)",
                ));
            }
            let target_file_bytes = raw.target_file_bytes.unwrap_or(DEFAULT_TARGET_FILE_BYTES);
            if target_file_bytes == 0 {
                return Err(JobError::new(
                    format!("{field}.compact.target_file_bytes"),
                    "expected a positive size in bytes",
                ));
            }
            Some(CompactSpec {
                every: duration(
                    &format!("{field}.compact.every"),
                    raw.every.as_deref(),
                    DEFAULT_COMPACT_EVERY,
                )?,
                min_files: min_files as usize,
                target_file_bytes,
            })
        }
    };
    let vacuum = match vacuum {
        None => None,
        Some(raw) => {
            let retention = duration(
                &format!("{field}.vacuum.retention"),
                raw.retention.as_deref(),
                DEFAULT_RETENTION,
            )?;
            // Delta checkpoints drop the record of a removed file once it is older than the
            // table's deletedFileRetentionDuration (a week by default): a longer retention
            // would never find those files to delete.
            if retention > DEFAULT_RETENTION {
                return Err(JobError::new(
                    format!("{field}.vacuum.retention"),
                    "at most 7 days (168h): Delta forgets removed files after a week",
                ));
            }
            Some(VacuumSpec {
                retention,
                every: duration(
                    &format!("{field}.vacuum.every"),
                    raw.every.as_deref(),
                    DEFAULT_VACUUM_EVERY,
                )?,
            })
        }
    };
    Ok(TableUpkeep { compact, vacuum })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_bad_values_name_their_field() {
        let upkeep = parse("sinks[0].delta", Some(&RawCompact::default()), None).unwrap();
        let compact = upkeep.compact.unwrap();
        assert_eq!(compact.every, DEFAULT_COMPACT_EVERY);
        assert_eq!(compact.min_files, 16);
        assert!(upkeep.vacuum.is_none());
        let vacuum = parse(
            "d",
            None,
            Some(&RawVacuum {
                retention: Some("0s".into()),
                every: Some("1m".into()),
            }),
        )
        .unwrap()
        .vacuum
        .unwrap();
        assert_eq!(vacuum.retention, Duration::ZERO);
        assert_eq!(vacuum.every, Duration::from_secs(60));
        let few = RawCompact {
            min_files: Some(1),
            ..Default::default()
        };
        let e = parse("sinks[0].delta", Some(&few), None).unwrap_err();
        assert!(
            e.to_string().contains("sinks[0].delta.compact.min_files"),
            "{e}"
        );
        let long = RawVacuum {
            retention: Some("30d".into()),
            every: None,
        };
        let e = parse("d", None, Some(&long)).unwrap_err();
        assert!(e.to_string().contains("at most 7 days"), "{e}");
        let soon = RawVacuum {
            retention: Some("soon".into()),
            every: None,
        };
        let e = parse("sinks[0].delta", None, Some(&soon)).unwrap_err();
        assert!(
            e.to_string().contains("sinks[0].delta.vacuum.retention"),
            "{e}"
        );
        assert!(parse("d", None, None).unwrap().is_empty());
    }
}
