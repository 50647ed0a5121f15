//! The ceilings weir's throughput is measured against, each one thread over the same JSON lines
//! in memory, with no exchange, state store, files or checkpoint:
//! - arrow-json decoding every field, alone and then hash-aggregating what the reference query
//!   needs (count, exact distinct users, approximate distinct events per 5-minute window and
//!   event type);
//! - weir's decoder (the projected scanner, building only the four columns the query reads),
//!   alone and with the same aggregation;
//! - the physical one: splitting the lines and finding the four fields' values, nothing built.
//!
//! The arrow-json decode + aggregate pass also runs on every core at once, one thread each over
//! all the files: what one core does while the others work too (shared caches, memory and the
//! host's turbo budget), which is what an executor per core gets.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use weir_common::data::value::Scalar;
use weir_common::decode::JsonDecoder;
use weir_common::query::aggregate::{AggregateSpec, Partial};
use weir_common::query::keygroup::stable_hash;

/// The executors' chunk size, so that both decode in batches of the same size.
const BATCH: usize = weir_executor::epoch::CHUNK;
const WINDOW_MICROS: i64 = 5 * 60 * 1_000_000;

/// Rates of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub events: u64,
    pub elapsed: Duration,
}

impl Pass {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug)]
pub struct Ceiling {
    /// arrow-json, every field.
    pub decode: Pass,
    pub decode_and_aggregate: Pass,
    /// The same on `threads` threads at once: `events` over all of them, `elapsed` until the last
    /// one ended.
    pub decode_and_aggregate_together: Pass,
    pub threads: usize,
    /// weir's decoder, the columns read.
    pub scan: Pass,
    pub scan_and_aggregate: Pass,
    /// Lines split and the four fields found.
    pub find_fields: Pass,
    /// (window, event type) groups the aggregation found: a check that it did the work.
    pub groups: usize,
}

/// The aggregation's groups: by window start, then by event type.
type Groups = HashMap<i64, HashMap<String, Group>>;

impl Ceiling {
    /// The decode + aggregate pass's rate per thread with every core at once.
    pub fn together_per_thread(&self) -> f64 {
        self.decode_and_aggregate_together.events_per_second() / self.threads as f64
    }
}

struct Group {
    count: u64,
    users: HashSet<u64>,
    approx: Partial,
}

fn decode(
    schema: &SchemaRef,
    file: &[u8],
    mut each: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH)
        .build(Cursor::new(file))
        .context("building the JSON reader")?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch.context("decoding")?;
        rows += batch.num_rows() as u64;
        each(&batch)?;
    }
    Ok(rows)
}

/// Decodes `file` with weir's decoder, in the executors' chunks, handing each batch to `each`.
fn scan(
    decoder: &JsonDecoder,
    file: &[u8],
    mut each: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let lines = lines(file);
    let mut rows = 0;
    for chunk in lines.chunks(BATCH) {
        let decoded = decoder.decode_within(chunk, &[file]);
        anyhow::ensure!(decoded.bad.is_empty(), "bad records: {:?}", decoded.bad);
        for batch in &decoded.batches {
            rows += batch.num_rows() as u64;
            each(batch)?;
        }
    }
    Ok(rows)
}

/// The lines of `file`, found as the executors' reader finds them.
fn lines(file: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::with_capacity(file.len() / 200);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', file) {
        if end > start {
            lines.push(&file[start..end]);
        }
        start = end + 1;
    }
    if start < file.len() {
        lines.push(&file[start..]);
    }
    lines
}

/// The physical ceiling: each line split off and the value of each of `fields` found (its
/// bytes summed, so the search cannot be skipped); nothing decoded or built.
fn find_fields(fields: &[&str], file: &[u8]) -> (u64, u64) {
    let finders: Vec<memchr::memmem::Finder<'_>> = fields
        .iter()
        .map(|f| format!("\"{f}\":"))
        .map(|key| memchr::memmem::Finder::new(key.as_bytes()).into_owned())
        .collect();
    let (mut rows, mut found) = (0u64, 0u64);
    for line in lines(file) {
        rows += 1;
        for (finder, key_len) in finders.iter().zip(fields.iter().map(|f| f.len() + 3)) {
            if let Some(at) = finder.find(line) {
                let value = &line[at + key_len..];
                let value = value.strip_prefix(b"\"").unwrap_or(value);
                found += memchr::memchr(b'"', value).unwrap_or(0) as u64;
            }
        }
    }
    (rows, found)
}

