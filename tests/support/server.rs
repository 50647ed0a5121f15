//! A server process for a test (broker, S3, Prometheus, Pushgateway) on a loopback port the
//! test picked, in a directory of its own, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_port};

pub struct Server {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `program` (or what `env_var` names) with the arguments `args` makes from the
    /// address it must listen on and its directory, stderr to `<dir>/server.log`; returns once
    /// it accepts connections.
    pub fn start(
        program: &str,
        env_var: &str,
        args: impl FnOnce(&str, &Path) -> Vec<String>,
        timeout: Duration,
    ) -> Server {
        let program = std::env::var(env_var).unwrap_or_else(|_| program.to_string());
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("server.log");
        let mut child = Command::new(&program)
            .current_dir(dir.path())
            .args(args(&address, dir.path()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{program}` ({e}); run scripts/setup.sh to install it")
            });
        wait_for_port(&mut child, &address, &log, timeout);
        Server {
            child,
            address,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
