//! The Kafka sink against tansu (SQLite storage): every emitted row reaches the topic, once
//! unless the driver dies between sending an epoch and committing its marker, in update mode
//! under kills of the driver around the epoch's decision and its delivery, and in append mode.
//! tansu 0.6 does not end transactions (it routes no EndTxn, and serves `read_committed`
//! readers records of open transactions), so exactly-once delivery is shown to stop with a
//! clear error there.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use support::chaos::{run_with_faults, Fault};
use support::cluster::{Cluster, Role};
use support::{
    commit_records, gen_events, produce_events, python, reference_job, run_local, run_ok,
    set_update_mode, verify, weir, Broker, BAD_INPUT,
};

const TOPIC: &str = "window-counts";
const PARTITIONS: i32 = 3;

fn create_topic(broker: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    let results = runtime
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// One record of the sink's topic.
#[derive(Debug, Clone)]
struct Sent {
    key: Option<String>,
    value: Value,
    job: String,
    epoch: u64,
}

/// Every record of the topic, read to the end of each partition.
fn read_topic(broker: &str) -> Vec<Sent> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions
            .add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let mut at_end = BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the topic was not read to its end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {TOPIC}: {e}"),
            Some(Ok(m)) => {
                let headers = m.headers().expect("the sink's headers");
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8(v.to_vec()).unwrap())
                        .unwrap_or_else(|| panic!("no {name} header"))
                };
                out.push(Sent {
                    key: m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    value: serde_json::from_slice(m.payload().unwrap()).unwrap(),
                    job: header("weir.job"),
                    epoch: header("weir.epoch").parse().unwrap(),
                });
            }
        }
    }
    out
}

/// (window start, window end, event_type) of a record's value.
fn window_key(v: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap().to_string();
    (
        text(&v["window"]["start"]),
        text(&v["window"]["end"]),
        text(&v["event_type"]),
    )
}

/// The output table's rows as JSON objects keyed like [`window_key`], read with Python's
/// deltalake, timestamps written as Arrow's JSON writer writes them.
fn table_rows(table: &Path) -> BTreeMap<(String, String, String), Value> {
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
rows = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ("." + t.strftime("%f") if t.microsecond else "") + "Z"
print(json.dumps([
    {"start": ts(r["window"]["start"]), "end": ts(r["window"]["end"]),
     "event_type": r["event_type"], "event_count": r["event_count"],
     "unique_users": r["unique_users"], "approx_unique": r["approx_unique"]}
    for r in rows
]), flush=True)
os._exit(0)
"#;
    let out = python().args(["-c", script]).arg(table).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|r| {
            let key = (
                r["start"].as_str().unwrap().to_string(),
                r["end"].as_str().unwrap().to_string(),
                r["event_type"].as_str().unwrap().to_string(),
            );
            (key, r)
        })
        .collect()
}

/// The reference job reading `broker`'s topic, in `dir`, with a Kafka sink of `delivery`.
fn job_with_kafka_sink(dir: &Path, broker: &str, delivery: &str) -> std::path::PathBuf {
    job_with_kafka_options(dir, broker, delivery, "{}")
}

/// The same with the sink's librdkafka `options` (a YAML map).
fn job_with_kafka_options(
    dir: &Path,
    broker: &str,
    delivery: &str,
    options: &str,
) -> std::path::PathBuf {
    let job = reference_job(dir, broker, 4_000);
    let text = std::fs::read_to_string(&job).unwrap();
    let sink = format!(
        "sinks:\n  - kafka: {{bootstrap_servers: \"{broker}\", topic: {TOPIC}, delivery: {delivery}, options: {options}}}\n"
    );
    std::fs::write(&job, text.replacen("sinks:\n", &sink, 1)).unwrap();
    job
}

