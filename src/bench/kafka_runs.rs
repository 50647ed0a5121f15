//! The Kafka half of the bench: the same job from a topic on each broker there is (tansu, whose
//! figure is its SQLite storage's, and librdkafka's mock cluster, which keeps up), then the
//! produce-to-commit latency at half of the fastest broker's peak, on that broker.

use std::path::Path;

use anyhow::bail;

use super::broker::MockBroker;
use super::runs::{self, Distinct, Repeated, RunSpec};
use super::{kafka, BenchArgs, START};

/// The broker a run read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Tansu,
    /// The broker `--brokers` names, in tansu's place.
    Given,
    Mock,
}

impl BrokerKind {
    /// What the report calls it, and what its figure measures.
    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Tansu => "tansu, SQLite storage",
            BrokerKind::Given => "the broker of --brokers",
            BrokerKind::Mock => "librdkafka mock cluster, in memory",
        }
    }

    fn run_prefix(self) -> &'static str {
        match self {
            BrokerKind::Tansu | BrokerKind::Given => "kafka",
            BrokerKind::Mock => "kafka-mock",
        }
    }
}

/// The client a Kafka run reads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Librdkafka,
    /// weir's own fetch client (`client: weir`).
    Weir,
}

impl Client {
    /// Its name in a job file and in run names.
    pub fn name(self) -> &'static str {
        match self {
            Client::Librdkafka => "librdkafka",
            Client::Weir => "weir",
        }
    }
}

/// The clients each broker's runs read with: both from the mock cluster (the throughput
/// targets are judged on weir's runs); librdkafka's from tansu, whose figure is its storage's.
fn clients(broker: BrokerKind) -> &'static [Client] {
    match broker {
        BrokerKind::Mock => &[Client::Weir, Client::Librdkafka],
        BrokerKind::Tansu | BrokerKind::Given => &[Client::Librdkafka],
    }
}

/// The client the latency run on `broker` reads with, at half of its own runs' peak: the
/// first of the broker's (weir's on the mock cluster, whose runs the Kafka targets are judged
/// on; librdkafka's on tansu, the only one its runs read with).
pub fn latency_client(broker: BrokerKind) -> Client {
    clients(broker)[0]
}

/// One broker's runs on 1 and 2 executors, with each of its clients.
pub struct BrokerRuns {
    pub broker: BrokerKind,
    pub events: u64,
    pub partitions: i32,
    /// Events/s the broker took while the topic was filled.
    pub produce_rate: f64,
    pub runs: Vec<Repeated>,
}

/// What the Kafka half measured, and why any part of it was skipped.
#[derive(Default)]
pub struct KafkaRuns {
    pub brokers: Vec<BrokerRuns>,
    pub latency: Option<(BrokerKind, kafka::Latency)>,
    pub skipped: Vec<String>,
}

impl KafkaRuns {
    /// Half of the peak of the broker the latency run was on: the pace its target names (the
    /// run may have been asked less, or kept less).
    pub fn latency_half_of_peak(&self) -> Option<f64> {
        let (kind, _) = self.latency.as_ref()?;
        self.brokers
            .iter()
            .find(|b| b.broker == *kind)
            .map(half_of_peak)
    }
}

/// Partitions of the tansu (or --brokers) topic.
const TANSU_PARTITIONS: i32 = 8;

pub async fn measure(args: &BenchArgs, root: &Path) -> anyhow::Result<KafkaRuns> {
    let mut out = KafkaRuns::default();
    let stamp = chrono::Utc::now().timestamp();
    let events_topic = format!("bench-{stamp}-events");
    let latency_topic = format!("bench-{stamp}-latency");

    if args.mock_kafka_events == 0 {
        out.skipped
            .push("the mock cluster's runs (--mock-kafka-events 0)".into());
    } else {
        let topics = [events_topic.clone(), latency_topic.clone()];
        let broker = MockBroker::start(&topics, args.mock_partitions).await?;
        let runs = broker_runs(
            args,
            root,
            BrokerKind::Mock,
            &broker.address,
            &events_topic,
            args.mock_kafka_events,
            args.mock_partitions,
        )
        .await?;
        let rate = half_of_peak(&runs);
        out.brokers.push(runs);
        out.latency = Some((
            BrokerKind::Mock,
            latency(
                args,
                root,
                &broker.address,
                &latency_topic,
                rate,
                BrokerKind::Mock,
            )
            .await?,
        ));
    }

    if args.kafka_events == 0 {
        out.skipped
            .push("tansu's (or --brokers') runs (--kafka-events 0)".into());
        return Ok(out);
    }
    let _started;
    let (kind, brokers) = match &args.brokers {
        Some(b) => (BrokerKind::Given, b.clone()),
        None if kafka::tansu_available() => {
            let broker = kafka::Broker::start(&root.join("broker")).await?;
            let address = broker.address.clone();
            _started = broker;
            (BrokerKind::Tansu, address)
        }
        None => {
            out.skipped.push(
                "tansu's runs: no `tansu` on PATH (scripts/setup.sh installs it) and no --brokers"
                    .into(),
            );
            return Ok(out);
        }
    };
    let runs = broker_runs(
        args,
        root,
        kind,
        &brokers,
        &events_topic,
        args.kafka_events,
        TANSU_PARTITIONS,
    )
    .await?;
    let rate = half_of_peak(&runs);
    out.brokers.push(runs);
    if out.latency.is_none() {
        out.latency = Some((
            kind,
            latency(args, root, &brokers, &latency_topic, rate, kind).await?,
        ));
    }
    Ok(out)
}

