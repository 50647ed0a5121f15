//! The query of a job file: a window aggregate (`window`, `group_by`, `aggregates`), or the
//! deduplication of raw events on a key (`dedup`), both under the job's watermark.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::rows::{ExprPlanner, RowStage};
use super::{duration_field, JobError, OutputMode, RawQuery};
use crate::data::output::output_schema;
use crate::data::schema::is_scalar;
use crate::job::duration::micros;
use crate::query::aggregate::{parse_aggregate, AggregateSpec};
use crate::query::window::WindowSpec;

/// `query.dedup` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    pub key: Vec<String>,
    pub within: String,
}

/// What a job computes from its source.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Window(WindowQuery),
    Dedup(DedupQuery),
}

/// Event-time windows per group with the query's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowQuery {
    pub window: WindowSpec,
    pub group_by: Vec<String>,
    pub aggregates: Vec<AggregateSpec>,
    /// When a window's rows are written: once at its close, or every epoch that changes them.
    pub output_mode: OutputMode,
    /// The SQL form's `WHERE` and computed columns, before the aggregate: it reads their
    /// output as it reads the source's columns.
    pub rows: Option<Box<RowStage>>,
    /// The SQL form's `HAVING`, over the output rows.
    pub having: Option<Box<RowStage>>,
}

/// The raw events themselves, each key's first arrival only (Spark's
/// `dropDuplicatesWithinWatermark`): a key is remembered until the watermark passes its first
/// event time plus `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupQuery {
    pub key: Vec<String>,
    pub within_micros: i64,
}

impl Query {
    /// The window aggregate, when the query is one.
    pub fn windows(&self) -> Option<&WindowQuery> {
        match self {
            Query::Window(w) => Some(w),
            Query::Dedup(_) => None,
        }
    }

    /// The columns that identify an output row to a consumer: the group keys, or the dedup key.
    pub fn keys(&self) -> &[String] {
        match self {
            Query::Window(w) => &w.group_by,
            Query::Dedup(d) => &d.key,
        }
    }

    /// When output rows are written: a dedup query writes each key's row once.
    pub fn output_mode(&self) -> OutputMode {
        match self {
            Query::Window(w) => w.output_mode,
            Query::Dedup(_) => OutputMode::Append,
        }
    }
}

