//! The plan an executor runs each epoch (docs/architecture.md, Plan of operators): the source
//! read and decode stay with the epoch runner, which hands each decoded chunk to the query's
//! stateful operator; the operator routes what it read to its key groups' owners, folds what
//! this executor owns into state, emits its rows and stages them into its table. The runner
//! keeps what every operator shares: the store, restore and rebalance, the exchange, dead
//! letters, the epoch's one state batch and its snapshot.
//!
//! The operators are a window aggregate and a dedup; [`Operator`] hands each phase to the
//! query's own, and [`operators::Plan`] runs the phases of every query of the job.

pub mod dedup;
pub mod event_time;
pub mod operators;
pub mod window_aggregate;

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::job::{JobSpec, Query, QuerySpec};
use weir_proto::control::EpochStats;

use crate::aggregate::partials::Partials;
use crate::aggregate::preagg::{EventTimes, PreAggregation, Rejected};
use crate::exchange::topology::Topology;
use crate::input::Record;
use crate::output::staging::StagedTable;
use crate::state::StateStore;
use dedup::{Dedup, DedupReading};
use window_aggregate::WindowAggregate;

/// The query's stateful operator, with its output table.
pub struct Operator {
    kind: Kind,
    output: StagedTable,
}

enum Kind {
    Window(WindowAggregate),
    Dedup(Dedup),
}

/// An operator's reading of one epoch's rows.
pub enum Reading<'a> {
    Window(PreAggregation<'a>),
    Dedup(DedupReading<'a>),
}

/// What an operator took out of the store under the epoch's watermark.
pub enum Closing {
    Window(window_aggregate::Closing),
    Dedup(dedup::Closing),
}

/// An operator's rows still to emit.
pub enum Pending {
    Window(window_aggregate::Pending),
    Dedup(dedup::Pending),
}

/// What folding leaves: the rows to emit and, for a window aggregate in update mode with exact
/// distinct aggregates, counts to exchange before emitting.
pub struct Folding {
    pub pending: Pending,
    pub counts: Option<Vec<Partials>>,
}

/// A phase handed the state of another operator's phase: a bug, reported rather than a panic.
fn mismatch(phase: &str) -> anyhow::Error {
    anyhow::anyhow!("the {phase} of one operator was handed another operator's state")
}

impl Operator {
    /// The operator of query `op` of `job`.
    pub fn new(job: &JobSpec, op: u8, spec: &QuerySpec) -> Self {
        let kind = match &spec.query {
            Query::Window(query) => Kind::Window(WindowAggregate::new(op, job, query)),
            Query::Dedup(query) => Kind::Dedup(Dedup::new(op, job, query)),
        };
        Self {
            kind,
            output: StagedTable::new(&spec.output.url, &job.storage_options),
        }
    }

    /// The reading of an epoch under `watermark`, planned at `planned_at`: the runner hands
    /// it each decoded chunk.
    pub fn begin(&self, watermark: Option<i64>, planned_at: i64) -> Reading<'_> {
        match &self.kind {
            Kind::Window(op) => Reading::Window(op.begin(watermark, planned_at)),
            Kind::Dedup(op) => Reading::Dedup(op.begin(watermark, planned_at)),
        }
    }

    /// Ends the epoch's reading: what goes to each peer, and what the watermark takes out of
    /// the key groups this executor owns.
    pub fn close(
        &self,
        reading: Reading<'_>,
        state: &StateStore,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
    ) -> anyhow::Result<(Vec<Partials>, Closing)> {
        match (&self.kind, reading) {
            (Kind::Window(op), Reading::Window(pre)) => {
                let (out, closing) = op.close(pre, state, topology, watermark, batch)?;
                Ok((out, Closing::Window(closing)))
            }
            (Kind::Dedup(op), Reading::Dedup(reading)) => {
                let (out, closing) = op.close(reading, state, topology, watermark, batch)?;
                Ok((out, Closing::Dedup(closing)))
            }
            _ => Err(mismatch("close")),
        }
    }

    /// Folds what this executor owns after the exchange into `batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &self,
        state: &StateStore,
        closing: Closing,
        owned: Partials,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
        stats: &mut EpochStats,
    ) -> anyhow::Result<Folding> {
        match (&self.kind, closing) {
            (Kind::Window(op), Closing::Window(closing)) => {
                let folding = op.fold(state, closing, owned, topology, batch, stats)?;
                Ok(Folding {
                    pending: Pending::Window(folding.pending),
                    counts: folding.counts,
                })
            }
            (Kind::Dedup(op), Closing::Dedup(closing)) => {
                let pending = op.fold(state, closing, owned, watermark, batch, stats)?;
                Ok(Folding {
                    pending: Pending::Dedup(pending),
                    counts: None,
                })
            }
            _ => Err(mismatch("fold")),
        }
    }

    /// The epoch's output rows, once what the second exchange round brought (`exchanged`) is in.
    pub fn emit(
        &self,
        state: &StateStore,
        pending: Pending,
        exchanged: Partials,
        batch: &mut WriteBatch,
        planned_at: i64,
        stats: &mut EpochStats,
    ) -> anyhow::Result<RecordBatch> {
        match (&self.kind, pending) {
            (Kind::Window(op), Pending::Window(pending)) => {
                op.emit(state, pending, exchanged, batch, planned_at, stats)
            }
            (Kind::Dedup(op), Pending::Dedup(pending)) => op.emit(pending, stats),
            _ => Err(mismatch("emit")),
        }
    }

    /// Starts opening the output table ahead of the first epoch that stages rows.
    pub fn open_output(&mut self) {
        self.output.open_in_background();
    }

    /// Stages the epoch's rows into the output table; answers their add actions.
    pub async fn stage(&mut self, rows: &RecordBatch) -> anyhow::Result<Vec<String>> {
        self.output
            .stage(std::slice::from_ref(rows))
            .await
            .context("staging output files")
    }
}

impl Reading<'_> {
    /// Takes a decoded batch in, `record(row)` being the record of each of its rows; returns
    /// the rows it rejected, by row index.
    pub fn add_batch<'r>(
        &mut self,
        batch: &RecordBatch,
        record: impl Fn(usize) -> &'r Record,
    ) -> Vec<(usize, Rejected)> {
        match self {
            Reading::Window(pre) => pre.add_batch(batch),
            Reading::Dedup(reading) => reading.add_batch(batch, record),
        }
    }

    /// Event-time figures of the rows taken in.
    pub fn times(&self) -> EventTimes {
        match self {
            Reading::Window(pre) => pre.times,
            Reading::Dedup(reading) => reading.times,
        }
    }

    /// Rows dropped as late.
    pub fn late_rows(&self) -> u64 {
        match self {
            Reading::Window(pre) => pre.late_rows,
            Reading::Dedup(reading) => reading.late_rows,
        }
    }
}
