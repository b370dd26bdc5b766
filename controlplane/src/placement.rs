//! Replica placement: which brokers hold the replicas of new partitions.
//!
//! Pure and deterministic: the same brokers and table always give the same
//! replica sets, whatever order the brokers come in (they are sorted by id
//! first), so a placement can be recomputed and checked anywhere. The
//! proposer calls it with the snapshot's live brokers; the state machine only
//! validates what it is given.
//!
//! Each new partition is placed greedily, one after the other:
//!
//! 1. The leader (first replica, the preferred leader) is the broker that
//!    leads the fewest partitions, counting the preferred leaders already in
//!    the table, so leadership stays even across topics; ties go to the
//!    broker with the fewest replicas, then the lowest id.
//! 2. Each follower is a broker not yet in the set, on a rack the set does
//!    not use yet if there is one, else any; among those the one with the
//!    fewest replicas; ties go to the first after the leader in id order
//!    (wrapping).
//!
//! A broker without a rack counts as a rack of its own, so with no racks at
//! all step 2 only spreads replicas. With `r` racks a set spans
//! `min(rf, r)` of them: a rack is reused only once every rack is used.
//! Rebalancing existing partitions is not this module's job.
//!
//! Cost: O(table) to count the current load, then O(partitions * rf *
//! brokers); a cluster has a handful of brokers and rf is at most
//! `REPLICATION_FACTOR_MAX`.

use crate::topics::{ReplicaSet, TopicTable, PARTITIONS_MAX, REPLICATION_FACTOR_MAX};
use ferrolog_model::NodeId;
use std::collections::BTreeMap;

/// Why no placement exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// `rf` is 0, above the number of live brokers, or above
    /// `REPLICATION_FACTOR_MAX`.
    #[error(
        "replication factor {rf} with {brokers} live broker(s): it must be in 1..={}",
        rf_max(*.brokers)
    )]
    ReplicationFactor { rf: usize, brokers: usize },
}

/// The largest replication factor `brokers` live brokers can hold.
fn rf_max(brokers: usize) -> usize {
    brokers.min(REPLICATION_FACTOR_MAX)
}

/// What placement tracks per broker.
struct Load {
    id: NodeId,
    /// Index of the broker's rack; a broker without a rack has its own.
    rack: usize,
    /// Partitions whose preferred leader (first replica) it is.
    leaders: usize,
    replicas: usize,
}

/// Replica sets for `partitions` new partitions, in order: `rf` distinct
/// brokers each, chosen among `brokers` (id and rack of every live broker)
/// as the module doc describes. `current` is the table the partitions join
/// (for CreatePartitions it holds the topic's existing partitions): the load
/// of its replicas on `brokers` is counted; replicas on other nodes are
/// ignored.
///
/// Panics if a broker id is listed twice or `partitions` exceeds
/// `PARTITIONS_MAX`: callers pass the snapshot's brokers and validated
/// counts.
pub fn place(
    brokers: &[(NodeId, Option<String>)],
    current: &TopicTable,
    partitions: usize,
    rf: usize,
) -> Result<Vec<ReplicaSet>, PlacementError> {
    if rf == 0 || rf > rf_max(brokers.len()) {
        return Err(PlacementError::ReplicationFactor {
            rf,
            brokers: brokers.len(),
        });
    }
    assert!(
        partitions <= PARTITIONS_MAX as usize,
        "placing {partitions} partitions, more than a topic may have"
    );
    let mut load = loads(brokers);
    let mut index: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (i, l) in load.iter().enumerate() {
        assert!(index.insert(l.id, i).is_none(), "broker {} listed twice", l.id);
    }
    for a in current.topics.values().flat_map(|t| &t.assignments) {
        for (k, node) in a.replicas.iter().enumerate() {
            if let Some(&i) = index.get(node) {
                load[i].replicas += 1;
                load[i].leaders += usize::from(k == 0);
            }
        }
    }
    let n = load.len();
    let mut out = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let leader = (0..n)
            .min_by_key(|&i| (load[i].leaders, load[i].replicas, i))
            .expect("rf >= 1, so there is at least one broker");
        let mut chosen = Vec::with_capacity(rf);
        chosen.push(leader);
        while chosen.len() < rf {
            let follower = (0..n)
                .filter(|i| !chosen.contains(i))
                .min_by_key(|&i| {
                    let rack_used = chosen.iter().any(|&c| load[c].rack == load[i].rack);
                    (rack_used, load[i].replicas, (i + n - leader) % n)
                })
                .expect("rf <= brokers, so an unchosen broker is left");
            chosen.push(follower);
        }
        load[leader].leaders += 1;
        for &i in &chosen {
            load[i].replicas += 1;
        }
        out.push(chosen.iter().map(|&i| load[i].id).collect());
    }
    Ok(out)
}

