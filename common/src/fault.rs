//! Fault points for the chaos tests. `WEIR_FAULT=<step>@<epoch>[,...]` makes a process stop
//! the first time it reaches that step of that epoch: it prints `weir fault point
//! <step>@<epoch>` on standard output and waits for a line on standard input. The test SIGKILLs
//! it there (or writes a line to let it go on). Unset, a fault point costs one comparison.

use std::io::{BufRead, Write};
use std::sync::{Mutex, OnceLock};

/// The variable that arms fault points.
pub const FAULT_VAR: &str = "WEIR_FAULT";

fn armed() -> &'static Mutex<Vec<(String, u64)>> {
    static ARMED: OnceLock<Mutex<Vec<(String, u64)>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        Mutex::new(
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
    {
        let Ok(mut points) = armed().lock() else {
            return;
        };
        let Some(i) = points.iter().position(|(s, e)| s == step && *e == epoch) else {
            return;
        };
        // Once: a run of the same epoch after this one goes through.
        points.remove(i);
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
}
