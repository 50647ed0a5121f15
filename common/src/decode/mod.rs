//! JSON records to Arrow: the columns a query reads, with every bad record set aside with its
//! reason and no good record lost. Records of the common shape are read by a projected scanner
//! ([`scan`]); every other record by arrow-json, which decides what is bad.

mod scan;
mod shape;

/// The time form the projected scanner reads, also for tools that measure it beside others.
pub use scan::utc_micros;

use std::borrow::Cow;
use std::ops::Range;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_json::ReaderBuilder;

use scan::Scanner;

/// The outcome of decoding a slice of records.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The good records, in input order.
    pub batches: Vec<RecordBatch>,
    /// Input index of each row of `batches`, in the same order (ascending).
    pub good: Vec<usize>,
    /// Input index and reason of each bad record.
    pub bad: Vec<(usize, String)>,
}

/// Decodes JSON records against the job's input schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// What every record is checked against.
    input: SchemaRef,
    /// The columns built (indices into `input`, in its order) and their schema.
    projection: Vec<usize>,
    schema: SchemaRef,
    scanner: Option<Scanner>,
    max_record_bytes: usize,
}

impl JsonDecoder {
    /// A decoder building every column of `schema`.
    pub fn new(schema: SchemaRef, max_record_bytes: usize) -> Self {
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        Self::projected(schema, &all, max_record_bytes)
    }

    /// A decoder that checks every record against `schema` as [`JsonDecoder::new`]'s does (the
    /// same records are bad, for the same reasons) but builds only the `columns` named (in the
    /// schema's order; names it does not hold are ignored).
    pub fn reading(schema: SchemaRef, columns: &[&str], max_record_bytes: usize) -> Self {
        let projection: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| columns.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        Self::projected(schema, &projection, max_record_bytes)
    }

    fn projected(schema: SchemaRef, projection: &[usize], max_record_bytes: usize) -> Self {
        let built = std::sync::Arc::new(
            schema
                .project(projection)
                .expect("projection indices come from the schema"),
        );
        Self {
            scanner: Scanner::new(&schema, projection),
            input: schema,
            projection: projection.to_vec(),
            schema: built,
            max_record_bytes,
        }
    }

    /// The same decoder reading every record with arrow-json, for comparing the two.
    pub fn without_scanner(mut self) -> Self {
        self.scanner = None;
        self
    }

    /// The schema of the batches decoded: the columns built.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `records` (one JSON object each). Bad records are found by splitting a failing
    /// range in halves, so a batch with a few bad records costs a few extra decodes, not one per row.
    pub fn decode(&self, records: &[&[u8]]) -> Decoded {
        self.decode_within(records, &[])
    }

