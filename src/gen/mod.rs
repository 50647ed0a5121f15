//! `weir gen`: realistic web events of the reference schema into a Kafka topic and/or a
//! JSON-lines file, deterministic for a given seed and start time.

mod events;
mod kafka;
mod light;
mod producer;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::json;

pub use events::{EventGenerator, Kind};
pub use kafka::ProduceTimes;
use producer::Producer;
pub use producer::ProducerKind;

/// What to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Kafka bootstrap servers; without them events only go to --jsonl.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    #[arg(long, default_value = "web-events")]
    pub topic: String,
    /// The Kafka client that produces: librdkafka (retries, every codec) or light, weir's
    /// own (plaintext, acks from the leader, no retries, none or lz4) at a fraction of
    /// librdkafka's CPU a record, for load on the machine that runs the job.
    #[arg(long, value_enum, default_value_t = ProducerKind::Librdkafka)]
    pub producer: ProducerKind,
    /// Partitions of the topic when gen creates it.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The producer's compression codec: none, gzip, snappy, lz4 or zstd with librdkafka
    /// (its `compression.type`), none or lz4 with the light producer.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// How long the producer waits to fill a batch (librdkafka's `linger.ms`; the light
    /// producer's the same way): more makes larger batches, as a bulk load would send them.
    #[arg(long, default_value_t = 20)]
    pub linger_ms: u64,
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Events per second to produce at (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Number of distinct users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Event types, comma separated.
    #[arg(
        long,
        default_value = "page_view,click,add_to_cart,search,purchase,signup",
        value_delimiter = ','
    )]
    pub event_types: Vec<String>,
    /// Zipf exponent of the event-type mix (0: uniform; 1: the first type is most common).
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// Event time of the first event (RFC 3339); default: now minus --span.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Event time the whole run covers.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
    pub span: Duration,
    /// Events arrive up to this much after their event time (out of order).
    #[arg(long, default_value = "2m", value_parser = parse_duration_arg)]
    pub out_of_order: Duration,
    /// Fraction of events that arrive far behind the watermark.
    #[arg(long, default_value_t = 0.0)]
    pub late_fraction: f64,
    /// How far behind the stream a late event is.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
    pub late_by: Duration,
    /// Fraction of records that are malformed (bad JSON, wrong types, missing fields...).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_fraction: f64,
    /// Fraction of records that are hostile: times at and past the edges of what a timestamp
    /// holds, bytes that are not UTF-8, deep nesting, huge numbers, records just over
    /// `--max-record-bytes`. Each is a dead letter (counted malformed) or, for a time that is
    /// valid but long past, late.
    #[arg(long, default_value_t = 0.0)]
    pub hostile_fraction: f64,
    /// The job's `max_record_bytes`: oversized hostile records are a little larger.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write every record, its partition and its kind (valid, late, malformed) here.
    #[arg(long)]
    pub jsonl: Option<std::path::PathBuf>,
    /// Write the events as JSON-lines files into this directory (`events-00000.jsonl`, ... in
    /// event order), for the file source. An empty malformed record cannot be a line, so it is
    /// written as `""` everywhere.
    #[arg(long)]
    pub out_dir: Option<std::path::PathBuf>,
    /// Number of files `--out-dir` splits the events into.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub files: u64,
    /// Keep every record's produce time (for the bench's latency run; not a flag).
    #[arg(skip)]
    pub produce_times: bool,
}

impl GenArgs {
    /// The arguments `weir gen` would take from `argv` (its defaults for the rest).
    pub fn from_argv(argv: &[String]) -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Gen {
            #[command(flatten)]
            args: GenArgs,
        }
        use clap::Parser;
        let parsed =
            Gen::try_parse_from(std::iter::once("gen".to_string()).chain(argv.iter().cloned()))
                .context("generator arguments")?;
        Ok(parsed.args)
    }
}

/// `--out-dir`: the events in `files` files, each written under a hidden name and renamed into
/// place when complete, as a file source needs.
struct FileOutput {
    dir: std::path::PathBuf,
    files: u64,
    count: u64,
    current: Option<(u64, BufWriter<File>)>,
}

