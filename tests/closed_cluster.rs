//! A closed cluster: a process without the cluster secret cannot join, steer or feed a running
//! job, and no secret reaches it, the logs or the metrics (docs/operations.md, Security).

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use futures::TryStreamExt;
use prost::Message;
use support::cluster::{Cluster, Event, Role, CLUSTER_SECRET};
use support::s3::{S3Server, CREDENTIALS};
use support::{file_job_in, gen_files, verify_in};
use tonic::transport::Channel;
use weir_proto::admin::admin_client::AdminClient;
use weir_proto::admin::{ControlRequest, ListExecutorsRequest};
use weir_proto::cluster_auth::ClusterSecret;
use weir_proto::control::driver_client::DriverClient;
use weir_proto::control::executor_client::ExecutorClient;
use weir_proto::control::{
    ExecuteRequest, HeartbeatRequest, IdentifyRequest, KeyGroupRange, Peer, RegisterRequest,
    ShutdownRequest,
};
use weir_proto::exchange::StreamHeader;

const EVENTS: u64 = 20_000;
/// Secrets of the run that must never show up outside the processes that hold them.
const S3_SECRET: &str = "s3-secret-access-key-that-must-not-leak-5b1d";
const ADMIN_TOKEN: &str = "admin-token-that-must-not-leak-93c0";
const WRONG_SECRET: &str = "a-secret-of-another-cluster-0123456789";

/// What the rogue got back from one call: the answer or the refusal, as text.
struct Answer {
    what: String,
    text: String,
    code: Option<tonic::Code>,
}

fn answer<T: std::fmt::Debug>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Answer {
    match r {
        Ok(response) => Answer {
            what: what.into(),
            text: format!("{response:?}"),
            code: None,
        },
        Err(status) => Answer {
            what: what.into(),
            text: format!("{status:?}"),
            code: Some(status.code()),
        },
    }
}

async fn channel(address: &str) -> Channel {
    Channel::from_shared(address.to_string())
        .expect("an address")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"))
}

/// Everything the rogue tries, each call once, without the cluster secret (one call signs with
/// another cluster's).
async fn rogue(driver: &str, executors: &[String], admin: &str, job_id: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut d = DriverClient::new(channel(driver).await);
    let register = |id: &str| RegisterRequest {
        executor_id: id.into(),
        address: "http://127.0.0.1:9".into(),
        incarnation: 1,
        preparing: false,
        exchange_format: 1,
    };
    answers.push(answer("register", d.register(register("rogue")).await));
    answers.push(answer(
        "register as executor-0",
        d.register(register("executor-0")).await,
    ));
    answers.push(answer(
        "heartbeat as executor-0",
        d.heartbeat(HeartbeatRequest {
            executor_id: "executor-0".into(),
            incarnation: 1,
            ready: true,
        })
        .await,
    ));
    // Signed with a secret of another cluster.
    let wrong = ClusterSecret::from_text(WRONG_SECRET).expect("a secret");
    let mut request = tonic::Request::new(register("executor-1"));
    wrong.attach(request.metadata_mut());
    answers.push(answer("register, wrong secret", d.register(request).await));

    let peers: Vec<Peer> = executors
        .iter()
        .enumerate()
        .map(|(i, a)| Peer {
            executor_id: format!("executor-{i}"),
            address: a.clone(),
            key_groups: vec![KeyGroupRange { start: 0, end: 1 }],
            exchange_format: 1,
        })
        .collect();
    for address in executors {
        let mut e = ExecutorClient::new(channel(address).await);
        answers.push(answer(
            "execute",
            e.execute(ExecuteRequest {
                epoch: 99,
                run: "rogue".into(),
                peers: peers.clone(),
                ..Default::default()
            })
            .await,
        ));
        answers.push(answer("identify", e.identify(IdentifyRequest {}).await));
        answers.push(answer(
            "shutdown",
            e.shutdown(ShutdownRequest { generation: 99 }).await,
        ));

        // Partials into the exchange, in the name of the other executor.
        let header = StreamHeader {
            job_id: job_id.into(),
            epoch: 3,
            sender: "executor-1".into(),
            run: "rogue".into(),
            round: 0,
        };
        let data =
            futures::stream::iter([Ok(FlightData::new()
                .with_descriptor(FlightDescriptor::new_cmd(header.encode_to_vec())))]);
        let mut flight = FlightClient::new(channel(address).await);
        // A refusal arrives as the call's status, or as the first message of its answer.
        let refused = match flight.do_put(data).await {
            Ok(mut results) => results.try_next().await.err(),
            Err(e) => Some(e),
        };
        let code = match &refused {
            Some(FlightError::Tonic(status)) => Some(status.code()),
            _ => None,
        };
        answers.push(Answer {
            what: "flight do_put".into(),
            text: format!("{refused:?}"),
            code,
        });
    }

    let mut a = AdminClient::new(channel(admin).await);
    let stop = || ControlRequest {
        query: String::new(),
    };
    answers.push(answer("admin stop", a.stop(stop()).await));
    let mut request = tonic::Request::new(stop());
    request.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token".parse().expect("a header"),
    );
    answers.push(answer("admin stop, wrong token", a.stop(request).await));
    answers
}

