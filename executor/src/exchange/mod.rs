//! The shuffle of partial aggregates between executors (docs/architecture.md, One epoch, step 3):
//! each executor sends every peer the partials of the key groups that peer owns, over Arrow Flight,
//! and collects what the peers send it. The part an executor owns itself never leaves the process.

pub mod client;
pub mod inbox;
pub mod server;
pub mod topology;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use weir_proto::cluster_auth::Sign;
use weir_proto::exchange::StreamHeader;

use crate::aggregate::partials::PlanPartials;
use inbox::{InboxMsg, Received, RunKey};

/// How many batches may wait in the inbox before senders are slowed down.
pub const INBOX_CAPACITY: usize = 8;

/// The exchange format this executor reads and writes (`RegisterRequest.exchange_format`):
/// exact-distinct values as group runs. A peer that declares none (it predates group runs)
/// takes only runs of one group, and is sent those.
pub const EXCHANGE_FORMAT: u32 = 1;

/// One executor of an epoch, as the exchange sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub executor_id: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Send(#[from] client::SendError),
    #[error("address {address} of {peer}: {source}")]
    Address {
        peer: String,
        address: String,
        source: tonic::transport::Error,
    },
    #[error("partials from the peers of epoch {epoch}: {reason}")]
    Receive { epoch: u64, reason: String },
    #[error("epoch {epoch}: no end-of-epoch marker from {missing:?} within {waited:?}")]
    Timeout {
        epoch: u64,
        missing: Vec<String>,
        waited: Duration,
    },
    #[error("the exchange inbox stopped")]
    InboxGone,
}

/// Figures of one epoch's exchange.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExchangeStats {
    pub rows_sent: u64,
    pub rows_received: u64,
    pub elapsed: Duration,
}

/// An executor's end of the exchange.
pub struct Exchange {
    job_id: String,
    executor_id: String,
    inbox: mpsc::Sender<InboxMsg>,
    channels: HashMap<String, Channel>,
    timeout: Duration,
    /// Counts the Flight bytes sent to peers.
    sent: IntCounter,
    /// Signs every stream with the cluster credential.
    sign: Sign,
}

impl Exchange {
    pub fn new(
        job_id: String,
        executor_id: String,
        inbox: mpsc::Sender<InboxMsg>,
        timeout: Duration,
        sent: IntCounter,
        sign: Sign,
    ) -> Self {
        Self {
            job_id,
            executor_id,
            inbox,
            channels: HashMap::new(),
            timeout,
            sent,
            sign,
        }
    }

    fn channel(&mut self, peer: &Peer) -> Result<Channel, ExchangeError> {
        if let Some(c) = self.channels.get(&peer.address) {
            return Ok(c.clone());
        }
        let address_error = |source| ExchangeError::Address {
            peer: peer.executor_id.clone(),
            address: peer.address.clone(),
            source,
        };
        let channel = Endpoint::from_shared(peer.address.clone())
            .map_err(address_error)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        self.channels.insert(peer.address.clone(), channel.clone());
        Ok(channel)
    }

    /// Sends `outgoing[i]` to `peers[i]` (keeping its own part, at `me`) and waits for every
    /// peer's partials of this round of the epoch's run; answers everything this executor
    /// owns, merged.
    #[allow(clippy::too_many_arguments)]
    pub async fn shuffle(
        &mut self,
        epoch: u64,
        run: &str,
        round: u32,
        peers: &[Peer],
        me: usize,
        mut outgoing: Vec<PlanPartials>,
    ) -> Result<(PlanPartials, ExchangeStats), ExchangeError> {
        let started = Instant::now();
        let mut own = std::mem::take(&mut outgoing[me]);
        let expected: BTreeSet<String> = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, p)| p.executor_id.clone())
            .collect();
        if expected.is_empty() {
            return Ok((own, ExchangeStats::default()));
        }
        let (reply, collected) = oneshot::channel();
        self.inbox
            .send(InboxMsg::Collect {
                run: RunKey {
                    epoch,
                    run: run.to_string(),
                    round,
                },
                senders: expected,
                reply,
            })
            .await
            .map_err(|_| ExchangeError::InboxGone)?;

        // A JoinSet aborts its tasks when dropped: an abandoned run stops sending.
        let mut sends = tokio::task::JoinSet::new();
        let mut rows_sent = 0;
        for (i, (peer, part)) in peers.iter().zip(outgoing).enumerate() {
            if i == me {
                continue;
            }
            let entries = tokio::task::block_in_place(|| wire::entries(part));
            rows_sent += entries.len() as u64;
            let header = StreamHeader {
                job_id: self.job_id.clone(),
                epoch,
                sender: self.executor_id.clone(),
                run: run.to_string(),
                round,
            };
            let channel = self.channel(peer)?;
            let id = peer.executor_id.clone();
            let sent = self.sent.clone();
            let sign = self.sign.clone();
            sends.spawn(async move {
                client::send_entries(channel, sign, &id, header, entries, sent).await
            });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        while !sends.is_empty() {
            match tokio::time::timeout_at(deadline, sends.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(result))) => {
                    result?;
                }
                Ok(Some(Err(join))) => {
                    return Err(ExchangeError::Receive {
                        epoch,
                        reason: format!("sender task failed: {join}"),
                    })
                }
                Err(_) => return Err(self.timed_out(epoch, run, round, peers).await),
            }
        }
        let received: Received = match tokio::time::timeout_at(deadline, collected).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(reason))) => return Err(ExchangeError::Receive { epoch, reason }),
            Ok(Err(_)) => return Err(ExchangeError::InboxGone),
            Err(_) => return Err(self.timed_out(epoch, run, round, peers).await),
        };
        let stats = ExchangeStats {
            rows_sent,
            rows_received: received.rows,
            elapsed: started.elapsed(),
        };
        tokio::task::block_in_place(|| own.merge(received.partials)).map_err(|e| {
            ExchangeError::Receive {
                epoch,
                reason: e.to_string(),
            }
        })?;
        Ok((own, stats))
    }

    async fn timed_out(&self, epoch: u64, run: &str, round: u32, peers: &[Peer]) -> ExchangeError {
        let (reply, answer) = oneshot::channel();
        let finished = match self
            .inbox
            .send(InboxMsg::Finished {
                run: RunKey {
                    epoch,
                    run: run.to_string(),
                    round,
                },
                reply,
            })
            .await
        {
            Ok(()) => answer.await.unwrap_or_default(),
            Err(_) => BTreeSet::new(),
        };
        ExchangeError::Timeout {
            epoch,
            missing: peers
                .iter()
                .map(|p| p.executor_id.clone())
                .filter(|id| *id != self.executor_id && !finished.contains(id))
                .collect(),
            waited: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests;
