//! Decoder shoot-out: each contender turns the same JSON lines (`weir gen --files 1` output)
//! into the four columns the reference query reads (event_id, user_id, event_type, timestamp)
//! in chunks of 4 096, as the executors do, and the best of ROUNDS passes is printed in
//! records per second, one thread.
//!
//! - weir's decoder (`JsonDecoder::reading`): what the executors run, with its checks of every
//!   field and its fallback to arrow-json;
//! - sonic-rs: its lazy object iterator (values copied, or their raw text sliced) and
//!   `get_many` (which does not check the fields it skips). sonic-rs picks its SIMD code at
//!   compile time: a build for any x86-64 (weir's) gets its portable code; build with
//!   `RUSTFLAGS="-C target-cpu=native"` to see it with AVX2;
//! - simd-json's tape (SIMD chosen at run time), alone and with the checks weir's decoder makes
//!   (each field of the schema once and of its type, the map's values strings);
//! - arrow-json building every column.
//!
//! The other contenders parse the time with weir's own parser (`weir_common::decode::utc_micros`).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use weir_common::decode::utc_micros as micros;

const CHUNK: usize = 4096;

fn schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let map = DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("keys", DataType::Utf8, false),
                    Field::new("values", DataType::Utf8, true),
                ]
                .into(),
            ),
            false,
        )),
        false,
    );
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("timestamp", ts, false),
        Field::new("page_url", DataType::Utf8, true),
        Field::new("properties", map, true),
    ]))
}

fn lines(file: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', file) {
        if end > start {
            out.push(&file[start..end]);
        }
        start = end + 1;
    }
    out
}

struct Cols {
    id: StringBuilder,
    user: StringBuilder,
    ty: StringBuilder,
    ts: TimestampMicrosecondBuilder,
}

impl Cols {
    fn new() -> Self {
        Self {
            id: StringBuilder::with_capacity(CHUNK, CHUNK * 32),
            user: StringBuilder::with_capacity(CHUNK, CHUNK * 16),
            ty: StringBuilder::with_capacity(CHUNK, CHUNK * 16),
            ts: TimestampMicrosecondBuilder::with_capacity(CHUNK).with_timezone("UTC"),
        }
    }
    fn finish(&mut self) -> usize {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.ty.finish()),
            Arc::new(self.ts.finish()),
        ];
        cols[0].len()
    }
}

/// Runs `per_line` over every line into columns of `CHUNK` rows, as the executors decode;
/// the rows built.
fn by_chunks(lines: &[&[u8]], mut per_line: impl FnMut(&[u8], &mut Cols)) -> u64 {
    let mut rows = 0;
    for chunk in lines.chunks(CHUNK) {
        let mut c = Cols::new();
        for &line in chunk {
            per_line(line, &mut c);
        }
        rows += c.finish() as u64;
    }
    rows
}

fn sonic_iter(lines: &[&[u8]]) -> u64 {
    by_chunks(lines, |line, c| {
        let (mut id, mut user, mut ty, mut ts) = (None, None, None, None);
        for kv in sonic_rs::to_object_iter(line) {
            let (k, v) = kv.expect("valid");
            use sonic_rs::JsonValueTrait;
            match &*k {
                "event_id" => id = v.as_str().map(str::to_owned),
                "user_id" => user = v.as_str().map(str::to_owned),
                "event_type" => ty = v.as_str().map(str::to_owned),
                "timestamp" => ts = v.as_str().and_then(|s| micros(s.as_bytes())),
                _ => {}
            }
        }
        let (Some(id), Some(user), Some(ty), Some(ts)) = (id, user, ty, ts) else {
            panic!("bad record");
        };
        c.id.append_value(id);
        c.user.append_value(user);
        c.ty.append_value(ty);
        c.ts.append_value(ts);
    })
}

