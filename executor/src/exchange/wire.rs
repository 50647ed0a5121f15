//! Partial aggregates as Arrow record batches, the form they take on an exchange stream.
//!
//! One schema holds all four kinds of entries; `payload` is the encoded partial states of a
//! group row, a run of distinct values (its run key in `group`), a shard count, or a dedup
//! query's row (its position, then the record; its key in `group`, its event time in
//! `window_start`).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::UInt8Builder;
use arrow::array::{Array, BinaryArray, BinaryBuilder, Int64Array, Int64Builder, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use weir_common::query::aggregate::{decode_partials, encode_partials};
use weir_common::query::window::Window;

use crate::aggregate::partials::{DistinctRun, FirstRow, Partials, PlanPartials, Shape};
use crate::state::keys::tag;

const KIND_GROUP: u8 = 0;
const KIND_DISTINCT: u8 = 1;
const KIND_SHARD_COUNT: u8 = 2;
const KIND_FIRST_ROW: u8 = 3;

/// Rows per batch, and payload bytes after which a batch is cut early (sketches are large).
pub const MAX_BATCH_ROWS: usize = 4096;
pub const MAX_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("exchange batch does not have the partials schema: {0}")]
    Schema(String),
    #[error("exchange batch row {row}: {reason}")]
    Row { row: usize, reason: String },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The schema of exchange batches.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("kind", DataType::UInt8, false),
            Field::new("window_start", DataType::Int64, false),
            Field::new("window_end", DataType::Int64, false),
            Field::new("agg", DataType::UInt8, false),
            Field::new("group", DataType::Binary, false),
            Field::new("payload", DataType::Binary, false),
        ]))
    });
    SCHEMA.clone()
}

/// One group row or shard count on its way into a batch.
pub enum Entry {
    Group(
        (Window, Vec<u8>),
        Vec<weir_common::query::aggregate::Partial>,
    ),
    ShardCount((Window, u8, Vec<u8>), i64),
    FirstRow(Vec<u8>, FirstRow),
}

/// The entries of some partials, shareable so a stream can be sent again after a failure:
/// per operator, its group rows, shard counts and dedup rows, then its distinct runs.
pub struct Entries {
    parts: Vec<Part>,
}

/// One operator's entries.
struct Part {
    op: u8,
    rows: Vec<Entry>,
    distinct: Vec<DistinctRun>,
}

impl Part {
    fn len(&self) -> usize {
        self.rows.len() + self.distinct.len()
    }
}

