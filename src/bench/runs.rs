//! One end-to-end run of the reference job with `weir local`, and what it measured: wall time,
//! the engine's time from the first plan to the last decision, rows, distinct state, and each
//! process's peak resident memory (from its last log line).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use weir_common::checkpoint::CommitRecord;
use weir_storage::CheckpointLog;

/// How a run is set up.
pub struct RunSpec<'a> {
    pub name: String,
    pub input: &'a Path,
    pub executors: usize,
    pub max_files_per_trigger: u64,
    pub snapshots: bool,
}

#[derive(Debug)]
pub struct RunResult {
    pub name: String,
    pub wall: Duration,
    /// From the first epoch's plan to the last decision.
    pub engine: Duration,
    pub input_rows: u64,
    pub epochs: usize,
    /// The most exact-distinct entries held after an epoch, all executors.
    pub distinct_entries: u64,
    /// Peak resident memory by process (`driver`, `executor-0`, ...).
    pub peak_rss: BTreeMap<String, u64>,
}

impl RunResult {
    pub fn engine_events_per_second(&self) -> f64 {
        self.input_rows as f64 / self.engine.as_secs_f64().max(1e-9)
    }

    pub fn wall_events_per_second(&self) -> f64 {
        self.input_rows as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn job_text(input: &Path, dir: &Path, max_files: u64) -> String {
    let source = format!(
        "  files: {{path: \"{}\", max_files_per_trigger: {max_files}}}\n",
        input.display()
    );
    weir_common::job::reference::job_file("bench", &source, &dir.display().to_string())
}

/// The reference job's text for files under `input` (the bench's ceiling uses its schema).
pub fn reference_job(input: &Path, dir: &Path) -> String {
    job_text(input, dir, 1)
}

/// The decisions of the checkpoint at `url` in epoch order, and the first plan's time: read
/// with the checkpoint log, as the driver reads them.
async fn decisions(url: &str) -> anyhow::Result<(i64, Vec<CommitRecord>)> {
    let log = CheckpointLog::open(url, &BTreeMap::new())?;
    let first_plan = log
        .plan(0)
        .await?
        .context("no plan in the checkpoint")?
        .planned_at_micros;
    let last = log
        .latest("commits")
        .await?
        .context("no decision in the checkpoint")?;
    let mut records = Vec::new();
    for epoch in 0..=last {
        records.push(
            log.commit(epoch)
                .await?
                .with_context(|| format!("the decision of epoch {epoch} is missing"))?,
        );
    }
    Ok((first_plan, records))
}

/// Peak RSS by process from the JSON log lines of `weir local`'s processes.
fn peak_rss(log: &str) -> BTreeMap<String, u64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| {
            let fields = &line["fields"];
            let peak = fields["peak_rss_bytes"].as_u64()?;
            let who = match fields["message"].as_str()? {
                "driver stopped" => "driver".to_string(),
                "executor stopped" => fields["executor"].as_str()?.to_string(),
                _ => return None,
            };
            Some((who, peak))
        })
        .collect()
}

/// Runs the job once over `spec.input` to the end of its files.
pub async fn run(spec: &RunSpec<'_>, root: &Path) -> anyhow::Result<RunResult> {
    let dir = root.join(&spec.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let job = dir.join("job.yaml");
    let text = job_text(spec.input, &dir, spec.max_files_per_trigger);
    let checkpoint = weir_common::job::parse_job(&text, &dir)?.checkpoint_url;
    std::fs::write(&job, text)?;
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--log-format", "json", "local", "--job"])
        .arg(&job)
        .args(["--executors", &spec.executors.to_string()])
        .args(["--trigger", "available-now", "--work-dir"])
        .arg(dir.join("work"))
        .args(["--admin-listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env("RUST_LOG", "warn,weir_driver=info,weir_executor=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !spec.snapshots {
        cmd.env(weir_executor::epoch::NO_SNAPSHOTS_VAR, "1");
    }
    let started = Instant::now();
    let out = cmd.output().await.context("running weir local")?;
    let wall = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "run {} failed ({}): {}",
            spec.name,
            out.status,
            tail.join("\n")
        );
    }
    let (first_plan, decisions) = decisions(&checkpoint).await?;
    let last_decision = decisions.last().map_or(first_plan, |d| d.decided_at_micros);
    Ok(RunResult {
        name: spec.name.clone(),
        wall,
        engine: Duration::from_micros(u64::try_from(last_decision - first_plan).unwrap_or(0)),
        input_rows: decisions.iter().map(|d| d.stats.input_rows).sum(),
        epochs: decisions.len(),
        distinct_entries: decisions
            .iter()
            .map(|d| d.stats.distinct_state_entries)
            .max()
            .unwrap_or(0),
        peak_rss: peak_rss(&log),
    })
}
