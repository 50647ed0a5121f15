//! The job file's operational outputs: the Pushgateway sink and webhook alerts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::job::duration::parse_duration;

/// A value that must not reach logs (a webhook URL is a credential): prints as `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Options whose values may be credentials (`storage_options`' keys, librdkafka's `sasl.*`):
/// a map that prints its keys and `***` for every value, so a `{:?}` of a job never shows them.
/// It reads as the map it holds.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretMap(pub BTreeMap<String, String>);

impl fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "***")))
            .finish()
    }
}

impl SecretMap {
    /// The same keys with empty values.
    pub fn blanked(&self) -> Self {
        Self(self.0.keys().map(|k| (k.clone(), String::new())).collect())
    }
}

impl std::ops::Deref for SecretMap {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a SecretMap {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<BTreeMap<String, String>> for SecretMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

/// `sinks: - pushgateway: {...}` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPushgateway {
    pub url: String,
    pub job: String,
    /// Extra grouping labels (`instance: analytics-eu`), after the job.
    #[serde(default)]
    pub grouping: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<u32>,
}

/// `alerts:` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// The webhook URL, usually `${SLACK_WEBHOOK_URL}`.
    #[serde(default)]
    pub webhook: Option<Secret>,
    /// Or a file holding it (a mounted Kubernetes Secret).
    #[serde(default)]
    pub webhook_file: Option<String>,
    /// An epoch running longer than this raises an alert (default 5m).
    #[serde(default)]
    pub epoch_budget: Option<String>,
    #[serde(default)]
    pub retries: Option<u32>,
}

/// The Pushgateway sink, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PushgatewaySink {
    /// The Pushgateway's base URL, e.g. `http://pushgateway:9091`.
    pub url: url::Url,
    pub job: String,
    pub grouping: BTreeMap<String, String>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

/// Where the webhook URL comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookSource {
    Url(Secret),
    File(PathBuf),
}

/// Webhook alerts, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpec {
    pub webhook: WebhookSource,
    pub epoch_budget: Duration,
    pub retries: u32,
}

pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PUSH_RETRIES: u32 = 3;
pub const DEFAULT_EPOCH_BUDGET: Duration = Duration::from_secs(300);
pub const DEFAULT_ALERT_RETRIES: u32 = 4;

/// A Prometheus metric or label name.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses an `http(s)://` URL; the message never repeats the URL (it may hold a credential).
pub fn http_url(field: &str, text: &str) -> Result<url::Url, JobError> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| JobError::new(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(JobError::new(field, "expected an http:// or https:// URL"));
    }
    Ok(url)
}

pub fn pushgateway(field: &str, raw: &RawPushgateway) -> Result<PushgatewaySink, JobError> {
    let url = http_url(&format!("{field}.url"), &raw.url)?;
    if raw.job.trim().is_empty() {
        return Err(JobError::new(
            format!("{field}.job"),
            "expected a job name for the Pushgateway's grouping key",
        ));
    }
    if raw.job.contains('/') {
        return Err(JobError::new(
            format!("{field}.job"),
            "must not contain `/`",
        ));
    }
    for (name, value) in &raw.grouping {
        if !is_metric_name(name) || name == "job" {
            return Err(JobError::new(
                format!("{field}.grouping.{name}"),
                "expected a Prometheus label name other than `job`",
            ));
        }
        if value.is_empty() || value.contains('/') {
            return Err(JobError::new(
                format!("{field}.grouping.{name}"),
                "expected a non-empty value without `/`",
            ));
        }
    }
    let timeout = match &raw.timeout {
        Some(t) => parse_duration(t).map_err(|m| JobError::new(format!("{field}.timeout"), m))?,
        None => DEFAULT_PUSH_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(JobError::new(
            format!("{field}.timeout"),
            "expected a positive duration",
        ));
    }
    Ok(PushgatewaySink {
        url,
        job: raw.job.clone(),
        grouping: raw.grouping.clone(),
        timeout,
        retries: raw.retries.unwrap_or(DEFAULT_PUSH_RETRIES),
    })
}

/// Metrics every push carries; an aggregate column may not take their names.
pub const PUSHED_METRICS: [&str; 6] = [
    "total_events",
    "last_epoch",
    "epoch_events",
    "epoch_late_events",
    "epoch_malformed_events",
    "epoch_windows_emitted",
];

/// Every aggregate column becomes a pushed gauge: it needs a metric name of its own.
pub fn check_pushed_columns<'a>(
    field: &str,
    columns: impl Iterator<Item = &'a str>,
) -> Result<(), JobError> {
    for column in columns {
        if !is_metric_name(column) || PUSHED_METRICS.contains(&column) {
            return Err(JobError::new(
                field,
                format!(
                    "aggregate `{column}` is pushed as a metric of that name: rename it to a \
                     Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*) other than {PUSHED_METRICS:?}"
                ),
            ));
        }
    }
    Ok(())
}

pub fn alerts(raw: &RawAlerts, base_dir: &Path) -> Result<AlertSpec, JobError> {
    let webhook = match (&raw.webhook, &raw.webhook_file) {
        (Some(url), None) => {
            http_url("alerts.webhook", &url.0)?;
            WebhookSource::Url(url.clone())
        }
        (None, Some(path)) => WebhookSource::File(base_dir.join(path)),
        _ => return Err(JobError::new(
            "alerts",
            "expected exactly one of webhook (a URL, e.g. ${SLACK_WEBHOOK_URL}) or webhook_file",
        )),
    };
    let epoch_budget = match &raw.epoch_budget {
        Some(t) => parse_duration(t).map_err(|m| JobError::new("alerts.epoch_budget", m))?,
        None => DEFAULT_EPOCH_BUDGET,
    };
    if epoch_budget.is_zero() {
        return Err(JobError::new(
            "alerts.epoch_budget",
            "expected a positive duration",
        ));
    }
    Ok(AlertSpec {
        webhook,
        epoch_budget,
        retries: raw.retries.unwrap_or(DEFAULT_ALERT_RETRIES),
    })
}

impl AlertSpec {
    /// The webhook URL, read from its file when it lives in one.
    pub fn webhook_url(&self) -> Result<url::Url, JobError> {
        match &self.webhook {
            WebhookSource::Url(s) => http_url("alerts.webhook", &s.0),
            WebhookSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    JobError::new(
                        "alerts.webhook_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                http_url("alerts.webhook_file", &text)
            }
        }
    }
}
