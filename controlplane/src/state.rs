//! The metadata state machine of the controller's Raft group.
//!
//! [`ClusterState`] is everything the cluster agrees on: the cluster id,
//! the members, the topic table (topics, configs, replica sets, leaders and
//! leader epochs), the producer-id blocks handed out, and a copy of the
//! voters. [`apply`] is pure and deterministic: every node applies the same
//! committed [`Command`]s in the same order and reaches the same state.
//! Whatever a command needs that is not a function of the state (ids,
//! addresses, which partitions move) is chosen by the proposer and carried
//! in the command. A refused command changes nothing; its error is the
//! answer the proposer gets, on every node alike.

use crate::acls::{AclBinding, AclError, AclFilter, AclTable};
use crate::commands::{self, CommandError, TopicCommand, TopicDelta};
use crate::credentials::{self, CredentialChange, CredentialError, Credentials};
use crate::topics::TopicTable;
use ferrolog_model::{Epoch, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where a member is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Registered, not yet serving (reserved: registration makes a member active).
    Joining,
    Active,
    /// Being emptied of partitions before removal.
    Draining,
    /// Gone for good; its id is not reused.
    Removed,
}

/// A node of the cluster, as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Host and port clients are told to connect to.
    pub kafka_host: String,
    pub kafka_port: u16,
    /// HOST:PORT of the node's control-plane RPC listener.
    pub rpc_addr: String,
    pub rack: Option<String>,
    pub shards: u32,
    pub state: MemberState,
    /// Bumped at every registration: a restarted node is a new incarnation.
    pub incarnation: u64,
    /// Whether the controller leader hears the member's heartbeats. Changed
    /// only on transitions (a command per change, not per heartbeat).
    pub alive: bool,
    /// HOST:PORT of shard 0's replication listener (shard `s` listens on
    /// that port + `s`); `None` for a node that registered without one.
    #[serde(default)]
    pub data_addr: Option<String>,
    /// IPV4:PORT of the node's AF_XDP replication endpoint (UDP); `None`
    /// for a node reached over TCP only (no AF_XDP, or an older version).
    #[serde(default)]
    pub xdp_addr: Option<String>,
}

/// What a node says of itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: NodeId,
    pub kafka_host: String,
    pub kafka_port: u16,
    pub rpc_addr: String,
    pub rack: Option<String>,
    pub shards: u32,
    /// HOST:PORT of shard 0's replication listener (see [`Member::data_addr`]).
    #[serde(default)]
    pub data_addr: Option<String>,
    /// See [`Member::xdp_addr`].
    #[serde(default)]
    pub xdp_addr: Option<String>,
}

/// One partition's new leader, as the proposer chose it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderMove {
    pub topic: String,
    pub partition: i32,
    pub leader: NodeId,
    /// The epoch an election prepared for this move. `Some(e)`: the move
    /// applies only if `e` is the partition's leader epoch + 1 (the replicas
    /// were fenced at `e`; any other epoch means the election raced another
    /// change and its answers are stale), and the epoch becomes `e`. `None`:
    /// the epoch is bumped by one.
    #[serde(default)]
    pub epoch: Option<Epoch>,
}

/// One partition's new replica set (its leader becomes the first replica
/// if the old leader is no longer in the set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<NodeId>,
}

/// A partition reassignment that is running (AlterPartitionReassignments):
/// the partition's replica set is the union of `target` and `original`
/// (target first) until the controller completes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignmentState {
    pub target: Vec<NodeId>,
    /// The replica set before the first start of this reassignment.
    pub original: Vec<NodeId>,
}

/// Pending reassignments by (topic, partition).
pub type Reassignments = BTreeMap<(String, i32), ReassignmentState>;

/// JSON maps need string keys: the pending reassignments are written as a
/// list of entries.
mod reassignment_entries {
    use super::{ReassignmentState, Reassignments};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &Reassignments, s: S) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reassignments, D::Error> {
        let entries: Vec<((String, i32), ReassignmentState)> = Vec::deserialize(d)?;
        Ok(entries.into_iter().collect())
    }
}

