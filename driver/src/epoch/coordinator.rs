//! The epoch coordinator (docs/architecture.md, One epoch): plan, execute, decide, commit, in a
//! loop, resuming from the checkpoint log. Epochs execute one at a time; a decided epoch's Delta
//! commit runs beside the next epoch's execution and is awaited before the next decision. A run of
//! an epoch that fails (an executor errs, dies or stops heartbeating) is abandoned: its staged
//! files are deleted and the same plan runs again, as a new run, on the executors registered then;
//! they restore state from the last decision.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use weir_common::checkpoint::{Assignment, CommitRecord, EpochPlan, InputFile, Totals};
use weir_common::job::{JobSpec, Trigger};
use weir_common::now_micros;
use weir_common::testing::fault;
use weir_proto::admin::{QueryState, TableCompaction};
use weir_storage::{CheckpointLog, Fence};

use crate::cluster::assignment::{assign, moved_key_groups};
use crate::cluster::autoscale::{Autoscaler, Observation};
use crate::cluster::executors::{ExecutorClients, ReadAhead, RunFailure};
use crate::cluster::kubernetes::ReplicaFollower;
use crate::cluster::membership::{Member, MembershipMsg};
use crate::cluster::scale::{select, Scaler, Target};
use crate::epoch::controls::{CheckpointOutcome, CheckpointReply, CompactReply, ControlInbox};
use crate::epoch::decision::decide;
use crate::epoch::state_gc::StateRetention;
use crate::ops::alerts::{AlertKind, AlertSender};
use crate::ops::metrics::DriverMetrics;
use crate::ops::progress::{self, CommittedEpoch, QueryIdentity};
use crate::ops::pushgateway::Pushgateway;
use crate::ops::query_status::StatusBoard;
use crate::ops::timeline::now_ms;
use crate::output::delta_commit::DeltaCommitter;
use crate::output::table_commits::{Committing, QueryOutput, TableRole, Tables};
use crate::output::upkeep::Upkeep;
use crate::source::{InputEnd, SourcePosition, SourceReader};

/// What a trigger finds: an epoch to run, with the files after its own (those the epoch after
/// it would read), or nothing to read; with each partition's end.
enum Next {
    Plan(EpochPlan, Vec<InputFile>, BTreeMap<i32, i64>),
    Idle(BTreeMap<i32, i64>),
}

/// Runs of one epoch that may fail in a row before the job stops.
const MAX_RUNS_PER_EPOCH: u32 = 10;

/// Where the job stands between epochs.
#[derive(Debug, Clone)]
struct Position {
    next_epoch: u64,
    /// Where the decided epochs left the source.
    source: SourcePosition,
    /// Watermark in force for the next epoch.
    watermark: Option<i64>,
    /// Watermark the last executed epoch ran with: a larger one means windows may close.
    last_epoch_watermark: Option<i64>,
    /// The last epoch's assignment, kept where possible when executors come and go.
    assignment: Vec<Assignment>,
    /// Totals of the decided epochs.
    totals: Totals,
    /// When the previous epoch's trigger fired (input rate of the next).
    last_trigger_micros: Option<i64>,
}

impl Position {
    /// Where the decision `record` leaves the job; its epoch ran with `epoch_watermark` and
    /// `assignment`, triggered at `triggered_micros` (unknown after a restart).
    fn after(
        record: &CommitRecord,
        epoch_watermark: Option<i64>,
        assignment: Vec<Assignment>,
        triggered_micros: Option<i64>,
    ) -> Self {
        Position {
            next_epoch: record.epoch + 1,
            source: SourcePosition {
                offsets: Some(record.end_offsets.clone()),
                files_through: record.files_through.clone(),
            },
            watermark: record.next_watermark_micros,
            last_epoch_watermark: epoch_watermark,
            assignment,
            totals: record.totals.clone(),
            last_trigger_micros: triggered_micros,
        }
    }
}

/// What the operators see and hear: status, progress, metrics, Pushgateway, alerts.
pub struct Operations {
    pub identity: QueryIdentity,
    pub board: StatusBoard,
    pub metrics: DriverMetrics,
    pub alerts: AlertSender,
    /// An epoch running longer raises an alert (when alerts are configured).
    pub epoch_budget: Option<Duration>,
    pub pushgateway: Option<Pushgateway>,
}

/// How an epoch came to run: when its trigger fired, what planning took, the partitions' ends.
struct Triggered {
    at_micros: i64,
    started: Instant,
    plan_ms: u64,
    latest: BTreeMap<i32, i64>,
}

/// A decided epoch whose commit to the tables runs beside the next epoch, with what telling
/// the executors and the operators about it takes.
struct PendingCommit {
    committing: Committing,
    plan: EpochPlan,
    record: Arc<CommitRecord>,
    ran_on: Vec<Member>,
    triggered: Triggered,
    previous_trigger_micros: Option<i64>,
    /// Deciding and writing the decision record.
    decide_ms: u64,
    runs: u32,
    first_failure: Option<Instant>,
    /// The checkpoint requests this epoch answers.
    answers: Vec<CheckpointReply>,
}

