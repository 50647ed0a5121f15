//! `weir`: one binary for the driver, the executors, a local cluster and the event generator.

mod admin_cli;
mod bench;
mod cases;
mod gen;
mod local;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use weir_common::job::{load_job, JobSpec, Trigger};
use weir_proto::cluster_auth::ClusterSecret;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Event-time stream processing from Kafka into Delta Lake, exactly once"
)]
struct Cli {
    /// Log format on standard error (`weir local` passes it to its processes).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "WEIR_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// `ADDR` or `off`: where an endpoint that may be turned off listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("`{s}`: expected host:port or off ({e})"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

/// The driver's operations flags, shared by `weir driver` and `weir local`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriverOpsArgs {
    /// Address of the admin service (`weir admin`).
    #[arg(long, default_value = "0.0.0.0:7410")]
    admin_listen: SocketAddr,
    /// File holding the bearer token that pause, resume, stop and checkpoint need (default:
    /// WEIR_ADMIN_TOKEN; with neither, those calls are open to whoever reaches the port).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Reads (status, progress, executors, watch) need the admin token too.
    #[arg(long)]
    admin_reads_need_token: bool,
    /// Serve the admin port over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint, or `off`.
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_listen: Listen,
    /// Address of the web dashboard, or `off` (loopback by default: reach it through a tunnel
    /// or `kubectl port-forward`, or listen wider with an admin token).
    #[arg(long, visible_alias = "ui", default_value = "127.0.0.1:7420")]
    ui_listen: Listen,
}

impl DriverOpsArgs {
    fn token(&self) -> anyhow::Result<weir_driver::admin::AdminToken> {
        let token = admin_cli::read_token(self.admin_token_file.as_deref())?;
        let token = weir_driver::admin::AdminToken::new(token.as_deref());
        if self.admin_reads_need_token {
            return token.for_reads_too().map_err(anyhow::Error::msg);
        }
        Ok(token)
    }

    fn tls(&self) -> anyhow::Result<Option<weir_driver::TlsIdentity>> {
        match (&self.admin_tls_cert, &self.admin_tls_key) {
            (Some(cert), Some(key)) => Ok(Some(weir_driver::TlsIdentity {
                cert_pem: std::fs::read(cert)
                    .with_context(|| format!("reading {}", cert.display()))?,
                key_pem: std::fs::read(key)
                    .with_context(|| format!("reading {}", key.display()))?,
            })),
            _ => Ok(None),
        }
    }
}

/// The cluster credential's flags, shared by `weir driver` and `weir executor`
/// (docs/operations.md, Security).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// File holding the cluster secret, one per line (the first signs, any verifies: list the
    /// new one first while rotating). Default: the secret in WEIR_CLUSTER_SECRET.
    #[arg(long, env = "WEIR_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Listen beyond loopback without a cluster secret: whoever reaches the ports can join the
    /// cluster. Only for a network where every host is trusted.
    #[arg(long)]
    insecure_open_cluster: bool,
}

/// The environment variable a cluster secret may be given in.
pub const CLUSTER_SECRET_ENV: &str = "WEIR_CLUSTER_SECRET";

