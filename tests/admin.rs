//! `weir admin` against a running `weir local`: Spark-shaped progress that adds up to what was
//! produced, executors and their assignment, pause, checkpoint now, resume, watch and stop,
//! and the refusal of a call that changes the query without the token.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::admin::{admin, admin_json};
use support::local_run::{start_with_token, LocalRun};
use support::{reference_job, weir, Broker};

const TOKEN: &str = "s3cret-admin-token";

/// Produces `count` events (seeded) into the topic.
fn produce(broker: &Broker, count: u64, seed: u64, start: &str) {
    support::run_ok(
        weir()
            .args(["gen", "--brokers", &broker.address, "--topic", "web-events"])
            .args(["--partitions", "4", "--count", &count.to_string()])
            .args(["--start", start, "--seed", &seed.to_string()]),
        "weir gen",
    );
}

fn input_rows(progress: &Value) -> u64 {
    progress
        .as_array()
        .expect("a list of progress")
        .iter()
        .map(|p| p["numInputRows"].as_u64().expect("numInputRows"))
        .sum()
}

/// Polls `recent-progress` until its epochs read `rows` in all.
fn wait_for_input(url: &str, rows: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let recent = admin_json(url, &["recent-progress"], None);
        if input_rows(&recent) >= rows {
            return recent;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {rows} rows read: {recent}",
            input_rows(&recent)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn weir_admin_reports_progress_and_steers_a_running_query() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    produce(&broker, 20_000, 7, "2026-01-01T00:00:00Z");
    reference_job(dir.path(), &broker.address, 8_000);
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let mut local = start_with_token(dir.path(), &dir.path().join("job.yaml"), &token, 2);
    let url = local.wait_for_line("weir driver admin on ", Duration::from_secs(60));

    // Progress: at least Spark's fields, and the epochs add up to what was produced.
    let recent = wait_for_input(&url, 20_000);
    assert_eq!(input_rows(&recent), 20_000, "{recent}");
    let epochs = recent.as_array().unwrap();
    for (i, p) in epochs.iter().enumerate() {
        for field in [
            "id",
            "runId",
            "name",
            "timestamp",
            "batchId",
            "numInputRows",
            "inputRowsPerSecond",
            "processedRowsPerSecond",
            "numMalformedRows",
            "numLateRows",
        ] {
            assert!(!p[field].is_null(), "epoch {i} lacks {field}: {p}");
        }
        for phase in ["plan", "execute", "shuffle", "prepare", "commit", "total"] {
            assert!(p["durationMs"][phase].is_u64(), "durationMs.{phase}: {p}");
        }
        for field in [
            "numRowsTotal",
            "numRowsUpdated",
            "numRowsDroppedByWatermark",
            "memoryUsedBytes",
            "checkpointBytes",
        ] {
            assert!(p["state"][field].is_u64(), "state.{field}: {p}");
        }
        assert!(p["sink"]["numOutputRows"].is_u64(), "{p}");
        if i > 0 {
            assert_eq!(
                p["batchId"].as_u64(),
                epochs[i - 1]["batchId"].as_u64().map(|b| b + 1),
                "epochs in order"
            );
        }
    }
    let last = admin_json(&url, &["progress"], None);
    assert_eq!(last["name"], "realtime-analytics");
    let partitions = last["sources"][0]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4, "{last}");
    let end: i64 = partitions
        .iter()
        .map(|p| p["endOffset"].as_i64().unwrap())
        .sum();
    assert_eq!(end, 20_000, "{last}");
    assert!(
        partitions
            .iter()
            .all(|p| p["lag"] == 0 && p["latestOffset"] == p["endOffset"]),
        "{last}"
    );
    // Event times as RFC 3339 in UTC, so they order as strings.
    let t = &epochs[0]["eventTime"];
    let (min, avg, max) = (
        t["min"].as_str().unwrap(),
        t["avg"].as_str().unwrap(),
        t["max"].as_str().unwrap(),
    );
    assert!(min <= avg && avg <= max && max.ends_with('Z'), "{t}");

    // Status and executors: two executors own all partitions and key groups between them.
    let queries = admin_json(&url, &["status"], None);
    assert_eq!(queries[0]["executorsRegistered"], 2, "{queries}");
    assert_eq!(queries[0]["id"], last["id"]);
    let executors = admin_json(&url, &["executors"], None);
    let executors = executors.as_array().unwrap();
    assert_eq!(executors.len(), 2);
    let mut partitions: Vec<i64> = executors
        .iter()
        .flat_map(|e| {
            e["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_i64().unwrap())
        })
        .collect();
    partitions.sort();
    assert_eq!(partitions, vec![0, 1, 2, 3]);
    let owned: u64 = executors
        .iter()
        .map(|e| e["keyGroupCount"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 256);
    assert!(executors
        .iter()
        .all(|e| e["state"] == "ACTIVE" && e["heartbeatAgeSeconds"].as_f64().unwrap() < 10.0));

    // Changing the query needs the token.
    let refused = admin(&url, &["pause"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs the admin token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let wrong = admin(&url, &["pause"], Some(&wrong));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not valid"));
    assert_ne!(admin_json(&url, &["status"], None)[0]["state"], "PAUSED");

    // Paused, new input waits; a checkpoint runs one epoch that reads all of it.
    let paused = admin_json(&url, &["pause"], Some(&token));
    let last_epoch = last["batchId"].as_u64().unwrap();
    assert!(
        matches!(paused["state"].as_str(), Some("PAUSED" | "ACTIVE")),
        "{paused}"
    );
    produce(&broker, 5_000, 8, "2026-01-01T06:00:00Z");
    let checkpoint = admin_json(&url, &["checkpoint"], Some(&token));
    assert_eq!(checkpoint["ran"], true, "{checkpoint}");
    let epoch = checkpoint["epoch"].as_u64().unwrap();
    let progress = admin_json(&url, &["progress"], None);
    assert_eq!(progress["batchId"].as_u64(), Some(epoch));
    assert_eq!(
        input_rows(&admin_json(&url, &["recent-progress"], None)),
        25_000,
        "the epochs after the pause read exactly the new input"
    );
    assert!(epoch > last_epoch);
    assert_eq!(
        progress["numInputRows"], 5_000,
        "nothing ran while paused: {progress}"
    );
    assert_eq!(admin_json(&url, &["status"], None)[0]["state"], "PAUSED");

    // Resumed and watched: the next epochs stream to the watcher.
    let resumed = admin_json(&url, &["resume"], Some(&token));
    assert_ne!(resumed["state"], "PAUSED", "{resumed}");
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["admin", "--admin", &url, "watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watched = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in watched.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The table header comes once the driver has answered the watch (it is subscribed).
    let header = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the watch's header");
    assert!(header.starts_with("EPOCH"), "{header}");
    produce(&broker, 1_000, 9, "2026-01-01T07:00:00Z");
    let mut streamed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while streamed < 1_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("a progress row from watch");
        // EPOCH TIMESTAMP INPUT ...
        let input: u64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        streamed += input;
    }
    assert_eq!(streamed, 1_000);

    // A graceful stop: the driver finishes, the executors exit, weir local exits 0.
    let stopped = admin_json(&url, &["stop"], Some(&token));
    // Stopping, or already stopped when nothing was running.
    assert!(
        matches!(stopped["state"].as_str(), Some("STOPPING" | "STOPPED")),
        "{stopped}"
    );
    let status = local.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "weir local after admin stop: {status}: {:?}",
        local.seen
    );
    // The watch ends with the driver.
    assert!(watch.wait().unwrap().success());
    assert!(local.lines_with("done: the output table is at").len() == 1);
}

/// A CA and a certificate it signed for 127.0.0.1, made with openssl in `dir`: answers the
/// CA's, the server certificate's and its key's paths.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        support::run_ok(
            std::process::Command::new("openssl")
                .current_dir(dir)
                .args(args),
            "openssl",
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat()
        .iter()
        .chain(&["-days", "2", "-subj", "/CN=weir test CA"])
        .copied()
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "admin.key", "-out", "admin.csr"],
        ]
        .concat()
        .iter()
        .chain(&["-subj", "/CN=127.0.0.1"])
        .copied()
        .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "admin.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("admin.pem"),
        dir.join("admin.key"),
    )
}

