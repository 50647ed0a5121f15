//! Reads exactly the planned offset ranges: partitions are assigned (no consumer group, no
//! committed offsets), so a replay of an epoch reads the same records.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use weir_common::checkpoint::PartitionRange;
use weir_common::decode::JsonDecoder;
use weir_common::job::KafkaSource;

use crate::input::consumer_queue::{Polled, Queue, Slots, Wake};
use crate::input::kafka_ahead::{self, Ahead, AheadSlot, ReadTo};
use crate::input::read_ahead::TakenAhead;
use crate::input::shed::Shedding;
use crate::input::{Chunk, ChunkFill, DecodedChunk, Record};

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
    #[error("waiting for records: {0}")]
    Wait(std::io::Error),
    #[error("the run was abandoned")]
    Abandoned,
    /// weir's fetch client's failures.
    #[error("Kafka: {0}")]
    Fetch(String),
}

/// Bytes of records librdkafka fetches ahead for an executor, split evenly over the partitions
/// it reads (the size of its one consumer queue by default). A partition's share may be
/// overshot by one fetch (`max.partition.fetch.bytes`). The job's `options` may set
/// `queued.max.messages.kbytes`, per partition, instead.
const PREFETCH_BYTES: usize = 64 << 20;

/// librdkafka's per-partition prefetch limit when each partition has its own queue.
const PREFETCH_KBYTES: &str = "queued.max.messages.kbytes";

/// Messages taken from a queue per call.
pub(super) const POLL_BATCH: usize = 4096;

/// How long a read waits for any of its queues before asking whether to go on.
pub(super) const WAIT: Duration = Duration::from_millis(200);

/// How long a read may see no record before the epoch fails.
pub(super) const STALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Shared with the thread reading ahead, which holds it while it runs.
    state: Arc<Mutex<Reading>>,
    /// The thread reading ahead since the last read, if one is.
    ahead: AheadSlot,
    /// The consumer's settings; the prefetch limit, unless the job's options set it, follows
    /// the assignment.
    config: ClientConfig,
    topic: String,
    topic_c: CString,
    /// Larger values are copied cut to this size (they go to the dead letter).
    max_record_bytes: usize,
    /// What lets rows read ahead give up their raw records, when the job allows it.
    shedding: Option<Arc<Shedding>>,
}

/// A consumer assigned once, and the queues a read takes its partitions from. A new
/// assignment gets a new consumer: assigning a consumer's partitions again before librdkafka
/// had started the last assignment's fetches was seen to send their records to the consumer's
/// own queue, not the partitions' (librdkafka 2.12); and the prefetch limit, per partition,
/// is set when a consumer is made.
pub(super) struct Session {
    /// Declared before `consumer`: queues are dropped first.
    pub(super) partitions: HashMap<i32, Queue>,
    /// The client's errors.
    errors: Queue,
    consumer: BaseConsumer<ReaderContext>,
}

/// The consumer and where the last read left the assignment.
pub(super) struct Reading {
    /// None before the first read and while it is being replaced.
    pub(super) session: Option<Session>,
    /// The end of the range each assigned partition was last read to; empty when the
    /// assignment must be made afresh.
    pub(super) read_to: HashMap<i32, i64>,
    /// How many offsets each partition's range of the last read held: reading ahead takes no
    /// more, as the next epoch of a steady run reads as many.
    pub(super) last_lengths: HashMap<i32, i64>,
    /// Records a read took past its end, in offset order: a partition's batch is cut at the
    /// offsets left to read, but offsets missing in the log (compaction, transaction markers)
    /// let it reach beyond. They start the partition's next range.
    held: HashMap<i32, VecDeque<Record>>,
    pub(super) slots: Slots,
    /// Declared after `session`: its queues write to it until dropped.
    pub(super) wake: Wake,
}

impl ReadTo for Reading {
    fn read_to(&mut self) -> &mut HashMap<i32, i64> {
        &mut self.read_to
    }
}

/// Whether `ranges` pick up exactly where the last read ended (`read_to`), on the same
/// partitions.
pub(super) fn continues(read_to: &HashMap<i32, i64>, ranges: &[PartitionRange]) -> bool {
    !read_to.is_empty()
        && read_to.len() == ranges.len()
        && ranges
            .iter()
            .all(|r| read_to.get(&r.partition) == Some(&r.start))
}

/// Kilobytes of prefetch each of `partitions` gets.
fn prefetch_kbytes(partitions: usize) -> usize {
    (PREFETCH_BYTES / 1024 / partitions.max(1)).max(1)
}

/// The chunk being filled. The values of the messages polled into it (librdkafka's) are
/// copied side by side into one buffer, each followed by a newline, and their keys into
/// another: a chunk costs two allocations instead of two per record, and the decoder reads
/// runs of values in place, as it does a file's lines. Records of weir's client come as
/// slices of their batch and are kept as they are.
pub(super) struct Gathering {
    size: usize,
    records: Vec<Record>,
    /// How full the chunk is: it is handed over when full.
    fill: ChunkFill,
    /// Bytes of the batch bodies the records gathered slice.
    held: usize,
    /// What the body records are sliced from now holds, and whether the chunk counts it.
    body: usize,
    body_counted: bool,
    /// Where each record's value lies in `values` and its key in `keys`: none for a record
    /// that holds its own.
    placed: Vec<Placed>,
    values: Vec<u8>,
    keys: Vec<u8>,
}

#[derive(Default)]
struct Placed {
    value: Option<Range<usize>>,
    key: Option<Range<usize>>,
}

