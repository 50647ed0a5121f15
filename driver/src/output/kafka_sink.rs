//! A Kafka sink: the driver sends each decided epoch's rows (read from the files the executors
//! staged for the output table, `table_commits`) to a topic as JSON records, with the job and the epoch in
//! headers.
//!
//! Exactly once: the records go in one Kafka transaction that also commits, for the consumer
//! group `weir-<job id>-sink`, the offset `epoch + 1` on partition 0 of the topic: a marker of
//! the last epoch the topic holds, read back before an epoch is sent, so an epoch sent again
//! after a failure (a restarted driver commits its last decision again) is skipped. The
//! transactional id is stable per job and topic: a new driver's producer fences the one of the
//! driver it replaced and aborts the transaction that driver left open. Consumers that read
//! with `isolation.level=read_committed` see each row once. At least once: an idempotent
//! producer, the marker committed after the records are acknowledged.

use std::collections::VecDeque;
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::json::writer::{LineDelimited, WriterBuilder};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_common::job::kafka_sink::{Delivery, KafkaSink};
use weir_common::testing::fault;

/// How long one broker call (init, commit, abort, offsets) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka sink {topic}: {what}: {source}")]
    Kafka {
        topic: String,
        what: &'static str,
        source: KafkaError,
    },
    #[error("Kafka sink {topic}: {message}")]
    Rows { topic: String, message: String },
    #[error(
        "Kafka sink {topic}: the broker does not support Kafka transactions ({source}); \
         delivery: at_least_once works without them"
    )]
    NoTransactions { topic: String, source: KafkaError },
}

/// A record to send: its key, if any, and its JSON value.
type KafkaRecord = (Option<Vec<u8>>, Vec<u8>);

/// One Kafka sink of the job, as the driver writes it.
pub struct KafkaSinkWriter {
    spec: KafkaSink,
    job_name: String,
    transactional_id: String,
    /// Holds the marker offset; never subscribes or reads a record.
    marker: BaseConsumer,
    /// Created (and its transactions initialised) on first use and after any failure: a
    /// producer whose transaction failed may be unusable, and a new one aborts what it left.
    producer: Option<FutureProducer>,
}

impl KafkaSinkWriter {
    pub fn new(spec: &KafkaSink, job_id: &str, job_name: &str) -> Result<Self, SinkError> {
        let marker: BaseConsumer = client_config(spec)
            .set("group.id", format!("weir-{job_id}-sink"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|source| SinkError::Kafka {
                topic: spec.topic.clone(),
                what: "creating the marker's client",
                source,
            })?;
        // A record for a topic that does not exist waits out librdkafka's message timeout
        // (5 minutes) before it fails: refuse the job at start instead.
        let metadata =
            tokio::task::block_in_place(|| marker.fetch_metadata(Some(&spec.topic), CALL_TIMEOUT))
                .map_err(|source| SinkError::Kafka {
                    topic: spec.topic.clone(),
                    what: "reading the topic's metadata",
                    source,
                })?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == spec.topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(SinkError::Rows {
                topic: spec.topic.clone(),
                message: format!(
                    "the topic does not exist on {}; create it first (weir does not)",
                    spec.bootstrap_servers
                ),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            job_name: job_name.to_string(),
            transactional_id: format!("weir-{job_id}-{}", spec.topic),
            marker,
            producer: None,
        })
    }

    pub fn topic(&self) -> &str {
        &self.spec.topic
    }

    fn err(&self, what: &'static str) -> impl Fn(KafkaError) -> SinkError + '_ {
        move |source| {
            let unsupported = matches!(
                source.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion)
            );
            if unsupported && self.spec.delivery == Delivery::ExactlyOnce {
                return SinkError::NoTransactions {
                    topic: self.spec.topic.clone(),
                    source,
                };
            }
            SinkError::Kafka {
                topic: self.spec.topic.clone(),
                what,
                source,
            }
        }
    }

    /// The last epoch the topic holds, from the marker.
    async fn sent_epoch(&self) -> Result<Option<u64>, SinkError> {
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&self.spec.topic, 0);
        let committed =
            tokio::task::block_in_place(|| self.marker.committed_offsets(partitions, CALL_TIMEOUT))
                .map_err(self.err("reading the epoch marker"))?;
        let offset = committed
            .find_partition(&self.spec.topic, 0)
            .map(|p| p.offset());
        Ok(match offset {
            Some(Offset::Offset(next)) if next > 0 => u64::try_from(next - 1).ok(),
            _ => None,
        })
    }

