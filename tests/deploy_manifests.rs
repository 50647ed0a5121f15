//! The Kubernetes manifests in deploy/ (docs/kubernetes.md): every overlay renders with
//! kustomize, passes `kubernetes-validate --strict` against Kubernetes 1.32 and checkov (each
//! finding fixed or skipped with its reason in the manifest), and says what weir understands:
//! its job file parses, every flag it passes exists, its probes are weir's paths, and no
//! credential sits in a ConfigMap. scripts/setup.sh installs the three tools.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;
use support::{repo_path, weir};

const KUBERNETES_VERSION: &str = "1.32.0";

fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    if which(name).is_none() {
        panic!(
            "{name} is not on PATH; scripts/setup.sh installs it into /var/cache/weir/tools/bin"
        );
    }
    cmd.env("BC_SKIP_MAPPING", "TRUE");
    cmd
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_path("deploy/overlays"))
        .expect("deploy/overlays")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 2, "overlays: {dirs:?}");
    dirs
}

/// The overlay rendered by kustomize, written to `dir`; answers the file and its documents.
fn render(overlay: &Path, dir: &Path) -> (PathBuf, Vec<Value>) {
    let yaml = run(
        tool("kubectl").arg("kustomize").arg(overlay),
        "kubectl kustomize",
    );
    let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, &yaml).expect("writing the rendered overlay");
    let docs = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML"))
        .collect();
    (file, docs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every `--flag` a container passes is one `weir <subcommand>` takes.
fn check_flags(container: &Value) {
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    let help = run(weir().args([args[0], "--help"]), "weir --help");
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap_or(arg);
        let known = flag.starts_with("--")
            && help
                .lines()
                .any(|l| l.trim_start().split([' ', ',']).any(|w| w == flag));
        assert!(known, "`weir {}` takes no {flag}:\n{help}", args[0]);
    }
}

/// Probes use weir's paths on a port the container names.
fn check_probes(container: &Value) {
    let ports: Vec<&str> = container["ports"]
        .as_sequence()
        .map(|p| p.iter().map(|p| str_of(&p["name"])).collect())
        .unwrap_or_default();
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(str_of(&get["path"]), path, "{probe}");
        assert!(ports.contains(&str_of(&get["port"])), "{probe} port");
    }
}

/// The job file of the overlay parses as weir's own (with every ${VAR} set), and its
/// credentials are ${VAR}s, not values.
fn check_job(docs: &[Value]) {
    let maps = of_kind(docs, "ConfigMap");
    let job = maps
        .iter()
        .find(|m| str_of(&m["metadata"]["name"]).starts_with("weir-job"))
        .expect("the weir-job ConfigMap");
    let text = str_of(&job["data"]["job.yaml"]);
    let filled = weir_common::job::substitute_env(text, |_| Some("x".into())).expect("${VAR}s");
    weir_common::job::parse_job(&filled, Path::new("/")).expect("the overlay's job file");
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let lower = line.to_ascii_lowercase();
        if ["password", "secret", "token", "webhook"]
            .iter()
            .any(|k| lower.contains(k))
        {
            assert!(line.contains("${"), "a credential in a ConfigMap: {line}");
        }
    }
    for map in maps {
        for (_, value) in map["data"].as_mapping().into_iter().flatten() {
            assert!(
                !str_of(value).contains("PRIVATE KEY"),
                "a key in a ConfigMap"
            );
        }
    }
}

#[test]
fn every_overlay_renders_validates_and_passes_checkov() {
    let tmp = tempfile::tempdir().expect("temp dir");
    for overlay in overlays() {
        let (file, docs) = render(&overlay, tmp.path());
        run(
            tool("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
                .arg(&file),
            &format!("kubernetes-validate of {}", overlay.display()),
        );
        let report = run(
            tool("checkov")
                .args(["--framework", "kubernetes", "--compact", "--quiet"])
                .arg("--skip-download")
                .arg("-f")
                .arg(&file),
            &format!("checkov of {}", overlay.display()),
        );
        assert!(report.contains("Failed checks: 0"), "{report}");

        // The driver: one replica, replaced rather than rolled.
        let driver = named(&docs, "Deployment", "weir-driver");
        assert_eq!(driver["spec"]["replicas"], 1);
        assert_eq!(driver["spec"]["strategy"]["type"], "Recreate");
        // The driver keeps the executors' Deployment at its target: the manifest sets no
        // replicas, and the driver's Role may patch that scale and the pods' deletion cost.
        let driver_args = format!(
            "{:?}",
            driver["spec"]["template"]["spec"]["containers"][0]["args"]
        );
        assert!(
            driver_args.contains("--kubernetes-deployment=weir-executor"),
            "{driver_args}"
        );
        let executors = named(&docs, "Deployment", "weir-executor");
        assert!(executors["spec"]["replicas"].is_null());
        let role = named(&docs, "Role", "weir-driver");
        let rules = role["rules"].as_sequence().unwrap();
        let allows = |resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r["resources"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                    && r["verbs"].as_sequence().unwrap().iter().any(|x| x == verb)
            })
        };
        assert!(allows("deployments/scale", "patch") && allows("pods", "patch"));
        assert!(!allows("deployments", "patch") && !allows("pods", "delete"));
        // Executors: no API token, a bounded cache, ids and addresses from the pod.
        let pod = &executors["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        let state = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "state")
            .expect("the state volume");
        assert!(state["emptyDir"]["sizeLimit"].is_string());
        for workload in [driver, executors] {
            let pod = &workload["spec"]["template"]["spec"];
            assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 90);
            let container = &pod["containers"][0];
            check_flags(container);
            check_probes(container);
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true);
            assert_eq!(security["runAsNonRoot"], true);
            assert!(container["resources"]["limits"]["memory"].is_string());
        }
        let executor_args = format!("{:?}", pod["containers"][0]["args"]);
        assert!(
            executor_args.contains("--id=$(POD_NAME)"),
            "{executor_args}"
        );
        assert!(executor_args.contains("$(POD_IP)"), "{executor_args}");
        assert_eq!(
            of_kind(&docs, "PodDisruptionBudget").len(),
            1,
            "one, for the executors"
        );
        check_job(&docs);
    }
}

/// The Grafana dashboard is JSON whose every query names metrics weir exports.
#[test]
fn the_grafana_dashboard_queries_weir_metrics() {
    let text = std::fs::read_to_string(repo_path("deploy/grafana/weir-dashboard.json"))
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let sources: String = ["driver/src/ops/metrics.rs", "executor/src/metrics.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(repo_path(f)).expect("metrics source"))
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("weir_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                assert!(
                    sources.contains(&format!("\"{base}\"")),
                    "{expr}: weir exports no {base}"
                );
            }
        }
    }
}
