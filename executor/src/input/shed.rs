//! Records read ahead give up their raw bytes once decoded (docs/architecture.md, One epoch):
//! what the next epoch needs of most of them is their decoded columns and their offsets, not
//! the batch bodies their values slice, which are three times the columns' size. A row keeps
//! its raw record only when a rule after decoding may still send it to the dead letter (the
//! record goes there whole), so reading ahead holds an epoch's rows in a third of the memory.

use weir_common::job::JobSpec;
use weir_common::query::window::WindowSpec;

use crate::input::DecodedChunk;
use crate::plan::event_time::EventTimeRules;

/// The rules a decoded row passes through after reading, as far as they may set a row aside:
/// its event time against the range a time may hold, every query's windows and the epoch's
/// plan time.
#[derive(Debug, Clone)]
pub struct Shedding {
    event_time_column: String,
    max_event_time_ahead_micros: i64,
    windows: Vec<WindowSpec>,
}

impl Shedding {
    /// The rules of `job`, or none when a rule after decoding may need the raw record of any
    /// row: the job keeps late rows (the watermark that makes a row late is not known ahead),
    /// a query deduplicates (it keys rows by their records) or has row expressions (which may
    /// refuse any row).
    pub fn for_job(job: &JobSpec) -> Option<Self> {
        if job.late_rows.is_some() {
            return None;
        }
        let windows = job
            .queries
            .iter()
            .map(|q| match q.query.windows() {
                Some(w) if w.rows.is_none() => Some(w.window),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            event_time_column: job.event_time_column.clone(),
            max_event_time_ahead_micros: job.max_event_time_ahead_micros,
            windows,
        })
    }

    /// Drops the key and value of every row of `chunk` that an epoch planned at `planned_at`
    /// or later accepts whatever its watermark: a later plan time only lets more rows in.
    /// Rows that did not decode, and rows whose event time is missing, out of range or too
    /// far ahead of `planned_at`, keep theirs, copied out of the buffers they slice so that
    /// those can go. The chunk records `planned_at`: an epoch planned before it must not
    /// take it.
    pub fn shed(&self, chunk: &mut DecodedChunk, planned_at: i64) {
        // The rules every operator checks a row's event time by (`plan::event_time`).
        let rules = EventTimeRules::of(
            &self.event_time_column,
            self.max_event_time_ahead_micros,
            planned_at,
        );
        let mut keep = vec![true; chunk.chunk.records.len()];
        let mut rows = chunk.decoded.good.iter();
        for batch in &chunk.decoded.batches {
            let times = rules.column(batch).ok();
            for row in 0..batch.num_rows() {
                let Some(&record) = rows.next() else {
                    break;
                };
                let accepted = times
                    .and_then(|times| rules.time(times, row).ok())
                    .is_some_and(|ts| rules.too_far_ahead(ts).is_none() && self.windowed(ts));
                if accepted {
                    keep[record] = false;
                }
            }
        }
        for (record, keep) in chunk.chunk.records.iter_mut().zip(keep) {
            if keep {
                // Already cut to the job's largest record when it was read.
                *record = record.detached(usize::MAX);
            } else {
                record.key = None;
                record.value = None;
            }
        }
        chunk.chunk.buffers.clear();
        chunk.chunk.held = 0;
        chunk.judged_at = Some(planned_at);
    }

