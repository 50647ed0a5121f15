//! `weir explain --job FILE`: the plan a job file runs, printed without running anything.

mod support;

use support::{repo_path, run_ok, weir};

#[test]
fn weir_explain_prints_each_query_of_the_seed_example() {
    let out = run_ok(
        weir()
            .args(["explain", "--job"])
            .arg(repo_path("examples/seed-local.yaml")),
        "weir explain",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "job `seed`: 3 queries over one read",
        "source: kafka topic `web-events`",
        "query `windows` (operator 0)",
        "query `window-updates` (operator 1)",
        "output: update: every epoch's changed rows, MERGEd on (window, group keys)",
        "sink: kafka topic `window-updates` at ",
        ", key (event_type), at_least_once",
        "query `raw-events` (operator 2)",
        "operator: dedup on (event_id)",
        "sink: pushgateway http",
    ] {
        assert!(text.contains(expected), "`{expected}` not in:\n{text}");
    }
}

#[test]
fn weir_explain_refuses_a_bad_job_file_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    let text = std::fs::read_to_string(repo_path("examples/seed-local.yaml"))
        .unwrap()
        .replace("within: 1h", "within: 0s");
    std::fs::write(&job, text).unwrap();
    let out = weir()
        .args(["explain", "--job"])
        .arg(&job)
        .output()
        .expect("running weir");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queries[2].dedup.within"), "{err}");
}
