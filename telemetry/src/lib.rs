//! What every weir process shares to be operated: log set-up and the Prometheus `/metrics`
//! endpoint.

pub mod logging;
pub mod metrics_endpoint;
pub mod process;
pub mod registry;

pub use metrics_endpoint::MetricsEndpoint;