impl ClusterArgs {
    fn secret(&self) -> anyhow::Result<Option<ClusterSecret>> {
        let (text, from) = match &self.cluster_secret_file {
            Some(path) => (
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the cluster secret {}", path.display()))?,
                path.display().to_string(),
            ),
            None => match std::env::var(CLUSTER_SECRET_ENV) {
                Ok(text) => (text, CLUSTER_SECRET_ENV.to_string()),
                Err(_) => return Ok(None),
            },
        };
        ClusterSecret::from_text(&text)
            .map(Some)
            .with_context(|| format!("the cluster secret in {from}"))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a driver and N executor processes on this machine.
    Local(local::LocalArgs),
    /// Run the driver of a job.
    Driver {
        #[arg(long)]
        job: PathBuf,
        /// Address of the control service.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
        /// The executor count to aim for at first (`weir admin scale` or the job's
        /// `autoscale:` change it later; a restart with the same count resumes the last target).
        #[arg(long, default_value_t = 1)]
        executors: usize,
        /// Keep this Deployment of executors at the target, through the Kubernetes API (the
        /// driver's service account needs patch on deployments/scale and pods).
        #[arg(long)]
        kubernetes_deployment: Option<String>,
        /// The namespace of --kubernetes-deployment (default: the service account's).
        #[arg(long, requires = "kubernetes_deployment")]
        kubernetes_namespace: Option<String>,
        /// Executors are started and stopped from outside the driver (KEDA, an HPA, `kubectl
        /// scale`): the target follows the registered executors within `executors: {min,
        /// max}`, `weir admin scale` is refused, and `autoscale:` decisions are only published
        /// (weir_desired_executors, log, webhook).
        #[arg(long, conflicts_with = "kubernetes_deployment")]
        external_scaling: bool,
        /// Override the job's trigger (`available-now` or an interval such as `30s`).
        #[arg(long)]
        trigger: Option<String>,
        #[command(flatten)]
        ops: DriverOpsArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run an executor that joins a driver.
    Executor {
        /// The driver's control address, e.g. http://driver:7400.
        #[arg(long, env = "WEIR_DRIVER")]
        driver: String,
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Address the driver reaches this executor at (default: the bound address).
        #[arg(long)]
        advertise: Option<String>,
        /// Local directory of the state store.
        #[arg(long, default_value = ".weir/executor")]
        state_dir: PathBuf,
        /// Executor id (default: host name and process id).
        #[arg(long)]
        id: Option<String>,
        /// Address of the Prometheus /metrics endpoint, or `off`.
        #[arg(long, default_value = "0.0.0.0:9401")]
        metrics_listen: Listen,
        /// The job file (the driver's): the executor takes the values of storage_options and
        /// of the Kafka options from it, so no credential crosses the network. Needed when the
        /// job has either.
        #[arg(long, env = "WEIR_JOB")]
        job: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the plan a job file runs: what is read and decoded, the watermark, and per query
    /// its operator, aggregates with their partial and state form, exchange, output and sinks.
    Explain {
        #[arg(long)]
        job: PathBuf,
    },
    /// Run a job against the scripted input and expectations of a cases file, on this
    /// machine (no broker, no object store); exits 1 when a case fails.
    Test(cases::TestArgs),
    /// Generate web events into a Kafka topic and/or a JSON-lines file.
    Gen(gen::GenArgs),
    /// Inspect and steer a running query through the driver's admin API.
    Admin(admin_cli::AdminArgs),
    /// Measure throughput, the single-threaded ceiling, checkpoint cost and memory on this
    /// machine (build with --release first).
    Bench(bench::BenchArgs),
    /// Host librdkafka's mock cluster for `weir bench` (a broker that serves from memory).
    #[command(hide = true)]
    BenchBroker(bench::BrokerArgs),
    /// One timed run of the reference job over existing files, as JSON (for
    /// scripts/bench-peers.sh).
    #[command(hide = true)]
    BenchRun(bench::OneRunArgs),
}

fn init_logging(format: LogFormat) {
    weir_telemetry::logging::init(match format {
        LogFormat::Human => weir_telemetry::logging::LogFormat::Human,
        LogFormat::Json => weir_telemetry::logging::LogFormat::Json,
    });
}

/// A watch that turns true on SIGINT or SIGTERM.
fn stop_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested; finishing the epoch in progress");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Loads the job file, applying a trigger override.
pub fn job_with_trigger(path: &std::path::Path, trigger: Option<&str>) -> anyhow::Result<JobSpec> {
    let mut job = load_job(path)?;
    if let Some(t) = trigger {
        job.trigger = match t {
            "available-now" | "available_now" => Trigger::AvailableNow,
            other => Trigger::Interval(
                weir_common::job::duration::parse_duration(other)
                    .map_err(|e| anyhow::anyhow!("--trigger: {e}"))?,
            ),
        };
    }
    Ok(job)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Local(args) => {
            let format = match cli.log_format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            };
            local::run(args, format).await
        }
        Command::Driver {
            job,
            listen,
            executors,
            kubernetes_deployment,
            kubernetes_namespace,
            external_scaling,
            trigger,
            ops,
            cluster,
        } => {
            let job = job_with_trigger(&job, trigger.as_deref())?;
            let kubernetes =
                kubernetes_deployment.map(|deployment| weir_driver::KubernetesExecutors {
                    deployment,
                    namespace: kubernetes_namespace,
                });
            let stop = stop_signal()?;
            weir_driver::run(
                weir_driver::DriverConfig {
                    job,
                    listen,
                    executors,
                    admin_listen: ops.admin_listen,
                    admin_token: ops.token()?,
                    admin_tls: ops.tls()?,
                    metrics_listen: ops.metrics_listen.0,
                    ui_listen: ops.ui_listen.0,
                    cluster_secret: cluster.secret()?,
                    open_cluster: cluster.insecure_open_cluster,
                    kubernetes,
                    external_scaling,
                },
                stop,
            )
            .await
        }
        Command::Executor {
            driver,
            listen,
            advertise,
            state_dir,
            id,
            metrics_listen,
            job,
            cluster,
        } => {
            let job = job.as_deref().map(load_job).transpose()?;
            let executor_id = id.unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "executor".into());
                format!("{host}-{}", std::process::id())
            });
            let stop = stop_signal()?;
            weir_executor::run(
                weir_executor::ExecutorConfig {
                    driver_url: driver,
                    listen,
                    advertise,
                    state_dir,
                    executor_id,
                    metrics_listen: metrics_listen.0,
                    job,
                    cluster_secret: cluster.secret()?,
                    open_cluster: cluster.insecure_open_cluster,
                },
                stop,
            )
            .await
        }
        Command::Explain { job } => {
            print!("{}", weir_common::job::explain::explain(&load_job(&job)?));
            Ok(())
        }
        Command::Test(args) => {
            if cases::run(args).await? {
                Ok(())
            } else {
                anyhow::bail!("some cases failed")
            }
        }
        Command::Gen(args) => gen::run(args).await.map(|_| ()),
        Command::Bench(args) => bench::run(args).await,
        Command::BenchBroker(args) => bench::serve_broker(args),
        Command::BenchRun(args) => bench::run_one(args).await,
        Command::Admin(args) => admin_cli::run(args).await,
    }
}

/// Caps glibc's malloc arenas at two. By default every thread that allocates gets its own (up to
/// eight per core), and an epoch's buffers freed in one arena are not reused by the threads of
/// another: executors held 150 to 250 MB more at their peak, at no gain in throughput
/// (docs/benchmarks.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    // TLS (the admin port, its client) needs a process-wide crypto provider: rustls cannot
    // choose one itself when, as here, both of its back-ends are compiled in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Work stuck in a blocking call must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A bad job file is a usage error.
            if e.downcast_ref::<weir_common::job::JobError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
