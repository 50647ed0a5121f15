//! The autoscaler (docs/operations.md, Autoscaling). After every committed epoch, and every
//! trigger that found nothing to read, it recommends an executor count from what the driver
//! already measures, and moves the target once the recommendations have stayed above it for
//! `scale_up_after` (or below it for `scale_down_after`), as Kubernetes' HPA stabilises.
//!
//! The recommendation, as Flink's autoscaler sizes from true processing rates rather than CPU:
//!
//! ```text
//! needed    = arrival rate + backlog / target_lag          (rows per second)
//! capacity  = rows read / executor busy seconds            (one executor, over recent epochs)
//! executors = ceil(needed / (capacity * target_utilization)), within [min, max] and the
//!             partition count (more executors than partitions read nothing more)
//! ```
//!
//! Backlog and arrival are measured in Kafka offsets and turned into rows with the
//! rows-per-offset ratio the recent epochs read (transaction markers take offsets too).

use std::collections::{BTreeMap, VecDeque};

use weir_common::job::scaling::AutoscaleSpec;
use weir_proto::admin::{ExecutorProgress, QueryProgress};

/// Epochs whose work the processing rate is taken over.
const RATE_EPOCHS: usize = 10;
/// Triggers whose source ends the arrival rate is taken over.
const ARRIVAL_TRIGGERS: usize = 10;

/// What one trigger showed: a committed epoch, or a trigger with nothing to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The trigger's time (microseconds since the Unix epoch).
    pub at_micros: i64,
    pub rows: u64,
    /// Offsets the epoch read.
    pub offsets: u64,
    /// Time the executors worked on the epoch, summed over them.
    pub busy_ms: u64,
    /// Offsets left behind the epoch's ends when it was planned.
    pub backlog_offsets: u64,
    /// The sum of the source's end offsets at the trigger; its growth is the arrival rate.
    pub latest_total: i64,
    /// The source's partitions (0 when unknown).
    pub partitions: usize,
}

/// Time an executor worked on an epoch: reading, aggregating, exchanging, emitting and
/// checkpointing (restoring is the cost of a move, not of the input).
pub fn busy_ms(x: &ExecutorProgress) -> u64 {
    x.read_ms + x.aggregate_ms + x.exchange_ms + x.emit_ms + x.checkpoint_ms
}

impl Observation {
    /// A committed epoch, from its progress; `at_micros` is its trigger's time.
    pub fn epoch(progress: &QueryProgress, at_micros: i64) -> Self {
        let partitions = || progress.sources.iter().flat_map(|s| s.partitions.iter());
        Self {
            at_micros,
            rows: progress.num_input_rows,
            offsets: partitions()
                .map(|p| (p.end_offset - p.start_offset).max(0) as u64)
                .sum(),
            busy_ms: progress.executors.iter().map(busy_ms).sum(),
            backlog_offsets: partitions().map(|p| p.lag.max(0) as u64).sum(),
            latest_total: partitions().map(|p| p.latest_offset).sum(),
            partitions: partitions().count(),
        }
    }

    /// A trigger that found nothing new to read, with each partition's end offset.
    pub fn idle(latest: &BTreeMap<i32, i64>, at_micros: i64) -> Self {
        Self {
            at_micros,
            latest_total: latest.values().sum(),
            partitions: latest.len(),
            ..Self::default()
        }
    }
}

/// An executor count the autoscaler asked for, with what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub executors: usize,
    pub at_micros: i64,
    pub backlog_rows: f64,
    pub input_rows_per_second: f64,
    /// What one executor reads per busy second; `None` before an epoch has read anything.
    pub rows_per_executor_second: Option<f64>,
}

/// A change of the target the autoscaler made.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: usize,
    pub to: usize,
    pub recommendation: Recommendation,
}

impl Decision {
    /// The target's reason: the decision with its inputs.
    pub fn reason(&self) -> String {
        let r = &self.recommendation;
        let rate = r
            .rows_per_executor_second
            .map_or_else(|| "unmeasured".to_string(), |v| format!("{v:.0}"));
        format!(
            "autoscale: {} -> {} executors for a backlog of {:.0} rows and {:.0} input rows/s \
             at {rate} rows/s per busy executor",
            self.from, self.to, r.backlog_rows, r.input_rows_per_second
        )
    }

    pub fn direction(&self) -> &'static str {
        if self.to > self.from {
            "up"
        } else {
            "down"
        }
    }
}

pub struct Autoscaler {
    pub spec: AutoscaleSpec,
    /// Epochs that read something since the target last changed: the per-executor rate
    /// depends on how many there are (each also sends to the others).
    work: VecDeque<Observation>,
    /// (trigger time, source end total) of recent triggers, whatever the target.
    ends: VecDeque<(i64, i64)>,
    /// (time, executors) recommended since the target last changed.
    recommended: VecDeque<(i64, usize)>,
    /// The target the histories belong to, and when the first observation under it came.
    target: Option<(usize, i64)>,
    last: Option<Recommendation>,
}

