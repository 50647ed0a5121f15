//! The job file (README, The job file): YAML with `${VAR}` from the environment, parsed into a raw
//! form that travels between processes, and validated into a [`JobSpec`] that the engine runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::data::schema::{build_schema, is_scalar, timestamp_type};
use crate::job::duration::{micros, parse_duration};

pub mod duration;
pub mod explain;
pub mod kafka_client;
pub mod kafka_sink;
pub mod operations;
pub mod query;
pub mod reference;
pub mod rows;
pub mod scaling;
pub mod sql;
pub mod upkeep;
pub use operations::{AlertSpec, PushgatewaySink, RawAlerts, RawPushgateway, Secret, SecretMap};
pub use query::{DedupQuery, Query, WindowQuery};

/// A mistake in a job file, naming the field and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job file: {field}: {message}")]
pub struct JobError {
    pub field: String,
    pub message: String,
}

impl JobError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The job file as written, after `${VAR}` substitution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub name: String,
    pub source: RawSource,
    /// The job's query; or, with `queries`, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<RawQuery>,
    /// Several named queries over the one source, each with its own sinks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<RawQuery>,
    #[serde(default = "default_trigger")]
    pub trigger: String,
    pub checkpoint_location: String,
    /// Decided epochs whose state snapshots are kept (older state files are deleted).
    #[serde(default)]
    pub checkpoint_retention: Option<u32>,
    /// Object-store settings for `s3://` locations (object_store's names: `aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_allow_http`, ...); `AWS_*` variables also apply.
    #[serde(default)]
    pub storage_options: SecretMap,
    #[serde(default)]
    pub key_groups: Option<u32>,
    /// The sinks of `query` (with `queries`, each has its own).
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    #[serde(default)]
    pub dead_letter: Option<RawDeadLetter>,
    /// Where rows late for every window they fall in are kept (same shape as `dead_letter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_rows: Option<RawDeadLetter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<RawAlerts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executors: Option<scaling::RawExecutors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<scaling::RawAutoscale>,
}

fn default_trigger() -> String {
    "30s".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<RawKafka>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<RawFiles>,
    #[serde(default = "default_format")]
    pub format: String,
    pub schema: IndexMap<String, String>,
    /// Largest accepted record value; larger ones go to the dead-letter output.
    #[serde(default)]
    pub max_record_bytes: Option<u64>,
}

fn default_format() -> String {
    "json".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default = "default_starting_offsets")]
    pub starting_offsets: serde_yaml_ng::Value,
    #[serde(default)]
    pub fail_on_data_loss: bool,
    #[serde(default)]
    pub max_offsets_per_trigger: Option<u64>,
    #[serde(default)]
    pub options: SecretMap,
    /// `librdkafka` (the default) or `weir`.
    #[serde(default)]
    pub client: Option<String>,
}

/// JSON-lines files under a directory or object-store prefix, taken in name order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub path: String,
    #[serde(default)]
    pub max_files_per_trigger: Option<u64>,
}

fn default_starting_offsets() -> serde_yaml_ng::Value {
    serde_yaml_ng::Value::String("latest".into())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    /// An entry of `queries`: its name, unique in the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `{column, delay}`; a query in SQL may give it in a `CREATE TABLE` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<RawWatermark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<RawWindow>,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub aggregates: IndexMap<String, String>,
    /// The raw events, each key's first arrival only, instead of window aggregates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<query::RawDedup>,
    #[serde(default = "default_output_mode")]
    pub output_mode: String,
    /// Records whose event time is further ahead of the plan's wall clock go to the dead letter.
    #[serde(default)]
    pub max_event_time_ahead: Option<String>,
    /// An entry of `queries`: its sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<Vec<RawSink>>,
    /// The query as SQL, instead of `window`, `group_by` and `aggregates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// A file holding the query's SQL (relative to the job file's directory), read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_file: Option<String>,
}

fn default_output_mode() -> String {
    "append".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWatermark {
    pub column: String,
    pub delay: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub column: String,
    pub size: String,
    #[serde(default)]
    pub slide: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
}

/// One entry of `sinks:`, a map with exactly one key naming the sink kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<RawDeltaSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushgateway: Option<RawPushgateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<kafka_sink::RawKafkaSink>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDeltaSink {
    pub path: String,
    #[serde(default)]
    pub partition_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<upkeep::RawCompact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<upkeep::RawVacuum>,
    /// A dedup query's table is MERGEd on these columns (update all, insert the rest) instead
    /// of appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDeadLetter {
    pub delta: RawDeltaSink,
}

/// Where the Kafka source starts when the checkpoint has no offsets yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    Earliest,
    Latest,
    /// Per partition: an offset, or -2 for earliest and -1 for latest (Spark's convention).
    Partitions(BTreeMap<i32, i64>),
}

/// When epochs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An epoch every interval (the next starts at once when one runs late).
    Interval(Duration),
    /// Process what is available at start in capped epochs, close the windows, then stop.
    AvailableNow,
}

