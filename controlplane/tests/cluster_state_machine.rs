//! Property tests of the cluster state machine (`state::apply`): random
//! histories of valid and invalid commands, checked against rules that hold
//! whatever the history.
//!
//! - Determinism: two copies fed the same commands end equal, with equal
//!   answers; the state survives its encoding at every step.
//! - A refused command changes nothing.
//! - Incarnations only grow; a removed member never comes back and never
//!   holds a replica; only a drained member is removed.
//! - Producer-id blocks never overlap and never go below an earlier one.
//! - Leader moves and reassignments bump the leader epoch and keep the
//!   leader among the replicas; an elected move applies only at the
//!   partition's next epoch and leaves exactly that epoch.
//! - Reassignments: while one is pending the replica set is the target
//!   followed by the original replicas not in it, and the leader is in it;
//!   start, complete and cancel each bump the epoch by one; a completion
//!   applies only at the current epoch and leaves the target; a cancel
//!   leaves the original set.

use ferrolog_controlplane::commands::TopicCommand;
use ferrolog_controlplane::state::{
    apply, Applied, ClusterState, Command, LeaderMove, MemberState, Reassignment, Registration, StateError,
};
use ferrolog_model::{Epoch, NodeId};
use proptest::prelude::*;
use std::collections::BTreeMap;

const NODES: i32 = 5;

fn registration(id: i32, port: u16) -> Registration {
    Registration {
        id: NodeId(id),
        kafka_host: "127.0.0.1".into(),
        kafka_port: 9000 + port,
        rpc_addr: format!("127.0.0.1:{}", 33000 + port),
        rack: (id % 2 == 0).then(|| "a".to_string()),
        shards: 1,
        data_addr: (id % 3 != 0).then(|| format!("127.0.0.1:{}", 34000 + port)),
        xdp_addr: (id % 2 != 0).then(|| format!("10.0.0.{id}:{}", 34000 + port)),
    }
}

fn member_state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Joining),
        Just(MemberState::Active),
        Just(MemberState::Draining),
        Just(MemberState::Removed),
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    (0..NODES).prop_map(NodeId)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        // Ports collide now and then: an address already taken is refused.
        (0..NODES, 0u16..7).prop_map(|(id, port)| Command::Register(registration(id, port))),
        (node(), any::<bool>()).prop_map(|(node, alive)| Command::SetLiveness { node, alive }),
        (node(), member_state()).prop_map(|(node, state)| Command::SetMemberState { node, state }),
        (node(), -2i64..3000).prop_map(|(node, count)| Command::AllocateProducerIds { node, count }),
        (0u8..3, proptest::collection::vec(node(), 1..4), 1usize..4).prop_map(|(t, replicas, parts)| {
            Command::Topic(TopicCommand::CreateTopic {
                name: format!("t{t}"),
                id: u128::from(t) + 1,
                config: Default::default(),
                assignments: vec![replicas; parts],
            })
        }),
        // Elected moves name an epoch, often a wrong one: only the
        // partition's next epoch applies.
        (0u8..3, 0i32..4, node(), proptest::option::of(0i32..4)).prop_map(|(t, partition, leader, epoch)| {
            Command::MoveLeaders(vec![LeaderMove {
                topic: format!("t{t}"),
                partition,
                leader,
                epoch: epoch.map(Epoch),
            }])
        }),
        (0u8..3, 0i32..4, proptest::collection::vec(node(), 1..4)).prop_map(|(t, partition, replicas)| {
            Command::Reassign(vec![Reassignment {
                topic: format!("t{t}"),
                partition,
                replicas,
            }])
        }),
        (0u8..3, 0i32..4, proptest::collection::vec(node(), 0..5)).prop_map(|(t, partition, target)| {
            Command::StartReassignment {
                topic: format!("t{t}"),
                partition,
                target,
            }
        }),
        (0u8..3, 0i32..4, 0i32..6).prop_map(|(t, partition, epoch)| Command::CompleteReassignment {
            topic: format!("t{t}"),
            partition,
            leader_epoch: Epoch(epoch),
        }),
        (0u8..3, 0i32..4).prop_map(|(t, partition)| Command::CancelReassignment {
            topic: format!("t{t}"),
            partition,
        }),
        "[a-z]{1,6}".prop_map(|cluster_id| Command::InitCluster { cluster_id }),
    ]
}

