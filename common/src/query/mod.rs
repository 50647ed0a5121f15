//! How a query computes: event-time windows, aggregate functions and their mergeable partial
//! states, and the key groups that partition its state.

pub mod aggregate;
pub mod keygroup;
pub mod window;
