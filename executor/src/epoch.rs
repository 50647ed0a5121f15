//! Runs one planned epoch (docs/architecture.md, One epoch and Plan of operators): bring the
//! store to the epoch's starting state, read the ranges, decode, hand the rows to the query's
//! operator, exchange its partials with the other executors, let it fold what this executor
//! owns into state and emit its rows, stage those and the dead letters, snapshot the state to
//! the checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use tokio::sync::watch;
use weir_common::checkpoint::CommitRecord;
use weir_common::decode::JsonDecoder;
use weir_common::job::JobSpec;
use weir_common::query::keygroup::KeyGroups;
use weir_common::testing::fault;
use weir_proto::control::{AddActions, EpochStats, ExecuteRequest, Prepared};

use crate::aggregate::partials::PlanPartials;
use crate::aggregate::preagg::Rejected;
use crate::exchange::topology::Topology;
use crate::exchange::Exchange;
use crate::input::mapped::FaultWatch;
use crate::input::read_ahead::ReadAhead;
use crate::input::{DecodedChunk, Input, Record};
use crate::output::emit::{dead_letter_batch, late_rows_batch};
use crate::output::staging::StagedTable;
use crate::plan::operators::{Plan, PlanClosing, PlanPending};
use crate::state::restore::{restore, take_over};
use crate::state::snapshot::{new_instance_id, Snapshots};
use crate::state::{remove_dir, StateStore};
use weir_storage::CheckpointLog;
use weir_telemetry::Readiness;

/// Set to 1, executors skip state snapshots (benchmarks measure their cost with it).
pub const NO_SNAPSHOTS_VAR: &str = "WEIR_UNSAFE_NO_STATE_SNAPSHOTS";

/// Records decoded together: one arrow-json pass per chunk. 4 096 lines (about 1 MB of the
/// reference events) ran 2–4 % faster than 8 192 or 16 384 in alternating runs here: what a
/// pass builds stays in the caches.
pub const CHUNK: usize = 4096;

/// How the store came to hold an epoch's key groups.
enum StateReady {
    /// It held them already.
    InPlace,
    /// `key_groups` restored from snapshots of `bytes`: all it owns (restored whole), or those
    /// that moved here (the store kept, the others as they were).
    Restored { key_groups: u32, bytes: u64 },
}

/// Everything an executor needs to run epochs of one job.
pub struct EpochRunner {
    pub executor_id: String,
    job: JobSpec,
    input: Input,
    /// The next epoch's files being read ahead, when the last plan named them.
    read_ahead: Option<ReadAhead>,
    /// Faults of mapped input files: records read from a file that shrank since it was listed.
    mapped_faults: FaultWatch,
    decoder: Arc<JsonDecoder>,
    state: StateStore,
    /// Where the current store lives (`<state dir>/stores/<instance>`).
    store_dir: PathBuf,
    state_dir: PathBuf,
    /// The key groups the store holds, once it holds any.
    owned: Option<KeyGroups>,
    snapshots: Snapshots,
    /// The run the driver wants worked on (set by the control service).
    current_run: watch::Receiver<String>,
    /// Benchmarks only: skip state snapshots (`WEIR_UNSAFE_NO_STATE_SNAPSHOTS=1`), to measure
    /// what they cost. A job run so cannot recover.
    skip_snapshots: bool,
    log: CheckpointLog,
    /// Not ready while state is being restored (the kubelet's readiness probe).
    readiness: Readiness,
    /// The queries' stateful operators, with their output tables.
    plan: Plan,
    dead_letter: Option<StagedTable>,
    /// Where late rows are kept, when the job keeps them.
    late_rows: Option<StagedTable>,
    exchange: Exchange,
}

/// What an epoch's reading produces before the exchange.
struct Local {
    /// Partials per peer, by the owner of their key groups.
    outgoing: Vec<PlanPartials>,
    /// What the queries took out of the store under the epoch's watermark.
    closing: PlanClosing,
    state_batch: WriteBatch,
    rejected: Vec<(Record, String)>,
    /// Late rows with their event time, when the job keeps them.
    late: Vec<(Record, i64)>,
    stats: EpochStats,
}

/// An epoch after folding: what its rows still need before they are emitted.
struct Folded {
    pending: PlanPending,
    counts: PlanPartials,
    state_batch: WriteBatch,
    rejected: Vec<(Record, String)>,
    late: Vec<(Record, i64)>,
    stats: EpochStats,
}

