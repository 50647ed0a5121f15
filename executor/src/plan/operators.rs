//! Every query of the job over one read (docs/architecture.md, Plan of operators): each decoded
//! chunk goes to every query's operator, their partials to the owners in one exchange stream,
//! and each phase runs operator by operator, its figures kept per query.

use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::job::JobSpec;
use weir_proto::control::{EpochStats, QueryStats};

use crate::aggregate::partials::{Partials, PlanPartials};
use crate::aggregate::preagg::{EventTimes, Rejected};
use crate::exchange::topology::Topology;
use crate::input::Record;
use crate::plan::{Closing, Operator, Pending, Reading};
use crate::state::StateStore;

/// The job's queries, each an operator with its table, in the job's order (an operator's
/// index is its id in state keys and on the exchange).
pub struct Plan {
    operators: Vec<Operator>,
}

/// One epoch's reading by every operator.
pub struct PlanReading<'a> {
    readings: Vec<Reading<'a>>,
    /// Rows late for every operator.
    late_everywhere: u64,
}

/// What the operators took out of the store under the epoch's watermark.
pub struct PlanClosing(Vec<Closing>);

/// The operators' rows still to emit.
pub struct PlanPending(Vec<Pending>);

impl Plan {
    pub fn new(job: &JobSpec) -> Self {
        let operators = job
            .queries
            .iter()
            .enumerate()
            // The job file allows at most 64 queries: an index fits the tag's six bits.
            .map(|(op, spec)| Operator::new(job, op as u8, spec))
            .collect();
        Self { operators }
    }

    fn indexed(&self) -> impl Iterator<Item = (u8, &Operator)> {
        self.operators.iter().enumerate().map(|(i, o)| (i as u8, o))
    }

    /// Every operator's reading of an epoch under `watermark`, planned at `planned_at`.
    pub fn begin(&self, watermark: Option<i64>, planned_at: i64) -> PlanReading<'_> {
        PlanReading {
            readings: self
                .operators
                .iter()
                .map(|o| o.begin(watermark, planned_at))
                .collect(),
            late_everywhere: 0,
        }
    }

    /// Ends the epoch's reading: what goes to each peer (every operator's partials in one
    /// stream), and what each operator took out of the store. Each query's late rows go to
    /// `stats.queries`.
    pub fn close(
        &self,
        reading: PlanReading<'_>,
        state: &StateStore,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
        stats: &mut EpochStats,
    ) -> anyhow::Result<(Vec<PlanPartials>, PlanClosing)> {
        stats.queries = reading
            .readings
            .iter()
            .map(|r| QueryStats {
                late_rows: r.late_rows(),
                ..QueryStats::default()
            })
            .collect();
        let mut by_operator = Vec::with_capacity(self.operators.len());
        let mut closings = Vec::with_capacity(self.operators.len());
        for (operator, reading) in self.operators.iter().zip(reading.readings) {
            let (out, closing) = operator.close(reading, state, topology, watermark, batch)?;
            by_operator.push(out);
            closings.push(closing);
        }
        let outgoing = PlanPartials::by_peer(by_operator, topology.peers.len());
        Ok((outgoing, PlanClosing(closings)))
    }

    /// Folds what this executor owns after the exchange into `batch`, operator by operator;
    /// answers the rows to emit and, when an operator needs a second round, what goes to each
    /// peer in it.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &self,
        state: &StateStore,
        closing: PlanClosing,
        mut owned: PlanPartials,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
        stats: &mut EpochStats,
    ) -> anyhow::Result<(PlanPending, Option<Vec<PlanPartials>>)> {
        let mut pending = Vec::with_capacity(self.operators.len());
        let mut counts: Vec<Vec<Partials>> = Vec::with_capacity(self.operators.len());
        let mut second_round = false;
        for ((op, operator), closing) in self.indexed().zip(closing.0) {
            let mut own = EpochStats::default();
            let folding = operator.fold(
                state,
                closing,
                owned.take(op),
                topology,
                watermark,
                batch,
                &mut own,
            )?;
            add_state_figures(stats, &own);
            pending.push(folding.pending);
            second_round |= folding.counts.is_some();
            counts.push(folding.counts.unwrap_or_default());
        }
        let counts = second_round.then(|| PlanPartials::by_peer(counts, topology.peers.len()));
        Ok((PlanPending(pending), counts))
    }

    /// Each query's output rows, in the job's order; each one's figures go to
    /// `stats.queries`, their sums to `stats`.
    pub fn emit(
        &self,
        state: &StateStore,
        pending: PlanPending,
        mut exchanged: PlanPartials,
        batch: &mut WriteBatch,
        planned_at: i64,
        stats: &mut EpochStats,
    ) -> anyhow::Result<Vec<RecordBatch>> {
        let mut outputs = Vec::with_capacity(self.operators.len());
        for ((op, operator), pending) in self.indexed().zip(pending.0) {
            let mut own = EpochStats::default();
            let rows = operator.emit(
                state,
                pending,
                exchanged.take(op),
                batch,
                planned_at,
                &mut own,
            )?;
            add_state_figures(stats, &own);
            stats.windows_emitted += own.windows_emitted;
            for (column, sum) in &own.output_sums {
                *stats.output_sums.entry(column.clone()).or_default() += sum;
            }
            if let Some(query) = stats.queries.get_mut(usize::from(op)) {
                query.rows_emitted = own.windows_emitted;
                query.output_sums = own.output_sums;
            }
            outputs.push(rows);
        }
        Ok(outputs)
    }

    /// Starts opening every query's output table ahead of the first epoch that stages rows.
    pub fn open_outputs(&mut self) {
        for operator in &mut self.operators {
            operator.open_output();
        }
    }

    /// Stages each query's rows into its table; answers their add actions, per query.
    pub async fn stage(&mut self, outputs: &[RecordBatch]) -> anyhow::Result<Vec<Vec<String>>> {
        let mut adds = Vec::with_capacity(outputs.len());
        for (operator, rows) in self.operators.iter_mut().zip(outputs) {
            adds.push(operator.stage(rows).await?);
        }
        Ok(adds)
    }
}