impl Autoscaler {
    pub fn new(spec: AutoscaleSpec) -> Self {
        Self {
            spec,
            work: VecDeque::new(),
            ends: VecDeque::new(),
            recommended: VecDeque::new(),
            target: None,
            last: None,
        }
    }

    /// The latest recommendation.
    pub fn last(&self) -> Option<&Recommendation> {
        self.last.as_ref()
    }

    /// Takes in one trigger under the current `target`; answers a new target when the
    /// recommendations held long enough.
    pub fn observe(&mut self, obs: &Observation, target: usize) -> Option<Decision> {
        let now = obs.at_micros;
        if self.target.is_none_or(|(t, _)| t != target) {
            self.work.clear();
            self.recommended.clear();
            self.target = Some((target, now));
        }
        push_capped(&mut self.ends, (now, obs.latest_total), ARRIVAL_TRIGGERS);
        if obs.rows > 0 {
            push_capped(&mut self.work, obs.clone(), RATE_EPOCHS);
        }
        let recommendation = self.recommend(obs)?;
        self.recommended.push_back((now, recommendation.executors));
        let longest = self.spec.scale_up_after.max(self.spec.scale_down_after);
        let oldest = now - micros(longest);
        while self.recommended.front().is_some_and(|(t, _)| *t < oldest) {
            self.recommended.pop_front();
        }
        self.last = Some(recommendation.clone());
        let to = self.stable(now, target)?;
        Some(Decision {
            from: target,
            to,
            recommendation,
        })
    }

    fn recommend(&self, obs: &Observation) -> Option<Recommendation> {
        let rows: u64 = self.work.iter().map(|o| o.rows).sum();
        let offsets: u64 = self.work.iter().map(|o| o.offsets).sum();
        let busy_ms: u64 = self.work.iter().map(|o| o.busy_ms).sum();
        let rows_per_offset = if offsets > 0 {
            rows as f64 / offsets as f64
        } else {
            1.0
        };
        let input_rows_per_second = match (self.ends.front(), self.ends.back()) {
            (Some(&(t0, e0)), Some(&(t1, e1))) if t1 > t0 => {
                (e1 - e0).max(0) as f64 * rows_per_offset / ((t1 - t0) as f64 / 1e6)
            }
            _ => 0.0,
        };
        let backlog_rows = obs.backlog_offsets as f64 * rows_per_offset;
        let rows_per_executor_second =
            (rows > 0 && busy_ms > 0).then(|| rows as f64 * 1000.0 / busy_ms as f64);
        let needed = input_rows_per_second + backlog_rows / self.spec.target_lag.as_secs_f64();
        let executors = if needed <= 0.0 {
            self.spec.min
        } else {
            // Input but no measured rate yet (nothing read since the target changed): wait.
            let capacity = rows_per_executor_second? * self.spec.target_utilization;
            let useful = match obs.partitions {
                0 => self.spec.max,
                p => p.min(self.spec.max),
            };
            ((needed / capacity).ceil() as usize).clamp(self.spec.min, useful.max(self.spec.min))
        };
        Some(Recommendation {
            executors,
            at_micros: obs.at_micros,
            backlog_rows,
            input_rows_per_second,
            rows_per_executor_second,
        })
    }

    /// The new target when every recommendation of the window (and the window is covered by
    /// observations under this target) is above it (the lowest of them) or below it (the
    /// highest of them).
    fn stable(&self, now: i64, target: usize) -> Option<usize> {
        let (_, since) = self.target?;
        let (_, latest) = *self.recommended.back()?;
        let (window, grow) = if latest > target {
            (self.spec.scale_up_after, true)
        } else if latest < target {
            (self.spec.scale_down_after, false)
        } else {
            return None;
        };
        let start = now - micros(window);
        if since > start {
            return None;
        }
        let within = self.recommended.iter().filter(|(t, _)| *t >= start);
        if grow {
            within
                .map(|(_, n)| *n)
                .try_fold(usize::MAX, |low, n| (n > target).then_some(low.min(n)))
        } else {
            within
                .map(|(_, n)| *n)
                .try_fold(0, |high, n| (n < target).then_some(high.max(n)))
        }
    }
}

fn push_capped<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    if queue.len() == cap {
        queue.pop_front();
    }
    queue.push_back(item);
}

