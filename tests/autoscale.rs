//! Autoscaling on the backlog: a `weir local` job with `autoscale: {min: 1, max: 3}` starts on
//! one executor with a burst of events waiting. The autoscaler takes it to three within a few
//! epochs, and once the backlog is read back to one after `scale_down_after`; each decision is
//! in the status and sent to the webhook, and the table equals the ground truth.

mod support;

use std::time::{Duration, Instant};

use support::admin::{admin, admin_json, read_through, wait_for_epoch_on};
use support::cluster::{Cluster, Role};
use support::local_run::ScalingRun;
use support::webhook::Webhook;
use support::{gen_events, reference_job_in, verify, Broker};

const EVENTS: u64 = 40_000;
/// A burst the job takes 20 epochs of 2 000 offsets to read.
const PER_EPOCH: u64 = 2_000;
const SCALE_DOWN_AFTER: Duration = Duration::from_secs(3);

fn micros_of(rfc3339: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_micros()
}

#[test]
fn a_backlog_scales_the_job_up_and_its_end_scales_it_back_down() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(&broker, dir.path(), 4, EVENTS, &[]);
    let hook = Webhook::start("/hook", 0);
    // A target lag of 100 ms makes any backlog worth more executors than one; scaling up
    // waits for nothing, scaling down for 3 s of asking for fewer.
    let extra = format!(
        "autoscale: {{min: 1, max: 3, target_lag: 100ms, scale_up_after: 0s, scale_down_after: {}s}}\n\
         alerts: {{webhook: \"{}\"}}\n",
        SCALE_DOWN_AFTER.as_secs(),
        hook.url
    );
    let root = dir.path().display().to_string();
    let job = reference_job_in(dir.path(), &broker.address, PER_EPOCH, &root, &extra);
    let run = ScalingRun::start(dir.path(), &job, 1);
    let url = run.url.clone();

    // Up: the first epoch measures the rate, the next ones wait for the new executors.
    let first = wait_for_epoch_on(&url, 1, None, Duration::from_secs(60));
    let three = wait_for_epoch_on(&url, 3, None, Duration::from_secs(60));
    let epochs_to_scale = three["batchId"].as_u64().unwrap() - first["batchId"].as_u64().unwrap();
    assert!(
        epochs_to_scale <= 10,
        "{epochs_to_scale} epochs from the first to the first on 3 executors"
    );
    assert!(
        three["numInputRows"].as_u64().unwrap() > 0,
        "scaled up after the backlog was read: {three}"
    );
    let status = admin_json(&url, &["status"], None);
    let up_at = micros_of(&status[0]["targetSetAt"]);
    assert!(
        status[0]["targetReason"]
            .as_str()
            .unwrap()
            .starts_with("autoscale: 1 -> 3 executors"),
        "{status}"
    );
    assert_eq!(status[0]["autoscale"]["max"], 3, "{status}");

    // Down: once the backlog is read the recommendation is 1, and after 3 s of it the target.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        let status = admin_json(&url, &["status"], None);
        let q = &status[0];
        if q["executorsTarget"] == 1 && q["executorsRegistered"] == 1 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not scale back down: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(read_through(&url), EVENTS as i64, "{status}");
    let q = &status[0];
    assert!(
        q["targetReason"]
            .as_str()
            .unwrap()
            .contains("-> 1 executors for a backlog of 0 rows"),
        "{status}"
    );
    assert_eq!(q["autoscale"]["recommended"], 1, "{status}");
    let down_at = micros_of(&q["targetSetAt"]);
    assert!(
        down_at - up_at >= SCALE_DOWN_AFTER.as_micros() as i64,
        "scaled down {} ms after scaling up",
        (down_at - up_at) / 1000
    );

    // Every epoch ran once: the moves were planned, not failures.
    let recent = admin_json(&url, &["recent-progress"], None);
    assert!(
        recent.as_array().unwrap().iter().all(|p| p["runs"] == 1),
        "an epoch was run again: {recent}"
    );
    run.stop();

    // The webhook heard the first decision (up to 3) and the last (down to 1).
    let texts = hook.texts(Duration::from_millis(500));
    let decisions: Vec<&String> = texts.iter().filter(|t| t.contains("autoscale: ")).collect();
    assert!(
        decisions
            .first()
            .is_some_and(|t| t.contains("1 -> 3 executors")),
        "{texts:?}"
    );
    assert!(
        decisions
            .last()
            .is_some_and(|t| t.contains("-> 1 executors")),
        "{texts:?}"
    );
    verify(&events, dir.path(), &[]);
}

