//! weir's image run as containers (docs/kubernetes.md, Containers on one machine): the driver and two
//! executors with the command lines, mounts and environment of deploy/base (less the driver's
//! `--kubernetes-deployment`: no API server runs here), on the host's loopback (podman, host
//! network), against tansu and moto. A driver frozen after a decision
//! (`podman pause`) is replaced by a new one, which runs the job to its end; the old one,
//! unpaused, is fenced and exits without writing; the table equals the ground truth.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_yaml_ng::Value;
use support::local_run::lines_of;
use support::proxy::Proxy;
use support::s3::{S3Server, CREDENTIALS};
use support::{gen_events, reference_job_in, repo_path, verify_in, Broker};

const EVENTS: u64 = 20_000;
const SECRET: &str = "container-test-cluster-secret-0123456789";

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        repo_path("deploy/podman/containers.conf"),
    );
    cmd
}

/// The image of the binary under test, removed when dropped.
struct Image(String);

impl Image {
    fn build() -> Image {
        let tag = format!("localhost/weir:e2e-{}", std::process::id());
        let out = Command::new("bash")
            .arg(repo_path("scripts/image.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_weir"), "--tag", &tag])
            .env(
                "CONTAINERS_CONF",
                repo_path("deploy/podman/containers.conf"),
            )
            .output()
            .expect("running scripts/image.sh");
        assert!(
            out.status.success(),
            "scripts/image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Image(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "--force", &self.0]).output();
    }
}

/// A running container: its `podman run`, its output lines, removed when dropped.
struct Container {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Container {
    /// Waits for a line starting with `prefix`; answers the rest of it.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => panic!("{} never printed {prefix}:\n{}", self.name, self.log_text()),
            }
        }
    }

    /// The port of the driver's control service, from the line it prints once it serves.
    fn control_port(&mut self) -> u16 {
        let address = self.wait_for_line("weir driver listening on http://");
        address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {address}"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the container to exit; answers whether it succeeded.
    fn wait(&mut self) -> bool {
        self.child.wait().expect("podman run").success()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first container's args of the Deployment in deploy/base/`file`.
fn manifest_args(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_path(&format!("deploy/base/{file}"))).expect(file);
    let deployment = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("YAML"))
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an arg").to_string())
        .collect()
}

/// `args` with each `--flag=value` whose flag is in `set` given that value instead, or left
/// out where the value is empty.
fn with_values(args: Vec<String>, set: &BTreeMap<&str, &str>) -> Vec<String> {
    args.into_iter()
        .filter_map(|a| match a.split_once('=') {
            Some((flag, _)) if set.contains_key(flag) => {
                (!set[flag].is_empty()).then(|| format!("{flag}={}", set[flag]))
            }
            _ => Some(a),
        })
        .collect()
}

