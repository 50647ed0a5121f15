//! `weir gen`: realistic web events of the reference schema into a Kafka topic and/or a
//! JSON-lines file, deterministic for a given seed and start time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;

/// What to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Kafka bootstrap servers; without them events only go to --jsonl.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    #[arg(long, default_value = "web-events")]
    pub topic: String,
    /// Partitions of the topic when gen creates it.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The producer's compression codec (librdkafka's `compression.type`: none, gzip,
    /// snappy, lz4, zstd).
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// How long the producer waits to fill a batch (librdkafka's `linger.ms`): more makes
    /// larger batches, as a bulk load would send them.
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
    weir_common::duration::parse_duration(s)
}

/// What a generated record is meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    Late,
    Malformed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Late => "late",
            Kind::Malformed => "malformed",
        }
    }
}

/// One generated record.
pub struct Generated {
    pub partition: i32,
    pub kind: Kind,
    pub key: String,
    /// The record's bytes: JSON text, except for hostile records that are not UTF-8.
    pub value: Vec<u8>,
}

/// The deterministic event source behind `weir gen`.
pub struct EventGenerator {
    args: GenArgs,
    rng: ChaCha8Rng,
    start_micros: i64,
    type_weights: Vec<f64>,
    index: u64,
}

const MALFORMED_KINDS: usize = 7;
/// Hostile records ([`EventGenerator::hostile`]); the last ones are late, not malformed.
const HOSTILE_KINDS: usize = 13;
const HOSTILE_LATE_KINDS: usize = 2;
const BROWSERS: [&str; 4] = ["chrome", "firefox", "safari", "edge"];
const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "BR", "IN", "JP"];

impl EventGenerator {
    pub fn new(args: GenArgs) -> anyhow::Result<Self> {
        if args.event_types.is_empty() || args.event_types.iter().any(|t| t.is_empty()) {
            bail!("--event-types needs at least one non-empty name");
        }
        if args.users == 0 || args.partitions <= 0 {
            bail!("--users and --partitions must be positive");
        }
        let fractions = [
            args.late_fraction,
            args.malformed_fraction,
            args.hostile_fraction,
        ];
        if fractions.iter().any(|f| !(0.0..=1.0).contains(f)) || fractions.iter().sum::<f64>() > 1.0
        {
            bail!(
                "--late-fraction, --malformed-fraction and --hostile-fraction must be in [0, 1] \
                 and sum to at most 1"
            );
        }
        let span = i64::try_from(args.span.as_micros()).context("--span too long")?;
        let start_micros = match args.start {
            Some(t) => t.timestamp_micros(),
            None => Utc::now().timestamp_micros() - span,
        };
        let type_weights: Vec<f64> = (0..args.event_types.len())
            .map(|i| 1.0 / ((i + 1) as f64).powf(args.skew))
            .collect();
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            start_micros,
            type_weights,
            index: 0,
            args,
        })
    }

    fn pick_type(&mut self) -> String {
        let total: f64 = self.type_weights.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, w) in self.type_weights.iter().enumerate() {
            if r < *w {
                return self.args.event_types[i].clone();
            }
            r -= w;
        }
        self.args.event_types[self.args.event_types.len() - 1].clone()
    }

    fn timestamp(micros: i64) -> String {
        DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn micros(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
    }
}

impl Iterator for EventGenerator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.index >= self.args.count {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let span = Self::micros(self.args.span);
        let stream_time = self.start_micros
            + (i128::from(span) * i128::from(i) / i128::from(self.args.count.max(1))) as i64;
        let jitter =
            (self.rng.random::<f64>() * Self::micros(self.args.out_of_order) as f64) as i64;
        let late_by = Self::micros(self.args.late_by);
        let roll = self.rng.random::<f64>();
        // A late event needs a stream old enough for the watermark to have passed it.
        let can_be_late = stream_time - self.start_micros >= 2 * late_by;
        let hostile_from = self.args.malformed_fraction + self.args.late_fraction;
        let kind = if roll < self.args.malformed_fraction {
            Kind::Malformed
        } else if roll < hostile_from && can_be_late {
            Kind::Late
        } else if roll >= hostile_from && roll < hostile_from + self.args.hostile_fraction {
            return Some(self.hostile(i, stream_time, can_be_late));
        } else {
            Kind::Valid
        };
        let event_time = match kind {
            Kind::Late => stream_time - late_by - jitter,
            _ => stream_time - jitter,
        };
        let user = format!("user-{}", self.rng.random_range(0..self.args.users));
        let event_type = self.pick_type();
        let event_id = format!("{:032x}", self.rng.random::<u128>());
        let page = self.rng.random_range(0..500);
        let browser = BROWSERS[self.rng.random_range(0..BROWSERS.len())];
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let ts = Self::timestamp(event_time);
        let value: String = match kind {
            Kind::Malformed => match self.rng.random_range(0..MALFORMED_KINDS) {
                0 => format!("{{\"event_id\": \"{event_id}\", \"user_id\": \"{user}\", \"event_ty"),
                1 => json!({"event_id": event_id, "user_id": 12345, "event_type": event_type, "timestamp": ts}).to_string(),
                2 => json!({"event_id": event_id, "user_id": user, "timestamp": ts}).to_string(),
                3 => json!({"event_id": event_id, "user_id": null, "event_type": event_type, "timestamp": ts}).to_string(),
                4 => json!({"event_id": event_id, "user_id": user, "event_type": event_type, "timestamp": "last tuesday"}).to_string(),
                5 => String::new(),
                _ => format!("[\"{event_id}\", \"{user}\"]"),
            },
            _ => json!({
                "event_id": event_id,
                "user_id": user,
                "event_type": event_type,
                "page_url": format!("https://shop.example.com/p/{page}"),
                "timestamp": ts,
                "properties": {"browser": browser, "country": country},
            })
            .to_string(),
        };
        Some(Generated {
            partition: self.partition_of(i),
            kind,
            key: user,
            value: value.into_bytes(),
        })
    }
}

