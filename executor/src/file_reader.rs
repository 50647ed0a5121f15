//! Reads a file source's files whole, as JSON lines: every line is a record whose partition is
//! the file's index in the epoch's list and whose offset is its line number (from 1). Blank
//! lines are skipped; a last line without a newline counts.

use bytes::Bytes;
use weir_common::checkpoint::InputFile;
use weir_storage::location::Location;

use crate::input::{Chunk, Record};
use crate::range_fetch::{BufferPool, Fetch, FetchError, Ranges};

#[derive(Debug, thiserror::Error)]
pub enum FileReadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the run was abandoned")]
    Abandoned,
}

pub struct FileReader {
    location: Location,
    /// Buffers of local reads, reused from epoch to epoch.
    pool: BufferPool,
}

/// Bytes fetched per request from an object store: large, as each is a round trip.
const REMOTE_RANGE: u64 = 8 << 20;
/// Ranges an object store is asked for ahead of the one being cut into lines, so that round
/// trips overlap decoding.
const REMOTE_AHEAD: usize = 2;
/// Bytes read at a time from a local file: small enough to stay in the CPU's cache (8 MiB
/// reads, zeroed and faulted in afresh each time, cost 5 % more CPU per event).
const LOCAL_RANGE: u64 = 1 << 20;

/// Cuts a file's bytes into lines as they arrive.
struct Lines {
    file: i32,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    /// Number of the next line.
    next: i64,
}

impl Lines {
    fn new(file: i32) -> Self {
        Self {
            file,
            pending: Vec::new(),
            next: 1,
        }
    }

    fn line(&mut self, mut line: Bytes, out: &mut impl FnMut(Record)) {
        let number = self.next;
        self.next += 1;
        if line.ends_with(b"\r") {
            line.truncate(line.len() - 1);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out(Record {
            partition: self.file,
            offset: number,
            key: None,
            value: Some(line),
        });
    }

    /// Cuts `piece` into lines; a line inside it is a slice of it, not a copy.
    fn feed(&mut self, piece: &Bytes, out: &mut impl FnMut(Record)) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', piece) {
            if self.pending.is_empty() {
                self.line(piece.slice(start..end), out);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(&piece[start..end]);
                self.line(Bytes::from(whole), out);
            }
            start = end + 1;
        }
        self.pending.extend_from_slice(&piece[start..]);
    }

    fn finish(mut self, out: &mut impl FnMut(Record)) {
        let rest = std::mem::take(&mut self.pending);
        self.line(Bytes::from(rest), out);
    }
}

/// Gathers records into chunks of a fixed size, each with the ranges its lines were cut from.
struct Chunker<F> {
    size: usize,
    current: Chunk,
    /// The range being cut into lines.
    piece: Option<Bytes>,
    on_chunk: F,
}

impl<F: FnMut(Chunk)> Chunker<F> {
    fn new(size: usize, on_chunk: F) -> Self {
        Self {
            size,
            current: Chunk::with_capacity(size),
            piece: None,
            on_chunk,
        }
    }

    /// Records pushed from now on may be slices of `piece`.
    fn start_piece(&mut self, piece: &Bytes) {
        self.current.buffers.push(piece.clone());
        self.piece = Some(piece.clone());
    }

    fn push(&mut self, record: Record) {
        self.current.records.push(record);
        if self.current.records.len() >= self.size {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.current.records.is_empty() {
            return;
        }
        let mut next = Chunk::with_capacity(self.size);
        next.buffers.extend(self.piece.clone());
        (self.on_chunk)(std::mem::replace(&mut self.current, next));
    }
}

impl FileReader {
    pub fn new(location: Location) -> Self {
        Self {
            location,
            pool: BufferPool::default(),
        }
    }

    /// The URL of a file of the source, for dead letters.
    pub fn url(&self, path: &str) -> String {
        self.location.display(path)
    }

    /// Reads `files`, handing records over in chunks of up to `chunk`, while `keep_going`
    /// answers true. Blocks on reads (and waits for the object store on the current runtime):
    /// call it where blocking is allowed (`block_in_place`).
    pub fn read(
        &self,
        files: &[InputFile],
        chunk: usize,
        keep_going: impl Fn() -> bool,
        on_chunk: impl FnMut(Chunk),
    ) -> Result<(), FileReadError> {
        let (range, fetch) = if self.location.local_file("").is_some() {
            (LOCAL_RANGE, Fetch::Local)
        } else {
            (
                REMOTE_RANGE,
                Fetch::Store {
                    ahead: REMOTE_AHEAD,
                },
            )
        };
        self.read_in_ranges(files, chunk, range, fetch, keep_going, on_chunk)
    }