/// The value of the sample `name` in a Prometheus text page.
fn sample(page: &str, name: &str) -> f64 {
    support::http::sample(page, name).unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

#[test]
fn a_process_without_the_cluster_secret_is_refused_everywhere() {
    let s3 = S3Server::start("weir");
    let tmp = tempfile::tempdir().expect("temp dir");
    let (input, events) = gen_files(tmp.path(), EVENTS, 4, &[]);
    s3.upload(&input, "s3://weir/input");
    let dir = tmp.path().join("job");
    std::fs::create_dir_all(&dir).expect("job dir");
    let root = "s3://weir/closed";
    // Executors take these values from their own job file; the driver sends only the keys.
    let options = format!(
        "storage_options: {{aws_endpoint: \"{}\", aws_allow_http: \"true\", \
         aws_access_key_id: \"test\", aws_secret_access_key: \"{S3_SECRET}\"}}\n",
        s3.endpoint
    );
    let job = file_job_in(&dir, "s3://weir/input", 1, root, &options);
    let mut env: Vec<(&str, &str)> = CREDENTIALS.to_vec();
    env.push(("WEIR_ADMIN_TOKEN", ADMIN_TOKEN));
    let mut cluster = Cluster::new(&job, &dir, 2, &env);
    // The driver stops after the second decision while the rogue works: the job is running.
    cluster.start(Role::Driver, "decided@2");
    cluster.start(Role::Executor(0), "");
    cluster.start(Role::Executor(1), "");
    let mut metrics: HashMap<Role, String> = HashMap::new();
    let mut admin = String::new();
    loop {
        let (role, event) = cluster.next_event(Duration::from_secs(120));
        let Event::Line(line) = event else {
            panic!("{role} exited:\n{}", cluster.log_tail(role));
        };
        if let Some(url) = line
            .strip_prefix("weir driver metrics on ")
            .or_else(|| line.strip_prefix("weir executor metrics on "))
        {
            metrics.insert(role, url.to_string());
        }
        if let Some(url) = line.strip_prefix("weir driver admin on ") {
            admin = url.to_string();
        }
        if line == "weir fault point decided@2" {
            break;
        }
    }
    let driver = format!("http://127.0.0.1:{}", cluster.driver_port);

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (executors, job_id) = runtime.block_on(async {
        let mut a = AdminClient::new(channel(&admin).await);
        let listed = a
            .list_executors(ListExecutorsRequest {})
            .await
            .expect("reads need no token here")
            .into_inner();
        let mut executors: Vec<(String, String)> = listed
            .executors
            .into_iter()
            .map(|e| (e.executor_id, e.address))
            .collect();
        executors.sort();
        let status = a
            .list_queries(weir_proto::admin::ListQueriesRequest {})
            .await
            .expect("the query")
            .into_inner();
        (
            executors.into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
            status.queries[0].id.clone(),
        )
    });
    assert_eq!(executors.len(), 2);
    let answers = runtime.block_on(rogue(&driver, &executors, &admin, &job_id));
    for a in &answers {
        let expected = if a.what.starts_with("admin stop, wrong") {
            tonic::Code::PermissionDenied
        } else {
            tonic::Code::Unauthenticated
        };
        assert_eq!(a.code, Some(expected), "{}: {}", a.what, a.text);
        for secret in [S3_SECRET, ADMIN_TOKEN, CLUSTER_SECRET] {
            assert!(!a.text.contains(secret), "{} answered a secret", a.what);
        }
    }

    // A second executor with the secret under a live executor's id is refused, and says why.
    let mut impostor = support::weir();
    impostor
        .args(["executor", "--driver", &driver, "--listen", "127.0.0.1:0"])
        .args(["--id", "executor-0", "--metrics-listen", "off", "--job"])
        .arg(&job)
        .arg("--state-dir")
        .arg(dir.join("impostor"))
        .env("WEIR_CLUSTER_SECRET", CLUSTER_SECRET)
        .envs(CREDENTIALS);
    let out = impostor.output().expect("running the impostor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("executor id executor-0 belongs to a live executor"),
        "{stderr}"
    );

    // Every refusal was counted where it happened.
    let scrape = |role: Role| support::http::get(&metrics[&role]).expect("metrics");
    let driver_page = scrape(Role::Driver);
    assert_eq!(
        sample(&driver_page, "weir_cluster_calls_refused_total"),
        4.0,
        "register twice, heartbeat, register with the wrong secret"
    );
    let mut pages = vec![driver_page];
    for i in 0..2 {
        let page = scrape(Role::Executor(i));
        assert_eq!(
            sample(&page, "weir_executor_cluster_calls_refused_total"),
            4.0,
            "execute, identify, shutdown, do_put"
        );
        pages.push(page);
    }

    // The job goes on and ends with the right table.
    cluster.release(Role::Driver);
    loop {
        let (role, event) = cluster.next_event(Duration::from_secs(300));
        if let Event::Closed = event {
            cluster.reap_ok(role, " after the rogue");
            if role == Role::Driver {
                break;
            }
        }
    }
    for role in [Role::Executor(0), Role::Executor(1)] {
        if cluster.is_running(role) {
            cluster.reap_ok(role, " after the driver");
        }
    }
    verify_in(
        &events,
        root,
        &[OsStr::new("--s3-endpoint"), OsStr::new(&s3.endpoint)],
    );

    // Each server logged the rogue once, and no log or metric holds a secret.
    let logs: Vec<(Role, String)> = cluster
        .roles()
        .into_iter()
        .map(|r| {
            let path = dir.join(format!("logs/{r}.log"));
            (r, std::fs::read_to_string(path).expect("a log"))
        })
        .collect();
    for (role, log) in &logs {
        assert_eq!(
            log.matches("refused a call").count(),
            1,
            "{role} logs the rogue's first refusal only:\n{log}"
        );
        for secret in [S3_SECRET, ADMIN_TOKEN, CLUSTER_SECRET] {
            assert!(!log.contains(secret), "the log of {role} holds a secret");
        }
    }
    for page in &pages {
        for secret in [S3_SECRET, ADMIN_TOKEN, CLUSTER_SECRET] {
            assert!(!page.contains(secret), "a metrics page holds a secret");
        }
    }
}
