//! `weir local`: a driver and N executor processes on this machine, with the driver's progress
//! lines on standard output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    #[arg(long)]
    pub job: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub executors: usize,
    /// Override the job's trigger (`available-now` processes what is there, then stops).
    #[arg(long)]
    pub trigger: Option<String>,
    /// Directory for the executors' local state (default: .weir/local/<job name>).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Address of the driver's admin service (`weir admin`).
    #[arg(long, default_value = "127.0.0.1:7410")]
    pub admin_listen: SocketAddr,
    /// File holding the admin token (default: WEIR_ADMIN_TOKEN).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The driver's Prometheus endpoint; executor i serves on the port after it plus i (port
    /// 0: every process picks one), or `off`.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub metrics_listen: crate::Listen,
}

/// Where executor `i` of `weir local` serves its metrics.
fn executor_metrics(driver: crate::Listen, i: usize) -> String {
    match driver.0 {
        None => "off".into(),
        Some(mut addr) => {
            if addr.port() != 0 {
                addr.set_port(addr.port().saturating_add(1 + i as u16));
            }
            addr.to_string()
        }
    }
}

/// Sends `sig` to `child` if it is still running.
pub fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Waits for a child to exit, killing it after `grace`.
async fn reap(child: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Runs executor `i` until `stop` or until the driver shuts it down, starting it again whenever
/// it dies before that.
async fn supervise(i: usize, mut cmd: Command, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut restarts = 0u32;
    loop {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("weir local: cannot start executor-{i}: {e}");
                return;
            }
        };
        let started = std::time::Instant::now();
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            signal(&child, Signal::SIGTERM);
            reap(&mut child, Duration::from_secs(10)).await;
            return;
        };
        // Exiting with success means the driver shut it down: the job is ending.
        if *stop.borrow() || status.as_ref().is_ok_and(|s| s.success()) {
            return;
        }
        // A process that ran a while had a fresh failure: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            restarts = 0;
        }
        let wait = Duration::from_millis(200u64 << restarts.min(5));
        restarts += 1;
        eprintln!(
            "weir local: executor-{i} exited ({}); starting it again in {wait:?}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string())
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the job; the driver and executors log in `log_format` (`human` or `json`).
pub async fn run(args: LocalArgs, log_format: &str) -> anyhow::Result<()> {
    // Validate here so a bad job file fails before any process starts.
    let job = crate::job_with_trigger(&args.job, args.trigger.as_deref())?;
    if args.executors == 0 {
        bail!("--executors must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".weir/local").join(&job.name));
    let mut driver_cmd = Command::new(&exe);
    driver_cmd
        .args(["--log-format", log_format])
        .arg("driver")
        .arg("--job")
        .arg(&args.job)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--executors", &args.executors.to_string()])
        .args(["--admin-listen", &args.admin_listen.to_string()])
        .args(["--metrics-listen", &args.metrics_listen.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = &args.trigger {
        driver_cmd.args(["--trigger", t]);
    }
    if let Some(f) = &args.admin_token_file {
        driver_cmd.arg("--admin-token-file").arg(f);
    }
    let mut driver = driver_cmd.spawn().context("starting the driver")?;
    let stdout = driver.stdout.take().context("driver stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let driver_url = loop {
        match lines.next_line().await? {
            Some(line) => {
                if let Some(url) = line.strip_prefix("weir driver listening on ") {
                    break url.to_string();
                }
                println!("{line}");
            }
            None => {
                let status = driver.wait().await?;
                bail!("the driver exited before it was ready ({status})");
            }
        }
    };
    let forward = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
        }
    });

    // Like a Kubernetes Deployment, `weir local` restarts an executor that dies; the driver
    // re-runs the epoch it was in and the new process restores its state from the checkpoint.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut supervisors = Vec::new();
    for i in 0..args.executors {
        let mut cmd = Command::new(&exe);
        cmd.args(["--log-format", log_format])
            .arg("executor")
            .args(["--driver", &driver_url])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(work_dir.join(format!("executor-{i}")))
            .args(["--id", &format!("executor-{i}")])
            .args([
                "--metrics-listen",
                &executor_metrics(args.metrics_listen, i),
            ])
            .kill_on_drop(true);
        supervisors.push(tokio::spawn(supervise(i, cmd, stop_rx.clone())));
    }

    use tokio::signal::unix::{signal as unix_signal, SignalKind};
    let mut term = unix_signal(SignalKind::terminate())?;
    let mut int = unix_signal(SignalKind::interrupt())?;
    let status = tokio::select! {
        s = driver.wait() => s?,
        _ = term.recv() => { signal(&driver, Signal::SIGTERM); driver.wait().await? }
        _ = int.recv() => { signal(&driver, Signal::SIGTERM); driver.wait().await? }
    };
    let _ = forward.await;
    // The driver shuts its executors down when it stops; this is for a driver that crashed.
    let _ = stop_tx.send(true);
    for s in supervisors {
        let _ = s.await;
    }
    if !status.success() {
        bail!("the driver failed ({status})");
    }
    let table = job
        .output
        .url
        .strip_prefix("file://")
        .unwrap_or(&job.output.url);
    println!("done: the output table is at {table}");
    if let Some(dl) = &job.dead_letter {
        let path = dl.url.strip_prefix("file://").unwrap_or(&dl.url);
        println!("      dead letters are at {path}");
    }
    Ok(())
}
