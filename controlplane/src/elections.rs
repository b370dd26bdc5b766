//! Partition leader elections, as the controller leader runs them.
//!
//! A partition with more than one replica needs an election when its leader
//! is a member that is down or removed, or when the data plane asked for one
//! (a node assigned leadership of an epoch it cannot lead, because it led
//! that epoch before a restart). The controller picks epoch E = the
//! partition's leader epoch + 1, asks every live replica to prepare E
//! ([`LocalReplicas::prepare`] here, RPC `prepareElection` elsewhere), which
//! fences older epochs on each replica that answers, and chooses with
//! [`ferrolog_replication::choose_leader`] only when a majority of the
//! replica set answered. The choice is proposed as a [`LeaderMove`] carrying
//! E; the state machine applies it only if E is still the partition's next
//! epoch, so an election that raced another leadership change is refused
//! rather than applied over it.
//!
//! This module holds the pure parts (which partitions need an election,
//! and the decision from the answers); the controller does the I/O. A
//! partition with one replica has nothing to choose from: its leader is its
//! only replica (the state machine keeps every leader among its replicas),
//! so while that node is down the partition stays offline, and no election
//! is run for it.

use crate::state::{ClusterState, LeaderMove, MemberState};
use ferrolog_model::{Epoch, NodeId};
use ferrolog_replication::{choose_leader, ElectionInfo};
use futures::future::LocalBoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// This node's replicas, as the controller reaches them (implemented by the broker over its shards).
pub trait LocalReplicas {
    /// Prepares this node's replica of `topic`/`partition` for `epoch` (it persists the epoch and refuses older ones from then on) and answers its durable log's last epoch and end. Err: no such replica here, or the replica refused (a newer epoch).
    fn prepare(
        &self,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> LocalBoxFuture<'static, Result<ElectionInfo, String>>;
    /// This node's replica of `topic`/`partition`, which must lead: its
    /// leader epoch and the replicas in sync with it, itself included. Err:
    /// no such replica here, or it does not lead.
    fn insync(
        &self,
        topic: String,
        partition: i32,
    ) -> LocalBoxFuture<'static, Result<(Epoch, Vec<NodeId>), String>>;
}

/// Partitions one election round handles at most; the rest wait for the
/// next round. Each asks every live replica, one RPC call per remote
/// replica, so a round puts at most this many calls on one peer's
/// connection, well under its `rpc::CALLS_IN_FLIGHT_MAX`.
pub const ELECTIONS_PER_ROUND_MAX: usize = 64;
/// How long a round waits for one replica's answer to a prepare.
pub const PREPARE_TIMEOUT: Duration = Duration::from_millis(500);
/// A partition that cannot elect (no majority answered) is warned about at
/// most once per this.
pub const NO_MAJORITY_WARN_INTERVAL: Duration = Duration::from_secs(5);
/// How often the leader looks for partitions to move back to their
/// preferred replica.
pub const BALANCE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a member must have been live before leadership moves back to
/// it (time for its replicas to catch up).
pub const BALANCE_SETTLE: Duration = Duration::from_secs(10);
/// A partition's balancing election is tried at most this often.
pub const BALANCE_RETRY: Duration = Duration::from_secs(60);
/// Pending reassignments one round of the leader's duties looks at; the
/// rest wait for a later round (each costs one RPC call to a leader).
pub const REASSIGNMENTS_PER_ROUND_MAX: usize = 64;
/// How long a reassignment round waits for a leader's in-sync answer.
pub const INSYNC_TIMEOUT: Duration = Duration::from_millis(500);
/// Election requests the leader holds at most (one per partition).
pub const ELECTION_REQUESTS_MAX: usize = 65_536;

/// A partition by topic name and index.
pub type PartitionKey = (String, i32);

/// One election to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub topic: String,
    pub partition: i32,
    /// The epoch the replicas are asked to prepare: the partition's leader
    /// epoch + 1.
    pub epoch: Epoch,
    pub replicas: Vec<NodeId>,
    /// The live replicas (alive and not removed), which are asked.
    pub ask: Vec<NodeId>,
    /// A balancing election: this replica (the preferred one, first of the
    /// set) wins if its log is as good as the best answer's.
    pub prefer: Option<NodeId>,
    /// A reassignment's election: only these replicas (the target set) may
    /// win, and only with a log as good as the best answer's.
    pub eligible: Option<Vec<NodeId>>,
}

fn live(state: &ClusterState, node: &NodeId) -> bool {
    state
        .members
        .get(node)
        .is_some_and(|m| m.alive && m.state != MemberState::Removed)
}