impl Gathering {
    pub(super) fn new(size: usize) -> Self {
        Self {
            size,
            records: Vec::with_capacity(size),
            fill: ChunkFill::new(size),
            held: 0,
            body: 0,
            body_counted: false,
            placed: Vec::with_capacity(size),
            values: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Adds a polled message (its value kept up to `max_bytes`).
    pub(super) fn add_polled(
        &mut self,
        (partition, offset): (i32, i64),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        max_bytes: usize,
        on_chunk: &mut impl FnMut(Chunk),
    ) {
        let mut record = record(partition, offset, None, None, max_bytes);
        let value = value.map(|v| {
            let (v, cut_from) = kept(v, max_bytes);
            record.cut_from = cut_from;
            let start = self.values.len();
            self.values.extend_from_slice(v);
            let end = self.values.len();
            self.values.push(b'\n');
            start..end
        });
        let key = key.map(|k| {
            let start = self.keys.len();
            self.keys.extend_from_slice(k);
            start..self.keys.len()
        });
        let bytes = value.as_ref().map_or(0, Range::len) + key.as_ref().map_or(0, Range::len);
        self.records.push(record);
        self.placed.push(Placed { value, key });
        if self.fill.add(bytes) {
            self.hand_over(on_chunk);
        }
    }

    /// The records [`Gathering::add_shared`] adds next slice a batch body that keeps `held`
    /// bytes alive: counted once in each chunk they land in.
    pub(super) fn slicing(&mut self, held: usize) {
        self.body = held;
        self.body_counted = false;
    }

    /// Adds a fetched record whose key and value are slices of its batch (shared, not
    /// copied); a value over `max_bytes` is kept cut, as a polled one is.
    pub(super) fn add_shared(
        &mut self,
        (partition, offset): (i32, i64),
        key: Option<Bytes>,
        value: Option<Bytes>,
        max_bytes: usize,
        on_chunk: &mut impl FnMut(Chunk),
    ) {
        if value.as_ref().is_some_and(|v| v.len() > max_bytes) {
            let (key, value) = (key.as_deref(), value.as_deref());
            return self.add_polled((partition, offset), key, value, max_bytes, on_chunk);
        }
        let record = Record {
            partition,
            offset,
            key,
            value,
            cut_from: None,
        };
        if !self.body_counted {
            self.held += self.body;
            self.body_counted = true;
        }
        self.add(record, on_chunk);
    }

    /// Adds a record that holds its own key and value (one held back by an earlier read).
    pub(super) fn add(&mut self, record: Record, on_chunk: &mut impl FnMut(Chunk)) {
        let full = self.fill.add(record.bytes());
        self.records.push(record);
        self.placed.push(Placed::default());
        if full {
            self.hand_over(on_chunk);
        }
    }

    /// Hands over the records gathered so far, if any.
    pub(super) fn hand_over(&mut self, on_chunk: &mut impl FnMut(Chunk)) {
        if self.records.is_empty() {
            return;
        }
        // The next chunk's values and keys take about as much room as this one's.
        let taken = |buffer: &mut Vec<u8>| {
            let room = buffer.len();
            Bytes::from(std::mem::replace(buffer, Vec::with_capacity(room)))
        };
        let (values, keys) = (taken(&mut self.values), taken(&mut self.keys));
        let mut records = std::mem::replace(&mut self.records, Vec::with_capacity(self.size));
        for (record, placed) in records.iter_mut().zip(self.placed.drain(..)) {
            if let Some(range) = placed.value {
                record.value = Some(values.slice(range));
            }
            if let Some(range) = placed.key {
                record.key = Some(keys.slice(range));
            }
        }
        // The next chunk counts the body records are sliced from again.
        self.body_counted = false;
        self.fill.clear();
        on_chunk(Chunk {
            records,
            buffers: vec![values],
            held: std::mem::take(&mut self.held),
            end: None,
        });
    }
}

/// A fetched message as a record that holds its own copy of the value; a value larger than
/// `max_bytes` keeps its first `max_bytes`.
fn record(
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    max_bytes: usize,
) -> Record {
    let kept = value.map(|v| kept(v, max_bytes));
    Record {
        partition,
        offset,
        key: key.map(Bytes::copy_from_slice),
        value: kept.map(|(v, _)| Bytes::copy_from_slice(v)),
        cut_from: kept.and_then(|(_, cut_from)| cut_from),
    }
}

/// What a record keeps of `value`: its first `max_bytes`, and its whole length when it was
/// longer (a record cut so goes to the dead letter).
fn kept(value: &[u8], max_bytes: usize) -> (&[u8], Option<u64>) {
    let cut_from = (value.len() > max_bytes).then_some(value.len() as u64);
    (&value[..value.len().min(max_bytes)], cut_from)
}

/// What a read hands on: records it polled, or a chunk the thread reading ahead decoded.
pub enum Gathered {
    Records(Chunk),
    Decoded(DecodedChunk),
}

/// Where a read keeps the records it took past its ranges (for the ranges they start), and
/// the size a kept value is cut to.
pub(super) struct Past<'a> {
    pub(super) held: &'a mut HashMap<i32, VecDeque<Record>>,
    pub(super) max_bytes: usize,
}

/// What a read took of what was read ahead.
#[derive(Debug, Default)]
pub(super) struct TakenKafka {
    pub(super) taken: TakenAhead,
    /// A chunk whose rows gave up their raw records lay partly past the ranges (or was judged
    /// against a later plan time than the read's): it and all that came after it were dropped,
    /// so the records from where each partition's reading stands must be fetched afresh.
    pub(super) dropped: bool,
}

/// Takes what was read ahead (`ahead`, in order) into the ranges `pending` still reads, as
/// [`taken_ahead`] says: decoded chunks are handed on (`on_chunk`), records to be decoded
/// again go into `gathering`, and those past the ranges into `past`; the ranges it settles
/// leave `pending`. A read planned at `planned_at` takes no shed chunk judged against a later
/// time. Answers how much was taken decoded, and whether the rest was dropped.
pub(super) fn take_ahead(
    ahead: impl IntoIterator<Item = Ahead>,
    pending: &mut Vec<Pending>,
    planned_at: i64,
    mut past: Past<'_>,
    gathering: &mut Gathering,
    on_chunk: &mut impl FnMut(Gathered),
) -> TakenKafka {
    let mut taken = TakenKafka::default();
    // Looked up for every record read ahead.
    let index: HashMap<i32, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (p.partition, i))
        .collect();
    for read in ahead {
        let took = taken_ahead(read, pending, planned_at, &index, &mut past);
        match took {
            Took::Whole(chunk, worked) => {
                taken.taken.read += worked;
                taken.taken.records += chunk.chunk.records.len() as u64;
                on_chunk(Gathered::Decoded(chunk));
            }
            Took::Dropped => {
                taken.dropped = true;
                break;
            }
            Took::Records(chunk) => {
                for record in chunk.records {
                    gathering.add(record, &mut |c| on_chunk(Gathered::Records(c)));
                }
            }
        }
    }
    pending.retain(|p| !p.done());
    taken
}

