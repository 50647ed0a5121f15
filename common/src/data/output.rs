//! Schemas of the tables weir writes: the query's output (Spark's shape), the dead letter and
//! the late rows.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::data::schema::{delta_string_map_type, timestamp_type};
use crate::job::Query;

/// The `window` column: `struct<start timestamp, end timestamp>`.
pub fn window_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("start", timestamp_type(), false),
        Field::new("end", timestamp_type(), false),
    ]))
}

/// A window query's `window`, group keys, one column per aggregate and `processing_time`; a
/// dedup query's source columns.
pub fn output_schema(query: &Query, input_schema: &Schema) -> SchemaRef {
    let query = match query {
        Query::Window(w) => w,
        Query::Dedup(_) => return as_written(input_schema),
    };
    // Group keys may be columns the query computes.
    let input_schema = query.rows.as_ref().map_or(input_schema, |r| r.schema());
    let mut fields = vec![Field::new("window", window_type(), false)];
    for col in &query.group_by {
        if let Ok(f) = input_schema.field_with_name(col) {
            fields.push(Field::new(col, f.data_type().clone(), f.is_nullable()));
        }
    }
    for agg in &query.aggregates {
        fields.push(Field::new(
            &agg.name,
            agg.output_type(),
            agg.output_nullable(),
        ));
    }
    fields.push(Field::new("processing_time", timestamp_type(), false));
    Arc::new(Schema::new(fields))
}

/// The source's columns as a Delta table holds them: maps named as its writer names them.
fn as_written(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Map(..) => f.as_ref().clone().with_data_type(delta_string_map_type()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Where a kept record came from, the record itself, and why it is kept (`why`).
fn record_fields(why: &str) -> Vec<Field> {
    vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(why, DataType::Utf8, false),
    ]
}

/// Records that could not be used, with where they came from and why.
pub fn dead_letter_schema() -> SchemaRef {
    let mut fields = record_fields("error");
    fields.push(Field::new("epoch", DataType::Int64, false));
    fields.push(Field::new("processing_time", timestamp_type(), false));
    Arc::new(Schema::new(fields))
}

/// Rows late for every window they fall in: the raw record, where it came from, its event time
/// and the watermark it missed.
pub fn late_rows_schema() -> SchemaRef {
    let mut fields = record_fields("reason");
    fields.extend([
        Field::new("event_time", timestamp_type(), false),
        Field::new("watermark", timestamp_type(), false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("processing_time", timestamp_type(), false),
    ]);
    Arc::new(Schema::new(fields))
}
