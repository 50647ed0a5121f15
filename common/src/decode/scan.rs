//! A projected scanner for the common record: one JSON object of the schema's fields with plain
//! values. It builds only the columns a query reads and checks the others' values without
//! building them. Anything it is not sure of (an escape in a string it reads, a key given
//! twice, a missing required field, a value of another shape, a time in another format) it
//! leaves to arrow-json, which decodes that record as it always did. A record's fate is so
//! always arrow-json's: this takes only records arrow-json takes, with the values it gives.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::schema::string_map_type;

/// What a column holds, as far as the scanner is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Timestamp,
    Int64,
    Int32,
    Float64,
    Bool,
    /// `map<string,string>`: checked, never built (the scanner steps aside when one is read).
    StringMap,
}

#[derive(Debug, Clone)]
struct Column {
    name: Box<[u8]>,
    kind: Kind,
    required: bool,
    /// Its place among the columns built, when it is read.
    out: Option<usize>,
}

/// A column's value in the record being scanned.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Absent,
    Null,
    /// A string without escapes: its bytes' range in the record.
    Span(u32, u32),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(i64),
    /// Present and of the right shape, not built.
    Checked,
}

/// The scanner of one schema and projection.
#[derive(Debug, Clone)]
pub(super) struct Scanner {
    columns: Vec<Column>,
    output: SchemaRef,
}

/// The rows scanned so far, one builder per column read.
pub(super) struct Rows {
    builders: Vec<Builder>,
}

enum Builder {
    Str(StringBuilder),
    Time(TimestampMicrosecondBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
}

/// How deep an unknown field's value may nest for the scanner (deeper ones go to arrow-json,
/// which the decoder's own depth check guards).
const MAX_DEPTH: usize = 16;

impl Scanner {
    /// The scanner for `schema` building the columns `projection` (indices in schema order), or
    /// None when a column is of a type it does not handle.
    pub(super) fn new(schema: &Schema, projection: &[usize]) -> Option<Self> {
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            let kind = match field.data_type() {
                DataType::Utf8 => Kind::Str,
                DataType::Timestamp(TimeUnit::Microsecond, _) => Kind::Timestamp,
                DataType::Int64 => Kind::Int64,
                DataType::Int32 => Kind::Int32,
                DataType::Float64 => Kind::Float64,
                DataType::Boolean => Kind::Bool,
                t if *t == string_map_type() => Kind::StringMap,
                _ => return None,
            };
            let out = projection.iter().position(|&p| p == i);
            if out.is_some() && kind == Kind::StringMap {
                return None;
            }
            columns.push(Column {
                name: field.name().as_bytes().into(),
                kind,
                required: !field.is_nullable(),
                out,
            });
        }
        Some(Self {
            columns,
            output: Arc::new(schema.project(projection).ok()?),
        })
    }

    /// Empty builders for about `capacity` rows.
    pub(super) fn rows(&self, capacity: usize) -> Rows {
        let mut read: Vec<&Column> = self.columns.iter().filter(|c| c.out.is_some()).collect();
        read.sort_by_key(|c| c.out);
        let builders = read
            .iter()
            .map(|c| match c.kind {
                Kind::Str => Builder::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
                Kind::Timestamp => Builder::Time(
                    TimestampMicrosecondBuilder::with_capacity(capacity)
                        .with_timezone(crate::schema::UTC),
                ),
                Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
                Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
                Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
                Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
                Kind::StringMap => unreachable!("a read map turns the scanner off"),
            })
            .collect();
        Rows { builders }
    }

    /// Scans `record` and adds it to `rows` when it is one the scanner is sure of; answers
    /// whether it did. `values` is scratch space, reused between records.
    pub(super) fn scan(&self, record: &[u8], values: &mut Vec<Value>, rows: &mut Rows) -> bool {
        // arrow-json refuses text that is not UTF-8; checking it here once lets the strings
        // read be sliced out of the record as they are.
        let Ok(text) = std::str::from_utf8(record) else {
            return false;
        };
        values.clear();
        values.resize(self.columns.len(), Value::Absent);
        if !self.fields(record, values) {
            return false;
        }
        let complete = self
            .columns
            .iter()
            .zip(values.iter())
            .all(|(c, v)| !c.required || !matches!(v, Value::Absent | Value::Null));
        if !complete {
            return false;
        }
        for (column, value) in self.columns.iter().zip(values.iter()) {
            if let Some(out) = column.out {
                rows.builders[out].append(text, *value);
            }
        }
        true
    }

