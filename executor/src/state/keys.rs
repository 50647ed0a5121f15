//! RocksDB key layout (docs/architecture.md, State layout): big-endian key group, then window end,
//! then the rest, so an owner scans its windows in end order and drops a key-group range with one
//! range delete.
//!
//! ```text
//! group row    [kg u16][end][0][start][group key]                        -> partials
//! distinct run [kg u16][end][3][start][agg u8][len u32][group key]        -> run of values
//! ```
//! A distinct value lives in the key group of (window, group, value), so a group key with few
//! values spreads its distinct state over every key group. The values of one (key group,
//! window, aggregate, group) are one run (`distinct_runs`): each epoch merges its own in
//! without reading first, and a window's distinct count is the size of its runs in each key
//! group (a shard), summed at the group's owner when the window closes.
//!
//! Values travel between executors as distinct keys, `[kg u16][end][1][start][agg u8][len u32]
//! [group key][value]`: the run key's bytes with the value after them. Stores written by
//! earlier versions hold such keys too, one per value, and a running count per shard
//! (`[kg u16][end][2][start][agg u8][group key] -> i64`, ignored); both are counted or dropped
//! with their window.
//!
//! A dedup query's keys (docs/architecture.md, Plan of operators) keep the layout, the time
//! being when the key expires; a second entry per key, at the end of time, finds a key by its
//! value:
//!
//! ```text
//! expiry [kg u16][expiry][0][key]                                 -> ()
//! lookup [kg u16][i64::MAX][1][key]                               -> expiry i64 BE
//! ```

use weir_common::keygroup::key_group_of_parts;
use weir_common::window::Window;

/// A key's tag is `operator << 2 | kind`: the kinds below are the window aggregate's and the
/// dedup's, the operator the query's index in the job's plan (0 for a job of one query, whose
/// keys are those stores held before plans had several operators).
pub const TAG_GROUP: u8 = 0;
pub const TAG_DISTINCT: u8 = 1;
pub const TAG_SHARD_COUNT: u8 = 2;
pub const TAG_RUN: u8 = 3;

/// A dedup query's kinds.
pub const TAG_DEDUP_EXPIRY: u8 = 0;
pub const TAG_DEDUP_LOOKUP: u8 = 1;

/// The tag of `kind` for `operator` (at most 63).
pub fn tag(operator: u8, kind: u8) -> u8 {
    operator << 2 | kind
}

/// The operator a state key belongs to.
pub fn operator_of(key: &[u8]) -> Option<u8> {
    key.get(10).map(|tag| tag >> 2)
}

/// A state key's kind (what the key is to its operator).
fn kind_of(key: &[u8]) -> Option<u8> {
    key.get(10).map(|tag| tag & 3)
}

/// Where the group key starts in a distinct key or run key.
const GROUP_AT: usize = 24;

/// Prefix of bookkeeping keys; never a key group (at most 32768 of them).
pub const META_PREFIX: [u8; 2] = [0xFF, 0xFF];

/// Order-preserving encoding of a signed time: flip the sign bit, big-endian.
pub fn encode_time(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn decode_time(b: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

fn write_head(k: &mut Vec<u8>, kg: u32, end: i64, tag: u8, start: i64) {
    k.extend_from_slice(&(kg as u16).to_be_bytes());
    k.extend_from_slice(&encode_time(end));
    k.push(tag);
    k.extend_from_slice(&encode_time(start));
}

fn head(kg: u32, end: i64, tag: u8, start: i64, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + extra);
    write_head(&mut k, kg, end, tag, start);
    k
}

/// The entry that expires a dedup key of `op` at `expiry`.
pub fn dedup_expiry_key(op: u8, kg: u32, expiry: i64, key: &[u8]) -> Vec<u8> {
    dedup_key(kg, expiry, tag(op, TAG_DEDUP_EXPIRY), key)
}

/// The entry that finds a dedup key of `op` by its value; past every scan up to a watermark.
pub fn dedup_lookup_key(op: u8, kg: u32, key: &[u8]) -> Vec<u8> {
    dedup_key(kg, i64::MAX, tag(op, TAG_DEDUP_LOOKUP), key)
}

fn dedup_key(kg: u32, time: i64, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + key.len());
    k.extend_from_slice(&(kg as u16).to_be_bytes());
    k.extend_from_slice(&encode_time(time));
    k.push(tag);
    k.extend_from_slice(key);
    k
}

/// A dedup expiry entry's key group and key, when `key` is one.
pub fn parse_dedup_expiry(key: &[u8]) -> Option<(u32, &[u8])> {
    (kind_of(key) == Some(TAG_DEDUP_EXPIRY)).then_some(())?;
    Some((key_group_of(key)?, key.get(11..)?))
}

pub fn group_key(op: u8, kg: u32, w: Window, group: &[u8]) -> Vec<u8> {
    let mut k = head(kg, w.end, tag(op, TAG_GROUP), w.start, group.len());
    k.extend_from_slice(group);
    k
}

