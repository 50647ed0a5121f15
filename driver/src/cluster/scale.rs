//! The executor count the driver aims for, and which registered executors an epoch runs on
//! (docs/architecture.md, Rescaling).
//!
//! The target starts as `--executors` (or what the job was last scaled to) and changes with
//! `weir admin scale`. An epoch runs on at most the target: executors of the last assignment
//! first (they hold state), then the longest registered. Registered executors beyond the target
//! are retired: told to exit once an epoch without them is decided.
//!
//! Under external scaling (`--external-scaling`: KEDA, an HPA or `kubectl scale` start and
//! stop executors) the target follows the registered executors within the bounds instead, and
//! nobody else may set it.

use tokio::sync::watch;
use weir_common::checkpoint::{Assignment, ScaleRecord};
use weir_common::job::scaling::{AutoscaleSpec, ExecutorBounds};

use crate::cluster::autoscale::Recommendation;
use crate::cluster::membership::Member;

/// The executor count aimed for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub executors: usize,
    /// The driver's `--executors`.
    pub started_with: usize,
    /// `--executors`, `weir admin scale`, or the autoscaler's reasoning.
    pub reason: String,
    /// When it was set (microseconds since the Unix epoch).
    pub at_micros: i64,
}

impl Target {
    pub fn record(&self) -> ScaleRecord {
        ScaleRecord {
            executors: self.executors as u32,
            started_with: self.started_with as u32,
            reason: self.reason.clone(),
            at_micros: self.at_micros,
        }
    }
}

/// Sets the target within the job's bounds; the coordinator and the operators read it.
#[derive(Clone)]
pub struct Scaler {
    target: watch::Sender<Target>,
    pub bounds: ExecutorBounds,
    /// The job's `autoscale:`, when it autoscales.
    pub autoscale: Option<AutoscaleSpec>,
    /// The autoscaler's latest recommendation.
    recommended: watch::Sender<Option<Recommendation>>,
    /// Executors are started and stopped from outside the driver.
    pub external: bool,
}

/// The reason of a target that follows the registered executors.
pub const FOLLOWS_REGISTERED: &str = "the executors registered (--external-scaling)";

impl Scaler {
    /// A scaler aiming for `initial` executors (checked against `bounds`).
    pub fn new(
        initial: usize,
        bounds: ExecutorBounds,
        autoscale: Option<AutoscaleSpec>,
    ) -> Result<Self, String> {
        bounds
            .check(initial)
            .map_err(|m| format!("--executors: {m}"))?;
        let (target, _) = watch::channel(Target {
            executors: initial,
            started_with: initial,
            reason: "--executors".into(),
            at_micros: weir_common::now_micros(),
        });
        Ok(Self {
            target,
            bounds,
            autoscale,
            recommended: watch::channel(None).0,
            external: false,
        })
    }

    /// A scaler whose target follows the registered executors (see [`Self::follow`]).
    pub fn scaled_externally(mut self) -> Self {
        self.external = true;
        self
    }

    /// Shows the autoscaler's latest recommendation.
    pub fn recommend(&self, recommendation: &Recommendation) {
        self.recommended.send_replace(Some(recommendation.clone()));
    }

    pub fn recommendation(&self) -> Option<Recommendation> {
        self.recommended.borrow().clone()
    }

    /// Aims for `executors`; an error names the bounds when they do not allow it, or says that
    /// the executors are scaled from outside.
    pub fn set(&self, executors: usize, reason: &str) -> Result<Target, String> {
        if self.external {
            return Err(
                "the executors are scaled from outside the driver (--external-scaling): \
                        change the replicas of their Deployment instead (kubectl scale, or \
                        KEDA or an HPA following weir_desired_executors)"
                    .into(),
            );
        }
        self.bounds.check(executors)?;
        Ok(self.aim(executors, reason))
    }

