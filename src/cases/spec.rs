//! The cases file of `weir test`: a job, and cases of scripted steps against it.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

/// The job a case runs: a job file's path (relative to the directory weir runs in, as every
/// path of a job file), or the job itself inline.
#[derive(Debug, Clone)]
pub enum JobRef {
    Path(String),
    Inline(Yaml),
}

#[derive(Debug)]
pub struct CaseFile {
    pub job: Option<JobRef>,
    /// Executors of the run as written (default 2).
    pub executors: usize,
    pub cases: Vec<Case>,
}

#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub job: Option<JobRef>,
    pub steps: Vec<Step>,
}

/// Rows expected of one query's table (the job's only query unless named).
#[derive(Debug, Clone)]
pub struct Expected {
    pub query: Option<String>,
    pub rows: Vec<Value>,
}

/// A record expected in the dead letter: its text, and part of its reason when given.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub value: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Step {
    /// Records to one partition (a file of the input, read in an epoch of its own): JSON
    /// objects, and raw lines for records that are not.
    Input { partition: u32, lines: Vec<String> },
    /// The processing clock moves on: the trigger fires and what was input is processed.
    AdvanceTime,
    /// The rows the query emitted since the last check of it.
    ExpectEmitted(Expected),
    /// The query's whole table.
    ExpectTable(Expected),
    /// The records set aside since the last check of the dead letter.
    ExpectDeadLetter(Vec<DeadLetter>),
    /// The job's figures: totals since the case began, and the state rows held.
    ExpectMetrics(BTreeMap<String, u64>),
    /// The job stops and starts again, with another executor count when given.
    Restart { executors: Option<usize> },
    /// The job is refused at start with an error containing this text.
    ExpectError(String),
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Input { .. } => "input",
            Step::AdvanceTime => "advance_time",
            Step::ExpectEmitted(_) => "expect_emitted",
            Step::ExpectTable(_) => "expect_table",
            Step::ExpectDeadLetter(_) => "expect_dead_letter",
            Step::ExpectMetrics(_) => "expect_metrics",
            Step::Restart { .. } => "restart",
            Step::ExpectError(_) => "expect_error",
        }
    }
}

const STEPS: &str = "input, advance_time, expect_emitted, expect_table, expect_dead_letter, \
    expect_metrics, restart or expect_error";

/// The metrics `expect_metrics` checks.
pub const METRICS: [&str; 6] = [
    "input_rows",
    "rows_emitted",
    "late_rows",
    "malformed_rows",
    "dead_letter_rows",
    "state_rows",
];

pub fn parse(text: &str) -> anyhow::Result<CaseFile> {
    let doc: Yaml = serde_yaml_ng::from_str(text).context("not YAML")?;
    let map = doc
        .as_mapping()
        .context("expected a mapping with `cases`")?;
    let mut file = CaseFile {
        job: None,
        executors: 2,
        cases: Vec::new(),
    };
    for (key, value) in map {
        match key.as_str().unwrap_or_default() {
            "job" => file.job = Some(job_ref(value).context("job")?),
            "executors" => {
                file.executors = value
                    .as_u64()
                    .filter(|n| *n > 0)
                    .context("executors: expected a positive number")?
                    as usize
            }
            "cases" => {
                let cases = value.as_sequence().context("cases: expected a list")?;
                for (i, case) in cases.iter().enumerate() {
                    file.cases
                        .push(parse_case(case).with_context(|| format!("cases[{i}]"))?);
                }
            }
            other => bail!("unknown key `{other}` (job, executors or cases)"),
        }
    }
    if file.cases.is_empty() {
        bail!("cases: expected at least one case");
    }
    Ok(file)
}

fn job_ref(value: &Yaml) -> anyhow::Result<JobRef> {
    match value {
        Yaml::String(path) => Ok(JobRef::Path(path.clone())),
        Yaml::Mapping(_) => Ok(JobRef::Inline(value.clone())),
        _ => bail!("expected a job file's path or a job"),
    }
}

