//! weir's Kafka fetch client: a thread per partition leader fetches an executor's assigned
//! partitions ahead of its reads, up to a byte budget per partition, and queues each
//! partition's part of every answer (whole record batches, still compressed, and the aborted
//! transactions the broker names with them). The reader (`fetch_reader`) takes them from the
//! queues, decompresses them and copies out the records of its ranges.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::{Message, StrBytes, VersionRange};
use weir_common::job::kafka_client::FetchSettings;

use crate::kafka_wire::batches;
use crate::kafka_wire::connection::{self, refusal, Connection};

/// Fetch 11 at the most: 12 is the first with tagged fields, which kafka-protocol refuses
/// where a broker sends one before its version (tansu sends Fetch 16's node endpoints at 12),
/// and 13 names topics by id only. 11 has all this client reads.
const FETCH_VERSIONS: VersionRange = VersionRange { min: 4, max: 11 };

/// Bytes fetched ahead for an executor, split evenly over the partitions it reads, unless
/// the job's options set `queued.max.messages.kbytes` (per partition). A partition's share
/// may be overshot by one answer's part of it.
const PREFETCH_BYTES: usize = 64 << 20;

/// Kafka's error code for a fetch offset the log does not hold.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// How long an answer may take beyond the fetch's own wait.
const ANSWER_SLACK: Duration = Duration::from_secs(30);

/// One partition's part of a fetch answer, and where reading it stands.
pub struct Fetched {
    /// Whole record batches.
    pub records: Bytes,
    /// The aborted transactions the answer names: (first offset, producer id), by offset.
    pub aborted: Vec<(i64, i64)>,
    /// How many of `aborted` have been reached, and the producers whose transaction is
    /// being aborted there: reading may stop in the middle and go on later.
    pub reached: usize,
    pub aborting: HashSet<i64>,
}

/// Why fetching stopped.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The connection broke or leadership moved: fetching again, after a fresh look at the
    /// leaders, may work.
    Retry(String),
    /// The broker refused for good (an offset out of range, no authorization, a corrupt batch).
    Fatal(String),
}

#[derive(Default)]
struct Partition {
    queued: VecDeque<Fetched>,
    bytes: usize,
}

#[derive(Default)]
struct Queues {
    partitions: HashMap<i32, Partition>,
    failure: Option<Failure>,
    stopped: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Signalled when an answer was queued or fetching failed.
    arrived: Condvar,
    /// Signalled when a read took from a queue, or on stop.
    room: Condvar,
    /// Bytes a partition may have queued before it is fetched no further.
    budget: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, failure: Failure) {
        let mut queues = self.lock();
        if queues.failure.is_none() && !queues.stopped {
            queues.failure = Some(failure);
        }
        self.arrived.notify_all();
    }
}

