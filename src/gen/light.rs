//! `weir gen --producer light`: a Kafka producer of weir's own, for load on the machine that
//! runs the job. librdkafka spends about 1.2 µs of CPU a record beyond making the event (a
//! message allocated and queued, its broker thread's batching, a delivery report each); this
//! producer writes each record into its partition's batch as it comes (`record_batch`) and,
//! when the linger is up, sends every batch of a leader in one Produce request
//! (kafka-protocol encodes the requests and decodes the answers), whose answer gives each
//! batch's first offset: about 0.25 µs. Plaintext only, acks from the leader, no retries: a
//! request the broker refuses fails gen.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Message, StrBytes, VersionRange};
use weir_executor::kafka_wire::connection::{self, refusal, Connection};
use weir_executor::kafka_wire::record_batch::{Codec, Records};

use super::kafka::ProduceTimes;

/// A partition's records are sent once they reach this many bytes, linger or not: Kafka
/// refuses a batch over `message.max.bytes` (1 MB by default).
const BATCH_BYTES: usize = 512 * 1024;
/// How long the broker may take to answer a Produce request.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// The highest request versions used: Produce 13 names topics by id only.
const PRODUCE_VERSIONS: VersionRange = VersionRange { min: 3, max: 12 };
/// How long an answer may take: the broker's own Produce timeout, and some.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
const CLIENT_ID: &str = "weir-gen";

/// A producer into one topic; blocking.
pub struct LightProducer {
    topic: TopicName,
    /// Per leader: its connection, the Produce version it takes, and its partitions.
    leaders: Vec<(Connection, i16, Vec<i32>)>,
    /// Per partition: the records waiting, and their produce times when kept.
    pending: Vec<(Records, Vec<i64>)>,
    /// When the oldest record waiting was handed over.
    oldest: Option<Instant>,
    linger: Duration,
    codec: Codec,
    times: Option<ProduceTimes>,
    sent: u64,
    delivered: u64,
}

impl LightProducer {
    /// Connects to the leaders of `topic`'s partitions (which must exist) through
    /// `bootstrap` (the first of a comma-separated list); keeps every record's produce time
    /// when `keep_times` asks.
    pub fn connect(
        bootstrap: &str,
        topic: &str,
        compression: &str,
        linger: Duration,
        keep_times: bool,
    ) -> anyhow::Result<Self> {
        let codec = match compression {
            "none" => Codec::None,
            "lz4" => Codec::Lz4,
            other => bail!("the light producer compresses with none or lz4, not {other}"),
        };
        let first = connection::first_server(bootstrap)?;
        let mut bootstrap = Connection::open(first, CLIENT_ID, ANSWER_TIMEOUT)?;
        let found = connection::leaders(&mut bootstrap, topic)?;
        let count = found.partitions;
        let mut leaders = Vec::with_capacity(found.leaders.len());
        for (address, partitions) in found.leaders {
            let connection = Connection::open(&address, CLIENT_ID, ANSWER_TIMEOUT)?;
            let version = connection.version(
                ApiKey::Produce,
                PRODUCE_VERSIONS.intersect(&ProduceRequest::VERSIONS),
            )?;
            leaders.push((connection, version, partitions));
        }
        let name = TopicName(StrBytes::from_string(topic.to_string()));
        Ok(Self {
            topic: name,
            leaders,
            pending: (0..count).map(|_| Default::default()).collect(),
            oldest: None,
            linger,
            codec,
            times: keep_times.then(ProduceTimes::default),
            sent: 0,
            delivered: 0,
        })
    }