fn parse_case(value: &Yaml) -> anyhow::Result<Case> {
    let map = value
        .as_mapping()
        .context("expected a mapping with name and steps")?;
    let mut name = None;
    let mut job = None;
    let mut steps = Vec::new();
    for (key, value) in map {
        match key.as_str().unwrap_or_default() {
            "name" => name = Some(value.as_str().context("name: expected text")?.to_string()),
            "job" => job = Some(job_ref(value).context("job")?),
            "steps" => {
                let list = value.as_sequence().context("steps: expected a list")?;
                for (i, step) in list.iter().enumerate() {
                    steps.push(parse_step(step).with_context(|| format!("steps[{i}]"))?);
                }
            }
            other => bail!("unknown key `{other}` (name, job or steps)"),
        }
    }
    let name = name.context("name: missing")?;
    if steps.is_empty() {
        bail!("steps: expected at least one step");
    }
    Ok(Case { name, job, steps })
}

fn parse_step(value: &Yaml) -> anyhow::Result<Step> {
    let map = value
        .as_mapping()
        .filter(|m| m.len() == 1)
        .ok_or_else(|| anyhow!("expected one of {STEPS}"))?;
    let (key, value) = map.iter().next().context("an empty step")?;
    let key = key.as_str().unwrap_or_default();
    let step = match key {
        "input" => input(value)?,
        "advance_time" => {
            let text = match value {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => format!("{n}s"),
                _ => bail!("advance_time: expected a duration such as 30s"),
            };
            humantime::parse_duration(&text)
                .with_context(|| format!("advance_time: `{text}` is not a duration"))?;
            Step::AdvanceTime
        }
        "expect_emitted" => Step::ExpectEmitted(expected(value).context(key.to_string())?),
        "expect_table" => Step::ExpectTable(expected(value).context(key.to_string())?),
        "expect_dead_letter" => Step::ExpectDeadLetter(dead_letters(value)?),
        "expect_metrics" => {
            let map = value
                .as_mapping()
                .context("expect_metrics: expected a mapping of metric to value")?;
            let mut metrics = BTreeMap::new();
            for (k, v) in map {
                let name = k.as_str().unwrap_or_default();
                if !METRICS.contains(&name) {
                    bail!(
                        "expect_metrics: unknown metric `{name}` ({})",
                        METRICS.join(", ")
                    );
                }
                let v = v
                    .as_u64()
                    .with_context(|| format!("expect_metrics.{name}: expected a count"))?;
                metrics.insert(name.to_string(), v);
            }
            Step::ExpectMetrics(metrics)
        }
        "restart" => {
            let executors = match value {
                Yaml::Null => None,
                Yaml::Mapping(m) => match m.get("executors") {
                    None if m.is_empty() => None,
                    Some(n) => Some(
                        n.as_u64()
                            .filter(|n| *n > 0)
                            .context("restart.executors: expected a positive number")?
                            as usize,
                    ),
                    None => bail!("restart: expected {{}} or {{executors: N}}"),
                },
                _ => bail!("restart: expected {{}} or {{executors: N}}"),
            };
            Step::Restart { executors }
        }
        "expect_error" => Step::ExpectError(
            value
                .as_str()
                .context("expect_error: expected part of the error's text")?
                .to_string(),
        ),
        other => bail!("unknown step `{other}`: expected one of {STEPS}"),
    };
    Ok(step)
}

