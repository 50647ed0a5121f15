//! Scaling a running job by hand: `weir admin scale` takes a `weir local` job on the broker from
//! one executor to three, two and one while it reads its backlog. Each step moves only the key
//! groups the new balance requires, no epoch run is abandoned, the retired executors exit 0 (and
//! are not started again), the target survives in the status, and the table equals the ground
//! truth. A scale-down whose driver is killed between the decision and the retirement, with a
//! leaving and a staying executor killed too, still ends exact; an executor stopped by SIGTERM
//! leaves without failing a run; an executor still starting is assigned nothing until it says
//! it is ready.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::admin::{admin, admin_json, read_through};
use support::cluster::{Cluster, Role};
use support::local_run::ScalingRun;
use support::{commit_records, gen_events, reference_job, reference_job_in, verify, Broker};

const KEY_GROUPS: u64 = 256;
const EVENTS: u64 = 60_000;

/// Waits for a committed epoch after `after` that ran on `executors` executors.
fn wait_for_epoch_on(url: &str, executors: u64, after: Option<u64>) -> Value {
    support::admin::wait_for_epoch_on(url, executors, after, Duration::from_secs(120))
}

/// Scales to `executors` and answers the first epoch that ran on the new count.
fn scale(url: &str, token: &Path, executors: u64) -> Value {
    let last = admin_json(url, &["progress"], None)["batchId"].as_u64();
    let status = admin_json(url, &["scale", &executors.to_string()], Some(token));
    assert_eq!(status["executorsTarget"], executors, "{status}");
    assert_eq!(status["targetReason"], "weir admin scale", "{status}");
    wait_for_epoch_on(url, executors, last)
}

/// `events` on the broker, and the reference job reading them 1 000 offsets an epoch, whose
/// epochs wait `wait` for missing executors: the events' file and the job's.
fn backlog_waiting(broker: &Broker, dir: &Path, events: u64, wait: &str) -> (PathBuf, PathBuf) {
    let events = gen_events(broker, dir, 4, events, &[]);
    let root = dir.display().to_string();
    let wait = format!("executors: {{wait: {wait}}}\n");
    let job = reference_job_in(dir, &broker.address, 1_000, &root, &wait);
    (events, job)
}

/// Waits until the committed epochs have read the backlog's `events` offsets.
fn wait_until_read(url: &str, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while read_through(url) < events as i64 {
        assert!(
            Instant::now() < deadline,
            "the backlog was not read: {}",
            admin_json(url, &["progress"], None)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let job = reference_job(dir.path(), &broker.address, 1_000);
    let run = ScalingRun::start(dir.path(), &job, 1);
    let (url, token) = (run.url.clone(), run.token.clone());
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
    wait_until_read(&url, EVENTS);
    let recent = admin_json(&url, &["recent-progress"], None);
    let epochs = recent.as_array().unwrap();
    assert!(
        epochs.iter().all(|p| p["runs"] == 1),
        "an epoch was run again: {recent}"
    );
    let status = admin_json(&url, &["status"], None);
    assert_eq!(status[0]["executorsTarget"], 1, "{status}");
    assert_eq!(status[0]["executorsActive"], 1, "{status}");
    run.stop();
    verify(&events, dir.path(), &[]);
}

/// 3 → 2 under chaos: the driver is killed at `retiring` (the decision of the first epoch
/// without the leaver is written, the leaver not told yet), and the leaver and a stayer are
/// killed with it. The new driver resumes the target, runs on the two that come back, and the
/// table is exact.
#[test]
fn a_scale_down_killed_between_decision_and_retirement_stays_exact() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(&broker, dir.path(), 4, 30_000, &[]);
    let job = reference_job(dir.path(), &broker.address, 1_000);
    let mut cluster = Cluster::new(&job, dir.path(), 3, &[]);
    // The first scale-down reaches `retiring`, whatever epoch it lands in.
    let faults: Vec<String> = (0..40).map(|e| format!("retiring@{e}")).collect();
    cluster.start(Role::Driver, &faults.join(","));
    for i in 0..3 {
        cluster.start(Role::Executor(i), "");
    }
    let url = cluster.wait_for_line(Role::Driver, "weir driver admin on ");
    cluster.wait_for_line(Role::Driver, "[realtime-analytics] epoch 1 ");
    let status = admin_json(&url, &["scale", "2"], None);
    assert_eq!(status["executorsTarget"], 2, "{status}");
    let at = cluster.wait_for_line(Role::Driver, "weir fault point retiring@");
    let decided: u64 = at.trim().parse().expect("an epoch");
    cluster.kill(Role::Executor(2));
    cluster.kill(Role::Executor(1));
    cluster.kill(Role::Driver);

    // The decision without the leaver moved only its key groups.
    let records = commit_records(dir.path());
    let record = records
        .iter()
        .find(|r| r["epoch"] == decided)
        .expect("the decision of the epoch at `retiring`");
    assert_eq!(record["stats"]["key_groups_moved"], 85, "{record}");
    assert_eq!(
        record["assignment"].as_array().unwrap().len(),
        2,
        "{record}"
    );

    // A new driver with the same --executors resumes the target of 2: the executor killed
    // while leaving stays gone, and the job reads to its end on the other two.
    cluster.start(Role::Driver, "");
    cluster.start(Role::Executor(1), "");
    let exit = cluster.wait_for_driver(Duration::from_secs(180));
    assert!(
        exit.success(),
        "driver: {exit}\n{}",
        cluster.log_tail(Role::Driver)
    );
    let last = commit_records(dir.path()).pop().expect("decisions");
    let ids: Vec<&str> = last["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["executor_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["executor-0", "executor-1"], "{last}");
    verify(&events, dir.path(), &[]);
}

/// An executor stopped by SIGTERM (a pod deleted, a node drained) tells the driver it leaves:
/// no later epoch is planned on it, it is let go between epochs and exits 0, and no run fails.
/// The job goes on on the others once `executors.wait` has passed, and the table is exact.
#[test]
fn a_stopped_executor_leaves_without_failing_a_run() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (events, job) = backlog_waiting(&broker, dir.path(), 30_000, "2s");
    let mut cluster = Cluster::new(&job, dir.path(), 3, &[]);
    cluster.start(Role::Driver, "");
    for i in 0..3 {
        cluster.start(Role::Executor(i), "");
    }
    cluster.wait_for_line(Role::Driver, "[realtime-analytics] epoch 1 ");
    let exit = cluster.terminate(Role::Executor(2), false);
    assert!(exit.success(), "executor-2: {exit}");
    let exit = cluster.wait_for_driver(Duration::from_secs(180));
    let log = cluster.log_tail(Role::Driver);
    assert!(exit.success(), "driver: {exit}\n{log}");
    let driver_log = std::fs::read_to_string(dir.path().join("logs/driver.log")).unwrap();
    assert!(
        driver_log.contains("a stopping executor was let go"),
        "{log}"
    );
    assert!(
        !driver_log.contains("run failed"),
        "a run failed: {driver_log}"
    );
    let last = commit_records(dir.path()).pop().expect("decisions");
    assert_eq!(last["assignment"].as_array().unwrap().len(), 2, "{last}");
    verify(&events, dir.path(), &[]);
}

