//! Kafka in the bench: a tansu broker on a loopback port, the reference events produced into a
//! topic, and the produce-to-commit latency of a paced run, from every record's produce time
//! (its Kafka CreateTime, set by the producer and read from its delivery report) and the
//! decision of the epoch that read it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::process::{Child, Command};
use weir_common::checkpoint::CommitRecord;
use weir_storage::CheckpointLog;

use super::runs;
use crate::gen;

/// A tansu broker on a free loopback port with its SQLite storage in a directory, stopped
/// when dropped.
pub struct Broker {
    pub address: String,
    _child: Child,
}

impl Broker {
    /// Starts `tansu` (or what `WEIR_TANSU` names) and returns once it accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        // tansu cannot listen on port 0 and say which it got: it advertises the port given.
        let port = weir_common::testing::loopback::free_port()?;
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let log_path = dir.join("tansu.log");
        let log = std::fs::File::create(&log_path)?;
        let program = std::env::var("WEIR_TANSU").unwrap_or_else(|_| "tansu".into());
        // tansu resolves sqlite:// paths against its working directory.
        let mut child = Command::new(&program)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{program}` (scripts/setup.sh installs it)"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("tansu exited ({status}); see {}", log_path.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen within 30 s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Broker {
            address,
            _child: child,
        })
    }
}

/// Whether a tansu binary can be started.
pub fn tansu_available() -> bool {
    let program = std::env::var("WEIR_TANSU").unwrap_or_else(|_| "tansu".into());
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Produces `count` reference events into `topic` at `rate` events/s (0: as fast as the broker
/// takes them); `extra` holds `weir gen`'s other arguments (partitions, compression, seed...).
/// Returns every record's produce time when `produce_times` asks for them.
pub async fn produce(
    brokers: &str,
    topic: &str,
    count: u64,
    rate: f64,
    extra: &[&str],
    produce_times: bool,
) -> anyhow::Result<Option<gen::ProduceTimes>> {
    let mut argv: Vec<String> = [
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    argv.extend(["--brokers".to_string(), brokers.to_string()]);
    let mut args = gen::GenArgs::from_argv(&argv)?;
    args.out_dir = None;
    args.jsonl = None;
    args.produce_times = produce_times;
    gen::run(args).await
}

fn consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-bench")
        .set("enable.auto.commit", "false")
        .create()
        .context("Kafka consumer")
}

/// The end offset of every partition of `topic`.
async fn end_offsets(brokers: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&brokers)?;
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {topic} has no partitions");
        }
        partitions
            .into_iter()
            .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, timeout)?.1)))
            .collect()
    })
    .await?
}

/// Produce-to-commit latency of a paced run.
#[derive(Debug)]
pub struct Latency {
    /// The pace asked of the producer.
    pub rate: f64,
    /// The pace it kept: its records over the time it took to produce them.
    pub produced_rate: f64,
    pub seconds: u64,
    pub records: usize,
    pub epochs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peak_rss: BTreeMap<String, u64>,
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Executors of the latency run.
const LATENCY_EXECUTORS: usize = 2;

/// Runs the reference job from `topic` (read with `reader`: a client and its options) with its 1 s trigger on 2
/// executors while `rate` events/s are produced for `seconds`, and measures, for every record
/// produced, the time from its produce call to the decision of the epoch that read it.
pub async fn latency(
    root: &Path,
    brokers: &str,
    topic: &str,
    (client, options): (&str, &[(&str, &str)]),
    rate: f64,
    seconds: u64,
    producer: &[&str],
) -> anyhow::Result<Latency> {
    // A few records first, so that the topic exists and the job is running steadily when the
    // measured records start.
    let warm_up = [producer, &["--seed", "3", "--span", "1m"]].concat();
    produce(brokers, topic, 1000, 0.0, &warm_up, false).await?;
    let source = runs::kafka_source_with(brokers, topic, 10_000_000, client, options);
    let (job, checkpoint) = runs::prepare(root, "kafka-latency", &source, runs::Distinct::Exact)?;
    let mut child = runs::local_command(&job, LATENCY_EXECUTORS, None)?
        .kill_on_drop(true)
        .spawn()
        .context("starting weir local")?;
    let log_task = runs::read_log(&mut child)?;
    let warm = end_offsets(brokers, topic).await?;
    runs::wait_for_decision(
        &checkpoint,
        &mut child,
        Duration::from_secs(120),
        covers(&warm),
    )
    .await?;
    let count = (rate * seconds as f64).round() as u64;
    let span = format!("{seconds}s");
    let measured = [producer, &["--seed", "4", "--span", &span]].concat();
    let producing = Instant::now();
    let produced = produce(brokers, topic, count, rate, &measured, true)
        .await?
        .context("the producer kept no produce times")?;
    let produced_rate = count as f64 / producing.elapsed().as_secs_f64();
    let end = end_offsets(brokers, topic).await?;
    runs::wait_for_decision(
        &checkpoint,
        &mut child,
        Duration::from_secs(300),
        covers(&end),
    )
    .await?;
    runs::stop(&mut child).await?;
    let log = log_task.await.unwrap_or_default();

    let (_, decisions) = runs::decisions(&checkpoint).await?;
    let plans = CheckpointLog::open(&checkpoint, &BTreeMap::new())?;
    // Per partition: (range start, range end, decided at in ms) of every epoch.
    let mut ranges: BTreeMap<i32, Vec<(i64, i64, f64)>> = BTreeMap::new();
    for decision in &decisions {
        let plan = plans
            .plan(decision.epoch)
            .await?
            .with_context(|| format!("the plan of epoch {} is missing", decision.epoch))?;
        for r in &plan.ranges {
            ranges.entry(r.partition).or_default().push((
                r.start,
                r.end,
                decision.decided_at_micros as f64 / 1000.0,
            ));
        }
    }
    let mut latencies = Vec::with_capacity(count as usize);
    for (p, times) in &produced.by_partition {
        for &(offset, at) in times {
            let decided = ranges
                .get(p)
                .and_then(|rs| rs.iter().find(|(s, e, _)| (*s..*e).contains(&offset)))
                .map(|r| r.2)
                .with_context(|| format!("no decided epoch read partition {p} offset {offset}"))?;
            latencies.push(decided - at as f64);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Latency {
        rate,
        produced_rate,
        seconds,
        records: latencies.len(),
        epochs: decisions.len(),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        peak_rss: runs::peak_rss(&log),
    })
}

/// Whether a decision's end offsets reach `end` on every partition.
fn covers(end: &BTreeMap<i32, i64>) -> impl Fn(&CommitRecord) -> bool + '_ {
    |record| {
        end.iter()
            .all(|(p, o)| record.end_offsets.get(p).is_some_and(|e| e >= o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_rank_at_or_above() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