    /// Reads the record's object into `values`; false when it is not one the scanner takes.
    fn fields(&self, record: &[u8], values: &mut [Value]) -> bool {
        let mut c = Cursor { b: record, i: 0 };
        let mut next = 0;
        c.ws();
        if !c.eat(b'{') {
            return false;
        }
        c.ws();
        if !c.eat(b'}') {
            loop {
                c.ws();
                if !c.eat(b'"') {
                    return false;
                }
                let Some((start, end)) = c.plain_string() else {
                    return false;
                };
                c.ws();
                if !c.eat(b':') {
                    return false;
                }
                c.ws();
                let key = &record[start..end];
                // Producers write their keys in one order: the column after the last one
                // found is tried first.
                let found = match self.columns.get(next) {
                    Some(col) if *col.name == *key => Some(next),
                    _ => self.columns.iter().position(|col| *col.name == *key),
                };
                if let Some(i) = found {
                    next = i + 1;
                }
                match found {
                    Some(i) => {
                        if !matches!(values[i], Value::Absent) {
                            return false;
                        }
                        match self.value(&mut c, &self.columns[i]) {
                            Some(v) => values[i] = v,
                            None => return false,
                        }
                    }
                    // arrow-json skips fields the schema does not name.
                    None => {
                        if c.skip_value(0).is_none() {
                            return false;
                        }
                    }
                }
                c.ws();
                if c.eat(b',') {
                    continue;
                }
                if c.eat(b'}') {
                    break;
                }
                return false;
            }
        }
        c.ws();
        c.i == record.len()
    }

    fn value(&self, c: &mut Cursor<'_>, column: &Column) -> Option<Value> {
        if c.peek() == Some(b'n') {
            return c.literal(b"null").then_some(Value::Null);
        }
        match column.kind {
            Kind::Str => {
                c.expect(b'"')?;
                if column.out.is_some() {
                    let (start, end) = c.plain_string()?;
                    Some(Value::Span(start as u32, end as u32))
                } else {
                    c.skip_string()?;
                    Some(Value::Checked)
                }
            }
            // A time is parsed whether it is read or not: one arrow-json cannot parse makes
            // the record bad.
            Kind::Timestamp => {
                c.expect(b'"')?;
                let (start, end) = c.plain_string()?;
                utc_micros(&c.b[start..end]).map(Value::Time)
            }
            Kind::Int64 => c.integer(18).map(Value::Int),
            Kind::Int32 => c.integer(9).map(Value::Int),
            Kind::Float64 => {
                let (start, end) = c.number()?;
                // Long texts and huge exponents are arrow-json's to judge.
                if end - start > 24 {
                    return None;
                }
                let v: f64 = std::str::from_utf8(&c.b[start..end]).ok()?.parse().ok()?;
                v.is_finite().then_some(Value::Float(v))
            }
            Kind::Bool => {
                if c.literal(b"true") {
                    Some(Value::Bool(true))
                } else if c.literal(b"false") {
                    Some(Value::Bool(false))
                } else {
                    None
                }
            }
            Kind::StringMap => {
                c.expect(b'{')?;
                c.ws();
                if c.eat(b'}') {
                    return Some(Value::Checked);
                }
                loop {
                    c.ws();
                    c.expect(b'"')?;
                    c.skip_string()?;
                    c.ws();
                    c.expect(b':')?;
                    c.ws();
                    c.expect(b'"')?;
                    c.skip_string()?;
                    c.ws();
                    if c.eat(b',') {
                        continue;
                    }
                    c.expect(b'}')?;
                    return Some(Value::Checked);
                }
            }
        }
    }

    /// The batch of the rows scanned.
    pub(super) fn finish(&self, rows: Rows) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = rows
            .builders
            .into_iter()
            .map(|b| match b {
                Builder::Str(mut b) => Arc::new(b.finish()) as ArrayRef,
                Builder::Time(mut b) => Arc::new(b.finish()),
                Builder::Int64(mut b) => Arc::new(b.finish()),
                Builder::Int32(mut b) => Arc::new(b.finish()),
                Builder::Float64(mut b) => Arc::new(b.finish()),
                Builder::Bool(mut b) => Arc::new(b.finish()),
            })
            .collect();
        RecordBatch::try_new(self.output.clone(), columns)
    }
}

