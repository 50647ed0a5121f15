use super::*;
use crate::query::window::WindowSpec;

const GOOD: &str = r#"
name: realtime-analytics
source:
  kafka:
    bootstrap_servers: ${TEST_BROKERS}
    topic: web-events
    starting_offsets: earliest
    fail_on_data_loss: false
    max_offsets_per_trigger: 1000
  format: json
  schema:
    event_id: string not null
    user_id: string not null
    event_type: string not null
    page_url: string
    timestamp: timestamp not null
    properties: map<string,string>
query:
  watermark: {column: timestamp, delay: 10m}
  window: {column: timestamp, size: 5m, slide: 5m, start: 0s}
  group_by: [event_type]
  aggregates:
    event_count: count(*)
    unique_users: count(distinct user_id)
    approx_unique: approx_count_distinct(event_id)
  output_mode: append
trigger: 30s
checkpoint_location: /tmp/weir/checkpoint
sinks:
  - delta: {path: /tmp/weir/aggregated, partition_by: [event_type]}
dead_letter: {delta: {path: file:///tmp/weir/dead-letter}}
"#;

fn windows(job: &JobSpec) -> &WindowQuery {
    job.queries[0].query.windows().expect("a window query")
}

fn env(name: &str) -> Option<String> {
    (name == "TEST_BROKERS").then(|| "127.0.0.1:9092".to_string())
}

fn parse(text: &str) -> Result<JobSpec, JobError> {
    let substituted = substitute_env(text, env)?;
    let raw: RawJob =
        serde_yaml_ng::from_str(&substituted).map_err(|e| JobError::new("yaml", e.to_string()))?;
    validate(raw, Path::new("/work"))
}

/// Applies `from -> to` to the good job and returns the error it must produce.
fn error_of(from: &str, to: &str) -> JobError {
    assert!(GOOD.contains(from), "test bug: `{from}` not in the job");
    let text = GOOD.replacen(from, to, 1);
    match parse(&text) {
        Ok(_) => panic!("`{to}` was accepted"),
        Err(e) => e,
    }
}

#[test]
fn the_reference_job_parses() {
    let job = parse(GOOD).unwrap();
    assert_eq!(job.kafka().unwrap().bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(
        job.kafka().unwrap().starting_offsets,
        StartingOffsets::Earliest
    );
    assert_eq!(job.watermark_delay_micros, 600_000_000);
    assert_eq!(windows(&job).window, WindowSpec::tumbling(300_000_000));
    assert_eq!(job.trigger, Trigger::Interval(Duration::from_secs(30)));
    assert_eq!(job.checkpoint_url, "file:///tmp/weir/checkpoint");
    assert_eq!(job.queries[0].output.url, "file:///tmp/weir/aggregated");
    assert_eq!(job.key_groups, DEFAULT_KEY_GROUPS);
    let names: Vec<&str> = windows(&job)
        .aggregates
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["event_count", "unique_users", "approx_unique"]);
    assert_eq!(job.checkpoint_retention, DEFAULT_CHECKPOINT_RETENTION);
    assert!(job.storage_options.is_empty());
    assert_eq!(job.queries[0].query.output_mode(), OutputMode::Append);
    let update = parse(&GOOD.replace("output_mode: append", "output_mode: update")).unwrap();
    assert_eq!(update.queries[0].query.output_mode(), OutputMode::Update);
    // Its MERGEs rewrite whole files: the table keeps them small, compacted to the same size.
    assert_eq!(job.queries[0].output.file_bytes, None);
    assert_eq!(
        update.queries[0].output.file_bytes,
        Some(upkeep::UPDATE_MODE_FILE_BYTES)
    );
    let compacted = GOOD
        .replace("output_mode: append", "output_mode: update")
        .replace(
            "partition_by: [event_type]}",
            "partition_by: [event_type], compact: {}}",
        );
    let compacted = parse(&compacted).unwrap();
    assert_eq!(
        compacted.queries[0]
            .output
            .upkeep
            .compact
            .map(|c| c.target_file_bytes),
        Some(upkeep::UPDATE_MODE_FILE_BYTES)
    );
    assert_ne!(update.fingerprint(), job.fingerprint());
    let with_s3 = GOOD.replace(
        "trigger: 30s",
        "trigger: 30s\ncheckpoint_retention: 3\nstorage_options: {aws_endpoint: \"http://127.0.0.1:9000\", aws_allow_http: \"true\"}",
    );
    let s3 = parse(&with_s3).unwrap();
    assert_eq!(s3.checkpoint_retention, 3);
    assert_eq!(s3.storage_options["aws_endpoint"], "http://127.0.0.1:9000");
    // What executors receive rebuilds the same job.
    let again = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert_eq!(again.queries[0].output, job.queries[0].output);
    assert_eq!(again.fingerprint(), job.fingerprint());
}

#[test]
fn environment_substitution() {
    let lookup = |n: &str| (n == "A").then(|| "x".to_string());
    assert_eq!(substitute_env("a${A}b", lookup).unwrap(), "axb");
    assert_eq!(substitute_env("${B:-d}", lookup).unwrap(), "d");
    assert_eq!(substitute_env("${A:-d}", lookup).unwrap(), "x");
    let e = substitute_env("k: 1\nv: ${MISSING}", lookup).unwrap_err();
    assert_eq!(e.field, "line 2");
    assert!(e.message.contains("MISSING is not set"));
    assert!(substitute_env("${A", lookup).is_err());
    assert!(substitute_env("${A B}", lookup).is_err());
}

#[test]
fn starting_offsets_forms() {
    let job = parse(&GOOD.replace(
        "starting_offsets: earliest",
        r#"starting_offsets: '{"0": 42, "1": -2}'"#,
    ))
    .unwrap();
    assert_eq!(
        job.kafka().unwrap().starting_offsets,
        StartingOffsets::Partitions(BTreeMap::from([(0, 42), (1, -2)]))
    );
    let job =
        parse(&GOOD.replace("starting_offsets: earliest", "starting_offsets: {0: 7}")).unwrap();
    assert_eq!(
        job.kafka().unwrap().starting_offsets,
        StartingOffsets::Partitions(BTreeMap::from([(0, 7)]))
    );
}

#[test]
fn available_now_and_sliding_windows() {
    let job = parse(
        &GOOD
            .replace("trigger: 30s", "trigger: available-now")
            .replace("slide: 5m, start: 0s", "slide: 1m, start: 30s"),
    )
    .unwrap();
    assert_eq!(job.trigger, Trigger::AvailableNow);
    assert_eq!(windows(&job).window.slide, 60_000_000);
    assert_eq!(windows(&job).window.start, 30_000_000);
}

#[test]
fn mistakes_name_the_field_and_what_was_expected() {
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        // (from, to, field must contain, message must contain)
        (
            "trigger: 30s",
            "trigger: 30s\ncheckpoint_retention: 0",
            "checkpoint_retention",
            "at least 1",
        ),
        (
            "delay: 10m",
            "delay: 10",
            "query.watermark.delay",
            "no unit",
        ),
        (
            "size: 5m",
            "size: five",
            "query.window.size",
            "not a duration",
        ),
        (
            "slide: 5m",
            "slide: 10m",
            "query.window",
            "slide must not be longer",
        ),
        (
            "user_id: string not null",
            "user_id: varchar",
            "source.schema.user_id",
            "unknown type",
        ),
        (
            "count(distinct user_id)",
            "count(distinct uid)",
            "query.aggregates.unique_users",
            "not in source.schema",
        ),
        (
            "count(*)",
            "median(*)",
            "query.aggregates.event_count",
            "unknown function",
        ),
        (
            "group_by: [event_type]",
            "group_by: [properties]",
            "query.group_by[0]",
            "cannot group by",
        ),
        (
            "group_by: [event_type]",
            "group_by: [kind]",
            "query.group_by[0]",
            "not in source.schema",
        ),
        (
            "column: timestamp, delay",
            "column: page_url, delay",
            "query.watermark.column",
            "must be a timestamp",
        ),
        (
            "starting_offsets: earliest",
            "starting_offsets: newest",
            "source.kafka.starting_offsets",
            "expected earliest",
        ),
        (
            "output_mode: append",
            "output_mode: complete",
            "query.output_mode",
            "use append or update",
        ),
        ("trigger: 30s", "trigger: 0s", "trigger", "positive"),
        (
            "partition_by: [event_type]",
            "partition_by: [user_id]",
            "sinks[0].delta.partition_by[0]",
            "not a group_by column",
        ),
        ("format: json", "format: avro", "source.format", "only json"),
        (
            "max_offsets_per_trigger: 1000",
            "max_offsets_per_trigger: 0",
            "source.kafka.max_offsets_per_trigger",
            "positive",
        ),
        (
            "checkpoint_location: /tmp/weir/checkpoint",
            "checkpoint_location: hdfs://x/y",
            "checkpoint_location",
            "unsupported scheme",
        ),
        (
            "${TEST_BROKERS}",
            "${NOT_SET_ANYWHERE}",
            "line 5",
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            "file:///tmp/weir/dead-letter",
            "/tmp/weir/aggregated",
            "dead_letter.delta.path",
            "must differ",
        ),
        (
            "sinks:",
            "sinks:\n  - pushgateway: {url: pushgateway:9091, job: weir}",
            "sinks[0].pushgateway.url",
            "expected an http:// or https:// URL",
        ),
        (
            "sinks:",
            "sinks:\n  - pushgateway: {url: 'http://pg:9091', job: weir, grouping: {job: x}}",
            "sinks[0].pushgateway.grouping.job",
            "label name other than `job`",
        ),
        (
            "trigger: 30s",
            "trigger: 30s\nalerts: {epoch_budget: 1m}",
            "alerts",
            "exactly one of webhook",
        ),
        (
            "trigger: 30s",
            "trigger: 30s\nalerts: {webhook: 'https://hooks.example/T0/secret-token', epoch_budget: 0s}",
            "alerts.epoch_budget",
            "positive",
        ),
    ];
    assert!(cases.len() >= 10);
    for (from, to, field, message) in cases {
        let e = error_of(from, to);
        assert!(
            e.field.contains(field) && e.message.contains(message),
            "`{to}` gave {e}, expected field {field} and `{message}`"
        );
    }
}

#[test]
fn structural_mistakes_are_reported_by_path() {
    // Unknown field (a typo), a missing required field, and a wrong type.
    for (from, to, expected) in [
        (
            "topic: web-events",
            "topik: web-events",
            "unknown field `topik`",
        ),
        ("    topic: web-events\n", "", "missing field `topic`"),
        (
            "partition_by: [event_type]}",
            "partition_by: [event_type], compact: {evry: 1m}}",
            "unknown field `evry`",
        ),
        (
            "fail_on_data_loss: false",
            "fail_on_data_loss: sometimes",
            "fail_on_data_loss",
        ),
    ] {
        let text = GOOD.replacen(from, to, 1);
        let e = parse_job(&text.replace("${TEST_BROKERS}", "b:1"), Path::new("/")).unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        assert!(e.field.starts_with("line "), "{e}");
    }
}

#[test]
fn pushgateway_sink_and_alerts() {
    let text = GOOD.replacen(
        "sinks:",
        "alerts: {webhook: 'https://hooks.example/T0/secret-token', epoch_budget: 2m}\nsinks:\n  - pushgateway: {url: 'http://127.0.0.1:9091', job: weir-streaming, grouping: {instance: eu}}",
        1,
    );
    let job = parse(&text).unwrap();
    let push = job.queries[0].pushgateway.as_ref().unwrap();
    assert_eq!(push.url.as_str(), "http://127.0.0.1:9091/");
    assert_eq!(push.job, "weir-streaming");
    assert_eq!(push.grouping["instance"], "eu");
    assert_eq!(push.timeout, operations::DEFAULT_PUSH_TIMEOUT);
    let alerts = job.alerts.as_ref().unwrap();
    assert_eq!(alerts.epoch_budget, Duration::from_secs(120));
    assert_eq!(
        alerts.webhook_url().unwrap().as_str(),
        "https://hooks.example/T0/secret-token"
    );
    // The webhook URL is a credential: not in debug output, not sent to executors.
    assert!(!format!("{job:?}").contains("secret-token"));
    assert!(!job.to_public_json().contains("secret-token"));
    let on_executor = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert!(on_executor.alerts.is_none());
    assert_eq!(
        on_executor.queries[0].pushgateway,
        job.queries[0].pushgateway
    );

    // Aggregate columns are pushed as gauges of their name.
    let clash = text.replacen("event_count: count(*)", "total_events: count(*)", 1);
    let e = parse(&clash).unwrap_err();
    assert!(
        e.message.contains("aggregate `total_events` is pushed"),
        "{e}"
    );
}

#[test]
fn kafka_sinks() {
    let sink = "sinks:\n  - kafka: {bootstrap_servers: '127.0.0.1:9092', topic: window-counts, options: {sasl.password: hunter2}}";
    let job = parse(&GOOD.replacen("sinks:", sink, 1)).unwrap();
    let kafka = &job.queries[0].kafka_sinks[0];
    assert_eq!(kafka.topic, "window-counts");
    assert_eq!(kafka.key, ["event_type"], "the group keys by default");
    assert_eq!(kafka.delivery, kafka_sink::Delivery::ExactlyOnce);
    assert_eq!(
        (kafka.job_header.as_str(), kafka.epoch_header.as_str()),
        ("weir.job", "weir.epoch")
    );
    // Its options are the driver's: executors see the keys only.
    assert!(!format!("{job:?}").contains("hunter2"));
    assert!(!job.to_public_json().contains("hunter2"));
    let on_executor = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert_eq!(on_executor.queries[0].kafka_sinks[0].topic, "window-counts");

    let custom = sink.replace(
        "topic: window-counts,",
        "topic: window-counts, key: [window, event_type], delivery: at_least_once, headers: {job: app, epoch: batch},",
    );
    let job = parse(&GOOD.replacen("sinks:", &custom, 1)).unwrap();
    let kafka = &job.queries[0].kafka_sinks[0];
    assert_eq!(kafka.key, ["window", "event_type"]);
    assert_eq!(kafka.delivery, kafka_sink::Delivery::AtLeastOnce);
    assert_eq!(
        (kafka.job_header.as_str(), kafka.epoch_header.as_str()),
        ("app", "batch")
    );

    for (from, to, field, message) in [
        (
            "topic: window-counts",
            "topic: 'a b'",
            "sinks[0].kafka.topic",
            "expected a Kafka topic name",
        ),
        (
            "topic: window-counts,",
            "topic: t, key: [user_id],",
            "sinks[0].kafka.key[0]",
            "not an output column",
        ),
        (
            "topic: window-counts,",
            "topic: t, format: avro,",
            "sinks[0].kafka.format",
            "only json",
        ),
        (
            "topic: window-counts,",
            "topic: t, delivery: twice,",
            "sinks[0].kafka.delivery",
            "exactly_once or at_least_once",
        ),
        (
            "sasl.password: hunter2",
            "transactional.id: mine",
            "sinks[0].kafka.options.transactional.id",
            "set by weir",
        ),
        (
            "topic: window-counts,",
            "topic: t, headers: {job: x, epoch: x},",
            "sinks[0].kafka.headers",
            "two different",
        ),
    ] {
        let e = parse(&GOOD.replacen("sinks:", &sink.replacen(from, to, 1), 1)).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

/// The good job with a Kafka password and an S3 key.
fn with_secret_options() -> String {
    GOOD.replace(
        "    max_offsets_per_trigger: 1000",
        "    max_offsets_per_trigger: 1000\n    options: {sasl.password: kafka-pass-123}",
    )
    .replace(
        "trigger: 30s",
        "trigger: 30s\nstorage_options: {aws_secret_access_key: s3-key-456}",
    )
}

/// Storage options and Kafka options may hold credentials: a job's debug output shows their
/// keys, never their values.
#[test]
fn storage_and_kafka_options_never_print_their_values() {
    let text = with_secret_options();
    let job = parse(&text).unwrap();
    assert_eq!(
        job.kafka().unwrap().options["sasl.password"],
        "kafka-pass-123"
    );
    assert_eq!(job.storage_options["aws_secret_access_key"], "s3-key-456");
    let shown = format!("{job:?}");
    assert!(shown.contains("sasl.password") && shown.contains("aws_secret_access_key"));
    assert!(
        !shown.contains("kafka-pass-123") && !shown.contains("s3-key-456"),
        "{shown}"
    );
}

/// What the driver sends executors carries the secret options' keys only; an executor fills in
/// the values from its own job file, which must name the same keys.
#[test]
fn executors_take_secret_values_from_their_own_job_file() {
    let text = with_secret_options();
    let driver = parse(&text).unwrap();
    let public = driver.to_public_json();
    assert!(
        !public.contains("kafka-pass-123") && !public.contains("s3-key-456"),
        "{public}"
    );
    assert!(public.contains("sasl.password") && public.contains("aws_secret_access_key"));

    let received = JobSpec::from_json(&public).unwrap();
    let own = parse(&text.replace("s3-key-456", "executor-own-key")).unwrap();
    let filled = received.clone().with_secrets_from(Some(&own)).unwrap();
    assert_eq!(
        filled.storage_options["aws_secret_access_key"],
        "executor-own-key"
    );
    assert_eq!(
        filled.kafka().unwrap().options["sasl.password"],
        "kafka-pass-123"
    );
    assert_eq!(filled.fingerprint(), driver.fingerprint());

    let e = received.clone().with_secrets_from(None).unwrap_err();
    assert!(
        e.to_string().contains("aws_secret_access_key") && e.to_string().contains("--job"),
        "{e}"
    );
    let other_keys = parse(&text.replace("aws_secret_access_key", "aws_access_key_id")).unwrap();
    let e = received.with_secrets_from(Some(&other_keys)).unwrap_err();
    assert!(e.to_string().contains("same job file"), "{e}");
    assert!(!e.to_string().contains("s3-key-456"), "{e}");

    // A job without secret options needs no job file on the executor.
    let plain = JobSpec::from_json(&parse(GOOD).unwrap().to_public_json()).unwrap();
    assert!(plain.with_secrets_from(None).is_ok());
}

/// weir's fetch client reads its settings from the options: an executor has them once it
/// filled in their values from its own job file.
#[test]
fn executors_read_with_weirs_client_as_its_options_set_it() {
    let text = GOOD.replacen(
        "    max_offsets_per_trigger: 1000\n",
        "    max_offsets_per_trigger: 1000\n    client: weir\n    options: {fetch.wait.max.ms: \"10\", isolation.level: read_uncommitted}\n",
        1,
    );
    let driver = parse(&text).unwrap();
    let filled = JobSpec::from_json(&driver.to_public_json())
        .unwrap()
        .with_secrets_from(Some(&driver))
        .unwrap();
    let kafka_client::KafkaClient::Weir(settings) = &filled.kafka().unwrap().client else {
        panic!("not weir's client");
    };
    assert_eq!(settings.max_wait_ms, 10);
    assert!(!settings.read_committed);
    assert_eq!(
        filled.kafka().unwrap().client,
        driver.kafka().unwrap().client
    );
}

#[test]
fn a_bad_webhook_url_is_refused_without_repeating_it() {
    let text = GOOD.replacen(
        "trigger: 30s",
        "trigger: 30s\nalerts: {webhook: 'ftp://hooks.example/secret-token'}",
        1,
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "alerts.webhook");
    assert!(!e.to_string().contains("secret-token"), "{e}");
}

#[test]
fn the_webhook_url_can_come_from_a_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("url"), "https://hooks.example/from-file\n").unwrap();
    let text = GOOD.replacen(
        "trigger: 30s",
        "trigger: 30s\nalerts: {webhook_file: url}",
        1,
    );
    let substituted = substitute_env(&text, env).unwrap();
    let raw: RawJob = serde_yaml_ng::from_str(&substituted).unwrap();
    let job = validate(raw, dir.path()).unwrap();
    let alerts = job.alerts.unwrap();
    assert_eq!(
        alerts.webhook_url().unwrap().as_str(),
        "https://hooks.example/from-file"
    );
    std::fs::remove_file(dir.path().join("url")).unwrap();
    assert!(alerts
        .webhook_url()
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}

#[test]
fn a_file_source_reads_a_directory_or_prefix() {
    let kafka = "  kafka:\n    bootstrap_servers: ${TEST_BROKERS}\n    topic: web-events\n    starting_offsets: earliest\n    fail_on_data_loss: false\n    max_offsets_per_trigger: 1000\n";
    assert!(GOOD.contains(kafka), "test bug");
    let files = |body: &str| GOOD.replacen(kafka, body, 1);
    let job = parse(&files(
        "  files: {path: archive/events, max_files_per_trigger: 20}\n",
    ))
    .unwrap();
    assert_eq!(
        job.source,
        Source::Files(FileSource {
            url: "file:///work/archive/events".into(),
            max_files_per_trigger: Some(20),
        })
    );
    assert!(job.kafka().is_none());
    assert_eq!(job.source.name(), "file:///work/archive/events");
    // The absolute location travels to executors.
    let again = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert_eq!(again.source, job.source);
    // A checkpoint of the Kafka job is not one of the file job.
    assert_ne!(job.fingerprint(), parse(GOOD).unwrap().fingerprint());

    let s3 = parse(&files("  files: {path: \"s3://bucket/events/\"}\n")).unwrap();
    assert_eq!(s3.source.name(), "s3://bucket/events");

    let both = files(&format!("{kafka}  files: {{path: /data}}\n"));
    assert_eq!(parse(&both).unwrap_err().field, "source");
    let neither = files("");
    assert_eq!(parse(&neither).unwrap_err().field, "source");
    let zero = files("  files: {path: /data, max_files_per_trigger: 0}\n");
    assert_eq!(
        parse(&zero).unwrap_err().field,
        "source.files.max_files_per_trigger"
    );
    let ftp = files("  files: {path: \"ftp://host/data\"}\n");
    assert_eq!(parse(&ftp).unwrap_err().field, "source.files.path");
    // Autoscaling sizes from the offsets behind: a file job is scaled by hand.
    let autoscaled = files("  files: {path: /data}\n") + "autoscale: {max: 2}\n";
    assert_eq!(parse(&autoscaled).unwrap_err().field, "autoscale");
}

#[test]
fn autoscale_within_the_executor_bounds() {
    assert_eq!(parse(GOOD).unwrap().autoscale, None);
    let job = parse(&format!(
        "{GOOD}executors: {{max: 8}}\nautoscale: {{min: 2, target_lag: 10s, scale_down_after: 1m}}\n"
    ))
    .unwrap();
    let a = job.autoscale.unwrap();
    assert_eq!((a.min, a.max), (2, 8));
    assert_eq!(a.target_lag, std::time::Duration::from_secs(10));
    let beyond = format!("{GOOD}executors: {{max: 8}}\nautoscale: {{max: 9}}\n");
    assert_eq!(parse(&beyond).unwrap_err().field, "autoscale.max");
    let typo = format!("{GOOD}autoscale: {{target_lagg: 10s}}\n");
    assert!(parse(&typo).is_err());
}

/// A value a job file may hold where the reference job has another.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("99999999999999999999h".to_string()),
        Just("18446744073709551615s".to_string()),
        Just("0s".to_string()),
        Just("-5m".to_string()),
        Just("1e400".to_string()),
        Just("-1".to_string()),
        Just("4294967296".to_string()),
        Just("${".to_string()),
        Just("${UNSET_VARIABLE_OF_THE_FUZZER}".to_string()),
        Just("${A:-${B:-}}".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just(format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000))),
        Just(format!("{}{}", "{a: ".repeat(2_000), "}".repeat(2_000))),
        Just("&a [*a, *a]".to_string()),
        Just("*undefined_alias".to_string()),
        Just("!!binary AAAA".to_string()),
        Just("x".repeat(100_000)),
        Just("count(distinct count(distinct x))".to_string()),
        Just("approx_count_distinct(user_id, 1e-300)".to_string()),
        Just("window(timestamp, 5m)".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("null".to_string()),
        "[ -~]{0,16}",
    ]
}

