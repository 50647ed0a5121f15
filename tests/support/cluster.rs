//! A driver and executors as separate `weir` processes that a test can SIGKILL and restart,
//! with fault points armed through `WEIR_FAULT` (see common/src/testing/fault.rs).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{free_port, weir};

/// The cluster secret the processes of a test cluster share (a test's `env` may replace it).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef";

/// A process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Driver,
    Executor(usize),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Driver => f.write_str("driver"),
            Role::Executor(i) => write!(f, "executor-{i}"),
        }
    }
}

/// What a process did.
#[derive(Debug)]
pub enum Event {
    Line(String),
    /// Its standard output closed: it exited or was killed.
    Closed,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Which start of the role this is; events of killed generations are dropped.
    generation: u64,
}

pub struct Cluster {
    job: PathBuf,
    dir: PathBuf,
    pub driver_port: u16,
    executors: usize,
    env: Vec<(String, String)>,
    procs: HashMap<Role, Proc>,
    generations: HashMap<Role, u64>,
    tx: mpsc::Sender<(Role, u64, Event)>,
    rx: mpsc::Receiver<(Role, u64, Event)>,
    /// The driver's progress lines so far.
    pub progress: Vec<String>,
    /// The driver's `--trigger` (`available-now` unless a test sets another).
    pub trigger: String,
    /// More arguments of the driver.
    pub driver_args: Vec<String>,
}

impl Cluster {
    /// A cluster for the job file `job`, keeping logs and executor state under `dir`.
    pub fn new(job: &Path, dir: &Path, executors: usize, env: &[(&str, &str)]) -> Self {
        let (tx, rx) = mpsc::channel();
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        Cluster {
            job: job.to_path_buf(),
            dir: dir.to_path_buf(),
            driver_port: free_port(),
            executors,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            procs: HashMap::new(),
            generations: HashMap::new(),
            tx,
            rx,
            trigger: "available-now".into(),
            driver_args: Vec::new(),
            progress: Vec::new(),
        }
    }

    pub fn roles(&self) -> Vec<Role> {
        let mut r = vec![Role::Driver];
        r.extend((0..self.executors).map(Role::Executor));
        r
    }

