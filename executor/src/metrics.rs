//! The executor's Prometheus metrics (`weir_executor_*` and `weir_flight_*`), served on its
//! `/metrics` endpoint. The driver's metrics cover the query; these cover one process.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};
use weir_proto::control::EpochStats;
use weir_telemetry::registry::{register, set_count, with_process_metrics};

/// Phases of an epoch an executor times.
const PHASES: [&str; 6] = [
    "restore",
    "read",
    "aggregate",
    "exchange",
    "emit",
    "checkpoint",
];

#[derive(Clone)]
pub struct ExecutorMetrics {
    registry: Registry,
    epochs: IntCounter,
    failed_epochs: IntCounter,
    input_rows: IntCounter,
    input_bytes: IntCounter,
    late_rows: IntCounter,
    malformed_rows: IntCounter,
    output_rows: IntCounter,
    phase_seconds: HistogramVec,
    state_rows: IntGauge,
    state_memory_bytes: IntGauge,
    state_disk_bytes: IntGauge,
    checkpoint_bytes: IntGauge,
    checkpoint_uploaded_bytes: IntCounter,
    checkpoint_seconds: Histogram,
    shuffle_rows: IntCounterVec,
    /// Arrow Flight bytes sent to and received from peers (message headers and bodies).
    pub flight_bytes_sent: IntCounter,
    pub flight_bytes_received: IntCounter,
    /// Calls refused for want of a valid cluster credential (control and Flight).
    pub refused_calls: IntCounter,
}

impl ExecutorMetrics {
    pub fn new(executor_id: &str) -> Result<Self, prometheus::Error> {
        let registry = with_process_metrics()?;
        let r = &registry;
        let info = register(
            r,
            IntGauge::with_opts(
                Opts::new("weir_executor_info", "Always 1; names the executor.")
                    .const_label("executor_id", executor_id),
            )?,
        )?;
        info.set(1);
        // Epoch phases run from milliseconds to minutes.
        let buckets = exponential_buckets(0.005, 2.5, 12)?;
        Ok(Self {
            epochs: register(
                r,
                IntCounter::new(
                    "weir_executor_epochs_total",
                    "Epochs this executor prepared.",
                )?,
            )?,
            failed_epochs: register(
                r,
                IntCounter::new(
                    "weir_executor_epoch_failures_total",
                    "Epoch runs that failed or were abandoned on this executor.",
                )?,
            )?,
            input_rows: register(
                r,
                IntCounter::new("weir_executor_input_rows_total", "Kafka records read.")?,
            )?,
            input_bytes: register(
                r,
                IntCounter::new(
                    "weir_executor_input_bytes_total",
                    "Bytes of Kafka record values read.",
                )?,
            )?,
            late_rows: register(
                r,
                IntCounter::new(
                    "weir_executor_late_rows_total",
                    "Events dropped because all their windows had closed.",
                )?,
            )?,
            malformed_rows: register(
                r,
                IntCounter::new(
                    "weir_executor_malformed_rows_total",
                    "Records that were not valid events (sent to the dead letter).",
                )?,
            )?,
            output_rows: register(
                r,
                IntCounter::new(
                    "weir_executor_output_rows_total",
                    "Window rows this executor emitted.",
                )?,
            )?,
            phase_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "weir_executor_epoch_phase_duration_seconds",
                        "Time an epoch spent in each phase on this executor.",
                    )
                    .buckets(buckets.clone()),
                    &["phase"],
                )?,
            )?,
            state_rows: register(
                r,
                IntGauge::new(
                    "weir_executor_state_rows",
                    "State entries in the store (RocksDB's estimate).",
                )?,
            )?,
            state_memory_bytes: register(
                r,
                IntGauge::new(
                    "weir_executor_state_memory_bytes",
                    "State store memory: memtables and block cache.",
                )?,
            )?,
            state_disk_bytes: register(
                r,
                IntGauge::new(
                    "weir_executor_state_disk_bytes",
                    "State store live SST files.",
                )?,
            )?,
            checkpoint_bytes: register(
                r,
                IntGauge::new(
                    "weir_executor_checkpoint_bytes",
                    "Size of the last state snapshot.",
                )?,
            )?,
            checkpoint_uploaded_bytes: register(
                r,
                IntCounter::new(
                    "weir_executor_checkpoint_uploaded_bytes_total",
                    "State snapshot bytes uploaded to the checkpoint.",
                )?,
            )?,
            checkpoint_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "weir_executor_checkpoint_duration_seconds",
                        "Time to snapshot state and upload it.",
                    )
                    .buckets(buckets),
                )?,
            )?,
            shuffle_rows: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_executor_shuffle_rows_total",
                        "Partial-aggregate rows exchanged with other executors.",
                    ),
                    &["direction"],
                )?,
            )?,
            flight_bytes_sent: register(
                r,
                IntCounter::new(
                    "weir_flight_bytes_sent_total",
                    "Arrow Flight bytes sent to other executors.",
                )?,
            )?,
            flight_bytes_received: register(
                r,
                IntCounter::new(
                    "weir_flight_bytes_received_total",
                    "Arrow Flight bytes received from other executors.",
                )?,
            )?,
            refused_calls: register(
                r,
                IntCounter::new(
                    "weir_executor_cluster_calls_refused_total",
                    "Calls refused: no valid cluster credential.",
                )?,
            )?,
            registry,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a prepared epoch.
    pub fn record(&self, s: &EpochStats) {
        self.epochs.inc();
        self.input_rows.inc_by(s.input_rows);
        self.input_bytes.inc_by(s.input_bytes);
        self.late_rows.inc_by(s.late_rows);
        self.malformed_rows.inc_by(s.malformed_rows);
        self.output_rows.inc_by(s.windows_emitted);
        let millis = [
            s.restore_ms,
            s.read_ms,
            s.aggregate_ms,
            s.exchange_ms,
            s.emit_ms,
            s.checkpoint_ms,
        ];
        for (phase, ms) in PHASES.iter().zip(millis) {
            self.phase_seconds
                .with_label_values(&[*phase])
                .observe(ms as f64 / 1000.0);
        }
        self.checkpoint_seconds
            .observe(s.checkpoint_ms as f64 / 1000.0);
        set_count(&self.state_rows, s.state_rows);
        set_count(&self.state_memory_bytes, s.state_memory_bytes);
        set_count(&self.state_disk_bytes, s.state_disk_bytes);
        set_count(&self.checkpoint_bytes, s.checkpoint_bytes);
        self.checkpoint_uploaded_bytes
            .inc_by(s.checkpoint_uploaded_bytes);
        self.shuffle_rows
            .with_label_values(&["sent"])
            .inc_by(s.shuffle_rows_sent);
        self.shuffle_rows
            .with_label_values(&["received"])
            .inc_by(s.shuffle_rows_received);
    }

    /// Records a run of an epoch that failed here or was abandoned.
    pub fn record_failure(&self) {
        self.failed_epochs.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_adds_to_the_counters_and_sets_the_gauges() {
        let m = ExecutorMetrics::new("exec-a").unwrap();
        let stats = EpochStats {
            input_rows: 10,
            state_rows: 7,
            read_ms: 1500,
            ..Default::default()
        };
        m.record(&stats);
        m.record(&stats);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry().gather())
            .unwrap();
        assert!(text.contains("weir_executor_input_rows_total 20"), "{text}");
        assert!(text.contains("weir_executor_state_rows 7"), "{text}");
        assert!(
            text.contains("weir_executor_info{executor_id=\"exec-a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_executor_epoch_phase_duration_seconds_count{phase=\"read\"} 2"),
            "{text}"
        );
    }
}
