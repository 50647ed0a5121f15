//! The data plane: an executor joins a driver, then runs the epochs it is handed.
//!
//! Components: the gRPC control service and the Arrow Flight exchange service on one port (both
//! translate calls into messages), the epoch actor (owns the Kafka reader, the state store and
//! the staged tables), the exchange inbox (merges what peers send) and the heartbeat task.

pub mod aggregate;
pub mod buffer_pool;
pub mod epoch;
pub mod exchange;
pub mod input;
pub mod kafka_wire;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_common::job::JobSpec;
use weir_common::testing::fault;
use weir_proto::cluster_auth::{check_exposure, ClusterSecret, Guard, Sign, PROOF_HEADER};
use weir_proto::control::driver_client::DriverClient;
use weir_proto::control::executor_server::{Executor, ExecutorServer};
use weir_proto::control::{
    AbortRequest, AbortResponse, CommittedRequest, CommittedResponse, ExecuteRequest,
    HeartbeatRequest, IdentifyRequest, IdentifyResponse, LeaveRequest, Prepared, RegisterRequest,
    RegisterResponse, ShutdownRequest, ShutdownResponse,
};
use weir_telemetry::{MetricsEndpoint, Readiness};

use crate::aggregate::partials::Shape;
use crate::epoch::EpochRunner;
use crate::exchange::server::ExchangeService;
use crate::exchange::Exchange;
use crate::metrics::ExecutorMetrics;

/// How long an executor waits for its peers' partials of an epoch.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a stopping executor waits for the epoch in progress before it exits anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

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
    /// Where the Prometheus `/metrics` endpoint listens; none serves no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The job file this executor read itself: the secret values of the job (storage and
    /// Kafka options) come from it, never over the network.
    pub job: Option<JobSpec>,
    /// The secret every call between the driver and its executors is signed with.
    pub cluster_secret: Option<ClusterSecret>,
    /// Listen beyond loopback without a cluster secret (the operator trusts the network).
    pub open_cluster: bool,
}

/// Messages to the epoch actor.
enum Command {
    Execute(ExecuteRequest, oneshot::Sender<Result<Prepared, Status>>),
    Committed(u64),
}

/// The newest driver generation this executor has heard of: calls of older (fenced) drivers
/// are refused.
#[derive(Clone, Default)]
struct Generation(Arc<AtomicU64>);

impl Generation {
    fn heard(&self, generation: u64) {
        self.0.fetch_max(generation, Ordering::SeqCst);
    }

    /// Admits a call of a driver of `generation`, refusing an older one than the newest heard.
    fn admit(&self, generation: u64) -> Result<(), Status> {
        let newest = self.0.fetch_max(generation, Ordering::SeqCst);
        if generation < newest {
            return Err(Status::failed_precondition(format!(
                "driver generation {generation} is fenced: this executor serves generation {newest}"
            )));
        }
        Ok(())
    }
}

