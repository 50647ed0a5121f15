//! The records an epoch reads, decoded: the planned Kafka ranges, or the planned files of a
//! file source (those read ahead, beside the epoch before, when the plan names them).

mod consumer_queue;
pub mod fetch_reader;
mod fetcher;
pub mod file_reader;
mod kafka_ahead;
pub mod kafka_reader;
pub mod mapped;
pub mod range_fetch;
pub mod read_ahead;
pub mod shed;

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use weir_common::checkpoint::{check_relative_path, InputFile, PartitionRange};
use weir_common::decode::{Decoded, JsonDecoder};
use weir_common::job::kafka_client::KafkaClient;
use weir_common::job::{JobSpec, Source};
use weir_proto::control::{ExecuteRequest, InputFile as ProtoFile};

use crate::input::fetch_reader::FetchReader;
use crate::input::file_reader::{FileReader, Resume};
use crate::input::kafka_reader::{Gathered, KafkaReader, ReadError};
use crate::input::read_ahead::{ReadAhead, TakenAhead};
use crate::input::shed::Shedding;

/// One input record, as much of it as the engine and the dead letter need: a Kafka record, or
/// a line of a file (partition: the file's index in the epoch's list; offset: its line number).
/// A value is a slice of its chunk's buffer (a file's fetched range, a Kafka chunk's values),
/// not a copy of its own.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The length of a line longer than `max_record_bytes`, whose `value` holds only its first
    /// `max_record_bytes` bytes: the rest was counted as it streamed by, never buffered.
    pub cut_from: Option<u64>,
}

impl Record {
    /// A copy that holds only its own bytes, at most `max_bytes` of its value: a rejected
    /// record kept until the epoch ends must not keep the whole fetched range it was sliced
    /// from alive, and an oversized one is kept cut.
    pub fn detached(&self, max_bytes: usize) -> Record {
        Record {
            value: self
                .value
                .as_deref()
                .map(|v| Bytes::copy_from_slice(&v[..v.len().min(max_bytes)])),
            key: self.key.as_deref().map(Bytes::copy_from_slice),
            ..self.clone()
        }
    }

    /// Bytes of its key and value: what it counts toward a chunk's bound, and what it holds
    /// once it holds its own.
    pub fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len) + self.value.as_ref().map_or(0, Bytes::len)
    }

    /// What the decoder reads: nothing for a line that was cut (it is refused as too large
    /// before decoding), else the value.
    pub fn payload(&self) -> &[u8] {
        match self.cut_from {
            Some(_) => &[],
            None => self.value.as_deref().unwrap_or(&[]),
        }
    }
}

/// Bytes of keys and values at which a reader hands a chunk over short of its count of
/// records: what a chunk holds (and what reading ahead holds, a few chunks) stays bounded
/// whatever the records' size. A count alone let 4 096 records of a megabyte each, within the
/// default `max_record_bytes`, hold 4 GiB. The reference events reach the count first (about
/// 1 MB).
pub const CHUNK_BYTES: usize = 4 << 20;

/// How full the chunk a reader gathers is: full at `size` records, or at [`CHUNK_BYTES`] of
/// their keys and values if that comes first. Every reader (files, both Kafka clients) counts
/// its records here, so they all hand over by the same rule.
#[derive(Debug)]
pub struct ChunkFill {
    size: usize,
    records: usize,
    bytes: usize,
}

impl ChunkFill {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            records: 0,
            bytes: 0,
        }
    }

    /// Counts a record of `bytes` (key and value); true once the chunk is full.
    pub fn add(&mut self, bytes: usize) -> bool {
        self.records += 1;
        self.bytes += bytes;
        self.records >= self.size || self.bytes >= CHUNK_BYTES
    }

    /// Starts counting the next chunk.
    pub fn clear(&mut self) {
        self.records = 0;
        self.bytes = 0;
    }
}

/// Records handed over together, with the buffers their values are slices of (a file's
/// fetched ranges; the copy of the values librdkafka's reader polled, each followed by a
/// newline; none for weir's Kafka client, whose records slice their batches): the decoder
/// reads records lying side by side in a buffer from it in place.
#[derive(Debug, Default)]
pub struct Chunk {
    /// At most the reader's count, and handed over once their keys and values reach
    /// [`CHUNK_BYTES`] if that comes first ([`ChunkFill`]).
    pub records: Vec<Record>,
    pub buffers: Vec<Bytes>,
    /// Bytes of the batch bodies weir's Kafka client's records slice, kept alive by them.
    pub held: usize,
    /// Where a file source's reading goes on after the chunk's records.
    pub end: Option<Resume>,
}

