//! What every weir process shares to be operated: log set-up, the Prometheus `/metrics`
//! endpoint and the health paths a kubelet probes.

pub mod health;
pub mod logging;
pub mod metrics_endpoint;
pub mod process;
pub mod registry;

pub use health::Readiness;
pub use metrics_endpoint::MetricsEndpoint;
