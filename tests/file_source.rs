//! The file source: JSON-lines files read in name order, at most `max_files_per_trigger` per
//! epoch, each exactly once across runs (a later run reads only the files that arrived since),
//! with dead letters that name the file and line of a bad record.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Role};
use support::{
    checkpoint_records, commit_records, file_job_in, gen_files, python, run_local, run_ok, verify,
    BAD_INPUT,
};

/// The files each plan of the checkpoint in `dir` read, in epoch order.
fn planned_files(dir: &Path) -> Vec<Vec<String>> {
    checkpoint_records(dir, "offsets")
        .iter()
        .map(|plan| {
            plan["files"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|f| f["path"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Moves `files` of `from` into `to`, as a writer that renames complete files into place.
fn deliver(from: &Path, to: &Path, files: std::ops::Range<u32>) {
    std::fs::create_dir_all(to).unwrap();
    for i in files {
        let name = format!("events-{i:05}.jsonl");
        std::fs::rename(from.join(&name), to.join(&name)).unwrap();
    }
}

#[test]
fn files_are_read_once_in_name_order_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // Four hours of events in 12 files of 20 minutes; 1 % late by an hour, 1 % malformed.
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let (generated, events) = gen_files(tmp.path(), 24_000, 12, &gen_args);
    let archive = tmp.path().join("archive");
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    file_job_in(
        &dir,
        &archive.display().to_string(),
        2,
        &dir.display().to_string(),
        "",
    );

    // The first half of the archive, then a run to the end of what is there.
    deliver(&generated, &archive, 0..6);
    run_local(&dir, 2);
    let first = planned_files(&dir);
    let last = commit_records(&dir).pop().unwrap();
    assert_eq!(last["files_through"], "events-00005.jsonl", "{last}");

    // The rest arrives; the next run reads only it.
    deliver(&generated, &archive, 6..12);
    run_local(&dir, 2);
    let plans = planned_files(&dir);
    assert_eq!(plans[..first.len()], first[..]);
    assert!(
        plans.iter().all(|p| p.len() <= 2),
        "at most 2 files per epoch: {plans:?}"
    );
    let read: Vec<String> = plans.into_iter().flatten().collect();
    let all: Vec<String> = (0..12).map(|i| format!("events-{i:05}.jsonl")).collect();
    assert_eq!(read, all, "every file once, in name order");
    verify(&events, &dir, &[]);
    // Executors read the next epoch's files ahead while an epoch finished (debug builds take
    // tens of milliseconds for what is left of an epoch, a file of 2 000 lines far less): the
    // table just verified holds rows read so.
    let read_ahead: u64 = commit_records(&dir)
        .iter()
        .filter_map(|c| c["executors"].as_object())
        .flat_map(|executors| executors.values())
        .map(|e| e["read_ahead_rows"].as_u64().unwrap_or(0))
        .sum();
    assert!(read_ahead > 0, "no epoch's files were read ahead");

    // Every dead letter names its file and line, and that line is the record.
    let check = r#"
import os, sys
from deltalake import DeltaTable
rows = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
for r in rows:
    assert r["partition"] == -1, r
    assert r["topic"].startswith("file://"), r
    with open(r["topic"][len("file://"):], "rb") as f:
        line = f.read().split(b"\n")[r["offset"] - 1]
    assert line == r["value"], (r, line)
print(len(rows))
sys.stdout.flush()
os._exit(0)
"#;
    let out = run_ok(
        python().args(["-c", check]).arg(dir.join("dead-letter")),
        "checking the dead letters",
    );
    let checked: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(checked > 100, "{checked} dead letters");
}

/// A file cut short while its epoch holds records read from it (the executor pauses with its
/// first chunk decoded, before the bad records' bytes are copied into dead letters): the pages
/// past the file's new end fault where the executor maps the file. The executor lives on, that
/// run fails instead of committing what it read, and once the file is whole again the job ends
/// with every row and dead letter once.
#[test]
fn a_file_cut_short_under_a_running_epoch_fails_the_run_not_the_executor() {
    let tmp = tempfile::tempdir().unwrap();
    // One chunk of one file, about 40 of its lines malformed.
    let (input, events) = gen_files(tmp.path(), 4_000, 1, &BAD_INPUT);
    let file = input.join("events-00000.jsonl");
    let whole = std::fs::read(&file).unwrap();
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.display().to_string();
    let job = file_job_in(&dir, &input.display().to_string(), 1, &root, "");
    let mut cluster = Cluster::new(&job, &dir, 1, &[]);
    cluster.start(Role::Driver, "");
    cluster.start(Role::Executor(0), "chunk@0");
    cluster.wait_for_line(Role::Executor(0), "weir fault point chunk@0");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    cluster.release(Role::Executor(0));

    let message = "an input file shrank while it was read";
    let driver_log = dir.join("logs/driver.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&driver_log)
        .unwrap_or_default()
        .contains(message)
    {
        assert!(
            Instant::now() < deadline,
            "no run failed on the shrunk file:\n{}",
            cluster.log_tail(Role::Executor(0))
        );
        // Waiting for the processes' next output, not for a set time.
        cluster.try_next_event(Duration::from_millis(100));
    }
    assert!(cluster.is_running(Role::Executor(0)));
    std::fs::write(&file, &whole).unwrap();

    // An executor that died would fail here: the driver's end reaps it as exited with success.
    let status = cluster.wait_for_driver(Duration::from_secs(120));
    assert!(status.success(), "{}", cluster.log_tail(Role::Driver));
    verify(&events, &dir, &[]);
}
