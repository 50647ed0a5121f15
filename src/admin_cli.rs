//! `weir admin`: the driver's admin API from a terminal, as tables or (`--json`) as JSON with
//! Spark's field names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Request;
use weir_proto::admin::admin_client::AdminClient;
use weir_proto::admin::{
    ControlRequest, ExecutorInfo, ListExecutorsRequest, ListQueriesRequest, ProgressRequest,
    QueryProgress, QueryStatus, ScaleRequest,
};
use weir_proto::admin_json::{executor_state_name, query_state_name};

use weir_driver::ops::progress::size;

use crate::table::render;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The driver's admin address (https:// when it serves TLS).
    #[arg(
        long,
        env = "WEIR_ADMIN",
        default_value = "http://127.0.0.1:7410",
        global = true
    )]
    admin: String,
    /// File holding the bearer token for pause, resume, stop, checkpoint, compact and scale.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// admin address (default: the system's).
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of a call (`checkpoint` waits for its epoch up to --wait).
    #[arg(long, default_value = "30s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// How long `checkpoint` waits for its epoch to commit, and `compact` for its passes.
    #[arg(long, default_value = "10m", value_parser = parse_duration, global = true)]
    wait: Duration,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// The query and its state.
    Status,
    /// The last committed epoch's progress.
    Progress,
    /// The progress of recent epochs, oldest first.
    RecentProgress {
        /// Show at most this many (the driver keeps 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Print each epoch's progress as it commits, until interrupted.
    Watch,
    /// Executors, their assignment, heartbeats and last epoch.
    Executors,
    /// Finish the epoch in progress and start no new one until `resume`.
    Pause,
    Resume,
    /// Stop the query gracefully (as SIGTERM): finish the epoch in progress, then exit.
    Stop,
    /// Run an epoch now and wait until it is committed.
    Checkpoint,
    /// Compact the query's tables now (small files merged, then vacuum where the sink asks
    /// for it) and wait until done; epochs go on meanwhile.
    Compact,
    /// Set the executor target (within the job's `executors: {min, max}`); the next epoch runs
    /// on that many executors, moving only the key groups the new balance requires.
    Scale {
        /// The number of executors.
        executors: u32,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weir_common::job::duration::parse_duration(s)
}

/// The admin token from `file` (a mounted Secret), else `WEIR_ADMIN_TOKEN`, without the
/// surrounding whitespace; none when empty. The driver and the client read it alike.
pub fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token file {}", path.display()))?,
        ),
        None => std::env::var("WEIR_ADMIN_TOKEN").ok(),
    };
    Ok(token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

async fn connect(args: &AdminArgs) -> anyhow::Result<AdminClient<Channel>> {
    connect_to(
        &args.admin,
        args.ca_cert.as_deref(),
        Duration::from_secs(10),
    )
    .await
}

/// A connection to the driver's admin service at `admin` (TLS for `https://`, trusting
/// `ca_cert` or the system's roots), given `timeout` to connect.
pub async fn connect_to(
    admin: &str,
    ca_cert: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<AdminClient<Channel>> {
    let mut endpoint = Endpoint::from_shared(admin.to_string())
        .with_context(|| format!("`{admin}` is not an admin address"))?
        .connect_timeout(timeout);
    if admin.starts_with("https://") {
        let tls = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the CA certificate {}", path.display()))?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the driver's admin service at {admin}"))?;
    Ok(AdminClient::new(channel))
}

/// A request with the deadline and the token, when there is one (a driver may need it for
/// reads too).
pub fn request<T>(
    message: T,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    if let Some(t) = token {
        let value: MetadataValue<_> = format!("Bearer {t}")
            .parse()
            .context("the token holds characters a header cannot")?;
        r.metadata_mut().insert("authorization", value);
    }
    Ok(r)
}

/// A failed call as a user reads it.
fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

fn print_json<T: serde::Serialize>(value: &T, pretty: bool) -> anyhow::Result<()> {
    let text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    println!("{text}");
    Ok(())
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let token = read_token(args.token_file.as_deref())?;
    let t = args.timeout;
    let control = |timeout| request(ControlRequest::default(), token.as_deref(), timeout);
    match &args.command {
        AdminCommand::Status => {
            let r = client
                .list_queries(request(ListQueriesRequest {}, token.as_deref(), t)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&r.queries, true);
            }
            println!("{}", status_table(&r.queries));
            for q in &r.queries {
                println!("{}", target_line(q));
            }
        }
        AdminCommand::Progress => {
            let p = client
                .get_progress(request(ProgressRequest::default(), token.as_deref(), t)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&p, true);
            }
            println!("{}", progress_text(&p));
        }
        AdminCommand::RecentProgress { limit } => {
            let req = ProgressRequest {
                limit: limit.unwrap_or(0),
                ..Default::default()
            };
            let r = client
                .recent_progress(request(req, token.as_deref(), t)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&r.progress, true);
            }
            let rows: Vec<Vec<String>> = r.progress.iter().map(progress_row).collect();
            println!("{}", render(&PROGRESS_HEADERS, &rows));
        }
        AdminCommand::Watch => {
            let r = request(
                ProgressRequest::default(),
                token.as_deref(),
                Duration::from_secs(365 * 24 * 3600),
            )?;
            let mut stream = client
                .watch_progress(r)
                .await
                .map_err(call_error)?
                .into_inner();
            if !args.json {
                println!("{}", render(&PROGRESS_HEADERS, &[]));
            }
            while let Some(item) = stream.next().await {
                let p = item.map_err(call_error)?;
                if args.json {
                    print_json(&p, false)?;
                } else {
                    let table = render(&PROGRESS_HEADERS, &[progress_row(&p)]);
                    println!("{}", table.lines().nth(1).unwrap_or_default());
                }
            }
        }
        AdminCommand::Executors => {
            let r = client
                .list_executors(request(ListExecutorsRequest {}, token.as_deref(), t)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&r.executors, true);
            }
            println!("{}", executors_table(&r.executors));
        }
        AdminCommand::Pause | AdminCommand::Resume | AdminCommand::Stop => {
            let req = control(t)?;
            let status = match args.command {
                AdminCommand::Pause => client.pause(req).await,
                AdminCommand::Resume => client.resume(req).await,
                _ => client.stop(req).await,
            }
            .map_err(call_error)?
            .into_inner();
            if args.json {
                return print_json(&status, true);
            }
            println!("{}: {}", query_state_name(status.state), status.message);
        }
        AdminCommand::Scale { executors } => {
            let req = ScaleRequest {
                query: String::new(),
                executors: *executors,
            };
            let status = client
                .scale(request(req, token.as_deref(), t)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&status, true);
            }
            println!(
                "target {} executors ({} registered, {} running the last epoch); the next epoch runs on the new count",
                status.executors_target, status.executors_registered, status.executors_active
            );
        }
        AdminCommand::Compact => {
            let r = client
                .compact(control(args.wait)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&r.tables, true);
            }
            for t in &r.tables {
                println!(
                    "{} ({}): {} files -> {} ({} small files merged into {} in {} partitions; {} vacuumed)",
                    t.table,
                    t.url,
                    t.files_before,
                    t.files_after,
                    t.files_removed,
                    t.files_added,
                    t.partitions,
                    t.files_vacuumed
                );
            }
        }
        AdminCommand::Checkpoint => {
            let r = client
                .checkpoint_now(control(args.wait)?)
                .await
                .map_err(call_error)?
                .into_inner();
            if args.json {
                return print_json(&r, true);
            }
            match (r.ran, r.epoch) {
                (true, Some(epoch)) => println!(
                    "epoch {epoch} committed{}",
                    r.delta_version
                        .map(|v| format!(" (delta version {v})"))
                        .unwrap_or_default()
                ),
                (false, Some(epoch)) => println!(
                    "nothing new to read and no window to close; epoch {epoch} is the last committed"
                ),
                (_, None) => bail!("no epoch has been committed yet"),
            }
        }
    }
    Ok(())
}