    /// Decodes `records` as [`Self::decode`] does, reading the ones that lie side by side in one
    /// of `buffers` (with only JSON whitespace between them, as the lines of a fetched file
    /// range do) from the buffer in place instead of copying them together first.
    pub fn decode_within(&self, records: &[&[u8]], buffers: &[&[u8]]) -> Decoded {
        let mut out = Decoded::default();
        let mut candidates = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match self.check_size(r) {
                Ok(()) => candidates.push(i),
                Err(reason) => out.bad.push((i, reason)),
            }
        }
        let (scanned, candidates) = match &self.scanner {
            Some(scanner) => scan_all(scanner, records, candidates),
            None => (None, candidates),
        };
        // What the scanner took is an object of known depth; the rest are checked before
        // arrow-json sees them.
        let mut rest = Vec::with_capacity(candidates.len());
        for i in candidates {
            match Self::check_shape(records[i]) {
                Ok(()) => rest.push(i),
                Err(reason) => out.bad.push((i, reason)),
            }
        }
        let mut slow = Decoded::default();
        for (buffer, run) in runs(records, &rest, buffers) {
            self.decode_range(records, buffer, &rest[run], &mut slow);
        }
        out.bad.append(&mut slow.bad);
        out.bad.sort_by_key(|(i, _)| *i);
        let slow_batches: Vec<RecordBatch> = slow
            .batches
            .iter()
            .filter_map(|b| b.project(&self.projection).ok())
            .collect();
        match scanned {
            Some((batch, good)) if !slow.good.is_empty() => {
                match self.in_order(&batch, &good, &slow_batches, &slow.good) {
                    Ok((batch, good)) => {
                        out.batches.push(batch);
                        out.good = good;
                    }
                    Err(reason) => {
                        // Cannot happen (both sides have the output schema); were it to, no
                        // record may be lost silently.
                        let lost = good.iter().chain(&slow.good);
                        out.bad.extend(lost.map(|&i| (i, reason.clone())));
                        out.bad.sort_by_key(|(i, _)| *i);
                    }
                }
            }
            Some((batch, good)) => {
                out.batches.push(batch);
                out.good = good;
            }
            None => {
                out.batches = slow_batches;
                out.good = slow.good;
            }
        }
        out
    }

    /// The scanned rows and those arrow-json decoded, merged in input order.
    fn in_order(
        &self,
        scanned: &RecordBatch,
        scanned_good: &[usize],
        slow: &[RecordBatch],
        slow_good: &[usize],
    ) -> Result<(RecordBatch, Vec<usize>), String> {
        let slow = arrow::compute::concat_batches(&self.schema, slow).map_err(|e| e.to_string())?;
        let mut picks = Vec::with_capacity(scanned_good.len() + slow_good.len());
        let mut good = Vec::with_capacity(picks.capacity());
        let (mut a, mut b) = (0, 0);
        while a < scanned_good.len() || b < slow_good.len() {
            let take_scanned =
                b == slow_good.len() || (a < scanned_good.len() && scanned_good[a] < slow_good[b]);
            if take_scanned {
                picks.push((0, a));
                good.push(scanned_good[a]);
                a += 1;
            } else {
                picks.push((1, b));
                good.push(slow_good[b]);
                b += 1;
            }
        }
        let batch = arrow::compute::interleave_record_batch(&[scanned, &slow], &picks)
            .map_err(|e| e.to_string())?;
        Ok((batch, good))
    }

    /// The reason a record of `length` bytes is refused when that is more than
    /// `max_record_bytes`.
    pub fn too_large(&self, length: u64) -> String {
        format!(
            "record of {length} bytes exceeds max_record_bytes ({})",
            self.max_record_bytes
        )
    }

    fn check_size(&self, record: &[u8]) -> Result<(), String> {
        if record.len() > self.max_record_bytes {
            return Err(self.too_large(record.len() as u64));
        }
        Ok(())
    }

    /// Refuses a record arrow-json must not be given: one nested too deep for it, an empty
    /// one, or one that is not an object.
    fn check_shape(record: &[u8]) -> Result<(), String> {
        // arrow-json describes a value it cannot take by printing it recursively, so a value
        // nested thousands deep overflows the stack. Counting brackets is cheap (few records
        // have many); only those get the exact, string-aware depth.
        if memchr::memchr2_iter(b'[', b'{', record).count() > MAX_NESTING
            && nesting_depth(record) > MAX_NESTING
        {
            return Err(format!("nested deeper than {MAX_NESTING} levels"));
        }
        match record.iter().find(|b| !b.is_ascii_whitespace()) {
            None => Err("empty record".into()),
            Some(b'{') => Ok(()),
            Some(_) => Err("not a JSON object".into()),
        }
    }

    fn decode_range(
        &self,
        records: &[&[u8]],
        buffer: Option<&[u8]>,
        idx: &[usize],
        out: &mut Decoded,
    ) {
        if idx.is_empty() {
            return;
        }
        match self.try_decode(records, buffer, idx) {
            Ok(batch) => {
                out.good.extend_from_slice(idx);
                out.batches.push(batch);
            }
            Err(reason) if idx.len() == 1 => out.bad.push((idx[0], reason)),
            Err(_) => {
                let (left, right) = idx.split_at(idx.len() / 2);
                self.decode_range(records, buffer, left, out);
                self.decode_range(records, buffer, right, out);
            }
        }
    }

    /// Decodes the records `idx` into one batch: from `buffer` in place when they lie in it side
    /// by side (see [`runs`]), else copied together one per line.
    fn try_decode(
        &self,
        records: &[&[u8]],
        buffer: Option<&[u8]>,
        idx: &[usize],
    ) -> Result<RecordBatch, String> {
        let in_place = buffer.and_then(|b| {
            let first = records[*idx.first()?];
            let last = records[*idx.last()?];
            b.get(offset_in(b, first)?..offset_in(b, last)? + last.len())
        });
        let buf: Cow<'_, [u8]> = match in_place {
            Some(span) => Cow::Borrowed(span),
            None => {
                let mut joined =
                    Vec::with_capacity(idx.iter().map(|&i| records[i].len() + 1).sum());
                for &i in idx {
                    joined.extend_from_slice(records[i]);
                    joined.push(b'\n');
                }
                Cow::Owned(joined)
            }
        };
        let mut decoder = ReaderBuilder::new(self.input.clone())
            .with_batch_size(idx.len() + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let mut offset = 0;
        while offset < buf.len() {
            let read = decoder
                .decode(&buf[offset..])
                .map_err(|e| friendly(&e.to_string()))?;
            if read == 0 {
                return Err("record holds more than one JSON value".into());
            }
            offset += read;
        }
        let batch = decoder
            .flush()
            .map_err(|e| friendly(&e.to_string()))?
            .ok_or_else(|| "no JSON object".to_string())?;
        if batch.num_rows() != idx.len() {
            // One record held several JSON objects.
            return Err("record holds more than one JSON value".into());
        }
        Ok(batch)
    }
}

