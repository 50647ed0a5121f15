//! Reads a file source's files whole, as JSON lines: every line is a record whose partition is
//! the file's index in the epoch's list and whose offset is its line number (from 1). Blank
//! lines are skipped; a last line without a newline counts.

use bytes::Bytes;
use weir_common::checkpoint::InputFile;
use weir_storage::location::Location;

use crate::buffer_pool::BufferPool;
use crate::input::range_fetch::{local_read_pool, Fetch, FetchError, Ranges};
use crate::input::{Chunk, ChunkFill, Record};

#[derive(Debug, thiserror::Error)]
pub enum FileReadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the run was abandoned")]
    Abandoned,
}

#[derive(Clone)]
pub struct FileReader {
    location: Location,
    /// Lines longer than this are cut to it (they go to the dead letter).
    max_line: usize,
    /// Buffers of local reads, reused from epoch to epoch.
    pool: BufferPool,
}

/// Bytes fetched per request from an object store: large, as each is a round trip.
const REMOTE_RANGE: u64 = 8 << 20;
/// Ranges an object store is asked for ahead of the one being cut into lines, so that round
/// trips overlap decoding.
const REMOTE_AHEAD: usize = 2;
/// Bytes of a local file mapped, or read when it cannot be mapped, at a time: a read small
/// enough to stay in the CPU's cache (8 MiB reads, zeroed and faulted in afresh each time, cost
/// 5 % more CPU per event).
const LOCAL_RANGE: u64 = 1 << 20;

/// Where reading a list of files goes on from: the start of a line of one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The file's index in the list.
    pub file: usize,
    /// The line's first byte.
    pub byte: u64,
    /// The line's number.
    pub line: i64,
}

impl Resume {
    pub const START: Resume = Resume {
        file: 0,
        byte: 0,
        line: 1,
    };
}

/// Cuts a file's bytes into lines as they arrive. A line longer than `max` bytes keeps its
/// first `max` (for the dead letter) and counts the rest as it streams by: however long a
/// line, no more than `max` bytes of it are ever held beyond the range being read. Each line
/// is handed on with where the line after it starts.
struct Lines {
    /// The file's index in the list, and as a record's partition.
    index: usize,
    file: i32,
    /// The offset in the file of the next byte fed.
    at: u64,
    max: usize,
    /// The start of a line whose end has not arrived yet (at most `max` bytes of it).
    pending: Vec<u8>,
    /// Bytes of the pending line past the first `max`, not kept.
    dropped: u64,
    /// Number of the next line.
    next: i64,
}

impl Lines {
    /// Lines of the file at `index` of the list, from `from` (the start of a line).
    fn new(index: usize, max: usize, from: Resume) -> Self {
        let from = if from.file == index {
            from
        } else {
            Resume {
                file: index,
                ..Resume::START
            }
        };
        Self {
            index,
            file: file_number(index),
            at: from.byte,
            max,
            pending: Vec::new(),
            dropped: 0,
            next: from.line,
        }
    }

    /// Hands on a line of `length` bytes, of which `line` holds the first (all of them unless
    /// the line is longer than `max`), and the next line starting at `end`.
    fn line(
        &mut self,
        mut line: Bytes,
        length: u64,
        end: u64,
        out: &mut impl FnMut(Record, Resume),
    ) {
        let number = self.next;
        self.next += 1;
        let cut_from = (length > self.max as u64).then_some(length);
        if cut_from.is_some() {
            line.truncate(self.max);
        } else {
            if line.ends_with(b"\r") {
                line.truncate(line.len() - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                return;
            }
        }
        let next = Resume {
            file: self.index,
            byte: end,
            line: number + 1,
        };
        let record = Record {
            partition: self.file,
            offset: number,
            key: None,
            value: Some(line),
            cut_from,
        };
        out(record, next);
    }

    /// Adds `bytes` to the pending line, keeping no more than `max` of it.
    fn keep(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.pending.len()).min(bytes.len());
        self.pending.extend_from_slice(&bytes[..room]);
        self.dropped += (bytes.len() - room) as u64;
    }