/// What a read takes of one thing read ahead.
enum Took {
    /// A decoded chunk, whole, with the CPU time that read it.
    Whole(DecodedChunk, Duration),
    /// Records to decode again.
    Records(Chunk),
    /// A shed chunk it cannot take.
    Dropped,
}

/// Takes `read` (what was read ahead) into the ranges `pending` still reads (`index`: where
/// each partition's is): a decoded chunk whose records all lie in them is taken as it is; the
/// records of any other are taken one by one, as polled ones are: those in a range are
/// answered, to be decoded again, and those past its end go to `past`. A chunk whose rows
/// gave up their raw records cannot be decoded again: unless it is taken whole, it is dropped.
fn taken_ahead(
    read: Ahead,
    pending: &mut [Pending],
    planned_at: i64,
    index: &HashMap<i32, usize>,
    past: &mut Past<'_>,
) -> Took {
    let range_of = |r: &Record| index.get(&r.partition).copied();
    let records = match read {
        Ahead::Decoded(chunk, worked) => {
            let within = chunk.chunk.records.iter().all(|r| {
                range_of(r)
                    .is_some_and(|i| pending[i].next <= r.offset && r.offset < pending[i].end)
            });
            let judged = chunk.judged_at.is_none_or(|at| at <= planned_at);
            if within && judged {
                for r in &chunk.chunk.records {
                    if let Some(i) = range_of(r) {
                        pending[i].take(r.offset);
                    }
                }
                return Took::Whole(chunk, worked);
            }
            if chunk.judged_at.is_some() {
                return Took::Dropped;
            }
            chunk.chunk.records
        }
        Ahead::Records(chunk) => chunk.records,
    };
    let mut within = Chunk::with_capacity(records.len());
    for record in records {
        let in_range = range_of(&record)
            .map(|i| &mut pending[i])
            .filter(|p| !p.done())
            .is_some_and(|p| p.take(record.offset));
        if in_range {
            within.records.push(record);
        } else {
            // Past the range, or its partition is done: it starts the next range.
            past.held
                .entry(record.partition)
                .or_default()
                .push_back(record.detached(past.max_bytes));
        }
    }
    Took::Records(within)
}

/// Where each of `ranges` stands in a read that still takes `pending`: a pending partition
/// at the next offset it takes, any other at its range's end.
pub(super) fn standing(ranges: &[PartitionRange], pending: &[Pending]) -> Vec<(i32, i64)> {
    ranges
        .iter()
        .map(|r| {
            let at = pending.iter().find(|p| p.partition == r.partition);
            (r.partition, at.map_or(r.end.max(r.start), |p| p.next))
        })
        .collect()
}

/// A partition a read still takes records from.
#[derive(Debug, PartialEq)]
pub(super) struct Pending {
    pub(super) partition: i32,
    /// The offset the next record has at least.
    pub(super) next: i64,
    pub(super) end: i64,
}

impl Pending {
    /// The most records to take in one batch: offsets only grow, so no more than are left come
    /// before the end, unless offsets are missing in the log (then the batch reaches beyond).
    fn batch(&self) -> usize {
        usize::try_from(self.end - self.next)
            .unwrap_or(0)
            .clamp(1, POLL_BATCH)
    }

    /// Takes a record at `offset` into account: whether it is this range's (else it starts the
    /// next range, and this one is done).
    pub(super) fn take(&mut self, offset: i64) -> bool {
        if offset < self.end {
            self.next = offset + 1;
            true
        } else {
            self.next = self.end;
            false
        }
    }

    pub(super) fn done(&self) -> bool {
        self.next >= self.end
    }

    /// Passes offsets below `offset` that held no record of the range (up to its end).
    pub(super) fn skip_to(&mut self, offset: i64) {
        self.next = self.next.max(offset.min(self.end));
    }
}

/// The partitions of `ranges` a read must still poll, after handing over (`push`) the records
/// the last read took beyond its ranges (`held`, in offset order per partition).
pub(super) fn after_held(
    ranges: &[PartitionRange],
    held: &mut HashMap<i32, VecDeque<Record>>,
    mut push: impl FnMut(Record),
) -> Vec<Pending> {
    let mut pending = Vec::with_capacity(ranges.len());
    for r in ranges.iter().filter(|r| r.end > r.start) {
        let mut p = Pending {
            partition: r.partition,
            next: r.start,
            end: r.end,
        };
        if let Some(held) = held.get_mut(&r.partition) {
            while held.front().is_some_and(|h| h.offset < r.end) {
                if let Some(record) = held.pop_front() {
                    p.take(record.offset);
                    push(record);
                }
            }
            if !held.is_empty() {
                // A record at or past the end came: everything before it is in hand.
                continue;
            }
        }
        if !p.done() {
            pending.push(p);
        }
    }
    pending
}

impl Session {
    /// A consumer of `config`, with the ranges' partitions assigned at their starts, each
    /// read from its own queue.
    fn assigned(
        config: &ClientConfig,
        topic: (&str, &CStr),
        ranges: &[PartitionRange],
        wake: &Wake,
    ) -> Result<Self, KafkaError> {
        let mut config = config.clone();
        if config.get(PREFETCH_KBYTES).is_none() {
            config.set(PREFETCH_KBYTES, prefetch_kbytes(ranges.len()).to_string());
        }
        let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
        let errors = Queue::consumer(&consumer, wake).ok_or(no_queue("the consumer"))?;
        let mut partitions = HashMap::with_capacity(ranges.len());
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            // Taken before the assignment, which keeps them as they are.
            let queue = Queue::partition(&consumer, topic.1, r.partition, wake)
                .ok_or_else(|| no_queue(&format!("partition {} of {}", r.partition, topic.0)))?;
            partitions.insert(r.partition, queue);
            tpl.add_partition_offset(topic.0, r.partition, Offset::Offset(r.start))?;
        }
        if !ranges.is_empty() {
            consumer.assign(&tpl)?;
        }
        Ok(Self {
            partitions,
            errors,
            consumer,
        })
    }

    fn position(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let positions = self.consumer.position()?;
        Ok(positions
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw())
            .unwrap_or(-1))
    }
}

