//! `weir`: one binary for the driver, the executors, a local cluster and the event generator.

mod gen;
mod local;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use weir_common::job::{load_job, JobSpec, Trigger};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Event-time stream processing from Kafka into Delta Lake, exactly once"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
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
        /// Epochs start when this many executors have joined.
        #[arg(long, default_value_t = 1)]
        executors: usize,
        /// Override the job's trigger (`available-now` or an interval such as `30s`).
        #[arg(long)]
        trigger: Option<String>,
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
    },
    /// Generate web events into a Kafka topic and/or a JSON-lines file.
    Gen(gen::GenArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,deltalake=warn,datafusion=warn,buoyant_kernel=warn,delta_kernel=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
                weir_common::duration::parse_duration(other)
                    .map_err(|e| anyhow::anyhow!("--trigger: {e}"))?,
            ),
        };
    }
    Ok(job)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Local(args) => local::run(args).await,
        Command::Driver {
            job,
            listen,
            executors,
            trigger,
        } => {
            let job = job_with_trigger(&job, trigger.as_deref())?;
            let stop = stop_signal()?;
            weir_driver::run(
                weir_driver::DriverConfig {
                    job,
                    listen,
                    executors,
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
        } => {
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
                },
                stop,
            )
            .await
        }
        Command::Gen(args) => gen::run(args).await,
    }
}

fn main() -> ExitCode {
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
