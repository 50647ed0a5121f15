//! The shape of a producer's records, learned from one the scanner took: its bytes with the
//! contents of its string values cut out. A producer writes its records with the same keys in
//! the same order, the same nesting and the same spacing, so most of a stream's records are
//! those bytes with other strings in the cuts. A record that matches a shape byte for byte,
//! whose cut strings hold no quote (ending each at the next one), no backslash and no control
//! character, and which is UTF-8, is a JSON document of exactly the learned structure: its
//! values are read from the cuts without parsing it again.
//!
//! Only records whose every value (nested ones included) is a string, an object or an array
//! give a shape: a number, `true`, `false` or `null` varies in its own grammar, which a cut
//! between quotes does not hold.

use simd_json::Node;

/// What a cut's string is to the scanner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cut {
    /// The value of the schema's column of that index (a top-level field).
    Column(usize),
    /// A string no column is built from: a field the schema does not name, a key's value in
    /// a map, an element of an array.
    Other,
}

/// A learned shape: `literals[0]`, cut 0, `literals[1]`, cut 1, ..., the last literal.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// The literal bytes, back to back; `ends[i]` is where literal `i` ends.
    bytes: Vec<u8>,
    ends: Vec<u32>,
    cuts: Vec<Cut>,
    /// The schema's top-level fields the shape holds as objects (maps, checked once, when the
    /// shape was learned).
    objects: Vec<usize>,
}

impl Shape {
    /// The shape of `record`, of which `nodes` is simd-json's tape (parsed from a copy of it at
    /// address `base`, whose unescaped strings the tape points into), or None when a value in
    /// it is not a string, an object or an array. `column` names the schema's column of a
    /// top-level key.
    pub(super) fn learn(
        record: &[u8],
        base: usize,
        nodes: &[Node<'_>],
        column: impl Fn(&[u8]) -> Option<usize>,
    ) -> Option<Shape> {
        let mut cuts: Vec<(usize, usize, Cut)> = Vec::new();
        let mut objects = Vec::new();
        let Some(&Node::Object { len: pairs, .. }) = nodes.first() else {
            return None;
        };
        let mut at = 1;
        for _ in 0..pairs {
            let Some(Node::String(key)) = nodes.get(at) else {
                return None;
            };
            let field = column(key.as_bytes());
            at += 1;
            match nodes.get(at)? {
                Node::String(_) => {
                    let what = field.map_or(Cut::Other, Cut::Column);
                    cuts.push(cut(record, base, nodes.get(at)?, what)?);
                    at += 1;
                }
                _ => {
                    if let Some(field) = field {
                        objects.push(field);
                    }
                    at = nested(record, base, nodes, at, &mut cuts)?;
                }
            }
        }
        if at != nodes.len() {
            return None;
        }
        let mut bytes = Vec::with_capacity(record.len());
        let mut ends = Vec::with_capacity(cuts.len() + 1);
        let mut from = 0;
        for &(start, end, _) in &cuts {
            bytes.extend_from_slice(record.get(from..start)?);
            ends.push(u32::try_from(bytes.len()).ok()?);
            from = end;
        }
        bytes.extend_from_slice(record.get(from..)?);
        ends.push(u32::try_from(bytes.len()).ok()?);
        Some(Shape {
            bytes,
            ends,
            cuts: cuts.into_iter().map(|(_, _, c)| c).collect(),
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
    /// shape; hands `read` each cut's string with what it is, and answers false as soon as
    /// `read` does.
    pub(super) fn read(&self, record: &str, mut read: impl FnMut(Cut, &str) -> bool) -> bool {
        let bytes = record.as_bytes();
        let mut at = 0;
        for (i, &cut) in self.cuts.iter().enumerate() {
            let literal = self.literal(i);
            if !begins_with(&bytes[at..], literal) {
                return false;
            }
            at += literal.len();
            let Some(len) = next_quote(&bytes[at..]) else {
                return false;
            };
            // Both ends are next to a quote: character boundaries.
            let Some(value) = record.get(at..at + len) else {
                return false;
            };
            if cut != Cut::Other && !read(cut, value) {
                return false;
            }
            at += len;
        }
        let last = self.literal(self.cuts.len());
        bytes.len() - at == last.len() && begins_with(&bytes[at..], last)
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

/// Where the string at `node` lies in `record` (the tape's copy of it at `base`), cut out as
/// `what`; None unless it lies between two quotes within the record, as an unescaped string
/// does.
fn cut(record: &[u8], base: usize, node: &Node<'_>, what: Cut) -> Option<(usize, usize, Cut)> {
    let Node::String(s) = node else {
        return None;
    };
    let start = (s.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(s.len())?;
    let quoted = start > 0
        && end < record.len()
        && record.get(start - 1) == Some(&b'"')
        && record.get(end) == Some(&b'"');
    quoted.then_some((start, end, what))
}

/// Walks the object or array at `nodes[at]`, cutting out its strings (an object's values, not
/// its keys); answers the index after it, or None when it holds a value of another kind.
fn nested(
    record: &[u8],
    base: usize,
    nodes: &[Node<'_>],
    at: usize,
    cuts: &mut Vec<(usize, usize, Cut)>,
) -> Option<usize> {
    let (len, keyed) = match *nodes.get(at)? {
        Node::Object { len, .. } => (len, true),
        Node::Array { len, .. } => (len, false),
        _ => return None,
    };
    let mut next = at + 1;
    for _ in 0..len {
        if keyed {
            if !matches!(nodes.get(next), Some(Node::String(_))) {
                return None;
            }
            next += 1;
        }
        match nodes.get(next)? {
            node @ Node::String(_) => {
                cuts.push(cut(record, base, node, Cut::Other)?);
                next += 1;
            }
            _ => next = nested(record, base, nodes, next, cuts)?,
        }
    }
    Some(next)
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