/// Drops the requests that no longer hold: the partition is gone, has one
/// replica, or its leader epoch moved past the one the request was made at
/// (a leadership change answered it).
pub fn prune_requests(state: &ClusterState, requested: &mut BTreeMap<PartitionKey, Epoch>) {
    requested.retain(|(topic, partition), at| {
        state
            .topics
            .get(topic)
            .and_then(|m| m.assignment(ferrolog_model::PartitionId(*partition)))
            .is_some_and(|a| a.replicas.len() > 1 && a.leader_epoch == *at)
    });
}

/// The elections to run this round, at most [`ELECTIONS_PER_ROUND_MAX`].
/// A partition with more than one replica needs an election when its leader
/// is a member that is not live, or when it is in `requested` at its current
/// epoch; a leader that never registered (a cluster still starting) is left
/// alone. Partitions in `in_flight` are skipped: their previous election
/// may still be proposed.
pub fn plan(
    state: &ClusterState,
    requested: &BTreeMap<PartitionKey, Epoch>,
    in_flight: &BTreeSet<PartitionKey>,
) -> Vec<Election> {
    let mut out = Vec::new();
    for (name, meta) in &state.topics.topics {
        for (p, a) in meta.assignments.iter().enumerate() {
            if out.len() >= ELECTIONS_PER_ROUND_MAX {
                return out;
            }
            let key = (name.clone(), p as i32);
            if a.replicas.len() < 2 || in_flight.contains(&key) {
                continue;
            }
            let leader_lost = state.members.contains_key(&a.leader) && !live(state, &a.leader);
            let asked_for = requested.get(&key) == Some(&a.leader_epoch);
            if !(leader_lost || asked_for) {
                continue;
            }
            out.push(Election {
                topic: name.clone(),
                partition: p as i32,
                epoch: Epoch(a.leader_epoch.0 + 1),
                replicas: a.replicas.clone(),
                ask: a.replicas.iter().copied().filter(|r| live(state, r)).collect(),
                prefer: None,
                eligible: None,
            });
        }
    }
    out
}

/// Partitions to move back to their preferred replica (the first of the
/// set, where placement spread the leaders): more than one replica, a live
/// leader that is not the preferred one, and a preferred replica that is
/// live and one of `settled` (live long enough to have caught up).
pub fn unbalanced(state: &ClusterState, settled: &BTreeSet<NodeId>) -> Vec<(PartitionKey, Epoch)> {
    let mut out = Vec::new();
    for (name, meta) in &state.topics.topics {
        for (p, a) in meta.assignments.iter().enumerate() {
            let Some(&preferred) = a.replicas.first() else {
                continue;
            };
            if a.replicas.len() > 1
                && a.leader != preferred
                && live(state, &a.leader)
                && live(state, &preferred)
                && settled.contains(&preferred)
            {
                out.push(((name.clone(), p as i32), a.leader_epoch));
            }
        }
    }
    out
}

