//! Key hashing and key groups (docs/architecture.md, Assignment). The hash is xxh3-64 with seed 0:
//! fixed across processes, versions and platforms, so a checkpoint stays valid forever.

use std::ops::Range;

/// The stable 64-bit hash of key bytes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The key group of key bytes among `key_groups`.
pub fn key_group(bytes: &[u8], key_groups: u32) -> u32 {
    key_group_of_hash(stable_hash(bytes), key_groups)
}

/// The key group of a stable hash among `key_groups`: the one formula every key group comes from.
fn key_group_of_hash(hash: u64, key_groups: u32) -> u32 {
    let k = u64::from(key_groups.max(1));
    // The same number as the remainder, without a 64-bit division for each value (profiles
    // of collecting exact-distinct values showed it): key groups are a power of two unless a
    // job asks otherwise.
    if k.is_power_of_two() {
        (hash & (k - 1)) as u32
    } else {
        (hash % k) as u32
    }
}

/// The key group of the bytes of `parts` one after another, without joining them first.
pub fn key_group_of_parts(parts: &[&[u8]], key_groups: u32) -> u32 {
    use std::hash::Hasher;
    let mut hasher = StableHasher::default();
    for part in parts {
        hasher.write(part);
    }
    key_group_of_hash(hasher.finish(), key_groups)
}

/// The contiguous key-group range owned by `index` of `parallelism` owners (Flink's formula).
pub fn range_for_owner(key_groups: u32, parallelism: u32, index: u32) -> Range<u32> {
    let k = u64::from(key_groups);
    let n = u64::from(parallelism.max(1));
    let i = u64::from(index);
    let start = (i * k).div_ceil(n);
    let end = ((i + 1) * k).div_ceil(n);
    start as u32..end as u32
}

/// The owner index of a key group (the inverse of [`range_for_owner`]).
pub fn owner_of(key_group: u32, key_groups: u32, parallelism: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism.max(1)) / u64::from(key_groups.max(1))) as u32
}

/// A set of key groups, as sorted, disjoint, non-adjacent `[start, end)` ranges: what one
/// executor owns. Rescaling moves single key groups, so an owner's set need not be contiguous.
///
/// Serialized as a list of `[start, end]` pairs; a single pair (how checkpoints written before
/// ranges could split recorded ownership) reads as a set of one range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyGroups(Vec<(u32, u32)>);

impl<'de> serde::Deserialize<'de> for KeyGroups {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Ranges(Vec<(u32, u32)>),
            One((u32, u32)),
        }
        Ok(match Form::deserialize(d)? {
            Form::Ranges(r) => KeyGroups::from_ranges(r),
            Form::One(r) => KeyGroups::from_ranges([r]),
        })
    }
}

impl KeyGroups {
    /// The set of the key groups in `ranges` (in any order; empty ranges are ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut ranges: Vec<(u32, u32)> = ranges.into_iter().filter(|r| r.0 < r.1).collect();
        ranges.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match out.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => out.push((start, end)),
            }
        }
        KeyGroups(out)
    }

    /// The key groups `[start, end)`.
    pub fn range(start: u32, end: u32) -> Self {
        Self::from_ranges([(start, end)])
    }

    /// The set of single key groups `groups`.
    pub fn from_groups(groups: impl IntoIterator<Item = u32>) -> Self {
        Self::from_ranges(groups.into_iter().map(|kg| (kg, kg + 1)))
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// How many key groups the set holds.
    pub fn count(&self) -> u32 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, kg: u32) -> bool {
        self.0.iter().any(|(s, e)| *s <= kg && kg < *e)
    }

    /// The key groups in both sets.
    pub fn intersection(&self, other: &KeyGroups) -> KeyGroups {
        let mut out = Vec::new();
        for (s, e) in &self.0 {
            for (os, oe) in &other.0 {
                let (a, b) = ((*s).max(*os), (*e).min(*oe));
                if a < b {
                    out.push((a, b));
                }
            }
        }
        KeyGroups::from_ranges(out)
    }

    pub fn overlaps(&self, other: &KeyGroups) -> bool {
        !self.intersection(other).is_empty()
    }

    /// The key groups of this set that `other` does not hold.
    pub fn difference(&self, other: &KeyGroups) -> KeyGroups {
        let mut out = Vec::new();
        for &(s, e) in &self.0 {
            let mut from = s;
            for &(os, oe) in &other.0 {
                if oe <= from || os >= e {
                    continue;
                }
                if os > from {
                    out.push((from, os));
                }
                from = from.max(oe);
            }
            if from < e {
                out.push((from, e));
            }
        }
        KeyGroups::from_ranges(out)
    }

    /// The key groups of both sets.
    pub fn union(&self, other: &KeyGroups) -> KeyGroups {
        KeyGroups::from_ranges(self.0.iter().chain(other.0.iter()).copied())
    }

    /// The key groups one after another, in order.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|(s, e)| *s..*e)
    }
}

impl std::fmt::Display for KeyGroups {
    /// `0..64,128..130`, or `-` for none.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, (s, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}..{e}")?;
        }
        Ok(())
    }
}

/// A [`std::hash::BuildHasher`] for sketches that must hash the same everywhere: xxh3-64 with
/// seed 0 of the bytes a value's `Hash` writes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct StableBuildHasher;

impl std::hash::BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;

    fn build_hasher(&self) -> Self::Hasher {
        StableHasher::default()
    }
}