    /// Starts (or restarts) a process with the given fault points armed.
    pub fn start(&mut self, role: Role, faults: &str) {
        assert!(!self.procs.contains_key(&role), "{role} is running");
        let mut cmd: Command = weir();
        match role {
            Role::Driver => {
                cmd.arg("driver")
                    .arg("--job")
                    .arg(&self.job)
                    .args(["--listen", &format!("127.0.0.1:{}", self.driver_port)])
                    .args(["--executors", &self.executors.to_string()])
                    .args(["--trigger", &self.trigger])
                    .args(["--admin-listen", "127.0.0.1:0"])
                    .args(["--metrics-listen", "127.0.0.1:0"])
                    .args(["--ui-listen", "127.0.0.1:0"])
                    .args(&self.driver_args);
            }
            Role::Executor(i) => {
                cmd.arg("executor")
                    .args([
                        "--driver",
                        &format!("http://127.0.0.1:{}", self.driver_port),
                    ])
                    .args(["--listen", "127.0.0.1:0"])
                    .arg("--state-dir")
                    .arg(self.dir.join(format!("state/executor-{i}")))
                    .args(["--id", &format!("executor-{i}")])
                    .args(["--metrics-listen", "127.0.0.1:0"])
                    .arg("--job")
                    .arg(&self.job);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("logs/{role}.log")))
            .expect("log file");
        cmd.env("WEIR_CLUSTER_SECRET", CLUSTER_SECRET);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("WEIR_FAULT", faults)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {role}: {e}"));
        let generation = self.generations.entry(role).or_default();
        *generation += 1;
        let generation = *generation;
        let stdout = child.stdout.take().expect("stdout");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((role, generation, Event::Line(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((role, generation, Event::Closed));
        });
        let stdin = child.stdin.take();
        self.procs.insert(
            role,
            Proc {
                child,
                stdin,
                generation,
            },
        );
    }

    /// SIGKILLs a process and reaps it.
    pub fn kill(&mut self, role: Role) {
        let mut p = self
            .procs
            .remove(&role)
            .unwrap_or_else(|| panic!("{role} is not running"));
        let pid = Pid::from_raw(p.child.id() as i32);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = p.child.wait();
    }

    /// Sends SIGTERM, lets the process go on if it is paused at a fault point, and answers how
    /// it exited.
    pub fn terminate(&mut self, role: Role, paused: bool) -> ExitStatus {
        let mut p = self
            .procs
            .remove(&role)
            .unwrap_or_else(|| panic!("{role} is not running"));
        let pid = Pid::from_raw(p.child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        if paused {
            let stdin = p.stdin.as_mut().expect("stdin");
            stdin
                .write_all(b"go on\n")
                .and_then(|_| stdin.flush())
                .expect("writing to a paused process");
        }
        p.child.wait().expect("waiting for a process")
    }

    /// Sends `signal` to a running process, leaving it running (as far as the signal lets it).
    pub fn signal(&mut self, role: Role, signal: Signal) {
        let p = self
            .procs
            .get(&role)
            .unwrap_or_else(|| panic!("{role} is not running"));
        kill(Pid::from_raw(p.child.id() as i32), signal).expect("sending a signal");
    }

    pub fn is_running(&self, role: Role) -> bool {
        self.procs.contains_key(&role)
    }

    /// Lets a process paused at a fault point go on.
    pub fn release(&mut self, role: Role) {
        let p = self
            .procs
            .get_mut(&role)
            .unwrap_or_else(|| panic!("{role} is not running"));
        let stdin = p.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"go on\n")
            .and_then(|_| stdin.flush())
            .expect("writing to a paused process");
    }

    /// The next event of a live process; progress lines of the driver are recorded.
    pub fn next_event(&mut self, timeout: Duration) -> (Role, Event) {
        self.try_next_event(timeout).unwrap_or_else(|| {
            panic!(
                "nothing happened for {timeout:?}; see the logs in {}",
                self.dir.join("logs").display()
            )
        })
    }

    /// The next event of a live process within `timeout`, if there is one.
    pub fn try_next_event(&mut self, timeout: Duration) -> Option<(Role, Event)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (role, generation, event) = self.rx.recv_timeout(left).ok()?;
            let current = self.procs.get(&role).map(|p| p.generation);
            if current != Some(generation) {
                continue;
            }
            if let (Role::Driver, Event::Line(line)) = (role, &event) {
                if line.contains("] epoch ") {
                    self.progress.push(line.clone());
                }
            }
            return Some((role, event));
        }
    }

    /// Waits for `role` to print a line starting with `prefix` and answers the rest of it;
    /// panics if `role` exits first.
    pub fn wait_for_line(&mut self, role: Role, prefix: &str) -> String {
        loop {
            match self.next_event(Duration::from_secs(120)) {
                (r, Event::Line(l)) if r == role => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                (r, Event::Closed) if r == role => panic!("{r} exited:\n{}", self.log_tail(r)),
                _ => {}
            }
        }
    }

    /// Waits for the driver to exit, reaping the executors that exit before it (each must
    /// succeed), then kills the executors still running (a driver that failed shut none
    /// down). Answers how the driver exited.
    pub fn wait_for_driver(&mut self, timeout: Duration) -> ExitStatus {
        loop {
            match self.next_event(timeout) {
                (Role::Driver, Event::Closed) => break,
                (role, Event::Closed) => self.reap_ok(role, " before the driver"),
                _ => {}
            }
        }
        let status = self.reap(Role::Driver);
        for role in self.roles() {
            if self.is_running(role) {
                self.kill(role);
            }
        }
        status
    }

    /// Waits for a process whose output closed and answers how it exited.
    pub fn reap(&mut self, role: Role) -> ExitStatus {
        let mut p = self
            .procs
            .remove(&role)
            .unwrap_or_else(|| panic!("{role} is not running"));
        p.child.wait().expect("waiting for a process")
    }

    /// Reaps a process whose output closed and fails the test unless it exited with success;
    /// `context` goes into the message.
    pub fn reap_ok(&mut self, role: Role, context: &str) {
        let status = self.reap(role);
        assert!(
            status.success(),
            "{role} failed ({status}){context}:\n{}",
            self.log_tail(role)
        );
    }

    /// The tail of a process's log, for failure messages.
    pub fn log_tail(&self, role: Role) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("logs/{role}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut p) in self.procs.drain() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
