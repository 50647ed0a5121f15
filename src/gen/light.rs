//! `weir gen --producer light`: a Kafka producer of weir's own, for load on the machine that
//! runs the job. librdkafka spends about 1.2 µs of CPU a record beyond making the event (a
//! message allocated and queued, its broker thread's batching, a delivery report each); this
//! producer writes each record into its partition's batch as it comes (`record_batch`) and,
//! when the linger is up, sends every batch of a leader in one Produce request
//! (kafka-protocol encodes the requests and decodes the answers), whose answer gives each
//! batch's first offset: about 0.25 µs. Plaintext only, acks from the leader, no retries: a
//! request the broker refuses fails gen.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};

use super::kafka::ProduceTimes;
use super::record_batch::{Codec, Records};

/// A partition's records are sent once they reach this many bytes, linger or not: Kafka
/// refuses a batch over `message.max.bytes` (1 MB by default).
const BATCH_BYTES: usize = 512 * 1024;
/// How long the broker may take to answer a Produce request.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// The highest request versions used: Produce 13 names topics by id only.
const PRODUCE_VERSIONS: VersionRange = VersionRange { min: 3, max: 12 };
const METADATA_VERSIONS: VersionRange = VersionRange { min: 1, max: 12 };

/// One broker connection; requests are answered in turn.
struct Connection {
    address: String,
    stream: TcpStream,
    correlation: i32,
    out: BytesMut,
    produce_version: i16,
    metadata_version: i16,
}

impl Connection {
    /// Connects to `address` and agrees on the Produce and Metadata versions both sides know.
    fn open(address: &str) -> anyhow::Result<Self> {
        let stream =
            TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PRODUCE_TIMEOUT + Duration::from_secs(10)))?;
        let mut connection = Connection {
            address: address.to_string(),
            stream,
            correlation: 0,
            out: BytesMut::new(),
            produce_version: 0,
            metadata_version: 0,
        };
        // Version 0 of ApiVersions is the one every broker answers.
        let versions: ApiVersionsResponse =
            connection.call(ApiKey::ApiVersions, &ApiVersionsRequest::default(), 0)?;
        if let Some(error) = refusal(versions.error_code) {
            bail!("{address} refused ApiVersions: {error}");
        }
        let agree = |key: ApiKey, ours: VersionRange| -> anyhow::Result<i16> {
            let theirs = versions
                .api_keys
                .iter()
                .find(|k| k.api_key == key as i16)
                .map(|k| VersionRange {
                    min: k.min_version,
                    max: k.max_version,
                })
                .with_context(|| format!("{address} does not serve {key:?}"))?;
            let both = ours.intersect(&theirs);
            if both.is_empty() {
                bail!("{address} serves {key:?} {theirs}, this producer {ours}");
            }
            Ok(both.max)
        };
        connection.produce_version = agree(
            ApiKey::Produce,
            PRODUCE_VERSIONS.intersect(&ProduceRequest::VERSIONS),
        )?;
        connection.metadata_version = agree(
            ApiKey::Metadata,
            METADATA_VERSIONS.intersect(&MetadataRequest::VERSIONS),
        )?;
        Ok(connection)
    }

    /// Sends `request`, the `key` API's request as `version`, and reads its answer.
    fn call<Q, A>(&mut self, key: ApiKey, request: &Q, version: i16) -> anyhow::Result<A>
    where
        Q: Encodable + HeaderVersion,
        A: Decodable + HeaderVersion,
    {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("weir-gen")));
        self.out.clear();
        self.out.put_i32(0);
        header.encode(&mut self.out, Q::header_version(version))?;
        request.encode(&mut self.out, version)?;
        let size = i32::try_from(self.out.len() - 4).context("a request over 2 GiB")?;
        self.out[..4].copy_from_slice(&size.to_be_bytes());
        let address = &self.address;
        self.stream
            .write_all(&self.out)
            .with_context(|| format!("sending to {address}"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .with_context(|| format!("reading {address}'s answer"))?;
        let size = usize::try_from(i32::from_be_bytes(size))
            .with_context(|| format!("{address} answered a negative size"))?;
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .with_context(|| format!("reading {address}'s answer"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, A::header_version(version))?;
        if header.correlation_id != self.correlation {
            bail!(
                "{address} answered request {} to request {}",
                header.correlation_id,
                self.correlation
            );
        }
        // Bytes past what this version holds are left unread, as Kafka's clients leave them
        // (librdkafka's mock cluster ends ApiVersions 0 with one).
        A::decode(&mut body, version).with_context(|| format!("decoding {address}'s answer"))
    }
}

/// What an error code in an answer says, if it is one.
fn refusal(code: i16) -> Option<String> {
    (code != 0).then(|| match code.err() {
        Some(error) => error.to_string(),
        None => format!("error code {code}"),
    })
}

/// A producer into one topic; blocking.
pub struct LightProducer {
    topic: TopicName,
    /// Per leader: its connection and its partitions.
    leaders: Vec<(Connection, Vec<i32>)>,
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
        let first = bootstrap
            .split(',')
            .map(str::trim)
            .find(|b| !b.is_empty())
            .context("no bootstrap server given")?;
        let mut bootstrap = Connection::open(first)?;
        let name = TopicName(StrBytes::from_string(topic.to_string()));
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name.clone()))
            ]))
            .with_allow_auto_topic_creation(false);
        let version = bootstrap.metadata_version;
        let metadata: MetadataResponse = bootstrap.call(ApiKey::Metadata, &request, version)?;
        let found = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref() == Some(&name))
            .with_context(|| format!("the broker did not describe topic {topic}"))?;
        if let Some(error) = refusal(found.error_code) {
            bail!("topic {topic}: {error}");
        }
        let count = found.partitions.len();
        let mut leaders: Vec<(Connection, Vec<i32>)> = Vec::new();
        let mut leader_ids = Vec::new();
        for p in &found.partitions {
            if let Some(error) = refusal(p.error_code) {
                bail!("topic {topic} partition {}: {error}", p.partition_index);
            }
            if !usize::try_from(p.partition_index).is_ok_and(|i| i < count) {
                bail!(
                    "topic {topic} has a partition {} of {count}",
                    p.partition_index
                );
            }
            let slot = match leader_ids.iter().position(|id| *id == p.leader_id) {
                Some(slot) => slot,
                None => {
                    let broker = metadata
                        .brokers
                        .iter()
                        .find(|b| b.node_id == p.leader_id)
                        .with_context(|| {
                            format!(
                                "partition {}'s leader is not a known broker",
                                p.partition_index
                            )
                        })?;
                    let address = format!("{}:{}", broker.host.as_str(), broker.port);
                    leaders.push((Connection::open(&address)?, Vec::new()));
                    leader_ids.push(p.leader_id);
                    leaders.len() - 1
                }
            };
            leaders[slot].1.push(p.partition_index);
        }
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
        for (connection, partitions) in &mut self.leaders {
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
            let version = connection.produce_version;
            let response: ProduceResponse = connection.call(ApiKey::Produce, &request, version)?;
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
