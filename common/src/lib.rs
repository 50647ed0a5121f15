//! What the driver and executors share: the job spec, schemas and decoding, windows, aggregate
//! functions and their partial states, key hashing and key groups, checkpoint records.
//! Nothing here touches the network or starts a process.

pub mod aggregate;
pub mod byte_order;
pub mod checkpoint;
pub mod decode;
pub mod duration;
pub mod fault;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod job;
pub mod keygroup;
pub mod loopback;
pub mod output;
pub mod schema;
pub mod value;
pub mod window;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