/// The brokers sorted by id, with rack indices and no load yet.
fn loads(brokers: &[(NodeId, Option<String>)]) -> Vec<Load> {
    let mut sorted: Vec<&(NodeId, Option<String>)> = brokers.iter().collect();
    sorted.sort_by_key(|(id, _)| *id);
    let mut racks: BTreeMap<&str, usize> = BTreeMap::new();
    let mut next_rack = 0;
    sorted
        .into_iter()
        .map(|(id, rack)| {
            let rack = match rack {
                Some(name) => *racks.entry(name.as_str()).or_insert_with(|| {
                    next_rack += 1;
                    next_rack - 1
                }),
                None => {
                    next_rack += 1;
                    next_rack - 1
                }
            };
            Load {
                id: *id,
                rack,
                leaders: 0,
                replicas: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{apply, TopicCommand};
    use crate::topics::ConfigOverrides;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn nodes(ids: &[i32]) -> Vec<(NodeId, Option<String>)> {
        ids.iter().map(|&i| (NodeId(i), None)).collect()
    }

    fn create(table: &mut TopicTable, name: &str, assignments: Vec<ReplicaSet>) {
        let id = table.topics.len() as u128 + 1;
        let cmd = TopicCommand::CreateTopic {
            name: name.into(),
            id,
            config: ConfigOverrides::new(),
            assignments,
        };
        apply(table, &cmd).expect("a placement the state machine accepts");
    }

    /// Preferred leaders per broker of `brokers`, over the whole table.
    fn leader_counts(brokers: &[(NodeId, Option<String>)], table: &TopicTable) -> Vec<usize> {
        brokers
            .iter()
            .map(|(id, _)| {
                table
                    .topics
                    .values()
                    .flat_map(|t| &t.assignments)
                    .filter(|a| a.replicas[0] == *id)
                    .count()
            })
            .collect()
    }

    fn spread(counts: &[usize]) -> usize {
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
    }

    #[test]
    fn leaders_and_replicas_go_round_an_even_cluster() {
        let sets = place(&nodes(&[3, 1, 2]), &TopicTable::default(), 4, 2).expect("place");
        let ids = |v: &[i32]| v.iter().map(|&i| NodeId(i)).collect::<Vec<_>>();
        // After [1, 2], broker 3 leads: no leaders and no replicas yet.
        assert_eq!(sets, vec![ids(&[1, 2]), ids(&[3, 1]), ids(&[2, 3]), ids(&[1, 2])]);
    }

    #[test]
    fn racks_are_spread_before_any_is_reused() {
        let brokers = vec![
            (NodeId(1), Some("a".to_string())),
            (NodeId(2), Some("a".to_string())),
            (NodeId(3), Some("b".to_string())),
            (NodeId(4), Some("b".to_string())),
        ];
        let sets = place(&brokers, &TopicTable::default(), 4, 2).expect("place");
        let rack = |n: NodeId| if n.0 <= 2 { 'a' } else { 'b' };
        for s in &sets {
            assert_ne!(rack(s[0]), rack(s[1]), "{sets:?}");
        }
    }

    #[test]
    fn new_partitions_of_a_topic_count_its_existing_leaders() {
        let brokers = nodes(&[0, 1, 2]);
        let mut table = TopicTable::default();
        create(&mut table, "t", vec![vec![NodeId(0)], vec![NodeId(1)]]);
        let sets = place(&brokers, &table, 1, 1).expect("place");
        assert_eq!(sets, vec![vec![NodeId(2)]]);
    }

    #[test]
    fn replication_factor_outside_the_cluster_is_refused() {
        let table = TopicTable::default();
        let refused = |brokers: usize, rf| PlacementError::ReplicationFactor { rf, brokers };
        assert_eq!(place(&nodes(&[0]), &table, 1, 2), Err(refused(1, 2)));
        assert_eq!(place(&nodes(&[0]), &table, 1, 0), Err(refused(1, 0)));
        assert_eq!(place(&[], &table, 1, 1), Err(refused(0, 1)));
        let many: Vec<i32> = (0..20).collect();
        assert_eq!(
            place(&nodes(&many), &table, 1, REPLICATION_FACTOR_MAX + 1),
            Err(refused(20, REPLICATION_FACTOR_MAX + 1))
        );
        assert_eq!(
            refused(1, 2).to_string(),
            "replication factor 2 with 1 live broker(s): it must be in 1..=1"
        );
    }

    #[test]
    #[should_panic(expected = "listed twice")]
    fn a_broker_listed_twice_is_a_bug() {
        let _ = place(&nodes(&[1, 1]), &TopicTable::default(), 1, 1);
    }

    /// How a generated cluster names racks.
    #[derive(Clone, Copy, Debug)]
    enum Racks {
        None,
        All,
        Some,
    }

    /// 1..=8 brokers with distinct ids, in any order; racks from a pool of up
    /// to 4 names on no broker, every broker or some brokers.
    fn cluster() -> impl Strategy<Value = Vec<(NodeId, Option<String>)>> {
        let mode = prop_oneof![Just(Racks::None), Just(Racks::All), Just(Racks::Some)];
        (proptest::collection::btree_set(0..64i32, 1..=8), mode, 1..=4usize)
            .prop_flat_map(|(ids, mode, racks)| {
                let n = ids.len();
                (
                    Just(ids),
                    Just(mode),
                    proptest::collection::vec((prop::bool::ANY, 0..racks), n),
                )
            })
            .prop_map(|(ids, mode, racks)| {
                ids.into_iter()
                    .zip(racks)
                    .map(|(id, (named, r))| {
                        let rack = match mode {
                            Racks::None => None,
                            Racks::All => Some(r),
                            Racks::Some => named.then_some(r),
                        };
                        (NodeId(id), rack.map(|r| format!("rack-{r}")))
                    })
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    /// Distinct racks among `brokers`, a rack-less broker counting as one.
    fn rack_count(brokers: &[(NodeId, Option<String>)]) -> usize {
        let named: BTreeSet<&String> = brokers.iter().filter_map(|(_, r)| r.as_ref()).collect();
        named.len() + brokers.iter().filter(|(_, r)| r.is_none()).count()
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_live_brokers_on_as_many_racks_as_possible(
            brokers in cluster(),
            partitions in 0..40usize,
            rf_pick in 1..=8usize,
        ) {
            let rf = rf_pick.min(brokers.len());
            let sets = place(&brokers, &TopicTable::default(), partitions, rf).expect("place");
            prop_assert_eq!(sets.len(), partitions);
            let rack_of: BTreeMap<NodeId, Option<&String>> =
                brokers.iter().map(|(id, r)| (*id, r.as_ref())).collect();
            let want_racks = rf.min(rack_count(&brokers));
            for s in &sets {
                prop_assert_eq!(s.len(), rf);
                let distinct: BTreeSet<NodeId> = s.iter().copied().collect();
                prop_assert_eq!(distinct.len(), rf, "{:?}", s);
                prop_assert!(s.iter().all(|n| rack_of.contains_key(n)), "{:?}", s);
                let named: BTreeSet<&String> = s.iter().filter_map(|n| rack_of[n]).collect();
                let racks = named.len() + s.iter().filter(|n| rack_of[*n].is_none()).count();
                prop_assert_eq!(racks, want_racks, "{:?} on {:?}", s, brokers);
            }
        }

        #[test]
        fn leaders_stay_within_one_of_each_other_across_topics(
            brokers in cluster(),
            topics in proptest::collection::vec((1..30usize, 1..=4usize), 1..5),
        ) {
            let mut table = TopicTable::default();
            for (t, (partitions, rf_pick)) in topics.into_iter().enumerate() {
                let rf = rf_pick.min(brokers.len());
                let sets = place(&brokers, &table, partitions, rf).expect("place");
                create(&mut table, &format!("t{t}"), sets);
                let counts = leader_counts(&brokers, &table);
                prop_assert!(spread(&counts) <= 1, "leaders {:?} after topic {}", counts, t);
            }
        }

        #[test]
        fn equal_inputs_give_equal_placements_in_any_broker_order(
            brokers in cluster(),
            existing in 0..20usize,
            partitions in 0..20usize,
            rf_pick in 1..=4usize,
        ) {
            let rf = rf_pick.min(brokers.len());
            let mut table = TopicTable::default();
            if existing > 0 {
                let sets = place(&brokers, &table, existing, 1).expect("place");
                create(&mut table, "existing", sets);
            }
            let first = place(&brokers, &table, partitions, rf);
            prop_assert_eq!(&first, &place(&brokers, &table, partitions, rf));
            let mut reversed = brokers.clone();
            reversed.reverse();
            prop_assert_eq!(&first, &place(&reversed, &table, partitions, rf));
        }

        #[test]
        fn more_replicas_than_brokers_is_refused(
            brokers in cluster(),
            extra in 1..4usize,
            partitions in 0..4usize,
        ) {
            let rf = brokers.len() + extra;
            prop_assert_eq!(
                place(&brokers, &TopicTable::default(), partitions, rf),
                Err(PlacementError::ReplicationFactor { rf, brokers: brokers.len() })
            );
            prop_assert_eq!(
                place(&brokers, &TopicTable::default(), partitions, 0),
                Err(PlacementError::ReplicationFactor { rf: 0, brokers: brokers.len() })
            );
        }
    }
}