/// Times `pass` (which answers the events it went through).
fn timed(pass: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<Pass> {
    let started = Instant::now();
    let events = pass()?;
    Ok(Pass {
        events,
        elapsed: started.elapsed(),
    })
}

/// Decodes every file with arrow-json and aggregates it into `groups`; the events decoded.
fn decode_and_aggregate(
    schema: &SchemaRef,
    approx: &AggregateSpec,
    files: &[Vec<u8>],
    groups: &mut Groups,
) -> anyhow::Result<u64> {
    files
        .iter()
        .map(|file| decode(schema, file, |batch| aggregate(batch, approx, groups)))
        .sum()
}

/// The arrow-json decode + aggregate pass over `files`, checked, with the (window, event type)
/// groups it found. `weir bench` also runs it before each round of the file runs, so that each
/// round's share of it per core is taken against the ceiling of the same minutes.
pub fn aggregate_pass(
    schema: &SchemaRef,
    approx: &AggregateSpec,
    files: &[Vec<u8>],
) -> anyhow::Result<(Pass, usize)> {
    let mut groups = Groups::new();
    let pass = timed(|| decode_and_aggregate(schema, approx, files, &mut groups))?;
    let found = check(&groups, pass.events)?;
    Ok((pass, found))
}

/// Runs every pass over `files` (JSON lines, every line a valid event of `schema`).
pub fn measure(
    schema: &SchemaRef,
    approx: &AggregateSpec,
    files: &[Vec<u8>],
    threads: usize,
) -> anyhow::Result<Ceiling> {
    let decode_pass = timed(|| {
        files
            .iter()
            .map(|file| decode(schema, file, |_| Ok(())))
            .sum()
    })?;
    let (aggregate_pass, found) = aggregate_pass(schema, approx, files)?;
    let threads = threads.max(1);
    let together_pass = timed(|| {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut groups = Groups::new();
                        let events = decode_and_aggregate(schema, approx, files, &mut groups)?;
                        check(&groups, events)?;
                        Ok::<_, anyhow::Error>(events)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow::anyhow!("a ceiling thread panicked"))?
                })
                .sum()
        })
    })?;

    let decoder = JsonDecoder::reading(schema.clone(), &READ, 1 << 20);
    let scan_pass = timed(|| {
        files
            .iter()
            .map(|file| scan(&decoder, file, |_| Ok(())))
            .sum()
    })?;
    let mut scanned = Groups::new();
    let scan_aggregate_pass = timed(|| {
        files
            .iter()
            .map(|file| {
                scan(&decoder, file, |batch| {
                    aggregate(batch, approx, &mut scanned)
                })
            })
            .sum()
    })?;
    let scanned_found = check(&scanned, scan_aggregate_pass.events)?;
    anyhow::ensure!(
        scanned_found == found,
        "weir's decoder and arrow-json found different (window, event type) groups"
    );

    let mut found_bytes = 0;
    let fields_pass = timed(|| {
        let mut rows = 0;
        for file in files {
            let (r, b) = find_fields(&READ, file);
            rows += r;
            found_bytes += b;
        }
        Ok(rows)
    })?;
    anyhow::ensure!(
        found_bytes > fields_pass.events,
        "the fields were not found"
    );
    Ok(Ceiling {
        decode: decode_pass,
        decode_and_aggregate: aggregate_pass,
        decode_and_aggregate_together: together_pass,
        threads,
        scan: scan_pass,
        scan_and_aggregate: scan_aggregate_pass,
        find_fields: fields_pass,
        groups: found,
    })
}

/// The columns the reference query reads.
const READ: [&str; 4] = ["event_id", "user_id", "event_type", "timestamp"];

/// The (window, event type) groups found, after checking that no row was lost (the results
/// are read, so the work cannot be skipped).
fn check(groups: &Groups, events: u64) -> anyhow::Result<usize> {
    let total: u64 = groups
        .values()
        .flat_map(|g| g.values())
        .map(|g| g.count + g.users.len() as u64)
        .sum();
    anyhow::ensure!(total >= events, "the aggregation lost rows");
    Ok(groups.values().map(HashMap::len).sum())
}

fn aggregate(
    batch: &RecordBatch,
    approx: &AggregateSpec,
    groups: &mut Groups,
) -> anyhow::Result<()> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .with_context(|| format!("the decoded events have no {name}"))
    };
    let times = column("timestamp")?.as_primitive::<TimestampMicrosecondType>();
    let types = column("event_type")?.as_string::<i32>();
    let users = column("user_id")?.as_string::<i32>();
    let ids = column("event_id")?.as_string::<i32>();
    for row in 0..batch.num_rows() {
        if times.is_null(row) {
            continue;
        }
        let ts = times.value(row);
        let window = ts - ts.rem_euclid(WINDOW_MICROS);
        let by_type = groups.entry(window).or_default();
        let event_type = types.value(row);
        let group = match by_type.get_mut(event_type) {
            Some(g) => g,
            None => by_type
                .entry(event_type.to_string())
                .or_insert_with(|| Group {
                    count: 0,
                    users: HashSet::new(),
                    approx: approx.new_partial(),
                }),
        };
        group.count += 1;
        group.users.insert(stable_hash(users.value(row).as_bytes()));
        group
            .approx
            .update(approx.kind, Scalar::Str(ids.value(row)));
    }
    Ok(())
}
