//! The driver's Prometheus metrics (`weir_*`): the query as a whole, updated after every
//! committed epoch, served on the driver's `/metrics` endpoint.

use std::sync::Arc;

use crate::output::upkeep::PassReport;
use prometheus::{
    exponential_buckets, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use tokio::sync::watch;
use weir_proto::admin::QueryProgress;
use weir_telemetry::metrics_endpoint::BeforeScrape;
use weir_telemetry::registry::{register, set_count, with_process_metrics};

use crate::cluster::membership::Member;

#[derive(Clone)]
pub struct DriverMetrics {
    registry: Registry,
    info: IntGaugeVec,
    input_rows: IntCounter,
    input_bytes: IntCounter,
    input_rate: Gauge,
    processed_rate: Gauge,
    epoch_seconds: HistogramVec,
    epochs: IntCounter,
    last_epoch: IntGauge,
    pub failed_runs: IntCounter,
    watermark: Gauge,
    watermark_delay: Gauge,
    kafka_lag: IntGaugeVec,
    kafka_latest: IntGaugeVec,
    kafka_next: IntGaugeVec,
    late_rows: IntCounter,
    duplicate_rows: IntCounter,
    malformed_rows: IntCounter,
    dead_letter_rows: IntCounter,
    lost_offsets: IntCounter,
    output_rows: IntCounter,
    state_rows: IntGauge,
    state_memory_bytes: IntGauge,
    state_disk_bytes: IntGauge,
    checkpoint_bytes: IntGauge,
    checkpoint_uploaded_bytes: IntCounter,
    delta_commits: IntCounterVec,
    delta_commit_seconds: HistogramVec,
    upkeep_passes: IntCounterVec,
    kafka_sink_records: IntCounterVec,
    /// Per query of a job of several: rows emitted, late and (dedup) duplicate.
    query_rows: IntCounterVec,
    kafka_sink_seconds: HistogramVec,
    files_compacted: IntCounterVec,
    files_vacuumed: IntCounterVec,
    executors: IntGauge,
    executors_expected: IntGauge,
    executors_active: IntGauge,
    executors_retired: IntCounter,
    key_groups_moved: IntCounter,
    desired_executors: IntGauge,
    autoscale_decisions: IntCounterVec,
    paused: IntGauge,
    pub pushes: IntCounterVec,
    pub alerts: IntCounterVec,
    /// Calls to the control port refused for want of a valid cluster credential.
    pub refused_calls: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    register(r, IntCounter::new(name, help)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    register(r, IntGauge::new(name, help)?)
}

/// Phases of `QueryProgress.durationMs`, as `phase` label values.
pub const PHASES: [&str; 8] = [
    "plan",
    "restore",
    "execute",
    "shuffle",
    "prepare",
    "checkpoint",
    "commit",
    "total",
];

impl DriverMetrics {
    pub fn new(expected: usize) -> Result<Self, prometheus::Error> {
        let registry = with_process_metrics()?;
        let r = &registry;
        let buckets = exponential_buckets(0.005, 2.5, 12)?;
        let partition_gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["topic", "partition"])?,
            )
        };
        let metrics = Self {
            info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("weir_query_info", "Always 1; names the query."),
                    &["query_id", "name"],
                )?,
            )?,
            input_rows: counter(r, "weir_input_rows_total", "Records read from the source.")?,
            input_bytes: counter(
                r,
                "weir_input_bytes_total",
                "Bytes of record values read from the source.",
            )?,
            input_rate: register(
                r,
                Gauge::new(
                    "weir_input_rows_per_second",
                    "Input rows of the last epoch over the time since the trigger before it.",
                )?,
            )?,
            processed_rate: register(
                r,
                Gauge::new(
                    "weir_processed_rows_per_second",
                    "Input rows of the last epoch over its duration.",
                )?,
            )?,
            epoch_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "weir_epoch_duration_seconds",
                        "Epoch duration by phase (executor phases: the slowest executor).",
                    )
                    .buckets(buckets.clone()),
                    &["phase"],
                )?,
            )?,
            epochs: counter(r, "weir_epochs_total", "Epochs committed.")?,
            last_epoch: gauge(r, "weir_last_committed_epoch", "The last committed epoch.")?,
            failed_runs: counter(
                r,
                "weir_epoch_run_failures_total",
                "Runs of an epoch that failed and were run again.",
            )?,
            watermark: register(
                r,
                Gauge::new(
                    "weir_watermark_seconds",
                    "The watermark in force for the next epoch, in Unix seconds.",
                )?,
            )?,
            watermark_delay: register(
                r,
                Gauge::new(
                    "weir_watermark_delay_seconds",
                    "How far the watermark is behind the wall clock.",
                )?,
            )?,
            kafka_lag: partition_gauge(
                "weir_kafka_lag_records",
                "Records in the partition not read yet, as of the last epoch's plan.",
            )?,
            kafka_latest: partition_gauge(
                "weir_kafka_latest_offset",
                "The partition's end offset when the last epoch was planned.",
            )?,
            kafka_next: partition_gauge(
                "weir_kafka_committed_offset",
                "The next offset the query reads (committed by the last epoch).",
            )?,
            late_rows: counter(
                r,
                "weir_late_rows_total",
                "Events dropped as late: all their windows had closed, or (a dedup query) their event time was at or before the watermark.",
            )?,
            duplicate_rows: counter(
                r,
                "weir_duplicate_rows_total",
                "Events a dedup query dropped because a row of their key was kept already.",
            )?,
            malformed_rows: counter(
                r,
                "weir_malformed_rows_total",
                "Records that were not valid events.",
            )?,
            dead_letter_rows: counter(
                r,
                "weir_dead_letter_rows_total",
                "Records written to the dead-letter table.",
            )?,
            lost_offsets: counter(
                r,
                "weir_lost_offsets_total",
                "Offsets skipped because the broker no longer retained them.",
            )?,
            output_rows: counter(r, "weir_output_rows_total", "Window rows written.")?,
            refused_calls: counter(
                r,
                "weir_cluster_calls_refused_total",
                "Calls to the control port refused: no valid cluster credential.",
            )?,
            state_rows: gauge(r, "weir_state_rows", "State entries, all executors.")?,
            state_memory_bytes: gauge(
                r,
                "weir_state_memory_bytes",
                "State store memory (memtables, block cache), all executors.",
            )?,
            state_disk_bytes: gauge(
                r,
                "weir_state_disk_bytes",
                "State store live SST files, all executors.",
            )?,
            checkpoint_bytes: gauge(
                r,
                "weir_checkpoint_bytes",
                "Size of the last epoch's state snapshots.",
            )?,
            checkpoint_uploaded_bytes: counter(
                r,
                "weir_checkpoint_uploaded_bytes_total",
                "State snapshot bytes uploaded to the checkpoint.",
            )?,
            delta_commits: register(
                r,
                IntCounterVec::new(
                    Opts::new("weir_delta_commits_total", "Delta transactions committed."),
                    &["table"],
                )?,
            )?,
            delta_commit_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "weir_delta_commit_duration_seconds",
                        "Time to commit an epoch's Delta transaction.",
                    )
                    .buckets(buckets.clone()),
                    &["table"],
                )?,
            )?,
            query_rows: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_query_rows_total",
                        "Per query of a job of several queries: rows it emitted (kind=\"emitted\"), dropped as late for it (\"late\"), and dropped as duplicates (\"duplicate\", a dedup query).",
                    ),
                    &["query", "kind"],
                )?,
            )?,
            kafka_sink_records: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_kafka_sink_records_total",
                        "Records a Kafka sink delivered (committed, under exactly_once).",
                    ),
                    &["topic"],
                )?,
            )?,
            kafka_sink_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "weir_kafka_sink_duration_seconds",
                        "Time to send an epoch's records to a Kafka sink and commit them.",
                    )
                    .buckets(buckets.clone()),
                    &["topic"],
                )?,
            )?,
            upkeep_passes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_table_upkeep_passes_total",
                        "Compaction and vacuum passes over a Delta table, by result.",
                    ),
                    &["table", "result"],
                )?,
            )?,
            files_compacted: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_delta_files_compacted_total",
                        "Small Delta files merged away by compaction.",
                    ),
                    &["table"],
                )?,
            )?,
            files_vacuumed: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_delta_files_vacuumed_total",
                        "Delta files deleted by vacuum after their retention.",
                    ),
                    &["table"],
                )?,
            )?,
            executors: gauge(r, "weir_executors", "Registered executors.")?,
            executors_expected: gauge(
                r,
                "weir_executors_expected",
                "Executors the driver aims for: its target (--executors, weir admin scale).",
            )?,
            executors_active: gauge(
                r,
                "weir_executors_active",
                "Executors the last committed epoch ran on.",
            )?,
            executors_retired: counter(
                r,
                "weir_executors_retired_total",
                "Executors told to exit because the target went below the registered count.",
            )?,
            key_groups_moved: counter(
                r,
                "weir_key_groups_moved_total",
                "Key groups that changed owner between epochs (rescales and lost executors).",
            )?,
            desired_executors: gauge(
                r,
                "weir_desired_executors",
                "The autoscaler's latest recommendation, before its stabilisation windows (for \
                 KEDA or an HPA to act on; 0 when the job does not autoscale).",
            )?,
            autoscale_decisions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_autoscale_decisions_total",
                        "Changes of the executor target the autoscaler made, by direction (up, down).",
                    ),
                    &["direction"],
                )?,
            )?,
            paused: gauge(r, "weir_query_paused", "1 while the query is paused.")?,
            pushes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_pushgateway_pushes_total",
                        "Pushes to the Pushgateway, by result (success or failure).",
                    ),
                    &["result"],
                )?,
            )?,
            alerts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "weir_alerts_total",
                        "Webhook alerts, by kind and result (sent, failed or dropped).",
                    ),
                    &["kind", "result"],
                )?,
            )?,
            registry,
        };
        set_count(&metrics.executors_expected, expected as u64);
        Ok(metrics)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Names the query once its id is known (from the checkpoint).
    pub fn set_query(&self, id: &str, name: &str) {
        self.info.with_label_values(&[id, name]).set(1);
    }

    /// Brings the clock-driven gauges up to date at each scrape.
    pub fn before_scrape(&self, members: watch::Receiver<Vec<Member>>) -> BeforeScrape {
        let executors = self.executors.clone();
        let watermark = self.watermark.clone();
        let delay = self.watermark_delay.clone();
        Arc::new(move || {
            set_count(&executors, members.borrow().len() as u64);
            let wm = watermark.get();
            if wm > 0.0 {
                let now = weir_common::now_micros() as f64 / 1e6;
                delay.set((now - wm).max(0.0));
            }
        })
    }

    pub fn set_target(&self, executors: usize) {
        set_count(&self.executors_expected, executors as u64);
    }

    /// The autoscaler's recommendation, and the decision it made of it, if any.
    pub fn autoscaled(&self, desired: usize, direction: Option<&str>) {
        set_count(&self.desired_executors, desired as u64);
        if let Some(d) = direction {
            self.autoscale_decisions.with_label_values(&[d]).inc();
        }
    }

    pub fn retired(&self, executors: usize) {
        self.executors_retired.inc_by(executors as u64);
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }

    /// Records one Delta commit of `table` (`output` or `dead_letter`).
    pub fn delta_commit(&self, table: &str, seconds: f64) {
        self.delta_commits.with_label_values(&[table]).inc();
        self.delta_commit_seconds
            .with_label_values(&[table])
            .observe(seconds);
    }

    /// Records an epoch's delivery to a Kafka sink.
    pub fn kafka_sink(&self, topic: &str, records: u64, seconds: f64) {
        self.kafka_sink_records
            .with_label_values(&[topic])
            .inc_by(records);
        self.kafka_sink_seconds
            .with_label_values(&[topic])
            .observe(seconds);
    }

    /// Records a table upkeep pass (`result`: `ok` or `error`).
    pub fn table_upkeep(&self, table: &str, result: &str, pass: &PassReport) {
        self.upkeep_passes.with_label_values(&[table, result]).inc();
        self.files_compacted
            .with_label_values(&[table])
            .inc_by(pass.files_removed);
        self.files_vacuumed
            .with_label_values(&[table])
            .inc_by(pass.vacuumed);
    }

    /// Records a committed epoch.
    pub fn record(&self, p: &QueryProgress, input_bytes: u64, watermark_micros: Option<i64>) {
        self.epochs.inc();
        set_count(&self.executors_active, u64::from(p.num_executors));
        self.key_groups_moved
            .inc_by(u64::from(p.num_key_groups_moved));
        self.last_epoch
            .set(i64::try_from(p.batch_id).unwrap_or(i64::MAX));
        self.input_rows.inc_by(p.num_input_rows);
        self.input_bytes.inc_by(input_bytes);
        self.input_rate.set(p.input_rows_per_second);
        self.processed_rate.set(p.processed_rows_per_second);
        if let Some(d) = &p.duration_ms {
            let values = [
                d.plan,
                d.restore,
                d.execute,
                d.shuffle,
                d.prepare,
                d.checkpoint,
                d.commit,
                d.total,
            ];
            for (phase, ms) in PHASES.iter().zip(values) {
                self.epoch_seconds
                    .with_label_values(&[*phase])
                    .observe(ms as f64 / 1000.0);
            }
        }
        if let Some(wm) = watermark_micros {
            self.watermark.set(wm as f64 / 1e6);
        }
        for source in &p.sources {
            for part in &source.partitions {
                let labels = [source.topic.as_str(), &part.partition.to_string()];
                self.kafka_lag.with_label_values(&labels).set(part.lag);
                self.kafka_latest
                    .with_label_values(&labels)
                    .set(part.latest_offset);
                self.kafka_next
                    .with_label_values(&labels)
                    .set(part.end_offset);
            }
        }
        self.late_rows.inc_by(p.num_late_rows);
        self.duplicate_rows.inc_by(p.num_duplicate_rows);
        for q in &p.queries {
            let emitted = q.sink.as_ref().map_or(0, |s| s.num_output_rows);
            for (kind, rows) in [
                ("emitted", emitted),
                ("late", q.num_late_rows),
                ("duplicate", q.num_duplicate_rows),
            ] {
                self.query_rows
                    .with_label_values(&[&q.name, kind])
                    .inc_by(rows);
            }
        }
        self.malformed_rows.inc_by(p.num_malformed_rows);
        self.dead_letter_rows.inc_by(p.num_dead_letter_rows);
        self.lost_offsets.inc_by(p.num_lost_offsets);
        if let Some(sink) = &p.sink {
            self.output_rows.inc_by(sink.num_output_rows);
        }
        if let Some(s) = &p.state {
            set_count(&self.state_rows, s.num_rows_total);
            set_count(&self.state_memory_bytes, s.memory_used_bytes);
            set_count(&self.state_disk_bytes, s.disk_bytes);
            set_count(&self.checkpoint_bytes, s.checkpoint_bytes);
            self.checkpoint_uploaded_bytes
                .inc_by(s.checkpoint_uploaded_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;
    use weir_proto::admin::{QueryOutputProgress, SinkProgress};

    use super::*;

    /// A job of several queries counts each query's rows under its name.
    #[test]
    fn each_query_of_a_job_has_its_own_row_counts() {
        let metrics = DriverMetrics::new(1).unwrap();
        let query = |name: &str, emitted, late, duplicates| QueryOutputProgress {
            name: name.into(),
            sink: Some(SinkProgress {
                num_output_rows: emitted,
                ..SinkProgress::default()
            }),
            num_late_rows: late,
            num_duplicate_rows: duplicates,
        };
        let progress = QueryProgress {
            queries: vec![query("windows", 12, 3, 0), query("raw-events", 900, 5, 40)],
            ..QueryProgress::default()
        };
        metrics.record(&progress, 0, None);
        metrics.record(&progress, 0, None);
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&metrics.registry().gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for expected in [
            r#"weir_query_rows_total{kind="emitted",query="windows"} 24"#,
            r#"weir_query_rows_total{kind="late",query="windows"} 6"#,
            r#"weir_query_rows_total{kind="emitted",query="raw-events"} 1800"#,
            r#"weir_query_rows_total{kind="duplicate",query="raw-events"} 80"#,
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }
}