pub struct Coordinator {
    pub job: JobSpec,
    pub log: CheckpointLog,
    /// The tables, while no commit has them.
    tables: Option<Tables>,
    /// The last decision's commit, while it runs.
    committing: Option<PendingCommit>,
    pub source: SourceReader,
    pub members: watch::Receiver<Vec<Member>>,
    pub membership: mpsc::Sender<MembershipMsg>,
    /// The executor count aimed for.
    scaler: Scaler,
    /// Moves the target with the input, when the job autoscales.
    autoscaler: Option<Autoscaler>,
    /// Under external scaling, the executor count the autoscaler last decided on (published
    /// as `weir_desired_executors`).
    published: Option<usize>,
    /// Keeps the executors' Deployment at the target, when the driver manages one.
    replicas: Option<ReplicaFollower>,
    /// The target last written to the checkpoint (or read from it, or given at start).
    persisted_target: Target,
    /// Since when fewer executors than the target are there (they run with fewer after the
    /// job's `executors.wait`).
    short_since: Option<Instant>,
    /// Whether this driver has run epochs yet: a restarted one waits for its whole target like
    /// a new one, rather than going on on the executors of the checkpoint's last assignment
    /// (those did not run anything for it).
    running: bool,
    /// Registered executors beyond the target, retired once an epoch without them is decided.
    retiring: Vec<Member>,
    controls: ControlInbox,
    pub ops: Operations,
    clients: ExecutorClients,
    retention: StateRetention,
    /// Checkpoint requests the next epoch answers.
    waiting: Vec<CheckpointReply>,
    /// Set when a run was abandoned or the driver restarted: files staged for runs that will
    /// never commit may still be appearing, so the tables are swept after the next commit.
    sweep_after_commit: bool,
}

/// Aborts a task when dropped (the epoch budget's timer ends with its epoch).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The upkeep the job's sinks ask for, per table.
fn table_upkeep(job: &JobSpec, fence: Option<&Fence>) -> Vec<(TableRole, Upkeep)> {
    // In a job of several queries each output table is named after its query.
    let outputs = job.queries.iter().enumerate().map(|(i, q)| {
        let label = match job.queries.len() {
            1 => "output".to_string(),
            _ => format!("output:{}", q.name),
        };
        (TableRole::Output(i), label, &q.output)
    });
    let tables = outputs
        .chain(
            job.dead_letter
                .iter()
                .map(|d| (TableRole::DeadLetter, "dead_letter".to_string(), d)),
        )
        .chain(
            job.late_rows
                .iter()
                .map(|l| (TableRole::LateRows, "late_rows".to_string(), l)),
        );
    tables
        .map(|(role, label, sink)| {
            (
                role,
                Upkeep::new(label, &sink.url, sink.upkeep, fence.cloned()),
            )
        })
        .collect()
}

