//! The control plane: membership, epoch planning and coordination, the checkpoint log and the
//! Delta commits. The driver never reads a Kafka record.

pub mod admin;
pub mod cluster;
pub mod epoch;
pub mod ops;
pub mod output;
pub mod source;
pub mod ui;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use deltalake::arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, watch};
use weir_common::checkpoint::Metadata;
use weir_common::data::output::{dead_letter_schema, late_rows_schema, output_schema};
use weir_common::job::{DeltaSink, JobSpec, Trigger};
use weir_common::now_micros;
use weir_proto::admin::admin_server::AdminServer;
use weir_proto::admin::QueryState;
use weir_proto::cluster_auth::{check_exposure, ClusterSecret, Guard, Sign};
use weir_proto::control::driver_server::DriverServer;
use weir_proto::control::RegisterResponse;
use weir_storage::CheckpointLog;
use weir_telemetry::{MetricsEndpoint, Readiness};

use crate::admin::{AdminService, AdminToken, QueryFacts};
use crate::cluster::executors::ExecutorClients;
use crate::cluster::kubernetes::{ExecutorDeployment, ReplicaFollower};
use crate::cluster::scale::Scaler;
use crate::cluster::service::DriverService;
use crate::epoch::coordinator::{Coordinator, Operations};
use crate::ops::alerts::{AlertKind, AlertSender, Alerts};
use crate::ops::metrics::DriverMetrics;
use crate::ops::progress::{QueryIdentity, QueryTable};
use crate::ops::pushgateway::Pushgateway;
use crate::ops::query_status::StatusBoard;
use crate::ops::timeline::Timeline;
use crate::output::delta_commit::DeltaCommitter;
use crate::output::kafka_sink::KafkaSinkWriter;
use crate::output::merge::MergeKeys;
use crate::output::table_commits::QueryOutput;
use crate::source::SourceReader;

/// How long a stopping driver waits for its alerts to be delivered.
const ALERT_FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// A certificate chain and private key, PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(***)")
    }
}

/// How a driver is started.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub job: JobSpec,
    /// Where the control service listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The executor count to aim for at first (`weir admin scale` changes it; a job scaled
    /// before resumes what it was scaled to).
    pub executors: usize,
    /// Where the admin service listens.
    pub admin_listen: SocketAddr,
    /// The bearer token mutating admin calls need, if any.
    pub admin_token: AdminToken,
    /// Serve the admin port over TLS with this identity.
    pub admin_tls: Option<TlsIdentity>,
    /// Where the Prometheus endpoint listens; none serves no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the web dashboard listens; none serves no dashboard.
    pub ui_listen: Option<SocketAddr>,
    /// The secret every call between the driver and its executors is signed with.
    pub cluster_secret: Option<ClusterSecret>,
    /// Listen beyond loopback without a cluster secret (the operator trusts the network).
    pub open_cluster: bool,
    /// The executors' Deployment the driver keeps at its target, when it runs in Kubernetes.
    pub kubernetes: Option<KubernetesExecutors>,
    /// Executors are started and stopped from outside (KEDA, an HPA, `kubectl scale`): the
    /// target follows the registered ones and the autoscaler only publishes its decisions.
    pub external_scaling: bool,
}

/// `--kubernetes-deployment` and `--kubernetes-namespace`.
#[derive(Debug, Clone)]
pub struct KubernetesExecutors {
    pub deployment: String,
    /// Defaults to the driver's service account's namespace.
    pub namespace: Option<String>,
}

/// Prints a line a supervisor (`weir local`, tests) reads to find the driver's ports.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Reads the checkpoint's metadata, or writes it for a new job; refuses another query's checkpoint.
async fn job_metadata(log: &CheckpointLog, job: &JobSpec) -> anyhow::Result<Metadata> {
    let fingerprint = job.fingerprint();
    if let Some(existing) = log.metadata().await? {
        if existing.fingerprint != fingerprint || existing.key_groups != job.key_groups {
            bail!(
                "checkpoint {} belongs to a different query (fingerprint {}, this job {}); \
                 use a new checkpoint_location for a changed query",
                log.url(),
                existing.fingerprint,
                fingerprint
            );
        }
        return Ok(existing);
    }
    let metadata = Metadata {
        job_id: uuid::Uuid::new_v4().to_string(),
        name: job.name.clone(),
        key_groups: job.key_groups,
        fingerprint,
        created_at_micros: now_micros(),
    };
    log.write_metadata(&metadata).await?;
    // Another driver may have won the race to create it: use what is there.
    log.metadata()
        .await?
        .context("metadata.json vanished right after it was written")
}

