//! Scaling a running job by hand: `weir admin scale` takes a `weir local` job on the broker from
//! one executor to three, two and one while it reads its backlog. Each step moves only the key
//! groups the new balance requires, no epoch run is abandoned, the retired executors exit 0 (and
//! are not started again), the target survives in the status, and the table equals the ground
//! truth.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::admin::{admin, admin_json};
use support::local_run::LocalRun;
use support::{gen_events, reference_job, verify, weir_local, Broker};

const KEY_GROUPS: u64 = 256;
const EVENTS: u64 = 60_000;

/// Waits for a committed epoch after `after` that ran on `executors` executors and answers the
/// first.
fn wait_for_epoch_on(url: &str, executors: u64, after: Option<u64>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recent = admin_json(url, &["recent-progress"], None);
        if let Some(p) = recent.as_array().and_then(|epochs| {
            epochs.iter().find(|p| {
                p["numExecutors"] == executors
                    && after.is_none_or(|a| p["batchId"].as_u64().unwrap() > a)
            })
        }) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no epoch ran on {executors} executors: {recent}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Scales to `executors` and answers the first epoch that ran on the new count.
fn scale(url: &str, token: &Path, executors: u64) -> Value {
    let last = admin_json(url, &["progress"], None)["batchId"].as_u64();
    let status = admin_json(url, &["scale", &executors.to_string()], Some(token));
    assert_eq!(status["executorsTarget"], executors, "{status}");
    assert_eq!(status["targetReason"], "weir admin scale", "{status}");
    wait_for_epoch_on(url, executors, last)
}

/// Key groups the first epoch on a new count moved, with its executors' restored key groups.
fn moved(epoch: &Value) -> (u64, u64) {
    let restored: u64 = epoch["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["restoredKeyGroups"].as_u64().unwrap_or(0))
        .sum();
    (epoch["numKeyGroupsMoved"].as_u64().unwrap(), restored)
}

#[test]
fn a_running_job_scales_from_1_to_3_to_2_to_1_moving_only_what_it_must() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(&broker, dir.path(), 4, EVENTS, &[]);
    // 1 000 offsets an epoch at a 1 s trigger: a backlog of a minute, read while the job scales.
    reference_job(dir.path(), &broker.address, 1_000);
    let token = dir.path().join("token");
    std::fs::write(&token, "scale-token\n").unwrap();
    let mut cmd = weir_local();
    cmd.arg("--job")
        .arg(dir.path().join("job.yaml"))
        .args(["--executors", "1", "--work-dir"])
        .arg(dir.path().join("work"))
        .arg("--admin-token-file")
        .arg(&token);
    let log = dir.path().join("local.log");
    let mut local = LocalRun::start(cmd, &log);
    let url = local.wait_for_line("weir driver admin on ", Duration::from_secs(60));
    let first = wait_for_epoch_on(&url, 1, None);
    assert_eq!(first["executors"][0]["keyGroupCount"], KEY_GROUPS);

    // Scaling needs the token and stays within the job's bounds (max: the key groups).
    assert!(!admin(&url, &["scale", "3"], None).status.success());
    let too_many = admin(&url, &["scale", "300"], Some(&token));
    assert!(!too_many.status.success());
    assert!(
        String::from_utf8_lossy(&too_many.stderr).contains("outside the job's bounds"),
        "{}",
        String::from_utf8_lossy(&too_many.stderr)
    );

    // 1 → 3: the new executors take a third each; the first keeps the rest and restores
    // nothing. Only what they take moves: 256 - 86.
    let three = scale(&url, &token, 3);
    assert_eq!(moved(&three), (170, 170), "{three}");
    let counts: Vec<u64> = three["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["keyGroupCount"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![86, 85, 85], "{three}");
    assert_eq!(three["executors"][0]["restoredKeyGroups"], 0, "{three}");

    // 3 → 2: the last executor's 85 key groups move, and nothing else.
    let two = scale(&url, &token, 2);
    assert_eq!(moved(&two), (85, 85), "{two}");
    let executors = admin_json(&url, &["executors"], None);
    let retired: Vec<&Value> = executors
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["executorId"] == "executor-2")
        .collect();
    assert!(
        retired.iter().all(|e| e["state"] == "RETIRED"),
        "executor-2 is retired or gone: {executors}"
    );

    // 2 → 1: the one left takes the other's 128.
    let one = scale(&url, &token, 1);
    assert_eq!(moved(&one), (128, 128), "{one}");
    assert!(
        one["numInputRows"].as_u64().unwrap() > 0,
        "the backlog was still being read at the last step: {one}"
    );

    // The rest of the backlog, then a stop; every epoch ran once (no run was abandoned).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status = admin_json(&url, &["progress"], None);
        let end: i64 = status["sources"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["endOffset"].as_i64().unwrap())
            .sum();
        if end == EVENTS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog was not read: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let recent = admin_json(&url, &["recent-progress"], None);
    let epochs = recent.as_array().unwrap();
    assert!(
        epochs.iter().all(|p| p["runs"] == 1),
        "an epoch was run again: {recent}"
    );
    let status = admin_json(&url, &["status"], None);
    assert_eq!(status[0]["executorsTarget"], 1, "{status}");
    assert_eq!(status[0]["executorsActive"], 1, "{status}");
    assert!(admin(&url, &["stop"], Some(&token)).status.success());
    let exit = local.wait(Duration::from_secs(60));
    assert!(exit.success(), "weir local: {exit}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains("starting it again"),
        "a retired executor was started again: {log}"
    );
    verify(&events, dir.path(), &[]);
}