/// The producer's settings for `broker`. The mock cluster keeps 5 MB of batches per
/// partition, so its batches are compressed; and it answers a fetch with one batch per
/// partition, so a bulk load (`bulk`) lingers a second to send large batches, as a bulk
/// producer would. The latency run's producer keeps gen's 20 ms, and is gen's light one: it
/// shares the machine with the job, and librdkafka's producer would take most of a core at
/// the pace asked.
fn producer_args(broker: BrokerKind, partitions: i32, bulk: bool) -> Vec<String> {
    let mut args = vec!["--partitions".to_string(), partitions.to_string()];
    if !bulk {
        args.extend(["--producer", "light"].map(String::from));
    }
    if broker == BrokerKind::Mock {
        args.extend(["--compression", "lz4"].map(String::from));
        if bulk {
            args.extend(["--linger-ms", "1000"].map(String::from));
        }
    }
    args
}

/// The runs from one broker over the same topic: on the mock cluster each configuration
/// `--rounds` times, taken in turns as the file runs are; on tansu once (its figure is its
/// storage's, and a run takes about 10 s).
async fn broker_runs(
    args: &BenchArgs,
    root: &Path,
    broker: BrokerKind,
    address: &str,
    topic: &str,
    events: u64,
    partitions: i32,
) -> anyhow::Result<BrokerRuns> {
    let rounds = match broker {
        BrokerKind::Mock => args.rounds,
        BrokerKind::Tansu | BrokerKind::Given => 1,
    };
    eprintln!(
        "weir bench: producing {events} events into {}",
        broker.label()
    );
    let started = std::time::Instant::now();
    let mut producer = producer_args(broker, partitions, true);
    producer.extend(["--start", START, "--span", "1h", "--seed", "1"].map(String::from));
    let producer: Vec<&str> = producer.iter().map(String::as_str).collect();
    kafka::produce(address, topic, events, 0.0, &producer, false).await?;
    let produce_rate = events as f64 / started.elapsed().as_secs_f64();
    let specs: Vec<RunSpec> = clients(broker)
        .iter()
        .flat_map(|c| [(*c, 1), (*c, 2)])
        .map(|(client, executors)| RunSpec {
            name: format!(
                "{}-{}-{executors}-executor{}",
                broker.run_prefix(),
                client.name(),
                if executors > 1 { "s" } else { "" }
            ),
            source: runs::kafka_source_with(
                address,
                topic,
                args.offsets_per_epoch,
                client.name(),
                reader_options(broker),
            ),
            input: None,
            executors,
            snapshots: true,
            distinct: Distinct::Exact,
        })
        .collect();
    let runs = runs::in_rounds(&specs, rounds, root, |run| {
        if run.input_rows != events {
            bail!(
                "{} read {} of the {events} events produced: the broker no longer held the \
                 rest (the mock cluster keeps 5 MB per partition; produce fewer events or use \
                 more partitions)",
                run.name,
                run.input_rows
            );
        }
        Ok(())
    })
    .await?;
    Ok(BrokerRuns {
        broker,
        events,
        partitions,
        produce_rate,
        runs,
    })
}

/// The reader's `fetch.wait.max.ms` on the mock cluster.
const MOCK_FETCH_WAIT_MS: &str = "10";

/// The reader's options for `broker` (both clients take them). The mock cluster holds a fetch that finds
/// nothing for the whole `fetch.wait.max.ms` (500 ms by default), records arriving meanwhile
/// or not, and librdkafka has one fetch in flight per broker: a reader at the end of the log,
/// or whose other partitions wait for their queues to drain, waited that long for the last
/// records of its range. Kafka answers as soon as `fetch.min.bytes` are there; a short wait
/// makes the mock answer about as soon.
fn reader_options(broker: BrokerKind) -> &'static [(&'static str, &'static str)] {
    match broker {
        BrokerKind::Mock => &[("fetch.wait.max.ms", MOCK_FETCH_WAIT_MS)],
        BrokerKind::Tansu | BrokerKind::Given => &[],
    }
}

/// Half of the fastest median rate of the runs with the latency run's client: its pace.
pub fn half_of_peak(runs: &BrokerRuns) -> f64 {
    let client = format!("-{}-", latency_client(runs.broker).name());
    let peak = runs
        .runs
        .iter()
        .filter(|r| r.name().contains(&client))
        .map(|r| r.median().engine_events_per_second())
        .fold(0.0, f64::max);
    (peak / 2.0).max(1.0)
}

async fn latency(
    args: &BenchArgs,
    root: &Path,
    address: &str,
    topic: &str,
    rate: f64,
    broker: BrokerKind,
) -> anyhow::Result<kafka::Latency> {
    let partitions = match broker {
        BrokerKind::Tansu | BrokerKind::Given => TANSU_PARTITIONS,
        BrokerKind::Mock => args.mock_partitions,
    };
    eprintln!(
        "weir bench: latency on the {} at {rate:.0} events/s for {} s",
        broker.label(),
        args.latency_seconds
    );
    let producer = producer_args(broker, partitions, false);
    let producer: Vec<&str> = producer.iter().map(String::as_str).collect();
    kafka::latency(
        root,
        address,
        topic,
        (latency_client(broker).name(), reader_options(broker)),
        rate,
        args.latency_seconds,
        &producer,
    )
    .await
}