/// The figures `emitted` of each decision, by epoch.
fn emitted_per_epoch(dir: &Path) -> BTreeMap<u64, u64> {
    commit_records(dir)
        .iter()
        .map(|d| {
            (
                d["epoch"].as_u64().unwrap(),
                d["stats"]["windows_emitted"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn update_mode_rows_reach_the_topic_once_unless_the_driver_dies_between_send_and_marker() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let events = gen_events(&broker, tmp.path(), 4, 24_000, &gen_args);
    create_topic(&broker.address);
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let job = job_with_kafka_sink(&dir, &broker.address, "at_least_once");
    set_update_mode(&job);
    let mut cluster = Cluster::new(&job, &dir, 2, &[]);
    run_with_faults(
        &mut cluster,
        &[
            // Killed with epoch 1's records acknowledged but its marker not committed: the
            // next driver sends the epoch again (at least once).
            Fault::kill(Role::Driver, "kafka-sent", 1, Role::Driver),
            // Killed after the decision, before any output: the restart sends the epoch.
            Fault::kill(Role::Driver, "decided", 2, Role::Driver),
            // Killed after every output took the epoch: the marker says so, nothing is sent
            // again.
            Fault::kill(Role::Driver, "committed", 3, Role::Driver),
        ],
    );
    verify(
        &events,
        &dir,
        &["--output-mode".as_ref(), "update".as_ref()],
    );

    let sent = read_topic(&broker.address);
    let mut per_epoch: BTreeMap<u64, u64> = BTreeMap::new();
    let mut copies: BTreeMap<(u64, (String, String, String)), u64> = BTreeMap::new();
    for r in &sent {
        assert_eq!(r.job, "realtime-analytics");
        assert_eq!(
            r.key.as_deref(),
            r.value["event_type"].as_str(),
            "keyed by the group"
        );
        *per_epoch.entry(r.epoch).or_default() += 1;
        *copies.entry((r.epoch, window_key(&r.value))).or_default() += 1;
    }
    // Every epoch's rows once, but epoch 1's twice: sent again whole after the kill.
    let mut expected = emitted_per_epoch(&dir);
    *expected.get_mut(&1).expect("epoch 1 emitted rows") *= 2;
    assert_eq!(per_epoch, expected);
    assert!(copies
        .iter()
        .all(|((epoch, _), n)| *n == if *epoch == 1 { 2 } else { 1 }));
    // The latest record of every window is the table's row.
    let mut latest: BTreeMap<(String, String, String), &Sent> = BTreeMap::new();
    for r in &sent {
        let key = window_key(&r.value);
        if latest.get(&key).is_none_or(|l| l.epoch < r.epoch) {
            latest.insert(key, r);
        }
    }
    let table = table_rows(&dir.join("aggregated"));
    assert_eq!(
        latest.keys().collect::<Vec<_>>(),
        table.keys().collect::<Vec<_>>()
    );
    for (key, row) in &table {
        let sent = &latest[key].value;
        for column in ["event_count", "unique_users", "approx_unique"] {
            assert_eq!(sent[column], row[column], "{column} of {key:?}");
        }
    }
}

#[test]
fn append_mode_sends_every_closed_window_once_through_a_small_producer_queue() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let gen_args = [&["--span", "4h"][..], &BAD_INPUT].concat();
    let events = gen_events(&broker, tmp.path(), 8, 24_000, &gen_args);
    create_topic(&broker.address);
    // A producer queue of 5 records: every epoch has more rows than the queue holds.
    job_with_kafka_options(
        tmp.path(),
        &broker.address,
        "at_least_once",
        "{queue.buffering.max.messages: '5'}",
    );
    run_local(tmp.path(), 2);
    verify(&events, tmp.path(), &[]);
    let sent = read_topic(&broker.address);
    let table = table_rows(&tmp.path().join("aggregated"));
    let mut windows: Vec<_> = sent.iter().map(|r| window_key(&r.value)).collect();
    windows.sort();
    assert_eq!(windows, table.keys().cloned().collect::<Vec<_>>());
    for r in &sent {
        let row = &table[&window_key(&r.value)];
        for column in ["event_count", "unique_users", "approx_unique"] {
            assert_eq!(r.value[column], row[column], "{column}");
        }
    }
}

/// tansu 0.6 takes a transactional producer's records but not the end of its transaction:
/// exactly-once delivery stops the job with an error that names the alternative, and sends
/// nothing a committed reader sees.
#[test]
fn a_broker_without_transactions_stops_exactly_once_delivery_with_a_clear_error() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    gen_events(&broker, tmp.path(), 4, 4_000, &[]);
    create_topic(&broker.address);
    job_with_kafka_sink(tmp.path(), &broker.address, "exactly_once");
    let out = support::local_job(tmp.path(), 1).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not support Kafka transactions")
            && stderr.contains("delivery: at_least_once"),
        "{stderr}"
    );
}

/// librdkafka's mock broker takes the whole transaction protocol (it checks transactional
/// ids, producer ids and epochs, and coordinators; it does not hide aborted records or keep
/// transactional offsets): exactly-once delivery runs it end to end, and every closed window
/// reaches the topic once.
#[test]
fn exactly_once_delivery_runs_the_transaction_protocol_end_to_end() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("web-events", 1, 1).expect("source topic");
    mock.create_topic(TOPIC, PARTITIONS, 1).expect("sink topic");
    let brokers = mock.bootstrap_servers();
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("events.jsonl");
    run_ok(
        weir()
            .args([
                "gen",
                "--partitions",
                "1",
                "--count",
                "8000",
                "--span",
                "1h",
            ])
            .args(["--start", "2026-01-01T00:00:00Z", "--seed", "7"])
            .arg("--jsonl")
            .arg(&events),
        "weir gen",
    );
    produce_events(&brokers, &events);
    job_with_kafka_sink(tmp.path(), &brokers, "exactly_once");
    run_local(tmp.path(), 2);
    verify(&events, tmp.path(), &[]);
    let sent = read_topic(&brokers);
    let table = table_rows(&tmp.path().join("aggregated"));
    let mut windows: Vec<_> = sent.iter().map(|r| window_key(&r.value)).collect();
    windows.sort();
    assert_eq!(windows, table.keys().cloned().collect::<Vec<_>>());
}

/// A sink topic that does not exist stops the job at start, named, instead of waiting out
/// librdkafka's message timeout at the first epoch.
#[test]
fn a_missing_sink_topic_stops_the_job_at_start() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    gen_events(&broker, tmp.path(), 1, 100, &[]);
    job_with_kafka_sink(tmp.path(), &broker.address, "at_least_once");
    let out = support::local_job(tmp.path(), 1).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("Kafka sink {TOPIC}: the topic does not exist")),
        "{stderr}"
    );
}