proptest::proptest! {
    #![proptest_config(crate::testing::fuzzing::config(400))]

    /// The job-file parser on the reference job with any value replaced by a hostile one, or
    /// any byte changed: a job or an error naming where, never a panic; a job it accepts
    /// travels to the executors and back unchanged in meaning.
    #[test]
    fn any_job_file_parses_or_names_its_mistake(
        line in proptest::prelude::any::<proptest::sample::Index>(),
        value in hostile_value(),
        edit in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), proptest::num::u8::ANY)),
    ) {
        let lines: Vec<&str> = GOOD.lines().collect();
        let at = line.index(lines.len());
        let mut text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        // The value after the line's first `: `, or the whole line.
        text[at] = match lines[at].split_once(": ") {
            Some((key, _)) => format!("{key}: {value}"),
            None => value.clone(),
        };
        let mut bytes = text.join("\n").into_bytes();
        if let Some((i, byte)) = edit {
            let i = i.index(bytes.len());
            bytes[i] = byte;
        }
        let text = String::from_utf8_lossy(&bytes);
        match parse(&text) {
            Ok(job) => {
                let back = JobSpec::from_json(&job.to_public_json());
                proptest::prop_assert!(back.is_ok(), "{:?}", back.err());
                proptest::prop_assert!(windows(&job).window.size > 0 && windows(&job).window.slide > 0);
            }
            Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The reference job's upsert of raw events: a dedup query, and the mistakes it refuses.
#[test]
fn dedup_queries_parse_and_their_mistakes_are_named() {
    let dedup = GOOD
        .replace(
            "  window: {column: timestamp, size: 5m, slide: 5m, start: 0s}\n  group_by: [event_type]\n  aggregates:\n    event_count: count(*)\n    unique_users: count(distinct user_id)\n    approx_unique: approx_count_distinct(event_id)\n",
            "  dedup: {key: [event_id], within: 1h}\n",
        )
        .replace(
            "partition_by: [event_type]}",
            "partition_by: [event_type], merge_on: [event_id]}",
        );
    let job = parse(&dedup).unwrap();
    assert_eq!(
        job.queries[0].query,
        Query::Dedup(DedupQuery {
            key: vec!["event_id".into()],
            within_micros: 3_600_000_000,
        })
    );
    assert_eq!(job.queries[0].output.merge_on, ["event_id"]);
    // The table holds the source's columns.
    let columns: Vec<String> =
        crate::data::output::output_schema(&job.queries[0].query, &job.input_schema)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
    assert_eq!(
        columns,
        [
            "event_id",
            "user_id",
            "event_type",
            "page_url",
            "timestamp",
            "properties"
        ]
    );
    assert_ne!(job.fingerprint(), parse(GOOD).unwrap().fingerprint());
    let cases = [
        ("within: 1h", "within: 0s", "query.dedup.within", "positive"),
        (
            "key: [event_id]",
            "key: []",
            "query.dedup.key",
            "at least one",
        ),
        (
            "key: [event_id]",
            "key: [properties]",
            "query.dedup.key[0]",
            "cannot key on",
        ),
        (
            "output_mode: append",
            "output_mode: update",
            "query.output_mode",
            "append only",
        ),
        (
            "  dedup:",
            "  group_by: [event_type]\n  dedup:",
            "query.group_by",
            "raw events",
        ),
        (
            "  dedup:",
            "  window: {column: timestamp, size: 5m}\n  dedup:",
            "query",
            "exactly one of window",
        ),
        (
            "merge_on: [event_id]",
            "merge_on: [properties]",
            "sinks[0].delta.merge_on[0]",
            "not a scalar column",
        ),
        (
            "partition_by: [event_type]",
            "partition_by: [properties]",
            "sinks[0].delta.partition_by[0]",
            "not a scalar column",
        ),
    ];
    for (from, to, field, message) in cases {
        assert!(dedup.contains(from), "test bug: `{from}`");
        let err = parse(&dedup.replacen(from, to, 1)).expect_err(to);
        assert!(
            err.field.contains(field) && err.message.contains(message),
            "`{to}`: {err}"
        );
    }
    // A window query's table merges on its window and group keys, never on columns given.
    let err = parse(&GOOD.replace(
        "partition_by: [event_type]}",
        "partition_by: [event_type], merge_on: [event_type]}",
    ))
    .expect_err("merge_on on a window query");
    assert!(err.field.ends_with("merge_on"), "{err}");
}

/// Every job file in `examples/` is a valid job (`*-cases.yaml` are `weir test`'s cases).
#[test]
fn the_examples_are_valid_jobs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cases = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("-cases.yaml"));
        if path.extension().is_some_and(|e| e == "yaml") && !cases {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = parse_job(&text, &dir) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} examples");
}

