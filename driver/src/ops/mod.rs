//! What the driver tells the people who run it: progress (`progress`), the query's state
//! (`query_status`), Prometheus metrics (`metrics`), the Pushgateway sink (`pushgateway`) and
//! webhook alerts (`alerts`, over `http_post`).

pub mod alerts;
pub mod http_post;
pub mod metrics;
pub mod progress;
pub mod pushgateway;
pub mod query_status;
pub mod timeline;