/// A directory the container's user (uid 10001) can read, holding `files`.
fn readable_dir(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("a mount dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("a mounted file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    dir.to_path_buf()
}

struct Mounts {
    job: PathBuf,
    cluster: PathBuf,
    admin: PathBuf,
}

/// Starts `weir <args>` in a container named `name`, with the manifests' mounts.
fn run(
    image: &Image,
    name: &str,
    args: &[String],
    mounts: &Mounts,
    env: &[(&str, &str)],
    logs: &Path,
) -> Container {
    let log = logs.join(format!("{name}.log"));
    let mut cmd = podman();
    cmd.args([
        "run",
        "--rm",
        "--interactive",
        "--name",
        name,
        "--network",
        "host",
    ])
    .args(["--read-only", "--tmpfs", "/tmp:mode=1777"])
    .args(["--tmpfs", "/var/lib/weir:mode=1777"])
    .arg("--volume")
    .arg(format!("{}:/etc/weir/job:ro", mounts.job.display()))
    .arg("--volume")
    .arg(format!("{}:/etc/weir/cluster:ro", mounts.cluster.display()))
    .arg("--volume")
    .arg(format!("{}:/etc/weir/admin:ro", mounts.admin.display()))
    .args(["--env", "WEIR_LOG_FORMAT=human"]);
    for (k, v) in CREDENTIALS.iter().chain(env.iter()) {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.arg(&image.0)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"));
    let mut child = cmd.spawn().expect("podman run");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    Container {
        name: name.to_string(),
        stdin: child.stdin.take(),
        child,
        lines,
        log,
    }
}

#[test]
fn containers_run_the_job_and_a_paused_driver_is_fenced() {
    let image = Image::build();
    let broker = Broker::start();
    let s3 = S3Server::start("weir");
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 4, EVENTS, &[]);
    let root = "s3://weir/containers";
    let job = reference_job_in(
        tmp.path(),
        &broker.address,
        EVENTS / 8,
        root,
        &s3.storage_options_yaml(),
    );
    let job_text = std::fs::read(&job).expect("the job file");
    let mounts = Mounts {
        job: readable_dir(&tmp.path().join("job"), &[("job.yaml", &job_text)]),
        cluster: readable_dir(
            &tmp.path().join("cluster"),
            &[("secret", SECRET.as_bytes())],
        ),
        admin: readable_dir(
            &tmp.path().join("admin"),
            &[("token", b"container-admin-token")],
        ),
    };
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let prefix = format!("weir-e2e-{}", std::process::id());

    // Every process binds port 0 and says what it took (a port picked beforehand could be taken
    // by the time it binds); "the driver's Service" forwards to whichever driver it points at.
    let service = Proxy::start(0);
    let any_port = "127.0.0.1:0";
    let driver_args = || {
        let mut args = with_values(
            manifest_args("driver.yaml"),
            &BTreeMap::from([
                ("--listen", any_port),
                ("--admin-listen", any_port),
                ("--metrics-listen", any_port),
                ("--ui-listen", any_port),
                // No Kubernetes API runs here (the scaler is tested against a mocked one).
                ("--kubernetes-deployment", ""),
            ]),
        );
        args.push("--trigger=available-now".into());
        args
    };
    let mut first = run(
        &image,
        &format!("{prefix}-driver-a"),
        &driver_args(),
        &mounts,
        &[("WEIR_FAULT", "decided@2")],
        &logs,
    );
    service.point_to(first.control_port());
    let driver_url = format!("http://127.0.0.1:{}", service.port);
    let mut executors = Vec::new();
    for i in 0..2 {
        let id = format!("executor-{i}");
        // Without --advertise an executor advertises the address it bound.
        let args = with_values(
            manifest_args("executors.yaml"),
            &BTreeMap::from([
                ("--driver", driver_url.as_str()),
                ("--listen", any_port),
                ("--advertise", ""),
                ("--id", id.as_str()),
                ("--metrics-listen", any_port),
            ]),
        );
        executors.push(run(
            &image,
            &format!("{prefix}-executor-{i}"),
            &args,
            &mounts,
            &[],
            &logs,
        ));
    }

    // The first driver decides epoch 2 and is frozen before committing it, as a driver pod
    // cut off from the cluster would be.
    first.wait_for_line("weir fault point decided@2");
    let paused = podman()
        .args(["pause", &first.name])
        .status()
        .expect("pause");
    assert!(paused.success(), "podman pause");

    // Its replacement takes the checkpoint and runs the job to its end.
    let mut second = run(
        &image,
        &format!("{prefix}-driver-b"),
        &driver_args(),
        &mounts,
        &[],
        &logs,
    );
    service.point_to(second.control_port());
    assert!(
        second.wait(),
        "the second driver failed:\n{}",
        second.log_text()
    );
    for e in &mut executors {
        assert!(e.wait(), "{} failed:\n{}", e.name, e.log_text());
    }

    // The first wakes up fenced and writes nothing.
    let unpaused = podman()
        .args(["unpause", &first.name])
        .status()
        .expect("unpause");
    assert!(unpaused.success(), "podman unpause");
    if let Some(stdin) = first.stdin.as_mut() {
        let _ = stdin.write_all(b"go on\n").and_then(|_| stdin.flush());
    }
    assert!(
        !first.wait(),
        "a fenced driver went on:\n{}",
        first.log_text()
    );
    let log = first.log_text();
    assert!(
        log.contains("this driver (generation 1) is fenced: driver generation 2 took over"),
        "{log}"
    );
    verify_in(
        &events,
        root,
        &[OsStr::new("--s3-endpoint"), OsStr::new(&s3.endpoint)],
    );
}
