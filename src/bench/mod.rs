//! `weir bench`: what users pay for, measured on this machine in one run. The reference events
//! are generated (seeded) as JSON-lines files; a single-threaded decode(+aggregate) loop over
//! them gives the ceiling; the reference job then runs from those files into Delta tables with
//! `weir local` on 1 and 2 executors, with and without state snapshots, in rounds (each figure
//! is the median round's); a last run keeps about
//! a million distinct users of one window in state and reports every process's peak memory.
//! Then the same events go through a tansu broker into Delta on 1 and 2 executors, and a paced
//! run at half of the measured Kafka peak gives the produce-to-commit latency.

mod ceiling;
mod kafka;
mod rescale;
mod runs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use weir_common::aggregate::AggKind;

use crate::gen;
use runs::{Repeated, RunResult, RunSpec};

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
    /// Rounds of the file runs (1 and 2 executors, 2 without snapshots, taken in turn): each
    /// figure is the median round, since one run varies by ±5 % on a shared machine.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Distinct users in the single window of the memory run, three events each (0 skips it),
    /// in 24 files read two per epoch: with a million users, epochs of 250 000 events, about
    /// the throughput runs' size.
    #[arg(long, default_value_t = 1_000_000)]
    pub window_users: u64,
    /// Events of the rescale run (0 skips it), in 120 files read --files-per-epoch at a
    /// time: scaled from 1 to 2 executors and back while it runs.
    #[arg(long, default_value_t = 6_000_000)]
    pub rescale_events: u64,
    /// Events of the Kafka runs (0 skips them).
    #[arg(long, default_value_t = 400_000)]
    pub kafka_events: u64,
    /// Offsets an epoch of the Kafka runs reads (`max_offsets_per_trigger`).
    #[arg(long, default_value_t = 200_000)]
    pub offsets_per_epoch: u64,
    /// How long the latency run produces (at half of the Kafka peak rate).
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
    gen::run(args).await
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

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
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
    generate(
        &input,
        &strings(&[
            "--count",
            &args.events.to_string(),
            "--files",
            &args.files.to_string(),
            "--start",
            START,
            "--span",
            "1h",
            "--seed",
            "1",
        ]),
    )
    .await?;
    let files = read_files(&input)?;
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();

    eprintln!("weir bench: the single-threaded ceiling");
    let job = weir_common::job::parse_job(
        &runs::job_text(&runs::files_source(&input, 1), &root),
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
    let ceiling =
        tokio::task::spawn_blocking(move || ceiling::measure(&schema, &approx, &files)).await??;

    let configurations = [(1, true), (2, true), (2, false)];
    let mut rounds: Vec<Vec<RunResult>> = configurations.iter().map(|_| Vec::new()).collect();
    // In turns, so that a slow spell of the machine touches every configuration alike.
    for round in 1..=args.rounds {
        for (i, &(executors, snapshots)) in configurations.iter().enumerate() {
            let name = format!(
                "files-{executors}-executor{}{}",
                if executors > 1 { "s" } else { "" },
                if snapshots { "" } else { "-no-snapshots" }
            );
            eprintln!("weir bench: {name}, round {round} of {}", args.rounds);
            let spec = RunSpec {
                name,
                source: runs::files_source(&input, args.files_per_epoch),
                executors,
                snapshots,
            };
            rounds[i].push(runs::run(&spec, &root).await?);
        }
    }
    let results: Vec<Repeated> = rounds.into_iter().map(Repeated::new).collect();

    let memory = if args.window_users > 0 {
        let count = args.window_users * 3;
        eprintln!(
            "weir bench: memory with {} users in one window",
            args.window_users
        );
        let window_input = root.join("window-events");
        generate(
            &window_input,
            &strings(&[
                "--count",
                &count.to_string(),
                "--users",
                &args.window_users.to_string(),
                "--files",
                "24",
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
        // One event 30 minutes later moves the watermark past the window, so the run's last
        // epoch closes it and counts its exact-distinct values (the event's own window stays
        // open): the count is read from the output, not estimated.
        let closes_at = (chrono::DateTime::parse_from_rfc3339(START)?
            + chrono::Duration::minutes(30))
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
            window_input.join("zz-closes-the-window.jsonl"),
            format!("{closer}\n"),
        )
        .context("writing the event that closes the window")?;
        let spec = RunSpec {
            name: "memory-2-executors".into(),
            source: runs::files_source(&window_input, 2),
            executors: 2,
            snapshots: true,
        };
        Some(runs::run(&spec, &root).await?)
    } else {
        None
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

    let kafka = if args.kafka_events > 0 {
        kafka_runs(&args, &root).await?
    } else {
        KafkaRuns::Skipped("--kafka-events 0".into())
    };

    let report = report(
        &args,
        &Measured {
            bytes,
            cores,
            ceiling,
            results,
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

/// What the Kafka half measured.
enum KafkaRuns {
    Skipped(String),
    Measured {
        /// Events/s the broker took while the topic was filled.
        produce_rate: f64,
        runs: Vec<RunResult>,
        latency: kafka::Latency,
    },
}

async fn kafka_runs(args: &BenchArgs, root: &Path) -> anyhow::Result<KafkaRuns> {
    let _started;
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None if kafka::tansu_available() => {
            let broker = kafka::Broker::start(&root.join("broker")).await?;
            let address = broker.address.clone();
            _started = broker;
            address
        }
        None => {
            return Ok(KafkaRuns::Skipped(
                "no `tansu` on PATH (scripts/setup.sh installs it) and no --brokers".into(),
            ))
        }
    };
    let stamp = chrono::Utc::now().timestamp();
    let topic = format!("bench-{stamp}-events");
    eprintln!(
        "weir bench: producing {} events into Kafka",
        args.kafka_events
    );
    let started = std::time::Instant::now();
    kafka::produce(
        &brokers,
        &topic,
        args.kafka_events,
        0.0,
        &["--start", START, "--span", "1h", "--seed", "1"],
    )
    .await?;
    let produce_rate = args.kafka_events as f64 / started.elapsed().as_secs_f64();
    let mut runs = Vec::new();
    for executors in [1, 2] {
        let name = format!(
            "kafka-{executors}-executor{}",
            if executors > 1 { "s" } else { "" }
        );
        eprintln!("weir bench: {name}");
        let spec = RunSpec {
            name,
            source: runs::kafka_source(&brokers, &topic, args.offsets_per_epoch),
            executors,
            snapshots: true,
        };
        runs.push(runs::run(&spec, root).await?);
    }
    let peak = runs
        .iter()
        .map(RunResult::engine_events_per_second)
        .fold(0.0, f64::max);
    let rate = (peak / 2.0).max(1.0);
    eprintln!(
        "weir bench: latency at {rate:.0} events/s for {} s",
        args.latency_seconds
    );
    let latency = kafka::latency(
        root,
        &brokers,
        &format!("bench-{stamp}-latency"),
        rate,
        args.latency_seconds,
        2,
    )
    .await?;
    Ok(KafkaRuns::Measured {
        produce_rate,
        runs,
        latency,
    })
}

/// Everything one bench measured.
struct Measured {
    /// Bytes of the throughput runs' input.
    bytes: u64,
    cores: usize,
    ceiling: ceiling::Ceiling,
    results: Vec<Repeated>,
    memory: Option<RunResult>,
    rescaled: Vec<rescale::Step>,
    kafka: KafkaRuns,
}

fn report(args: &BenchArgs, m: &Measured) -> anyhow::Result<String> {
    let Measured {
        bytes,
        cores,
        ceiling,
        results,
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
    if let KafkaRuns::Measured { runs, .. } = kafka {
        for r in runs {
            row(
                &mut out,
                &format!(
                    "Kafka → Delta, {}",
                    r.name.trim_start_matches("kafka-").replace('-', " ")
                ),
                r.engine_events_per_second(),
                &format!(
                    "{} events, first plan to last decision {:.2} s over {} epochs",
                    r.input_rows,
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
        // Each round's runs with and without snapshots ran back to back: compared in pairs.
        let costs: Vec<f64> = two
            .runs
            .iter()
            .zip(&bare.runs)
            .map(|(on, off)| {
                100.0 * (1.0 - on.engine_events_per_second() / off.engine_events_per_second())
            })
            .collect();
        let listed: Vec<String> = costs.iter().map(|c| format!("{c:.1}")).collect();
        let cost = runs::median(costs).unwrap_or(f64::NAN);
        let physical = 100.0 * per_core / ceiling.find_fields.events_per_second();
        writeln!(out, "| target | measured | |\n| --- | --- | --- |")?;
        writeln!(
            out,
            "| files → Delta, 2 executors: ≥ 4 000 000 events/s | {rate:.0} events/s | {} |",
            verdict(rate >= 4e6)
        )?;
        writeln!(
            out,
            "| per core ≥ the arrow-json decode + aggregate ceiling | {share:.1} % of it ({per_core:.0} events/s per core, {cores} cores); {physical:.1} % of the physical ceiling | {} |",
            verdict(share >= 100.0)
        )?;
        writeln!(
            out,
            "| state snapshots cost ≤ 10 % of throughput | {cost:.1} % (median of the rounds' {} %) | {} |",
            listed.join(", "),
            verdict(cost <= 10.0)
        )?;
        if let Some(m) = memory {
            let executor_peak = m
                .peak_rss
                .iter()
                .filter(|(k, _)| k.starts_with("executor"))
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(0);
            let judged = if args.window_users >= 1_000_000 {
                verdict(executor_peak > 0 && executor_peak <= 256_000_000)
            } else {
                "not judged: fewer users"
            };
            writeln!(
                out,
                "| executor peak RSS ≤ 256 MB with 1 000 000 distinct users per window | {:.0} MB with {} users in one window ({} exact-distinct (event type, user) pairs counted when it closed) | {judged} |",
                mb(executor_peak),
                args.window_users,
                m.unique_users,
            )?;
        }
        if let KafkaRuns::Measured { latency: l, .. } = kafka {
            writeln!(
                out,
                "| p99 produce-to-commit latency ≤ trigger + 1 s (2 000 ms) at half of peak rate | p99 {:.0} ms, p50 {:.0} ms, max {:.0} ms ({} records at {:.0} events/s for {} s, {} epochs) | {} |",
                l.p99_ms,
                l.p50_ms,
                l.max_ms,
                l.records,
                l.rate,
                l.seconds,
                l.epochs,
                verdict(l.records > 0 && l.p99_ms <= 2000.0)
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
    match kafka {
        KafkaRuns::Skipped(why) => writeln!(out, "Kafka runs skipped: {why}.\n")?,
        KafkaRuns::Measured { produce_rate, .. } => writeln!(
            out,
            "Kafka: the broker took the events at {produce_rate:.0} events/s while the topic was filled; \
             latency is from each record's produce call (its CreateTime) to the decision of the epoch that read it.\n"
        )?,
    }
    let kafka_runs = match kafka {
        KafkaRuns::Measured { runs, latency, .. } => {
            let mut v: Vec<(String, &BTreeMap<String, u64>, u64)> = runs
                .iter()
                .map(|r| (r.name.clone(), &r.peak_rss, r.input_rows))
                .collect();
            v.push((
                "kafka-latency".into(),
                &latency.peak_rss,
                latency.records as u64,
            ));
            v
        }
        KafkaRuns::Skipped(_) => Vec::new(),
    };
    let file_runs = results
        .iter()
        .map(Repeated::median)
        .chain(memory)
        .map(|r| (r.name.clone(), &r.peak_rss, r.input_rows));
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
