//! Exactly once under failure (docs/architecture.md, Recovery): SIGKILL the driver and executors at
//! every step of the epoch protocol, restart them, and demand the table of a run without faults.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use support::chaos::{every_step, run_with_faults};
use support::cluster::{Cluster, Event, Role};
use support::s3::{S3Server, CREDENTIALS};
use support::webhook::Webhook;
use support::{
    commit_records, file_job_in, gen_events, gen_files, reference_job, reference_job_in, run_local,
    set_update_mode, verify_in, Broker, BAD_INPUT,
};

const EXECUTORS: usize = 3;
/// 48 000 events in 8 partitions at 4 000 records per epoch: twelve epochs with data.
const EVENTS: u64 = 48_000;
const PER_EPOCH: u64 = 4_000;
/// Four hours of events, 1 % late by an hour and 1 % malformed: failures must not lose or
/// double a late count or a dead letter either.
fn gen_args() -> Vec<&'static str> {
    [&["--span", "4h"][..], &BAD_INPUT].concat()
}

/// Some executor restored its state from the checkpoint (not only from its own disk).
fn assert_state_was_restored(records: &[serde_json::Value]) {
    let restores = records
        .iter()
        .flat_map(|r| r["executors"].as_object().into_iter().flatten())
        .filter(|(_, e)| e["restore_ms"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(restores > 0, "no executor ever restored state");
}

/// The reference job run by `weir local` without faults: the table to compare with.
fn baseline(broker: &Broker, dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("baseline dir");
    reference_job(dir, &broker.address, PER_EPOCH);
    run_local(dir, EXECUTORS);
    dir.join("aggregated").display().to_string()
}

#[test]
fn killing_any_process_at_any_step_on_the_local_filesystem_changes_nothing() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &gen_args());
    let expected = baseline(&broker, &tmp.path().join("baseline"));

    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let job = reference_job(&dir, &broker.address, PER_EPOCH);
    // Compaction and vacuum after every commit: kills land in the middle of their passes too.
    let text = std::fs::read_to_string(&job).expect("job file");
    let sink = "partition_by: [event_type]}";
    assert!(text.contains(sink), "test bug: {text}");
    let upkeep = "partition_by: [event_type], compact: {every: 0s, min_files: 2}, \
                  vacuum: {retention: 0s, every: 0s}}";
    // Late rows kept too: their table must hold each late event once whatever was killed.
    let late_rows = dir.join("late-rows");
    let keep_late = format!(
        "late_rows: {{delta: {{path: \"{}\"}}}}\n",
        late_rows.display()
    );
    std::fs::write(&job, text.replace(sink, upkeep) + &keep_late).expect("job file");
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &[]);
    run_with_faults(&mut cluster, &every_step());
    assert_state_was_restored(&commit_records(&dir));
    let driver_log = std::fs::read_to_string(dir.join("logs/driver.log")).expect("driver log");
    assert!(driver_log.contains("compacted "), "no compaction ran");
    verify_in(
        &events,
        &dir.display().to_string(),
        &[
            OsStr::new("--same-as"),
            OsStr::new(&expected),
            OsStr::new("--late-rows"),
            late_rows.as_os_str(),
        ],
    );
}

#[test]
fn killing_any_process_at_any_step_on_s3_changes_nothing() {
    let broker = Broker::start();
    let s3 = S3Server::start("weir");
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &gen_args());
    let expected = baseline(&broker, &tmp.path().join("baseline"));

    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let root = "s3://weir/chaos";
    let job = reference_job_in(
        &dir,
        &broker.address,
        PER_EPOCH,
        root,
        &s3.storage_options_yaml(),
    );
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &CREDENTIALS);
    run_with_faults(&mut cluster, &every_step());
    verify_on_s3(&events, root, &expected, &s3);
}

/// Compares the tables under `root` on `s3` with the ground truth and with `expected`.
fn verify_on_s3(events: &Path, root: &str, expected: &str, s3: &S3Server) {
    verify_in(
        events,
        root,
        &[
            OsStr::new("--same-as"),
            OsStr::new(expected),
            OsStr::new("--s3-endpoint"),
            OsStr::new(&s3.endpoint),
        ],
    );
}

/// The file source under the same faults, its files and tables on S3, in update mode: each file
/// is read once, and each epoch's MERGE lands once whatever was killed (a MERGE repeated after a
/// kill between the decision and Committed is recognised by its transaction).
#[test]
fn killing_any_process_at_any_step_reading_files_on_s3_in_update_mode_changes_nothing() {
    let s3 = S3Server::start("weir");
    let tmp = tempfile::tempdir().expect("temp dir");
    // Twelve epochs of two files, as many as the schedule needs.
    let (input, events) = gen_files(tmp.path(), EVENTS, 24, &gen_args());
    let expected_dir = tmp.path().join("baseline");
    std::fs::create_dir_all(&expected_dir).expect("baseline dir");
    let root = expected_dir.display().to_string();
    let input_dir = input.display().to_string();
    set_update_mode(&file_job_in(&expected_dir, &input_dir, 2, &root, ""));
    run_local(&expected_dir, EXECUTORS);
    let expected = expected_dir.join("aggregated").display().to_string();

    s3.upload(&input, "s3://weir/input");
    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let root = "s3://weir/chaos";
    let job = file_job_in(&dir, "s3://weir/input", 2, root, &s3.storage_options_yaml());
    set_update_mode(&job);
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &CREDENTIALS);
    run_with_faults(&mut cluster, &every_step());
    verify_in(
        &events,
        root,
        &[
            OsStr::new("--same-as"),
            OsStr::new(&expected),
            OsStr::new("--s3-endpoint"),
            OsStr::new(&s3.endpoint),
            OsStr::new("--output-mode"),
            OsStr::new("update"),
        ],
    );
}

