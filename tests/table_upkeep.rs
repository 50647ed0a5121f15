//! Table upkeep: a job whose output sink asks for `compact:` and `vacuum:` gets its small files
//! merged (OPTIMIZE commits that change no data) and the files it stopped referencing deleted,
//! while epochs go on committing; the table equals the ground truth.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::admin::{admin, admin_json};
use support::local_run::ScalingRun;
use support::{checkpoint_records, file_job_in, gen_files, python, run_local, run_ok, verify};

/// Per partition of `table`, the files epochs added, the files compaction added and removed,
/// the files the table references now, and the data files on disk; with the operations of its
/// history.
const INSPECT: &str = r#"
import collections, glob, json, os, sys
import deltalake
table = sys.argv[1]
written, compacted_in, compacted_out = collections.Counter(), collections.Counter(), collections.Counter()
for log in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
    for line in open(log):
        action = json.loads(line)
        if "add" in action:
            part = action["add"]["partitionValues"].get("event_type")
            (written if action["add"]["dataChange"] else compacted_in)[part] += 1
        if "remove" in action:
            assert not action["remove"]["dataChange"], action
            compacted_out[action["remove"]["partitionValues"].get("event_type")] += 1
dt = deltalake.DeltaTable(table)
live = collections.Counter(u.split("event_type=")[1].split("/")[0] for u in dt.file_uris())
on_disk = [p for p in glob.glob(os.path.join(table, "**", "*.parquet"), recursive=True)]
print(json.dumps({
    "written": written, "compacted_in": compacted_in, "compacted_out": compacted_out,
    "live": live, "on_disk": len(on_disk),
    "operations": [h["operation"] for h in dt.history()],
}))
sys.stdout.flush()
# deltalake's native runtime can abort the interpreter's teardown; the answer is out.
os._exit(0)
"#;

#[test]
fn small_files_are_compacted_and_vacuumed_while_the_table_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (input, events) = gen_files(dir.path(), 40_000, 40, &[]);
    let root = dir.path().display().to_string();
    let job = file_job_in(dir.path(), &input.display().to_string(), 1, &root, "");
    let text = std::fs::read_to_string(&job).unwrap();
    let sink = "partition_by: [event_type]}";
    assert!(text.contains(sink), "test bug: {text}");
    std::fs::write(
        &job,
        text.replace(
            sink,
            "partition_by: [event_type], compact: {every: 0s, min_files: 3}, \
             vacuum: {retention: 0s, every: 0s}}",
        ),
    )
    .unwrap();
    run_local(dir.path(), 2);
    verify(&events, dir.path(), &[]);

    let table = dir.path().join("aggregated");
    let out = run_ok(
        python().args(["-c", INSPECT]).arg(&table),
        "inspecting the Delta log",
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    println!("{seen}");
    let count = |what: &str, part: &str| seen[what][part].as_u64().unwrap_or(0);
    let parts: Vec<String> = seen["written"]
        .as_object()
        .expect("partitions")
        .keys()
        .cloned()
        .collect();
    assert!(!parts.is_empty(), "{seen}");
    // Compaction committed, with no data change, and merged files where epochs left many.
    let operations = seen["operations"].to_string();
    assert!(operations.contains("OPTIMIZE"), "{seen}");
    assert!(operations.contains("VACUUM END"), "{seen}");
    let mut merged = 0;
    for p in &parts {
        let live = count("live", p);
        assert_eq!(
            live,
            count("written", p) + count("compacted_in", p) - count("compacted_out", p),
            "partition {p}: {seen}"
        );
        if count("compacted_out", p) > 0 {
            merged += 1;
            assert!(live < count("written", p), "partition {p}: {seen}");
        }
    }
    assert!(merged > 0, "no partition was compacted: {seen}");
    // Vacuum deleted the files compaction replaced (their retention is 0 s): what is on disk
    // is far less than all that was ever written.
    let ever: u64 = parts
        .iter()
        .map(|p| count("written", p) + count("compacted_in", p))
        .sum();
    let on_disk = seen["on_disk"].as_u64().unwrap();
    assert!(on_disk < ever, "{on_disk} files on disk of {ever}: {seen}");
}

/// `weir admin compact` on a running job whose sink sets no upkeep: the output table's small
/// files are merged while the job goes on, the call needs the admin token, and the table stays
/// exact.
#[test]
fn weir_admin_compact_merges_the_small_files_of_a_running_job() {
    const EVENTS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (input, events) = gen_files(dir.path(), EVENTS, 20, &[]);
    let root = dir.path().display().to_string();
    let job = file_job_in(dir.path(), &input.display().to_string(), 1, &root, "");
    let text = std::fs::read_to_string(&job).unwrap();
    assert!(text.contains("trigger: 1s\n"), "test bug: {text}");
    std::fs::write(&job, text.replace("trigger: 1s\n", "trigger: 100ms\n")).unwrap();
    let run = ScalingRun::start(dir.path(), &job, 2);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let decided = dir.path().join("checkpoint/commits").exists();
        let read = decided
            .then(|| checkpoint_records(dir.path(), "commits"))
            .and_then(|d| d.last()?["totals"]["input_rows"].as_u64())
            .unwrap_or(0);
        if read >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job read {read} of {EVENTS} events"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = admin(&run.url, &["compact"], None);
    assert!(!refused.status.success(), "compact without the token");
    let tables = admin_json(&run.url, &["compact"], Some(&run.token));
    let output = tables
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == "output"))
        .unwrap_or_else(|| panic!("no output table in {tables}"))
        .clone();
    let n = |field: &str| output[field].as_u64().unwrap_or(0);
    assert!(n("filesRemoved") > 0, "{output}");
    assert!(n("filesAfter") < n("filesBefore"), "{output}");
    assert_eq!(
        n("filesBefore") - n("filesRemoved") + n("filesAdded"),
        n("filesAfter"),
        "{output}"
    );
    run.stop();
    verify(&events, dir.path(), &[]);
}
