//! Several queries over one read (`queries:`): the reference job's windows and its upsert of
//! raw events side by side, the source read once per epoch, each query with its own state,
//! table and figures, all committed in the one epoch protocol.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::admin::{admin, admin_json};
use support::chaos::{every_step, run_with_faults};
use support::cluster::Cluster;
use support::local_run::LocalRun;
use support::prometheus::Pushgateway;
use support::webhook::Webhook;
use support::{
    commit_records, gen_events, gen_files, python, repo_path, run_local, run_ok, verify, weir,
    weir_local, Broker, BAD_INPUT,
};

/// The seed job's two outputs as two queries over one file source (two files an epoch), the
/// dedup bound at 15 minutes, tables under `dir`.
fn two_queries_job(dir: &Path, input: &Path) {
    let source = format!(
        "  files: {{path: \"{}\", max_files_per_trigger: 2}}\n",
        input.display()
    );
    let job =
        weir_common::job::reference::seed_job_file("seed", &source, &dir.display().to_string())
            .replace("within: 1h", "within: 15m");
    std::fs::write(dir.join("job.yaml"), job).unwrap();
}

/// The raw events: every on-time event once, checked against the rules replayed in Python.
fn verify_raw_events(dir: &Path, input: &Path) {
    run_ok(
        python()
            .arg(repo_path("tests/verify_dedup.py"))
            .arg("--input")
            .arg(input)
            .args(["--per-epoch", "2", "--delay-seconds", "600"])
            .args(["--within-seconds", "900", "--merge", "--table"])
            .arg(dir.join("events")),
        "the comparison with the ground truth",
    );
}

/// Four hours of events in `files` files, 1 % of them an hour late.
fn events(tmp: &Path, files: u64) -> (PathBuf, PathBuf) {
    let late = ["--span", "4h", "--late-fraction", "0.01", "--late-by", "1h"];
    gen_files(tmp, 20_000, files, &late)
}

/// Killing the driver or an executor at every step of the epoch protocol leaves both
/// queries' tables exact: each query's state restored, each table's commit made once.
#[test]
fn killing_any_process_at_any_step_keeps_every_querys_table_exact() {
    let tmp = tempfile::tempdir().unwrap();
    // Twelve epochs of two files, as many as the schedule needs.
    let (input, events) = events(tmp.path(), 24);
    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    two_queries_job(&dir, &input);
    let mut cluster = Cluster::new(&dir.join("job.yaml"), &dir, 3, &[]);
    run_with_faults(&mut cluster, &every_step());
    verify(&events, &dir, &[]);
    verify_raw_events(&dir, &input);
}

