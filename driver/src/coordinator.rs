//! The epoch coordinator (DESIGN.md §3): plan, execute, decide, commit, in a loop, one epoch at
//! a time, resuming from the checkpoint log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::watch;
use tonic::transport::Channel;
use weir_common::checkpoint::{
    Assignment, CommitRecord, EpochPlan, EpochStats, ExecutorEpochStats,
};
use weir_common::job::{JobSpec, Trigger};
use weir_common::now_micros;
use weir_common::window::next_watermark;
use weir_proto::control::executor_client::ExecutorClient;
use weir_proto::control::{
    CommittedRequest, ExecuteRequest, KeyGroupRange, PartitionRange as ProtoRange, Peer, Prepared,
    ShutdownRequest,
};

use crate::assignment::assign;
use crate::checkpoint_log::CheckpointLog;
use crate::delta_commit::DeltaCommitter;
use crate::kafka_offsets::{Bounds, OffsetReader};
use crate::membership::Member;
use crate::planner::{initial_offsets, plan_ranges};
use crate::progress::Progress;

/// How long an executor may take to execute one epoch before the epoch fails.
const EXECUTE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the job stands between epochs.
#[derive(Debug, Clone)]
struct Position {
    next_epoch: u64,
    /// Next offset per partition; none before the first epoch.
    offsets: Option<BTreeMap<i32, i64>>,
    /// Watermark in force for the next epoch.
    watermark: Option<i64>,
    /// Watermark the last executed epoch ran with: a larger one means windows may close.
    last_epoch_watermark: Option<i64>,
    /// The last epoch's assignment, kept where possible when executors come and go.
    assignment: Vec<Assignment>,
}

