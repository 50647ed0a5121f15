//! Pre-aggregation of one epoch's rows in memory, per (window, group key), before anything
//! touches RocksDB: each (window, group) is read and written once per epoch, not once per row.

use std::collections::{HashMap, HashSet};

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use weir_common::aggregate::{AggKind, Partial};
use weir_common::job::JobSpec;
use weir_common::value::{encode_group_key, ColumnReader, GroupValue};
use weir_common::window::{is_closed, Window};

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

/// A distinct value seen in the epoch: (window, aggregate index, group key, value bytes).
pub type DistinctEntry = (Window, u8, Vec<u8>, Vec<u8>);

/// One epoch's partial aggregates.
pub struct PreAggregation<'a> {
    job: &'a JobSpec,
    watermark: Option<i64>,
    /// Rows whose event time is past this bound are rejected (too far in the future).
    max_event_time: i64,
    pub groups: HashMap<(Window, Vec<u8>), Vec<Partial>>,
    pub distinct: HashSet<DistinctEntry>,
    pub times: EventTimes,
    pub late_rows: u64,
}

impl<'a> PreAggregation<'a> {
    pub fn new(job: &'a JobSpec, watermark: Option<i64>, planned_at: i64) -> Self {
        Self {
            job,
            watermark,
            max_event_time: planned_at.saturating_add(job.max_event_time_ahead_micros),
            groups: HashMap::new(),
            distinct: HashSet::new(),
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
            .map(|a| a.column.as_deref().and_then(column).and_then(ColumnReader::new))
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
                    .groups
                    .entry((w, group.clone()))
                    .or_insert_with(|| self.job.aggregates.iter().map(|a| a.new_partial()).collect());
                for (i, (agg, col)) in self.job.aggregates.iter().zip(&agg_cols).enumerate() {
                    let value = col
                        .as_ref()
                        .map_or(weir_common::value::Scalar::Null, |c| c.get(row));
                    if agg.kind == AggKind::CountDistinct {
                        if !value.is_null() {
                            let bytes = value.with_bytes(|b| b.to_vec());
                            self.distinct.insert((w, i as u8, group.clone(), bytes));
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