/// `input: [records]`, or `input: {partition, records, raw}`.
fn input(value: &Yaml) -> anyhow::Result<Step> {
    let record_lines = |list: &Yaml| -> anyhow::Result<Vec<String>> {
        list.as_sequence()
            .context("expected a list of records")?
            .iter()
            .map(|r| {
                let json: Value = serde_json::to_value(r).context("a record that is not JSON")?;
                Ok(json.to_string())
            })
            .collect()
    };
    match value {
        Yaml::Sequence(_) => Ok(Step::Input {
            partition: 0,
            lines: record_lines(value).context("input")?,
        }),
        Yaml::Mapping(m) => {
            let mut partition = 0;
            let mut lines = Vec::new();
            for (k, v) in m {
                match k.as_str().unwrap_or_default() {
                    "partition" => {
                        partition = v
                            .as_u64()
                            .and_then(|p| u32::try_from(p).ok())
                            .context("input.partition: expected a number")?
                    }
                    "records" => lines.extend(record_lines(v).context("input.records")?),
                    "raw" => {
                        for line in v.as_sequence().context("input.raw: expected a list")? {
                            let text =
                                line.as_str().context("input.raw: expected lines of text")?;
                            if text.contains('\n') {
                                bail!("input.raw: a record is one line");
                            }
                            lines.push(text.to_string());
                        }
                    }
                    other => bail!("input: unknown key `{other}` (partition, records, raw)"),
                }
            }
            Ok(Step::Input { partition, lines })
        }
        _ => bail!("input: expected a list of records or {{partition, records, raw}}"),
    }
}

/// `[rows]`, or `{query, rows}`.
fn expected(value: &Yaml) -> anyhow::Result<Expected> {
    let rows = |list: &Yaml| -> anyhow::Result<Vec<Value>> {
        list.as_sequence()
            .context("expected a list of rows")?
            .iter()
            .map(|r| {
                let row: Value = serde_json::to_value(r).context("a row that is not JSON")?;
                if !row.is_object() {
                    bail!("a row is a mapping of column to value");
                }
                Ok(row)
            })
            .collect()
    };
    match value {
        Yaml::Sequence(_) => Ok(Expected {
            query: None,
            rows: rows(value)?,
        }),
        Yaml::Mapping(m) => {
            let query = m
                .get("query")
                .map(|q| {
                    q.as_str()
                        .map(str::to_string)
                        .context("query: expected a name")
                })
                .transpose()?;
            let list = m.get("rows").context("expected rows")?;
            Ok(Expected {
                query,
                rows: rows(list)?,
            })
        }
        _ => bail!("expected a list of rows or {{query, rows}}"),
    }
}

fn dead_letters(value: &Yaml) -> anyhow::Result<Vec<DeadLetter>> {
    value
        .as_sequence()
        .context("expect_dead_letter: expected a list")?
        .iter()
        .map(|item| match item {
            Yaml::String(s) => Ok(DeadLetter {
                value: s.clone(),
                error: None,
            }),
            Yaml::Mapping(m) => Ok(DeadLetter {
                value: m
                    .get("value")
                    .and_then(Yaml::as_str)
                    .context("expect_dead_letter: expected value: the record's text")?
                    .to_string(),
                error: m
                    .get("error")
                    .map(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .context("error: expected text")
                    })
                    .transpose()?,
            }),
            _ => bail!("expect_dead_letter: expected a record's text or {{value, error}}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cases_file_reads_every_kind_of_step() {
        let file = parse(
            r#"
job: job.yaml
cases:
  - name: one of each
    steps:
      - input: [{a: 1}]
      - input: {partition: 2, records: [{a: 2}], raw: ["{not json"]}
      - advance_time: 30s
      - expect_emitted: [{a: 1}]
      - expect_table: {query: q, rows: []}
      - expect_dead_letter: ["{not json", {value: "x", error: "bad"}]
      - expect_metrics: {late_rows: 1}
      - restart: {executors: 3}
      - restart: {}
"#,
        )
        .unwrap();
        let steps = &file.cases[0].steps;
        assert_eq!(steps.len(), 9);
        match &steps[1] {
            Step::Input { partition, lines } => {
                assert_eq!(*partition, 2);
                assert_eq!(lines, &["{\"a\":2}", "{not json"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(steps[7], Step::Restart { executors: Some(3) }));
        let err = parse("cases: [{name: x, steps: [{expect_rows: []}]}]").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown step `expect_rows`"),
            "{err:#}"
        );
        let err = parse("cases: [{name: x, steps: [{expect_metrics: {lag: 1}}]}]").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown metric `lag`"),
            "{err:#}"
        );
    }
}