/// SIGKILLs random processes at random moments, restarting each at once, while the job runs;
/// the seed is printed (set WEIR_CHAOS_SEED to replay a run's choices).
#[test]
fn random_kills_of_random_processes_change_nothing() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("WEIR_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    eprintln!("chaos seed {seed} (WEIR_CHAOS_SEED={seed} replays the choices)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    let broker = Broker::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    // Three times the data of the scheduled test: about 36 epochs, room for the 10 kills
    // below, each of which takes one to three epochs.
    let events = gen_events(&broker, tmp.path(), 8, 3 * EVENTS, &gen_args());
    let expected = baseline(&broker, &tmp.path().join("baseline"));
    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let job = reference_job(&dir, &broker.address, PER_EPOCH);
    let mut cluster = Cluster::new(&job, &dir, EXECUTORS, &[]);
    for role in cluster.roles() {
        cluster.start(role, "");
    }
    // Each kill comes at a random moment after an epoch committed, within about the next two
    // epochs (twice the median time between commits, at most 1.5 s), so the kills land at
    // any phase of an epoch and spread over the whole run, however fast its epochs are.
    const KILLS: usize = 10;
    let mut kills = Vec::new();
    let mut next_kill: Option<std::time::Instant> = None;
    let mut seen = 0;
    let mut last_commit: Option<std::time::Instant> = None;
    let mut between_commits: Vec<Duration> = Vec::new();
    loop {
        if cluster.progress.len() > seen {
            seen = cluster.progress.len();
            let now = std::time::Instant::now();
            if let Some(last) = last_commit {
                between_commits.push(now - last);
                between_commits.sort_unstable();
            }
            last_commit = Some(now);
            if next_kill.is_none() && kills.len() < KILLS {
                let median = between_commits
                    .get(between_commits.len() / 2)
                    .copied()
                    .unwrap_or(Duration::from_millis(750));
                let within =
                    (2 * median).clamp(Duration::from_millis(50), Duration::from_millis(1500));
                let delay = rng.random_range(0..within.as_millis() as u64);
                next_kill = Some(now + Duration::from_millis(delay));
            }
        }
        let timeout = next_kill.map_or(Duration::from_secs(300), |at| {
            at.saturating_duration_since(std::time::Instant::now())
        });
        match cluster.try_next_event(timeout) {
            Some((Role::Driver, Event::Closed)) => {
                cluster.reap_ok(Role::Driver, &format!(" after kills {kills:?}"));
                break;
            }
            Some((role, Event::Closed)) => cluster.reap_ok(role, ""),
            Some(_) => {}
            None if next_kill.is_some() => {
                let roles = cluster.roles();
                let victim = roles[rng.random_range(0..roles.len())];
                eprintln!(
                    "kill {}: SIGKILL {victim} after {seen} committed epochs",
                    kills.len() + 1
                );
                cluster.kill(victim);
                cluster.start(victim, "");
                kills.push(format!("{victim}@{seen}"));
                next_kill = None;
            }
            None => panic!("the job made no progress for 300 s after kills {kills:?}"),
        }
    }
    assert_eq!(
        kills.len(),
        KILLS,
        "the job ended after only {} kills ({kills:?}): make it longer",
        kills.len()
    );
    verify_in(
        &events,
        &dir.display().to_string(),
        &[OsStr::new("--same-as"), OsStr::new(&expected)],
    );
}

/// `weir local` behaves like a Deployment: an executor killed mid-job is started again, the
/// webhook hears that it was lost and that the query recovered, and the output is still exact.
#[test]
fn weir_local_starts_a_killed_executor_again_alerts_and_the_output_stays_exact() {
    let broker = Broker::start();
    let hook = Webhook::start("/alerts", 0);
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &gen_args());
    let dir = tmp.path().join("local");
    std::fs::create_dir_all(&dir).expect("job dir");
    reference_job_in(
        &dir,
        &broker.address,
        PER_EPOCH,
        &dir.display().to_string(),
        &format!("alerts: {{webhook: \"{}\"}}\n", hook.url),
    );
    let needle = dir.join("work").join("executor-1").display().to_string();
    let log = run_local_killing(&dir, 2, &needle, || {});
    assert!(log.contains("executor-1 exited"), "{log}");
    support::verify(&events, &dir, &[]);

    // The driver delivers its alerts before it exits.
    let alerts = hook.texts(Duration::from_millis(500));
    let lost: Vec<&String> = alerts
        .iter()
        .filter(|t| t.contains("failed or was lost"))
        .collect();
    assert!(!lost.is_empty(), "no executor-lost alert: {alerts:?}");
    assert!(
        lost.iter().all(|t| t.contains("executor `executor-1`")),
        "{lost:?}"
    );
    let last = alerts.last().expect("alerts");
    assert!(
        last.contains("recovered in") && last.contains("realtime-analytics"),
        "the last alert says the query recovered: {alerts:?}"
    );
}

