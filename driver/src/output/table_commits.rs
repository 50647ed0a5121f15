//! The job's Delta tables and the commits of its decisions to them. Once an epoch's decision is
//! written, its commit may run while the next epoch executes (docs/architecture.md, One epoch, step
//! 5): the tables move into the commit's task and come back when it is awaited, so commits stay one
//! at a time and in epoch order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Add;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir_common::checkpoint::CommitRecord;
use weir_common::testing::fault;
use weir_storage::Fence;

use crate::epoch::coordinator::backoff;
use crate::ops::metrics::DriverMetrics;
use crate::output::delta_commit::DeltaCommitter;
use crate::output::kafka_sink::KafkaSinkWriter;
use crate::output::merge::{read_staged, MergeKeys};
use crate::output::upkeep::{PassReport, Upkeep};

/// Attempts at committing a decision to the tables before the job stops (a restart retries).
const COMMIT_ATTEMPTS: u32 = 5;

/// One query's output: its table, how epochs reach it, and its Kafka topics.
pub struct QueryOutput {
    pub table: DeltaCommitter,
    /// Update mode, or a dedup query's upsert: each epoch's rows are MERGEd into the table
    /// on these keys, not appended.
    pub merge: Option<MergeKeys>,
    /// Kafka topics that receive each epoch's rows (read from its staged files).
    pub kafka: Vec<KafkaSinkWriter>,
    /// The schema of the table's rows.
    pub schema: SchemaRef,
    /// How metrics name the table: `output`, or `output:<query>` in a job of several queries.
    pub label: String,
}

/// Every query's output table and, when the job has them, the dead-letter and late-rows
/// tables.
pub struct Tables {
    /// Each query's, in the job's order.
    pub outputs: Vec<QueryOutput>,
    pub dead_letter: Option<DeltaCommitter>,
    pub late_rows: Option<DeltaCommitter>,
    /// The driver's hold on the checkpoint: a fenced driver neither commits nor cleans up.
    pub fence: Option<Fence>,
    /// Compaction and vacuum of each table, when its sink asks for them.
    pub upkeep: Vec<(TableRole, Upkeep)>,
}

/// Which of the job's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRole {
    /// The output table of the job's query of this index.
    Output(usize),
    DeadLetter,
    LateRows,
}

/// The committer of `role`'s table, when the job has one (the fields, not `Tables`, so a loop
/// over the upkeep can borrow it beside them).
fn committer<'a>(
    outputs: &'a [QueryOutput],
    dead_letter: &'a Option<DeltaCommitter>,
    late_rows: &'a Option<DeltaCommitter>,
    role: TableRole,
) -> Option<&'a DeltaCommitter> {
    match role {
        TableRole::Output(query) => outputs.get(query).map(|o| &o.table),
        TableRole::DeadLetter => dead_letter.as_ref(),
        TableRole::LateRows => late_rows.as_ref(),
    }
}

/// The epoch's output rows, read from its staged files the first time an output needs them.
async fn staged_rows<'a>(
    read: &'a mut Option<Vec<RecordBatch>>,
    output: &DeltaCommitter,
    adds: &[Add],
    schema: &SchemaRef,
) -> anyhow::Result<&'a [RecordBatch]> {
    if read.is_none() {
        let rows = read_staged(output.table(), adds, schema)
            .await
            .with_context(|| format!("reading the epoch's staged rows from {}", output.url()))?;
        *read = Some(rows);
    }
    Ok(read.as_deref().unwrap_or_default())
}

impl QueryOutput {
    /// Puts `epoch`'s rows (the files of `adds`) into the table, and first into the query's
    /// Kafka topics: in update mode the staged files are deleted once merged, and a restart
    /// sends the last decision's rows again only if a topic's marker lacks the epoch.
    /// Answers the table's new version.
    async fn commit(
        &mut self,
        epoch: u64,
        added: &[String],
        metrics: &DriverMetrics,
    ) -> anyhow::Result<Option<u64>> {
        let needs_rows = !added.is_empty() && (!self.kafka.is_empty() || self.merge.is_some());
        let adds = match needs_rows {
            true => self.table.parse_adds(added)?,
            false => Vec::new(),
        };
        let mut rows = None;
        for sink in &mut self.kafka {
            if adds.is_empty() || !sink.needs(epoch).await? {
                continue;
            }
            let started = Instant::now();
            let epoch_rows = staged_rows(&mut rows, &self.table, &adds, &self.schema).await?;
            let records = sink.send(epoch, epoch_rows).await?;
            metrics.kafka_sink(sink.topic(), records, started.elapsed().as_secs_f64());
        }
        let started = Instant::now();
        let version = match &self.merge {
            None => self.table.commit(epoch, added).await?,
            Some(_) if adds.is_empty() || !self.table.needs(epoch).await? => None,
            Some(keys) => {
                let epoch_rows = staged_rows(&mut rows, &self.table, &adds, &self.schema).await?;
                let (version, m) = self
                    .table
                    .merge(epoch, &adds, epoch_rows.to_vec(), &self.schema, keys)
                    .await?;
                tracing::debug!(
                    epoch,
                    version,
                    table = %self.table.url(),
                    inserted = m.num_target_rows_inserted,
                    updated = m.num_target_rows_updated,
                    files_scanned = m.num_target_files_scanned,
                    files_skipped = m.num_target_files_skipped_during_scan,
                    "merged the epoch's rows into the output table"
                );
                version
            }
        };
        if version.is_some() {
            metrics.delta_commit(&self.label, started.elapsed().as_secs_f64());
        }
        Ok(version)
    }
}

