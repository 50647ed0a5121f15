//! Schemas of the tables weir writes: the aggregate output (Spark's shape) and the dead letter.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::job::JobSpec;
use crate::schema::timestamp_type;

/// The `window` column: `struct<start timestamp, end timestamp>`.
pub fn window_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("start", timestamp_type(), false),
        Field::new("end", timestamp_type(), false),
    ]))
}

/// `window`, the group keys, one column per aggregate, `processing_time`.
pub fn output_schema(job: &JobSpec) -> SchemaRef {
    let mut fields = vec![Field::new("window", window_type(), false)];
    for col in &job.group_by {
        if let Ok(f) = job.input_schema.field_with_name(col) {
            fields.push(Field::new(col, f.data_type().clone(), f.is_nullable()));
        }
    }
    for agg in &job.aggregates {
        fields.push(Field::new(
            &agg.name,
            agg.output_type(),
            agg.output_nullable(),
        ));
    }
    fields.push(Field::new("processing_time", timestamp_type(), false));
    Arc::new(Schema::new(fields))
}

/// Records that could not be used, with where they came from and why.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("processing_time", timestamp_type(), false),
    ]))
}
