//! The bench's memory run: one 5-minute window holding many distinct users in the exact-distinct
//! state of 2 executors. It runs in two parts, as a job whose executors are lost with their
//! disks would: the first reads every event of the window (the state is at its largest, and
//! the last decision's snapshots hold all of it); then the executors' local stores are deleted
//! and the job runs again with one more event, 30 minutes later, so each executor restores its
//! state from the snapshots before the epoch that closes the window and counts its values.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::runs::{self, Distinct, RunResult, RunSpec};
use super::{generate, strings, START};

/// Events of each input file; an epoch reads two.
const EVENTS_PER_FILE: u64 = 125_000;

/// What the memory run measured.
pub struct MemoryRun {
    /// Distinct users generated into the window.
    pub users: u64,
    /// Both parts, each with the figures of the epochs it decided.
    pub filled: RunResult,
    pub closed: RunResult,
    /// The executors' state snapshots after the window was filled: all their files, and how
    /// many entries their stores held.
    pub snapshot_bytes: u64,
    pub snapshot_files: usize,
    pub state_rows: u64,
    /// The slowest executor's restore of that state in the second part, and the bytes all
    /// executors read for it.
    pub slowest_restore: Duration,
    pub restored_bytes: u64,
}

impl MemoryRun {
    /// The highest peak resident memory of an executor over both parts.
    pub fn executor_peak_rss(&self) -> u64 {
        [&self.filled, &self.closed]
            .iter()
            .flat_map(|r| r.peak_rss.iter())
            .filter(|(who, _)| who.starts_with("executor"))
            .map(|(_, bytes)| *bytes)
            .max()
            .unwrap_or(0)
    }
}

pub async fn measure(root: &Path, users: u64) -> anyhow::Result<MemoryRun> {
    eprintln!("weir bench: memory with {users} users in one window");
    let input = root.join("window-events");
    // Epochs of 250 000 events (two files of 125 000), about the throughput runs' size,
    // whatever the users: the run measures the state, not larger epochs.
    let events = users * 3;
    let files = events.div_ceil(EVENTS_PER_FILE).max(1);
    generate(
        &input,
        &strings(&[
            "--count",
            &events.to_string(),
            "--users",
            &users.to_string(),
            "--files",
            &files.to_string(),
            "--start",
            START,
            "--span",
            "5m",
            "--out-of-order",
            "0s",
            "--seed",
            "2",
        ]),
    )
    .await?;
    let spec = RunSpec {
        name: "memory-2-executors".into(),
        source: runs::files_source(&input, 2),
        input: Some(input.clone()),
        executors: 2,
        snapshots: true,
        distinct: Distinct::Exact,
    };
    let (job, checkpoint) = runs::prepare(root, &spec.name, &spec.source, spec.distinct)?;
    let filled = runs::run_job(&spec, &job, &checkpoint).await?;
    let (_, decisions) = runs::decisions(&checkpoint).await?;
    let last = decisions
        .last()
        .context("the filling part decided nothing")?;

    // The executors' disks are lost: all they had must come back from the snapshots.
    let work = root.join(&spec.name).join("work");
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    write_closer(&input)?;
    let mut closed = runs::run_job(&spec, &job, &checkpoint).await?;
    closed.name = format!("{}, restored", spec.name);
    let (_, after) = runs::decisions_from(&checkpoint, last.epoch + 1).await?;
    let first = after.first().context("the closing part decided nothing")?;
    if first.executors.values().all(|e| e.restored_bytes == 0) {
        bail!("the closing part's first epoch restored no state");
    }
    std::fs::remove_dir_all(&input).with_context(|| format!("removing {}", input.display()))?;
    Ok(MemoryRun {
        users,
        filled,
        closed,
        snapshot_bytes: last.state.iter().map(|s| s.bytes()).sum(),
        snapshot_files: last.state.iter().map(|s| s.files.len()).sum(),
        state_rows: last.stats.state_rows,
        slowest_restore: Duration::from_millis(
            first
                .executors
                .values()
                .map(|e| e.restore_ms)
                .max()
                .unwrap_or(0),
        ),
        restored_bytes: first.executors.values().map(|e| e.restored_bytes).sum(),
    })
}

/// One event 30 minutes after the window moves the watermark past it, so the run's last
/// epoch closes it and counts its exact-distinct values (the event's own window stays open):
/// the count is read from the output, not estimated.
fn write_closer(input: &Path) -> anyhow::Result<()> {
    let closes_at = (chrono::DateTime::parse_from_rfc3339(START)? + chrono::Duration::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let closer = serde_json::json!({
        "event_id": "closes-the-window",
        "user_id": "user-closer",
        "event_type": "page_view",
        "page_url": null,
        "timestamp": closes_at,
        "properties": {},
    });
    std::fs::write(
        input.join("zz-closes-the-window.jsonl"),
        format!("{closer}\n"),
    )
    .context("writing the event that closes the window")
}
