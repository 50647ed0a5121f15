//! What the driver and executors share: the job spec, schemas and decoding, windows, aggregate
//! functions and their partial states, key hashing and key groups, checkpoint records.
//! Nothing here touches the network or starts a process.
//!
//! - `job`: the job file, its SQL and its checks;
//! - `data`: schemas, values read from Arrow columns, the output tables' schemas;
//! - `decode`: JSON records into Arrow batches;
//! - `query`: windows, aggregate functions and their partials, key groups;
//! - `checkpoint`: the records of the epoch protocol;
//! - `testing`: fault points, the property tests' budget, loopback ports.

pub mod checkpoint;
pub mod data;
pub mod decode;
pub mod job;
pub mod query;
pub mod testing;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
