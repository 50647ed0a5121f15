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

#[test]
fn the_reference_query_in_sql_writes_the_table_of_its_yaml_form() {
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let (input, events) = gen_files(tmp.path(), 20_000, 6, &gen_args);
    let input = input.display().to_string();
    let yaml_dir = tmp.path().join("yaml");
    let sql_dir = tmp.path().join("sql");
    for dir in [&yaml_dir, &sql_dir] {
        std::fs::create_dir_all(dir).unwrap();
        let job = file_job_in(dir, &input, 1, &dir.display().to_string(), "");
        if dir == &sql_dir {
            let text = std::fs::read_to_string(&job).unwrap();
            assert!(
                text.contains(YAML_QUERY),
                "the reference job changed: {text}"
            );
            std::fs::write(&job, text.replace(YAML_QUERY, SQL_QUERY)).unwrap();
        }
        run_local(dir, 2);
    }
    verify(&events, &yaml_dir, &[]);
    let yaml_table = yaml_dir.join("aggregated").display().to_string();
    verify(
        &events,
        &sql_dir,
        &[OsStr::new("--same-as"), OsStr::new(&yaml_table)],
    );
}
