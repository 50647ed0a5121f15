//! The query over time, for the dashboard's charts: one sample per committed epoch (taken from
//! the same progress the admin API serves) over the last hour, and the events worth marking on
//! them (alerts, rescales), newest last. Both are bounded: an hour of samples, at most
//! [`MAX_SAMPLES`] of them, and the last [`MAX_EVENTS`] events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use weir_proto::admin::QueryProgress;

/// How far back the charts reach.
pub const SPAN_MS: i64 = 60 * 60 * 1000;
/// Samples kept at most (an epoch every half second for an hour).
pub const MAX_SAMPLES: usize = 7200;
pub const MAX_EVENTS: usize = 500;
/// Partitions whose backlog a sample keeps one by one; beyond, only the total (a chart of
/// hundreds of lines reads as none, and an hour of them would weigh on the driver).
pub const MAX_PARTITIONS: usize = 64;

/// One committed epoch, as the charts plot it. Durations are the slowest executor's.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub epoch: u64,
    /// When the epoch committed (ms since the Unix epoch).
    pub at_ms: i64,
    pub input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    pub phases_ms: Phases,
    /// Commit time minus the watermark the epoch ran with (none before the first watermark).
    pub watermark_gap_ms: Option<i64>,
    pub late_rows: u64,
    pub dead_letter_rows: u64,
    pub state_rows: u64,
    /// RocksDB memtables and block cache plus live SST files, all executors.
    pub state_bytes: u64,
    pub checkpoint_bytes: u64,
    /// Records behind the end of the Kafka partitions when the epoch was planned: in all, and
    /// per partition when they are at most [`MAX_PARTITIONS`].
    pub backlog_total: i64,
    pub backlog: BTreeMap<i32, i64>,
    pub executors: u32,
    pub runs: u32,
}

/// An epoch's time by phase (docs/operations.md, Admin API: `durationMs`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Phases {
    pub plan: u64,
    pub restore: u64,
    pub read: u64,
    pub exchange: u64,
    pub state: u64,
    pub stage: u64,
    pub snapshot: u64,
    pub decide: u64,
    /// The table commits and telling the executors (commit beyond the decision).
    pub commit: u64,
    pub total: u64,
}

impl Sample {
    /// The sample of an epoch's progress `p`, which ran with the watermark
    /// `watermark_micros`, committed at `at_ms`.
    pub fn of(p: &QueryProgress, watermark_micros: Option<i64>, at_ms: i64) -> Self {
        let d = p.duration_ms.unwrap_or_default();
        let state = p.state.unwrap_or_default();
        let watermark = watermark_micros.map(|w| w.div_euclid(1000));
        let mut backlog: BTreeMap<i32, i64> = p
            .sources
            .iter()
            .flat_map(|s| &s.partitions)
            .map(|o| (o.partition, o.lag))
            .collect();
        if backlog.len() > MAX_PARTITIONS {
            backlog.clear();
        }
        Self {
            epoch: p.batch_id,
            at_ms,
            input_rows: p.num_input_rows,
            input_rows_per_second: p.input_rows_per_second,
            processed_rows_per_second: p.processed_rows_per_second,
            phases_ms: Phases {
                plan: d.plan,
                restore: d.restore,
                read: d.execute,
                exchange: d.shuffle,
                state: d.state,
                stage: d.stage,
                snapshot: d.checkpoint,
                decide: d.decide,
                commit: d.commit.saturating_sub(d.decide),
                total: d.total,
            },
            watermark_gap_ms: watermark.map(|w| at_ms - w),
            late_rows: p.num_late_rows,
            dead_letter_rows: p.num_dead_letter_rows,
            state_rows: state.num_rows_total,
            state_bytes: state.memory_used_bytes + state.disk_bytes,
            checkpoint_bytes: state.checkpoint_bytes,
            backlog_total: p.sources.iter().map(|s| s.lag).sum(),
            backlog,
            executors: p.num_executors,
            runs: p.runs,
        }
    }
}

/// Something that happened to the query, for the charts and the epochs table.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at_ms: i64,
    /// `rescaled`, or an alert's kind (`executor_lost`, `recovered`, `autoscaled`, ...).
    pub kind: String,
    pub message: String,
    /// The epoch it concerns, when it concerns one.
    pub epoch: Option<u64>,
}

#[derive(Default)]
struct Rings {
    /// Shared, so that a reader copies pointers under the lock and not the samples.
    samples: VecDeque<Arc<Sample>>,
    events: VecDeque<Event>,
}