    /// Under external scaling, aims for the `registered` executors (those not stopping),
    /// within the bounds: fewer than `min` wait for more, more than `max` stand by.
    pub fn follow(&self, registered: usize) {
        let n = registered.clamp(self.bounds.min, self.bounds.max);
        if self.external && self.target.borrow().executors != n {
            self.aim(n, FOLLOWS_REGISTERED);
        }
    }

    fn aim(&self, executors: usize, reason: &str) -> Target {
        let target = Target {
            executors,
            started_with: self.target.borrow().started_with,
            reason: reason.to_string(),
            at_micros: weir_common::now_micros(),
        };
        self.target.send_replace(target.clone());
        target
    }

    /// Takes back the target of a previous driver (`scale.json`) when that driver was started
    /// with the same `--executors` (this one restarts it; a new count is the operator's) and
    /// the bounds still allow it.
    pub fn resume(&self, record: &ScaleRecord) {
        let n = record.executors as usize;
        let started_with = self.target.borrow().started_with;
        if record.started_with as usize != started_with {
            tracing::info!(
                "the job was scaled to {n} executors by a driver started with --executors {}; \
                 this one starts from --executors {started_with}",
                record.started_with
            );
        } else if self.bounds.check(n).is_ok() {
            self.target.send_replace(Target {
                executors: n,
                started_with,
                reason: record.reason.clone(),
                at_micros: record.at_micros,
            });
        } else {
            tracing::warn!(
                executors = n,
                "the job was scaled to {n} executors, outside its bounds now; keeping {}",
                self.target.borrow().executors
            );
        }
    }

    pub fn current(&self) -> Target {
        self.target.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Target> {
        self.target.subscribe()
    }
}

/// Which registered executors an epoch runs on, and which are retired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// At most the target, in id order.
    pub run_on: Vec<Member>,
    /// Registered executors beyond the target.
    pub retire: Vec<Member>,
}

