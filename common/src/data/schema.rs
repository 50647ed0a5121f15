//! The input schema of a job: Spark-style type names mapped to Arrow.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Time zone of every timestamp weir reads or writes (Delta's `timestamp` is UTC microseconds).
pub const UTC: &str = "UTC";

/// Arrow type of a Delta/Spark `timestamp`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)))
}

/// The Arrow map type of `map<string,string>`, laid out as arrow-json decodes it.
pub fn string_map_type() -> DataType {
    map_type(["entries", "keys", "values"])
}

/// `map<string,string>` as a Delta table's writer lays it out (its entries, key and value
/// named as Parquet's map convention names them).
pub fn delta_string_map_type() -> DataType {
    map_type(["key_value", "key", "value"])
}

fn map_type([entries, key, value]: [&str; 3]) -> DataType {
    let entries = Field::new(
        entries,
        DataType::Struct(Fields::from(vec![
            Field::new(key, DataType::Utf8, false),
            Field::new(value, DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// Parses one column declaration such as `string not null` or `map<string,string>`.
pub fn parse_column_type(text: &str) -> Result<(DataType, bool), String> {
    let lowered = text.trim().to_ascii_lowercase();
    let (type_name, nullable) = match lowered.strip_suffix("not null") {
        Some(rest) => (rest.trim().to_string(), false),
        None => (lowered.clone(), true),
    };
    let compact: String = type_name.chars().filter(|c| !c.is_whitespace()).collect();
    let data_type = match compact.as_str() {
        "string" => DataType::Utf8,
        "long" | "bigint" => DataType::Int64,
        "int" | "integer" => DataType::Int32,
        "double" => DataType::Float64,
        "boolean" | "bool" => DataType::Boolean,
        "timestamp" => timestamp_type(),
        "map<string,string>" => string_map_type(),
        _ => {
            return Err(format!(
                "unknown type `{}`; expected one of string, long, int, double, boolean, timestamp, \
                 map<string,string>, optionally followed by `not null`",
                text.trim()
            ))
        }
    };
    Ok((data_type, nullable))
}

/// Builds the Arrow schema the decoder produces from the job's `name: type` pairs.
pub fn build_schema<'a>(
    columns: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<SchemaRef, (String, String)> {
    let mut fields = Vec::new();
    for (name, type_text) in columns {
        let (data_type, nullable) =
            parse_column_type(type_text).map_err(|e| (name.to_string(), e))?;
        fields.push(Field::new(name, data_type, nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// True for types a `sum`, `avg`, `min` or `max` can take.
pub fn is_numeric(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int32 | DataType::Int64 | DataType::Float64
    )
}

/// True for types that can be a group key or a `count(distinct ...)` argument.
pub fn is_scalar(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::Int32
            | DataType::Int64
            | DataType::Float64
            | DataType::Boolean
            | DataType::Timestamp(_, _)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_nullability() {
        assert_eq!(
            parse_column_type("string not null").unwrap(),
            (DataType::Utf8, false)
        );
        assert_eq!(
            parse_column_type("BIGINT").unwrap(),
            (DataType::Int64, true)
        );
        assert_eq!(
            parse_column_type("timestamp NOT NULL").unwrap(),
            (timestamp_type(), false)
        );
        assert_eq!(
            parse_column_type("map<string, string>").unwrap(),
            (string_map_type(), true)
        );
        assert!(parse_column_type("varchar")
            .unwrap_err()
            .contains("unknown type"));
    }
}
