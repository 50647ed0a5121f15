//! Exactly once under failure (DESIGN.md §3, §7): SIGKILL the driver and executors at every step
//! of the epoch protocol, restart them, and demand the table of a run without faults.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use support::cluster::{Cluster, Event, Role};
use support::s3::{S3Server, CREDENTIALS};
use support::{
    commit_records, gen_events, reference_job, reference_job_in, run_local, verify_in, Broker,
};

const EXECUTORS: usize = 3;
/// 48 000 events in 8 partitions at 4 000 records per epoch: twelve epochs with data.
const EVENTS: u64 = 48_000;
const PER_EPOCH: u64 = 4_000;
/// Four hours of events, 1 % late by an hour and 1 % malformed: failures must not lose or
/// double a late count or a dead letter either.
const GEN: [&str; 8] = [
    "--span",
    "4h",
    "--late-fraction",
    "0.01",
    "--late-by",
    "1h",
    "--malformed-fraction",
    "0.01",
];

/// A fault point where one process pauses, and the process the test SIGKILLs there.
struct Fault {
    at: Role,
    step: &'static str,
    epoch: u64,
    kill: Role,
}

/// Every step of the protocol, for the driver and for an executor, each in its own epoch.
fn schedule() -> Vec<Fault> {
    let driver = |step, epoch| Fault {
        at: Role::Driver,
        step,
        epoch,
        kill: Role::Driver,
    };
    vec![
        // The driver dies while executors execute, after all prepared, after the decision
        // record before the Delta commit, and after the Delta commit before Committed.
        driver("execute", 1),
        driver("prepared", 2),
        driver("decided", 3),
        driver("committed", 4),
        // An executor dies during execute (read, before the exchange) and after it prepared
        // (files staged, state uploaded, answer not sent).
        Fault {
            at: Role::Executor(1),
            step: "execute",
            epoch: 5,
            kill: Role::Executor(1),
        },
        Fault {
            at: Role::Executor(1),
            step: "prepared",
            epoch: 6,
            kill: Role::Executor(1),
        },
        // An executor dies while the driver is between the decision record and the Delta
        // commit, and between the Delta commit and Committed (the driver waits there).
        Fault {
            at: Role::Driver,
            step: "decided",
            epoch: 7,
            kill: Role::Executor(2),
        },
        Fault {
            at: Role::Driver,
            step: "committed",
            epoch: 8,
            kill: Role::Executor(0),
        },
    ]
}

/// Runs the cluster to the end of its input, killing and restarting processes as `faults`
/// say; panics unless every fault fired and the driver finished with success.
fn run_with_faults(cluster: &mut Cluster, faults: &[Fault]) {
    let mut fired = vec![false; faults.len()];
    let armed = |role: Role, fired: &[bool]| -> String {
        faults
            .iter()
            .zip(fired)
            .filter(|(f, done)| f.at == role && !**done)
            .map(|(f, _)| format!("{}@{}", f.step, f.epoch))
            .collect::<Vec<_>>()
            .join(",")
    };
    for role in cluster.roles() {
        cluster.start(role, &armed(role, &fired));
    }
    loop {
        let (role, event) = cluster.next_event(Duration::from_secs(300));
        match event {
            Event::Line(line) => {
                let Some(point) = line.strip_prefix("weir fault point ") else {
                    continue;
                };
                let i = faults
                    .iter()
                    .zip(&fired)
                    .position(|(f, done)| {
                        !done && f.at == role && format!("{}@{}", f.step, f.epoch) == point
                    })
                    .unwrap_or_else(|| panic!("{role} paused at unscheduled {point}"));
                fired[i] = true;
                let target = faults[i].kill;
                eprintln!("fault {point} at {role}: SIGKILL {target}");
                cluster.kill(target);
                cluster.start(target, &armed(target, &fired));
                if target != role {
                    cluster.release(role);
                }
            }
            Event::Closed if role == Role::Driver => {
                let status = cluster.reap(Role::Driver);
                assert!(
                    status.success(),
                    "the driver failed ({status}):\n{}",
                    cluster.log_tail(Role::Driver)
                );
                break;
            }
            Event::Closed => {
                // Executors leave when the driver shuts them down at the end.
                let status = cluster.reap(role);
                assert!(
                    status.success(),
                    "{role} failed ({status}):\n{}",
                    cluster.log_tail(role)
                );
            }
        }
    }
    let missed: Vec<String> = faults
        .iter()
        .zip(&fired)
        .filter(|(_, done)| !**done)
        .map(|(f, _)| format!("{}@{} at {}", f.step, f.epoch, f.at))
        .collect();
    assert!(missed.is_empty(), "fault points never reached: {missed:?}");
}

/// Some executor restored its state from the checkpoint (not only from its own disk).
fn assert_state_was_restored(records: &[serde_json::Value]) {
    let restores = records
        .iter()
        .flat_map(|r| r["executors"].as_object().into_iter().flatten())
        .filter(|(_, e)| e["restore_ms"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(restores > 0, "no executor ever restored state");
}

/// The reference job run by `weir local` without faults: the table to compare with.
fn baseline(broker: &Broker, dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("baseline dir");
    reference_job(dir, &broker.address, PER_EPOCH);
    run_local(dir, EXECUTORS);
    dir.join("aggregated").display().to_string()
}

#[test]
fn killing_any_process_at_any_step_on_the_local_filesystem_changes_nothing() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &GEN);
    let expected = baseline(&broker, &tmp.path().join("baseline"));

    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let job = reference_job(&dir, &broker.address, PER_EPOCH);
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &[]);
    run_with_faults(&mut cluster, &schedule());
    assert_state_was_restored(&commit_records(&dir));
    verify_in(
        &events,
        &dir.display().to_string(),
        &[OsStr::new("--same-as"), OsStr::new(&expected)],
    );
}

#[test]
fn killing_any_process_at_any_step_on_s3_changes_nothing() {
    let broker = Broker::start();
    let s3 = S3Server::start("weir");
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &GEN);
    let expected = baseline(&broker, &tmp.path().join("baseline"));

    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let root = "s3://weir/chaos";
    let job = reference_job_in(
        &dir,
        &broker.address,
        PER_EPOCH,
        root,
        &s3.storage_options_yaml(),
    );
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &CREDENTIALS);
    run_with_faults(&mut cluster, &schedule());
    verify_in(
        &events,
        root,
        &[
            OsStr::new("--same-as"),
            OsStr::new(&expected),
            OsStr::new("--s3-endpoint"),
            OsStr::new(&s3.endpoint),
        ],
    );
}
