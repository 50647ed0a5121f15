//! Reading the next epoch's files ahead (docs/architecture.md, One epoch): once an epoch's own
//! reading is done, the files the driver says the next epoch would read are read and decoded
//! on a thread of their own while the epoch exchanges, folds, stages and waits for its
//! decision. The next epoch takes what is decoded by then when its plan names exactly those
//! files, and reads the rest itself from where that ends; otherwise it drops them: only a plan
//! says what an epoch reads.
//!
//! The thread runs at the lowest priority (`SCHED_IDLE`): it takes only time no other thread
//! of the machine wants, so it fills what waits instead of competing with the epochs' own
//! work, and no epoch ever waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use weir_common::checkpoint::InputFile;
use weir_common::decode::JsonDecoder;

use crate::input::file_reader::{FileReader, Resume};
use crate::input::DecodedChunk;

/// Chunks read ahead and not yet taken: reading stops there until the next epoch takes them,
/// so no more than this (about 1 MB of the reference events a chunk, and their columns) is
/// held however large the next epoch's files.
pub const READ_AHEAD_CHUNKS: usize = 8;

/// A decoded chunk, and the CPU time the reading thread spent on it (reading and decoding).
type Item = (DecodedChunk, Duration);

/// Files being read ahead of the plan that will name them.
pub struct ReadAhead {
    files: Vec<InputFile>,
    /// In a mutex only so that the runner holding it may be shared (a receiver is not `Sync`).
    chunks: Mutex<Receiver<Item>>,
    /// Set when what is read is no longer wanted: the thread stops at its next range.
    stop: Arc<AtomicBool>,
    /// Set by the thread when it is done: tests wait for it.
    #[cfg(test)]
    done: Arc<AtomicBool>,
}

/// What the epoch took of what was read ahead (of files or of a Kafka source).
#[derive(Debug, Clone, Copy, Default)]
pub struct TakenAhead {
    /// CPU time the reading thread spent on the chunks taken.
    pub read: Duration,
    /// Records in the chunks taken.
    pub records: u64,
}

