//! Webhook alerts reach a real HTTP receiver once, retried through a failure, and the webhook
//! URL (a credential) never shows in the logs; an epoch over its time budget raises one alert.
//! (Executor-lost and recovered alerts: `tests/recovery.rs`, where an executor is killed.)

mod support;

use std::time::Duration;

use support::webhook::Webhook;
use support::{commit_records, gen_events, reference_job_in, run_local, weir, Broker};

#[test]
fn a_query_failure_alerts_the_webhook_once_without_logging_its_url() {
    // The receiver fails the first delivery: the driver must retry, and deliver once.
    let hook = Webhook::start("/services/T000/secret-path-x9", 1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    reference_job_in(
        dir.path(),
        "127.0.0.1:1",
        1000,
        &root,
        "alerts: {webhook: '${TEST_WEBHOOK_URL}'}\n",
    );
    // A checkpoint of another query: the driver must refuse it and fail.
    let checkpoint = dir.path().join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(
        checkpoint.join("metadata.json"),
        r#"{"job_id":"other","name":"realtime-analytics","key_groups":256,"fingerprint":"0000000000000000","created_at_micros":0}"#,
    )
    .unwrap();
    let out = weir()
        .args(["driver", "--job"])
        .arg(dir.path().join("job.yaml"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off", "--ui-listen", "off"])
        .env("TEST_WEBHOOK_URL", &hook.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("belongs to a different query"), "{stderr}");
    assert!(
        !stderr.contains("secret-path-x9"),
        "the webhook URL was logged: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-path-x9"));

    // The driver exits after delivering: everything has arrived by now.
    let received = hook.received(Duration::from_millis(500));
    assert_eq!(
        received.len(),
        2,
        "one failed delivery, one retry: {received:?}"
    );
    let (path, body, status) = &received[1];
    assert_eq!(*status, 200);
    assert_eq!(path, "/services/T000/secret-path-x9");
    assert_eq!(body, &received[0].1, "the retry carries the same alert");
    let alert: serde_json::Value = serde_json::from_str(body).unwrap();
    let text = alert["text"].as_str().expect("Slack's {\"text\": ...}");
    assert!(text.contains("realtime-analytics"), "{text}");
    assert!(
        text.contains("failed") && text.contains("different query"),
        "{text}"
    );
}

#[test]
fn every_epoch_over_its_time_budget_raises_one_alert() {
    let broker = Broker::start();
    let hook = Webhook::start("/alerts", 0);
    let dir = tempfile::tempdir().unwrap();
    gen_events(&broker, dir.path(), 4, 3_000, &[]);
    // No epoch (Kafka reads, an exchange, a Delta commit) finishes within a millisecond.
    reference_job_in(
        dir.path(),
        &broker.address,
        1_000,
        &dir.path().display().to_string(),
        &format!("alerts: {{webhook: \"{}\", epoch_budget: 1ms}}\n", hook.url),
    );
    run_local(dir.path(), 1);
    let texts = hook.texts(Duration::from_millis(500));
    let epochs = commit_records(dir.path()).len();
    assert!(epochs >= 3, "{epochs} epochs");
    assert_eq!(texts.len(), epochs, "one alert per epoch: {texts:?}");
    for (epoch, text) in texts.iter().enumerate() {
        assert!(
            text.contains(&format!("epoch {epoch} has been running for more than 1ms")),
            "{texts:?}"
        );
    }
}
