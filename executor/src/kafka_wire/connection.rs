//! One plaintext connection to a Kafka broker, its request versions agreed with the broker,
//! and the lookup of a topic's partition leaders: what `weir gen --producer light` and the
//! Kafka source's own fetch client (`client: weir`) share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};

const METADATA_VERSIONS: VersionRange = VersionRange { min: 1, max: 12 };

/// One broker connection; requests are answered in turn.
pub struct Connection {
    address: String,
    client_id: StrBytes,
    stream: TcpStream,
    correlation: i32,
    out: BytesMut,
    /// What the broker serves: (API key, its versions).
    served: Vec<(i16, VersionRange)>,
}

impl Connection {
    /// Connects to `address` as `client_id` and asks which request versions it serves; an
    /// answer may take up to `timeout`.
    pub fn open(address: &str, client_id: &str, timeout: Duration) -> anyhow::Result<Self> {
        let stream =
            TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut connection = Connection {
            address: address.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            stream,
            correlation: 0,
            out: BytesMut::new(),
            served: Vec::new(),
        };
        // Version 0 of ApiVersions is the one every broker answers.
        let versions: ApiVersionsResponse =
            connection.call(ApiKey::ApiVersions, &ApiVersionsRequest::default(), 0)?;
        if let Some(error) = refusal(versions.error_code) {
            bail!("{address} refused ApiVersions: {error}");
        }
        connection.served = versions
            .api_keys
            .iter()
            .map(|k| {
                let range = VersionRange {
                    min: k.min_version,
                    max: k.max_version,
                };
                (k.api_key, range)
            })
            .collect();
        Ok(connection)
    }

    /// The connection's socket, to shut it down from another thread.
    pub fn socket(&self) -> std::io::Result<TcpStream> {
        self.stream.try_clone()
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The highest version of `key`'s request that both the broker and `ours` know.
    pub fn version(&self, key: ApiKey, ours: VersionRange) -> anyhow::Result<i16> {
        let address = &self.address;
        let theirs = self
            .served
            .iter()
            .find(|(k, _)| *k == key as i16)
            .map(|(_, range)| *range)
            .with_context(|| format!("{address} does not serve {key:?}"))?;
        let both = ours.intersect(&theirs);
        if both.is_empty() {
            bail!("{address} serves {key:?} {theirs}, weir {ours}");
        }
        Ok(both.max)
    }

    /// Sends `request`, the `key` API's request as `version`, and reads its answer.
    pub fn call<Q, A>(&mut self, key: ApiKey, request: &Q, version: i16) -> anyhow::Result<A>
    where
        Q: Encodable + HeaderVersion,
        A: Decodable + HeaderVersion,
    {
        self.send(key, request, version)?;
        self.receive(version)
    }

    fn send<Q>(&mut self, key: ApiKey, request: &Q, version: i16) -> anyhow::Result<()>
    where
        Q: Encodable + HeaderVersion,
    {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(self.client_id.clone()));
        self.out.clear();
        self.out.put_i32(0);
        header.encode(&mut self.out, Q::header_version(version))?;
        request.encode(&mut self.out, version)?;
        let size = i32::try_from(self.out.len() - 4).context("a request over 2 GiB")?;
        self.out[..4].copy_from_slice(&size.to_be_bytes());
        let address = &self.address;
        self.stream
            .write_all(&self.out)
            .with_context(|| format!("sending to {address}"))
    }

    /// Reads the answer to the request sent last, as `version`. What it holds of the answer's
    /// bytes (a fetch's records) are slices of one buffer.
    fn receive<A>(&mut self, version: i16) -> anyhow::Result<A>
    where
        A: Decodable + HeaderVersion,
    {
        let address = &self.address;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .with_context(|| format!("reading {address}'s answer"))?;
        let size = usize::try_from(i32::from_be_bytes(size))
            .with_context(|| format!("{address} answered a negative size"))?;
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .with_context(|| format!("reading {address}'s answer"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, A::header_version(version))?;
        if header.correlation_id != self.correlation {
            bail!(
                "{address} answered request {} to request {}",
                header.correlation_id,
                self.correlation
            );
        }
        // Bytes past what this version holds are left unread, as Kafka's clients leave them
        // (librdkafka's mock cluster ends ApiVersions 0 with one).
        A::decode(&mut body, version).with_context(|| format!("decoding {address}'s answer"))
    }
}

/// What an error code in an answer says, if it is one.
pub fn refusal(code: i16) -> Option<String> {
    (code != 0).then(|| match code.err() {
        Some(error) => error.to_string(),
        None => format!("error code {code}"),
    })
}

/// A topic's partitions by leader.
pub struct Leaders {
    /// How many partitions the topic has.
    pub partitions: usize,
    /// Each leader's address and its partitions.
    pub leaders: Vec<(String, Vec<i32>)>,
}

/// The first server of a comma-separated `bootstrap` list.
pub fn first_server(bootstrap: &str) -> anyhow::Result<&str> {
    bootstrap
        .split(',')
        .map(str::trim)
        .find(|b| !b.is_empty())
        .context("no bootstrap server given")
}

/// Asks `connection` where the leaders of `topic`'s partitions are; the topic must exist.
pub fn leaders(connection: &mut Connection, topic: &str) -> anyhow::Result<Leaders> {
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name.clone()))
        ]))
        .with_allow_auto_topic_creation(false);
    let version = connection.version(
        ApiKey::Metadata,
        METADATA_VERSIONS.intersect(&MetadataRequest::VERSIONS),
    )?;
    let metadata: MetadataResponse = connection.call(ApiKey::Metadata, &request, version)?;
    let found = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref() == Some(&name))
        .with_context(|| format!("the broker did not describe topic {topic}"))?;
    if let Some(error) = refusal(found.error_code) {
        bail!("topic {topic}: {error}");
    }
    let count = found.partitions.len();
    let mut leaders: Vec<(String, Vec<i32>)> = Vec::new();
    let mut leader_ids = Vec::new();
    for p in &found.partitions {
        if let Some(error) = refusal(p.error_code) {
            bail!("topic {topic} partition {}: {error}", p.partition_index);
        }
        if !usize::try_from(p.partition_index).is_ok_and(|i| i < count) {
            bail!(
                "topic {topic} has a partition {} of {count}",
                p.partition_index
            );
        }
        let slot = match leader_ids.iter().position(|id| *id == p.leader_id) {
            Some(slot) => slot,
            None => {
                let broker = metadata
                    .brokers
                    .iter()
                    .find(|b| b.node_id == p.leader_id)
                    .with_context(|| {
                        format!(
                            "partition {}'s leader is not a known broker",
                            p.partition_index
                        )
                    })?;
                leaders.push((
                    format!("{}:{}", broker.host.as_str(), broker.port),
                    Vec::new(),
                ));
                leader_ids.push(p.leader_id);
                leaders.len() - 1
            }
        };
        leaders[slot].1.push(p.partition_index);
    }
    Ok(Leaders {
        partitions: count,
        leaders,
    })
}
