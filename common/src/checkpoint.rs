//! Checkpoint records (docs/architecture.md, State snapshots): `metadata.json`, `offsets/<epoch>`
//! (the plan) and `commits/<epoch>` (the decision). They are JSON so an operator can read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::query::keygroup::KeyGroups;

/// `metadata.json`: what a checkpoint belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    /// Job id: the Delta app id of `SetTransaction`.
    pub job_id: String,
    pub name: String,
    pub key_groups: u32,
    /// Fingerprint of the query and schema; a different query may not reuse the checkpoint.
    pub fingerprint: String,
    pub created_at_micros: i64,
}

/// The offsets of one Kafka partition that one epoch reads: `[start, end)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// A file of a file source that an epoch reads whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputFile {
    /// The file's path under the source's location (`2026/01/01/events-001.jsonl`).
    pub path: String,
    pub bytes: u64,
}

/// `scale.json`: the executor count a job was last scaled to (by hand or by the autoscaler); a
/// driver restarted with the same `--executors` resumes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScaleRecord {
    pub executors: u32,
    /// The `--executors` of the driver that set it: a driver started with another count
    /// starts from that count instead.
    pub started_with: u32,
    /// Who set it and why (`weir admin scale`, or the autoscaler's reasoning).
    pub reason: String,
    pub at_micros: i64,
}

/// Which executor reads which partitions and owns which key groups in an epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    pub executor_id: String,
    /// Kafka partitions, or for a file source the indexes of the plan's files.
    pub partitions: Vec<i32>,
    pub key_groups: KeyGroups,
}

/// `offsets/<epoch>`: the plan, durable before any executor starts the epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochPlan {
    pub epoch: u64,
    /// The topic, or the file source's location.
    pub topic: String,
    pub ranges: Vec<PartitionRange>,
    /// A file source's files for the epoch, in name order (empty for Kafka).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InputFile>,
    /// Watermark in force for the epoch (microseconds); none before the first event.
    pub watermark_micros: Option<i64>,
    /// The plan's wall clock: processing_time of the epoch's rows.
    pub planned_at_micros: i64,
    pub assignment: Vec<Assignment>,
    /// Offsets the plan skipped because the broker no longer retains them
    /// (`fail_on_data_loss: false`): `[start, end)` per partition.
    #[serde(default)]
    pub lost: Vec<PartitionRange>,
}

impl EpochPlan {
    /// What the assignment distributes: Kafka partitions, or the indexes of a file source's
    /// files.
    pub fn partitions(&self) -> Vec<i32> {
        if self.files.is_empty() {
            self.ranges.iter().map(|r| r.partition).collect()
        } else {
            (0..self.files.len())
                .filter_map(|i| i32::try_from(i).ok())
                .collect()
        }
    }

    /// Number of records the plan covers (a file source's are known once read).
    pub fn planned_rows(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| u64::try_from(r.end.saturating_sub(r.start)).unwrap_or(0))
            .fold(0, u64::saturating_add)
    }
}

/// Per-epoch figures, summed over executors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub input_rows: u64,
    pub input_bytes: u64,
    pub valid_rows: u64,
    pub late_rows: u64,
    pub malformed_rows: u64,
    pub dead_letter_rows: u64,
    pub windows_emitted: u64,
    pub state_rows: u64,
    pub min_event_time_micros: Option<i64>,
    pub max_event_time_micros: Option<i64>,
    pub avg_event_time_micros: Option<i64>,
    /// Offsets skipped because the broker no longer retained them.
    #[serde(default)]
    pub lost_offsets: u64,
    /// Key groups whose owner changed since the last decided epoch.
    #[serde(default)]
    pub key_groups_moved: u32,
    /// Size of the epoch's state snapshots, and how much of it was uploaded for this epoch.
    #[serde(default)]
    pub checkpoint_bytes: u64,
    #[serde(default)]
    pub checkpoint_uploaded_bytes: u64,
    /// State entries written from partial aggregates, and removed as windows closed.
    #[serde(default)]
    pub state_rows_updated: u64,
    #[serde(default)]
    pub state_rows_removed: u64,
    /// State stores' memory (memtables, block cache) and live SST files, all executors.
    #[serde(default)]
    pub state_memory_bytes: u64,
    #[serde(default)]
    pub state_disk_bytes: u64,
    /// Exact-distinct values written into state (each once per epoch, all executors), and
    /// removed with the windows the epoch closed.
    #[serde(default)]
    pub distinct_entries_written: u64,
    #[serde(default)]
    pub distinct_entries_removed: u64,
    /// Per aggregate output column, its sum over the rows the epoch emitted.
    #[serde(default)]
    pub output_sums: BTreeMap<String, f64>,
    /// Each query's own figures, in the job's order, when the job has several queries (the
    /// figures above are then the job's: rows emitted by all of them, rows late for every
    /// one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryFigures>,
}