impl Entries {
    pub fn len(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn entries(partials: PlanPartials) -> Arc<Entries> {
    let parts = partials
        .0
        .into_iter()
        .enumerate()
        .map(|(op, partials)| {
            let Partials {
                groups,
                distinct,
                shard_counts,
                firsts,
            } = partials;
            let rows = groups
                .into_iter()
                .map(|(k, p)| Entry::Group(k, p))
                .chain(
                    shard_counts
                        .into_iter()
                        .map(|(k, c)| Entry::ShardCount(k, c)),
                )
                .chain(firsts.into_iter().map(|(k, r)| Entry::FirstRow(k, r)))
                .collect();
            Part {
                // A plan's operators are numbered by u8 (state tags hold 6 bits of it).
                op: op as u8,
                rows,
                distinct,
            }
        })
        .collect();
    Arc::new(Entries { parts })
}

/// Turns entries into bounded record batches, lazily, so a sender builds one batch at a time.
pub struct BatchEncoder {
    entries: Arc<Entries>,
    /// The operator part being encoded, and the next entry of it.
    part: usize,
    next: usize,
}

impl BatchEncoder {
    pub fn new(entries: Arc<Entries>) -> Self {
        Self {
            entries,
            part: 0,
            next: 0,
        }
    }

    /// The next entry as (kind, window, aggregate, group, payload), the kind tagged with its
    /// operator; moves past it.
    fn take_row(&mut self) -> Option<Result<Row<'_>, String>> {
        loop {
            let part = self.entries.parts.get(self.part)?;
            if self.next < part.len() {
                break;
            }
            self.part += 1;
            self.next = 0;
        }
        let i = self.next;
        self.next += 1;
        let part = &self.entries.parts[self.part];
        let tagged = |kind: u8| tag(part.op, kind);
        let Some(entry) = part.rows.get(i) else {
            let run = part.distinct.get(i - part.rows.len())?;
            let window = Window { start: 0, end: 0 };
            return Some(Ok((
                tagged(KIND_DISTINCT),
                window,
                0,
                &run.key,
                Cow::Borrowed(&run.run),
            )));
        };
        Some(match entry {
            Entry::Group((window, g), partials) => encode_partials(partials)
                .map(|p| (tagged(KIND_GROUP), *window, 0, g, Cow::Owned(p)))
                .map_err(|e| format!("encoding partial states: {e}")),
            Entry::ShardCount((window, a, g), c) => Ok((
                tagged(KIND_SHARD_COUNT),
                *window,
                *a,
                g,
                Cow::Owned(c.to_be_bytes().to_vec()),
            )),
            Entry::FirstRow(key, row) => {
                let mut payload = Vec::with_capacity(12 + row.record.len());
                payload.extend_from_slice(&row.position.0.to_be_bytes());
                payload.extend_from_slice(&row.position.1.to_be_bytes());
                payload.extend_from_slice(&row.record);
                let at = Window {
                    start: row.event_time,
                    end: row.event_time,
                };
                Ok((tagged(KIND_FIRST_ROW), at, 0, key, Cow::Owned(payload)))
            }
        })
    }
}

type Row<'a> = (u8, Window, u8, &'a Vec<u8>, Cow<'a, [u8]>);

impl Iterator for BatchEncoder {
    type Item = Result<RecordBatch, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut kind = UInt8Builder::new();
        let mut start = Int64Builder::new();
        let mut end = Int64Builder::new();
        let mut agg = UInt8Builder::new();
        let mut group = BinaryBuilder::new();
        let mut payload = BinaryBuilder::new();
        let mut rows = 0;
        let mut bytes = 0;
        while rows < MAX_BATCH_ROWS && bytes < MAX_BATCH_BYTES {
            let (k, window, a, g, p) = match self.take_row() {
                None => break,
                Some(Ok(row)) => row,
                Some(Err(reason)) => return Some(Err(WireError::Row { row: rows, reason })),
            };
            bytes += g.len() + p.len() + 18;
            kind.append_value(k);
            start.append_value(window.start);
            end.append_value(window.end);
            agg.append_value(a);
            group.append_value(g);
            payload.append_value(p.as_ref());
            rows += 1;
        }
        if rows == 0 {
            return None;
        }
        Some(
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(kind.finish()),
                    Arc::new(start.finish()),
                    Arc::new(end.finish()),
                    Arc::new(agg.finish()),
                    Arc::new(group.finish()),
                    Arc::new(payload.finish()),
                ],
            )
            .map_err(WireError::from),
        )
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, WireError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| WireError::Schema(format!("column {name} is missing or mistyped")))
}

/// Merges the entries of an exchange batch into `into`, each checked against the shape of its
/// operator (`shapes[op]`) first; returns the number of rows.
pub fn decode_into(
    batch: &RecordBatch,
    shapes: &[Shape],
    into: &mut PlanPartials,
) -> Result<usize, WireError> {
    let kind = column::<UInt8Array>(batch, "kind")?;
    let start = column::<Int64Array>(batch, "window_start")?;
    let end = column::<Int64Array>(batch, "window_end")?;
    let agg = column::<UInt8Array>(batch, "agg")?;
    let group = column::<BinaryArray>(batch, "group")?;
    let payload = column::<BinaryArray>(batch, "payload")?;
    if [kind.null_count(), start.null_count(), end.null_count()]
        .iter()
        .chain(&[agg.null_count(), group.null_count(), payload.null_count()])
        .any(|n| *n > 0)
    {
        return Err(WireError::Schema("null in a non-null column".into()));
    }
    let columns = Columns {
        kind,
        start,
        end,
        agg,
        group,
        payload,
    };
    for row in 0..batch.num_rows() {
        let kind = columns.kind.value(row);
        let op = kind >> 2;
        let decoded = match shapes.get(usize::from(op)) {
            Some(shape) => decode_row(row, kind & 3, &columns, shape, into.operator(op)),
            None => Err(format!("operator {op} is not in this plan")),
        };
        decoded.map_err(|reason| WireError::Row { row, reason })?;
    }
    Ok(batch.num_rows())
}