/// A change to the cluster state, as the Raft log carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id if none is set yet (the first leader proposes
    /// it); a later one is refused.
    InitCluster {
        cluster_id: String,
    },
    Topic(TopicCommand),
    /// Adds the member, or a new incarnation of it; a removed member may not
    /// come back.
    Register(Registration),
    SetLiveness {
        node: NodeId,
        alive: bool,
    },
    SetMemberState {
        node: NodeId,
        state: MemberState,
    },
    /// Moves leadership; each move bumps the partition's leader epoch by one
    /// (to the move's election epoch, which must be exactly that). The new
    /// leader must be a replica. All moves apply or none.
    MoveLeaders(Vec<LeaderMove>),
    /// Replaces replica sets (decommission); each bumps the leader epoch.
    Reassign(Vec<Reassignment>),
    /// Starts (or replaces) a reassignment of a replicated partition to
    /// `target` (at least 2 distinct members that are active or already
    /// replicas): the replica set becomes `target` followed by the current
    /// replicas not in it, the epoch is bumped, the leader stays. A second
    /// start keeps the first one's original set.
    StartReassignment {
        topic: String,
        partition: i32,
        target: Vec<NodeId>,
    },
    /// Ends a reassignment whose target replicas caught up: only at the
    /// partition's current `leader_epoch` (else `StaleElection`) and with
    /// the leader in the target; the replica set becomes the target, the
    /// epoch is bumped, the leader stays.
    CompleteReassignment {
        topic: String,
        partition: i32,
        leader_epoch: Epoch,
    },
    /// Puts the replica set back to the original one (the leader must be
    /// in it), bumping the epoch.
    CancelReassignment {
        topic: String,
        partition: i32,
    },
    /// Hands `count` producer ids to `node`, starting at the next free one.
    AllocateProducerIds {
        node: NodeId,
        count: i64,
    },
    // SASL/SCRAM credentials (crate::credentials).
    /// Upserts and deletes one user's SCRAM credentials, all or none.
    AlterCredentials(Vec<CredentialChange>),
    // ACLs (CreateAcls, DeleteAcls).
    /// Adds one ACL binding (validated again here: any proposer's command
    /// is checked); an existing one is left as it is.
    CreateAcl(AclBinding),
    /// Removes every binding the filter selects; answers them.
    DeleteAcls(AclFilter),
}

/// Why a command is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("{0}")]
    Topic(CommandErrorText),
    #[error("the cluster id is already {0}")]
    ClusterIdSet(String),
    #[error("node {0} is not a member")]
    UnknownMember(NodeId),
    #[error("node {0} was removed from the cluster; give the node a new id")]
    RemovedMember(NodeId),
    #[error("node {node}: cannot go from {from:?} to {to:?}")]
    BadTransition {
        node: NodeId,
        from: MemberState,
        to: MemberState,
    },
    #[error("partition {topic}/{partition} does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("partition {topic}/{partition}: node {node} is not one of its replicas")]
    NotAReplica {
        topic: String,
        partition: i32,
        node: NodeId,
    },
    #[error("partition {topic}/{partition}: replica set {replicas:?} is empty or repeats a node")]
    BadReplicaSet {
        topic: String,
        partition: i32,
        replicas: Vec<NodeId>,
    },
    #[error("node {0} is not a member that can hold replicas")]
    NotServing(NodeId),
    #[error("producer id block of {0} ids refused")]
    BadBlock(i64),
    #[error("producer ids are exhausted")]
    ProducerIdsExhausted,
    /// An entry that was not a command of this state machine (a refused
    /// configuration change, bytes that do not decode).
    #[error("not applied: {0}")]
    NotApplied(String),
    #[error("address {addr} is already the address of node {owner}")]
    AddressInUse { addr: String, owner: NodeId },
    #[error("partition {topic}/{partition}: no reassignment is in progress")]
    NoReassignment { topic: String, partition: i32 },
    /// A reassignment that this broker cannot carry out (see the message).
    #[error("partition {topic}/{partition}: {reason}")]
    BadReassignment {
        topic: String,
        partition: i32,
        reason: String,
    },
    /// An elected move whose epoch is not the partition's next one: another
    /// leadership change was applied after the election prepared its epoch.
    #[error(
        "partition {topic}/{partition}: election for epoch {got} is stale (the next epoch is {expected})"
    )]
    StaleElection {
        topic: String,
        partition: i32,
        expected: Epoch,
        got: Epoch,
    },
    #[error("{0}")]
    Credential(CredentialError),
    /// An ACL binding or filter that is refused (see the message).
    #[error("{0}")]
    InvalidAcl(AclError),
}

/// A topic command's refusal, carried with its kind so the Kafka side can
/// still choose the right error code after it crossed the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandErrorText {
    pub kind: TopicErrorKind,
    pub message: String,
}

impl std::fmt::Display for CommandErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicErrorKind {
    TopicExists,
    UnknownTopic,
    IdMismatch,
    DuplicateTopicId,
    InvalidName,
    InvalidConfig,
    InvalidPartitionCount,
    InvalidAssignment,
}

impl From<&CommandError> for CommandErrorText {
    fn from(e: &CommandError) -> Self {
        let kind = match e {
            CommandError::TopicExists { .. } => TopicErrorKind::TopicExists,
            CommandError::UnknownTopic { .. } => TopicErrorKind::UnknownTopic,
            CommandError::IdMismatch { .. } => TopicErrorKind::IdMismatch,
            CommandError::DuplicateTopicId { .. } => TopicErrorKind::DuplicateTopicId,
            CommandError::InvalidName(_) => TopicErrorKind::InvalidName,
            CommandError::InvalidConfig { .. } => TopicErrorKind::InvalidConfig,
            CommandError::InvalidPartitionCount { .. } => TopicErrorKind::InvalidPartitionCount,
            CommandError::InvalidAssignment { .. } => TopicErrorKind::InvalidAssignment,
        };
        CommandErrorText {
            kind,
            message: e.to_string(),
        }
    }
}