    /// The producer, created and its transactions initialised when there is none.
    fn producer(&mut self) -> Result<FutureProducer, SinkError> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let mut config = client_config(&self.spec);
        config.set("enable.idempotence", "true");
        if self.spec.delivery == Delivery::ExactlyOnce {
            config.set("transactional.id", &self.transactional_id);
        }
        let producer: FutureProducer =
            config.create().map_err(self.err("creating the producer"))?;
        if self.spec.delivery == Delivery::ExactlyOnce {
            // Fences the producer of any earlier driver and aborts what it left open.
            tokio::task::block_in_place(|| producer.init_transactions(CALL_TIMEOUT))
                .map_err(self.err("initialising transactions"))?;
        }
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Whether the topic still lacks `epoch` (its marker says which epoch it holds last).
    pub async fn needs(&self, epoch: u64) -> Result<bool, SinkError> {
        if self.sent_epoch().await?.is_some_and(|e| e >= epoch) {
            tracing::info!(epoch, topic = %self.spec.topic, "epoch already in the topic");
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends the epoch's rows, with its marker; answers the records sent. Call it for an epoch
    /// the topic [`needs`](Self::needs).
    pub async fn send(&mut self, epoch: u64, rows: &[RecordBatch]) -> Result<u64, SinkError> {
        let records = self.records(rows)?;
        let result = self.deliver(epoch, &records).await;
        if result.is_err() {
            // Whatever the producer was doing is abandoned with it; the next attempt starts
            // with a new one, whose initialisation aborts an open transaction.
            if let Some(p) = self.producer.take() {
                if self.spec.delivery == Delivery::ExactlyOnce {
                    let _ = tokio::task::block_in_place(|| p.abort_transaction(CALL_TIMEOUT));
                }
            }
        }
        result.map(|()| records.len() as u64)
    }

    async fn deliver(&mut self, epoch: u64, records: &[KafkaRecord]) -> Result<(), SinkError> {
        let producer = self.producer()?;
        let exactly_once = self.spec.delivery == Delivery::ExactlyOnce;
        if exactly_once {
            producer
                .begin_transaction()
                .map_err(self.err("beginning a transaction"))?;
        }
        let epoch_text = epoch.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: &self.spec.job_header,
                value: Some(self.job_name.as_bytes()),
            })
            .insert(Header {
                key: &self.spec.epoch_header,
                value: Some(epoch_text.as_bytes()),
            });
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
        for (key, value) in records {
            let mut record = FutureRecord::to(&self.spec.topic)
                .payload(value)
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    // An epoch with more records than the producer queues: wait for the
                    // oldest to be acknowledged, then queue this one again.
                    Err((e, again))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = again;
                        match pending.pop_front() {
                            Some(oldest) => self.acknowledged(oldest).await?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((source, _)) => return Err(self.err("queueing a record")(source)),
                }
            }
        }
        for delivery in pending {
            self.acknowledged(delivery).await?;
        }
        let mut marker = TopicPartitionList::new();
        let next = i64::try_from(epoch + 1).unwrap_or(i64::MAX);
        marker
            .add_partition_offset(&self.spec.topic, 0, Offset::Offset(next))
            .map_err(self.err("building the epoch marker"))?;
        tokio::task::block_in_place(|| fault::reached("kafka-sent", epoch));
        if exactly_once {
            let group = self
                .marker
                .group_metadata()
                .ok_or_else(|| SinkError::Rows {
                    topic: self.spec.topic.clone(),
                    message: "the marker's client has no group metadata".into(),
                })?;
            tokio::task::block_in_place(|| {
                producer.send_offsets_to_transaction(&marker, &group, CALL_TIMEOUT)?;
                producer.commit_transaction(CALL_TIMEOUT)
            })
            .map_err(self.err("committing the epoch's transaction"))?;
        } else {
            tokio::task::block_in_place(|| {
                self.marker
                    .commit(&marker, rdkafka::consumer::CommitMode::Sync)
            })
            .map_err(self.err("committing the epoch marker"))?;
        }
        Ok(())
    }

    /// Waits for a record's acknowledgement.
    async fn acknowledged(&self, delivery: DeliveryFuture) -> Result<(), SinkError> {
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(self.err("delivering a record")(source)),
            Err(_) => Err(SinkError::Rows {
                topic: self.spec.topic.clone(),
                message: "the producer went away before the records were acknowledged".into(),
            }),
        }
    }

    /// Each row as (key, JSON value).
    fn records(&self, rows: &[RecordBatch]) -> Result<Vec<KafkaRecord>, SinkError> {
        let fail = |message: String| SinkError::Rows {
            topic: self.spec.topic.clone(),
            message,
        };
        let mut out = Vec::new();
        for batch in rows {
            let values = json_lines(batch).map_err(|e| fail(format!("encoding rows: {e}")))?;
            let keys = record_keys(batch, &self.spec.key)
                .map_err(|e| fail(format!("encoding keys: {e}")))?;
            out.extend(keys.into_iter().zip(values));
        }
        Ok(out)
    }
}

