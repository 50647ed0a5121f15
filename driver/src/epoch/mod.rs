//! The epoch loop: the coordinator plans each epoch (`planner`), runs it on the executors,
//! decides it (`decision`) and collects old state (`state_gc`), steered by the admin API's
//! pause, stop and checkpoint (`controls`).

pub mod controls;
pub mod coordinator;
pub mod decision;
pub mod planner;
pub mod state_gc;
