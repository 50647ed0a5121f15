//! A `weir local` kept running in the background, its standard output read line by line, so a
//! test can wait for the addresses it announces and for the epochs it commits.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The lines `output` yields, read by a thread of their own; the channel ends with it.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

pub struct LocalRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LocalRun {
    /// Starts `cmd` (a `weir local ...`) with its stderr going to `log`.
    pub fn start(mut cmd: Command, log: &Path) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("starting weir local");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line with `prefix` and answers the rest of it.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        self.wait_for_lines(prefix, 1, timeout).remove(0)
    }

    /// Waits for `n` lines with `prefix` and answers the rest of each.
    pub fn wait_for_lines(&mut self, prefix: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self
                .seen
                .iter()
                .filter_map(|l| l.strip_prefix(prefix).map(String::from))
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no {n} lines `{prefix}...` within {timeout:?}: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line that starts with `prefix` so far, and any waiting now.
    pub fn lines_with(&mut self, prefix: &str) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(String::from))
            .collect()
    }

    /// Waits for the process to exit (it was told to stop).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for weir local") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "weir local did not stop within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `weir local` of `job` on `executors` executors, with its work dir and log under `dir`, and
/// the admin token in the file `token`.
pub fn start_with_token(dir: &Path, job: &Path, token: &Path, executors: usize) -> LocalRun {
    let mut cmd = super::weir_local();
    cmd.arg("--job")
        .arg(job)
        .args(["--executors", &executors.to_string(), "--work-dir"])
        .arg(dir.join("work"))
        .arg("--admin-token-file")
        .arg(token);
    LocalRun::start(cmd, &dir.join("local.log"))
}

impl Drop for LocalRun {
    /// Stops it as a user would (SIGTERM: it stops its driver and executors) and kills it
    /// only if it is still there after a while: a SIGKILL would leave its executors running,
    /// waiting for a driver that does not come back.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `weir local` job whose executor count changes while it runs: its admin API needs a token,
/// and it starts on `executors`.
pub struct ScalingRun {
    pub local: LocalRun,
    pub url: String,
    pub token: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl ScalingRun {
    /// Starts `job` with its work, token and log under `dir`.
    pub fn start(dir: &Path, job: &Path, executors: usize) -> Self {
        let token = dir.join("token");
        std::fs::write(&token, "scaling-token\n").expect("token file");
        let log = dir.join("local.log");
        let mut local = start_with_token(dir, job, &token, executors);
        let url = local.wait_for_line("weir driver admin on ", Duration::from_secs(60));
        Self {
            local,
            url,
            token,
            log,
        }
    }

    /// Stops the job through the admin API: weir local exits 0, and never started a retired
    /// executor again.
    pub fn stop(mut self) {
        let stop = super::admin::admin(&self.url, &["stop"], Some(&self.token));
        assert!(stop.status.success(), "{stop:?}");
        let exit = self.local.wait(Duration::from_secs(60));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(exit.success(), "weir local: {exit}\n{log}");
        assert!(
            !log.contains("starting it again"),
            "a retired executor was started again: {log}"
        );
    }
}