    /// [`Self::read`] in ranges of `range` bytes, fetched as `fetch` says.
    fn read_in_ranges(
        &self,
        files: &[InputFile],
        chunk: usize,
        range: u64,
        fetch: Fetch,
        keep_going: impl Fn() -> bool,
        on_chunk: impl FnMut(Chunk),
    ) -> Result<(), FileReadError> {
        // The planned size, read in ranges: a replay reads the same bytes even if the file
        // grew since.
        let ranges = files.iter().enumerate().flat_map(|(index, file)| {
            (0..file.bytes)
                .step_by(range as usize)
                .map(move |start| (index, start..file.bytes.min(start + range)))
        });
        let mut fetched = Ranges::new(fetch, &self.location, files, ranges, &self.pool);
        let mut chunks = Chunker::new(chunk, on_chunk);
        let mut lines: Option<Lines> = None;
        while let Some((index, piece)) = fetched.next_range() {
            if !keep_going() {
                return Err(FileReadError::Abandoned);
            }
            let piece = piece?;
            if lines.as_ref().is_some_and(|l| l.file != file_number(index)) {
                if let Some(done) = lines.take() {
                    done.finish(&mut |r| chunks.push(r));
                }
            }
            let current = lines.get_or_insert_with(|| Lines::new(file_number(index)));
            chunks.start_piece(&piece);
            current.feed(&piece, &mut |r| chunks.push(r));
        }
        if let Some(done) = lines.take() {
            done.finish(&mut |r| chunks.push(r));
        }
        chunks.flush();
        Ok(())
    }
}

fn file_number(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let mut lines = Lines::new(0);
        for p in pieces {
            lines.feed(&Bytes::copy_from_slice(p.as_bytes()), &mut |r| out.push(r));
        }
        lines.finish(&mut |r| out.push(r));
        out.into_iter()
            .map(|r| {
                (
                    r.offset,
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_split_across_pieces_keep_their_numbers() {
        let expected = vec![
            (1, "{\"a\":1}".to_string()),
            (3, "{\"b\":2}".to_string()),
            (4, "{\"c\":3}".to_string()),
        ];
        assert_eq!(split(&["{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}"]), expected);
        assert_eq!(
            split(&["{\"a\"", ":1}\n", "\n{\"b\":2}\r", "\n{\"c\":3}\n"]),
            expected
        );
        assert!(split(&["", "\n", "  \n"]).is_empty());
    }

    fn local(dir: &std::path::Path) -> Location {
        let url = url::Url::from_directory_path(dir).unwrap();
        weir_storage::location::open(url.as_str().trim_end_matches('/'), &Default::default())
            .unwrap()
    }

    /// Files of many read ranges, fetched ahead or not: every line arrives whole, in order,
    /// with its file and number, including the lines cut by a range's end; an abandoned read
    /// stops with ranges still in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_cut_by_read_ranges_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut expected = Vec::new();
        for (index, count) in [3_000usize, 0, 1, 2_000].into_iter().enumerate() {
            let lines: Vec<String> = (0..count)
                .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 37)))
                .collect();
            let text = lines.join("\n");
            let name = format!("f{index}.jsonl");
            std::fs::write(dir.path().join(&name), &text).unwrap();
            files.push(InputFile {
                path: name,
                bytes: text.len() as u64,
            });
            expected.extend(
                lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (index as i32, i as i64 + 1, l)),
            );
        }
        let reader = FileReader::new(local(dir.path()));
        let store = |ahead| Fetch::Store { ahead };
        let modes = [
            (4096, Fetch::Local),
            (1000, Fetch::Local),
            (LOCAL_RANGE, Fetch::Local),
            (4096, store(0)),
            (4096, store(3)),
            (1000, store(1)),
        ];
        for (range, fetch) in modes {
            let mut read = Vec::new();
            tokio::task::block_in_place(|| {
                reader.read_in_ranges(
                    &files,
                    512,
                    range,
                    fetch,
                    || true,
                    |c| {
                        read.extend(c.records.into_iter().map(|r| {
                            let value = r.value.unwrap().to_vec();
                            (r.partition, r.offset, String::from_utf8(value).unwrap())
                        }))
                    },
                )
            })
            .unwrap();
            assert_eq!(read.len(), expected.len(), "range {range}, {fetch:?}");
            assert!(read == expected, "range {range}, {fetch:?}");
        }
        let mut chunks = 0;
        let stopped = tokio::task::block_in_place(|| {
            let calls = std::cell::Cell::new(0);
            reader.read_in_ranges(
                &files,
                64,
                4096,
                store(3),
                || {
                    calls.set(calls.get() + 1);
                    calls.get() < 5
                },
                |_| chunks += 1,
            )
        });
        assert!(matches!(stopped, Err(FileReadError::Abandoned)));
        assert!(chunks > 0);

        // A file shorter than planned (truncated since) is an error, not fewer lines.
        let mut planned = files.clone();
        planned[3].bytes += 10;
        for fetch in [Fetch::Local, store(1)] {
            let short = tokio::task::block_in_place(|| {
                reader.read_in_ranges(&planned, 512, 4096, fetch, || true, |_| {})
            });
            let message = short.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("f3.jsonl"), "{fetch:?}: {message}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reads_files_in_chunks_with_their_index_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "1\n2\n3\n").unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "4\n5").unwrap();
        let reader = FileReader::new(local(dir.path()));
        let files = [
            InputFile {
                path: "a.jsonl".into(),
                bytes: 6,
            },
            InputFile {
                path: "b.jsonl".into(),
                bytes: 3,
            },
        ];
        let mut chunks = Vec::new();
        tokio::task::block_in_place(|| {
            reader.read(
                &files,
                2,
                || true,
                |c| {
                    // How many of the chunk's lines are slices of the ranges it names.
                    let sliced = c
                        .records
                        .iter()
                        .filter(|r| {
                            let line = r.value.as_deref().unwrap().as_ptr_range();
                            c.buffers.iter().any(|b| {
                                let range = b.as_ptr_range();
                                range.start <= line.start && line.end <= range.end
                            })
                        })
                        .count();
                    chunks.push((
                        c.records
                            .iter()
                            .map(|r| (r.partition, r.offset))
                            .collect::<Vec<_>>(),
                        sliced,
                    ))
                },
            )
        })
        .unwrap();
        // The last line of b has no newline: it is copied out of its range.
        assert_eq!(
            chunks,
            vec![
                (vec![(0, 1), (0, 2)], 2),
                (vec![(0, 3), (1, 1)], 2),
                (vec![(1, 2)], 0)
            ]
        );
        assert!(reader.url("b.jsonl").ends_with("/b.jsonl"));
        let stopped = tokio::task::block_in_place(|| reader.read(&files, 2, || false, |_| {}));
        assert!(matches!(stopped, Err(FileReadError::Abandoned)));
    }
}