/// What an applied command changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// An entry that changed no state (an empty entry, a configuration change).
    Nothing,
    ClusterId(String),
    Topic(TopicDelta),
    Registered {
        node: NodeId,
        incarnation: u64,
    },
    Liveness {
        node: NodeId,
        alive: bool,
    },
    MemberState {
        node: NodeId,
        state: MemberState,
    },
    LeadersMoved(usize),
    Reassigned(usize),
    /// A reassignment started, completed or was cancelled; the partition's
    /// replica set is now this.
    Reassignment(Vec<NodeId>),
    ProducerIds {
        start: i64,
        count: i64,
    },
    /// A user's credentials changed.
    Credentials(String),
    /// An ACL binding was stored; `false` if it already was.
    AclCreated(bool),
    /// The bindings a DeleteAcls filter removed.
    AclsDeleted(Vec<AclBinding>),
}

/// The whole replicated state; `Default` is the state before the first
/// command (no cluster id yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    pub members: BTreeMap<NodeId, Member>,
    pub topics: TopicTable,
    /// The first producer id not yet handed out.
    pub next_producer_id: i64,
    /// A copy of the voters of Raft's ConfState (the authority), updated
    /// when a configuration change is applied; for status.
    pub voters: BTreeSet<NodeId>,
    /// Reassignments in progress (state written before they existed has
    /// none).
    #[serde(default, with = "reassignment_entries")]
    pub reassignments: Reassignments,
    /// SCRAM credentials by user (state written before they existed has
    /// none).
    #[serde(default)]
    pub credentials: Credentials,
    /// ACL bindings (state written before they existed has none).
    #[serde(default)]
    pub acls: AclTable,
}

/// Most producer ids one block may take.
pub const PRODUCER_ID_BLOCK_MAX: i64 = 1 << 20;

impl ClusterState {
    /// Members that may hold replicas and are heard: what clients are told.
    pub fn live_brokers(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| m.alive && matches!(m.state, MemberState::Active | MemberState::Draining))
    }

    /// Members new replicas may be placed on.
    pub fn placeable(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| m.alive && m.state == MemberState::Active)
    }

    /// Partitions each node leads.
    pub fn leaders_per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for meta in self.topics.topics.values() {
            for a in &meta.assignments {
                *out.entry(a.leader).or_insert(0) += 1;
            }
        }
        out
    }

    /// Whether any partition's replica set names `node`.
    pub fn holds_replicas(&self, node: NodeId) -> bool {
        self.topics
            .topics
            .values()
            .any(|m| m.assignments.iter().any(|a| a.replicas.contains(&node)))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the cluster state always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ClusterState, String> {
        if bytes.is_empty() {
            return Ok(ClusterState::default());
        }
        serde_json::from_slice(bytes).map_err(|e| format!("cannot decode the cluster state: {e}"))
    }
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("cannot decode a command: {e}"))
    }
}

fn topic_err(e: &CommandError) -> StateError {
    StateError::Topic(CommandErrorText::from(e))
}