pub struct Coordinator {
    pub job: JobSpec,
    pub log: CheckpointLog,
    pub output: DeltaCommitter,
    pub dead_letter: Option<DeltaCommitter>,
    pub offsets: Arc<OffsetReader>,
    pub members: watch::Receiver<Vec<Member>>,
    pub expected_executors: usize,
    pub stop: watch::Receiver<bool>,
    pub progress: Progress,
    clients: HashMap<String, ExecutorClient<Channel>>,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: JobSpec,
        log: CheckpointLog,
        output: DeltaCommitter,
        dead_letter: Option<DeltaCommitter>,
        offsets: OffsetReader,
        members: watch::Receiver<Vec<Member>>,
        expected_executors: usize,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            progress: Progress::new(&job),
            job,
            log,
            output,
            dead_letter,
            offsets: Arc::new(offsets),
            members,
            expected_executors,
            stop,
            clients: HashMap::new(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Reads the log: the last decision is made sure to be in the tables, and a plan without
    /// a decision is returned to be run again.
    async fn recover(&mut self) -> anyhow::Result<(Position, Option<EpochPlan>)> {
        let mut position = Position {
            next_epoch: 0,
            offsets: None,
            watermark: None,
            last_epoch_watermark: None,
            assignment: Vec::new(),
        };
        if let Some(epoch) = self.log.latest("commits").await? {
            let record = self
                .log
                .commit(epoch)
                .await?
                .with_context(|| format!("decision record of epoch {epoch} vanished"))?;
            // The decision may have been written just before a crash: finish its commit.
            self.commit_tables(&record).await?;
            let plan = self.log.plan(epoch).await?;
            position = Position {
                next_epoch: epoch + 1,
                offsets: Some(record.end_offsets.clone()),
                watermark: record.next_watermark_micros,
                last_epoch_watermark: plan.as_ref().and_then(|p| p.watermark_micros),
                assignment: plan.map(|p| p.assignment).unwrap_or_default(),
            };
            tracing::info!(epoch, "resuming after the last decided epoch");
        }
        let pending = match self.log.latest("offsets").await? {
            Some(e) if e >= position.next_epoch => {
                let plan =
                    self.log.plan(position.next_epoch).await?.with_context(|| {
                        format!("plan of epoch {} is missing", position.next_epoch)
                    })?;
                tracing::info!(
                    epoch = plan.epoch,
                    "re-running a planned epoch without a decision"
                );
                Some(plan)
            }
            _ => None,
        };
        Ok((position, pending))
    }

    async fn bounds(&self) -> anyhow::Result<BTreeMap<i32, Bounds>> {
        let reader = self.offsets.clone();
        Ok(tokio::task::spawn_blocking(move || reader.bounds()).await??)
    }

    async fn wait_for_executors(&mut self) -> anyhow::Result<Vec<Member>> {
        let n = self.expected_executors;
        let mut stop = self.stop.clone();
        tokio::select! {
            r = self.members.wait_for(|m| m.len() >= n) => Ok(r.context("membership stopped")?.clone()),
            _ = stop.wait_for(|s| *s) => bail!("stopped while waiting for executors"),
        }
    }

    /// Plans the next epoch, or returns `None` when there is nothing to do.
    async fn plan_next(
        &mut self,
        position: &mut Position,
        target: Option<&BTreeMap<i32, i64>>,
        members: &[Member],
    ) -> anyhow::Result<Option<EpochPlan>> {
        let bounds = self.bounds().await?;
        let kafka = &self.job.kafka;
        let start = match &position.offsets {
            Some(o) => o.clone(),
            None => initial_offsets(&kafka.starting_offsets, &bounds),
        };
        let limit = target.cloned().unwrap_or_default();
        let (ranges, losses) = plan_ranges(&start, &bounds, &limit, kafka.max_offsets_per_trigger);
        for loss in &losses {
            if kafka.fail_on_data_loss {
                bail!(
                    "offsets {}..{} of partition {} of {} are no longer retained (fail_on_data_loss is true)",
                    loss.from, loss.to, loss.partition, kafka.topic
                );
            }
            tracing::warn!(
                partition = loss.partition,
                lost = loss.to - loss.from,
                "offsets {}..{} are no longer retained; skipping them (fail_on_data_loss is false)",
                loss.from,
                loss.to
            );
        }
        let has_data = ranges.iter().any(|r| r.end > r.start);
        let watermark_moved = position.watermark != position.last_epoch_watermark;
        if !has_data && !watermark_moved {
            position.offsets = Some(start);
            return Ok(None);
        }
        let partitions: Vec<i32> = ranges.iter().map(|r| r.partition).collect();
        let executors: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let assignment = assign(
            &partitions,
            &executors,
            self.job.key_groups,
            &position.assignment,
        );
        if assignment.is_empty() {
            bail!("no executor registered");
        }
        let plan = EpochPlan {
            epoch: position.next_epoch,
            topic: kafka.topic.clone(),
            assignment,
            ranges,
            watermark_micros: position.watermark,
            planned_at_micros: now_micros(),
        };
        Ok(Some(plan))
    }

    async fn client(&mut self, member: &Member) -> anyhow::Result<ExecutorClient<Channel>> {
        if let Some(c) = self.clients.get(&member.id) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(member.address.clone())?
            .connect_timeout(Duration::from_secs(10))
            .timeout(EXECUTE_TIMEOUT)
            .connect()
            .await
            .with_context(|| {
                format!("connecting to executor {} at {}", member.id, member.address)
            })?;
        let client = ExecutorClient::new(channel);
        self.clients.insert(member.id.clone(), client.clone());
        Ok(client)
    }

    /// Runs the plan on its executors and collects their `Prepared` answers.
    async fn execute(
        &mut self,
        plan: &EpochPlan,
        members: &[Member],
    ) -> anyhow::Result<Vec<Prepared>> {
        let mut calls = Vec::new();
        let mut targets = Vec::with_capacity(plan.assignment.len());
        let mut peers = Vec::with_capacity(plan.assignment.len());
        for a in &plan.assignment {
            let member = members
                .iter()
                .find(|m| m.id == a.executor_id)
                .with_context(|| {
                    format!("executor {} of the plan is not registered", a.executor_id)
                })?;
            peers.push(Peer {
                executor_id: a.executor_id.clone(),
                address: member.address.clone(),
                key_groups: vec![KeyGroupRange {
                    start: a.key_groups.0,
                    end: a.key_groups.1,
                }],
            });
            targets.push((a, member));
        }
        for (a, member) in targets {
            let mut client = self.client(member).await?;
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
            };
            let id = a.executor_id.clone();
            calls.push(async move {
                client
                    .execute(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| anyhow::anyhow!("executor {id}: {}", s.message()))
            });
        }
        futures::future::try_join_all(calls).await
    }

