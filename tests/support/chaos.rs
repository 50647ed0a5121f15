//! Fault schedules for the chaos tests: processes pause at named steps of the epoch protocol
//! (`WEIR_FAULT`), and the test kills or stops one and starts it again.

use std::time::Duration;

use super::cluster::{Cluster, Event, Role};

/// A fault point where one process pauses, and the process the test stops there.
pub struct Fault {
    pub at: Role,
    pub step: &'static str,
    pub epoch: u64,
    pub kill: Role,
    /// SIGTERM (a graceful stop: the process must finish its call and exit 0) instead of SIGKILL.
    pub graceful: bool,
}

impl Fault {
    /// `kill` SIGKILLed when `at` reaches `step` of `epoch`.
    pub fn kill(at: Role, step: &'static str, epoch: u64, kill: Role) -> Self {
        Self {
            at,
            step,
            epoch,
            kill,
            graceful: false,
        }
    }
}

/// Every step of the protocol, for the driver and for an executor, each in its own epoch
/// (epochs 1 to 10: the job needs at least eleven).
pub fn every_step() -> Vec<Fault> {
    let driver = |step, epoch| Fault::kill(Role::Driver, step, epoch, Role::Driver);
    let at = Fault::kill;
    vec![
        // The driver dies while executors execute, after all prepared, after the decision
        // record before the Delta commit, and after the Delta commit before Committed; and
        // with the commit not made yet while the next epoch is planned or executing beside it.
        driver("execute", 1),
        driver("prepared", 2),
        driver("decided", 3),
        driver("committed", 4),
        driver("committing", 10),
        // An executor dies during execute (read, before the exchange) and after it prepared
        // (files staged, state uploaded, answer not sent).
        at(Role::Executor(1), "execute", 5, Role::Executor(1)),
        at(Role::Executor(1), "prepared", 6, Role::Executor(1)),
        // An executor dies while the driver is between the decision record and the Delta
        // commit, and between the Delta commit and Committed (the driver waits there).
        at(Role::Driver, "decided", 7, Role::Executor(2)),
        at(Role::Driver, "committed", 8, Role::Executor(0)),
        // An executor told to stop (SIGTERM) mid-epoch finishes the epoch and exits 0.
        Fault {
            graceful: true,
            ..at(Role::Executor(2), "execute", 9, Role::Executor(2))
        },
    ]
}

/// Runs the cluster to the end of its input, killing and restarting processes as `faults`
/// say; panics unless every fault fired and the driver finished with success.
pub fn run_with_faults(cluster: &mut Cluster, faults: &[Fault]) {
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
                if faults[i].graceful {
                    eprintln!("fault {point} at {role}: SIGTERM {target}");
                    let status = cluster.terminate(target, target == role);
                    assert!(
                        status.success(),
                        "{target} did not stop cleanly ({status}):\n{}",
                        cluster.log_tail(target)
                    );
                } else {
                    eprintln!("fault {point} at {role}: SIGKILL {target}");
                    cluster.kill(target);
                }
                cluster.start(target, &armed(target, &fired));
                if target != role {
                    cluster.release(role);
                }
            }
            Event::Closed if role == Role::Driver => {
                cluster.reap_ok(Role::Driver, "");
                break;
            }
            // Executors leave when the driver shuts them down at the end.
            Event::Closed => cluster.reap_ok(role, ""),
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
