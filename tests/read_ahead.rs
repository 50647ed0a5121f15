//! End to end: the reference job on its own 1 s trigger keeps up with a topic being written,
//! and reads each epoch's records ahead while it waits for the next trigger.
//!
//! Alone in its test binary, one client after the other: the thread reading ahead runs only
//! when no other thread wants a core (`SCHED_IDLE`), so a test running beside it could keep it
//! from reading anything ahead.

mod support;

use support::*;

/// With either Kafka client, epochs take records read ahead (the decisions count them), and
/// the tables still equal the ground truth of every record produced. Rows read ahead give up
/// their raw records once decoded: among the events are records whose event time a later
/// rule refuses (out of range, too far ahead), and the dead-letter table holds each of them,
/// and every malformed record, as it was produced.
#[test]
fn records_read_ahead_between_triggers_make_the_same_tables_with_either_client() {
    read_ahead_between_triggers(None);
    read_ahead_between_triggers(Some("weir"));
}

/// Runs the reference job with `client` (librdkafka's by default) on a 1 s trigger while a
/// topic is being written, and checks its tables against the ground truth.
fn read_ahead_between_triggers(client: Option<&str>) {
    use std::time::{Duration, Instant};
    const FIRST: u64 = 1_000;
    const PACED: u64 = 60_000;
    /// Small enough that the generator's oversized records fit in a Kafka message.
    const MAX_RECORD_BYTES: &str = "65536";
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // Events starting at `start` over `span`, produced at `rate` a second (0: at once).
    let gen = |name: &str, count: u64, start: &str, span: &str, rate: &str| {
        let mut cmd = weir();
        cmd.args(["gen", "--count", &count.to_string(), "--start", start])
            .args(["--span", span, "--rate", rate, "--seed", name])
            .args(["--users", "5000", "--malformed-fraction", "0.01"])
            .args(["--partitions", "4", "--brokers", &broker.address])
            .args(["--hostile-fraction", "0.005"])
            .args(["--max-record-bytes", MAX_RECORD_BYTES])
            .args(["--topic", "web-events", "--jsonl"])
            .arg(dir.path().join(format!("events-{name}.jsonl")));
        cmd
    };
    // The topic, with a first minute of events, before the job starts.
    run_ok(
        &mut gen("1", FIRST, "2026-01-01T00:00:00Z", "1m", "0"),
        "weir gen",
    );
    // Every decision is kept: the test sums them.
    let root = dir.path().display().to_string();
    let kept = 100_000.to_string();
    let retention = format!("checkpoint_retention: {kept}\n");
    let mut source = kafka_source(&broker.address, 1_000_000);
    if let Some(client) = client {
        source.push_str(&format!("    client: {client}\n"));
    }
    source.push_str(&format!("  max_record_bytes: {MAX_RECORD_BYTES}\n"));
    job_with_source(dir.path(), &source, &root, &retention);
    let mut job = local_job_running(dir.path(), 2)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Half an hour of event time over six seconds while the job runs: each epoch reads to
    // the end of the partitions, and more arrives before the next trigger. The partitions
    // stay within seconds of event time of each other, so no record comes after the
    // watermark passed it. gen's light producer sends them, as the bench's latency run does:
    // the table holds every record it said it delivered.
    run_ok(
        gen("2", PACED, "2026-01-01T00:01:00Z", "30m", "10000").args(["--producer", "light"]),
        "weir gen",
    );
    let decided_rows = || -> u64 {
        commit_records(dir.path())
            .iter()
            .map(|r| r["stats"]["input_rows"].as_u64().unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while decided_rows() < FIRST + PACED {
        assert!(
            Instant::now() < deadline,
            "the records were not decided: {} rows",
            decided_rows()
        );
        assert!(job.try_wait().unwrap().is_none(), "weir local stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(job.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = job.wait().unwrap();
    assert!(status.success(), "weir local after SIGTERM: {status}");
    // The windows the last records close are emitted once the watermark moves past them: a
    // run to the end of the input does that.
    run_local(dir.path(), 2);

    let events = dir.path().join("events.jsonl");
    let all: Vec<u8> = ["1", "2"]
        .iter()
        .flat_map(|n| std::fs::read(dir.path().join(format!("events-{n}.jsonl"))).unwrap())
        .collect();
    std::fs::write(&events, all).unwrap();
    // The job keeps every decision (its retention above), however many epochs the paced
    // producing took: the check holds the log to that, not to the default of 10.
    let args = [
        "--state-retention",
        kept.as_str(),
        "--max-record-bytes",
        MAX_RECORD_BYTES,
        "--expect-reason",
        "event time out of range",
        "--expect-reason",
        "ahead of processing time",
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    verify(&events, dir.path(), &args);
    let read_ahead: u64 = commit_records(dir.path())
        .iter()
        .flat_map(|r| {
            r["executors"]
                .as_object()
                .map(|e| e.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .map(|e| e["read_ahead_rows"].as_u64().unwrap_or(0))
        .sum();
    assert!(read_ahead > 0, "no epoch took records read ahead");
}
