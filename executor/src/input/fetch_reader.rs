//! Reads exactly the planned offset ranges with weir's own fetch client (`client: weir`):
//! the records of each range are copied out of the fetched batches straight into the chunk
//! being gathered, with no message object, queue operation or lock a record. Between reads, a
//! thread reads the next epoch's records ahead out of the same queues (`kafka_ahead`).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_common::checkpoint::PartitionRange;
use weir_common::decode::JsonDecoder;
use weir_common::job::kafka_client::FetchSettings;
use weir_common::job::KafkaSource;

use crate::buffer_pool::BufferPool;
use crate::input::fetcher::{Failure, Fetched, Fetcher};
use crate::input::kafka_ahead::{AheadSlot, Ended, Out, ReadTo, AHEAD_WAIT};
use crate::input::kafka_reader::{
    after_held, continues, standing, take_ahead, Gathered, Gathering, Past, Pending, ReadError,
    STALL_TIMEOUT, WAIT,
};
use crate::input::read_ahead::TakenAhead;
use crate::input::shed::Shedding;
use crate::input::{Chunk, Record};
use crate::kafka_wire::batches::{self, BatchHeader};

/// How long to wait before fetching again after a failure that may pass.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

pub struct FetchReader {
    settings: FetchSettings,
    bootstrap: String,
    batches: BatchReader,
    /// Shared with the thread reading ahead, which holds it while it runs.
    state: Arc<Mutex<State>>,
    /// The thread reading ahead since the last read, if one is.
    ahead: AheadSlot,
    /// What lets rows read ahead give up their raw records, when the job allows it.
    shedding: Option<Arc<Shedding>>,
}

/// How the records of a range are read out of fetched batches.
#[derive(Clone)]
struct BatchReader {
    topic: String,
    read_committed: bool,
    /// Larger values are copied cut to this size (they go to the dead letter).
    max_record_bytes: usize,
    /// Buffers compressed batches are decompressed into, their records' values sliced from
    /// them (shared with the thread reading ahead).
    bodies: BufferPool,
}

#[derive(Default)]
struct State {
    /// Fetching the assigned partitions since the last read ended; None before the first.
    fetcher: Option<Fetcher>,
    /// The end of the range each assigned partition was last read to; empty when the
    /// assignment must be made afresh.
    read_to: HashMap<i32, i64>,
    /// How many offsets each partition's range of the last read held: reading ahead takes no
    /// more, as the next epoch of a steady run reads as many.
    last_lengths: HashMap<i32, i64>,
    /// Records read ahead past the range a read took them into, in offset order: they start
    /// the partition's next range.
    held: HashMap<i32, VecDeque<Record>>,
    /// Where reading ahead left each partition: every record before it was handed on (read
    /// in, or held). Offsets before it that hold no record to read (aborted transactions,
    /// their markers) are passed by the reads after it without waiting for the log to grow.
    reached: HashMap<i32, i64>,
    /// Where compressed batches are decompressed.
    scratch: Vec<u8>,
}

impl ReadTo for State {
    fn read_to(&mut self) -> &mut HashMap<i32, i64> {
        &mut self.read_to
    }
}

/// Whether a fetched answer was read to its end, or the range ended in it (the rest is kept).
enum Read {
    Whole,
    Rest(Fetched),
}

impl FetchReader {
    pub fn new(
        source: &KafkaSource,
        settings: &FetchSettings,
        max_record_bytes: usize,
        shedding: Option<Shedding>,
    ) -> Self {
        Self {
            settings: settings.clone(),
            bootstrap: source.bootstrap_servers.clone(),
            batches: BatchReader {
                topic: source.topic.clone(),
                read_committed: settings.read_committed,
                max_record_bytes,
                bodies: batches::body_pool(),
            },
            state: Arc::default(),
            ahead: AheadSlot::default(),
            shedding: shedding.map(Arc::new),
        }
    }

