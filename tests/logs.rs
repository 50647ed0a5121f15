//! JSON logs for log pipelines: every line an executor writes names the executor, every line
//! written inside an epoch, on the driver or an executor, names the epoch, and a clean run
//! logs no error.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{commit_records, gen_events, local_job, reference_job, run_ok, Broker};

/// The value of `field` in the span named `name` that the line was written in.
fn span_field<'a>(line: &'a Value, name: &str, field: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| &s[field])
}

#[test]
fn json_logs_name_the_epoch_and_the_executor() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    gen_events(&broker, dir.path(), 4, 3_000, &[]);
    reference_job(dir.path(), &broker.address, 1_000);
    let out = run_ok(
        local_job(dir.path(), 2)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,weir_driver=debug,weir_executor=debug"),
        "weir local",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = Vec::new();
    for text in stderr.lines() {
        match serde_json::from_str::<Value>(text) {
            Ok(line) => lines.push(line),
            // `weir local` itself reports on its processes in plain text.
            Err(_) => assert!(text.starts_with("weir local: "), "not JSON: {text}"),
        }
    }
    assert!(!lines.is_empty(), "{stderr}");
    // A first run into new tables, without faults, is not an error anywhere (delta-kernel
    // used to log one while the driver looked for the tables it then created).
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "error lines in a clean run: {errors:?}");

    let executors = ["executor-0", "executor-1"];
    let mut seen = BTreeSet::new();
    for line in &lines {
        let target = line["target"].as_str().unwrap_or("");
        let executor = span_field(line, "executor", "executor").and_then(Value::as_str);
        if target.starts_with("weir_executor") {
            assert!(
                executor.is_some_and(|e| executors.contains(&e)),
                "an executor's line without its id: {line}"
            );
        }
        if let Some(epoch) = span_field(line, "epoch", "epoch") {
            let epoch = epoch
                .as_u64()
                .unwrap_or_else(|| panic!("an epoch span without its number: {line}"));
            if let (Some(e), Some("epoch prepared")) =
                (executor, line["fields"]["message"].as_str())
            {
                seen.insert((epoch, e.to_string()));
            }
        }
    }
    // Each executor logged each epoch's end inside that epoch.
    let expected: BTreeSet<(u64, String)> = commit_records(dir.path())
        .iter()
        .flat_map(|r| {
            let epoch = r["epoch"].as_u64().unwrap();
            executors.iter().map(move |e| (epoch, e.to_string()))
        })
        .collect();
    assert!(expected.len() >= 6, "{expected:?}");
    assert_eq!(seen, expected);
}

/// Human logs written to a file (a pipe, a collector) carry no colour codes.
#[test]
fn human_logs_off_a_terminal_have_no_colour_codes() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    gen_events(&broker, dir.path(), 2, 500, &[]);
    reference_job(dir.path(), &broker.address, 1_000);
    let out = run_ok(&mut local_job(dir.path(), 1), "weir local");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in: {stderr}");
}
