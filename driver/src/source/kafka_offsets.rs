//! Partition metadata and offsets of the source topic. The driver only asks the broker where
//! partitions begin and end; it never reads a record.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::thread::ScopedJoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use weir_common::job::KafkaSource;

/// Earliest retained and next (latest) offset of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub earliest: i64,
    pub latest: i64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct OffsetReader {
    consumer: BaseConsumer,
    topic: String,
    /// The topic's partitions as the last look found them: their offsets are asked while
    /// the broker is asked again for the partitions, so that planning an epoch waits for one
    /// round trip instead of three.
    known: Mutex<Vec<i32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("Kafka {servers}: {source}")]
    Kafka { servers: String, source: KafkaError },
    #[error("topic `{0}` does not exist or has no partitions")]
    NoTopic(String),
    #[error("the broker gave no {which} offset of partition {partition} of `{topic}`")]
    NoOffset {
        which: &'static str,
        topic: String,
        partition: i32,
    },
}

/// What a scoped thread answered; its panic goes on in the thread that waited for it.
fn joined<T>(thread: ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A client error of a request to the broker.
fn kafka_error(source: KafkaError) -> OffsetError {
    OffsetError::Kafka {
        servers: String::new(),
        source,
    }
}

impl OffsetReader {
    pub fn new(source: &KafkaSource) -> Result<Self, OffsetError> {
        let mut config = ClientConfig::new();
        for (k, v) in &source.options {
            config.set(k, v);
        }
        let consumer = config
            .set("bootstrap.servers", &source.bootstrap_servers)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|source_err| OffsetError::Kafka {
                servers: source.bootstrap_servers.clone(),
                source: source_err,
            })?;
        Ok(Self {
            consumer,
            topic: source.topic.clone(),
            known: Mutex::new(Vec::new()),
        })
    }

    /// Bounds of every partition of the topic (blocking; call from a blocking context).
    pub fn bounds(&self) -> Result<BTreeMap<i32, Bounds>, OffsetError> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (partitions, bounds) = if known.is_empty() {
            let partitions = self.partitions()?;
            let bounds = self.bounds_of(&partitions)?;
            (partitions, bounds)
        } else {
            let (partitions, bounds) = std::thread::scope(|s| {
                let listed = s.spawn(|| self.partitions());
                let bounds = self.bounds_of(&known);
                (joined(listed), bounds)
            });
            let partitions = partitions?;
            if partitions == known {
                (partitions, bounds?)
            } else {
                // Partitions were added since (or the topic made again): asked for them all.
                let bounds = self.bounds_of(&partitions)?;
                (partitions, bounds)
            }
        };
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = partitions;
        Ok(bounds)
    }

    /// The topic's partitions, as the broker's metadata lists them.
    fn partitions(&self) -> Result<Vec<i32>, OffsetError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), TIMEOUT)
            .map_err(kafka_error)?;
        let mut partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions.sort_unstable();
        if partitions.is_empty() {
            return Err(OffsetError::NoTopic(self.topic.clone()));
        }
        Ok(partitions)
    }

    /// The bounds of `partitions`: their earliest and latest offsets, asked at the same time.
    fn bounds_of(&self, partitions: &[i32]) -> Result<BTreeMap<i32, Bounds>, OffsetError> {
        let (earliest, latest) = std::thread::scope(|s| {
            let earliest = s.spawn(|| self.offsets(partitions, Offset::Beginning, "earliest"));
            let latest = self.offsets(partitions, Offset::End, "latest");
            (joined(earliest), latest)
        });
        let (earliest, latest) = (earliest?, latest?);
        let mut out = BTreeMap::new();
        for &p in partitions {
            let (Some(&earliest), Some(&latest)) = (earliest.get(&p), latest.get(&p)) else {
                return Err(OffsetError::NoOffset {
                    which: "earliest or latest",
                    topic: self.topic.clone(),
                    partition: p,
                });
            };
            out.insert(p, Bounds { earliest, latest });
        }
        Ok(out)
    }

    /// The earliest (`Offset::Beginning`) or latest (`Offset::End`) offset of each of
    /// `partitions`, in one ListOffsets request per leader: asking partition by partition
    /// (two round trips each) kept the executors waiting between epochs for milliseconds per
    /// dozen partitions (docs/benchmarks.md).
    fn offsets(
        &self,
        partitions: &[i32],
        at: Offset,
        which: &'static str,
    ) -> Result<BTreeMap<i32, i64>, OffsetError> {
        let mut asked = TopicPartitionList::with_capacity(partitions.len());
        for &p in partitions {
            // ListOffsets takes the special times -2 (earliest) and -1 (latest).
            asked
                .add_partition_offset(&self.topic, p, at)
                .map_err(kafka_error)?;
        }
        let answered = self
            .consumer
            .offsets_for_times(asked, TIMEOUT)
            .map_err(kafka_error)?;
        let mut out = BTreeMap::new();
        for e in answered.elements() {
            e.error().map_err(kafka_error)?;
            // A partition the broker did not answer for keeps the time it was asked at.
            let Offset::Offset(offset) = e.offset() else {
                return Err(OffsetError::NoOffset {
                    which,
                    topic: self.topic.clone(),
                    partition: e.partition(),
                });
            };
            out.insert(e.partition(), offset);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use weir_common::job::{SecretMap, StartingOffsets};

    use super::*;

    /// Every partition's bounds, from one request for all of them, are where its log begins
    /// and ends, as librdkafka's query of one partition answers them: an empty partition
    /// included, and one whose first records the broker no longer keeps.
    #[test]
    fn bounds_are_where_each_partition_begins_and_ends() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 4, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        // The mock cluster keeps about 5 MB of a partition: partition 0 gets 8 MB.
        let large = vec![b'x'; 100_000];
        let counts = [(0, 80), (1, 0), (2, 12), (3, 1)];
        for (partition, count) in counts {
            for _ in 0..count {
                let value: &[u8] = if partition == 0 { &large } else { b"v" };
                producer
                    .send(
                        BaseRecord::<(), _>::to("t")
                            .partition(partition)
                            .payload(value),
                    )
                    .unwrap();
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let source = KafkaSource {
            bootstrap_servers: mock.bootstrap_servers(),
            topic: "t".into(),
            starting_offsets: StartingOffsets::Earliest,
            fail_on_data_loss: true,
            max_offsets_per_trigger: None,
            options: SecretMap::default(),
            client: weir_common::job::kafka_client::KafkaClient::Librdkafka,
        };
        let reader = OffsetReader::new(&source).unwrap();
        let bounds = reader.bounds().unwrap();
        let one_by_one: BTreeMap<i32, Bounds> = counts
            .iter()
            .map(|&(p, _)| {
                let (earliest, latest) = reader.consumer.fetch_watermarks("t", p, TIMEOUT).unwrap();
                (p, Bounds { earliest, latest })
            })
            .collect();
        assert_eq!(bounds, one_by_one);
        let latest: Vec<(i32, i64)> = bounds.iter().map(|(p, b)| (*p, b.latest)).collect();
        assert_eq!(latest, [(0, 80), (1, 0), (2, 12), (3, 1)]);
        assert!(bounds[&0].earliest > 0, "{bounds:?}");
        assert!(bounds.values().skip(1).all(|b| b.earliest == 0));

        // Asked again, the offsets are asked beside the partitions: the same answer.
        assert_eq!(reader.bounds().unwrap(), bounds);
        // Partitions the last look did not find (added since) are in the answer too.
        *reader.known.lock().unwrap() = vec![1, 2];
        assert_eq!(reader.bounds().unwrap(), bounds);
        assert_eq!(*reader.known.lock().unwrap(), [0, 1, 2, 3]);
    }
}
