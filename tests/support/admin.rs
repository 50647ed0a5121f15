//! `weir admin` against a running driver, as a test calls it.

use std::path::Path;
use std::process::Output;

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
