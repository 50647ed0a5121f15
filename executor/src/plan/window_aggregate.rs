//! The window aggregate: event-time windows per group with the query's aggregates. In append
//! mode a window's row is emitted once, when the watermark passes its end; in update mode every
//! epoch emits the rows it changed, with their new values, and a window's state is dropped
//! without a row once the watermark passes its end.

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::data::output::output_schema;
use weir_common::job::rows::RowStage;
use weir_common::job::{JobSpec, OutputMode, Query, WindowQuery};
use weir_common::query::aggregate::AggKind;
use weir_proto::control::EpochStats;

use crate::aggregate::partials::{ByOwner, Partials};
use crate::aggregate::preagg::PreAggregation;
use crate::exchange::topology::Topology;
use crate::output::emit::{column_sums, output_batch};
use crate::state::{add_shard_counts, CountedFold, StateStore, WindowRow};

/// The query's window aggregate and the table its rows go to.
pub struct WindowAggregate {
    /// Its index in the plan: its state keys and exchange entries carry it.
    op: u8,
    job: JobSpec,
    query: WindowQuery,
    output_schema: SchemaRef,
}

/// What this executor took out of its store for the windows the epoch's watermark closes.
pub struct Closing {
    /// Their group rows (distinct counts still to add from the shard counts); none in update
    /// mode, whose closed windows emit nothing.
    rows: Vec<WindowRow>,
    /// Group rows and distinct values deleted with them.
    removed: u64,
    distinct_removed: u64,
}

/// The rows an epoch emits once the distinct counts of their windows are in.
pub struct Pending {
    rows: Vec<WindowRow>,
    /// Distinct counts for them that came with the partials (append mode: the shards' counts
    /// of the closed windows).
    counts: Partials,
    /// Update mode: the rows are the epoch's changed rows, to be written to the store once
    /// their counts are added.
    write_back: bool,
}

/// What folding leaves to do: the rows to emit, and in update mode with exact distinct
/// aggregates, the counts of distinct values this executor's shards gained, per owner of their
/// group rows, to exchange before emitting.
pub struct Folding {
    pub pending: Pending,
    pub counts: Option<Vec<Partials>>,
}

impl WindowAggregate {
    pub fn new(op: u8, job: &JobSpec, query: &WindowQuery) -> Self {
        Self {
            op,
            query: query.clone(),
            output_schema: output_schema(&Query::Window(query.clone()), &job.input_schema),
            job: job.clone(),
        }
    }

    fn update_mode(&self) -> bool {
        self.query.output_mode == OutputMode::Update
    }

