//! `weir bench`: what users pay for, measured on this machine in one run. The reference events
//! are generated (seeded) as JSON-lines files; a single-threaded decode(+aggregate) loop over
//! them gives the ceiling; the reference job then runs from those files into Delta tables with
//! `weir local` on 1 and 2 executors, with and without state snapshots, in rounds (each figure
//! is the median round's); a memory run keeps about a million distinct users of one window in
//! state, reports every process's peak memory, and restores that state from its snapshots
//! into executors that lost their disks.
//! Two user-scale cases run the exact and the approximate job over events of more users. Then
//! the events go through Kafka into Delta on 1 and 2 executors: from librdkafka's mock cluster,
//! which serves from memory (weir's Kafka path, in rounds as the file runs), and from a tansu
//! broker (its SQLite storage's pace, once); a paced run at half of the mock cluster's peak
//! gives the produce-to-commit latency.

mod broker;
mod ceiling;
mod kafka;
mod kafka_runs;
mod memory;
mod one_run;
mod rescale;
mod runs;

pub use broker::{serve as serve_broker, BrokerArgs};
pub use one_run::{run as run_one, OneRunArgs};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use weir_common::query::aggregate::AggKind;

use crate::gen;
use runs::{Distinct, PairedCost, Repeated, RunResult, RunSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events of the throughput runs (10 000 users over one hour of event time).
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Files those events are split into.
    #[arg(long, default_value_t = 40)]
    pub files: u64,
    /// Files an epoch reads (`max_files_per_trigger`).
    #[arg(long, default_value_t = 4)]
    pub files_per_epoch: u64,
    /// Rounds of the file runs (1 and 2 executors, 2 without snapshots, taken in turn) and of
    /// the mock cluster's runs: each figure is the median round, since one run varies by ±5 %
    /// on a shared machine.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Distinct users in the single window of the memory run, three events each (0 skips it),
    /// in files of 125 000 events read two per epoch: epochs of 250 000 events, about the
    /// throughput runs' size, whatever the users.
    #[arg(long, default_value_t = 1_000_000)]
    pub window_users: u64,
    /// Distinct users of the user-scale cases: each runs the exact and the approximate job
    /// on 2 executors over --user-case-events events of that many users (0 skips them).
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub user_cases: Vec<u64>,
    /// Events of each user-scale case, in --files files over one hour.
    #[arg(long, default_value_t = 2_000_000)]
    pub user_case_events: u64,
    /// Rounds of each user-scale case (its exact and approximate runs, in turns). A round's
    /// paired cost scatters by about ±7 points on a shared 2-core machine (quartiles over
    /// 40 pairs: 11 and 26 % around a median of 20 %), so their median needs more rounds
    /// than --rounds to judge a 25 % target; the runs are short.
    #[arg(long, default_value_t = 21, value_parser = clap::value_parser!(u64).range(1..))]
    pub user_case_rounds: u64,
    /// Events of the rescale run (0 skips it), in 120 files read --files-per-epoch at a
    /// time: scaled from 1 to 2 executors and back while it runs.
    #[arg(long, default_value_t = 6_000_000)]
    pub rescale_events: u64,
    /// Events of the runs from tansu (0 skips them).
    #[arg(long, default_value_t = 400_000)]
    pub kafka_events: u64,
    /// Events of the runs from librdkafka's mock cluster, a broker that serves from memory
    /// (0 skips them). It keeps 5 MB of batches per partition, so they are lz4-compressed
    /// and spread over --mock-partitions; a run that reads fewer events than were produced
    /// stops the bench.
    #[arg(long, default_value_t = 3_000_000)]
    pub mock_kafka_events: u64,
    /// Partitions of the mock cluster's topics.
    #[arg(long, default_value_t = 64)]
    pub mock_partitions: i32,
    /// Offsets an epoch of the Kafka runs reads (`max_offsets_per_trigger`).
    #[arg(long, default_value_t = 200_000)]
    pub offsets_per_epoch: u64,
    /// How long the latency run produces, at half of the Kafka peak rate.
    #[arg(long, default_value_t = 15)]
    pub latency_seconds: u64,
    /// A Kafka broker to use instead of starting tansu (`host:port`); its topics are named
    /// `bench-<unix time>-...`, new every run.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Where events, tables and checkpoints go, kept afterwards (default: a temporary
    /// directory, removed).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

const START: &str = "2026-01-01T00:00:00Z";
/// Files of the rescale run; a quarter of its epochs run before each scale step.
const RESCALE_FILES: u64 = 120;

/// Generates reference events as files in `out`.
async fn generate(out: &Path, argv: &[String]) -> anyhow::Result<()> {
    let mut args = gen::GenArgs::from_argv(argv)?;
    args.out_dir = Some(out.to_path_buf());
    // Only files: KAFKA_BROKERS in the environment must not send the events anywhere.
    args.brokers = None;
    args.jsonl = None;
    gen::run(args).await.map(|_| ())
}

/// Generates `count` reference events of `users` users over the hour from [`START`] into
/// `files` files in `out`.
async fn generate_hour(
    out: &Path,
    count: u64,
    users: u64,
    files: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let argv = [
        ("--count", count),
        ("--users", users),
        ("--files", files),
        ("--seed", seed),
    ]
    .iter()
    .flat_map(|(flag, n)| [flag.to_string(), n.to_string()])
    .chain(strings(&["--start", START, "--span", "1h"]))
    .collect::<Vec<_>>();
    generate(out, &argv).await
}

/// The contents of the files in `dir`, in name order (the ceiling reads them from memory).
fn read_files(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// This machine, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or("unknown memory".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1048576.0)
        });
    format!("{cpu}, {cores} cores, {memory}")
}

