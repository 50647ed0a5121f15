//! `weir gen`'s Kafka producer: the topic made when missing, records handed to librdkafka
//! without a future or channel each (a `BaseProducer` whose delivery reports are served by
//! the producing thread), and, when asked, every record's produce time by partition and
//! offset. The produce time is the record's CreateTime, set by gen and carried to its delivery
//! report as the report's opaque value: a broker may report its LogAppendTime there instead
//! (librdkafka's mock cluster reports 1234).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use super::GenArgs;

/// Records sent between two servings of delivery reports: often enough that the producer's
/// queue (200 000 messages) never fills with reports nobody read.
const SERVE_EVERY: u64 = 1024;

/// The produce time (ms since the epoch, the record's CreateTime) of every record delivered,
/// by partition and offset.
#[derive(Debug, Default)]
pub struct ProduceTimes {
    pub by_partition: BTreeMap<i32, Vec<(i64, i64)>>,
}

/// What the delivery reports said.
#[derive(Default)]
struct Reports {
    delivered: u64,
    /// The first failure, with the number of records that failed.
    failed: Option<(KafkaError, u64)>,
    times: Option<ProduceTimes>,
}

/// The producer's context: collects delivery reports.
struct DeliveryLog(Mutex<Reports>);

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    /// The record's produce time, ms since the epoch.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, produced_at: usize) {
        // Only this producer's thread serves reports; a poisoned lock means it panicked.
        let Ok(mut reports) = self.0.lock() else {
            return;
        };
        match result {
            Ok(message) => {
                reports.delivered += 1;
                if let Some(times) = reports.times.as_mut() {
                    times
                        .by_partition
                        .entry(message.partition())
                        .or_default()
                        .push((message.offset(), produced_at as i64));
                }
            }
            Err((error, _)) => match &mut reports.failed {
                Some((_, n)) => *n += 1,
                None => reports.failed = Some((error.clone(), 1)),
            },
        }
    }
}

/// A producer into one topic.
pub struct Producer {
    inner: BaseProducer<DeliveryLog>,
    topic: String,
    sent: u64,
}

impl Producer {
    /// Connects to `brokers`; keeps every record's produce time when `args.produce_times`
    /// asks for them.
    pub fn connect(brokers: &str, args: &GenArgs) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", args.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", "60000")
            .set("compression.type", &args.compression);
        let reports = Reports {
            times: args.produce_times.then(ProduceTimes::default),
            ..Reports::default()
        };
        let inner = config
            .create_with_context(DeliveryLog(Mutex::new(reports)))
            .context("Kafka producer")?;
        Ok(Self {
            inner,
            topic: args.topic.clone(),
            sent: 0,
        })
    }

    /// Hands one record stamped `at` (ms since the epoch) to librdkafka, serving delivery
    /// reports while its queue is full.
    pub fn send(
        &mut self,
        partition: i32,
        key: &[u8],
        value: &[u8],
        at: i64,
    ) -> anyhow::Result<()> {
        let mut record = BaseRecord::with_opaque_to(&self.topic, at as usize)
            .partition(partition)
            .key(key)
            .payload(value)
            .timestamp(at);
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.serve(Duration::from_millis(10))?;
                }
                Err((e, _)) => return Err(e).context("producing"),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(SERVE_EVERY) {
            self.serve(Duration::ZERO)?;
        }
        Ok(())
    }

    /// Serves the delivery reports that are ready (waiting up to `wait` for one) and fails on
    /// a record the broker did not take.
    fn serve(&self, wait: Duration) -> anyhow::Result<()> {
        self.inner.poll(wait);
        self.failure()
    }

    fn failure(&self) -> anyhow::Result<()> {
        let reports = self.reports()?;
        match &reports.failed {
            Some((error, n)) => bail!("{n} records were not delivered, the first: {error}"),
            None => Ok(()),
        }
    }

    fn reports(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Reports>> {
        self.inner
            .context()
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("the delivery reports' lock is poisoned"))
    }

    /// Waits until every record sent is delivered, and returns their produce times if kept.
    pub fn finish(self) -> anyhow::Result<Option<ProduceTimes>> {
        self.inner
            .flush(Duration::from_secs(60))
            .context("flushing the producer")?;
        self.failure()?;
        let mut reports = self.reports()?;
        if reports.delivered != self.sent {
            bail!(
                "{} of {} records were reported delivered",
                reports.delivered,
                self.sent
            );
        }
        Ok(reports.times.take())
    }
}

/// Creates `topic` unless the broker has it already. A broker without CreateTopics, such as
/// librdkafka's mock cluster, is given its topics beforehand.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    if topic_exists(&config, topic).await? {
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