/// Exponential backoff after the n-th failure in a row: 0.25 s, 0.5 s, 1 s, ... up to 10 s.
/// (Waiting for a lost executor to come back is separate: runs wait for the executors.)
pub(crate) fn backoff(failures: u32) -> Duration {
    let steps = failures.saturating_sub(1).min(6);
    Duration::from_millis(250u64 << steps).min(Duration::from_secs(10))
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: JobSpec,
        log: CheckpointLog,
        outputs: Vec<QueryOutput>,
        dead_letter: Option<DeltaCommitter>,
        late_rows: Option<DeltaCommitter>,
        source: SourceReader,
        members: watch::Receiver<Vec<Member>>,
        membership: mpsc::Sender<MembershipMsg>,
        scaler: Scaler,
        clients: ExecutorClients,
        controls: ControlInbox,
        ops: Operations,
    ) -> Self {
        let fence = log.fence().cloned();
        let upkeep = table_upkeep(&job, fence.as_ref());
        Self {
            controls,
            ops,
            waiting: Vec::new(),
            sweep_after_commit: false,
            retention: StateRetention::new(job.checkpoint_retention),
            job,
            log,
            tables: Some(Tables {
                upkeep,
                outputs,
                dead_letter,
                late_rows,
                fence,
            }),
            committing: None,
            source,
            members,
            membership,
            persisted_target: scaler.current(),
            autoscaler: scaler.autoscale.map(Autoscaler::new),
            published: None,
            replicas: None,
            scaler,
            short_since: None,
            running: false,
            retiring: Vec::new(),
            clients,
        }
    }

    /// Keeps the executors' Deployment at the target from now on.
    pub fn follow_deployment(mut self, replicas: ReplicaFollower) -> Self {
        self.replicas = Some(replicas);
        self
    }

    fn stopping(&self) -> bool {
        *self.controls.stop.borrow()
    }

    /// The operators' side of the coordinator, once it is done.
    pub fn into_ops(self) -> Operations {
        self.ops
    }

    /// Reads the log: the last decision is made sure to be in the tables, files of runs that
    /// never got a decision are deleted, and a plan without a decision is returned to run again.
    async fn recover(&mut self) -> anyhow::Result<(Position, Option<EpochPlan>)> {
        let mut position = Position {
            next_epoch: 0,
            source: SourcePosition::default(),
            watermark: None,
            last_epoch_watermark: None,
            assignment: Vec::new(),
            totals: Totals::default(),
            last_trigger_micros: None,
        };
        let interrupted = self.log.remove_interrupted_writes().await?;
        if interrupted > 0 {
            tracing::info!(interrupted, "deleted what writes cut short by a crash left");
        }
        if let Some(record) = self.log.scale().await? {
            self.scaler.resume(&record);
            self.persisted_target = self.scaler.current();
        }
        if let Some(epoch) = self.log.latest("commits").await? {
            let record = self
                .log
                .commit(epoch)
                .await?
                .with_context(|| format!("decision record of epoch {epoch} vanished"))?;
            // The decision may have been written just before a crash: finish its commit.
            let metrics = self.ops.metrics.clone();
            self.tables()?.commit(&record, &metrics).await?;
            let plan = self.log.plan(epoch).await?;
            let assignment = if record.assignment.is_empty() {
                plan.as_ref()
                    .map(|p| p.assignment.clone())
                    .unwrap_or_default()
            } else {
                record.assignment.clone()
            };
            position = Position::after(
                &record,
                plan.as_ref().and_then(|p| p.watermark_micros),
                assignment,
                None,
            );
            self.retention.load(&self.log, epoch).await?;
            let pruned = self.log.prune_before(self.first_kept(epoch)).await?;
            if pruned > 0 {
                tracing::info!(pruned, "deleted the plans and decisions of old epochs");
            }
            self.ops.board.recovered(
                Some(epoch),
                &position.assignment,
                record.next_watermark_micros,
            );
            tracing::info!(epoch, "resuming after the last decided epoch");
            self.ops.alerts.raise(
                AlertKind::Recovered,
                &format!("the driver started and resumed from the checkpoint after epoch {epoch}"),
            );
        }
        // Every decision is in the tables now: what else is there was staged by lost runs.
        // Executors may still be finishing a run of the previous driver, so sweep again once
        // they have answered this driver.
        self.remove_staged_files().await?;
        self.sweep_after_commit = true;
        self.retention.collect(&self.log).await?;
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

    /// The first epoch whose plan and decision the log keeps once `epoch` is decided: those of
    /// the decisions whose state snapshots are retained.
    fn first_kept(&self, epoch: u64) -> u64 {
        (epoch + 1).saturating_sub(u64::from(self.job.checkpoint_retention.max(1)))
    }

    /// The tables; an error while a commit has them (callers finish it first).
    fn tables(&mut self) -> anyhow::Result<&mut Tables> {
        self.tables
            .as_mut()
            .context("the tables are still with the last decision's commit")
    }

    /// Deletes the files staged by runs that will never be committed, and the state uploads a
    /// crash cut short. Safe only when no run is staging and every decision is in the tables:
    /// at start-up, or between a finished commit and the next plan.
    async fn remove_staged_files(&mut self) -> anyhow::Result<()> {
        let metrics = self.ops.metrics.clone();
        self.tables()?.remove_unreferenced_files(&metrics).await?;
        self.retention.remove_interrupted_uploads(&self.log).await?;
        Ok(())
    }

    /// The executors the next epoch runs on: up to the target's worth of registered ones that
    /// are ready (an executor registers, opens its store, input and tables, then says it is
    /// ready), those of the `previous` assignment first. Short of the target, it waits for the
    /// missing ones up to the job's `executors.wait`: meanwhile, when all that ran the last
    /// epoch are still there (the target went up), epochs go on on those; else (one was lost,
    /// or this driver ran no epoch yet, even when it resumes a checkpoint) epochs wait. Once
    /// the wait is over it runs with those there, if at least `executors.min`. Registered
    /// executors beyond the target are marked for retirement. `None` when the driver is asked
    /// to stop first.
    async fn wait_for_executors(
        &mut self,
        previous: &[Assignment],
    ) -> anyhow::Result<Option<Vec<Member>>> {
        let mut stop = self.controls.stop.clone();
        let mut target = self.scaler.subscribe();
        let bounds = self.scaler.bounds;
        loop {
            let registered = self.members.borrow_and_update().clone();
            self.scaler
                .follow(registered.iter().filter(|m| !m.leaving).count());
            let goal = target.borrow_and_update().clone();
            self.persist_target(&goal).await?;
            if let Some(r) = &mut self.replicas {
                r.up_to(goal.executors);
            }
            self.let_stopping_go(&registered).await;
            let selection = select(&registered, goal.executors, previous);
            let have = selection.run_on.len();
            let chosen = if have >= goal.executors {
                self.short_since = None;
                Some(selection)
            } else {
                let waited = self.short_since.get_or_insert_with(Instant::now).elapsed();
                let ran = match self.running {
                    true => previous.len().min(goal.executors),
                    false => 0,
                };
                if waited >= bounds.wait && have >= bounds.min {
                    let message = format!(
                        "running with {have} of {} executors: no more came within {:?} \
                         (executors.wait)",
                        goal.executors, bounds.wait
                    );
                    if self.ops.board.state() == QueryState::WaitingForExecutors {
                        tracing::warn!("{message}");
                        self.ops.alerts.raise(AlertKind::ExecutorLost, &message);
                    }
                    Some(selection)
                } else if ran > 0 && have >= ran {
                    // The target went up: the last epoch's executors go on until the new
                    // ones are all there, so the key groups move once.
                    Some(select(&registered, ran, previous))
                } else {
                    None
                }
            };
            if let Some(selection) = chosen {
                self.ops.metrics.set_target(goal.executors);
                // Nobody beyond the target to retire first: the Deployment can shrink now.
                if let (Some(r), true) = (
                    &mut self.replicas,
                    have >= goal.executors && selection.retire.is_empty(),
                ) {
                    r.down_to(goal.executors, Vec::new());
                }
                // Executors waiting to join are not retired, nor are those beyond the
                // target under external scaling: whoever started them stops them.
                self.retiring = match have >= goal.executors && !self.scaler.external {
                    true => selection
                        .retire
                        .into_iter()
                        .filter(|m| !m.leaving)
                        .collect(),
                    false => Vec::new(),
                };
                self.ops
                    .board
                    .retiring(self.retiring.iter().map(|m| m.id.clone()).collect());
                self.running = true;
                return Ok(Some(selection.run_on));
            }
            // No epoch runs until they come: the last commit is finished and reported first.
            self.finish_commit().await?;
            let waited = self.short_since.map(|s| s.elapsed()).unwrap_or_default();
            let starting = match registered.iter().filter(|m| !m.ready && !m.leaving).count() {
                0 => String::new(),
                n => format!(" ({n} more starting)"),
            };
            let message = if have < bounds.min {
                format!(
                    "waiting for executors: {have} ready{starting}, the target is {} and at \
                     least {} are needed (executors.min)",
                    goal.executors, bounds.min
                )
            } else {
                format!(
                    "waiting for executors: {have} ready{starting}, the target is {}; running \
                     with {have} if no more come within {:?} (executors.wait)",
                    goal.executors, bounds.wait
                )
            };
            if self.ops.board.state() != QueryState::WaitingForExecutors {
                tracing::info!("{message}");
            }
            self.ops.board.set(QueryState::WaitingForExecutors, message);
            let deadline = (have >= bounds.min).then(|| bounds.wait.saturating_sub(waited));
            tokio::select! {
                r = self.members.changed() => r.context("membership stopped")?,
                r = target.changed() => r.context("the scaler stopped")?,
                _ = stop.wait_for(|s| *s) => return Ok(None),
                _ = tokio::time::sleep(deadline.unwrap_or(Duration::MAX)), if deadline.is_some() => {}
            }
        }
    }

    /// Writes the target to the checkpoint when it changed, so a restarted driver resumes it.
    async fn persist_target(&mut self, goal: &Target) -> anyhow::Result<()> {
        if *goal == self.persisted_target {
            return Ok(());
        }
        self.log
            .write_scale(&goal.record())
            .await
            .context("recording the executor target in the checkpoint")?;
        tracing::info!(
            executors = goal.executors,
            reason = %goal.reason,
            "the executor target changed"
        );
        self.persisted_target = goal.clone();
        Ok(())
    }

    /// Tells the executors marked for retirement that are not in `assignment` to exit: an
    /// epoch without them is decided (`decided`, the last one), so the checkpoint holds all
    /// they had.
    async fn retire(&mut self, assignment: &[Assignment], decided: u64) {
        let leaving: Vec<Member> = std::mem::take(&mut self.retiring)
            .into_iter()
            .filter(|m| !assignment.iter().any(|a| a.executor_id == m.id))
            .collect();
        if leaving.is_empty() {
            return;
        }
        tokio::task::block_in_place(|| fault::reached("retiring", decided));
        let target = self.scaler.current().executors;
        self.dismiss(
            &leaving,
            &format!("executor retired: the executor target is {target}"),
        )
        .await;
        self.ops.metrics.retired(leaving.len());
        if let Some(r) = &mut self.replicas {
            r.down_to(target, leaving.iter().map(|m| m.id.clone()).collect());
        }
    }

    /// Tells the stopping executors among `registered` to exit now. Between epochs, all they
    /// had is in the last decision, and no epoch was planned on them after they said so.
    async fn let_stopping_go(&mut self, registered: &[Member]) {
        let stopping: Vec<Member> = registered.iter().filter(|m| m.leaving).cloned().collect();
        if !stopping.is_empty() {
            self.dismiss(&stopping, "a stopping executor was let go")
                .await;
        }
    }

    /// Tells `members` to exit and takes them out of the membership (not as failures); the
    /// board shows them retired.
    async fn dismiss(&mut self, members: &[Member], why: &str) {
        self.clients.shutdown(members).await;
        for m in members {
            tracing::info!(executor = %m.id, "{why}");
            self.take_out(m, false).await;
        }
        self.ops
            .board
            .retired(members.iter().map(|m| m.id.clone()).collect());
    }

    /// Takes `m` out of the membership and drops its connection: it `failed`, or was retired.
    async fn take_out(&mut self, m: &Member, failed: bool) {
        self.clients.forget(&m.address);
        let _ = self
            .membership
            .send(MembershipMsg::Remove {
                id: m.id.clone(),
                address: m.address.clone(),
                failed,
            })
            .await;
    }

    /// Plans the next epoch, or finds nothing to do; either way with each partition's end.
    async fn plan_next(
        &mut self,
        position: &mut Position,
        target: Option<&InputEnd>,
        members: &[Member],
    ) -> anyhow::Result<Next> {
        let planned = self.source.plan(&position.source, target).await?;
        let watermark_moved = position.watermark != position.last_epoch_watermark;
        if !planned.has_data() && !watermark_moved {
            if planned.start.is_some() {
                position.source.offsets = planned.start;
            }
            return Ok(Next::Idle(planned.latest));
        }
        let mut plan = EpochPlan {
            epoch: position.next_epoch,
            topic: self.job.source.name().to_string(),
            assignment: Vec::new(),
            ranges: planned.ranges,
            files: planned.files,
            watermark_micros: position.watermark,
            planned_at_micros: now_micros(),
            lost: planned.lost,
        };
        plan.assignment = self.assignment_for(&plan.partitions(), members, &position.assignment)?;
        Ok(Next::Plan(plan, planned.following, planned.latest))
    }

    /// Assigns `partitions` (Kafka partitions or file indexes) and key groups to `members`.
    fn assignment_for(
        &self,
        partitions: &[i32],
        members: &[Member],
        previous: &[Assignment],
    ) -> anyhow::Result<Vec<Assignment>> {
        let executors: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let assignment = assign(partitions, &executors, self.job.key_groups, previous);
        if assignment.is_empty() {
            bail!("no executor registered");
        }
        Ok(assignment)
    }

    /// What a run with `assignment` may read ahead: `following`, the files the epoch after it
    /// would read, split as that epoch's plan would split them if the members stay; and
    /// Kafka records when `records` (see [`reads_to_the_end`]).
    fn read_ahead(
        &self,
        following: &[InputFile],
        records: bool,
        members: &[Member],
        assignment: &[Assignment],
    ) -> anyhow::Result<ReadAhead> {
        if following.is_empty() {
            return Ok(ReadAhead {
                records,
                ..ReadAhead::default()
            });
        }
        let indexes: Vec<i32> = (0..following.len())
            .filter_map(|i| i32::try_from(i).ok())
            .collect();
        Ok(ReadAhead {
            files: following.to_vec(),
            assignment: self.assignment_for(&indexes, members, assignment)?,
            records,
        })
    }

    /// Waits for the next trigger; a checkpoint request cuts the wait short, a pause makes it
    /// last until resumed; stopping executors are let go meanwhile. Answers false when the
    /// driver is asked to stop.
    async fn wait_for_trigger(&mut self, at: Instant) -> anyhow::Result<bool> {
        loop {
            // Between epochs even when they run back to back.
            while let Ok(reply) = self.controls.compact.try_recv() {
                self.finish_commit().await?;
                self.compact(reply).await?;
            }
            if !self.waiting.is_empty() {
                return Ok(true);
            }
            let paused = *self.controls.paused.borrow();
            self.ops.metrics.set_paused(paused);
            if !paused && Instant::now() >= at {
                // Due: the next epoch runs now, beside the last one's commit.
                return Ok(true);
            }
            // Before waiting at all (for the trigger or a resume), the last commit is finished
            // and reported.
            self.finish_commit().await?;
            if paused {
                self.ops.board.set(
                    QueryState::Paused,
                    "paused; `weir admin resume` continues, `weir admin checkpoint` runs one epoch",
                );
            } else {
                self.ops
                    .board
                    .set(QueryState::Idle, "waiting for the next trigger");
            }
            let mut stop = self.controls.stop.clone();
            let mut pause = self.controls.paused.clone();
            pause.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()), if !paused => return Ok(true),
                _ = stop.wait_for(|s| *s) => return Ok(false),
                request = self.controls.checkpoint.recv() => {
                    if let Some(reply) = request {
                        self.waiting.push(reply);
                    }
                }
                request = self.controls.compact.recv() => {
                    if let Some(reply) = request {
                        self.compact(reply).await?;
                    }
                }
                _ = pause.changed() => {}
                // Between epochs, a stopping executor need not wait for the trigger to go.
                r = self.members.changed() => {
                    r.context("membership stopped")?;
                    let registered = self.members.borrow_and_update().clone();
                    self.let_stopping_go(&registered).await;
                }
            }
        }
    }

    /// Starts a compaction pass of every table (`weir admin compact`) and answers `reply` once
    /// all are done, while epochs go on.
    async fn compact(&mut self, reply: CompactReply) -> anyhow::Result<()> {
        let metrics = self.ops.metrics.clone();
        let waiting = self.tables()?.compact_now(&metrics).await;
        tokio::spawn(async move {
            let mut tables = Vec::new();
            for (label, url, outcome) in waiting {
                let pass = match outcome.await {
                    Ok(Ok(pass)) => pass,
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(format!("compacting the {label} table {url}: {e}")));
                        return;
                    }
                    Err(_) => {
                        let _ = reply.send(Err(format!(
                            "compacting the {label} table {url}: the pass was cut short"
                        )));
                        return;
                    }
                };
                tables.push(TableCompaction {
                    table: label,
                    url,
                    files_before: pass.files_before,
                    files_after: pass.files_after,
                    files_removed: pass.files_removed,
                    files_added: pass.files_added,
                    partitions: pass.partitions,
                    files_vacuumed: pass.vacuumed,
                });
            }
            let _ = reply.send(Ok(tables));
        });
        Ok(())
    }

    /// Answers the checkpoint requests the last epoch (or the lack of one) settled.
    fn answer_waiting(&mut self, outcome: Result<CheckpointOutcome, String>) {
        for reply in self.waiting.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }

    /// Runs epochs until stopped (or, with `available-now`, until the input at start is done).
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let (mut position, mut pending) = self.recover().await?;
        let Some(mut members) = self.wait_for_executors(&position.assignment).await? else {
            self.ops.board.set(QueryState::Stopped, "stopped");
            return Ok(());
        };
        let target = match self.job.trigger {
            Trigger::AvailableNow => Some(self.source.end().await?),
            Trigger::Interval(_) => None,
        };
        let interval = match self.job.trigger {
            Trigger::Interval(d) => d,
            Trigger::AvailableNow => Duration::ZERO,
        };
        let mut next_trigger = Instant::now();
        while !self.stopping() {
            let (plan, following, triggered) = match pending.take() {
                Some(p) => {
                    // A plan a previous driver left: its ends as they are now.
                    let latest = self.source.end().await?.offsets;
                    let triggered = Triggered {
                        at_micros: now_micros(),
                        started: Instant::now(),
                        plan_ms: 0,
                        latest,
                    };
                    // Nothing is read ahead of the plan after it.
                    (p, Vec::new(), triggered)
                }
                None => {
                    if !self.wait_for_trigger(next_trigger).await? {
                        break;
                    }
                    let at_micros = now_micros();
                    let started = Instant::now();
                    next_trigger = started + interval;
                    members = match self.wait_for_executors(&position.assignment).await? {
                        Some(m) => m,
                        None => break,
                    };
                    match self
                        .plan_next(&mut position, target.as_ref(), &members)
                        .await?
                    {
                        Next::Plan(p, following, latest) => {
                            self.log.write_plan(&p).await?;
                            let plan_ms = started.elapsed().as_millis() as u64;
                            (
                                p,
                                following,
                                Triggered {
                                    at_micros,
                                    started,
                                    plan_ms,
                                    latest,
                                },
                            )
                        }
                        Next::Idle(latest) => {
                            self.finish_commit().await?;
                            self.autoscale(&Observation::idle(&latest, at_micros));
                            // No epoch runs: the last decision holds all that executors
                            // beyond the target had, and the next epoch assigns without them.
                            let decided = position.next_epoch.saturating_sub(1);
                            self.retire(&[], decided).await;
                            let last = position.next_epoch.checked_sub(1);
                            self.answer_waiting(Ok(CheckpointOutcome {
                                epoch: last,
                                ran: false,
                                delta_version: None,
                            }));
                            if target.is_some() {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let span = tracing::info_span!("epoch", epoch = plan.epoch);
            match self
                .run_epoch(plan, &following, members, &mut position, triggered)
                .instrument(span)
                .await?
            {
                Some(m) => members = m,
                // Stopped while the epoch waited for executors: it runs again after a restart.
                None => break,
            }
        }
        self.finish_commit().await?;
        // A compaction cut off here would leave files a later sweep deletes; let it end.
        let metrics = self.ops.metrics.clone();
        self.tables()?.settle_upkeep(&metrics).await;
        self.answer_waiting(Err("the query stopped before it could run an epoch".into()));
        self.ops
            .board
            .set(QueryState::Stopping, "shutting the executors down");
        let members = self.members.borrow().clone();
        self.clients.shutdown(&members).await;
        self.ops.board.set(QueryState::Stopped, "stopped");
        Ok(())
    }

    /// Runs a plan until one run of it succeeds, then decides it and starts its commit, which
    /// runs beside the next epoch; the executors may read `following` (the files the next
    /// epoch would read) ahead. Answers the members it ran on, or `None` when the driver was
    /// stopped while a failed run waited for executors (the plan stays without a decision).
    async fn run_epoch(
        &mut self,
        plan: EpochPlan,
        following: &[InputFile],
        mut members: Vec<Member>,
        position: &mut Position,
        triggered: Triggered,
    ) -> anyhow::Result<Option<Vec<Member>>> {
        let epoch = plan.epoch;
        self.ops.board.epoch_started(epoch, &plan.assignment);
        // An epoch that takes longer than its budget raises one alert, while it runs.
        let _budget = self.ops.epoch_budget.map(|budget| {
            let started = triggered.started;
            let alert = self.ops.alerts.clone();
            AbortOnDrop(tokio::spawn(async move {
                tokio::time::sleep_until((started + budget).into()).await;
                alert.raise_about(
                    AlertKind::EpochOverBudget,
                    Some(epoch),
                    &format!(
                        "epoch {epoch} has been running for more than {budget:?}, its time budget"
                    ),
                );
            }))
        });
        let mut failures = 0;
        let mut first_failure: Option<Instant> = None;
        let mut previous = plan.assignment.clone();
        let read_records = reads_to_the_end(&self.job.trigger, &plan, &triggered.latest);
        let (assignment, prepared) = loop {
            // The plan's assignment where its executors are here, else the closest one.
            let assignment = self.assignment_for(&plan.partitions(), &members, &previous)?;
            let read_ahead = self.read_ahead(following, read_records, &members, &assignment)?;
            let run = uuid::Uuid::new_v4().simple().to_string();
            let mut membership = self.members.clone();
            match self
                .clients
                .execute(
                    &plan,
                    &assignment,
                    &read_ahead,
                    &run,
                    &members,
                    &mut membership,
                )
                .await
            {
                Ok(prepared) => break (assignment, prepared),
                Err(failure) => {
                    failures += 1;
                    first_failure.get_or_insert_with(Instant::now);
                    self.ops.metrics.failed_runs.inc();
                    self.abandon(epoch, &run, &failure, &members).await;
                    // Executors refuse a fenced driver's calls: stop rather than run again.
                    self.log.check_fence().await?;
                    if failures >= MAX_RUNS_PER_EPOCH {
                        bail!("epoch {epoch} failed {failures} times; the last: {failure}");
                    }
                    tokio::time::sleep(backoff(failures)).await;
                    previous = assignment;
                    members = match self.wait_for_executors(&previous).await? {
                        Some(m) => m,
                        None => return Ok(None),
                    };
                    self.ops.board.epoch_started(epoch, &previous);
                }
            }
        };
        tokio::task::block_in_place(|| fault::reached("prepared", epoch));
        // The last decision's commit, long done while this epoch ran, must be in the tables
        // before this decision is written: recovery commits only the latest decision.
        self.finish_commit().await?;
        let commit_started = Instant::now();
        let mut record = decide(
            &plan,
            &assignment,
            prepared,
            self.job.watermark_delay_micros,
            &position.totals,
            position.source.files_through.as_deref(),
        )?;
        // Key groups that changed owner since the last decision (a first epoch moves none).
        if !position.assignment.is_empty() {
            record.stats.key_groups_moved = moved_key_groups(&position.assignment, &assignment);
        }
        self.log.write_commit(&record).await?;
        tokio::task::block_in_place(|| fault::reached("decided", epoch));
        self.retire(&assignment, epoch).await;
        let record = Arc::new(record);
        let tables = self
            .tables
            .take()
            .context("the tables are with another commit")?;
        let ran_on: Vec<Member> = members
            .iter()
            .filter(|m| assignment.iter().any(|a| a.executor_id == m.id))
            .cloned()
            .collect();
        let previous_trigger_micros = position.last_trigger_micros;
        // Sweeping needs every decision in the tables; a checkpoint request waits for its
        // epoch's commit. Otherwise the commit finishes beside the next epoch.
        let answers = std::mem::take(&mut self.waiting);
        let finish_now = self.sweep_after_commit || !answers.is_empty();
        *position = Position::after(
            &record,
            plan.watermark_micros,
            assignment,
            Some(triggered.at_micros),
        );
        self.committing = Some(PendingCommit {
            committing: Committing::start(tables, record.clone(), self.ops.metrics.clone()),
            plan,
            record: record.clone(),
            ran_on,
            triggered,
            previous_trigger_micros,
            decide_ms: commit_started.elapsed().as_millis() as u64,
            runs: failures + 1,
            first_failure,
            answers,
        });
        if finish_now {
            self.finish_commit().await?;
        }
        // Every executor of this run finished what older runs were writing before it answered
        // (see the executor's staging), so what no commit references now never will be.
        if self.sweep_after_commit {
            match self.remove_staged_files().await {
                Ok(()) => self.sweep_after_commit = false,
                Err(e) => tracing::warn!(
                    epoch,
                    "deleting files of abandoned runs failed (retried after the next epoch): {e:#}"
                ),
            }
        }
        // The decision references this epoch's snapshots, so collecting old ones is safe
        // before the next epoch uploads new ones, whether or not its commit finished.
        self.retention.record(&record);
        if let Err(e) = self.retention.collect(&self.log).await {
            // Old snapshots left behind cost space, not correctness; the next epoch retries.
            tracing::warn!(epoch, "deleting old state snapshots failed: {e:#}");
        }
        // The plan and decision of the epoch whose snapshots just fell out go with them, so
        // the log holds `checkpoint_retention` epochs however long the job runs.
        if let Some(gone) = self.first_kept(epoch).checked_sub(1) {
            if let Err(e) = self.log.forget(gone).await {
                // Left behind, it is deleted at the next start.
                tracing::warn!(epoch, "deleting the log of epoch {gone} failed: {e:#}");
            }
        }
        Ok(Some(members))
    }

    /// Waits for the last decision's commit, when one runs, then tells the executors, the
    /// operators and the checkpoint requests waiting for it. An error stops the job: a restart
    /// commits the decision again.
    async fn finish_commit(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.committing.take() else {
            return Ok(());
        };
        let done = pending.committing.finish().await?;
        self.tables = Some(done.tables);
        let epoch = pending.record.epoch;
        self.clients.committed(epoch, &pending.ran_on).await;
        let triggered = &pending.triggered;
        self.report(
            &pending.plan,
            &pending.record,
            &done.versions,
            triggered,
            pending.previous_trigger_micros,
            pending.decide_ms + done.took.as_millis() as u64,
            pending.decide_ms,
            done.finished_at,
            pending.runs,
        );
        if let Some(first) = pending.first_failure {
            self.ops.alerts.raise_about(
                AlertKind::Recovered,
                Some(epoch),
                &format!(
                    "epoch {epoch} committed after {} failed run(s); recovered in {:.1} s",
                    pending.runs - 1,
                    done.finished_at
                        .saturating_duration_since(first)
                        .as_secs_f64()
                ),
            );
        }
        for reply in pending.answers {
            let _ = reply.send(Ok(CheckpointOutcome {
                epoch: Some(epoch),
                ran: true,
                delta_version: done.versions.first().copied().flatten(),
            }));
        }
        Ok(())
    }

    /// Tells the operators about a committed epoch: progress line, admin API, metrics,
    /// Pushgateway.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        plan: &EpochPlan,
        record: &CommitRecord,
        versions: &[Option<u64>],
        triggered: &Triggered,
        previous_trigger_micros: Option<i64>,
        commit_ms: u64,
        decide_ms: u64,
        finished_at: Instant,
        runs: u32,
    ) {
        let total_ms = finished_at
            .saturating_duration_since(triggered.started)
            .as_millis() as u64;
        // Epochs run back to back report epoch N after N + 1 has run: the timeline takes when
        // N committed, not when it is reported.
        let committed_at_ms = now_ms() - finished_at.elapsed().as_millis() as i64;
        let progress = progress::build(
            &self.ops.identity,
            &CommittedEpoch {
                plan,
                record,
                versions,
                latest: &triggered.latest,
                triggered_at_micros: triggered.at_micros,
                previous_trigger_micros,
                plan_ms: triggered.plan_ms,
                commit_ms,
                decide_ms,
                total_ms,
                runs,
            },
        );
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", progress::line(&progress));
            let _ = out.flush();
        }
        self.ops.metrics.record(
            &progress,
            record.stats.input_bytes,
            record.next_watermark_micros,
        );
        if let Some(push) = &self.ops.pushgateway {
            push.push(record);
        }
        self.autoscale(&Observation::epoch(&progress, triggered.at_micros));
        self.ops.board.committed(
            progress,
            &record.assignment,
            plan.watermark_micros,
            record.next_watermark_micros,
            committed_at_ms,
        );
    }

    /// Shows the autoscaler what a trigger found; a change of the target it decides is logged,
    /// counted and sent to the webhook, and takes effect at the next epoch.
    fn autoscale(&mut self, observation: &Observation) {
        let Some(autoscaler) = self.autoscaler.as_mut() else {
            return;
        };
        // Under external scaling the decisions are published, and the next is judged against
        // the last one rather than the count running (which follows when someone acts on it).
        let current = self.scaler.current().executors;
        let judged_against = match self.scaler.external {
            true => *self.published.get_or_insert(current),
            false => current,
        };
        let decision = autoscaler.observe(observation, judged_against);
        if let Some(r) = autoscaler.last() {
            self.scaler.recommend(r);
        }
        let desired = match self.published {
            Some(decided) => decided,
            None => autoscaler.last().map_or(0, |r| r.executors),
        };
        let Some(decision) = decision else {
            self.ops.metrics.autoscaled(desired, None);
            return;
        };
        let reason = decision.reason();
        if self.scaler.external {
            self.published = Some(decision.to);
            self.ops
                .metrics
                .autoscaled(decision.to, Some(decision.direction()));
            let message = format!(
                "{reason}; published as weir_desired_executors for whoever scales the executors \
                 (--external-scaling)"
            );
            tracing::info!("{message}");
            self.ops.alerts.raise(AlertKind::Autoscaled, &message);
            return;
        }
        match self.scaler.set(decision.to, &reason) {
            Ok(_) => {
                self.ops
                    .metrics
                    .autoscaled(desired, Some(decision.direction()));
                self.ops.alerts.raise(AlertKind::Autoscaled, &reason);
            }
            // autoscale.{min,max} lie within executors.{min,max}: only a bug lands here.
            Err(e) => tracing::error!("the autoscaler's target was refused: {e}"),
        }
    }

    /// Gives up a failed run: every executor stops working on it and the failed one is taken
    /// out of the membership until it registers again. What the run staged is deleted after the
    /// epoch commits: an executor may still be writing a file of it now.
    async fn abandon(&mut self, epoch: u64, run: &str, failure: &RunFailure, members: &[Member]) {
        tracing::warn!(epoch, %run, "run failed, aborting it: {failure}");
        if let Some(id) = &failure.executor {
            self.ops.alerts.raise_about(
                AlertKind::ExecutorLost,
                Some(epoch),
                &format!("executor `{id}` failed or was lost in epoch {epoch} ({failure}); the epoch runs again"),
            );
            if let Some(m) = members.iter().find(|m| m.id == *id) {
                self.take_out(m, true).await;
            }
        }
        let alive: Vec<Member> = self.members.borrow().clone();
        self.clients.abort(epoch, run, &alive).await;
        self.sweep_after_commit = true;
    }
}

/// Whether the epoch after `plan` waits for its trigger with nothing of `plan`'s source left
/// behind: `plan` reads a Kafka source to the partitions' ends (`latest`, when it was
/// planned), and the trigger is an interval. Then the executors may read ahead what is
/// fetched meanwhile; epochs that run back to back (a backlog, available-now) leave no wait to
/// fill.
fn reads_to_the_end(trigger: &Trigger, plan: &EpochPlan, latest: &BTreeMap<i32, i64>) -> bool {
    let interval = matches!(trigger, Trigger::Interval(d) if !d.is_zero());
    interval
        && !plan.ranges.is_empty()
        && plan
            .ranges
            .iter()
            .all(|r| latest.get(&r.partition).is_none_or(|end| r.end >= *end))
}

#[cfg(test)]
mod tests {
    use weir_common::checkpoint::PartitionRange;

    use super::*;

    #[test]
    fn records_are_read_ahead_only_of_an_epoch_that_reads_to_the_end_before_a_wait() {
        let plan = |ends: &[(i32, i64)]| EpochPlan {
            epoch: 1,
            topic: "events".into(),
            ranges: ends
                .iter()
                .map(|&(partition, end)| PartitionRange {
                    partition,
                    start: 0,
                    end,
                })
                .collect(),
            files: Vec::new(),
            watermark_micros: None,
            planned_at_micros: 0,
            assignment: Vec::new(),
            lost: Vec::new(),
        };
        let latest = BTreeMap::from([(0, 100), (1, 50)]);
        let second = Trigger::Interval(Duration::from_secs(1));
        assert!(reads_to_the_end(
            &second,
            &plan(&[(0, 100), (1, 50)]),
            &latest
        ));
        // A partition with nothing new is not in the plan.
        assert!(reads_to_the_end(&second, &plan(&[(0, 100)]), &latest));
        // max_offsets_per_trigger cut a range: the next epoch runs at once.
        assert!(!reads_to_the_end(
            &second,
            &plan(&[(0, 100), (1, 40)]),
            &latest
        ));
        assert!(!reads_to_the_end(
            &Trigger::AvailableNow,
            &plan(&[(0, 100)]),
            &latest
        ));
        assert!(!reads_to_the_end(
            &Trigger::Interval(Duration::ZERO),
            &plan(&[(0, 100)]),
            &latest
        ));
        // A file source's plan has no ranges.
        assert!(!reads_to_the_end(&second, &plan(&[]), &latest));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert!(backoff(2) > backoff(1));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }
}
