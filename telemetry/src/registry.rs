//! Building a process's Prometheus registry: register a metric and keep a handle to it.

use prometheus::{IntGauge, Registry};

/// A registry with the `process_*` metrics (resident memory, CPU, open files) where the
/// platform has them.
pub fn with_process_metrics() -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Registers `metric` and answers it, for the caller to update.
pub fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> Result<T, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Sets an integer gauge from a count (saturating: gauges are signed).
pub fn set_count(gauge: &IntGauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}