/// sonic-rs's lazy iterator without allocating each value (raw borrowed slices); strings with
/// escapes would need the owned path.
fn sonic_iter_raw(lines: &[&[u8]]) -> u64 {
    by_chunks(lines, |line, c| {
        let mut got = 0u8;
        for kv in sonic_rs::to_object_iter(line) {
            let (k, v) = kv.expect("valid");
            let raw = v.as_raw_str();
            let inner = &raw[1..raw.len() - 1];
            match &*k {
                "event_id" => {
                    c.id.append_value(inner);
                    got |= 1
                }
                "user_id" => {
                    c.user.append_value(inner);
                    got |= 2
                }
                "event_type" => {
                    c.ty.append_value(inner);
                    got |= 4
                }
                "timestamp" => {
                    c.ts.append_value(micros(inner.as_bytes()).expect("time"));
                    got |= 8
                }
                _ => {}
            }
        }
        assert_eq!(got, 15);
    })
}

fn sonic_get_many(lines: &[&[u8]]) -> u64 {
    let mut tree = sonic_rs::PointerTree::new();
    for k in ["event_id", "user_id", "event_type", "timestamp"] {
        tree.add_path(&[k]);
    }
    by_chunks(lines, |line, c| {
        let got = sonic_rs::get_many(line, &tree).expect("valid");
        use sonic_rs::JsonValueTrait;
        let s = |i: usize| {
            got[i]
                .as_ref()
                .and_then(|v| v.as_str())
                .expect("field")
                .to_owned()
        };
        c.id.append_value(s(0));
        c.user.append_value(s(1));
        c.ty.append_value(s(2));
        c.ts.append_value(micros(s(3).as_bytes()).expect("time"));
    })
}

fn simd_tape(lines: &[&[u8]]) -> u64 {
    use simd_json::prelude::*;
    let mut buffers = simd_json::Buffers::new(512);
    let mut scratch: Vec<u8> = Vec::with_capacity(1024);
    by_chunks(lines, |line, c| {
        scratch.clear();
        scratch.extend_from_slice(line);
        let tape = simd_json::to_tape_with_buffers(&mut scratch, &mut buffers).expect("valid");
        let v = tape.as_value();
        let obj = v.as_object().expect("object");
        let s = |k: &str| obj.get(k).and_then(|v| v.into_string()).expect("field");
        c.id.append_value(s("event_id"));
        c.user.append_value(s("user_id"));
        c.ty.append_value(s("event_type"));
        c.ts.append_value(micros(s("timestamp").as_bytes()).expect("time"));
    })
}

/// simd-json's tape with what weir's scanner checks: every top-level field matched to the
/// schema, each once, of its type; the map's values strings; unknown fields skipped.
fn simd_full(lines: &[&[u8]]) -> u64 {
    use simd_json::{Node, StaticNode};
    const NAMES: [&str; 6] = [
        "event_id",
        "user_id",
        "event_type",
        "timestamp",
        "page_url",
        "properties",
    ];
    let mut buffers = simd_json::Buffers::new(1024);
    let mut scratch: Vec<u8> = Vec::with_capacity(2048);
    let mut spare = simd_json::Tape(Vec::new());
    by_chunks(lines, |line, c| {
        scratch.clear();
        scratch.extend_from_slice(line);
        let len = scratch.len();
        scratch.resize(len + simd_json::INPUT_PADDING, 0);
        let mut tape = std::mem::replace(&mut spare, simd_json::Tape(Vec::new())).reset();
        simd_json::fill_tape_padded(&mut scratch, len, &mut buffers, &mut tape).expect("valid");
        let nodes = &tape.0;
        let Node::Object { len: pairs, .. } = nodes[0] else {
            panic!("object")
        };
        let mut seen = 0u8;
        let mut vals: [&str; 4] = [""; 4];
        let mut i = 1;
        let mut next = 0;
        for _ in 0..pairs {
            let Node::String(k) = nodes[i] else {
                panic!("key")
            };
            let v = i + 1;
            let skip = match nodes[v] {
                Node::Object { count, .. } | Node::Array { count, .. } => count,
                _ => 0,
            };
            let col = if NAMES.get(next) == Some(&k) {
                Some(next)
            } else {
                NAMES.iter().position(|n| *n == k)
            };
            if let Some(col) = col {
                next = col + 1;
                assert!(seen & (1 << col) == 0, "twice");
                seen |= 1 << col;
                match (col, nodes[v]) {
                    (0..=3, Node::String(s)) => vals[col] = s,
                    (4, Node::String(_)) | (4, Node::Static(StaticNode::Null)) => {}
                    (5, Node::Object { len: n, .. }) => {
                        for j in 0..n {
                            assert!(matches!(nodes[v + 2 + 2 * j], Node::String(_)), "map value");
                        }
                    }
                    _ => panic!("type"),
                }
            }
            i = v + 1 + skip;
        }
        assert!(seen & 15 == 15);
        c.id.append_value(vals[0]);
        c.user.append_value(vals[1]);
        c.ty.append_value(vals[2]);
        c.ts.append_value(micros(vals[3].as_bytes()).expect("time"));
        spare = tape.reset();
    })
}