    async fn commit_tables(&mut self, record: &CommitRecord) -> anyhow::Result<Option<u64>> {
        let version = self
            .output
            .commit(record.epoch, &record.output_adds)
            .await?;
        if let Some(dl) = self.dead_letter.as_mut() {
            dl.commit(record.epoch, &record.dead_letter_adds).await?;
        }
        Ok(version)
    }

    /// Runs epochs until stopped (or, with `available-now`, until the input at start is done).
    pub async fn run(mut self) -> anyhow::Result<()> {
        let (mut position, mut pending) = self.recover().await?;
        let members = self.wait_for_executors().await?;
        check_state_owners(&position.assignment, &members, self.job.key_groups)?;
        let target = match self.job.trigger {
            Trigger::AvailableNow => Some(
                self.bounds()
                    .await?
                    .into_iter()
                    .map(|(p, b)| (p, b.latest))
                    .collect::<BTreeMap<_, _>>(),
            ),
            Trigger::Interval(_) => None,
        };
        let interval = match self.job.trigger {
            Trigger::Interval(d) => d,
            Trigger::AvailableNow => Duration::ZERO,
        };
        let mut next_trigger = Instant::now();
        while !self.stopping() {
            let plan = match pending.take() {
                Some(p) => p,
                None => {
                    let wait = next_trigger.saturating_duration_since(Instant::now());
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    next_trigger = Instant::now() + interval;
                    match self
                        .plan_next(&mut position, target.as_ref(), &members)
                        .await?
                    {
                        Some(p) => {
                            self.log.write_plan(&p).await?;
                            p
                        }
                        None if target.is_some() => break,
                        None => continue,
                    }
                }
            };
            self.run_epoch(&plan, &members, &mut position).await?;
        }
        for m in &members {
            if let Ok(mut c) = self.client(m).await {
                let _ = c.shutdown(ShutdownRequest {}).await;
            }
        }
        Ok(())
    }