    /// Reads `[start, end)` of every range, handing records over in chunks of up to `chunk`,
    /// while `keep_going` answers true (it is asked at least every 200 ms).
    ///
    /// When the ranges continue where the last read ended, on the same partitions, what was
    /// fetched meanwhile is read, after what was read ahead (see [`FetchReader::read_ahead`]),
    /// which comes decoded; anything else (the first read, a replay, a rescale) fetches afresh
    /// from the ranges' starts. A read planned at `planned_at` takes no rows read ahead that
    /// were judged against a later time. Answers how much was taken decoded.
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
            // Fetched afresh from the ranges' starts, below; what was read ahead is dropped.
            state.read_to.clear();
            state.fetcher = None;
            state.held.clear();
            state.reached.clear();
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
                    max_bytes: self.batches.max_record_bytes,
                };
                let (gathering, on_chunk) = (&mut gathering, &mut on_chunk);
                let took = take_ahead(ahead, &mut pending, planned_at, past, gathering, on_chunk);
                if took.dropped {
                    // What the fetcher holds lies past rows that were dropped: a new one
                    // fetches from where each partition's reading stands (or, should it not
                    // start, the read's own fetching starts one, as after any failure).
                    let topic = &self.batches.topic;
                    tracing::debug!(
                        "rows read ahead of {topic} lay past the plan: fetching afresh"
                    );
                    state.fetcher = None;
                    state.held.clear();
                    state.reached.clear();
                    let positions = standing(ranges, &pending);
                    match Fetcher::start(&self.settings, &self.bootstrap, topic, &positions) {
                        Ok(fetcher) => state.fetcher = Some(fetcher),
                        Err(e) => tracing::debug!("fetching {topic} afresh: {e:#}"),
                    }
                }
                took.taken
            }
            _ => TakenAhead::default(),
        };
        for p in &mut pending {
            if let Some(&reached) = state.reached.get(&p.partition) {
                p.skip_to(reached);
            }
        }
        pending.retain(|p| !p.done());
        // A failed read leaves the queues somewhere unknown: the next one fetches afresh.
        state.read_to.clear();
        let mut records = |c| on_chunk(Gathered::Records(c));
        self.fetch_until_done(
            state,
            ranges,
            pending,
            &mut gathering,
            keep_going,
            &mut records,
        )?;
        gathering.hand_over(&mut records);
        state.read_to = ranges.iter().map(|r| (r.partition, r.end)).collect();
        state.last_lengths = ranges
            .iter()
            .map(|r| (r.partition, r.end - r.start))
            .collect();
        if let Some(failure) = state.fetcher.as_ref().and_then(Fetcher::failure) {
            // Fetching ahead failed after the ranges were in: the next read starts afresh.
            tracing::debug!("fetching {} ahead stopped: {failure:?}", self.batches.topic);
            state.read_to.clear();
        }
        Ok(taken)
    }

    /// Starts reading ahead what is fetched beyond the last read's ranges, decoding it with
    /// `decoder` in chunks of `chunk`: the next read takes it. Nothing is started before a
    /// first read or after one that failed.
    pub fn read_ahead(
        &self,
        decoder: Arc<JsonDecoder>,
        chunk: usize,
        planned_at: i64,
    ) -> std::io::Result<()> {
        let (state, batches) = (self.state.clone(), self.batches.clone());
        let shedding = self.shedding.clone().map(|s| (s, planned_at));
        self.ahead
            .restart(&self.state, decoder, shedding, move |out| {
                batches.read_ahead(&mut lock(&state), chunk, out)
            })
    }

    /// Chunks the thread reading ahead decoded so far.
    #[cfg(test)]
    pub(super) fn decoded_ahead(&self) -> usize {
        self.ahead.decoded()
    }

    /// Reads what `pending` still lacks of `ranges` from the fetcher's queues, fetching
    /// afresh when there is no fetcher or it failed in a way that may pass.
    fn fetch_until_done(
        &self,
        state: &mut State,
        ranges: &[PartitionRange],
        mut pending: Vec<Pending>,
        gathering: &mut Gathering,
        keep_going: impl Fn() -> bool,
        on_chunk: &mut impl FnMut(Chunk),
    ) -> Result<(), ReadError> {
        let topic = &self.batches.topic;
        let mut last_progress = Instant::now();
        let mut last_asked = Instant::now();
        while !pending.is_empty() {
            if last_asked.elapsed() >= WAIT {
                if !keep_going() {
                    return Err(ReadError::Abandoned);
                }
                last_asked = Instant::now();
            }
            if state.fetcher.is_none() {
                // Every assigned partition from where its reading stands.
                let positions = standing(ranges, &pending);
                match Fetcher::start(&self.settings, &self.bootstrap, topic, &positions) {
                    Ok(fetcher) => state.fetcher = Some(fetcher),
                    // A broker that cannot be reached may come back (a restart), as with
                    // librdkafka's reader, until the read stalls; a refusal will not.
                    Err(e)
                        if e.root_cause().is::<std::io::Error>()
                            && last_progress.elapsed() <= STALL_TIMEOUT =>
                    {
                        tracing::warn!("fetching {topic}: {e:#}; trying again");
                        std::thread::sleep(RETRY_BACKOFF);
                        continue;
                    }
                    Err(e) => return Err(ReadError::Fetch(format!("{e:#}"))),
                }
            }
            let Some(fetcher) = state.fetcher.as_ref() else {
                continue;
            };
            let mut took = false;
            let mut i = 0;
            while i < pending.len() {
                let p = &mut pending[i];
                while !p.done() {
                    let Some(fetched) = fetcher.take(p.partition) else {
                        break;
                    };
                    took = true;
                    let scratch = &mut state.scratch;
                    let read = self
                        .batches
                        .read_fetched(fetched, p, scratch, gathering, on_chunk)?;
                    if let Read::Rest(rest) = read {
                        fetcher.put_back(p.partition, rest);
                    }
                }
                if p.done() {
                    pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if took {
                last_progress = Instant::now();
                continue;
            }
            if last_progress.elapsed() > STALL_TIMEOUT {
                let mut partitions: Vec<i32> = pending.iter().map(|p| p.partition).collect();
                partitions.sort_unstable();
                return Err(ReadError::Stalled {
                    topic: topic.clone(),
                    partitions,
                    waited: STALL_TIMEOUT,
                });
            }
            match fetcher.wait(pending.iter().map(|p| p.partition), WAIT) {
                None => {}
                Some(Failure::Fatal(message)) => return Err(ReadError::Fetch(message)),
                Some(Failure::Retry(message)) => {
                    // Fetched again above, after a fresh look at the leaders.
                    tracing::warn!("fetching {topic} again: {message}");
                    state.fetcher = None;
                    std::thread::sleep(RETRY_BACKOFF);
                }
            }
        }
        Ok(())
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BatchReader {
    /// The thread reading ahead: takes every assigned partition's queued answers, from where
    /// the last read (or reading ahead before it) left it, up to as many offsets as its last
    /// range held, and hands their records on in decoded chunks of `chunk`, until it has them
    /// all or is stopped. It holds the reader's state throughout: the next read stops it
    /// before it reads.
    fn read_ahead(&self, state: &mut State, chunk: usize, out: &Out<'_>) -> Ended {
        let State {
            fetcher,
            read_to,
            last_lengths,
            reached,
            scratch,
            ..
        } = state;
        let Some(fetcher) = fetcher.as_ref() else {
            return Ended::Whole;
        };
        let mut pending: Vec<Pending> = read_to
            .iter()
            .map(|(&partition, &end)| Pending {
                partition,
                next: reached.get(&partition).map_or(end, |&at| at.max(end)),
                end: end + last_lengths.get(&partition).copied().unwrap_or(0),
            })
            .filter(|p| !p.done())
            .collect();
        let mut gathering = Gathering::new(chunk);
        let going = Cell::new(true);
        let mut on_chunk = |c| going.set(going.get() & out.decoded(c));
        loop {
            pending.retain(|p| !p.done());
            if !going.get() || pending.is_empty() || out.stopped() {
                break;
            }
            let mut took = false;
            for p in &mut pending {
                while !p.done() && !out.stopped() {
                    let Some(fetched) = fetcher.take(p.partition) else {
                        break;
                    };
                    took = true;
                    match self.read_fetched(fetched, p, scratch, &mut gathering, &mut on_chunk) {
                        Ok(Read::Whole) => {}
                        Ok(Read::Rest(rest)) => fetcher.put_back(p.partition, rest),
                        Err(e) => {
                            // The rest of the answer is gone: the next read fetches afresh,
                            // and meets the error itself if it is one still.
                            tracing::debug!("reading {} ahead: {e}", self.topic);
                            return Ended::Lost;
                        }
                    }
                    reached.insert(p.partition, p.next);
                }
            }
            // Fetching stopped: the next read fetches again.
            if !took
                && fetcher
                    .wait(pending.iter().map(|p| p.partition), AHEAD_WAIT)
                    .is_some()
            {
                break;
            }
        }
        // Records taken from the queues and not yet in a chunk must reach the next read: they
        // are decoded when the thread took all it was to, and handed on as they are when it
        // was stopped (the read waits for it).
        out.hand_over(&mut gathering, pending.is_empty() && going.get());
        Ended::Whole
    }

    /// Gathers the records of `p`'s range that `fetched` holds, skipping aborted
    /// transactions' records (when reading committed ones) and transaction markers; answers
    /// what is left of it once the range is done.
    fn read_fetched(
        &self,
        mut fetched: Fetched,
        p: &mut Pending,
        scratch: &mut Vec<u8>,
        gathering: &mut Gathering,
        on_chunk: &mut impl FnMut(Chunk),
    ) -> Result<Read, ReadError> {
        let partition = p.partition;
        let corrupt = |e: batches::BatchError| {
            ReadError::Fetch(format!("partition {partition} of {}: {e}", self.topic))
        };
        let records: Bytes = fetched.records.clone();
        let mut at = 0;
        while at < records.len() {
            if p.done() {
                fetched.records = records.slice(at..);
                return Ok(Read::Rest(fetched));
            }
            let Some(header) = BatchHeader::read(&records[at..]).map_err(corrupt)? else {
                break;
            };
            let batch = &records[at..at + header.size];
            if header.last_offset < p.next {
                // The batch holding the first offset asked for starts before it.
                at += header.size;
                continue;
            }
            while let Some(&(first, producer)) = fetched.aborted.get(fetched.reached) {
                if first > header.last_offset {
                    break;
                }
                fetched.aborting.insert(producer);
                fetched.reached += 1;
            }
            let committed = self.read_committed;
            if header.is_control() {
                for record in batches::records(&header, batch, scratch).map_err(corrupt)? {
                    let record = record.map_err(corrupt)?;
                    if batches::marks_abort(record.key).map_err(corrupt)? {
                        fetched.aborting.remove(&header.producer_id);
                    }
                }
            } else if !(committed
                && header.is_transactional()
                && fetched.aborting.contains(&header.producer_id))
            {
                // Keys and values are slices of the batch's body, not copies.
                let batch = records.slice(at..at + header.size);
                let batches::SharedBody { bytes: body, held } =
                    batches::shared_body(&header, &batch, &self.bodies).map_err(corrupt)?;
                gathering.slicing(held);
                for record in batches::records_of(&header, &body) {
                    let record = record.map_err(corrupt)?;
                    if record.offset < p.next {
                        continue;
                    }
                    if !p.take(record.offset) {
                        // Past the end: the rest of this batch starts the next range.
                        fetched.records = records.slice(at..);
                        return Ok(Read::Rest(fetched));
                    }
                    let place = (partition, record.offset);
                    let (key, value) = (
                        record.key.map(|k| body.slice_ref(k)),
                        record.value.map(|v| body.slice_ref(v)),
                    );
                    gathering.add_shared(place, key, value, self.max_record_bytes, on_chunk);
                }
            }
            // Offsets missing in the batch (compacted away, or skipped above) are passed.
            p.skip_to(header.last_offset + 1);
            at += header.size;
        }
        Ok(Read::Whole)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use rdkafka::mocking::MockCluster;
    use weir_common::job::kafka_client::KafkaClient;
    use weir_common::job::{SecretMap, StartingOffsets};

    use super::*;
    use crate::input::kafka_reader;
    use crate::input::kafka_reader::tests::{
        all, decoder, epochs_read_ahead, epochs_then_a_replay, produce, range, ranges, topic,
    };

    fn reader(bootstrap: &str, topic: &str, settings: FetchSettings) -> FetchReader {
        let source = KafkaSource {
            bootstrap_servers: bootstrap.into(),
            topic: topic.into(),
            starting_offsets: StartingOffsets::Earliest,
            fail_on_data_loss: true,
            max_offsets_per_trigger: None,
            options: SecretMap::default(),
            client: KafkaClient::Weir(settings.clone()),
        };
        FetchReader::new(&source, &settings, 1 << 20, None)
    }

    /// (partition, offset, value) of every record a read hands over, and how many of them
    /// were read ahead.
    fn read_taking(
        reader: &FetchReader,
        ranges: &[PartitionRange],
    ) -> (Vec<(i32, i64, String)>, u64) {
        let mut seen = Vec::new();
        let taken = reader
            .read(
                ranges,
                0,
                7,
                || true,
                |read| {
                    if let Gathered::Records(chunk) = &read {
                        assert!(chunk.records.len() <= 7);
                    }
                    seen.extend(kafka_reader::tests::seen(read));
                },
            )
            .expect("read");
        // Each partition's records come in order; partitions interleave as they arrive.
        seen.sort();
        (seen, taken.records)
    }

    fn read(reader: &FetchReader, ranges: &[PartitionRange]) -> Vec<(i32, i64, String)> {
        read_taking(reader, ranges).0
    }

    /// Short waits: a read that has caught up gets the last records sooner.
    fn settings() -> FetchSettings {
        FetchSettings {
            max_wait_ms: 10,
            ..FetchSettings::default()
        }
    }

    #[test]
    fn epochs_read_exactly_their_ranges_whatever_came_before() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let partitions = 3;
        topic(&mock, "events", partitions, 55);
        let reader = reader(&mock.bootstrap_servers(), "events", settings());
        assert_eq!(read(&reader, &ranges(partitions, 5, 5)), vec![]);
        // Epochs one after the other read on from what was fetched meanwhile; a replay, or a
        // read of fewer partitions, fetches afresh.
        epochs_then_a_replay(partitions, |ranges| read(&reader, ranges));
        // Records produced after the fetcher caught up reach the next epoch.
        assert_eq!(
            read(&reader, &ranges(partitions, 0, 55)),
            all(partitions, 0, 55)
        );
        produce(&mock, "events", partitions, 55..80);
        assert_eq!(
            read(&reader, &ranges(partitions, 55, 80)),
            all(partitions, 55, 80)
        );
    }

    #[test]
    fn the_next_epoch_takes_what_was_read_ahead_exactly_within_its_ranges() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let reader = reader(&mock.bootstrap_servers(), "events", settings());
        epochs_read_ahead(
            &mock,
            || reader.read_ahead(decoder(), 7, 0).expect("read ahead"),
            || reader.ahead.decoded(),
            |ranges| read_taking(&reader, ranges),
        );
    }

    #[test]
    fn rows_read_ahead_without_their_records_still_read_exactly_their_ranges() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let (shedding, decoder) = kafka_reader::tests::shedding_job();
        let reader = FetchReader {
            shedding: Some(Arc::new(shedding)),
            ..reader(&mock.bootstrap_servers(), "json", settings())
        };
        let reader = crate::input::KafkaInput::Weir(reader);
        kafka_reader::tests::epochs_read_shed_rows_ahead(&mock, reader, decoder);
    }

    #[test]
    fn a_planned_offset_the_broker_no_longer_holds_fails_the_read() {
        let mock = MockCluster::new(1).expect("mock cluster");
        topic(&mock, "events", 1, 5);
        let reader = reader(&mock.bootstrap_servers(), "events", settings());
        let err = reader
            .read(&[range(0, 100, 110)], 0, 7, || true, |_| {})
            .expect_err("offsets past the log's end");
        assert!(err.to_string().contains("out of range"), "{err}");
        let missing = self::reader(&mock.bootstrap_servers(), "nowhere", settings())
            .read(&[range(0, 0, 1)], 0, 7, || true, |_| {})
            .expect_err("no such topic");
        assert!(missing.to_string().contains("nowhere"), "{missing}");
    }

    fn record(offset: i64, producer_id: i64, transactional: bool, control: bool) -> Record {
        Record {
            transactional,
            control,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(format!("{offset}"))),
            headers: Default::default(),
        }
    }

    /// A transaction marker: abort (type 0) or commit (type 1).
    fn marker(offset: i64, producer_id: i64, abort: bool) -> Record {
        Record {
            key: Some(bytes::Bytes::from(vec![0, 0, 0, u8::from(!abort)])),
            value: Some(bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            ..record(offset, producer_id, true, true)
        }
    }

    /// Producer 7 writes 0-2 and aborts (marker 5); producer 8 writes 3-4 and commits (6);
    /// producer 7 writes 7-8 and commits (9); 10 is not transactional. Kafka names producer
    /// 7's transaction from offset 0 as aborted.
    fn transactions() -> Fetched {
        let records = [
            record(0, 7, true, false),
            record(1, 7, true, false),
            record(2, 7, true, false),
            record(3, 8, true, false),
            record(4, 8, true, false),
            marker(5, 7, true),
            marker(6, 8, false),
            record(7, 7, true, false),
            record(8, 7, true, false),
            marker(9, 7, false),
            record(10, -1, false, false),
        ];
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Lz4,
        };
        RecordBatchEncoder::encode(&mut out, &records, &options).expect("encode");
        Fetched {
            records: out.freeze(),
            aborted: vec![(0, 7)],
            reached: 0,
            aborting: HashSet::new(),
        }
    }

    /// Reads `ranges` of partition 0, one after the other, out of `fetched`: the offsets of
    /// the records gathered.
    fn offsets_read(reader: &FetchReader, ranges: &[(i64, i64)]) -> Vec<i64> {
        let mut seen = Vec::new();
        let mut fetched = Some(transactions());
        let mut scratch = Vec::new();
        for &(start, end) in ranges {
            let mut p = Pending {
                partition: 0,
                next: start,
                end,
            };
            let mut gathering = Gathering::new(100);
            let mut on_chunk = |chunk: Chunk| seen.extend(chunk.records.iter().map(|r| r.offset));
            let part = fetched.take().expect("records left");
            let read = reader
                .batches
                .read_fetched(part, &mut p, &mut scratch, &mut gathering, &mut on_chunk)
                .expect("read");
            gathering.hand_over(&mut on_chunk);
            assert!(p.done(), "[{start}, {end}) was read to its end");
            if let Read::Rest(rest) = read {
                fetched = Some(rest);
            }
        }
        seen
    }

    /// Appends each of `batches` to partition 0 of `topic` as it is, one Produce request a
    /// batch (the mock cluster gives each its offsets; it checks no producer state when the
    /// request names no transaction).
    fn append(bootstrap: &str, topic: &str, batches: &[&[Record]]) {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
        use kafka_protocol::protocol::{Message, StrBytes};

        use crate::kafka_wire::connection::Connection;
        let mut connection =
            Connection::open(bootstrap, "test", Duration::from_secs(30)).expect("connect");
        let version = connection
            .version(ApiKey::Produce, ProduceRequest::VERSIONS)
            .expect("Produce version");
        for records in batches {
            let mut batch = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(&mut batch, *records, &options).expect("encode");
            let request = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze()))])]);
            let answer: ProduceResponse = connection
                .call(ApiKey::Produce, &request, version)
                .expect("produce");
            let code = answer.responses[0].partition_responses[0].error_code;
            assert_eq!(code, 0, "the mock cluster took the batch");
        }
    }

    /// A transaction whose commit marker is the log's last offset, read ahead: the next read
    /// ends on the marker without waiting for the log to grow past it.
    #[test]
    fn a_range_ending_on_a_marker_read_ahead_is_done_at_once() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("txn", 1, 1).expect("topic");
        let bootstrap = mock.bootstrap_servers();
        let transaction = |from: i64| (from..from + 4).map(|o| record(o, 7, true, false));
        let (first, second): (Vec<Record>, Vec<Record>) =
            (transaction(0).collect(), transaction(5).collect());
        append(
            &bootstrap,
            "txn",
            &[
                &first,
                &[marker(4, 7, false)],
                &second,
                &[marker(9, 7, false)],
            ],
        );
        let reader = reader(&bootstrap, "txn", settings());
        let offsets = |(read, taken): (Vec<(i32, i64, String)>, u64)| {
            (read.iter().map(|r| r.1).collect::<Vec<_>>(), taken)
        };
        assert_eq!(
            offsets(read_taking(&reader, &[range(0, 0, 5)])),
            (vec![0, 1, 2, 3], 0)
        );
        reader.read_ahead(decoder(), 7, 0).expect("read ahead");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.ahead.decoded() < 1 {
            assert!(Instant::now() < deadline, "reading ahead did not get on");
            std::thread::yield_now();
        }
        // Without where reading ahead left the partition, this read would wait for an offset
        // past 9 until it stalled.
        assert_eq!(
            offsets(read_taking(&reader, &[range(0, 5, 10)])),
            (vec![5, 6, 7, 8], 4)
        );
    }

    #[test]
    fn aborted_transactions_and_their_markers_are_not_read() {
        let committed = reader("127.0.0.1:1", "t", settings());
        let everything = reader(
            "127.0.0.1:1",
            "t",
            FetchSettings {
                read_committed: false,
                ..settings()
            },
        );
        let kept = vec![3, 4, 7, 8, 10];
        assert_eq!(offsets_read(&committed, &[(0, 11)]), kept);
        assert_eq!(
            offsets_read(&everything, &[(0, 11)]),
            vec![0, 1, 2, 3, 4, 7, 8, 10]
        );
        // Ranges that end inside a batch, on a marker, or on an aborted record: the next
        // range reads on from the same answer, its transactions' state kept.
        for cuts in [
            &[0, 4, 11][..],
            &[0, 1, 6, 8, 11],
            &[0, 5, 6, 10, 11],
            &[0, 2, 3, 9, 11],
        ] {
            let ranges: Vec<(i64, i64)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            assert_eq!(offsets_read(&committed, &ranges), kept, "{cuts:?}");
        }
    }
}