fn epochs(s: &ClusterState) -> BTreeMap<(String, usize), i32> {
    s.topics
        .topics
        .iter()
        .flat_map(|(name, meta)| {
            meta.assignments
                .iter()
                .enumerate()
                .map(move |(p, a)| ((name.clone(), p), a.leader_epoch.0))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn histories_keep_the_state_machine_rules(cmds in proptest::collection::vec(command(), 1..80)) {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        let mut blocks: Vec<(i64, i64)> = Vec::new();
        let mut removed = Vec::new();
        for cmd in &cmds {
            let before = a.clone();
            let ra = apply(&mut a, cmd);
            let rb = apply(&mut b, cmd);
            prop_assert_eq!(&ra, &rb, "the same command answered differently");
            prop_assert_eq!(&a, &b, "the same history gave different states");
            let decoded = ClusterState::decode(&a.encode());
            prop_assert_eq!(decoded, Ok(a.clone()));
            match &ra {
                Err(_) => prop_assert_eq!(&a, &before, "a refused command changed the state: {:?}", cmd),
                Ok(Applied::ProducerIds { start, count }) => {
                    prop_assert!(*count > 0);
                    for (s, c) in &blocks {
                        prop_assert!(start + count <= *s || s + c <= *start, "blocks overlap");
                        prop_assert!(start >= s, "a block below an earlier one");
                    }
                    blocks.push((*start, *count));
                }
                Ok(Applied::Registered { node, incarnation }) => {
                    let old = before.members.get(node).map_or(0, |m| m.incarnation);
                    prop_assert!(*incarnation > old, "incarnation did not grow");
                }
                Ok(Applied::MemberState { node, state: MemberState::Removed }) => {
                    prop_assert_eq!(before.members[node].state, MemberState::Draining);
                    removed.push(*node);
                }
                Ok(Applied::LeadersMoved(_)) | Ok(Applied::Reassigned(_)) | Ok(Applied::Reassignment(_)) => {
                    let (old, new) = (epochs(&before), epochs(&a));
                    let bumped = new.iter().filter(|(k, e)| old.get(*k).is_some_and(|o| *e > o)).count();
                    prop_assert!(bumped > 0, "a leadership change bumped no epoch");
                }
                Ok(_) => {}
            }
            if let Command::MoveLeaders(moves) = cmd {
                let (old, new) = (epochs(&before), epochs(&a));
                for mv in moves {
                    let k = (mv.topic.clone(), mv.partition as usize);
                    match (&ra, old.get(&k)) {
                        (Ok(_), Some(o)) => {
                            prop_assert_eq!(new[&k], o + 1, "a move bumps the epoch by one");
                            if let Some(e) = mv.epoch {
                                prop_assert_eq!(e.0, o + 1, "an elected move applied at another epoch");
                            }
                        }
                        (Err(StateError::StaleElection { expected, got, .. }), Some(o)) => {
                            prop_assert_eq!(expected.0, o + 1);
                            prop_assert_eq!(Some(*got), mv.epoch);
                            prop_assert_ne!(*got, *expected);
                        }
                        _ => {}
                    }
                }
            }
            let key_of = |topic: &str, partition: i32| (topic.to_string(), partition as usize);
            match (cmd, &ra) {
                (Command::StartReassignment { topic, partition, target }, Ok(_)) => {
                    let k = key_of(topic, *partition);
                    prop_assert_eq!(epochs(&a)[&k], epochs(&before)[&k] + 1);
                    prop_assert_eq!(&a.reassignments[&(topic.clone(), *partition)].target, target);
                }
                (Command::CompleteReassignment { topic, partition, leader_epoch }, Ok(_)) => {
                    let k = key_of(topic, *partition);
                    prop_assert_eq!(epochs(&before)[&k], leader_epoch.0, "completed at another epoch");
                    prop_assert_eq!(epochs(&a)[&k], leader_epoch.0 + 1);
                    let pending = &before.reassignments[&(topic.clone(), *partition)];
                    let meta = a.topics.get(topic).expect("topic");
                    prop_assert_eq!(&meta.assignments[*partition as usize].replicas, &pending.target);
                    prop_assert!(!a.reassignments.contains_key(&(topic.clone(), *partition)));
                }
                (Command::CancelReassignment { topic, partition }, Ok(_)) => {
                    let k = key_of(topic, *partition);
                    prop_assert_eq!(epochs(&a)[&k], epochs(&before)[&k] + 1);
                    let pending = &before.reassignments[&(topic.clone(), *partition)];
                    let meta = a.topics.get(topic).expect("topic");
                    prop_assert_eq!(&meta.assignments[*partition as usize].replicas, &pending.original);
                }
                _ => {}
            }
            for ((topic, partition), r) in &a.reassignments {
                let meta = a.topics.get(topic).expect("a pending reassignment of a topic that is gone");
                let p = &meta.assignments[*partition as usize];
                let mut union = r.target.clone();
                union.extend(r.original.iter().filter(|n| !r.target.contains(n)));
                prop_assert_eq!(&p.replicas, &union, "the replica set is not the union");
                prop_assert!(r.target.len() >= 2 && r.original.len() >= 2);
            }
            for n in &removed {
                prop_assert_eq!(a.members[n].state, MemberState::Removed, "a removed member came back");
                prop_assert!(!a.live_brokers().any(|m| m.id == *n));
            }
            for meta in a.topics.topics.values() {
                for p in &meta.assignments {
                    prop_assert!(p.replicas.contains(&p.leader), "leader outside its replicas");
                }
            }
        }
    }
}
