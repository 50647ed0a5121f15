//! What a committed epoch did, as Spark's StreamingQueryProgress (`QueryProgress` of the admin
//! API; metrics and the Pushgateway read it too), and as one line on standard output for
//! people watching `weir local`.

use std::collections::BTreeMap;

use weir_common::checkpoint::{CommitRecord, EpochPlan};
use weir_common::query::keygroup::KeyGroups;
use weir_proto::admin::{
    DurationMs, EventTime, ExecutorProgress, PartitionOffsets, QueryOutputProgress, QueryProgress,
    SinkProgress, SourceProgress, StateProgress,
};

use crate::cluster::autoscale::busy_ms;

/// What stays the same for every epoch of this driver's run.
#[derive(Debug, Clone)]
pub struct QueryIdentity {
    pub id: String,
    pub run_id: String,
    pub name: String,
    pub topic: String,
    /// The job's queries and their tables, in the job's order.
    pub queries: Vec<QueryTable>,
}

/// One query of the job and where its rows go.
#[derive(Debug, Clone)]
pub struct QueryTable {
    pub name: String,
    pub output_url: String,
    /// The query keeps each key's first row (a dedup query): its output rows are events, and
    /// the rest of its valid, on-time rows are duplicates.
    pub dedup: bool,
}

/// One committed epoch, with the driver's own timings.
pub struct CommittedEpoch<'a> {
    pub plan: &'a EpochPlan,
    pub record: &'a CommitRecord,
    /// Each query's output table's new version.
    pub versions: &'a [Option<u64>],
    /// Each partition's end offset when the epoch was planned.
    pub latest: &'a BTreeMap<i32, i64>,
    pub triggered_at_micros: i64,
    pub previous_trigger_micros: Option<i64>,
    pub plan_ms: u64,
    /// Writing the decision, the table commits, telling the executors; of which the decision.
    pub commit_ms: u64,
    pub decide_ms: u64,
    pub total_ms: u64,
    pub runs: u32,
}

