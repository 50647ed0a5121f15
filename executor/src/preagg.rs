//! Pre-aggregation of one epoch's rows in memory, per (window, group key), before anything
//! touches RocksDB: each (window, group) is read and written once per epoch, not once per row.

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use weir_common::aggregate::AggKind;
use weir_common::job::JobSpec;
use weir_common::value::{encode_group_key, ColumnReader, GroupValue};
use weir_common::window::is_closed;

use crate::partials::Partials;

/// Why a decoded row was not aggregated.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    /// Every window of the row is closed under the epoch's watermark.
    Late,
    /// The row must go to the dead letter, with this reason.
    Invalid(String),
}

/// Event-time figures of the accepted rows.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventTimes {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub sum: f64,
    pub count: u64,
}

impl EventTimes {
    fn add(&mut self, ts: i64) {
        self.min = Some(self.min.map_or(ts, |m| m.min(ts)));
        self.max = Some(self.max.map_or(ts, |m| m.max(ts)));
        self.sum += ts as f64;
        self.count += 1;
    }
}

/// One epoch's partial aggregates.
pub struct PreAggregation<'a> {
    job: &'a JobSpec,
    watermark: Option<i64>,
    /// Rows whose event time is past this bound are rejected (too far in the future).
    max_event_time: i64,
    pub partials: Partials,
    pub times: EventTimes,
    pub late_rows: u64,
}

impl<'a> PreAggregation<'a> {
    pub fn new(job: &'a JobSpec, watermark: Option<i64>, planned_at: i64) -> Self {
        Self {
            job,
            watermark,
            max_event_time: planned_at.saturating_add(job.max_event_time_ahead_micros),
            partials: Partials::default(),
            times: EventTimes::default(),
            late_rows: 0,
        }
    }

