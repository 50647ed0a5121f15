//! End to end: `weir gen` into a real broker, `weir local` runs the reference job, and an
//! independent Python computation over the generated events must equal the Delta table.

mod support;

use support::*;

#[test]
fn three_executors_write_the_same_table_as_one_and_both_match_ground_truth() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(
        &broker,
        dir.path(),
        8,
        1_000_000,
        &[
            &["--users", "50000", "--span", "8h", "--out-of-order", "2m"][..],
            &BAD_INPUT,
        ]
        .concat(),
    );
    // 50 000 records per epoch cover 24 minutes of event time, well under the hour by which
    // late events trail the stream, so every late event meets an advanced watermark. One
    // executor reads with librdkafka's consumer, three with weir's own fetch client.
    let mut runs = Vec::new();
    for executors in [1, 3] {
        let run_dir = dir.path().join(format!("run-{executors}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut source = kafka_source(&broker.address, 50_000);
        if executors == 3 {
            source.push_str("    client: weir\n");
        }
        let root = run_dir.display().to_string();
        job_with_source(&run_dir, &source, &root, "");
        let stdout = run_local(&run_dir, executors);
        assert!(stdout.contains("epoch 0 | input 50000 rows"), "{stdout}");
        assert!(
            stdout.contains(&format!("executors {executors}")),
            "{stdout}"
        );
        runs.push(run_dir);
    }
    // Three executors really shuffled: every executor sent partials to the others.
    for record in commit_records(&runs[1]) {
        let executors = record["executors"].as_object().unwrap();
        assert_eq!(executors.len(), 3, "{record}");
    }
    let sent: u64 = commit_records(&runs[1])
        .iter()
        .flat_map(|r| {
            r["executors"]
                .as_object()
                .unwrap()
                .values()
                .cloned()
                .collect::<Vec<_>>()
        })
        .map(|e| e["shuffle_rows_sent"].as_u64().unwrap())
        .sum();
    assert!(sent > 0, "no partials crossed between executors");
    let one = runs[0].join("aggregated");
    let report = verify(&events, &runs[1], &["--same-as".as_ref(), one.as_os_str()]);
    assert!(report.contains("identical to"), "{report}");
}

#[test]
fn a_skewed_event_type_spreads_its_distinct_state_over_all_executors() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // Zipf exponent 4 over six types: the first carries ~92 % of the events and so most users.
    let events = gen_events(
        &broker,
        dir.path(),
        8,
        200_000,
        &["--users", "50000", "--span", "4h", "--skew", "4"],
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let mut types: std::collections::HashMap<String, u64> = Default::default();
    for line in text.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let ev: serde_json::Value = serde_json::from_str(rec["value"].as_str().unwrap()).unwrap();
        *types
            .entry(ev["event_type"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let top = types.values().max().copied().unwrap_or(0);
    let total: u64 = types.values().sum();
    assert!(
        top * 10 >= total * 9,
        "one type must carry 90 % of the events: {types:?}"
    );

    reference_job(dir.path(), &broker.address, 20_000);
    run_local(dir.path(), 4);
    verify(&events, dir.path(), &[]);
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for record in commit_records(dir.path()) {
        let entries: Vec<u64> = record["executors"]
            .as_object()
            .unwrap()
            .values()
            .map(|e| e["distinct_entries_written"].as_u64().unwrap())
            .collect();
        assert_eq!(entries.len(), 4, "{record}");
        let mean = entries.iter().sum::<u64>() as f64 / 4.0;
        if mean < 1000.0 {
            continue;
        }
        let max = *entries.iter().max().unwrap() as f64;
        assert!(
            max <= 2.0 * mean,
            "epoch {}: an executor wrote {max} distinct entries, the mean is {mean}: {entries:?}",
            record["epoch"]
        );
        worst = worst.max(max / mean);
        checked += 1;
    }
    println!("{checked} epochs judged; the busiest executor wrote {worst:.3} x the mean");
    assert!(
        checked >= 5,
        "only {checked} epochs held enough state to judge"
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
    let out = weir_local()
        .args(["--job", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("query.watermark.delay") && stderr.contains("not a duration"),
        "{stderr}"
    );
}

#[test]
fn a_job_stopped_with_sigterm_resumes_on_more_executors_without_emitting_anything_twice() {
    use std::io::{BufRead, BufReader};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(
        &broker,
        dir.path(),
        4,
        200_000,
        &[
            "--users",
            "20000",
            "--span",
            "4h",
            "--late-fraction",
            "0.01",
            "--malformed-fraction",
            "0.01",
        ],
    );
    // The log keeps every decision of the run: the test reads the first after the restart.
    let kept = 50.to_string();
    reference_job_in(
        dir.path(),
        &broker.address,
        20_000,
        &dir.path().display().to_string(),
        &format!("checkpoint_retention: {kept}\n"),
    );
    // The job's own trigger (1 s) would run forever; SIGTERM once two epochs are committed.
    let mut child = local_job_running(dir.path(), 2).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let stop = line.contains("] epoch 1 |");
        seen.push(line);
        if stop {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("] epoch 1 |")), "{seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "weir local after SIGTERM: {status}: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("done: the output table is at")),
        "{seen:?}"
    );
    let committed = commit_records(dir.path())
        .last()
        .and_then(|r| r["epoch"].as_u64())
        .map_or(0, |e| e as usize + 1);
    assert!(
        committed < 10,
        "the stop came after all input was read ({committed} epochs)"
    );

    // The restart continues from the checkpoint, on three executors: key groups move to the
    // new one with their state, restored from the snapshots of the last decision.
    let stdout = run_local(dir.path(), 3);
    assert!(
        stdout.contains(&format!("] epoch {committed} |")),
        "the restart did not continue at epoch {committed}: {stdout}"
    );
    assert!(!stdout.contains("] epoch 0 |"), "{stdout}");
    // The log keeps the last decisions only: find the first one after the restart by its epoch.
    let records = commit_records(dir.path());
    let first_after = records
        .iter()
        .find(|r| r["epoch"].as_u64() == Some(committed as u64))
        .unwrap_or_else(|| {
            panic!("the decision of epoch {committed} was pruned: make the run shorter")
        });
    let executors = first_after["executors"].as_object().unwrap();
    assert_eq!(executors.len(), 3, "{first_after}");
    assert!(
        executors
            .values()
            .all(|e| e["restore_ms"].as_u64().unwrap_or(0) > 0),
        "every executor restored moved key groups: {first_after}"
    );
    verify(
        &events,
        dir.path(),
        &["--state-retention".as_ref(), kept.as_ref()],
    );
}
