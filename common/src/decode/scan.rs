//! A projected scanner for the common record: one JSON object of the schema's fields with plain
//! values. simd-json parses the record into a tape (finding its structure and checking its
//! UTF-8 with vector instructions); the scanner walks the tape's top-level fields, builds only
//! the columns a query reads and checks the others' values without building them. A record of
//! a shape it learned from one it took ([`super::shape`]) is read from that shape's cuts
//! instead, without simd-json. Anything it
//! is not sure of (a `\u` escape, a control character, a key given twice, a missing required
//! field, a value of another shape, a time in another format, anything simd-json refuses) it
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
use simd_json::{Node, StaticNode};

use super::shape::{Cut, Piece, Shape};
use crate::data::schema::string_map_type;

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
    /// A string read: its range in the scratch's strings.
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

/// Integers the scanner takes into a long and an int column are below these in magnitude,
/// read from the tape or from a shape's cut alike; larger ones are arrow-json's to judge.
const INT64_BELOW: u64 = 1_000_000_000_000_000_000;
const INT32_BELOW: u64 = 1_000_000_000;

/// Shapes kept: a producer writing a few kinds of record (events with different properties)
/// has each of them held.
const SHAPES: usize = 4;

/// Of the records taken without a shape, one in this many is learned from: a stream of
/// records no shape holds (arrays of varying length, say) pays little for trying.
const LEARN_EVERY: u32 = 32;

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
                        .with_timezone(crate::data::schema::UTC),
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
    /// whether it did. `scratch` is reused between records.
    pub(super) fn scan(&self, record: &[u8], scratch: &mut Scratch, rows: &mut Rows) -> bool {
        // Control characters (raw in a string, or whitespace other than spaces between
        // tokens) and `\u` escapes (lone surrogates among them) are arrow-json's to judge;
        // only a record with a backslash is searched for `\u`.
        let bytes = Classes::of(record);
        if bytes.control || (bytes.backslash && memchr::memmem::find(record, b"\\u").is_some()) {
            return false;
        }
        // A record without escapes may be of a shape seen before: read from its cuts.
        let text = (!bytes.backslash && !scratch.shapes.is_empty())
            .then(|| bytes.text())
            .flatten();
        if let Some(text) = text {
            if self.by_shape(text, scratch) {
                return self.take(scratch, rows);
            }
        }
        let Scratch {
            text,
            buffers,
            tape,
            values,
            reading,
            shapes,
            unlearned,
        } = scratch;
        text.clear();
        text.extend_from_slice(record);
        text.resize(record.len() + simd_json::INPUT_PADDING, b' ');
        let base = text.as_ptr() as usize;
        values.clear();
        values.resize(self.columns.len(), Value::Absent);
        reading.strings.clear();
        // The placeholder is empty: `Tape::null()` would allocate a node for every record.
        let mut nodes = std::mem::replace(tape, simd_json::Tape(Vec::new())).reset();
        // simd-json checks the whole record (structure, UTF-8, escapes); the strings read are
        // copied out of its tape, which borrows `text`.
        let taken = simd_json::fill_tape_padded(text, record.len(), buffers, &mut nodes).is_ok()
            && self.fields(&nodes.0, values, reading);
        // Learning costs a walk of the tape: the first record taken learns, and then one in
        // LEARN_EVERY of those no shape held.
        if taken && !bytes.backslash {
            if *unlearned == 0 {
                *unlearned = LEARN_EVERY;
                let column = |key: &[u8]| self.columns.iter().position(|c| *c.name == *key);
                if let Some(shape) = Shape::learn(record, base, &nodes.0, column) {
                    shapes.insert(0, shape);
                    shapes.truncate(SHAPES);
                }
            } else {
                *unlearned -= 1;
            }
        }
        *tape = nodes.reset();
        taken && self.take(scratch, rows)
    }

    /// Reads `record` into the scratch's values when it has one of the shapes learned, the
    /// shape it had tried first next time.
    fn by_shape(&self, record: &str, scratch: &mut Scratch) -> bool {
        let Scratch {
            values,
            reading,
            shapes,
            ..
        } = scratch;
        let found = shapes.iter().position(|shape| {
            values.clear();
            values.resize(self.columns.len(), Value::Absent);
            for &field in shape.objects() {
                values[field] = Value::Checked;
            }
            reading.strings.clear();
            shape.read(record, |cut, piece| {
                let Cut::Column(field) = cut else {
                    return true;
                };
                let column = &self.columns[field];
                let value = match piece {
                    Piece::Text(s) => self.string(column, s, reading),
                    token => self.token(column, token),
                };
                match value {
                    Some(v) => {
                        values[field] = v;
                        true
                    }
                    None => false,
                }
            })
        });
        match found {
            Some(i) => {
                shapes[..=i].rotate_right(1);
                true
            }
            None => false,
        }
    }

    /// Adds the record read into the scratch's values to `rows` when every required column
    /// has a value; answers whether it did.
    fn take(&self, scratch: &Scratch, rows: &mut Rows) -> bool {
        let Scratch {
            values, reading, ..
        } = scratch;
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
                rows.builders[out].append(&reading.strings, *value);
            }
        }
        true
    }

    /// Reads the record's object, as simd-json's tape of it, into `values`; false when it is
    /// not one the scanner takes.
    fn fields(&self, nodes: &[Node<'_>], values: &mut [Value], reading: &mut Reading) -> bool {
        let Some(&Node::Object { len: pairs, .. }) = nodes.first() else {
            return false;
        };
        let mut at = 1;
        let mut next = 0;
        for _ in 0..pairs {
            let Some(Node::String(key)) = nodes.get(at) else {
                return false;
            };
            let key = key.as_bytes();
            // Producers write their keys in one order: the column after the last one found
            // is tried first.
            let found = match self.columns.get(next) {
                Some(col) if *col.name == *key => Some(next),
                _ => self.columns.iter().position(|col| *col.name == *key),
            };
            let Some(value) = nodes.get(at + 1) else {
                return false;
            };
            let after = at + 1 + span(value);
            match found {
                Some(i) => {
                    next = i + 1;
                    if !matches!(values[i], Value::Absent) {
                        return false;
                    }
                    match self.value(nodes, at + 1, &self.columns[i], reading) {
                        Some(v) => values[i] = v,
                        None => return false,
                    }
                }
                // arrow-json skips fields the schema does not name; only their depth is
                // walked, and only theirs.
                None if nesting(nodes, at + 1).is_some_and(|depth| depth <= MAX_DEPTH) => {}
                None => return false,
            }
            at = after;
        }
        // One JSON value, nothing after it.
        at == nodes.len()
    }

    /// The value of `column` at `nodes[at]`; a string read is copied to the end of the
    /// strings `reading` holds.
    fn value(
        &self,
        nodes: &[Node<'_>],
        at: usize,
        column: &Column,
        reading: &mut Reading,
    ) -> Option<Value> {
        let node = nodes.get(at)?;
        if matches!(node, Node::Static(StaticNode::Null)) {
            return Some(Value::Null);
        }
        match (column.kind, node) {
            (_, Node::String(s)) => self.string(column, s, reading),
            (Kind::Int64, Node::Static(n)) => integer(n, INT64_BELOW).map(Value::Int),
            (Kind::Int32, Node::Static(n)) => integer(n, INT32_BELOW).map(Value::Int),
            (Kind::Float64, Node::Static(n)) => {
                let v = match *n {
                    StaticNode::F64(v) => v,
                    // The tape does not keep the sign of an integer zero ("-0" is -0.0 to
                    // arrow-json): that one is arrow-json's. Others become the nearest float,
                    // as parsing the text would.
                    StaticNode::I64(0) | StaticNode::U64(0) => return None,
                    StaticNode::I64(v) => v as f64,
                    StaticNode::U64(v) => v as f64,
                    _ => return None,
                };
                v.is_finite().then_some(Value::Float(v))
            }
            (Kind::Bool, Node::Static(StaticNode::Bool(b))) => Some(Value::Bool(*b)),
            (Kind::StringMap, &Node::Object { len, .. }) => {
                // Keys and values alternate while the values are strings; the first value that
                // is not one ends the check before anything after it is taken for a key.
                let strings =
                    (0..len).all(|i| matches!(nodes.get(at + 2 + 2 * i), Some(Node::String(_))));
                strings.then_some(Value::Checked)
            }
            _ => None,
        }
    }

    /// The value of `column` given as a shape's cut holds a number or literal, as
    /// [`Self::value`] takes it from the tape: the same values of the same kinds, the rest
    /// refused.
    fn token(&self, column: &Column, token: Piece<'_>) -> Option<Value> {
        let integer = |text: &str, limit: u64| {
            let v = text.parse::<i64>().ok()?;
            (v.unsigned_abs() < limit).then_some(Value::Int(v))
        };
        match (column.kind, token) {
            (_, Piece::Null) => Some(Value::Null),
            (Kind::Int64, Piece::Integer(t)) => integer(t, INT64_BELOW),
            (Kind::Int32, Piece::Integer(t)) => integer(t, INT32_BELOW),
            // An integer zero is left to arrow-json, as the tape leaves it (it keeps no sign);
            // other numbers are the nearest float, as the text is.
            (Kind::Float64, Piece::Integer(t)) if t.bytes().all(|b| matches!(b, b'0' | b'-')) => {
                None
            }
            (Kind::Float64, Piece::Integer(t) | Piece::Float(t)) => {
                let v = t.parse::<f64>().ok()?;
                v.is_finite().then_some(Value::Float(v))
            }
            (Kind::Bool, Piece::Bool(b)) => Some(Value::Bool(b)),
            _ => None,
        }
    }

    /// The value of `column` given as the string `s`; a string read is copied to the end of
    /// the strings `reading` holds.
    fn string(&self, column: &Column, s: &str, reading: &mut Reading) -> Option<Value> {
        let strings = &mut reading.strings;
        match column.kind {
            Kind::Str if column.out.is_some() => {
                let start = u32::try_from(strings.len()).ok()?;
                strings.push_str(s);
                Some(Value::Span(start, u32::try_from(strings.len()).ok()?))
            }
            Kind::Str => Some(Value::Checked),
            // A time is parsed whether it is read or not: one arrow-json cannot parse makes
            // the record bad.
            Kind::Timestamp => utc_micros_after(s.as_bytes(), &mut reading.day).map(Value::Time),
            _ => None,
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

/// What reading a record's values writes to: the strings read, one after another, and the
/// last date a time was read on.
#[derive(Default)]
pub(super) struct Reading {
    strings: String,
    day: LastDay,
}

/// Scratch space of the scanner, reused between records: the record copied with the padding
/// simd-json reads past its end, simd-json's buffers and tape, the columns' values and the
/// strings read.
pub(super) struct Scratch {
    text: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: simd_json::Tape<'static>,
    values: Vec<Value>,
    reading: Reading,
    /// The shapes learned, the one that last held a record first.
    shapes: Vec<Shape>,
    /// Records taken without a shape before the next is learned from.
    unlearned: u32,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            text: Vec::new(),
            // A record nested deeper is refused by simd-json and left to the decoder's own
            // depth check; the tape's walk recurses no deeper than this.
            buffers: simd_json::Buffers::with_max_depth(1024, super::MAX_NESTING),
            tape: simd_json::Tape(Vec::new()),
            values: Vec::new(),
            reading: Reading::default(),
            shapes: Vec::new(),
            unlearned: 0,
        }
    }
}

/// What a record's bytes hold, found in one pass without an early exit, which compiles to
/// vector instructions: a control character, a backslash, a byte outside ASCII.
struct Classes<'r> {
    record: &'r [u8],
    control: bool,
    backslash: bool,
    ascii: bool,
}

impl<'r> Classes<'r> {
    fn of(record: &'r [u8]) -> Self {
        // Three byte-wide OR reductions: kept this simple, they vectorize (a fold of three
        // booleans did not, and the whole job ran at half its speed).
        let (mut control, mut backslash, mut any) = (0u8, 0u8, 0u8);
        for &c in record {
            control |= u8::from(c < 0x20);
            backslash |= u8::from(c == b'\\');
            any |= c;
        }
        Self {
            record,
            control: control != 0,
            backslash: backslash != 0,
            ascii: any < 0x80,
        }
    }

    /// The record as text when it is UTF-8: ASCII is as it stands (the common record, without
    /// a second pass over it); any other is validated.
    fn text(&self) -> Option<&'r str> {
        if self.ascii {
            // SAFETY: every byte of `record` is below 0x80 (`of` looked at each), and a
            // sequence of ASCII bytes is UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(self.record) })
        } else {
            simdutf8::basic::from_utf8(self.record).ok()
        }
    }
}

