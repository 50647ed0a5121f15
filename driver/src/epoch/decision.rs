//! The decision of an epoch (docs/architecture.md, One epoch, step 5): from every owner's
//! `Prepared`, the record that makes the epoch's output and state the job's: end offsets, next
//! watermark, the Delta add actions, the state snapshots, and the figures.

use std::collections::BTreeMap;

use anyhow::Context;
use weir_common::checkpoint::{
    Assignment, CommitRecord, EpochPlan, EpochStats, ExecutorEpochStats, StateSnapshot, Totals,
};
use weir_common::now_micros;
use weir_common::query::window::next_watermark;
use weir_proto::control::Prepared;

/// Builds the decision record of `plan` run with `assignment` from the executors' answers;
/// `totals` and `files_through` are those of the previous decision.
pub fn decide(
    plan: &EpochPlan,
    assignment: &[Assignment],
    prepared: Vec<Prepared>,
    watermark_delay_micros: i64,
    totals: &Totals,
    files_through: Option<&str>,
) -> anyhow::Result<CommitRecord> {
    let mut stats = EpochStats::default();
    let mut output_adds = Vec::new();
    let mut more_output_adds: Vec<Vec<String>> = Vec::new();
    let mut dead_letter_adds = Vec::new();
    let mut late_rows_adds = Vec::new();
    let mut event_time_sum = 0.0;
    let mut executors = BTreeMap::new();
    let mut state = Vec::with_capacity(prepared.len());
    for p in prepared {
        let snapshot: StateSnapshot = serde_json::from_str(&p.state_snapshot_json)
            .with_context(|| format!("state snapshot of executor {}", p.executor_id))?;
        output_adds.extend(p.output_adds);
        for (i, more) in p.more_output_adds.into_iter().enumerate() {
            if more_output_adds.len() <= i {
                more_output_adds.resize_with(i + 1, Vec::new);
            }
            more_output_adds[i].extend(more.adds);
        }
        dead_letter_adds.extend(p.dead_letter_adds);
        late_rows_adds.extend(p.late_rows_adds);
        let s = p.stats.unwrap_or_default();
        executors.insert(
            p.executor_id.clone(),
            ExecutorEpochStats {
                input_rows: s.input_rows,
                windows_emitted: s.windows_emitted,
                state_rows: s.state_rows,
                distinct_entries_written: s.distinct_entries_written,
                distinct_entries_removed: s.distinct_entries_removed,
                shuffle_rows_sent: s.shuffle_rows_sent,
                shuffle_rows_received: s.shuffle_rows_received,
                read_ms: s.read_ms,
                aggregate_ms: s.aggregate_ms,
                exchange_ms: s.exchange_ms,
                emit_ms: s.emit_ms,
                checkpoint_ms: s.checkpoint_ms,
                restore_ms: s.restore_ms,
                restored_key_groups: s.restored_key_groups,
                restored_bytes: s.restored_bytes,
                state_rows_updated: s.state_rows_updated,
                state_rows_removed: s.state_rows_removed,
                state_memory_bytes: s.state_memory_bytes,
                state_disk_bytes: s.state_disk_bytes,
                input_bytes: s.input_bytes,
                state_ms: s.state_ms,
                memory_rss_bytes: s.memory_rss_bytes,
                read_ahead_rows: s.read_ahead_rows,
            },
        );
        stats.input_rows += s.input_rows;
        stats.input_bytes += s.input_bytes;
        stats.valid_rows += s.valid_rows;
        stats.late_rows += s.late_rows;
        stats.malformed_rows += s.malformed_rows;
        stats.dead_letter_rows += s.dead_letter_rows;
        stats.windows_emitted += s.windows_emitted;
        stats.state_rows += s.state_rows;
        stats.state_rows_updated += s.state_rows_updated;
        stats.state_rows_removed += s.state_rows_removed;
        stats.state_memory_bytes += s.state_memory_bytes;
        stats.state_disk_bytes += s.state_disk_bytes;
        stats.distinct_entries_written += s.distinct_entries_written;
        stats.distinct_entries_removed += s.distinct_entries_removed;
        for (column, sum) in &s.output_sums {
            *stats.output_sums.entry(column.clone()).or_default() += sum;
        }
        // Per query only when the job has several (one query's are the epoch's).
        if s.queries.len() > 1 {
            if stats.queries.len() < s.queries.len() {
                stats.queries.resize_with(s.queries.len(), Default::default);
            }
            for (into, q) in stats.queries.iter_mut().zip(&s.queries) {
                into.rows_emitted += q.rows_emitted;
                into.late_rows += q.late_rows;
                for (column, sum) in &q.output_sums {
                    *into.output_sums.entry(column.clone()).or_default() += sum;
                }
            }
        }
        stats.checkpoint_bytes += snapshot.bytes();
        stats.checkpoint_uploaded_bytes += snapshot.uploaded_bytes;
        stats.min_event_time_micros = min_opt(stats.min_event_time_micros, s.min_event_time_micros);
        stats.max_event_time_micros = max_opt(stats.max_event_time_micros, s.max_event_time_micros);
        event_time_sum += s.sum_event_time_micros;
        state.push(snapshot);
    }
    stats.lost_offsets = plan
        .lost
        .iter()
        .map(|r| u64::try_from(r.end.saturating_sub(r.start)).unwrap_or(0))
        .fold(0, u64::saturating_add);
    if stats.valid_rows > 0 && stats.min_event_time_micros.is_some() {
        stats.avg_event_time_micros = Some((event_time_sum / stats.valid_rows as f64) as i64);
    }
    state.sort_by(|a, b| a.key_groups.cmp(&b.key_groups));
    let totals = totals.after(&stats);
    Ok(CommitRecord {
        epoch: plan.epoch,
        end_offsets: plan.ranges.iter().map(|r| (r.partition, r.end)).collect(),
        files_through: plan
            .files
            .last()
            .map(|f| f.path.clone())
            .or(files_through.map(String::from)),
        next_watermark_micros: next_watermark(
            plan.watermark_micros,
            stats.max_event_time_micros,
            watermark_delay_micros,
        ),
        output_adds,
        more_output_adds,
        dead_letter_adds,
        late_rows_adds,
        stats,
        executors,
        assignment: assignment.to_vec(),
        state,
        totals,
        decided_at_micros: now_micros(),
    })
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}