/// One query's figures of an epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueryFigures {
    pub rows_emitted: u64,
    pub late_rows: u64,
    #[serde(default)]
    pub output_sums: BTreeMap<String, f64>,
}

/// Figures summed over every decided epoch of the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub input_rows: u64,
    pub output_rows: u64,
    /// Rows dropped as late, records set aside as malformed and rows written to the dead
    /// letter (counted from the first epoch decided by a version that records them): the log
    /// keeps only the last decisions, so these are the whole job's figures.
    #[serde(default)]
    pub late_rows: u64,
    #[serde(default)]
    pub malformed_rows: u64,
    #[serde(default)]
    pub dead_letter_rows: u64,
}

impl Totals {
    /// These totals after `stats`'s epoch.
    pub fn after(&self, stats: &EpochStats) -> Self {
        // Saturating: a decision is read back from storage, and its figures may be anything.
        Self {
            input_rows: self.input_rows.saturating_add(stats.input_rows),
            output_rows: self.output_rows.saturating_add(stats.windows_emitted),
            late_rows: self.late_rows.saturating_add(stats.late_rows),
            malformed_rows: self.malformed_rows.saturating_add(stats.malformed_rows),
            dead_letter_rows: self.dead_letter_rows.saturating_add(stats.dead_letter_rows),
        }
    }
}

/// What one executor reported for an epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecutorEpochStats {
    pub input_rows: u64,
    pub windows_emitted: u64,
    /// State entries of the executor's store (RocksDB's estimate).
    pub state_rows: u64,
    /// Exact-distinct values the executor wrote into its state (each once), and removed with
    /// the windows the epoch closed.
    #[serde(default)]
    pub distinct_entries_written: u64,
    #[serde(default)]
    pub distinct_entries_removed: u64,
    pub shuffle_rows_sent: u64,
    pub shuffle_rows_received: u64,
    pub read_ms: u64,
    pub aggregate_ms: u64,
    pub exchange_ms: u64,
    pub emit_ms: u64,
    /// Time spent snapshotting and uploading state.
    #[serde(default)]
    pub checkpoint_ms: u64,
    /// Time spent restoring state before the epoch (after a failure or a change of owners).
    #[serde(default)]
    pub restore_ms: u64,
    /// Key groups whose state the executor restored before the epoch, and the bytes of the
    /// snapshots it read for them.
    #[serde(default)]
    pub restored_key_groups: u32,
    #[serde(default)]
    pub restored_bytes: u64,
    #[serde(default)]
    pub state_rows_updated: u64,
    #[serde(default)]
    pub state_rows_removed: u64,
    #[serde(default)]
    pub state_memory_bytes: u64,
    #[serde(default)]
    pub state_disk_bytes: u64,
    #[serde(default)]
    pub input_bytes: u64,
    /// Of `emit_ms`: folding the partials into state and applying the epoch to the store.
    #[serde(default)]
    pub state_ms: u64,
    /// The executor's resident memory when it finished the epoch.
    #[serde(default)]
    pub memory_rss_bytes: u64,
    /// Records of the epoch read and decoded ahead, beside the epoch before.
    #[serde(default)]
    pub read_ahead_rows: u64,
}

/// Checks a path that a record names relative to a location (a plan's input file, a
/// snapshot's file): parts separated by `/`, none empty, `.` or `..`, and no `\\` or NUL, so
/// it cannot leave the location, whoever wrote the record.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an empty path".into());
    }
    for part in path.split('/') {
        check_file_name(part).map_err(|e| format!("path `{}`: {e}", path.escape_debug()))?;
    }
    Ok(())
}

/// Checks a file name: one part of a relative path.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("`{name}` is not a file name"));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "`{}` holds a separator or NUL",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// One file of a state snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateFile {
    /// The file's name in the RocksDB directory.
    pub name: String,
    /// Where it lives, relative to the checkpoint location (`state/...`).
    pub path: String,
    pub bytes: u64,
}