    /// Keeps one record handed over at `now` for its partition's next batch, stamped `at`
    /// (ms since the epoch, its CreateTime); sends every batch when the linger is up or the
    /// batch is full.
    pub fn send(
        &mut self,
        partition: i32,
        key: &[u8],
        value: &[u8],
        at: i64,
        now: Instant,
    ) -> anyhow::Result<()> {
        let (records, times) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.pending.get_mut(p))
            .with_context(|| format!("the topic has no partition {partition}"))?;
        records.push(key, value, at)?;
        if self.times.is_some() {
            times.push(at);
        }
        let full = records.bytes() >= BATCH_BYTES;
        let oldest = *self.oldest.get_or_insert(now);
        self.sent += 1;
        if full || now.saturating_duration_since(oldest) >= self.linger {
            self.flush()?;
        }
        Ok(())
    }

    /// When the records waiting are due to be sent, if any are.
    pub fn due(&self) -> Option<Instant> {
        self.oldest.map(|o| o + self.linger)
    }

    /// Sends every partition's records, one request per leader, and waits for the answers.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.oldest = None;
        for (connection, version, partitions) in &mut self.leaders {
            let mut data = Vec::new();
            let mut batches = Vec::new();
            for &p in partitions.iter() {
                let (records, times) = &mut self.pending[p as usize];
                if records.is_empty() {
                    continue;
                }
                batches.push((p, records.len(), std::mem::take(times)));
                let batch = records
                    .finish(self.codec)
                    .with_context(|| format!("writing partition {p}'s batch"))?;
                data.push(
                    PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(Bytes::from(batch))),
                );
            }
            if data.is_empty() {
                continue;
            }
            let request = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(PRODUCE_TIMEOUT.as_millis() as i32)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(self.topic.clone())
                    .with_partition_data(data)]);
            let response: ProduceResponse = connection.call(ApiKey::Produce, &request, *version)?;
            for (p, count, sent_at) in batches {
                let answer = response
                    .responses
                    .iter()
                    .filter(|t| t.name == self.topic)
                    .flat_map(|t| &t.partition_responses)
                    .find(|r| r.index == p)
                    .with_context(|| format!("the broker did not answer for partition {p}"))?;
                if let Some(error) = refusal(answer.error_code) {
                    bail!("{count} records of partition {p} were not delivered: {error}");
                }
                self.delivered += count as u64;
                if let Some(times) = self.times.as_mut() {
                    let offsets = times.by_partition.entry(p).or_default();
                    offsets.extend((answer.base_offset..).zip(sent_at));
                }
            }
        }
        Ok(())
    }

    /// Sends what waits and returns every record's produce time if kept.
    pub fn finish(mut self) -> anyhow::Result<Option<ProduceTimes>> {
        self.flush()?;
        if self.delivered != self.sent {
            bail!("{} of {} records were delivered", self.delivered, self.sent);
        }
        Ok(self.times.take())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Message, Timestamp};
    use rdkafka::mocking::MockCluster;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;

    const PARTITIONS: i32 = 3;

    /// Every record of `topic` as librdkafka's consumer reads it: (key, value, CreateTime)
    /// by partition and offset.
    fn read_back(
        bootstrap: &str,
        topic: &str,
        count: usize,
    ) -> BTreeMap<(i32, i64), (String, String, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "light-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut read = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} records read",
                read.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = message.unwrap();
            let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
            let Timestamp::CreateTime(at) = m.timestamp() else {
                panic!("{:?} is not a CreateTime", m.timestamp());
            };
            read.insert(
                (m.partition(), m.offset()),
                (text(m.key()), text(m.payload()), at),
            );
        }
        read
    }

    /// Records handed over across several batches (a linger of zero sends each at once,
    /// a long one all at the end) arrive whole, in order, with their CreateTime, and the
    /// produce times say which offset each got.
    #[test]
    fn what_the_light_producer_sends_a_consumer_reads_and_its_offsets_are_known() {
        let mock = MockCluster::new(1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        for (topic, compression, linger) in [
            ("plain", "none", Duration::ZERO),
            ("lz4", "lz4", Duration::from_secs(3600)),
        ] {
            mock.create_topic(topic, PARTITIONS, 1).unwrap();
            let mut producer =
                LightProducer::connect(&bootstrap, topic, compression, linger, true).unwrap();
            let start = Instant::now();
            let mut sent = BTreeMap::new();
            for i in 0..600i64 {
                let p = (i % PARTITIONS as i64) as i32;
                let (key, value) = (format!("key-{i}"), format!("{{\"n\":{i}}}"));
                let at = 1_700_000_000_000 + i * 3;
                producer
                    .send(p, key.as_bytes(), value.as_bytes(), at, start)
                    .unwrap();
                sent.insert(i, (p, key, value, at));
            }
            let times = producer.finish().unwrap().unwrap();
            let read = read_back(&bootstrap, topic, sent.len());
            assert_eq!(read.len(), sent.len());
            let mut by_partition: BTreeMap<i32, Vec<(String, String, i64)>> = BTreeMap::new();
            for (p, key, value, at) in sent.values() {
                by_partition
                    .entry(*p)
                    .or_default()
                    .push((key.clone(), value.clone(), *at));
            }
            for (p, records) in &by_partition {
                let got: Vec<_> = read
                    .range((*p, 0)..(*p, i64::MAX))
                    .map(|(_, r)| r.clone())
                    .collect();
                assert_eq!(&got, records, "{topic} partition {p}");
                let kept: Vec<(i64, i64)> = read
                    .range((*p, 0)..(*p, i64::MAX))
                    .map(|((_, o), r)| (*o, r.2))
                    .collect();
                assert_eq!(times.by_partition[p], kept, "{topic} partition {p}'s times");
            }
        }
    }

    #[test]
    fn a_missing_topic_or_an_unknown_codec_is_a_clear_error() {
        let mock = MockCluster::new(1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        let linger = Duration::from_millis(20);
        let missing = LightProducer::connect(&bootstrap, "nowhere", "none", linger, false)
            .err()
            .unwrap();
        assert!(
            format!("{missing:#}").contains("topic nowhere"),
            "{missing:#}"
        );
        mock.create_topic("t", 1, 1).unwrap();
        let codec = LightProducer::connect(&bootstrap, "t", "gzip", linger, false)
            .err()
            .unwrap();
        assert!(format!("{codec:#}").contains("none or lz4"), "{codec:#}");
        let mut producer = LightProducer::connect(&bootstrap, "t", "none", linger, false).unwrap();
        let beyond = producer
            .send(1, b"k", b"v", 0, Instant::now())
            .err()
            .unwrap();
        assert!(
            format!("{beyond:#}").contains("no partition 1"),
            "{beyond:#}"
        );
    }
}
