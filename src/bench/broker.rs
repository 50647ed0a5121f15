//! A Kafka broker that keeps up: librdkafka's mock cluster, which serves fetches from memory,
//! hosted by a process of its own (`weir bench-broker`) so that it does not share the bench's
//! or weir's threads. It measures weir's Kafka path where tansu's figure measures tansu's
//! SQLite storage. The mock cluster keeps at most 5 MB of record batches per partition, so the
//! bench produces compressed batches over many partitions.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::mocking::MockCluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Topics to create (the mock cluster has no CreateTopics request).
    #[arg(long, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 64)]
    pub partitions: i32,
}

/// Serves the mock cluster: prints its bootstrap address, then serves until stdin closes (the
/// bench holds it open, so the broker goes when the bench does, however it ends).
pub fn serve(args: BrokerArgs) -> anyhow::Result<()> {
    let mock = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    for topic in &args.topics {
        mock.create_topic(topic, args.partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let mut out = std::io::stdout();
    writeln!(out, "{}", mock.bootstrap_servers())?;
    out.flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}

/// A `weir bench-broker` process, stopped when dropped.
pub struct MockBroker {
    pub address: String,
    _stdin: ChildStdin,
    _child: Child,
}

impl MockBroker {
    /// Starts a mock cluster holding `topics` of `partitions` partitions each.
    pub async fn start(topics: &[String], partitions: i32) -> anyhow::Result<MockBroker> {
        let exe = std::env::current_exe().context("locating the weir binary")?;
        let mut child = Command::new(exe)
            .args(["bench-broker", "--topics", &topics.join(",")])
            .args(["--partitions", &partitions.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting weir bench-broker")?;
        let stdin = child.stdin.take().context("the mock broker's stdin")?;
        let stdout = child.stdout.take().context("the mock broker's stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the mock broker gave no address within 30 s")??;
        let address = line.trim().to_string();
        if address.is_empty() {
            bail!("the mock broker exited before giving its address");
        }
        Ok(MockBroker {
            address,
            _stdin: stdin,
            _child: child,
        })
    }
}
