//! Reads exactly the planned offset ranges: partitions are assigned (no consumer group, no
//! committed offsets), so a replay of an epoch reads the same records.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use weir_common::checkpoint::PartitionRange;
use weir_common::job::KafkaSource;

use crate::input::consumer_queue::{ConsumerQueue, Polled};
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

/// Bytes of records kept past the ranges being read (half of librdkafka's own prefetch, 64 MB by
/// default). Past it, records after the ranges are dropped and the next read assigns its
/// partitions afresh, fetching them again: a backlog read at full speed reaches it every few
/// epochs, and it keeps a stalled partition from making the others' records pile up.
/// (Pausing the partitions instead cost about a second an epoch in librdkafka's restart of
/// their fetches.)
const MAX_AHEAD_BYTES: usize = 32 << 20;

/// Messages taken from the consumer's queue per call.
const POLL_BATCH: usize = 4096;

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
    /// Declared before `consumer`: it is dropped first.
    state: Mutex<Reading>,
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    /// Larger values are copied cut to this size (they go to the dead letter).
    max_record_bytes: usize,
}

/// The consumer's queue and where the last read left the assignment.
struct Reading {
    queue: ConsumerQueue,
    /// The end of the range each assigned partition was last read to; empty when the
    /// assignment must be made afresh.
    read_to: HashMap<i32, i64>,
    /// Records taken from the queue past the range being read, in offset order: a record of a
    /// partition that comes after its end is the start of its next range.
    ahead: HashMap<i32, VecDeque<Record>>,
    /// Bytes of the records in `ahead`.
    ahead_bytes: usize,
    /// Whether records past the ranges were dropped (`ahead` was full): the next read must
    /// assign afresh.
    overflowed: bool,
}

/// Whether `ranges` pick up exactly where the last read ended (`read_to`), on the same
/// partitions.
fn continues(read_to: &HashMap<i32, i64>, ranges: &[PartitionRange]) -> bool {
    !read_to.is_empty()
        && read_to.len() == ranges.len()
        && ranges
            .iter()
            .all(|r| read_to.get(&r.partition) == Some(&r.start))
}

