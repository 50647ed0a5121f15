//! `query: {sql: ...}`: the reference query in SQL, end to end, writes the table its YAML form
//! writes.

mod support;

use std::ffi::OsStr;

use support::{file_job_in, gen_files, run_local, verify, BAD_INPUT};

/// The reference query's YAML lines, replaced by its SQL.
const YAML_QUERY: &str = "  window: {column: timestamp, size: 5m}
  group_by: [event_type]
  aggregates:
    event_count: count(*)
    unique_users: count(distinct user_id)
    approx_unique: approx_count_distinct(event_id)
";

const SQL_QUERY: &str = "  sql: |
    SELECT window, event_type,
           count(*) AS event_count,
           count(DISTINCT user_id) AS unique_users,
           approx_count_distinct(event_id) AS approx_unique
    FROM source
    GROUP BY window(timestamp, '5 minutes'), event_type
    EMIT ON WINDOW CLOSE
";

/// The same in Flink's window table function form.
const TVF_QUERY: &str = "  sql: |
    SELECT window_start, window_end, event_type,
           count(*) AS event_count,
           count(DISTINCT user_id) AS unique_users,
           approx_count_distinct(event_id) AS approx_unique
    FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(timestamp), INTERVAL '5' MINUTES))
    GROUP BY window_start, window_end, event_type
";

#[test]
fn the_reference_query_in_sql_writes_the_table_of_its_yaml_form() {
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let (input, events) = gen_files(tmp.path(), 20_000, 6, &gen_args);
    let input = input.display().to_string();
    let yaml_dir = tmp.path().join("yaml");
    std::fs::create_dir_all(&yaml_dir).unwrap();
    let job = file_job_in(&yaml_dir, &input, 1, &yaml_dir.display().to_string(), "");
    let yaml_job = std::fs::read_to_string(job).unwrap();
    assert!(
        yaml_job.contains(YAML_QUERY),
        "the reference job changed: {yaml_job}"
    );
    run_local(&yaml_dir, 2);
    verify(&events, &yaml_dir, &[]);
    let yaml_table = yaml_dir.join("aggregated").display().to_string();
    for (name, query) in [("spark", SQL_QUERY), ("flink", TVF_QUERY)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = file_job_in(&dir, &input, 1, &dir.display().to_string(), "");
        let text = std::fs::read_to_string(&job).unwrap();
        std::fs::write(&job, text.replace(YAML_QUERY, query)).unwrap();
        run_local(&dir, 2);
        verify(
            &events,
            &dir,
            &[OsStr::new("--same-as"), OsStr::new(&yaml_table)],
        );
    }
}
