//! Runs one planned epoch: read the ranges, decode, pre-aggregate, exchange partials with the
//! other executors, fold what this executor owns into state, emit the windows the epoch's
//! watermark closes, stage the output and dead-letter files.

use std::time::Instant;

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::checkpoint::PartitionRange;
use weir_common::decode::JsonDecoder;
use weir_common::job::JobSpec;
use weir_common::output::output_schema;
use weir_proto::control::{EpochStats, ExecuteRequest, Prepared};

use crate::emit::{dead_letter_batch, output_batch};
use crate::exchange::Exchange;
use crate::kafka_reader::{KafkaReader, Record};
use crate::partials::Partials;
use crate::preagg::{PreAggregation, Rejected};
use crate::staging::StagedTable;
use crate::state::{finish_closed_rows, ClosedRow, StateStore};
use crate::topology::Topology;

/// Records decoded together: one arrow-json pass per chunk.
const CHUNK: usize = 8192;

/// Everything an executor needs to run epochs of one job.
pub struct EpochRunner {
    pub executor_id: String,
    job: JobSpec,
    reader: KafkaReader,
    decoder: JsonDecoder,
    state: StateStore,
    output_schema: SchemaRef,
    output: StagedTable,
    dead_letter: Option<StagedTable>,
    exchange: Exchange,
}

/// What an epoch's reading produces before the exchange.
struct Local {
    /// Partials per peer, by the owner of their key groups.
    outgoing: Vec<Partials>,
    /// Closed windows' group rows this executor owns (their distinct counts still to add).
    closed: Vec<ClosedRow>,
    distinct_removed: u64,
    state_batch: WriteBatch,
    rejected: Vec<(Record, String)>,
    stats: EpochStats,
}

/// What an epoch leaves to stage and apply.
struct Computed {
    state_batch: WriteBatch,
    output: RecordBatch,
    dead_letters: RecordBatch,
    distinct_entries: u64,
    stats: EpochStats,
}

impl EpochRunner {
    pub fn new(
        executor_id: String,
        job: JobSpec,
        state_dir: &std::path::Path,
        job_id: &str,
        exchange: Exchange,
    ) -> anyhow::Result<Self> {
        let reader = KafkaReader::new(&job.kafka, job_id).context("creating the Kafka consumer")?;
        let state = StateStore::open(&state_dir.join("rocksdb"), job.key_groups)
            .context("opening the state store")?;
        Ok(Self {
            executor_id,
            decoder: JsonDecoder::new(job.input_schema.clone(), job.max_record_bytes),
            output_schema: output_schema(&job),
            output: StagedTable::new(&job.output.url),
            dead_letter: job.dead_letter.as_ref().map(|d| StagedTable::new(&d.url)),
            reader,
            state,
            exchange,
            job,
        })
    }

    /// Executes an epoch and answers `Prepared` once its files are staged and its state applied.
    pub async fn execute(&mut self, req: ExecuteRequest) -> anyhow::Result<Prepared> {
        let epoch = req.epoch;
        if let Some(last) = self.state.last_epoch()? {
            if last >= epoch {
                anyhow::bail!(
                    "state already holds epoch {last}; epoch {epoch} cannot be applied twice"
                );
            }
        }
        let topology = Topology::from_request(&req, &self.executor_id, self.job.key_groups)
            .context("the epoch's plan")?;
        let mut local = tokio::task::block_in_place(|| self.read(&req, &topology))?;
        let outgoing = std::mem::take(&mut local.outgoing);
        let (owned, exchanged) = self
            .exchange
            .shuffle(epoch, &topology.peers, topology.me, outgoing)
            .await
            .context("exchanging partial aggregates")?;
        local.stats.exchange_ms = exchanged.elapsed.as_millis() as u64;
        local.stats.shuffle_rows_sent = exchanged.rows_sent;
        local.stats.shuffle_rows_received = exchanged.rows_received;
        let computed = tokio::task::block_in_place(|| self.fold_and_emit(&req, local, owned))?;
        let started = Instant::now();
        let output_adds = self
            .output
            .stage(std::slice::from_ref(&computed.output))
            .await
            .context("staging output files")?;
        let dead_letter_adds = match self.dead_letter.as_mut() {
            Some(table) => table
                .stage(std::slice::from_ref(&computed.dead_letters))
                .await
                .context("staging dead-letter files")?,
            None => {
                if computed.dead_letters.num_rows() > 0 {
                    tracing::warn!(
                        epoch,
                        rows = computed.dead_letters.num_rows(),
                        "no dead_letter table configured; rejected records are counted and dropped"
                    );
                }
                Vec::new()
            }
        };
        self.state
            .commit_epoch(epoch, computed.state_batch, computed.distinct_entries)
            .context("applying the epoch to the state store")?;
        let mut stats = computed.stats;
        stats.emit_ms += started.elapsed().as_millis() as u64;
        stats.state_rows = self.state.estimated_rows();
        stats.distinct_state_entries = computed.distinct_entries;
        Ok(Prepared {
            epoch,
            executor_id: self.executor_id.clone(),
            output_adds,
            dead_letter_adds,
            stats: Some(stats),
        })
    }

