//! The dedup query (`query: {dedup: {key, within}}`): the raw events themselves, each key's
//! first arrival only, as Spark's `dropDuplicatesWithinWatermark`; appended, or MERGEd into the
//! table on `merge_on` (the seed job's upsert of raw events).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::chaos::{every_step, run_with_faults};
use support::cluster::Cluster;
use support::{epoch_figures, gen_files, python, repo_path, run_local, write_batches};

/// Spark's StreamingDeduplicationWithinWatermarkSuite, the test keyed on one column: a 2 s
/// watermark delay and bound, one micro-batch per input (here one file per epoch), as
/// (key, event time in seconds).
const SPARK_TRACE: [&[(&str, i64)]; 6] = [
    &[("a", 17)],
    &[("a", 16)],
    &[("a", 13)],
    &[("b", 22), ("c", 21)],
    &[("a", 21)],
    &[("d", 25)],
];

fn trace_job(dir: &Path, input: &Path) {
    let job = format!(
        r#"name: spark-dedup-trace
source:
  files: {{path: "{input}", max_files_per_trigger: 1}}
  format: json
  schema:
    key: string not null
    ts: timestamp not null
query:
  watermark: {{column: ts, delay: 2s}}
  dedup: {{key: [key], within: 2s}}
trigger: 1s
checkpoint_location: "{root}/checkpoint"
sinks:
  - delta: {{path: "{root}/events"}}
"#,
        input = input.display(),
        root = dir.display(),
    );
    std::fs::write(dir.join("job.yaml"), job).unwrap();
}

/// The rows each epoch's commit added: epoch -> rows (key, event time in seconds).
fn rows_added_by_each_epoch(table: &Path) -> BTreeMap<u64, Vec<(String, i64)>> {
    let mut before: Vec<(String, i64)> = Vec::new();
    let mut added = BTreeMap::new();
    for (epoch, rows) in support::table_after_each_epoch(table) {
        let mut rows: Vec<(String, i64)> = rows
            .iter()
            .map(|r| {
                let key = r["key"].as_str().expect("a key").to_string();
                (key, r["ts"].as_i64().expect("an event time"))
            })
            .collect();
        rows.sort();
        let new: Vec<(String, i64)> = rows
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        added.insert(epoch, new);
        before = rows;
    }
    added
}

#[test]
fn dedup_reproduces_sparks_within_watermark_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    write_batches(&input, &SPARK_TRACE, |(key, s)| {
        format!("{{\"key\": \"{key}\", \"ts\": \"1970-01-01T00:00:{s:02}Z\"}}")
    });
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    trace_job(&dir, &input);
    let progress = run_local(&dir, 2);
    // Each epoch's progress line says what it kept and dropped: `a` at 16 is a duplicate.
    let line = |epoch: u64| {
        progress
            .lines()
            .find(|l| l.contains(&format!("] epoch {epoch} |")))
            .unwrap_or_else(|| panic!("no progress line for epoch {epoch}: {progress}"))
            .to_string()
    };
    assert!(
        line(1).contains("| duplicates 1 | rows emitted 0 |"),
        "{}",
        line(1)
    );
    assert!(line(3).contains("| rows emitted 2 |"), "{}", line(3));

    // Epoch i read batch i; its decision says how many rows it kept and dropped as late.
    let figures = epoch_figures(&dir, SPARK_TRACE.len());
    assert_eq!(
        figures,
        [
            (1, 1, 0),
            (1, 0, 0),
            (1, 0, 1),
            (2, 2, 0),
            (1, 1, 0),
            (1, 1, 0)
        ],
        "(input, emitted, late) per epoch"
    );

    // Spark's CheckNewAnswer of each batch: `a` at 16 is a duplicate of 17 (remembered until
    // the watermark reaches 19), 13 is late, and `a` at 21 comes again once the watermark is
    // 20.
    let added = rows_added_by_each_epoch(&dir.join("events"));
    let row = |k: &str, s: i64| (k.to_string(), s);
    let expected: BTreeMap<u64, Vec<(String, i64)>> = [
        (0, vec![row("a", 17)]),
        (3, vec![row("b", 22), row("c", 21)]),
        (4, vec![row("a", 21)]),
        (5, vec![row("d", 25)]),
    ]
    .into_iter()
    .collect();
    assert_eq!(added, expected);
}