/// Who set a query's executor target and why, and what the autoscaler asks for now.
fn target_line(q: &QueryStatus) -> String {
    let mut line = format!(
        "{}: target {} executors since {} ({})",
        q.name, q.executors_target, q.target_set_at, q.target_reason
    );
    if let Some(a) = &q.autoscale {
        line.push_str(&format!(
            "; autoscale {}..={} with a target lag of {} ms",
            a.min, a.max, a.target_lag_ms
        ));
        if a.recommended > 0 {
            line.push_str(&format!(
                ", recommending {} at {}",
                a.recommended, a.recommended_at
            ));
        }
    }
    line
}

fn status_table(queries: &[QueryStatus]) -> String {
    let rows: Vec<Vec<String>> = queries
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                query_state_name(q.state).to_string(),
                q.last_epoch.map_or("-".into(), |e| e.to_string()),
                format!(
                    "{}/{} ({} registered)",
                    q.executors_active, q.executors_target, q.executors_registered
                ),
                q.trigger.clone(),
                q.id.clone(),
                q.message.clone(),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "STATE",
            "EPOCH",
            "EXECUTORS",
            "TRIGGER",
            "ID",
            "MESSAGE",
        ],
        &rows,
    )
}

const PROGRESS_HEADERS: [&str; 10] = [
    "EPOCH",
    "TIMESTAMP",
    "INPUT",
    "IN/S",
    "PROCESSED/S",
    "TOTAL_MS",
    "WATERMARK",
    "LAG",
    "OUTPUT",
    "VERSION",
];