/// The Kafka source, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSource {
    pub bootstrap_servers: String,
    pub topic: String,
    pub starting_offsets: StartingOffsets,
    pub fail_on_data_loss: bool,
    pub max_offsets_per_trigger: Option<u64>,
    pub options: SecretMap,
    /// Which client the executors read with.
    pub client: kafka_client::KafkaClient,
}

/// The file source, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSource {
    /// Absolute URL of the directory or prefix (`file:///...`, `s3://...`), no trailing slash.
    pub url: String,
    pub max_files_per_trigger: Option<u64>,
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Kafka(KafkaSource),
    Files(FileSource),
}

impl Source {
    /// The topic, or the files' location: how progress and dead letters name the source.
    pub fn name(&self) -> &str {
        match self {
            Source::Kafka(k) => &k.topic,
            Source::Files(f) => &f.url,
        }
    }
}

/// A Delta table output, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSink {
    /// Absolute URL (`file:///...`, `s3://...`).
    pub url: String,
    pub partition_by: Vec<String>,
    /// Compaction and vacuum of the table, when asked for.
    pub upkeep: upkeep::TableUpkeep,
    /// The size the table's writers aim files at (`delta.targetFileSize`), when not delta-rs's
    /// default: an update-mode output table keeps its files small, since each MERGE rewrites
    /// every file holding a row it changes.
    pub file_bytes: Option<u64>,
    /// Columns a dedup query's rows are MERGEd on, when the table is upserted.
    pub merge_on: Vec<String>,
}

/// One query of a job: what it computes from the source and where its rows go.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// Its name in `queries`, or the job's name for a job of one `query`.
    pub name: String,
    pub query: Query,
    pub output: DeltaSink,
    pub pushgateway: Option<PushgatewaySink>,
    /// Kafka topics that receive every emitted row.
    pub kafka_sinks: Vec<kafka_sink::KafkaSink>,
}

/// A validated job: everything the driver and executors need, in engine units.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub raw: RawJob,
    pub name: String,
    pub source: Source,
    pub input_schema: SchemaRef,
    pub max_record_bytes: usize,
    pub event_time_column: String,
    pub watermark_delay_micros: i64,
    /// The job's queries, in the order of the job file (a query's index is its operator in
    /// the executors' plan).
    pub queries: Vec<QuerySpec>,
    pub max_event_time_ahead_micros: i64,
    pub trigger: Trigger,
    pub checkpoint_url: String,
    pub checkpoint_retention: u32,
    pub storage_options: SecretMap,
    pub key_groups: u32,
    pub dead_letter: Option<DeltaSink>,
    /// Rows late for every query, when the job keeps them.
    pub late_rows: Option<DeltaSink>,
    pub alerts: Option<AlertSpec>,
    pub executors: scaling::ExecutorBounds,
    /// The driver sizes the job itself when set (docs/operations.md, Autoscaling).
    pub autoscale: Option<scaling::AutoscaleSpec>,
}

/// Spark's output modes that a windowed aggregate with a watermark supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A window's row is written once, when the watermark passes its end.
    Append,
    /// Every epoch writes the rows it changed, with their new values; a window's state is
    /// dropped without a final row once the watermark passes its end.
    Update,
}

impl OutputMode {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "append" => Ok(Self::Append),
            "update" => Ok(Self::Update),
            "complete" => Err(
                "`complete` would rewrite every window ever seen each epoch, so its state could never be dropped; use append or update".into(),
            ),
            other => Err(format!("`{other}`: expected append or update")),
        }
    }
}

/// Default number of key groups (docs/architecture.md, Assignment).
pub const DEFAULT_KEY_GROUPS: u32 = 256;
/// Default number of decided epochs whose state snapshots are kept.
pub const DEFAULT_CHECKPOINT_RETENTION: u32 = 10;
/// Default cap on one record's value.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 1 << 20;
/// Default limit on how far an event time may run ahead of the wall clock.
pub const DEFAULT_MAX_EVENT_TIME_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// Replaces `${VAR}` and `${VAR:-default}` with the environment; an unset variable is an error.
pub fn substitute_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, JobError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let line = text[..text.len() - rest.len() + pos].matches('\n').count() + 1;
        let end = after
            .find('}')
            .ok_or_else(|| JobError::new(format!("line {line}"), "`${` without a closing `}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(JobError::new(
                format!("line {line}"),
                format!("`${{{expr}}}` is not a variable reference; expected ${{NAME}} or ${{NAME:-default}}"),
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(JobError::new(
                    format!("line {line}"),
                    format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)"),
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a job file's text with the process environment and validates it.
pub fn parse_job(text: &str, base_dir: &Path) -> Result<JobSpec, JobError> {
    let substituted = substitute_env(text, |name| std::env::var(name).ok())?;
    let raw: RawJob = serde_yaml_ng::from_str(&substituted).map_err(|e| {
        let location = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "document".into());
        // serde_yaml_ng puts the field path first ("source.kafka: missing field `topic`").
        let message = e.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        JobError::new(location, message)
    })?;
    validate(raw, base_dir)
}

/// Reads and validates a job file from disk.
pub fn load_job(path: &Path) -> Result<JobSpec, JobError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| JobError::new(path.display().to_string(), format!("cannot read: {e}")))?;
    let base = std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf());
    parse_job(&text, &base)
}

