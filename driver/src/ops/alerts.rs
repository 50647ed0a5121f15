//! Webhook alerts (Slack-compatible `{"text": ...}`): query failed, executor lost, epoch over
//! its time budget, recovered, autoscaled. Each alert is also an event of the query's timeline
//! (the dashboard marks it on its charts), with or without a webhook. A task sends them in
//! order, retrying with backoff; the coordinator never waits for it. The URL is a credential:
//! it never reaches a log line (reqwest errors are logged `without_url`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir_common::job::AlertSpec;

use crate::ops::http_post::post_with_retries;
use crate::ops::metrics::DriverMetrics;
use crate::ops::timeline::Timeline;

/// Alerts waiting to be sent; more are dropped (and counted).
const QUEUE: usize = 64;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    QueryFailed,
    ExecutorLost,
    EpochOverBudget,
    Recovered,
    /// The autoscaler changed the executor target.
    Autoscaled,
}

impl AlertKind {
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::QueryFailed => "query_failed",
            AlertKind::ExecutorLost => "executor_lost",
            AlertKind::EpochOverBudget => "epoch_over_budget",
            AlertKind::Recovered => "recovered",
            AlertKind::Autoscaled => "autoscaled",
        }
    }

    fn icon(self) -> &'static str {
        match self {
            AlertKind::QueryFailed => ":red_circle:",
            AlertKind::ExecutorLost => ":warning:",
            AlertKind::EpochOverBudget => ":hourglass:",
            AlertKind::Recovered => ":large_green_circle:",
            AlertKind::Autoscaled => ":arrows_counterclockwise:",
        }
    }
}

struct Alert {
    kind: AlertKind,
    text: String,
}

/// Raises alerts from anywhere; without an `alerts` section in the job it only logs them.
#[derive(Clone)]
pub struct AlertSender {
    query: String,
    tx: Option<mpsc::Sender<Alert>>,
    metrics: DriverMetrics,
    timeline: Timeline,
}

/// The alert sender and the task that delivers what it raises.
pub struct Alerts {
    sender: AlertSender,
    task: Option<JoinHandle<()>>,
    /// The time budget of an epoch, when alerts are configured.
    pub epoch_budget: Option<Duration>,
}

impl Alerts {
    /// Starts the sender; reads the webhook URL (from its secret file when it lives in one).
    pub fn start(
        spec: Option<&AlertSpec>,
        query: &str,
        metrics: DriverMetrics,
        timeline: Timeline,
    ) -> anyhow::Result<Self> {
        let Some(spec) = spec else {
            return Ok(Self {
                sender: AlertSender {
                    query: query.to_string(),
                    tx: None,
                    metrics,
                    timeline,
                },
                task: None,
                epoch_budget: None,
            });
        };
        let url = spec.webhook_url()?;
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("creating the webhook client: {}", e.without_url()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send_all(client, url, spec.retries, rx, metrics.clone()));
        Ok(Self {
            sender: AlertSender {
                query: query.to_string(),
                tx: Some(tx),
                metrics,
                timeline,
            },
            task: Some(task),
            epoch_budget: Some(spec.epoch_budget),
        })
    }

    pub fn raise(&self, kind: AlertKind, details: &str) {
        self.sender.raise(kind, details);
    }

    /// A handle for tasks that raise alerts.
    pub fn sender(&self) -> AlertSender {
        self.sender.clone()
    }

    /// Sends what is queued (at most `limit`), then stops.
    pub async fn close(mut self, limit: Duration) {
        self.sender.tx = None;
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("alerts still unsent after {limit:?}; giving up on them");
            }
        }
    }
}

impl AlertSender {
    /// Queues an alert about this query.
    pub fn raise(&self, kind: AlertKind, details: &str) {
        self.raise_about(kind, None, details);
    }

    /// Queues an alert about this query, and about one epoch of it when `epoch` says which.
    pub fn raise_about(&self, kind: AlertKind, epoch: Option<u64>, details: &str) {
        self.timeline.add_event(kind.label(), details, epoch);
        let text = format!("{} weir query `{}`: {details}", kind.icon(), self.query);
        tracing::info!(alert = kind.label(), "{text}");
        let Some(tx) = &self.tx else { return };
        if tx.try_send(Alert { kind, text }).is_err() {
            self.metrics
                .alerts
                .with_label_values(&[kind.label(), "dropped"])
                .inc();
            tracing::warn!(alert = kind.label(), "alert queue full; alert dropped");
        }
    }
}

async fn send_all(
    client: reqwest::Client,
    url: url::Url,
    retries: u32,
    mut rx: mpsc::Receiver<Alert>,
    metrics: DriverMetrics,
) {
    while let Some(alert) = rx.recv().await {
        let body = serde_json::json!({ "text": alert.text }).to_string();
        let result = post_with_retries(
            &client,
            &url,
            "application/json",
            body.into_bytes(),
            retries,
        )
        .await;
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        metrics
            .alerts
            .with_label_values(&[alert.kind.label(), outcome])
            .inc();
        if let Err(e) = result {
            tracing::warn!(
                alert = alert.kind.label(),
                "webhook alert not delivered: {e}"
            );
        }
    }
}