impl EventGenerator {
    fn partition_of(&self, i: u64) -> i32 {
        (i % self.args.partitions as u64) as i32
    }

    /// Record `i` as a hostile one: well-formed apart from one field a producer got wrong in
    /// a way a stream engine must survive. A long-past time is late when the watermark has
    /// passed it (`can_be_late`), else another kind is made.
    fn hostile(&mut self, i: u64, stream_time: i64, can_be_late: bool) -> Generated {
        let kinds = if can_be_late {
            HOSTILE_KINDS
        } else {
            HOSTILE_KINDS - HOSTILE_LATE_KINDS
        };
        let pick = self.rng.random_range(0..kinds);
        let event_id = format!("{:032x}", self.rng.random::<u128>());
        let user = format!("user-{}", self.rng.random_range(0..self.args.users));
        let event_type = self.pick_type();
        let ts = Self::timestamp(stream_time);
        // The event with its timestamp (JSON text) and a field more.
        let event = |timestamp: &str, extra: &str| -> String {
            format!(
                r#"{{"event_id":"{event_id}","user_id":"{user}","event_type":"{event_type}","timestamp":{timestamp}{extra}}}"#
            )
        };
        let quoted = |t: &str| format!("\"{t}\"");
        let value: Vec<u8> = match pick {
            // Times a timestamp cannot hold, as numbers (microseconds) and as text.
            0 => event("9223372036854775807", "").into(),
            1 => event("-9223372036854775808", "").into(),
            2 => event("253402300800000000", "").into(),
            3 => event("-9223372036854775809", "").into(),
            4 => event("1e300", "").into(),
            5 => event(&quoted("+275760-09-13T00:00:00Z"), "").into(),
            // Valid, but far further ahead than max_event_time_ahead.
            6 => event(&quoted("9999-12-31T23:59:59.999999Z"), "").into(),
            // A number where a string belongs, past what f64 holds.
            7 => format!(
                r#"{{"event_id":"{event_id}","user_id":1e400,"event_type":"{event_type}","timestamp":"{ts}"}}"#
            )
            .into(),
            // Bytes that are not UTF-8 inside a string.
            8 => {
                let mut v = format!(r#"{{"event_id":"{event_id}","user_id":""#).into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, 0xc3]);
                v.extend_from_slice(
                    format!(r#"","event_type":"{event_type}","timestamp":"{ts}"}}"#).as_bytes(),
                );
                v
            }
            // Nesting 10 000 deep where a map of strings belongs.
            9 => {
                let depth = 10_000;
                let nested = format!(r#"{{"k":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
                event(&quoted(&ts), &format!(r#","properties":{nested}"#)).into()
            }
            // Just over max_record_bytes.
            10 => {
                let pad = "x".repeat(self.args.max_record_bytes + 1);
                event(&quoted(&ts), &format!(r#","page_url":"{pad}""#)).into()
            }
            // In range and well formed, but long past: late once a watermark exists.
            11 => event(&quoted("0001-01-01T00:00:00Z"), "").into(),
            _ => event(&quoted("1970-01-01T00:00:00Z"), "").into(),
        };
        Generated {
            partition: self.partition_of(i),
            kind: if pick >= HOSTILE_KINDS - HOSTILE_LATE_KINDS {
                Kind::Late
            } else {
                Kind::Malformed
            },
            key: user,
            value,
        }
    }
}

/// Creates `topic` unless the broker has it already. A broker without CreateTopics, such as
/// librdkafka's mock cluster, is given its topics beforehand.
async fn ensure_topic(config: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    if topic_exists(config, topic).await? {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create().context("Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("creating the topic")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("creating topic {t}: {code}"),
        }
    }
    Ok(())
}

/// Whether the broker has `topic` (asked without letting the request create it).
async fn topic_exists(config: &ClientConfig, topic: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = config
        .clone()
        .set("allow.auto.create.topics", "false")
        .create()
        .context("Kafka client")?;
    let name = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await?
    .context("reading the topic's metadata")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deliveries gen lets be in flight (the producer's queue holds 200 000).
const MAX_IN_FLIGHT: usize = 150_000;

/// Runs `weir gen`.
pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    if args.brokers.is_none() && args.jsonl.is_none() && args.out_dir.is_none() {
        bail!("nowhere to write: give --brokers (or KAFKA_BROKERS), --out-dir and/or --jsonl");
    }
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
    let producer: Option<FutureProducer> = match &args.brokers {
        Some(b) => {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", b);
            ensure_topic(&config, &args.topic, args.partitions).await?;
            config
                .set("linger.ms", args.linger_ms.to_string())
                .set("batch.num.messages", "10000")
                .set("queue.buffering.max.messages", "200000")
                .set("message.timeout.ms", "60000")
                .set("compression.type", &args.compression);
            Some(config.create().context("Kafka producer")?)
        }
        None => None,
    };
    let rate = args.rate;
    let topic = args.topic.clone();
    let generator = EventGenerator::new(args)?;
    let started = Instant::now();
    // Deliveries in flight, oldest first: waiting for the oldest one at a time keeps the
    // producer's queue full, where waiting for all of them would empty it at every wait.
    let mut pending = std::collections::VecDeque::new();
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
        if let Some(p) = &producer {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let record = FutureRecord::to(&topic)
                .partition(event.partition)
                .key(&event.key)
                .payload(&event.value);
            let mut record = record;
            loop {
                match p.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        let Some(oldest) = pending.pop_front() else {
                            bail!("the producer's queue is full with nothing in flight");
                        };
                        oldest
                            .await
                            .context("delivery cancelled")?
                            .map_err(|(e, _)| e)?;
                    }
                    Err((e, _)) => return Err(e).context("producing"),
                }
            }
            while pending.len() >= MAX_IN_FLIGHT {
                if let Some(oldest) = pending.pop_front() {
                    oldest
                        .await
                        .context("delivery cancelled")?
                        .map_err(|(e, _)| e)?;
                }
            }
        }
    }
    for d in pending.drain(..) {
        d.await.context("delivery cancelled")?.map_err(|(e, _)| e)?;
    }
    if let Some(p) = &producer {
        p.flush(Duration::from_secs(30))
            .context("flushing the producer")?;
    }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: GenArgs,
    }

    fn args(extra: &[&str]) -> GenArgs {
        let mut argv = vec![
            "gen",
            "--count",
            "5000",
            "--start",
            "2026-01-01T00:00:00Z",
            "--span",
            "4h",
        ];
        argv.extend_from_slice(extra);
        Wrapper::parse_from(argv).args
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<Vec<u8>> = EventGenerator::new(args(&[]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        let b: Vec<Vec<u8>> = EventGenerator::new(args(&[]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        let c: Vec<Vec<u8>> = EventGenerator::new(args(&["--seed", "43"]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        assert_eq!(a.len(), 5000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fractions_kinds_and_partitions() {
        let events: Vec<Generated> = EventGenerator::new(args(&[
            "--late-fraction",
            "0.1",
            "--malformed-fraction",
            "0.05",
            "--partitions",
            "3",
        ]))
        .unwrap()
        .collect();
        let count = |k: Kind| events.iter().filter(|e| e.kind == k).count();
        // Late events only start once the stream is two late_by (1h) old: half of a 4h span.
        assert!(
            (150..350).contains(&count(Kind::Late)),
            "{}",
            count(Kind::Late)
        );
        assert!(
            (150..350).contains(&count(Kind::Malformed)),
            "{}",
            count(Kind::Malformed)
        );
        assert!(events[..2500].iter().all(|e| e.kind != Kind::Late));
        for kind in [Kind::Valid, Kind::Late] {
            for e in events.iter().filter(|e| e.kind == kind) {
                let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
                assert!(v["event_id"].is_string() && v["timestamp"].is_string());
            }
        }
        assert_eq!(events.iter().filter(|e| e.partition == 2).count(), 1666);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(EventGenerator::new(args(&[
            "--late-fraction",
            "0.7",
            "--malformed-fraction",
            "0.6"
        ]))
        .is_err());
        assert!(EventGenerator::new(args(&["--users", "0"])).is_err());
    }
}
