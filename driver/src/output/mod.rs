//! The job's outputs: commits of decided epochs to Delta tables with `SetTransaction`
//! (`delta_commit`), as MERGEs in update mode (`merge`), and to Kafka topics in transactions
//! (`kafka_sink`); the outputs handed to each decision's commit as it runs beside the next
//! epoch (`table_commits`); compaction and vacuum (`upkeep`).

pub mod delta_commit;
pub mod kafka_sink;
pub mod merge;
pub mod table_commits;
pub mod upkeep;