/// An integer below `limit` in magnitude, written as JSON writes integers (simd-json makes a
/// number with a fraction or an exponent a float).
fn integer(n: &StaticNode, limit: u64) -> Option<i64> {
    match *n {
        StaticNode::I64(v) if v.unsigned_abs() < limit => Some(v),
        StaticNode::U64(v) if v < limit => i64::try_from(v).ok(),
        _ => None,
    }
}

/// The nodes the value `node` heads on the tape, itself and everything nested in it included:
/// the next key is that far after it.
fn span(node: &Node<'_>) -> usize {
    match *node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// How deep the value at `nodes[at]` nests (0 for a scalar).
fn nesting(nodes: &[Node<'_>], at: usize) -> Option<usize> {
    let (len, keyed) = match *nodes.get(at)? {
        Node::Object { len, .. } => (len, 1),
        Node::Array { len, .. } => (len, 0),
        _ => return Some(0),
    };
    let (mut deepest, mut next) = (0, at + 1);
    for _ in 0..len {
        // An object's key comes before each value.
        let child = next + keyed;
        deepest = deepest.max(nesting(nodes, child)?);
        next = child + span(nodes.get(child)?);
    }
    Some(deepest + 1)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as microseconds since the epoch (a fraction past the
/// microsecond cut off, as arrow's parser does); None for any other form, or a date or time
/// that does not exist.
pub fn utc_micros(t: &[u8]) -> Option<i64> {
    utc_micros_after(t, &mut None)
}

/// The last date [`utc_micros_after`] read: its ten bytes and its day since the epoch.
pub(super) type LastDay = Option<([u8; 10], i64)>;

/// [`utc_micros`], the day of a date the same as `last`'s taken from it: a stream's times
/// mostly share their date.
pub(super) fn utc_micros_after(t: &[u8], last: &mut LastDay) -> Option<i64> {
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
    let days = match last {
        Some((date, days)) if *date == t[..10] => *days,
        _ => {
            let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
            if !(1000..=9999).contains(&year) || !(1..=12).contains(&month) || day < 1 {
                return None;
            }
            if day > days_in_month(year, month) {
                return None;
            }
            let days = days_from_civil(year, month, day);
            let mut date = [0; 10];
            date.copy_from_slice(&t[..10]);
            *last = Some((date, days));
            days
        }
    };
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
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
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
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

    fn reference() -> Scanner {
        Scanner::new(&super::super::reference_schema(), &[0, 1, 2, 4])
            .expect("the reference schema")
    }

    fn event(id: &str, properties: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","event_type":"click","page_url":"https://x/p/{id}","properties":{properties},"timestamp":"2026-11-24T10:00:00.5Z","user_id":"u-{id}","tags":["a",{{"b":"c"}}]}}"#
        )
    }

    /// Each byte, at each place of records of lengths around the vector widths, is classed
    /// as a byte-by-byte look classes it; a record is text exactly when it is UTF-8 (the
    /// shortcut for ASCII must never take a byte at or above 0x80).
    #[test]
    fn records_are_classed_byte_by_byte() {
        for len in [1, 15, 16, 17, 31, 32, 33, 64, 65, 230] {
            for at in [0, len / 2, len - 1] {
                for byte in 0..=255u8 {
                    let mut record = vec![b'a'; len];
                    record[at] = byte;
                    let classes = Classes::of(&record);
                    assert_eq!(classes.control, byte < 0x20, "{len} {at} {byte}");
                    assert_eq!(classes.backslash, byte == b'\\', "{len} {at} {byte}");
                    assert_eq!(classes.ascii, byte < 0x80, "{len} {at} {byte}");
                    assert_eq!(
                        classes.text(),
                        std::str::from_utf8(&record).ok(),
                        "{len} {at} {byte}"
                    );
                }
            }
        }
        let two = "é".as_bytes();
        let classes = Classes::of(two);
        assert!(!classes.ascii);
        assert_eq!(classes.text(), Some("é"));
    }

    /// Scratch space after `record` was scanned (and taken).
    fn after(scanner: &Scanner, record: &str) -> Scratch {
        let mut scratch = Scratch::default();
        assert!(scanner.scan(record.as_bytes(), &mut scratch, &mut scanner.rows(1)));
        scratch
    }

    /// The first record taken teaches its shape; records of that shape with other values are
    /// read by it, with their own values; a record with escapes teaches none.
    #[test]
    fn records_of_a_learned_shape_are_read_by_it() {
        let scanner = reference();
        let mut scratch = after(&scanner, &event("1", r#"{"k":"v"}"#));
        assert_eq!(scratch.shapes.len(), 1);
        let second = event("second é", r#"{"k":""}"#);
        assert!(scanner.by_shape(&second, &mut scratch));
        let mut rows = scanner.rows(1);
        assert!(scanner.take(&scratch, &mut rows));
        let batch = scanner.finish(rows).unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>();
        assert_eq!(ids.unwrap().value(0), "second é");
        // Another shape, a time no one can parse, a quote ending a string early: not read.
        assert!(!scanner.by_shape(&event("2", r#"{"k":"v","l":"w"}"#), &mut scratch));
        let bad_time = event("3", r#"{"k":"v"}"#).replace("10:00:00.5Z", "10:00:60.5Z");
        assert!(!scanner.by_shape(&bad_time, &mut scratch));
        assert!(!scanner.by_shape(&event("4\",5", r#"{"k":"v"}"#), &mut scratch));
        let escaped = event("6", r#"{"k":"v"}"#).replace("https:", "https:\\/");
        assert!(after(&scanner, &escaped).shapes.is_empty(), "{escaped}");
        // Numbers and literals are cut out too, each ending where a value may end.
        let with = |tokens: &str| {
            event("7", r#"{"k":"v"}"#).replace(r#""tags""#, &format!("{tokens},\"tags\""))
        };
        let mut numbers = after(
            &scanner,
            &with(r#""n":1,"m":[true,null, -2.5e3 ],"z":{"f":false}"#),
        );
        assert_eq!(numbers.shapes.len(), 1);
        for other in [
            r#""n":-0.5,"m":[false,1, null ],"z":{"f":1e2}"#,
            r#""n":null,"m":[0,0, 0 ],"z":{"f":true}"#,
        ] {
            assert!(scanner.by_shape(&with(other), &mut numbers), "{other}");
        }
        for not in [
            r#""n":01,"m":[true,null, -2.5e3 ],"z":{"f":false}"#,
            r#""n":1,"m":[tru,null, -2.5e3 ],"z":{"f":false}"#,
            r#""n":1,"m":[true,null, - ],"z":{"f":false}"#,
            r#""n":"1","m":[true,null, -2.5e3 ],"z":{"f":false}"#,
            r#""n":1.,"m":[true,null, -2.5e3 ],"z":{"f":false}"#,
        ] {
            assert!(!scanner.by_shape(&with(not), &mut numbers), "{not}");
        }
    }

    /// A producer writing a few shapes in turn has each of them learned, and then read by it.
    #[test]
    fn a_few_shapes_in_turn_are_each_learned() {
        let scanner = reference();
        let mut scratch = Scratch::default();
        let mut rows = scanner.rows(1024);
        let shapes = [
            r#"{}"#,
            r#"{"a":"b"}"#,
            r#"{"a":"b","c":"d"}"#,
            r#"{"c":"d"}"#,
        ];
        for i in 0..(SHAPES * LEARN_EVERY as usize * 2) {
            let record = event(&i.to_string(), shapes[i % shapes.len()]);
            assert!(scanner.scan(record.as_bytes(), &mut scratch, &mut rows));
        }
        assert_eq!(scratch.shapes.len(), shapes.len());
        for (i, properties) in shapes.iter().enumerate() {
            assert!(scanner.by_shape(&event(&format!("x{i}"), properties), &mut scratch));
        }
    }

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

    /// A time read after another, on its date or not, reads as it does alone.
    #[test]
    fn a_time_reads_the_same_after_any_other() {
        let times = [
            "2026-11-24T10:00:00Z",
            "2026-11-24T23:59:59.999999Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:60:00Z",
            "2026-11-24T10:00:00.1a2Z",
            "2026-11-24X10:00:00Z",
            "2026-11-25T00:00:00Z",
            "2024-02-29T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "0999-11-24T10:00:00Z",
            "2026-11-24",
        ];
        for first in times {
            for then in times {
                let mut last = None;
                utc_micros_after(first.as_bytes(), &mut last);
                let after = utc_micros_after(then.as_bytes(), &mut last);
                assert_eq!(after, utc_micros(then.as_bytes()), "{then} after {first}");
            }
        }
    }
}