impl Chunk {
    pub fn with_capacity(records: usize) -> Self {
        Self {
            records: Vec::with_capacity(records),
            buffers: Vec::new(),
            held: 0,
            end: None,
        }
    }

    /// The bytes the chunk keeps alive: its buffers and the batch bodies its records slice.
    pub fn bytes(&self) -> usize {
        self.held + self.buffers.iter().map(Bytes::len).sum::<usize>()
    }
}

/// A chunk with what the decoder made of its records.
pub struct DecodedChunk {
    pub chunk: Chunk,
    pub decoded: Decoded,
    /// Bytes of the records' values as read (they may be shed since).
    pub value_bytes: u64,
    /// Set when its rows gave up their raw records (`shed`): the plan time they were judged
    /// against, which the epoch that takes them must not precede.
    pub judged_at: Option<i64>,
}

impl DecodedChunk {
    pub fn decode(chunk: Chunk, decoder: &JsonDecoder) -> Self {
        let payloads: Vec<&[u8]> = chunk.records.iter().map(Record::payload).collect();
        let buffers: Vec<&[u8]> = chunk.buffers.iter().map(|b| &b[..]).collect();
        let decoded = decoder.decode_within(&payloads, &buffers);
        let value_bytes = chunk
            .records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
            .sum();
        Self {
            chunk,
            decoded,
            value_bytes,
            judged_at: None,
        }
    }

    /// The memory the chunk holds: its records, the buffers their values slice (or, once
    /// shed, the raw bytes its rows kept) and the decoded columns.
    pub fn memory(&self) -> usize {
        let records = &self.chunk.records;
        let kept: usize = match self.judged_at {
            Some(_) => records.iter().map(Record::bytes).sum(),
            // Values are slices of the buffers the chunk counts.
            None => 0,
        };
        let columns: usize = self
            .decoded
            .batches
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum();
        records.len() * std::mem::size_of::<Record>()
            + self.decoded.good.len() * std::mem::size_of::<usize>()
            + self.chunk.bytes()
            + kept
            + columns
    }
}

/// The files a plan names, refused when one would leave the source's location: only the
/// driver plans files, under it, whoever sent the plan.
fn planned_files(files: &[ProtoFile]) -> anyhow::Result<Vec<InputFile>> {
    files
        .iter()
        .map(|f| {
            check_relative_path(&f.path)
                .map(|()| InputFile {
                    path: f.path.clone(),
                    bytes: f.bytes,
                })
                .map_err(|e| anyhow::anyhow!("the plan names a file outside the source: {e}"))
        })
        .collect()
}

pub enum Input {
    Kafka {
        reader: Box<KafkaInput>,
        topic: String,
    },
    Files(FileReader),
}

/// A Kafka source's reader: librdkafka's consumer, or weir's own fetch client.
pub enum KafkaInput {
    Librdkafka(KafkaReader),
    Weir(FetchReader),
}

impl KafkaInput {
    /// Reads exactly `ranges`, planned at `planned_at`, handing on what it read (see each
    /// client's reader).
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        planned_at: i64,
        chunk: usize,
        keep_going: impl Fn() -> bool,
        on_read: impl FnMut(Gathered),
    ) -> Result<TakenAhead, ReadError> {
        match self {
            KafkaInput::Librdkafka(reader) => {
                reader.read(ranges, planned_at, chunk, keep_going, on_read)
            }
            KafkaInput::Weir(reader) => reader.read(ranges, planned_at, chunk, keep_going, on_read),
        }
    }

    /// Starts reading ahead of the next read, rows judged against `planned_at` (the last
    /// plan's time).
    pub fn read_ahead(
        &self,
        decoder: Arc<JsonDecoder>,
        chunk: usize,
        planned_at: i64,
    ) -> std::io::Result<()> {
        match self {
            KafkaInput::Librdkafka(reader) => reader.read_ahead(decoder, chunk, planned_at),
            KafkaInput::Weir(reader) => reader.read_ahead(decoder, chunk, planned_at),
        }
    }

    /// Chunks the thread reading ahead decoded so far.
    #[cfg(test)]
    pub fn decoded_ahead(&self) -> usize {
        match self {
            KafkaInput::Librdkafka(reader) => reader.decoded_ahead(),
            KafkaInput::Weir(reader) => reader.decoded_ahead(),
        }
    }
}