/// What an epoch leaves to stage and apply.
struct Computed {
    state_batch: WriteBatch,
    /// Each query's rows, in the job's order.
    outputs: Vec<RecordBatch>,
    dead_letters: RecordBatch,
    late_rows: Option<RecordBatch>,
    stats: EpochStats,
}

impl EpochRunner {
    pub fn new(
        executor_id: String,
        job: JobSpec,
        state_dir: &Path,
        job_id: &str,
        exchange: Exchange,
        current_run: watch::Receiver<String>,
        readiness: Readiness,
    ) -> anyhow::Result<Self> {
        let input = Input::open(&job, job_id)?;
        let log = CheckpointLog::open(&job.checkpoint_url, &job.storage_options)?;
        let snapshots = Snapshots::new(log.location().clone(), &executor_id);
        // The local store is a cache of the checkpoint: whatever an earlier process left is
        // discarded, and the first epoch restores what it needs.
        for dir in ["stores", "snapshots", "rocksdb"] {
            remove_dir(&state_dir.join(dir))?;
        }
        let store_dir = state_dir.join("stores").join(snapshots.instance());
        let state = StateStore::create_empty(&store_dir, job.key_groups)
            .context("opening the state store")?;
        let skip_snapshots = std::env::var(NO_SNAPSHOTS_VAR).is_ok_and(|v| v == "1");
        if skip_snapshots {
            tracing::warn!(
                "{NO_SNAPSHOTS_VAR}=1: state is not snapshotted; this job cannot recover from a failure"
            );
        }
        Ok(Self {
            skip_snapshots,
            current_run,
            executor_id,
            // Only the columns the queries read are built; every record is still checked
            // against the whole schema.
            decoder: Arc::new(JsonDecoder::reading(
                job.input_schema.clone(),
                &job.columns_read(),
                job.max_record_bytes,
            )),
            read_ahead: None,
            mapped_faults: FaultWatch::default(),
            plan: Plan::new(&job),
            late_rows: job
                .late_rows
                .as_ref()
                .map(|l| StagedTable::new(&l.url, &job.storage_options)),
            dead_letter: job
                .dead_letter
                .as_ref()
                .map(|d| StagedTable::new(&d.url, &job.storage_options)),
            input,
            state,
            store_dir,
            state_dir: state_dir.to_path_buf(),
            owned: None,
            snapshots,
            log,
            readiness,
            exchange,
            job,
        })
    }

    /// Makes the store hold key groups `owned` as of the decision of `base`: as it is when it
    /// already does; by dropping the key groups that moved away and copying in those that moved
    /// here when it holds that decision's state of others; else restored from the checkpoint.
    async fn prepare_state(
        &mut self,
        base: Option<u64>,
        owned: &KeyGroups,
    ) -> anyhow::Result<StateReady> {
        let at = self.state.last_epoch()?;
        if at == base {
            match (&self.owned, base) {
                (Some(had), _) if had == owned => return Ok(StateReady::InPlace),
                // Nothing was decided yet: the store is empty whatever it owns.
                (_, None) => {
                    self.owned = Some(owned.clone());
                    return Ok(StateReady::InPlace);
                }
                (Some(had), Some(epoch)) => {
                    let had = had.clone();
                    return self.rebalance(epoch, &had, owned).await;
                }
                (None, Some(_)) => {}
            }
        }
        let decision = match base {
            Some(epoch) => Some(self.decision(epoch).await?),
            None => None,
        };
        tracing::info!(
            from = ?base,
            key_groups = %owned,
            "restoring state (the store holds epoch {at:?})"
        );
        let instance = new_instance_id();
        let dir = self.state_dir.join("stores").join(&instance);
        self.readiness.set_not_ready(format!(
            "restoring the state of key groups {owned} from the checkpoint"
        ));
        if let Some(epoch) = base {
            tokio::task::block_in_place(|| fault::reached("restoring", epoch + 1));
        }
        let restored = restore(
            self.log.location(),
            decision.as_ref(),
            owned,
            &dir,
            self.job.key_groups,
        )
        .await;
        self.readiness.set_ready();
        let restored = restored.context("restoring state from the checkpoint")?;
        self.snapshots
            .start_instance(instance, restored.inherited.as_deref());
        let old = std::mem::replace(&mut self.store_dir, dir);
        self.state = restored.store;
        remove_dir(&old)?;
        self.owned = Some(owned.clone());
        Ok(StateReady::Restored {
            key_groups: owned.count(),
            bytes: restored.bytes,
        })
    }

