//! The controller's choice of a partition leader, as a pure function so the
//! simulation and the controller run the same code.
//!
//! This is phase 1 of Vertical Paxos with the controller as the
//! configuration master: the controller picks a new epoch, asks the replicas
//! to prepare it ([`crate::Replica::prepare_election`]), which fences the old
//! epoch on each one that answers, and chooses among the answers only when a
//! majority of the replica set answered. Every committed entry is durable on
//! a majority, that majority meets the answering one, and the answer with the
//! newest (last epoch, log end) therefore holds every committed entry (the
//! Raft paper's §5.4.1 argument, with the controller counting the votes).

use ferrolog_model::{Epoch, NodeId, Offset};
use std::collections::BTreeMap;

/// A replica's answer to a prepare: its durable log's last epoch and end.
/// Only the durable prefix counts: a replica may lose the rest in a crash
/// before it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionInfo {
    pub node: NodeId,
    /// The epoch this answer prepared (fenced).
    pub epoch: Epoch,
    /// None for an empty durable log.
    pub last_epoch: Option<Epoch>,
    pub log_end: Offset,
}

/// The smallest number of replicas that is a majority of `replicas`.
pub fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// The best replica among the answers, or None when fewer than a majority
/// of `replica_set` answered. Only answers to the newest prepared epoch
/// count (an older one is from an abandoned attempt), one per node, and only
/// from members. The best has the greatest (last epoch, log end); ties go to
/// the lowest node id so the choice is deterministic.
pub fn choose_leader(responses: &[ElectionInfo], replica_set: &[NodeId]) -> Option<NodeId> {
    let epoch = responses.iter().map(|r| r.epoch).max()?;
    let mut answers: BTreeMap<NodeId, &ElectionInfo> = BTreeMap::new();
    for r in responses {
        if r.epoch == epoch && replica_set.contains(&r.node) {
            answers.entry(r.node).or_insert(r);
        }
    }
    if answers.len() < majority(replica_set.len()) {
        return None;
    }
    answers
        .values()
        .max_by(|a, b| {
            (a.last_epoch, a.log_end)
                .cmp(&(b.last_epoch, b.log_end))
                .then(b.node.cmp(&a.node))
        })
        .map(|r| r.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node: i32, last_epoch: i32, log_end: i64) -> ElectionInfo {
        ElectionInfo {
            node: NodeId(node),
            epoch: Epoch(9),
            last_epoch: Some(Epoch(last_epoch)),
            log_end: Offset(log_end),
        }
    }

    fn set(n: i32) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    #[test]
    fn a_minority_never_elects() {
        assert_eq!(choose_leader(&[info(0, 3, 10)], &set(3)), None);
        assert_eq!(choose_leader(&[info(0, 3, 10), info(0, 3, 10)], &set(3)), None);
        assert_eq!(choose_leader(&[info(0, 3, 10), info(7, 3, 10)], &set(3)), None);
        assert_eq!(choose_leader(&[info(0, 1, 1), info(1, 1, 1)], &set(5)), None);
        assert_eq!(choose_leader(&[], &set(1)), None);
    }

    #[test]
    fn the_newest_epoch_wins_over_a_longer_log() {
        let answers = [info(0, 2, 50), info(1, 3, 10), info(2, 3, 12)];
        assert_eq!(choose_leader(&answers, &set(3)), Some(NodeId(2)));
        let answers = [info(0, 2, 50), info(1, 3, 10)];
        assert_eq!(choose_leader(&answers, &set(3)), Some(NodeId(1)));
        let tie = [info(2, 3, 10), info(1, 3, 10)];
        assert_eq!(choose_leader(&tie, &set(3)), Some(NodeId(1)));
    }

    #[test]
    fn answers_to_an_older_prepare_do_not_count() {
        let old = ElectionInfo {
            epoch: Epoch(8),
            ..info(0, 3, 99)
        };
        assert_eq!(choose_leader(&[old, info(1, 1, 1)], &set(3)), None);
        assert_eq!(
            choose_leader(&[old, info(1, 1, 1), info(2, 1, 1)], &set(3)),
            Some(NodeId(1))
        );
    }
}