/// Turns a path or URL into an absolute URL; relative paths are taken from `base_dir`.
pub fn location_url(field: &str, location: &str, base_dir: &Path) -> Result<String, JobError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(JobError::new(
            field,
            "expected a path or URL, found an empty value",
        ));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return match scheme {
            "file" | "s3" | "s3a" | "memory" => url::Url::parse(location)
                .map(|u| u.to_string().trim_end_matches('/').to_string())
                .map_err(|e| JobError::new(field, format!("`{location}` is not a URL: {e}"))),
            other => Err(JobError::new(
                field,
                format!("unsupported scheme `{other}://`; expected file://, s3:// or a local path"),
            )),
        };
    }
    let path = base_dir.join(location);
    let url = url::Url::from_directory_path(&path)
        .map_err(|_| JobError::new(field, format!("`{location}` is not a usable path")))?;
    Ok(url.to_string().trim_end_matches('/').to_string())
}

fn duration_field(field: &str, text: &str) -> Result<Duration, JobError> {
    parse_duration(text).map_err(|m| JobError::new(field, m))
}

fn parse_starting_offsets(value: &serde_yaml_ng::Value) -> Result<StartingOffsets, JobError> {
    const FIELD: &str = "source.kafka.starting_offsets";
    let from_map = |map: BTreeMap<String, i64>| -> Result<StartingOffsets, JobError> {
        let mut parsed = BTreeMap::new();
        for (k, v) in map {
            let p: i32 = k.parse().map_err(|_| {
                JobError::new(FIELD, format!("partition `{k}` is not a partition number"))
            })?;
            if v < -2 {
                return Err(JobError::new(
                    FIELD,
                    format!("offset {v} for partition {p}: expected an offset, -2 (earliest) or -1 (latest)"),
                ));
            }
            parsed.insert(p, v);
        }
        Ok(StartingOffsets::Partitions(parsed))
    };
    match value {
        serde_yaml_ng::Value::String(s) => match s.trim() {
            "earliest" => Ok(StartingOffsets::Earliest),
            "latest" => Ok(StartingOffsets::Latest),
            json if json.starts_with('{') => {
                let map: BTreeMap<String, i64> = serde_json::from_str(json).map_err(|e| {
                    JobError::new(FIELD, format!("expected {{\"0\": 42, \"1\": -2}}: {e}"))
                })?;
                from_map(map)
            }
            other => Err(JobError::new(
                FIELD,
                format!("`{other}`: expected earliest, latest or a map of partition to offset"),
            )),
        },
        serde_yaml_ng::Value::Mapping(mapping) => {
            let mut map = BTreeMap::new();
            for (k, v) in mapping {
                let key = match k {
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    _ => return Err(JobError::new(FIELD, "expected partition numbers as keys")),
                };
                let offset = v.as_i64().ok_or_else(|| {
                    JobError::new(FIELD, format!("partition {key}: expected an offset number"))
                })?;
                map.insert(key, offset);
            }
            from_map(map)
        }
        _ => Err(JobError::new(
            FIELD,
            "expected earliest, latest or a map of partition to offset",
        )),
    }
}

fn kafka_source(kafka: &RawKafka) -> Result<KafkaSource, JobError> {
    if kafka.bootstrap_servers.trim().is_empty() {
        return Err(JobError::new(
            "source.kafka.bootstrap_servers",
            "expected host:port[,host:port...], found an empty value",
        ));
    }
    if kafka.topic.trim().is_empty() {
        return Err(JobError::new("source.kafka.topic", "expected a topic name"));
    }
    if kafka.max_offsets_per_trigger == Some(0) {
        return Err(JobError::new(
            "source.kafka.max_offsets_per_trigger",
            "expected a positive number of records",
        ));
    }
    Ok(KafkaSource {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        topic: kafka.topic.clone(),
        starting_offsets: parse_starting_offsets(&kafka.starting_offsets)?,
        fail_on_data_loss: kafka.fail_on_data_loss,
        max_offsets_per_trigger: kafka.max_offsets_per_trigger,
        options: kafka.options.clone(),
        client: kafka_client::parse(kafka.client.as_deref(), &kafka.options)?,
    })
}

fn file_source(files: &RawFiles, base_dir: &Path) -> Result<FileSource, JobError> {
    if files.max_files_per_trigger == Some(0) {
        return Err(JobError::new(
            "source.files.max_files_per_trigger",
            "expected a positive number of files",
        ));
    }
    Ok(FileSource {
        url: location_url("source.files.path", &files.path, base_dir)?,
        max_files_per_trigger: files.max_files_per_trigger,
    })
}

