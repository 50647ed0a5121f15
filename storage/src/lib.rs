//! Where a job keeps its data: object stores opened by URL (`file://`, `s3://`, `memory://` in
//! unit tests), the checkpoint log on them, and the `s3://` scheme for deltalake's tables.

pub mod checkpoint_log;
pub mod delta_schemes;
pub mod fence;
pub mod location;

pub use checkpoint_log::{CheckpointLog, LogError};
pub use fence::Fence;
pub use location::{open, Location, StorageError};
