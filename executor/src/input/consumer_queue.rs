//! librdkafka's queues read many messages per call (`rd_kafka_consume_batch_queue`).
//! rust-rdkafka's `poll` hands over one message per call, and each call reads the clock, wraps
//! an event and allocates: at a million records a second that was a large part of an
//! executor's time (docs/benchmarks.md).
//!
//! A read takes each partition from its own queue, so that it takes only the partitions it
//! still needs and librdkafka's per-partition prefetch limit holds the rest back (with one
//! shared queue, records past a read's end had to be taken out to reach the others').

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

/// A handle on one of a consumer's queues, waking a [`Wake`] when something arrives in it while
/// empty; it must be dropped before the consumer it came from and the `Wake` it wakes.
pub struct Queue {
    queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: librdkafka's queues may be used from any thread; the handle is used by one at a time
// (`&mut self`).
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

/// One message of a batch, read in place.
pub enum Polled<'a> {
    Message {
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    },
    /// The partition's end was reached (`enable.partition.eof`).
    PartitionEof,
}

/// Room for the messages of one call, shared by the queues of a reader.
pub struct Slots(Vec<*mut rd::rd_kafka_message_t>);

// SAFETY: the slots hold no message between calls (each call destroys what it took).
unsafe impl Send for Slots {}
unsafe impl Sync for Slots {}

impl Slots {
    pub fn new(len: usize) -> Self {
        Self(vec![std::ptr::null_mut(); len.max(1)])
    }
}

/// The socket librdkafka writes a byte to when one of the queues it was given to goes from
/// empty to not empty, so that a read waiting on many queues sleeps until one has something.
pub struct Wake {
    /// The end the queues write to: non-blocking, so a full socket never stalls librdkafka's
    /// fetch thread (a byte is already waiting then).
    writer: UnixStream,
    reader: UnixStream,
}

impl Wake {
    pub fn new() -> std::io::Result<Self> {
        let (writer, reader) = UnixStream::pair()?;
        writer.set_nonblocking(true)?;
        Ok(Self { writer, reader })
    }

    /// Waits up to `timeout` for a wake-up, taking every byte written so far.
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.reader
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut bytes = [0u8; 256];
        match self.reader.read(&mut bytes) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Queue {
    /// The consumer's own queue: with every partition read from its own queue, what arrives
    /// here is the client's errors.
    pub fn consumer<C: ConsumerContext>(consumer: &BaseConsumer<C>, wake: &Wake) -> Option<Self> {
        // SAFETY: the client pointer is valid while the consumer lives, and the queue handle
        // holds its own reference on the queue until destroyed.
        let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        Some(Self::waking(NonNull::new(queue)?, wake))
    }

    /// The queue of one partition, taken out of the consumer's queue. Call it before the
    /// partition is assigned: librdkafka keeps a queue the application forwarded (here to
    /// nowhere) as it is when it assigns.
    pub fn partition<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &std::ffi::CStr,
        partition: i32,
        wake: &Wake,
    ) -> Option<Self> {
        // SAFETY: as above; `topic` is a valid C string for the call.
        let queue = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(queue)?;
        // SAFETY: a valid handle; a null destination ends the forwarding.
        unsafe { rd::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut()) };
        Some(Self::waking(queue, wake))
    }

    fn waking(queue: NonNull<rd::rd_kafka_queue_t>, wake: &Wake) -> Self {
        // SAFETY: a valid handle; librdkafka copies the one-byte payload, and writes to the fd
        // only until the wake-up is turned off again, in `drop`, before the socket closes.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(
                queue.as_ptr(),
                wake.writer.as_raw_fd(),
                b"w".as_ptr().cast(),
                1,
            )
        };
        Self { queue }
    }

    /// Waits up to `timeout_ms` for messages and hands each of those that came, at most `max`,
    /// to `each`, in order; a consumer error other than a partition's end stops and is
    /// answered.
    pub fn poll_batch(
        &mut self,
        slots: &mut Slots,
        max: usize,
        timeout_ms: i32,
        mut each: impl FnMut(Polled<'_>),
    ) -> Result<usize, KafkaError> {
        let len = max.clamp(1, slots.0.len());
        // SAFETY: `slots` has room for `len` message pointers.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                slots.0.as_mut_ptr(),
                len,
            )
        };
        let Ok(count) = usize::try_from(got) else {
            // SAFETY: reads the calling thread's last error.
            let code = unsafe { rd::rd_kafka_last_error() };
            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code)));
        };
        // Destroys every message of the call, however the loop below ends.
        let batch = Batch(&slots.0[..count]);
        for &message in batch.0 {
            // SAFETY: librdkafka answered `count` valid messages, alive until destroyed.
            let m = unsafe { &*message };
            if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                if m.err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    each(Polled::PartitionEof);
                    continue;
                }
                return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(
                    m.err,
                )));
            }
            // SAFETY: key and payload point at `key_len` and `len` bytes owned by the message.
            let (key, payload) = unsafe { (bytes(m.key, m.key_len), bytes(m.payload, m.len)) };
            each(Polled::Message {
                partition: m.partition,
                offset: m.offset,
                key,
                payload,
            });
        }
        Ok(count)
    }
}

/// # Safety
/// `ptr` is null or points at `len` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(ptr as *const u8, len))
    }
}

struct Batch<'a>(&'a [*mut rd::rd_kafka_message_t]);

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for &message in self.0 {
            // SAFETY: each message came from one consume call and is destroyed once.
            unsafe { rd::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: the handle came from librdkafka and is released once. The wake-up is turned
        // off first, under the queue's lock: the queue may outlive this handle (a partition's
        // lives with the partition), and must not write to the socket once it closes.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(self.queue.as_ptr(), -1, std::ptr::null(), 0);
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}
