//! One end-to-end run of the reference job with `weir local`, and what it measured: wall time,
//! the engine's time from the first plan to the last decision, rows, distinct state, and each
//! process's peak resident memory (from its last log line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use weir_common::checkpoint::CommitRecord;
use weir_storage::CheckpointLog;

use super::in_turns;

/// How a run is set up.
pub struct RunSpec {
    pub name: String,
    /// The job's `source:` lines naming its input ([`files_source`], [`kafka_source`]).
    pub source: String,
    /// The directory of a file source's input, read once before the run is timed.
    pub input: Option<PathBuf>,
    pub executors: usize,
    pub snapshots: bool,
    pub distinct: Distinct,
}

/// How the job counts distinct users: the reference job's exact `count(distinct user_id)`, or
/// `approx_count_distinct(user_id)` as a Spark stream must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distinct {
    Exact,
    Approx,
}

#[derive(Debug)]
pub struct RunResult {
    pub name: String,
    pub wall: Duration,
    /// From the first epoch's plan to the last decision.
    pub engine: Duration,
    pub input_rows: u64,
    pub epochs: usize,
    /// The `unique_users` of every row the run emitted, summed.
    pub unique_users: u64,
    /// Peak resident memory by process (`driver`, `executor-0`, ...).
    pub peak_rss: BTreeMap<String, u64>,
    /// Each process's CPU time and its lifetime.
    pub cpu: BTreeMap<String, CpuTime>,
}

/// A process's CPU time over its lifetime, from the line in which it says it stopped.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    pub seconds: f64,
    pub wall_seconds: f64,
}

impl RunResult {
    pub fn engine_events_per_second(&self) -> f64 {
        self.input_rows as f64 / self.engine.as_secs_f64().max(1e-9)
    }

    pub fn wall_events_per_second(&self) -> f64 {
        self.input_rows as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Each process's CPU time over its lifetime as a share of one core (above 1 when its
    /// threads overlapped).
    pub fn cpu_use(&self) -> BTreeMap<String, f64> {
        self.cpu
            .iter()
            .map(|(who, t)| (who.clone(), t.seconds / t.wall_seconds.max(1e-9)))
            .collect()
    }

    /// Events per second of CPU time its executors used together: what a core of executor
    /// work does, whatever the cores waited for or gave to other processes.
    pub fn events_per_executor_cpu_second(&self) -> Option<f64> {
        let cpu: f64 = self
            .cpu
            .iter()
            .filter(|(who, _)| who.starts_with("executor"))
            .map(|(_, t)| t.seconds)
            .sum();
        (cpu > 0.0).then(|| self.input_rows as f64 / cpu)
    }
}

/// The rounds of one configuration, in the order they ran; its figures are the median round's.
pub struct Repeated {
    pub runs: Vec<RunResult>,
}

impl Repeated {
    pub fn new(runs: Vec<RunResult>) -> Self {
        assert!(!runs.is_empty(), "a configuration runs at least once");
        Self { runs }
    }

    pub fn name(&self) -> &str {
        &self.runs[0].name
    }

    /// The round with the median throughput.
    pub fn median(&self) -> &RunResult {
        median_by(self.runs.iter().collect(), |r| r.engine_events_per_second())
            .unwrap_or(&self.runs[0])
    }

    /// The lowest and highest throughput of the rounds.
    pub fn range(&self) -> (f64, f64) {
        self.runs
            .iter()
            .map(RunResult::engine_events_per_second)
            .fold((f64::INFINITY, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r)))
    }
}

/// What one configuration costs against another whose rounds ran back to back with its own:
/// each round's `1 - rate / other's rate` in %, and their median.
pub struct PairedCost {
    pub median: f64,
    pub rounds: Vec<f64>,
}

impl PairedCost {
    pub fn of(this: &Repeated, against: &Repeated) -> Self {
        let rounds: Vec<f64> = this
            .runs
            .iter()
            .zip(&against.runs)
            .map(|(a, b)| {
                100.0 * (1.0 - a.engine_events_per_second() / b.engine_events_per_second())
            })
            .collect();
        Self {
            median: median(rounds.clone()).unwrap_or(f64::NAN),
            rounds,
        }
    }

