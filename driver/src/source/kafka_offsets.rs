//! Partition metadata and offsets of the source topic. The driver only asks the broker where
//! partitions begin and end; it never reads a record.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
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
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("Kafka {servers}: {source}")]
    Kafka { servers: String, source: KafkaError },
    #[error("topic `{0}` does not exist or has no partitions")]
    NoTopic(String),
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
        })
    }

    /// Bounds of every partition of the topic (blocking; call from a blocking context).
    pub fn bounds(&self) -> Result<BTreeMap<i32, Bounds>, OffsetError> {
        let err = |source: KafkaError| OffsetError::Kafka {
            servers: String::new(),
            source,
        };
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), TIMEOUT)
            .map_err(err)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(OffsetError::NoTopic(self.topic.clone()));
        }
        let mut out = BTreeMap::new();
        for p in partitions {
            let (earliest, latest) = self
                .consumer
                .fetch_watermarks(&self.topic, p, TIMEOUT)
                .map_err(err)?;
            out.insert(p, Bounds { earliest, latest });
        }
        Ok(out)
    }
}
