//! Hooks for the tests and the bench: fault points the chaos tests arm, the property tests'
//! budget, and loopback ports for servers started in tests.

pub mod fault;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod loopback;