fn delta_sink(field: &str, raw: &RawDeltaSink, base_dir: &Path) -> Result<DeltaSink, JobError> {
    Ok(DeltaSink {
        url: location_url(&format!("{field}.path"), &raw.path, base_dir)?,
        partition_by: raw.partition_by.clone(),
        upkeep: upkeep::parse(field, raw.compact.as_ref(), raw.vacuum.as_ref())?,
        file_bytes: None,
        merge_on: Vec::new(),
    })
}

/// The query's output table: partitioned by its key columns (group keys, or any scalar source
/// column of a dedup query), and MERGEd on `merge_on` for a dedup query that upserts.
fn output_table(
    field: &str,
    raw: &RawDeltaSink,
    query: &Query,
    input_schema: &arrow::datatypes::Schema,
    base_dir: &Path,
) -> Result<DeltaSink, JobError> {
    let scalar_source_column = |c: &str| {
        input_schema
            .field_with_name(c)
            .is_ok_and(|f| is_scalar(f.data_type()))
    };
    for (j, col) in raw.partition_by.iter().enumerate() {
        let allowed = match query {
            Query::Window(w) => w.group_by.contains(col),
            Query::Dedup(_) => scalar_source_column(col),
        };
        if !allowed {
            let expected = match query {
                Query::Window(_) => "a group_by column",
                Query::Dedup(_) => "a scalar column of source.schema",
            };
            return Err(JobError::new(
                format!("{field}.partition_by[{j}]"),
                format!("`{col}` is not {expected}"),
            ));
        }
    }
    let mut sink = delta_sink(field, raw, base_dir)?;
    if let Some(merge_on) = &raw.merge_on {
        if !matches!(query, Query::Dedup(_)) {
            return Err(JobError::new(
                format!("{field}.merge_on"),
                "only a dedup query's table is merged on columns of its own; a window query \
                 in update mode merges on its window and group keys",
            ));
        }
        if merge_on.is_empty() {
            return Err(JobError::new(
                format!("{field}.merge_on"),
                "expected at least one column",
            ));
        }
        for (j, col) in merge_on.iter().enumerate() {
            if !scalar_source_column(col) {
                return Err(JobError::new(
                    format!("{field}.merge_on[{j}]"),
                    format!("`{col}` is not a scalar column of source.schema"),
                ));
            }
        }
        sink.merge_on = merge_on.clone();
    }
    Ok(sink)
}

/// Each query of the job file with the field it is written under.
fn raw_queries_mut(raw: &mut RawJob) -> impl Iterator<Item = (String, &mut RawQuery)> {
    let single = raw.query.iter_mut().map(|q| ("query".to_string(), q));
    let named = raw
        .queries
        .iter_mut()
        .enumerate()
        .map(|(i, q)| (format!("queries[{i}]"), q));
    single.chain(named)
}

/// Puts the text of each query's `sql_file` in its `sql`, so the job travels whole.
fn read_sql_files(raw: &mut RawJob, base_dir: &Path) -> Result<(), JobError> {
    for (field, query) in raw_queries_mut(raw) {
        let Some(file) = query.sql_file.take() else {
            continue;
        };
        if query.sql.is_some() {
            return Err(JobError::new(
                format!("{field}.sql_file"),
                "give the SQL either inline (`sql`) or in a file (`sql_file`), not both",
            ));
        }
        let path = base_dir.join(&file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            JobError::new(
                format!("{field}.sql_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        query.sql = Some(text);
    }
    Ok(())
}

/// Gives each query written in SQL with a `CREATE TABLE ... WATERMARK FOR` the watermark it
/// declares (so the query travels with it), and refuses a query without a watermark.
fn resolve_watermarks(raw: &mut RawJob) -> Result<(), JobError> {
    for (field, query) in raw_queries_mut(raw) {
        let declared = match &query.sql {
            Some(sql) => sql::create_table_watermark(sql)
                .map_err(|m| JobError::new(format!("{field}.sql"), m))?,
            None => None,
        };
        match (declared, &query.watermark) {
            (Some(_), Some(_)) => {
                return Err(JobError::new(
                    format!("{field}.watermark"),
                    "the SQL's CREATE TABLE declares the watermark already: give it once",
                ))
            }
            (Some((column, delay)), None) => {
                query.watermark = Some(RawWatermark { column, delay });
            }
            (None, None) => {
                return Err(JobError::new(
                    format!("{field}.watermark"),
                    "expected {column, delay} (or, in SQL, a CREATE TABLE with WATERMARK FOR)",
                ))
            }
            (None, Some(_)) => {}
        }
    }
    Ok(())
}

/// A query of the job file: the field it is written under, the query, its sinks.
type NamedQuery<'a> = (String, &'a RawQuery, &'a [RawSink]);

/// The job's queries with the field each is written under and its sinks: its one `query`
/// (named as the job, with the job's `sinks`), or its `queries`, each named and with sinks
/// of its own.
fn named_queries(raw: &RawJob) -> Result<Vec<NamedQuery<'_>>, JobError> {
    match (&raw.query, raw.queries.as_slice()) {
        (Some(query), []) => {
            if query.name.is_some() {
                return Err(JobError::new(
                    "query.name",
                    "only an entry of `queries` is named (a single query takes the job's name)",
                ));
            }
            if query.sinks.is_some() {
                return Err(JobError::new(
                    "query.sinks",
                    "a single query's sinks are the job's `sinks`",
                ));
            }
            Ok(vec![("query".to_string(), query, raw.sinks.as_slice())])
        }
        (None, [_, ..]) => {
            if !raw.sinks.is_empty() {
                return Err(JobError::new(
                    "sinks",
                    "with `queries`, each query has its own `sinks`",
                ));
            }
            if raw.queries.len() > 64 {
                return Err(JobError::new("queries", "at most 64 queries per job"));
            }
            raw.queries
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let field = format!("queries[{i}]");
                    match (&q.name, &q.sinks) {
                        (Some(name), Some(sinks)) if !name.trim().is_empty() => {
                            Ok((field, q, sinks.as_slice()))
                        }
                        (Some(_), Some(_)) | (None, _) => Err(JobError::new(
                            format!("{field}.name"),
                            "expected a non-empty name for each of the queries",
                        )),
                        (Some(_), None) => Err(JobError::new(
                            format!("{field}.sinks"),
                            "expected the query's sinks (a delta sink at least)",
                        )),
                    }
                })
                .collect()
        }
        _ => Err(JobError::new(
            "query",
            "expected exactly one of `query` or `queries`",
        )),
    }
}