/// Gathers the written bytes and hashes them in one xxh3-64 call, which answers what the
/// streaming `Xxh3` does (the algorithm defines both the same) without setting up its
/// half-kilobyte state for every value a sketch takes in. Short values stay on the stack.
#[derive(Debug)]
pub struct StableHasher {
    short: [u8; 64],
    len: usize,
    /// All the bytes, once they outgrow `short`.
    long: Vec<u8>,
}

impl Default for StableHasher {
    fn default() -> Self {
        Self {
            short: [0; 64],
            len: 0,
            long: Vec::new(),
        }
    }
}

impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        if self.long.is_empty() {
            if let Some(room) = self.short.get_mut(self.len..self.len + bytes.len()) {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
                return;
            }
            self.long.extend_from_slice(&self.short[..self.len]);
        }
        self.long.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        if self.long.is_empty() {
            stable_hash(&self.short[..self.len])
        } else {
            stable_hash(&self.long)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_hasher_hashes_as_streaming_xxh3_does() {
        use std::hash::{BuildHasher, Hash, Hasher};
        // Sketches in existing checkpoints were built with the streaming hasher.
        for len in [0, 1, 15, 16, 63, 64, 65, 200, 240, 241, 1000] {
            let value: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut streaming = xxhash_rust::xxh3::Xxh3::new();
            value.hash(&mut streaming);
            "and a str".hash(&mut streaming);
            let mut ours = StableBuildHasher.build_hasher();
            value.hash(&mut ours);
            "and a str".hash(&mut ours);
            assert_eq!(ours.finish(), streaming.digest(), "{len} bytes");
        }
    }

    #[test]
    fn parts_hash_as_their_bytes_joined() {
        let long = [7u8; 100];
        for parts in [
            vec![&b""[..]],
            vec![&b"end....."[..], b"start...", b"\x01", b"group", b"value"],
            vec![&b"a"[..], &long[..], b"b"],
        ] {
            assert_eq!(
                key_group_of_parts(&parts, 32768),
                key_group(&parts.concat(), 32768)
            );
        }
    }

    #[test]
    fn hash_is_pinned() {
        // A changed value here would orphan every existing checkpoint.
        assert_eq!(stable_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(
            key_group(b"", 256),
            (0x2d06_8005_38d3_94c2_u64 % 256) as u32
        );
    }

    #[test]
    fn a_key_group_is_the_hash_modulo_the_key_groups_for_every_count() {
        // Powers of two take a mask: it must give the remainder, as checkpoints hold it.
        let hashes = [
            0,
            1,
            255,
            256,
            0x2d06_8005_38d3_94c2,
            u64::MAX,
            u64::MAX - 1,
        ];
        for k in (1..=32768u32).chain([u32::MAX]) {
            for hash in hashes {
                assert_eq!(
                    u64::from(key_group_of_hash(hash, k)),
                    hash % u64::from(k),
                    "{hash:#x} of {k}"
                );
            }
        }
        assert_eq!(key_group_of_hash(u64::MAX, 0), 0);
    }

    #[test]
    fn ranges_partition_all_key_groups_contiguously() {
        for k in [1u32, 7, 128, 256, 1000] {
            for n in 1..=9u32 {
                let mut next = 0;
                for i in 0..n {
                    let r = range_for_owner(k, n, i);
                    assert_eq!(r.start, next, "k={k} n={n} i={i}");
                    for kg in r.clone() {
                        assert_eq!(owner_of(kg, k, n), i, "k={k} n={n} kg={kg}");
                    }
                    next = r.end;
                }
                assert_eq!(next, k);
            }
        }
    }

    #[test]
    fn key_group_sets_compute_as_sets_of_numbers() {
        use std::collections::BTreeSet;
        let as_set = |k: &KeyGroups| k.groups().collect::<BTreeSet<u32>>();
        let a = KeyGroups::from_ranges([(5, 9), (0, 3), (3, 4), (12, 12), (20, 25)]);
        assert_eq!(a.ranges(), &[(0, 4), (5, 9), (20, 25)]);
        assert_eq!(a.count(), 13);
        let b = KeyGroups::from_ranges([(2, 6), (8, 21), (30, 31)]);
        let (sa, sb) = (as_set(&a), as_set(&b));
        assert_eq!(
            as_set(&a.intersection(&b)),
            sa.intersection(&sb).copied().collect()
        );
        assert_eq!(
            as_set(&a.difference(&b)),
            sa.difference(&sb).copied().collect()
        );
        assert_eq!(as_set(&a.union(&b)), sa.union(&sb).copied().collect());
        assert_eq!(KeyGroups::from_groups(as_set(&a)), a);
        assert_eq!(a.to_string(), "0..4,5..9,20..25");
        assert_eq!(KeyGroups::default().to_string(), "-");
    }

    #[test]
    fn key_group_sets_read_the_single_range_of_older_checkpoints() {
        let old: KeyGroups = serde_json::from_str("[0, 128]").unwrap();
        assert_eq!(old, KeyGroups::range(0, 128));
        let new: KeyGroups = serde_json::from_str("[[0, 4], [8, 9]]").unwrap();
        assert_eq!(new.ranges(), &[(0, 4), (8, 9)]);
        assert_eq!(serde_json::to_string(&new).unwrap(), "[[0,4],[8,9]]");
        let none: KeyGroups = serde_json::from_str("[]").unwrap();
        assert!(none.is_empty());
    }
}