/// Input files in name order from `weir gen`'s events, with duplicates the way an
/// at-least-once producer makes them: every 7th event sent again, the same, one to three files
/// later; and every 53rd of the first third sent again in the last file with a new event time
/// and page, after its key was forgotten (a replay the upsert must overwrite).
fn files_with_duplicates(tmp: &Path, files: usize) -> PathBuf {
    let (generated, _) = gen_files(
        tmp,
        6_000,
        1,
        &["--span", "2h", "--late-fraction", "0.01", "--late-by", "1h"],
    );
    let mut lines: Vec<String> = Vec::new();
    for file in std::fs::read_dir(&generated).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    let per_file = lines.len().div_ceil(files);
    let mut out: Vec<Vec<String>> = vec![Vec::new(); files];
    let mut latest = String::new();
    for (i, line) in lines.iter().enumerate() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = event["timestamp"].as_str().unwrap().to_string();
        if ts > latest {
            latest = ts;
        }
        out[i / per_file].push(line.clone());
    }
    for (i, line) in lines.iter().enumerate() {
        let file = i / per_file;
        if i % 7 == 3 {
            out[(file + 1 + i % 3).min(files - 1)].push(line.clone());
        }
        if i % 53 == 5 && file < files / 3 {
            let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["timestamp"] = latest.clone().into();
            event["page_url"] = "https://example.com/replayed".into();
            out[files - 1].push(event.to_string());
        }
    }
    let input = tmp.join("input-with-duplicates");
    std::fs::create_dir_all(&input).unwrap();
    for (i, lines) in out.iter().enumerate() {
        std::fs::write(
            input.join(format!("part-{i:03}.jsonl")),
            lines.join("\n") + "\n",
        )
        .unwrap();
    }
    input
}

/// The seed's upsert of raw events (`dedup` with `within: 15m`) reading `input` two files per
/// epoch, with its checkpoint and table in `dir`; without `merge_on` unless `merge`.
fn dedup_job(dir: &Path, input: &Path, merge: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = format!(
        "  files: {{path: \"{}\", max_files_per_trigger: 2}}\n",
        input.display()
    );
    let mut job = weir_common::job::reference::dedup_job_file(
        "raw-events",
        &source,
        &dir.display().to_string(),
    )
    .replace("within: 1h", "within: 15m");
    if !merge {
        job = job.replace(", merge_on: [event_id]", "");
    }
    let path = dir.join("job.yaml");
    std::fs::write(&path, job).unwrap();
    path
}

/// Compares the table of the job in `dir` with the rows computed independently in Python from
/// `input`: every kept row once, or with `as_merged` the last kept row of each key. Answers
/// whether they match, and the comparison's report.
fn compare_with_ground_truth(
    dir: &Path,
    input: &Path,
    as_merged: bool,
) -> (bool, serde_json::Value) {
    let mut cmd = python();
    cmd.arg(repo_path("tests/verify_dedup.py"))
        .arg("--input")
        .arg(input)
        .args(["--per-epoch", "2", "--delay-seconds", "600"])
        .args(["--within-seconds", "900", "--table"])
        .arg(dir.join("events"));
    if as_merged {
        cmd.arg("--merge");
    }
    let out = cmd.output().expect("running python3");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

/// Runs the job over `files_with_duplicates` on 2 executors, with or without `merge_on`, and
/// compares the table with the ground truth. The other expectation must not hold: the replays
/// past the bound were written again, and merged over the first.
fn run_dedup_against_ground_truth(merge: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let input = files_with_duplicates(tmp.path(), 12);
    let dir = tmp.path().join("job");
    dedup_job(&dir, &input, merge);
    run_local(&dir, 2);
    let (matches, report) = compare_with_ground_truth(&dir, &input, merge);
    assert!(matches, "the table differs from the ground truth: {report}");
    // The input holds what the check is about: late rows, duplicates, and replays past `within`.
    assert!(report["late"].as_u64() > Some(0), "{report}");
    assert!(report["duplicates"].as_u64() > Some(200), "{report}");
    assert!(report["table_rows"].as_u64() > Some(5_000), "{report}");
    let (other_matches, other) = compare_with_ground_truth(&dir, &input, !merge);
    assert!(!other_matches, "no replay was written again: {other}");
}

/// Killing the driver or an executor at every step of the epoch protocol keeps the appended
/// table exact: no kept row lost or written twice, no key forgotten by a restored store.
#[test]
fn killing_any_process_at_any_step_keeps_each_first_arrival_once() {
    let tmp = tempfile::tempdir().unwrap();
    let input = files_with_duplicates(tmp.path(), 24);
    let dir = tmp.path().join("chaos");
    let job = dedup_job(&dir, &input, false);
    let mut cluster = Cluster::new(&job, &dir, 3, &[]);
    run_with_faults(&mut cluster, &every_step());
    let (matches, report) = compare_with_ground_truth(&dir, &input, false);
    assert!(matches, "the table differs from the ground truth: {report}");
}

#[test]
fn dedup_appends_each_keys_first_arrival_once() {
    run_dedup_against_ground_truth(false);
}

#[test]
fn dedup_with_merge_on_upserts_replays_past_its_bound() {
    run_dedup_against_ground_truth(true);
}
