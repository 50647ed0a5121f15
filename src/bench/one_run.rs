//! `weir bench-run`: one run of the reference job over files that are already there, as
//! `weir bench` times its runs (first plan to last decision), printed as one JSON line.
//! `scripts/bench-peers.sh` runs weir through it beside its peers on the same files.

use std::path::PathBuf;

use anyhow::Context;

use super::runs::{self, Distinct, RunSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct OneRunArgs {
    /// The directory of JSON-lines files to read (as `weir gen --out-dir` writes them).
    #[arg(long)]
    pub input: PathBuf,
    /// Exact `count(distinct user_id)`, or `approx_count_distinct(user_id)` as Spark runs it.
    #[arg(long, value_enum, default_value = "exact")]
    pub distinct: Distinct,
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// Files an epoch reads (`max_files_per_trigger`).
    #[arg(long, default_value_t = 4)]
    pub files_per_epoch: u64,
    /// Where the run's job, checkpoint and tables go (kept afterwards).
    #[arg(long)]
    pub work_dir: PathBuf,
}

pub async fn run(args: OneRunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work_dir)?;
    // The job file resolves relative paths against its own directory, not this one.
    let input = std::fs::canonicalize(&args.input)
        .with_context(|| format!("finding {}", args.input.display()))?;
    let work_dir = std::fs::canonicalize(&args.work_dir)?;
    let spec = RunSpec {
        name: format!("{:?}-{}", args.distinct, args.executors).to_lowercase(),
        source: runs::files_source(&input, args.files_per_epoch),
        input: Some(input.clone()),
        executors: args.executors,
        snapshots: true,
        distinct: args.distinct,
    };
    let r = runs::run(&spec, &work_dir).await?;
    println!(
        "{}",
        serde_json::json!({
            "events": r.input_rows,
            "epochs": r.epochs,
            "seconds": r.engine.as_secs_f64(),
            "events_per_second": r.engine_events_per_second(),
            "wall_seconds": r.wall.as_secs_f64(),
            // Each executor's CPU time as a share of one core over its lifetime.
            "executor_cpu": r.cpu_use(),
        })
    );
    Ok(())
}