/// The reference job's two outputs as two queries over one source.
const TWO_QUERIES: &str = r#"
name: seed
source:
  files: {path: /data/events}
  format: json
  schema:
    event_id: string not null
    event_type: string not null
    timestamp: timestamp not null
queries:
  - name: windows
    watermark: {column: timestamp, delay: 10m}
    window: {column: timestamp, size: 5m}
    group_by: [event_type]
    aggregates: {events: count(*)}
    sinks:
      - delta: {path: /t/windows}
      - kafka: {bootstrap_servers: "127.0.0.1:9092", topic: windows}
  - name: raw-events
    watermark: {column: timestamp, delay: 10m}
    dedup: {key: [event_id], within: 1h}
    sinks:
      - delta: {path: /t/events, merge_on: [event_id]}
checkpoint_location: /t/checkpoint
"#;

#[test]
fn several_queries_over_one_source_parse_each_with_its_sinks() {
    let job = parse(TWO_QUERIES).unwrap();
    let names: Vec<&str> = job.queries.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["windows", "raw-events"]);
    assert_eq!(job.queries[0].output.url, "file:///t/windows");
    assert_eq!(job.queries[0].kafka_sinks[0].topic, "windows");
    assert_eq!(job.queries[1].output.merge_on, ["event_id"]);
    assert!(matches!(job.queries[1].query, Query::Dedup(_)));
    assert_eq!(job.watermark_delay_micros, 600_000_000);
    // What executors get holds every query, locations absolute.
    let back = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert_eq!(back.queries.len(), 2);
    assert_eq!(back.queries[1].output.url, "file:///t/events");
    // A one-query job is named after the job, and keeps the fingerprint it had.
    let one = parse(GOOD).unwrap();
    assert_eq!(one.queries[0].name, "realtime-analytics");
    assert_eq!(
        serde_json::to_string(&one.raw.query).unwrap(),
        r#"{"watermark":{"column":"timestamp","delay":"10m"},"window":{"column":"timestamp","size":"5m","slide":"5m","start":"0s"},"group_by":["event_type"],"aggregates":{"event_count":"count(*)","unique_users":"count(distinct user_id)","approx_unique":"approx_count_distinct(event_id)"},"output_mode":"append","max_event_time_ahead":null}"#
    );
    assert_ne!(job.fingerprint(), one.fingerprint());
}

