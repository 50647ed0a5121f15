//! The Kafka consumer's queue read many messages per call (librdkafka's
//! `rd_kafka_consume_batch_queue`). rust-rdkafka's `poll` hands over one message per call, and
//! each call reads the clock, wraps an event and allocates: at a million records a second that
//! was a large part of an executor's time (docs/benchmarks.md).

use std::ptr::NonNull;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

/// A handle on a consumer's queue; it must be dropped before the consumer it came from.
pub struct ConsumerQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Room for the messages of one call.
    slots: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queues may be used from any thread; the handle is used by one at a time
// (`&mut self`).
unsafe impl Send for ConsumerQueue {}
unsafe impl Sync for ConsumerQueue {}

/// One message of a batch, read in place.
pub enum Polled<'a> {
    Message {
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    },
    /// The partition's end was reached (`enable.partition.eof`).
    PartitionEof(i32),
}

impl ConsumerQueue {
    pub fn of<C: ConsumerContext>(consumer: &BaseConsumer<C>, batch: usize) -> Option<Self> {
        // SAFETY: the client pointer is valid while the consumer lives, and the queue handle
        // holds its own reference on the queue until destroyed.
        let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        Some(Self {
            queue: NonNull::new(queue)?,
            slots: vec![std::ptr::null_mut(); batch.max(1)],
        })
    }

    /// Waits up to `timeout_ms` for messages and hands each of those that came to `each`, in
    /// order; a consumer error other than a partition's end stops and is answered.
    pub fn poll_batch(
        &mut self,
        timeout_ms: i32,
        mut each: impl FnMut(Polled<'_>),
    ) -> Result<usize, KafkaError> {
        // SAFETY: `slots` has room for `slots.len()` message pointers.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.slots.as_mut_ptr(),
                self.slots.len(),
            )
        };
        let Ok(count) = usize::try_from(got) else {
            // SAFETY: reads the calling thread's last error.
            let code = unsafe { rd::rd_kafka_last_error() };
            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code)));
        };
        // Destroys every message of the call, however the loop below ends.
        let batch = Batch(&self.slots[..count]);
        for &message in batch.0 {
            // SAFETY: librdkafka answered `count` valid messages, alive until destroyed.
            let m = unsafe { &*message };
            if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                if m.err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    each(Polled::PartitionEof(m.partition));
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

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the handle was obtained from `rd_kafka_queue_get_consumer` and is released
        // once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}
