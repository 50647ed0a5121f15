//! The driver's side of the cluster: who the executors are (`membership`, kept by the control
//! service in `service`), how many it aims for and which an epoch runs on (`scale`), which key
//! groups and partitions each gets (`assignment`), and the calls that run epochs on them
//! (`executors`).

pub mod assignment;
pub mod executors;
pub mod membership;
pub mod scale;
pub mod service;