/// Picks at most `target` of `registered`: those `previous` assigned first (in id order, so
/// the ones retired are the last ids), then the longest registered. Executors that are
/// leaving (stopping) are never picked: they are retired. Executors not ready yet (still
/// opening their store and input) are neither: they join once ready, so that no epoch waits
/// for one to start.
pub fn select(registered: &[Member], target: usize, previous: &[Assignment]) -> Selection {
    let assigned = |m: &Member| previous.iter().any(|a| a.executor_id == m.id);
    let (leaving, staying): (Vec<&Member>, Vec<&Member>) = registered
        .iter()
        .filter(|m| m.ready || m.leaving)
        .partition(|m| m.leaving);
    let mut order = staying;
    order.sort_by(|a, b| match (assigned(a), assigned(b)) {
        (true, true) => a.id.cmp(&b.id),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => (a.registered_at, &a.id).cmp(&(b.registered_at, &b.id)),
    });
    let mut run_on: Vec<Member> = order.iter().take(target).map(|m| (*m).clone()).collect();
    let retire: Vec<Member> = order
        .iter()
        .skip(target)
        .chain(leaving.iter())
        .map(|m| (*m).clone())
        .collect();
    run_on.sort_by(|a, b| a.id.cmp(&b.id));
    Selection { run_on, retire }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;
    use weir_common::query::keygroup::KeyGroups;

    fn member(id: &str, registered_at: Instant) -> Member {
        Member {
            id: id.into(),
            address: format!("http://{id}"),
            incarnation: 1,
            registered_at,
            last_heartbeat: registered_at,
            leaving: false,
            ready: true,
            exchange_format: 1,
        }
    }

    fn assigned(ids: &[&str]) -> Vec<Assignment> {
        ids.iter()
            .map(|id| Assignment {
                executor_id: id.to_string(),
                partitions: vec![],
                key_groups: KeyGroups::default(),
            })
            .collect()
    }

    fn ids(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn executors_that_hold_state_stay_and_the_longest_registered_join() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let registered = vec![
            member("e3", later(1)),
            member("e0", later(9)),
            member("e1", later(5)),
            member("e2", later(2)),
        ];
        // e0 and e1 ran the last epoch; e3 registered before e2.
        let previous = assigned(&["e0", "e1"]);
        let s = select(&registered, 3, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0", "e1", "e3"]);
        assert_eq!(ids(&s.retire), vec!["e2"]);
        // Scaling down retires the last ids of the assignment.
        let s = select(&registered, 1, &assigned(&["e0", "e1", "e3"]));
        assert_eq!(ids(&s.run_on), vec!["e0"]);
        assert_eq!(ids(&s.retire), vec!["e1", "e3", "e2"]);
        // Fewer registered than the target: all of them.
        let s = select(&registered[..2], 3, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0", "e3"]);
        assert!(s.retire.is_empty());
        // A stopping executor is retired even when the target has room for it.
        let mut stopping = registered.clone();
        stopping[1].leaving = true;
        let s = select(&stopping, 4, &previous);
        assert_eq!(ids(&s.run_on), vec!["e1", "e2", "e3"]);
        assert_eq!(ids(&s.retire), vec!["e0"]);
    }

    #[test]
    fn executors_not_ready_are_neither_picked_nor_retired() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut registered = vec![
            member("e0", later(1)),
            member("e1", later(2)),
            member("e2", later(3)),
        ];
        registered[1].ready = false;
        let previous = assigned(&["e0"]);
        let s = select(&registered, 2, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0", "e2"]);
        assert!(s.retire.is_empty());
        let s = select(&registered, 1, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0"]);
        assert_eq!(ids(&s.retire), vec!["e2"]);
        // Once ready it joins, before those registered after it.
        registered[1].ready = true;
        let s = select(&registered, 2, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0", "e1"]);
        assert_eq!(ids(&s.retire), vec!["e2"]);
        // A stopping executor is retired whether it was ready or not.
        registered[1].ready = false;
        registered[1].leaving = true;
        let s = select(&registered, 3, &previous);
        assert_eq!(ids(&s.run_on), vec!["e0", "e2"]);
        assert_eq!(ids(&s.retire), vec!["e1"]);
    }

    #[test]
    fn the_target_stays_within_the_bounds() {
        let bounds = ExecutorBounds {
            min: 1,
            max: 3,
            wait: Duration::from_secs(1),
        };
        assert!(Scaler::new(4, bounds, None).is_err());
        let scaler = Scaler::new(2, bounds, None).unwrap();
        let mut watch = scaler.subscribe();
        assert!(scaler.set(0, "test").is_err());
        assert_eq!(scaler.set(3, "test").unwrap().executors, 3);
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow_and_update().executors, 3);
        let record = |executors, started_with| ScaleRecord {
            executors,
            started_with,
            reason: "weir admin scale".into(),
            at_micros: 5,
        };
        // Out of bounds, or set by a driver started with another --executors: not resumed.
        scaler.resume(&record(9, 2));
        assert_eq!(scaler.current().executors, 3);
        scaler.resume(&record(1, 3));
        assert_eq!(scaler.current().executors, 3);
        scaler.resume(&record(1, 2));
        assert_eq!(scaler.current().executors, 1);
        assert_eq!(scaler.current().started_with, 2);
        // Following the registered executors is for external scaling only.
        scaler.follow(3);
        assert_eq!(scaler.current().executors, 1);
    }

    #[test]
    fn an_externally_scaled_target_follows_the_registered_executors_within_the_bounds() {
        let bounds = ExecutorBounds {
            min: 2,
            max: 4,
            wait: Duration::from_secs(1),
        };
        let scaler = Scaler::new(2, bounds, None).unwrap().scaled_externally();
        let refused = scaler.set(3, "weir admin scale").unwrap_err();
        assert!(refused.contains("--external-scaling"), "{refused}");
        scaler.follow(3);
        assert_eq!(scaler.current().executors, 3);
        assert_eq!(scaler.current().reason, FOLLOWS_REGISTERED);
        scaler.follow(9);
        assert_eq!(scaler.current().executors, 4);
        scaler.follow(0);
        assert_eq!(scaler.current().executors, 2);
    }
}