/// Checks `query` against the source's columns; the watermark column is checked already.
pub(super) fn parse(
    f: &str,
    query: &RawQuery,
    input_schema: &Schema,
    event_time_column: &str,
    sources: &[&str],
) -> Result<Query, JobError> {
    if let Some(sql) = &query.sql {
        if query.window.is_some()
            || query.dedup.is_some()
            || !query.group_by.is_empty()
            || !query.aggregates.is_empty()
        {
            return Err(JobError::new(
                format!("{f}.sql"),
                "give the query either as sql or as window, group_by and aggregates (or dedup)",
            ));
        }
        let sql_field = format!("{f}.sql");
        let compiled =
            super::sql::compile(sql, sources).map_err(|m| JobError::new(&sql_field, m))?;
        let planner = ExprPlanner::default();
        let source: SchemaRef = Arc::new(input_schema.clone());
        let rows = match (&compiled.filter, compiled.computed.is_empty()) {
            (None, true) => None,
            (filter, _) => Some(Box::new(
                RowStage::plan(&planner, filter.as_ref(), &compiled.computed, &source)
                    .map_err(|m| JobError::new(&sql_field, m))?,
            )),
        };
        let from_sql = RawQuery {
            window: Some(compiled.window),
            group_by: compiled.group_by,
            aggregates: compiled.aggregates,
            output_mode: compiled
                .output_mode
                .unwrap_or_else(|| query.output_mode.clone()),
            sql: None,
            ..query.clone()
        };
        // The aggregate reads the computed columns as it reads the source's.
        let read = rows.as_ref().map_or(&source, |r| r.schema());
        let mut parsed = parse(f, &from_sql, read, event_time_column, sources)
            .map_err(|e| JobError::new(&sql_field, e.message))?;
        if let Query::Window(w) = &mut parsed {
            w.rows = rows;
            if let Some(having) = &compiled.having {
                let output = output_schema(&Query::Window(w.clone()), input_schema);
                w.having = Some(Box::new(
                    RowStage::plan(&planner, Some(having), &[], &output)
                        .map_err(|m| JobError::new(&sql_field, m))?,
                ));
            }
        }
        return Ok(parsed);
    }
    let column_type = |field: &str, name: &str| -> Result<DataType, JobError> {
        input_schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|_| JobError::new(field, format!("column `{name}` is not in source.schema")))
    };
    let scalar_columns = |field: &str, columns: &[String]| -> Result<(), JobError> {
        for (i, col) in columns.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let t = column_type(&field, col)?;
            if !is_scalar(&t) {
                return Err(JobError::new(
                    field,
                    format!("cannot key on `{col}` of type {t}"),
                ));
            }
        }
        Ok(())
    };
    let output_mode = OutputMode::parse(&query.output_mode)
        .map_err(|m| JobError::new(format!("{f}.output_mode"), m))?;
    let window = match (&query.window, &query.dedup) {
        (Some(window), None) => window,
        (None, Some(dedup)) => {
            for (field, given) in [
                (format!("{f}.group_by"), !query.group_by.is_empty()),
                (format!("{f}.aggregates"), !query.aggregates.is_empty()),
            ] {
                if given {
                    return Err(JobError::new(
                        field,
                        "a dedup query writes the raw events, not aggregates",
                    ));
                }
            }
            if output_mode != OutputMode::Append {
                return Err(JobError::new(
                    format!("{f}.output_mode"),
                    "a dedup query writes each key's first row once: append only",
                ));
            }
            if dedup.key.is_empty() {
                return Err(JobError::new(
                    format!("{f}.dedup.key"),
                    "expected at least one column",
                ));
            }
            scalar_columns(&format!("{f}.dedup.key"), &dedup.key)?;
            let within = duration_field(&format!("{f}.dedup.within"), &dedup.within)?;
            if within.is_zero() {
                return Err(JobError::new(
                    format!("{f}.dedup.within"),
                    "expected a positive duration: how long after its first event time a key is remembered",
                ));
            }
            return Ok(Query::Dedup(DedupQuery {
                key: dedup.key.clone(),
                within_micros: micros(within),
            }));
        }
        _ => {
            return Err(JobError::new(
                f,
                "expected exactly one of window (with group_by and aggregates) or dedup",
            ))
        }
    };
    if window.column != event_time_column {
        return Err(JobError::new(
            format!("{f}.window.column"),
            format!(
                "windows must be on the watermark column `{event_time_column}`, found `{}`",
                window.column
            ),
        ));
    }
    let size = duration_field(&format!("{f}.window.size"), &window.size)?;
    let slide = match &window.slide {
        Some(s) => duration_field(&format!("{f}.window.slide"), s)?,
        None => size,
    };
    let start = match &window.start {
        Some(s) => duration_field(&format!("{f}.window.start"), s)?,
        None => std::time::Duration::ZERO,
    };
    let window = WindowSpec::new(micros(size), micros(slide), micros(start))
        .map_err(|m| JobError::new(format!("{f}.window"), m))?;
    for (i, col) in query.group_by.iter().enumerate() {
        let field = format!("{f}.group_by[{i}]");
        let t = column_type(&field, col)?;
        if !is_scalar(&t) {
            return Err(JobError::new(
                field,
                format!("cannot group by `{col}` of type {t}"),
            ));
        }
    }
    if query.aggregates.is_empty() {
        return Err(JobError::new(
            format!("{f}.aggregates"),
            "expected at least one aggregate",
        ));
    }
    let mut aggregates = Vec::new();
    for (name, expr) in &query.aggregates {
        let field = format!("{f}.aggregates.{name}");
        if query.group_by.contains(name) || name == "window" || name == "processing_time" {
            return Err(JobError::new(
                field,
                "this output column name is already taken",
            ));
        }
        let agg =
            parse_aggregate(name, expr, input_schema).map_err(|m| JobError::new(&field, m))?;
        aggregates.push(agg);
    }
    Ok(Query::Window(WindowQuery {
        window,
        group_by: query.group_by.clone(),
        aggregates,
        output_mode,
        rows: None,
        having: None,
    }))
}

/// The output table's columns: `window`, the group keys, one per aggregate and
/// `processing_time`; or a dedup query's source columns.
pub fn output_columns<'a>(query: &'a Query, input_schema: &'a Schema) -> Vec<&'a str> {
    match query {
        Query::Window(w) => {
            let mut columns = vec!["window"];
            columns.extend(w.group_by.iter().map(String::as_str));
            columns.extend(w.aggregates.iter().map(|a| a.name.as_str()));
            columns.push("processing_time");
            columns
        }
        Query::Dedup(_) => input_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect(),
    }
}