fn weir_scanner(file: &[u8], lines: &[&[u8]]) -> u64 {
    let decoder = weir_common::decode::JsonDecoder::reading(
        schema(),
        &["event_id", "user_id", "event_type", "timestamp"],
        1 << 20,
    );
    let mut rows = 0;
    for chunk in lines.chunks(CHUNK) {
        let d = decoder.decode_within(chunk, &[file]);
        assert!(d.bad.is_empty());
        rows += d.batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    }
    rows
}

fn arrow_json(file: &[u8], _lines: &[&[u8]]) -> u64 {
    let reader = arrow::json::ReaderBuilder::new(schema())
        .with_batch_size(CHUNK)
        .build(std::io::Cursor::new(file))
        .expect("arrow-json reader");
    reader
        .map(|b| b.expect("arrow-json decodes").num_rows() as u64)
        .sum()
}

/// A contender's name and one pass of it over every line (the rows it built).
type Contender<'a> = (&'static str, Box<dyn Fn() -> u64 + 'a>);

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: decoder-shootout FILE [ROUNDS] [NAME]");
    let rounds: usize = args
        .next()
        .map_or(5, |r| r.parse().expect("ROUNDS: a number"));
    let only = args.next();
    let file = std::fs::read(&path).expect("reading FILE");
    let lines = lines(&file);
    let mut contenders: Vec<Contender<'_>> = vec![
        (
            "weir's decoder (JsonDecoder::reading)",
            Box::new(|| weir_scanner(&file, &lines)),
        ),
        (
            "sonic-rs to_object_iter, owned values",
            Box::new(|| sonic_iter(&lines)),
        ),
        (
            "sonic-rs to_object_iter, raw values",
            Box::new(|| sonic_iter_raw(&lines)),
        ),
        (
            "sonic-rs get_many (no full validation)",
            Box::new(|| sonic_get_many(&lines)),
        ),
        (
            "simd-json tape (copy per record)",
            Box::new(|| simd_tape(&lines)),
        ),
        (
            "simd-json tape, weir's checks",
            Box::new(|| simd_full(&lines)),
        ),
        (
            "arrow-json, every field",
            Box::new(|| arrow_json(&file, &lines)),
        ),
    ];
    if let Some(only) = only {
        contenders.retain(|(n, _)| n.contains(&only));
    }
    let mut best = vec![f64::MAX; contenders.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in contenders.iter().enumerate() {
            let t = Instant::now();
            let n = f();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(n, lines.len() as u64);
            best[i] = best[i].min(s);
        }
    }
    for ((name, _), s) in contenders.iter().zip(best) {
        println!("{:>12.0} records/s  {name}", lines.len() as f64 / s);
    }
}
