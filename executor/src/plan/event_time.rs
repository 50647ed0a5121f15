//! The event time of decoded rows, as every operator checks it before using a row: present,
//! inside the range a timestamp may hold, and not too far ahead of processing time (those go
//! to the dead letter).

use arrow::array::{Array, AsArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::record_batch::RecordBatch;
use weir_common::job::JobSpec;
use weir_common::query::window::check_event_time;

use crate::aggregate::preagg::Rejected;

/// The event-time rules of one epoch.
pub struct EventTimeRules<'a> {
    column: &'a str,
    /// Rows whose event time is past this bound are rejected (too far in the future).
    max_event_time: i64,
    ahead_secs: i64,
}

impl<'a> EventTimeRules<'a> {
    /// The rules of an epoch of `job` planned at `planned_at`.
    pub fn new(job: &'a JobSpec, planned_at: i64) -> Self {
        Self::of(
            &job.event_time_column,
            job.max_event_time_ahead_micros,
            planned_at,
        )
    }

    /// The rules for event times in `column`, at most `max_ahead_micros` ahead of
    /// `planned_at`.
    pub fn of(column: &'a str, max_ahead_micros: i64, planned_at: i64) -> Self {
        Self {
            column,
            // Saturating is right here: a bound past i64 rejects nothing more.
            max_event_time: planned_at.saturating_add(max_ahead_micros),
            ahead_secs: max_ahead_micros / 1_000_000,
        }
    }

    /// The batch's event times, or every row rejected when the column is missing (the decoder
    /// always produces it; without it nothing is usable).
    pub fn column<'b>(
        &self,
        batch: &'b RecordBatch,
    ) -> Result<&'b TimestampMicrosecondArray, Vec<(usize, Rejected)>> {
        batch
            .column_by_name(self.column)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| {
                (0..batch.num_rows())
                    .map(|i| (i, Rejected::Invalid("event time column missing".into())))
                    .collect()
            })
    }

    /// Row `row`'s event time, unless it is null or outside the range a time may hold (set
    /// aside before any arithmetic uses it).
    pub fn time(&self, times: &TimestampMicrosecondArray, row: usize) -> Result<i64, Rejected> {
        if times.is_null(row) {
            return Err(Rejected::Invalid("event time is null".into()));
        }
        check_event_time(times.value(row)).map_err(|e| Rejected::Invalid(e.to_string()))
    }

    /// Why `ts` is refused as too far ahead of processing time, when it is.
    pub fn too_far_ahead(&self, ts: i64) -> Option<Rejected> {
        (ts > self.max_event_time).then(|| {
            Rejected::Invalid(format!(
                "event time {} is more than {}s ahead of processing time",
                chrono::DateTime::from_timestamp_micros(ts)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| ts.to_string()),
                self.ahead_secs
            ))
        })
    }
}
