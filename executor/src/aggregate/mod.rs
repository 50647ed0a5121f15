//! Aggregation of an epoch's rows: pre-aggregation in memory (`preagg`), and the partial
//! aggregates that travel to the owners of their key groups (`partials`).

pub mod distinct_set;
pub mod partials;
pub mod preagg;