/// The fetch threads of one assignment; dropping it stops them.
pub struct Fetcher {
    shared: Arc<Shared>,
    /// Each thread's socket, shut down to end a fetch it waits on.
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Fetcher {
    /// Starts fetching `topic`'s partitions from `positions` (partition, first offset).
    pub fn start(
        settings: &FetchSettings,
        bootstrap: &str,
        topic: &str,
        positions: &[(i32, i64)],
    ) -> anyhow::Result<Self> {
        let budget = match settings.queued_kbytes {
            Some(kbytes) => kbytes as usize * 1024,
            None => PREFETCH_BYTES / positions.len().max(1),
        };
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                partitions: positions
                    .iter()
                    .map(|(p, _)| (*p, Partition::default()))
                    .collect(),
                ..Queues::default()
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
            budget: budget.max(1),
        });
        let mut fetcher = Fetcher {
            shared,
            sockets: Vec::new(),
            threads: Vec::new(),
        };
        if positions.is_empty() {
            return Ok(fetcher);
        }
        let timeout = Duration::from_millis(settings.max_wait_ms as u64) + ANSWER_SLACK;
        let id = &settings.client_id;
        let mut bootstrap = Connection::open(connection::first_server(bootstrap)?, id, timeout)?;
        let found = connection::leaders(&mut bootstrap, topic)?;
        let unled: Vec<i32> = positions
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| p.is_negative() || *p as usize >= found.partitions)
            .collect();
        if !unled.is_empty() {
            anyhow::bail!("topic {topic} has no partition(s) {unled:?}");
        }
        let name = TopicName(StrBytes::from_string(topic.to_string()));
        for (address, partitions) in found.leaders {
            let mine: Vec<(i32, i64)> = positions
                .iter()
                .filter(|(p, _)| partitions.contains(p))
                .copied()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let connection = Connection::open(&address, id, timeout)?;
            let version = connection.version(
                ApiKey::Fetch,
                FETCH_VERSIONS.intersect(&FetchRequest::VERSIONS),
            )?;
            fetcher.sockets.push(connection.socket()?);
            let leader = Leader {
                connection,
                version,
                topic: name.clone(),
                next: mine,
                settings: settings.clone(),
                shared: fetcher.shared.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("kafka-fetch".into())
                .spawn(move || leader.run())
                .context("a thread to fetch with")?;
            fetcher.threads.push(thread);
        }
        Ok(fetcher)
    }

    /// The first answer queued for `partition`, if any.
    pub fn take(&self, partition: i32) -> Option<Fetched> {
        let mut queues = self.shared.lock();
        let queue = queues.partitions.get_mut(&partition)?;
        let fetched = queue.queued.pop_front()?;
        queue.bytes -= fetched.records.len();
        self.shared.room.notify_all();
        Some(fetched)
    }

    /// Puts back what a read left of an answer, to be read first next time.
    pub fn put_back(&self, partition: i32, fetched: Fetched) {
        let mut queues = self.shared.lock();
        if let Some(queue) = queues.partitions.get_mut(&partition) {
            queue.bytes += fetched.records.len();
            queue.queued.push_front(fetched);
        }
    }

    /// Waits up to `timeout` for an answer to be queued for one of `partitions`, unless one
    /// is already (it may have come since the caller last looked: its signal is gone); answers
    /// why fetching stopped, if it did.
    pub fn wait(
        &self,
        partitions: impl IntoIterator<Item = i32>,
        timeout: Duration,
    ) -> Option<Failure> {
        let queues = self.shared.lock();
        if let Some(failure) = &queues.failure {
            return Some(failure.clone());
        }
        let queued = |p: i32| {
            queues
                .partitions
                .get(&p)
                .is_some_and(|q| !q.queued.is_empty())
        };
        if partitions.into_iter().any(queued) {
            return None;
        }
        let (queues, _) = self
            .shared
            .arrived
            .wait_timeout(queues, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        queues.failure.clone()
    }

    /// Why fetching stopped, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.shared.lock().failure.clone()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.room.notify_all();
        for socket in &self.sockets {
            // Ends a fetch the broker holds; the thread then sees it was stopped.
            let _ = socket.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One leader's fetch thread.
struct Leader {
    connection: Connection,
    version: i16,
    topic: TopicName,
    /// Each partition and the offset its next fetch asks for.
    next: Vec<(i32, i64)>,
    settings: FetchSettings,
    shared: Arc<Shared>,
}

impl Leader {
    fn run(mut self) {
        // Partitions whose last answer held only the start of a batch larger than their share
        // of it: asked first, where a broker answers with a whole batch however large.
        let mut starved: HashSet<i32> = HashSet::new();
        loop {
            let Some(wanted) = self.wanted(&starved) else {
                return;
            };
            let answer = self.fetch(&wanted);
            if self.shared.lock().stopped {
                return;
            }
            match answer.and_then(|answer| self.queue(answer, &mut starved)) {
                Ok(()) => self.shared.arrived.notify_all(),
                Err(failure) => return self.shared.fail(failure),
            }
        }
    }

    /// The partitions with room in their queue and their offsets, starved ones first; waits
    /// for room; None once stopped.
    fn wanted(&self, starved: &HashSet<i32>) -> Option<Vec<(i32, i64)>> {
        let mut queues = self.shared.lock();
        loop {
            if queues.stopped {
                return None;
            }
            let mut wanted: Vec<(i32, i64)> = self
                .next
                .iter()
                .filter(|(p, _)| {
                    queues
                        .partitions
                        .get(p)
                        .is_some_and(|q| q.bytes < self.shared.budget)
                })
                .copied()
                .collect();
            if !wanted.is_empty() {
                wanted.sort_by_key(|(p, _)| !starved.contains(p));
                return Some(wanted);
            }
            queues = self
                .shared
                .room
                .wait(queues)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn fetch(&mut self, wanted: &[(i32, i64)]) -> Result<FetchResponse, Failure> {
        let s = &self.settings;
        let partitions = wanted
            .iter()
            .map(|&(p, offset)| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(s.partition_max_bytes)
            })
            .collect();
        let request = FetchRequest::default()
            .with_max_wait_ms(s.max_wait_ms)
            .with_min_bytes(s.min_bytes)
            .with_max_bytes(s.max_bytes)
            .with_isolation_level(i8::from(s.read_committed))
            .with_topics(vec![FetchTopic::default()
                .with_topic(self.topic.clone())
                .with_partitions(partitions)]);
        let address = self.connection.address().to_string();
        let answer: FetchResponse = self
            .connection
            .call(ApiKey::Fetch, &request, self.version)
            .map_err(|e| {
                let message = format!("fetching from {address}: {e:#}");
                // A broken connection may mend; an answer that does not decode will not.
                match e.root_cause().downcast_ref::<std::io::Error>() {
                    Some(_) => Failure::Retry(message),
                    None => Failure::Fatal(message),
                }
            })?;
        if let Some(error) = refusal(answer.error_code) {
            return Err(failure(answer.error_code, format!("{address}: {error}")));
        }
        Ok(answer)
    }

    /// Queues each partition's part of `answer` and moves its next offset past it.
    fn queue(&mut self, answer: FetchResponse, starved: &mut HashSet<i32>) -> Result<(), Failure> {
        let mut parts = Vec::new();
        for topic in answer.responses {
            for data in topic.partitions {
                let p = data.partition_index;
                let Some(next) = self.next.iter_mut().find(|(q, _)| *q == p) else {
                    continue;
                };
                if let Some(error) = refusal(data.error_code) {
                    let (offset, start, end) = (next.1, data.log_start_offset, data.high_watermark);
                    let message = if data.error_code == OFFSET_OUT_OF_RANGE {
                        format!("partition {p}: offset {offset} is out of range (the broker holds {start}..{end}): the planned records are gone")
                    } else {
                        format!("partition {p} at offset {offset}: {error}")
                    };
                    return Err(failure(data.error_code, message));
                }
                let records = data.records.unwrap_or_default();
                let whole = batches::whole(&records)
                    .map_err(|e| Failure::Fatal(format!("partition {p}: {e}")))?;
                let Some(last) = whole.last_offset else {
                    if !records.is_empty() {
                        starved.insert(p);
                    }
                    continue;
                };
                starved.remove(&p);
                next.1 = next.1.max(last + 1);
                let mut aborted: Vec<(i64, i64)> = data
                    .aborted_transactions
                    .unwrap_or_default()
                    .iter()
                    .map(|a| (a.first_offset, a.producer_id.0))
                    .collect();
                aborted.sort_unstable();
                parts.push((
                    p,
                    Fetched {
                        records: records.slice(..whole.bytes),
                        aborted,
                        reached: 0,
                        aborting: HashSet::new(),
                    },
                ));
            }
        }
        let mut queues = self.shared.lock();
        for (p, fetched) in parts {
            if let Some(queue) = queues.partitions.get_mut(&p) {
                queue.bytes += fetched.records.len();
                queue.queued.push_back(fetched);
            }
        }
        Ok(())
    }
}

/// A refusal as a failure: retried when Kafka says the error is.
fn failure(code: i16, message: String) -> Failure {
    match code.err() {
        Some(error) if error.is_retriable() => Failure::Retry(message),
        _ => Failure::Fatal(message),
    }
}
