//! What operators watch, against real servers: Debian's Prometheus scraping the driver and the
//! executors of a running `weir local` finds the figures of the events produced, Debian's
//! Pushgateway holds the totals the job pushed, and a Pushgateway that is down changes nothing
//! but a log line.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use support::local_run::LocalRun;
use support::prometheus::{pushed_value, Prometheus, Pushgateway};
use support::{
    commit_records, free_port, gen_events, local_job, python, reference_job, run_ok, verify, weir,
    weir_local, Broker, BAD_INPUT,
};

const EVENTS: u64 = 20_000;

/// How many records of each kind (valid, late, malformed) the generator wrote.
fn kinds(events: &Path) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(events).unwrap().lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(record["kind"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// Adds a Pushgateway sink (YAML flow mapping) to the job file in `dir`.
fn add_pushgateway_sink(dir: &Path, sink: &str) {
    let path = dir.join("job.yaml");
    let job = std::fs::read_to_string(&path).unwrap();
    let job = job.replacen("sinks:\n", &format!("sinks:\n  - pushgateway: {sink}\n"), 1);
    std::fs::write(path, job).unwrap();
}

/// From the output table, read with Python's deltalake: the sum of `unique_users` over the rows
/// of the last commit that added any.
fn last_unique_users(table: &Path) -> f64 {
    let script = r#"
import os, sys
from deltalake import DeltaTable
uri = sys.argv[1]
def rows(version):
    t = DeltaTable(uri, version=version).to_pyarrow_table(columns=["window", "event_type", "unique_users"])
    return {(r["window"]["start"], r["event_type"]): r["unique_users"] for r in t.to_pylist()}
version = DeltaTable(uri).version()
while version > 0:
    added = rows(version).items() - rows(version - 1).items()
    if added:
        print(sum(v for _, v in added))
        break
    version -= 1
# Native thread pools torn down at interpreter exit can abort it after several reads
# (delta-io/delta-rs#2184); everything is printed by now.
sys.stdout.flush()
os._exit(0)
"#;
    let out = run_ok(
        python().args(["-c", script]).arg(table),
        "reading the table",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no committed rows in the table: {text}"))
}

/// Compares what Prometheus holds for `query` with `expected`.
fn expect(p: &Prometheus, query: &str, expected: f64) -> Result<(), String> {
    match p.value(query) {
        Some(v) if v == expected => Ok(()),
        other => Err(format!("`{query}` is {other:?}, expected {expected}")),
    }
}

#[test]
fn prometheus_scrapes_driver_and_executors_and_the_pushgateway_holds_the_totals() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let events = gen_events(&broker, dir.path(), 4, EVENTS, &gen_args);
    let kinds = kinds(&events);
    let (late, malformed) = (kinds["late"] as f64, kinds["malformed"] as f64);
    assert!(late > 0.0 && malformed > 0.0, "{kinds:?}");

    let pushgateway = Pushgateway::start();
    // 24 minutes of event time per epoch: a record an hour late is behind the watermark.
    reference_job(dir.path(), &broker.address, 2_000);
    add_pushgateway_sink(
        dir.path(),
        &format!(
            "{{url: \"{}\", job: weir-test, grouping: {{instance: ci}}, timeout: 5s, retries: 2}}",
            pushgateway.url()
        ),
    );
    let mut cmd = weir_local();
    cmd.arg("--job")
        .arg(dir.path().join("job.yaml"))
        .args(["--executors", "2", "--work-dir"])
        .arg(dir.path().join("work"));
    let mut local = LocalRun::start(cmd, &dir.path().join("local.log"));
    let timeout = Duration::from_secs(60);
    let address = |url: &str| url.trim_end_matches("/metrics").to_string();
    let mut targets = vec![address(
        &local.wait_for_line("weir driver metrics on http://", timeout),
    )];
    targets.extend(
        local
            .wait_for_lines("weir executor metrics on http://", 2, timeout)
            .iter()
            .map(|u| address(u)),
    );
    let admin = local.wait_for_line("weir driver admin on ", timeout);
    let prometheus = Prometheus::start(&targets);

    // Scrapes arrive every second from each process: wait until all agree with the input.
    prometheus.wait_until(Duration::from_secs(180), |p| {
        expect(p, "sum(up)", 3.0)?;
        expect(p, "count(process_resident_memory_bytes)", 3.0)?;
        expect(p, "weir_input_rows_total", EVENTS as f64)?;
        expect(p, "sum(weir_executor_input_rows_total)", EVENTS as f64)?;
        expect(p, "weir_malformed_rows_total", malformed)?;
        expect(p, "sum(weir_executor_malformed_rows_total)", malformed)?;
        expect(p, "weir_dead_letter_rows_total", malformed)?;
        expect(p, "weir_late_rows_total", late)?;
        expect(p, "sum(weir_executor_late_rows_total)", late)?;
        expect(p, "weir_executors", 2.0)?;
        // What the decisions so far recorded (more may follow while the watermark moves); the
        // log keeps the last ones, whose totals cover the run, and epochs count from 0.
        let records = commit_records(dir.path());
        let last = records.last().expect("decision records");
        let epochs = last["epoch"].as_u64().unwrap_or(0) + 1;
        let windows = last["totals"]["output_rows"].as_u64().unwrap_or(0);
        expect(p, "weir_epochs_total", epochs as f64)?;
        expect(p, "weir_output_rows_total", windows as f64)?;
        expect(p, "count(weir_kafka_lag_records)", 4.0)?;
        expect(p, "sum(weir_kafka_lag_records)", 0.0)?;
        expect(p, "sum(weir_kafka_committed_offset)", EVENTS as f64)?;
        expect(
            p,
            "sum(weir_epoch_duration_seconds_count{phase=\"total\"}) - sum(weir_epochs_total)",
            0.0,
        )?;
        expect(
            p,
            "sum(weir_flight_bytes_sent_total) - sum(weir_flight_bytes_received_total)",
            0.0,
        )?;
        expect(p, "sum(weir_flight_bytes_sent_total) > bool 0", 1.0)?;
        expect(p, "weir_watermark_delay_seconds > bool 0", 1.0)?;
        expect(
            p,
            "weir_pushgateway_pushes_total{result=\"success\"} > bool 0",
            1.0,
        )?;
        Ok(())
    });

    // A graceful stop finishes the last push.
    run_ok(
        weir().args(["admin", "--admin", &admin, "stop"]),
        "weir admin stop",
    );
    let status = local.wait(Duration::from_secs(60));
    assert!(status.success(), "weir local: {status}: {:?}", local.seen);

    let groups = pushgateway.groups();
    let group = groups
        .iter()
        .find(|g| g["labels"]["job"] == "weir-test")
        .unwrap_or_else(|| panic!("nothing pushed under job weir-test: {groups:?}"));
    assert_eq!(group["labels"]["instance"], "ci", "{group}");
    assert_eq!(group["total_events"]["type"], "COUNTER", "{group}");
    assert_eq!(pushed_value(group, "total_events"), Some(EVENTS as f64));
    let records = commit_records(dir.path());
    let last = records.last().expect("decision records");
    assert_eq!(
        pushed_value(group, "last_epoch"),
        last["epoch"].as_f64(),
        "{group}"
    );
    assert_eq!(
        pushed_value(group, "unique_users"),
        Some(last_unique_users(&dir.path().join("aggregated"))),
        "unique_users is the sum over the windows the last emitting epoch wrote: {group}"
    );
}

#[test]
fn a_pushgateway_that_is_down_is_logged_and_the_job_goes_on() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(&broker, dir.path(), 4, 6_000, &BAD_INPUT);
    reference_job(dir.path(), &broker.address, 2_000);
    // Nothing listens on this port.
    add_pushgateway_sink(
        dir.path(),
        &format!(
            "{{url: \"http://127.0.0.1:{}\", job: weir-test, timeout: 1s, retries: 1}}",
            free_port()
        ),
    );
    let out = run_ok(&mut local_job(dir.path(), 1), "weir local");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Pushgateway push failed"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done: the output table is at"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    verify(&events, dir.path(), &[]);
}
