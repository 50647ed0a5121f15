//! One driver acts on a checkpoint (docs/architecture.md, Driver fencing): a driver frozen
//! after writing a decision, while a second driver takes the checkpoint over and runs the job
//! to its end, wakes up fenced and stops without committing or deleting anything.

mod support;

use std::time::Duration;

use support::cluster::{Cluster, Role};
use support::{file_job_in, gen_files, verify_in};

const EVENTS: u64 = 30_000;

#[test]
fn a_driver_that_wakes_up_after_another_took_over_is_fenced() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (input, events) = gen_files(tmp.path(), EVENTS, 6, &[]);
    let root = tmp.path().join("tables").display().to_string();
    let job = file_job_in(tmp.path(), &input.display().to_string(), 1, &root, "");

    // The first driver writes the decision of epoch 2 and freezes before committing it.
    let mut first = Cluster::new(&job, &tmp.path().join("first"), 2, &[]);
    first.start(Role::Driver, "decided@2");
    first.start(Role::Executor(0), "");
    first.start(Role::Executor(1), "");
    first.wait_for_line(Role::Driver, "weir fault point decided@2");

    // A second driver (as when Kubernetes replaces a driver pod that is cut off, not dead)
    // takes the checkpoint, commits that decision and runs the job to its end.
    let mut second = Cluster::new(&job, &tmp.path().join("second"), 2, &[]);
    for role in second.roles() {
        second.start(role, "");
    }
    let status = second.wait_for_driver(Duration::from_secs(300));
    assert!(
        status.success(),
        "the second driver failed ({status}):\n{}",
        second.log_tail(Role::Driver)
    );
    let log = second.log_tail(Role::Driver);
    assert!(log.contains("generation=2"), "{log}");

    // The first wakes up: fenced, it stops at its next step and touches nothing.
    first.release(Role::Driver);
    let status = first.wait_for_driver(Duration::from_secs(120));
    let log = first.log_tail(Role::Driver);
    assert!(!status.success(), "a fenced driver ran on:\n{log}");
    assert!(
        log.contains("this driver (generation 1) is fenced: driver generation 2 took over"),
        "{log}"
    );
    verify_in(&events, &root, &[]);
}