/// Applies `cmd` to `state`. On error `state` is unchanged.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Result<Applied, StateError> {
    match cmd {
        Command::InitCluster { cluster_id } => {
            if !state.cluster_id.is_empty() {
                return Err(StateError::ClusterIdSet(state.cluster_id.clone()));
            }
            state.cluster_id = cluster_id.clone();
            Ok(Applied::ClusterId(cluster_id.clone()))
        }
        Command::Topic(tc) => {
            let delta = commands::apply(&mut state.topics, tc).map_err(|e| topic_err(&e))?;
            // A deleted topic's reassignments end with it.
            let topics = &state.topics;
            state
                .reassignments
                .retain(|(t, p), _| assignment(topics, t, *p).is_ok());
            Ok(Applied::Topic(delta))
        }
        Command::Register(r) => {
            if let Some(owner) = state
                .members
                .values()
                .find(|m| m.id != r.id && m.state != MemberState::Removed && m.rpc_addr == r.rpc_addr)
            {
                return Err(StateError::AddressInUse {
                    addr: r.rpc_addr.clone(),
                    owner: owner.id,
                });
            }
            let (incarnation, member_state) = match state.members.get(&r.id) {
                Some(m) if m.state == MemberState::Removed => return Err(StateError::RemovedMember(r.id)),
                Some(m) => (m.incarnation + 1, m.state),
                None => (1, MemberState::Active),
            };
            state.members.insert(
                r.id,
                Member {
                    id: r.id,
                    kafka_host: r.kafka_host.clone(),
                    kafka_port: r.kafka_port,
                    rpc_addr: r.rpc_addr.clone(),
                    rack: r.rack.clone(),
                    shards: r.shards,
                    state: member_state,
                    incarnation,
                    alive: true,
                    data_addr: r.data_addr.clone(),
                    xdp_addr: r.xdp_addr.clone(),
                },
            );
            Ok(Applied::Registered {
                node: r.id,
                incarnation,
            })
        }
        Command::SetLiveness { node, alive } => {
            let m = state
                .members
                .get_mut(node)
                .ok_or(StateError::UnknownMember(*node))?;
            m.alive = *alive;
            Ok(Applied::Liveness {
                node: *node,
                alive: *alive,
            })
        }
        Command::SetMemberState { node, state: to } => {
            let from = state
                .members
                .get(node)
                .ok_or(StateError::UnknownMember(*node))?
                .state;
            let allowed = matches!(
                (from, *to),
                (MemberState::Joining, MemberState::Active)
                    | (MemberState::Active | MemberState::Joining, MemberState::Draining)
                    | (MemberState::Draining, MemberState::Active)
            ) || (*to == MemberState::Removed
                && from == MemberState::Draining
                && !state.holds_replicas(*node));
            if !allowed {
                return Err(StateError::BadTransition {
                    node: *node,
                    from,
                    to: *to,
                });
            }
            state.members.get_mut(node).expect("checked above").state = *to;
            Ok(Applied::MemberState {
                node: *node,
                state: *to,
            })
        }
        Command::MoveLeaders(moves) => {
            // The epoch each partition will have after the moves checked so
            // far, so that two moves of one partition in one command are
            // checked as if applied in order.
            let mut epochs: BTreeMap<(&str, i32), Epoch> = BTreeMap::new();
            for mv in moves {
                let a = assignment(&state.topics, &mv.topic, mv.partition)?;
                if !a.replicas.contains(&mv.leader) {
                    return Err(StateError::NotAReplica {
                        topic: mv.topic.clone(),
                        partition: mv.partition,
                        node: mv.leader,
                    });
                }
                let current = epochs
                    .get(&(mv.topic.as_str(), mv.partition))
                    .copied()
                    .unwrap_or(a.leader_epoch);
                let next = Epoch(current.0 + 1);
                if let Some(got) = mv.epoch {
                    if got != next {
                        return Err(StateError::StaleElection {
                            topic: mv.topic.clone(),
                            partition: mv.partition,
                            expected: next,
                            got,
                        });
                    }
                }
                epochs.insert((mv.topic.as_str(), mv.partition), next);
            }
            for mv in moves {
                let a = assignment_mut(&mut state.topics, &mv.topic, mv.partition);
                a.leader = mv.leader;
                a.leader_epoch = Epoch(a.leader_epoch.0 + 1);
                if let Some(e) = mv.epoch {
                    assert_eq!(a.leader_epoch, e, "an elected move's epoch was checked above");
                }
            }
            state.topics.revision += 1;
            Ok(Applied::LeadersMoved(moves.len()))
        }
        Command::Reassign(moves) => {
            for mv in moves {
                let a = assignment(&state.topics, &mv.topic, mv.partition)?;
                let distinct: BTreeSet<_> = mv.replicas.iter().collect();
                if mv.replicas.is_empty()
                    || distinct.len() != mv.replicas.len()
                    || mv.replicas.len() != a.replicas.len()
                {
                    return Err(StateError::BadReplicaSet {
                        topic: mv.topic.clone(),
                        partition: mv.partition,
                        replicas: mv.replicas.clone(),
                    });
                }
                for n in &mv.replicas {
                    let serving = state
                        .members
                        .get(n)
                        .is_some_and(|m| m.state == MemberState::Active);
                    if !serving && !a.replicas.contains(n) {
                        return Err(StateError::NotServing(*n));
                    }
                }
            }
            for mv in moves {
                // A drain replaces the set outright: a reassignment of the
                // partition in progress is dropped (its union set is what
                // the drain saw and replaced).
                state.reassignments.remove(&(mv.topic.clone(), mv.partition));
                let a = assignment_mut(&mut state.topics, &mv.topic, mv.partition);
                a.replicas = mv.replicas.clone();
                if !a.replicas.contains(&a.leader) {
                    a.leader = a.replicas[0];
                }
                a.leader_epoch = Epoch(a.leader_epoch.0 + 1);
            }
            state.topics.revision += 1;
            Ok(Applied::Reassigned(moves.len()))
        }
        Command::StartReassignment {
            topic,
            partition,
            target,
        } => {
            let a = assignment(&state.topics, topic, *partition)?;
            let key = (topic.clone(), *partition);
            let original = match state.reassignments.get(&key) {
                Some(r) => r.original.clone(),
                None => a.replicas.clone(),
            };
            let bad = |reason: String| StateError::BadReassignment {
                topic: topic.clone(),
                partition: *partition,
                reason,
            };
            let distinct: BTreeSet<_> = target.iter().collect();
            if target.is_empty() || distinct.len() != target.len() || target.iter().any(|n| n.0 < 0) {
                return Err(StateError::BadReplicaSet {
                    topic: topic.clone(),
                    partition: *partition,
                    replicas: target.clone(),
                });
            }
            if original.len() < 2 || target.len() < 2 {
                return Err(bad(format!(
                    "a partition moves between sets of at least 2 replicas (from {original:?} to {target:?}): \
                     a single-replica partition cannot become replicated in place, nor the reverse"
                )));
            }
            for n in target {
                let serving = state
                    .members
                    .get(n)
                    .is_some_and(|m| m.state == MemberState::Active);
                if !serving && !a.replicas.contains(n) {
                    return Err(StateError::NotServing(*n));
                }
            }
            // The union of the target and the original set; replicas added
            // by an earlier target that the new one drops leave now.
            let mut replicas = target.clone();
            replicas.extend(original.iter().filter(|n| !target.contains(n)));
            if replicas.len() > crate::topics::REPLICATION_FACTOR_MAX {
                return Err(bad(format!(
                    "the target and the original set together have {} replicas, more than {}",
                    replicas.len(),
                    crate::topics::REPLICATION_FACTOR_MAX
                )));
            }
            if !replicas.contains(&a.leader) {
                return Err(bad(format!(
                    "the leader {} would leave the replica set; cancel the running reassignment first",
                    a.leader
                )));
            }
            let a = assignment_mut(&mut state.topics, topic, *partition);
            a.replicas = replicas.clone();
            a.leader_epoch = Epoch(a.leader_epoch.0 + 1);
            state.topics.revision += 1;
            state.reassignments.insert(
                key,
                ReassignmentState {
                    target: target.clone(),
                    original,
                },
            );
            Ok(Applied::Reassignment(replicas))
        }
        Command::CompleteReassignment {
            topic,
            partition,
            leader_epoch,
        } => {
            let a = assignment(&state.topics, topic, *partition)?;
            let key = (topic.clone(), *partition);
            let r = state
                .reassignments
                .get(&key)
                .ok_or_else(|| StateError::NoReassignment {
                    topic: topic.clone(),
                    partition: *partition,
                })?;
            if a.leader_epoch != *leader_epoch {
                return Err(StateError::StaleElection {
                    topic: topic.clone(),
                    partition: *partition,
                    expected: a.leader_epoch,
                    got: *leader_epoch,
                });
            }
            if !r.target.contains(&a.leader) {
                return Err(StateError::NotAReplica {
                    topic: topic.clone(),
                    partition: *partition,
                    node: a.leader,
                });
            }
            let target = r.target.clone();
            let a = assignment_mut(&mut state.topics, topic, *partition);
            a.replicas = target.clone();
            a.leader_epoch = Epoch(a.leader_epoch.0 + 1);
            state.topics.revision += 1;
            state.reassignments.remove(&key);
            Ok(Applied::Reassignment(target))
        }
        Command::CancelReassignment { topic, partition } => {
            let a = assignment(&state.topics, topic, *partition)?;
            let key = (topic.clone(), *partition);
            let r = state
                .reassignments
                .get(&key)
                .ok_or_else(|| StateError::NoReassignment {
                    topic: topic.clone(),
                    partition: *partition,
                })?;
            if !r.original.contains(&a.leader) {
                return Err(StateError::BadReassignment {
                    topic: topic.clone(),
                    partition: *partition,
                    reason: format!(
                        "leadership moved to {}, outside the original replicas {:?}: a cancel after that is not supported",
                        a.leader, r.original
                    ),
                });
            }
            let original = r.original.clone();
            let a = assignment_mut(&mut state.topics, topic, *partition);
            a.replicas = original.clone();
            a.leader_epoch = Epoch(a.leader_epoch.0 + 1);
            state.topics.revision += 1;
            state.reassignments.remove(&key);
            Ok(Applied::Reassignment(original))
        }
        Command::AllocateProducerIds { node, count } => {
            if !(1..=PRODUCER_ID_BLOCK_MAX).contains(count) {
                return Err(StateError::BadBlock(*count));
            }
            if !state.members.contains_key(node) && !state.voters.contains(node) {
                return Err(StateError::UnknownMember(*node));
            }
            let start = state.next_producer_id;
            let end = start
                .checked_add(*count)
                .ok_or(StateError::ProducerIdsExhausted)?;
            state.next_producer_id = end;
            Ok(Applied::ProducerIds { start, count: *count })
        }
        Command::AlterCredentials(changes) => {
            let user = changes.first().map(|c| c.user.clone()).unwrap_or_default();
            if changes.iter().any(|c| c.user != user) {
                return Err(StateError::NotApplied(
                    "a credential command changes one user".into(),
                ));
            }
            credentials::apply(&mut state.credentials, changes).map_err(StateError::Credential)?;
            Ok(Applied::Credentials(user))
        }
        Command::CreateAcl(b) => state
            .acls
            .create(b)
            .map(Applied::AclCreated)
            .map_err(StateError::InvalidAcl),
        Command::DeleteAcls(f) => state
            .acls
            .delete(f)
            .map(Applied::AclsDeleted)
            .map_err(StateError::InvalidAcl),
    }
}

