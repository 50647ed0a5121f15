//! Reads exactly the planned offset ranges: partitions are assigned (no consumer group, no
//! committed offsets), so a replay of an epoch reads the same records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use weir_common::checkpoint::PartitionRange;
use weir_common::job::KafkaSource;

use crate::input::Record;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("no progress on partition(s) {partitions:?} of {topic} for {waited:?}; planned offsets may be gone or the broker unreachable")]
    Stalled {
        topic: String,
        partitions: Vec<i32>,
        waited: Duration,
    },
    #[error("the run was abandoned")]
    Abandoned,
}

/// How long a read may see no record before the epoch fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Routes librdkafka's reports into `tracing`; reaching the end of a partition is expected here.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "{fac}: {log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if end_of_partition {
            tracing::debug!(target: "librdkafka", "{reason}");
        } else {
            tracing::error!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

pub struct KafkaReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    /// Larger values are copied cut to this size (they go to the dead letter).
    max_record_bytes: usize,
}

/// A fetched message as a record; a value larger than `max_bytes` keeps its first `max_bytes`.
fn record(
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    max_bytes: usize,
) -> Record {
    let cut_from = value
        .filter(|v| v.len() > max_bytes)
        .map(|v| v.len() as u64);
    Record {
        partition,
        offset,
        key: key.map(<[u8]>::to_vec),
        value: value.map(|v| bytes::Bytes::copy_from_slice(&v[..v.len().min(max_bytes)])),
        cut_from,
    }
}

impl KafkaReader {
    pub fn new(
        source: &KafkaSource,
        job_id: &str,
        max_record_bytes: usize,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        for (k, v) in &source.options {
            config.set(k, v);
        }
        config
            .set("bootstrap.servers", &source.bootstrap_servers)
            .set("group.id", format!("weir-{job_id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error");
        Ok(Self {
            consumer: config.create_with_context(ReaderContext)?,
            topic: source.topic.clone(),
            max_record_bytes,
        })
    }

    /// Reads `[start, end)` of every range, handing records over in chunks of up to `chunk`,
    /// while `keep_going` answers true (it is asked at least every 200 ms).
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(Vec<Record>),
    ) -> Result<(), ReadError> {
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| r.end > r.start) {
            tpl.add_partition_offset(&self.topic, r.partition, Offset::Offset(r.start))?;
            remaining.insert(r.partition, r.end);
        }
        if remaining.is_empty() {
            return Ok(());
        }
        self.consumer.assign(&tpl)?;
        let result = self.poll_until_done(&mut remaining, chunk, &keep_going, &mut on_chunk);
        self.consumer.unassign()?;
        result
    }

    fn poll_until_done(
        &self,
        remaining: &mut HashMap<i32, i64>,
        chunk: usize,
        keep_going: &impl Fn() -> bool,
        on_chunk: &mut impl FnMut(Vec<Record>),
    ) -> Result<(), ReadError> {
        let mut buffer = Vec::with_capacity(chunk);
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            if !keep_going() {
                return Err(ReadError::Abandoned);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(msg)) => {
                    let p = msg.partition();
                    let Some(&end) = remaining.get(&p) else {
                        continue;
                    };
                    let offset = msg.offset();
                    if offset < end {
                        buffer.push(record(
                            p,
                            offset,
                            msg.key(),
                            msg.payload(),
                            self.max_record_bytes,
                        ));
                        last_progress = Instant::now();
                        if buffer.len() >= chunk {
                            on_chunk(std::mem::replace(&mut buffer, Vec::with_capacity(chunk)));
                        }
                    }
                    if offset + 1 >= end {
                        remaining.remove(&p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // Gaps (compaction, transaction markers) end a partition early: the broker
                    // has nothing between the last record and the planned end.
                    if let Some(&end) = remaining.get(&p) {
                        if self.position(p)? >= end {
                            remaining.remove(&p);
                        }
                    }
                }
                Some(Err(e)) => return Err(e.into()),
            }
            if last_progress.elapsed() > STALL_TIMEOUT {
                let mut partitions: Vec<i32> = remaining.keys().copied().collect();
                partitions.sort_unstable();
                return Err(ReadError::Stalled {
                    topic: self.topic.clone(),
                    partitions,
                    waited: STALL_TIMEOUT,
                });
            }
        }
        if !buffer.is_empty() {
            on_chunk(buffer);
        }
        Ok(())
    }

    fn position(&self, partition: i32) -> Result<i64, KafkaError> {
        let positions = self.consumer.position()?;
        Ok(positions
            .find_partition(&self.topic, partition)
            .and_then(|e| e.offset().to_raw())
            .unwrap_or(-1))
    }
}
