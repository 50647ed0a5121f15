//! The byte ranges of a file source's files, fetched in order: from a local directory mapped
//! into memory (else with positioned reads into reused buffers), from an object store as
//! requests running ahead.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use weir_common::checkpoint::InputFile;
use weir_storage::location::{Location, StorageError};

use crate::buffer_pool::BufferPool;
use crate::input::mapped;
use crate::input::read_ahead::READ_AHEAD_CHUNKS;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("reading a file range failed: {0}")]
    Task(String),
}

pub type Fetched = Result<Bytes, FetchError>;

/// A range of file `.0` (its index in the epoch's list).
pub type FileRange = (usize, Range<u64>);

/// How ranges are fetched.
#[derive(Debug, Clone, Copy)]
pub enum Fetch {
    /// Positioned reads of the local files, one at a time.
    Local,
    /// Object-store requests, up to this many ahead of the range being used.
    Store { ahead: usize },
}

/// The ranges of an epoch, fetched in order.
pub enum Ranges<'a, I> {
    Local(LocalRanges<'a, I>),
    Store(StoreRanges<'a, I>),
}

impl<'a, I: Iterator<Item = FileRange>> Ranges<'a, I> {
    pub fn new(
        fetch: Fetch,
        location: &'a Location,
        files: &'a [InputFile],
        ranges: I,
        pool: &'a BufferPool,
    ) -> Self {
        match fetch {
            Fetch::Local => Ranges::Local(LocalRanges {
                location,
                files,
                ranges,
                pool,
                open: None,
            }),
            Fetch::Store { ahead } => Ranges::Store(StoreRanges {
                location,
                runtime: tokio::runtime::Handle::current(),
                files,
                ranges,
                ahead,
                in_flight: VecDeque::new(),
            }),
        }
    }

    /// The next range's file index and bytes, waiting for them.
    pub fn next_range(&mut self) -> Option<(usize, Fetched)> {
        match self {
            Ranges::Local(r) => r.next_range(),
            Ranges::Store(r) => r.next_range(),
        }
    }
}

/// The pool of a file source's local reads: a chunk holds slices of two ranges at most, and
/// the chunks read ahead of the next epoch wait with theirs.
pub fn local_read_pool() -> BufferPool {
    BufferPool::new(4 + READ_AHEAD_CHUNKS, usize::MAX)
}

pub struct LocalRanges<'a, I> {
    location: &'a Location,
    files: &'a [InputFile],
    ranges: I,
    pool: &'a BufferPool,
    /// The file being read, by index.
    open: Option<(usize, PathBuf, File)>,
}

impl<I: Iterator<Item = FileRange>> LocalRanges<'_, I> {
    fn next_range(&mut self) -> Option<(usize, Fetched)> {
        let (index, range) = self.ranges.next()?;
        Some((index, self.read(index, range)))
    }

    fn read(&mut self, index: usize, range: Range<u64>) -> Fetched {
        let (_, path, file) = match self.open.take() {
            Some(open) if open.0 == index => self.open.insert(open),
            _ => {
                let rel = &self.files[index].path;
                let path = self
                    .location
                    .local_file(rel)
                    .ok_or_else(|| FetchError::Io {
                        path: self.location.display(rel),
                        source: std::io::Error::other("not a local file"),
                    })?;
                let file = File::open(&path).map_err(|source| FetchError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                self.open.insert((index, path, file))
            }
        };
        let len = usize::try_from(range.end - range.start)
            .map_err(|e| FetchError::Task(e.to_string()))?;
        let io = |source| FetchError::Io {
            path: path.display().to_string(),
            source,
        };
        // A range past the file's end would map pages that fault when read.
        if file.metadata().map_err(io)?.len() < range.end {
            return Err(io(shorter_than_planned(range.end)));
        }
        if let Some(bytes) = mapped::map(file, range.clone()) {
            return Ok(bytes);
        }
        let mut buffer = self.pool.take();
        // Only what the buffer did not hold before is zeroed: the read overwrites it all.
        buffer.resize(len, 0);
        if let Err(source) = file.read_exact_at(&mut buffer, range.start) {
            self.pool.give_back(buffer);
            let source = if source.kind() == std::io::ErrorKind::UnexpectedEof {
                shorter_than_planned(range.end)
            } else {
                source
            };
            return Err(io(source));
        }
        Ok(self.pool.share(buffer, len))
    }
}

fn shorter_than_planned(end: u64) -> std::io::Error {
    std::io::Error::other(format!(
        "the file is shorter than the {end} bytes planned for it (files must not change once listed)"
    ))
}

/// Ranges fetched from an object store with up to `ahead` of them in flight, each in its own
/// task; those still in flight when it is dropped (an abandoned run, a failed read) are
/// cancelled.
pub struct StoreRanges<'a, I> {
    location: &'a Location,
    runtime: tokio::runtime::Handle,
    files: &'a [InputFile],
    ranges: I,
    ahead: usize,
    in_flight: VecDeque<(usize, tokio::task::JoinHandle<Fetched>)>,
}

impl<I: Iterator<Item = FileRange>> StoreRanges<'_, I> {
    fn start(&mut self, index: usize, range: Range<u64>) {
        let store = self.location.store.clone();
        let rel = self.files[index].path.clone();
        let path = self.location.path(&rel);
        let location = self.location.clone();
        let task = self.runtime.spawn(async move {
            let planned = range.end - range.start;
            let bytes = store
                .get_range(&path, range.clone())
                .await
                .map_err(|e| FetchError::from(location.store_error(&rel, e)))?;
            // A store may answer a range past the end with what there is.
            if bytes.len() as u64 != planned {
                return Err(FetchError::Io {
                    path: location.display(&rel),
                    source: shorter_than_planned(range.end),
                });
            }
            Ok(bytes)
        });
        self.in_flight.push_back((index, task));
    }

    fn next_range(&mut self) -> Option<(usize, Fetched)> {
        while self.in_flight.len() <= self.ahead {
            match self.ranges.next() {
                Some((index, range)) => self.start(index, range),
                None => break,
            }
        }
        let (index, task) = self.in_flight.pop_front()?;
        let fetched = match self.runtime.block_on(task) {
            Ok(fetched) => fetched,
            Err(e) => Err(FetchError::Task(e.to_string())),
        };
        Some((index, fetched))
    }
}

impl<I> Drop for StoreRanges<'_, I> {
    fn drop(&mut self) {
        for (_, task) in &self.in_flight {
            task.abort();
        }
    }
}