/// An executor's state after an epoch: a RocksDB checkpoint of the key groups it owned, whose
/// files live under the checkpoint's `state/`. Immutable files (SSTs) are shared by snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateSnapshot {
    pub executor_id: String,
    pub key_groups: KeyGroups,
    pub files: Vec<StateFile>,
    /// Bytes this snapshot uploaded (files no earlier snapshot of the same store had).
    pub uploaded_bytes: u64,
}

impl StateSnapshot {
    /// Size of the snapshot, shared files included.
    pub fn bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.bytes)
            .fold(0, u64::saturating_add)
    }

    pub fn overlaps(&self, key_groups: &KeyGroups) -> bool {
        self.key_groups.overlaps(key_groups)
    }

    /// The base this snapshot builds on and the changelogs on top of it: a changelog lives
    /// under `.../changelog/`, the files a base rewrote under `.../<epoch>/`, shared SSTs
    /// directly under the store's instance.
    pub fn parts(&self) -> SnapshotParts {
        let mut parts = SnapshotParts::default();
        for f in &self.files {
            let parent = f.path.rsplit('/').nth(1);
            if parent == Some("changelog") {
                parts.changelogs += 1;
                parts.changelog_bytes = parts.changelog_bytes.saturating_add(f.bytes);
                continue;
            }
            parts.base_bytes = parts.base_bytes.saturating_add(f.bytes);
            if let Some(epoch) = parent.and_then(|p| p.parse::<u64>().ok()) {
                parts.base_epoch = Some(parts.base_epoch.map_or(epoch, |e| e.max(epoch)));
            }
        }
        parts
    }
}

/// What a [`StateSnapshot`] is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotParts {
    /// The epoch after which its base was taken (none before a first base).
    pub base_epoch: Option<u64>,
    pub base_bytes: u64,
    pub changelogs: u32,
    pub changelog_bytes: u64,
}

/// `commits/<epoch>`: the decision. Once written, the epoch's output reaches the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommitRecord {
    pub epoch: u64,
    /// Next offset to read per partition.
    pub end_offsets: BTreeMap<i32, i64>,
    /// A file source's position: every file whose path sorts up to this one has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_through: Option<String>,
    /// Watermark in force for the next epoch.
    pub next_watermark_micros: Option<i64>,
    /// Delta add actions (JSON) for the output table (the first query's).
    pub output_adds: Vec<String>,
    /// The output tables' add actions of the job's queries after the first, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_output_adds: Vec<Vec<String>>,
    /// Delta add actions (JSON) for the dead-letter table.
    pub dead_letter_adds: Vec<String>,
    /// Delta add actions (JSON) for the late-rows table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_rows_adds: Vec<String>,
    pub stats: EpochStats,
    /// The figures of each executor, by executor id.
    #[serde(default)]
    pub executors: BTreeMap<String, ExecutorEpochStats>,
    /// The assignment the epoch ran with (a re-run after a failure may differ from the plan's).
    #[serde(default)]
    pub assignment: Vec<Assignment>,
    /// Every owner's state after the epoch: where the next epoch's state is restored from.
    #[serde(default)]
    pub state: Vec<StateSnapshot>,
    /// Totals over this and every earlier decided epoch (the Pushgateway's counters).
    #[serde(default)]
    pub totals: Totals,
    pub decided_at_micros: i64,
}