/// Shared by the coordinator's side (which adds) and the readers.
#[derive(Clone, Default)]
pub struct Timeline {
    rings: Arc<Mutex<Rings>>,
}

pub fn now_ms() -> i64 {
    weir_common::now_micros() / 1000
}

impl Timeline {
    fn rings(&self) -> MutexGuard<'_, Rings> {
        // Nothing panics while holding the lock; a poisoned ring is still a valid ring.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_sample(&self, sample: Sample) {
        let mut rings = self.rings();
        let oldest = sample.at_ms - SPAN_MS;
        rings.samples.push_back(Arc::new(sample));
        while rings.samples.len() > MAX_SAMPLES
            || rings.samples.front().is_some_and(|s| s.at_ms < oldest)
        {
            rings.samples.pop_front();
        }
    }

    pub fn add_event(&self, kind: &str, message: &str, epoch: Option<u64>) {
        let mut rings = self.rings();
        if rings.events.len() == MAX_EVENTS {
            rings.events.pop_front();
        }
        rings.events.push_back(Event {
            at_ms: now_ms(),
            kind: kind.to_string(),
            message: message.to_string(),
            epoch,
        });
    }

    /// The samples of the last hour's epochs after `after` (all with none), oldest first.
    pub fn samples_after(&self, after: Option<u64>) -> Vec<Arc<Sample>> {
        let oldest = now_ms() - SPAN_MS;
        self.rings()
            .samples
            .iter()
            .filter(|s| s.at_ms >= oldest && after.is_none_or(|a| s.epoch > a))
            .cloned()
            .collect()
    }

    /// The events of the last hour, oldest first.
    pub fn events(&self) -> Vec<Event> {
        let oldest = now_ms() - SPAN_MS;
        self.rings()
            .events
            .iter()
            .filter(|e| e.at_ms >= oldest)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::admin::{DurationMs, EventTime, PartitionOffsets, SourceProgress};

    fn progress(epoch: u64) -> QueryProgress {
        QueryProgress {
            batch_id: epoch,
            num_input_rows: 10 * epoch,
            duration_ms: Some(DurationMs {
                commit: 30,
                decide: 10,
                state: 4,
                ..Default::default()
            }),
            event_time: Some(EventTime {
                watermark: Some("2026-01-01T00:00:00.000Z".into()),
                ..Default::default()
            }),
            sources: vec![SourceProgress {
                lag: 5,
                partitions: vec![
                    PartitionOffsets {
                        partition: 0,
                        lag: 5,
                        ..Default::default()
                    },
                    PartitionOffsets {
                        partition: 1,
                        lag: 0,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_sample_takes_the_progress_figures() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:12Z")
            .unwrap()
            .timestamp_millis();
        let watermark = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .timestamp_micros();
        let s = Sample::of(&progress(3), Some(watermark), at);
        assert_eq!(s.epoch, 3);
        assert_eq!(s.input_rows, 30);
        assert_eq!(s.watermark_gap_ms, Some(12_000));
        assert_eq!(s.phases_ms.decide, 10);
        assert_eq!(s.phases_ms.commit, 20);
        assert_eq!(s.phases_ms.state, 4);
        assert_eq!(s.backlog, BTreeMap::from([(0, 5), (1, 0)]));
        assert_eq!(s.backlog_total, 5);
    }

    #[test]
    fn samples_older_than_an_hour_leave_and_readers_ask_for_what_is_new() {
        let timeline = Timeline::default();
        // Half a minute off the hour's edge at read time, whatever the clock did meanwhile.
        let start = now_ms() - 120 * 60_000 + 30_000;
        // One epoch a minute for two hours: the last hour's 61 remain.
        for epoch in 0..=120 {
            timeline.add_sample(Sample::of(
                &progress(epoch),
                None,
                start + epoch as i64 * 60_000,
            ));
        }
        let all = timeline.samples_after(None);
        assert_eq!(all.len(), 61);
        assert_eq!(all.first().unwrap().epoch, 60);
        let newer: Vec<u64> = timeline
            .samples_after(Some(118))
            .iter()
            .map(|s| s.epoch)
            .collect();
        assert_eq!(newer, vec![119, 120]);
    }

    #[test]
    fn the_event_ring_keeps_the_newest() {
        let timeline = Timeline::default();
        for i in 0..MAX_EVENTS + 3 {
            timeline.add_event("rescaled", &format!("event {i}"), Some(i as u64));
        }
        let events = timeline.events();
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(events[0].message, "event 3");
        assert_eq!(events.last().unwrap().epoch, Some(MAX_EVENTS as u64 + 2));
    }
}
