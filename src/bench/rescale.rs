//! The rescale run of `weir bench`: the reference job reads its files on 1 executor, is scaled
//! to 2 by `weir admin scale` (the admin call) once a quarter of its epochs are decided, back
//! to 1 a quarter later, and runs to the end of its input. From the
//! checkpoint's decisions it measures, for each step, the time from the scale command to the
//! decision of the first epoch on the new count, the key groups and state bytes that moved
//! (what the new owners restored), and the throughput before and after.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Request;
use weir_common::checkpoint::CommitRecord;
use weir_proto::admin::admin_client::AdminClient;
use weir_proto::admin::ScaleRequest;

use super::runs;

/// One scale step and what it cost.
#[derive(Debug)]
pub struct Step {
    pub from: usize,
    pub to: usize,
    /// From the scale call to the decision of the first epoch on `to` executors.
    pub command_to_decision: Duration,
    pub first_epoch: u64,
    pub key_groups_moved: u64,
    pub restored_bytes: u64,
    /// The slowest new owner's restore.
    pub restore_ms: u64,
    /// Events/s over the epochs on `from` before the command and on `to` after the first.
    pub before: f64,
    pub after: f64,
}

impl Step {
    pub fn bytes_per_moved_group(&self) -> f64 {
        self.restored_bytes as f64 / self.key_groups_moved.max(1) as f64
    }
}

/// Events/s over the decisions after `first` up to `last` (by their decision times).
fn rate(decisions: &[CommitRecord], first: u64, last: u64) -> f64 {
    let at = |epoch: u64| decisions.iter().find(|d| d.epoch == epoch);
    let (Some(a), Some(b)) = (at(first), at(last)) else {
        return 0.0;
    };
    let rows: u64 = decisions
        .iter()
        .filter(|d| d.epoch > first && d.epoch <= last)
        .map(|d| d.stats.input_rows)
        .sum();
    let seconds = (b.decided_at_micros - a.decided_at_micros) as f64 / 1e6;
    if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    }
}

/// The first decided epoch after `commanded_micros` on `to` executors.
fn first_on(decisions: &[CommitRecord], to: usize, commanded_micros: i64) -> Option<&CommitRecord> {
    decisions
        .iter()
        .find(|d| d.decided_at_micros > commanded_micros && d.executors.len() == to)
}

/// Runs the job over the files under `input` (`files` of them, `per_epoch` an epoch) and
/// answers the two steps.
pub async fn measure(
    root: &Path,
    input: &Path,
    files: u64,
    per_epoch: u64,
    events: u64,
) -> anyhow::Result<Vec<Step>> {
    let source = runs::files_source(input, per_epoch);
    let (job, checkpoint) = runs::prepare(root, "rescale", &source, runs::Distinct::Exact)?;
    // Epochs back to back: the trigger never waits for its interval.
    let mut child = runs::local_command(&job, 1, Some("10ms"))?
        .stdout(std::process::Stdio::piped())
        .env_remove("WEIR_ADMIN_TOKEN")
        .kill_on_drop(true)
        .spawn()
        .context("starting weir local")?;
    let log_task = runs::read_log(&mut child)?;
    let mut lines = BufReader::new(child.stdout.take().context("weir local's output")?).lines();
    let admin = loop {
        match lines.next_line().await? {
            Some(line) => {
                if let Some(url) = line.strip_prefix("weir driver admin on ") {
                    break url.trim().to_string();
                }
            }
            None => bail!("weir local ended without announcing its admin address"),
        }
    };
    // The rest of its output is read as it comes, so that the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut client = AdminClient::connect(admin.clone())
        .await
        .with_context(|| format!("connecting to the admin API at {admin}"))?;

    let quarter = (files / per_epoch.max(1) / 4).max(2);
    let timeout = Duration::from_secs(300);
    let mut commands = Vec::new();
    let mut wait_from = quarter;
    for to in [2usize, 1] {
        runs::wait_for_decision(&checkpoint, &mut child, timeout, |d| d.epoch >= wait_from).await?;
        let commanded = chrono::Utc::now().timestamp_micros();
        client
            .scale(Request::new(ScaleRequest {
                query: String::new(),
                executors: to as u32,
            }))
            .await
            .with_context(|| format!("scaling to {to} executors"))?;
        let first = runs::wait_for_decision(&checkpoint, &mut child, timeout, |d| {
            d.decided_at_micros > commanded && d.executors.len() == to
        })
        .await?;
        commands.push((to, commanded));
        wait_from = first.epoch + quarter;
    }
    runs::wait_for_decision(&checkpoint, &mut child, timeout, |d| {
        d.totals.input_rows >= events
    })
    .await?;
    runs::stop(&mut child).await?;
    let _ = log_task.await;

    let (_, decisions) = runs::decisions(&checkpoint).await?;
    let last = decisions
        .iter()
        .rev()
        .find(|d| d.stats.input_rows > 0)
        .map_or(0, |d| d.epoch);
    let mut steps = Vec::new();
    let mut before_from = 1;
    let mut from = 1;
    for (i, &(to, commanded)) in commands.iter().enumerate() {
        let first = first_on(&decisions, to, commanded)
            .with_context(|| format!("no decided epoch on {to} executors"))?;
        let before_to = decisions
            .iter()
            .filter(|d| d.decided_at_micros <= commanded)
            .map(|d| d.epoch)
            .max()
            .unwrap_or(0);
        let after_to = match commands.get(i + 1) {
            Some(&(_, next)) => decisions
                .iter()
                .filter(|d| d.decided_at_micros <= next)
                .map(|d| d.epoch)
                .max()
                .unwrap_or(last),
            None => last,
        };
        let restoring = first.executors.values();
        steps.push(Step {
            from,
            to,
            command_to_decision: Duration::from_micros(
                u64::try_from(first.decided_at_micros - commanded).unwrap_or(0),
            ),
            first_epoch: first.epoch,
            key_groups_moved: u64::from(first.stats.key_groups_moved),
            restored_bytes: restoring.clone().map(|x| x.restored_bytes).sum(),
            restore_ms: restoring.map(|x| x.restore_ms).max().unwrap_or(0),
            before: rate(&decisions, before_from, before_to),
            after: rate(&decisions, first.epoch, after_to),
        });
        before_from = first.epoch;
        from = to;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::checkpoint::ExecutorEpochStats;

    fn decision(epoch: u64, at_s: i64, rows: u64, executors: usize) -> CommitRecord {
        let mut d = CommitRecord {
            epoch,
            decided_at_micros: at_s * 1_000_000,
            ..Default::default()
        };
        d.stats.input_rows = rows;
        for i in 0..executors {
            d.executors
                .insert(format!("executor-{i}"), ExecutorEpochStats::default());
        }
        d
    }

    #[test]
    fn rates_count_the_epochs_after_the_first_over_their_decision_times() {
        let d = vec![
            decision(0, 0, 500, 1),
            decision(1, 1, 100, 1),
            decision(2, 2, 100, 1),
            decision(3, 5, 300, 2),
        ];
        assert_eq!(rate(&d, 1, 3), 100.0);
        assert_eq!(rate(&d, 0, 1), 100.0);
        assert_eq!(rate(&d, 1, 9), 0.0);
        assert_eq!(first_on(&d, 2, 0).map(|d| d.epoch), Some(3));
        assert_eq!(first_on(&d, 1, 1_500_000).map(|d| d.epoch), Some(2));
        assert!(first_on(&d, 3, 0).is_none());
    }
}
