//! The Pushgateway sink: after each committed epoch, the query's totals and the epoch's figures
//! go to a Prometheus Pushgateway under the sink's job and grouping labels. A task pushes the
//! newest figures (a push still in flight when the next epoch commits is superseded, never
//! queued), with a timeout and retries; failures are logged and counted, never fatal.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{Encoder, Gauge, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_common::checkpoint::CommitRecord;
use weir_common::job::PushgatewaySink;

use crate::ops::http_post::{post_with_retries, MAX_BACKOFF};
use crate::ops::metrics::DriverMetrics;

/// Builds the text a push carries for a decided epoch:
/// - `total_events` (counter): records read since the checkpoint began (survives restarts);
/// - `last_epoch`, `epoch_events`, `epoch_late_events`, `epoch_malformed_events`,
///   `epoch_windows_emitted` (gauges): the epoch's figures;
/// - per aggregate column (gauge, e.g. `unique_users`): its sum over the windows of the last
///   epoch that emitted any, `emitted` (none yet: not pushed, the Pushgateway keeps its value).
pub fn body(
    record: &CommitRecord,
    emitted: Option<&BTreeMap<String, f64>>,
) -> Result<Vec<u8>, prometheus::Error> {
    let registry = Registry::new();
    let total = IntCounter::new(
        "total_events",
        "Events read by the query since its checkpoint began.",
    )?;
    total.inc_by(record.totals.input_rows);
    registry.register(Box::new(total))?;
    let s = &record.stats;
    let gauges = [
        ("last_epoch", "The last committed epoch.", record.epoch),
        (
            "epoch_events",
            "Events read by the last epoch.",
            s.input_rows,
        ),
        (
            "epoch_late_events",
            "Late events the last epoch dropped.",
            s.late_rows,
        ),
        (
            "epoch_malformed_events",
            "Malformed records of the last epoch.",
            s.malformed_rows,
        ),
        (
            "epoch_windows_emitted",
            "Windows the last epoch wrote.",
            s.windows_emitted,
        ),
    ];
    for (name, help, value) in gauges {
        let g = IntGauge::new(name, help)?;
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(Box::new(g))?;
    }
    for (column, sum) in emitted.into_iter().flatten() {
        let g = Gauge::new(
            column.as_str(),
            format!("Sum of {column} over the windows of the last epoch that emitted any."),
        )?;
        g.set(*sum);
        registry.register(Box::new(g))?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(out)
}

/// `<url>/metrics/job/<job>/<label>/<value>...`
pub fn group_url(sink: &PushgatewaySink) -> url::Url {
    let mut url = sink.url.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(["metrics", "job", &sink.job]);
        for (label, value) in &sink.grouping {
            path.extend([label, value]);
        }
    }
    url
}

/// The URL without credentials, for log lines.
fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The aggregate sums of the last epoch that emitted windows: every push carries them, so an
/// emitting epoch whose own push was superseded by a quiet one still shows.
#[derive(Default)]
struct EmittedSums(Option<BTreeMap<String, f64>>);

impl EmittedSums {
    /// The sums to push with `record`.
    fn after(&mut self, record: &CommitRecord) -> Option<&BTreeMap<String, f64>> {
        if record.stats.windows_emitted > 0 {
            self.0 = Some(record.stats.output_sums.clone());
        }
        self.0.as_ref()
    }
}

pub struct Pushgateway {
    latest: watch::Sender<Option<(u64, Vec<u8>)>>,
    emitted: Mutex<EmittedSums>,
    task: JoinHandle<()>,
    limit: Duration,
}