fn assignment<'a>(
    table: &'a TopicTable,
    topic: &str,
    partition: i32,
) -> Result<&'a crate::topics::PartitionAssignment, StateError> {
    table
        .get(topic)
        .and_then(|m| m.assignment(ferrolog_model::PartitionId(partition)))
        .ok_or_else(|| StateError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })
}

fn assignment_mut<'a>(
    table: &'a mut TopicTable,
    topic: &str,
    partition: i32,
) -> &'a mut crate::topics::PartitionAssignment {
    &mut table.topics.get_mut(topic).expect("checked").assignments[partition as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: i32) -> Registration {
        Registration {
            id: NodeId(id),
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092 + id as u16,
            rpc_addr: format!("127.0.0.1:{}", 33000 + id),
            rack: None,
            shards: 1,
            data_addr: Some(format!("127.0.0.1:{}", 34000 + id)),
            xdp_addr: None,
        }
    }

    #[test]
    fn registration_bumps_incarnation_and_removed_members_stay_out() {
        let mut s = ClusterState::default();
        assert_eq!(
            apply(&mut s, &Command::Register(reg(1))),
            Ok(Applied::Registered {
                node: NodeId(1),
                incarnation: 1
            })
        );
        assert_eq!(
            apply(&mut s, &Command::Register(reg(1))),
            Ok(Applied::Registered {
                node: NodeId(1),
                incarnation: 2
            })
        );
        let mut other = reg(2);
        other.rpc_addr = reg(1).rpc_addr;
        assert!(matches!(
            apply(&mut s, &Command::Register(other)),
            Err(StateError::AddressInUse { .. })
        ));
        let drain = Command::SetMemberState {
            node: NodeId(1),
            state: MemberState::Draining,
        };
        let remove = Command::SetMemberState {
            node: NodeId(1),
            state: MemberState::Removed,
        };
        assert!(
            apply(&mut s, &remove).is_err(),
            "an active member is drained first"
        );
        apply(&mut s, &drain).expect("drain");
        apply(&mut s, &remove).expect("remove");
        let before = s.clone();
        assert_eq!(
            apply(&mut s, &Command::Register(reg(1))),
            Err(StateError::RemovedMember(NodeId(1)))
        );
        assert_eq!(s, before);
    }

    #[test]
    fn state_round_trips_through_its_encoding() {
        let mut s = ClusterState::default();
        apply(
            &mut s,
            &Command::InitCluster {
                cluster_id: "c1".into(),
            },
        )
        .expect("init");
        apply(&mut s, &Command::Register(reg(1))).expect("register");
        apply(
            &mut s,
            &Command::AllocateProducerIds {
                node: NodeId(1),
                count: 10,
            },
        )
        .expect("ids");
        assert_eq!(ClusterState::decode(&s.encode()), Ok(s));
        assert_eq!(ClusterState::decode(&[]), Ok(ClusterState::default()));
        assert!(ClusterState::decode(b"{").is_err());
    }

    /// A cluster of nodes 1..=3 with topic "t": partition 0 on [1, 2, 3]
    /// led by 1, partition 1 on [2, 3, 1] led by 2, both at epoch 0.
    fn three_nodes_one_topic() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            apply(&mut s, &Command::Register(reg(id))).expect("register");
        }
        let create = Command::Topic(TopicCommand::CreateTopic {
            name: "t".into(),
            id: 1,
            config: Default::default(),
            assignments: vec![
                vec![NodeId(1), NodeId(2), NodeId(3)],
                vec![NodeId(2), NodeId(3), NodeId(1)],
            ],
        });
        apply(&mut s, &create).expect("create");
        s
    }

    fn elected(partition: i32, leader: i32, epoch: i32) -> LeaderMove {
        LeaderMove {
            topic: "t".into(),
            partition,
            leader: NodeId(leader),
            epoch: Some(Epoch(epoch)),
        }
    }

    fn epoch_of(s: &ClusterState, partition: i32) -> (NodeId, Epoch) {
        let a = assignment(&s.topics, "t", partition).expect("partition");
        (a.leader, a.leader_epoch)
    }

    #[test]
    fn an_elected_move_applies_only_at_the_next_epoch() {
        let mut s = three_nodes_one_topic();
        apply(&mut s, &Command::MoveLeaders(vec![elected(0, 2, 1)])).expect("epoch 0 + 1");
        assert_eq!(epoch_of(&s, 0), (NodeId(2), Epoch(1)));

        let before = s.clone();
        for stale in [1, 3, 0] {
            assert_eq!(
                apply(&mut s, &Command::MoveLeaders(vec![elected(0, 3, stale)])),
                Err(StateError::StaleElection {
                    topic: "t".into(),
                    partition: 0,
                    expected: Epoch(2),
                    got: Epoch(stale),
                })
            );
            assert_eq!(s, before, "a stale election changes nothing");
        }

        // An unelected move still bumps by one, and an election prepared
        // before it is stale after it.
        let plain = LeaderMove {
            epoch: None,
            ..elected(0, 3, 0)
        };
        apply(&mut s, &Command::MoveLeaders(vec![plain])).expect("plain move");
        assert_eq!(epoch_of(&s, 0), (NodeId(3), Epoch(2)));
        assert!(apply(&mut s, &Command::MoveLeaders(vec![elected(0, 1, 2)])).is_err());
        apply(&mut s, &Command::MoveLeaders(vec![elected(0, 1, 3)])).expect("the next epoch");
        assert_eq!(epoch_of(&s, 0), (NodeId(1), Epoch(3)));
    }

    #[test]
    fn one_stale_election_refuses_the_whole_command() {
        let mut s = three_nodes_one_topic();
        let before = s.clone();
        let cmd = Command::MoveLeaders(vec![elected(1, 3, 1), elected(0, 2, 5)]);
        assert!(matches!(
            apply(&mut s, &cmd),
            Err(StateError::StaleElection { partition: 0, .. })
        ));
        assert_eq!(s, before);

        // Two moves of one partition in one command: the second is checked
        // against the epoch the first leaves.
        let twice = Command::MoveLeaders(vec![elected(1, 3, 1), elected(1, 1, 2)]);
        assert_eq!(apply(&mut s, &twice), Ok(Applied::LeadersMoved(2)));
        assert_eq!(epoch_of(&s, 1), (NodeId(1), Epoch(2)));
        let twice_stale = Command::MoveLeaders(vec![elected(1, 3, 3), elected(1, 1, 3)]);
        assert!(apply(&mut s, &twice_stale).is_err());
        assert_eq!(epoch_of(&s, 1), (NodeId(1), Epoch(2)));
    }

    fn start(partition: i32, target: &[i32]) -> Command {
        Command::StartReassignment {
            topic: "t".into(),
            partition,
            target: target.iter().copied().map(NodeId).collect(),
        }
    }

    fn replicas_of(s: &ClusterState, partition: i32) -> Vec<i32> {
        let a = assignment(&s.topics, "t", partition).expect("partition");
        a.replicas.iter().map(|n| n.0).collect()
    }

    #[test]
    fn a_reassignment_runs_on_the_union_and_completes_at_its_epoch() {
        let mut s = three_nodes_one_topic();
        apply(&mut s, &Command::Register(reg(4))).expect("register");
        apply(&mut s, &start(0, &[2, 3, 4])).expect("start");
        assert_eq!(
            replicas_of(&s, 0),
            vec![2, 3, 4, 1],
            "target first, then the leaving replicas"
        );
        assert_eq!(
            epoch_of(&s, 0),
            (NodeId(1), Epoch(1)),
            "the leader stays; the epoch moves"
        );

        let complete = |epoch| Command::CompleteReassignment {
            topic: "t".into(),
            partition: 0,
            leader_epoch: Epoch(epoch),
        };
        let before = s.clone();
        assert!(
            matches!(
                apply(&mut s, &complete(1)),
                Err(StateError::NotAReplica { node: NodeId(1), .. })
            ),
            "the leader leaves: leadership moves into the target first"
        );
        apply(&mut s, &Command::MoveLeaders(vec![elected(0, 3, 2)])).expect("elect 3");
        assert_eq!(
            apply(&mut s, &complete(1)),
            Err(StateError::StaleElection {
                topic: "t".into(),
                partition: 0,
                expected: Epoch(2),
                got: Epoch(1),
            })
        );
        assert_ne!(s, before);
        apply(&mut s, &complete(2)).expect("complete");
        assert_eq!(replicas_of(&s, 0), vec![2, 3, 4]);
        assert_eq!(epoch_of(&s, 0), (NodeId(3), Epoch(3)));
        assert!(s.reassignments.is_empty());
        assert_eq!(
            apply(&mut s, &complete(3)),
            Err(StateError::NoReassignment {
                topic: "t".into(),
                partition: 0
            })
        );
        assert_eq!(ClusterState::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn a_second_start_keeps_the_original_and_a_cancel_goes_back_to_it() {
        let mut s = three_nodes_one_topic();
        for id in [4, 5] {
            apply(&mut s, &Command::Register(reg(id))).expect("register");
        }
        apply(&mut s, &start(1, &[4, 3])).expect("start");
        assert_eq!(replicas_of(&s, 1), vec![4, 3, 2, 1]);
        apply(&mut s, &start(1, &[5, 2])).expect("replace the target");
        assert_eq!(
            replicas_of(&s, 1),
            vec![5, 2, 3, 1],
            "4 was only in the first target"
        );
        assert_eq!(
            s.reassignments[&("t".to_string(), 1)].original,
            vec![NodeId(2), NodeId(3), NodeId(1)]
        );
        assert_eq!(
            s.encode(),
            ClusterState::decode(&s.encode()).expect("decode").encode(),
            "pending reassignments survive the snapshot encoding"
        );
        let cancel = Command::CancelReassignment {
            topic: "t".into(),
            partition: 1,
        };
        apply(&mut s, &cancel).expect("cancel");
        assert_eq!(replicas_of(&s, 1), vec![2, 3, 1]);
        assert_eq!(epoch_of(&s, 1), (NodeId(2), Epoch(3)));
        assert!(matches!(
            apply(&mut s, &cancel),
            Err(StateError::NoReassignment { .. })
        ));

        // A cancel after leadership left the original set is refused.
        apply(&mut s, &start(1, &[4, 5])).expect("start");
        apply(&mut s, &Command::MoveLeaders(vec![elected(1, 4, 5)])).expect("elect 4");
        let before = s.clone();
        assert!(matches!(
            apply(&mut s, &cancel),
            Err(StateError::BadReassignment { .. })
        ));
        assert_eq!(s, before);

        // Deleting the topic ends its reassignments.
        apply(
            &mut s,
            &Command::Topic(TopicCommand::DeleteTopic {
                name: "t".into(),
                id: 1,
            }),
        )
        .expect("delete");
        assert!(s.reassignments.is_empty());
    }

    #[test]
    fn bad_targets_are_refused_and_change_nothing() {
        let mut s = three_nodes_one_topic();
        apply(&mut s, &Command::Register(reg(4))).expect("register");
        let single = Command::Topic(TopicCommand::CreateTopic {
            name: "one".into(),
            id: 2,
            config: Default::default(),
            assignments: vec![vec![NodeId(1)]],
        });
        apply(&mut s, &single).expect("create");
        let before = s.clone();
        let refused = [
            start(0, &[]),
            start(0, &[2, 2]),
            start(0, &[2, -1]),
            start(0, &[4]),
            start(0, &[2, 9]),
            start(7, &[2, 3]),
            Command::StartReassignment {
                topic: "one".into(),
                partition: 0,
                target: vec![NodeId(1), NodeId(2)],
            },
        ];
        for cmd in refused {
            assert!(apply(&mut s, &cmd).is_err(), "{cmd:?} was applied");
            assert_eq!(s, before, "{cmd:?} changed the state");
        }
        let drain = Command::SetMemberState {
            node: NodeId(4),
            state: MemberState::Draining,
        };
        apply(&mut s, &drain).expect("drain");
        assert_eq!(
            apply(&mut s, &start(0, &[2, 4])),
            Err(StateError::NotServing(NodeId(4)))
        );
    }

    #[test]
    fn records_written_before_the_new_fields_still_decode() {
        let old_move = r#"{"MoveLeaders":[{"topic":"t","partition":0,"leader":2}]}"#;
        assert_eq!(
            Command::decode(old_move.as_bytes()),
            Ok(Command::MoveLeaders(vec![LeaderMove {
                topic: "t".into(),
                partition: 0,
                leader: NodeId(2),
                epoch: None,
            }]))
        );
        let old_registration = r#"{"Register":{"id":1,"kafka_host":"h","kafka_port":9092,
            "rpc_addr":"h:9093","rack":null,"shards":1}}"#;
        let Ok(Command::Register(r)) = Command::decode(old_registration.as_bytes()) else {
            panic!("an old registration does not decode");
        };
        assert_eq!(r.data_addr, None);
        assert_eq!(r.xdp_addr, None);
        let mut s = ClusterState::default();
        apply(&mut s, &Command::Register(r)).expect("register");
        let mut json: serde_json::Value = serde_json::from_slice(&s.encode()).expect("json");
        json["members"]["1"]
            .as_object_mut()
            .expect("member 1")
            .remove("data_addr");
        json["members"]["1"]
            .as_object_mut()
            .expect("member 1")
            .remove("xdp_addr");
        let decoded = ClusterState::decode(json.to_string().as_bytes()).expect("an old state decodes");
        assert_eq!(decoded.members[&NodeId(1)].data_addr, None);
        assert_eq!(decoded.members[&NodeId(1)].xdp_addr, None);
        json.as_object_mut().expect("state").remove("reassignments");
        let decoded =
            ClusterState::decode(json.to_string().as_bytes()).expect("a state without reassignments");
        assert!(decoded.reassignments.is_empty());
        json.as_object_mut().expect("state").remove("acls");
        let decoded = ClusterState::decode(json.to_string().as_bytes()).expect("a state without ACLs");
        assert!(decoded.acls.bindings.is_empty());
    }

    #[test]
    fn acl_commands_store_delete_and_refuse_bad_bindings_on_every_node_alike() {
        use crate::acls::{op, pattern, permission, resource};
        let binding = AclBinding {
            resource_type: resource::TOPIC,
            resource_name: "orders".into(),
            pattern_type: pattern::LITERAL,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: op::READ,
            permission: permission::ALLOW,
        };
        let mut s = ClusterState::default();
        assert_eq!(
            apply(&mut s, &Command::CreateAcl(binding.clone())),
            Ok(Applied::AclCreated(true))
        );
        assert_eq!(
            apply(&mut s, &Command::CreateAcl(binding.clone())),
            Ok(Applied::AclCreated(false))
        );
        // A command from any proposer is checked again: an unknown
        // resource type is refused and changes nothing.
        let before = s.clone();
        let bad = AclBinding {
            resource_type: 9,
            ..binding.clone()
        };
        assert!(matches!(
            apply(&mut s, &Command::CreateAcl(bad)),
            Err(StateError::InvalidAcl(e)) if e.0.contains("unknown resource type 9")
        ));
        assert_eq!(s, before);
        // The table travels with the state (Raft snapshots) and commands
        // decode back to themselves (the Raft log).
        assert_eq!(ClusterState::decode(&s.encode()), Ok(s.clone()));
        let cmd = Command::CreateAcl(binding.clone());
        assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
        let all = AclFilter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: Some("User:alice".into()),
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        assert_eq!(
            apply(&mut s, &Command::DeleteAcls(all.clone())),
            Ok(Applied::AclsDeleted(vec![binding]))
        );
        assert!(s.acls.bindings.is_empty());
        assert_eq!(
            apply(&mut s, &Command::DeleteAcls(all)),
            Ok(Applied::AclsDeleted(vec![]))
        );
    }
}