/// The columns of an exchange batch, downcast.
struct Columns<'a> {
    kind: &'a UInt8Array,
    start: &'a Int64Array,
    end: &'a Int64Array,
    agg: &'a UInt8Array,
    group: &'a BinaryArray,
    payload: &'a BinaryArray,
}

/// Checks one row against `shape` and merges it into `into`.
fn decode_row(
    row: usize,
    kind: u8,
    c: &Columns<'_>,
    shape: &Shape,
    into: &mut Partials,
) -> Result<(), String> {
    let window = Window {
        start: c.start.value(row),
        end: c.end.value(row),
    };
    let g = c.group.value(row);
    let p = c.payload.value(row);
    match kind {
        KIND_GROUP => {
            shape.check_window(window)?;
            let partials = decode_partials(p).map_err(|e| format!("partial states: {e}"))?;
            let partials = shape.admit_partials(partials)?;
            into.add_group((window, g.to_vec()), partials)
                .map_err(|e| e.to_string())
        }
        KIND_DISTINCT => {
            shape.check_distinct_run(g, p)?;
            into.distinct.push(DistinctRun {
                key: g.to_vec(),
                run: p.to_vec(),
            });
            Ok(())
        }
        KIND_SHARD_COUNT => {
            shape.check_window(window)?;
            let agg = c.agg.value(row);
            shape.check_distinct_aggregate(agg)?;
            let count: [u8; 8] = p
                .try_into()
                .map_err(|_| "shard count is not 8 bytes".to_string())?;
            let count = i64::from_be_bytes(count);
            if count < 0 {
                return Err(format!("negative shard count {count}"));
            }
            into.add_shard_count((window, agg, g.to_vec()), count)
                .map_err(|e| e.to_string())
        }
        KIND_FIRST_ROW => {
            shape.check_first_row(window.start)?;
            let (partition, rest) = p
                .split_first_chunk::<4>()
                .ok_or("a row without its position")?;
            let (offset, record) = rest
                .split_first_chunk::<8>()
                .ok_or("a row without its position")?;
            let row = FirstRow {
                event_time: window.start,
                position: (i32::from_be_bytes(*partition), i64::from_be_bytes(*offset)),
                record: record.to_vec(),
            };
            into.add_first(g.to_vec(), row);
            Ok(())
        }
        other => Err(format!("unknown entry kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::partials::distinct_runs;
    use crate::state::distinct_runs::RunWriter;
    use crate::state::group_runs::GroupRunsWriter;

    /// One operator's partials as a stream's.
    fn one(p: Partials) -> PlanPartials {
        PlanPartials(vec![p])
    }

    /// [`decode_into`] for a plan of one operator of `shape`.
    fn decode_one(
        batch: &RecordBatch,
        shape: &Shape,
        into: &mut Partials,
    ) -> Result<usize, WireError> {
        let mut plan = one(std::mem::take(into));
        let decoded = decode_into(batch, std::slice::from_ref(shape), &mut plan);
        *into = plan.take(0);
        decoded
    }
    use weir_common::query::aggregate::Partial;

    #[test]
    fn partials_survive_the_round_trip_in_bounded_batches() {
        let w = Window { start: 0, end: 300 };
        let mut p = Partials::default();
        let values: Vec<[u8; 4]> = (0..10_000u32).map(u32::to_be_bytes).collect();
        let values: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        p.distinct = distinct_runs(0, w, 1, b"click", &values, 64);
        let runs = p.distinct.clone();
        for g in 0..5_000 {
            p.add_group((w, format!("g{g}").into_bytes()), group_row(2))
                .unwrap();
        }
        p.add_shard_count((w, 1, b"view".to_vec()), 42).unwrap();
        let sent = p.len();
        let batches: Vec<RecordBatch> = BatchEncoder::new(entries(one(p)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), sent.div_ceil(MAX_BATCH_ROWS));
        assert!(batches.iter().all(|b| b.num_rows() <= MAX_BATCH_ROWS));
        let mut back = Partials::default();
        let rows: usize = batches
            .iter()
            .map(|b| decode_one(b, &Shape::for_tests(), &mut back).unwrap())
            .sum();
        assert_eq!(rows, sent);
        assert_eq!(back.distinct, runs);
        assert_eq!(back.unique_distinct(), 10_000);
        assert_eq!(back.groups.len(), 5_000);
        assert!(matches!(
            back.groups[&(w, b"g17".to_vec())][0],
            Partial::Count(2)
        ));
        assert_eq!(back.shard_counts[&(w, 1, b"view".to_vec())], 42);
    }

    /// A dedup query's rows cross with their event time, position and bytes; of two rows of
    /// one key the one read first is kept, whichever arrives first. A window query refuses them.
    #[test]
    fn dedup_rows_survive_the_round_trip_and_the_first_read_wins() {
        let row = |partition: i32, offset: i64, record: &[u8]| FirstRow {
            event_time: 17_000_000,
            position: (partition, offset),
            record: record.to_vec(),
        };
        let mut late = Partials::default();
        late.add_first(b"a".to_vec(), row(1, 5, br#"{"id":"a","n":2}"#));
        let mut early = Partials::default();
        early.add_first(b"a".to_vec(), row(0, 9, br#"{"id":"a","n":1}"#));
        early.add_first(b"b".to_vec(), row(0, 3, b""));
        let dedup =
            weir_common::job::reference::dedup_job_file("d", "  files: {path: /in}\n", "/out");
        let dedup =
            Shape::of(&weir_common::job::parse_job(&dedup, std::path::Path::new("/")).unwrap());
        let mut back = Partials::default();
        for p in [late, early] {
            decode_one(&batch_of(p), &dedup, &mut back).unwrap();
        }
        assert_eq!(back.firsts.len(), 2);
        assert_eq!(
            back.firsts[&b"a".to_vec()],
            row(0, 9, br#"{"id":"a","n":1}"#)
        );
        assert_eq!(back.firsts[&b"b".to_vec()], row(0, 3, b""));
        let mut one = Partials::default();
        one.add_first(b"a".to_vec(), row(0, 1, b"{}"));
        let err = decode_one(
            &batch_of(one),
            &Shape::for_tests(),
            &mut Partials::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("raw row"), "{err}");
    }

    /// One stream carries every operator's entries, each checked against its own operator's
    /// shape and merged into its partials; an operator the plan lacks is refused.
    #[test]
    fn a_stream_carries_each_operators_entries_to_its_own_partials() {
        let w = Window { start: 0, end: 300 };
        let mut window_op = Partials::default();
        window_op
            .add_group((w, b"click".to_vec()), group_row(3))
            .unwrap();
        let mut dedup_op = Partials::default();
        dedup_op.add_first(
            b"a".to_vec(),
            FirstRow {
                event_time: 17_000_000,
                position: (0, 1),
                record: b"{}".to_vec(),
            },
        );
        let dedup =
            weir_common::job::reference::dedup_job_file("d", "  files: {path: /in}\n", "/out");
        let dedup =
            Shape::of(&weir_common::job::parse_job(&dedup, std::path::Path::new("/")).unwrap());
        let batch = BatchEncoder::new(entries(PlanPartials(vec![window_op, dedup_op])))
            .next()
            .unwrap()
            .unwrap();
        let mut back = PlanPartials::default();
        let shapes = [Shape::for_tests(), dedup];
        assert_eq!(decode_into(&batch, &shapes, &mut back).unwrap(), 2);
        assert_eq!(back.0[0].groups.len(), 1);
        assert!(back.0[0].firsts.is_empty());
        assert_eq!(back.0[1].firsts.len(), 1);
        assert!(back.0[1].groups.is_empty());
        let err = decode_into(&batch, &shapes[..1], &mut PlanPartials::default()).unwrap_err();
        assert!(err.to_string().contains("operator 1"), "{err}");
    }

    #[test]
    fn a_batch_of_another_shape_is_refused() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "kind",
                DataType::Int64,
                false,
            )])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let err = decode_one(&batch, &Shape::for_tests(), &mut Partials::default()).unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }

    /// A run must be whole, in byte order and without repeats, under a whole run key: the
    /// fold writes it as it is, and counts its values by its header.
    #[test]
    fn a_distinct_run_that_is_cut_or_out_of_order_is_refused() {
        let w = Window { start: 0, end: 300 };
        let good = distinct_runs(0, w, 1, b"click", &[b"u1"], 64).remove(0);
        let refused = |run: DistinctRun| {
            let p = Partials {
                distinct: vec![good.clone(), run],
                ..Partials::default()
            };
            decode_one(&batch_of(p), &Shape::for_tests(), &mut Partials::default())
                .unwrap_err()
                .to_string()
        };
        let mut cut_key = good.clone();
        // Cut inside its group key: the length it announces runs past the end.
        cut_key.key.truncate(good.key.len() - 2);
        let mut cut_run = good.clone();
        cut_run.run.pop();
        // Two values of one group, or one value of each of two groups.
        let two = |(g, a): (&[u8], &[u8]), (h, b): (&[u8], &[u8])| {
            let mut runs = GroupRunsWriter::with_capacity(0);
            match g == h {
                true => runs.push(g, [a, b]).unwrap(),
                false => {
                    runs.push(g, [a]).unwrap();
                    runs.push(h, [b]).unwrap();
                }
            }
            DistinctRun {
                key: good.key.clone(),
                run: runs.finish(),
            }
        };
        let click = &b"click"[..];
        for (run, expected) in [
            (cut_key, "not a distinct run"),
            (cut_run, "cut short"),
            (two((click, b"u2"), (click, b"u1")), "not after"),
            (two((click, b"u1"), (click, b"u1")), "not after"),
            (two((b"view", b"u1"), (click, b"u2")), "not after"),
        ] {
            let err = refused(run);
            assert!(
                err.contains("row 1") && err.contains(expected),
                "{expected}: {err}"
            );
        }
        // A run of one group under a key of its own, as a peer of an earlier version sends
        // it, is taken as it is.
        let mut run = RunWriter::default();
        run.push(b"u1").unwrap();
        let kg = crate::state::keys::key_group_of(&good.key).unwrap();
        let earlier = DistinctRun {
            key: crate::state::keys::run_key(0, kg, w, 1, b"click"),
            run: run.finish(),
        };
        let p = Partials {
            distinct: vec![earlier.clone()],
            ..Partials::default()
        };
        let mut into = Partials::default();
        decode_one(&batch_of(p), &Shape::for_tests(), &mut into).unwrap();
        assert_eq!(into.distinct, [earlier]);
    }

    /// The partial states of a group row of [`Shape::for_tests`] with `n` rows.
    fn group_row(n: i64) -> Vec<Partial> {
        vec![Partial::Count(n), Partial::Distinct(0)]
    }

    /// One batch holding `p`'s entries.
    fn batch_of(p: Partials) -> RecordBatch {
        BatchEncoder::new(entries(one(p))).next().unwrap().unwrap()
    }

    /// Entries that do not fit the query, or whose counts overflow, fail with the reason; none
    /// panics, and what they would have merged into is not wrapped.
    #[test]
    fn entries_that_do_not_fit_the_query_are_refused() {
        let shape = Shape::for_tests();
        let w = Window {
            start: 300,
            end: 600,
        };
        let group = |window: Window, partials: Vec<Partial>| {
            let mut p = Partials::default();
            p.add_group((window, b"click".to_vec()), partials).unwrap();
            batch_of(p)
        };
        let shard = |window: Window, agg: u8, count: i64| {
            let mut p = Partials::default();
            p.add_shard_count((window, agg, b"click".to_vec()), count)
                .unwrap();
            batch_of(p)
        };
        let distinct = |key: Vec<u8>| {
            let mut p = Partials {
                distinct: distinct_runs(0, w, 1, b"click", &[b"u1"], 16),
                ..Partials::default()
            };
            p.distinct[0].key = key;
            batch_of(p)
        };
        let key = |window: Window, agg: u8, kg: u32| {
            crate::state::keys::group_runs_key(0, kg, window, agg)
        };
        let cases = [
            (
                group(Window { start: 1, end: 301 }, group_row(1)),
                "not a window",
            ),
            (
                group(
                    Window {
                        start: 300,
                        end: 900,
                    },
                    group_row(1),
                ),
                "not a window",
            ),
            (
                group(
                    Window {
                        start: i64::MAX - 299,
                        end: i64::MAX,
                    },
                    group_row(1),
                ),
                "not a window",
            ),
            (group(w, vec![Partial::Count(1)]), "1 partial states for 2"),
            (
                group(w, vec![Partial::Distinct(1), Partial::Distinct(0)]),
                "no state",
            ),
            (
                group(w, vec![Partial::Count(-5), Partial::Distinct(0)]),
                "no state",
            ),
            (shard(w, 0, 3), "not a count(distinct)"),
            (shard(w, 9, 3), "not a count(distinct)"),
            (shard(w, 1, -3), "negative"),
            (shard(Window { start: 0, end: 299 }, 1, 3), "not a window"),
            (distinct(key(w, 0, 3)), "not a count(distinct)"),
            (distinct(key(w, 1, 64)), "key group"),
            (
                distinct(key(Window { start: 5, end: 305 }, 1, 3)),
                "not a window",
            ),
            (
                distinct(crate::state::keys::group_runs_key(1, 3, w, 1)),
                "operator",
            ),
            (distinct(b"\x00\x01short".to_vec()), "not a distinct"),
        ];
        for (batch, expected) in cases {
            let err = decode_one(&batch, &shape, &mut Partials::default()).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // Counts that would wrap when merged fail the merge instead.
        let mut into = Partials::default();
        decode_one(&group(w, group_row(i64::MAX)), &shape, &mut into).unwrap();
        let err = decode_one(&group(w, group_row(1)), &shape, &mut into).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        assert!(matches!(
            into.groups[&(w, b"click".to_vec())][0],
            Partial::Count(i64::MAX)
        ));
        decode_one(&shard(w, 1, i64::MAX), &shape, &mut into).unwrap();
        let err = decode_one(&shard(w, 1, 1), &shape, &mut into).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(weir_common::testing::fuzzing::config(500))]

        /// Any bytes in any column of an exchange batch: decoding answers rows or an error,
        /// never a panic.
        #[test]
        fn any_batch_decodes_or_fails_cleanly(
            rows in proptest::collection::vec(
                (0u8..4, proptest::num::i64::ANY, proptest::num::i64::ANY, 0u8..4,
                 proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
                1..8,
            )
        ) {
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.3))),
                    Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.4.as_slice()))),
                    Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.5.as_slice()))),
                ],
            ).unwrap();
            let _ = decode_one(&batch, &Shape::for_tests(), &mut Partials::default());
        }

        /// Real entries with one byte of their payload changed: decoded or refused, no panic.
        #[test]
        fn corrupted_entries_decode_or_fail_cleanly(at in 0usize..4096, byte in proptest::num::u8::ANY) {
            let mut p = Partials::default();
            let w = Window { start: 0, end: 300 };
            p.add_group((w, b"click".to_vec()), group_row(7)).unwrap();
            p.add_shard_count((w, 1, b"view".to_vec()), 3).unwrap();
            p.distinct = distinct_runs(0, w, 1, b"click", &[b"u1", b"u2"], 64);
            let batch = batch_of(p);
            let payload = batch.column_by_name("payload").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
            let mut values: Vec<Vec<u8>> = payload.iter().map(|v| v.unwrap().to_vec()).collect();
            let total: usize = values.iter().map(Vec::len).sum();
            let mut at = at % total;
            for v in &mut values {
                if at < v.len() {
                    v[at] = byte;
                    break;
                }
                at -= v.len();
            }
            let mut columns = batch.columns().to_vec();
            columns[5] = Arc::new(BinaryArray::from_iter_values(values.iter().map(Vec::as_slice)));
            let batch = RecordBatch::try_new(schema(), columns).unwrap();
            let _ = decode_one(&batch, &Shape::for_tests(), &mut Partials::default());
        }
    }
}