#[test]
fn mistakes_in_several_queries_name_the_query() {
    let cases: [(&str, &str, &str, &str); 7] = [
        (
            "  - name: raw-events\n",
            "  - \n",
            "queries[1].name",
            "non-empty name",
        ),
        (
            "  - name: raw-events\n",
            "  - name: windows\n",
            "queries[1].name",
            "another query is named",
        ),
        (
            "path: /t/events,",
            "path: /t/windows,",
            "queries[1].sinks",
            "another query writes this delta table",
        ),
        (
            "    dedup: {key: [event_id], within: 1h}\n",
            "    dedup: {key: [event_id], within: 1h}\n    max_event_time_ahead: 1h\n",
            "queries[1].watermark",
            "share its watermark",
        ),
        (
            "within: 1h",
            "within: 0s",
            "queries[1].dedup.within",
            "positive",
        ),
        (
            "checkpoint_location: /t/checkpoint\n",
            "checkpoint_location: /t/checkpoint\nsinks:\n  - delta: {path: /t/other}\n",
            "sinks",
            "each query has its own",
        ),
        (
            "      - delta: {path: /t/windows}\n",
            "",
            "queries[0].sinks",
            "expected a delta sink",
        ),
    ];
    for (from, to, field, message) in cases {
        assert!(TWO_QUERIES.contains(from), "test bug: `{from}`");
        let err = parse(&TWO_QUERIES.replacen(from, to, 1)).expect_err(to);
        assert!(
            err.field == field && err.message.contains(message),
            "`{to}`: {err}"
        );
    }
    // The second query's sinks, named as such.
    let err = parse(&TWO_QUERIES.replace("merge_on: [event_id]", "merge_on: [nope]"))
        .expect_err("an unknown merge_on column");
    assert_eq!(err.field, "queries[1].sinks[0].delta.merge_on[0]");
    // Both forms at once, or a name on the single form.
    let both = GOOD.replace(
        "trigger: 30s",
        "queries:\n  - name: x\n    watermark: {column: timestamp, delay: 10m}\n    dedup: {key: [event_id], within: 1h}\n    sinks: [{delta: {path: /t/x}}]\ntrigger: 30s",
    );
    assert_eq!(parse(&both).unwrap_err().field, "query");
    let named = GOOD.replace("  output_mode: append", "  output_mode: append\n  name: x");
    assert_eq!(parse(&named).unwrap_err().field, "query.name");
}

