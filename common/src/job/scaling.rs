//! The job file's `executors:` block (how few and how many executors the job may run on, and
//! how long the driver waits for lost ones) and its `autoscale:` block (docs/operations.md,
//! Scaling and Autoscaling).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::job::duration::parse_duration;

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

/// `autoscale: {min, max, target_lag, target_utilization, scale_up_after, scale_down_after}`
/// as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How soon a backlog should be read: the autoscaler sizes for input rate + backlog / lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lag: Option<String>,
    /// The share of an executor's time it should be busy at the size chosen (Flink's
    /// `target.utilization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<f64>,
    /// How long every recommendation must have been above the target before it grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_after: Option<String>,
    /// How long every recommendation must have been below the target before it shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_after: Option<String>,
}

/// A validated `autoscale:` block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoscaleSpec {
    pub min: usize,
    pub max: usize,
    pub target_lag: Duration,
    pub target_utilization: f64,
    pub scale_up_after: Duration,
    pub scale_down_after: Duration,
}

pub const DEFAULT_TARGET_LAG: Duration = Duration::from_secs(30);
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
/// Growing late costs lag; a short window only rides out one odd epoch.
pub const DEFAULT_SCALE_UP_AFTER: Duration = Duration::from_secs(30);
/// Shrinking early costs a second move when the input comes back (Kubernetes' HPA waits 5 min).
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(300);

/// Validates `autoscale:`; its `min` and `max` default to, and must lie within, `executors:`.
pub fn parse_autoscale(
    raw: &RawAutoscale,
    bounds: &ExecutorBounds,
) -> Result<AutoscaleSpec, JobError> {
    let min = raw.min.map_or(bounds.min, |m| m as usize);
    let max = raw.max.map_or(bounds.max, |m| m as usize);
    if min < bounds.min {
        return Err(JobError::new(
            "autoscale.min",
            format!("{min} is less than executors.min ({})", bounds.min),
        ));
    }
    if max > bounds.max {
        return Err(JobError::new(
            "autoscale.max",
            format!("{max} is more than executors.max ({})", bounds.max),
        ));
    }
    if max < min {
        return Err(JobError::new(
            "autoscale.max",
            format!("{max} is less than autoscale.min ({min})"),
        ));
    }
    let duration = |field: &str, text: &Option<String>, default: Duration| match text {
        Some(t) => parse_duration(t).map_err(|m| JobError::new(format!("autoscale.{field}"), m)),
        None => Ok(default),
    };
    let target_lag = duration("target_lag", &raw.target_lag, DEFAULT_TARGET_LAG)?;
    if target_lag.is_zero() {
        return Err(JobError::new(
            "autoscale.target_lag",
            "must be more than 0; it is how long a backlog may take to read",
        ));
    }
    let target_utilization = raw.target_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION);
    if !(target_utilization > 0.0 && target_utilization <= 1.0) {
        return Err(JobError::new(
            "autoscale.target_utilization",
            format!("{target_utilization} is not in (0, 1]; e.g. 0.7 keeps executors 70 % busy"),
        ));
    }
    Ok(AutoscaleSpec {
        min,
        max,
        target_lag,
        target_utilization,
        scale_up_after: duration(
            "scale_up_after",
            &raw.scale_up_after,
            DEFAULT_SCALE_UP_AFTER,
        )?,
        scale_down_after: duration(
            "scale_down_after",
            &raw.scale_down_after,
            DEFAULT_SCALE_DOWN_AFTER,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoscale_defaults_and_is_checked_against_the_bounds() {
        let bounds = parse(
            Some(&RawExecutors {
                min: Some(1),
                max: Some(4),
                wait: None,
            }),
            256,
        )
        .unwrap();
        let a = parse_autoscale(&RawAutoscale::default(), &bounds).unwrap();
        assert_eq!((a.min, a.max), (1, 4));
        assert_eq!(a.target_lag, DEFAULT_TARGET_LAG);
        assert_eq!(a.scale_down_after, DEFAULT_SCALE_DOWN_AFTER);
        let raw = RawAutoscale {
            min: Some(2),
            max: Some(3),
            target_lag: Some("500ms".into()),
            target_utilization: Some(0.5),
            scale_up_after: Some("0s".into()),
            scale_down_after: Some("1m".into()),
        };
        let a = parse_autoscale(&raw, &bounds).unwrap();
        assert_eq!((a.min, a.max, a.target_utilization), (2, 3, 0.5));
        assert_eq!(a.target_lag, Duration::from_millis(500));
        assert_eq!(a.scale_up_after, Duration::ZERO);
        assert_eq!(a.scale_down_after, Duration::from_secs(60));
        for (raw, field) in [
            (
                RawAutoscale {
                    max: Some(5),
                    ..Default::default()
                },
                "autoscale.max",
            ),
            (
                RawAutoscale {
                    min: Some(3),
                    max: Some(2),
                    ..Default::default()
                },
                "autoscale.max",
            ),
            (
                RawAutoscale {
                    target_lag: Some("0s".into()),
                    ..Default::default()
                },
                "autoscale.target_lag",
            ),
            (
                RawAutoscale {
                    target_utilization: Some(1.5),
                    ..Default::default()
                },
                "autoscale.target_utilization",
            ),
            (
                RawAutoscale {
                    scale_down_after: Some("later".into()),
                    ..Default::default()
                },
                "autoscale.scale_down_after",
            ),
        ] {
            assert_eq!(parse_autoscale(&raw, &bounds).unwrap_err().field, field);
        }
        let two = ExecutorBounds { min: 2, ..bounds };
        let low = RawAutoscale {
            min: Some(1),
            ..Default::default()
        };
        assert_eq!(
            parse_autoscale(&low, &two).unwrap_err().field,
            "autoscale.min"
        );
    }

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
