//! The job file's `executors:` block: how few and how many executors the job may run on, and
//! how long the driver waits for lost ones (docs/operations.md, Scaling).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::duration::parse_duration;

/// `executors: {min, max, wait}` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long the driver waits for executors it is short of before it runs with fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// The executor counts a job may run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorBounds {
    pub min: usize,
    pub max: usize,
    /// Short of its target, the driver waits this long for executors to come (back) before it
    /// runs with the ones it has, if they are at least `min`.
    pub wait: Duration,
}

/// Default of `executors.wait`: long enough for a Kubernetes pod to be rescheduled.
pub const DEFAULT_EXECUTOR_WAIT: Duration = Duration::from_secs(60);

impl ExecutorBounds {
    /// Whether `n` executors is a target the job may have.
    pub fn check(&self, n: usize) -> Result<(), String> {
        if n < self.min || n > self.max {
            return Err(format!(
                "{n} executors is outside the job's bounds ({}..={}; `executors: {{min, max}}` in \
                 the job file)",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

/// Validates `executors:`; `max` defaults to the key groups (more executors would own none).
pub fn parse(raw: Option<&RawExecutors>, key_groups: u32) -> Result<ExecutorBounds, JobError> {
    let raw = raw.cloned().unwrap_or_default();
    let min = raw.min.unwrap_or(1);
    let max = raw.max.unwrap_or(key_groups);
    if min == 0 {
        return Err(JobError::new("executors.min", "expected at least 1"));
    }
    if max < min {
        return Err(JobError::new(
            "executors.max",
            format!("{max} is less than executors.min ({min})"),
        ));
    }
    if max > key_groups {
        return Err(JobError::new(
            "executors.max",
            format!("{max} is more than the job's {key_groups} key groups; the extra executors would own none"),
        ));
    }
    let wait = match &raw.wait {
        Some(text) => parse_duration(text).map_err(|m| JobError::new("executors.wait", m))?,
        None => DEFAULT_EXECUTOR_WAIT,
    };
    Ok(ExecutorBounds {
        min: min as usize,
        max: max as usize,
        wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_default_and_are_checked() {
        let b = parse(None, 256).unwrap();
        assert_eq!((b.min, b.max, b.wait), (1, 256, DEFAULT_EXECUTOR_WAIT));
        let raw = RawExecutors {
            min: Some(2),
            max: Some(4),
            wait: Some("30s".into()),
        };
        let b = parse(Some(&raw), 256).unwrap();
        assert_eq!((b.min, b.max, b.wait), (2, 4, Duration::from_secs(30)));
        assert!(b.check(3).is_ok());
        assert!(b.check(5).unwrap_err().contains("2..=4"));
        assert!(b.check(1).is_err());
        for (raw, field) in [
            (
                RawExecutors {
                    min: Some(0),
                    ..Default::default()
                },
                "executors.min",
            ),
            (
                RawExecutors {
                    min: Some(3),
                    max: Some(2),
                    ..Default::default()
                },
                "executors.max",
            ),
            (
                RawExecutors {
                    max: Some(300),
                    ..Default::default()
                },
                "executors.max",
            ),
            (
                RawExecutors {
                    wait: Some("soon".into()),
                    ..Default::default()
                },
                "executors.wait",
            ),
        ] {
            assert_eq!(parse(Some(&raw), 256).unwrap_err().field, field);
        }
    }
}