/// The key group (shard) of a distinct value among `key_groups`: the stable hash of its window
/// end and start, aggregate index, group key length and group key, and value, in that order.
/// (The definition; [`distinct_key_into`] computes it from the key's own bytes.)
#[cfg(test)]
pub fn distinct_key_group_of(
    w: Window,
    agg: u8,
    group: &[u8],
    value: &[u8],
    key_groups: u32,
) -> u32 {
    key_group_of_parts(
        &[
            &encode_time(w.end),
            &encode_time(w.start),
            &[agg],
            &(group.len() as u32).to_be_bytes(),
            group,
            value,
        ],
        key_groups,
    )
}

/// Writes into `key` (cleared first) the distinct key of a value in its key group among
/// `key_groups`, and answers the key group. The key holds the hashed parts in hash order,
/// around the tag: they are hashed from it in two slices instead of being gathered again.
pub fn distinct_key_into(
    key: &mut Vec<u8>,
    op: u8,
    w: Window,
    agg: u8,
    group: &[u8],
    value: &[u8],
    key_groups: u32,
) -> u32 {
    key.clear();
    write_distinct_key(key, op, 0, w, agg, group, value);
    // [kg 0..2][end 2..10][tag 10][start 11..19][agg][len][group][value]
    let kg = key_group_of_parts(&[&key[2..10], &key[11..]], key_groups);
    key[..2].copy_from_slice(&(kg as u16).to_be_bytes());
    kg
}

#[cfg(test)]
pub fn distinct_key(kg: u32, w: Window, agg: u8, group: &[u8], value: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + group.len() + value.len());
    write_distinct_key(&mut k, 0, kg, w, agg, group, value);
    k
}

fn write_distinct_key(
    k: &mut Vec<u8>,
    op: u8,
    kg: u32,
    w: Window,
    agg: u8,
    group: &[u8],
    value: &[u8],
) {
    write_head(k, kg, w.end, tag(op, TAG_DISTINCT), w.start);
    k.push(agg);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k.extend_from_slice(value);
}

/// Splits a distinct key into its head (everything but the value: the same for every value
/// of one run) and its value: `None` unless `key` is a whole distinct key.
pub fn split_distinct_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = distinct_value_at(key)?;
    (kind_of(key) == Some(TAG_DISTINCT)).then(|| key.split_at(at))
}

/// The key of the run that holds the values of a distinct key's head.
pub fn run_key(head: &[u8]) -> Vec<u8> {
    let mut run = head.to_vec();
    if let Some(tag) = run.get_mut(10) {
        *tag = (*tag & !3) | TAG_RUN;
    }
    run
}

/// Where the value starts in a distinct key, or in a run key its end.
fn distinct_value_at(key: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(key.get(20..GROUP_AT)?.try_into().ok()?) as usize;
    let at = GROUP_AT.checked_add(len)?;
    (key.len() >= at).then_some(at)
}

/// The key group a state key belongs to (its first two bytes).
pub fn key_group_of(key: &[u8]) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        key.get(..2)?.try_into().ok()?,
    )))
}

/// Whether `key` is a whole key of [`distinct_key`]'s layout (the exchange checks more:
/// `partials::Shape::check_distinct_key`).
#[cfg(test)]
pub fn is_distinct_key(key: &[u8]) -> bool {
    matches!(parse_key(key), Some(StateKey::Distinct { .. }))
}

/// Lower bound of key group `kg` (inclusive).
pub fn kg_lower(kg: u32) -> Vec<u8> {
    (kg as u16).to_be_bytes().to_vec()
}

/// Upper bound (exclusive) of the keys of `kg` whose window ended at or before `watermark`.
pub fn kg_closed_upper(kg: u32, watermark: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&(kg as u16).to_be_bytes());
    k.extend_from_slice(&encode_time(watermark.saturating_add(1)));
    k
}

/// A parsed state key.
#[derive(Debug, PartialEq, Eq)]
pub enum StateKey<'a> {
    Group {
        window: Window,
        group: &'a [u8],
    },
    /// An exact-distinct value of (window, aggregate, group), as it travels (or as stores of
    /// earlier versions keep it).
    Distinct {
        window: Window,
        agg: u8,
        group: &'a [u8],
        value: &'a [u8],
    },
    /// The exact-distinct values of (window, aggregate, group) in one key group.
    Run {
        window: Window,
        agg: u8,
        group: &'a [u8],
    },
    /// A running count per shard, in stores written by earlier versions.
    LegacyShardCount,
}