/// Whether `e` says a newer driver took the checkpoint.
pub fn fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<weir_storage::LogError>(),
            Some(weir_storage::LogError::Fenced { .. })
        )
    })
}

/// Runs a driver until its job stops: SIGINT/SIGTERM (or the admin API's stop) finish the
/// current epoch first. A failure raises the `query failed` alert before the driver exits.
pub async fn run(config: DriverConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    check_exposure(
        "driver's control port",
        config.listen,
        config.cluster_secret.as_ref(),
        config.open_cluster,
    )
    .map_err(anyhow::Error::msg)?;
    let metrics = DriverMetrics::new(config.executors).context("creating the metrics")?;
    let timeline = Timeline::default();
    let alerts = Alerts::start(
        config.job.alerts.as_ref(),
        &config.job.name,
        metrics.clone(),
        timeline.clone(),
    )?;
    let result = drive(
        config,
        stop,
        metrics,
        (alerts.sender(), alerts.epoch_budget),
        timeline,
    )
    .await;
    match &result {
        // The query goes on under the newer driver: nothing failed.
        Err(e) if fenced(e) => tracing::warn!("{e:#}"),
        Err(e) => alerts.raise(AlertKind::QueryFailed, &format!("the query failed: {e:#}")),
        Ok(()) => {}
    }
    alerts.close(ALERT_FLUSH_LIMIT).await;
    tracing::info!(
        peak_rss_bytes = weir_telemetry::process::peak_rss_bytes(),
        "driver stopped"
    );
    result
}