fn client_config(spec: &KafkaSink) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in &spec.options {
        config.set(k, v);
    }
    config.set("bootstrap.servers", &spec.bootstrap_servers);
    config
}

/// Each row of `batch` as one JSON object (Spark's `to_json(struct(*))`, nulls written out).
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, deltalake::arrow::error::ArrowError> {
    let mut buffer = Vec::new();
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(&mut buffer);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    // One line per row: JSON escapes every newline inside a value.
    Ok(buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The key of each row: none without key columns; a lone string column's value as it is;
/// else the key columns as a JSON object.
fn record_keys(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<Vec<Option<Vec<u8>>>, deltalake::arrow::error::ArrowError> {
    let rows = batch.num_rows();
    if columns.is_empty() {
        return Ok(vec![None; rows]);
    }
    let indices = columns
        .iter()
        .map(|c| batch.schema().index_of(c))
        .collect::<Result<Vec<_>, _>>()?;
    let projected = batch.project(&indices)?;
    if let [column] = projected.columns() {
        if matches!(column.data_type(), DataType::Utf8) {
            let strings = column.as_string::<i32>();
            return Ok((0..rows)
                .map(|i| {
                    strings
                        .is_valid(i)
                        .then(|| strings.value(i).as_bytes().to_vec())
                })
                .collect());
        }
    }
    Ok(json_lines(&projected)?.into_iter().map(Some).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{
        ArrayRef, Int64Array, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::{Field, Fields, Schema, TimeUnit};

    use super::*;

    /// Two rows of the reference output shape; the second has a null group key.
    fn rows() -> RecordBatch {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let window_fields = Fields::from(vec![
            Field::new("start", ts.clone(), false),
            Field::new("end", ts.clone(), false),
        ]);
        let micros = |v: Vec<i64>| {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef
        };
        let window = StructArray::new(
            window_fields.clone(),
            vec![
                micros(vec![0, 300_000_000]),
                micros(vec![300_000_000, 600_000_000]),
            ],
            None,
        );
        let schema = Schema::new(vec![
            Field::new("window", DataType::Struct(window_fields), false),
            Field::new("event_type", DataType::Utf8, true),
            Field::new("event_count", DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(window),
                Arc::new(StringArray::from(vec![Some("click"), None])),
                Arc::new(Int64Array::from(vec![5, 7])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn each_row_is_one_json_object_with_rfc3339_times_and_nulls_written_out() {
        let values: Vec<String> = json_lines(&rows())
            .unwrap()
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(
            values,
            [
                r#"{"window":{"start":"1970-01-01T00:00:00Z","end":"1970-01-01T00:05:00Z"},"event_type":"click","event_count":5}"#,
                r#"{"window":{"start":"1970-01-01T00:05:00Z","end":"1970-01-01T00:10:00Z"},"event_type":null,"event_count":7}"#,
            ]
        );
    }

    #[test]
    fn a_lone_string_key_is_its_value_and_other_keys_are_json_objects() {
        let text = |keys: Vec<Option<Vec<u8>>>| {
            keys.into_iter()
                .map(|k| k.map(|k| String::from_utf8(k).unwrap()))
                .collect::<Vec<_>>()
        };
        let batch = rows();
        assert_eq!(
            text(record_keys(&batch, &["event_type".into()]).unwrap()),
            [Some("click".to_string()), None]
        );
        assert_eq!(
            text(record_keys(&batch, &["window".into(), "event_type".into()]).unwrap())[1],
            Some(
                r#"{"window":{"start":"1970-01-01T00:05:00Z","end":"1970-01-01T00:10:00Z"},"event_type":null}"#
                    .to_string()
            )
        );
        assert_eq!(text(record_keys(&batch, &[]).unwrap()), [None, None]);
        assert!(record_keys(&batch, &["user_id".into()]).is_err());
    }
}
