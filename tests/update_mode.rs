//! Update output mode (`output_mode: update`): each epoch MERGEs the rows it changed into the
//! output table, so the table always holds the latest value of every window seen.

mod support;

use support::{
    commit_records, file_job_in, gen_files, run_local, set_update_mode, verify, BAD_INPUT,
};

/// The reference job in update mode over generated events with late, out-of-order and
/// malformed records, on 2 executors: the table ends with every window seen, each with the
/// values computed independently from the events (exact counts and distinct users), once.
#[test]
fn update_mode_table_holds_the_latest_value_of_every_window() {
    let tmp = tempfile::tempdir().unwrap();
    // Four hours of events: 1 % of them an hour late, 1 % malformed.
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let (input, events) = gen_files(tmp.path(), 30_000, 6, &gen_args);
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.display().to_string();
    set_update_mode(&file_job_in(
        &dir,
        &input.display().to_string(),
        1,
        &root,
        "",
    ));
    run_local(&dir, 2);
    let epochs = commit_records(&dir).len();
    assert!(epochs >= 6, "one epoch per file at least: {epochs}");
    verify(
        &events,
        &dir,
        &["--output-mode".as_ref(), "update".as_ref()],
    );
}
