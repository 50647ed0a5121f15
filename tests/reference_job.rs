//! End to end: `weir gen` into a real broker, `weir local` runs the reference job, and an
//! independent Python computation over the generated events must equal the Delta table.

mod support;

use support::*;

#[test]
fn reference_job_matches_ground_truth() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    run_ok(
        weir().args([
            "gen",
            "--brokers",
            &broker.address,
            "--topic",
            "web-events",
            "--partitions",
            "4",
            "--count",
            "200000",
            "--users",
            "20000",
            "--start",
            "2026-01-01T00:00:00Z",
            "--span",
            "4h",
            "--out-of-order",
            "2m",
            "--late-fraction",
            "0.01",
            "--late-by",
            "1h",
            "--malformed-fraction",
            "0.01",
            "--seed",
            "7",
            "--jsonl",
            events.to_str().unwrap(),
        ]),
        "weir gen",
    );
    // 20 000 records per epoch cover 24 minutes of event time, well under the hour by which
    // late events trail the stream, so every late event meets an advanced watermark.
    let job = reference_job(dir.path(), &broker.address, 20_000);
    let out = run_ok(
        weir()
            .args(["local", "--job", job.to_str().unwrap(), "--executors", "1"])
            .args(["--trigger", "available-now", "--work-dir"])
            .arg(dir.path().join("work")),
        "weir local",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("epoch 0 | input 20000 rows"), "{stdout}");
    assert!(stdout.contains("done: the output table is at"), "{stdout}");

    let verify = run_ok(
        python()
            .arg(repo_path("tests/verify_reference.py"))
            .arg("--events")
            .arg(&events)
            .arg("--table")
            .arg(dir.path().join("aggregated"))
            .arg("--dead-letter")
            .arg(dir.path().join("dead-letter"))
            .arg("--checkpoint")
            .arg(dir.path().join("checkpoint")),
        "ground-truth comparison",
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains("OK: the Delta table equals the ground truth"),
        "{report}"
    );
}

#[test]
fn a_bad_job_file_fails_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let job = reference_job(dir.path(), "127.0.0.1:1", 100);
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("delay: 10m", "delay: ten");
    std::fs::write(&job, text).unwrap();
    let out = weir()
        .args(["local", "--job", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("query.watermark.delay") && stderr.contains("not a duration"),
        "{stderr}"
    );
}
