//! `query: {sql: ...}` and `{sql_file: ...}`: the reference query in Spark's and Flink's SQL
//! (with the watermark in the job file or in Flink's `CREATE TABLE`), end to end, writes the
//! table its YAML form writes; a query with WHERE, a CASE key, map access, an expression aggregate and HAVING
//! writes what plain Python computes from the same events.

mod support;

use std::ffi::OsStr;

use support::{file_job_in, gen_files, python, repo_path, run_local, run_ok, verify, BAD_INPUT};

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

/// The job's watermark line, which Flink's form gives in SQL instead.
const YAML_WATERMARK: &str = "  watermark: {column: timestamp, delay: 10m}\n";

/// Flink's whole form in a file of its own: the watermark in `CREATE TABLE`, hopping windows
/// of one size and slide (tumbling ones), and `EMIT ON WINDOW CLOSE`.
const FLINK_SQL_FILE: &str = "CREATE TABLE source (
  event_id STRING, user_id STRING, event_type STRING, `timestamp` TIMESTAMP(3),
  WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '10' MINUTE
);
SELECT window_start, window_end, event_type,
       count(*) AS event_count,
       count(DISTINCT user_id) AS unique_users,
       approx_count_distinct(event_id) AS approx_unique
FROM TABLE(HOP(TABLE source, DESCRIPTOR(`timestamp`), INTERVAL '5' MINUTES, INTERVAL '5' MINUTES))
GROUP BY window_start, window_end, event_type
EMIT ON WINDOW CLOSE;
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
    let sql_file = tmp.path().join("reference.sql");
    std::fs::write(&sql_file, FLINK_SQL_FILE).unwrap();
    let flink_ddl = format!("  sql_file: {}\n", sql_file.display());
    for (name, watermark, query) in [
        ("spark", YAML_WATERMARK, SQL_QUERY),
        ("flink", YAML_WATERMARK, TVF_QUERY),
        ("flink-ddl", "", flink_ddl.as_str()),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = file_job_in(&dir, &input, 1, &dir.display().to_string(), "");
        let text = std::fs::read_to_string(&job).unwrap();
        let yaml = format!("{YAML_WATERMARK}{YAML_QUERY}");
        assert!(text.contains(&yaml), "{text}");
        std::fs::write(&job, text.replace(&yaml, &format!("{watermark}{query}"))).unwrap();
        run_local(&dir, 2);
        verify(
            &events,
            &dir,
            &[OsStr::new("--same-as"), OsStr::new(&yaml_table)],
        );
    }
}

/// The query tests/verify_sql_rows.py computes (its minimum count in HAVING is 12).
const ROWS_QUERY: &str = "  sql: |
    SELECT window,
           CASE WHEN event_type IN ('click', 'add_to_cart') THEN 'engaged'
                ELSE event_type END AS kind,
           properties['country'] AS country,
           count(*) AS events,
           count(DISTINCT user_id) AS users,
           sum(CAST(substr(page_url, 28) AS BIGINT)) AS page_sum
    FROM source
    WHERE properties['browser'] <> 'edge'
    GROUP BY window(timestamp, '5 minutes'), kind, country
    HAVING count(*) >= 12
";

/// Events whose page is not a number: `CAST` fails on them, and they go to the dead letter
/// with the expression's error while the rest of their batch goes through. Their event time
/// is the stream's first, so they move no watermark.
fn bad_pages(events: &std::path::Path, input: &std::path::Path) {
    let all = std::fs::read_to_string(events).unwrap();
    let first = all
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "valid")
        .expect("a valid event");
    let ts = serde_json::from_str::<serde_json::Value>(first["value"].as_str().unwrap()).unwrap()
        ["timestamp"]
        .clone();
    let mut lines = String::new();
    let mut truth = String::new();
    for i in 0..3 {
        let value = serde_json::json!({
            "event_id": format!("bad-page-{i}"),
            "user_id": "user-1",
            "event_type": "click",
            "page_url": format!("https://shop.example.com/p/none-{i}"),
            "timestamp": ts,
            "properties": {"browser": "chrome", "country": "DE"},
        })
        .to_string();
        lines.push_str(&format!("{value}\n"));
        truth.push_str(&format!(
            "{}\n",
            serde_json::json!({"partition": 0, "kind": "malformed", "value": value})
        ));
    }
    std::fs::write(input.join("events-bad-pages.jsonl"), lines).unwrap();
    std::fs::write(events, all + &truth).unwrap();
}

#[test]
fn where_case_map_access_and_having_give_what_python_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "3h"][..], &BAD_INPUT].concat();
    let (input, events) = gen_files(tmp.path(), 30_000, 6, &gen_args);
    bad_pages(&events, &input);
    let root = tmp.path().display().to_string();
    let job = file_job_in(tmp.path(), &input.display().to_string(), 1, &root, "");
    let text = std::fs::read_to_string(&job).unwrap();
    assert!(
        text.contains(YAML_QUERY),
        "the reference job changed: {text}"
    );
    let text = text
        .replace(YAML_QUERY, ROWS_QUERY)
        .replace("partition_by: [event_type]", "partition_by: [kind]");
    std::fs::write(&job, text).unwrap();
    run_local(tmp.path(), 2);
    let out = run_ok(
        python()
            .arg(repo_path("tests/verify_sql_rows.py"))
            .arg("--events")
            .arg(&events)
            .args(["--table", &format!("{root}/aggregated")])
            .args(["--dead-letter", &format!("{root}/dead-letter")])
            .args(["--min-events", "12"])
            // The reason names the expression and the value it could not take.
            .args(["--expect-reason", "CAST(SUBSTR(page_url, 28) AS BIGINT)"])
            .args(["--expect-reason", "Cannot cast string 'none-"]),
        "ground truth of the SQL query",
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