/// A job between epochs (its next trigger an hour away) lets an executor stopped by SIGTERM go
/// at once: the driver hears it leave while it waits for the trigger.
#[test]
fn a_stopped_executor_is_let_go_while_the_job_waits_for_its_trigger() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    gen_events(&broker, dir.path(), 4, 2_000, &[]);
    let job = reference_job(dir.path(), &broker.address, 10_000);
    let text = std::fs::read_to_string(&job).unwrap();
    assert!(text.contains("trigger: 1s\n"), "test bug: {text}");
    std::fs::write(&job, text.replace("trigger: 1s\n", "trigger: 1h\n")).unwrap();
    let run = ScalingRun::start(dir.path(), &job, 2);
    wait_for_epoch_on(&run.url, 2, None);
    let executor = dir.path().join("work").join("executor-1");
    let needle = format!("{}\0--id\0executor-1\0", executor.display());
    let pid = support::pid_of(&needle).expect("executor-1 runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    // Without the driver's word it would wait its 60 s drain limit out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while support::pid_of(&needle).is_some() {
        assert!(Instant::now() < deadline, "executor-1 was not let go");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.path().join("local.log")).unwrap();
    assert!(log.contains("a stopping executor was let go"), "{log}");
    let executors = admin_json(&run.url, &["executors"], None);
    assert!(
        executors
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["executorId"] != "executor-1" || e["state"] == "RETIRED"),
        "{executors}"
    );
    run.stop();
}

/// An executor is assigned nothing until it says it is ready: one held after registering,
/// before it opens its store and input, is listed as `STARTING` while epochs go on on the
/// executor that is ready; let go, it joins the next epoch, no run fails, and the table is exact.
#[test]
fn an_executor_joins_once_it_is_ready_and_no_epoch_waits_for_it() {
    const EVENTS: u64 = 12_000;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // 1 000 offsets an epoch at a 1 s trigger: a backlog of 12 s.
    let (events, job) = backlog_waiting(&broker, dir.path(), EVENTS, "1s");
    let mut cluster = Cluster::new(&job, dir.path(), 2, &[]);
    cluster.trigger = "1s".into();
    cluster.start(Role::Driver, "");
    let url = cluster.wait_for_line(Role::Driver, "weir driver admin on ");
    cluster.start(Role::Executor(0), "");
    cluster.start(Role::Executor(1), "registered@0");
    cluster.wait_for_line(Role::Executor(1), "weir fault point registered@0");

    // executors.wait passes and the job runs on executor-0 alone, epoch after epoch.
    let first = wait_for_epoch_on(&url, 1, None);
    let later = wait_for_epoch_on(&url, 1, first["batchId"].as_u64());
    let executors = admin_json(&url, &["executors"], None);
    let states: Vec<(&str, &str)> = executors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["executorId"].as_str().unwrap(),
                e["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![("executor-0", "ACTIVE"), ("executor-1", "STARTING")],
        "{executors}"
    );

    cluster.release(Role::Executor(1));
    let two = wait_for_epoch_on(&url, 2, later["batchId"].as_u64());
    assert!(
        two["numInputRows"].as_u64().unwrap() > 0,
        "the backlog was read to its end before executor-1 joined: {two}"
    );
    wait_until_read(&url, EVENTS);
    // The epoch after the last records closes the windows their watermark passed.
    let read = admin_json(&url, &["progress"], None)["batchId"].as_u64();
    wait_for_epoch_on(&url, 2, read);
    let recent = admin_json(&url, &["recent-progress"], None);
    assert!(
        recent.as_array().unwrap().iter().all(|p| p["runs"] == 1),
        "an epoch was run again: {recent}"
    );
    let stop = admin(&url, &["stop"], None);
    assert!(stop.status.success(), "{stop:?}");
    let exit = cluster.wait_for_driver(Duration::from_secs(60));
    assert!(
        exit.success(),
        "driver: {exit}\n{}",
        cluster.log_tail(Role::Driver)
    );
    verify(&events, dir.path(), &[]);
}