/// The move an election decides from the replicas' answers, or None when
/// fewer than a majority of the replica set answered for the election's
/// epoch (answers for another epoch do not count), or when the election
/// restricts the winners (`eligible`) and none of them has the best log of
/// the answers.
pub fn decide(election: &Election, answers: &[ElectionInfo]) -> Option<LeaderMove> {
    let current: Vec<ElectionInfo> = answers
        .iter()
        .filter(|a| a.epoch == election.epoch)
        .copied()
        .collect();
    let best = choose_leader(&current, &election.replicas)?;
    let rank = |n: NodeId| {
        current
            .iter()
            .find(|a| a.node == n)
            .map(|a| (a.last_epoch, a.log_end))
    };
    let may_win = |n: NodeId| {
        election
            .eligible
            .as_ref()
            .is_none_or(|eligible| eligible.contains(&n))
    };
    let mut leader = if may_win(best) {
        best
    } else {
        // The lowest eligible id among the answers as good as the best.
        current
            .iter()
            .filter(|a| may_win(a.node) && rank(a.node) == rank(best))
            .map(|a| a.node)
            .min()?
    };
    if let Some(p) = election.prefer {
        if may_win(p) && rank(p).is_some() && rank(p) == rank(leader) {
            leader = p;
        }
    }
    Some(LeaderMove {
        topic: election.topic.clone(),
        partition: election.partition,
        leader,
        epoch: Some(election.epoch),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::TopicCommand;
    use crate::state::{apply, Command, Registration};
    use ferrolog_model::Offset;

    fn reg(id: i32) -> Registration {
        Registration {
            id: NodeId(id),
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092 + id as u16,
            rpc_addr: format!("127.0.0.1:{}", 33000 + id),
            rack: None,
            shards: 1,
            data_addr: None,
            xdp_addr: None,
        }
    }

    /// Nodes 1..=3; topic "r" with partitions [1,2,3] (led by 1) and
    /// [2,3,1] (led by 2); topic "s" with one replica on node 1.
    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            apply(&mut s, &Command::Register(reg(id))).expect("register");
        }
        let n = |v: &[i32]| v.iter().copied().map(NodeId).collect::<Vec<_>>();
        for (id, name, assignments) in [
            (1, "r", vec![n(&[1, 2, 3]), n(&[2, 3, 1])]),
            (2, "s", vec![n(&[1])]),
        ] {
            let create = Command::Topic(TopicCommand::CreateTopic {
                name: name.into(),
                id,
                config: Default::default(),
                assignments,
            });
            apply(&mut s, &create).expect("create");
        }
        s
    }

    fn down(s: &mut ClusterState, node: i32) {
        let cmd = Command::SetLiveness {
            node: NodeId(node),
            alive: false,
        };
        apply(s, &cmd).expect("down");
    }

    fn key(topic: &str, partition: i32) -> PartitionKey {
        (topic.to_string(), partition)
    }

    fn answer(node: i32, epoch: i32, last_epoch: Option<i32>, log_end: i64) -> ElectionInfo {
        ElectionInfo {
            node: NodeId(node),
            epoch: Epoch(epoch),
            last_epoch: last_epoch.map(Epoch),
            log_end: Offset(log_end),
        }
    }

    #[test]
    fn a_lost_leader_needs_an_election_among_the_live_replicas() {
        let mut s = cluster();
        let none = BTreeMap::new();
        let idle = BTreeSet::new();
        assert_eq!(plan(&s, &none, &idle), vec![], "every leader is live");

        down(&mut s, 1);
        assert_eq!(
            plan(&s, &none, &idle),
            vec![Election {
                topic: "r".into(),
                partition: 0,
                epoch: Epoch(1),
                replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                ask: vec![NodeId(2), NodeId(3)],
                prefer: None,
                eligible: None,
            }],
            "a single replica that is down has nothing to elect"
        );
        let busy: BTreeSet<_> = [key("r", 0)].into();
        assert_eq!(plan(&s, &none, &busy), vec![], "in flight: skipped");
    }

    #[test]
    fn a_request_elects_at_the_epoch_it_was_made_for() {
        let mut s = cluster();
        let idle = BTreeSet::new();
        let mut requested: BTreeMap<_, _> = [(key("r", 1), Epoch(0)), (key("s", 0), Epoch(0))].into();
        prune_requests(&s, &mut requested);
        assert_eq!(
            requested,
            [(key("r", 1), Epoch(0))].into(),
            "a single replica has nothing to elect"
        );
        let p = plan(&s, &requested, &idle);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].partition, 1);
        assert_eq!(
            p[0].ask,
            vec![NodeId(2), NodeId(3), NodeId(1)],
            "a live leader is asked like the others"
        );

        let mv = LeaderMove {
            topic: "r".into(),
            partition: 1,
            leader: NodeId(3),
            epoch: Some(Epoch(1)),
        };
        apply(&mut s, &Command::MoveLeaders(vec![mv])).expect("move");
        prune_requests(&s, &mut requested);
        assert!(requested.is_empty(), "answered by the new epoch");
    }

    #[test]
    fn decide_needs_a_majority_at_the_election_epoch() {
        let election = Election {
            topic: "r".into(),
            partition: 0,
            epoch: Epoch(4),
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            ask: vec![NodeId(2), NodeId(3)],
            prefer: None,
            eligible: None,
        };
        assert_eq!(decide(&election, &[answer(2, 4, Some(3), 10)]), None);
        assert_eq!(
            decide(&election, &[answer(2, 4, Some(3), 10), answer(3, 5, Some(3), 20)]),
            None,
            "an answer for another epoch does not count"
        );
        assert_eq!(
            decide(&election, &[answer(2, 4, Some(3), 10), answer(3, 4, Some(3), 20)]),
            Some(LeaderMove {
                topic: "r".into(),
                partition: 0,
                leader: NodeId(3),
                epoch: Some(Epoch(4)),
            })
        );
        assert_eq!(
            decide(&election, &[answer(2, 4, Some(3), 10), answer(3, 4, None, 0)]).map(|m| m.leader),
            Some(NodeId(2)),
            "an empty log loses to any entry"
        );
    }

    #[test]
    fn a_balancing_election_prefers_the_first_replica_only_with_the_best_log() {
        let mut election = Election {
            topic: "r".into(),
            partition: 0,
            epoch: Epoch(4),
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            ask: vec![NodeId(1), NodeId(2), NodeId(3)],
            prefer: Some(NodeId(1)),
            eligible: None,
        };
        let caught_up = [
            answer(1, 4, Some(3), 20),
            answer(2, 4, Some(3), 20),
            answer(3, 4, Some(3), 10),
        ];
        assert_eq!(decide(&election, &caught_up).map(|m| m.leader), Some(NodeId(1)));
        let behind = [
            answer(1, 4, Some(3), 19),
            answer(2, 4, Some(3), 20),
            answer(3, 4, Some(3), 10),
        ];
        assert_eq!(
            decide(&election, &behind).map(|m| m.leader),
            Some(NodeId(2)),
            "a preferred replica that is behind does not win"
        );
        election.prefer = None;
        assert_eq!(
            decide(&election, &caught_up).map(|m| m.leader),
            Some(NodeId(1)),
            "lowest id on ties"
        );

        let mut s = cluster();
        let settled: BTreeSet<NodeId> = [NodeId(1), NodeId(2), NodeId(3)].into();
        assert_eq!(unbalanced(&s, &settled), vec![], "every leader is preferred");
        let mv = LeaderMove {
            topic: "r".into(),
            partition: 0,
            leader: NodeId(2),
            epoch: Some(Epoch(1)),
        };
        apply(&mut s, &Command::MoveLeaders(vec![mv])).expect("move");
        assert_eq!(unbalanced(&s, &settled), vec![(key("r", 0), Epoch(1))]);
        let not_settled: BTreeSet<NodeId> = [NodeId(2), NodeId(3)].into();
        assert_eq!(
            unbalanced(&s, &not_settled),
            vec![],
            "the preferred replica just came back"
        );
        down(&mut s, 1);
        assert_eq!(unbalanced(&s, &settled), vec![], "the preferred replica is down");
    }

    #[test]
    fn a_reassignment_election_elects_only_a_target_replica_with_the_best_log() {
        let election = Election {
            topic: "r".into(),
            partition: 0,
            epoch: Epoch(4),
            replicas: vec![NodeId(4), NodeId(2), NodeId(1), NodeId(3)],
            ask: vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)],
            prefer: Some(NodeId(4)),
            eligible: Some(vec![NodeId(4), NodeId(2)]),
        };
        let leader = |answers: &[ElectionInfo]| decide(&election, answers).map(|m| m.leader);
        assert_eq!(
            leader(&[
                answer(1, 4, Some(3), 20),
                answer(2, 4, Some(3), 20),
                answer(4, 4, Some(3), 20)
            ]),
            Some(NodeId(4)),
            "the preferred target replica on a tie"
        );
        assert_eq!(
            leader(&[
                answer(1, 4, Some(3), 20),
                answer(2, 4, Some(3), 20),
                answer(4, 4, Some(3), 19)
            ]),
            Some(NodeId(2)),
            "a target replica with the best log, though not preferred"
        );
        assert_eq!(
            leader(&[
                answer(1, 4, Some(3), 21),
                answer(2, 4, Some(3), 20),
                answer(4, 4, Some(3), 20)
            ]),
            None,
            "a replica leaving the set has the best log: no move this round"
        );
        assert_eq!(
            leader(&[answer(2, 4, Some(3), 20), answer(4, 4, Some(3), 20)]),
            None,
            "two of four is not a majority of the union"
        );
        assert_eq!(
            leader(&[
                answer(1, 4, Some(3), 20),
                answer(3, 4, Some(3), 20),
                answer(2, 5, Some(3), 20)
            ]),
            None,
            "no eligible answer at the election's epoch"
        );
    }

    #[test]
    fn a_round_is_bounded() {
        let mut s = cluster();
        let many: Vec<Vec<NodeId>> = (0..ELECTIONS_PER_ROUND_MAX + 5)
            .map(|_| vec![NodeId(3), NodeId(1), NodeId(2)])
            .collect();
        let create = Command::Topic(TopicCommand::CreateTopic {
            name: "many".into(),
            id: 3,
            config: Default::default(),
            assignments: many,
        });
        apply(&mut s, &create).expect("create");
        down(&mut s, 3);
        assert_eq!(
            plan(&s, &BTreeMap::new(), &BTreeSet::new()).len(),
            ELECTIONS_PER_ROUND_MAX
        );
    }
}