pub fn parse_key(key: &[u8]) -> Option<StateKey<'_>> {
    let end = decode_time(key.get(2..10)?)?;
    let tag = kind_of(key)?;
    let start = decode_time(key.get(11..19)?)?;
    let window = Window { start, end };
    match tag {
        TAG_GROUP => Some(StateKey::Group {
            window,
            group: key.get(19..)?,
        }),
        TAG_DISTINCT => {
            let at = distinct_value_at(key)?;
            Some(StateKey::Distinct {
                window,
                agg: *key.get(19)?,
                group: &key[GROUP_AT..at],
                value: &key[at..],
            })
        }
        TAG_RUN => {
            let at = distinct_value_at(key)?;
            (at == key.len()).then_some(StateKey::Run {
                window,
                agg: *key.get(19)?,
                group: &key[GROUP_AT..at],
            })
        }
        TAG_SHARD_COUNT => Some(StateKey::LegacyShardCount),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's expiry entry sorts by when it expires, so a scan up to a watermark finds it;
    /// its lookup entry sorts after every such scan.
    #[test]
    fn dedup_entries_sort_by_expiry_and_lookups_past_every_watermark() {
        let early = dedup_expiry_key(0, 7, 19_000_000, b"zz");
        let late = dedup_expiry_key(0, 7, 23_000_000, b"aa");
        assert!(early < late);
        assert!(late < kg_closed_upper(7, 23_000_000));
        assert!(kg_closed_upper(7, i64::MAX - 1) <= dedup_lookup_key(0, 7, b"aa"));
        assert_eq!(parse_dedup_expiry(&early), Some((7, &b"zz"[..])));
        assert_eq!(parse_dedup_expiry(&dedup_lookup_key(0, 7, b"zz")), None);
        // Another operator's entries are told apart by their tag.
        assert_eq!(
            operator_of(&dedup_expiry_key(3, 7, 19_000_000, b"zz")),
            Some(3)
        );
        assert_eq!(operator_of(&early), Some(0));
    }

    #[test]
    fn time_encoding_preserves_order() {
        let times = [i64::MIN, -300_000_000, -1, 0, 1, 300_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(encode_time(pair[0]) < encode_time(pair[1]));
            assert_eq!(decode_time(&encode_time(pair[0])), Some(pair[0]));
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_group_then_end() {
        let w = Window {
            start: -10,
            end: 290,
        };
        let g = b"click";
        assert_eq!(
            parse_key(&group_key(0, 3, w, g)),
            Some(StateKey::Group {
                window: w,
                group: g
            })
        );
        let legacy = {
            let mut k = group_key(0, 3, w, b"");
            k[10] = TAG_SHARD_COUNT;
            k.push(2);
            k.extend_from_slice(g);
            k
        };
        assert_eq!(parse_key(&legacy), Some(StateKey::LegacyShardCount));
        assert_eq!(
            parse_key(&distinct_key(3, w, 2, g, b"u1")),
            Some(StateKey::Distinct {
                window: w,
                agg: 2,
                group: g,
                value: b"u1"
            })
        );
        let key = distinct_key(3, w, 2, g, b"u1");
        let (head, value) = split_distinct_key(&key).unwrap();
        assert_eq!(value, b"u1");
        let run = run_key(head);
        assert_eq!(
            parse_key(&run),
            Some(StateKey::Run {
                window: w,
                agg: 2,
                group: g
            })
        );
        // A run key sorts with its window, after the window's group rows.
        assert!(run > group_key(0, 3, w, g) && run < kg_closed_upper(3, w.end));
        assert_eq!(parse_key(&[&run[..], b"u1"].concat()), None);
        assert!(split_distinct_key(&distinct_key(3, w, 2, g, b"")).is_some());
        assert!(split_distinct_key(&distinct_key(3, w, 2, g, b"u1")[..26]).is_none());
        assert!(split_distinct_key(&run).is_none());
        assert!(is_distinct_key(&distinct_key(3, w, 2, g, b"u1")));
        assert!(!is_distinct_key(&distinct_key(3, w, 2, g, b"u1")[..22]));
        assert!(!is_distinct_key(&legacy));
        assert!(!is_distinct_key(&group_key(0, 3, w, g)));
        assert_eq!(key_group_of(&distinct_key(300, w, 2, g, b"u1")), Some(300));
        // The key group computed from the key is the one its definition gives.
        for i in 0..2_000u32 {
            let value = format!("user-{i}");
            let group = format!("type-{}", i % 7);
            let window = Window {
                start: i64::from(i) * 300 - 600_000,
                end: i64::from(i) * 300 - 599_700,
            };
            let mut key = Vec::new();
            let found = distinct_key_into(
                &mut key,
                0,
                window,
                (i % 3) as u8,
                group.as_bytes(),
                value.as_bytes(),
                128,
            );
            let kg = distinct_key_group_of(
                window,
                (i % 3) as u8,
                group.as_bytes(),
                value.as_bytes(),
                128,
            );
            assert_eq!(found, kg);
            assert_eq!(
                key,
                distinct_key(
                    kg,
                    window,
                    (i % 3) as u8,
                    group.as_bytes(),
                    value.as_bytes()
                )
            );
        }
        let later = Window {
            start: 290,
            end: 590,
        };
        assert!(group_key(0, 3, w, g) < group_key(0, 3, later, g));
        assert!(group_key(0, 3, later, g) < group_key(0, 4, w, g));
        // Closed-range bounds: end <= 290 is inside, end 590 outside.
        assert!(group_key(0, 3, w, g) < kg_closed_upper(3, 290));
        assert!(group_key(0, 3, later, g) > kg_closed_upper(3, 290));
        assert!(group_key(0, 3, w, g) >= kg_lower(3));
    }
}
