//! What a case compares: a Delta table's rows as JSON objects (read with deltalake, as any
//! reader of the table would), expected rows matched against them, and the difference shown
//! as a table.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

/// The column every output row carries that depends on the clock, not on the input.
pub const CLOCK_COLUMN: &str = "processing_time";

/// The rows of the Delta table at `url`, none when it does not exist yet.
pub async fn read_table(url: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let parsed = url::Url::parse(url).with_context(|| format!("table URL {url}"))?;
    if parsed.scheme() == "file"
        && !std::path::Path::new(parsed.path())
            .join("_delta_log")
            .exists()
    {
        return Ok(Vec::new());
    }
    let table = deltalake::open_table(parsed)
        .await
        .with_context(|| format!("opening the table at {url}"))?;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let provider = table.table_provider().await?;
    let batches = ctx
        .read_table(Arc::clone(&provider))?
        .collect()
        .await
        .with_context(|| format!("reading the table at {url}"))?;
    Ok(batches)
}

/// `batches` as JSON objects (timestamps as RFC 3339 text, windows as `{start, end}`).
pub fn json_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<Value>> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    writer.write_batches(&refs)?;
    writer.finish()?;
    let rows: Vec<Value> = serde_json::from_slice(&writer.into_inner())?;
    Ok(rows)
}

/// The dead letter's records as (text, reason).
pub fn dead_letters(batches: &[RecordBatch]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for batch in batches {
        // Readers may hand strings and bytes back as views: take them in one layout.
        let column = |name: &str, to: &DataType| {
            batch
                .column_by_name(name)
                .and_then(|c| arrow::compute::cast(c, to).ok())
        };
        let value =
            column("value", &DataType::Binary).and_then(|c| c.as_binary_opt::<i32>().cloned());
        let error =
            column("error", &DataType::Utf8).and_then(|c| c.as_string_opt::<i32>().cloned());
        let (Some(value), Some(error)) = (value, error) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            let text = if value.is_null(row) {
                String::new()
            } else {
                String::from_utf8_lossy(value.value(row)).into_owned()
            };
            out.push((text, error.value(row).to_string()));
        }
    }
    out
}

/// `rows` without the clock's column, for comparing runs.
pub fn without_clock(rows: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = rows
        .iter()
        .map(|r| match r {
            Value::Object(m) => {
                let mut m = m.clone();
                m.remove(CLOCK_COLUMN);
                Value::Object(m)
            }
            other => other.clone(),
        })
        .collect();
    out.sort_by_key(|r| r.to_string());
    out
}

/// The rows of `now` that `before` did not hold (as many times as they are new).
pub fn added(before: &[Value], now: &[Value]) -> Vec<Value> {
    let mut left: Vec<&Value> = before.iter().collect();
    let mut out = Vec::new();
    for row in now {
        match left.iter().position(|b| *b == row) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => out.push(row.clone()),
        }
    }
    out
}

/// Whether an expected value is the actual one: numbers by value, times as instants, objects
/// and lists element by element.
pub fn same(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => match (e.as_i64(), a.as_i64()) {
            (Some(e), Some(a)) => e == a,
            _ => e.as_f64() == a.as_f64(),
        },
        (Value::String(e), Value::String(a)) => {
            e == a
                || matches!(
                    (
                        chrono::DateTime::parse_from_rfc3339(e),
                        chrono::DateTime::parse_from_rfc3339(a)
                    ),
                    (Ok(e), Ok(a)) if e == a
                )
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|actual| same(v, actual)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| same(e, a))
        }
        (e, a) => e == a,
    }
}

/// Whether `actual` has every column of `expected` with the same value (columns not given
/// are not checked).
fn matches(expected: &Value, actual: &Value) -> bool {
    let (Some(e), Some(a)) = (expected.as_object(), actual.as_object()) else {
        return false;
    };
    e.iter()
        .all(|(k, v)| a.get(k).is_some_and(|actual| same(v, actual)))
}

/// The expected rows no actual row matches, and the actual rows no expected row took.
pub fn compare(expected: &[Value], actual: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let mut unmatched: Vec<&Value> = actual.iter().collect();
    let mut missing = Vec::new();
    for e in expected {
        match unmatched.iter().position(|a| matches(e, a)) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => missing.push(e.clone()),
        }
    }
    (missing, unmatched.into_iter().cloned().collect())
}

/// Expected and actual rows as one table: `-` rows expected and not there, `+` rows there
/// and not expected, the others as they matched. Columns are those the expectation names,
/// then any other.
pub fn diff(expected: &[Value], actual: &[Value]) -> String {
    let (missing, unexpected) = compare(expected, actual);
    let mut columns: Vec<String> = Vec::new();
    let mut add_columns = |row: &Value| {
        if let Some(m) = row.as_object() {
            for k in m.keys() {
                if k != CLOCK_COLUMN && !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    };
    expected.iter().for_each(&mut add_columns);
    if expected.is_empty() {
        actual.iter().for_each(&mut add_columns);
    }
    let cell = |row: &Map<String, Value>, column: &str| match row.get(column) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut rows = Vec::new();
    let empty = Map::new();
    for e in expected {
        let mark = if missing.contains(e) { "-" } else { " " };
        let m = e.as_object().unwrap_or(&empty);
        rows.push(
            std::iter::once(mark.to_string())
                .chain(columns.iter().map(|c| cell(m, c)))
                .collect(),
        );
    }
    for a in &unexpected {
        let m = a.as_object().unwrap_or(&empty);
        rows.push(
            std::iter::once("+".to_string())
                .chain(columns.iter().map(|c| cell(m, c)))
                .collect(),
        );
    }
    let mut headers = vec![""];
    headers.extend(columns.iter().map(String::as_str));
    format!(
        "{}\n(- expected, not emitted; + emitted, not expected)",
        crate::table::render(&headers, &rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expected_rows_match_by_the_columns_they_give_and_times_as_instants() {
        let actual = vec![
            json!({"window": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:05:00+00:00"}, "k": "a", "n": 2, "avg": 1.5, "processing_time": "x"}),
            json!({"window": {"start": "2026-01-01T00:05:00+00:00", "end": "2026-01-01T00:10:00+00:00"}, "k": "b", "n": 1, "avg": 2.0}),
        ];
        let expected = vec![
            json!({"window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z"}, "k": "a", "n": 2}),
            json!({"k": "b", "n": 1, "avg": 2}),
        ];
        assert_eq!(compare(&expected, &actual), (vec![], vec![]));
        let wrong = vec![json!({"k": "a", "n": 3})];
        let (missing, unexpected) = compare(&wrong, &actual);
        assert_eq!(missing, wrong);
        assert_eq!(unexpected.len(), 2);
        let shown = diff(&wrong, &actual);
        assert!(shown.contains("-  a  3"), "{shown}");
        assert!(shown.contains("+  a  2"), "{shown}");
    }

    #[test]
    fn added_rows_are_those_the_earlier_table_did_not_hold() {
        let before = vec![json!({"a": 1}), json!({"a": 2})];
        let now = vec![
            json!({"a": 2}),
            json!({"a": 1}),
            json!({"a": 1}),
            json!({"a": 3}),
        ];
        assert_eq!(added(&before, &now), vec![json!({"a": 1}), json!({"a": 3})]);
    }
}
