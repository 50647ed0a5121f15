//! Reads exactly the planned offset ranges with weir's own fetch client (`client: weir`):
//! the records of each range are copied out of the fetched batches straight into the chunk
//! being gathered, with no message object, queue operation or lock a record.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_common::checkpoint::PartitionRange;
use weir_common::job::kafka_client::FetchSettings;
use weir_common::job::KafkaSource;

use crate::input::fetcher::{Failure, Fetched, Fetcher};
use crate::input::kafka_reader::{continues, Gathering, Pending, ReadError, STALL_TIMEOUT, WAIT};
use crate::input::Chunk;
use crate::kafka_wire::batches::{self, BatchHeader};

/// How long to wait before fetching again after a failure that may pass.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

pub struct FetchReader {
    settings: FetchSettings,
    bootstrap: String,
    topic: String,
    /// Larger values are copied cut to this size (they go to the dead letter).
    max_record_bytes: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Fetching the assigned partitions since the last read ended; None before the first.
    fetcher: Option<Fetcher>,
    /// The end of the range each assigned partition was last read to; empty when the
    /// assignment must be made afresh.
    read_to: HashMap<i32, i64>,
    /// Where compressed batches are decompressed.
    scratch: Vec<u8>,
}

/// Whether a fetched answer was read to its end, or the range ended in it (the rest is kept).
enum Read {
    Whole,
    Rest(Fetched),
}

impl FetchReader {
    pub fn new(source: &KafkaSource, settings: &FetchSettings, max_record_bytes: usize) -> Self {
        Self {
            settings: settings.clone(),
            bootstrap: source.bootstrap_servers.clone(),
            topic: source.topic.clone(),
            max_record_bytes,
            state: Mutex::new(State::default()),
        }
    }

    /// Reads `[start, end)` of every range, handing records over in chunks of up to `chunk`,
    /// while `keep_going` answers true (it is asked at least every 200 ms).
    ///
    /// When the ranges continue where the last read ended, on the same partitions, what was
    /// fetched meanwhile is read; anything else (the first read, a replay, a rescale) fetches
    /// afresh from the ranges' starts.
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(Chunk),
    ) -> Result<(), ReadError> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let mut pending: Vec<Pending> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| Pending {
                partition: r.partition,
                next: r.start,
                end: r.end,
            })
            .collect();
        if !continues(&state.read_to, ranges) {
            // Fetched afresh from the ranges' starts, below.
            state.fetcher = None;
        }
        // A failed read leaves the queues somewhere unknown: the next one fetches afresh.
        state.read_to.clear();
        let mut gathering = Gathering::new(chunk);
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
                let positions: Vec<(i32, i64)> = ranges
                    .iter()
                    .map(|r| {
                        let at = pending.iter().find(|p| p.partition == r.partition);
                        (r.partition, at.map_or(r.end.max(r.start), |p| p.next))
                    })
                    .collect();
                match Fetcher::start(&self.settings, &self.bootstrap, &self.topic, &positions) {
                    Ok(fetcher) => state.fetcher = Some(fetcher),
                    // A broker that cannot be reached may come back (a restart), as with
                    // librdkafka's reader, until the read stalls; a refusal will not.
                    Err(e)
                        if e.root_cause().is::<std::io::Error>()
                            && last_progress.elapsed() <= STALL_TIMEOUT =>
                    {
                        tracing::warn!("fetching {}: {e:#}; trying again", self.topic);
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
                    let read = self.read_fetched(
                        fetched,
                        p,
                        &mut state.scratch,
                        &mut gathering,
                        &mut on_chunk,
                    )?;
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
                    topic: self.topic.clone(),
                    partitions,
                    waited: STALL_TIMEOUT,
                });
            }
            match fetcher.wait(pending.iter().map(|p| p.partition), WAIT) {
                None => {}
                Some(Failure::Fatal(message)) => return Err(ReadError::Fetch(message)),
                Some(Failure::Retry(message)) => {
                    // Fetched again above, after a fresh look at the leaders.
                    tracing::warn!("fetching {} again: {message}", self.topic);
                    state.fetcher = None;
                    std::thread::sleep(RETRY_BACKOFF);
                }
            }
        }
        gathering.hand_over(&mut on_chunk);
        state.read_to = ranges.iter().map(|r| (r.partition, r.end)).collect();
        if let Some(failure) = state.fetcher.as_ref().and_then(Fetcher::failure) {
            // Fetching ahead failed after the ranges were in: the next read starts afresh.
            tracing::debug!("fetching {} ahead stopped: {failure:?}", self.topic);
            state.read_to.clear();
        }
        Ok(())
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
            let committed = self.settings.read_committed;
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
                for record in batches::records(&header, batch, scratch).map_err(corrupt)? {
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
                    let max_bytes = self.max_record_bytes;
                    gathering.add_polled(place, record.key, record.value, max_bytes, on_chunk);
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
    use crate::input::kafka_reader::tests::{
        all, epochs_then_a_replay, produce, range, ranges, topic,
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
        FetchReader::new(&source, &settings, 1 << 20)
    }

    /// (partition, offset, value) of every record a read hands over, with the chunks' sizes.
    fn read(reader: &FetchReader, ranges: &[PartitionRange]) -> Vec<(i32, i64, String)> {
        let mut seen = Vec::new();
        reader
            .read(
                ranges,
                7,
                || true,
                |chunk| {
                    assert!(chunk.records.len() <= 7);
                    for r in chunk.records {
                        let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or(&[]));
                        seen.push((r.partition, r.offset, value.into_owned()));
                    }
                },
            )
            .expect("read");
        // Each partition's records come in order; partitions interleave as they arrive.
        seen.sort();
        seen
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
    fn a_planned_offset_the_broker_no_longer_holds_fails_the_read() {
        let mock = MockCluster::new(1).expect("mock cluster");
        topic(&mock, "events", 1, 5);
        let reader = reader(&mock.bootstrap_servers(), "events", settings());
        let err = reader
            .read(&[range(0, 100, 110)], 7, || true, |_| {})
            .expect_err("offsets past the log's end");
        assert!(err.to_string().contains("out of range"), "{err}");
        let missing = self::reader(&mock.bootstrap_servers(), "nowhere", settings())
            .read(&[range(0, 0, 1)], 7, || true, |_| {})
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
