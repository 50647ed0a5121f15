//! `weir explain`: the plan a job runs, as a person reads it (docs/architecture.md, Plan of
//! operators): what is read and decoded, the watermark, and per query its operator, the
//! partial and state form of each aggregate, what the exchange routes by, the output schema,
//! mode and sinks.

use std::fmt::Write;
use std::time::Duration;

use arrow::datatypes::{DataType, Schema};

use super::kafka_sink::Delivery;
use super::{JobSpec, OutputMode, Query, QuerySpec, Source, Trigger};
use crate::data::output::output_schema;
use crate::query::aggregate::{AggKind, AggregateSpec};

/// The plan of `job`, one line per fact.
pub fn explain(job: &JobSpec) -> String {
    let mut out = String::new();
    let source = match &job.source {
        Source::Kafka(k) => format!("kafka topic `{}` at {}", k.topic, k.bootstrap_servers),
        Source::Files(f) => format!("JSON-lines files under {}", f.url),
    };
    let trigger = match job.trigger {
        Trigger::AvailableNow => "available-now".to_string(),
        Trigger::Interval(d) => duration(d),
    };
    let _ = writeln!(
        out,
        "job `{}`: {} quer{} over one read",
        job.name,
        job.queries.len(),
        if job.queries.len() == 1 { "y" } else { "ies" }
    );
    let _ = writeln!(out, "source: {source}, trigger {trigger}");
    let _ =
        writeln!(
        out,
        "decode: JSON, every column of source.schema ({}); records over {} bytes, malformed, or \
         with an event time over {} ahead go to the dead letter{}",
        columns(&job.input_schema),
        job.max_record_bytes,
        duration(Duration::from_micros(job.max_event_time_ahead_micros.unsigned_abs())),
        match &job.dead_letter {
            Some(d) => format!(" ({})", d.url),
            None => " (counted and dropped: no dead_letter table)".into(),
        }
    );
    let read: Vec<&str> = job.columns_read();
    let _ = writeln!(out, "columns the queries read: {}", read.join(", "));
    let _ = writeln!(
        out,
        "watermark: max({}) - {}, in force from the next epoch; late rows {}",
        job.event_time_column,
        duration(Duration::from_micros(
            job.watermark_delay_micros.unsigned_abs()
        )),
        match &job.late_rows {
            Some(l) => format!("kept in {}", l.url),
            None => "counted and dropped".into(),
        }
    );
    let _ = writeln!(
        out,
        "state: RocksDB per executor, {} key groups",
        job.key_groups
    );
    for (op, spec) in job.queries.iter().enumerate() {
        query(&mut out, job, op, spec);
    }
    out
}