    async fn run_epoch(
        &mut self,
        plan: &EpochPlan,
        members: &[Member],
        position: &mut Position,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let epoch = plan.epoch;
        let prepared = self
            .execute(plan, members)
            .await
            .with_context(|| format!("epoch {epoch} failed"))?;
        let executed = started.elapsed();
        let mut stats = EpochStats::default();
        let mut output_adds = Vec::new();
        let mut dead_letter_adds = Vec::new();
        let mut event_time_sum = 0.0;
        let mut executors = BTreeMap::new();
        for p in prepared {
            output_adds.extend(p.output_adds);
            dead_letter_adds.extend(p.dead_letter_adds);
            let s = p.stats.unwrap_or_default();
            executors.insert(
                p.executor_id.clone(),
                ExecutorEpochStats {
                    input_rows: s.input_rows,
                    windows_emitted: s.windows_emitted,
                    state_rows: s.state_rows,
                    distinct_state_entries: s.distinct_state_entries,
                    shuffle_rows_sent: s.shuffle_rows_sent,
                    shuffle_rows_received: s.shuffle_rows_received,
                    read_ms: s.read_ms,
                    aggregate_ms: s.aggregate_ms,
                    exchange_ms: s.exchange_ms,
                    emit_ms: s.emit_ms,
                },
            );
            stats.input_rows += s.input_rows;
            stats.input_bytes += s.input_bytes;
            stats.valid_rows += s.valid_rows;
            stats.late_rows += s.late_rows;
            stats.malformed_rows += s.malformed_rows;
            stats.dead_letter_rows += s.dead_letter_rows;
            stats.windows_emitted += s.windows_emitted;
            stats.state_rows += s.state_rows;
            stats.min_event_time_micros =
                min_opt(stats.min_event_time_micros, s.min_event_time_micros);
            stats.max_event_time_micros =
                max_opt(stats.max_event_time_micros, s.max_event_time_micros);
            event_time_sum += s.sum_event_time_micros;
        }
        let accepted = stats.valid_rows;
        if accepted > 0 && stats.min_event_time_micros.is_some() {
            stats.avg_event_time_micros = Some((event_time_sum / accepted as f64) as i64);
        }
        let next = next_watermark(
            plan.watermark_micros,
            stats.max_event_time_micros,
            self.job.watermark_delay_micros,
        );
        let record = CommitRecord {
            epoch,
            end_offsets: plan.ranges.iter().map(|r| (r.partition, r.end)).collect(),
            next_watermark_micros: next,
            output_adds,
            dead_letter_adds,
            stats,
            executors,
            decided_at_micros: now_micros(),
        };
        self.log.write_commit(&record).await?;
        let version = self.commit_tables(&record).await?;
        for a in &plan.assignment {
            if let Some(m) = members.iter().find(|m| m.id == a.executor_id) {
                let mut c = self.client(m).await?;
                if let Err(e) = c.committed(CommittedRequest { epoch }).await {
                    tracing::warn!(epoch, executor = %m.id, "could not tell the executor of the commit: {}", e.message());
                }
            }
        }
        self.progress
            .report(plan, &record, version, executed, started.elapsed());
        *position = Position {
            next_epoch: epoch + 1,
            offsets: Some(record.end_offsets.clone()),
            watermark: next,
            last_epoch_watermark: plan.watermark_micros,
            assignment: plan.assignment.clone(),
        };
        Ok(())
    }
}

/// State lives in each executor's local store, so the executors that held key groups in the
/// last epoch must hold the same ones now. Moving key groups needs their state moved with them.
fn check_state_owners(
    previous: &[Assignment],
    members: &[Member],
    key_groups: u32,
) -> anyhow::Result<()> {
    if previous.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let now = assign(&[], &ids, key_groups, previous);
    let owners = |a: &[Assignment]| -> Vec<(String, (u32, u32))> {
        let mut v: Vec<_> = a
            .iter()
            .map(|x| (x.executor_id.clone(), x.key_groups))
            .collect();
        v.sort();
        v
    };
    if owners(previous) != owners(&now) {
        let was: Vec<String> = previous.iter().map(|a| a.executor_id.clone()).collect();
        bail!(
            "the checkpoint's state is held by executors {was:?}, but {ids:?} joined; \
             restart the job with the same executors (ids and count): this version of weir \
             does not move state between executors"
        );
    }
    Ok(())
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Vec<Member> {
        let now = tokio::time::Instant::now();
        ids.iter()
            .map(|id| Member {
                id: id.to_string(),
                address: format!("http://{id}"),
                registered_at: now,
                last_heartbeat: now,
            })
            .collect()
    }

    #[test]
    fn a_restart_must_keep_the_executors_that_hold_the_state() {
        let ids: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let previous = assign(&[0, 1, 2, 3], &ids, 256, &[]);
        // A fresh job, or the same executors again (in any order): fine.
        assert!(check_state_owners(&[], &members(&["x", "y", "z"]), 256).is_ok());
        assert!(check_state_owners(&previous, &members(&["b", "a"]), 256).is_ok());
        // Another count or other ids would give key groups to executors without their state.
        for other in [&["a", "b", "c"][..], &["a"], &["a", "c"]] {
            let err = check_state_owners(&previous, &members(other), 256).unwrap_err();
            assert!(err.to_string().contains("same executors"), "{err}");
        }
    }
}