async fn drive(
    config: DriverConfig,
    stop: watch::Receiver<bool>,
    metrics: DriverMetrics,
    (alerts, epoch_budget): (AlertSender, Option<Duration>),
    timeline: Timeline,
) -> anyhow::Result<()> {
    let started_at_micros = now_micros();
    let mut scaler = Scaler::new(config.executors, config.job.executors, config.job.autoscale)
        .map_err(anyhow::Error::msg)?;
    if config.external_scaling {
        tracing::info!(
            "external scaling: the executor target follows the registered executors within \
             executors.{{min, max}}"
        );
        scaler = scaler.scaled_externally();
    }
    let replicas = match &config.kubernetes {
        Some(k) => {
            let deployment = ExecutorDeployment::connect(&k.deployment, k.namespace.as_deref())
                .await
                .with_context(|| format!("--kubernetes-deployment {}", k.deployment))?;
            tracing::info!(
                deployment = %deployment.name,
                namespace = %deployment.namespace,
                "keeping the executors' Deployment at the executor target"
            );
            Some(ReplicaFollower::start(deployment))
        }
        None => None,
    };
    let job = config.job;
    let mut log = CheckpointLog::open(&job.checkpoint_url, &job.storage_options)?;
    let metadata = job_metadata(&log, &job).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    let generation = log.take_generation(&run_id, &host, now_micros()).await?;
    tracing::info!(
        generation,
        "took the checkpoint: earlier drivers are fenced"
    );
    metrics.set_query(&metadata.job_id, &job.name);
    // The job's tables, created when they do not exist yet.
    let open = |sink: &DeltaSink, name: String, schema: SchemaRef| {
        let (options, job_id) = (job.storage_options.clone(), metadata.job_id.clone());
        let (url, partition_by) = (sink.url.clone(), sink.partition_by.clone());
        let file_bytes = sink.file_bytes;
        async move {
            DeltaCommitter::open_or_create(
                &url,
                &options,
                &name,
                &schema,
                &partition_by,
                &job_id,
                file_bytes,
            )
            .await
        }
    };
    // Each query's output table; a job of several queries names each table after its query.
    let mut outputs = Vec::with_capacity(job.queries.len());
    for spec in &job.queries {
        let (name, label) = match job.queries.len() {
            1 => (job.name.clone(), "output".to_string()),
            _ => (
                format!("{}-{}", job.name, spec.name),
                format!("output:{}", spec.name),
            ),
        };
        let schema = output_schema(&spec.query, &job.input_schema);
        let kafka = spec
            .kafka_sinks
            .iter()
            .map(|sink| KafkaSinkWriter::new(sink, &metadata.job_id, &job.name))
            .collect::<Result<Vec<_>, _>>()?;
        outputs.push(QueryOutput {
            table: open(&spec.output, name, schema.clone()).await?,
            merge: MergeKeys::of_output(&spec.query, &spec.output, &schema),
            kafka,
            schema,
            label,
        });
    }
    let dead_letter = match &job.dead_letter {
        Some(d) => Some(open(d, format!("{}-dead-letter", job.name), dead_letter_schema()).await?),
        None => None,
    };
    let late_rows = match &job.late_rows {
        Some(l) => Some(open(l, format!("{}-late-rows", job.name), late_rows_schema()).await?),
        None => None,
    };
    let source = SourceReader::open(&job.source, &job.storage_options)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", config.admin_listen))?;
    let admin_bound = admin_listener.local_addr()?;
    if !admin_bound.ip().is_loopback() && !config.admin_token.is_set() {
        tracing::warn!(
            "the admin port {admin_bound} listens beyond loopback without a token: whoever \
             reaches it can pause, stop and checkpoint the query; give --admin-token-file or \
             WEIR_ADMIN_TOKEN (docs/operations.md, Admin API)"
        );
    }

    let ui_listener = match config.ui_listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the dashboard port {listen}"))?,
        ),
        None => None,
    };
    if let Some(ui) = &ui_listener {
        let addr = ui.local_addr()?;
        if !addr.ip().is_loopback() && !config.admin_token.is_set() {
            tracing::warn!(
                "the dashboard {addr} listens beyond loopback without an admin token: whoever \
                 reaches it reads the query's progress; give --admin-token-file or \
                 WEIR_ADMIN_TOKEN (docs/operations.md, Dashboard)"
            );
        }
    }

    let (members_tx, members_rx) = watch::channel(Vec::new());
    let readiness = Readiness::new("starting");
    let _metrics_endpoint = match config.metrics_listen {
        Some(listen) => {
            let endpoint = MetricsEndpoint::serve(
                listen,
                metrics.registry().clone(),
                Some(metrics.before_scrape(members_rx.clone())),
                readiness.clone(),
            )
            .await?;
            announce(&format!(
                "weir driver metrics on http://{}/metrics",
                endpoint.addr()
            ))?;
            Some(endpoint)
        }
        None => None,
    };
    let scheme = if config.admin_tls.is_some() {
        "https"
    } else {
        "http"
    };
    announce(&format!("weir driver admin on {scheme}://{admin_bound}"))?;
    if let Some(ui) = &ui_listener {
        announce(&format!("weir driver ui on http://{}/", ui.local_addr()?))?;
    }
    // `weir local` reads this line to learn the port; it comes last, once all are bound.
    announce(&format!("weir driver listening on http://{bound}"))?;
    tracing::info!(job = %job.name, job_id = %metadata.job_id, checkpoint = %job.checkpoint_url, "driver started");

    let (membership_tx, membership_rx) = mpsc::channel(64);
    let membership = tokio::spawn(cluster::membership::run(
        membership_rx,
        members_tx,
        cluster::membership::HEARTBEAT_TIMEOUT,
    ));
    let service = DriverService {
        membership: membership_tx.clone(),
        registration: RegisterResponse {
            job_json: job.to_public_json(),
            job_id: metadata.job_id.clone(),
            key_groups: job.key_groups,
            generation,
        },
        secret: config.cluster_secret.clone(),
    };
    let refused = metrics.refused_calls.clone();
    let guard = Guard::new("driver", config.cluster_secret.clone(), move || {
        refused.inc()
    });
    let (server_stop_tx, mut server_stop_rx) = watch::channel(false);
    // TCP_NODELAY: tonic sets it only on listeners it binds itself, and small answers
    // otherwise wait for the peer's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DriverServer::with_interceptor(service, guard))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop_rx.wait_for(|s| *s).await;
            }),
    );

    let identity = QueryIdentity {
        id: metadata.job_id.clone(),
        run_id,
        name: job.name.clone(),
        topic: job.source.name().to_string(),
        queries: job
            .queries
            .iter()
            .map(|q| QueryTable {
                name: q.name.clone(),
                output_url: q.output.url.clone(),
                dedup: matches!(q.query, weir_common::job::Query::Dedup(_)),
            })
            .collect(),
    };
    let (board, status) = StatusBoard::with_timeline(timeline);
    let (controls, inbox) = epoch::controls::controls(stop);
    let mut stopping = inbox.stop.clone();
    let (closing_tx, closing_rx) = watch::channel(false);
    let admin = std::sync::Arc::new(AdminService {
        facts: QueryFacts {
            identity: identity.clone(),
            trigger: match job.trigger {
                Trigger::AvailableNow => "available-now".into(),
                Trigger::Interval(d) => humantime::format_duration(d).to_string(),
            },
            checkpoint_location: job.checkpoint_url.clone(),
            started_at_micros,
        },
        status,
        controls,
        scaler: scaler.clone(),
        membership: membership_tx.clone(),
        members: members_rx.clone(),
        token: config.admin_token,
        closing: closing_rx,
    });
    let _ui = ui_listener.map(|listener| {
        let facts = ui::JobFacts::of(&job);
        ui::Dashboard::serve(listener, admin.clone(), facts, closing_tx.subscribe())
    });
    let mut admin_server = tonic::transport::Server::builder();
    if let Some(tls) = &config.admin_tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        admin_server = admin_server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("the admin port's TLS certificate and key")?;
    }
    let mut admin_closing = closing_tx.subscribe();
    let admin_incoming =
        tonic::transport::server::TcpIncoming::from(admin_listener).with_nodelay(Some(true));
    let admin_server = tokio::spawn(
        admin_server
            .add_service(AdminServer::from_arc(admin))
            .serve_with_incoming_shutdown(admin_incoming, async move {
                let _ = admin_closing.wait_for(|c| *c).await;
            }),
    );
    let pushgateway = match job.queries.iter().find_map(|q| q.pushgateway.as_ref()) {
        Some(sink) => Some(Pushgateway::start(sink, metrics.clone())?),
        None => None,
    };

    let mut coordinator = Coordinator::new(
        job,
        log,
        outputs,
        dead_letter,
        late_rows,
        source,
        members_rx,
        membership_tx,
        scaler,
        ExecutorClients::new(Sign(config.cluster_secret), generation),
        inbox,
        Operations {
            identity,
            board,
            metrics,
            alerts,
            epoch_budget,
            pushgateway,
        },
    );
    if let Some(r) = replicas {
        coordinator = coordinator.follow_deployment(r);
    }
    // Its ports serve and it holds the checkpoint: executors can register. A stopping driver
    // is no longer ready, while it finishes its epoch (SIGTERM or admin stop).
    if !*stopping.borrow() {
        readiness.set_ready();
    }
    let not_ready = readiness.clone();
    tokio::spawn(async move {
        if stopping.wait_for(|s| *s).await.is_ok() {
            not_ready.set_not_ready("stopping: finishing the epoch in progress");
        }
    });
    let result = coordinator.run().await;
    readiness.set_not_ready("stopping");
    let ops = coordinator.into_ops();
    if let Err(e) = &result {
        ops.board.set(QueryState::Failed, format!("{e:#}"));
    }
    if let Some(push) = ops.pushgateway {
        push.close().await;
    }
    let _ = closing_tx.send(true);
    let _ = server_stop_tx.send(true);
    let _ = server.await;
    let _ = admin_server.await;
    membership.abort();
    result
}