/// Scans the `candidates` the scanner is sure of into one batch (with their indices); answers
/// it, or None when it took none, and the candidates left to arrow-json.
fn scan_all(
    scanner: &Scanner,
    records: &[&[u8]],
    candidates: Vec<usize>,
) -> (Option<(RecordBatch, Vec<usize>)>, Vec<usize>) {
    let mut rows = scanner.rows(candidates.len());
    let mut scratch = scan::Scratch::default();
    let (mut scanned, mut rest) = (Vec::with_capacity(candidates.len()), Vec::new());
    for i in candidates {
        if scanner.scan(records[i], &mut scratch, &mut rows) {
            scanned.push(i);
        } else {
            rest.push(i);
        }
    }
    if scanned.is_empty() {
        return (None, rest);
    }
    match scanner.finish(rows) {
        Ok(batch) => (Some((batch, scanned)), rest),
        // The builders hold only values of their columns' types; should that ever fail,
        // arrow-json decodes the records instead.
        Err(_) => {
            rest.extend(scanned);
            rest.sort_unstable();
            (None, rest)
        }
    }
}

/// How deep a record's arrays and objects may nest: far beyond any schema weir reads (a map is
/// two levels), far below what overflows a stack.
pub const MAX_NESTING: usize = 64;

/// The deepest nesting of arrays and objects in `json`, brackets inside strings not counted.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Where `record` starts inside `buffer`, when it lies wholly inside it.
fn offset_in(buffer: &[u8], record: &[u8]) -> Option<usize> {
    // Addresses are compared, never dereferenced: a record outside the buffer answers None.
    let start = (record.as_ptr() as usize).checked_sub(buffer.as_ptr() as usize)?;
    (start.checked_add(record.len())? <= buffer.len()).then_some(start)
}

