//! Turns closed windows and rejected records into the record batches the tables take.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryBuilder, Int32Builder, Int64Array, Int64Builder, StringBuilder,
    StructArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Fields, Float64Type, Int64Type, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use weir_common::data::output::{dead_letter_schema, late_rows_schema, window_type};
use weir_common::data::schema::UTC;
use weir_common::data::value::{decode_group_key, group_column, GroupValue};
use weir_common::job::WindowQuery;
use weir_common::query::aggregate::output_column;

use crate::input::Record;
use crate::state::WindowRow;

fn timestamps(values: impl Iterator<Item = i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from_iter_values(values).with_timezone(UTC)
}

/// Per aggregate column, its sum over `batch`'s rows (counts and sums; an average's sum is
/// summed too, as a number).
pub fn column_sums(query: &WindowQuery, batch: &RecordBatch) -> HashMap<String, f64> {
    query
        .aggregates
        .iter()
        .filter_map(|agg| {
            let column = batch.column_by_name(&agg.name)?;
            let sum = if let Some(a) = column.as_primitive_opt::<Int64Type>() {
                a.iter().flatten().map(|v| v as f64).sum()
            } else if let Some(a) = column.as_primitive_opt::<Float64Type>() {
                a.iter().flatten().sum()
            } else {
                return None;
            };
            Some((agg.name.clone(), sum))
        })
        .collect()
}

/// The output rows of the closed windows: `window`, group keys, aggregates, `processing_time`.
pub fn output_batch(
    query: &WindowQuery,
    schema: &SchemaRef,
    rows: &mut [WindowRow],
    processing_time: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let DataType::Struct(window_fields) = window_type() else {
        return Err(ArrowError::SchemaError(
            "window type is not a struct".into(),
        ));
    };
    let starts: ArrayRef = Arc::new(timestamps(rows.iter().map(|r| r.window.start)));
    let ends: ArrayRef = Arc::new(timestamps(rows.iter().map(|r| r.window.end)));
    columns.push(Arc::new(StructArray::try_new(
        Fields::from(window_fields.iter().cloned().collect::<Vec<_>>()),
        vec![starts, ends],
        None,
    )?));
    let keys: Vec<Vec<GroupValue>> = rows
        .iter()
        .map(|r| decode_group_key(&r.group))
        .collect::<Result<_, _>>()
        .map_err(|e| ArrowError::ParseError(format!("group key in state: {e}")))?;
    for (i, col) in query.group_by.iter().enumerate() {
        let data_type = schema
            .field_with_name(col)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Utf8);
        columns.push(group_column(
            &data_type,
            keys.iter().map(|k| k.get(i).unwrap_or(&GroupValue::Null)),
        ));
    }
    for (i, agg) in query.aggregates.iter().enumerate() {
        let mut partials: Vec<_> = rows
            .iter_mut()
            .filter_map(|r| r.partials.get_mut(i))
            .collect();
        columns.push(output_column(agg, &mut partials));
    }
    columns.push(Arc::new(timestamps(rows.iter().map(|_| processing_time))));
    RecordBatch::try_new(schema.clone(), columns)
}

/// The columns that say which record a row is and hold it whole: topic, partition, offset,
/// key, value, and the reason it is there.
fn record_columns<'a>(
    origin: impl Fn(&Record) -> (String, i32),
    rows: impl Iterator<Item = (&'a Record, &'a str)>,
) -> Vec<ArrayRef> {
    let mut t = StringBuilder::new();
    let mut p = Int32Builder::new();
    let mut o = Int64Builder::new();
    let mut k = BinaryBuilder::new();
    let mut v = BinaryBuilder::new();
    let mut e = StringBuilder::new();
    for (record, reason) in rows {
        let (topic, partition) = origin(record);
        t.append_value(topic);
        p.append_value(partition);
        o.append_value(record.offset);
        k.append_option(record.key.as_deref());
        v.append_option(record.value.as_deref());
        e.append_value(reason);
    }
    vec![
        Arc::new(t.finish()),
        Arc::new(p.finish()),
        Arc::new(o.finish()),
        Arc::new(k.finish()),
        Arc::new(v.finish()),
        Arc::new(e.finish()),
    ]
}

fn epochs(n: usize, epoch: u64) -> ArrayRef {
    Arc::new(Int64Array::from_value(
        i64::try_from(epoch).unwrap_or(i64::MAX),
        n,
    ))
}

/// Dead-letter rows: the raw record, where it came from and why it was set aside.
pub fn dead_letter_batch(
    origin: impl Fn(&Record) -> (String, i32),
    rejected: &[(Record, String)],
    epoch: u64,
    processing_time: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns = record_columns(origin, rejected.iter().map(|(r, why)| (r, why.as_str())));
    columns.push(epochs(rejected.len(), epoch));
    columns.push(Arc::new(timestamps(
        rejected.iter().map(|_| processing_time),
    )));
    RecordBatch::try_new(dead_letter_schema(), columns)
}

/// Why a late row is in the late-rows table.
pub const LATE_REASON: &str = "late: every window of its event time closed under the watermark";

/// Late rows: the raw record, where it came from, its event time (`late` pairs each record with
/// it) and the watermark it missed.
pub fn late_rows_batch(
    origin: impl Fn(&Record) -> (String, i32),
    late: &[(Record, i64)],
    watermark: i64,
    epoch: u64,
    processing_time: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns = record_columns(origin, late.iter().map(|(r, _)| (r, LATE_REASON)));
    columns.push(Arc::new(timestamps(late.iter().map(|(_, t)| *t))));
    columns.push(Arc::new(timestamps(late.iter().map(|_| watermark))));
    columns.push(epochs(late.len(), epoch));
    columns.push(Arc::new(timestamps(late.iter().map(|_| processing_time))));
    RecordBatch::try_new(late_rows_schema(), columns)
}