    /// The lower and the upper quartile of the rounds' costs (nearest rank).
    pub fn quartiles(&self) -> (f64, f64) {
        let mut sorted = self.rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: usize| {
            let rank = (q * sorted.len()).div_ceil(4).max(1);
            sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
        };
        (at(1), at(3))
    }

    /// The least and the greatest of the rounds' costs.
    pub fn range(&self) -> (f64, f64) {
        if self.rounds.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let rounds = self.rounds.iter().copied();
        (
            rounds.clone().fold(f64::INFINITY, f64::min),
            rounds.fold(f64::NEG_INFINITY, f64::max),
        )
    }

    /// The rounds' costs as the report lists them: `5.5, 0.7, -2.3`.
    pub fn listed(&self) -> String {
        let listed: Vec<String> = self.rounds.iter().map(|c| format!("{c:.1}")).collect();
        listed.join(", ")
    }
}

/// The median of `values` (the upper one of an even count); `None` when there are none.
pub fn median(values: Vec<f64>) -> Option<f64> {
    median_by(values, |v| *v)
}

/// The item of median `key` (the upper one of an even count); `None` when there are none.
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len() / 2;
    items.into_iter().nth(middle)
}

/// A file source over the files under `input`.
pub fn files_source(input: &Path, max_files: u64) -> String {
    format!(
        "  files: {{path: \"{}\", max_files_per_trigger: {max_files}}}\n",
        input.display()
    )
}

/// A Kafka source over `topic` from its earliest offsets, read with `client` (`librdkafka`
/// or `weir`) given `options`.
pub fn kafka_source_with(
    brokers: &str,
    topic: &str,
    max_offsets: u64,
    client: &str,
    options: &[(&str, &str)],
) -> String {
    let options: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!(
        "  kafka: {{bootstrap_servers: \"{brokers}\", topic: {topic}, starting_offsets: earliest, \
         max_offsets_per_trigger: {max_offsets}, client: {client}, options: {{{}}}}}\n",
        options.join(", ")
    )
}

/// The reference job's text for `source` with its checkpoint and tables under `dir`. The log
/// keeps every decision (the figures are read from them after the run), so no run's state
/// snapshots are deleted either: a bench run's checkpoint is small.
pub fn job_text(source: &str, dir: &Path, distinct: Distinct) -> String {
    let root = dir.display().to_string();
    let job = match distinct {
        Distinct::Exact => weir_common::job::reference::job_file("bench", source, &root),
        Distinct::Approx => weir_common::job::reference::approx_job_file("bench", source, &root),
    };
    format!("{job}checkpoint_retention: 100000\n")
}

/// The decisions of the checkpoint at `url` in epoch order, and the first plan's time: read
/// with the checkpoint log, as the driver reads them.
pub async fn decisions(url: &str) -> anyhow::Result<(i64, Vec<CommitRecord>)> {
    decisions_from(url, 0).await
}

/// The decisions of epoch `from` on, and the time of that epoch's plan.
pub async fn decisions_from(url: &str, from: u64) -> anyhow::Result<(i64, Vec<CommitRecord>)> {
    let log = CheckpointLog::open(url, &BTreeMap::new())?;
    let first_plan = log
        .plan(from)
        .await?
        .with_context(|| format!("no plan of epoch {from} in the checkpoint"))?
        .planned_at_micros;
    let last = log
        .latest("commits")
        .await?
        .context("no decision in the checkpoint")?;
    let mut records = Vec::new();
    for epoch in from..=last {
        records.push(
            log.commit(epoch)
                .await?
                .with_context(|| format!("the decision of epoch {epoch} is missing"))?,
        );
    }
    Ok((first_plan, records))
}