/// `n` with its thousands apart, as the report writes counts: `1 000 000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Whether the latency run's producer kept half of the peak: it shares the cores with the
/// broker and the job, so within a tenth of it counts.
fn kept_half_of_peak(latency: &kafka::Latency, half: f64) -> bool {
    latency.produced_rate >= 0.9 * half
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let temp;
    let root = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a work directory")?;
            temp.path().to_path_buf()
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    eprintln!("weir bench: generating {} events", args.events);
    let input = root.join("events");
    generate_hour(&input, args.events, 10_000, args.files, 1).await?;
    let files = Arc::new(read_files(&input)?);
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();

    eprintln!("weir bench: the single-threaded ceiling");
    let job = weir_common::job::parse_job(
        &runs::job_text(&runs::files_source(&input, 1), &root, Distinct::Exact),
        &root,
    )?;
    let approx = job.queries[0]
        .query
        .windows()
        .context("the reference job is a window query")?
        .aggregates
        .iter()
        .find(|a| matches!(a.kind, AggKind::ApproxCountDistinct { .. }))
        .cloned()
        .context("the reference job has approx_count_distinct")?;
    let schema = job.input_schema.clone();
    let ceiling = {
        let (schema, approx, files) = (schema.clone(), approx.clone(), files.clone());
        tokio::task::spawn_blocking(move || ceiling::measure(&schema, &approx, &files, cores))
            .await??
    };

    let specs: Vec<RunSpec> = [(1, true), (2, true), (2, false)]
        .into_iter()
        .map(|(executors, snapshots)| RunSpec {
            name: format!(
                "files-{executors}-executor{}{}",
                if executors > 1 { "s" } else { "" },
                if snapshots { "" } else { "-no-snapshots" }
            ),
            source: runs::files_source(&input, args.files_per_epoch),
            input: Some(input.clone()),
            executors,
            snapshots,
            distinct: Distinct::Exact,
        })
        .collect();
    // In turns, so that a slow spell of the machine touches every configuration alike; and the
    // ceiling's pass again before each round, so that each round's share of it per core is
    // taken against the machine of the same minutes.
    let mut round_ceilings = Vec::new();
    let results = runs::in_rounds_after(
        &specs,
        args.rounds,
        &root,
        |_| Ok(()),
        || {
            let (pass, _) =
                tokio::task::block_in_place(|| ceiling::aggregate_pass(&schema, &approx, &files))?;
            round_ceilings.push(pass.events_per_second());
            Ok(())
        },
    )
    .await?;

    let mut user_cases = Vec::new();
    for &users in args.user_cases.iter().filter(|&&u| u > 0) {
        user_cases.push(user_case(&args, &root, users).await?);
    }

    let memory = match args.window_users {
        0 => None,
        users => Some(memory::measure(&root, users).await?),
    };

    let rescaled = if args.rescale_events > 0 {
        eprintln!("weir bench: rescaling 1 → 2 → 1 executors while the job runs");
        let rescale_input = root.join("rescale-events");
        generate(
            &rescale_input,
            &strings(&[
                "--count",
                &args.rescale_events.to_string(),
                "--files",
                &RESCALE_FILES.to_string(),
                "--start",
                START,
                "--span",
                "1h",
                "--seed",
                "3",
            ]),
        )
        .await?;
        let steps = rescale::measure(
            &root,
            &rescale_input,
            RESCALE_FILES,
            args.files_per_epoch,
            args.rescale_events,
        )
        .await?;
        // Its input is the bench's largest: gone before the Kafka runs.
        std::fs::remove_dir_all(&rescale_input)
            .with_context(|| format!("removing {}", rescale_input.display()))?;
        steps
    } else {
        Vec::new()
    };

    let kafka = kafka_runs::measure(&args, &root).await?;

    let report = report(
        &args,
        &Measured {
            bytes,
            cores,
            ceiling,
            round_ceilings,
            results,
            user_cases,
            memory,
            rescaled,
            kafka,
        },
    )?;
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One user-scale case: the exact and the approximate job over the same events.
struct UserCase {
    users: u64,
    exact: Repeated,
    approx: Repeated,
}

/// `items` with their indices in the order round `round` (from 1) runs them: as they are in
/// odd rounds, the other way round in even ones. The machine's speed drifts (other tenants of
/// the host): with a fixed order, the run after another one of its pair always met the later
/// speed, and the pair's paired cost took the drift for a cost.
pub(super) fn in_turns<T>(items: &[T], round: u64) -> Vec<(usize, &T)> {
    let mut turns: Vec<(usize, &T)> = items.iter().enumerate().collect();
    if round.is_multiple_of(2) {
        turns.reverse();
    }
    turns
}

/// Runs the exact and the approximate job in turns over events of `users` distinct users.
async fn user_case(args: &BenchArgs, root: &Path, users: u64) -> anyhow::Result<UserCase> {
    eprintln!(
        "weir bench: {} events of {users} users",
        args.user_case_events
    );
    let input = root.join(format!("events-{users}-users"));
    generate_hour(&input, args.user_case_events, users, args.files, 4).await?;
    let specs: Vec<RunSpec> = [Distinct::Exact, Distinct::Approx]
        .into_iter()
        .map(|distinct| RunSpec {
            name: format!("users-{users}-{distinct:?}").to_lowercase(),
            source: runs::files_source(&input, args.files_per_epoch),
            input: Some(input.clone()),
            executors: 2,
            snapshots: true,
            distinct,
        })
        .collect();
    let [exact, approx]: [Repeated; 2] =
        runs::in_rounds(&specs, args.user_case_rounds, root, |_| Ok(()))
            .await?
            .try_into()
            .map_err(|_| anyhow::anyhow!("in_rounds answers one figure a spec"))?;
    std::fs::remove_dir_all(&input).with_context(|| format!("removing {}", input.display()))?;
    Ok(UserCase {
        users,
        exact,
        approx,
    })
}

/// Everything one bench measured.
struct Measured {
    /// Bytes of the throughput runs' input.
    bytes: u64,
    cores: usize,
    ceiling: ceiling::Ceiling,
    /// The ceiling's decode + aggregate pass (events/s) run again before each round of the
    /// file runs, in round order.
    round_ceilings: Vec<f64>,
    results: Vec<Repeated>,
    user_cases: Vec<UserCase>,
    memory: Option<memory::MemoryRun>,
    rescaled: Vec<rescale::Step>,
    kafka: kafka_runs::KafkaRuns,
}

fn report(args: &BenchArgs, m: &Measured) -> anyhow::Result<String> {
    let Measured {
        bytes,
        cores,
        ceiling,
        round_ceilings,
        results,
        user_cases,
        memory,
        rescaled,
        kafka,
    } = m;
    let (bytes, cores, memory) = (*bytes, *cores, memory.as_ref());
    let mut out = String::new();
    let build = if cfg!(debug_assertions) {
        "debug build: figures are not representative"
    } else {
        "release build"
    };
    writeln!(
        out,
        "## weir bench, {}\n\n{}; {build}.\n\n{} reference events ({:.0} MB of JSON lines, \
         {:.0} bytes each) in {} files, 10 000 users, one hour of event time; epochs of {} files.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        args.events,
        mb(bytes),
        bytes as f64 / args.events.max(1) as f64,
        args.files,
        args.files_per_epoch,
    )?;
    writeln!(
        out,
        "| measurement | events/s | MB/s | notes |\n| --- | ---: | ---: | --- |"
    )?;
    let per_event = bytes as f64 / args.events.max(1) as f64;
    let row = |out: &mut String, what: &str, rate: f64, notes: &str| {
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.1} | {notes} |",
            rate,
            rate * per_event / 1e6
        );
    };
    row(
        &mut out,
        "ceiling: arrow-json decode, 1 thread",
        ceiling.decode.events_per_second(),
        "",
    );
    row(
        &mut out,
        "ceiling: arrow-json decode + hash aggregate, 1 thread",
        ceiling.decode_and_aggregate.events_per_second(),
        &format!("{} (window, event type) groups", ceiling.groups),
    );
    let together = ceiling.together_per_thread();
    row(
        &mut out,
        &format!(
            "ceiling: arrow-json decode + hash aggregate, {} threads at once, per thread",
            ceiling.threads
        ),
        together,
        &format!(
            "{:.1} % of the 1-thread ceiling: what a core does while the others work too",
            100.0 * together / ceiling.decode_and_aggregate.events_per_second()
        ),
    );
    row(
        &mut out,
        "weir's decoder (projected scanner, 4 columns), 1 thread",
        ceiling.scan.events_per_second(),
        "",
    );
    row(
        &mut out,
        "weir's decoder + hash aggregate, 1 thread",
        ceiling.scan_and_aggregate.events_per_second(),
        "",
    );
    row(
        &mut out,
        "physical ceiling: split lines, find the 4 fields, 1 thread",
        ceiling.find_fields.events_per_second(),
        "nothing decoded",
    );
    for repeated in results {
        let r = repeated.median();
        let (lo, hi) = repeated.range();
        row(
            &mut out,
            &format!("files → Delta, {}", r.name.trim_start_matches("files-").replace('-', " ")),
            r.engine_events_per_second(),
            &format!(
                "median of {} rounds ({lo:.0}–{hi:.0}); its first plan to last decision {:.2} s over {} epochs; with process start and stop {:.2} s ({:.0} events/s)",
                repeated.runs.len(),
                r.engine.as_secs_f64(),
                r.epochs,
                r.wall.as_secs_f64(),
                r.wall_events_per_second()
            ),
        );
    }
    for case in user_cases {
        for (repeated, what) in [(&case.exact, "exact"), (&case.approx, "approximate")] {
            let r = repeated.median();
            let (lo, hi) = repeated.range();
            row(
                &mut out,
                &format!(
                    "files → Delta, {} users, {what} distinct users, 2 executors",
                    thousands(case.users)
                ),
                r.engine_events_per_second(),
                &format!(
                    "{} events; median of {} rounds ({lo:.0}–{hi:.0}); {} epochs",
                    r.input_rows,
                    repeated.runs.len(),
                    r.epochs
                ),
            );
        }
    }
    for broker in &kafka.brokers {
        for repeated in &broker.runs {
            let r = repeated.median();
            let (lo, hi) = repeated.range();
            let rounds = match repeated.runs.len() {
                1 => String::new(),
                n => format!("median of {n} rounds ({lo:.0}–{hi:.0}); "),
            };
            // `kafka[-mock]-<client>-<n>-executor[s]`
            let rest = r
                .name
                .trim_start_matches("kafka-")
                .trim_start_matches("mock-");
            let (client, executors) = rest.split_once('-').unwrap_or(("", rest));
            let executors = executors.replace('-', " ");
            row(
                &mut out,
                &format!(
                    "Kafka ({}) → Delta, `client: {client}`, {executors}",
                    broker.broker.label()
                ),
                r.engine_events_per_second(),
                &format!(
                    "{rounds}{} events in {} partitions, first plan to last decision {:.2} s over {} epochs",
                    r.input_rows,
                    broker.partitions,
                    r.engine.as_secs_f64(),
                    r.epochs,
                ),
            );
        }
    }
    writeln!(out)?;
    let find = |name: &str| results.iter().find(|r| r.name() == name);
    if let (Some(two), Some(bare)) = (
        find("files-2-executors"),
        find("files-2-executors-no-snapshots"),
    ) {
        let rate = two.median().engine_events_per_second();
        let per_core = rate / cores.max(1) as f64;
        let share = 100.0 * per_core / ceiling.decode_and_aggregate.events_per_second();
        // Each round's run against the ceiling's pass just before that round: the host's speed
        // moves within minutes, and the first pass ran before all of them.
        let round_shares: Vec<f64> = two
            .runs
            .iter()
            .zip(round_ceilings)
            .map(|(run, ceiling)| {
                100.0 * run.engine_events_per_second() / cores.max(1) as f64 / ceiling
            })
            .collect();
        let paired_share = runs::median(round_shares.clone()).unwrap_or(share);
        let listed: Vec<String> = round_shares.iter().map(|s| format!("{s:.1}")).collect();
        // Each round's runs with and without snapshots ran back to back: compared in pairs.
        let snapshots = PairedCost::of(two, bare);
        let physical = 100.0 * per_core / ceiling.find_fields.events_per_second();
        let together = 100.0 * per_core / ceiling.together_per_thread();
        writeln!(out, "| target | measured | |\n| --- | --- | --- |")?;
        writeln!(
            out,
            "| files → Delta, 2 executors: ≥ 4 000 000 events/s | {rate:.0} events/s | {} |",
            verdict(rate >= 4e6)
        )?;
        writeln!(
            out,
            "| per core ≥ the arrow-json decode + aggregate ceiling | {paired_share:.1} % of it (median of the rounds' {} %, each round against the ceiling's pass run just before it); {share:.1} % of the first pass ({per_core:.0} events/s per core, {cores} cores); {together:.1} % of the same loop's rate per thread with {} threads at once; {physical:.1} % of the physical ceiling | {} |",
            listed.join(", "),
            ceiling.threads,
            verdict(paired_share >= 100.0)
        )?;
        writeln!(
            out,
            "| state snapshots cost ≤ 10 % of throughput | {:.1} % (median of the rounds' {} %) | {} |",
            snapshots.median,
            snapshots.listed(),
            verdict(snapshots.median <= 10.0)
        )?;
        for case in user_cases {
            let rate = case.exact.median().engine_events_per_second();
            let exact = PairedCost::of(&case.exact, &case.approx);
            let (quartiles, range) = (exact.quartiles(), exact.range());
            writeln!(
                out,
                "| {} users, exact distinct, 2 executors: ≥ 2 500 000 events/s | {rate:.0} events/s | {} |",
                thousands(case.users),
                verdict(rate >= 2.5e6)
            )?;
            writeln!(
                out,
                "| {} users: exact distinct costs ≤ 25 % against approximate | {:.1} % (median of {} rounds; quartiles {:.1} and {:.1} %, rounds {:.1} to {:.1} %) | {} |",
                thousands(case.users),
                exact.median,
                exact.rounds.len(),
                quartiles.0,
                quartiles.1,
                range.0,
                range.1,
                verdict(exact.median <= 25.0)
            )?;
        }
        if let Some(m) = memory {
            let executor_peak = m.executor_peak_rss();
            let judged = if m.users >= 1_000_000 {
                verdict(executor_peak > 0 && executor_peak <= 256_000_000)
            } else {
                "not judged: fewer than 1 000 000 users"
            };
            writeln!(
                out,
                "| executor peak RSS ≤ 256 MB with {} distinct users in one window | {:.0} MB, filling the window and restoring it ({} exact-distinct (event type, user) pairs counted when it closed); filled at {:.0} events/s over {} epochs | {judged} |",
                thousands(m.users),
                mb(executor_peak),
                thousands(m.closed.unique_users),
                m.filled.engine_events_per_second(),
                m.filled.epochs,
            )?;
            writeln!(
                out,
                "| that window's state: snapshot, and an executor's restore | snapshots {:.0} MB in {} files ({} entries); the slowest executor restored in {:.2} s, the two read {:.0} MB | reported |",
                mb(m.snapshot_bytes),
                m.snapshot_files,
                thousands(m.state_rows),
                m.slowest_restore.as_secs_f64(),
                mb(m.restored_bytes),
            )?;
        }
        if let Some(mock) = kafka
            .brokers
            .iter()
            .find(|b| b.broker == kafka_runs::BrokerKind::Mock)
            .and_then(|b| {
                let client = kafka_runs::Client::Weir.name();
                let name = format!("-{client}-2-executors");
                b.runs.iter().find(|r| r.name().ends_with(&name))
            })
            .map(Repeated::median)
        {
            let files = two.median();
            let rate = mock.engine_events_per_second();
            writeln!(
                out,
                "| Kafka → Delta from a broker that keeps up, 2 executors: ≥ 1 500 000 events/s | {rate:.0} events/s ({}, `client: weir`) | {} |",
                kafka_runs::BrokerKind::Mock.label(),
                verdict(rate >= 1.5e6)
            )?;
            let share = 100.0 * rate / files.engine_events_per_second();
            let per_cpu = match (
                mock.events_per_executor_cpu_second(),
                files.events_per_executor_cpu_second(),
            ) {
                (Some(k), Some(f)) => format!(
                    "; per second of executor CPU {:.1} % ({k:.0} against {f:.0} events)",
                    100.0 * k / f
                ),
                _ => String::new(),
            };
            writeln!(
                out,
                "| Kafka → Delta per core within 25 % of files → Delta (2 executors on the same cores) | {share:.1} % of files → Delta's events/s{per_cpu} | {} |",
                verdict(share >= 75.0)
            )?;
        }
        if let Some((broker, l)) = &kafka.latency {
            let half = kafka.latency_half_of_peak().unwrap_or(l.rate);
            let at_half = kept_half_of_peak(l, half);
            let within = l.records > 0 && l.p99_ms <= 1500.0;
            writeln!(
                out,
                "| p99 produce-to-commit latency ≤ trigger + 0.5 s (1 500 ms) at half of peak rate | p99 {:.0} ms, p50 {:.0} ms, max {:.0} ms ({}, `client: {}`: {} records produced at {:.0} events/s for {} s, {} epochs; half of its runs' peak: {:.0} events/s) | {} |",
                l.p99_ms,
                l.p50_ms,
                l.max_ms,
                broker.label(),
                kafka_runs::latency_client(*broker).name(),
                l.records,
                l.produced_rate,
                l.seconds,
                l.epochs,
                half,
                match (within, at_half) {
                    (true, true) => "met",
                    (true, false) => "met below half of peak",
                    (false, _) => "not met",
                }
            )?;
        }
        writeln!(out)?;
    }
    if !rescaled.is_empty() {
        writeln!(
            out,
            "Rescaling while the job runs: {} events in {RESCALE_FILES} files, {} an epoch \
             ({} events), trigger 10 ms; `weir admin scale` once a quarter of the epochs are \
             decided, then a quarter later; throughput over the epochs on each count, by their \
             decision times.\n",
            args.rescale_events,
            args.files_per_epoch,
            args.rescale_events / RESCALE_FILES * args.files_per_epoch,
        )?;
        writeln!(
            out,
            "| step | scale command → first decision on the new count | key groups moved | state restored | per moved key group | slowest restore | events/s before | events/s after |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for step in rescaled {
            writeln!(
                out,
                "| rescale {} → {} (epoch {}) | {:.0} ms | {} | {} | {} | {} ms | {:.0} | {:.0} |",
                step.from,
                step.to,
                step.first_epoch,
                step.command_to_decision.as_secs_f64() * 1000.0,
                step.key_groups_moved,
                weir_driver::ops::progress::size(step.restored_bytes),
                weir_driver::ops::progress::size(step.bytes_per_moved_group() as u64),
                step.restore_ms,
                step.before,
                step.after,
            )?;
        }
        writeln!(out)?;
    }
    for why in &kafka.skipped {
        writeln!(out, "Skipped: {why}.\n")?;
    }
    for broker in &kafka.brokers {
        writeln!(
            out,
            "Kafka ({}): the broker took the {} events at {:.0} events/s while the topic was filled.\n",
            broker.broker.label(),
            broker.events,
            broker.produce_rate,
        )?;
    }
    if let Some((_, l)) = &kafka.latency {
        writeln!(
            out,
            "Latency is from each record's produce call (its CreateTime) to the decision of the epoch that read it.\n"
        )?;
        let half = kafka.latency_half_of_peak().unwrap_or(l.rate);
        if !kept_half_of_peak(l, half) {
            writeln!(
                out,
                "The latency run asked {:.0} events/s of the producer and it kept {:.0}, below half of peak ({half:.0}): `weir gen` shares the cores with the broker and the job.\n",
                l.rate, l.produced_rate
            )?;
        }
    }
    let mut kafka_runs: Vec<(String, &BTreeMap<String, u64>, u64)> = kafka
        .brokers
        .iter()
        .flat_map(|b| &b.runs)
        .map(Repeated::median)
        .map(|r| (r.name.clone(), &r.peak_rss, r.input_rows))
        .collect();
    if let Some((_, latency)) = &kafka.latency {
        kafka_runs.push((
            "kafka-latency".into(),
            &latency.peak_rss,
            latency.records as u64,
        ));
    }
    // The median rounds of the file runs.
    let medians: Vec<&RunResult> = results
        .iter()
        .chain(user_cases.iter().flat_map(|c| [&c.exact, &c.approx]))
        .map(Repeated::median)
        .collect();
    let file_runs = medians
        .iter()
        .copied()
        .chain(memory.into_iter().flat_map(|m| [&m.filled, &m.closed]))
        .map(|r| (r.name.clone(), &r.peak_rss, r.input_rows));
    // How busy each executor kept its core.
    for r in &medians {
        let shares: Vec<String> = r
            .cpu_use()
            .iter()
            .filter(|(who, _)| who.starts_with("executor"))
            .map(|(who, share)| format!("{who} {:.0} %", share * 100.0))
            .collect();
        if !shares.is_empty() {
            writeln!(
                out,
                "CPU time, {}: {} of a core over the executor's lifetime.",
                r.name,
                shares.join(", ")
            )?;
        }
    }
    for (name, peak_rss, input_rows) in file_runs.chain(kafka_runs) {
        let peaks: Vec<String> = peak_rss
            .iter()
            .map(|(who, b)| format!("{who} {:.0} MB", mb(*b)))
            .collect();
        writeln!(
            out,
            "Peak RSS, {name}: {} ({input_rows} input rows).",
            peaks.join(", "),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::in_turns;
    use super::PairedCost;

    /// Each round runs the other way round from the one before, so that neither run of a pair
    /// is always the later one.
    #[test]
    fn rounds_take_their_runs_in_turns_both_ways() {
        let order = |round| -> Vec<usize> {
            in_turns(&["a", "b", "c"], round)
                .iter()
                .map(|(i, _)| *i)
                .collect()
        };
        assert_eq!(order(1), [0, 1, 2]);
        assert_eq!(order(2), [2, 1, 0]);
        assert_eq!(order(3), [0, 1, 2]);
        assert_eq!(in_turns(&["a", "b"], 2)[0], (1, &"b"));
    }

    /// A paired cost's quartiles and range are those of its rounds, whatever their order.
    #[test]
    fn a_paired_cost_reports_its_rounds_quartiles_and_range() {
        let cost = |rounds: &[f64]| PairedCost {
            median: f64::NAN,
            rounds: rounds.to_vec(),
        };
        let eight = cost(&[8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]);
        assert_eq!(eight.quartiles(), (2.0, 6.0));
        assert_eq!(eight.range(), (1.0, 8.0));
        let five = cost(&[30.0, 10.0, 20.0, 50.0, 40.0]);
        assert_eq!(five.quartiles(), (20.0, 40.0));
        assert_eq!(cost(&[4.5]).quartiles(), (4.5, 4.5));
        assert!(cost(&[]).range().0.is_nan());
    }
}