fn progress_row(p: &QueryProgress) -> Vec<String> {
    vec![
        p.batch_id.to_string(),
        p.timestamp.clone(),
        p.num_input_rows.to_string(),
        format!("{:.0}", p.input_rows_per_second),
        format!("{:.0}", p.processed_rows_per_second),
        p.duration_ms.as_ref().map_or(0, |d| d.total).to_string(),
        p.event_time
            .as_ref()
            .and_then(|e| e.watermark.clone())
            .unwrap_or_else(|| "-".into()),
        p.sources.iter().map(|s| s.lag).sum::<i64>().to_string(),
        p.sink.as_ref().map_or(0, |s| s.num_output_rows).to_string(),
        p.sink
            .as_ref()
            .and_then(|s| s.delta_version)
            .map_or("-".into(), |v| v.to_string()),
    ]
}

fn progress_text(p: &QueryProgress) -> String {
    let d = p.duration_ms.unwrap_or_default();
    let t = p.event_time.clone().unwrap_or_default();
    let s = p.state.unwrap_or_default();
    let sink = p.sink.clone().unwrap_or_default();
    let time = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "epoch {} of {} at {} ({} run{})\n\
         input       {} rows, {:.0} rows/s arriving, {:.0} rows/s processed\n\
         durations   plan {} ms, restore {}, execute {}, shuffle {}, prepare {} (checkpoint {}), commit {}, total {} ms\n\
         event time  min {}, max {}, avg {}, watermark {}\n\
         state       {} rows ({} updated, {} removed, {} dropped by watermark), memory {}, disk {}, checkpoint {} (+{})\n\
         sink        {}: {} rows, delta version {}\n\
         bad input   {} malformed, {} late, {} to the dead letter, {} offsets lost\n",
        p.batch_id,
        p.name,
        p.timestamp,
        p.runs,
        if p.runs == 1 { "" } else { "s" },
        p.num_input_rows,
        p.input_rows_per_second,
        p.processed_rows_per_second,
        d.plan,
        d.restore,
        d.execute,
        d.shuffle,
        d.prepare,
        d.checkpoint,
        d.commit,
        d.total,
        time(t.min),
        time(t.max),
        time(t.avg),
        time(t.watermark),
        s.num_rows_total,
        s.num_rows_updated,
        s.num_rows_removed,
        s.num_rows_dropped_by_watermark,
        size(s.memory_used_bytes),
        size(s.disk_bytes),
        size(s.checkpoint_bytes),
        size(s.checkpoint_uploaded_bytes),
        sink.description,
        sink.num_output_rows,
        sink.delta_version.map_or("-".into(), |v| v.to_string()),
        p.num_malformed_rows,
        p.num_late_rows,
        p.num_dead_letter_rows,
        p.num_lost_offsets,
    );
    for source in &p.sources {
        out.push_str(&format!(
            "source      {}: lag {}\n",
            source.description, source.lag
        ));
        let rows: Vec<Vec<String>> = source
            .partitions
            .iter()
            .map(|x| {
                vec![
                    x.partition.to_string(),
                    x.start_offset.to_string(),
                    x.end_offset.to_string(),
                    x.latest_offset.to_string(),
                    x.lag.to_string(),
                ]
            })
            .collect();
        for line in render(&["PARTITION", "START", "END", "LATEST", "LAG"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.trim_end().to_string()
}

fn executors_table(executors: &[ExecutorInfo]) -> String {
    let rows: Vec<Vec<String>> = executors
        .iter()
        .map(|e| {
            let last = e.last_epoch.clone().unwrap_or_default();
            let partitions: Vec<String> = e.partitions.iter().map(|p| p.to_string()).collect();
            vec![
                e.executor_id.clone(),
                executor_state_name(e.state).to_string(),
                if e.address.is_empty() {
                    "-".into()
                } else {
                    e.address.clone()
                },
                if partitions.is_empty() {
                    "-".into()
                } else {
                    partitions.join(",")
                },
                weir_common::query::keygroup::KeyGroups::from_ranges(
                    e.key_groups.iter().map(|r| (r.start, r.end)),
                )
                .to_string(),
                e.heartbeat_age_seconds
                    .map_or("-".into(), |s| format!("{s:.1}s ago")),
                last.input_rows.to_string(),
                last.state_rows.to_string(),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "STATE",
            "ADDRESS",
            "PARTITIONS",
            "KEY_GROUPS",
            "HEARTBEAT",
            "LAST_INPUT",
            "STATE_ROWS",
        ],
        &rows,
    )
}