impl Input {
    pub fn open(job: &JobSpec, job_id: &str) -> anyhow::Result<Self> {
        Ok(match &job.source {
            Source::Kafka(kafka) => Input::Kafka {
                reader: Box::new(match &kafka.client {
                    KafkaClient::Librdkafka => KafkaInput::Librdkafka(
                        KafkaReader::new(
                            kafka,
                            job_id,
                            job.max_record_bytes,
                            Shedding::for_job(job),
                        )
                        .context("creating the Kafka consumer")?,
                    ),
                    KafkaClient::Weir(settings) => KafkaInput::Weir(FetchReader::new(
                        kafka,
                        settings,
                        job.max_record_bytes,
                        Shedding::for_job(job),
                    )),
                }),
                topic: kafka.topic.clone(),
            },
            Source::Files(files) => Input::Files(FileReader::new(
                weir_storage::location::open(&files.url, &job.storage_options)
                    .context("opening the file source")?,
                job.max_record_bytes,
            )),
        })
    }

    /// Reads what `req` plans for this executor and decodes it with `decoder`, in chunks of up
    /// to `chunk` records, while `keep_going` answers true; first takes what `ahead` decoded
    /// when it read the planned files, or what a Kafka reader read ahead, and then answers
    /// what it took. Blocks: call it inside
    /// `block_in_place`.
    pub fn read(
        &self,
        req: &ExecuteRequest,
        ahead: Option<ReadAhead>,
        decoder: &JsonDecoder,
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(DecodedChunk),
    ) -> anyhow::Result<Option<TakenAhead>> {
        match self {
            Input::Kafka { reader, .. } => {
                let ranges: Vec<PartitionRange> = req
                    .ranges
                    .iter()
                    .map(|r| PartitionRange {
                        partition: r.partition,
                        start: r.start_offset,
                        end: r.end_offset,
                    })
                    .collect();
                let planned_at = req.planned_at_micros;
                let on_read = |read| match read {
                    Gathered::Records(records) => on_chunk(DecodedChunk::decode(records, decoder)),
                    Gathered::Decoded(decoded) => on_chunk(decoded),
                };
                let taken = reader.read(&ranges, planned_at, chunk, keep_going, on_read);
                Ok(Some(taken.context("reading the planned Kafka ranges")?))
            }
            Input::Files(reader) => {
                let files = planned_files(&req.files)?;
                let taken = ahead
                    .filter(|a| a.reads(&files))
                    .map(|a| a.take(&mut on_chunk));
                let from = taken.map_or(Resume::START, |(_, resume)| resume);
                reader
                    .read_from(&files, from, chunk, keep_going, |records| {
                        on_chunk(DecodedChunk::decode(records, decoder))
                    })
                    .context("reading the planned files")?;
                Ok(taken.map(|(taken, _)| taken))
            }
        }
    }

    /// Starts reading ahead for the next epoch: the files `req` says this executor would read
    /// then, when it names any (a file source's, answered), or what the Kafka client fetches
    /// past this epoch's ranges when `req` allows it (a Kafka source's, kept by its reader).
    /// Nothing is started when it cannot be read ahead.
    pub fn read_ahead(
        &self,
        req: &ExecuteRequest,
        decoder: &Arc<JsonDecoder>,
        chunk: usize,
    ) -> Option<ReadAhead> {
        let reader = match self {
            Input::Files(reader) => reader,
            Input::Kafka { reader, .. } => {
                if !req.read_ahead_records {
                    return None;
                }
                let started = reader.read_ahead(decoder.clone(), chunk, req.planned_at_micros);
                if let Err(e) = started {
                    // The next epoch polls its records itself.
                    tracing::warn!("not reading the Kafka source ahead: {e}");
                }
                return None;
            }
        };
        if req.read_ahead.is_empty() {
            return None;
        }
        let started = planned_files(&req.read_ahead).and_then(|files| {
            ReadAhead::start(
                reader.clone(),
                decoder.clone(),
                files,
                chunk,
                tokio::runtime::Handle::current(),
            )
            .context("starting a thread")
        });
        match started {
            Ok(ahead) => Some(ahead),
            Err(e) => {
                // The next epoch reads its files itself.
                tracing::warn!("not reading the next epoch's files ahead: {e:#}");
                None
            }
        }
    }

    /// Where a record of `req` came from, as the dead letter names it: the topic and
    /// partition, or the file's URL and -1.
    pub fn origin(&self, req: &ExecuteRequest, record: &Record) -> (String, i32) {
        match self {
            Input::Kafka { topic, .. } => (topic.clone(), record.partition),
            Input::Files(reader) => {
                let path = usize::try_from(record.partition)
                    .ok()
                    .and_then(|i| req.files.get(i))
                    .map_or("", |f| f.path.as_str());
                (reader.url(path), -1)
            }
        }
    }
}
