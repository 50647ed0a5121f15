//! Offset planning: where each partition starts, and how far an epoch may read under
//! `max_offsets_per_trigger` (split over partitions in proportion to their backlog, as Spark does).

use std::collections::BTreeMap;

use weir_common::checkpoint::PartitionRange;
use weir_common::job::StartingOffsets;

use crate::source::kafka_offsets::Bounds;

/// Offsets that are no longer retained and were skipped (`fail_on_data_loss: false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// The first offset of each partition when the checkpoint has none.
pub fn initial_offsets(
    starting: &StartingOffsets,
    bounds: &BTreeMap<i32, Bounds>,
) -> BTreeMap<i32, i64> {
    bounds
        .iter()
        .map(|(&p, b)| {
            let offset = match starting {
                StartingOffsets::Earliest => b.earliest,
                StartingOffsets::Latest => b.latest,
                StartingOffsets::Partitions(map) => match map.get(&p) {
                    Some(-1) => b.latest,
                    Some(-2) | None => b.earliest,
                    Some(&o) => o,
                },
            };
            (p, offset)
        })
        .collect()
}

/// Plans the ranges of the next epoch from `start` (next offset per partition) up to `limit`
/// (the latest offsets, or the available-now target). Partitions new since the last epoch start
/// at their earliest offset. Offsets below the earliest retained one are skipped and reported.
pub fn plan_ranges(
    start: &BTreeMap<i32, i64>,
    bounds: &BTreeMap<i32, Bounds>,
    limit: &BTreeMap<i32, i64>,
    max_offsets: Option<u64>,
) -> (Vec<PartitionRange>, Vec<DataLoss>) {
    let mut losses = Vec::new();
    let mut ranges: Vec<PartitionRange> = bounds
        .iter()
        .map(|(&p, b)| {
            let mut from = start.get(&p).copied().unwrap_or(b.earliest);
            if from < b.earliest {
                losses.push(DataLoss {
                    partition: p,
                    from,
                    to: b.earliest,
                });
                from = b.earliest;
            }
            let to = limit
                .get(&p)
                .copied()
                .unwrap_or(b.latest)
                .min(b.latest)
                .max(from);
            PartitionRange {
                partition: p,
                start: from,
                end: to,
            }
        })
        .collect();
    let total: u64 = ranges.iter().map(|r| (r.end - r.start) as u64).sum();
    if let Some(cap) = max_offsets.filter(|&cap| total > cap) {
        // Proportional shares, rounding down, then the remainder by largest fraction.
        let mut shares: Vec<(u64, u128, usize)> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let backlog = (r.end - r.start) as u128;
                let exact = backlog * u128::from(cap);
                (
                    (exact / u128::from(total)) as u64,
                    exact % u128::from(total),
                    i,
                )
            })
            .collect();
        let assigned: u64 = shares.iter().map(|s| s.0).sum();
        let mut left = cap - assigned;
        shares.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        for share in shares.iter_mut() {
            if left == 0 {
                break;
            }
            share.0 += 1;
            left -= 1;
        }
        for (take, _, i) in shares {
            let r = &mut ranges[i];
            r.end = r.start + take as i64;
        }
    }
    (ranges, losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(list: &[(i32, i64, i64)]) -> BTreeMap<i32, Bounds> {
        list.iter()
            .map(|&(p, earliest, latest)| (p, Bounds { earliest, latest }))
            .collect()
    }

    #[test]
    fn starting_offsets() {
        let b = bounds(&[(0, 5, 50), (1, 0, 30)]);
        assert_eq!(
            initial_offsets(&StartingOffsets::Earliest, &b),
            BTreeMap::from([(0, 5), (1, 0)])
        );
        assert_eq!(
            initial_offsets(&StartingOffsets::Latest, &b),
            BTreeMap::from([(0, 50), (1, 30)])
        );
        let per = StartingOffsets::Partitions(BTreeMap::from([(0, 42), (1, -1)]));
        assert_eq!(
            initial_offsets(&per, &b),
            BTreeMap::from([(0, 42), (1, 30)])
        );
    }

    #[test]
    fn cap_splits_in_proportion_and_sums_exactly() {
        let b = bounds(&[(0, 0, 1000), (1, 0, 1000), (2, 0, 2000)]);
        let start = BTreeMap::from([(0, 0), (1, 0), (2, 0)]);
        let (ranges, losses) = plan_ranges(&start, &b, &BTreeMap::new(), Some(101));
        assert!(losses.is_empty());
        let sizes: Vec<i64> = ranges.iter().map(|r| r.end - r.start).collect();
        assert_eq!(sizes.iter().sum::<i64>(), 101);
        assert_eq!(sizes, vec![25, 25, 51]);
        // Without a cap everything up to the latest offsets.
        let (ranges, _) = plan_ranges(&start, &b, &BTreeMap::new(), None);
        assert_eq!(
            ranges.iter().map(|r| r.end).collect::<Vec<_>>(),
            vec![1000, 1000, 2000]
        );
    }

    #[test]
    fn limit_and_new_partitions_and_data_loss() {
        let b = bounds(&[(0, 100, 500), (1, 0, 300)]);
        let start = BTreeMap::from([(0, 40)]);
        let limit = BTreeMap::from([(0, 450), (1, 200)]);
        let (ranges, losses) = plan_ranges(&start, &b, &limit, None);
        assert_eq!(
            losses,
            vec![DataLoss {
                partition: 0,
                from: 40,
                to: 100
            }]
        );
        assert_eq!(
            ranges,
            vec![
                PartitionRange {
                    partition: 0,
                    start: 100,
                    end: 450
                },
                PartitionRange {
                    partition: 1,
                    start: 0,
                    end: 200
                },
            ]
        );
    }
}
