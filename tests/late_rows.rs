//! The late-rows table: a job with `late_rows: {delta: {path}}` keeps every row that is late
//! for all the windows it falls in, with its event time, the watermark it missed and the
//! reason, instead of only counting it. An independent reader finds exactly the generator's
//! late events there, and the output still equals the ground truth.

mod support;

use std::ffi::OsStr;

use support::{gen_events, reference_job_in, run_local, verify, Broker};

#[test]
fn rows_late_for_every_window_are_kept_with_the_watermark_they_missed() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let events = gen_events(
        &broker,
        dir.path(),
        4,
        40_000,
        &["--span", "4h", "--late-fraction", "0.02"],
    );
    let root = dir.path().display().to_string();
    let late_table = dir.path().join("late-rows");
    let extra = format!(
        "late_rows: {{delta: {{path: \"{}\"}}}}\n",
        late_table.display()
    );
    reference_job_in(dir.path(), &broker.address, 4_000, &root, &extra);
    run_local(dir.path(), 2);
    let report = verify(
        &events,
        dir.path(),
        &[OsStr::new("--late-rows"), late_table.as_os_str()],
    );
    // The generator made late events, so the comparison compared something.
    let late: u64 = report
        .split(" late,")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no late count in {report}"));
    assert!(late > 100, "{report}");
}
