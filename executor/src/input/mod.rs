//! The records an epoch reads: the planned Kafka ranges, or the planned files of a file source.

mod consumer_queue;
pub mod file_reader;
pub mod kafka_reader;
pub mod range_fetch;

use anyhow::Context;
use bytes::Bytes;
use weir_common::checkpoint::{check_relative_path, InputFile, PartitionRange};
use weir_common::job::{JobSpec, Source};
use weir_proto::control::ExecuteRequest;

use crate::input::file_reader::FileReader;
use crate::input::kafka_reader::KafkaReader;

/// One input record, as much of it as the engine and the dead letter need: a Kafka record, or
/// a line of a file (partition: the file's index in the epoch's list; offset: its line number).
/// A line's value is a slice of the fetched range, not a copy.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
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
            ..self.clone()
        }
    }

    /// The bytes the record holds (its key and value).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Bytes::len)
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

/// Records handed over together, with the fetched ranges their values are slices of (a file's
/// lines; Kafka records are copies and name none): the decoder reads lines lying side by side in
/// a range from it in place.
#[derive(Debug, Default)]
pub struct Chunk {
    pub records: Vec<Record>,
    pub buffers: Vec<Bytes>,
}

impl Chunk {
    pub fn with_capacity(records: usize) -> Self {
        Self {
            records: Vec::with_capacity(records),
            buffers: Vec::new(),
        }
    }
}

pub enum Input {
    Kafka {
        reader: Box<KafkaReader>,
        topic: String,
    },
    Files(FileReader),
}

impl Input {
    pub fn open(job: &JobSpec, job_id: &str) -> anyhow::Result<Self> {
        Ok(match &job.source {
            Source::Kafka(kafka) => Input::Kafka {
                reader: Box::new(
                    KafkaReader::new(kafka, job_id, job.max_record_bytes)
                        .context("creating the Kafka consumer")?,
                ),
                topic: kafka.topic.clone(),
            },
            Source::Files(files) => Input::Files(FileReader::new(
                weir_storage::location::open(&files.url, &job.storage_options)
                    .context("opening the file source")?,
                job.max_record_bytes,
            )),
        })
    }

    /// Reads what `req` plans for this executor, in chunks of up to `chunk` records, while
    /// `keep_going` answers true. Blocks: call it inside `block_in_place`.
    pub fn read(
        &self,
        req: &ExecuteRequest,
        chunk: usize,
        keep_going: impl Fn() -> bool,
        mut on_chunk: impl FnMut(Chunk),
    ) -> anyhow::Result<()> {
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
                reader
                    .read(&ranges, chunk, keep_going, |records| {
                        on_chunk(Chunk {
                            records,
                            buffers: Vec::new(),
                        })
                    })
                    .context("reading the planned Kafka ranges")
            }
            Input::Files(reader) => {
                // Only the driver plans files, under the source's location: a path that
                // would leave it is refused, whoever sent it.
                let files = req
                    .files
                    .iter()
                    .map(|f| {
                        check_relative_path(&f.path)
                            .map(|()| InputFile {
                                path: f.path.clone(),
                                bytes: f.bytes,
                            })
                            .map_err(|e| {
                                anyhow::anyhow!("the plan names a file outside the source: {e}")
                            })
                    })
                    .collect::<anyhow::Result<Vec<InputFile>>>()?;
                reader
                    .read(&files, chunk, keep_going, on_chunk)
                    .context("reading the planned files")
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
