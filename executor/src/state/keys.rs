//! RocksDB key layout (docs/architecture.md, State layout): big-endian key group, then window end,
//! then the rest, so an owner scans its windows in end order and drops a key-group range with one
//! range delete.
//!
//! ```text
//! group row    [kg u16][end][0][start][group key]                        -> partials
//! group runs   [kg u16][end][3][start][agg u8][FF FF FF FF]               -> each group's run
//! ```
//! A distinct value lives in the key group of (window, aggregate, group, value), so a group key
//! with few values spreads its distinct state over every key group. The values of one (key
//! group, window, aggregate) are one value, a run (`distinct_runs`) per group (`group_runs`):
//! each epoch merges its own in without reading first, and a window's distinct count is the
//! size of its group's run in each key group (a shard), summed at the group's owner when the
//! window closes.
//!
//! Values travel between executors as group runs too, each with its key: pre-aggregation sorts
//! each set's values by key group and value, so an owner writes what it receives as it is.
//! Stores written by earlier versions hold a run per group (`[kg u16][end][3][start][agg u8]
//! [len u32][group key] -> run`, sorting before the group runs of its key group, window and
//! aggregate), a key per value (`[kg u16][end][1][start][agg u8][len u32][group key][value] ->
//! ()`) and a running count per shard (`[kg u16][end][2][start][agg u8][group key] -> i64`,
//! ignored); all are counted or dropped with their window.
//!
//! A dedup query's keys (docs/architecture.md, Plan of operators) keep the layout, the time
//! being when the key expires; a second entry per key, at the end of time, finds a key by its
//! value:
//!
//! ```text
//! expiry [kg u16][expiry][0][key]                                 -> ()
//! lookup [kg u16][i64::MAX][1][key]                               -> expiry i64 BE
//! ```

use weir_common::query::keygroup::{key_group, key_group_of_parts};
use weir_common::query::window::Window;

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

fn head(kg: u32, end: i64, tag: u8, start: i64, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + extra);
    k.extend_from_slice(&(kg as u16).to_be_bytes());
    k.extend_from_slice(&encode_time(end));
    k.push(tag);
    k.extend_from_slice(&encode_time(start));
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

/// The key groups (shards) of the distinct values of one (window, aggregate, group) among
/// `key_groups`: a value's is the stable hash of the window's end and start, the aggregate
/// index, the group key's length and the group key, then the value, in that order. The parts
/// before the value are the same for the whole set, so they are encoded once.
pub struct ValueShards {
    prefix: Vec<u8>,
    /// The prefix, then room for a value that fits: a value's bytes are hashed in one piece
    /// without the prefix being copied for each value.
    short: [u8; SHORT],
    key_groups: u32,
}

/// Bytes of prefix and value hashed from a copy of `ValueShards::short`.
const SHORT: usize = 64;

impl ValueShards {
    pub fn new(w: Window, agg: u8, group: &[u8], key_groups: u32) -> Self {
        let mut prefix = Vec::with_capacity(21 + group.len());
        prefix.extend_from_slice(&encode_time(w.end));
        prefix.extend_from_slice(&encode_time(w.start));
        prefix.push(agg);
        prefix.extend_from_slice(&(group.len() as u32).to_be_bytes());
        prefix.extend_from_slice(group);
        let mut short = [0; SHORT];
        if let Some(room) = short.get_mut(..prefix.len()) {
            room.copy_from_slice(&prefix);
        }
        Self {
            prefix,
            short,
            key_groups,
        }
    }

    /// The key group of `value`.
    pub fn of(&self, value: &[u8]) -> u32 {
        let end = self.prefix.len() + value.len();
        if end <= SHORT {
            let mut bytes = self.short;
            bytes[self.prefix.len()..end].copy_from_slice(value);
            key_group(&bytes[..end], self.key_groups)
        } else {
            key_group_of_parts(&[&self.prefix, value], self.key_groups)
        }
    }
}

/// A distinct key of the layout stores of earlier versions hold: one per value, its run's
/// key (under tag 1) with the value after it.
#[cfg(test)]
pub fn distinct_key(kg: u32, w: Window, agg: u8, group: &[u8], value: &[u8]) -> Vec<u8> {
    let mut k = set_key(kg, w, tag(0, TAG_DISTINCT), agg, group, value.len());
    k.extend_from_slice(value);
    k
}