    /// Whether every query's windows of event time `ts` lie in the range a time may hold.
    fn windowed(&self, ts: i64) -> bool {
        self.windows.iter().all(|w| w.windows(ts).is_ok())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use weir_common::decode::JsonDecoder;
    use weir_common::job::parse_job;

    use super::*;
    use crate::input::{Chunk, Record};

    /// A window job with a 1 h bound on event times ahead of the plan, and `extra` lines.
    pub(crate) fn job(extra: &str) -> JobSpec {
        let text = format!(
            r#"
name: t
source:
  kafka: {{bootstrap_servers: "b:1", topic: t}}
  schema: {{user_id: string not null, event_type: string, timestamp: timestamp not null}}
query:
  watermark: {{column: timestamp, delay: 10m}}
  window: {{column: timestamp, size: 5m}}
  group_by: [event_type]
  aggregates:
    n: count(*)
    users: count(distinct user_id)
  max_event_time_ahead: 1h
checkpoint_location: /tmp/x
sinks: [{{delta: {{path: /tmp/y}}}}]
{extra}
"#
        );
        parse_job(&text, Path::new("/")).unwrap()
    }

    #[test]
    fn jobs_whose_later_rules_may_need_any_record_shed_nothing() {
        assert!(Shedding::for_job(&job("")).is_some());
        assert!(Shedding::for_job(&job("late_rows: {delta: {path: /tmp/late}}")).is_none());
        let dedup = parse_job(
            r#"
name: t
source:
  kafka: {bootstrap_servers: "b:1", topic: t}
  schema: {event_id: string not null, timestamp: timestamp not null}
query:
  watermark: {column: timestamp, delay: 10m}
  dedup: {key: [event_id], within: 1h}
checkpoint_location: /tmp/x
sinks: [{delta: {path: /tmp/y}}]
"#,
            Path::new("/"),
        )
        .unwrap();
        assert!(Shedding::for_job(&dedup).is_none());
        let text = r#"
name: t
source:
  kafka: {bootstrap_servers: "b:1", topic: t}
  schema: {user_id: string not null, event_type: string, timestamp: timestamp not null}
query:
  watermark: {column: timestamp, delay: 10m}
  sql: |
    SELECT event_type, count(*) AS n FROM source
    WHERE event_type <> 'bot'
    GROUP BY window(timestamp, '5 minutes'), event_type
checkpoint_location: /tmp/x
sinks: [{delta: {path: /tmp/y}}]
"#;
        let sql = parse_job(text, Path::new("/")).unwrap();
        assert!(
            Shedding::for_job(&sql).is_none(),
            "a WHERE may refuse any row"
        );
    }

    /// Rows every later rule accepts give up their bytes; a row that did not decode, and one
    /// whose event time may yet be refused, keep theirs, whole and in a buffer of their own.
    #[test]
    fn only_rows_no_later_rule_can_refuse_give_up_their_bytes() {
        let job = job("");
        let shedding = Shedding::for_job(&job).unwrap();
        let planned_at = 1_764_000_000_000_000; // 2025-11-24T16:00:00Z
        let lines = [
            r#"{"user_id":"a","event_type":"click","timestamp":"2025-11-24T15:59:00Z"}"#,
            "not json",
            // 30 minutes ahead of the plan: accepted by any later plan.
            r#"{"user_id":"b","event_type":"view","timestamp":"2025-11-24T16:30:00Z"}"#,
            // 2 hours ahead: refused now, and maybe not by a later plan.
            r#"{"user_id":"c","event_type":"view","timestamp":"2025-11-24T18:00:00Z"}"#,
            r#"{"user_id":"d","event_type":"view","timestamp":"9999-01-01T00:00:00Z"}"#,
        ];
        let buffer = Bytes::from(lines.join("\n"));
        let mut at = 0;
        let records: Vec<Record> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let value = buffer.slice(at..at + line.len());
                at += line.len() + 1;
                Record {
                    partition: 0,
                    offset: i as i64,
                    key: Some(Bytes::from_static(b"k")),
                    value: Some(value),
                    cut_from: None,
                }
            })
            .collect();
        let chunk = Chunk {
            records,
            buffers: vec![buffer.clone()],
            held: 0,
            end: None,
        };
        let decoder = JsonDecoder::new(job.input_schema.clone(), 1 << 20);
        let mut decoded = DecodedChunk::decode(chunk, &decoder);
        let value_bytes = decoded.value_bytes;
        let before = decoded.memory();
        shedding.shed(&mut decoded, planned_at);

        let kept: Vec<Option<&[u8]>> = decoded
            .chunk
            .records
            .iter()
            .map(|r| r.value.as_deref())
            .collect();
        let line = |i: usize| Some(lines[i].as_bytes());
        assert_eq!(kept, [None, line(1), None, line(3), line(4)]);
        assert!(decoded.chunk.records[1].key.is_some());
        assert!(decoded.chunk.records[0].key.is_none());
        assert!(decoded.chunk.buffers.is_empty());
        assert_eq!(decoded.judged_at, Some(planned_at));
        assert_eq!(decoded.value_bytes, value_bytes, "the input's size stays");
        assert!(decoded.memory() < before);
        // The kept values are copies: the buffer they were read from is held by nothing else.
        assert!(buffer.is_unique());
        // The decoded rows stay as they were: the three that decoded.
        assert_eq!(decoded.decoded.good, [0, 2, 3, 4]);
    }
}
