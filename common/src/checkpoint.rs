//! Checkpoint records (DESIGN.md §5): `metadata.json`, `offsets/<epoch>` (the plan) and
//! `commits/<epoch>` (the decision). They are JSON so an operator can read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// Which executor reads which partitions and owns which key groups in an epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    pub executor_id: String,
    /// Kafka partitions, or for a file source the indexes of the plan's files.
    pub partitions: Vec<i32>,
    /// Key groups `[start, end)`.
    pub key_groups: (u32, u32),
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
            .map(|r| u64::try_from(r.end - r.start).unwrap_or(0))
            .sum()
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
}

/// Figures summed over every decided epoch of the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub input_rows: u64,
    pub output_rows: u64,
}

impl Totals {
    /// These totals after `stats`'s epoch.
    pub fn after(&self, stats: &EpochStats) -> Self {
        Self {
            input_rows: self.input_rows + stats.input_rows,
            output_rows: self.output_rows + stats.windows_emitted,
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
    #[serde(default)]
    pub state_rows_updated: u64,
    #[serde(default)]
    pub state_rows_removed: u64,
    #[serde(default)]
    pub state_memory_bytes: u64,
    #[serde(default)]
    pub state_disk_bytes: u64,
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
    /// Key groups `[start, end)`.
    pub key_groups: (u32, u32),
    pub files: Vec<StateFile>,
    /// Bytes this snapshot uploaded (files no earlier snapshot of the same store had).
    pub uploaded_bytes: u64,
}

impl StateSnapshot {
    /// Size of the snapshot, shared files included.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    pub fn overlaps(&self, key_groups: (u32, u32)) -> bool {
        self.key_groups.0 < key_groups.1 && key_groups.0 < self.key_groups.1
    }
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
    /// Delta add actions (JSON) for the output table.
    pub output_adds: Vec<String>,
    /// Delta add actions (JSON) for the dead-letter table.
    pub dead_letter_adds: Vec<String>,
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