    /// Hands on the pending line with `tail` (the rest of it) added; the next line starts
    /// at `end`.
    fn end_pending(&mut self, tail: &[u8], end: u64, out: &mut impl FnMut(Record, Resume)) {
        self.keep(tail);
        let whole = std::mem::take(&mut self.pending);
        let length = whole.len() as u64 + std::mem::take(&mut self.dropped);
        self.line(Bytes::from(whole), length, end, out);
    }

    /// Cuts `piece` (the file's bytes from `at` on) into lines; a line inside it is a slice
    /// of it, not a copy.
    fn feed(&mut self, piece: &Bytes, out: &mut impl FnMut(Record, Resume)) {
        let base = self.at;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', piece) {
            let next = base + end as u64 + 1;
            if self.pending.is_empty() && self.dropped == 0 {
                self.line(piece.slice(start..end), (end - start) as u64, next, out);
            } else {
                self.end_pending(&piece[start..end], next, out);
            }
            start = end + 1;
        }
        self.keep(&piece[start..]);
        self.at = base + piece.len() as u64;
    }

    fn finish(mut self, out: &mut impl FnMut(Record, Resume)) {
        let end = self.at;
        self.end_pending(&[], end, out);
    }
}

/// Gathers records into chunks as full as [`ChunkFill`] allows, each with the ranges its lines
/// were cut from.
struct Chunker<F> {
    size: usize,
    current: Chunk,
    fill: ChunkFill,
    /// The range being cut into lines.
    piece: Option<Bytes>,
    on_chunk: F,
}

impl<F: FnMut(Chunk)> Chunker<F> {
    fn new(size: usize, on_chunk: F) -> Self {
        Self {
            size,
            current: Chunk::with_capacity(size),
            fill: ChunkFill::new(size),
            piece: None,
            on_chunk,
        }
    }

    /// Records pushed from now on may be slices of `piece`.
    fn start_piece(&mut self, piece: &Bytes) {
        self.current.buffers.push(piece.clone());
        self.piece = Some(piece.clone());
    }

