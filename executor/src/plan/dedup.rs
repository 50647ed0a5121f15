//! The dedup operator: the raw events themselves, each key's first arrival only, following
//! Spark's `dropDuplicatesWithinWatermark`. A row at or before the watermark is late; a key is
//! remembered until the watermark reaches its first event time plus `within`, and a row whose
//! key is remembered is a duplicate. Each reader keeps the first row of a key it reads and
//! sends it to the key's owner, which keeps the first of those (in source order, so a re-run
//! keeps the same one), asks its store, remembers the new keys and emits their rows.

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use rocksdb::WriteBatch;
use weir_common::data::output::output_schema;
use weir_common::data::value::{encode_group_key_into, ColumnReader, Scalar};
use weir_common::decode::JsonDecoder;
use weir_common::job::{DedupQuery, JobSpec, Query};
use weir_proto::control::EpochStats;

use crate::aggregate::partials::{ByOwner, FirstRow, Partials};
use crate::aggregate::preagg::{EventTimes, Rejected};
use crate::exchange::topology::Topology;
use crate::input::Record;
use crate::plan::event_time::EventTimeRules;
use crate::state::StateStore;

/// The dedup query and the table its rows go to.
pub struct Dedup {
    /// Its index in the plan: its state keys carry it.
    op: u8,
    job: JobSpec,
    query: DedupQuery,
    /// Decodes the rows kept (they travel as the records read).
    decoder: JsonDecoder,
    output_schema: SchemaRef,
}

/// One epoch's reading: the first row of each key among those this executor read.
pub struct DedupReading<'a> {
    query: &'a DedupQuery,
    watermark: Option<i64>,
    event_time: EventTimeRules<'a>,
    firsts: Partials,
    pub times: EventTimes,
    pub late_rows: u64,
}

/// Keys forgotten when the epoch's watermark reached their expiry.
pub struct Closing {
    expired: u64,
}

/// The rows an epoch emits: the first of each key the store did not remember.
pub struct Pending {
    rows: Vec<FirstRow>,
}

impl Dedup {
    pub fn new(op: u8, job: &JobSpec, query: &DedupQuery) -> Self {
        Self {
            op,
            decoder: JsonDecoder::new(job.input_schema.clone(), job.max_record_bytes),
            output_schema: output_schema(&Query::Dedup(query.clone()), &job.input_schema),
            query: query.clone(),
            job: job.clone(),
        }
    }

