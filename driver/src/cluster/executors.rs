//! Calls from the driver to its executors: run an epoch on all of them and notice the first
//! failure (an error answer, a broken connection, or an executor leaving the membership), tell
//! them a run was abandoned, that an epoch committed, or to shut down.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use weir_common::checkpoint::{Assignment, EpochPlan, InputFile};
use weir_common::testing::fault;
use weir_proto::cluster_auth::Sign;
use weir_proto::control::executor_client::ExecutorClient;
use weir_proto::control::{
    AbortRequest, CommittedRequest, ExecuteRequest, InputFile as ProtoFile, KeyGroupRange,
    PartitionRange as ProtoRange, Peer, Prepared, ShutdownRequest,
};

use crate::cluster::membership::Member;

/// How long an executor may take to execute one epoch before the run fails.
pub const EXECUTE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a notification (abort, committed, shutdown) may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a run of an epoch failed, and which executor it points at.
#[derive(Debug)]
pub struct RunFailure {
    /// The executor whose failure ended the run, when one did.
    pub executor: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.executor {
            Some(e) => write!(f, "executor {e}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// The first of `ran_on` that is no longer in the membership at the same address (it left, or
/// it restarted and registered again).
fn first_lost(ran_on: &[Member], now: &[Member]) -> Option<String> {
    ran_on
        .iter()
        .find(|r| !now.iter().any(|m| m.id == r.id && m.address == r.address))
        .map(|r| r.id.clone())
}

/// What executors may read ahead of the next plan: the files the epoch after a run would
/// read, and how its plan would split them (each executor is told its share); for a Kafka
/// source, whose next ranges end where the next plan finds the partitions' ends, whether
/// reading ahead what is fetched meanwhile fills a wait.
#[derive(Debug, Default)]
pub struct ReadAhead {
    pub files: Vec<InputFile>,
    /// By the indexes of `files`.
    pub assignment: Vec<Assignment>,
    /// Whether executors may read a Kafka source's records ahead (`read_ahead_records`).
    pub records: bool,
}

impl ReadAhead {
    fn files_of(&self, executor_id: &str) -> Vec<ProtoFile> {
        let Some(a) = self
            .assignment
            .iter()
            .find(|a| a.executor_id == executor_id)
        else {
            return Vec::new();
        };
        self.files
            .iter()
            .enumerate()
            .filter(|(i, _)| a.partitions.contains(&(*i as i32)))
            .map(|(_, f)| proto_file(f))
            .collect()
    }
}

fn proto_file(f: &InputFile) -> ProtoFile {
    ProtoFile {
        path: f.path.clone(),
        bytes: f.bytes,
    }
}

type Client = ExecutorClient<InterceptedService<Channel, Sign>>;

/// gRPC clients of the executors, by address (a restarted executor has a new one); every call
/// carries the cluster credential.
pub struct ExecutorClients {
    clients: HashMap<String, Client>,
    sign: Sign,
    /// The driver's generation, in every call: executors refuse older ones.
    generation: u64,
}

impl ExecutorClients {
    pub fn new(sign: Sign, generation: u64) -> Self {
        Self {
            clients: HashMap::new(),
            sign,
            generation,
        }
    }

    fn client(&mut self, member: &Member) -> Result<Client, String> {
        if let Some(c) = self.clients.get(&member.address) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(member.address.clone())
            .map_err(|e| format!("address {}: {e}", member.address))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXECUTE_TIMEOUT)
            .connect_lazy();
        let client = ExecutorClient::with_interceptor(channel, self.sign.clone());
        self.clients.insert(member.address.clone(), client.clone());
        Ok(client)
    }

    /// Forgets the connection to an executor that failed.
    pub fn forget(&mut self, address: &str) {
        self.clients.remove(address);
    }

    /// Runs `plan` with `assignment` as run `run` on the members, and answers every executor's
    /// `Prepared`, or the first failure. An executor of the run leaving the membership (its
    /// heartbeats stopped) fails the run too. Each executor is told what it may read ahead.
    pub async fn execute(
        &mut self,
        plan: &EpochPlan,
        assignment: &[Assignment],
        read_ahead: &ReadAhead,
        run: &str,
        members: &[Member],
        membership: &mut watch::Receiver<Vec<Member>>,
    ) -> Result<Vec<Prepared>, RunFailure> {
        let mut peers = Vec::with_capacity(assignment.len());
        let mut targets = Vec::with_capacity(assignment.len());
        for a in assignment {
            let member = members
                .iter()
                .find(|m| m.id == a.executor_id)
                .ok_or_else(|| RunFailure {
                    executor: Some(a.executor_id.clone()),
                    reason: "not registered".into(),
                })?;
            peers.push(Peer {
                executor_id: a.executor_id.clone(),
                address: member.address.clone(),
                key_groups: a
                    .key_groups
                    .ranges()
                    .iter()
                    .map(|(start, end)| KeyGroupRange {
                        start: *start,
                        end: *end,
                    })
                    .collect(),
                exchange_format: member.exchange_format,
            });
            targets.push((a, member.clone()));
        }
        let mut calls = FuturesUnordered::new();
        for (a, member) in &targets {
            let mut client = self.client(member).map_err(|reason| RunFailure {
                executor: Some(member.id.clone()),
                reason,
            })?;
            let request = ExecuteRequest {
                epoch: plan.epoch,
                watermark_micros: plan.watermark_micros,
                planned_at_micros: plan.planned_at_micros,
                ranges: plan
                    .ranges
                    .iter()
                    .filter(|r| a.partitions.contains(&r.partition))
                    .map(|r| ProtoRange {
                        topic: plan.topic.clone(),
                        partition: r.partition,
                        start_offset: r.start,
                        end_offset: r.end,
                    })
                    .collect(),
                peers: peers.clone(),
                run: run.to_string(),
                base_epoch: plan.epoch.checked_sub(1),
                // A file source's partitions are the indexes of the plan's files.
                files: plan
                    .files
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| a.partitions.contains(&(*i as i32)))
                    .map(|(_, f)| proto_file(f))
                    .collect(),
                generation: self.generation,
                read_ahead: read_ahead.files_of(&a.executor_id),
                read_ahead_records: read_ahead.records,
            };
            let id = member.id.clone();
            // Spawned, so the requests go out even while this task waits (or pauses).
            calls.push(tokio::spawn(async move {
                let answer = client.execute(request).await;
                (id, answer)
            }));
        }
        tokio::task::block_in_place(|| fault::reached("execute", plan.epoch));
        let ran_on: Vec<Member> = targets.into_iter().map(|(_, m)| m).collect();
        let mut prepared = Vec::with_capacity(ran_on.len());
        while !calls.is_empty() {
            let gone = membership.wait_for(|now| first_lost(&ran_on, now).is_some());
            tokio::select! {
                Some(done) = calls.next() => {
                    let (id, answer) = done.map_err(|e| RunFailure {
                        executor: None,
                        reason: format!("execute call task failed: {e}"),
                    })?;
                    let p = answer.map_err(|s| RunFailure {
                        executor: Some(id.clone()),
                        reason: s.message().to_string(),
                    })?.into_inner();
                    if p.run != run || p.epoch != plan.epoch || p.executor_id != id {
                        return Err(RunFailure {
                            executor: Some(id),
                            reason: format!(
                                "answered run {} of epoch {} as {}",
                                p.run, p.epoch, p.executor_id
                            ),
                        });
                    }
                    prepared.push(p);
                }
                now = gone => {
                    return Err(RunFailure {
                        executor: now.ok().and_then(|now| first_lost(&ran_on, &now)),
                        reason: "lost (no heartbeat, or it restarted)".into(),
                    });
                }
            }
        }
        Ok(prepared)
    }

    /// Tells the members a run was abandoned; an executor that cannot be told is gone anyway.
    pub async fn abort(&mut self, epoch: u64, run: &str, members: &[Member]) {
        let mut calls = Vec::new();
        for m in members {
            if let Ok(mut c) = self.client(m) {
                let mut request = tonic::Request::new(AbortRequest {
                    epoch,
                    run: run.to_string(),
                    generation: self.generation,
                });
                request.set_timeout(NOTIFY_TIMEOUT);
                calls.push(async move { c.abort(request).await });
            }
        }
        futures::future::join_all(calls).await;
    }

    /// Tells an epoch's executors that it committed.
    pub async fn committed(&mut self, epoch: u64, members: &[Member]) {
        for m in members {
            if let Ok(mut c) = self.client(m) {
                let mut request = tonic::Request::new(CommittedRequest {
                    epoch,
                    generation: self.generation,
                });
                request.set_timeout(NOTIFY_TIMEOUT);
                if let Err(e) = c.committed(request).await {
                    tracing::warn!(epoch, executor = %m.id, "could not tell the executor of the commit: {}", e.message());
                }
            }
        }
    }

    /// Asks the members to drain and exit.
    pub async fn shutdown(&mut self, members: &[Member]) {
        for m in members {
            if let Ok(mut c) = self.client(m) {
                let mut request = tonic::Request::new(ShutdownRequest {
                    generation: self.generation,
                });
                request.set_timeout(NOTIFY_TIMEOUT);
                let _ = c.shutdown(request).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_common::query::keygroup::KeyGroups;

    use super::*;

    /// Each executor is told the files at the indexes the next epoch's assignment gives it.
    #[test]
    fn each_executor_reads_ahead_its_share() {
        let files: Vec<InputFile> = (0..3)
            .map(|i| InputFile {
                path: format!("{i}.jsonl"),
                bytes: 10 + i,
            })
            .collect();
        let share = |id: &str, partitions: Vec<i32>| Assignment {
            executor_id: id.into(),
            partitions,
            key_groups: KeyGroups::from_ranges([(0, 1)]),
        };
        let ahead = ReadAhead {
            files,
            assignment: vec![share("a", vec![0, 2]), share("b", vec![1])],
            records: false,
        };
        let paths = |id| {
            ahead
                .files_of(id)
                .into_iter()
                .map(|f| (f.path, f.bytes))
                .collect::<Vec<_>>()
        };
        assert_eq!(paths("a"), [("0.jsonl".into(), 10), ("2.jsonl".into(), 12)]);
        assert_eq!(paths("b"), [("1.jsonl".to_string(), 11)]);
        assert!(paths("c").is_empty());
        assert!(ReadAhead::default().files_of("a").is_empty());
    }
}