fn query(out: &mut String, job: &JobSpec, op: usize, spec: &QuerySpec) {
    let _ = writeln!(out, "\nquery `{}` (operator {op})", spec.name);
    let _ = writeln!(out, "  row expressions: none (the columns as read)");
    match &spec.query {
        Query::Window(w) => {
            let window = if w.window.slide == w.window.size {
                format!("tumbling {}", micros(w.window.size))
            } else {
                format!(
                    "sliding {} every {}",
                    micros(w.window.size),
                    micros(w.window.slide)
                )
            };
            let _ = writeln!(
                out,
                "  operator: window aggregate, {window} on {} (start offset {})",
                job.event_time_column,
                micros(w.window.start)
            );
            if let Some(rows) = &w.rows {
                let _ = writeln!(
                    out,
                    "  row expressions (DataFusion, over each decoded batch, after the \
                     event-time checks):"
                );
                if let Some(filter) = &rows.filter {
                    let _ = writeln!(out, "    where {}", filter.sql);
                }
                for (name, expr) in &rows.columns {
                    let _ = writeln!(out, "    {name} = {}", expr.sql);
                }
            }
            let _ = writeln!(out, "  group keys: {}", list(&w.group_by));
            let _ = writeln!(out, "  aggregates:");
            for agg in &w.aggregates {
                let _ = writeln!(out, "    {}", aggregate(agg));
            }
            let _ =
                writeln!(
                out,
                "  exchange: each reader pre-aggregates, then sends group rows to the owner of \
                 the key group of their group key{}",
                if w.aggregates.iter().any(|a| a.kind == AggKind::CountDistinct) {
                    ", distinct values to the owner of the key group of (window, aggregate, \
                     group, value)"
                } else {
                    ""
                }
            );
            let mode = match w.output_mode {
                OutputMode::Append => {
                    "append: a window's row once, when the watermark passes its end; its state \
                     is dropped then"
                }
                OutputMode::Update => {
                    "update: every epoch's changed rows, MERGEd on (window, group keys); a \
                     window's state is dropped without a row when the watermark passes its end"
                }
            };
            let _ = writeln!(out, "  output: {mode}");
            if let Some(filter) = w.having.as_ref().and_then(|h| h.filter.as_ref()) {
                let _ = writeln!(out, "  having: {} (over the output rows)", filter.sql);
            }
        }
        Query::Dedup(d) => {
            let _ = writeln!(
                out,
                "  operator: dedup on ({}), each key's first arrival; a key is remembered until \
                 the watermark reaches its first {} + {}; a row at or before the watermark is \
                 late",
                list(&d.key),
                job.event_time_column,
                micros(d.within_micros)
            );
            let _ = writeln!(
                out,
                "  exchange: each reader sends the first row of each key it read to the owner \
                 of the key group of the key"
            );
            let mode = match spec.output.merge_on.as_slice() {
                [] => "append: each kept row once".to_string(),
                on => format!(
                    "MERGE on ({}{}): update every column of a matching row, insert the rest",
                    list(on),
                    match spec.output.partition_by.as_slice() {
                        [] => String::new(),
                        p => format!(", and the partition columns {}", list(p)),
                    }
                ),
            };
            let _ = writeln!(out, "  output: {mode}");
        }
    }
    let schema = output_schema(&spec.query, &job.input_schema);
    let _ = writeln!(out, "  output schema: {}", columns(&schema));
    let partitioned = match spec.output.partition_by.as_slice() {
        [] => String::new(),
        p => format!(", partitioned by {}", list(p)),
    };
    let _ = writeln!(out, "  sink: delta {}{partitioned}", spec.output.url);
    for k in &spec.kafka_sinks {
        let _ = writeln!(
            out,
            "  sink: kafka topic `{}` at {}, key ({}), {}",
            k.topic,
            k.bootstrap_servers,
            list(&k.key),
            match k.delivery {
                Delivery::ExactlyOnce => "exactly_once",
                Delivery::AtLeastOnce => "at_least_once",
            }
        );
    }
    if let Some(p) = &spec.pushgateway {
        let _ = writeln!(out, "  sink: pushgateway {}", p.url);
    }
}

/// One aggregate with its partial and state form.
fn aggregate(agg: &AggregateSpec) -> String {
    let input = agg.column.as_deref().unwrap_or("*");
    let (function, form) = match agg.kind {
        AggKind::CountStar => (
            "count(*)".to_string(),
            "a count in the group row".to_string(),
        ),
        AggKind::Count => (format!("count({input})"), "a count in the group row".into()),
        AggKind::CountDistinct => (
            format!("count(distinct {input})"),
            "the distinct values, exact: one run per (key group, window, group) merged in \
             without a read; counted per key group at the window's close and summed at the \
             group's owner"
                .into(),
        ),
        AggKind::ApproxCountDistinct { precision, rsd } => (
            format!("approx_count_distinct({input}, {rsd})"),
            format!("a HyperLogLog++ sketch of 2^{precision} registers in the group row"),
        ),
        AggKind::Sum => (format!("sum({input})"), "a sum in the group row".into()),
        AggKind::Min => (format!("min({input})"), "a minimum in the group row".into()),
        AggKind::Max => (format!("max({input})"), "a maximum in the group row".into()),
        AggKind::Avg => (
            format!("avg({input})"),
            "a sum and a count in the group row".into(),
        ),
    };
    format!(
        "{} = {function}: {} ({form})",
        agg.name,
        type_name(&agg.output_type())
    )
}

