//! Buffers that records are sliced out of, taken back for the next read once the last slice
//! of one is dropped: a fresh buffer a read was zeroed and faulted in page by page (in the
//! kernel's copy into it, or the decompressor's writes) before the bytes it holds were
//! written, and freed large buffers go back to the system at once.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// Buffers kept for reuse, shared by the readers that slice them and whatever holds the
/// slices.
#[derive(Debug, Clone)]
pub struct BufferPool {
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
    /// How many buffers it keeps, and the largest one it keeps.
    keep: usize,
    max_bytes: usize,
}

impl BufferPool {
    pub fn new(keep: usize, max_bytes: usize) -> Self {
        Self {
            kept: Arc::default(),
            keep,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many buffers it holds for reuse now.
    pub fn kept(&self) -> usize {
        self.lock().len()
    }

    /// A buffer to read into: one given back (its length and bytes as they were left), or a
    /// new empty one.
    pub fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    /// `buffer` kept for a later `take`, unless the pool is full or it is too large to keep.
    pub fn give_back(&self, buffer: Vec<u8>) {
        if buffer.capacity() <= self.max_bytes {
            let mut kept = self.lock();
            if kept.len() < self.keep {
                kept.push(buffer);
            }
        }
    }

    /// The first `len` bytes of `buffer` (a buffer taken from this pool) as shared bytes;
    /// the buffer comes back to the pool when the last slice of them is dropped.
    pub fn share(&self, buffer: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Pooled {
            len: len.min(buffer.len()),
            buffer,
            pool: self.clone(),
        })
    }
}

/// A pool's buffer while slices of its first `len` bytes live.
struct Pooled {
    buffer: Vec<u8>,
    len: usize,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_last_slice_is_dropped() {
        let pool = BufferPool::new(2, 1 << 10);
        let mut buffer = pool.take();
        buffer.extend_from_slice(b"hello world");
        let address = buffer.as_ptr();
        let shared = pool.share(buffer, 5);
        let slice = shared.slice(1..3);
        assert_eq!(&shared[..], b"hello");
        drop(shared);
        assert!(pool.take().is_empty(), "a slice still holds the buffer");
        assert_eq!(&slice[..], b"el");
        drop(slice);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "the same buffer is taken again");
        assert_eq!(&again[..], b"hello world");
    }

    #[test]
    fn a_full_pool_or_a_large_buffer_is_not_kept() {
        let pool = BufferPool::new(1, 16);
        pool.give_back(Vec::with_capacity(64));
        assert_eq!(pool.take().capacity(), 0, "over max_bytes");
        pool.give_back(Vec::with_capacity(8));
        pool.give_back(Vec::with_capacity(16));
        assert_eq!(pool.take().capacity(), 8);
        assert_eq!(pool.take().capacity(), 0, "only one is kept");
    }
}