#[test]
fn two_queries_over_one_read_each_write_their_own_exact_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, events) = events(tmp.path(), 12);
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    two_queries_job(&dir, &input);
    let progress = run_local(&dir, 2);

    // The windows: what the reference job alone writes, checked against the ground truth.
    verify(&events, &dir, &[]);
    verify_raw_events(&dir, &input);

    // The source was read once: each epoch's input is its files' lines, not twice that.
    let decisions = commit_records(&dir);
    let read: u64 = decisions
        .iter()
        .map(|d| d["stats"]["input_rows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(read, 20_000, "every event read once");
    // Each query's figures are its own: the windows emit closed windows, the dedup each event.
    let emitted = |query: usize| -> u64 {
        decisions
            .iter()
            .map(|d| {
                d["stats"]["queries"][query]["rows_emitted"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    assert!(
        emitted(0) > 0 && emitted(0) < 2_000,
        "windows: {}",
        emitted(0)
    );
    assert!(emitted(1) > 19_000, "events: {}", emitted(1));
    let late = |query: usize| -> u64 {
        decisions
            .iter()
            .map(|d| {
                d["stats"]["queries"][query]["late_rows"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    assert!(
        late(0) > 0 && late(1) > 0,
        "late: {} and {}",
        late(0),
        late(1)
    );
    assert_eq!(emitted(1) + late(1), 20_000, "every event kept or late");
    // The progress line reports each query.
    let line = progress
        .lines()
        .find(|l| l.contains("] epoch 1 |"))
        .unwrap_or_else(|| panic!("no progress line for epoch 1: {progress}"));
    assert!(
        line.contains("| windows: rows emitted") && line.contains("| raw-events: rows emitted"),
        "{line}"
    );
    // Each table is its own Delta table, committed once per epoch that wrote to it.
    for table in ["aggregated", "events"] {
        assert!(dir.join(table).join("_delta_log").is_dir(), "{table}");
    }
}

/// `weir admin progress` reports each query of a running job on its own: its name, its table's
/// rows and version, its late rows; the job's sink sums them.
#[test]
fn weir_admin_reports_each_query_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, _) = events(tmp.path(), 4);
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    two_queries_job(&dir, &input);
    let mut cmd = weir_local();
    cmd.arg("--job")
        .arg(dir.join("job.yaml"))
        .args(["--executors", "2", "--work-dir"])
        .arg(dir.join("work"));
    let mut local = LocalRun::start(cmd, &dir.join("local.log"));
    let url = local.wait_for_line("weir driver admin on ", Duration::from_secs(60));
    // The job keeps running after its input: wait until every event was read.
    let deadline = Instant::now() + Duration::from_secs(120);
    let recent = loop {
        let recent = admin_json(&url, &["recent-progress"], None);
        let read: u64 = recent
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["numInputRows"].as_u64().unwrap_or(0))
            .sum();
        if read >= 20_000 {
            break recent;
        }
        assert!(Instant::now() < deadline, "not all read: {recent}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut emitted = [0u64; 2];
    for p in recent.as_array().unwrap() {
        let queries = p["queries"].as_array().expect("each query's progress");
        let names: Vec<&str> = queries.iter().filter_map(|q| q["name"].as_str()).collect();
        assert_eq!(names, ["windows", "raw-events"], "{p}");
        let mut sum = 0;
        for (i, q) in queries.iter().enumerate() {
            let rows = q["sink"]["numOutputRows"].as_u64().expect("rows");
            emitted[i] += rows;
            sum += rows;
            assert!(q["numLateRows"].is_u64(), "{q}");
        }
        assert_eq!(p["sink"]["numOutputRows"].as_u64(), Some(sum), "{p}");
    }
    assert!(emitted[0] > 0 && emitted[1] > 10_000, "{emitted:?}");
    let status = admin_json(&url, &["status"], None);
    let tables = status[0]["outputTable"].as_str().unwrap_or_default();
    assert!(
        tables.contains("/aggregated") && tables.contains("/events"),
        "both tables in the status: {status}"
    );
    let stop = admin(&url, &["stop"], None);
    assert!(stop.status.success(), "{stop:?}");
    assert!(local.wait(Duration::from_secs(60)).success());
}

/// The seed job whole, as `examples/seed-local.yaml` writes it, against the broker: the windows
/// appended (their figures pushed to a Pushgateway) equal the ground truth; the same windows in
/// update mode hold every closed window's final values and reach the Kafka topic; the raw
/// events are each event once.
#[test]
fn the_seed_job_runs_whole_against_the_broker() {
    let broker = Broker::start();
    let pushgateway = Pushgateway::start();
    let webhook = Webhook::start("/alerts", 0);
    let tmp = tempfile::tempdir().unwrap();
    let late = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let events = gen_events(&broker, tmp.path(), 4, 30_000, &late);
    run_ok(
        weir()
            .args([
                "gen",
                "--brokers",
                &broker.address,
                "--topic",
                "window-updates",
            ])
            .args(["--partitions", "1", "--count", "0"]),
        "creating the sink's topic",
    );
    // The example, in epochs of 4 000 offsets: late events are late only once a watermark
    // passed them, and one epoch of everything has none.
    let example = std::fs::read_to_string(repo_path("examples/seed-local.yaml")).unwrap();
    let capped = example.replace(
        "max_offsets_per_trigger: 50000",
        "max_offsets_per_trigger: 4000",
    );
    assert_ne!(capped, example, "the example's cap moved");
    let job = tmp.path().join("seed.yaml");
    std::fs::write(&job, capped).unwrap();
    let mut local = weir_local();
    local
        .current_dir(tmp.path())
        .arg("--job")
        .arg(&job)
        .args(["--executors", "2", "--trigger", "available-now"])
        .env("KAFKA_BROKERS", &broker.address)
        .env("PROMETHEUS_PUSHGATEWAY", pushgateway.url())
        .env("SLACK_WEBHOOK_URL", &webhook.url);
    run_ok(&mut local, "weir local with the seed job");
    let root = tmp.path().join(".weir/demo/seed");

    verify(&events, &root, &[]);
    let decisions = commit_records(&root);
    let dropped_late: u64 = decisions
        .iter()
        .map(|d| d["stats"]["queries"][2]["late_rows"].as_u64().unwrap_or(0))
        .sum();
    run_ok(
        python()
            .arg(repo_path("tests/verify_dedup.py"))
            .arg("--events")
            .arg(&events)
            .args(["--late", &dropped_late.to_string(), "--table"])
            .arg(root.join("events")),
        "the comparison with the ground truth",
    );

    // Update mode's table holds every window the append table has, with the same values, and
    // the windows still open when the job stopped; its rows reached the topic.
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
def rows(path):
    out = {}
    for r in DeltaTable(path).to_pyarrow_table().to_pylist():
        key = (r["window"]["start"].isoformat(), r["event_type"])
        out[key] = (r["event_count"], r["unique_users"], r["approx_unique"])
    return out
closed, updated = rows(sys.argv[1]), rows(sys.argv[2])
differ = [k for k, v in closed.items() if updated.get(k) != v]
print(json.dumps({"closed": len(closed), "updated": len(updated), "differ": [list(k) for k in differ[:5]]}), flush=True)
os._exit(0 if not differ and len(updated) >= len(closed) > 0 else 1)
"#;
    run_ok(
        python()
            .args(["-c", script])
            .arg(root.join("aggregated"))
            .arg(root.join("window-updates")),
        "the comparison with the ground truth",
    );
    let sent = read_all(&broker.address, "window-updates");
    assert!(sent > 0, "no row reached the topic");
    let pushed = pushgateway
        .groups()
        .iter()
        .any(|g| g["labels"]["job"] == "weir-streaming");
    assert!(pushed, "no push: {:?}", pushgateway.groups());
}

/// How many records a topic of one partition holds.
fn read_all(broker: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "seed-test")
        .create()
        .expect("a consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .expect("the topic's offsets");
    high - low
}