    pub fn begin(&self, watermark: Option<i64>, planned_at: i64) -> DedupReading<'_> {
        DedupReading {
            query: &self.query,
            watermark,
            event_time: EventTimeRules::new(&self.job, planned_at),
            firsts: Partials::default(),
            times: EventTimes::default(),
            late_rows: 0,
        }
    }

    /// Ends the epoch's reading: sends each key's first row to the key's owner, and forgets
    /// the keys of this executor's key groups that expire under `watermark`.
    pub fn close(
        &self,
        reading: DedupReading<'_>,
        state: &StateStore,
        topology: &Topology,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
    ) -> anyhow::Result<(Vec<Partials>, Closing)> {
        let mut outgoing = ByOwner::new(&topology.owners, topology.peers.len(), self.op);
        for (key, row) in reading.firsts.firsts {
            outgoing.add_first(key, row);
        }
        let mut expired = 0;
        if let Some(watermark) = watermark {
            for range in topology.owned() {
                expired += state
                    .take_expired(self.op, range, watermark, batch)
                    .context("forgetting expired dedup keys")?;
            }
        }
        Ok((outgoing.finish(), Closing { expired }))
    }

    /// Keeps, of the rows this executor owns after the exchange, those whose key the store
    /// does not remember, and remembers their keys in `batch`.
    pub fn fold(
        &self,
        state: &StateStore,
        closing: Closing,
        owned: Partials,
        watermark: Option<i64>,
        batch: &mut WriteBatch,
        stats: &mut EpochStats,
    ) -> anyhow::Result<Pending> {
        stats.state_rows_removed = closing.expired;
        let mut arrived: Vec<(Vec<u8>, FirstRow)> = owned.firsts.into_iter().collect();
        // Source order: the rows are emitted, and their keys remembered, the same way
        // whichever run computes the epoch.
        arrived.sort_by(|a, b| a.1.position.cmp(&b.1.position).then(a.0.cmp(&b.0)));
        let keys: Vec<&[u8]> = arrived.iter().map(|(k, _)| k.as_slice()).collect();
        let remembered = state
            .remembered(self.op, &keys, watermark.unwrap_or(i64::MIN))
            .context("looking up dedup keys")?;
        let mut rows = Vec::new();
        for ((key, row), known) in arrived.into_iter().zip(remembered) {
            if known {
                continue;
            }
            state.remember(
                self.op,
                &key,
                row.event_time.saturating_add(self.query.within_micros),
                batch,
            );
            rows.push(row);
        }
        stats.state_rows_updated = rows.len() as u64;
        Ok(Pending { rows })
    }

    /// The epoch's output rows: the kept records, decoded as they were when read.
    pub fn emit(&self, pending: Pending, stats: &mut EpochStats) -> anyhow::Result<RecordBatch> {
        let records: Vec<&[u8]> = pending.rows.iter().map(|r| r.record.as_slice()).collect();
        let decoded = self.decoder.decode(&records);
        if let Some((i, reason)) = decoded.bad.first() {
            anyhow::bail!("a kept row no longer decodes (record {i}): {reason}");
        }
        let decoded = arrow::compute::concat_batches(self.decoder.schema(), &decoded.batches)
            .context("building output rows")?;
        // The table's layout of a few types (maps) differs from the decoder's in names only.
        let columns = decoded
            .columns()
            .iter()
            .zip(self.output_schema.fields())
            .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .context("building output rows")?;
        let output = RecordBatch::try_new(self.output_schema.clone(), columns)
            .context("building output rows")?;
        stats.windows_emitted = output.num_rows() as u64;
        Ok(output)
    }
}

impl DedupReading<'_> {
    /// Takes a decoded batch in, `record(row)` being the record of each of its rows; returns
    /// the rows it rejected, by row index. Of the rows of one key, the first read is kept.
    pub fn add_batch<'r>(
        &mut self,
        batch: &RecordBatch,
        record: impl Fn(usize) -> &'r Record,
    ) -> Vec<(usize, Rejected)> {
        let mut rejected = Vec::new();
        let times = match self.event_time.column(batch) {
            Ok(times) => times,
            Err(all_rejected) => return all_rejected,
        };
        let key_columns: Vec<Option<ColumnReader<'_>>> = self
            .query
            .key
            .iter()
            .map(|k| batch.column_by_name(k).and_then(ColumnReader::new))
            .collect();
        let mut values = Vec::with_capacity(key_columns.len());
        let mut key = Vec::new();
        for row in 0..batch.num_rows() {
            let checked = self
                .event_time
                .time(times, row)
                .and_then(|ts| self.event_time.too_far_ahead(ts).map_or(Ok(ts), Err));
            let ts = match checked {
                Ok(ts) => ts,
                Err(why) => {
                    rejected.push((row, why));
                    continue;
                }
            };
            self.times.add(ts);
            // Spark drops a row at or before the watermark as late.
            if self.watermark.is_some_and(|w| ts <= w) {
                self.late_rows += 1;
                rejected.push((row, Rejected::Late));
                continue;
            }
            values.clear();
            values.extend(
                key_columns
                    .iter()
                    .map(|c| c.as_ref().map_or(Scalar::Null, |c| c.get(row))),
            );
            encode_group_key_into(&values, &mut key);
            let r = record(row);
            let position = (r.partition, r.offset);
            if let Some(kept) = self.firsts.firsts.get(&key) {
                if kept.position <= position {
                    continue;
                }
            }
            let first = FirstRow {
                event_time: ts,
                position,
                record: r.payload().to_vec(),
            };
            self.firsts.add_first(key.clone(), first);
        }
        rejected
    }
}