/// Adds an operator's state figures to the epoch's.
fn add_state_figures(stats: &mut EpochStats, own: &EpochStats) {
    stats.state_rows_updated += own.state_rows_updated;
    stats.state_rows_removed += own.state_rows_removed;
    stats.distinct_entries_written += own.distinct_entries_written;
    stats.distinct_entries_removed += own.distinct_entries_removed;
}

impl PlanReading<'_> {
    /// Takes a decoded batch in, `record(row)` being the record of each of its rows; answers
    /// the rows to set aside: to the dead letter when an operator finds a row invalid (the
    /// event-time rules are the job's), late when every operator dropped it as late.
    pub fn add_batch<'r>(
        &mut self,
        batch: &RecordBatch,
        record: impl Fn(usize) -> &'r Record + Copy,
    ) -> Vec<(usize, Rejected)> {
        if let [reading] = self.readings.as_mut_slice() {
            let rejected = reading.add_batch(batch, record);
            self.late_everywhere += rejected
                .iter()
                .filter(|(_, why)| matches!(why, Rejected::Late))
                .count() as u64;
            return rejected;
        }
        let mut all: Vec<(usize, Rejected)> = self
            .readings
            .iter_mut()
            .flat_map(|reading| reading.add_batch(batch, record))
            .collect();
        all.sort_by_key(|(row, _)| *row);
        let operators = self.readings.len();
        let mut rejected = Vec::new();
        for group in all.chunk_by(|a, b| a.0 == b.0) {
            let row = group[0].0;
            let invalid = group.iter().find_map(|(_, why)| match why {
                Rejected::Invalid(reason) => Some(reason.clone()),
                Rejected::Late => None,
            });
            match invalid {
                Some(reason) => rejected.push((row, Rejected::Invalid(reason))),
                None if group.len() == operators => {
                    self.late_everywhere += 1;
                    rejected.push((row, Rejected::Late));
                }
                None => {}
            }
        }
        rejected
    }

    /// Event-time figures of the rows taken in (every operator takes the same rows in).
    pub fn times(&self) -> EventTimes {
        self.readings
            .first()
            .map(Reading::times)
            .unwrap_or_default()
    }

    /// Rows late for every operator.
    pub fn late_rows(&self) -> u64 {
        self.late_everywhere
    }
}