impl ReadAhead {
    /// Starts reading and decoding `files` with `reader` on a thread of its own, within
    /// `runtime` (an object store's reads run on it).
    pub fn start(
        reader: FileReader,
        decoder: Arc<JsonDecoder>,
        files: Vec<InputFile>,
        chunk: usize,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let (sender, chunks) = sync_channel(READ_AHEAD_CHUNKS);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_files = files.clone();
        let thread_stop = stop.clone();
        #[cfg(test)]
        let (done, thread_done) = {
            let done = Arc::new(AtomicBool::new(false));
            (done.clone(), done)
        };
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                lowest_priority();
                read(
                    &reader,
                    &decoder,
                    &thread_files,
                    chunk,
                    &thread_stop,
                    &sender,
                );
                #[cfg(test)]
                thread_done.store(true, Ordering::Release);
            })?;
        Ok(Self {
            files,
            chunks: Mutex::new(chunks),
            stop,
            #[cfg(test)]
            done,
        })
    }

    /// Whether it reads what `files` plans, exactly.
    pub fn reads(&self, files: &[InputFile]) -> bool {
        self.files == files
    }

    /// Hands on, in order, the chunks decoded so far, and stops the reading: answers what
    /// was taken and where the epoch reads on from. Never waits for the thread.
    pub fn take(self, mut on_chunk: impl FnMut(DecodedChunk)) -> (TakenAhead, Resume) {
        self.stop.store(true, Ordering::Relaxed);
        let mut taken = TakenAhead::default();
        let mut resume = Resume::START;
        let chunks = self.chunks.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok((chunk, worked)) = chunks.try_recv() {
            let Some(end) = chunk.chunk.end else {
                break;
            };
            taken.read += worked;
            taken.records += chunk.chunk.records.len() as u64;
            resume = end;
            on_chunk(chunk);
        }
        (taken, resume)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only when nothing else would.
pub(super) fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter it is given; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        // It then competes as any thread does, which costs speed, not correctness.
        tracing::debug!(
            "reading ahead at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The reading thread: reads and decodes `files` chunk by chunk into `sender` until done,
/// stopped, or no one takes them any more. An error ends it: the epoch reads the rest itself
/// and meets the error there, if it is one still.
fn read(
    reader: &FileReader,
    decoder: &JsonDecoder,
    files: &[InputFile],
    chunk: usize,
    stop: &AtomicBool,
    sender: &SyncSender<Item>,
) {
    // CPU time, not wall time: at the lowest priority the thread waits for cores often.
    let thread_cpu_time = || weir_telemetry::process::thread_cpu_time().unwrap_or_default();
    let mut since = thread_cpu_time();
    let keep_going = || !stop.load(Ordering::Relaxed);
    let read = reader.read(files, chunk, keep_going, |records| {
        let decoded = DecodedChunk::decode(records, decoder);
        let now = thread_cpu_time();
        if sender.send((decoded, now.saturating_sub(since))).is_err() {
            // The next epoch took what it wanted, read other files, or the executor stopped.
            stop.store(true, Ordering::Relaxed);
        }
        since = now;
    });
    if let Err(e) = read {
        if keep_going() {
            tracing::debug!("reading ahead stopped: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use weir_common::checkpoint::InputFile;
    use weir_common::decode::JsonDecoder;

    use super::*;

    /// A chunk as the epoch sees it: each record's file and line, the numbers decoded from
    /// the good ones, and the reasons of the bad.
    type Seen = (Vec<(i32, i64)>, Vec<i64>, Vec<(usize, String)>);

    fn seen(chunk: DecodedChunk) -> Seen {
        let records = chunk
            .chunk
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        let numbers = chunk
            .decoded
            .batches
            .iter()
            .flat_map(|b: &RecordBatch| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        (records, numbers, chunk.decoded.bad)
    }

    struct Files {
        _dir: tempfile::TempDir,
        reader: FileReader,
        files: Vec<InputFile>,
        decoder: Arc<JsonDecoder>,
    }

    /// `lines` lines in each of two files, one in 50 of them bad.
    fn files(lines: usize) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for f in 0..2 {
            let text: String = (0..lines)
                .map(|i| match i % 50 {
                    7 => "not json\n".to_string(),
                    31 => "{\"n\":\"x\"}\n".to_string(),
                    _ => format!("{{\"n\":{},\"other\":[1,2]}}\n", f * 100_000 + i),
                })
                .collect();
            let name = format!("f{f}.jsonl");
            std::fs::write(dir.path().join(&name), &text).unwrap();
            files.push(InputFile {
                path: name,
                bytes: text.len() as u64,
            });
        }
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let location =
            weir_storage::location::open(url.as_str().trim_end_matches('/'), &Default::default())
                .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        Files {
            _dir: dir,
            reader: FileReader::new(location, 1 << 20),
            files,
            decoder: Arc::new(JsonDecoder::new(schema, 1 << 20)),
        }
    }

    impl Files {
        /// What the epoch sees reading the files itself.
        fn read(&self, chunk: usize) -> Vec<Seen> {
            let mut out = Vec::new();
            self.reader
                .read(
                    &self.files,
                    chunk,
                    || true,
                    |c| out.push(seen(DecodedChunk::decode(c, &self.decoder))),
                )
                .unwrap();
            out
        }

        fn ahead(&self, files: Vec<InputFile>, chunk: usize) -> ReadAhead {
            ReadAhead::start(
                self.reader.clone(),
                self.decoder.clone(),
                files,
                chunk,
                tokio::runtime::Handle::current(),
            )
            .unwrap()
        }
    }

    fn wait_until_done(ahead: &ReadAhead) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ahead.done.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "reading ahead did not end"
            );
            std::thread::yield_now();
        }
    }

    /// What an epoch sees taking what `ahead` read and reading the rest of `f`'s files.
    fn take_and_read_on(f: &Files, ahead: ReadAhead, chunk: usize) -> (Vec<Seen>, TakenAhead) {
        let mut got = Vec::new();
        let (taken, resume) = ahead.take(|c| got.push(seen(c)));
        f.reader
            .read_from(
                &f.files,
                resume,
                chunk,
                || true,
                |c| got.push(seen(DecodedChunk::decode(c, &f.decoder))),
            )
            .unwrap();
        (got, taken)
    }

    /// Files read ahead whole, or taken part way through their reading, or before anything
    /// was read: the epoch sees what reading them itself shows it, chunk for chunk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_epoch_sees_what_reading_itself_shows() {
        let f = files(1000);
        // 2 000 lines in 4 chunks, all read before they are taken.
        let chunk = 500;
        let expected = f.read(chunk);
        let ahead = f.ahead(f.files.clone(), chunk);
        wait_until_done(&ahead);
        let (got, taken) = take_and_read_on(&f, ahead, chunk);
        assert_eq!(got, expected);
        assert_eq!(taken.records, 2000);

        // 100 chunks of 20 lines: at most READ_AHEAD_CHUNKS + 1 of them are read before they
        // are taken, wherever the thread is when they are.
        let chunk = 20;
        let expected = f.read(chunk);
        for _ in 0..20 {
            let ahead = f.ahead(f.files.clone(), chunk);
            let (got, taken) = take_and_read_on(&f, ahead, chunk);
            assert_eq!(got.len(), 100);
            assert!(got == expected);
            assert!(
                taken.records <= ((READ_AHEAD_CHUNKS + 1) * chunk) as u64,
                "{taken:?}"
            );
        }
    }

    /// Which files are read ahead is told exactly; a file shorter than planned ends the
    /// reading ahead, and the epoch that reads on meets the error itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plans_and_errors() {
        let f = files(100);
        let ahead = f.ahead(f.files.clone(), 64);
        assert!(ahead.reads(&f.files));
        assert!(!ahead.reads(&f.files[..1]));
        let mut moved = f.files.clone();
        moved[1].bytes -= 1;
        assert!(!ahead.reads(&moved));

        let mut planned = f.files.clone();
        planned[1].bytes += 10;
        let ahead = f.ahead(planned.clone(), 64);
        wait_until_done(&ahead);
        let mut chunks = 0;
        let (taken, resume) = ahead.take(|_| chunks += 1);
        // The first file's first 64 lines, then the error.
        assert_eq!((chunks, taken.records), (1, 64));
        let short = f
            .reader
            .read_from(&planned, resume, 64, || true, |_| {})
            .unwrap_err();
        assert!(short.to_string().contains("f1.jsonl"), "{short}");
    }
}