/// One query and its sinks, checked against the source's columns.
#[allow(clippy::too_many_arguments)]
fn query_spec(
    field: &str,
    raw: &RawQuery,
    sinks: &[RawSink],
    sources: &[&str],
    input_schema: &arrow::datatypes::Schema,
    event_time_column: &str,
    base_dir: &Path,
) -> Result<QuerySpec, JobError> {
    let parsed_query = query::parse(field, raw, input_schema, event_time_column, sources)?;
    // A single query's sinks are the job's: their fields are `sinks[i]`.
    let sink_field = |i: usize| match field {
        "query" => format!("sinks[{i}]"),
        f => format!("{f}.sinks[{i}]"),
    };
    let mut output = None;
    let mut pushgateway = None;
    let mut kafka_sinks: Vec<kafka_sink::KafkaSink> = Vec::new();
    let output_columns = query::output_columns(&parsed_query, input_schema);
    let keys = parsed_query.keys();
    let aggregate_names: Vec<&str> = match &parsed_query {
        Query::Window(w) => w.aggregates.iter().map(|a| a.name.as_str()).collect(),
        Query::Dedup(_) => Vec::new(),
    };
    for (i, sink) in sinks.iter().enumerate() {
        match (&sink.delta, &sink.pushgateway, &sink.kafka) {
            (None, None, Some(k)) => {
                let field = format!("{}.kafka", sink_field(i));
                let parsed = kafka_sink::parse(&field, k, &output_columns, keys)?;
                if kafka_sinks.iter().any(|o| {
                    o.topic == parsed.topic && o.bootstrap_servers == parsed.bootstrap_servers
                }) {
                    return Err(JobError::new(
                        format!("{field}.topic"),
                        "another kafka sink writes this topic",
                    ));
                }
                kafka_sinks.push(parsed);
            }
            (Some(d), None, None) => {
                let field = format!("{}.delta", sink_field(i));
                if output.is_some() {
                    return Err(JobError::new(field, "only one delta sink per query"));
                }
                output = Some(output_table(
                    &field,
                    d,
                    &parsed_query,
                    input_schema,
                    base_dir,
                )?);
            }
            (None, Some(p), None) => {
                let field = format!("{}.pushgateway", sink_field(i));
                if pushgateway.is_some() {
                    return Err(JobError::new(field, "only one pushgateway sink per query"));
                }
                operations::check_pushed_columns(&field, aggregate_names.iter().copied())?;
                pushgateway = Some(operations::pushgateway(&field, p)?);
            }
            _ => {
                return Err(JobError::new(
                    sink_field(i),
                    "expected exactly one of delta, kafka or pushgateway",
                ))
            }
        }
    }
    let sinks_field = match field {
        "query" => "sinks".to_string(),
        f => format!("{f}.sinks"),
    };
    let mut output = output.ok_or_else(|| JobError::new(sinks_field, "expected a delta sink"))?;
    if parsed_query.output_mode() == OutputMode::Update {
        let asked = sinks
            .iter()
            .filter_map(|s| s.delta.as_ref()?.compact.as_ref()?.target_file_bytes)
            .next();
        let bytes = asked.unwrap_or(upkeep::UPDATE_MODE_FILE_BYTES);
        output.file_bytes = Some(bytes);
        if let Some(compact) = output.upkeep.compact.as_mut() {
            compact.target_file_bytes = bytes;
        }
    }
    Ok(QuerySpec {
        name: raw.name.clone().unwrap_or_default(),
        query: parsed_query,
        output,
        pushgateway,
        kafka_sinks,
    })
}