/// The reference query in SQL (Spark's `window()` form) is the same query as in YAML, inline
/// or from a file; a mistake in it names the field, line and column.
#[test]
fn the_reference_query_in_sql_is_the_yaml_query() {
    let yaml_query = "  window: {column: timestamp, size: 5m, slide: 5m, start: 0s}\n  group_by: [event_type]\n  aggregates:\n    event_count: count(*)\n    unique_users: count(distinct user_id)\n    approx_unique: approx_count_distinct(event_id)\n";
    assert!(GOOD.contains(yaml_query));
    let sql = "  sql: |\n    SELECT window, event_type, count(*) AS event_count,\n           count(DISTINCT user_id) AS unique_users,\n           approx_count_distinct(event_id) AS approx_unique\n    FROM `web-events`\n    GROUP BY window(timestamp, '5 minutes', '5 minutes', '0 seconds'), event_type\n";
    let from_sql = parse(&GOOD.replace(yaml_query, sql)).unwrap();
    let from_yaml = parse(GOOD).unwrap();
    assert_eq!(from_sql.queries[0].query, from_yaml.queries[0].query);
    // In a file next to the job file, and with EMIT ON UPDATE choosing update mode.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("q.sql"),
        "SELECT event_type, count(*) AS event_count FROM source\nGROUP BY window(timestamp, '5 minutes'), event_type\nEMIT ON UPDATE\n",
    )
    .unwrap();
    let text = GOOD.replace(yaml_query, "  sql_file: q.sql\n");
    let raw: RawJob = serde_yaml_ng::from_str(&substitute_env(&text, env).unwrap()).unwrap();
    let job = validate(raw, dir.path()).unwrap();
    assert_eq!(job.queries[0].query.output_mode(), OutputMode::Update);
    // What executors get carries the SQL itself.
    assert!(job.to_public_json().contains("EMIT ON UPDATE"));
    let err = parse(&GOOD.replace(
        yaml_query,
        &sql.replace("FROM `web-events`", "FROM `web-events` JOIN users ON true"),
    ))
    .unwrap_err();
    assert_eq!(err.field, "query.sql");
    assert!(
        err.message.contains("line 4 column ") && err.message.contains("a join is not supported"),
        "{err}"
    );
    let both = parse(&GOOD.replace(
        "  group_by: [event_type]\n",
        &format!("  group_by: [event_type]\n{sql}"),
    ))
    .unwrap_err();
    assert!(
        both.message.contains("either as sql or as window"),
        "{both}"
    );
}

