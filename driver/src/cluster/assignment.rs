//! Who reads which Kafka partitions and owns which key groups in an epoch (docs/architecture.md,
//! Assignment).
//!
//! Both are balanced (owners' counts differ by at most one) and move as little as the new
//! balance requires. The rule, for key groups and partitions alike:
//! 1. The quota of each executor is ⌊total / n⌋; the `total mod n` extra units go to the
//!    executors that hold the most already (ties to the smaller id), so as many as possible keep
//!    all they have.
//! 2. Every executor that stays keeps what it held, up to its quota: the lowest key groups (or
//!    partitions) of its own. What it holds above its quota is released.
//! 3. What no one kept (released, held by executors that left, or never assigned) goes in
//!    ascending order to the executors below their quota, in id order, each taking a run of
//!    consecutive ones until it is full.
//!
//! So a key group moves only when its owner left or is above its new quota, which is the
//! fewest moves any balanced assignment can make; a first assignment gives every executor one
//! contiguous range.

use std::collections::{BTreeMap, BTreeSet};

use weir_common::checkpoint::Assignment;
use weir_common::query::keygroup::KeyGroups;

/// Assigns `partitions` and `key_groups` to `executors`, keeping `previous` where it can.
pub fn assign(
    partitions: &[i32],
    executors: &[String],
    key_groups: u32,
    previous: &[Assignment],
) -> Vec<Assignment> {
    let ids: Vec<&String> = executors
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let held = |units: &dyn Fn(&Assignment) -> Vec<u32>| -> Vec<Vec<u32>> {
        ids.iter()
            .map(|id| {
                previous
                    .iter()
                    .filter(|a| &a.executor_id == *id)
                    .flat_map(units)
                    .collect()
            })
            .collect()
    };
    let groups = balance(
        &(0..key_groups).collect::<Vec<_>>(),
        &held(&|a: &Assignment| a.key_groups.groups().collect()),
    );
    // Partitions are i32 in the plan but never negative; balanced as u32 like key groups.
    let wanted: Vec<u32> = partitions
        .iter()
        .filter_map(|p| u32::try_from(*p).ok())
        .collect();
    let parts = balance(
        &wanted,
        &held(&|a: &Assignment| {
            a.partitions
                .iter()
                .filter_map(|p| u32::try_from(*p).ok())
                .collect()
        }),
    );
    ids.iter()
        .zip(groups.into_iter().zip(parts))
        .map(|(id, (groups, parts))| Assignment {
            executor_id: (*id).clone(),
            partitions: parts.into_iter().map(|p| p as i32).collect(),
            key_groups: KeyGroups::from_groups(groups),
        })
        .collect()
}

/// Splits `units` (sorted or not, each once) among owners whose current holdings are `held`
/// (indexed like the answer) by the rule in the module's documentation. Units held that are not
/// in `units`, or held twice, are ignored (the first holder keeps them).
fn balance(units: &[u32], held: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let wanted: BTreeSet<u32> = units.iter().copied().collect();
    let mut claimed: BTreeSet<u32> = BTreeSet::new();
    let current: Vec<Vec<u32>> = held
        .iter()
        .map(|h| {
            // In ascending order, each once.
            h.iter()
                .copied()
                .filter(|u| wanted.contains(u))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|u| claimed.insert(*u))
                .collect()
        })
        .collect();
    let quotas = quotas(wanted.len(), &current);
    let mut owned: Vec<Vec<u32>> = current
        .iter()
        .zip(&quotas)
        .map(|(mine, quota)| mine.iter().copied().take(*quota).collect())
        .collect();
    let kept: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    let mut free = wanted.into_iter().filter(|u| !kept.contains(u));
    for (mine, quota) in owned.iter_mut().zip(&quotas) {
        let missing = quota.saturating_sub(mine.len());
        mine.extend(free.by_ref().take(missing));
        // Units taken from the pool may sort before the ones kept.
        mine.sort_unstable();
    }
    owned
}

/// Each owner's quota of `total` units: ⌊total / n⌋, one more for the `total mod n` owners that
/// hold the most now (ties to the earlier owner).
fn quotas(total: usize, current: &[Vec<u32>]) -> Vec<usize> {
    let n = current.len().max(1);
    let (base, extra) = (total / n, total % n);
    let mut by_holdings: Vec<usize> = (0..current.len()).collect();
    by_holdings.sort_by_key(|i| (std::cmp::Reverse(current[*i].len()), *i));
    let mut quotas = vec![base; current.len()];
    for i in by_holdings.into_iter().take(extra) {
        quotas[i] += 1;
    }
    quotas
}

