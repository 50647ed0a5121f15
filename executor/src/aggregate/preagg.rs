//! Pre-aggregation of one epoch's rows in memory, per (window, group key), before anything
//! touches RocksDB: each (window, group) is read and written once per epoch, not once per row.
//!
//! A row of a group already seen allocates nothing: group keys are encoded into a reused
//! buffer and interned (a query grouping by one string column finds the id by the value
//! itself, without encoding), aggregate inputs are read from their columns as each is folded,
//! and an exact-distinct value is appended to its set (`distinct_set`), which sorts and
//! deduplicates once.

use arrow::array::{ArrayRef, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use weir_common::data::value::{encode_group_key_into, ColumnReader, Scalar};
use weir_common::job::{JobSpec, WindowQuery};
use weir_common::query::aggregate::{AggKind, MergeError, Partial};
use weir_common::query::window::{is_closed, Window, WindowsOf};

use crate::aggregate::distinct_set::DistinctSet;
use crate::aggregate::partials::{ByOwner, FastMap, GroupSets};
use crate::plan::event_time::EventTimeRules;

/// Why a decoded row was not aggregated.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    /// Every window of the row is closed under the epoch's watermark.
    Late,
    /// The row must go to the dead letter, with this reason.
    Invalid(String),
}

/// Every row of `valid` rejected with `reason` (a batch the row expressions could not be
/// applied to at all), beside those `rejected` already.
fn all_rejected(
    valid: &[usize],
    reason: &str,
    mut rejected: Vec<(usize, Rejected)>,
) -> Vec<(usize, Rejected)> {
    rejected.extend(
        valid
            .iter()
            .map(|&row| (row, Rejected::Invalid(reason.to_string()))),
    );
    rejected.sort_by_key(|(row, _)| *row);
    rejected
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
    pub fn add(&mut self, ts: i64) {
        self.min = Some(self.min.map_or(ts, |m| m.min(ts)));
        self.max = Some(self.max.map_or(ts, |m| m.max(ts)));
        self.sum += ts as f64;
        self.count += 1;
    }
}

/// The epoch's group keys, each encoded once and then known by its index.
#[derive(Default)]
struct GroupKeys {
    ids: FastMap<Vec<u8>, u32>,
    keys: Vec<Vec<u8>>,
    /// Ids by the value itself when the query groups by one string column (the usual case):
    /// a row then finds its group without encoding its key.
    by_str: FastMap<Vec<u8>, u32>,
}

impl GroupKeys {
    /// The id of the group key of one (non-null) string value; a new value's key is encoded
    /// in `key`.
    fn intern_str(&mut self, value: &str, key: &mut Vec<u8>) -> u32 {
        if let Some(&id) = self.by_str.get(value.as_bytes()) {
            return id;
        }
        encode_group_key_into(&[Scalar::Str(value)], key);
        let id = self.intern(key);
        self.by_str.insert(value.as_bytes().to_vec(), id);
        id
    }

    fn intern(&mut self, key: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key.to_vec());
        self.ids.insert(key.to_vec(), id);
        id
    }
}

/// The epoch's state of one (window, group): its aggregates' partials, and the exact-distinct
/// values of each `count(distinct)` aggregate (none for the others).
struct GroupState {
    partials: Vec<Partial>,
    distinct: Vec<Option<DistinctSet>>,
}

/// One epoch's partial aggregates.
pub struct PreAggregation<'a> {
    /// The job's key groups: a distinct value's is found as it is added.
    key_groups: u32,
    query: &'a WindowQuery,
    watermark: Option<i64>,
    event_time: EventTimeRules<'a>,
    group_keys: GroupKeys,
    groups: FastMap<(Window, u32), GroupState>,
    pub times: EventTimes,
    pub late_rows: u64,
}

