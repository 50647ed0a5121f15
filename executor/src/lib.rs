//! The data plane: an executor joins a driver, then runs the epochs it is handed.
//!
//! Components: the gRPC control service and the Arrow Flight exchange service on one port (both
//! translate calls into messages), the epoch actor (owns the Kafka reader, the state store and
//! the staged tables), the exchange inbox (merges what peers send) and the heartbeat task.

pub mod emit;
pub mod epoch;
pub mod exchange;
pub mod kafka_reader;
pub mod partials;
pub mod preagg;
pub mod staging;
pub mod state;
pub mod state_keys;
pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_common::job::JobSpec;
use weir_proto::control::driver_client::DriverClient;
use weir_proto::control::executor_server::{Executor, ExecutorServer};
use weir_proto::control::{
    CommittedRequest, CommittedResponse, ExecuteRequest, HeartbeatRequest, Prepared,
    RegisterRequest, RegisterResponse, ShutdownRequest, ShutdownResponse,
};

use crate::epoch::EpochRunner;
use crate::exchange::server::ExchangeService;
use crate::exchange::Exchange;

/// How long an executor waits for its peers' partials of an epoch.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(600);

/// How an executor is started.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The driver's control address, e.g. `http://127.0.0.1:7400`.
    pub driver_url: String,
    /// Where this executor's gRPC service listens.
    pub listen: SocketAddr,
    /// The address the driver uses to reach this executor (defaults to the bound address).
    pub advertise: Option<String>,
    /// Local directory for RocksDB.
    pub state_dir: PathBuf,
    pub executor_id: String,
}

/// Messages to the epoch actor.
enum Command {
    Execute(ExecuteRequest, oneshot::Sender<Result<Prepared, Status>>),
    Committed(u64),
}

struct Service {
    commands: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl Executor for Service {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Prepared>, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Execute(request.into_inner(), tx))
            .await
            .map_err(|_| Status::unavailable("executor is shutting down"))?;
        let prepared = rx
            .await
            .map_err(|_| Status::internal("epoch actor stopped"))??;
        Ok(Response::new(prepared))
    }

    async fn committed(
        &self,
        request: Request<CommittedRequest>,
    ) -> Result<Response<CommittedResponse>, Status> {
        self.commands
            .send(Command::Committed(request.into_inner().epoch))
            .await
            .map_err(|_| Status::unavailable("executor is shutting down"))?;
        Ok(Response::new(CommittedResponse {}))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownResponse {}))
    }
}

/// Registers with the driver, retrying while it is not reachable yet.
async fn register(config: &ExecutorConfig, address: &str) -> anyhow::Result<RegisterResponse> {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut client = DriverClient::connect(config.driver_url.clone()).await?;
            let response = client
                .register(RegisterRequest {
                    executor_id: config.executor_id.clone(),
                    address: address.to_string(),
                })
                .await?;
            anyhow::Ok(response.into_inner())
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::info!(driver = %config.driver_url, "driver not reachable yet: {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Keeps telling the driver this executor is alive; registers again if the driver forgot it.
async fn heartbeat(config: ExecutorConfig, address: String, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let beat = async {
            let mut client = DriverClient::connect(config.driver_url.clone()).await?;
            let r = client
                .heartbeat(HeartbeatRequest {
                    executor_id: config.executor_id.clone(),
                })
                .await?;
            anyhow::Ok(r.into_inner().known)
        };
        match beat.await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("driver does not know this executor; registering again");
                if let Err(e) = register(&config, &address).await {
                    tracing::warn!("registering again failed: {e:#}");
                }
            }
            Err(e) => tracing::debug!("heartbeat failed: {e:#}"),
        }
    }
}

/// The epoch actor: runs epochs one at a time, in the order the driver sends them.
async fn epoch_actor(mut runner: EpochRunner, mut commands: mpsc::Receiver<Command>) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Execute(req, reply) => {
                let span =
                    tracing::info_span!("epoch", epoch = req.epoch, executor = %runner.executor_id);
                let result = runner
                    .execute(req)
                    .instrument(span.clone())
                    .await
                    .map_err(|e| {
                        span.in_scope(|| tracing::error!("epoch failed: {e:#}"));
                        Status::internal(format!("{e:#}"))
                    });
                let _ = reply.send(result);
            }
            Command::Committed(epoch) => {
                tracing::debug!(epoch, executor = %runner.executor_id, "epoch committed");
            }
        }
    }
}

/// Runs an executor until the driver shuts it down.
pub async fn run(config: ExecutorConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    let address = config.advertise.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            // A wildcard address is no address for the driver; this host's loopback is, for a
            // driver on the same machine. Elsewhere --advertise names the reachable address.
            tracing::info!(
                "listening on {bound}; advertising 127.0.0.1 (set --advertise for a remote driver)"
            );
            format!("http://127.0.0.1:{}", bound.port())
        } else {
            format!("http://{bound}")
        }
    });
    let registration = register(&config, &address).await?;
    let job = JobSpec::from_json(&registration.job_json).context("job from the driver")?;
    tracing::info!(executor = %config.executor_id, %address, job = %job.name, "registered with the driver");
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let inbox = exchange::inbox::spawn(exchange::INBOX_CAPACITY);
    let exchange = Exchange::new(
        registration.job_id.clone(),
        config.executor_id.clone(),
        inbox.clone(),
        EXCHANGE_TIMEOUT,
    );
    let runner = EpochRunner::new(
        config.executor_id.clone(),
        job,
        &config.state_dir,
        &registration.job_id,
        exchange,
    )?;

    let (commands_tx, commands_rx) = mpsc::channel(4);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let actor = tokio::spawn(epoch_actor(runner, commands_rx));
    let beats = tokio::spawn(heartbeat(config.clone(), address, shutdown_rx.clone()));
    let service = Service {
        commands: commands_tx,
        shutdown: shutdown_tx,
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(ExecutorServer::new(service))
        .add_service(FlightServiceServer::new(ExchangeService::new(
            registration.job_id.clone(),
            inbox,
        )))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        })
        .await
        .context("executor gRPC server")?;
    beats.abort();
    // The service (and with it the command sender) is gone: the actor drains and ends.
    let _ = actor.await;
    tracing::info!(executor = %config.executor_id, "executor stopped");
    Ok(())
}