fn no_queue(of: &str) -> KafkaError {
    KafkaError::ClientCreation(format!("librdkafka gave no queue for {of}"))
}

impl KafkaReader {
    pub fn new(
        source: &KafkaSource,
        job_id: &str,
        max_record_bytes: usize,
        shedding: Option<Shedding>,
    ) -> anyhow::Result<Self> {
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
        let topic_c = CString::new(source.topic.as_str())
            .map_err(|_| anyhow::anyhow!("the topic name {:?} holds a NUL byte", source.topic))?;
        let wake = Wake::new().map_err(|e| anyhow::anyhow!("a socket to wait on: {e}"))?;
        // Made now so that bad settings fail here, and closed on a thread of its own: a
        // consumer takes about 100 ms to close, which the first epoch waited for. The first
        // read makes the consumer for its partitions.
        let probe: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || drop(probe))
            .map_err(|e| anyhow::anyhow!("a thread to close the Kafka consumer: {e}"))?;
        Ok(Self {
            state: Arc::new(Mutex::new(Reading {
                session: None,
                read_to: HashMap::new(),
                last_lengths: HashMap::new(),
                held: HashMap::new(),
                slots: Slots::new(POLL_BATCH),
                wake,
            })),
            ahead: AheadSlot::default(),
            config,
            topic: source.topic.clone(),
            topic_c,
            max_record_bytes,
            shedding: shedding.map(Arc::new),
        })
    }

    /// Reads `[start, end)` of every range, handing records over in chunks of up to `chunk`,
    /// while `keep_going` answers true (it is asked at least every 200 ms).
    ///
    /// When the ranges continue where the last read ended, on the same partitions (the next
    /// epoch of a steady run), the assignment stays: what librdkafka fetched meanwhile is read
    /// from its queues instead of being dropped and fetched again. Anything else (the first
    /// read, a replay, a rescale) assigns the partitions at the ranges' starts, to a new
    /// consumer.
    ///
    /// What was read ahead since the last read (see [`KafkaReader::read_ahead`]) comes first,
    /// decoded; answers how much of it was taken.
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        planned_at: i64,
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(Gathered),
    ) -> Result<TakenAhead, ReadError> {
        let (mut guard, ahead) = self.ahead.take(&self.state);
        let state = &mut *guard;
        if !continues(&state.read_to, ranges) {
            state.read_to.clear();
            state.held.clear();
            // The old consumer goes before the new one comes.
            state.session = None;
            state.session = Some(Session::assigned(
                &self.config,
                (&self.topic, &self.topic_c),
                ranges,
                &state.wake,
            )?);
        }
        let mut gathering = Gathering::new(chunk);
        let mut records = |c| on_chunk(Gathered::Records(c));
        let mut pending = after_held(ranges, &mut state.held, |record| {
            gathering.add(record, &mut records)
        });
        let taken = match ahead {
            Some(ahead) if !state.read_to.is_empty() => {
                let past = Past {
                    held: &mut state.held,
                    max_bytes: self.max_record_bytes,
                };
                let (gathering, on_chunk) = (&mut gathering, &mut on_chunk);
                let took = take_ahead(ahead, &mut pending, planned_at, past, gathering, on_chunk);
                if took.dropped {
                    // The queues hold what lies past rows that were dropped: a new consumer
                    // reads on from where each partition's reading stands.
                    tracing::debug!(
                        "rows read ahead of {} lay past the plan: assigning afresh",
                        self.topic
                    );
                    state.held.clear();
                    let from: Vec<PartitionRange> = ranges
                        .iter()
                        .zip(standing(ranges, &pending))
                        .map(|(r, (_, start))| PartitionRange { start, ..*r })
                        .collect();
                    state.session = None;
                    state.session = Some(Session::assigned(
                        &self.config,
                        (&self.topic, &self.topic_c),
                        &from,
                        &state.wake,
                    )?);
                }
                took.taken
            }
            _ => TakenAhead::default(),
        };
        // A failed read leaves the queues somewhere unknown: the next one assigns afresh.
        state.read_to.clear();
        let mut records = |c| on_chunk(Gathered::Records(c));
        self.poll_until_done(state, pending, &mut gathering, &keep_going, &mut records)?;
        state.read_to = ranges.iter().map(|r| (r.partition, r.end)).collect();
        state.last_lengths = ranges
            .iter()
            .map(|r| (r.partition, r.end - r.start))
            .collect();
        Ok(taken)
    }

    /// Starts reading ahead what librdkafka fetches beyond the last read's ranges, decoding it
    /// with `decoder` in chunks of `chunk`: the next read takes it. Nothing is started before a
    /// first read or after one that failed.
    pub fn read_ahead(
        &self,
        decoder: Arc<JsonDecoder>,
        chunk: usize,
        planned_at: i64,
    ) -> std::io::Result<()> {
        let (state, max_bytes) = (self.state.clone(), self.max_record_bytes);
        let shedding = self.shedding.clone().map(|s| (s, planned_at));
        self.ahead
            .restart(&self.state, decoder, shedding, move |out| {
                kafka_ahead::from_librdkafka(&state, chunk, max_bytes, out)
            })
    }

    /// Chunks the thread reading ahead decoded so far.
    #[cfg(test)]
    pub(super) fn decoded_ahead(&self) -> usize {
        self.ahead.decoded()
    }

    fn poll_until_done(
        &self,
        state: &mut Reading,
        mut pending: Vec<Pending>,
        gathering: &mut Gathering,
        keep_going: &impl Fn() -> bool,
        on_chunk: &mut impl FnMut(Chunk),
    ) -> Result<(), ReadError> {
        let Reading {
            session,
            held,
            slots,
            wake,
            ..
        } = state;
        let session = session.as_mut().ok_or_else(|| no_queue("the consumer"))?;
        let mut last_progress = Instant::now();
        let mut last_asked = Instant::now();
        while !pending.is_empty() {
            if last_asked.elapsed() >= WAIT {
                if !keep_going() {
                    return Err(ReadError::Abandoned);
                }
                last_asked = Instant::now();
            }
            // What the client reports as errors ends the read.
            session.errors.poll_batch(slots, POLL_BATCH, 0, |_| {})?;
            // Whether anything came (then the queues are polled again before waiting), and
            // whether a record of a range did.
            let (mut polled_any, mut progressed) = (false, false);
            let mut i = 0;
            while i < pending.len() {
                let p = &mut pending[i];
                let Some(queue) = session.partitions.get_mut(&p.partition) else {
                    return Err(no_queue(&format!("partition {}", p.partition)).into());
                };
                let mut at_eof = false;
                let max_bytes = self.max_record_bytes;
                queue.poll_batch(slots, p.batch(), 0, |polled| {
                    polled_any = true;
                    match polled {
                        Polled::Message {
                            partition,
                            offset,
                            key,
                            payload,
                        } => {
                            if p.take(offset) {
                                progressed = true;
                                let at = (partition, offset);
                                gathering.add_polled(at, key, payload, max_bytes, on_chunk);
                            } else {
                                let record = record(partition, offset, key, payload, max_bytes);
                                held.entry(partition).or_default().push_back(record);
                            }
                        }
                        Polled::PartitionEof => at_eof = true,
                    }
                })?;
                // Gaps (compaction, transaction markers) end a partition early: the broker
                // has nothing between the last record and the planned end.
                if !p.done() && at_eof && session.position(&self.topic, p.partition)? >= p.end {
                    p.next = p.end;
                }
                if p.done() {
                    progressed = true;
                    pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if progressed {
                last_progress = Instant::now();
            }
            if polled_any {
                continue;
            }
            if last_progress.elapsed() > STALL_TIMEOUT {
                let mut partitions: Vec<i32> = pending.iter().map(|p| p.partition).collect();
                partitions.sort_unstable();
                return Err(ReadError::Stalled {
                    topic: self.topic.clone(),
                    partitions,
                    waited: STALL_TIMEOUT,
                });
            }
            wake.wait(WAIT).map_err(ReadError::Wait)?;
        }
        gathering.hand_over(on_chunk);
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use weir_common::job::kafka_client::KafkaClient;
    use weir_common::job::{SecretMap, StartingOffsets};

    use super::*;
    use crate::input::CHUNK_BYTES;

    pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

    /// Produces `count` records into each of `partitions`: `"{partition}-{offset}"`.
    pub(crate) fn topic(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        topic: &str,
        partitions: i32,
        count: i64,
    ) {
        mock.create_topic(topic, partitions, 1).expect("topic");
        produce(mock, topic, partitions, 0..count);
    }

    /// Produces the records at `offsets` into each of `partitions`: `"{partition}-{offset}"`.
    pub(crate) fn produce(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        topic: &str,
        partitions: i32,
        offsets: Range<i64>,
    ) {
        produce_values(mock, topic, partitions, offsets, |p, o| format!("{p}-{o}"));
    }

    /// Produces the records at `offsets` into each of `partitions`, `value(partition, offset)`
    /// the value of each.
    pub(crate) fn produce_values(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        topic: &str,
        partitions: i32,
        offsets: Range<i64>,
        value: impl Fn(i32, i64) -> String,
    ) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .expect("producer");
        for p in 0..partitions {
            for o in offsets.clone() {
                let value = value(p, o);
                let key = format!("key {p}-{o}");
                producer
                    .send(BaseRecord::to(topic).partition(p).key(&key).payload(&value))
                    .expect("send");
            }
        }
        producer.flush(TIMEOUT).expect("flush");
    }

    fn reader(bootstrap: &str, topic: &str) -> KafkaReader {
        let source = KafkaSource {
            bootstrap_servers: bootstrap.into(),
            topic: topic.into(),
            starting_offsets: StartingOffsets::Earliest,
            fail_on_data_loss: true,
            max_offsets_per_trigger: None,
            options: SecretMap::default(),
            client: KafkaClient::Librdkafka,
        };
        KafkaReader::new(&source, "reader-test", 1 << 20, None).expect("reader")
    }

    /// (partition, offset, value) of every record one read hands over, in the order of each
    /// partition.
    fn read(reader: &KafkaReader, ranges: &[PartitionRange]) -> Vec<(i32, i64, String)> {
        read_taking(reader, ranges).0
    }

    /// (partition, offset, value) of every record of what a read hands on.
    pub(crate) fn seen(read: Gathered) -> Vec<(i32, i64, String)> {
        let records = match read {
            Gathered::Records(chunk) => chunk.records,
            Gathered::Decoded(decoded) => decoded.chunk.records,
        };
        records
            .into_iter()
            .map(|r| {
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or(&[]));
                (r.partition, r.offset, value.into_owned())
            })
            .collect()
    }

    /// What a reader of the 55 records of each of `partitions` must hand over (`read`
    /// answers one read's records): epochs one after the other, then a replay and a read of
    /// one partition, each exactly its ranges.
    pub(crate) fn epochs_then_a_replay(
        partitions: i32,
        read: impl Fn(&[PartitionRange]) -> Vec<(i32, i64, String)>,
    ) {
        let cuts = [0, 16, 33, 55];
        for w in cuts.windows(2) {
            assert_eq!(
                read(&ranges(partitions, w[0], w[1])),
                all(partitions, w[0], w[1]),
                "the read of [{}, {})",
                w[0],
                w[1]
            );
        }
        assert_eq!(read(&ranges(partitions, 16, 33)), all(partitions, 16, 33));
        assert_eq!(read(&[range(1, 20, 45)]), expected(1, 20, 45));
    }

    pub(crate) fn expected(p: i32, start: i64, end: i64) -> Vec<(i32, i64, String)> {
        (start..end).map(|o| (p, o, format!("{p}-{o}"))).collect()
    }

    pub(crate) fn ranges(partitions: i32, start: i64, end: i64) -> Vec<PartitionRange> {
        (0..partitions).map(|p| range(p, start, end)).collect()
    }

    pub(crate) fn all(partitions: i32, start: i64, end: i64) -> Vec<(i32, i64, String)> {
        (0..partitions)
            .flat_map(|p| expected(p, start, end))
            .collect()
    }

    #[test]
    fn epochs_read_exactly_their_ranges_whatever_came_before() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let partitions = 3;
        topic(&mock, "events", partitions, 55);
        let reader = reader(&mock.bootstrap_servers(), "events");
        // A first epoch with nothing to read, then one planned from elsewhere: assigned again
        // at once, before librdkafka started the first assignment's fetches.
        assert_eq!(read(&reader, &ranges(partitions, 5, 5)), vec![]);
        // Epochs one after the other keep the assignment, and what was fetched meanwhile; a
        // replay, or a read of fewer partitions, gets a new consumer sized for them.
        epochs_then_a_replay(partitions, |ranges| read(&reader, ranges));
        // Empty ranges read nothing, and the next read still starts where it is told.
        assert_eq!(read(&reader, &ranges(partitions, 55, 55)), vec![]);
        assert_eq!(
            read(&reader, &ranges(partitions, 0, 11)),
            all(partitions, 0, 11)
        );
    }

    /// A chunk counts each batch body its records slice once, and again in the next chunk
    /// when the body's records run on into it; a record cut to size is a copy of its own.
    #[test]
    fn a_chunk_counts_the_batch_bodies_its_records_slice() {
        let body = Bytes::from(vec![b'x'; 1000]);
        let mut chunks = Vec::new();
        {
            let mut on_chunk = |c: Chunk| chunks.push(c);
            let mut gathering = Gathering::new(3);
            gathering.slicing(4000);
            for offset in 0..4 {
                let value = Some(body.slice(..10));
                gathering.add_shared((0, offset), None, value, 100, &mut on_chunk);
            }
            gathering.slicing(8000);
            let value = Some(body.slice(10..20));
            gathering.add_shared((0, 4), None, value, 100, &mut on_chunk);
            gathering.slicing(16000);
            gathering.add_shared((0, 5), None, Some(body.clone()), 100, &mut on_chunk);
            gathering.hand_over(&mut on_chunk);
        }
        let held: Vec<usize> = chunks.iter().map(|c| c.held).collect();
        assert_eq!(held, [4000, 4000 + 8000]);
        assert_eq!(
            chunks[1].bytes(),
            4000 + 8000 + 100 + 1,
            "the cut value and its newline"
        );
    }

    /// Large records end a chunk at `CHUNK_BYTES` of keys and values, short of its count,
    /// polled (copied) or sliced from their batch alike; every record is handed on once, in
    /// order.
    #[test]
    fn large_records_end_a_chunk_at_its_bytes_before_its_count() {
        let megabyte = Bytes::from(vec![b'x'; 1 << 20]);
        let per_chunk = CHUNK_BYTES / megabyte.len();
        assert_eq!(per_chunk, 4);
        let expected: Vec<Vec<i64>> = (0..12)
            .collect::<Vec<i64>>()
            .chunks(per_chunk)
            .map(<[i64]>::to_vec)
            .collect();
        let small = Bytes::from_static(b"{}");
        // Large values, then large keys: librdkafka's reader copies keys into a buffer of
        // their own, which the bound must cover as well.
        for (key, value) in [(None, megabyte.clone()), (Some(megabyte.clone()), small)] {
            assert_eq!(
                gathered_offsets(key, value),
                expected,
                "chunks of {per_chunk}"
            );
        }
    }

    /// The offsets of each chunk a gathering of 4 096 hands over for 12 records of `key` and
    /// `value`: 6 polled, then 6 sliced from a batch.
    fn gathered_offsets(key: Option<Bytes>, value: Bytes) -> Vec<Vec<i64>> {
        let mut chunks: Vec<Vec<i64>> = Vec::new();
        let mut on_chunk = |c: Chunk| chunks.push(c.records.iter().map(|r| r.offset).collect());
        let mut gathering = Gathering::new(4096);
        for offset in 0..6 {
            let (k, v) = (key.as_deref(), Some(&value[..]));
            gathering.add_polled((0, offset), k, v, 2 << 20, &mut on_chunk);
        }
        gathering.slicing(value.len());
        for offset in 6..12 {
            let (k, v) = (key.clone(), Some(value.clone()));
            gathering.add_shared((0, offset), k, v, 2 << 20, &mut on_chunk);
        }
        gathering.hand_over(&mut on_chunk);
        chunks
    }

    /// A chunk's values are slices of one buffer, side by side in order, each followed by a
    /// newline: one copy per chunk, which the decoder reads runs of in place.
    #[test]
    fn a_chunks_values_lie_side_by_side_in_its_buffer_and_its_keys_in_another() {
        let mock = MockCluster::new(1).expect("mock cluster");
        topic(&mock, "events", 2, 20);
        let reader = reader(&mock.bootstrap_servers(), "events");
        let mut chunks = Vec::new();
        reader
            .read(
                &ranges(2, 0, 20),
                0,
                7,
                || true,
                |read| match read {
                    Gathered::Records(c) => chunks.push(c),
                    Gathered::Decoded(_) => panic!("nothing was read ahead"),
                },
            )
            .expect("read");
        assert_eq!(chunks.iter().map(|c| c.records.len()).sum::<usize>(), 40);
        for chunk in &chunks {
            let [buffer] = &chunk.buffers[..] else {
                panic!("{} buffers", chunk.buffers.len());
            };
            let mut laid = Vec::new();
            let mut key_after: Option<*const u8> = None;
            for r in &chunk.records {
                let value = r.value.as_deref().expect("a value");
                let within = buffer.as_ptr_range();
                assert!(within.contains(&value.as_ptr()), "{:?}", r.offset);
                laid.extend_from_slice(value);
                laid.push(b'\n');
                let key = r.key.as_deref().expect("a key");
                assert_eq!(
                    key,
                    format!("key {}", String::from_utf8_lossy(value)).as_bytes()
                );
                if let Some(after) = key_after {
                    assert_eq!(key.as_ptr(), after, "keys side by side");
                }
                key_after = Some(key.as_ptr_range().end);
            }
            assert_eq!(&buffer[..], &laid[..]);
        }
    }

    fn at(partition: i32, offset: i64) -> Record {
        record(partition, offset, None, Some(b"{}"), 1 << 10)
    }

    /// Offsets missing in the log (compaction, transaction markers) let a batch reach past the
    /// range's end: the record there starts the next range.
    #[test]
    fn a_record_past_a_gap_and_the_end_waits_for_the_next_range() {
        // [16, 33) of a log with no offsets 21 and 32: 16..=20, 22..=31, then 33.
        let mut p = Pending {
            partition: 0,
            next: 16,
            end: 33,
        };
        assert_eq!(p.batch(), 17);
        for offset in (16..=20).chain(22..=31) {
            assert!(p.take(offset), "{offset} is in the range");
        }
        assert!(!p.done());
        assert_eq!(p.batch(), 1, "one offset (32) is left");
        assert!(!p.take(33), "33 is past the end");
        assert!(p.done());

        let mut held: HashMap<i32, VecDeque<Record>> = [(0, VecDeque::from([at(0, 33)]))].into();
        let mut got = Vec::new();
        let pending = after_held(&[range(0, 33, 55)], &mut held, |r| got.push(r.offset));
        assert_eq!(got, vec![33]);
        assert_eq!(
            pending,
            vec![Pending {
                partition: 0,
                next: 34,
                end: 55
            }]
        );
    }

    #[test]
    fn records_held_past_the_end_settle_the_ranges_they_pass() {
        let mut held: HashMap<i32, VecDeque<Record>> = [
            (0, VecDeque::from([at(0, 40), at(0, 60)])),
            (1, VecDeque::from([at(1, 70)])),
        ]
        .into();
        let mut got = Vec::new();
        let pending = after_held(
            &[range(0, 33, 45), range(1, 50, 60), range(2, 5, 9)],
            &mut held,
            |r| got.push((r.partition, r.offset)),
        );
        // Partition 0: 40 is handed over, and 60 shows nothing else lies before 45; partition
        // 1: 70 shows [50, 60) holds nothing; partition 2 has no record in hand.
        assert_eq!(got, vec![(0, 40)]);
        assert_eq!(
            pending,
            vec![Pending {
                partition: 2,
                next: 5,
                end: 9
            }]
        );
        assert_eq!(held[&0].len(), 1, "60 stays for the range that holds it");
    }

    #[test]
    fn a_planned_offset_the_broker_no_longer_holds_fails_the_read() {
        let mock = MockCluster::new(1).expect("mock cluster");
        topic(&mock, "events", 1, 5);
        let reader = reader(&mock.bootstrap_servers(), "events");
        let err = reader
            .read(&[range(0, 100, 110)], 0, 7, || true, |_| {})
            .expect_err("offsets past the log's end");
        assert!(
            matches!(err, ReadError::Kafka(_)),
            "an error from the broker, not a stall: {err}"
        );
    }

    pub(crate) fn range(partition: i32, start: i64, end: i64) -> PartitionRange {
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

    /// A decoder of `{"n": ...}` events: the test topic's values are not, so each is decoded
    /// to a dead letter, which the read hands on with its record all the same.
    pub(crate) fn decoder() -> Arc<JsonDecoder> {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        Arc::new(JsonDecoder::new(schema, 1 << 10))
    }

    /// What one read hands on, sorted by partition and offset, and how many of its records
    /// were read ahead.
    fn read_taking(
        reader: &KafkaReader,
        ranges: &[PartitionRange],
    ) -> (Vec<(i32, i64, String)>, u64) {
        let mut got = Vec::new();
        let taken = reader
            .read(ranges, 0, 7, || true, |read| got.extend(seen(read)))
            .expect("read");
        got.sort();
        (got, taken.records)
    }

    /// A job whose rows may give up their raw records once read ahead, and its decoder.
    pub(crate) fn shedding_job() -> (Shedding, Arc<JsonDecoder>) {
        let job = crate::input::shed::tests::job("");
        let decoder = Arc::new(JsonDecoder::new(job.input_schema.clone(), 1 << 20));
        (Shedding::for_job(&job).expect("shedding"), decoder)
    }

    /// The event at `offset` of `partition` in [`epochs_read_shed_rows_ahead`]'s topic: every
    /// tenth at 3 is no JSON, every tenth at 7 is two hours ahead of its plans (a later rule
    /// may refuse it), the rest are the user `"{partition}-{offset}"`.
    fn json_event(p: i32, o: i64) -> String {
        match o % 10 {
            3 => "not json".to_string(),
            7 => format!(r#"{{"user_id":"{p}-{o}","timestamp":"2025-11-24T18:00:00Z"}}"#),
            _ => format!(r#"{{"user_id":"{p}-{o}","timestamp":"2025-11-24T15:59:00Z"}}"#),
        }
    }

    /// Each row a read hands on, by partition and offset: its decoded user, or the raw value
    /// of a record that did not decode; and the offsets of the rows without their record.
    type Rows = (Vec<(i32, i64, String)>, Vec<(i32, i64)>);

    fn rows(read: Gathered, decoder: &JsonDecoder, into: &mut Rows) {
        use arrow::array::AsArray;
        let chunk = match read {
            Gathered::Records(records) => DecodedChunk::decode(records, decoder),
            Gathered::Decoded(decoded) => decoded,
        };
        let records = &chunk.chunk.records;
        let mut good = chunk.decoded.good.iter();
        for batch in &chunk.decoded.batches {
            let users = batch
                .column_by_name("user_id")
                .expect("users")
                .as_string::<i32>();
            for row in 0..batch.num_rows() {
                let r = &records[*good.next().expect("a record for every row")];
                into.0
                    .push((r.partition, r.offset, users.value(row).to_string()));
            }
        }
        for (i, _) in &chunk.decoded.bad {
            let r = &records[*i];
            let raw = String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"(shed)"));
            into.0.push((r.partition, r.offset, raw.into_owned()));
        }
        into.1.extend(
            records
                .iter()
                .filter(|r| r.value.is_none())
                .map(|r| (r.partition, r.offset)),
        );
    }

    /// What `reader`, reading topic `json` of `mock` with its rows read ahead giving up their
    /// raw records (made with [`shedding_job`]), must hand over: each read exactly its ranges,
    /// and only rows no later rule can refuse without their records; when a plan ends before
    /// what was read ahead, or was made before the time its rows were judged against, what was
    /// read ahead is dropped and read again.
    pub(crate) fn epochs_read_shed_rows_ahead(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        reader: crate::input::KafkaInput,
        decoder: Arc<JsonDecoder>,
    ) {
        let partitions = 2;
        mock.create_topic("json", partitions, 1).expect("topic");
        produce_values(mock, "json", partitions, 0..60, json_event);
        let expected = |start: i64, end: i64| {
            let mut rows: Vec<(i32, i64, String)> = (0..partitions)
                .flat_map(|p| (start..end).map(move |o| (p, o)))
                .map(|(p, o)| match o % 10 {
                    3 => (p, o, json_event(p, o)),
                    _ => (p, o, format!("{p}-{o}")),
                })
                .collect();
            rows.sort();
            rows
        };
        // 2025-11-24T16:00:00Z
        let planned = 1_764_000_000_000_000;
        let read = |start: i64, end: i64, planned_at: i64| {
            let mut got = Rows::default();
            let taken = reader
                .read(
                    &ranges(partitions, start, end),
                    planned_at,
                    7,
                    || true,
                    |r| rows(r, &decoder, &mut got),
                )
                .expect("read");
            got.0.sort();
            assert_eq!(got.0, expected(start, end), "the read of [{start}, {end})");
            (taken.records, got.1)
        };
        let read_ahead = |planned_at: i64, chunks: usize| {
            reader
                .read_ahead(decoder.clone(), 7, planned_at)
                .expect("read ahead");
            let deadline = Instant::now() + TIMEOUT;
            while reader.decoded_ahead() < chunks {
                assert!(Instant::now() < deadline, "reading ahead did not get on");
                std::thread::yield_now();
            }
        };

        assert_eq!(read(0, 10, planned), (0, vec![]));
        // The next 10 of each partition, read ahead in 3 chunks and taken whole: all but the
        // rows that did not decode or lie too far ahead gave up their records.
        read_ahead(planned, 3);
        let (taken, mut shed) = read(10, 20, planned + 1);
        assert_eq!(taken, 20);
        shed.sort();
        let kept = |o: i64| o % 10 == 3 || o % 10 == 7;
        let expected_shed: Vec<(i32, i64)> = (0..partitions)
            .flat_map(|p| (10..20).filter(|&o| !kept(o)).map(move |o| (p, o)))
            .collect();
        assert_eq!(shed, expected_shed);

        // A shorter range than what was read ahead: read again from where it stands, and the
        // reads after it read on.
        read_ahead(planned + 1, 3);
        assert!(read(20, 25, planned + 2).0 < 10);
        read_ahead(planned + 2, 1);
        read(25, 40, planned + 3);
        // Rows judged against a later plan time than the read's: none taken.
        read_ahead(planned + 10, 3);
        assert_eq!(read(40, 55, planned + 4), (0, vec![]));
        read(55, 60, planned + 5);
    }

    #[test]
    fn rows_read_ahead_without_their_records_still_read_exactly_their_ranges() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let (shedding, decoder) = shedding_job();
        let reader = KafkaReader {
            shedding: Some(Arc::new(shedding)),
            ..reader(&mock.bootstrap_servers(), "json")
        };
        epochs_read_shed_rows_ahead(&mock, crate::input::KafkaInput::Librdkafka(reader), decoder);
    }

    #[test]
    fn the_next_epoch_takes_what_was_read_ahead_exactly_within_its_ranges() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let reader = reader(&mock.bootstrap_servers(), "events");
        epochs_read_ahead(
            &mock,
            || reader.read_ahead(decoder(), 7, 0).expect("read ahead"),
            || reader.ahead.decoded(),
            |ranges| read_taking(&reader, ranges),
        );
    }

    /// What a reader of topic `events` must hand over when the thread reading ahead
    /// (`read_ahead` starts it, `decoded_ahead` answers how many chunks it decoded) runs
    /// between reads (`read_taking` answers one read's records and how many were taken
    /// decoded): each read exactly its ranges, whatever was read ahead.
    pub(crate) fn epochs_read_ahead(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        read_ahead: impl Fn(),
        decoded_ahead: impl Fn() -> usize,
        read_taking: impl Fn(&[PartitionRange]) -> (Vec<(i32, i64, String)>, u64),
    ) {
        let partitions = 3;
        topic(mock, "events", partitions, 60);
        let read = |ranges: &[PartitionRange]| read_taking(ranges).0;
        // Waits until the thread reading ahead has handed on `chunks` decoded chunks.
        let wait_for_chunks_ahead = |chunks: usize| {
            let deadline = Instant::now() + TIMEOUT;
            while decoded_ahead() < chunks {
                assert!(Instant::now() < deadline, "reading ahead did not get on");
                std::thread::yield_now();
            }
        };
        assert_eq!(read(&ranges(partitions, 0, 10)), all(partitions, 0, 10));

        // As many records of each partition as the last range held are read ahead (30, in 4
        // chunks of 7 and one of 2), and a next range as long takes them all as decoded.
        read_ahead();
        wait_for_chunks_ahead(5);
        assert_eq!(
            read_taking(&ranges(partitions, 10, 20)),
            (all(partitions, 10, 20), 30)
        );
        // A shorter one takes those within it, and those past it start the next.
        read_ahead();
        wait_for_chunks_ahead(5);
        assert_eq!(read(&ranges(partitions, 20, 25)), all(partitions, 20, 25));
        assert_eq!(read(&ranges(partitions, 25, 60)), all(partitions, 25, 60));

        // Taken wherever the thread is: the epochs read their ranges exactly all the same.
        produce(mock, "events", partitions, 60..260);
        let mut from = 60;
        for to in (70..=260).step_by(10) {
            read_ahead();
            assert_eq!(
                read(&ranges(partitions, from, to)),
                all(partitions, from, to),
                "the read of [{from}, {to})"
            );
            from = to;
        }

        // Reading ahead started again before a read took what was read: what the first took
        // goes with it, so the next read starts afresh and reads exactly its ranges.
        produce(mock, "events", partitions, 260..300);
        read_ahead();
        wait_for_chunks_ahead(1);
        read_ahead();
        assert_eq!(
            read(&ranges(partitions, 260, 300)),
            all(partitions, 260, 300)
        );
        // A replay after reading ahead, with records read ahead waiting, starts afresh and
        // reads exactly its ranges.
        produce(mock, "events", partitions, 300..310);
        read_ahead();
        wait_for_chunks_ahead(1);
        assert_eq!(read(&ranges(partitions, 20, 40)), all(partitions, 20, 40));
    }
}