/// Runs `weir local` on the job in `dir` with 2 executors to its end, SIGKILLing the process
/// whose command line holds `needle` once epoch `at` is committed, and calling `on_epoch` at
/// every committed epoch; answers its log once it exited 0.
fn run_local_killing(dir: &Path, at: u64, needle: &str, mut on_epoch: impl FnMut()) -> String {
    use std::io::{BufRead, BufReader};
    let mut local = support::local_job(dir, 2)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("local.log")).expect("log"))
        .spawn()
        .expect("weir local");
    let stdout = local.stdout.take().expect("stdout");
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("weir local output");
        if line.contains("] epoch ") {
            on_epoch();
        }
        if !killed && line.contains(&format!("] epoch {at} ")) {
            let pid =
                support::pid_of(needle).unwrap_or_else(|| panic!("no process `{needle}` runs"));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("SIGKILL");
            killed = true;
        }
    }
    let status = local.wait().expect("weir local");
    let log = std::fs::read_to_string(dir.join("local.log")).unwrap_or_default();
    assert!(status.success(), "weir local failed ({status}):\n{log}");
    assert!(killed, "the job ended before epoch {at}");
    log
}

/// How many decisions the checkpoint in `dir` holds now (read while the driver prunes it).
fn decisions_in(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("checkpoint").join("commits"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| support::record_epoch(&e.path()).is_some())
                .count()
        })
        .unwrap_or(0)
}

/// `weir local` restarts a driver killed mid-job on its control port; the executors register
/// with the new one, which resumes from a checkpoint log pruned to the last 3 epochs, and the
/// output is still exact. The log never holds more than those epochs and the one being decided.
#[test]
fn weir_local_starts_a_killed_driver_again_from_a_pruned_log_and_the_output_stays_exact() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let events = gen_events(&broker, tmp.path(), 8, EVENTS, &gen_args());
    let dir = tmp.path().join("local");
    std::fs::create_dir_all(&dir).expect("job dir");
    let job = reference_job_in(
        &dir,
        &broker.address,
        PER_EPOCH,
        &dir.display().to_string(),
        "checkpoint_retention: 3\n",
    );
    let needle = format!("\0driver\0--job\0{}", job.display());
    let mut most_decisions = 0;
    let log = run_local_killing(&dir, 5, &needle, || {
        most_decisions = most_decisions.max(decisions_in(&dir));
    });
    assert!(
        log.contains("the driver exited (signal: 9"),
        "weir local did not restart the driver:\n{log}"
    );
    assert!(
        log.contains("resuming after the last decided epoch"),
        "{log}"
    );
    // A new decision is written before the oldest is forgotten: 3, and 4 for a moment.
    assert!(
        (3..=4).contains(&most_decisions),
        "the log held {most_decisions} decisions"
    );
    let records = commit_records(&dir);
    let last = records.last().expect("decisions")["epoch"]
        .as_u64()
        .unwrap();
    assert!(last >= 11, "only {last} epochs: the log was never pruned");
    assert_eq!(records.len(), 3);
    support::verify(
        &events,
        &dir,
        &[OsStr::new("--state-retention"), OsStr::new("3")],
    );
}

/// `weir local` killed with SIGKILL takes its driver and executors with it: none is left
/// running with nothing to supervise or stop it, holding ports and the checkpoint.
#[test]
fn weir_local_killed_takes_its_driver_and_executors_with_it() {
    use std::io::{BufRead, BufReader};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = gen_files(dir.path(), 2_000, 2, &[]);
    let root = dir.path().display().to_string();
    file_job_in(dir.path(), &input.display().to_string(), 1, &root, "");
    // The job's own 1 s trigger: it runs until stopped.
    let mut local = support::local_job_running(dir.path(), 2)
        .spawn()
        .expect("weir local");
    let stdout = local.stdout.take().expect("stdout");
    // Its first epoch is decided: the driver and both executors run.
    let decided = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("] epoch 0 |"));
    assert!(decided, "weir local ended before its first epoch");
    let pid = local.id() as i32;
    let children = children_of(pid);
    assert_eq!(
        children.len(),
        3,
        "the driver and two executors: {children:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    local.wait().expect("weir local");
    let deadline = Instant::now() + Duration::from_secs(30);
    while children.iter().any(|&child| running(child)) {
        let left: Vec<i32> = children.iter().copied().filter(|&c| running(c)).collect();
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: state, parent, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| stat_fields(p).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// Whether `pid` runs: neither gone nor a zombie waiting to be reaped.
fn running(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X")))
}