impl Builder {
    fn append(&mut self, text: &str, value: Value) {
        match (self, value) {
            (Builder::Str(b), Value::Span(start, end)) => {
                b.append_value(&text[start as usize..end as usize])
            }
            (Builder::Time(b), Value::Time(t)) => b.append_value(t),
            (Builder::Int64(b), Value::Int(v)) => b.append_value(v),
            (Builder::Int32(b), Value::Int(v)) => b.append_value(v as i32),
            (Builder::Float64(b), Value::Float(v)) => b.append_value(v),
            (Builder::Bool(b), Value::Bool(v)) => b.append_value(v),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::Time(b), _) => b.append_null(),
            (Builder::Int64(b), _) => b.append_null(),
            (Builder::Int32(b), _) => b.append_null(),
            (Builder::Float64(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
        }
    }
}

/// A position in a record.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.i += usize::from(found);
        found
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.b[self.i..].starts_with(word);
        if found {
            self.i += word.len();
        }
        found
    }

    /// After an opening quote: a string without escapes or control characters, as the range
    /// of its contents.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        let end = start + memchr::memchr(b'"', &self.b[start..])?;
        if !plain(&self.b[start..end]) {
            return None;
        }
        self.i = end + 1;
        Some((start, end))
    }

    /// After an opening quote: steps over a string whose escapes are the one-letter ones
    /// (`\u` escapes are arrow-json's to judge).
    fn skip_string(&mut self) -> Option<()> {
        // Most strings have no escape: one search for the quote and one pass over the bytes.
        if self.plain_string().is_some() {
            return Some(());
        }
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', &self.b[self.i..])?;
            if self.b[self.i..at].iter().any(|&c| c < 0x20) {
                return None;
            }
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(());
            }
            match self.b.get(at + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i = at + 2,
                _ => return None,
            }
        }
    }

    /// A JSON number: its text's range.
    fn number(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        Some((start, self.i))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// An integer of at most `max_digits` digits, written as JSON writes integers.
    fn integer(&mut self, max_digits: usize) -> Option<i64> {
        let (start, end) = self.number()?;
        let text = &self.b[start..end];
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        if digits.is_empty() || digits.len() > max_digits || !digits.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }

    /// Steps over any JSON value the scanner is sure arrow-json takes.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_string()
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.eat(b'}') {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.expect(b'"')?;
                    self.skip_string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    return self.expect(b'}');
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']') {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    return self.expect(b']');
                }
            }
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            _ => None,
        }
    }
}

/// Whether `bytes` (a string's contents up to its closing quote) hold no backslash and no
/// control character. Written as a fold over every byte, without an early exit, so that it
/// compiles to vector instructions: a string is short, and one pass beats a branch per byte.
fn plain(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |bad, &c| {
        bad | u8::from(c < 0x20) | u8::from(c == b'\\')
    }) == 0
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as microseconds since the epoch (a fraction past the
/// microsecond cut off, as arrow's parser does); None for any other form, or a date or time
/// that does not exist.
pub(super) fn utc_micros(t: &[u8]) -> Option<i64> {
    if t.len() < 20 || t[4] != b'-' || t[7] != b'-' || t[10] != b'T' || t[13] != b':' {
        return None;
    }
    if t[16] != b':' || t[t.len() - 1] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        t[range].iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1000..=9999).contains(&year) || !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    if day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let fraction = &t[19..t.len() - 1];
    let micros = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut micros = 0;
            for i in 0..6 {
                let d = match digits.get(i) {
                    Some(d) if d.is_ascii_digit() => i64::from(d - b'0'),
                    Some(_) => return None,
                    None => 0,
                };
                micros = micros * 10 + d;
            }
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            micros
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times in the scanner's one form give what arrow's parser gives; other forms are left
    /// to it.
    #[test]
    fn times_are_read_as_arrow_reads_them() {
        for text in [
            "2026-11-24T10:00:00Z",
            "2026-11-24T10:00:00.1Z",
            "2026-11-24T10:00:00.123456Z",
            "2026-11-24T10:00:00.123456789Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "1000-01-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "2000-02-29T12:00:00Z",
            "9999-12-31T23:59:59.999999Z",
        ] {
            let arrow = arrow::compute::kernels::cast_utils::string_to_datetime(&chrono::Utc, text)
                .unwrap()
                .timestamp_micros();
            assert_eq!(utc_micros(text.as_bytes()), Some(arrow), "{text}");
        }
        for text in [
            "2026-11-24 10:00:00Z",
            "2026-11-24T10:00:00+00:00",
            "2026-11-24T10:00:00",
            "2026-11-24t10:00:00z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:60Z",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00.1234567890Z",
            "2026-11-24T10:00:00.12a4Z",
            "0999-11-24T10:00:00Z",
            "+2026-11-24T10:00:00Z",
            "2026-1-24T10:00:00Z",
        ] {
            assert_eq!(utc_micros(text.as_bytes()), None, "{text}");
        }
    }
}
