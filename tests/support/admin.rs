//! `weir admin` against a running driver, as a test calls it.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `weir admin --admin <url> <args>`, with the token file when given (and never the
/// caller's WEIR_ADMIN_TOKEN).
pub fn admin(url: &str, args: &[&str], token: Option<&Path>) -> Output {
    let mut cmd = super::weir();
    cmd.args(["admin", "--admin", url]).args(args);
    cmd.env_remove("WEIR_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.output().expect("running weir admin")
}

/// `weir admin ... --json`, parsed; panics when the call fails.
pub fn admin_json(url: &str, args: &[&str], token: Option<&Path>) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = admin(url, &all, token);
    assert!(
        out.status.success(),
        "weir admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weir admin {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits up to `timeout` for a committed epoch after `after` that ran on `executors` executors,
/// and answers the first.
pub fn wait_for_epoch_on(
    url: &str,
    executors: u64,
    after: Option<u64>,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let recent = admin_json(url, &["recent-progress"], None);
        if let Some(p) = recent.as_array().and_then(|epochs| {
            epochs.iter().find(|p| {
                p["numExecutors"] == executors
                    && after.is_none_or(|a| p["batchId"].as_u64().unwrap() > a)
            })
        }) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no epoch ran on {executors} executors: {recent}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sum of the partitions' end offsets the last committed epoch read up to.
pub fn read_through(url: &str) -> i64 {
    let progress = admin_json(url, &["progress"], None);
    progress["sources"][0]["partitions"]
        .as_array()
        .map_or(0, |parts| {
            parts
                .iter()
                .map(|p| p["endOffset"].as_i64().unwrap_or(0))
                .sum()
        })
}