impl Pushgateway {
    pub fn start(sink: &PushgatewaySink, metrics: DriverMetrics) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(sink.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("creating the Pushgateway client: {e}"))?;
        let (latest, rx) = watch::channel(None);
        let url = group_url(sink);
        tracing::info!(url = %shown(&url), "pushing epoch totals to the Pushgateway");
        let task = tokio::spawn(push_all(client, url, sink.retries, rx, metrics));
        let attempts = sink.retries + 1;
        Ok(Self {
            latest,
            emitted: Mutex::new(EmittedSums::default()),
            task,
            limit: (sink.timeout + MAX_BACKOFF) * attempts,
        })
    }

    /// Pushes a decided epoch's figures (superseding a push that has not started).
    pub fn push(&self, record: &CommitRecord) {
        let mut emitted = self.emitted.lock().unwrap_or_else(|e| e.into_inner());
        match body(record, emitted.after(record)) {
            Ok(b) => {
                self.latest.send_replace(Some((record.epoch, b)));
            }
            Err(e) => tracing::warn!(epoch = record.epoch, "building the Pushgateway push: {e}"),
        }
    }

    /// Finishes the last push (bounded by its timeouts and retries), then stops.
    pub async fn close(self) {
        drop(self.latest);
        if tokio::time::timeout(self.limit, self.task).await.is_err() {
            tracing::warn!(
                "the last Pushgateway push did not finish in {:?}",
                self.limit
            );
        }
    }
}

async fn push_all(
    client: reqwest::Client,
    url: url::Url,
    retries: u32,
    mut rx: watch::Receiver<Option<(u64, Vec<u8>)>>,
    metrics: DriverMetrics,
) {
    // An unseen value is delivered before the closed channel ends the loop.
    while rx.changed().await.is_ok() {
        let Some((epoch, body)) = rx.borrow_and_update().clone() else {
            continue;
        };
        // POST replaces the pushed metrics of the group and keeps the others (the aggregate
        // gauges of the last epoch that emitted windows).
        match post_with_retries(&client, &url, prometheus::TEXT_FORMAT, body, retries).await {
            Ok(()) => {
                metrics.pushes.with_label_values(&["success"]).inc();
                tracing::debug!(epoch, "pushed to the Pushgateway");
            }
            Err(e) => {
                metrics.pushes.with_label_values(&["failure"]).inc();
                tracing::warn!(epoch, url = %shown(&url), "Pushgateway push failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::checkpoint::{EpochStats, Totals};

    #[test]
    fn a_push_holds_the_running_total_and_the_epochs_sums() {
        let record = CommitRecord {
            epoch: 9,
            stats: EpochStats {
                input_rows: 40,
                windows_emitted: 2,
                output_sums: BTreeMap::from([("unique_users".to_string(), 17.0)]),
                ..Default::default()
            },
            totals: Totals {
                input_rows: 1040,
                output_rows: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let text =
            String::from_utf8(body(&record, Some(&record.stats.output_sums)).unwrap()).unwrap();
        assert!(
            text.contains("# TYPE total_events counter\ntotal_events 1040"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE unique_users gauge\nunique_users 17"),
            "{text}"
        );
        assert!(text.contains("last_epoch 9"), "{text}");
        let quiet = CommitRecord {
            epoch: 10,
            stats: EpochStats {
                output_sums: BTreeMap::from([("unique_users".to_string(), 0.0)]),
                ..Default::default()
            },
            ..record.clone()
        };
        assert_eq!(EmittedSums::default().after(&quiet), None);
        let mut emitted = EmittedSums::default();
        emitted.after(&record);
        let text = String::from_utf8(body(&quiet, emitted.after(&quiet)).unwrap()).unwrap();
        assert!(
            text.contains("unique_users 17") && text.contains("last_epoch 10"),
            "a quiet epoch carries the last emitted sums: {text}"
        );
        let text = String::from_utf8(body(&quiet, None).unwrap()).unwrap();
        assert!(!text.contains("unique_users"), "{text}");
    }

    #[test]
    fn the_group_url_names_job_and_labels() {
        let sink = PushgatewaySink {
            url: url::Url::parse("http://user:pw@pg:9091/base/").unwrap(),
            job: "weir streaming".into(),
            grouping: BTreeMap::from([("instance".to_string(), "eu".to_string())]),
            timeout: Duration::from_secs(1),
            retries: 0,
        };
        let url = group_url(&sink);
        assert_eq!(url.path(), "/base/metrics/job/weir%20streaming/instance/eu");
        assert!(!shown(&url).contains("pw"));
    }
}
