//! weir's own Kafka client pieces, over plaintext connections: request framing and version
//! agreement, partition leaders, and record batches written (`weir gen --producer light`) and
//! read (the Kafka source's `client: weir`, `input::fetcher`).

pub mod batches;
pub mod connection;
pub mod record_batch;