    /// The store holds the decision of `epoch` for key groups `had`; makes it hold `owned`:
    /// drops what moved to other executors, copies in from the decision's snapshots what moved
    /// here, and keeps the rest as it is.
    async fn rebalance(
        &mut self,
        epoch: u64,
        had: &KeyGroups,
        owned: &KeyGroups,
    ) -> anyhow::Result<StateReady> {
        let gone = had.difference(owned);
        let gained = owned.difference(had);
        // Until it is done the store holds neither set: a failure here restores in full.
        self.owned = None;
        tracing::info!(
            kept = %had.intersection(owned),
            gone = %gone,
            gained = %gained,
            "key groups moved: keeping the store, copying in only what moved here"
        );
        tokio::task::block_in_place(|| self.state.drop_key_groups(&gone))
            .context("dropping the state of key groups that moved away")?;
        let mut bytes = 0;
        if !gained.is_empty() {
            let decision = self.decision(epoch).await?;
            self.readiness.set_not_ready(format!(
                "restoring the state of key groups {gained} from the checkpoint"
            ));
            tokio::task::block_in_place(|| fault::reached("restoring", epoch + 1));
            let scratch = self.state_dir.join("stores").join(new_instance_id());
            let copied = take_over(
                self.log.location(),
                &decision,
                &gained,
                &self.state,
                &scratch,
                self.job.key_groups,
            )
            .await;
            self.readiness.set_ready();
            bytes = copied.context("copying in the state of key groups that moved here")?;
        }
        self.snapshots.store_changed();
        self.owned = Some(owned.clone());
        Ok(StateReady::Restored {
            key_groups: gained.count(),
            bytes,
        })
    }

    /// Starts opening the tables the epochs stage files into (outputs, dead letters, late
    /// rows), so that the first epoch to write one does not wait for its log to be read.
    pub fn open_tables(&mut self) {
        self.plan.open_outputs();
        for table in [self.dead_letter.as_mut(), self.late_rows.as_mut()]
            .into_iter()
            .flatten()
        {
            table.open_in_background();
        }
    }

    /// The decision record of `epoch`.
    async fn decision(&self, epoch: u64) -> anyhow::Result<CommitRecord> {
        self.log
            .commit(epoch)
            .await?
            .with_context(|| format!("the decision record of epoch {epoch} is missing"))
    }