impl CommitRecord {
    /// The add actions of query `query`'s output table.
    pub fn output_adds_of(&self, query: usize) -> &[String] {
        match query {
            0 => &self.output_adds,
            n => self.more_output_adds.get(n - 1).map_or(&[], Vec::as_slice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_that_leave_their_location_are_refused() {
        for good in [
            "a",
            "events-001.jsonl",
            "2026/01/01/e.jsonl",
            "state/e/i1/0/MANIFEST-1",
            ".hidden/..x",
        ] {
            assert_eq!(check_relative_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "..",
            "../x",
            "a/../../b",
            "a/./b",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name("a/b").is_err());
        assert!(check_file_name("..").is_err());
        assert_eq!(check_file_name("000012.sst"), Ok(()));
    }

    #[test]
    fn a_snapshot_names_its_base_and_counts_its_changelogs() {
        let file = |path: &str, bytes| StateFile {
            name: path.rsplit('/').next().unwrap().into(),
            path: path.into(),
            bytes,
        };
        let instance = "state/e1/0123456789abcdef0123456789abcdef";
        let snapshot = StateSnapshot {
            executor_id: "e1".into(),
            key_groups: KeyGroups::range(0, 8),
            files: vec![
                file(&format!("{instance}/000012.sst"), 1000),
                file(&format!("{instance}/40/MANIFEST-000014"), 10),
                file(&format!("{instance}/40/CURRENT"), 1),
                file(&format!("{instance}/changelog/00000000000000000041"), 100),
                file(&format!("{instance}/changelog/00000000000000000042"), 50),
            ],
            uploaded_bytes: 50,
        };
        assert_eq!(
            snapshot.parts(),
            SnapshotParts {
                base_epoch: Some(40),
                base_bytes: 1011,
                changelogs: 2,
                changelog_bytes: 150,
            }
        );
    }

    /// A plan and a decision with every kind of field filled in.
    fn records() -> (EpochPlan, CommitRecord) {
        let plan = EpochPlan {
            epoch: 7,
            topic: "web-events".into(),
            ranges: vec![PartitionRange {
                partition: 0,
                start: 10,
                end: 20,
            }],
            files: vec![InputFile {
                path: "2026/e.jsonl".into(),
                bytes: 99,
            }],
            watermark_micros: Some(1_700_000_000_000_000),
            planned_at_micros: 1_700_000_100_000_000,
            assignment: vec![Assignment {
                executor_id: "executor-0".into(),
                partitions: vec![0, 1],
                key_groups: KeyGroups::range(0, 256),
            }],
            lost: vec![PartitionRange {
                partition: 1,
                start: 0,
                end: 5,
            }],
        };
        let record = CommitRecord {
            epoch: 7,
            end_offsets: BTreeMap::from([(0, 20)]),
            files_through: Some("2026/e.jsonl".into()),
            next_watermark_micros: Some(5),
            output_adds: vec!["{}".into()],
            state: vec![StateSnapshot {
                executor_id: "executor-0".into(),
                key_groups: KeyGroups::range(0, 256),
                files: vec![StateFile {
                    name: "1.sst".into(),
                    path: "state/e/i/1.sst".into(),
                    bytes: 3,
                }],
                uploaded_bytes: 3,
            }],
            assignment: plan.assignment.clone(),
            ..Default::default()
        };
        (plan, record)
    }

    proptest! {
        #![proptest_config(crate::testing::fuzzing::config(1_000))]

        /// A plan or decision read back after any corruption of its bytes: an error, or a
        /// record whose figures can be computed and whose paths are checked, never a panic.
        #[test]
        fn corrupted_checkpoint_records_are_read_or_refused(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            numbers in proptest::collection::vec(prop_oneof![
                Just("-9223372036854775808"), Just("9223372036854775807"), Just("18446744073709551615"),
                Just("1e400"), Just("-0"), Just("\"../../x\""), Just("null"), Just("[]"), Just("{}"),
            ], 0..3),
        ) {
            let (plan, record) = records();
            for text in [serde_json::to_string(&plan).unwrap(), serde_json::to_string(&record).unwrap()] {
                let mut bytes = text.into_bytes();
                for (at, byte) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *byte;
                }
                // Numbers at and past the edges in place of the first numbers.
                let mut text = String::from_utf8_lossy(&bytes).into_owned();
                for n in &numbers {
                    if let Some(start) = text.find(|c: char| c.is_ascii_digit()) {
                        let end = text[start..].find(|c: char| !c.is_ascii_digit()).map_or(text.len(), |e| start + e);
                        text.replace_range(start..end, n);
                    }
                }
                if let Ok(plan) = serde_json::from_str::<EpochPlan>(&text) {
                    plan.planned_rows();
                    plan.partitions();
                    for f in &plan.files {
                        let _ = check_relative_path(&f.path);
                    }
                }
                if let Ok(record) = serde_json::from_str::<CommitRecord>(&text) {
                    record.totals.after(&record.stats);
                    for s in &record.state {
                        s.bytes();
                        s.overlaps(&KeyGroups::range(0, 256));
                        for f in &s.files {
                            let _ = check_file_name(&f.name).and_then(|()| check_relative_path(&f.path));
                        }
                    }
                }
            }
        }

        /// Whatever a path holds, one that passes the check names no parent, no root and no
        /// separator but `/`: joined onto a directory it stays there.
        #[test]
        fn checked_paths_stay_inside(path in "[a-z./\\\\]{0,12}") {
            if check_relative_path(&path).is_ok() {
                let joined = std::path::Path::new("/base").join(&path);
                prop_assert!(joined.starts_with("/base"));
                prop_assert!(joined.components().all(|c| matches!(c,
                    std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }
    }
}
