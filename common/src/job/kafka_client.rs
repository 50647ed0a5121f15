//! Which client reads a Kafka source: librdkafka (every option librdkafka takes: TLS, SASL,
//! ...), or weir's own fetch client (plaintext; a few fetch settings), which reads records
//! straight out of the fetched batches and costs less CPU a record.

use super::{JobError, SecretMap};

/// The client of a Kafka source.
#[derive(Debug, Clone, PartialEq)]
pub enum KafkaClient {
    Librdkafka,
    Weir(FetchSettings),
}

/// weir's fetch client's settings, read from the source's `options` under librdkafka's
/// names (the driver's librdkafka client, which asks for the partitions' bounds, takes the
/// same options).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    /// Records of aborted transactions and transaction markers are skipped
    /// (`isolation.level: read_committed`, the default).
    pub read_committed: bool,
    /// How long the broker may hold a fetch that finds less than `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// The most one fetch answer holds, and the most of one partition in it.
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Kilobytes fetched ahead per partition; by default 64 MB over the partitions an
    /// executor reads.
    pub queued_kbytes: Option<u32>,
    pub client_id: String,
}

impl Default for FetchSettings {
    /// librdkafka's defaults.
    fn default() -> Self {
        Self {
            read_committed: true,
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 52_428_800,
            partition_max_bytes: 1_048_576,
            queued_kbytes: None,
            client_id: "weir".into(),
        }
    }
}

/// The options weir's client takes.
const TAKEN: [&str; 8] = [
    "isolation.level",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "queued.max.messages.kbytes",
    "client.id",
    "security.protocol",
];

/// Reads `source.kafka.client` and, for weir's client, the options it takes.
pub fn parse(client: Option<&str>, options: &SecretMap) -> Result<KafkaClient, JobError> {
    match client {
        None | Some("librdkafka") => Ok(KafkaClient::Librdkafka),
        Some("weir") => fetch_settings(options).map(KafkaClient::Weir),
        Some(other) => Err(JobError::new(
            "source.kafka.client",
            format!("`{other}`: expected librdkafka or weir"),
        )),
    }
}

/// An option's value, blank or not, counts as set only when it is not empty: the job executors
/// are sent has its options' values blanked (they are filled from the executor's own job
/// file, and the settings read again).
fn fetch_settings(options: &SecretMap) -> Result<FetchSettings, JobError> {
    let field = |name: &str| format!("source.kafka.options.{name}");
    let get = |name: &str| options.get(name).filter(|v| !v.is_empty());
    if let Some(other) = options.keys().find(|k| !TAKEN.contains(&k.as_str())) {
        return Err(JobError::new(
            field(other),
            format!(
                "client weir takes only {}; `client: librdkafka` takes every librdkafka option",
                TAKEN.join(", ")
            ),
        ));
    }
    let number = |name: &str, min: i64| -> Result<Option<i64>, JobError> {
        get(name)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (min..=i64::from(i32::MAX)).contains(n))
                    .ok_or_else(|| {
                        JobError::new(
                            field(name),
                            format!("`{v}`: expected a whole number from {min} to {}", i32::MAX),
                        )
                    })
            })
            .transpose()
    };
    let mut settings = FetchSettings::default();
    match get("isolation.level").map(|v| v.trim()) {
        None | Some("read_committed") => {}
        Some("read_uncommitted") => settings.read_committed = false,
        Some(other) => {
            return Err(JobError::new(
                field("isolation.level"),
                format!("`{other}`: expected read_committed or read_uncommitted"),
            ))
        }
    }
    if let Some(protocol) = get("security.protocol") {
        if !protocol.trim().eq_ignore_ascii_case("plaintext") {
            return Err(JobError::new(
                field("security.protocol"),
                format!("`{protocol}`: client weir connects in plaintext only; `client: librdkafka` takes TLS and SASL"),
            ));
        }
    }
    // Each fits an i32: `number` bounds them so.
    let as_i32 = |n: i64| n as i32;
    if let Some(n) = number("fetch.wait.max.ms", 0)? {
        settings.max_wait_ms = as_i32(n);
    }
    if let Some(n) = number("fetch.min.bytes", 1)? {
        settings.min_bytes = as_i32(n);
    }
    if let Some(n) = number("fetch.max.bytes", 1)? {
        settings.max_bytes = as_i32(n);
    }
    if let Some(n) = number("max.partition.fetch.bytes", 1)? {
        settings.partition_max_bytes = as_i32(n);
    }
    if let Some(n) = number("queued.max.messages.kbytes", 1)? {
        settings.queued_kbytes = Some(as_i32(n) as u32);
    }
    if let Some(id) = get("client.id") {
        settings.client_id = id.clone();
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> SecretMap {
        SecretMap(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn librdkafka_is_the_default_and_weir_takes_its_settings() {
        assert_eq!(
            parse(None, &options(&[("sasl.mechanism", "PLAIN")])).unwrap(),
            KafkaClient::Librdkafka
        );
        assert_eq!(
            parse(Some("weir"), &options(&[])).unwrap(),
            KafkaClient::Weir(FetchSettings::default())
        );
        let KafkaClient::Weir(set) = parse(
            Some("weir"),
            &options(&[
                ("isolation.level", "read_uncommitted"),
                ("fetch.wait.max.ms", "10"),
                ("queued.max.messages.kbytes", "2048"),
                ("security.protocol", "PLAINTEXT"),
            ]),
        )
        .unwrap() else {
            panic!("not weir's client");
        };
        assert!(!set.read_committed);
        assert_eq!(set.max_wait_ms, 10);
        assert_eq!(set.queued_kbytes, Some(2048));
    }

    #[test]
    fn what_weirs_client_cannot_do_is_a_clear_error() {
        for (client, pairs, field, says) in [
            (
                "weir",
                &[("sasl.mechanism", "PLAIN")][..],
                "source.kafka.options.sasl.mechanism",
                "client: librdkafka",
            ),
            (
                "weir",
                &[("security.protocol", "ssl")],
                "source.kafka.options.security.protocol",
                "plaintext only",
            ),
            (
                "weir",
                &[("fetch.wait.max.ms", "-1")],
                "source.kafka.options.fetch.wait.max.ms",
                "whole number",
            ),
            (
                "weir",
                &[("isolation.level", "committed")],
                "source.kafka.options.isolation.level",
                "read_committed or read_uncommitted",
            ),
            ("java", &[], "source.kafka.client", "librdkafka or weir"),
        ] {
            let error = parse(Some(client), &options(pairs)).unwrap_err();
            assert_eq!(error.field, field);
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
