//! One progress line per epoch on standard output, for people watching `weir local`.

use std::io::Write;
use std::time::Duration;

use weir_common::checkpoint::{CommitRecord, EpochPlan};
use weir_common::job::JobSpec;

pub struct Progress {
    name: String,
}

fn time(micros: Option<i64>) -> String {
    micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Progress {
    pub fn new(job: &JobSpec) -> Self {
        Self {
            name: job.name.clone(),
        }
    }

    pub fn report(
        &self,
        plan: &EpochPlan,
        record: &CommitRecord,
        version: Option<u64>,
        executed: Duration,
        total: Duration,
    ) {
        let s = &record.stats;
        let rate = if executed.as_secs_f64() > 0.0 {
            s.input_rows as f64 / executed.as_secs_f64()
        } else {
            0.0
        };
        let line = format!(
            "[{}] epoch {} | input {} rows, {:.0} rows/s | watermark {} | windows emitted {} | late {} | malformed {} | executors {}, shuffled {} rows | checkpoint {} (+{}) | delta version {} | {} ms",
            self.name,
            plan.epoch,
            s.input_rows,
            rate,
            time(plan.watermark_micros),
            s.windows_emitted,
            s.late_rows,
            s.malformed_rows,
            record.executors.len(),
            record
                .executors
                .values()
                .map(|e| e.shuffle_rows_sent)
                .sum::<u64>(),
            size(s.checkpoint_bytes),
            size(s.checkpoint_uploaded_bytes),
            version.map_or_else(|| "-".to_string(), |v| v.to_string()),
            total.as_millis()
        );
        let line = if s.lost_offsets > 0 {
            format!(
                "{line} | lost {} offsets no longer retained",
                s.lost_offsets
            )
        } else {
            line
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