impl Tables {
    /// Puts the decision's adds into every table (each commit is idempotent: a table that
    /// holds the epoch already is left alone), retrying with backoff; answers each query's
    /// output table's new version.
    pub async fn commit(
        &mut self,
        record: &CommitRecord,
        metrics: &DriverMetrics,
    ) -> anyhow::Result<Vec<Option<u64>>> {
        let mut failures = 0;
        loop {
            match self.commit_once(record, metrics).await {
                Ok(v) => return Ok(v),
                Err(e) if failures + 1 < COMMIT_ATTEMPTS && !crate::fenced(&e) => {
                    failures += 1;
                    tracing::warn!(
                        epoch = record.epoch,
                        "committing the decision failed, retrying: {e:#}"
                    );
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "committing the decision of epoch {} (a restart commits it again)",
                        record.epoch
                    )))
                }
            }
        }
    }

    async fn commit_once(
        &mut self,
        record: &CommitRecord,
        metrics: &DriverMetrics,
    ) -> anyhow::Result<Vec<Option<u64>>> {
        if let Some(fence) = &self.fence {
            fence.check().await?;
        }
        let mut versions = Vec::with_capacity(self.outputs.len());
        for (query, output) in self.outputs.iter_mut().enumerate() {
            let version = output
                .commit(record.epoch, record.output_adds_of(query), metrics)
                .await?;
            versions.push(version);
        }
        let side_tables = [
            (
                self.dead_letter.as_mut(),
                &record.dead_letter_adds,
                "dead_letter",
            ),
            (self.late_rows.as_mut(), &record.late_rows_adds, "late_rows"),
        ];
        for (table, adds, label) in side_tables {
            let Some(table) = table else { continue };
            let started = Instant::now();
            if table.commit(record.epoch, adds).await?.is_some() {
                metrics.delta_commit(label, started.elapsed().as_secs_f64());
            }
        }
        for (role, u) in &mut self.upkeep {
            if let Some(t) = committer(&self.outputs, &self.dead_letter, &self.late_rows, *role) {
                u.after_commit(t.table(), metrics);
            }
        }
        Ok(versions)
    }

    /// Starts a compaction pass of every table now (`weir admin compact`); answers, per table,
    /// its label, its URL and where its outcome will arrive.
    pub async fn compact_now(
        &mut self,
        metrics: &DriverMetrics,
    ) -> Vec<(
        String,
        String,
        oneshot::Receiver<Result<PassReport, String>>,
    )> {
        let mut waiting = Vec::new();
        for (role, u) in &mut self.upkeep {
            if let Some(t) = committer(&self.outputs, &self.dead_letter, &self.late_rows, *role) {
                let (reply, outcome) = oneshot::channel();
                u.run_now(t.table(), metrics, reply).await;
                waiting.push((u.label().to_string(), u.url().to_string(), outcome));
            }
        }
        waiting
    }

    /// Waits for the upkeep passes in progress.
    pub async fn settle_upkeep(&mut self, metrics: &DriverMetrics) {
        for (_, upkeep) in &mut self.upkeep {
            upkeep.settle(metrics).await;
        }
    }

    /// Deletes the files staged by runs that will never be committed. Safe only when no run is
    /// staging and every decision is in the tables.
    pub async fn remove_unreferenced_files(
        &mut self,
        metrics: &DriverMetrics,
    ) -> anyhow::Result<()> {
        // A compaction's files are unreferenced until it commits.
        self.settle_upkeep(metrics).await;
        if let Some(fence) = &self.fence {
            fence.check().await?;
        }
        for output in &mut self.outputs {
            output.table.remove_unreferenced_files().await?;
        }
        if let Some(dl) = self.dead_letter.as_mut() {
            dl.remove_unreferenced_files().await?;
        }
        if let Some(late) = self.late_rows.as_mut() {
            late.remove_unreferenced_files().await?;
        }
        Ok(())
    }
}

/// What a finished commit answers.
pub struct Committed {
    pub tables: Tables,
    /// Each query's output table's new version (`None`: nothing added, or the epoch was
    /// there).
    pub versions: Vec<Option<u64>>,
    /// How long the commit took, retries included.
    pub took: Duration,
    pub finished_at: Instant,
}

/// A decision being committed in its own task.
pub struct Committing {
    task: JoinHandle<anyhow::Result<Committed>>,
}

impl Committing {
    /// Starts committing `record` to `tables`.
    pub fn start(mut tables: Tables, record: Arc<CommitRecord>, metrics: DriverMetrics) -> Self {
        let task = tokio::spawn(async move {
            // Here the decision is written and the next epoch may be running already.
            tokio::task::block_in_place(|| fault::reached("committing", record.epoch));
            let started = Instant::now();
            let versions = tables.commit(&record, &metrics).await?;
            let took = started.elapsed();
            tokio::task::block_in_place(|| fault::reached("committed", record.epoch));
            Ok(Committed {
                tables,
                versions,
                took,
                finished_at: Instant::now(),
            })
        });
        Self { task }
    }

    /// Waits for the commit; an error stops the job (a restart commits the decision again).
    pub async fn finish(self) -> anyhow::Result<Committed> {
        self.task.await.context("the commit's task panicked")?
    }
}
