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
    (hash % u64::from(key_groups.max(1))) as u32
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
}