    /// Reads the planned ranges, pre-aggregates them and takes the windows the epoch's
    /// watermark closes out of the store; splits the partials by owner.
    fn read(&mut self, req: &ExecuteRequest, topology: &Topology) -> anyhow::Result<Local> {
        let mut stats = EpochStats::default();
        let ranges: Vec<PartitionRange> = req
            .ranges
            .iter()
            .map(|r| PartitionRange {
                partition: r.partition,
                start: r.start_offset,
                end: r.end_offset,
            })
            .collect();
        let read_started = Instant::now();
        let mut pre = PreAggregation::new(&self.job, req.watermark_micros, req.planned_at_micros);
        let mut rejected: Vec<(Record, String)> = Vec::new();
        let decoder = &self.decoder;
        let mut aggregate_time = std::time::Duration::ZERO;
        self.reader
            .read(&ranges, CHUNK, |records| {
                let t = Instant::now();
                stats.input_rows += records.len() as u64;
                stats.input_bytes += records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, Vec::len) as u64)
                    .sum::<u64>();
                let payloads: Vec<&[u8]> = records
                    .iter()
                    .map(|r| r.value.as_deref().unwrap_or(&[]))
                    .collect();
                let decoded = decoder.decode(&payloads);
                for (i, reason) in decoded.bad {
                    rejected.push((records[i].clone(), reason));
                }
                let mut base = 0;
                for batch in &decoded.batches {
                    for (row, why) in pre.add_batch(batch) {
                        if let Rejected::Invalid(reason) = why {
                            rejected.push((records[decoded.good[base + row]].clone(), reason));
                        }
                    }
                    base += batch.num_rows();
                }
                aggregate_time += t.elapsed();
            })
            .context("reading the planned Kafka ranges")?;
        stats.read_ms = (read_started.elapsed().saturating_sub(aggregate_time)).as_millis() as u64;
        stats.aggregate_ms = aggregate_time.as_millis() as u64;
        stats.malformed_rows = rejected.len() as u64;
        stats.dead_letter_rows = rejected.len() as u64;
        stats.late_rows = pre.late_rows;
        stats.valid_rows = stats.input_rows - stats.malformed_rows;
        stats.min_event_time_micros = pre.times.min;
        stats.max_event_time_micros = pre.times.max;
        stats.sum_event_time_micros = pre.times.sum;

        // Windows the epoch's watermark closes get no rows in this epoch (they would be late),
        // so what the store holds for them is final: take it out now and send the shard counts
        // along with the partials.
        let mut state_batch = WriteBatch::default();
        let mut partials = pre.partials;
        let mut closed = Vec::new();
        let mut distinct_removed = 0;
        if let Some(watermark) = req.watermark_micros {
            for range in topology.owned() {
                let taken = self.state.take_closed(
                    range,
                    watermark,
                    self.job.aggregates.len(),
                    &mut state_batch,
                )?;
                closed.extend(taken.rows);
                distinct_removed += taken.distinct_removed;
                for (key, count) in taken.shard_counts {
                    partials.add_shard_count(key, count);
                }
            }
        }
        Ok(Local {
            outgoing: partials.split(&topology.owners, topology.peers.len()),
            closed,
            distinct_removed,
            state_batch,
            rejected,
            stats,
        })
    }

    /// Folds what this executor owns into its state and builds the epoch's output rows.
    fn fold_and_emit(
        &mut self,
        req: &ExecuteRequest,
        local: Local,
        mut owned: Partials,
    ) -> anyhow::Result<Computed> {
        let Local {
            mut closed,
            distinct_removed,
            mut state_batch,
            rejected,
            mut stats,
            ..
        } = local;
        let emit_started = Instant::now();
        let shard_counts = std::mem::take(&mut owned.shard_counts);
        let added = self
            .state
            .fold(&owned, &mut state_batch)
            .context("folding partial aggregates into state")?;
        let distinct_entries =
            (self.state.distinct_entries()? + added).saturating_sub(distinct_removed);
        finish_closed_rows(&mut closed, &shard_counts).context("summing distinct counts")?;
        stats.windows_emitted = closed.len() as u64;
        let output = output_batch(
            &self.job,
            &self.output_schema,
            &mut closed,
            req.planned_at_micros,
        )
        .context("building output rows")?;
        let dead_letters = dead_letter_batch(
            &self.job.kafka.topic,
            &rejected,
            req.epoch,
            req.planned_at_micros,
        )
        .context("building dead-letter rows")?;
        stats.emit_ms = emit_started.elapsed().as_millis() as u64;
        Ok(Computed {
            state_batch,
            output,
            dead_letters,
            distinct_entries,
            stats,
        })
    }
}
