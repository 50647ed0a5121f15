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
use tonic::transport::Channel;
use weir_proto::admin::admin_client::AdminClient;

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
    /// The driver's web dashboard, or `off`.
    #[arg(long, visible_alias = "ui", default_value = "127.0.0.1:7420")]
    pub ui_listen: crate::Listen,
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

/// The delay before a process that died is started again: 200 ms, doubling with each restart
/// up to 6.4 s, and back to 200 ms for a process that ran a minute before it died.
#[derive(Default)]
struct Backoff {
    restarts: u32,
}

impl Backoff {
    fn next(&mut self, ran: Duration) -> Duration {
        if ran > Duration::from_secs(60) {
            self.restarts = 0;
        }
        let wait = Duration::from_millis(200u64 << self.restarts.min(5));
        self.restarts += 1;
        wait
    }
}

/// Whether a process died rather than exited: killed by a signal, or a panic (Rust's 101).
/// The driver exits with 1 or 2 of its own accord (the query failed, a bad job file).
fn died(status: &std::process::ExitStatus) -> bool {
    matches!(status.code(), None | Some(101))
}

/// A running driver process and the task that forwards its standard output.
struct Driver {
    child: Child,
    /// Its control service's URL (`http://` and the address it listens on).
    url: String,
    /// Its admin service's URL.
    admin_url: Option<String>,
    started: std::time::Instant,
    forward: tokio::task::JoinHandle<()>,
}

impl Driver {
    /// Starts the driver with `cmd` and waits until it serves.
    async fn start(mut cmd: Command) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        let mut child = cmd.spawn().context("starting the driver")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut admin_url = None;
        let url = loop {
            match lines.next_line().await? {
                Some(line) => {
                    if let Some(url) = line.strip_prefix("weir driver listening on ") {
                        break url.to_string();
                    }
                    if let Some(url) = line.strip_prefix("weir driver admin on ") {
                        admin_url = Some(url.to_string());
                    }
                    println!("{line}");
                }
                None => {
                    let status = child.wait().await?;
                    bail!("the driver exited before it was ready ({status})");
                }
            }
        };
        let forward = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{line}");
            }
        });
        Ok(Self {
            child,
            url,
            admin_url,
            started,
            forward,
        })
    }
}

