//! The ceiling weir's throughput is measured against: one thread decoding the same JSON lines
//! with arrow-json and hash-aggregating them (count, exact distinct users, approximate distinct
//! events per 5-minute window and event type), with no exchange, state store, files or
//! checkpoint.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use weir_common::aggregate::{AggregateSpec, Partial};
use weir_common::keygroup::stable_hash;
use weir_common::value::Scalar;

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
    pub decode: Pass,
    pub decode_and_aggregate: Pass,
    /// (window, event type) groups the aggregation found: a check that it did the work.
    pub groups: usize,
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

/// Runs both passes over `files` (JSON lines, every line a valid event of `schema`).
pub fn measure(
    schema: &SchemaRef,
    approx: &AggregateSpec,
    files: &[Vec<u8>],
) -> anyhow::Result<Ceiling> {
    let started = Instant::now();
    let mut events = 0;
    for file in files {
        events += decode(schema, file, |_| Ok(()))?;
    }
    let decode_pass = Pass {
        events,
        elapsed: started.elapsed(),
    };

    let started = Instant::now();
    let mut groups: HashMap<i64, HashMap<String, Group>> = HashMap::new();
    let mut events = 0;
    for file in files {
        events += decode(schema, file, |batch| aggregate(batch, approx, &mut groups))?;
    }
    let aggregate_pass = Pass {
        events,
        elapsed: started.elapsed(),
    };
    let found = groups.values().map(HashMap::len).sum();
    // The results are read, so the work cannot be skipped.
    let total: u64 = groups
        .values()
        .flat_map(|g| g.values())
        .map(|g| g.count + g.users.len() as u64)
        .sum();
    anyhow::ensure!(total >= events, "the aggregation lost rows");
    Ok(Ceiling {
        decode: decode_pass,
        decode_and_aggregate: aggregate_pass,
        groups: found,
    })
}

fn aggregate(
    batch: &RecordBatch,
    approx: &AggregateSpec,
    groups: &mut HashMap<i64, HashMap<String, Group>>,
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