/// Checks a raw job and converts it into engine units.
pub fn validate(mut raw: RawJob, base_dir: &Path) -> Result<JobSpec, JobError> {
    if raw.name.trim().is_empty() {
        return Err(JobError::new("name", "expected a non-empty job name"));
    }
    read_sql_files(&mut raw, base_dir)?;
    resolve_watermarks(&mut raw)?;
    let source = match (&raw.source.kafka, &raw.source.files) {
        (Some(kafka), None) => Source::Kafka(kafka_source(kafka)?),
        (None, Some(files)) => Source::Files(file_source(files, base_dir)?),
        _ => {
            return Err(JobError::new(
                "source",
                "expected exactly one of kafka or files",
            ))
        }
    };
    if raw.source.format != "json" {
        return Err(JobError::new(
            "source.format",
            format!("`{}`: only json is supported", raw.source.format),
        ));
    }
    if raw.source.schema.is_empty() {
        return Err(JobError::new(
            "source.schema",
            "expected at least one column",
        ));
    }
    let input_schema = build_schema(
        raw.source
            .schema
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(|(col, msg)| JobError::new(format!("source.schema.{col}"), msg))?;
    let column_type = |field: &str, name: &str| -> Result<DataType, JobError> {
        input_schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|_| JobError::new(field, format!("column `{name}` is not in source.schema")))
    };

    let named = named_queries(&raw)?;
    let (first_field, first, _) = &named[0];
    let Some(first_watermark) = &first.watermark else {
        return Err(JobError::new(
            format!("{first_field}.watermark"),
            "expected {column, delay}",
        ));
    };
    let event_time_column = first_watermark.column.clone();
    let watermark_field = format!("{first_field}.watermark.column");
    if column_type(&watermark_field, &event_time_column)? != timestamp_type() {
        return Err(JobError::new(
            watermark_field,
            format!("column `{event_time_column}` must be a timestamp"),
        ));
    }
    let delay = duration_field(
        &format!("{first_field}.watermark.delay"),
        &first_watermark.delay,
    )?;
    let ahead = match &first.max_event_time_ahead {
        Some(s) => duration_field(&format!("{first_field}.max_event_time_ahead"), s)?,
        None => DEFAULT_MAX_EVENT_TIME_AHEAD,
    };
    // One read, one watermark: the executors check each row's event time once.
    for (field, q, _) in &named[1..] {
        if q.watermark != first.watermark || q.max_event_time_ahead != first.max_event_time_ahead {
            return Err(JobError::new(
                format!("{field}.watermark"),
                format!(
                    "the queries over one source share its watermark and max_event_time_ahead: \
                     expected those of {first_field}"
                ),
            ));
        }
    }

    let trigger = match raw.trigger.trim() {
        "available-now" | "available_now" | "availableNow" => Trigger::AvailableNow,
        other => {
            let d = duration_field("trigger", other)?;
            if d.is_zero() {
                return Err(JobError::new(
                    "trigger",
                    "expected a positive interval or available-now",
                ));
            }
            Trigger::Interval(d)
        }
    };
    let checkpoint_url = location_url("checkpoint_location", &raw.checkpoint_location, base_dir)?;
    let checkpoint_retention = raw
        .checkpoint_retention
        .unwrap_or(DEFAULT_CHECKPOINT_RETENTION);
    if checkpoint_retention == 0 {
        return Err(JobError::new(
            "checkpoint_retention",
            "expected at least 1 (the last decided epoch's state is needed to recover)",
        ));
    }
    let key_groups = raw.key_groups.unwrap_or(DEFAULT_KEY_GROUPS);
    if !(1..=32768).contains(&key_groups) {
        return Err(JobError::new(
            "key_groups",
            "expected a number from 1 to 32768",
        ));
    }

    // A query's SQL reads the source as `source`, or by its topic's name.
    let sources: Vec<&str> = match &source {
        Source::Kafka(k) => vec!["source", k.topic.as_str()],
        Source::Files(_) => vec!["source"],
    };
    let mut queries: Vec<QuerySpec> = Vec::new();
    for (field, raw_query, sinks) in &named {
        let mut spec = query_spec(
            field,
            raw_query,
            sinks,
            &sources,
            &input_schema,
            &event_time_column,
            base_dir,
        )?;
        if field == "query" {
            spec.name = raw.name.clone();
        }
        let name = spec.name.clone();
        if queries.iter().any(|q| q.name == name) {
            return Err(JobError::new(
                format!("{field}.name"),
                format!("another query is named `{name}`"),
            ));
        }
        if queries.iter().any(|q| q.output.url == spec.output.url) {
            return Err(JobError::new(
                format!("{field}.sinks"),
                "another query writes this delta table",
            ));
        }
        if spec.pushgateway.is_some() && queries.iter().any(|q| q.pushgateway.is_some()) {
            return Err(JobError::new(
                format!("{field}.sinks"),
                "one pushgateway sink per job: it pushes the job's figures",
            ));
        }
        for k in &spec.kafka_sinks {
            let taken = queries
                .iter()
                .flat_map(|q| &q.kafka_sinks)
                .any(|o| o.topic == k.topic && o.bootstrap_servers == k.bootstrap_servers);
            if taken {
                return Err(JobError::new(
                    format!("{field}.sinks"),
                    format!("another query's kafka sink writes topic `{}`", k.topic),
                ));
            }
        }
        queries.push(spec);
    }
    let output_urls: Vec<&str> = queries.iter().map(|q| q.output.url.as_str()).collect();
    let alerts = match &raw.alerts {
        Some(a) => Some(operations::alerts(a, base_dir)?),
        None => None,
    };
    let dead_letter = match &raw.dead_letter {
        Some(d) => Some(delta_sink("dead_letter.delta", &d.delta, base_dir)?),
        None => None,
    };
    if dead_letter
        .as_ref()
        .is_some_and(|d| output_urls.contains(&d.url.as_str()))
    {
        return Err(JobError::new(
            "dead_letter.delta.path",
            "must differ from the output tables",
        ));
    }
    let late_rows = match &raw.late_rows {
        Some(l) => Some(delta_sink("late_rows.delta", &l.delta, base_dir)?),
        None => None,
    };
    if let Some(l) = &late_rows {
        if output_urls.contains(&l.url.as_str())
            || dead_letter.as_ref().is_some_and(|d| d.url == l.url)
        {
            return Err(JobError::new(
                "late_rows.delta.path",
                "must differ from the output and dead-letter tables",
            ));
        }
    }

    let max_record_bytes = raw
        .source
        .max_record_bytes
        .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
    // Absolute locations travel to executors, which may run elsewhere.
    raw.checkpoint_location = checkpoint_url.clone();
    let raw_sinks = match raw.query.as_mut() {
        Some(_) => vec![&mut raw.sinks],
        None => raw
            .queries
            .iter_mut()
            .filter_map(|q| q.sinks.as_mut())
            .collect(),
    };
    for (sinks, query) in raw_sinks.into_iter().zip(&queries) {
        for d in sinks.iter_mut().filter_map(|s| s.delta.as_mut()) {
            d.path = query.output.url.clone();
        }
    }
    if let (Some(d), Some(sink)) = (raw.dead_letter.as_mut(), dead_letter.as_ref()) {
        d.delta.path = sink.url.clone();
    }
    if let (Some(l), Some(sink)) = (raw.late_rows.as_mut(), late_rows.as_ref()) {
        l.delta.path = sink.url.clone();
    }
    if let (Some(f), Source::Files(files)) = (raw.source.files.as_mut(), &source) {
        f.path = files.url.clone();
    }
    let executors = scaling::parse(raw.executors.as_ref(), key_groups)?;
    let autoscale = match (&raw.autoscale, &source) {
        (Some(_), Source::Files(_)) => {
            return Err(JobError::new(
                "autoscale",
                "needs a Kafka source: it sizes the job from the offsets behind (file sources \
                 scale with `weir admin scale`)",
            ))
        }
        (Some(a), Source::Kafka(_)) => Some(scaling::parse_autoscale(a, &executors)?),
        (None, _) => None,
    };
    Ok(JobSpec {
        name: raw.name.clone(),
        source,
        input_schema,
        max_record_bytes: usize::try_from(max_record_bytes).unwrap_or(usize::MAX),
        event_time_column,
        watermark_delay_micros: micros(delay),
        queries,
        max_event_time_ahead_micros: micros(ahead),
        trigger,
        checkpoint_url,
        checkpoint_retention,
        storage_options: raw.storage_options.clone(),
        key_groups,
        dead_letter,
        late_rows,
        alerts,
        executors,
        autoscale,
        raw,
    })
}