    /// Pre-aggregation for an epoch under `watermark`, planned at `planned_at`: the runner hands
    /// it each decoded chunk.
    pub fn begin(&self, watermark: Option<i64>, planned_at: i64) -> PreAggregation<'_> {
        PreAggregation::new(&self.job, &self.query, watermark, planned_at)
    }

    /// Ends the epoch's reading: routes the partials to their owners, and takes the windows
    /// `watermark` closes out of the key groups this executor owns (they get no rows in this
    /// epoch: they would be late, so what the store holds for them is final), sending their
    /// shard counts along in append mode. Answers the partials per peer.
    pub fn close(
        &self,
        pre: PreAggregation<'_>,
        state: &StateStore,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
    ) -> anyhow::Result<(Vec<Partials>, Closing)> {
        let mut outgoing = ByOwner::new(&topology.owners, topology.peers.len(), self.op)
            .with_one_group_runs(&topology.one_group_runs);
        pre.route(&mut outgoing)
            .context("routing partial aggregates")?;
        let mut closing = Closing {
            rows: Vec::new(),
            removed: 0,
            distinct_removed: 0,
        };
        if let Some(watermark) = watermark {
            for range in topology.owned() {
                let taken = state.take_closed(
                    self.op,
                    range,
                    watermark,
                    &self.query.window,
                    self.query.aggregates.len(),
                    batch,
                )?;
                closing.removed += taken.rows.len() as u64 + taken.distinct_removed;
                closing.distinct_removed += taken.distinct_removed;
                if self.update_mode() {
                    continue;
                }
                closing.rows.extend(taken.rows);
                for (key, count) in taken.shard_counts {
                    outgoing
                        .add_shard_count(key, count)
                        .context("summing distinct counts of closed windows")?;
                }
            }
        }
        Ok((outgoing.finish(), closing))
    }

    /// Folds what this executor owns after the exchange into `batch`. In append mode the rows
    /// to emit are the closed windows'; in update mode they are the rows the epoch changed,
    /// whose exact distinct counts need the other shards' gains first (`counts`, to exchange).
    pub fn fold(
        &self,
        state: &StateStore,
        closing: Closing,
        owned: Partials,
        topology: &Topology,
        batch: &mut WriteBatch,
        stats: &mut EpochStats,
    ) -> anyhow::Result<Folding> {
        let Closing {
            rows: closed,
            removed,
            distinct_removed,
        } = closing;
        stats.state_rows_removed = removed;
        stats.distinct_entries_removed = distinct_removed;
        let mut owned = owned;
        let arrived = Partials {
            shard_counts: std::mem::take(&mut owned.shard_counts),
            ..Partials::default()
        };
        if !self.update_mode() {
            let folded = state
                .fold(self.op, owned, batch)
                .context("folding partial aggregates into state")?;
            stats.state_rows_updated = folded.rows_written;
            stats.distinct_entries_written = folded.distinct_written;
            let pending = Pending {
                rows: closed,
                counts: arrived,
                write_back: false,
            };
            return Ok(Folding {
                pending,
                counts: None,
            });
        }
        let CountedFold {
            rows,
            gains,
            folded,
        } = state
            .fold_counting(self.op, owned, batch)
            .context("folding partial aggregates into state")?;
        stats.state_rows_updated = folded.rows_written;
        stats.distinct_entries_written = folded.distinct_written;
        let counts = if self.has_exact_distinct() {
            let mut outgoing = ByOwner::new(&topology.owners, topology.peers.len(), self.op);
            for (key, gained) in gains {
                outgoing
                    .add_shard_count(key, gained)
                    .context("routing the distinct values each window gained")?;
            }
            Some(outgoing.finish())
        } else {
            None
        };
        let pending = Pending {
            rows,
            counts: arrived,
            write_back: true,
        };
        Ok(Folding { pending, counts })
    }

    fn has_exact_distinct(&self) -> bool {
        self.query
            .aggregates
            .iter()
            .any(|a| matches!(a.kind, AggKind::CountDistinct))
    }

    /// Adds the distinct counts of the pending rows (those that came with the partials and
    /// those exchanged after folding, `exchanged`), writes the rows back in update mode, and
    /// builds the epoch's output rows.
    pub fn emit(
        &self,
        state: &StateStore,
        pending: Pending,
        exchanged: Partials,
        batch: &mut WriteBatch,
        planned_at: i64,
        stats: &mut EpochStats,
    ) -> anyhow::Result<RecordBatch> {
        let Pending {
            mut rows,
            mut counts,
            write_back,
        } = pending;
        counts.merge(exchanged).context("summing distinct counts")?;
        add_shard_counts(&mut rows, &counts.shard_counts).context("summing distinct counts")?;
        if write_back {
            state
                .write_rows(self.op, &rows, batch)
                .context("writing the epoch's group rows")?;
        }
        let output = output_batch(&self.query, &self.output_schema, &mut rows, planned_at)
            .context("building output rows")?;
        let output = match &self.query.having {
            Some(having) => having_rows(having, output)?,
            None => output,
        };
        stats.windows_emitted = output.num_rows() as u64;
        stats.output_sums = column_sums(&self.query, &output);
        Ok(output)
    }
}

/// The output rows `HAVING` keeps. A row it cannot be evaluated on (a division by zero over
/// an aggregate) is not emitted, and logged: it is a result, not an input record, so it has no
/// dead letter.
fn having_rows(having: &RowStage, output: RecordBatch) -> anyhow::Result<RecordBatch> {
    let staged = having
        .apply(&output)
        .map_err(|e| anyhow::anyhow!("applying HAVING: {e}"))?;
    if let Some((_, reason)) = staged.rejected.first() {
        tracing::warn!(
            rows = staged.rejected.len(),
            %reason,
            "HAVING could not be evaluated on some output rows; they are not emitted"
        );
    }
    Ok(staged.batch)
}