impl<'a> PreAggregation<'a> {
    pub fn new(
        job: &'a JobSpec,
        query: &'a WindowQuery,
        watermark: Option<i64>,
        planned_at: i64,
    ) -> Self {
        Self {
            key_groups: job.key_groups,
            query,
            watermark,
            event_time: EventTimeRules::new(job, planned_at),
            group_keys: GroupKeys::default(),
            groups: FastMap::default(),
            times: EventTimes::default(),
            late_rows: 0,
        }
    }

    /// Folds a decoded batch in, through the query's row expressions when it has them;
    /// returns the rows it rejected, by row index.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Vec<(usize, Rejected)> {
        let Some(stage) = &self.query.rows else {
            return self.add_rows(batch, true);
        };
        // The watermark follows every row of the source, not only those the WHERE keeps (as
        // Spark's and Flink's do): event times are checked and taken before the expressions.
        let (mut rejected, valid) = self.take_times(batch);
        let valid_rows = if valid.len() == batch.num_rows() {
            batch.clone()
        } else {
            let indices = UInt32Array::from_iter_values(valid.iter().map(|&i| i as u32));
            match take_record_batch(batch, &indices) {
                Ok(rows) => rows,
                Err(e) => return all_rejected(&valid, &e.to_string(), rejected),
            }
        };
        let staged = match stage.apply(&valid_rows) {
            Ok(staged) => staged,
            Err(e) => return all_rejected(&valid, &e, rejected),
        };
        rejected.extend(
            staged
                .rejected
                .into_iter()
                .map(|(i, why)| (valid[i], Rejected::Invalid(why))),
        );
        let aggregated = self.add_rows(&staged.batch, false);
        rejected.extend(
            aggregated
                .into_iter()
                .map(|(i, why)| (valid[staged.origin[i]], why)),
        );
        rejected.sort_by_key(|(row, _)| *row);
        rejected
    }

    /// Checks the event time of every row of `batch` and takes the valid ones into the
    /// epoch's figures; answers the rows rejected and the valid ones.
    fn take_times(&mut self, batch: &RecordBatch) -> (Vec<(usize, Rejected)>, Vec<usize>) {
        let ts_col = match self.event_time.column(batch) {
            Ok(times) => times,
            Err(all_rejected) => return (all_rejected, Vec::new()),
        };
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            match self.accept_time(ts_col, row) {
                Ok((ts, _)) => {
                    self.times.add(ts);
                    valid.push(row);
                }
                Err(why) => rejected.push((row, why)),
            }
        }
        (rejected, valid)
    }

    /// Row `row`'s event time and windows, or why it goes to the dead letter.
    fn accept_time(
        &self,
        ts_col: &TimestampMicrosecondArray,
        row: usize,
    ) -> Result<(i64, WindowsOf), Rejected> {
        let ts = self.event_time.time(ts_col, row)?;
        // Any i64 can arrive as a time: one whose windows would leave the range is set
        // aside before any arithmetic uses it; its windows are checked once.
        let windows = self
            .query
            .window
            .windows(ts)
            .map_err(|out_of_range| Rejected::Invalid(out_of_range.to_string()))?;
        if let Some(why) = self.event_time.too_far_ahead(ts) {
            return Err(why);
        }
        Ok((ts, windows))
    }

    /// Folds `batch`'s rows in (their event times into the epoch's figures when
    /// `take_times`); returns the rows it rejected, by row index.
    fn add_rows(&mut self, batch: &RecordBatch, take_times: bool) -> Vec<(usize, Rejected)> {
        let mut rejected = Vec::new();
        let column = |name: &str| -> Option<&ArrayRef> {
            batch.schema().index_of(name).ok().map(|i| batch.column(i))
        };
        let ts_col = match self.event_time.column(batch) {
            Ok(times) => times,
            Err(all_rejected) => return all_rejected,
        };
        let group_cols: Vec<Option<ColumnReader<'_>>> = self
            .query
            .group_by
            .iter()
            .map(|g| column(g).and_then(ColumnReader::new))
            .collect();
        let agg_cols: Vec<Option<ColumnReader<'_>>> = self
            .query
            .aggregates
            .iter()
            .map(|a| {
                a.column
                    .as_deref()
                    .and_then(column)
                    .and_then(ColumnReader::new)
            })
            .collect();
        let watermark = self.watermark;
        let one_string_group = match group_cols.as_slice() {
            [Some(ColumnReader::Utf8(column))] => Some(*column),
            _ => None,
        };
        let mut group_values = Vec::with_capacity(group_cols.len());
        let mut key = Vec::new();
        for row in 0..batch.num_rows() {
            let (ts, windows) = match self.accept_time(ts_col, row) {
                Ok(accepted) => accepted,
                Err(why) => {
                    rejected.push((row, why));
                    continue;
                }
            };
            if take_times {
                self.times.add(ts);
            }
            if is_closed(windows.last_end(), watermark) {
                self.late_rows += 1;
                rejected.push((row, Rejected::Late));
                continue;
            }
            let group = match one_string_group {
                Some(column) if !arrow::array::Array::is_null(column, row) => {
                    self.group_keys.intern_str(column.value(row), &mut key)
                }
                _ => {
                    group_values.clear();
                    group_values.extend(
                        group_cols
                            .iter()
                            .map(|c| c.as_ref().map_or(Scalar::Null, |c| c.get(row))),
                    );
                    encode_group_key_into(&group_values, &mut key);
                    self.group_keys.intern(&key)
                }
            };
            windows.for_each(|window| {
                if !is_closed(window.end, watermark) {
                    self.add_row(window, group, &agg_cols, row);
                }
            });
        }
        rejected
    }

    /// Folds the aggregate inputs of `row` (read from `columns`) into (window, group).
    fn add_row(
        &mut self,
        window: Window,
        group: u32,
        columns: &[Option<ColumnReader<'_>>],
        row: usize,
    ) {
        let aggregates = &self.query.aggregates;
        let (keys, key_groups) = (&self.group_keys.keys, self.key_groups);
        let state = self
            .groups
            .entry((window, group))
            .or_insert_with(|| GroupState {
                partials: aggregates.iter().map(|a| a.new_partial()).collect(),
                distinct: (aggregates.iter().enumerate())
                    .map(|(i, a)| {
                        (a.kind == AggKind::CountDistinct).then(|| {
                            // At most 64 aggregates: the index fits.
                            DistinctSet::new(window, i as u8, &keys[group as usize], key_groups)
                        })
                    })
                    .collect(),
            });
        for (i, (agg, column)) in aggregates.iter().zip(columns).enumerate() {
            // An aggregate without a column (`count(*)`) takes a null; one with a column reads
            // it. Choosing before reading keeps a default null from being built for every
            // aggregate and then overwritten (a stall on the stack copy, in profiles).
            let Some(column) = column else {
                if agg.kind != AggKind::CountDistinct {
                    state.partials[i].update(agg.kind, Scalar::Null);
                }
                continue;
            };
            let value = column.get(row);
            if agg.kind != AggKind::CountDistinct {
                state.partials[i].update(agg.kind, value);
            } else if let (false, Some(set)) = (value.is_null(), &mut state.distinct[i]) {
                value.with_bytes(|bytes| set.add(bytes));
            }
        }
    }

    /// Hands the epoch's partials to the owners of their key groups.
    pub fn route(self, out: &mut ByOwner<'_>) -> Result<(), MergeError> {
        let keys = self.group_keys.keys;
        // Every group's set of a (window, aggregate) leaves together: one value per key group.
        let mut sets: FastMap<(Window, u8), GroupSets<'_>> = FastMap::default();
        for ((window, group), state) in self.groups {
            let key = &keys[group as usize];
            for (agg, set) in state.distinct.into_iter().enumerate() {
                if let Some(set) = set {
                    let shards = set.into_shards();
                    sets.entry((window, agg as u8))
                        .or_default()
                        .push((key, shards));
                }
            }
            out.add_group((window, key.clone()), state.partials)?;
        }
        for ((window, agg), sets) in sets {
            out.add_distinct_sets(window, agg, sets)?;
        }
        Ok(())
    }

    /// The epoch's partials, all together (epochs route them with [`Self::route`]).
    #[cfg(test)]
    pub fn into_partials(self) -> crate::aggregate::partials::Partials {
        let owners = vec![0; self.key_groups as usize];
        let mut out = ByOwner::new(&owners, 1, 0);
        self.route(&mut out).unwrap();
        out.finish().pop().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use weir_common::decode::JsonDecoder;
    use weir_common::job::{parse_job, JobSpec};
    use weir_common::query::aggregate::Partial;
    use weir_common::query::keygroup::key_group;
    use weir_common::query::window::Window;

    use crate::state::keys::{key_group_of, parse_key, StateKey, ValueShards};
    use crate::state::{distinct_runs, group_runs};

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
        let mut pre = PreAggregation::new(
            &job,
            job.queries[0].query.windows().unwrap(),
            watermark,
            now,
        );
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
        assert_eq!(pre.times.max, Some(now - MIN));
        let partials = pre.into_partials();
        assert_eq!(partials.groups.len(), 1);
        let ((w, _), group) = partials.groups.iter().next().unwrap();
        assert_eq!(
            *w,
            Window {
                start: now - 5 * MIN,
                end: now
            }
        );
        assert!(matches!(group[0], Partial::Count(3)));
        assert!(matches!(group[2], Partial::SumF(Some(s)) if s == 4.5));
        // Two distinct users in the one window, kept apart from the partials.
        assert_eq!(partials.distinct_values(), 2);
    }

    #[test]
    fn sliding_rows_go_to_their_open_windows_only() {
        let job = job("{column: timestamp, size: 10m, slide: 5m}");
        let now = 1000 * MIN;
        // The row at now-12m is in [now-15m, now-5m) (open) and [now-20m, now-10m) (closed).
        let mut pre = PreAggregation::new(
            &job,
            job.queries[0].query.windows().unwrap(),
            Some(now - 10 * MIN),
            now,
        );
        let rejected = pre.add_batch(&batch(&job, &[("u1", "click", now - 12 * MIN)]));
        assert!(rejected.is_empty());
        assert_eq!(pre.late_rows, 0);
        let windows: Vec<Window> = pre.into_partials().groups.keys().map(|(w, _)| *w).collect();
        assert_eq!(
            windows,
            vec![Window {
                start: now - 15 * MIN,
                end: now - 5 * MIN
            }]
        );
    }

    #[test]
    fn repeated_values_and_groups_are_kept_once_and_split_by_their_key_groups() {
        let job = job("{column: timestamp, size: 5m}");
        let now = 1000 * MIN;
        let mut pre = PreAggregation::new(&job, job.queries[0].query.windows().unwrap(), None, now);
        let rows: Vec<(String, &str, i64)> = (0..300)
            .map(|i| {
                (
                    format!("u{}", i % 100),
                    if i % 3 == 0 { "view" } else { "click" },
                    now - MIN,
                )
            })
            .collect();
        let rows: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|(u, t, ts)| (u.as_str(), *t, *ts))
            .collect();
        // The same rows twice, in two batches: nothing new the second time.
        pre.add_batch(&batch(&job, &rows));
        pre.add_batch(&batch(&job, &rows));
        let key_groups = job.key_groups as usize;
        let owners: Vec<usize> = (0..key_groups).map(|kg| kg % 3).collect();
        let mut out = ByOwner::new(&owners, 3, 0);
        pre.route(&mut out).unwrap();
        let parts = out.finish();
        let groups: usize = parts.iter().map(|p| p.groups.len()).sum();
        assert_eq!(groups, 2);
        let counts: i64 = parts
            .iter()
            .flat_map(|p| p.groups.values())
            .map(|g| match g[0] {
                Partial::Count(n) => n,
                _ => 0,
            })
            .sum();
        assert_eq!(counts, 600);
        // u0..u99 with view only for i % 3 == 0: every user clicks, 100 users view (i and
        // i + 100 * k cover all residues), so 200 (group, user) pairs.
        let distinct: usize = parts.iter().map(|p| p.distinct_values()).sum();
        assert_eq!(distinct, 200);
        for (i, part) in parts.iter().enumerate() {
            for run in &part.distinct {
                let kg = key_group_of(&run.key).unwrap();
                assert_eq!(owners[kg as usize], i);
                // Each value is in its group's run in the group runs of its own key group,
                // and a run is in byte order.
                let Some(StateKey::GroupRuns { window, agg }) = parse_key(&run.key) else {
                    panic!("not a group runs key")
                };
                for group_run in group_runs::iter(&run.run).unwrap() {
                    let group_run = group_run.unwrap();
                    let shards = ValueShards::new(window, agg, group_run.group, key_groups as u32);
                    let mut values = Vec::new();
                    distinct_runs::values_into(group_run.run, &mut values).unwrap();
                    assert!(values.iter().all(|v| shards.of(v) == kg));
                    assert!(values.windows(2).all(|pair| pair[0] < pair[1]));
                }
            }
            for (window, group) in part.groups.keys() {
                assert_eq!(
                    owners[key_group(group, key_groups as u32) as usize],
                    i,
                    "{window:?}"
                );
            }
        }
    }

    /// Group keys found by a string value alone (one string column) are the keys the general
    /// encoding gives, nulls included, and a second group column takes the general way.
    #[test]
    fn group_keys_are_the_same_whichever_way_a_row_finds_them() {
        use weir_common::data::value::{decode_group_key, GroupValue};
        let job_with = |group_by: &str| {
            let text = format!(
                r#"
name: t
source:
  kafka: {{bootstrap_servers: "b:1", topic: t}}
  schema: {{user_id: string not null, event_type: string, region: string, timestamp: timestamp not null}}
query:
  watermark: {{column: timestamp, delay: 10m}}
  window: {{column: timestamp, size: 5m}}
  group_by: {group_by}
  aggregates:
    n: count(*)
    users: count(distinct user_id)
checkpoint_location: /tmp/x
sinks: [{{delta: {{path: /tmp/y}}}}]
"#
            );
            parse_job(&text, Path::new("/")).unwrap()
        };
        let lines = [
            r#"{"user_id":"a","event_type":"click","region":"eu","timestamp":"2026-11-24T10:00:00Z"}"#,
            r#"{"user_id":"b","event_type":null,"region":"eu","timestamp":"2026-11-24T10:00:01Z"}"#,
            r#"{"user_id":"c","region":"us","timestamp":"2026-11-24T10:00:02Z"}"#,
            r#"{"user_id":"a","event_type":"click","region":"us","timestamp":"2026-11-24T10:00:03Z"}"#,
            r#"{"user_id":"d","event_type":"view","region":"us","timestamp":"2026-11-24T10:00:04Z"}"#,
        ];
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:01:00Z")
            .unwrap()
            .timestamp_micros();
        let groups_of = |job: &JobSpec| {
            let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            let decoded = JsonDecoder::new(job.input_schema.clone(), 1 << 20).decode(&bytes);
            assert!(decoded.bad.is_empty(), "{:?}", decoded.bad);
            let mut pre =
                PreAggregation::new(job, job.queries[0].query.windows().unwrap(), None, now);
            for b in &decoded.batches {
                assert!(pre.add_batch(b).is_empty());
            }
            let mut groups: Vec<(Vec<GroupValue>, i64)> = pre
                .into_partials()
                .groups
                .into_iter()
                .map(|((_, key), partials)| {
                    let count = match partials[0] {
                        Partial::Count(n) => n,
                        _ => -1,
                    };
                    (decode_group_key(&key).unwrap(), count)
                })
                .collect();
            groups.sort_by_key(|(key, _)| format!("{key:?}"));
            groups
        };
        let s = |v: &str| GroupValue::Str(v.to_string());
        assert_eq!(
            groups_of(&job_with("[event_type]")),
            vec![
                (vec![GroupValue::Null], 2),
                (vec![s("click")], 2),
                (vec![s("view")], 1),
            ]
        );
        assert_eq!(
            groups_of(&job_with("[event_type, region]")),
            vec![
                (vec![GroupValue::Null, s("eu")], 1),
                (vec![GroupValue::Null, s("us")], 1),
                (vec![s("click"), s("eu")], 1),
                (vec![s("click"), s("us")], 1),
                (vec![s("view"), s("us")], 1),
            ]
        );
    }

    /// Timestamps at and past every edge, as JSON numbers and strings, among good records:
    /// each hostile one is set aside (by the decoder, as out of range, or as too far ahead) or
    /// lies in the supported range; the good records are all counted in their window, and no
    /// window leaves the supported range.
    #[test]
    fn times_at_every_edge_are_set_aside_and_change_no_other_window() {
        use weir_common::query::window::{MAX_EVENT_TIME, MIN_EVENT_TIME};
        let job = job("{column: timestamp, size: 5m}");
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:01:00Z")
            .unwrap()
            .timestamp_micros();
        // (JSON value, whether it must be out of range)
        let hostile = [
            ("9223372036854775807", true),
            ("-9223372036854775808", true),
            ("-9223372036854775807", true),
            ("9223372036854775806", true),
            ("253402300800000000", true),
            ("-62135596800000001", true),
            ("9223372036854775808", false),
            ("-9223372036854775809", false),
            ("1e300", false),
            ("-1e300", false),
            ("1.5", false),
            ("-0.0", false),
            ("\"+275760-09-13T00:00:00Z\"", false),
            ("\"-262143-01-01T00:00:00Z\"", false),
            ("\"9999-12-31T23:59:59.999999Z\"", false),
            ("\"0001-01-01T00:00:00Z\"", false),
            ("\"0000-12-31T23:59:59Z\"", false),
            ("\"10000-01-01T00:00:00Z\"", false),
            ("\"2026-11-24T10:00:00+99:00\"", false),
            ("true", false),
            ("[1]", false),
            ("{}", false),
        ];
        let mut lines = Vec::new();
        for (i, (ts, _)) in hostile.iter().enumerate() {
            lines.push(format!(
                r#"{{"user_id":"good{i}","event_type":"click","amount":1,"timestamp":"2026-11-24T10:00:00Z"}}"#
            ));
            lines.push(format!(
                r#"{{"user_id":"bad{i}","event_type":"click","amount":1,"timestamp":{ts}}}"#
            ));
        }
        let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let decoded = JsonDecoder::new(job.input_schema.clone(), 1 << 20).decode(&bytes);
        let mut pre = PreAggregation::new(&job, job.queries[0].query.windows().unwrap(), None, now);
        let mut set_aside: Vec<(usize, String)> = decoded.bad.clone();
        let mut base = 0;
        for b in &decoded.batches {
            for (row, why) in pre.add_batch(b) {
                let Rejected::Invalid(reason) = why else {
                    panic!("no watermark, so nothing is late: {why:?}");
                };
                set_aside.push((decoded.good[base + row], reason));
            }
            base += b.num_rows();
        }
        for (i, reason) in &set_aside {
            assert!(i % 2 == 1, "good record {i} set aside: {reason}");
        }
        for (k, (ts, out_of_range)) in hostile.iter().enumerate() {
            let reason = set_aside
                .iter()
                .find(|(i, _)| *i == 2 * k + 1)
                .map(|(_, r)| r);
            if *out_of_range {
                assert!(
                    reason.is_some_and(|r| r.starts_with("event time out of range")),
                    "{ts}: {reason:?}"
                );
            }
        }
        let partials = pre.into_partials();
        let start = now - now.rem_euclid(5 * MIN);
        let good_window = Window {
            start,
            end: start + 5 * MIN,
        };
        let count = |g: &Vec<Partial>| match g[0] {
            Partial::Count(n) => n,
            _ => 0,
        };
        let in_good: i64 = partials
            .groups
            .iter()
            .filter(|((w, _), _)| *w == good_window)
            .map(|(_, g)| count(g))
            .sum();
        assert_eq!(in_good, hostile.len() as i64);
        let kept = hostile.len() - (set_aside.len());
        let counted: i64 = partials.groups.values().map(count).sum();
        assert_eq!(counted, (hostile.len() + kept) as i64);
        for (w, _) in partials.groups.keys() {
            assert!(
                MIN_EVENT_TIME <= w.start && w.end <= MAX_EVENT_TIME + 5 * MIN,
                "{w:?}"
            );
        }
    }

    /// A JSON value for a field, from what producers get wrong as much as right.
    fn field_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("\"2026-11-24T10:00:00Z\"".to_string()),
            Just("\"click\"".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just("1e400".to_string()),
            Just("-1e400".to_string()),
            Just("9223372036854775807".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"+275760-09-13T00:00:00Z\"".to_string()),
            Just("\"0001-01-01T00:00:00Z\"".to_string()),
            Just("\"9999-12-31T23:59:59.999999Z\"".to_string()),
            Just("\"2026-02-30T25:61:61Z\"".to_string()),
            Just("\"\\ud800\"".to_string()),
            Just("[[[[[[[[[[1]]]]]]]]]]".to_string()),
            Just("{\"k\":{\"k\":1}}".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(weir_common::testing::fuzzing::config(300))]

        /// The record decoder, JSON to Arrow to window rows, on records built from any mix of
        /// field values and then corrupted at any byte: every record is decoded or set aside
        /// exactly once, nothing panics, and every row that is aggregated lies in windows of
        /// the supported range that hold its time.
        #[test]
        fn any_records_are_windowed_or_set_aside(
            records in proptest::collection::vec(
                (field_value(), field_value(), field_value(), field_value(),
                 proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), proptest::num::u8::ANY))),
                1..40,
            ),
            watermark in proptest::option::of(proptest::num::i64::ANY),
            planned_at in proptest::num::i64::ANY,
        ) {
            let job = job("{column: timestamp, size: 10m, slide: 5m}");
            let lines: Vec<Vec<u8>> = records
                .iter()
                .map(|(user, kind, amount, ts, corrupt)| {
                    let mut line = format!(
                        r#"{{"user_id":{user},"event_type":{kind},"amount":{amount},"timestamp":{ts}}}"#
                    )
                    .into_bytes();
                    if let Some((at, byte)) = corrupt {
                        let i = at.index(line.len());
                        line[i] = *byte;
                    }
                    line
                })
                .collect();
            let bytes: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let decoded = JsonDecoder::new(job.input_schema.clone(), 1 << 20).decode(&bytes);
            let mut seen: Vec<usize> = decoded.good.clone();
            seen.extend(decoded.bad.iter().map(|(i, _)| *i));
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..lines.len()).collect::<Vec<_>>());
            let rows: usize = decoded.batches.iter().map(|b| b.num_rows()).sum();
            proptest::prop_assert_eq!(rows, decoded.good.len());

            let mut pre = PreAggregation::new(&job, job.queries[0].query.windows().unwrap(), watermark, planned_at);
            let mut set_aside = 0;
            for b in &decoded.batches {
                set_aside += pre.add_batch(b).len();
            }
            let partials = pre.into_partials();
            let counted: i64 = partials.groups.values().map(|g| match g[0] {
                Partial::Count(n) => n,
                _ => 0,
            }).sum();
            // Each kept row is in one or two windows (10m every 5m, some closed).
            proptest::prop_assert!(counted <= 2 * (rows - set_aside) as i64);
            for (w, _) in partials.groups.keys() {
                proptest::prop_assert!(w.end - w.start == 10 * MIN);
                proptest::prop_assert!(weir_common::query::window::MIN_EVENT_TIME - 10 * MIN <= w.start);
                proptest::prop_assert!(w.end <= weir_common::query::window::MAX_EVENT_TIME + 10 * MIN);
            }
        }
    }
}