    /// Executes an epoch and answers `Prepared` once its files are staged and its state applied.
    pub async fn execute(&mut self, req: ExecuteRequest) -> anyhow::Result<Prepared> {
        let epoch = req.epoch;
        if req.base_epoch.is_some_and(|b| b >= epoch) {
            anyhow::bail!(
                "epoch {epoch} cannot start from the state of epoch {:?}",
                req.base_epoch
            );
        }
        let topology = Topology::from_request(&req, &self.executor_id, self.job.key_groups)
            .context("the epoch's plan")?;
        let key_groups = topology.my_key_groups();
        let restore_started = Instant::now();
        let ready = self.prepare_state(req.base_epoch, &key_groups).await?;
        let restore_ms = restore_started.elapsed().as_millis() as u64;
        let mut local = tokio::task::block_in_place(|| self.read(&req, &topology))?;
        // The next epoch's input is read beside what is left of this one (docs/architecture.md,
        // One epoch).
        self.read_ahead = self.input.read_ahead(&req, &self.decoder, CHUNK);
        match ready {
            StateReady::InPlace => {}
            StateReady::Restored { key_groups, bytes } => {
                local.stats.restore_ms = restore_ms;
                local.stats.restored_key_groups = key_groups;
                local.stats.restored_bytes = bytes;
            }
        }
        tokio::task::block_in_place(|| fault::reached("execute", epoch));
        let outgoing = std::mem::take(&mut local.outgoing);
        let (owned, exchanged) = self
            .exchange
            .shuffle(epoch, &req.run, 0, &topology.peers, topology.me, outgoing)
            .await
            .context("exchanging partial aggregates")?;
        local.stats.exchange_ms = exchanged.elapsed.as_millis() as u64;
        local.stats.shuffle_rows_sent = exchanged.rows_sent;
        local.stats.shuffle_rows_received = exchanged.rows_received;
        let fold_started = Instant::now();
        let Local {
            closing,
            mut state_batch,
            rejected,
            late,
            mut stats,
            ..
        } = local;
        let (pending, counts) = tokio::task::block_in_place(|| {
            self.plan.fold(
                &self.state,
                closing,
                owned,
                &topology,
                req.watermark_micros,
                &mut state_batch,
                &mut stats,
            )
        })?;
        let folding = fold_started.elapsed().as_millis() as u64;
        stats.emit_ms += folding;
        stats.state_ms += folding;
        // Update mode with exact distinct aggregates: the shards' gains go to the owners of
        // their group rows in a second round before any row is emitted.
        let counts = match counts {
            Some(outgoing) => {
                let (counts, exchanged) = self
                    .exchange
                    .shuffle(epoch, &req.run, 1, &topology.peers, topology.me, outgoing)
                    .await
                    .context("exchanging the distinct counts of updated windows")?;
                stats.exchange_ms += exchanged.elapsed.as_millis() as u64;
                stats.shuffle_rows_sent += exchanged.rows_sent;
                stats.shuffle_rows_received += exchanged.rows_received;
                counts
            }
            None => PlanPartials::default(),
        };
        let folded = Folded {
            pending,
            counts,
            state_batch,
            rejected,
            late,
            stats,
        };
        let computed = tokio::task::block_in_place(|| self.emit(&req, folded))?;
        let applying_started = Instant::now();
        let changelog =
            tokio::task::block_in_place(|| self.state.commit_epoch(epoch, computed.state_batch))
                .context("applying the epoch to the state store")?;
        let mut stats = computed.stats;
        // Applying the epoch's batch belongs to folding, which emitting's time includes.
        let applying = applying_started.elapsed().as_millis() as u64;
        stats.emit_ms += applying;
        stats.state_ms += applying;
        stats.state_rows = self.state.estimated_rows();
        // The output files and the state snapshot do not depend on each other: written at
        // the same time (each staged write runs in its own task), the epoch waits for the
        // slower of the two, not for both in turn.
        let started = Instant::now();
        let staging = stage(
            &mut self.plan,
            self.dead_letter.as_mut(),
            self.late_rows.as_mut(),
            Emitted {
                outputs: &computed.outputs,
                dead_letters: &computed.dead_letters,
                late_rows: computed.late_rows.as_ref(),
            },
            epoch,
        );
        let snapshotting = async {
            let started = Instant::now();
            let snapshot = snapshot(
                &self.state,
                &mut self.snapshots,
                &self.state_dir,
                &self.executor_id,
                self.skip_snapshots,
                epoch,
                changelog,
                &key_groups,
            )
            .await;
            (snapshot, started.elapsed())
        };
        let (staged, (snapshot, checkpoint_time)) = tokio::join!(staging, snapshotting);
        let staged = staged?;
        let snapshot = snapshot?;
        // Emit and checkpoint add up to the phase's wall time: what staging took beyond the
        // snapshot counts as emitting.
        stats.emit_ms += (started.elapsed().saturating_sub(checkpoint_time)).as_millis() as u64;
        stats.checkpoint_ms = checkpoint_time.as_millis() as u64;
        stats.checkpoint_bytes = snapshot.bytes();
        stats.checkpoint_uploaded_bytes = snapshot.uploaded_bytes;
        // The epochs since the last base are in memtables until the next base flushes them.
        stats.state_memory_bytes = self.state.memory_bytes();
        stats.state_disk_bytes = self.state.disk_bytes();
        stats.memory_rss_bytes = weir_telemetry::process::rss_bytes().unwrap_or(0);
        // Every record of the epoch was read by now; the ones read ahead are checked by the
        // epoch that takes them.
        if self.mapped_faults.moved() {
            self.read_ahead = None;
            anyhow::bail!(
                "an input file shrank while it was read (files must not change once listed): \
                 epoch {epoch} fails rather than commit what it read"
            );
        }
        tokio::task::block_in_place(|| fault::reached("prepared", epoch));
        Ok(Prepared {
            epoch,
            executor_id: self.executor_id.clone(),
            output_adds: staged.outputs.first().cloned().unwrap_or_default(),
            more_output_adds: staged
                .outputs
                .into_iter()
                .skip(1)
                .map(|adds| AddActions { adds })
                .collect(),
            dead_letter_adds: staged.dead_letter,
            late_rows_adds: staged.late_rows,
            stats: Some(stats),
            run: req.run,
            state_snapshot_json: serde_json::to_string(&snapshot)?,
        })
    }