    /// Folds a decoded batch in; returns the rows it rejected, by row index.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Vec<(usize, Rejected)> {
        let mut rejected = Vec::new();
        let column = |name: &str| -> Option<&ArrayRef> {
            batch.schema().index_of(name).ok().map(|i| batch.column(i))
        };
        let Some(ts_col) = column(&self.job.event_time_column)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        else {
            // The decoder always produces the event-time column; without it nothing is usable.
            return (0..batch.num_rows())
                .map(|i| (i, Rejected::Invalid("event time column missing".into())))
                .collect();
        };
        let group_cols: Vec<Option<ColumnReader<'_>>> = self
            .job
            .group_by
            .iter()
            .map(|g| column(g).and_then(ColumnReader::new))
            .collect();
        let agg_cols: Vec<Option<ColumnReader<'_>>> = self
            .job
            .aggregates
            .iter()
            .map(|a| {
                a.column
                    .as_deref()
                    .and_then(column)
                    .and_then(ColumnReader::new)
            })
            .collect();
        let window_spec = self.job.window;
        let mut group_values = Vec::with_capacity(group_cols.len());
        for row in 0..batch.num_rows() {
            if arrow::array::Array::is_null(ts_col, row) {
                rejected.push((row, Rejected::Invalid("event time is null".into())));
                continue;
            }
            let ts = ts_col.value(row);
            if ts > self.max_event_time {
                rejected.push((
                    row,
                    Rejected::Invalid(format!(
                        "event time {} is more than {}s ahead of processing time",
                        chrono::DateTime::from_timestamp_micros(ts)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| ts.to_string()),
                        self.job.max_event_time_ahead_micros / 1_000_000
                    )),
                ));
                continue;
            }
            self.times.add(ts);
            if is_closed(window_spec.last_window_end(ts), self.watermark) {
                self.late_rows += 1;
                rejected.push((row, Rejected::Late));
                continue;
            }
            group_values.clear();
            group_values.extend(
                group_cols
                    .iter()
                    .map(|c| c.as_ref().map_or(GroupValue::Null, |c| c.get(row).into())),
            );
            let group = encode_group_key(&group_values);
            let watermark = self.watermark;
            window_spec.for_each_window(ts, |w| {
                if is_closed(w.end, watermark) {
                    return;
                }
                let partials = self
                    .partials
                    .groups
                    .entry((w, group.clone()))
                    .or_insert_with(|| {
                        self.job
                            .aggregates
                            .iter()
                            .map(|a| a.new_partial())
                            .collect()
                    });
                for (i, (agg, col)) in self.job.aggregates.iter().zip(&agg_cols).enumerate() {
                    let value = col
                        .as_ref()
                        .map_or(weir_common::value::Scalar::Null, |c| c.get(row));
                    if agg.kind == AggKind::CountDistinct {
                        if !value.is_null() {
                            let bytes = value.with_bytes(|b| b.to_vec());
                            self.partials
                                .distinct
                                .insert((w, i as u8, group.clone(), bytes));
                        }
                    } else {
                        partials[i].update(agg.kind, value);
                    }
                }
            });
        }
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use weir_common::aggregate::Partial;
    use weir_common::decode::JsonDecoder;
    use weir_common::job::{parse_job, JobSpec};
    use weir_common::window::Window;

    const MIN: i64 = 60_000_000;

    fn job(window: &str) -> JobSpec {
        let text = format!(
            r#"
name: t
source:
  kafka: {{bootstrap_servers: "b:1", topic: t}}
  schema: {{user_id: string not null, event_type: string not null, amount: double, timestamp: timestamp not null}}
query:
  watermark: {{column: timestamp, delay: 10m}}
  window: {window}
  group_by: [event_type]
  aggregates:
    n: count(*)
    users: count(distinct user_id)
    total: sum(amount)
  max_event_time_ahead: 1h
checkpoint_location: /tmp/x
sinks: [{{delta: {{path: /tmp/y}}}}]
"#
        );
        parse_job(&text, Path::new("/")).unwrap()
    }

    fn batch(job: &JobSpec, rows: &[(&str, &str, i64)]) -> RecordBatch {
        let lines: Vec<String> = rows
            .iter()
            .map(|(u, t, ts)| {
                let time = chrono::DateTime::from_timestamp_micros(*ts)
                    .unwrap()
                    .to_rfc3339();
                format!(
                    r#"{{"user_id":"{u}","event_type":"{t}","amount":1.5,"timestamp":"{time}"}}"#
                )
            })
            .collect();
        let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let decoded = JsonDecoder::new(job.input_schema.clone(), 1 << 20).decode(&bytes);
        assert!(decoded.bad.is_empty(), "{:?}", decoded.bad);
        arrow::compute::concat_batches(&job.input_schema, &decoded.batches).unwrap()
    }

    #[test]
    fn late_and_future_rows_are_rejected_and_the_rest_aggregated() {
        let job = job("{column: timestamp, size: 5m}");
        let now = 1000 * MIN;
        let watermark = Some(now - 10 * MIN);
        let mut pre = PreAggregation::new(&job, watermark, now);
        let b = batch(
            &job,
            &[
                ("u1", "click", now - MIN),
                ("u1", "click", now - 2 * MIN),
                ("u2", "click", now - 2 * MIN),
                // Its window [now-15m, now-10m) ends at the watermark: closed, so late.
                ("u3", "view", now - 11 * MIN),
                // More than max_event_time_ahead past the plan's clock.
                ("u4", "view", now + 2 * 60 * MIN),
            ],
        );
        let rejected = pre.add_batch(&b);
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0], (3, Rejected::Late));
        assert!(matches!(&rejected[1], (4, Rejected::Invalid(r)) if r.contains("ahead")));
        assert_eq!(pre.late_rows, 1);
        assert_eq!(pre.partials.groups.len(), 1);
        let ((w, _), partials) = pre.partials.groups.iter().next().unwrap();
        assert_eq!(
            *w,
            Window {
                start: now - 5 * MIN,
                end: now
            }
        );
        assert!(matches!(partials[0], Partial::Count(3)));
        assert!(matches!(partials[2], Partial::SumF(Some(s)) if s == 4.5));
        // Two distinct users in the one window, kept apart from the partials.
        assert_eq!(pre.partials.distinct.len(), 2);
        assert_eq!(pre.times.max, Some(now - MIN));
    }

    #[test]
    fn sliding_rows_go_to_their_open_windows_only() {
        let job = job("{column: timestamp, size: 10m, slide: 5m}");
        let now = 1000 * MIN;
        // The row at now-12m is in [now-15m, now-5m) (open) and [now-20m, now-10m) (closed).
        let mut pre = PreAggregation::new(&job, Some(now - 10 * MIN), now);
        let rejected = pre.add_batch(&batch(&job, &[("u1", "click", now - 12 * MIN)]));
        assert!(rejected.is_empty());
        let windows: Vec<Window> = pre.partials.groups.keys().map(|(w, _)| *w).collect();
        assert_eq!(
            windows,
            vec![Window {
                start: now - 15 * MIN,
                end: now - 5 * MIN
            }]
        );
        assert_eq!(pre.late_rows, 0);
    }
}