    /// Adds `record`, after which reading goes on from `next`.
    fn push(&mut self, record: Record, next: Resume) {
        let full = self.fill.add(record.bytes());
        self.current.records.push(record);
        self.current.end = Some(next);
        if full {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.current.records.is_empty() {
            return;
        }
        let mut next = Chunk::with_capacity(self.size);
        next.buffers.extend(self.piece.clone());
        self.fill.clear();
        (self.on_chunk)(std::mem::replace(&mut self.current, next));
    }
}

impl FileReader {
    pub fn new(location: Location, max_line: usize) -> Self {
        Self {
            location,
            max_line,
            pool: local_read_pool(),
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
        self.read_from(files, Resume::START, chunk, keep_going, on_chunk)
    }

    /// [`Self::read`] from `from` on (a chunk's `end`): the lines before it are not read.
    pub fn read_from(
        &self,
        files: &[InputFile],
        from: Resume,
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
        self.read_in_ranges(files, from, chunk, (range, fetch), keep_going, on_chunk)
    }

    /// [`Self::read_from`] in ranges of `range` bytes, fetched as `fetch` says.
    fn read_in_ranges(
        &self,
        files: &[InputFile],
        from: Resume,
        chunk: usize,
        (range, fetch): (u64, Fetch),
        keep_going: impl Fn() -> bool,
        on_chunk: impl FnMut(Chunk),
    ) -> Result<(), FileReadError> {
        // The planned size, read in ranges: a replay reads the same bytes even if the file
        // grew since.
        let ranges = files
            .iter()
            .enumerate()
            .skip(from.file)
            .flat_map(move |(index, file)| {
                let first = if index == from.file { from.byte } else { 0 };
                (first..file.bytes)
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
            if lines.as_ref().is_some_and(|l| l.index != index) {
                if let Some(done) = lines.take() {
                    done.finish(&mut |r, next| chunks.push(r, next));
                }
            }
            let current = lines.get_or_insert_with(|| Lines::new(index, self.max_line, from));
            chunks.start_piece(&piece);
            current.feed(&piece, &mut |r, next| chunks.push(r, next));
        }
        if let Some(done) = lines.take() {
            done.finish(&mut |r, next| chunks.push(r, next));
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
    use crate::input::CHUNK_BYTES;

    fn split(pieces: &[&str]) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let mut lines = Lines::new(0, 1 << 20, Resume::START);
        for p in pieces {
            lines.feed(&Bytes::copy_from_slice(p.as_bytes()), &mut |r, _| {
                out.push(r)
            });
        }
        lines.finish(&mut |r, _| out.push(r));
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

    /// Lines longer than the limit, whole in one piece, across many pieces and at the end of
    /// the file without a newline, arrive cut to the limit with their length; no more than the
    /// limit is ever held of a pending line; the lines around them arrive whole.
    #[test]
    fn lines_longer_than_the_limit_are_cut_as_they_stream_by() {
        let max = 16;
        let long = "x".repeat(1000);
        let text = format!(
            "{{\"a\":1}}\n{long}\n{{\"b\":2}}\r\n{}\n\n{long}",
            "y".repeat(17)
        );
        for piece_size in [1, 3, 7, 16, 17, 64, 5000] {
            let mut out = Vec::new();
            let mut lines = Lines::new(0, max, Resume::START);
            for piece in text.as_bytes().chunks(piece_size) {
                lines.feed(&Bytes::copy_from_slice(piece), &mut |r, _| out.push(r));
                assert!(lines.pending.len() <= max, "pieces of {piece_size}");
            }
            lines.finish(&mut |r, _| out.push(r));
            let got: Vec<(i64, String, Option<u64>)> = out
                .into_iter()
                .map(|r| {
                    let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                    (r.offset, value, r.cut_from)
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (1, "{\"a\":1}".to_string(), None),
                    (2, "x".repeat(max), Some(1000)),
                    (3, "{\"b\":2}".to_string(), None),
                    (4, "y".repeat(max), Some(17)),
                    (6, "x".repeat(max), Some(1000)),
                ],
                "pieces of {piece_size}"
            );
        }
    }

    /// What the splitter must hand on for `text`, computed from the whole text at once:
    /// (line number, kept bytes, length when cut).
    fn lines_of(text: &[u8], max: usize) -> Vec<(i64, Vec<u8>, Option<u64>)> {
        let mut out = Vec::new();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let number = i as i64 + 1;
            if line.len() > max {
                out.push((number, line[..max].to_vec(), Some(line.len() as u64)));
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push((number, line.to_vec(), None));
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(weir_common::testing::fuzzing::config(1_000))]

        /// The file line splitter on any bytes (newlines, carriage returns and blanks among
        /// them), cut into pieces anywhere, with any limit: the lines of the whole text, and
        /// never more than the limit held of a pending line.
        #[test]
        fn any_bytes_in_any_pieces_split_as_the_whole_text(
            text in proptest::collection::vec(proptest::prop_oneof![
                3 => proptest::num::u8::ANY,
                1 => proptest::strategy::Just(b'\n'),
                1 => proptest::strategy::Just(b'\r'),
                1 => proptest::strategy::Just(b' '),
            ], 0..400),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..8),
            max in 1usize..64,
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            at.push(0);
            at.push(text.len());
            at.sort_unstable();
            let mut out = Vec::new();
            let mut lines = Lines::new(0, max, Resume::START);
            for pair in at.windows(2) {
                let piece = Bytes::copy_from_slice(&text[pair[0]..pair[1]]);
                lines.feed(&piece, &mut |r, _| out.push(r));
                proptest::prop_assert!(lines.pending.len() <= max);
            }
            lines.finish(&mut |r, _| out.push(r));
            let got: Vec<(i64, Vec<u8>, Option<u64>)> = out
                .into_iter()
                .map(|r| (r.offset, r.value.unwrap_or_default().to_vec(), r.cut_from))
                .collect();
            proptest::prop_assert_eq!(got, lines_of(&text, max));
        }
    }

    fn local(dir: &std::path::Path) -> Location {
        let url = url::Url::from_directory_path(dir).unwrap();
        weir_storage::location::open(url.as_str().trim_end_matches('/'), &Default::default())
            .unwrap()
    }

    /// Long lines end a chunk at `CHUNK_BYTES` of lines, short of its count: a chunk
    /// holds a bounded amount whatever the lines' size, and every line arrives once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_lines_end_a_chunk_at_its_bytes_before_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let line_bytes = 300_000;
        let lines: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "{{\"n\":{i:02},\"pad\":\"{}\"}}",
                    "x".repeat(line_bytes - 20)
                )
            })
            .collect();
        let text = lines.join("\n");
        std::fs::write(dir.path().join("long.jsonl"), &text).unwrap();
        let files = vec![InputFile {
            path: "long.jsonl".into(),
            bytes: text.len() as u64,
        }];
        let reader = FileReader::new(local(dir.path()), 1 << 20);
        let mut chunks: Vec<Vec<String>> = Vec::new();
        tokio::task::block_in_place(|| {
            reader.read(
                &files,
                4096,
                || true,
                |c| {
                    chunks.push(
                        (c.records.into_iter())
                            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
                            .collect(),
                    )
                },
            )
        })
        .unwrap();
        // Each chunk ends with the line that reaches the bound.
        let per_chunk = CHUNK_BYTES.div_ceil(line_bytes);
        assert_eq!(chunks.len(), 40usize.div_ceil(per_chunk));
        assert!(chunks.iter().all(|c| c.len() <= per_chunk));
        assert!(chunks.concat() == lines);
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
        let reader = FileReader::new(local(dir.path()), 1 << 20);
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
                    Resume::START,
                    512,
                    (range, fetch),
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
                Resume::START,
                64,
                (4096, store(3)),
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
                reader.read_in_ranges(&planned, Resume::START, 512, (4096, fetch), || true, |_| {})
            });
            let message = short.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("f3.jsonl"), "{fetch:?}: {message}");
        }
    }

    /// Reading on from where any record ends finds exactly the records after it: across
    /// read ranges and files, past blank lines, CRLF, cut lines and a last line without a
    /// newline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_on_from_a_records_end_finds_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(40);
        let texts = [
            format!("{{\"a\":1}}\n\n{long}\r\n{{\"b\":2}}\r\n  \n{{\"c\":3}}"),
            String::new(),
            format!("{long}\n{{\"d\":4}}\n{{\"e\":5}}\n\n"),
        ];
        let mut files = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let name = format!("f{i}.jsonl");
            std::fs::write(dir.path().join(&name), text).unwrap();
            files.push(InputFile {
                path: name,
                bytes: text.len() as u64,
            });
        }
        let reader = FileReader::new(local(dir.path()), 16);
        type Read = (i32, i64, Vec<u8>, Option<u64>);
        let read = |from: Resume, (range, fetch): (u64, Fetch)| {
            let mut out: Vec<(Read, Resume)> = Vec::new();
            tokio::task::block_in_place(|| {
                reader.read_in_ranges(
                    &files,
                    from,
                    1,
                    (range, fetch),
                    || true,
                    |c| {
                        let end = c.end.unwrap();
                        for r in c.records {
                            let value = r.value.unwrap().to_vec();
                            out.push(((r.partition, r.offset, value, r.cut_from), end));
                        }
                    },
                )
            })
            .unwrap();
            out
        };
        for how in [
            (7, Fetch::Local),
            (LOCAL_RANGE, Fetch::Local),
            (5, Fetch::Store { ahead: 1 }),
        ] {
            let all = read(Resume::START, how);
            let lines: Vec<(i32, i64)> = all.iter().map(|(r, _)| (r.0, r.1)).collect();
            assert_eq!(
                lines,
                [(0, 1), (0, 3), (0, 4), (0, 6), (2, 1), (2, 2), (2, 3)]
            );
            for (i, (_, end)) in all.iter().enumerate() {
                let on: Vec<Read> = read(*end, how).into_iter().map(|(r, _)| r).collect();
                let rest: Vec<Read> = all[i + 1..].iter().map(|(r, _)| r.clone()).collect();
                assert_eq!(on, rest, "from {end:?}, {how:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reads_files_in_chunks_with_their_index_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "1\n2\n3\n").unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "4\n5").unwrap();
        let reader = FileReader::new(local(dir.path()), 1 << 20);
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
