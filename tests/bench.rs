//! `weir bench` runs end to end on a small input and reports every measurement (its figures
//! are only meaningful from a release build on the machine they describe).

mod support;

use support::{run_ok, weir};

#[test]
fn weir_bench_reports_every_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let out = run_ok(
        weir()
            .args([
                "bench",
                "--events",
                "4000",
                "--files",
                "4",
                "--files-per-epoch",
                "2",
                "--rounds",
                "2",
            ])
            .args(["--window-users", "500", "--rescale-events", "8000"])
            .args(["--user-cases", "300,3000", "--user-case-events", "5000"])
            .args(["--user-case-rounds", "3"])
            .args(["--kafka-events", "3000", "--offsets-per-epoch", "1000"])
            .args(["--mock-kafka-events", "4000", "--mock-partitions", "4"])
            .args(["--latency-seconds", "3", "--work-dir"])
            .arg(dir.path().join("work"))
            .arg("--report")
            .arg(&report),
        "weir bench",
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let written = std::fs::read_to_string(&report).unwrap();
    assert_eq!(printed.trim(), written.trim());
    for line in [
        "ceiling: arrow-json decode, 1 thread",
        "ceiling: arrow-json decode + hash aggregate, 1 thread",
        "threads at once, per thread |",
        "weir's decoder (projected scanner, 4 columns), 1 thread",
        "weir's decoder + hash aggregate, 1 thread",
        "physical ceiling: split lines, find the 4 fields, 1 thread",
        "files → Delta, 1 executor |",
        "files → Delta, 2 executors |",
        "files → Delta, 2 executors no snapshots |",
        "per core ≥ the arrow-json decode + aggregate ceiling",
        "state snapshots cost ≤ 10 % of throughput",
        "executor peak RSS ≤ 256 MB",
        "files → Delta, 300 users, exact distinct users, 2 executors |",
        "files → Delta, 300 users, approximate distinct users, 2 executors |",
        "files → Delta, 3 000 users, exact distinct users, 2 executors |",
        "| 3 000 users, exact distinct, 2 executors: ≥ 2 500 000 events/s |",
        "| 3 000 users: exact distinct costs ≤ 25 % against approximate |",
        "Kafka (tansu, SQLite storage) → Delta, `client: librdkafka`, 1 executor |",
        "Kafka (tansu, SQLite storage) → Delta, `client: librdkafka`, 2 executors |",
        "Kafka (librdkafka mock cluster, in memory) → Delta, `client: weir`, 1 executor |",
        "Kafka (librdkafka mock cluster, in memory) → Delta, `client: weir`, 2 executors |",
        "Kafka (librdkafka mock cluster, in memory) → Delta, `client: librdkafka`, 1 executor |",
        "Kafka (librdkafka mock cluster, in memory) → Delta, `client: librdkafka`, 2 executors |",
        "`client: weir`) |",
        "p99 produce-to-commit latency",
    ] {
        assert!(written.contains(line), "no `{line}` in:\n{written}");
    }
    // The user-scale cases run their own number of rounds; the cost is their median.
    let rows =
        |having: &str| -> Vec<&str> { written.lines().filter(|l| l.contains(having)).collect() };
    let costs = rows("exact distinct costs ≤ 25 %");
    let exact_runs = rows(" users, exact distinct users, 2 executors |");
    assert_eq!((costs.len(), exact_runs.len()), (2, 2), "{written}");
    for row in costs {
        assert!(row.contains("(median of 3 rounds; quartiles "), "{row}");
    }
    for row in exact_runs {
        assert!(row.contains("median of 3 rounds ("), "{row}");
    }
    // The mock cluster's runs are medians of the rounds, as the file runs; tansu's ran once.
    for row in written.lines().filter(|l| l.starts_with("| Kafka (")) {
        let rounds = row.contains("median of 2 rounds (");
        assert_eq!(rounds, row.contains("mock cluster"), "{row}");
    }
    // The job was scaled 1 → 2 → 1 while it ran: each step moved key groups and restored
    // their state.
    for step in ["| rescale 1 → 2 (epoch ", "| rescale 2 → 1 (epoch "] {
        let row = written
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no `{step}` in:\n{written}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let moved: u64 = cells[3].parse().unwrap_or_else(|_| panic!("{row}"));
        assert!(moved > 0, "{row}");
        assert!(!cells[4].starts_with("0 "), "no state restored: {row}");
    }
    // Every run read every event, and the memory run held every user of its window.
    for run in [
        "files-1-executor",
        "files-2-executors",
        "files-2-executors-no-snapshots",
    ] {
        assert!(
            written.contains(&format!("Peak RSS, {run}: driver "))
                && written.contains("(4000 input rows)"),
            "{written}"
        );
    }
    // Each user-scale case read all its events with both jobs.
    for run in [
        "users-300-exact",
        "users-300-approx",
        "users-3000-exact",
        "users-3000-approx",
    ] {
        let line = written
            .lines()
            .find(|l| l.starts_with(&format!("Peak RSS, {run}: driver ")))
            .unwrap_or_else(|| panic!("no peak RSS of {run} in:\n{written}"));
        assert!(line.ends_with("(5000 input rows)."), "{line}");
    }
    assert!(written.contains("executor-1 "), "{written}");
    // The share of the ceiling per core is taken round by round, each round's run against the
    // ceiling's pass run just before that round: one share for each of the 2 rounds.
    let per_core = written
        .lines()
        .find(|l| l.starts_with("| per core ≥ the arrow-json decode + aggregate ceiling"))
        .unwrap_or_else(|| panic!("no per-core row in:\n{written}"));
    let listed = per_core
        .split("median of the rounds' ")
        .nth(1)
        .and_then(|rest| rest.split(" %").next())
        .unwrap_or_else(|| panic!("no rounds' shares in: {per_core}"));
    let shares: Vec<f64> = listed.split(", ").filter_map(|s| s.parse().ok()).collect();
    assert_eq!(shares.len(), 2, "{per_core}");
    assert!(shares.iter().all(|&s| s > 0.0), "{per_core}");
    // How much of a core each executor of a file run kept busy over its lifetime.
    let cpu = written
        .lines()
        .find(|l| l.starts_with("CPU time, files-2-executors: executor-0 "))
        .unwrap_or_else(|| panic!("no CPU time of files-2-executors in:\n{written}"));
    let shares: Vec<u32> = cpu
        .split(" %")
        .filter_map(|part| part.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(shares.len(), 2, "{cpu}");
    assert!(shares.iter().all(|&s| s > 0), "{cpu}");
    // The memory run's window closed, and its exact-distinct users were counted: 500 users
    // with three events each, so several hundred (event type, user) pairs.
    let pairs: u64 = written
        .split(" exact-distinct (event type, user) pairs counted when it closed")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.replace(' ', "").parse().ok())
        .unwrap_or_else(|| panic!("no closed-window count in:\n{written}"));
    assert!((400..=1500).contains(&pairs), "{pairs} pairs:\n{written}");
    // The Kafka runs read every produced event, and every record of the paced run was
    // matched with the epoch that read it.
    for (run, events) in [
        ("kafka-librdkafka-1-executor", 3000),
        ("kafka-librdkafka-2-executors", 3000),
        ("kafka-mock-weir-1-executor", 4000),
        ("kafka-mock-weir-2-executors", 4000),
        ("kafka-mock-librdkafka-1-executor", 4000),
        ("kafka-mock-librdkafka-2-executors", 4000),
    ] {
        let line = written
            .lines()
            .find(|l| l.starts_with(&format!("Peak RSS, {run}: driver ")))
            .unwrap_or_else(|| panic!("no peak RSS of {run} in:\n{written}"));
        assert!(line.ends_with(&format!("({events} input rows).")), "{line}");
    }
    assert!(
        written.contains("3000 events in 8 partitions, first plan")
            && written.contains("4000 events in 4 partitions, first plan"),
        "{written}"
    );
    assert!(
        written.contains("(librdkafka mock cluster, in memory, `client: weir`: "),
        "the latency run did not read the mock cluster with weir's client:\n{written}"
    );
    assert!(
        written.contains("Peak RSS, kafka-latency: driver "),
        "{written}"
    );
    // The memory run: 500 users' 1 500 events, then, on executors that lost their disks,
    // the one that closes their window; its state came back from the snapshots.
    for (run, rows) in [
        ("memory-2-executors", "(1500 input rows)."),
        ("memory-2-executors, restored", "(1 input rows)."),
    ] {
        let line = written
            .lines()
            .find(|l| l.starts_with(&format!("Peak RSS, {run}: driver ")))
            .unwrap_or_else(|| panic!("no peak RSS of {run} in:\n{written}"));
        assert!(line.ends_with(rows), "{line}");
    }
    let state = written
        .lines()
        .find(|l| l.starts_with("| that window's state: snapshot, and an executor's restore |"))
        .unwrap_or_else(|| panic!("no state line in:\n{written}"));
    assert!(
        state.contains(" files (") && state.contains("the slowest executor restored in "),
        "{state}"
    );
}