/// The values for `public`'s keys from `own` (see [`JobSpec::with_secrets_from`]).
fn fill_secrets(
    field: &str,
    public: &SecretMap,
    own: Option<&SecretMap>,
) -> Result<SecretMap, JobError> {
    if public.is_empty() {
        return Ok(SecretMap::default());
    }
    let keys = |m: &SecretMap| m.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(own) = own else {
        return Err(JobError::new(
            field,
            format!(
                "the driver's job sets {field} ({}); an executor takes their values from its \
                 own job file, which it was not given (--job or WEIR_JOB)",
                keys(public)
            ),
        ));
    };
    if !public.keys().eq(own.keys()) {
        return Err(JobError::new(
            field,
            format!(
                "the driver's job sets {field} ({}), this executor's job file ({}): give the \
                 driver and the executors the same job file",
                keys(public),
                keys(own)
            ),
        ));
    }
    Ok(own.clone())
}

impl JobSpec {
    /// The source columns the job's queries read, the only ones the executors' decoder builds:
    /// the event time, group keys, aggregate inputs and what row expressions read (a dedup
    /// query's output is every column).
    pub fn columns_read(&self) -> Vec<&str> {
        let mut read: Vec<&str> = vec![self.event_time_column.as_str()];
        let mut add = |c: &'_ str| {
            if let Some(field) = self.input_schema.fields().iter().find(|f| f.name() == c) {
                if !read.contains(&field.name().as_str()) {
                    read.push(field.name().as_str());
                }
            }
        };
        for spec in &self.queries {
            match &spec.query {
                Query::Window(w) => {
                    if let Some(rows) = &w.rows {
                        rows.columns_read().into_iter().for_each(&mut add);
                    }
                    w.group_by.iter().for_each(|c| add(c));
                    w.aggregates
                        .iter()
                        .filter_map(|a| a.column.as_deref())
                        .for_each(&mut add);
                }
                Query::Dedup(_) => self
                    .input_schema
                    .fields()
                    .iter()
                    .for_each(|f| add(f.name())),
            }
        }
        read
    }

    /// The Kafka source, when the job reads one.
    pub fn kafka(&self) -> Option<&KafkaSource> {
        match &self.source {
            Source::Kafka(k) => Some(k),
            Source::Files(_) => None,
        }
    }

    /// The resolved job as JSON, as sent to executors, without its secrets: alerts stay with the
    /// driver (their webhook URL is a credential executors have no use for), and the values of
    /// `storage_options` and of the Kafka `options` are blanked, keys kept. Executors take those
    /// values from their own job file ([`JobSpec::with_secrets_from`]), so no credential crosses
    /// the network (docs/operations.md, Security).
    pub fn to_public_json(&self) -> String {
        let mut raw = self.raw.clone();
        raw.alerts = None;
        raw.storage_options = raw.storage_options.blanked();
        if let Some(k) = raw.source.kafka.as_mut() {
            k.options = k.options.blanked();
        }
        // Only the driver writes to Kafka sinks.
        let query_sinks = raw.queries.iter_mut().filter_map(|q| q.sinks.as_mut());
        for sinks in std::iter::once(&mut raw.sinks).chain(query_sinks) {
            for sink in sinks.iter_mut().filter_map(|s| s.kafka.as_mut()) {
                sink.options = sink.options.blanked();
            }
        }
        // A watermark the SQL declares travels in the SQL; the executor resolves it again, as
        // it would refuse a query that gives it both ways.
        for (_, query) in raw_queries_mut(&mut raw) {
            let declared = query
                .sql
                .as_deref()
                .is_some_and(|s| matches!(sql::create_table_watermark(s), Ok(Some(_))));
            if declared {
                query.watermark = None;
            }
        }
        serde_json::to_string(&raw).unwrap_or_default()
    }

    /// Gives a job from [`JobSpec::to_public_json`] the secret values of `own`, the job file
    /// this process read itself. Both must name the same keys; without a job file of its own,
    /// a job with secret options cannot run here.
    pub fn with_secrets_from(mut self, own: Option<&JobSpec>) -> Result<Self, JobError> {
        let own_kafka = own.and_then(|j| j.raw.source.kafka.as_ref().map(|k| &k.options));
        let storage = fill_secrets(
            "storage_options",
            &self.raw.storage_options,
            own.map(|j| &j.raw.storage_options),
        )?;
        self.raw.storage_options = storage.clone();
        self.storage_options = storage;
        if let Some(k) = self.raw.source.kafka.as_mut() {
            let options = fill_secrets("source.kafka.options", &k.options, own_kafka)?;
            k.options = options.clone();
            if let Source::Kafka(source) = &mut self.source {
                // Read again with the values: weir's client takes its settings from them.
                source.client = kafka_client::parse(k.client.as_deref(), &options)?;
                source.options = options;
            }
        }
        Ok(self)
    }

    /// Rebuilds a job from [`JobSpec::to_json`] output (locations are already absolute).
    pub fn from_json(json: &str) -> Result<Self, JobError> {
        let raw: RawJob = serde_json::from_str(json)
            .map_err(|e| JobError::new("job", format!("malformed job from driver: {e}")))?;
        validate(raw, Path::new("/"))
    }

    /// A fingerprint of what determines the output: a checkpoint from another query is refused.
    pub fn fingerprint(&self) -> String {
        let query = match &self.raw.query {
            Some(query) => serde_json::to_string(query),
            None => serde_json::to_string(&self.raw.queries),
        }
        .unwrap_or_default();
        let schema = serde_json::to_string(&self.raw.source.schema).unwrap_or_default();
        // A file source's position is not a Kafka offset: its checkpoints are its own. (Kafka
        // jobs keep the fingerprint they had before file sources existed.)
        let kind = match self.source {
            Source::Kafka(_) => "",
            Source::Files(_) => "|files",
        };
        format!(
            "{:016x}",
            crate::query::keygroup::stable_hash(
                format!("{query}|{schema}|{}{kind}", self.key_groups).as_bytes()
            )
        )
    }
}

#[cfg(test)]
mod tests;