/// RFC 3339 with milliseconds in UTC, as Spark prints progress times.
pub fn rfc3339(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

fn rate(rows: u64, millis: f64) -> f64 {
    if millis > 0.0 {
        rows as f64 * 1000.0 / millis
    } else {
        0.0
    }
}

pub fn build(query: &QueryIdentity, e: &CommittedEpoch<'_>) -> QueryProgress {
    let s = &e.record.stats;
    let slowest = |f: fn(&weir_common::checkpoint::ExecutorEpochStats) -> u64| {
        e.record.executors.values().map(f).max().unwrap_or(0)
    };
    let since_previous = e
        .previous_trigger_micros
        .map(|p| (e.triggered_at_micros - p) as f64 / 1000.0)
        .unwrap_or(0.0);
    let input_rate = rate(s.input_rows, since_previous);
    let processed_rate = rate(s.input_rows, e.total_ms as f64);
    let partitions: Vec<PartitionOffsets> = e
        .plan
        .ranges
        .iter()
        .map(|r| {
            let latest = e
                .latest
                .get(&r.partition)
                .copied()
                .unwrap_or(r.end)
                .max(r.end);
            PartitionOffsets {
                partition: r.partition,
                start_offset: r.start,
                end_offset: r.end,
                latest_offset: latest,
                lag: latest - r.end,
            }
        })
        .collect();
    let executors: Vec<ExecutorProgress> = e
        .record
        .executors
        .iter()
        .map(|(id, x)| {
            let assigned = e.record.assignment.iter().find(|a| &a.executor_id == id);
            let snapshot = e.record.state.iter().find(|s| &s.executor_id == id);
            let parts = snapshot.map(|s| s.parts()).unwrap_or_default();
            let mut progress = ExecutorProgress {
                executor_id: id.clone(),
                partitions: assigned.map(|a| a.partitions.clone()).unwrap_or_default(),
                key_groups: assigned
                    .map(|a| key_group_ranges(&a.key_groups))
                    .unwrap_or_default(),
                key_group_count: assigned.map_or(0, |a| a.key_groups.count()),
                input_rows: x.input_rows,
                windows_emitted: x.windows_emitted,
                state_rows: x.state_rows,
                state_memory_bytes: x.state_memory_bytes,
                state_disk_bytes: x.state_disk_bytes,
                shuffle_rows_sent: x.shuffle_rows_sent,
                shuffle_rows_received: x.shuffle_rows_received,
                restore_ms: x.restore_ms,
                restored_key_groups: x.restored_key_groups,
                restored_bytes: x.restored_bytes,
                read_ms: x.read_ms,
                aggregate_ms: x.aggregate_ms,
                exchange_ms: x.exchange_ms,
                emit_ms: x.emit_ms,
                checkpoint_ms: x.checkpoint_ms,
                input_bytes: x.input_bytes,
                state_rows_written: x.state_rows_updated,
                snapshot_bytes: snapshot.map_or(0, |s| s.bytes()),
                snapshot_uploaded_bytes: snapshot.map_or(0, |s| s.uploaded_bytes),
                snapshot_base_epoch: parts.base_epoch,
                snapshot_base_bytes: parts.base_bytes,
                snapshot_changelogs: parts.changelogs,
                busy_ms: 0,
                memory_rss_bytes: x.memory_rss_bytes,
                state_ms: x.state_ms,
            };
            // One definition of busy, the autoscaler's.
            progress.busy_ms = busy_ms(&progress);
            progress
        })
        .collect();
    QueryProgress {
        id: query.id.clone(),
        run_id: query.run_id.clone(),
        name: query.name.clone(),
        timestamp: rfc3339(e.triggered_at_micros).unwrap_or_default(),
        batch_id: e.plan.epoch,
        num_input_rows: s.input_rows,
        input_rows_per_second: input_rate,
        processed_rows_per_second: processed_rate,
        duration_ms: Some(DurationMs {
            plan: e.plan_ms,
            restore: slowest(|x| x.restore_ms),
            execute: slowest(|x| x.read_ms + x.aggregate_ms),
            shuffle: slowest(|x| x.exchange_ms),
            prepare: slowest(|x| x.emit_ms + x.checkpoint_ms),
            checkpoint: slowest(|x| x.checkpoint_ms),
            commit: e.commit_ms,
            total: e.total_ms,
            state: slowest(|x| x.state_ms),
            stage: slowest(|x| x.emit_ms.saturating_sub(x.state_ms)),
            decide: e.decide_ms,
        }),
        event_time: Some(EventTime {
            min: s.min_event_time_micros.and_then(rfc3339),
            max: s.max_event_time_micros.and_then(rfc3339),
            avg: s.avg_event_time_micros.and_then(rfc3339),
            watermark: e.plan.watermark_micros.and_then(rfc3339),
        }),
        state: Some(StateProgress {
            num_rows_total: s.state_rows,
            num_rows_updated: s.state_rows_updated,
            num_rows_removed: s.state_rows_removed,
            num_rows_dropped_by_watermark: s.late_rows,
            memory_used_bytes: s.state_memory_bytes,
            disk_bytes: s.state_disk_bytes,
            checkpoint_bytes: s.checkpoint_bytes,
            checkpoint_uploaded_bytes: s.checkpoint_uploaded_bytes,
            distinct_entries_written: s.distinct_entries_written,
            distinct_entries_removed: s.distinct_entries_removed,
        }),
        sources: vec![SourceProgress {
            description: format!("kafka[{}]", query.topic),
            topic: query.topic.clone(),
            num_input_rows: s.input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
        }],
        sink: Some(SinkProgress {
            description: query
                .queries
                .iter()
                .map(|q| format!("delta[{}]", q.output_url))
                .collect::<Vec<_>>()
                .join(", "),
            num_output_rows: s.windows_emitted,
            delta_version: e.versions.first().copied().flatten(),
        }),
        queries: query_outputs(query, e),
        num_malformed_rows: s.malformed_rows,
        num_late_rows: s.late_rows,
        num_dead_letter_rows: s.dead_letter_rows,
        num_lost_offsets: s.lost_offsets,
        runs: e.runs,
        num_key_groups_moved: s.key_groups_moved,
        num_duplicate_rows: match (query.queries.as_slice(), s.queries.as_slice()) {
            ([one], _) if one.dedup => duplicates(s.valid_rows, s.late_rows, s.windows_emitted),
            (tables, figures) => tables
                .iter()
                .zip(figures)
                .filter(|(t, _)| t.dedup)
                .map(|(_, f)| duplicates(s.valid_rows, f.late_rows, f.rows_emitted))
                .sum(),
        },
        num_executors: executors.len() as u32,
        executors,
    }
}

/// A dedup query's duplicates: every valid row it did not find late is kept or a duplicate.
fn duplicates(valid: u64, late: u64, kept: u64) -> u64 {
    valid.saturating_sub(late).saturating_sub(kept)
}

/// Each query's output, when the job has several.
fn query_outputs(query: &QueryIdentity, e: &CommittedEpoch<'_>) -> Vec<QueryOutputProgress> {
    let s = &e.record.stats;
    if query.queries.len() < 2 {
        return Vec::new();
    }
    query
        .queries
        .iter()
        .enumerate()
        .map(|(i, table)| {
            let figures = s.queries.get(i).cloned().unwrap_or_default();
            QueryOutputProgress {
                name: table.name.clone(),
                sink: Some(SinkProgress {
                    description: format!("delta[{}]", table.output_url),
                    num_output_rows: figures.rows_emitted,
                    delta_version: e.versions.get(i).copied().flatten(),
                }),
                num_late_rows: figures.late_rows,
                num_duplicate_rows: match table.dedup {
                    true => duplicates(s.valid_rows, figures.late_rows, figures.rows_emitted),
                    false => 0,
                },
            }
        })
        .collect()
}

/// Bytes in B, KiB, MiB or GiB, for people.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The progress line `weir local` prints per epoch.
pub fn line(p: &QueryProgress) -> String {
    let state = p.state.unwrap_or_default();
    let sink = p.sink.clone().unwrap_or_default();
    let watermark = p
        .event_time
        .as_ref()
        .and_then(|t| t.watermark.clone())
        .unwrap_or_else(|| "-".into());
    let lag: i64 = p.sources.iter().map(|s| s.lag).sum();
    // A dedup query says how many duplicates it dropped.
    let emitted = if p.num_duplicate_rows > 0 {
        format!("duplicates {} | rows emitted", p.num_duplicate_rows)
    } else {
        "rows emitted".to_string()
    };
    let mut line = format!(
        "[{}] epoch {} | input {} rows, {:.0} rows/s | watermark {} | {} {} | late {} | malformed {} | executors {}, shuffled {} rows | checkpoint {} (+{}) | delta version {} | lag {} | {} ms",
        p.name,
        p.batch_id,
        p.num_input_rows,
        p.processed_rows_per_second,
        watermark,
        emitted,
        sink.num_output_rows,
        p.num_late_rows,
        p.num_malformed_rows,
        p.executors.len(),
        p.executors.iter().map(|e| e.shuffle_rows_sent).sum::<u64>(),
        size(state.checkpoint_bytes),
        size(state.checkpoint_uploaded_bytes),
        sink.delta_version
            .map_or_else(|| "-".to_string(), |v| v.to_string()),
        lag,
        p.duration_ms.as_ref().map_or(0, |d| d.total),
    );
    // A job of several queries: what each one emitted.
    for q in &p.queries {
        let sink = q.sink.clone().unwrap_or_default();
        line.push_str(&format!(
            " | {}: rows emitted {}, late {}",
            q.name, sink.num_output_rows, q.num_late_rows
        ));
        if q.num_duplicate_rows > 0 {
            line.push_str(&format!(", duplicates {}", q.num_duplicate_rows));
        }
        if let Some(v) = sink.delta_version {
            line.push_str(&format!(", delta version {v}"));
        }
    }
    if p.num_lost_offsets > 0 {
        line.push_str(&format!(
            " | lost {} offsets no longer retained",
            p.num_lost_offsets
        ));
    }
    if p.num_key_groups_moved > 0 {
        let restored: u64 = p.executors.iter().map(|e| e.restored_bytes).sum();
        line.push_str(&format!(
            " | {} key groups moved, {} of snapshots read",
            p.num_key_groups_moved,
            size(restored)
        ));
    }
    if p.runs > 1 {
        line.push_str(&format!(" | {} runs", p.runs));
    }
    line
}

/// Key groups as the admin API shows them.
pub fn key_group_ranges(groups: &KeyGroups) -> Vec<weir_proto::admin::KeyGroupRange> {
    groups
        .ranges()
        .iter()
        .map(|(start, end)| weir_proto::admin::KeyGroupRange {
            start: *start,
            end: *end,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::checkpoint::{Assignment, EpochStats, ExecutorEpochStats, PartitionRange};

    #[test]
    fn a_committed_epoch_becomes_spark_shaped_progress() {
        let plan = EpochPlan {
            epoch: 4,
            topic: "web-events".into(),
            ranges: vec![
                PartitionRange {
                    partition: 0,
                    start: 100,
                    end: 150,
                },
                PartitionRange {
                    partition: 1,
                    start: 0,
                    end: 50,
                },
            ],
            watermark_micros: Some(1_764_000_000_000_000),
            planned_at_micros: 0,
            assignment: vec![],
            lost: vec![],
            files: vec![],
        };
        let mut executors = BTreeMap::new();
        for (id, read) in [("a", 300), ("b", 500)] {
            executors.insert(
                id.to_string(),
                ExecutorEpochStats {
                    read_ms: read,
                    exchange_ms: 20,
                    ..Default::default()
                },
            );
        }
        let record = CommitRecord {
            epoch: 4,
            stats: EpochStats {
                input_rows: 100,
                windows_emitted: 3,
                late_rows: 2,
                ..Default::default()
            },
            executors,
            assignment: vec![Assignment {
                executor_id: "a".into(),
                partitions: vec![0],
                key_groups: KeyGroups::range(0, 128),
            }],
            ..Default::default()
        };
        let latest = BTreeMap::from([(0, 170), (1, 50)]);
        let query = QueryIdentity {
            id: "job".into(),
            run_id: "run".into(),
            name: "analytics".into(),
            topic: "web-events".into(),
            queries: vec![QueryTable {
                name: "analytics".into(),
                output_url: "file:///t".into(),
                dedup: false,
            }],
        };
        let p = build(
            &query,
            &CommittedEpoch {
                plan: &plan,
                record: &record,
                versions: &[Some(7)],
                latest: &latest,
                triggered_at_micros: 10_000_000,
                previous_trigger_micros: Some(8_000_000),
                plan_ms: 5,
                commit_ms: 40,
                decide_ms: 15,
                total_ms: 1000,
                runs: 1,
            },
        );
        assert_eq!(p.batch_id, 4);
        assert_eq!(p.input_rows_per_second, 50.0);
        assert_eq!(p.processed_rows_per_second, 100.0);
        assert_eq!(p.duration_ms.as_ref().unwrap().execute, 500);
        assert_eq!(p.sources[0].lag, 20);
        assert_eq!(p.sources[0].partitions[0].latest_offset, 170);
        assert_eq!(p.sink.as_ref().unwrap().delta_version, Some(7));
        assert_eq!(p.state.as_ref().unwrap().num_rows_dropped_by_watermark, 2);
        assert_eq!(p.executors[0].key_group_count, 128);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["batchId"], 4);
        assert_eq!(json["numInputRows"], 100);
        assert_eq!(json["durationMs"]["total"], 1000);
        assert_eq!(json["eventTime"]["watermark"], "2025-11-24T16:00:00.000Z");
        assert_eq!(json["sources"][0]["partitions"][0]["lag"], 20);
        assert!(line(&p).starts_with("[analytics] epoch 4 | input 100 rows"));
    }
}
