//! `fail_on_data_loss` (docs/architecture.md, The reference job): offsets the broker no longer
//! retains stop the job when it is true, and are skipped, counted and logged when it is false.
//! librdkafka's mock broker keeps 5 MB per partition, so writing more than that makes the first
//! records go away.

mod support;

use std::ffi::OsStr;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use support::{
    commit_records, produce_events, reference_job, run_local, run_ok, verify, weir, weir_local,
};

const EVENTS: u64 = 30_000;

fn watermarks(brokers: &str) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks("web-events", 0, Duration::from_secs(10))
        .expect("watermarks")
}

#[test]
fn offsets_no_longer_retained_stop_the_job_or_are_skipped_as_configured() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("web-events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = tmp.path().join("events.jsonl");
    run_ok(
        weir()
            .args(["gen", "--partitions", "1", "--count", &EVENTS.to_string()])
            .args(["--start", "2026-01-01T00:00:00Z", "--seed", "7"])
            .arg("--jsonl")
            .arg(&events),
        "weir gen",
    );
    produce_events(&brokers, &events);
    let (earliest, latest) = watermarks(&brokers);
    assert_eq!(latest, EVENTS as i64);
    assert!(
        earliest > 0,
        "the mock broker kept every record; write more"
    );

    // The job starts at offset 0, which is gone.
    let job = |dir: &std::path::Path, fail: bool| {
        std::fs::create_dir_all(dir).expect("job dir");
        let path = reference_job(dir, &brokers, 10_000);
        let text = std::fs::read_to_string(&path)
            .expect("job file")
            .replace("starting_offsets: earliest", "starting_offsets: {\"0\": 0}")
            .replace(
                "fail_on_data_loss: false",
                &format!("fail_on_data_loss: {fail}"),
            );
        std::fs::write(&path, text).expect("job file");
    };

    let strict = tmp.path().join("strict");
    job(&strict, true);
    let out = weir_local()
        .arg("--job")
        .arg(strict.join("job.yaml"))
        .args(["--trigger", "available-now", "--work-dir"])
        .arg(strict.join("work"))
        .output()
        .expect("weir local");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job ran over lost offsets");
    assert!(
        stderr.contains(&format!(
            "offsets 0..{earliest} of partition 0 of web-events are no longer retained (fail_on_data_loss is true)"
        )),
        "{stderr}"
    );

    let lenient = tmp.path().join("lenient");
    job(&lenient, false);
    let stdout = run_local(&lenient, 1);
    assert!(
        stdout.contains(&format!("lost {earliest} offsets no longer retained")),
        "{stdout}"
    );
    let lost: u64 = commit_records(&lenient)
        .iter()
        .map(|r| r["stats"]["lost_offsets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(lost, earliest as u64);
    // The table holds exactly what the retained records give.
    verify(
        &events,
        &lenient,
        &[
            OsStr::new("--skip-first"),
            OsStr::new(&format!("0:{earliest}")),
        ],
    );
}
