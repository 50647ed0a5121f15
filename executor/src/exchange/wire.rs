//! Partial aggregates as Arrow record batches, the form they take on an exchange stream.
//!
//! One schema holds all three kinds of entries; `payload` is the encoded partial states of a
//! group row, the bytes of a distinct value, or a shard count.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::UInt8Builder;
use arrow::array::{Array, BinaryArray, BinaryBuilder, Int64Array, Int64Builder, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use weir_common::aggregate::{decode_partials, encode_partials};
use weir_common::window::Window;

use crate::partials::{DistinctKeys, Partials};
use crate::state_keys::is_distinct_key;

const KIND_GROUP: u8 = 0;
const KIND_DISTINCT: u8 = 1;
const KIND_SHARD_COUNT: u8 = 2;

/// The group column of a distinct entry, whose key holds its group.
static NO_GROUP: Vec<u8> = Vec::new();

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
    Group((Window, Vec<u8>), Vec<weir_common::aggregate::Partial>),
    ShardCount((Window, u8, Vec<u8>), i64),
}

/// The entries of some partials, shareable so a stream can be sent again after a failure:
/// group rows and shard counts, then the distinct values (as their distinct keys, all in
/// `payload`).
pub struct Entries {
    rows: Vec<Entry>,
    distinct: DistinctKeys,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.rows.len() + self.distinct.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn entries(partials: Partials) -> Arc<Entries> {
    let Partials {
        groups,
        distinct,
        shard_counts,
    } = partials;
    let rows = groups
        .into_iter()
        .map(|(k, p)| Entry::Group(k, p))
        .chain(
            shard_counts
                .into_iter()
                .map(|(k, c)| Entry::ShardCount(k, c)),
        )
        .collect();
    Arc::new(Entries { rows, distinct })
}

/// Turns entries into bounded record batches, lazily, so a sender builds one batch at a time.
pub struct BatchEncoder {
    entries: Arc<Entries>,
    next: usize,
}

impl BatchEncoder {
    pub fn new(entries: Arc<Entries>) -> Self {
        Self { entries, next: 0 }
    }

    /// Entry `i` as (kind, window, aggregate, group, payload).
    fn row(&self, i: usize) -> Option<Result<Row<'_>, String>> {
        let rows = &self.entries.rows;
        let Some(entry) = rows.get(i) else {
            let key = self.entries.distinct.get(i - rows.len())?;
            let window = Window { start: 0, end: 0 };
            return Some(Ok((
                KIND_DISTINCT,
                window,
                0,
                &NO_GROUP,
                Cow::Borrowed(key),
            )));
        };
        Some(match entry {
            Entry::Group((window, g), partials) => encode_partials(partials)
                .map(|p| (KIND_GROUP, *window, 0, g, Cow::Owned(p)))
                .map_err(|e| format!("encoding partial states: {e}")),
            Entry::ShardCount((window, a, g), c) => Ok((
                KIND_SHARD_COUNT,
                *window,
                *a,
                g,
                Cow::Owned(c.to_be_bytes().to_vec()),
            )),
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
            let (k, window, a, g, p) = match self.row(self.next) {
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
            self.next += 1;
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

/// Merges the entries of an exchange batch into `into`; returns the number of rows.
pub fn decode_into(batch: &RecordBatch, into: &mut Partials) -> Result<usize, WireError> {
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
    for row in 0..batch.num_rows() {
        let window = Window {
            start: start.value(row),
            end: end.value(row),
        };
        let g = group.value(row);
        let p = payload.value(row);
        match kind.value(row) {
            KIND_GROUP => {
                let partials = decode_partials(p).map_err(|e| WireError::Row {
                    row,
                    reason: format!("partial states: {e}"),
                })?;
                into.add_group((window, g.to_vec()), partials);
            }
            KIND_DISTINCT => {
                if !is_distinct_key(p) {
                    return Err(WireError::Row {
                        row,
                        reason: "not a distinct-value key".into(),
                    });
                }
                into.distinct.push(p);
            }
            KIND_SHARD_COUNT => {
                let count: [u8; 8] = p.try_into().map_err(|_| WireError::Row {
                    row,
                    reason: "shard count is not 8 bytes".into(),
                })?;
                into.add_shard_count(
                    (window, agg.value(row), g.to_vec()),
                    i64::from_be_bytes(count),
                );
            }
            other => {
                return Err(WireError::Row {
                    row,
                    reason: format!("unknown entry kind {other}"),
                })
            }
        }
    }
    Ok(batch.num_rows())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::aggregate::Partial;

    #[test]
    fn partials_survive_the_round_trip_in_bounded_batches() {
        let w = Window { start: 0, end: 300 };
        let mut p = Partials::default();
        for i in 0..10_000u32 {
            p.distinct.push(crate::partials::distinct_entry(
                w,
                1,
                b"click",
                &i.to_be_bytes(),
                64,
            ));
        }
        p.add_group((w, b"click".to_vec()), vec![Partial::Count(10_000)]);
        p.add_shard_count((w, 1, b"view".to_vec()), 42);
        let batches: Vec<RecordBatch> = BatchEncoder::new(entries(p))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), 3);
        assert!(batches.iter().all(|b| b.num_rows() <= MAX_BATCH_ROWS));
        let mut back = Partials::default();
        let rows: usize = batches
            .iter()
            .map(|b| decode_into(b, &mut back).unwrap())
            .sum();
        assert_eq!(rows, 10_002);
        assert_eq!(back.distinct.len(), 10_000);
        assert!(matches!(
            back.groups[&(w, b"click".to_vec())][0],
            Partial::Count(10_000)
        ));
        assert_eq!(back.shard_counts[&(w, 1, b"view".to_vec())], 42);
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
        let err = decode_into(&batch, &mut Partials::default()).unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }

    #[test]
    fn a_distinct_entry_that_is_not_a_whole_key_is_refused() {
        let w = Window { start: 0, end: 300 };
        let mut p = Partials::default();
        let key = crate::partials::distinct_entry(w, 1, b"click", b"u1", 64);
        p.distinct.push(key.clone());
        // Cut inside its group key: the length it announces runs past the end.
        p.distinct.push(key[..key.len() - 4].to_vec());
        let batch = BatchEncoder::new(entries(p)).next().unwrap().unwrap();
        let mut back = Partials::default();
        let err = decode_into(&batch, &mut back).unwrap_err();
        assert!(
            err.to_string().contains("row 1") && err.to_string().contains("distinct"),
            "{err}"
        );
    }
}
