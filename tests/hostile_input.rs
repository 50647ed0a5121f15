//! Hostile records in the middle of the reference stream (times at and past the edges of what
//! a timestamp holds, bytes that are not UTF-8, deep nesting, huge numbers, oversized records
//! and lines): every one is a dead letter or late, the job runs to the end, and the table
//! equals the ground truth computed without them.

mod support;

use support::*;

/// The job's `max_record_bytes`, small enough that oversized records fit in a Kafka message.
const MAX_RECORD_BYTES: &str = "65536";

/// Generator options: 1 % late, 1 % malformed and 0.5 % hostile records.
fn hostile_input() -> Vec<&'static str> {
    let hostile = [
        "--hostile-fraction",
        "0.005",
        "--max-record-bytes",
        MAX_RECORD_BYTES,
    ];
    [&BAD_INPUT[..], &hostile[..]].concat()
}

/// What the ground truth must also find: the reasons hostile records were set aside for.
fn verify_hostile(events: &std::path::Path, dir: &std::path::Path) -> String {
    let args = [
        "--max-record-bytes",
        MAX_RECORD_BYTES,
        "--expect-reason",
        "event time out of range",
        "--expect-reason",
        "exceeds max_record_bytes",
        "--expect-reason",
        "ahead of processing time",
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    verify(events, dir, &args)
}

#[test]
fn hostile_records_in_every_partition_are_set_aside_and_the_table_is_exact() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let gen_args = [
        &["--users", "20000", "--span", "4h", "--out-of-order", "2m"][..],
        &hostile_input(),
    ]
    .concat();
    let events = gen_events(&broker, dir.path(), 8, 200_000, &gen_args);
    let source = format!(
        "{}  max_record_bytes: {MAX_RECORD_BYTES}\n",
        kafka_source(&broker.address, 20_000)
    );
    job_with_source(dir.path(), &source, &dir.path().display().to_string(), "");
    let stdout = run_local(dir.path(), 2);
    assert!(stdout.contains("executors 2"), "{stdout}");
    let report = verify_hostile(&events, dir.path());
    println!("{report}");
    // Hostile records went to every partition.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut partitions = std::collections::BTreeSet::new();
    for line in text.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        if rec.get("value_hex").is_some() {
            partitions.insert(rec["partition"].as_i64().unwrap());
        }
    }
    assert_eq!(
        partitions.len(),
        8,
        "records that are not UTF-8 in {partitions:?}"
    );
}

#[test]
fn hostile_lines_in_files_are_set_aside_and_long_lines_are_cut() {
    let tmp = tempfile::tempdir().unwrap();
    // Files of 20 minutes, 2 an epoch: a record late by an hour always meets a watermark past it.
    let gen_args = [&["--span", "4h"][..], &hostile_input()].concat();
    let (input, events) = gen_files(tmp.path(), 40_000, 12, &gen_args);
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let source = format!(
        "  files: {{path: \"{}\", max_files_per_trigger: 2}}\n  max_record_bytes: {MAX_RECORD_BYTES}\n",
        input.display()
    );
    job_with_source(&dir, &source, &dir.display().to_string(), "");
    run_local(&dir, 2);
    verify_hostile(&events, &dir);

    // A dead letter of a line keeps at most max_record_bytes of it: the line's beginning.
    let check = r#"
import os, sys
from deltalake import DeltaTable
limit = int(sys.argv[2])
rows = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
cut = 0
for r in rows:
    with open(r["topic"][len("file://"):], "rb") as f:
        line = f.read().split(b"\n")[r["offset"] - 1]
    assert len(r["value"]) <= limit, (len(r["value"]), r["error"])
    assert line.startswith(r["value"]), r["error"]
    if len(line) > limit:
        assert len(r["value"]) == limit and str(len(line)) in r["error"], r["error"]
        cut += 1
print(cut)
sys.stdout.flush()
os._exit(0)
"#;
    let out = run_ok(
        python()
            .args(["-c", check])
            .arg(dir.join("dead-letter"))
            .arg(MAX_RECORD_BYTES),
        "checking the dead letters",
    );
    let cut: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(cut > 0, "no line was cut");
}

/// The executors' decoder builds only the columns the reference query reads, scanning the
/// common record itself and leaving every other one to arrow-json: over the generator's
/// stream with its malformed and hostile records, it sets aside the same records for the same
/// reasons as arrow-json decoding every field, and reads the same values.
#[test]
fn the_projected_decoder_judges_the_generators_records_as_arrow_json_does() {
    use weir_common::decode::JsonDecoder;
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &hostile_input()].concat();
    let (input, _) = gen_files(tmp.path(), 40_000, 4, &gen_args);
    let root = tmp.path().display().to_string();
    let job_file = file_job_in(tmp.path(), &input.display().to_string(), 1, &root, "");
    let text = std::fs::read_to_string(job_file).unwrap();
    let job = weir_common::job::parse_job(&text, tmp.path()).unwrap();
    let max: usize = MAX_RECORD_BYTES.parse().unwrap();
    let read = job.columns_read();
    assert_eq!(read, ["timestamp", "event_type", "user_id", "event_id"]);
    let projected = JsonDecoder::reading(job.input_schema.clone(), &read, max);
    let whole = JsonDecoder::new(job.input_schema.clone(), max).without_scanner();
    let columns: Vec<usize> = projected
        .schema()
        .fields()
        .iter()
        .map(|f| job.input_schema.index_of(f.name()).unwrap())
        .collect();
    let (mut rows, mut bad) = (0, 0);
    for file in std::fs::read_dir(&input).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        let lines: Vec<&[u8]> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for chunk in lines.chunks(4096) {
            let expected = whole.decode(chunk);
            let actual = projected.decode_within(chunk, &[&bytes]);
            assert_eq!(actual.bad, expected.bad);
            assert_eq!(actual.good, expected.good);
            let concat = |d: &weir_common::decode::Decoded, schema| {
                arrow::compute::concat_batches(schema, &d.batches).unwrap()
            };
            let want = concat(&expected, whole.schema()).project(&columns).unwrap();
            assert_eq!(concat(&actual, projected.schema()), want);
            rows += actual.good.len();
            bad += actual.bad.len();
        }
    }
    assert!(rows > 30_000 && bad > 300, "{rows} rows, {bad} set aside");
}
