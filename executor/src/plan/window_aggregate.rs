//! The window aggregate: event-time windows per group with the query's aggregates, in append
//! mode (a window's row is emitted once the watermark passes its end).

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::job::JobSpec;
use weir_common::output::output_schema;
use weir_proto::control::EpochStats;

use crate::aggregate::partials::{ByOwner, Partials};
use crate::aggregate::preagg::PreAggregation;
use crate::exchange::topology::Topology;
use crate::output::emit::{column_sums, output_batch};
use crate::output::staging::StagedTable;
use crate::state::{finish_closed_rows, ClosedRow, StateStore};

/// The query's window aggregate and the table its rows go to.
pub struct WindowAggregate {
    job: JobSpec,
    output_schema: SchemaRef,
    output: StagedTable,
}

/// What this executor took out of its store for the windows the epoch's watermark closes.
pub struct Closing {
    /// Their group rows (distinct counts still to add from the shard counts).
    rows: Vec<ClosedRow>,
    distinct_removed: u64,
}

impl WindowAggregate {
    pub fn new(job: &JobSpec) -> Self {
        Self {
            output_schema: output_schema(job),
            output: StagedTable::new(&job.output.url, &job.storage_options),
            job: job.clone(),
        }
    }

    /// Pre-aggregation for an epoch under `watermark`, planned at `planned_at`: the runner hands
    /// it each decoded chunk.
    pub fn begin(&self, watermark: Option<i64>, planned_at: i64) -> PreAggregation<'_> {
        PreAggregation::new(&self.job, watermark, planned_at)
    }

    /// Ends the epoch's reading: routes the partials to their owners, and takes the windows
    /// `watermark` closes out of the key groups this executor owns (they get no rows in this
    /// epoch: they would be late, so what the store holds for them is final), sending their
    /// shard counts along. Answers the partials per peer.
    pub fn close(
        &self,
        pre: PreAggregation<'_>,
        state: &StateStore,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
    ) -> anyhow::Result<(Vec<Partials>, Closing)> {
        let mut outgoing = ByOwner::new(&topology.owners, topology.peers.len());
        pre.route(&mut outgoing)
            .context("routing partial aggregates")?;
        let mut closing = Closing {
            rows: Vec::new(),
            distinct_removed: 0,
        };
        if let Some(watermark) = watermark {
            for range in topology.owned() {
                let taken =
                    state.take_closed(range, watermark, self.job.aggregates.len(), batch)?;
                closing.rows.extend(taken.rows);
                closing.distinct_removed += taken.distinct_removed;
                for (key, count) in taken.shard_counts {
                    outgoing
                        .add_shard_count(key, count)
                        .context("summing distinct counts of closed windows")?;
                }
            }
        }
        Ok((outgoing.finish(), closing))
    }

    /// Folds what this executor owns after the exchange into `batch`, and builds the rows of
    /// the windows it closed; the epoch's figures go into `stats`.
    pub fn fold_and_emit(
        &self,
        state: &StateStore,
        closing: Closing,
        mut owned: Partials,
        batch: &mut WriteBatch,
        planned_at: i64,
        stats: &mut EpochStats,
    ) -> anyhow::Result<RecordBatch> {
        let Closing {
            mut rows,
            distinct_removed,
        } = closing;
        let shard_counts = std::mem::take(&mut owned.shard_counts);
        stats.state_rows_removed = rows.len() as u64 + distinct_removed;
        let folded = state
            .fold(owned, batch)
            .context("folding partial aggregates into state")?;
        stats.state_rows_updated = folded.rows_written;
        stats.distinct_entries_written = folded.distinct_written;
        stats.distinct_entries_removed = distinct_removed;
        finish_closed_rows(&mut rows, &shard_counts).context("summing distinct counts")?;
        stats.windows_emitted = rows.len() as u64;
        let output = output_batch(&self.job, &self.output_schema, &mut rows, planned_at)
            .context("building output rows")?;
        stats.output_sums = column_sums(&self.job, &output);
        Ok(output)
    }

    /// Stages the epoch's rows into the output table; answers their add actions.
    pub async fn stage(&mut self, rows: &RecordBatch) -> anyhow::Result<Vec<String>> {
        self.output
            .stage(std::slice::from_ref(rows))
            .await
            .context("staging output files")
    }
}
