//! Webhook alerts reach a real HTTP receiver once, retried through a failure, and the webhook
//! URL (a credential) never shows in the logs.

mod support;

use std::time::Duration;

use support::webhook::Webhook;
use support::{reference_job_in, weir};

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
        .args(["--metrics-listen", "off"])
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