impl FileOutput {
    fn new(dir: &std::path::Path, files: u64, count: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            files: files.min(count.max(1)),
            count,
            current: None,
        })
    }

    fn name(index: u64) -> String {
        format!("events-{index:05}.jsonl")
    }

    /// Renames the file being written into place.
    fn close(&mut self) -> anyhow::Result<()> {
        if let Some((index, mut out)) = self.current.take() {
            out.flush()?;
            let name = Self::name(index);
            std::fs::rename(self.dir.join(format!(".{name}.tmp")), self.dir.join(&name))
                .with_context(|| format!("moving {name} into place"))?;
        }
        Ok(())
    }

    /// Writes event number `n`.
    fn write(&mut self, n: u64, value: &[u8]) -> anyhow::Result<()> {
        let index = u64::try_from(u128::from(n) * u128::from(self.files) / u128::from(self.count))
            .unwrap_or(u64::MAX);
        if self.current.as_ref().is_none_or(|(i, _)| *i != index) {
            self.close()?;
            let tmp = self.dir.join(format!(".{}.tmp", Self::name(index)));
            let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            self.current = Some((index, BufWriter::new(file)));
        }
        if let Some((_, out)) = self.current.as_mut() {
            out.write_all(value)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    weir_common::job::duration::parse_duration(s)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How far ahead of its pace the producer may be before it sleeps: sleeping per record would
/// cost more than producing it.
const PACE_SLACK: Duration = Duration::from_millis(1);

/// Runs `weir gen`; returns every record's produce time when [`GenArgs::produce_times`] asks
/// for them.
pub async fn run(args: GenArgs) -> anyhow::Result<Option<ProduceTimes>> {
    if args.brokers.is_none() && args.jsonl.is_none() && args.out_dir.is_none() {
        bail!("nowhere to write: give --brokers (or KAFKA_BROKERS), --out-dir and/or --jsonl");
    }
    if let Some(brokers) = &args.brokers {
        kafka::ensure_topic(brokers, &args.topic, args.partitions).await?;
    }
    tokio::task::spawn_blocking(move || generate(args))
        .await
        .context("the generator's thread")?
}

/// Makes the events and writes them where `args` say; blocking.
fn generate(args: GenArgs) -> anyhow::Result<Option<ProduceTimes>> {
    let mut producer = match &args.brokers {
        Some(b) => Some(Producer::connect(b, &args)?),
        None => None,
    };
    let mut files = match &args.out_dir {
        Some(dir) => Some(FileOutput::new(dir, args.files, args.count)?),
        None => None,
    };
    let mut jsonl = match &args.jsonl {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let rate = args.rate;
    let generator = EventGenerator::new(args)?;
    let started = Instant::now();
    let mut counts = [0u64; 3];
    for (n, mut event) in generator.enumerate() {
        counts[event.kind as usize] += 1;
        if let Some(out) = files.as_mut() {
            if event.value.is_empty() {
                event.value = b"\"\"".to_vec();
            }
            out.write(n as u64, &event.value)?;
        }
        if let Some(out) = jsonl.as_mut() {
            // A value that is not UTF-8 is written as hex.
            let line = match std::str::from_utf8(&event.value) {
                Ok(text) => {
                    json!({"partition": event.partition, "kind": event.kind.name(), "value": text})
                }
                Err(_) => json!({"partition": event.partition, "kind": event.kind.name(),
                                 "value_hex": hex(&event.value)}),
            };
            writeln!(out, "{line}")?;
        }
        if let Some(p) = producer.as_mut() {
            let mut now = Instant::now();
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                if due > now + PACE_SLACK {
                    p.wait_until(due)?;
                    now = Instant::now();
                }
            }
            p.send(event.partition, event.key.as_bytes(), &event.value, now)?;
        }
    }
    let produce_times = match producer {
        Some(p) => p.finish()?,
        None => None,
    };
    if let Some(out) = files.as_mut() {
        out.close()?;
    }
    if let Some(mut out) = jsonl {
        out.flush()?;
    }
    eprintln!(
        "generated {} events ({} valid, {} late, {} malformed) in {:.1}s",
        counts.iter().sum::<u64>(),
        counts[Kind::Valid as usize],
        counts[Kind::Late as usize],
        counts[Kind::Malformed as usize],
        started.elapsed().as_secs_f64()
    );
    Ok(produce_times)
}