fn columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            let null = if f.is_nullable() { "" } else { " not null" };
            format!("{} {}{null}", f.name(), type_name(f.data_type()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spark's name of a type.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 => "string".into(),
        DataType::Int64 => "long".into(),
        DataType::Int32 => "int".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Map(..) => "map<string,string>".into(),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn list(columns: &[String]) -> String {
    match columns {
        [] => "none".into(),
        c => c.join(", "),
    }
}

fn micros(m: i64) -> String {
    duration(Duration::from_micros(m.unsigned_abs()))
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_job_explains_its_operator_state_exchange_and_output() {
        let job = super::super::reference::job_file(
            "reference",
            "  files: {path: /data/events}\n",
            "/job",
        );
        let job = super::super::parse_job(&job, std::path::Path::new("/")).unwrap();
        let text = explain(&job);
        for expected in [
            "job `reference`: 1 query over one read",
            "columns the queries read: timestamp, event_type, user_id, event_id",
            "watermark: max(timestamp) - 10m",
            "operator: window aggregate, tumbling 5m on timestamp",
            "group keys: event_type",
            "unique_users = count(distinct user_id): long (the distinct values, exact",
            "approx_unique = approx_count_distinct(event_id, 0.05): long (a HyperLogLog++ sketch",
            "distinct values to the owner of the key group of (window, aggregate, group, value)",
            "output: append: a window's row once",
            "output schema: window struct<start timestamp, end timestamp> not null, event_type string not null, event_count long not null",
            "sink: delta file:///job/aggregated, partitioned by event_type",
        ] {
            assert!(text.contains(expected), "`{expected}` not in:\n{text}");
        }
    }

    #[test]
    fn a_sql_query_explains_its_row_expressions_and_having() {
        let job =
            super::super::reference::job_file("rows", "  files: {path: /data/events}\n", "/job");
        let (head, rest) = job.split_once("  window:").unwrap();
        let (_, tail) = rest.split_once("trigger:").unwrap();
        let job = format!(
            "{head}  sql: |\n    SELECT CASE WHEN event_type = 'click' THEN 'c' ELSE 'o' END AS kind,\n      count(*) AS n, sum(length(page_url)) AS url_length\n    FROM source WHERE properties['browser'] <> 'edge'\n    GROUP BY window(timestamp, '5 minutes'), kind HAVING count(*) > 2\ntrigger:{tail}"
        )
        .replace("partition_by: [event_type]", "partition_by: [kind]");
        let job = super::super::parse_job(&job, std::path::Path::new("/")).unwrap();
        let text = explain(&job);
        for expected in [
            "columns the queries read: timestamp, event_type, page_url, properties",
            "row expressions (DataFusion, over each decoded batch, after the event-time checks):",
            "    where properties['browser'] <> 'edge'",
            "    kind = CASE WHEN event_type = 'click' THEN 'c' ELSE 'o' END",
            "    url_length__input = length(page_url)",
            "group keys: kind",
            "url_length = sum(url_length__input)",
            "having: n > 2 (over the output rows)",
        ] {
            assert!(text.contains(expected), "`{expected}` not in:\n{text}");
        }
    }

    #[test]
    fn a_seed_job_explains_each_query() {
        let job = super::super::reference::seed_job_file(
            "seed",
            "  files: {path: /data/events}\n",
            "/job",
        );
        let job = super::super::parse_job(&job, std::path::Path::new("/")).unwrap();
        let text = explain(&job);
        for expected in [
            "job `seed`: 2 queries over one read",
            "query `windows` (operator 0)",
            "query `raw-events` (operator 1)",
            "operator: dedup on (event_id), each key's first arrival",
            "remembered until the watermark reaches its first timestamp + 1h",
            "output: MERGE on (event_id, and the partition columns event_type)",
            "columns the queries read: timestamp, event_type, user_id, event_id, page_url, properties",
        ] {
            assert!(text.contains(expected), "`{expected}` not in:\n{text}");
        }
    }
}