/// Adds `record` to the chunk being filled, handing the chunk over when full.
fn push(
    buffer: &mut Vec<Record>,
    record: Record,
    chunk: usize,
    on_chunk: &mut impl FnMut(Vec<Record>),
) {
    buffer.push(record);
    if buffer.len() >= chunk {
        on_chunk(std::mem::replace(buffer, Vec::with_capacity(chunk)));
    }
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
        // librdkafka waits a second before fetching again for a partition whose prefetch is
        // full. Reads here drain that queue within the epoch, and the second was most of an
        // epoch's time against a broker that keeps up (docs/benchmarks.md). The job's
        // options may set it otherwise.
        config.set("fetch.queue.backoff.ms", "10");
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
        let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
        let queue = ConsumerQueue::of(&consumer, POLL_BATCH).ok_or(KafkaError::ClientCreation(
            "the consumer has no queue".into(),
        ))?;
        Ok(Self {
            state: Mutex::new(Reading {
                queue,
                read_to: HashMap::new(),
                ahead: HashMap::new(),
                ahead_bytes: 0,
                overflowed: false,
            }),
            consumer,
            topic: source.topic.clone(),
            max_record_bytes,
        })
    }

    /// Reads `[start, end)` of every range, handing records over in chunks of up to `chunk`,
    /// while `keep_going` answers true (it is asked at least every 200 ms).
    ///
    /// When the ranges continue where the last read ended, on the same partitions (the next
    /// epoch of a steady run), the assignment stays: what librdkafka fetched meanwhile is read
    /// from its queue instead of being dropped and fetched again. Anything else (the first
    /// read, a replay, a rescale) assigns the partitions at the ranges' starts.
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(Vec<Record>),
    ) -> Result<(), ReadError> {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = &mut *guard;
        if !continues(&state.read_to, ranges) {
            let mut tpl = TopicPartitionList::new();
            for r in ranges {
                tpl.add_partition_offset(&self.topic, r.partition, Offset::Offset(r.start))?;
            }
            state.read_to.clear();
            state.ahead.clear();
            state.ahead_bytes = 0;
            if ranges.is_empty() {
                self.consumer.unassign()?;
            } else {
                self.consumer.assign(&tpl)?;
            }
        }
        let mut remaining: HashMap<i32, i64> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| (r.partition, r.end))
            .collect();
        let mut buffer = Vec::with_capacity(chunk);
        // Records taken from the queue by the last read, beyond its ranges.
        for r in ranges {
            let Some(ahead) = state.ahead.get_mut(&r.partition) else {
                continue;
            };
            while let Some(next) = ahead.front() {
                if next.offset >= r.end {
                    // Everything before the end is in hand.
                    remaining.remove(&r.partition);
                    break;
                }
                if let Some(record) = ahead.pop_front() {
                    state.ahead_bytes -= record.size();
                    if record.offset + 1 >= r.end {
                        remaining.remove(&r.partition);
                    }
                    push(&mut buffer, record, chunk, &mut on_chunk);
                }
            }
        }
        // A failed read leaves the queue somewhere unknown: the next one assigns afresh.
        state.read_to.clear();
        let result = self.poll_until_done(
            state,
            &mut remaining,
            &mut buffer,
            chunk,
            &keep_going,
            &mut on_chunk,
        );
        if result.is_ok() && !state.overflowed {
            state.read_to = ranges.iter().map(|r| (r.partition, r.end)).collect();
        } else {
            state.overflowed = false;
            state.ahead.clear();
            state.ahead_bytes = 0;
        }
        result
    }

    fn poll_until_done(
        &self,
        state: &mut Reading,
        remaining: &mut HashMap<i32, i64>,
        buffer: &mut Vec<Record>,
        chunk: usize,
        keep_going: &impl Fn() -> bool,
        on_chunk: &mut impl FnMut(Vec<Record>),
    ) -> Result<(), ReadError> {
        let mut last_progress = Instant::now();
        // Partitions whose end was reached, checked against their position after the batch.
        let mut at_eof = Vec::new();
        let Reading {
            queue,
            ahead,
            ahead_bytes,
            overflowed,
            ..
        } = state;
        while !remaining.is_empty() {
            if !keep_going() {
                return Err(ReadError::Abandoned);
            }
            let mut progressed = false;
            queue.poll_batch(200, |polled| match polled {
                Polled::Message {
                    partition: p,
                    offset,
                    key,
                    payload,
                } => {
                    let record = record(p, offset, key, payload, self.max_record_bytes);
                    match remaining.get(&p) {
                        Some(&end) if offset < end => {
                            if offset + 1 >= end {
                                remaining.remove(&p);
                            }
                            push(buffer, record, chunk, on_chunk);
                            progressed = true;
                        }
                        // Past this read's end (or of a partition already read to its end):
                        // the next read's, most likely.
                        _ => {
                            remaining.remove(&p);
                            if *ahead_bytes + record.size() > MAX_AHEAD_BYTES {
                                *overflowed = true;
                            } else {
                                *ahead_bytes += record.size();
                                ahead.entry(p).or_default().push_back(record);
                            }
                        }
                    }
                }
                Polled::PartitionEof(p) => at_eof.push(p),
            })?;
            if progressed {
                last_progress = Instant::now();
            }
            // Gaps (compaction, transaction markers) end a partition early: the broker has
            // nothing between the last record and the planned end.
            for p in at_eof.drain(..) {
                if let Some(&end) = remaining.get(&p) {
                    if self.position(p)? >= end {
                        remaining.remove(&p);
                    }
                }
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
            on_chunk(std::mem::take(buffer));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, start: i64, end: i64) -> PartitionRange {
        PartitionRange {
            partition,
            start,
            end,
        }
    }

    #[test]
    fn only_ranges_starting_where_every_partition_was_read_to_keep_the_assignment() {
        let read_to: HashMap<i32, i64> = [(0, 100), (1, 50)].into();
        assert!(continues(&read_to, &[range(0, 100, 200), range(1, 50, 50)]));
        // A replay of the epoch just read.
        assert!(!continues(&read_to, &[range(0, 0, 100), range(1, 0, 50)]));
        // A partition moved away, or one more to read (a rescale).
        assert!(!continues(&read_to, &[range(0, 100, 200)]));
        assert!(!continues(
            &read_to,
            &[range(0, 100, 200), range(1, 50, 60), range(2, 0, 10)]
        ));
        // Nothing read yet, or a failed read.
        assert!(!continues(&HashMap::new(), &[range(0, 0, 10)]));
    }
}
