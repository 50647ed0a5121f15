//! Test harness: a real Kafka-protocol broker (tansu) on 127.0.0.1, and helpers to run `weir`.

#![allow(dead_code)]

pub mod admin;
pub mod chaos;
pub mod cluster;
pub mod http;
pub mod local_run;
pub mod prometheus;
pub mod proxy;
pub mod s3;
pub mod server;
pub mod webdriver;
pub mod webhook;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;

/// Waits until a server started as `child` accepts connections on `address`; panics with its
/// log when it exits first or does not listen within `timeout`.
pub fn wait_for_port(child: &mut Child, address: &str, log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(address).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the server for {address} exited ({status}): {text}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listened on {address} within {timeout:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Generator options for late (by an hour) and malformed records, 1 % each.
pub const BAD_INPUT: [&str; 6] = [
    "--late-fraction",
    "0.01",
    "--late-by",
    "1h",
    "--malformed-fraction",
    "0.01",
];

/// A tansu broker on a free loopback port, stopped when dropped.
pub struct Broker {
    _server: server::Server,
    pub address: String,
}

/// A free loopback port for a server a test starts (`weir_common::testing::loopback`).
pub fn free_port() -> u16 {
    weir_common::testing::loopback::free_port().expect("a free loopback port")
}

impl Broker {
    pub fn start() -> Broker {
        // tansu resolves sqlite:// paths against its working directory (the server's).
        let server = server::Server::start(
            "tansu",
            "WEIR_TANSU",
            |address, _| {
                let url = format!("tcp://{address}");
                [
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ]
                .into_iter()
                .map(String::from)
                .chain(["--storage-engine".into(), "sqlite://tansu.db".into()])
                .collect()
            },
            Duration::from_secs(30),
        );
        Broker {
            address: server.address.clone(),
            _server: server,
        }
    }
}

/// The `weir` binary under test.
pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// `weir local` with its admin and metrics ports picked by the system, so tests run side by side.
pub fn weir_local() -> Command {
    let mut cmd = weir();
    cmd.args([
        "local",
        "--admin-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--ui-listen",
        "127.0.0.1:0",
    ]);
    cmd
}

/// Runs a command, failing the test with its output when it does not succeed.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Python with the `deltalake` package (scripts/setup.sh installs it).
pub fn python() -> Command {
    Command::new(std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".into()))
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The reference job (docs/architecture.md), pointed at `broker` and at tables under `dir`.
pub fn reference_job(dir: &Path, broker: &str, max_per_trigger: u64) -> PathBuf {
    reference_job_in(dir, broker, max_per_trigger, &dir.display().to_string(), "")
}

/// The reference job with its checkpoint and tables under `root` (a path or URL), and `extra`
/// lines of YAML; the job file is written into `dir`.
pub fn reference_job_in(
    dir: &Path,
    broker: &str,
    max_per_trigger: u64,
    root: &str,
    extra: &str,
) -> PathBuf {
    job_with_source(dir, &kafka_source(broker, max_per_trigger), root, extra)
}

/// The lines under `source:` that read the reference topic of `broker`.
pub fn kafka_source(broker: &str, max_per_trigger: u64) -> String {
    format!(
        r#"  kafka:
    bootstrap_servers: {broker}
    topic: web-events
    starting_offsets: earliest
    fail_on_data_loss: false
    max_offsets_per_trigger: {max_per_trigger}
"#
    )
}

/// The reference job reading JSON-lines files under `input` (a path or URL), at most
/// `max_files` per epoch, with its checkpoint and tables under `root`.
pub fn file_job_in(dir: &Path, input: &str, max_files: u64, root: &str, extra: &str) -> PathBuf {
    let source = format!("  files: {{path: \"{input}\", max_files_per_trigger: {max_files}}}\n");
    job_with_source(dir, &source, root, extra)
}

/// The reference job reading `source` (the lines under `source:`), with its checkpoint and
/// tables under `root` and `extra` lines of YAML; the job file is written into `dir`.
pub fn job_with_source(dir: &Path, source: &str, root: &str, extra: &str) -> PathBuf {
    let job = weir_common::job::reference::job_file("realtime-analytics", source, root);
    let path = dir.join("job.yaml");
    std::fs::write(&path, format!("{job}{extra}")).expect("writing the job file");
    path
}

/// Switches the reference job in `job` to update output mode.
pub fn set_update_mode(job: &Path) {
    let text = std::fs::read_to_string(job).expect("job file");
    let last_aggregate = "    approx_unique: approx_count_distinct(event_id)\n";
    assert!(
        text.contains(last_aggregate),
        "not the reference job: {text}"
    );
    let text = text.replace(
        last_aggregate,
        &format!("{last_aggregate}  output_mode: update\n"),
    );
    std::fs::write(job, text).expect("job file");
}

/// `weir gen` of the reference events (seeded), every record also written to `events`.
fn gen_command(count: u64, extra: &[&str], events: &Path) -> Command {
    let mut cmd = weir();
    cmd.args(["gen", "--count", &count.to_string()])
        .args(["--start", "2026-01-01T00:00:00Z", "--seed", "7"])
        .args(extra)
        .arg("--jsonl")
        .arg(events);
    cmd
}

/// Runs `weir gen` into `topic` of `broker` and the JSON-lines file it returns.
pub fn gen_events(
    broker: &Broker,
    dir: &Path,
    partitions: u32,
    count: u64,
    extra: &[&str],
) -> PathBuf {
    let events = dir.join("events.jsonl");
    run_ok(
        gen_command(count, extra, &events)
            .args(["--brokers", &broker.address, "--topic", "web-events"])
            .args(["--partitions", &partitions.to_string()]),
        "weir gen",
    );
    events
}

/// Runs `weir gen` into `files` JSON-lines files in `dir/input`; answers that directory and
/// the ground-truth file.
pub fn gen_files(dir: &Path, count: u64, files: u64, extra: &[&str]) -> (PathBuf, PathBuf) {
    let events = dir.join("events.jsonl");
    let input = dir.join("input");
    run_ok(
        gen_command(count, extra, &events)
            .arg("--out-dir")
            .arg(&input)
            .args(["--files", &files.to_string()]),
        "weir gen",
    );
    (input, events)
}

/// `weir local` for the job in `dir/job.yaml` on `executors` executors on the job's own
/// trigger (it runs until stopped), working in `dir/work`, its log on stdout and nothing on
/// stderr.
pub fn local_job_running(dir: &Path, executors: usize) -> Command {
    let mut cmd = weir_local();
    cmd.arg("--job")
        .arg(dir.join("job.yaml"))
        .args(["--executors", &executors.to_string()])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    cmd
}

/// `weir local` for the job in `dir/job.yaml` on `executors` executors until the input is
/// consumed, working in `dir/work`.
pub fn local_job(dir: &Path, executors: usize) -> Command {
    let mut cmd = weir_local();
    cmd.arg("--job")
        .arg(dir.join("job.yaml"))
        .args(["--executors", &executors.to_string()])
        .args(["--trigger", "available-now", "--work-dir"])
        .arg(dir.join("work"));
    cmd
}

/// Runs [`local_job`]; answers its standard output.
pub fn run_local(dir: &Path, executors: usize) -> String {
    let out = run_ok(&mut local_job(dir, executors), "weir local");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("done: the output table"), "{stdout}");
    stdout
}

/// Compares the tables of the job in `dir` with the ground truth of `events`.
pub fn verify(events: &Path, dir: &Path, extra: &[&std::ffi::OsStr]) -> String {
    verify_in(events, &dir.display().to_string(), extra)
}

/// Compares the tables of the job whose checkpoint and tables are under `root` (a path or
/// URL; pass `--s3-endpoint` in `extra` for s3://) with the ground truth of `events`.
pub fn verify_in(events: &Path, root: &str, extra: &[&std::ffi::OsStr]) -> String {
    let mut cmd = python();
    cmd.arg(repo_path("tests/verify_reference.py"))
        .arg("--events")
        .arg(events)
        .args(["--table", &format!("{root}/aggregated")])
        .args(["--dead-letter", &format!("{root}/dead-letter")])
        .args(["--checkpoint", &format!("{root}/checkpoint")])
        .args(extra);
    for (k, v) in s3::CREDENTIALS {
        cmd.env(k, v);
    }
    let out = run_ok(&mut cmd, "ground-truth comparison");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("OK: the Delta table equals the ground truth"),
        "{report}"
    );
    println!("{report}");
    report
}

/// The records under `checkpoint/<kind>` of the job in `dir` (`offsets`: the plans,
/// `commits`: the decisions), in epoch order.
pub fn checkpoint_records(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let mut records: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("checkpoint").join(kind))
        .unwrap_or_else(|e| panic!("checkpoint/{kind}: {e}"))
        .filter_map(|e| {
            let path = e.expect("checkpoint entry").path();
            record_epoch(&path).map(|epoch| (epoch, path))
        })
        .collect();
    records.sort();
    records
        .iter()
        .filter_map(|(_, p)| {
            // A running driver prunes records past its retention: one listed a moment ago
            // may be gone by the time it is read.
            let text = match std::fs::read_to_string(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                read => read.expect("checkpoint record"),
            };
            Some(serde_json::from_str(&text).expect("checkpoint record is JSON"))
        })
        .collect()
}

/// The epoch a checkpoint record file is named for; `None` for anything else in the folder,
/// such as the staging file (`<epoch>#<n>`) a process killed mid-write leaves on a local
/// filesystem, which the log itself never lists.
pub fn record_epoch(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .trim_end_matches(".json")
        .parse()
        .ok()
}

/// The decision records of the checkpoint in `dir`, in epoch order.
pub fn commit_records(dir: &Path) -> Vec<serde_json::Value> {
    checkpoint_records(dir, "commits")
}

/// The pid of the process whose command line contains `needle`.
pub fn pid_of(needle: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
}

/// Writes the values of `weir gen --jsonl` into partition 0 of `web-events`, in order (for
/// librdkafka's mock broker, which does not answer the CreateTopics request `weir gen` sends).
pub fn produce_events(brokers: &str, events: &Path) {
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let text = std::fs::read_to_string(events).expect("events");
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("event line");
        let value = record["value"].as_str().expect("value");
        loop {
            match producer.send(
                rdkafka::producer::BaseRecord::<(), str>::to("web-events")
                    .partition(0)
                    .payload(value),
            ) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::error::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}