fn micros(d: std::time::Duration) -> i64 {
    weir_common::job::duration::micros(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECOND: i64 = 1_000_000;

    fn spec(up: u64, down: u64) -> AutoscaleSpec {
        AutoscaleSpec {
            min: 1,
            max: 4,
            target_lag: Duration::from_secs(10),
            target_utilization: 0.5,
            scale_up_after: Duration::from_secs(up),
            scale_down_after: Duration::from_secs(down),
        }
    }

    /// An epoch at second `t` that read `rows` rows in `busy_ms` of executor time and left
    /// `backlog` behind, with `total` at the source's end.
    fn epoch(t: i64, rows: u64, busy_ms: u64, backlog: u64, total: i64) -> Observation {
        Observation {
            at_micros: t * SECOND,
            rows,
            offsets: rows,
            busy_ms,
            backlog_offsets: backlog,
            latest_total: total,
            partitions: 8,
        }
    }

    #[test]
    fn sizes_for_backlog_and_input_at_the_measured_rate() {
        let mut a = Autoscaler::new(spec(0, 0));
        // 1 000 rows/s per busy executor at 50 %: 500 per executor. A backlog of 20 000 rows
        // within 10 s needs 2 000 rows/s, with no input: 4 executors.
        let d = a
            .observe(&epoch(0, 1_000, 1_000, 20_000, 21_000), 1)
            .unwrap();
        assert_eq!((d.from, d.to), (1, 4));
        assert_eq!(d.direction(), "up");
        assert!(
            d.reason().contains("backlog of 20000 rows"),
            "{}",
            d.reason()
        );
        // Under the new target, input of 250 rows/s (the source's end grew by 250 in 1 s) and
        // no backlog: one executor, down at once with no window.
        let d = a.observe(&epoch(1, 1_000, 1_000, 0, 21_250), 4).unwrap();
        assert_eq!(d.recommendation.input_rows_per_second, 250.0);
        assert_eq!((d.from, d.to, d.direction()), (4, 1, "down"));
        assert_eq!(a.last(), Some(&d.recommendation));
        // Idle with no input: min.
        let mut idle = Autoscaler::new(spec(0, 0));
        assert_eq!(
            idle.observe(&Observation::idle(&Default::default(), 0), 2)
                .unwrap()
                .to,
            1
        );
    }

    #[test]
    fn never_more_executors_than_partitions_or_max() {
        let mut a = Autoscaler::new(spec(0, 0));
        let mut obs = epoch(0, 10, 1_000, 1_000_000, 1_000_000);
        obs.partitions = 3;
        assert_eq!(a.observe(&obs, 1).unwrap().to, 3);
        let mut a = Autoscaler::new(spec(0, 0));
        obs.partitions = 0;
        assert_eq!(a.observe(&obs, 1).unwrap().to, 4);
    }

    #[test]
    fn a_backlog_with_no_rate_measured_yet_waits() {
        let mut a = Autoscaler::new(spec(0, 0));
        let obs = Observation {
            backlog_offsets: 5_000,
            ..Observation::idle(&Default::default(), 0)
        };
        assert_eq!(a.observe(&obs, 1), None);
        assert_eq!(a.last(), None);
    }

    #[test]
    fn recommendations_must_hold_for_the_window_and_the_lowest_wins() {
        let mut a = Autoscaler::new(spec(10, 60));
        // Asks for 4, then 3: nothing until 10 s of asking for more, then the lowest asked.
        assert_eq!(a.observe(&epoch(0, 1_000, 1_000, 20_000, 0), 1), None);
        assert_eq!(a.observe(&epoch(5, 1_000, 1_000, 15_000, 0), 1), None);
        let d = a.observe(&epoch(10, 1_000, 1_000, 15_000, 0), 1).unwrap();
        assert_eq!(d.to, 3);
        // One epoch asking for no more than the target restarts the wait.
        let mut a = Autoscaler::new(spec(10, 60));
        assert_eq!(a.observe(&epoch(0, 1_000, 1_000, 20_000, 0), 1), None);
        assert_eq!(a.observe(&epoch(5, 1_000, 1_000, 0, 0), 1), None);
        assert_eq!(a.observe(&epoch(10, 1_000, 1_000, 20_000, 0), 1), None);
        assert_eq!(a.observe(&epoch(14, 1_000, 1_000, 20_000, 0), 1), None);
        assert_eq!(
            a.observe(&epoch(16, 1_000, 1_000, 20_000, 0), 1)
                .unwrap()
                .to,
            4
        );
    }

    #[test]
    fn scaling_down_waits_longer_and_keeps_the_highest() {
        let mut a = Autoscaler::new(spec(0, 60));
        let idle = |t: i64| Observation::idle(&Default::default(), t * SECOND);
        assert_eq!(a.observe(&epoch(0, 1_000, 1_000, 10_000, 0), 4), None);
        for t in (10..60).step_by(10) {
            assert_eq!(a.observe(&idle(t), 4), None, "at {t} s");
        }
        // 60 s after the first observation every recommendation of the window was below 4:
        // the highest of them, 2 (at 0 s), is the new target.
        assert_eq!(a.observe(&idle(60), 4).unwrap().to, 2);
        // A manual target resets the window.
        assert_eq!(a.observe(&idle(70), 3), None);
        assert_eq!(a.observe(&idle(129), 3), None);
        assert_eq!(a.observe(&idle(130), 3).unwrap().to, 1);
    }
}
