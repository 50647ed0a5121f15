//! The control plane: membership, epoch planning and coordination, the checkpoint log and the
//! Delta commits. The driver never reads a Kafka record.

pub mod assignment;
pub mod coordinator;
pub mod decision;
pub mod delta_commit;
pub mod executors;
pub mod kafka_offsets;
pub mod membership;
pub mod planner;
pub mod progress;
pub mod service;
pub mod state_gc;

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::sync::{mpsc, watch};
use weir_common::checkpoint::Metadata;
use weir_common::job::JobSpec;
use weir_common::now_micros;
use weir_common::output::{dead_letter_schema, output_schema};
use weir_proto::control::driver_server::DriverServer;
use weir_proto::control::RegisterResponse;
use weir_storage::CheckpointLog;

use crate::coordinator::Coordinator;
use crate::delta_commit::DeltaCommitter;
use crate::kafka_offsets::OffsetReader;
use crate::service::DriverService;

/// How a driver is started.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub job: JobSpec,
    /// Where the control service listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Epochs start once this many executors have registered.
    pub executors: usize,
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

/// Runs a driver until its job stops: SIGINT/SIGTERM finish the current epoch first.
pub async fn run(config: DriverConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let job = config.job;
    if config.executors == 0 {
        bail!("a job needs at least one executor (--executors)");
    }
    let log = CheckpointLog::open(&job.checkpoint_url, &job.storage_options)?;
    let metadata = job_metadata(&log, &job).await?;
    let output = DeltaCommitter::open_or_create(
        &job.output.url,
        &job.storage_options,
        &job.name,
        &output_schema(&job),
        &job.output.partition_by,
        &metadata.job_id,
    )
    .await?;
    let dead_letter = match &job.dead_letter {
        Some(d) => Some(
            DeltaCommitter::open_or_create(
                &d.url,
                &job.storage_options,
                &format!("{}-dead-letter", job.name),
                &dead_letter_schema(),
                &d.partition_by,
                &metadata.job_id,
            )
            .await?,
        ),
        None => None,
    };
    let offsets = OffsetReader::new(&job.kafka)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    {
        // `weir local` reads this line to learn the port.
        let mut out = std::io::stdout().lock();
        writeln!(out, "weir driver listening on http://{bound}")?;
        out.flush()?;
    }
    tracing::info!(job = %job.name, job_id = %metadata.job_id, checkpoint = %job.checkpoint_url, "driver started");

    let (members_tx, members_rx) = watch::channel(Vec::new());
    let (membership_tx, membership_rx) = mpsc::channel(64);
    let membership = tokio::spawn(membership::run(
        membership_rx,
        members_tx,
        membership::HEARTBEAT_TIMEOUT,
    ));
    let service = DriverService {
        membership: membership_tx.clone(),
        registration: RegisterResponse {
            job_json: job.to_json(),
            job_id: metadata.job_id.clone(),
            key_groups: job.key_groups,
        },
    };
    let (server_stop_tx, mut server_stop_rx) = watch::channel(false);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DriverServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop_rx.wait_for(|s| *s).await;
            }),
    );

    let coordinator = Coordinator::new(
        job,
        log,
        output,
        dead_letter,
        offsets,
        members_rx,
        membership_tx,
        config.executors,
        stop,
    );
    let result = coordinator.run().await;
    let _ = server_stop_tx.send(true);
    let _ = server.await;
    membership.abort();
    result
}
