//! The job a case runs, pointed at the case's own input and tables: its source reads files of
//! the input (one file an epoch), its Delta tables are local, and what leaves the machine
//! (Kafka sinks, the Pushgateway, alerts) is left out. The query, schema and every other
//! setting stay as the job file gives them.

use std::path::Path;

use anyhow::{bail, Context};
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::spec::JobRef;

/// The job's YAML for a case under `dir`: input files in `dir/input`, tables under
/// `dir/tables/<query>`, the dead letter (always kept) in `dir/dead-letter`.
pub fn for_case(job: &JobRef, dir: &Path) -> anyhow::Result<String> {
    let mut doc = match job {
        JobRef::Inline(yaml) => yaml.clone(),
        JobRef::Path(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the job file {path}"))?;
            serde_yaml_ng::from_str(&text).with_context(|| format!("the job file {path}"))?
        }
    };
    let job = doc
        .as_mapping_mut()
        .context("a job is a mapping (name, source, query, ...)")?;
    let at = |rel: &str| Yaml::String(dir.join(rel).display().to_string());
    let name = job
        .get("name")
        .and_then(Yaml::as_str)
        .unwrap_or("job")
        .to_string();

    if let Some(source) = job.get_mut("source").and_then(Yaml::as_mapping_mut) {
        source.remove("kafka");
        source.remove("files");
        let mut files = Mapping::new();
        files.insert("path".into(), at("input"));
        files.insert("max_files_per_trigger".into(), Yaml::Number(1.into()));
        source.insert("files".into(), Yaml::Mapping(files));
    }
    job.insert("checkpoint_location".into(), at("checkpoint"));
    for key in ["alerts", "autoscale", "executors", "storage_options"] {
        job.remove(key);
    }
    let mut dead_letter = Mapping::new();
    dead_letter.insert("path".into(), at("dead-letter"));
    let mut wrapped = Mapping::new();
    wrapped.insert("delta".into(), Yaml::Mapping(dead_letter));
    job.insert("dead_letter".into(), Yaml::Mapping(wrapped));
    if let Some(late) = job
        .get_mut("late_rows")
        .and_then(Yaml::as_mapping_mut)
        .and_then(|l| l.get_mut("delta"))
        .and_then(Yaml::as_mapping_mut)
    {
        late.insert("path".into(), at("late-rows"));
    }

    // A single query's sinks are the job's; each of several queries has its own.
    if job.contains_key("query") {
        let query = job.get_mut("query").and_then(Yaml::as_mapping_mut);
        if let Some(q) = query {
            absolute_sql_file(q)?;
        }
        local_sinks(job, &dir.join("tables").join(&name))?;
    }
    if let Some(queries) = job.get_mut("queries").and_then(Yaml::as_sequence_mut) {
        for query in queries {
            let Some(q) = query.as_mapping_mut() else {
                continue;
            };
            absolute_sql_file(q)?;
            let name = q.get("name").and_then(Yaml::as_str).unwrap_or("query");
            let table = dir.join("tables").join(name);
            local_sinks(q, &table)?;
        }
    }
    serde_yaml_ng::to_string(&doc).context("writing the case's job")
}

/// The Delta sink of `holder`'s `sinks`, at `table`; other sinks dropped.
fn local_sinks(holder: &mut Mapping, table: &Path) -> anyhow::Result<()> {
    let Some(sinks) = holder.get_mut("sinks").and_then(Yaml::as_sequence_mut) else {
        return Ok(());
    };
    sinks.retain(|s| s.get("delta").is_some());
    for sink in sinks.iter_mut() {
        if let Some(delta) = sink.get_mut("delta").and_then(Yaml::as_mapping_mut) {
            delta.insert("path".into(), Yaml::String(table.display().to_string()));
        }
    }
    if sinks.is_empty() {
        bail!("the job has no delta sink to check");
    }
    Ok(())
}

/// A query's `sql_file`, taken from the directory weir runs in, as the job file's paths are.
fn absolute_sql_file(query: &mut Mapping) -> anyhow::Result<()> {
    if let Some(Yaml::String(path)) = query.get("sql_file") {
        let absolute = std::env::current_dir()
            .context("the current directory")?
            .join(path);
        query.insert(
            "sql_file".into(),
            Yaml::String(absolute.display().to_string()),
        );
    }
    Ok(())
}

/// The names of the job's queries, in its order, and their tables' URLs.
pub fn tables(job: &weir_common::job::JobSpec) -> Vec<(String, String)> {
    job.queries
        .iter()
        .map(|q| (q.name.clone(), q.output.url.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_reads_its_own_files_and_writes_local_tables_only() {
        let seed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed-local.yaml"),
        )
        .unwrap();
        let dir = Path::new("/case");
        let text = for_case(
            &JobRef::Inline(serde_yaml_ng::from_str(&seed).unwrap()),
            dir,
        )
        .unwrap();
        let job = weir_common::job::parse_job(&text, dir).unwrap();
        assert!(matches!(
            job.source,
            weir_common::job::Source::Files(ref f) if f.url == "file:///case/input"
        ));
        let tables: Vec<(String, String)> = tables(&job);
        assert_eq!(
            tables,
            [
                (
                    "windows".to_string(),
                    "file:///case/tables/windows".to_string()
                ),
                (
                    "window-updates".to_string(),
                    "file:///case/tables/window-updates".to_string()
                ),
                (
                    "raw-events".to_string(),
                    "file:///case/tables/raw-events".to_string()
                ),
            ]
        );
        assert!(job.queries.iter().all(|q| q.kafka_sinks.is_empty()));
        assert!(job.queries.iter().all(|q| q.pushgateway.is_none()));
        assert!(!text.contains("alerts"));
        assert_eq!(
            job.dead_letter.map(|d| d.url).as_deref(),
            Some("file:///case/dead-letter")
        );
    }
}