    /// Reads the planned ranges, pre-aggregates them and takes the windows the epoch's
    /// watermark closes out of the store; splits the partials by owner.
    fn read(&mut self, req: &ExecuteRequest, topology: &Topology) -> anyhow::Result<Local> {
        let mut stats = EpochStats::default();
        let read_started = Instant::now();
        let mut pre = self.plan.begin(req.watermark_micros, req.planned_at_micros);
        let mut rejected: Vec<(Record, String)> = Vec::new();
        let mut late: Vec<(Record, i64)> = Vec::new();
        let keep_late = self.late_rows.is_some();
        let event_time_column = self.job.event_time_column.as_str();
        let decoder = &self.decoder;
        let max_record_bytes = self.job.max_record_bytes;
        let mut aggregate_time = std::time::Duration::ZERO;
        // A run the driver abandoned stops reading at once instead of at its next await.
        let current = self.current_run.clone();
        let keep_going = || *current.borrow() == req.run;
        let ahead = self.read_ahead.take();
        let taken = self
            .input
            .read(req, ahead, decoder, CHUNK, keep_going, |chunk| {
                // Chaos tests pause here, the chunk's records still as read (a local file's
                // mapped pages).
                fault::reached("chunk", req.epoch);
                let t = Instant::now();
                let DecodedChunk {
                    chunk,
                    decoded,
                    value_bytes,
                    ..
                } = chunk;
                let records = chunk.records;
                stats.input_rows += records.len() as u64;
                stats.input_bytes += value_bytes;
                for (i, reason) in decoded.bad {
                    let record = &records[i];
                    let reason = match record.cut_from {
                        Some(length) => decoder.too_large(length),
                        None => reason,
                    };
                    rejected.push((record.detached(max_record_bytes), reason));
                }
                let mut base = 0;
                for batch in &decoded.batches {
                    let record = |row: usize| &records[decoded.good[base + row]];
                    for (row, why) in pre.add_batch(batch, record) {
                        let record = &records[decoded.good[base + row]];
                        match why {
                            Rejected::Invalid(reason) => {
                                rejected.push((record.detached(max_record_bytes), reason));
                            }
                            Rejected::Late if keep_late => {
                                // A late row's event time was read: it is what made it late.
                                if let Some(at) = event_time_at(batch, event_time_column, row) {
                                    late.push((record.detached(max_record_bytes), at));
                                }
                            }
                            Rejected::Late => {}
                        }
                    }
                    base += batch.num_rows();
                }
                aggregate_time += t.elapsed();
            })?;
        // Reading and decoding, by this thread and ahead of the epoch.
        let mut reading = read_started.elapsed().saturating_sub(aggregate_time);
        if let Some(ahead) = taken {
            stats.read_ahead_rows = ahead.records;
            reading += ahead.read;
        }
        stats.read_ms = reading.as_millis() as u64;
        stats.aggregate_ms = aggregate_time.as_millis() as u64;
        stats.malformed_rows = rejected.len() as u64;
        stats.dead_letter_rows = rejected.len() as u64;
        stats.late_rows = pre.late_rows();
        stats.valid_rows = stats.input_rows - stats.malformed_rows;
        let times = pre.times();
        stats.min_event_time_micros = times.min;
        stats.max_event_time_micros = times.max;
        stats.sum_event_time_micros = times.sum;

        let mut state_batch = WriteBatch::default();
        let closing_started = Instant::now();
        let (outgoing, closing) = self.plan.close(
            pre,
            &self.state,
            topology,
            req.watermark_micros,
            &mut state_batch,
            &mut stats,
        )?;
        // Taking closed windows out of the store is part of emitting them.
        stats.emit_ms = closing_started.elapsed().as_millis() as u64;
        stats.state_ms = stats.emit_ms;
        Ok(Local {
            outgoing,
            closing,
            state_batch,
            rejected,
            late,
            stats,
        })
    }

