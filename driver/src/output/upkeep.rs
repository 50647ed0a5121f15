//! Table upkeep (docs/operations.md, Table upkeep): after an epoch's commit, when a pass is due
//! and none runs, a task of its own compacts the partitions that gathered `min_files` small
//! files (delta-rs's optimize: its commit changes no data, so epoch commits racing it retry and
//! succeed) and vacuums files the table stopped referencing longer than the retention ago. At
//! most one pass runs per table (two optimizes at once would both commit their copies), and
//! none while the driver deletes what failed runs staged (it would take optimize's files, not
//! yet committed, for leftovers).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::operations::vacuum::VacuumMode;
use deltalake::DeltaTable;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir_common::job::upkeep::{CompactSpec, TableUpkeep};
use weir_storage::Fence;

use crate::ops::metrics::DriverMetrics;

/// What one pass did to a table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Files the table referenced before and after the pass.
    pub files_before: u64,
    pub files_after: u64,
    /// Files before and after in the partitions compacted, and how many partitions.
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
    /// Data files deleted by vacuum.
    pub vacuumed: u64,
}

/// The upkeep of one table.
pub struct Upkeep {
    /// `output` or `dead_letter` (metrics and logs).
    label: String,
    url: String,
    spec: TableUpkeep,
    fence: Option<Fence>,
    next_compact: Instant,
    next_vacuum: Instant,
    running: Option<JoinHandle<anyhow::Result<PassReport>>>,
}

/// Where an on-demand pass (`weir admin compact`) sends its outcome.
pub type PassReply = oneshot::Sender<Result<PassReport, String>>;

/// What `weir admin compact` compacts when the sink sets nothing: every partition with more
/// than one file below delta-rs's target size.
const ON_DEMAND: CompactSpec = CompactSpec {
    every: Duration::ZERO,
    min_files: 2,
    target_file_bytes: weir_common::job::upkeep::DEFAULT_TARGET_FILE_BYTES,
};

