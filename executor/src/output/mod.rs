//! What an epoch writes: the rows of closed windows and rejected records as record batches
//! (`emit`), staged as Parquet files for the driver to commit (`staging`).

pub mod emit;
pub mod staging;