/// Flink's `CREATE TABLE ... WATERMARK FOR` gives a SQL query its watermark instead of the
/// job file's `watermark`; giving it both ways, or neither, is refused.
#[test]
fn a_sql_query_takes_its_watermark_from_create_table() {
    let yaml = "  watermark: {column: timestamp, delay: 10m}\n  window: {column: timestamp, size: 5m, slide: 5m, start: 0s}\n  group_by: [event_type]\n  aggregates:\n    event_count: count(*)\n    unique_users: count(distinct user_id)\n    approx_unique: approx_count_distinct(event_id)\n";
    assert!(GOOD.contains(yaml));
    let sql = "  sql: |\n    CREATE TABLE source (timestamp TIMESTAMP(3), WATERMARK FOR timestamp AS timestamp - INTERVAL '10' MINUTE);\n    SELECT window, event_type, count(*) AS event_count,\n           count(DISTINCT user_id) AS unique_users,\n           approx_count_distinct(event_id) AS approx_unique\n    FROM source GROUP BY window(timestamp, '5 minutes'), event_type\n";
    let job = parse(&GOOD.replace(yaml, sql)).unwrap();
    let reference = parse(GOOD).unwrap();
    assert_eq!(job.queries[0].query, reference.queries[0].query);
    assert_eq!(job.watermark_delay_micros, reference.watermark_delay_micros);
    assert_eq!(job.event_time_column, "timestamp");
    // The job as the driver sends it to executors reads the same.
    let on_executor = JobSpec::from_json(&job.to_public_json()).unwrap();
    assert_eq!(on_executor.queries[0].query, reference.queries[0].query);
    assert_eq!(on_executor.fingerprint(), job.fingerprint());
    let both = parse(&GOOD.replace(
        yaml,
        &format!("  watermark: {{column: timestamp, delay: 10m}}\n{sql}"),
    ))
    .unwrap_err();
    assert_eq!(both.field, "query.watermark");
    let neither =
        parse(&GOOD.replace("  watermark: {column: timestamp, delay: 10m}\n", "")).unwrap_err();
    assert_eq!(neither.field, "query.watermark");
}

