//! The probes a kubelet uses (docs/operations.md, Probes), on each process's metrics port:
//! `/livez` while it serves, `/readyz` 200 only when it can do its work, and 503 with the
//! reason while it registers, restores state or stops.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::cluster::{Cluster, Role};
use support::{file_job_in, gen_files, verify_in};

const EVENTS: u64 = 8_000;

/// The base URL of a process's probes, from the metrics line it printed.
fn probes_of(cluster: &mut Cluster, role: Role) -> String {
    let prefix = match role {
        Role::Driver => "weir driver metrics on ",
        Role::Executor(_) => "weir executor metrics on ",
    };
    let metrics = cluster.wait_for_line(role, prefix);
    metrics.trim_end_matches("/metrics").to_string()
}

/// Polls `/readyz` until it answers as expected: ready, or not ready for a reason containing
/// `reason`.
fn wait_readiness(base: &str, ready: bool, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last;
    loop {
        last = support::http::get(&format!("{base}/readyz"));
        let matches = match &last {
            Ok(text) => ready && text == "ready\n",
            Err(e) => !ready && e.starts_with("503") && e.contains(reason),
        };
        if matches {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}/readyz never became {}: last {last:?}",
            if ready { "ready" } else { reason }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn live(base: &str) {
    assert_eq!(
        support::http::get(&format!("{base}/livez")).as_deref(),
        Ok("ok\n")
    );
}

#[test]
fn probes_follow_each_process_through_its_states() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (input, events) = gen_files(tmp.path(), EVENTS, 4, &[]);
    let root = tmp.path().join("tables").display().to_string();
    let job = file_job_in(tmp.path(), &input.display().to_string(), 1, &root, "");
    let mut cluster = Cluster::new(&job, &tmp.path().join("run"), 1, &[]);

    // An executor before its driver: live, not ready.
    cluster.start(Role::Executor(0), "");
    let executor = probes_of(&mut cluster, Role::Executor(0));
    live(&executor);
    wait_readiness(&executor, false, "registering with the driver");

    // The driver is ready once it serves; the executor once it registered.
    cluster.start(Role::Driver, "decided@1");
    let driver = probes_of(&mut cluster, Role::Driver);
    live(&driver);
    wait_readiness(&driver, true, "");
    wait_readiness(&executor, true, "");

    // A new executor process restores the state it owns from the checkpoint: not ready while
    // it does (held there by a fault point).
    cluster.wait_for_line(Role::Driver, "weir fault point decided@1");
    cluster.kill(Role::Executor(0));
    cluster.start(Role::Executor(0), "restoring@2");
    let executor = probes_of(&mut cluster, Role::Executor(0));
    cluster.release(Role::Driver);
    cluster.wait_for_line(Role::Executor(0), "weir fault point restoring@2");
    wait_readiness(&executor, false, "restoring the state of key groups 0..256");
    live(&executor);

    // Stopping: neither is ready while it finishes the epoch in progress.
    cluster.signal(Role::Driver, Signal::SIGTERM);
    wait_readiness(&driver, false, "stopping");
    live(&driver);
    cluster.signal(Role::Executor(0), Signal::SIGTERM);
    wait_readiness(&executor, false, "stopping");
    cluster.release(Role::Executor(0));
    let status = cluster.wait_for_driver(Duration::from_secs(120));
    assert!(status.success(), "{}", cluster.log_tail(Role::Driver));

    // The stop left a consistent checkpoint: a run to the end gives the exact table.
    let mut rest = Cluster::new(&job, &tmp.path().join("rest"), 1, &[]);
    for role in rest.roles() {
        rest.start(role, "");
    }
    let status = rest.wait_for_driver(Duration::from_secs(120));
    assert!(status.success(), "{}", rest.log_tail(Role::Driver));
    verify_in(&events, &root, &[]);
}
