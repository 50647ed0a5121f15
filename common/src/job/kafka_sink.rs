//! The Kafka sink of the job file: every emitted row as a JSON record of a topic, exactly once
//! through Kafka transactions (or at least once with an idempotent producer).

use serde::{Deserialize, Serialize};

use super::{JobError, SecretMap};

/// `sinks: - kafka: {...}` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSink {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Output columns whose values make the record key; the group keys when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    #[serde(default = "default_format")]
    pub format: String,
    /// `exactly_once` (transactions, the default) or `at_least_once` (idempotent producer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// Names of the headers that carry the job's name and the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawHeaders>,
    /// Passed to librdkafka (security.protocol, sasl.*, compression.type, ...).
    #[serde(default)]
    pub options: SecretMap,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default = "default_job_header")]
    pub job: String,
    #[serde(default = "default_epoch_header")]
    pub epoch: String,
}

fn default_format() -> String {
    "json".into()
}

fn default_job_header() -> String {
    "weir.job".into()
}

fn default_epoch_header() -> String {
    "weir.epoch".into()
}

/// How a Kafka sink's records reach the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Each epoch's records in one transaction, committed after the epoch's decision, with a
    /// marker of the epoch in the same transaction: consumers reading committed records see
    /// each once.
    ExactlyOnce,
    /// An idempotent producer: an epoch repeated after a failure may be sent again (Spark's
    /// guarantee); for brokers without transactions.
    AtLeastOnce,
}

/// A validated Kafka sink.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSink {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Output columns that make the key, in order.
    pub key: Vec<String>,
    pub delivery: Delivery,
    pub job_header: String,
    pub epoch_header: String,
    pub options: SecretMap,
}

/// librdkafka options weir sets itself: a job may not change them.
const OWN_OPTIONS: [&str; 5] = [
    "bootstrap.servers",
    "transactional.id",
    "enable.idempotence",
    "group.id",
    "isolation.level",
];

/// Checks `raw` against the query's output columns (`columns`; `group_keys` are the default
/// key).
pub fn parse(
    field: &str,
    raw: &RawKafkaSink,
    columns: &[&str],
    group_keys: &[String],
) -> Result<KafkaSink, JobError> {
    if raw.bootstrap_servers.trim().is_empty() {
        return Err(JobError::new(
            format!("{field}.bootstrap_servers"),
            "expected host:port[,host:port...]",
        ));
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if raw.topic.is_empty() || raw.topic.len() > 249 || !raw.topic.chars().all(legal) {
        return Err(JobError::new(
            format!("{field}.topic"),
            "expected a Kafka topic name: 1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`",
        ));
    }
    if raw.format != "json" {
        return Err(JobError::new(
            format!("{field}.format"),
            format!("`{}`: only json is supported", raw.format),
        ));
    }
    let key = match &raw.key {
        Some(key) => {
            for (i, column) in key.iter().enumerate() {
                if !columns.contains(&column.as_str()) {
                    return Err(JobError::new(
                        format!("{field}.key[{i}]"),
                        format!(
                            "`{column}` is not an output column (expected one of {})",
                            columns.join(", ")
                        ),
                    ));
                }
            }
            key.clone()
        }
        None => group_keys.to_vec(),
    };
    let delivery = match raw.delivery.as_deref() {
        None | Some("exactly_once") => Delivery::ExactlyOnce,
        Some("at_least_once") => Delivery::AtLeastOnce,
        Some(other) => {
            return Err(JobError::new(
                format!("{field}.delivery"),
                format!("`{other}`: expected exactly_once or at_least_once"),
            ))
        }
    };
    let headers = raw.headers.clone().unwrap_or(RawHeaders {
        job: default_job_header(),
        epoch: default_epoch_header(),
    });
    if headers.job.is_empty() || headers.epoch.is_empty() || headers.job == headers.epoch {
        return Err(JobError::new(
            format!("{field}.headers"),
            "expected two different, non-empty header names",
        ));
    }
    if let Some(own) = OWN_OPTIONS.iter().find(|o| raw.options.contains_key(**o)) {
        return Err(JobError::new(
            format!("{field}.options.{own}"),
            "is set by weir (bootstrap_servers and delivery choose it)",
        ));
    }
    Ok(KafkaSink {
        bootstrap_servers: raw.bootstrap_servers.clone(),
        topic: raw.topic.clone(),
        key,
        delivery,
        job_header: headers.job,
        epoch_header: headers.epoch,
        options: raw.options.clone(),
    })
}