/// The epoch a run of the job at `url` starts with: the one after its last decision.
async fn next_epoch(url: &str) -> anyhow::Result<u64> {
    let log = CheckpointLog::open(url, &BTreeMap::new())?;
    Ok(log.latest("commits").await?.map_or(0, |last| last + 1))
}

/// Peak RSS by process from the JSON log lines of `weir local`'s processes.
pub fn peak_rss(log: &str) -> BTreeMap<String, u64> {
    at_stop(log, |fields| fields["peak_rss_bytes"].as_u64())
}

/// Each process's CPU time over its lifetime, from the JSON log lines of `weir local`'s
/// processes.
pub fn cpu_times(log: &str) -> BTreeMap<String, CpuTime> {
    at_stop(log, |fields| {
        Some(CpuTime {
            seconds: fields["cpu_seconds"].as_f64()?,
            wall_seconds: fields["wall_seconds"].as_f64()?,
        })
    })
}

/// A figure by process (`driver`, `executor-0`, ...) from the log lines in which `weir
/// local`'s processes say they stopped.
fn at_stop<T>(log: &str, figure: impl Fn(&Value) -> Option<T>) -> BTreeMap<String, T> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| {
            let fields = &line["fields"];
            let who = match fields["message"].as_str()? {
                "driver stopped" => "driver".to_string(),
                "executor stopped" => fields["executor"].as_str()?.to_string(),
                _ => return None,
            };
            Some((who, figure(fields)?))
        })
        .collect()
}

/// A fresh directory for the run `name` under `root`, with its job file; answers the job file
/// and the checkpoint's URL.
pub fn prepare(
    root: &Path,
    name: &str,
    source: &str,
    distinct: Distinct,
) -> anyhow::Result<(PathBuf, String)> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let job = dir.join("job.yaml");
    let text = job_text(source, &dir, distinct);
    let checkpoint = weir_common::job::parse_job(&text, &dir)?.checkpoint_url;
    std::fs::write(&job, text)?;
    Ok((job, checkpoint))
}

/// `weir local` over `job` with `executors` executors, its logs as JSON on a pipe; `trigger`
/// overrides the job's.
pub fn local_command(
    job: &Path,
    executors: usize,
    trigger: Option<&str>,
) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let dir = job.parent().unwrap_or(Path::new("."));
    let mut cmd = Command::new(exe);
    cmd.args(["--log-format", "json", "local", "--job"])
        .arg(job)
        .args(["--executors", &executors.to_string()]);
    if let Some(t) = trigger {
        cmd.args(["--trigger", t]);
    }
    cmd.arg("--work-dir")
        .arg(dir.join("work"))
        .args(["--admin-listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--ui-listen", "off"])
        .env("RUST_LOG", "warn,weir_driver=info,weir_executor=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// Runs each of `specs` `rounds` times, in turns (`in_turns`), `accept` checking each run as
/// it ends: each spec's rounds, in the order of `specs`.
pub async fn in_rounds(
    specs: &[RunSpec],
    rounds: u64,
    root: &Path,
    accept: impl Fn(&RunResult) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Repeated>> {
    in_rounds_after(specs, rounds, root, accept, || Ok(())).await
}

/// [`in_rounds`], running `before` before each round.
pub async fn in_rounds_after(
    specs: &[RunSpec],
    rounds: u64,
    root: &Path,
    accept: impl Fn(&RunResult) -> anyhow::Result<()>,
    mut before: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Repeated>> {
    let mut results: Vec<Vec<RunResult>> = specs.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        before()?;
        for (i, spec) in in_turns(specs, round) {
            eprintln!("weir bench: {}, round {round} of {rounds}", spec.name);
            let run = run(spec, root).await?;
            accept(&run)?;
            results[i].push(run);
        }
    }
    Ok(results.into_iter().map(Repeated::new).collect())
}

/// Runs the job once to the end of its input (`--trigger available-now`), from scratch.
pub async fn run(spec: &RunSpec, root: &Path) -> anyhow::Result<RunResult> {
    let (job, checkpoint) = prepare(root, &spec.name, &spec.source, spec.distinct)?;
    run_job(spec, &job, &checkpoint).await
}

/// Settles the machine before a timed run: what the bench wrote so far (generated events,
/// earlier runs' tables and state) goes to disk, and the run's input files are read once.
/// The kernel writes dirty pages back about 30 s after they were written, which put a case's
/// 450 MB of events on disk in the middle of a later case's rounds; and a machine may page
/// out page-cache memory left idle (the bench's VM: DAMON's pageout scheme, after about a
/// minute), which made the first run over events generated earlier read them from disk.
async fn settle(input: Option<&Path>) -> anyhow::Result<()> {
    let input = input.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // SAFETY: sync(2) takes no arguments, touches no memory of this process and cannot
        // fail.
        unsafe { libc::sync() };
        if let Some(dir) = input {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.is_file() {
                    let mut file = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    std::io::copy(&mut file, &mut std::io::sink())
                        .with_context(|| format!("reading {}", path.display()))?;
                }
            }
        }
        Ok(())
    })
    .await
    .context("settling the machine before a run")?
}

