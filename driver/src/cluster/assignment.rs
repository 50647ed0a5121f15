//! Who reads which Kafka partitions and owns which key groups in an epoch.
//!
//! Key groups go to executors in contiguous ranges by Flink's formula over the executors sorted
//! by id. Partitions are balanced (counts differ by at most one) and stay where they were when
//! their executor is still there, so a rescale moves as few partitions as it can.

use std::collections::{BTreeMap, BTreeSet};

use weir_common::checkpoint::Assignment;
use weir_common::keygroup::range_for_owner;

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
    let n = ids.len();
    let partitions: BTreeSet<i32> = partitions.iter().copied().collect();
    // The first `extra` executors (in id order) may hold one partition more than the others.
    let base = partitions.len() / n;
    let extra = partitions.len() % n;
    let quota = |i: usize| base + usize::from(i < extra);
    let mut owned: BTreeMap<&String, Vec<i32>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    let mut unplaced = Vec::new();
    let was: BTreeMap<i32, &String> = previous
        .iter()
        .flat_map(|a| a.partitions.iter().map(move |p| (*p, &a.executor_id)))
        .collect();
    for p in &partitions {
        let keep = was.get(p).and_then(|id| {
            let i = ids.iter().position(|x| x == id)?;
            (owned[ids[i]].len() < quota(i)).then_some(ids[i])
        });
        match keep.and_then(|id| owned.get_mut(id)) {
            Some(v) => v.push(*p),
            None => unplaced.push(*p),
        }
    }
    for p in unplaced {
        // Fill the executor furthest below its quota (ties to the smallest id).
        if let Some((i, _)) = ids
            .iter()
            .enumerate()
            .filter(|(i, id)| owned[**id].len() < quota(*i))
            .max_by_key(|(i, id)| (quota(*i) - owned[**id].len(), std::cmp::Reverse(*i)))
        {
            if let Some(v) = owned.get_mut(ids[i]) {
                v.push(p);
            }
        }
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let range = range_for_owner(key_groups, n as u32, i as u32);
            let mut parts = owned.remove(*id).unwrap_or_default();
            parts.sort_unstable();
            Assignment {
                executor_id: (*id).clone(),
                partitions: parts,
                key_groups: (range.start, range.end),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check_balanced(a: &[Assignment], partitions: usize, key_groups: u32) {
        let mut all: Vec<i32> = a.iter().flat_map(|x| x.partitions.clone()).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..partitions as i32).collect::<Vec<_>>(),
            "every partition exactly once"
        );
        let sizes: Vec<usize> = a.iter().map(|x| x.partitions.len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        let mut next = 0;
        for x in a {
            assert_eq!(x.key_groups.0, next);
            next = x.key_groups.1;
        }
        assert_eq!(next, key_groups);
    }

    #[test]
    fn one_executor_gets_everything() {
        let a = assign(&[0, 1, 2, 3], &ids(&["e0"]), 256, &[]);
        assert_eq!(
            a,
            vec![Assignment {
                executor_id: "e0".into(),
                partitions: vec![0, 1, 2, 3],
                key_groups: (0, 256),
            }]
        );
    }

    #[test]
    fn balanced_and_stable_under_rescaling() {
        let parts: Vec<i32> = (0..8).collect();
        let three = assign(&parts, &ids(&["b", "a", "c"]), 256, &[]);
        check_balanced(&three, 8, 256);
        assert_eq!(three[0].executor_id, "a");
        // Adding a fourth executor moves only the partitions it must take.
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
        // Losing one executor moves only its partitions.
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
}