/// The key of the run that holds the distinct values of (window, aggregate `agg`, group) of
/// operator `op` in key group `kg`, as stores of earlier versions hold them and executors of
/// earlier versions take them.
pub fn run_key(op: u8, kg: u32, w: Window, agg: u8, group: &[u8]) -> Vec<u8> {
    set_key(kg, w, tag(op, TAG_RUN), agg, group, 0)
}

/// Marks a run key that holds every group's runs (`group_runs`) where a run key of one group
/// has its group key's length: past any length, so it sorts after the runs of one group that
/// stores of earlier versions hold for the same (key group, window, aggregate).
const ALL_GROUPS: [u8; 4] = [0xFF; 4];

/// The key of the group runs (`group_runs`) that hold the distinct values of every group of
/// (window, aggregate `agg`) of operator `op` in key group `kg`.
pub fn group_runs_key(op: u8, kg: u32, w: Window, agg: u8) -> Vec<u8> {
    let mut k = head(kg, w.end, tag(op, TAG_RUN), w.start, 5);
    k.push(agg);
    k.extend_from_slice(&ALL_GROUPS);
    k
}

/// Whether `key` is a group runs key (its value is `group_runs`, not a run of one group).
pub fn is_group_runs_key(key: &[u8]) -> bool {
    kind_of(key) == Some(TAG_RUN) && key.len() == GROUP_AT && key[20..GROUP_AT] == ALL_GROUPS
}

/// The keys that hold the values of the same (key group, window, aggregate) as `key` (group
/// runs, or a run of one group): the runs of one group that earlier versions wrote, then the
/// group runs. `None` for a key that is neither.
pub fn runs_of_key_range(key: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    (kind_of(key) == Some(TAG_RUN)).then_some(())?;
    let lower = key.get(..20)?.to_vec();
    let mut upper = [&lower[..], &ALL_GROUPS].concat();
    upper.push(0);
    Some((lower, upper))
}

/// The key of (window, aggregate `agg`, group) in key group `kg` under `tag`, with room for
/// `extra` bytes after it.
fn set_key(kg: u32, w: Window, tag: u8, agg: u8, group: &[u8], extra: usize) -> Vec<u8> {
    let mut k = head(kg, w.end, tag, w.start, 5 + group.len() + extra);
    k.push(agg);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k
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
    /// The exact-distinct values of every group of (window, aggregate) in one key group.
    GroupRuns {
        window: Window,
        agg: u8,
    },
    /// The exact-distinct values of (window, aggregate, group) in one key group, as stores of
    /// earlier versions keep them.
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
        TAG_RUN if is_group_runs_key(key) => Some(StateKey::GroupRuns {
            window,
            agg: *key.get(19)?,
        }),
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
        let run = run_key(0, 3, w, 2, g);
        assert_eq!(
            parse_key(&run),
            Some(StateKey::Run {
                window: w,
                agg: 2,
                group: g
            })
        );
        assert_eq!(key_group_of(&run), Some(3));
        assert_eq!(operator_of(&run_key(5, 3, w, 2, g)), Some(5));
        // A run key sorts with its window, after the window's group rows.
        assert!(run > group_key(0, 3, w, g) && run < kg_closed_upper(3, w.end));
        assert_eq!(parse_key(&[&run[..], b"u1"].concat()), None);
        assert_eq!(key_group_of(&distinct_key(300, w, 2, g, b"u1")), Some(300));
        // A value's key group is the stable hash of its parts laid end to end: the layout's
        // definition, which the runs in every checkpoint were placed by.
        for i in 0..2_000u32 {
            // Values that fit beside the parts before them in 64 bytes, and longer ones.
            let value = format!("user-{i}{}", "x".repeat((i % 60) as usize));
            let group = format!("type-{}", i % 7);
            let window = Window {
                start: i64::from(i) * 300 - 600_000,
                end: i64::from(i) * 300 - 599_700,
            };
            let agg = (i % 3) as u8;
            let joined = [
                &encode_time(window.end)[..],
                &encode_time(window.start),
                &[agg],
                &(group.len() as u32).to_be_bytes(),
                group.as_bytes(),
                value.as_bytes(),
            ]
            .concat();
            let shards = ValueShards::new(window, agg, group.as_bytes(), 128);
            assert_eq!(
                shards.of(value.as_bytes()),
                weir_common::query::keygroup::key_group(&joined, 128)
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