struct Service {
    executor_id: String,
    incarnation: u64,
    generation: Generation,
    commands: mpsc::Sender<Command>,
    /// The run the driver wants worked on; a running epoch of any other run is abandoned.
    current_run: watch::Sender<String>,
    /// Set once the executor was asked to stop: it takes no new epoch.
    stopping: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl Executor for Service {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Prepared>, Status> {
        let request = request.into_inner();
        self.generation.admit(request.generation)?;
        if *self.stopping.borrow() {
            return Err(Status::unavailable("executor is stopping"));
        }
        let (tx, rx) = oneshot::channel();
        // The driver starts a run only after giving up the previous one.
        self.current_run.send_replace(request.run.clone());
        self.commands
            .send(Command::Execute(request, tx))
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
        let CommittedRequest { epoch, generation } = request.into_inner();
        self.generation.admit(generation)?;
        self.commands
            .send(Command::Committed(epoch))
            .await
            .map_err(|_| Status::unavailable("executor is shutting down"))?;
        Ok(Response::new(CommittedResponse {}))
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        let AbortRequest {
            epoch,
            run,
            generation,
        } = request.into_inner();
        self.generation.admit(generation)?;
        let aborted = self.current_run.send_if_modified(|current| {
            let hit = *current == run;
            if hit {
                current.clear();
            }
            hit
        });
        if aborted {
            tracing::info!(epoch, %run, "run abandoned by the driver");
        }
        Ok(Response::new(AbortResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.generation.admit(request.into_inner().generation)?;
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn identify(
        &self,
        _request: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        Ok(Response::new(IdentifyResponse {
            executor_id: self.executor_id.clone(),
            incarnation: self.incarnation,
        }))
    }
}

/// This process's registration: who it is and where the driver reaches it.
#[derive(Clone)]
struct Identity {
    config: ExecutorConfig,
    address: String,
    incarnation: u64,
    /// Raised to the generation of every driver it registers with.
    generation: Generation,
}

/// A registration the driver refused for good: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Registers with the driver, retrying while it is not reachable yet. A driver that refuses
/// this executor (another credential, its id held by a live executor) or that cannot prove it
/// knows the cluster secret ends it with [`Refused`]. `preparing`: the executor still opens
/// its store, input and tables with the job the driver answers, and its heartbeats say when
/// it is ready; the driver assigns it nothing until then.
async fn register(me: &Identity, preparing: bool) -> anyhow::Result<RegisterResponse> {
    let config = &me.config;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut client = DriverClient::connect(config.driver_url.clone()).await?;
            let mut request = Request::new(RegisterRequest {
                executor_id: config.executor_id.clone(),
                address: me.address.clone(),
                incarnation: me.incarnation,
                preparing,
                exchange_format: exchange::EXCHANGE_FORMAT,
            });
            let nonce = config
                .cluster_secret
                .as_ref()
                .map(|s| s.attach(request.metadata_mut()));
            let response = match client.register(request).await {
                Ok(r) => r,
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::AlreadyExists
                    ) =>
                {
                    return Err(anyhow::Error::new(Refused(format!(
                        "the driver at {} refused this executor: {}",
                        config.driver_url,
                        status.message()
                    ))));
                }
                Err(status) => return Err(status.into()),
            };
            if let (Some(secret), Some(nonce)) = (&config.cluster_secret, nonce) {
                let proof = response
                    .metadata()
                    .get(PROOF_HEADER)
                    .and_then(|v| v.to_str().ok());
                if !proof.is_some_and(|p| secret.proves(nonce, p)) {
                    return Err(anyhow::Error::new(Refused(format!(
                        "the driver at {} did not prove it knows the cluster secret; its job \
                         is not taken (is it started with the same --cluster-secret-file?)",
                        config.driver_url
                    ))));
                }
            }
            anyhow::Ok(response.into_inner())
        };
        match attempt.await {
            Ok(r) => {
                me.generation.heard(r.generation);
                return Ok(r);
            }
            Err(e) if e.is::<Refused>() => return Err(e),
            Err(e) => {
                tracing::info!(driver = %config.driver_url, "driver not reachable yet: {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A connection to the driver whose calls carry the cluster credential.
async fn driver_client(
    config: &ExecutorConfig,
) -> anyhow::Result<DriverClient<InterceptedService<Channel, Sign>>> {
    let channel = tonic::transport::Endpoint::from_shared(config.driver_url.clone())?
        .connect()
        .await?;
    Ok(DriverClient::with_interceptor(
        channel,
        Sign(config.cluster_secret.clone()),
    ))
}

/// How long one heartbeat (connecting included) may take.
const HEARTBEAT_CALL_LIMIT: Duration = Duration::from_secs(3);

/// Keeps telling the driver this executor is alive and ready (it starts once the executor
/// can run epochs, and its first beat goes at once); registers again if the driver forgot it
/// (it restarted). A driver that now runs another job, or that gave this executor's id to
/// another process, gets an error into `fatal`.
async fn heartbeat(
    me: Identity,
    job_id: String,
    mut stop: watch::Receiver<bool>,
    fatal: watch::Sender<Option<String>>,
) {
    let config = &me.config;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let beat = async {
            let r = driver_client(config)
                .await?
                .heartbeat(HeartbeatRequest {
                    executor_id: config.executor_id.clone(),
                    incarnation: me.incarnation,
                    ready: true,
                })
                .await?;
            anyhow::Ok(r.into_inner().known)
        };
        // A driver that hangs (paused, or its host gone quiet) must not stall the beats: a
        // replacement behind the same address would never hear from this executor.
        let beat = async {
            tokio::time::timeout(HEARTBEAT_CALL_LIMIT, beat)
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {HEARTBEAT_CALL_LIMIT:?}"))?
        };
        match beat.await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("driver does not know this executor; registering again");
                match register(&me, false).await {
                    Ok(r) if r.job_id != job_id => {
                        fatal.send_replace(Some(format!(
                            "the driver at {} now runs job {} instead of {job_id}; restart the executor",
                            config.driver_url, r.job_id
                        )));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.is::<Refused>() => {
                        fatal.send_replace(Some(format!("{e:#}")));
                        return;
                    }
                    Err(e) => tracing::warn!("registering again failed: {e:#}"),
                }
            }
            Err(e) => tracing::debug!("heartbeat failed: {e:#}"),
        }
    }
}

/// Tells the driver this executor is stopping, so it plans no later epoch here; answers
/// whether the driver took it (it knows this process and answered in time).
async fn leave(me: &Identity) -> bool {
    let config = &me.config;
    let call = async {
        let r = driver_client(config)
            .await?
            .leave(LeaveRequest {
                executor_id: config.executor_id.clone(),
                incarnation: me.incarnation,
            })
            .await?;
        anyhow::Ok(r.into_inner().known)
    };
    match tokio::time::timeout(HEARTBEAT_CALL_LIMIT, call).await {
        Ok(Ok(known)) => known,
        Ok(Err(e)) => {
            tracing::warn!("telling the driver this executor stops failed: {e:#}");
            false
        }
        Err(_) => {
            tracing::warn!(
                "the driver did not take this executor's leave within {HEARTBEAT_CALL_LIMIT:?}"
            );
            false
        }
    }
}

/// The epoch actor: runs epochs one at a time, in the order the driver sends them; a run the
/// driver abandons is dropped where it stands (the next run restores state if it must).
async fn epoch_actor(
    mut runner: EpochRunner,
    mut commands: mpsc::Receiver<Command>,
    current_run: watch::Receiver<String>,
    busy: watch::Sender<bool>,
    stopping: watch::Receiver<bool>,
    metrics: ExecutorMetrics,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Execute(_, reply) if *stopping.borrow() => {
                // Queued before the stop: not started, so nothing to finish.
                let _ = reply.send(Err(Status::unavailable("executor is stopping")));
            }
            Command::Execute(req, reply) => {
                busy.send_replace(true);
                let epoch = req.epoch;
                let run = req.run.clone();
                let span = tracing::info_span!("epoch", epoch);
                let mut current = current_run.clone();
                let result = tokio::select! {
                    r = runner.execute(req).instrument(span.clone()) => r.map_err(|e| {
                        if *current_run.borrow() == run {
                            span.in_scope(|| tracing::error!("epoch failed: {e:#}"));
                            Status::internal(format!("{e:#}"))
                        } else {
                            span.in_scope(|| tracing::info!(%run, "run abandoned: {e:#}"));
                            Status::aborted(format!("run {run} of epoch {epoch} was abandoned"))
                        }
                    }),
                    _ = current.wait_for(|c| *c != run) => {
                        span.in_scope(|| tracing::info!(%run, "run abandoned"));
                        Err(Status::aborted(format!("run {run} of epoch {epoch} was abandoned")))
                    }
                };
                match &result {
                    Ok(prepared) => {
                        if let Some(stats) = &prepared.stats {
                            span.in_scope(|| {
                                tracing::debug!(
                                    input_rows = stats.input_rows,
                                    windows = stats.windows_emitted,
                                    state_rows = stats.state_rows,
                                    "epoch prepared"
                                )
                            });
                            metrics.record(stats);
                        }
                    }
                    Err(_) => metrics.record_failure(),
                }
                let _ = reply.send(result);
                busy.send_replace(false);
            }
            Command::Committed(epoch) => {
                tracing::debug!(epoch, executor = %runner.executor_id, "epoch committed");
            }
        }
    }
}

/// Runs an executor until the driver shuts it down or `stop` turns true (SIGTERM): then it
/// tells the driver it leaves and serves until the driver lets it go between epochs (so its
/// going fails no run); if the driver cannot be told, or does not let go within `DRAIN_LIMIT`,
/// it stops heartbeating, refuses new epochs, finishes the one in progress (or drops it when
/// the driver abandons it; within the same `DRAIN_LIMIT`) and exits.
pub async fn run(config: ExecutorConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    // Every line the executor logs names it.
    let span = tracing::info_span!("executor", executor = %config.executor_id);
    serve(config, stop).instrument(span).await
}

async fn serve(config: ExecutorConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    let readiness = Readiness::new("registering with the driver");
    check_exposure(
        "executor",
        config.listen,
        config.cluster_secret.as_ref(),
        config.open_cluster,
    )
    .map_err(anyhow::Error::msg)?;
    let metrics = ExecutorMetrics::new(&config.executor_id).context("creating the metrics")?;
    let _endpoint = match config.metrics_listen {
        Some(listen) => {
            let endpoint =
                MetricsEndpoint::serve(listen, metrics.registry().clone(), None, readiness.clone())
                    .await?;
            // `weir local` and tests read this line to learn the port.
            println!(
                "weir executor metrics on http://{}/metrics",
                endpoint.addr()
            );
            Some(endpoint)
        }
        None => None,
    };
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
    let me = Identity {
        config: config.clone(),
        address: address.clone(),
        incarnation: uuid::Uuid::new_v4().as_u64_pair().0,
        generation: Generation::default(),
    };
    let mut stopped = stop.clone();
    let registration = tokio::select! {
        r = register(&me, true) => r?,
        _ = stopped.wait_for(|s| *s) => return Ok(()),
    };
    let job = JobSpec::from_json(&registration.job_json)
        .context("job from the driver")?
        .with_secrets_from(config.job.as_ref())?;
    tracing::info!(executor = %config.executor_id, %address, job = %job.name, "registered with the driver");
    // Registered, not ready: the driver assigns this executor nothing until it says so.
    tokio::task::block_in_place(|| fault::reached("registered", 0));
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let inbox = exchange::inbox::spawn(exchange::INBOX_CAPACITY, Shape::all(&job));
    let exchange = Exchange::new(
        registration.job_id.clone(),
        config.executor_id.clone(),
        inbox.clone(),
        EXCHANGE_TIMEOUT,
        metrics.flight_bytes_sent.clone(),
        Sign(config.cluster_secret.clone()),
    );
    let (run_tx, run_rx) = watch::channel(String::new());
    let mut runner = EpochRunner::new(
        config.executor_id.clone(),
        job,
        &config.state_dir,
        &registration.job_id,
        exchange,
        run_rx.clone(),
        readiness.clone(),
    )?;
    runner.open_tables();
    readiness.set_ready();

    let (commands_tx, commands_rx) = mpsc::channel(4);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (busy_tx, mut busy_rx) = watch::channel(false);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let actor = tokio::spawn(
        epoch_actor(
            runner,
            commands_rx,
            run_rx,
            busy_tx,
            stopping_rx.clone(),
            metrics.clone(),
        )
        .in_current_span(),
    );
    let (fatal_tx, mut fatal_rx) = watch::channel(None);
    // Its first beat tells the driver this executor is ready: epochs are assigned from then on.
    let beats = tokio::spawn(
        heartbeat(
            me.clone(),
            registration.job_id.clone(),
            stopping_rx.clone(),
            fatal_tx,
        )
        .in_current_span(),
    );
    let service = Service {
        executor_id: config.executor_id.clone(),
        incarnation: me.incarnation,
        generation: me.generation.clone(),
        commands: commands_tx,
        current_run: run_tx,
        stopping: stopping_rx,
        shutdown: shutdown_tx,
    };
    let fatal = fatal_rx.clone();
    let released = shutdown_rx.clone();
    let leaver = me.clone();
    let (closing_tx, mut closing_rx) = watch::channel(false);
    // Without TCP_NODELAY (which tonic sets only on listeners it binds itself), every
    // `Prepared` answer and exchange reply waited ~40 ms for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Calls are served in tonic's own tasks: give each the executor's span, so what the
    // handlers log names the executor too.
    let executor_span = tracing::Span::current();
    let refused = metrics.refused_calls.clone();
    let guard = Guard::new("executor", config.cluster_secret.clone(), move || {
        refused.inc()
    });
    let server = tonic::transport::Server::builder()
        .trace_fn(move |_| executor_span.clone())
        .add_service(ExecutorServer::with_interceptor(service, guard.clone()))
        .add_service(FlightServiceServer::with_interceptor(
            ExchangeService::new(
                registration.job_id.clone(),
                inbox,
                metrics.flight_bytes_received.clone(),
            ),
            guard,
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown_rx.wait_for(|stop| *stop) => {}
                _ = fatal_rx.wait_for(|f| f.is_some()) => {}
                _ = async {
                    let _ = stop.wait_for(|s| *s).await;
                    readiness.set_not_ready("stopping: finishing the epoch in progress");
                    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
                    // The driver plans no later epoch here and lets this executor go between
                    // epochs (a Shutdown, which ends the server above): until then it serves
                    // as usual, so an epoch planned before the driver heard is not refused.
                    if leave(&leaver).await {
                        tracing::info!("stopping: waiting for the driver to let this executor go");
                        let mut released = released;
                        let _ = tokio::time::timeout_at(deadline, released.wait_for(|r| *r)).await;
                    }
                    stopping_tx.send_replace(true);
                    tracing::info!("stopping: finishing the epoch in progress");
                    let _ = tokio::time::timeout_at(deadline, busy_rx.wait_for(|b| !*b)).await;
                } => {}
            }
            stopping_tx.send_replace(true);
            closing_tx.send_replace(true);
        });
    // A graceful stop waits for connections to close; peers keep theirs open, so it is bounded.
    tokio::select! {
        r = server => r.context("executor gRPC server")?,
        _ = async {
            let _ = closing_rx.wait_for(|c| *c).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => {}
    }
    beats.abort();
    // The service (and with it the command sender) is gone: the actor drains and ends, unless
    // an epoch is still running after the drain limit.
    if tokio::time::timeout(Duration::from_secs(5), actor)
        .await
        .is_err()
    {
        tracing::warn!("an epoch was still running at exit; the driver runs it again");
    }
    if let Some(reason) = fatal.borrow().clone() {
        anyhow::bail!(reason);
    }
    // What the executor cost while it served: `weir bench` reports how busy each one was.
    tracing::info!(
        executor = %config.executor_id,
        peak_rss_bytes = weir_telemetry::process::peak_rss_bytes(),
        cpu_seconds = weir_telemetry::process::cpu_time().map(|t| t.as_secs_f64()),
        wall_seconds = started.elapsed().as_secs_f64(),
        "executor stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Generation;

    /// An executor takes calls of the newest driver generation it has heard of, and refuses
    /// an older driver's even after it served it.
    #[test]
    fn calls_of_a_fenced_driver_are_refused() {
        let g = Generation::default();
        g.admit(1).unwrap();
        g.heard(2);
        let refused = g.admit(1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("generation 1 is fenced"),
            "{refused:?}"
        );
        g.admit(2).unwrap();
        g.admit(3).unwrap();
        assert!(
            g.admit(2).is_err(),
            "a call of generation 3 fences generation 2"
        );
    }
}