    /// Builds the epoch's output rows, dead letters and late rows.
    fn emit(&mut self, req: &ExecuteRequest, folded: Folded) -> anyhow::Result<Computed> {
        let Folded {
            pending,
            counts,
            mut state_batch,
            rejected,
            late,
            mut stats,
        } = folded;
        let emit_started = Instant::now();
        let outputs = self.plan.emit(
            &self.state,
            pending,
            counts,
            &mut state_batch,
            req.planned_at_micros,
            &mut stats,
        )?;
        let input = &self.input;
        let dead_letters = dead_letter_batch(
            |record| input.origin(req, record),
            &rejected,
            req.epoch,
            req.planned_at_micros,
        )
        .context("building dead-letter rows")?;
        let late_rows = match (&self.late_rows, req.watermark_micros) {
            (Some(_), Some(watermark)) => Some(
                late_rows_batch(
                    |record| input.origin(req, record),
                    &late,
                    watermark,
                    req.epoch,
                    req.planned_at_micros,
                )
                .context("building late rows")?,
            ),
            _ => None,
        };
        stats.emit_ms += emit_started.elapsed().as_millis() as u64;
        Ok(Computed {
            state_batch,
            outputs,
            dead_letters,
            late_rows,
            stats,
        })
    }
}

/// An epoch's rows, per table.
struct Emitted<'a> {
    outputs: &'a [RecordBatch],
    dead_letters: &'a RecordBatch,
    late_rows: Option<&'a RecordBatch>,
}

/// The add actions of an epoch's staged files, per table.
struct Staged {
    /// Each query's, in the job's order.
    outputs: Vec<Vec<String>>,
    dead_letter: Vec<String>,
    late_rows: Vec<String>,
}

/// A late row's event time, from the column the query's windows read.
fn event_time_at(batch: &RecordBatch, column: &str, row: usize) -> Option<i64> {
    let times = batch
        .column_by_name(column)?
        .as_primitive_opt::<TimestampMicrosecondType>()?;
    times.is_valid(row).then(|| times.value(row))
}

/// Stages the epoch's output rows, dead letters and late rows; answers their add actions.
async fn stage(
    plan: &mut Plan,
    dead_letter: Option<&mut StagedTable>,
    late_table: Option<&mut StagedTable>,
    emitted: Emitted<'_>,
    epoch: u64,
) -> anyhow::Result<Staged> {
    let outputs = plan.stage(emitted.outputs).await?;
    let dead_letters = emitted.dead_letters;
    let dead_letter_adds = match dead_letter {
        Some(table) => table
            .stage(std::slice::from_ref(dead_letters))
            .await
            .context("staging dead-letter files")?,
        None => {
            if dead_letters.num_rows() > 0 {
                tracing::warn!(
                    epoch,
                    rows = dead_letters.num_rows(),
                    "no dead_letter table configured; rejected records are counted and dropped"
                );
            }
            Vec::new()
        }
    };
    let late_rows = match (late_table, emitted.late_rows) {
        (Some(table), Some(rows)) => table
            .stage(std::slice::from_ref(rows))
            .await
            .context("staging late-row files")?,
        _ => Vec::new(),
    };
    Ok(Staged {
        outputs,
        dead_letter: dead_letter_adds,
        late_rows,
    })
}

/// Snapshots the store after `epoch`, whose changelog is given, to the checkpoint; `skip`
/// (benchmarks' `WEIR_UNSAFE_NO_STATE_SNAPSHOTS`) takes none.
#[allow(clippy::too_many_arguments)]
async fn snapshot(
    state: &StateStore,
    snapshots: &mut Snapshots,
    state_dir: &Path,
    executor_id: &str,
    skip: bool,
    epoch: u64,
    changelog: Vec<u8>,
    owned: &KeyGroups,
) -> anyhow::Result<weir_common::checkpoint::StateSnapshot> {
    if skip {
        return Ok(weir_common::checkpoint::StateSnapshot {
            executor_id: executor_id.to_string(),
            key_groups: owned.clone(),
            files: Vec::new(),
            uploaded_bytes: 0,
        });
    }
    let scratch = state_dir.join("snapshots").join(epoch.to_string());
    snapshots
        .take(epoch, changelog, state, &scratch, owned)
        .await
        .context("taking the state snapshot")
}
