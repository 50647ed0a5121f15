//! Update output mode (`output_mode: update`): each epoch MERGEs the rows it changed into the
//! output table, so the table always holds the latest value of every window seen.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::{
    commit_records, epoch_figures, file_job_in, gen_files, run_local, set_update_mode, verify,
    write_batches, BAD_INPUT,
};

/// Spark's EventTimeWatermarkSuite "update mode": 10 s watermark delay, 5 s windows, count(*)
/// per window, one micro-batch per input (here one file per epoch).
const SPARK_TRACE: [&[i64]; 5] = [&[10, 11, 12, 13, 14, 15], &[25], &[10], &[25], &[10]];

fn trace_job(dir: &Path, input: &Path) {
    let job = format!(
        r#"name: spark-update-trace
source:
  files: {{path: "{input}", max_files_per_trigger: 1}}
  format: json
  schema:
    id: long not null
    ts: timestamp not null
query:
  watermark: {{column: ts, delay: 10s}}
  window: {{column: ts, size: 5s}}
  aggregates:
    count: count(*)
  output_mode: update
trigger: 1s
checkpoint_location: "{root}/checkpoint"
sinks:
  - delta: {{path: "{root}/aggregated"}}
"#,
        input = input.display(),
        root = dir.display(),
    );
    std::fs::write(dir.join("job.yaml"), job).unwrap();
}

/// The table after each epoch's commit: epoch -> rows (window start in seconds, count).
fn table_after_each_epoch(table: &Path) -> BTreeMap<u64, Vec<(i64, i64)>> {
    support::table_after_each_epoch(table)
        .into_iter()
        .map(|(epoch, rows)| {
            let mut rows: Vec<(i64, i64)> = rows
                .iter()
                .map(|r| {
                    let start = r["window"]["start"].as_i64().expect("a window start");
                    (start, r["count"].as_i64().expect("a count"))
                })
                .collect();
            rows.sort();
            (epoch, rows)
        })
        .collect()
}

/// The rows of `after` that `before` does not hold with the same value: what the epoch emitted.
fn changed(before: &[(i64, i64)], after: &[(i64, i64)]) -> Vec<(i64, i64)> {
    after
        .iter()
        .filter(|row| !before.contains(row))
        .copied()
        .collect()
}

#[test]
fn update_mode_reproduces_sparks_watermark_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let id = std::cell::Cell::new(0);
    write_batches(&input, &SPARK_TRACE, |s| {
        id.set(id.get() + 1);
        format!(
            "{{\"id\": {}, \"ts\": \"1970-01-01T00:00:{s:02}Z\"}}",
            id.get()
        )
    });
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    trace_job(&dir, &input);
    run_local(&dir, 2);

    // Epoch i read batch i; its decision says how many rows it emitted and dropped as late.
    let figures = epoch_figures(&dir, SPARK_TRACE.len());
    assert_eq!(
        figures,
        [(6, 2, 0), (1, 1, 0), (1, 0, 1), (1, 1, 0), (1, 0, 1)],
        "(input, emitted, late) per epoch"
    );

    // What each epoch emitted, as the table's changes: Spark's CheckNewAnswer of each batch.
    let tables = table_after_each_epoch(&dir.join("aggregated"));
    let mut before = Vec::new();
    let mut emitted = Vec::new();
    for epoch in 0..SPARK_TRACE.len() as u64 {
        let after = tables
            .get(&epoch)
            .cloned()
            .unwrap_or_else(|| before.clone());
        emitted.push(changed(&before, &after));
        before = after;
    }
    assert_eq!(
        emitted,
        [
            vec![(10, 5), (15, 1)],
            vec![(25, 1)],
            vec![],
            vec![(25, 2)],
            vec![],
        ]
    );
    // Epochs that emitted nothing committed nothing, and the table ends with every window's
    // latest value.
    assert_eq!(
        tables.keys().copied().collect::<Vec<_>>(),
        [0, 1, 3],
        "{tables:?}"
    );
    assert_eq!(before, [(10, 5), (15, 1), (25, 2)]);
}

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
