//! The reference job of docs/architecture.md (The reference job) as a job file, for any source and
//! location: what `weir bench` runs and what the end-to-end tests run.

/// The job file named `name` that reads `source` (the lines under `source:` that name the
/// input, indented by two spaces and ending with a newline) with its checkpoint and tables
/// under `root` (a path or URL).
pub fn job_file(name: &str, source: &str, root: &str) -> String {
    format!(
        r#"name: {name}
source:
{source}  format: json
  schema:
    event_id: string not null
    user_id: string not null
    event_type: string not null
    page_url: string
    timestamp: timestamp not null
    properties: map<string,string>
query:
  watermark: {{column: timestamp, delay: 10m}}
  window: {{column: timestamp, size: 5m}}
  group_by: [event_type]
  aggregates:
    event_count: count(*)
    unique_users: count(distinct user_id)
    approx_unique: approx_count_distinct(event_id)
trigger: 1s
checkpoint_location: "{root}/checkpoint"
sinks:
  - delta: {{path: "{root}/aggregated", partition_by: [event_type]}}
dead_letter: {{delta: {{path: "{root}/dead-letter"}}}}
"#
    )
}

/// The reference job with `approx_count_distinct` for its distinct users too: the query Spark
/// can run as a stream (it rejects exact distinct), which the bench and `scripts/bench-peers.sh`
/// compare with the exact one.
pub fn approx_job_file(name: &str, source: &str, root: &str) -> String {
    job_file(name, source, root).replace(
        "unique_users: count(distinct user_id)",
        "unique_users: approx_count_distinct(user_id)",
    )
}

/// The reference job's upsert of raw events (the seed's step 4) as a job file: each
/// `event_id`'s first arrival within an hour, MERGEd into a table partitioned by event type.
pub fn dedup_job_file(name: &str, source: &str, root: &str) -> String {
    let job = job_file(name, source, root);
    let (head, _) = job.split_once("\n  window:").unwrap_or((&job, ""));
    let (_, tail) = job.split_once("\ntrigger:").unwrap_or(("", &job));
    format!("{head}\n  dedup: {{key: [event_id], within: 1h}}\ntrigger:{tail}").replace(
        &format!("path: \"{root}/aggregated\", partition_by: [event_type]"),
        &format!("path: \"{root}/events\", partition_by: [event_type], merge_on: [event_id]"),
    )
}

/// The seed job's two outputs as two queries over one read (`queries:`): the reference job's
/// windows (`windows`, into `<root>/aggregated`) and its upsert of raw events (`raw-events`,
/// into `<root>/events`), with the checkpoint and dead letter of the reference job.
pub fn seed_job_file(name: &str, source: &str, root: &str) -> String {
    let job = job_file(name, source, root);
    let (head, rest) = job.split_once("query:\n").unwrap_or((&job, ""));
    let (query, tail) = rest.split_once("trigger:").unwrap_or((rest, ""));
    let windows: String = query.lines().map(|l| format!("  {l}\n")).collect();
    // The reference job's sinks become the windows query's own.
    let tail: String = tail
        .lines()
        .filter(|l| !l.starts_with("sinks:") && !l.starts_with("  - delta:"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        r#"{head}queries:
  - name: windows
{windows}    sinks:
      - delta: {{path: "{root}/aggregated", partition_by: [event_type]}}
  - name: raw-events
    watermark: {{column: timestamp, delay: 10m}}
    dedup: {{key: [event_id], within: 1h}}
    sinks:
      - delta: {{path: "{root}/events", partition_by: [event_type], merge_on: [event_id]}}
trigger:{tail}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_job_file_is_valid() {
        let text = job_file(
            "reference",
            "  files: {path: /data/events, max_files_per_trigger: 4}\n",
            "s3://bucket/job",
        );
        let job = super::super::parse_job(&text, std::path::Path::new("/")).unwrap();
        assert_eq!(job.queries[0].output.url, "s3://bucket/job/aggregated");
        assert_eq!(
            job.queries[0].query.windows().map(|w| w.aggregates.len()),
            Some(3)
        );
        let dedup = dedup_job_file(
            "raw",
            "  files: {path: /data/events, max_files_per_trigger: 2}\n",
            "/job",
        );
        let dedup = super::super::parse_job(&dedup, std::path::Path::new("/")).unwrap();
        assert_eq!(dedup.queries[0].output.url, "file:///job/events");
        assert_eq!(dedup.queries[0].output.merge_on, ["event_id"]);
        let seed = seed_job_file("seed", "  files: {path: /data/events}\n", "/job");
        let seed = super::super::parse_job(&seed, std::path::Path::new("/")).unwrap();
        let tables: Vec<(&str, &str)> = seed
            .queries
            .iter()
            .map(|q| (q.name.as_str(), q.output.url.as_str()))
            .collect();
        assert_eq!(
            tables,
            [
                ("windows", "file:///job/aggregated"),
                ("raw-events", "file:///job/events")
            ]
        );
        assert!(seed.dead_letter.is_some());
        assert!(
            matches!(dedup.queries[0].query, super::super::Query::Dedup(ref d) if d.key == ["event_id"] && d.within_micros == 3_600_000_000)
        );
        let approx = approx_job_file("approx", "  files: {path: /data/events}\n", "/job");
        let approx = super::super::parse_job(&approx, std::path::Path::new("/")).unwrap();
        let kinds: Vec<_> = approx.queries[0]
            .query
            .windows()
            .map(|w| w.aggregates.iter().map(|a| a.kind).collect())
            .unwrap_or_default();
        assert_eq!(kinds.len(), 3);
        assert!(
            kinds[1..].iter().all(|k| matches!(
                k,
                crate::query::aggregate::AggKind::ApproxCountDistinct { .. }
            )),
            "{kinds:?}"
        );
    }
}