/// Runs the job file `job` (as [`prepare`] wrote it, its checkpoint at `checkpoint`) to the
/// end of its input, resuming from whatever its checkpoint already holds; its figures are
/// those of the epochs this run decided.
pub async fn run_job(spec: &RunSpec, job: &Path, checkpoint: &str) -> anyhow::Result<RunResult> {
    let from = next_epoch(checkpoint).await?;
    settle(spec.input.as_deref()).await?;
    let mut cmd = local_command(job, spec.executors, Some("available-now"))?;
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
    RunResult::read(&spec.name, wall, checkpoint, from, &log).await
}

impl RunResult {
    /// What the run `name` measured, from its checkpoint's decisions of epoch `from` on and
    /// its processes' log.
    pub async fn read(
        name: &str,
        wall: Duration,
        checkpoint: &str,
        from: u64,
        log: &str,
    ) -> anyhow::Result<RunResult> {
        let (first_plan, decisions) = decisions_from(checkpoint, from).await?;
        let last_decision = decisions.last().map_or(first_plan, |d| d.decided_at_micros);
        Ok(RunResult {
            name: name.to_string(),
            wall,
            engine: Duration::from_micros(u64::try_from(last_decision - first_plan).unwrap_or(0)),
            input_rows: decisions.iter().map(|d| d.stats.input_rows).sum(),
            epochs: decisions.len(),
            unique_users: decisions
                .iter()
                .filter_map(|d| d.stats.output_sums.get("unique_users"))
                .sum::<f64>() as u64,
            peak_rss: peak_rss(log),
            cpu: cpu_times(log),
        })
    }
}

/// Waits until the checkpoint at `url` holds a decision that `done` accepts, and answers it.
pub async fn wait_for_decision(
    url: &str,
    child: &mut Child,
    timeout: Duration,
    done: impl Fn(&CommitRecord) -> bool,
) -> anyhow::Result<CommitRecord> {
    let log = CheckpointLog::open(url, &BTreeMap::new())?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(epoch) = log.latest("commits").await? {
            if let Some(record) = log.commit(epoch).await? {
                if done(&record) {
                    return Ok(record);
                }
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("weir local exited ({status}) before the decision waited for");
        }
        if Instant::now() > deadline {
            bail!("the decision waited for did not come within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops `weir local` as a user would (SIGTERM: it finishes the epoch in progress).
pub async fn stop(child: &mut Child) -> anyhow::Result<()> {
    crate::local::signal(child, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("weir local did not stop within 60 s of SIGTERM")??;
    if !status.success() {
        bail!("weir local stopped with {status}");
    }
    Ok(())
}

/// Reads `child`'s log (its stderr) as it comes, so that the pipe never fills and stops the
/// processes; the task answers all of it once the child is gone.
pub fn read_log(child: &mut Child) -> anyhow::Result<tokio::task::JoinHandle<String>> {
    let mut stderr = child.stderr.take().context("weir local's log")?;
    Ok(tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    }))
}