/// Under `--external-scaling` someone else (KEDA, an HPA) starts and stops executors: the
/// driver publishes what the autoscaler decides as `weir_desired_executors` and keeps running
/// on what it has; `weir admin scale` is refused; executors started later join at the next
/// epoch and one stopped by SIGTERM leaves without a failed run. The table is exact.
#[test]
fn an_externally_scaled_job_publishes_its_wish_and_follows_the_executors_it_gets() {
    const EXTERNAL_EVENTS: u64 = 60_000;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(&broker, dir.path(), 4, EXTERNAL_EVENTS, &[]);
    let extra = "autoscale: {min: 1, max: 3, target_lag: 100ms, scale_up_after: 0s, \
                 scale_down_after: 1h}\n";
    let root = dir.path().display().to_string();
    let job = reference_job_in(dir.path(), &broker.address, PER_EPOCH, &root, extra);
    let mut cluster = Cluster::new(&job, dir.path(), 1, &[]);
    cluster.trigger = "100ms".into();
    cluster.driver_args = vec!["--external-scaling".into()];
    cluster.start(Role::Driver, "");
    cluster.start(Role::Executor(0), "");
    // In the order the driver announces them.
    let metrics = cluster.wait_for_line(Role::Driver, "weir driver metrics on ");
    let url = cluster.wait_for_line(Role::Driver, "weir driver admin on ");

    // The backlog asks for three; the driver publishes it and runs on the one it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&metrics, "weir_desired_executors") != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "weir_desired_executors never reached 3: {:?}",
            metric(&metrics, "weir_desired_executors")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Paused, so that the backlog waits for what follows.
    admin_json(&url, &["pause"], None);
    let status = admin_json(&url, &["status"], None);
    assert_eq!(status[0]["executorsTarget"], 1, "{status}");
    assert_eq!(status[0]["autoscale"]["max"], 3, "{status}");
    let refused = admin(&url, &["scale", "2"], None);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--external-scaling"), "{said}");

    // The operator's scaler starts two more: the next epoch runs on three.
    cluster.start(Role::Executor(1), "");
    cluster.start(Role::Executor(2), "");
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin_json(&url, &["status"], None)[0]["executorsRegistered"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the new executors did not register"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    admin_json(&url, &["resume"], None);
    let three = wait_for_epoch_on(&url, 3, None, Duration::from_secs(60));
    admin_json(&url, &["pause"], None);
    let status = admin_json(&url, &["status"], None);
    assert_eq!(status[0]["executorsTarget"], 3, "{status}");
    assert_eq!(
        status[0]["targetReason"], "the executors registered (--external-scaling)",
        "{status}"
    );
    assert!(
        read_through(&url) < EXTERNAL_EVENTS as i64,
        "test bug: no backlog left for the epochs on two"
    );

    // It stops one (a pod deleted): let go, and the job goes on on two.
    let exit = cluster.terminate(Role::Executor(2), false);
    assert!(exit.success(), "executor-2: {exit}");
    admin_json(&url, &["resume"], None);
    let after = three["batchId"].as_u64();
    wait_for_epoch_on(&url, 2, after, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_through(&url) < EXTERNAL_EVENTS as i64 {
        assert!(Instant::now() < deadline, "the job did not read its input");
        std::thread::sleep(Duration::from_millis(200));
    }
    let exit = cluster.terminate(Role::Driver, false);
    assert!(exit.success(), "driver: {exit}");
    let driver_log = std::fs::read_to_string(dir.path().join("logs/driver.log")).unwrap();
    assert!(
        driver_log.contains("published as weir_desired_executors"),
        "{driver_log}"
    );
    assert!(
        driver_log.contains("a stopping executor was let go"),
        "{driver_log}"
    );
    assert!(!driver_log.contains("run failed"), "{driver_log}");
    verify(&events, dir.path(), &[]);
}

/// The unlabelled sample `name` on the metrics page at `url`, when it answers.
fn metric(url: &str, name: &str) -> Option<f64> {
    support::http::get(url)
        .ok()
        .and_then(|page| support::http::sample(&page, name))
}
