//! Fault points for the chaos tests. `WEIR_FAULT=<step>@<epoch>[,...]` makes a process stop
//! the first time it reaches that step of that epoch: it prints `weir fault point
//! <step>@<epoch>` on standard output and waits for a line on standard input. The test SIGKILLs
//! it there (or writes a line to let it go on). Unset, or once every armed point was reached,
//! a fault point costs two atomic loads and a comparison: some sit on the read path, once a
//! chunk.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The variable that arms fault points.
pub const FAULT_VAR: &str = "WEIR_FAULT";

/// The fault points armed and not reached yet, and how many there are (read without the lock).
struct Armed {
    left: AtomicUsize,
    points: Mutex<Vec<(String, u64)>>,
}

impl Armed {
    fn new(points: Vec<(String, u64)>) -> Self {
        Self {
            left: AtomicUsize::new(points.len()),
            points: Mutex::new(points),
        }
    }

    /// Whether `step` of `epoch` is armed; it is not any more once asked.
    fn take(&self, step: &str, epoch: u64) -> bool {
        if self.left.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(mut points) = self.points.lock() else {
            return false;
        };
        let Some(i) = points.iter().position(|(s, e)| s == step && *e == epoch) else {
            return false;
        };
        // Once: a run of the same epoch after this one goes through.
        points.remove(i);
        self.left.store(points.len(), Ordering::Relaxed);
        true
    }
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        Armed::new(
            std::env::var(FAULT_VAR)
                .map(|v| parse(&v))
                .unwrap_or_default(),
        )
    })
}

fn parse(value: &str) -> Vec<(String, u64)> {
    value
        .split(',')
        .filter_map(|p| {
            let (step, epoch) = p.trim().split_once('@')?;
            Some((step.to_string(), epoch.parse().ok()?))
        })
        .collect()
}

/// Marks `step` of `epoch`; blocks there when the fault point is armed. Call it where
/// blocking the thread is acceptable (inside `tokio::task::block_in_place` in async code).
pub fn reached(step: &str, epoch: u64) {
    if !armed().take(step, epoch) {
        return;
    }
    tracing::warn!(step, epoch, "fault point reached; waiting");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "weir fault point {step}@{epoch}");
        let _ = out.flush();
    }
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_steps_and_epochs() {
        assert_eq!(
            super::parse("decided@3, execute@10,bad,x@y"),
            vec![("decided".to_string(), 3), ("execute".to_string(), 10)]
        );
    }

    #[test]
    fn an_armed_point_stops_once_and_the_others_never() {
        let armed = super::Armed::new(super::parse("decided@3,chunk@1"));
        assert!(!armed.take("decided", 2));
        assert!(!armed.take("chunk", 3));
        assert!(armed.take("decided", 3));
        assert!(
            !armed.take("decided", 3),
            "a rerun of the epoch goes through"
        );
        assert!(armed.take("chunk", 1));
        assert_eq!(armed.left.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(!armed.take("chunk", 1));
    }
}