/// A SQL query's row expressions are planned when the job is read: a WHERE that is not a
/// condition, a function that does not exist, a key of a type the aggregate cannot group by
/// and a computed name that shadows a source column are refused there, with their place.
#[test]
fn row_expressions_are_planned_and_checked_when_the_job_is_read() {
    let yaml_query = "  window: {column: timestamp, size: 5m, slide: 5m, start: 0s}\n  group_by: [event_type]\n  aggregates:\n    event_count: count(*)\n    unique_users: count(distinct user_id)\n    approx_unique: approx_count_distinct(event_id)\n";
    let with = |select: &str| {
        GOOD.replace(
            yaml_query,
            &format!(
                "  sql: |\n{}\n",
                select
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )
        .replace("partition_by: [event_type]", "partition_by: []")
    };
    let good = parse(&with(
        "SELECT lower(properties['country']) AS country, count(*) AS n,\n  max(length(page_url)) AS longest\nFROM source WHERE event_type <> 'view'\nGROUP BY window(timestamp, '5 minutes'), country HAVING count(*) > 1",
    ))
    .unwrap();
    let Query::Window(w) = &good.queries[0].query else {
        panic!("a window query")
    };
    assert_eq!(w.group_by, ["country"]);
    let rows = w.rows.as_ref().expect("row expressions");
    assert_eq!(
        rows.columns_read(),
        ["event_type", "page_url", "properties"]
    );
    let output = crate::data::output::output_schema(&good.queries[0].query, &good.input_schema);
    assert_eq!(
        output.field_with_name("country").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        output.field_with_name("longest").unwrap().data_type(),
        &DataType::Int32
    );
    assert!(w.having.is_some());
    for (select, expected) in [
        (
            "SELECT count(*) AS n FROM source\nWHERE length(page_url)\nGROUP BY window(timestamp, '5 minutes')",
            "line 2 column 7: `length(page_url)` is of type Int32: a condition must be boolean",
        ),
        (
            "SELECT count(*) AS n FROM source\nWHERE no_such_function(page_url)\nGROUP BY window(timestamp, '5 minutes')",
            "line 2 column 7: `no_such_function(page_url)`",
        ),
        (
            "SELECT page_url AS user_id, count(*) AS n FROM source\nGROUP BY window(timestamp, '5 minutes'), user_id",
            "`user_id` names a computed column",
        ),
        (
            "SELECT properties AS props, count(*) AS n FROM source\nGROUP BY window(timestamp, '5 minutes'), props",
            "cannot group by `props`",
        ),
        (
            "SELECT sum(page_url || 'x') AS n FROM source\nGROUP BY window(timestamp, '5 minutes')",
            "sum",
        ),
    ] {
        let err = parse(&with(select)).expect_err(select);
        assert_eq!(err.field, "query.sql", "{err}");
        assert!(err.message.contains(expected), "`{expected}` not in `{err}`");
    }
}
