//! The job's Delta tables: commits of decided epochs with `SetTransaction` (`delta_commit`),
//! and the tables handed to each decision's commit as it runs beside the next epoch
//! (`table_commits`).

pub mod delta_commit;
pub mod merge;
pub mod table_commits;
pub mod upkeep;