fn is_json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits the candidate records (positions into `candidates`) into runs decoded together:
/// records that follow each other in one of `buffers` with only JSON whitespace between them
/// (so the buffer's bytes from the first to the last are exactly those records) form a run read
/// in place; consecutive records in no buffer form a run copied together.
fn runs<'b>(
    records: &[&[u8]],
    candidates: &[usize],
    buffers: &[&'b [u8]],
) -> Vec<(Option<&'b [u8]>, Range<usize>)> {
    let mut runs: Vec<(Option<&'b [u8]>, Range<usize>)> = Vec::new();
    // Where the previous candidate ended in its buffer.
    let mut previous_end = None;
    for (pos, &i) in candidates.iter().enumerate() {
        let record = records[i];
        let found = buffers
            .iter()
            .find_map(|&b| offset_in(b, record).map(|start| (b, start)));
        let joins = match (runs.last(), found) {
            (Some((Some(run_buffer), _)), Some((buffer, start))) => {
                std::ptr::eq(*run_buffer, buffer)
                    && previous_end.is_some_and(|end| {
                        end <= start && buffer[end..start].iter().all(is_json_whitespace)
                    })
            }
            (Some((None, _)), None) => true,
            _ => false,
        };
        match runs.last_mut() {
            Some((_, run)) if joins => run.end = pos + 1,
            _ => runs.push((found.map(|(b, _)| b), pos..pos + 1)),
        }
        previous_end = found.map(|(_, start)| start + record.len());
    }
    runs
}

/// Rewords arrow's messages into what a user needs to find the record's problem.
fn friendly(message: &str) -> String {
    let trimmed = message
        .trim_start_matches("Json error: ")
        .trim_start_matches("Invalid argument error: ");
    if let Some(rest) = trimmed.strip_prefix("Column '") {
        if let Some((col, tail)) = rest.split_once('\'') {
            if tail.contains("non-nullable") {
                return format!("required field `{col}` is missing or null");
            }
        }
    }
    // A field absent from the record reaches arrow as a null struct child, named in the
    // field's debug form (`Field { "user_id": Utf8 }` or `Field { name: "user_id", .. }`).
    if let Some(rest) =
        trimmed.strip_prefix("Encountered unmasked nulls in non-nullable StructArray child: ")
    {
        if let Some(col) = rest.split('"').nth(1) {
            return format!("required field `{col}` is missing or null");
        }
    }
    trimmed.to_string()
}

/// The reference events' schema, for the decoder's tests.
#[cfg(test)]
fn reference_schema() -> SchemaRef {
    crate::data::schema::build_schema([
        ("event_id", "string not null"),
        ("user_id", "string not null"),
        ("event_type", "string not null"),
        ("page_url", "string"),
        ("timestamp", "timestamp not null"),
        ("properties", "map<string,string>"),
    ])
    .expect("the reference schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schema::build_schema;
    use arrow::array::{Array, StringArray};

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(reference_schema(), 300)
    }

    fn good(i: usize) -> String {
        format!(
            r#"{{"event_id":"e{i}","user_id":"u{i}","event_type":"click","timestamp":"2026-11-24T10:00:0{}Z","properties":{{"k":"v"}}}}"#,
            i % 10
        )
    }

    /// Deep nesting is refused before arrow-json sees it (its error message printed the value
    /// recursively and a record 10 000 deep overflowed an executor's stack); brackets inside
    /// strings do not count, and moderately nested values still decode or fail as before.
    #[test]
    fn records_nested_too_deep_are_set_aside_before_decoding() {
        let deep = |n: usize| {
            format!(
                r#"{{"event_id":"e","user_id":"u","event_type":"c","timestamp":"2026-11-24T10:00:00Z","properties":{{"k":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let in_string = format!(
            r#"{{"event_id":"{}","user_id":"u\"[[","event_type":"c","timestamp":"2026-11-24T10:00:00Z"}}"#,
            "[{".repeat(500)
        );
        let records = [deep(100_000), deep(65), deep(10), in_string, good(1)];
        let decoder = JsonDecoder::new(decoder().schema().clone(), 1 << 20);
        // A thread with a small stack: the check must not recurse either.
        let out = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let bytes: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
                decoder.decode(&bytes)
            })
            .unwrap()
            .join()
            .unwrap();
        let reason = |i: usize| {
            out.bad
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, r)| r.clone())
        };
        assert!(
            reason(0).is_some_and(|r| r.contains("nested deeper")),
            "{:?}",
            out.bad
        );
        assert!(
            reason(1).is_some_and(|r| r.contains("nested deeper")),
            "{:?}",
            out.bad
        );
        // Ten deep is within the limit: refused by the schema (a map of strings), not the check.
        assert!(
            reason(2).is_some_and(|r| !r.contains("nested deeper")),
            "{:?}",
            out.bad
        );
        assert_eq!(out.good, vec![3, 4]);
        assert_eq!(nesting_depth(br#"{"a":"[[[[","b":[{}]}"#), 3);
        assert_eq!(nesting_depth(br#"{"a":"\"[[","b":1}"#), 1);
    }

    #[test]
    fn bad_records_are_set_aside_and_good_ones_kept() {
        let mut records: Vec<String> = (0..20).map(good).collect();
        let bad = [
            (3, "{\"event_id\": \"x\"".to_string()),
            (5, r#"{"event_id":"e","user_id":42,"event_type":"click","timestamp":"2026-11-24T10:00:00Z"}"#.to_string()),
            (7, r#"{"event_id":"e","user_id":"u","timestamp":"2026-11-24T10:00:00Z"}"#.to_string()),
            (9, r#"{"event_id":"e","user_id":null,"event_type":"click","timestamp":"2026-11-24T10:00:00Z"}"#.to_string()),
            (11, r#"{"event_id":"e","user_id":"u","event_type":"click","timestamp":"yesterday"}"#.to_string()),
            (12, "".to_string()),
            (13, "[1,2]".to_string()),
            (14, format!("{}{}", good(1), good(2))),
            (15, format!(r#"{{"event_id":"{}","user_id":"u","event_type":"c","timestamp":"2026-11-24T10:00:00Z"}}"#, "x".repeat(400))),
            (16, "not json at all".to_string()),
        ];
        for (i, text) in &bad {
            records[*i] = text.clone();
        }
        let bytes: Vec<&[u8]> = records.iter().map(|s| s.as_bytes()).collect();
        let out = decoder().decode(&bytes);
        let bad_idx: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            bad_idx,
            bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            "{:?}",
            out.bad
        );
        assert_eq!(out.good.len(), 10);
        let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 10);
        // Rows come back in input order, matched with their indices.
        let ids: Vec<String> = out
            .batches
            .iter()
            .flat_map(|b| {
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                (0..a.len()).map(move |i| a.value(i).to_string())
            })
            .collect();
        let expected: Vec<String> = out.good.iter().map(|i| format!("e{i}")).collect();
        assert_eq!(ids, expected);
        let reason = |i: usize| out.bad.iter().find(|(j, _)| *j == i).unwrap().1.clone();
        assert_eq!(reason(7), "required field `event_type` is missing or null");
        assert_eq!(reason(9), "required field `user_id` is missing or null");
        assert!(reason(15).contains("max_record_bytes"), "{}", reason(15));
        assert!(reason(14).contains("more than one"), "{}", reason(14));
    }

    /// The mixed records of the test above, in one buffer the way a fetched file range holds its
    /// lines (varied line ends, blank lines), plus one record copied out of it (a line joined
    /// across two ranges).
    #[test]
    fn records_read_in_place_decode_as_copies_do() {
        let mut texts: Vec<String> = (0..40).map(good).collect();
        texts[3] = "{\"event_id\": \"x\"".into();
        texts[13] = "[1,2]".into();
        texts[14] = format!("{}{}", good(1), good(2));
        texts[20] = r#"{"event_id":"e","user_id":42,"event_type":"click","timestamp":"2026-11-24T10:00:00Z"}"#.into();
        let mut buffer = String::new();
        let mut spans = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let start = buffer.len();
            buffer.push_str(t);
            spans.push(start..buffer.len());
            buffer.push_str(["\n", "\r\n", "\n \t\n"][i % 3]);
        }
        let outside = texts[30].clone();
        let mut records: Vec<&[u8]> = spans
            .iter()
            .map(|r| &buffer.as_bytes()[r.clone()])
            .collect();
        records[30] = outside.as_bytes();

        let candidates: Vec<usize> = (0..records.len()).filter(|i| *i != 13).collect();
        let found = runs(&records, &candidates, &[buffer.as_bytes()]);
        let in_place: usize = found
            .iter()
            .filter(|(b, _)| b.is_some())
            .map(|(_, r)| r.len())
            .sum();
        // Record 13 (not an object) splits the buffer's records; record 30 is decoded apart.
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(in_place, 38);

        let copied = decoder().decode(&records);
        let read = decoder().decode_within(&records, &[buffer.as_bytes()]);
        assert_eq!(read.good, copied.good);
        assert_eq!(read.bad, copied.bad);
        assert_eq!(
            read.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![3, 13, 14, 20]
        );
        let schema = decoder().schema().clone();
        let concat = |d: &Decoded| arrow::compute::concat_batches(&schema, &d.batches).unwrap();
        assert_eq!(concat(&read), concat(&copied));
        assert_eq!(concat(&read).num_rows(), 36);
    }

    /// Many random mixtures of good and bad records, separators and records copied out of the
    /// buffer: reading in place decodes exactly what copying does.
    #[test]
    fn random_mixtures_decode_in_place_as_copies_do() {
        let pool: Vec<String> = vec![
            good(1),
            good(2),
            good(3),
            "{\"event_id\": \"x\"".into(),
            "[1,2]".into(),
            format!("{}{}", good(4), good(5)),
            r#"{"event_id":"e","user_id":42,"event_type":"click","timestamp":"2026-11-24T10:00:00Z"}"#.into(),
            r#"{"event_id":"e","user_id":"u","timestamp":"2026-11-24T10:00:00Z"}"#.into(),
            "not json".into(),
            r#"{"event_id":"a\nb","user_id":"u","event_type":"c","timestamp":"2026-11-24T10:00:00Z"}"#.into(),
            "  ".to_string() + &good(6),
            "{".into(),
            "}".into(),
            // Without its last brace: the next line "}" would complete it, were the two read
            // together (they must not be: "}" alone is not a record to decode).
            good(7).strip_suffix('}').unwrap().to_string(),
            "}".into(),
        ];
        let separators = ["\n", "\r\n", "\n\n", "\n \t\n"];
        // A fixed linear congruential sequence: the same cases every run.
        let mut state: u64 = 0x5eed;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % n
        };
        let schema = decoder().schema().clone();
        let concat = |d: &Decoded| arrow::compute::concat_batches(&schema, &d.batches).unwrap();
        for case in 0..200 {
            let count = 1 + next(40);
            let texts: Vec<&String> = (0..count).map(|_| &pool[next(pool.len())]).collect();
            let mut buffer = String::new();
            let mut spans = Vec::new();
            for t in &texts {
                let start = buffer.len();
                buffer.push_str(t);
                spans.push(start..buffer.len());
                buffer.push_str(separators[next(separators.len())]);
            }
            let copies: Vec<Option<String>> = texts
                .iter()
                .map(|t| (next(8) == 0).then(|| (*t).clone()))
                .collect();
            let records: Vec<&[u8]> = spans
                .iter()
                .zip(&copies)
                .map(|(span, copy)| match copy {
                    Some(c) => c.as_bytes(),
                    None => &buffer.as_bytes()[span.clone()],
                })
                .collect();
            let copied = decoder().decode(&records);
            let read = decoder().decode_within(&records, &[buffer.as_bytes()]);
            assert_eq!(read.good, copied.good, "case {case}");
            assert_eq!(read.bad, copied.bad, "case {case}");
            assert_eq!(concat(&read), concat(&copied), "case {case}");
        }
    }

    /// Numbers and booleans, in every form around the ones the scanner takes: decoded as
    /// arrow-json decodes them, each record alone and all together.
    #[test]
    fn numbers_decode_as_arrow_json_decodes_them() {
        let schema = build_schema([
            ("id", "string not null"),
            ("n", "long"),
            ("i", "int"),
            ("f", "double"),
            ("b", "boolean"),
        ])
        .unwrap();
        let full = JsonDecoder::new(schema.clone(), 300).without_scanner();
        let scanned = JsonDecoder::new(schema.clone(), 300);
        let numbers = [
            "0",
            "-0",
            "7",
            "-7",
            "01",
            "1.0",
            "1.5",
            "-2.5e3",
            "1e2",
            "1E-2",
            "2.",
            ".5",
            "+1",
            "999999999",
            "1000000000",
            "-999999999",
            "2147483647",
            "2147483648",
            "-2147483649",
            "999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "18446744073709551616",
            "9007199254740993",
            "0.1",
            "0.30000000000000004",
            "1e308",
            "1e309",
            "-1e309",
            "4.9e-324",
            "1e-400",
            "123456789012345678901234567890",
            "0.1000000000000000055511151231257827",
            "-0.0",
            "-0e1",
            "0.0",
            "-1.0",
            "1.5e-7",
            "\"3\"",
            "true",
            "false",
            "null",
            "[1]",
            "{}",
            "NaN",
            "Infinity",
        ];
        let mut records = Vec::new();
        for (k, v) in numbers.iter().enumerate() {
            for field in ["n", "i", "f", "b"] {
                records.push(format!(r#"{{"id":"r{k}{field}","{field}":{v}}}"#));
            }
        }
        records.push(r#"{"id":"all","n":-12,"i":34,"f":5.25,"b":true}"#.into());
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
        let concat = |d: &Decoded| arrow::compute::concat_batches(&schema, &d.batches).unwrap();
        for chunk in refs.chunks(1).chain([&refs[..]]) {
            let (want, got) = (full.decode(chunk), scanned.decode(chunk));
            let text = String::from_utf8_lossy(chunk[0]);
            assert_eq!(got.bad, want.bad, "{text} and after");
            assert_eq!(got.good, want.good, "{text} and after");
            assert_eq!(concat(&got), concat(&want), "{text} and after");
        }
        // The same values in records of one shape, after one that teaches it: read from the
        // shape's cuts, they decode as arrow-json decodes them too.
        let learned = r#"{"id":"all","n":-12,"i":34,"f":5.25,"b":true}"#;
        let mut shaped = vec![learned.to_string()];
        for (k, v) in numbers.iter().enumerate() {
            for j in 0..4 {
                let mut values = ["-12", "34", "5.25", "true"];
                values[j] = v;
                let [n, i, f, b] = values;
                shaped.push(format!(
                    r#"{{"id":"s{k}{j}","n":{n},"i":{i},"f":{f},"b":{b}}}"#
                ));
            }
        }
        let refs: Vec<&[u8]> = shaped.iter().map(|r| r.as_bytes()).collect();
        let (want, got) = (full.decode(&refs), scanned.decode(&refs));
        assert_eq!(got.bad, want.bad);
        assert_eq!(got.good, want.good);
        assert_eq!(concat(&got), concat(&want));
        // The scanner took the plain forms itself (so the comparison compared something).
        let scanner = scan::Scanner::new(&schema, &[0, 1, 2, 3, 4]).expect("plain columns");
        let mut rows = scanner.rows(1);
        assert!(scanner.scan(
            records.last().unwrap().as_bytes(),
            &mut scan::Scratch::default(),
            &mut rows
        ));
    }

    /// The reference query's columns: what the executors build.
    const READ: [&str; 4] = ["event_id", "user_id", "event_type", "timestamp"];

    /// Decodes `records` with the scanner, reading `READ`, and with arrow-json alone, building
    /// every column: the same records must be bad for the same reasons, and the rows the same
    /// in the columns read.
    fn same_as_arrow_json(records: &[&[u8]]) -> Decoded {
        let full = decoder().without_scanner();
        let projected = JsonDecoder::reading(full.schema().clone(), &READ, 300);
        let expected = full.decode(records);
        let actual = projected.decode(records);
        assert_eq!(actual.bad, expected.bad, "{records:?}");
        assert_eq!(actual.good, expected.good, "{records:?}");
        let columns: Vec<usize> = READ
            .iter()
            .map(|c| full.schema().index_of(c).unwrap())
            .collect();
        let want = arrow::compute::concat_batches(full.schema(), &expected.batches)
            .unwrap()
            .project(&columns)
            .unwrap();
        let got = arrow::compute::concat_batches(projected.schema(), &actual.batches).unwrap();
        assert_eq!(got, want, "{records:?}");
        actual
    }

    /// Records of the common shape, and of every shape around it the scanner leaves to
    /// arrow-json (or must refuse as arrow-json does).
    fn corpus() -> Vec<String> {
        let ts = "2026-11-24T10:00:00Z";
        let with = |fields: &str| format!(r#"{{{fields}}}"#);
        let base = |extra: &str| {
            with(&format!(
                r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"{ts}"{extra}"#
            ))
        };
        vec![
            good(1),
            base(""),
            base(r#","page_url":"https:\/\/shop\/p\/1""#),
            base(r#","page_url":"caf\u00e9""#),
            base(r#","page_url":"bad \x escape""#),
            base(r#","page_url":null"#),
            base(r#","page_url":42"#),
            base(r#","properties":{}"#),
            base(r#","properties":null"#),
            base(r#","properties":{"a":"b","c":"d\"q"}"#),
            base(r#","properties":{"a":null}"#),
            base(r#","properties":{"a":1}"#),
            base(r#","properties":["a"]"#),
            base(r#","extra":{"deep":[1,2.5e3,-0,true,false,null,"x",{"y":[]}]}"#),
            base(r#","extra":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]"#),
            base(r#","extra":01"#),
            base(r#","extra":"\ud83d\ude00""#),
            base(r#","extra":1.}"#),
            base(r#","user_id":"again""#),
            with(r#""event_id":"a\\b\/c\n\t","user_id":"u\"","event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            with(r#""event_id":"caf\u00e9","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            base(r#","extra":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]"#),
            base(r#","extra":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":{"l":{"m":{"n":{"o":{"p":{"q":1}}}}}}}}}}}}}}}}}"#),
            base(",\t\"page_url\":\t\"tabbed\""),
            base(","),
            base(r#" , "page_url" : "spaced" "#),
            with(r#""event_id":"e\"q","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            with(r#""event_id":"e","user_id":null,"event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            with(r#""event_id":"e","event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            with(r#""event_id":"e","user_id":7,"event_type":"click","timestamp":"2026-11-24T10:00:00Z""#),
            with(r#""event_id":"é ü 中","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00.123456789Z""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"2026-11-24 10:00:00""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00+02:00""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"2026-02-30T10:00:00Z""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"0001-01-01T00:00:00Z""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":1764000000000000"#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":null"#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"yesterday""#),
            with(r#""Event_id":"e","event_id":"e","user_id":"u","event_type":"c","timestamp":"2026-11-24T10:00:00Z""#),
            // Fields in other orders, an unknown one where a known one was, and one given twice.
            with(r#""timestamp":"2026-11-24T10:00:00Z","event_type":"click","user_id":"u","event_id":"e""#),
            with(r#""user_id":"u","event_id":"e","timestamp":"2026-11-24T10:00:00Z","event_type":"click""#),
            with(r#""evnt_id":"x","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00Z","event_id":"e""#),
            with(r#""event_id":"e","user_id":"u","event_type":"click","timestamp":"2026-11-24T10:00:00Z","event_id":"twice""#),
            format!("{} trailing", base("")),
            format!("{}{}", base(""), base("")),
            format!(" \t{}\r", base("")),
            "{}".into(),
            "{\"event_id\": \"x\"".into(),
            "[1,2]".into(),
            "nul".into(),
            "{\"event_id\":\"a\u{1}b\",\"user_id\":\"u\",\"event_type\":\"c\",\"timestamp\":\"2026-11-24T10:00:00Z\"}".into(),
        ]
    }

    /// The scanner takes the generator's shape of record (so the comparisons below compare
    /// something), and every record of the corpus decodes as arrow-json decodes it, alone and
    /// mixed into batches.
    #[test]
    fn the_scanner_decodes_every_record_as_arrow_json_does() {
        let schema = decoder().schema().clone();
        let projection: Vec<usize> = READ.iter().map(|c| schema.index_of(c).unwrap()).collect();
        let scanner = scan::Scanner::new(&schema, &projection).expect("the reference schema");
        let mut rows = scanner.rows(4);
        assert!(scanner.scan(good(1).as_bytes(), &mut scan::Scratch::default(), &mut rows));
        let corpus = corpus();
        for record in &corpus {
            same_as_arrow_json(&[record.as_bytes()]);
        }
        let all: Vec<&[u8]> = corpus.iter().map(|r| r.as_bytes()).collect();
        let decoded = same_as_arrow_json(&all);
        assert!(
            decoded.good.len() > 10 && decoded.bad.len() > 10,
            "{decoded:?}"
        );
        // Bytes that are not UTF-8, in a string the query reads and in one it does not.
        let mut latin1 = good(2).into_bytes();
        latin1[10] = 0xe9;
        let mut unread = corpus[2].clone().into_bytes();
        let at = unread.len() - 5;
        unread[at] = 0xff;
        same_as_arrow_json(&[&latin1, &unread, good(3).as_bytes()]);
    }

    /// Records of the shapes the scanner learns (keys in one order, strings, numbers and
    /// literals, nested maps and arrays), as a producer writes them.
    fn shaped(i: usize) -> [String; 4] {
        [
            format!(
                r#"{{"event_id":"e{i}","event_type":"click","page_url":"https://shop/p/{i}","properties":{{"browser":"firefox","country":"IN"}},"timestamp":"2026-11-24T10:00:0{}.123456Z","user_id":"user-{i}"}}"#,
                i % 10
            ),
            format!(
                r#"{{ "user_id" : "u{i}", "event_id" : "", "event_type" : "view", "timestamp" : "2026-11-24T10:00:00Z", "tags" : ["a", [], {{"b": ["c"]}}], "properties" : {{}} }}"#
            ),
            format!(
                r#"{{"event_id":"é{i}","user_id":"中","event_type":"x","timestamp":"2026-11-24T10:00:00Z","more":{{"a":{{"b":"c"}}}}}}"#
            ),
            format!(
                r#"{{"event_id":"e{i}","n":{i},"user_id":"u","f":-{i}.5e-3,"event_type":"x","ok":true,"timestamp":"2026-11-24T10:00:00Z","none":null,"page_url":null,"arr":[1, 2.0,{{"k":false}}, -0]}}"#
            ),
        ]
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::fuzzing::config(2_000))]

        /// Records of a learned shape with other strings in its string values, and with bytes
        /// changed, inserted or cut: each decodes as arrow-json decodes it, whether the shape
        /// reads it or not.
        #[test]
        fn records_near_a_learned_shape_decode_as_arrow_json_decodes_them(
            which in 0usize..4,
            edits in proptest::collection::vec(
                (0usize..400, 0usize..5, proptest::prelude::any::<u8>(), "[a-z0-9:. \\\"é\\x01-]{0,10}"),
                1..12,
            )
        ) {
            let punctuation = b"{}[]\",:\\ -0123456789.TZ\x01\x7f\xff\xc3";
            let mut records: Vec<Vec<u8>> = vec![shaped(0)[which].clone().into_bytes()];
            for (i, (at, how, byte, text)) in edits.into_iter().enumerate() {
                let mut r = shaped(i + 1)[which].clone().into_bytes();
                let at = at % (r.len() + 1);
                let byte = if byte % 2 == 0 { punctuation[byte as usize % punctuation.len()] } else { byte };
                match how {
                    0 if at < r.len() => r[at] = byte,
                    1 => r.insert(at, byte),
                    2 => r.truncate(at.max(1)),
                    // Another number or literal: the `at`-th value that is not a string.
                    3 => {
                        let tokens = ["0", "-0", "1.5", "1e9", "01", "1.", "tru", "null", "true",
                            "false", "-", "9223372036854775808", " 1", "1 ", "\"1\"", "1e", "-1E+2"];
                        let starts: Vec<usize> = r.windows(2).enumerate()
                            .filter(|&(k, w)| w == b"\":" && r.get(k + 2) != Some(&b'"'))
                            .map(|(k, _)| k + 2)
                            .collect();
                        if let Some(&start) = starts.get(at % starts.len().max(1)) {
                            let len = r[start..].iter().position(|b| b",]} ".contains(b)).unwrap_or(0);
                            r.splice(start..start + len, tokens[byte as usize % tokens.len()].bytes());
                        }
                    }
                    // Another string in a value: the `at`-th of those following `":"`.
                    _ => {
                        let starts: Vec<usize> = r.windows(3).enumerate()
                            .filter(|(_, w)| w == b"\":\"")
                            .map(|(k, _)| k + 3)
                            .collect();
                        if let Some(&start) = starts.get(at % starts.len().max(1)) {
                            let len = r[start..].iter().position(|&b| b == b'"').unwrap_or(0);
                            r.splice(start..start + len, text.bytes());
                        }
                    }
                }
                records.push(r);
            }
            let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
            same_as_arrow_json(&refs);
        }

        /// Records of the corpus with bytes changed, inserted or cut, alone and in batches of
        /// good ones: the scanner never takes a record arrow-json refuses, nor reads one
        /// otherwise.
        #[test]
        fn mutated_records_decode_as_arrow_json_decodes_them(
            picks in proptest::collection::vec((0usize..64, 0usize..400, 0usize..3, proptest::prelude::any::<u8>()), 1..12)
        ) {
            let corpus = corpus();
            let punctuation = b"{}[]\",:\\ -0123456789.eEtfnul\x01\xff";
            let records: Vec<Vec<u8>> = picks
                .iter()
                .map(|&(which, at, how, byte)| {
                    let mut r = corpus[which % corpus.len()].clone().into_bytes();
                    let at = at % (r.len() + 1);
                    let byte = if byte % 2 == 0 { punctuation[byte as usize % punctuation.len()] } else { byte };
                    match how {
                        0 if at < r.len() => r[at] = byte,
                        1 => r.insert(at, byte),
                        _ => r.truncate(at.max(1)),
                    }
                    r
                })
                .collect();
            let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
            same_as_arrow_json(&refs);
        }
    }
}