/// Reports on the processes on stderr, which the driver and executors write to too: the whole
/// line in one write, so that theirs cannot land inside it (a pipe keeps writes of up to 4 KiB
/// whole; `eprintln!` writes a line in pieces).
fn say(message: String) {
    use std::io::Write;
    let line = format!("weir local: {message}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Makes the process `cmd` starts die with this one. `kill_on_drop` covers every way `weir
/// local` ends on its own; killed (SIGKILL, or a crash), it would leave a driver and executors
/// running with nothing to supervise or stop them, holding their ports and the checkpoint.
/// They get SIGKILL then, as if the machine went down: the checkpoint makes that safe. The
/// signal follows the thread that started the process, and these are started from the
/// runtime's worker threads, which live as long as the process.
fn dies_with_this_process(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-
    // safe calls are allowed: prctl and getppid are, and it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // This process died before the signal was asked for: the child must not run.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Runs executor `i` until `stop` or until the driver shuts it down, starting it again whenever
/// it dies before that.
async fn supervise(i: usize, mut cmd: Command, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    loop {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                say(format!("cannot start executor-{i}: {e}"));
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
        // Exiting with success means the driver shut it down: the job is ending, or the
        // driver's target went below the executors it had and it retired this one.
        if *stop.borrow() || status.as_ref().is_ok_and(|s| s.success()) {
            return;
        }
        let wait = backoff.next(started.elapsed());
        say(format!(
            "executor-{i} exited ({}); starting it again in {wait:?}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string())
        ));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The executor processes of a run: as many as the driver's target, like the executors'
/// Deployment whose replicas the driver sets in a cluster. The driver retires executors
/// beyond its target itself (they exit 0 and are not started again); the fleet starts new
/// ones when the target is above the processes it runs.
struct Fleet {
    /// The command of executor `i`.
    command: Box<dyn Fn(usize) -> Command + Send>,
    stop: tokio::sync::watch::Receiver<bool>,
    running: Vec<tokio::task::JoinHandle<()>>,
    next: usize,
}

impl Fleet {
    /// Supervised executors still running (or waiting to be started again).
    fn alive(&mut self) -> usize {
        self.running.retain(|h| !h.is_finished());
        self.running.len()
    }

    fn grow_to(&mut self, target: usize) {
        while self.alive() < target {
            let i = self.next;
            self.next += 1;
            if i > 0 {
                say(format!(
                    "starting executor-{i} (the driver's target is {target})"
                ));
            }
            let cmd = (self.command)(i);
            self.running
                .push(tokio::spawn(supervise(i, cmd, self.stop.clone())));
        }
    }

    /// Starts `initial` executors, then follows the target of the driver whose admin service
    /// `admin` names, until stopped; then waits for the executors to end.
    async fn run(
        mut self,
        initial: usize,
        mut admin: tokio::sync::watch::Receiver<Option<String>>,
        token: Option<String>,
    ) {
        self.grow_to(initial);
        let mut stop = self.stop.clone();
        let mut tick = tokio::time::interval(TARGET_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The admin service's address and a connection to it, kept from one look to the next.
        let mut driver: Option<(String, AdminClient<Channel>)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let Some(url) = admin.borrow_and_update().clone() else {
                continue;
            };
            if driver.as_ref().is_none_or(|(at, _)| *at != url) {
                let connected = crate::admin_cli::connect_to(&url, None, Duration::from_secs(2));
                driver = connected.await.ok().map(|c| (url, c));
            }
            let Some((_, client)) = driver.as_mut() else {
                continue;
            };
            match driver_target(client, token.as_deref()).await {
                Ok(target) => self.grow_to(target),
                // Connected afresh at the next look (a driver restarted on the same address).
                Err(_) => driver = None,
            }
        }
        for h in self.running {
            let _ = h.await;
        }
    }
}

/// How often `weir local` reads the driver's executor target: a scale-up's executor starts
/// up to this long after the target went up (a look is one call on a kept connection).
const TARGET_POLL: Duration = Duration::from_millis(100);

/// The driver's executor target, from its admin service.
async fn driver_target(
    client: &mut AdminClient<Channel>,
    token: Option<&str>,
) -> anyhow::Result<usize> {
    let request = crate::admin_cli::request(
        weir_proto::admin::ListQueriesRequest {},
        token,
        Duration::from_secs(5),
    )?;
    let queries = client.list_queries(request).await?.into_inner().queries;
    let q = queries.first().context("the driver runs no query")?;
    Ok(q.executors_target as usize)
}

/// Runs the job; the driver and executors log in `log_format` (`human` or `json`).
pub async fn run(args: LocalArgs, log_format: &str) -> anyhow::Result<()> {
    // Validate here so a bad job file fails before any process starts.
    let job = crate::job_with_trigger(&args.job, args.trigger.as_deref())?;
    if args.executors == 0 {
        bail!("--executors must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the weir binary")?;
    // Every process of the run signs its calls with a secret of this run, passed in the
    // environment (a command line is visible to every user of the machine; an environment
    // only to the same user).
    let secret = weir_proto::cluster_auth::ClusterSecret::generate();
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".weir/local").join(&job.name));
    // The driver listens on `listen`: 127.0.0.1:0 the first time, then the port it took, where
    // the executors look for it.
    let driver_cmd = |listen: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--log-format", log_format])
            .arg("driver")
            .arg("--job")
            .arg(&args.job)
            .args(["--listen", listen])
            .args(["--executors", &args.executors.to_string()])
            .args(["--admin-listen", &args.admin_listen.to_string()])
            .args(["--metrics-listen", &args.metrics_listen.to_string()])
            .args(["--ui-listen", &args.ui_listen.to_string()])
            .env(crate::CLUSTER_SECRET_ENV, &secret)
            .env_remove("WEIR_CLUSTER_SECRET_FILE")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        dies_with_this_process(&mut cmd);
        if let Some(t) = &args.trigger {
            cmd.args(["--trigger", t]);
        }
        if let Some(f) = &args.admin_token_file {
            cmd.arg("--admin-token-file").arg(f);
        }
        cmd
    };
    let mut driver = Driver::start(driver_cmd("127.0.0.1:0")).await?;
    let driver_url = driver.url.clone();
    let (admin_tx, admin_rx) = tokio::sync::watch::channel(driver.admin_url.clone());

    // Like a Kubernetes Deployment, `weir local` restarts an executor that dies; the driver
    // re-runs the epoch it was in and the new process restores its state from the checkpoint.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let executor_cmd = {
        let exe = exe.clone();
        let log_format = log_format.to_string();
        let job_file = args.job.clone();
        let metrics_listen = args.metrics_listen;
        let secret = secret.clone();
        let work_dir = work_dir.clone();
        move |i: usize| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--log-format", &log_format])
                .arg("executor")
                .args(["--driver", &driver_url])
                .args(["--listen", "127.0.0.1:0"])
                .arg("--state-dir")
                .arg(work_dir.join(format!("executor-{i}")))
                .args(["--id", &format!("executor-{i}")])
                .args(["--metrics-listen", &executor_metrics(metrics_listen, i)])
                .arg("--job")
                .arg(&job_file)
                .env(crate::CLUSTER_SECRET_ENV, &secret)
                .env_remove("WEIR_CLUSTER_SECRET_FILE")
                .kill_on_drop(true);
            dies_with_this_process(&mut cmd);
            cmd
        }
    };
    let fleet = Fleet {
        command: Box::new(executor_cmd),
        stop: stop_rx,
        running: Vec::new(),
        next: 0,
    };
    let token = crate::admin_cli::read_token(args.admin_token_file.as_deref())?;
    let fleet = tokio::spawn(fleet.run(args.executors, admin_rx, token));

    use tokio::signal::unix::{signal as unix_signal, SignalKind};
    let mut term = unix_signal(SignalKind::terminate())?;
    let mut int = unix_signal(SignalKind::interrupt())?;
    // Like a Kubernetes Deployment again, a driver that dies (killed, or a panic) is started
    // again on the same control address, where the executors register with it anew; it
    // resumes from the checkpoint. A driver that exits on its own (done, or the query failed)
    // ends the run.
    let mut backoff = Backoff::default();
    let status = loop {
        let (status, stopping) = tokio::select! {
            s = driver.child.wait() => (s?, false),
            _ = term.recv() => { signal(&driver.child, Signal::SIGTERM); (driver.child.wait().await?, true) }
            _ = int.recv() => { signal(&driver.child, Signal::SIGTERM); (driver.child.wait().await?, true) }
        };
        let _ = (&mut driver.forward).await;
        if stopping || !died(&status) {
            break status;
        }
        let wait = backoff.next(driver.started.elapsed());
        say(format!(
            "the driver exited ({status}); starting it again in {wait:?}"
        ));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => break status,
            _ = int.recv() => break status,
        }
        driver = Driver::start(driver_cmd(driver.url.trim_start_matches("http://"))).await?;
        admin_tx.send_replace(driver.admin_url.clone());
    };
    // The driver shuts its executors down when it stops; this is for a driver that crashed.
    let _ = stop_tx.send(true);
    let _ = fleet.await;
    if !status.success() {
        bail!("the driver failed ({status})");
    }
    let path = |url: &str| url.strip_prefix("file://").unwrap_or(url).to_string();
    match job.queries.as_slice() {
        [one] => println!("done: the output table is at {}", path(&one.output.url)),
        queries => {
            println!("done: the output tables are at");
            for q in queries {
                println!("      {}: {}", q.name, path(&q.output.url));
            }
        }
    }
    if let Some(dl) = &job.dead_letter {
        let path = dl.url.strip_prefix("file://").unwrap_or(&dl.url);
        println!("      dead letters are at {path}");
    }
    Ok(())
}