impl Upkeep {
    /// The upkeep `spec` asks for (when it asks for nothing, only passes on demand). The first
    /// pass comes one interval after start: a driver that took over from one still compacting
    /// leaves it time to finish.
    pub fn new(label: String, url: &str, spec: TableUpkeep, fence: Option<Fence>) -> Self {
        let now = Instant::now();
        Self {
            label,
            url: url.to_string(),
            next_compact: now + spec.compact.map_or(Duration::ZERO, |c| c.every),
            next_vacuum: now + spec.vacuum.map_or(Duration::ZERO, |v| v.every),
            spec,
            fence,
            running: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// After a commit of `table`: reports a finished pass, and starts the next one when one is
    /// due and none runs. Never waits.
    pub fn after_commit(&mut self, table: &DeltaTable, metrics: &DriverMetrics) {
        if self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Some(task) = self.running.take() {
            // Finished: joining it does not wait.
            self.report(futures::FutureExt::now_or_never(task), metrics);
        }
        let now = Instant::now();
        let compact = self.spec.compact.filter(|_| now >= self.next_compact);
        let vacuum = self.spec.vacuum.filter(|_| now >= self.next_vacuum);
        if compact.is_none() && vacuum.is_none() {
            return;
        }
        if let Some(c) = compact {
            self.next_compact = now + c.every;
        }
        if let Some(v) = vacuum {
            self.next_vacuum = now + v.every;
        }
        self.start(table, compact, vacuum.map(|v| v.retention), None);
    }

    /// Compacts `table` now (with the sink's settings but whatever its thresholds, or every
    /// partition with small files when it sets none) and vacuums it when the sink asks for
    /// that; `reply` hears the outcome. A pass in progress is waited for first.
    pub async fn run_now(&mut self, table: &DeltaTable, metrics: &DriverMetrics, reply: PassReply) {
        self.settle(metrics).await;
        let compact = CompactSpec {
            min_files: 2,
            ..self.spec.compact.unwrap_or(ON_DEMAND)
        };
        let retention = self.spec.vacuum.map(|v| v.retention);
        self.start(table, Some(compact), retention, Some(reply));
    }

    fn start(
        &mut self,
        table: &DeltaTable,
        compact: Option<CompactSpec>,
        retention: Option<Duration>,
        reply: Option<PassReply>,
    ) {
        let (table, fence) = (table.clone(), self.fence.clone());
        self.running = Some(tokio::spawn(async move {
            let outcome = async {
                if let Some(fence) = &fence {
                    fence.check().await?;
                }
                pass(table, compact, retention).await
            }
            .await;
            if let Some(reply) = reply {
                let _ = reply.send(match &outcome {
                    Ok(r) => Ok(r.clone()),
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            outcome
        }));
    }

    /// Waits for the pass in progress, if any, and reports it.
    pub async fn settle(&mut self, metrics: &DriverMetrics) {
        if let Some(task) = self.running.take() {
            let done = task.await;
            self.report(Some(done), metrics);
        }
    }

    fn report(
        &self,
        done: Option<Result<anyhow::Result<PassReport>, tokio::task::JoinError>>,
        metrics: &DriverMetrics,
    ) {
        match done {
            Some(Ok(Ok(r))) => {
                if r.files_removed > 0 {
                    tracing::info!(
                        table = %self.url,
                        partitions = r.partitions,
                        "compacted {} files into {}",
                        r.files_removed,
                        r.files_added
                    );
                }
                if r.vacuumed > 0 {
                    tracing::info!(table = %self.url, files = r.vacuumed, "vacuumed files the table no longer references");
                }
                metrics.table_upkeep(&self.label, "ok", &r);
            }
            // The next pass tries again; what this one wrote without committing is deleted
            // with the files of failed runs.
            Some(Ok(Err(e))) => {
                tracing::warn!(table = %self.url, "table upkeep failed, trying again later: {e:#}");
                metrics.table_upkeep(&self.label, "error", &PassReport::default());
            }
            Some(Err(e)) => {
                tracing::warn!(table = %self.url, "table upkeep's task ended: {e}");
                metrics.table_upkeep(&self.label, "error", &PassReport::default());
            }
            None => {}
        }
    }
}

/// Files smaller than the target per partition: whether any partition has `min_files`.
fn worth_compacting(table: &DeltaTable, spec: &CompactSpec) -> anyhow::Result<bool> {
    let snapshot = table.snapshot()?;
    let mut small: HashMap<Vec<(String, Option<String>)>, usize> = HashMap::new();
    for file in snapshot.log_data().iter() {
        if u64::try_from(file.size()).unwrap_or(0) >= spec.target_file_bytes {
            continue;
        }
        let mut partition: Vec<_> = file.partition_values_map().into_iter().collect();
        partition.sort();
        *small.entry(partition).or_default() += 1;
    }
    Ok(small.values().any(|n| *n >= spec.min_files))
}

/// One pass over `table`: compaction when asked and worth it, then vacuum when asked.
async fn pass(
    mut table: DeltaTable,
    compact: Option<CompactSpec>,
    retention: Option<Duration>,
) -> anyhow::Result<PassReport> {
    let mut report = PassReport::default();
    table.update_state().await?;
    report.files_before = table.snapshot()?.log_data().num_files() as u64;
    if let Some(spec) = compact {
        if worth_compacting(&table, &spec)? {
            let target = NonZeroU64::new(spec.target_file_bytes).unwrap_or(NonZeroU64::MIN);
            let (compacted, metrics) = table
                .optimize()
                .with_target_size(target)
                // One of the machine's cores: the epochs go on beside it.
                .with_max_concurrent_tasks(1)
                .await?;
            report.files_removed = metrics.num_files_removed;
            report.files_added = metrics.num_files_added;
            report.partitions = metrics.partitions_optimized;
            table = compacted;
        }
    }
    if let Some(retention) = retention {
        let retention = chrono::Duration::from_std(retention)?;
        let (vacuumed, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            // The job's retention stands; delta-rs would refuse one shorter than the table's.
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Lite)
            .await?;
        report.vacuumed = metrics.files_deleted.len() as u64;
        table = vacuumed;
    }
    report.files_after = table.snapshot()?.log_data().num_files() as u64;
    Ok(report)
}