#[test]
fn weir_admin_talks_tls_to_a_driver_that_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    // Nothing is read before an executor registers: the driver only needs its job file.
    reference_job(dir.path(), "127.0.0.1:1", 1_000);
    let mut driver = weir();
    driver
        .args(["driver", "--job"])
        .arg(dir.path().join("job.yaml"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--metrics-listen",
            "off",
            "--ui-listen",
            "off",
            "--admin-tls-cert",
        ])
        .arg(&cert)
        .arg("--admin-tls-key")
        .arg(&key);
    let mut run = LocalRun::start(driver, &dir.path().join("driver.log"));
    let url = run.wait_for_line("weir driver admin on ", Duration::from_secs(60));
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let ca_arg = ca.display().to_string();
    let status = admin_json(&url, &["--ca-cert", &ca_arg, "status"], None);
    assert_eq!(status[0]["name"], "realtime-analytics", "{status}");
    assert_eq!(status[0]["state"], "WAITING_FOR_EXECUTORS", "{status}");

    // Without the CA the certificate is not trusted; plain HTTP/2 gets no answer.
    let untrusted = admin(&url, &["status"], None);
    assert!(!untrusted.status.success());
    let plain = admin(&url.replacen("https://", "http://", 1), &["status"], None);
    assert!(!plain.status.success());

    let stopped = admin_json(&url, &["--ca-cert", &ca_arg, "stop"], None);
    // Stopping, or already stopped when nothing was running.
    assert!(
        matches!(stopped["state"].as_str(), Some("STOPPING" | "STOPPED")),
        "{stopped}"
    );
    let status = run.wait(Duration::from_secs(30));
    assert!(status.success(), "driver after stop: {status}");
}
