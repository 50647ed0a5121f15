//! Who owns which key groups in an epoch, from the driver's request.

use std::ops::Range;

use weir_common::query::keygroup::KeyGroups;
use weir_proto::control::ExecuteRequest;

use crate::exchange::{Peer, EXCHANGE_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("key group {0} has no owner in the plan")]
    Unowned(u32),
    #[error("key group {kg} has two owners in the plan: {a} and {b}")]
    TwoOwners { kg: u32, a: String, b: String },
    #[error("key group range {start}..{end} is outside the job's {key_groups} key groups")]
    OutOfRange {
        start: u32,
        end: u32,
        key_groups: u32,
    },
    #[error("this executor ({0}) is not among the plan's executors")]
    NotAPeer(String),
}

/// The executors of an epoch and the owner of every key group.
#[derive(Debug, Clone)]
pub struct Topology {
    pub peers: Vec<Peer>,
    /// This executor's index in `peers`.
    pub me: usize,
    /// `owners[kg]`: index in `peers` of the owner of key group `kg`.
    pub owners: Vec<usize>,
    /// By index in `peers`: it takes only runs of one group (it declared no exchange format,
    /// predating group runs). Never this executor.
    pub one_group_runs: Vec<bool>,
}

impl Topology {
    pub fn from_request(
        req: &ExecuteRequest,
        executor_id: &str,
        key_groups: u32,
    ) -> Result<Self, TopologyError> {
        if req.peers.is_empty() {
            // A plan without peers runs on this executor alone.
            return Ok(Topology {
                peers: vec![Peer {
                    executor_id: executor_id.to_string(),
                    address: String::new(),
                }],
                me: 0,
                owners: vec![0; key_groups as usize],
                one_group_runs: vec![false],
            });
        }
        let mut owners: Vec<Option<usize>> = vec![None; key_groups as usize];
        let mut peers = Vec::with_capacity(req.peers.len());
        for (i, p) in req.peers.iter().enumerate() {
            for r in &p.key_groups {
                if r.start > r.end || r.end > key_groups {
                    return Err(TopologyError::OutOfRange {
                        start: r.start,
                        end: r.end,
                        key_groups,
                    });
                }
                for kg in r.start..r.end {
                    if let Some(prev) = owners[kg as usize] {
                        return Err(TopologyError::TwoOwners {
                            kg,
                            a: req.peers[prev].executor_id.clone(),
                            b: p.executor_id.clone(),
                        });
                    }
                    owners[kg as usize] = Some(i);
                }
            }
            peers.push(Peer {
                executor_id: p.executor_id.clone(),
                address: p.address.clone(),
            });
        }
        let owners = owners
            .into_iter()
            .enumerate()
            .map(|(kg, o)| o.ok_or(TopologyError::Unowned(kg as u32)))
            .collect::<Result<Vec<_>, _>>()?;
        let me = peers
            .iter()
            .position(|p| p.executor_id == executor_id)
            .ok_or_else(|| TopologyError::NotAPeer(executor_id.to_string()))?;
        let one_group_runs = (req.peers.iter().enumerate())
            .map(|(i, p)| i != me && p.exchange_format < EXCHANGE_FORMAT)
            .collect();
        Ok(Topology {
            peers,
            me,
            owners,
            one_group_runs,
        })
    }

    /// The key groups this executor owns, as contiguous ranges.
    pub fn owned(&self) -> Vec<Range<u32>> {
        let mut ranges: Vec<Range<u32>> = Vec::new();
        for (kg, owner) in self.owners.iter().enumerate() {
            if *owner != self.me {
                continue;
            }
            let kg = kg as u32;
            match ranges.last_mut() {
                Some(r) if r.end == kg => r.end = kg + 1,
                _ => ranges.push(kg..kg + 1),
            }
        }
        ranges
    }

    /// The key groups this executor owns, as a set.
    pub fn my_key_groups(&self) -> KeyGroups {
        KeyGroups::from_ranges(self.owned().into_iter().map(|r| (r.start, r.end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::control::{KeyGroupRange, Peer as ProtoPeer};

    fn peer(id: &str, ranges: &[(u32, u32)]) -> ProtoPeer {
        ProtoPeer {
            executor_id: id.into(),
            address: format!("http://{id}:7400"),
            key_groups: ranges
                .iter()
                .map(|(start, end)| KeyGroupRange {
                    start: *start,
                    end: *end,
                })
                .collect(),
            exchange_format: EXCHANGE_FORMAT,
        }
    }

    fn request(peers: Vec<ProtoPeer>) -> ExecuteRequest {
        ExecuteRequest {
            peers,
            ..Default::default()
        }
    }

    #[test]
    fn owners_follow_the_plan() {
        let req = request(vec![peer("a", &[(0, 3)]), peer("b", &[(3, 8)])]);
        let t = Topology::from_request(&req, "b", 8).unwrap();
        assert_eq!(t.me, 1);
        assert_eq!(t.owners, vec![0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(t.owned(), vec![3..8]);
    }

    /// A peer that declared no exchange format (it predates group runs) is marked to be sent
    /// runs of one group; this executor never is, whatever the plan says of it.
    #[test]
    fn peers_without_an_exchange_format_are_sent_runs_of_one_group() {
        let old = |id, ranges| ProtoPeer {
            exchange_format: 0,
            ..peer(id, ranges)
        };
        let req = request(vec![
            peer("a", &[(0, 3)]),
            old("b", &[(3, 6)]),
            old("c", &[(6, 8)]),
        ]);
        let t = Topology::from_request(&req, "c", 8).unwrap();
        assert_eq!(t.one_group_runs, [false, true, false]);
    }

    #[test]
    fn an_executor_may_own_several_ranges() {
        let req = request(vec![
            peer("a", &[(0, 2), (5, 6)]),
            peer("b", &[(2, 5), (6, 8)]),
        ]);
        let t = Topology::from_request(&req, "a", 8).unwrap();
        assert_eq!(t.owned(), vec![0..2, 5..6]);
        assert_eq!(t.my_key_groups(), KeyGroups::from_ranges([(0, 2), (5, 6)]));
    }

    #[test]
    fn gaps_overlaps_and_strangers_are_refused() {
        let gap = request(vec![peer("a", &[(0, 3)]), peer("b", &[(4, 8)])]);
        assert!(matches!(
            Topology::from_request(&gap, "a", 8),
            Err(TopologyError::Unowned(3))
        ));
        let overlap = request(vec![peer("a", &[(0, 4)]), peer("b", &[(3, 8)])]);
        assert!(matches!(
            Topology::from_request(&overlap, "a", 8),
            Err(TopologyError::TwoOwners { kg: 3, .. })
        ));
        let ok = request(vec![peer("a", &[(0, 8)])]);
        assert!(matches!(
            Topology::from_request(&ok, "z", 8),
            Err(TopologyError::NotAPeer(_))
        ));
        let wide = request(vec![peer("a", &[(0, 9)])]);
        assert!(matches!(
            Topology::from_request(&wide, "a", 8),
            Err(TopologyError::OutOfRange { .. })
        ));
    }

    #[test]
    fn without_peers_one_executor_owns_everything() {
        let t = Topology::from_request(&request(vec![]), "solo", 4).unwrap();
        assert_eq!(t.owned(), vec![0..4]);
    }
}
