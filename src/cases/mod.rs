//! `weir test CASES.yaml [--job FILE]`: a job run against scripted input on this machine, no
//! broker and no object store: the same driver, executors and state as `weir local`, over
//! files the case writes and local Delta tables. Every case runs as written, with a restart
//! after every step, and with 1 and 3 executors; each run must meet the expectations and give
//! the rows the run as written gave.

mod job;
mod rows;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::Value;

use spec::{Case, CaseFile, Expected, JobRef, Step};

#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// The cases file.
    pub cases: PathBuf,
    /// The job under test (instead of the cases file's `job`).
    #[arg(long)]
    pub job: Option<PathBuf>,
}

/// How a case is run besides as written.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    /// The executors to start with, instead of the cases file's.
    executors: Option<usize>,
    /// The job stops after every step and starts again.
    restart_each_step: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "as written",
        executors: None,
        restart_each_step: false,
    },
    Variant {
        name: "with a restart after every step",
        executors: None,
        restart_each_step: true,
    },
    Variant {
        name: "with 1 executor",
        executors: Some(1),
        restart_each_step: false,
    },
    Variant {
        name: "with 3 executors",
        executors: Some(3),
        restart_each_step: false,
    },
];

/// Runs the cases; answers whether every one passed.
pub async fn run(args: TestArgs) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("reading {}", args.cases.display()))?;
    let file = spec::parse(&text).with_context(|| format!("{}", args.cases.display()))?;
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let (mut passed, mut failed) = (0, 0);
    for case in &file.cases {
        let job = match (&args.job, &case.job, &file.job) {
            (_, Some(job), _) => job.clone(),
            (Some(path), None, _) => JobRef::Path(path.display().to_string()),
            (None, None, Some(job)) => job.clone(),
            (None, None, None) => {
                bail!("no job: give `job:` in the cases file or in the case, or --job FILE")
            }
        };
        match run_case(&exe, &file, case, &job).await {
            Ok(runs) => {
                passed += 1;
                println!("ok    {} ({runs})", case.name);
            }
            Err(failure) => {
                failed += 1;
                println!("FAIL  {}\n{failure:#}\n", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Runs `case` in every variant; answers what ran.
async fn run_case(
    exe: &Path,
    file: &CaseFile,
    case: &Case,
    job: &JobRef,
) -> anyhow::Result<String> {
    // A case that checks a refusal runs no job.
    if case.steps.iter().any(|s| matches!(s, Step::ExpectError(_))) {
        let [Step::ExpectError(text)] = case.steps.as_slice() else {
            bail!("a case with expect_error has no other step");
        };
        let dir = tempfile::tempdir()?;
        let yaml = job::for_case(job, dir.path())?;
        let cwd = std::env::current_dir()?;
        return match weir_common::job::parse_job(&yaml, &cwd) {
            Ok(_) => bail!("step 1 (expect_error): the job was accepted"),
            Err(e) if e.to_string().contains(text.as_str()) => Ok("refused".into()),
            Err(e) => {
                bail!("step 1 (expect_error): expected an error containing `{text}`, got: {e}")
            }
        };
    }
    let mut reference: Option<Vec<Vec<Value>>> = None;
    for variant in VARIANTS {
        let seen = run_variant(exe, file, case, job, variant, reference.as_deref())
            .await
            .with_context(|| format!("run {}", variant.name))?;
        reference.get_or_insert(seen);
    }
    Ok(format!("{} runs", VARIANTS.len()))
}

/// One run of a case: its job under a directory of its own.
struct CaseRun<'a> {
    exe: &'a Path,
    dir: tempfile::TempDir,
    job_file: PathBuf,
    job: weir_common::job::JobSpec,
    executors: usize,
    files: usize,
    unprocessed: bool,
    /// Each query's table at its last check, and the dead letter at its last.
    last_rows: BTreeMap<String, Vec<Value>>,
    last_dead_letters: Vec<Value>,
}

async fn run_variant(
    exe: &Path,
    file: &CaseFile,
    case: &Case,
    job: &JobRef,
    variant: Variant,
    reference: Option<&[Vec<Value>]>,
) -> anyhow::Result<Vec<Vec<Value>>> {
    let dir = tempfile::Builder::new().prefix("weir-test-").tempdir()?;
    std::fs::create_dir_all(dir.path().join("input"))?;
    let yaml = job::for_case(job, dir.path())?;
    let cwd = std::env::current_dir()?;
    let spec = weir_common::job::parse_job(&yaml, &cwd).context("the job is refused")?;
    let job_file = dir.path().join("job.yaml");
    std::fs::write(&job_file, &yaml)?;
    let mut run = CaseRun {
        exe,
        dir,
        job_file,
        job: spec,
        executors: variant.executors.unwrap_or(file.executors),
        files: 0,
        unprocessed: false,
        last_rows: BTreeMap::new(),
        last_dead_letters: Vec::new(),
    };
    // What each check saw, for the other variants to give the same.
    let mut seen = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let place = format!("step {} ({})", i + 1, step.name());
        let checked = run.step(step).await.with_context(|| place.clone())?;
        if let Some(actual) = checked {
            let actual = rows::without_clock(&actual);
            if let Some(expected) = reference.and_then(|r| r.get(seen.len())) {
                if *expected != actual {
                    bail!(
                        "{place}: the rows differ from the run as written's\n{}",
                        rows::diff(expected, &actual)
                    );
                }
            }
            seen.push(actual);
        }
        if variant.restart_each_step && matches!(step, Step::Input { .. }) {
            run.process().await.with_context(|| place.clone())?;
        }
    }
    Ok(seen)
}

impl CaseRun<'_> {
    /// Takes `step`; answers the rows a check looked at.
    async fn step(&mut self, step: &Step) -> anyhow::Result<Option<Vec<Value>>> {
        match step {
            Step::Input { partition, lines } => {
                self.files += 1;
                // Files are read in the order of their names, one an epoch.
                let name = format!("step-{:05}-p{partition}.jsonl", self.files);
                let mut text = lines.join("\n");
                text.push('\n');
                std::fs::write(self.dir.path().join("input").join(name), text)?;
                self.unprocessed = true;
                Ok(None)
            }
            Step::AdvanceTime => {
                self.process().await?;
                Ok(None)
            }
            Step::Restart { executors } => {
                self.process().await?;
                if let Some(n) = executors {
                    self.executors = *n;
                }
                Ok(None)
            }
            Step::ExpectEmitted(expected) => {
                self.process_pending().await?;
                let (name, now) = self.table(expected).await?;
                let before = self.last_rows.insert(name, now.clone()).unwrap_or_default();
                let emitted = rows::added(&before, &now);
                check("rows emitted", &expected.rows, &emitted)?;
                Ok(Some(emitted))
            }
            Step::ExpectTable(expected) => {
                self.process_pending().await?;
                let (name, now) = self.table(expected).await?;
                self.last_rows.insert(name, now.clone());
                check("table", &expected.rows, &now)?;
                Ok(Some(now))
            }
            Step::ExpectDeadLetter(expected) => {
                self.process_pending().await?;
                let now: Vec<Value> = match &self.job.dead_letter {
                    Some(dl) => rows::dead_letters(&rows::read_table(&dl.url).await?)
                        .into_iter()
                        .map(|(value, error)| serde_json::json!({"value": value, "error": error}))
                        .collect(),
                    None => Vec::new(),
                };
                let new = rows::added(&self.last_dead_letters, &now);
                self.last_dead_letters = now;
                let mut wanted = Vec::new();
                for d in expected {
                    wanted.push(serde_json::json!({"value": d.value}));
                }
                let (missing, unexpected) = rows::compare(&wanted, &new);
                if !missing.is_empty() || !unexpected.is_empty() {
                    bail!("dead letter:\n{}", rows::diff(&wanted, &new));
                }
                for d in expected {
                    if let Some(reason) = &d.error {
                        let found = new.iter().any(|r| {
                            r["value"] == d.value.as_str()
                                && r["error"]
                                    .as_str()
                                    .is_some_and(|e| e.contains(reason.as_str()))
                        });
                        if !found {
                            bail!(
                                "dead letter: `{}` was not set aside for a reason containing \
                                 `{reason}`:\n{}",
                                d.value,
                                rows::diff(&[], &new)
                            );
                        }
                    }
                }
                Ok(Some(new))
            }
            Step::ExpectMetrics(expected) => {
                self.process_pending().await?;
                let actual = self.metrics().await?;
                let mut wrong = Vec::new();
                for (name, want) in expected {
                    let got = actual.get(name.as_str()).copied().unwrap_or(0);
                    if got != *want {
                        wrong.push(format!("{name}: expected {want}, found {got}"));
                    }
                }
                if !wrong.is_empty() {
                    bail!("metrics:\n  {}", wrong.join("\n  "));
                }
                Ok(None)
            }
            Step::ExpectError(_) => bail!("a case with expect_error has no other step"),
        }
    }

    /// Processes the input written since the last run, if any.
    async fn process_pending(&mut self) -> anyhow::Result<()> {
        if self.unprocessed {
            self.process().await?;
        }
        Ok(())
    }

    /// Runs the job until what is input is processed (`--trigger available-now`), then stops
    /// it; the next run resumes from its checkpoint.
    async fn process(&mut self) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(self.exe)
            .args(["--log-format", "json", "local", "--job"])
            .arg(&self.job_file)
            .args(["--executors", &self.executors.to_string()])
            .args(["--trigger", "available-now", "--work-dir"])
            .arg(self.dir.path().join("work"))
            .args(["--admin-listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args(["--ui-listen", "off"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("starting weir local")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            bail!(
                "the job failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.unprocessed = false;
        Ok(())
    }

    /// The table `expected` names (the job's only query's when none is named), as rows.
    async fn table(&self, expected: &Expected) -> anyhow::Result<(String, Vec<Value>)> {
        let tables = job::tables(&self.job);
        let (name, url) = match (&expected.query, tables.as_slice()) {
            (None, [one]) => one.clone(),
            (None, _) => bail!(
                "the job has several queries: name one ({})",
                tables
                    .iter()
                    .map(|t| t.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Some(q), _) => tables
                .iter()
                .find(|t| t.0 == *q)
                .cloned()
                .with_context(|| format!("the job has no query `{q}`"))?,
        };
        let rows = rows::json_rows(&rows::read_table(&url).await?)?;
        Ok((name, rows))
    }

    /// The job's figures after its last decided epoch.
    async fn metrics(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        let log = weir_storage::checkpoint_log::CheckpointLog::open(
            &self.job.checkpoint_url,
            &BTreeMap::new(),
        )?;
        let mut out = BTreeMap::new();
        let Some(epoch) = log.latest("commits").await? else {
            return Ok(out);
        };
        let Some(record) = log.commit(epoch).await? else {
            return Ok(out);
        };
        let t = &record.totals;
        out.insert("input_rows", t.input_rows);
        out.insert("rows_emitted", t.output_rows);
        out.insert("late_rows", t.late_rows);
        out.insert("malformed_rows", t.malformed_rows);
        out.insert("dead_letter_rows", t.dead_letter_rows);
        out.insert("state_rows", record.stats.state_rows);
        Ok(out)
    }
}

/// Fails with the difference when `actual` is not `expected`.
fn check(what: &str, expected: &[Value], actual: &[Value]) -> anyhow::Result<()> {
    let (missing, unexpected) = rows::compare(expected, actual);
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    bail!("{what}:\n{}", rows::diff(expected, actual))
}