/// How many key groups change owner (or get one) from `before` to `after`.
pub fn moved_key_groups(before: &[Assignment], after: &[Assignment]) -> u32 {
    let owner = |a: &[Assignment]| -> BTreeMap<u32, String> {
        a.iter()
            .flat_map(|x| {
                x.key_groups
                    .groups()
                    .map(move |kg| (kg, x.executor_id.clone()))
            })
            .collect()
    };
    let (was, now) = (owner(before), owner(after));
    now.iter()
        .filter(|(kg, id)| was.get(kg) != Some(id))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Every partition and key group exactly once, counts within one of each other.
    fn check_balanced(a: &[Assignment], partitions: usize, key_groups: u32) {
        let mut all: Vec<i32> = a.iter().flat_map(|x| x.partitions.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..partitions as i32).collect::<Vec<_>>());
        let sizes: Vec<usize> = a.iter().map(|x| x.partitions.len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        let mut groups: Vec<u32> = a.iter().flat_map(|x| x.key_groups.groups()).collect();
        groups.sort_unstable();
        assert_eq!(groups, (0..key_groups).collect::<Vec<_>>());
        let counts: Vec<u32> = a.iter().map(|x| x.key_groups.count()).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }

    /// The fewest key groups any balanced assignment of `after_ids` can move from `before`,
    /// found by trying every choice of which executors get the extra key group.
    fn fewest_moves(before: &[Assignment], after_ids: &[String], k: u32) -> u32 {
        let n = after_ids.len();
        let (base, extra) = (k as usize / n, k as usize % n);
        let held: Vec<usize> = after_ids
            .iter()
            .map(|id| {
                before
                    .iter()
                    .filter(|a| &a.executor_id == id)
                    .map(|a| a.key_groups.count() as usize)
                    .sum()
            })
            .collect();
        let mut best = usize::MAX;
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != extra {
                continue;
            }
            let kept: usize = (0..n)
                .map(|i| held[i].min(base + usize::from(mask & (1 << i) != 0)))
                .sum();
            best = best.min(k as usize - kept);
        }
        best as u32
    }

    #[test]
    fn one_executor_gets_everything() {
        let a = assign(&[0, 1, 2, 3], &ids(&["e0"]), 256, &[]);
        assert_eq!(
            a,
            vec![Assignment {
                executor_id: "e0".into(),
                partitions: vec![0, 1, 2, 3],
                key_groups: KeyGroups::range(0, 256),
            }]
        );
    }

    #[test]
    fn a_first_assignment_gives_contiguous_ranges_in_id_order() {
        let a = assign(&[0, 1, 2], &ids(&["b", "a", "c"]), 256, &[]);
        check_balanced(&a, 3, 256);
        let ranges: Vec<&[(u32, u32)]> = a.iter().map(|x| x.key_groups.ranges()).collect();
        assert_eq!(ranges, vec![&[(0, 86)][..], &[(86, 171)], &[(171, 256)]]);
        assert_eq!(a[0].executor_id, "a");
    }

    #[test]
    fn scaling_up_moves_only_what_the_new_executor_takes() {
        let parts: Vec<i32> = (0..8).collect();
        let one = assign(&parts, &ids(&["a"]), 256, &[]);
        let two = assign(&parts, &ids(&["a", "b"]), 256, &one);
        check_balanced(&two, 8, 256);
        assert_eq!(moved_key_groups(&one, &two), 128);
        let three = assign(&parts, &ids(&["a", "b", "c"]), 256, &two);
        check_balanced(&three, 8, 256);
        // c takes 85: a and b each give up what they hold above their new share.
        assert_eq!(moved_key_groups(&two, &three), 85);
        for (before, after) in two.iter().zip(&three) {
            assert!(
                after.key_groups.difference(&before.key_groups).is_empty(),
                "{} only gives key groups away",
                before.executor_id
            );
        }
        // Scaling back down moves only the leaver's key groups.
        let back = assign(&parts, &ids(&["a", "b"]), 256, &three);
        check_balanced(&back, 8, 256);
        assert_eq!(moved_key_groups(&three, &back), three[2].key_groups.count());
    }

    #[test]
    fn partitions_stay_where_they_were() {
        let parts: Vec<i32> = (0..8).collect();
        let three = assign(&parts, &ids(&["b", "a", "c"]), 256, &[]);
        let four = assign(&parts, &ids(&["a", "b", "c", "d"]), 256, &three);
        check_balanced(&four, 8, 256);
        let moved = |before: &[Assignment], after: &[Assignment]| {
            parts
                .iter()
                .filter(|p| {
                    let owner = |a: &[Assignment]| {
                        a.iter()
                            .find(|x| x.partitions.contains(p))
                            .map(|x| x.executor_id.clone())
                    };
                    owner(before) != owner(after)
                })
                .count()
        };
        assert_eq!(moved(&three, &four), 2);
        let lost_b = assign(&parts, &ids(&["a", "c", "d"]), 256, &four);
        check_balanced(&lost_b, 8, 256);
        assert_eq!(moved(&four, &lost_b), four[1].partitions.len());
    }

    #[test]
    fn more_executors_than_partitions() {
        let a = assign(&[0, 1], &ids(&["a", "b", "c"]), 7, &[]);
        check_balanced(&a, 2, 7);
        assert!(a[2].partitions.is_empty());
    }

    #[test]
    fn an_older_checkpoints_single_ranges_are_kept_as_they_are() {
        // Checkpoints written before this rule hold Flink's ranges (84/86/86 for 256 over 3).
        let before: Vec<Assignment> = [("a", 0, 85), ("b", 85, 171), ("c", 171, 256)]
            .iter()
            .map(|(id, s, e)| Assignment {
                executor_id: id.to_string(),
                partitions: vec![],
                key_groups: KeyGroups::range(*s, *e),
            })
            .collect();
        let after = assign(&[], &ids(&["a", "b", "c"]), 256, &before);
        assert_eq!(moved_key_groups(&before, &after), 0);
    }

    proptest! {
        /// Any sequence of executor sets: each step is balanced and moves exactly the fewest key
        /// groups a balanced assignment can.
        #[test]
        fn every_rescale_moves_the_fewest_key_groups(
            steps in prop::collection::vec(prop::collection::btree_set(0u8..8, 1..7), 1..12),
            k in prop::sample::select(vec![7u32, 64, 256, 1000]),
            partitions in 0usize..12,
        ) {
            let parts: Vec<i32> = (0..partitions as i32).collect();
            let mut before: Vec<Assignment> = Vec::new();
            for step in steps {
                let executors: Vec<String> = step.iter().map(|i| format!("e{i}")).collect();
                let after = assign(&parts, &executors, k, &before);
                check_balanced(&after, partitions, k);
                let fewest = if before.is_empty() { k } else { fewest_moves(&before, &executors, k) };
                prop_assert_eq!(moved_key_groups(&before, &after), fewest);
                before = after;
            }
        }
    }
}
