//! The Arrow Flight side of the exchange: `DoPut` streams of partial aggregates from peers,
//! handed batch by batch to the inbox. A full inbox stops this handler reading, HTTP/2 flow
//! control stops the sender: that is the backpressure. Other Flight calls are refused.

use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use prometheus::IntCounter;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use weir_proto::exchange::{EndOfEpoch, StreamAck, StreamHeader};

use super::client::flight_bytes;
use super::inbox::{InboxMsg, StreamId};

pub struct ExchangeService {
    job_id: String,
    inbox: mpsc::Sender<InboxMsg>,
    /// Numbers each incoming stream, so a resent stream is told apart from the first.
    connections: AtomicU64,
    /// Counts the Flight bytes received from peers.
    received: IntCounter,
}

impl ExchangeService {
    pub fn new(job_id: String, inbox: mpsc::Sender<InboxMsg>, received: IntCounter) -> Self {
        Self {
            job_id,
            inbox,
            connections: AtomicU64::new(0),
            received,
        }
    }

    fn header(&self, first: &FlightData) -> Result<StreamHeader, Status> {
        let cmd = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.cmd.clone())
            .ok_or_else(|| Status::invalid_argument("the first message has no descriptor"))?;
        let header = StreamHeader::decode(cmd)
            .map_err(|e| Status::invalid_argument(format!("stream header: {e}")))?;
        if header.job_id != self.job_id {
            return Err(Status::failed_precondition(format!(
                "this executor runs job {}, not {}",
                self.job_id, header.job_id
            )));
        }
        Ok(header)
    }

    /// Feeds the stream to the inbox; answers the number of rows taken.
    async fn take(
        &self,
        stream: &StreamId,
        data: BoxStream<'static, Result<FlightData, FlightError>>,
    ) -> Result<u64, Status> {
        let gone = || Status::unavailable("executor is shutting down");
        // The marker carries no Arrow message, so it is taken out before the IPC decoder.
        let (marker_tx, mut marker_rx) = oneshot::channel();
        let mut marker_tx = Some(marker_tx);
        let received = self.received.clone();
        let data = data.filter_map(move |item| {
            if let Ok(d) = &item {
                received.inc_by(flight_bytes(d));
            }
            let item = match item {
                Ok(d) if d.data_header.is_empty() && !d.app_metadata.is_empty() => {
                    if let Some(tx) = marker_tx.take() {
                        let _ = tx.send(d.app_metadata);
                    }
                    None
                }
                other => Some(other),
            };
            std::future::ready(item)
        });
        let mut decoder = FlightDataDecoder::new(data);
        while let Some(item) = decoder.next().await {
            let decoded = item.map_err(|e| Status::invalid_argument(format!("{e}")))?;
            if let DecodedPayload::RecordBatch(batch) = decoded.payload {
                self.inbox
                    .send(InboxMsg::Batch {
                        stream: stream.clone(),
                        batch,
                    })
                    .await
                    .map_err(|_| gone())?;
            }
        }
        let Ok(metadata) = marker_rx.try_recv() else {
            return Err(Status::aborted(
                "stream ended without an end-of-epoch marker",
            ));
        };
        let end = EndOfEpoch::decode(metadata)
            .map_err(|e| Status::invalid_argument(format!("end marker: {e}")))?;
        if end.epoch != stream.epoch || end.sender != stream.sender {
            return Err(Status::invalid_argument(
                "end marker does not match the stream header",
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(InboxMsg::End {
                stream: stream.clone(),
                rows: end.rows,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(Status::failed_precondition)
    }
}

fn refused<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not served: this endpoint takes exchange streams (DoPut) only"
    )))
}

#[tonic::async_trait]
impl FlightService for ExchangeService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let header = self.header(&first)?;
        let stream = StreamId {
            epoch: header.epoch,
            run: header.run,
            round: header.round,
            sender: header.sender,
            connection: self.connections.fetch_add(1, Ordering::Relaxed),
        };
        let data = stream::once(async { Ok(first) })
            .chain(incoming.map_err(|s| FlightError::Tonic(Box::new(s))))
            .boxed();
        match self.take(&stream, data).await {
            Ok(rows) => {
                let ack = StreamAck {
                    epoch: stream.epoch,
                    rows,
                };
                let result = PutResult {
                    app_metadata: ack.encode_to_vec().into(),
                };
                Ok(Response::new(stream::iter([Ok(result)]).boxed()))
            }
            Err(status) => {
                tracing::warn!(epoch = stream.epoch, sender = %stream.sender, "exchange stream failed: {}", status.message());
                let _ = self.inbox.send(InboxMsg::Abandon { stream }).await;
                Err(status)
            }
        }
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        refused("Handshake")
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        refused("ListFlights")
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        refused("GetFlightInfo")
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        refused("PollFlightInfo")
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        refused("GetSchema")
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        refused("DoGet")
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        refused("DoAction")
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        refused("ListActions")
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        refused("DoExchange")
    }
}
