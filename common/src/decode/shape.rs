//! The shape of a producer's records, learned from one the scanner took: its bytes with its
//! values cut out (the contents of its strings, and its numbers, `true`, `false` and `null`).
//! A producer writes its records with the same keys in the same order, the same nesting and
//! the same spacing, so most of a stream's records are those bytes with other values in the
//! cuts. A record free of backslashes and control characters, and UTF-8, that matches a shape
//! byte for byte outside its cuts, where each string's cut ends at the next quote and each
//! other value's at the next `,`, `]`, `}` or space and is a JSON number or literal, is a JSON
//! document of exactly the learned structure: its values are read from the cuts without
//! parsing it again.

use simd_json::Node;

/// What a cut's value is to the scanner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cut {
    /// The value of the schema's column of that index (a top-level field).
    Column(usize),
    /// A value no column is built from: a field the schema does not name, a key's value in a
    /// map, an element of an array.
    Other,
}

/// A cut's value in a record read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Piece<'a> {
    /// A string's contents.
    Text(&'a str),
    /// A number written without a fraction or an exponent.
    Integer(&'a str),
    /// A number with either.
    Float(&'a str),
    Bool(bool),
    Null,
}

/// A learned shape: literal 0, cut 0, literal 1, cut 1, ..., the last literal.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// The literal bytes, back to back; `ends[i]` is where literal `i` ends.
    bytes: Vec<u8>,
    ends: Vec<u32>,
    /// Each cut, and whether it holds a string (else a number or literal).
    cuts: Vec<(Cut, bool)>,
    /// The schema's top-level fields the shape holds as objects (maps, checked once, when the
    /// shape was learned).
    objects: Vec<usize>,
}

impl Shape {
    /// The shape of `record`, of which `nodes` is simd-json's tape (parsed from a copy of it at
    /// address `base`, whose unescaped strings the tape points into), or None when it is not
    /// one a shape holds. `column` names the schema's column of a top-level key.
    pub(super) fn learn(
        record: &[u8],
        base: usize,
        nodes: &[Node<'_>],
        column: impl Fn(&[u8]) -> Option<usize>,
    ) -> Option<Shape> {
        let mut walk = Walk {
            record,
            base,
            next: 0,
            cuts: Vec::new(),
        };
        let mut objects = Vec::new();
        let Some(&Node::Object { len: pairs, .. }) = nodes.first() else {
            return None;
        };
        let mut at = 1;
        for _ in 0..pairs {
            let Some(Node::String(key)) = nodes.get(at) else {
                return None;
            };
            walk.key(key)?;
            let field = column(key.as_bytes());
            at += 1;
            if let (Some(field), Node::Object { .. } | Node::Array { .. }) = (field, nodes.get(at)?)
            {
                objects.push(field);
            }
            at = walk.value(nodes, at, field.map_or(Cut::Other, Cut::Column))?;
        }
        if at != nodes.len() {
            return None;
        }
        let mut bytes = Vec::with_capacity(record.len());
        let mut ends = Vec::with_capacity(walk.cuts.len() + 1);
        let mut from = 0;
        for &(start, end, _, _) in &walk.cuts {
            bytes.extend_from_slice(record.get(from..start)?);
            ends.push(u32::try_from(bytes.len()).ok()?);
            from = end;
        }
        bytes.extend_from_slice(record.get(from..)?);
        ends.push(u32::try_from(bytes.len()).ok()?);
        Some(Shape {
            bytes,
            ends,
            cuts: walk.cuts.into_iter().map(|(_, _, c, s)| (c, s)).collect(),
            objects,
        })
    }

    /// The schema's top-level fields the shape holds as objects.
    pub(super) fn objects(&self) -> &[usize] {
        &self.objects
    }

    fn literal(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// Whether `record` (free of backslashes and control characters, and UTF-8) has this
    /// shape; hands `read` each cut's value with what it is, and answers false as soon as
    /// `read` does.
    pub(super) fn read(&self, record: &str, mut read: impl FnMut(Cut, Piece<'_>) -> bool) -> bool {
        let bytes = record.as_bytes();
        let mut at = 0;
        for (i, &(cut, string)) in self.cuts.iter().enumerate() {
            let literal = self.literal(i);
            if !begins_with(&bytes[at..], literal) {
                return false;
            }
            at += literal.len();
            // A string's cut ends at the next quote, a token's where a value may end; both
            // ends are then next to ASCII: character boundaries.
            let len = match string {
                true => next_quote(&bytes[at..]),
                false => token_end(&bytes[at..]),
            };
            let Some(value) = len.and_then(|len| record.get(at..at + len)) else {
                return false;
            };
            let piece = match string {
                true => Piece::Text(value),
                false => match token(value) {
                    Some(piece) => piece,
                    None => return false,
                },
            };
            if cut != Cut::Other && !read(cut, piece) {
                return false;
            }
            at += value.len();
        }
        let last = self.literal(self.cuts.len());
        bytes.len() - at == last.len() && begins_with(&bytes[at..], last)
    }
}

/// The learning walk through a record and its tape, in document order: where it is in the
/// record, and the cuts found so far (start, end, what, whether a string).
struct Walk<'r> {
    record: &'r [u8],
    base: usize,
    next: usize,
    cuts: Vec<(usize, usize, Cut, bool)>,
}

impl Walk<'_> {
    /// Where the tape's string `s` lies in the record, if between two quotes at or after the
    /// walk's place, as an unescaped string does; the walk goes on after it.
    fn string(&mut self, s: &str) -> Option<(usize, usize)> {
        let start = (s.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(s.len())?;
        let quoted = start > self.next
            && end < self.record.len()
            && self.record.get(start - 1) == Some(&b'"')
            && self.record.get(end) == Some(&b'"');
        self.next = end + 1;
        quoted.then_some((start, end))
    }

    /// A key: not cut, only passed.
    fn key(&mut self, key: &str) -> Option<()> {
        self.string(key).map(|_| ())
    }

    /// Cuts out the value at `nodes[at]` as `what` (the strings and tokens inside it when it
    /// is an object or an array); answers the index after it.
    fn value(&mut self, nodes: &[Node<'_>], at: usize, what: Cut) -> Option<usize> {
        let (len, keyed) = match *nodes.get(at)? {
            Node::String(s) => {
                let (start, end) = self.string(s)?;
                self.cuts.push((start, end, what, true));
                return Some(at + 1);
            }
            Node::Static(_) => {
                // Between the walk's place and a token there are only structural characters
                // and spaces; a token is what the tape says it is.
                let rest = self.record.get(self.next..)?;
                let start = self.next + rest.iter().position(|b| b"-0123456789tfn".contains(b))?;
                let end = start + token_end(self.record.get(start..)?)?;
                std::str::from_utf8(self.record.get(start..end)?)
                    .ok()
                    .and_then(token)?;
                self.cuts.push((start, end, what, false));
                self.next = end;
                return Some(at + 1);
            }
            Node::Object { len, .. } => (len, true),
            Node::Array { len, .. } => (len, false),
        };
        let mut next = at + 1;
        for _ in 0..len {
            if keyed {
                let Some(Node::String(key)) = nodes.get(next) else {
                    return None;
                };
                self.key(key)?;
                next += 1;
            }
            next = self.value(nodes, next, Cut::Other)?;
        }
        Some(next)
    }
}

/// Where a token (a number or literal) starting `bytes` ends: at the first `,`, `]`, `}` or
/// space, what may follow a value in a record free of control characters.
fn token_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .position(|b| matches!(b, b',' | b']' | b'}' | b' '))
}

/// The token `text` as JSON reads it, or None when it is not a number or literal.
fn token(text: &str) -> Option<Piece<'_>> {
    match text {
        "true" => return Some(Piece::Bool(true)),
        "false" => return Some(Piece::Bool(false)),
        "null" => return Some(Piece::Null),
        _ => {}
    }
    let t = text.as_bytes();
    let digits = |mut i: usize| {
        while t.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(t.first() == Some(&b'-'));
    i = match t.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i + 1),
        _ => return None,
    };
    let integer = i == t.len();
    if t.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    match (i == t.len(), integer) {
        (false, _) => None,
        (true, true) => Some(Piece::Integer(text)),
        (true, false) => Some(Piece::Float(text)),
    }
}

/// Where the first quote in `bytes` is. A string's contents are short: eight bytes a step as
/// one number (the bytes equal to a quote found as the zero bytes of the number xor quotes)
/// beats a call to `memchr`, whose set-up is for long searches.
fn next_quote(bytes: &[u8]) -> Option<usize> {
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const LOW: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let x = eight(word) ^ QUOTES;
        // The lowest byte flagged is the first zero byte (a borrow flags only bytes above one).
        let zeros = x.wrapping_sub(LOW) & !x & HIGH;
        if zeros != 0 {
            return Some(at + (zeros.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words.remainder().iter().position(|&b| b == b'"');
    rest.map(|i| at + i)
}

/// Whether `bytes` begins with `prefix`, compared eight bytes a step: a literal is short, and
/// a call to `memcmp` costs more than comparing a few words.
fn begins_with(bytes: &[u8], prefix: &[u8]) -> bool {
    let n = prefix.len();
    let Some(head) = bytes.get(..n) else {
        return false;
    };
    if n < 8 {
        return head == prefix;
    }
    // Whole words, then the last eight bytes (overlapping the last word compared).
    let mut at = 0;
    while at + 8 < n {
        if eight(&head[at..at + 8]) != eight(&prefix[at..at + 8]) {
            return false;
        }
        at += 8;
    }
    eight(&head[n - 8..]) == eight(&prefix[n - 8..])
}

/// Eight bytes as one number.
fn eight(word: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(word);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix is found whole or not at all, whatever its length and wherever it differs.
    #[test]
    fn prefixes_compare_as_slices_do() {
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..=text.len() {
            let prefix = &text[..len];
            assert!(begins_with(&text, prefix));
            assert!(!begins_with(&text[..len.saturating_sub(1)], prefix) || len == 0);
            for at in 0..len {
                let mut other = prefix.to_vec();
                other[at] ^= 0x20;
                assert!(!begins_with(&text, &other), "{len} {at}");
            }
        }
    }

    /// The first quote is found wherever it is in a word or the tail, after any other byte
    /// (high bytes and bytes one away from a quote included), or not at all.
    #[test]
    fn the_first_quote_is_found() {
        for len in 0..40 {
            for at in 0..=len {
                for filler in [b'a', b'!', b'#', 0x00, 0xa2, 0xff, 0x21] {
                    let mut bytes = vec![filler; len];
                    if at < len {
                        bytes[at] = b'"';
                        // A second quote after the first changes nothing.
                        if at + 3 < len {
                            bytes[at + 3] = b'"';
                        }
                    }
                    let want = bytes.iter().position(|&b| b == b'"');
                    assert_eq!(next_quote(&bytes), want, "{bytes:?}");
                }
            }
        }
    }
}
