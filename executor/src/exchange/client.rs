//! Sends partial aggregates to a peer: one Flight `DoPut` stream per epoch, record batches
//! pulled lazily as the transport takes them, then the end-of-epoch marker. A stream that
//! fails in transit is sent again whole; the owner drops the broken copy.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use futures::{Stream, StreamExt, TryStreamExt};
use prometheus::IntCounter;
use prost::Message;
use tonic::transport::Channel;
use weir_proto::cluster_auth::Sign;
use weir_proto::exchange::{EndOfEpoch, StreamAck, StreamHeader};

use super::wire::{self, BatchEncoder, Entries};

/// Attempts per stream before the epoch fails.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("sending epoch {epoch} to {peer}: {source}")]
    Flight {
        epoch: u64,
        peer: String,
        source: FlightError,
    },
    #[error("{peer} answered epoch {epoch} without an acknowledgement")]
    NoAck { epoch: u64, peer: String },
    #[error("{peer} took {took} of the {sent} rows of epoch {epoch}")]
    Short {
        epoch: u64,
        peer: String,
        took: u64,
        sent: u64,
    },
}

/// Sends one stream of record batches with its header and end marker, signed with the cluster
/// credential; answers the owner's ack. Counts the bytes it sends into `sent`.
pub async fn send_stream(
    channel: Channel,
    sign: &Sign,
    header: StreamHeader,
    rows: u64,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    sent: IntCounter,
) -> Result<StreamAck, FlightError> {
    let end = EndOfEpoch {
        epoch: header.epoch,
        sender: header.sender.clone(),
        rows,
    };
    let data = FlightDataEncoderBuilder::new()
        // The schema goes first even when there are no batches, carrying the descriptor.
        .with_schema(wire::schema())
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(header.encode_to_vec())))
        .build(batches)
        .chain(futures::stream::once(async move {
            Ok(FlightData::new().with_app_metadata(end.encode_to_vec()))
        }))
        .inspect_ok(move |d| sent.inc_by(flight_bytes(d)));
    let mut client = FlightClient::new(channel);
    if let Some(secret) = &sign.0 {
        secret.attach(client.metadata_mut());
    }
    let mut results = client.do_put(data).await?;
    let first = results
        .try_next()
        .await?
        .ok_or_else(|| FlightError::protocol("no answer to the exchange stream"))?;
    StreamAck::decode(first.app_metadata)
        .map_err(|e| FlightError::protocol(format!("acknowledgement: {e}")))
}

/// The bytes a Flight message carries (its IPC header, body and app metadata).
pub fn flight_bytes(data: &FlightData) -> u64 {
    (data.data_header.len() + data.data_body.len() + data.app_metadata.len()) as u64
}

/// Whether a failed stream is worth sending again (the network, not the content, failed).
fn transient(e: &FlightError) -> bool {
    match e {
        FlightError::Tonic(status) => !matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unimplemented
                | tonic::Code::Unauthenticated
        ),
        _ => false,
    }
}

/// Sends `entries` to `peer`, retrying a broken stream.
pub async fn send_entries(
    channel: Channel,
    sign: Sign,
    peer: &str,
    header: StreamHeader,
    entries: Arc<Entries>,
    sent: IntCounter,
) -> Result<StreamAck, SendError> {
    let rows = entries.len() as u64;
    let epoch = header.epoch;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let batches = futures::stream::iter(
            BatchEncoder::new(entries.clone())
                .map(|b| b.map_err(|e| FlightError::ExternalError(Box::new(e)))),
        );
        let stream = send_stream(
            channel.clone(),
            &sign,
            header.clone(),
            rows,
            batches,
            sent.clone(),
        );
        match stream.await {
            Ok(ack) if ack.rows == rows => return Ok(ack),
            Ok(ack) => {
                return Err(SendError::Short {
                    epoch,
                    peer: peer.to_string(),
                    took: ack.rows,
                    sent: rows,
                })
            }
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                tracing::warn!(epoch, %peer, attempt, "exchange stream failed, sending it again: {e}");
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(source) => {
                return Err(SendError::Flight {
                    epoch,
                    peer: peer.to_string(),
                    source,
                })
            }
        }
    }
}
