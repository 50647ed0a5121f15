//! The driver's side of the cluster: who the executors are (`membership`, kept by the control
//! service in `service`), how many it aims for and which an epoch runs on (`scale`), how many
//! the input needs (`autoscale`), which key groups and partitions each gets (`assignment`), the
//! calls that run epochs on them (`executors`), and the executors' Deployment kept at the
//! target in Kubernetes (`kubernetes`).

pub mod assignment;
pub mod autoscale;
pub mod executors;
pub mod kubernetes;
pub mod membership;
pub mod scale;
pub mod service;
