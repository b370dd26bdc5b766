//! One consumer group's state machine (Kafka's classic group protocol),
//! without I/O: the coordinator calls it with the current time and persists
//! what it asks for. Answers that must wait for a rebalance are oneshot
//! receivers; all senders are completed on the group's own shard.
//!
//! States: Empty -> PreparingRebalance (members join) -> CompletingRebalance
//! (the leader computes assignments) -> Stable; any membership change goes
//! back to PreparingRebalance; Dead once deleted.

use super::codec::{GroupValue, MemberValue};
use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Coordinator-wide settings (Kafka's group.* broker configs).
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub min_session: Duration,
    pub max_session: Duration,
    /// How long a rebalance of an Empty group waits for more members.
    pub initial_rebalance_delay: Duration,
    pub max_members: usize,
    /// Largest protocol metadata one member may send.
    pub max_metadata_bytes: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            min_session: Duration::from_millis(6_000),
            max_session: Duration::from_millis(1_800_000),
            initial_rebalance_delay: Duration::from_millis(3_000),
            max_members: 10_000,
            max_metadata_bytes: 1 << 20,
        }
    }
}

/// The time, monotonic for deadlines and wall clock for what is persisted.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub ms: i64,
}

pub struct JoinArgs {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JoinedMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn failed(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn failed(error: ResponseError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or one that comes when the rebalance moves on.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

pub struct SyncArgs {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// What a SyncGroup asks of the coordinator.
pub enum SyncStep {
    Reply(Reply<SyncResult>),
    /// The leader's assignments: persist `value`, then call `finish_sync`
    /// with the outcome; the answer arrives on `rx` either way.
    Persist {
        generation: i32,
        value: GroupValue,
        rx: oneshot::Receiver<SyncResult>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
    /// Offset of the record in the coordinator log; a replayed or late
    /// completed write never replaces a newer one.
    pub log_offset: i64,
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinResult>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
    /// Session expiry; refreshed by every request of the member.
    deadline: Instant,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn reply_join(&mut self, r: JoinResult) {
        if let Some(tx) = self.awaiting_join.take() {
            // The connection may be gone; nobody to tell then.
            let _ = tx.send(r);
        }
    }

    fn reply_sync(&mut self, r: SyncResult) {
        if let Some(tx) = self.awaiting_sync.take() {
            let _ = tx.send(r);
        }
    }
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they rejoin.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> member id of static members.
    statics: HashMap<String, String>,
    /// When the current PreparingRebalance or CompletingRebalance ends anyway.
    phase_deadline: Option<Instant>,
    /// The first rebalance of an Empty group waits for more members, until
    /// `initial_limit`; `joined_since_delay` extends the wait once more.
    initial_limit: Option<Instant>,
    joined_since_delay: bool,
    /// Leader's assignments while they are being persisted.
    pending_assignment: Option<(i32, HashMap<String, Bytes>)>,
    /// Wall clock when the group entered its state (offset retention).
    state_since_ms: i64,
    /// The group must be persisted (it became Empty or a static member was
    /// replaced); taken by the coordinator.
    dirty: bool,
    /// The newest group record in the coordinator log (compaction rewrites
    /// it; deleting the group needs a tombstone if there is one).
    pub persisted: Option<Bytes>,
    pub offsets: HashMap<(String, i32), Committed>,
}

fn new_member_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        uuid::Uuid::from_u128(crate::topics::new_topic_id())
    )
}

impl Group {
    pub fn new(id: String, now: Now) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            phase_deadline: None,
            initial_limit: None,
            joined_since_delay: false,
            pending_assignment: None,
            state_since_ms: now.ms,
            dirty: false,
            persisted: None,
            offsets: HashMap::new(),
        }
    }

    /// A group as last persisted. Members get a fresh session: if they are
    /// gone they expire and the group rebalances.
    pub fn restore(&mut self, v: GroupValue, now: Now) {
        self.generation = v.generation;
        self.protocol_type = v.protocol_type;
        self.protocol = v.protocol;
        self.leader = v.leader;
        self.state_since_ms = v.state_since_ms;
        self.members.clear();
        self.statics.clear();
        self.pending.clear();
        for m in v.members {
            let session = Duration::from_millis(m.session_timeout_ms.max(0) as u64);
            if let Some(i) = &m.instance_id {
                self.statics.insert(i.clone(), m.id.clone());
            }
            let protocols = match &self.protocol {
                Some(p) => vec![(p.clone(), m.metadata)],
                None => Vec::new(),
            };
            self.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    deadline: now.at + session,
                },
            );
        }
        self.state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn state_since_ms(&self) -> i64 {
        self.state_since_ms
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// The record that describes the group now (assignments as last synced).
    pub fn value(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_since_ms: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis().min(i32::MAX as u128) as i32,
                    session_timeout_ms: m.session_timeout.as_millis().min(i32::MAX as u128) as i32,
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// The group record to persist, if a change asked for one.
    pub fn take_dirty(&mut self) -> Option<GroupValue> {
        if !std::mem::take(&mut self.dirty) || self.state == GroupState::Dead {
            return None;
        }
        Some(self.value())
    }

    fn set_state(&mut self, s: GroupState, now: Now) {
        if self.state != s {
            self.state = s;
            self.state_since_ms = now.ms;
        }
    }

    /// KIP-345: a request naming an instance id whose current member is
    /// someone else comes from a fenced (replaced) instance.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.statics.get(i))
            .is_some_and(|m| m != member_id)
    }

    /// Protocols every current member supports, except `except`.
    fn candidates(&self, except: Option<&str>) -> Option<Vec<&str>> {
        let mut it = self.members.values().filter(|m| Some(m.id.as_str()) != except);
        let first = it.next()?;
        let mut c: Vec<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for m in it {
            c.retain(|p| m.protocols.iter().any(|(n, _)| n == p));
        }
        Some(c)
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)], member: Option<&str>) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        match self.candidates(member) {
            None => true,
            Some(c) => {
                self.protocol_type.as_deref() == Some(protocol_type)
                    && protocols.iter().any(|(n, _)| c.contains(&n.as_str()))
            }
        }
    }

    /// Each member votes for its first protocol that all support; most
    /// votes wins (ties: the first candidate in the first member's order).
    fn select_protocol(&self) -> Option<String> {
        let c = self.candidates(None)?;
        let mut votes: Vec<(&str, usize)> = c.iter().map(|p| (*p, 0)).collect();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| c.contains(&n.as_str())) {
                if let Some(v) = votes.iter_mut().find(|(p, _)| p == n) {
                    v.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.iter().find(|(_, n)| *n == best).map(|(p, _)| p.to_string())
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    pub fn join(&mut self, a: JoinArgs, now: Now, limits: &GroupLimits) -> Reply<JoinResult> {
        let fail = |e: ResponseError| Reply::Now(JoinResult::failed(e, &a.member_id));
        if a.session_timeout < limits.min_session || a.session_timeout > limits.max_session {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        if a.protocols
            .iter()
            .any(|(_, m)| m.len() > limits.max_metadata_bytes)
        {
            return fail(ResponseError::InvalidRequest);
        }
        if self.state == GroupState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        let known = !a.member_id.is_empty();
        // A new member id for a known instance replaces it (below); a known
        // member id that is no longer the instance's is fenced.
        if known && self.fenced(&a.member_id, a.instance_id.as_deref()) {
            return fail(ResponseError::FencedInstanceId);
        }
        let is_member = known && self.members.contains_key(&a.member_id);
        if known && !is_member && !self.pending.contains_key(&a.member_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        if !self.supports(
            &a.protocol_type,
            &a.protocols,
            is_member.then_some(a.member_id.as_str()),
        ) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let new_member = !is_member
            && !a
                .instance_id
                .as_ref()
                .is_some_and(|i| self.statics.contains_key(i));
        if new_member && self.members.len() + self.pending.len() >= limits.max_members {
            return fail(ResponseError::GroupMaxSizeReached);
        }
        if is_member {
            return self.join_known(a, now, limits);
        }
        if let Some(instance) = a.instance_id.clone() {
            if let Some(old) = self.statics.get(&instance).cloned() {
                return self.replace_static(old, a, now, limits);
            }
        }
        if !known && a.require_known_member_id && a.instance_id.is_none() {
            let id = new_member_id(&a.client_id);
            self.pending.insert(id.clone(), now.at + a.session_timeout);
            return Reply::Now(JoinResult::failed(ResponseError::MemberIdRequired, &id));
        }
        let id = if known {
            self.pending.remove(&a.member_id);
            a.member_id.clone()
        } else {
            new_member_id(a.instance_id.as_deref().unwrap_or(&a.client_id))
        };
        self.add_member(id, a, now, limits)
    }

    fn add_member(&mut self, id: String, a: JoinArgs, now: Now, limits: &GroupLimits) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(a.protocol_type.clone());
        }
        if let Some(i) = &a.instance_id {
            self.statics.insert(i.clone(), id.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: a.instance_id,
                client_id: a.client_id,
                client_host: a.client_host,
                session_timeout: a.session_timeout,
                rebalance_timeout: a.rebalance_timeout,
                protocols: a.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(tx),
                awaiting_sync: None,
                deadline: now.at + a.session_timeout,
            },
        );
        self.joined_since_delay = true;
        self.rebalance(now, limits);
        Reply::Later(rx)
    }

    fn join_known(&mut self, a: JoinArgs, now: Now, limits: &GroupLimits) -> Reply<JoinResult> {
        let is_leader = self.leader.as_deref() == Some(a.member_id.as_str());
        let m = self.members.get_mut(&a.member_id).expect("checked");
        let unchanged = m.protocols == a.protocols;
        m.deadline = now.at + a.session_timeout;
        m.session_timeout = a.session_timeout;
        m.rebalance_timeout = a.rebalance_timeout;
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        let answer_now = match self.state {
            GroupState::CompletingRebalance => unchanged,
            GroupState::Stable => unchanged && !is_leader,
            _ => false,
        };
        if answer_now {
            return Reply::Now(self.join_result(&a.member_id, false));
        }
        let (tx, rx) = oneshot::channel();
        let m = self.members.get_mut(&a.member_id).expect("checked");
        m.protocols = a.protocols;
        // A second join on a new connection replaces the first one's wait.
        if let Some(old) = m.awaiting_join.replace(tx) {
            let _ = old.send(JoinResult::failed(
                ResponseError::RebalanceInProgress,
                &a.member_id,
            ));
        }
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        } else {
            self.rebalance(now, limits);
        }
        Reply::Later(rx)
    }

    /// A known group.instance.id joins with a new member id: the old member
    /// is fenced and the new one takes its place and assignment.
    fn replace_static(
        &mut self,
        old_id: String,
        a: JoinArgs,
        now: Now,
        limits: &GroupLimits,
    ) -> Reply<JoinResult> {
        let mut m = self.members.remove(&old_id).expect("static members are members");
        m.reply_join(JoinResult::failed(ResponseError::FencedInstanceId, &old_id));
        m.reply_sync(SyncResult::failed(ResponseError::FencedInstanceId));
        let id = new_member_id(a.instance_id.as_deref().unwrap_or(&a.client_id));
        let unchanged = m.protocols == a.protocols;
        m.id = id.clone();
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        m.session_timeout = a.session_timeout;
        m.rebalance_timeout = a.rebalance_timeout;
        m.protocols = a.protocols;
        m.deadline = now.at + a.session_timeout;
        let instance = a.instance_id.expect("static");
        self.statics.insert(instance, id.clone());
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(id.clone());
        }
        self.members.insert(id.clone(), m);
        if self.state == GroupState::Stable && unchanged {
            // KIP-345: a restarted static member gets its assignment back
            // without a rebalance.
            self.dirty = true;
            let leader = self.leader.as_deref() == Some(id.as_str());
            return Reply::Now(self.join_result(&id, leader));
        }
        let (tx, rx) = oneshot::channel();
        self.members.get_mut(&id).expect("inserted").awaiting_join = Some(tx);
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        } else {
            self.rebalance(now, limits);
        }
        Reply::Later(rx)
    }

    /// What JoinGroup answers `member_id` in the current generation.
    fn join_result(&self, member_id: &str, skip_assignment: bool) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
            skip_assignment,
        }
    }

    /// Starts a rebalance: every member must join again.
    fn rebalance(&mut self, now: Now, limits: &GroupLimits) {
        if self.state == GroupState::CompletingRebalance {
            self.pending_assignment = None;
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                m.reply_sync(SyncResult::failed(ResponseError::RebalanceInProgress));
            }
        }
        let max = self.max_rebalance_timeout();
        if self.state == GroupState::Empty && !limits.initial_rebalance_delay.is_zero() {
            self.initial_limit = Some(now.at + max);
            self.joined_since_delay = false;
            self.phase_deadline = Some(now.at + limits.initial_rebalance_delay.min(max));
        } else if self.state != GroupState::PreparingRebalance {
            self.phase_deadline = Some(now.at + max);
        }
        self.set_state(GroupState::PreparingRebalance, now);
        self.try_complete_join(now);
    }

    fn try_complete_join(&mut self, now: Now) {
        if self.state != GroupState::PreparingRebalance || self.initial_limit.is_some() {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        if all_joined && self.pending.is_empty() {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the
    /// generation advances, and every joined member gets its answer.
    fn complete_join(&mut self, now: Now) {
        self.initial_limit = None;
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.drop_member(&id);
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.phase_deadline = None;
            self.set_state(GroupState::Empty, now);
            self.dirty = true;
            return;
        }
        self.protocol = self.select_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(GroupState::CompletingRebalance, now);
        self.phase_deadline = Some(now.at + self.max_rebalance_timeout());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let r = self.join_result(&id, false);
            let m = self.members.get_mut(&id).expect("listed");
            m.deadline = now.at + m.session_timeout;
            m.reply_join(r);
        }
    }

    fn drop_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            m.reply_join(JoinResult::failed(ResponseError::UnknownMemberId, id));
            m.reply_sync(SyncResult::failed(ResponseError::UnknownMemberId));
            if let Some(i) = &m.instance_id {
                if self.statics.get(i).map(String::as_str) == Some(id) {
                    self.statics.remove(i);
                }
            }
            if self.leader.as_deref() == Some(id) {
                self.leader = None;
            }
        }
    }

    /// A member left or expired: the others rebalance.
    fn remove_member(&mut self, id: &str, now: Now, limits: &GroupLimits) {
        self.drop_member(id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.rebalance(now, limits),
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Checks shared by SyncGroup, Heartbeat and OffsetCommit.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if self.fenced(member_id, instance_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    fn touch(&mut self, member_id: &str, now: Now) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.deadline = now.at + m.session_timeout;
        }
    }

    pub fn sync(&mut self, a: SyncArgs, now: Now) -> SyncStep {
        let fail = |e| SyncStep::Reply(Reply::Now(SyncResult::failed(e)));
        if let Err(e) = self.check_member(&a.member_id, a.instance_id.as_deref(), a.generation) {
            return fail(e);
        }
        let mismatch = |mine: &Option<String>, theirs: &Option<String>| theirs.is_some() && theirs != mine;
        if mismatch(&self.protocol_type, &a.protocol_type) || mismatch(&self.protocol, &a.protocol) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        self.touch(&a.member_id, now);
        match self.state {
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let m = &self.members[&a.member_id];
                SyncStep::Reply(Reply::Now(SyncResult {
                    error: None,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    assignment: m.assignment.clone(),
                }))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = self.members.get_mut(&a.member_id).expect("checked");
                if let Some(old) = m.awaiting_sync.replace(tx) {
                    let _ = old.send(SyncResult::failed(ResponseError::RebalanceInProgress));
                }
                let is_leader = self.leader.as_deref() == Some(a.member_id.as_str());
                if !is_leader || self.pending_assignment.is_some() {
                    return SyncStep::Reply(Reply::Later(rx));
                }
                let assignments: HashMap<String, Bytes> = a
                    .assignments
                    .into_iter()
                    .filter(|(id, _)| self.members.contains_key(id))
                    .collect();
                let mut value = self.value();
                for mv in &mut value.members {
                    mv.assignment = assignments.get(&mv.id).cloned().unwrap_or_default();
                }
                value.state_since_ms = now.ms;
                self.pending_assignment = Some((self.generation, assignments));
                SyncStep::Persist {
                    generation: self.generation,
                    value,
                    rx,
                }
            }
        }
    }

    /// The leader's assignments were persisted (or not): the group becomes
    /// Stable and every member waiting in SyncGroup gets its assignment.
    pub fn finish_sync(
        &mut self,
        generation: i32,
        outcome: Result<(), ResponseError>,
        now: Now,
        limits: &GroupLimits,
    ) {
        let current = self.state == GroupState::CompletingRebalance
            && self.generation == generation
            && self
                .pending_assignment
                .as_ref()
                .is_some_and(|(g, _)| *g == generation);
        if !current {
            // A rebalance started meanwhile and answered the waiters.
            return;
        }
        let (_, mut assignments) = self.pending_assignment.take().expect("checked");
        match outcome {
            Ok(()) => {
                self.set_state(GroupState::Stable, now);
                self.phase_deadline = None;
                let (pt, p) = (self.protocol_type.clone(), self.protocol.clone());
                for m in self.members.values_mut() {
                    m.assignment = assignments.remove(&m.id).unwrap_or_default();
                    m.deadline = now.at + m.session_timeout;
                    m.reply_sync(SyncResult {
                        error: None,
                        protocol_type: pt.clone(),
                        protocol: p.clone(),
                        assignment: m.assignment.clone(),
                    });
                }
            }
            Err(e) => {
                for m in self.members.values_mut() {
                    m.reply_sync(SyncResult::failed(e));
                }
                self.rebalance(now, limits);
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Now,
    ) -> Option<ResponseError> {
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return Some(e);
        }
        self.touch(member_id, now);
        match self.state {
            GroupState::Empty | GroupState::Dead => Some(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

    /// LeaveGroup for each (member id, instance id); the member id may be
    /// empty when a static member is removed by its instance id.
    pub fn leave(
        &mut self,
        leaving: &[(String, Option<String>)],
        now: Now,
        limits: &GroupLimits,
    ) -> Vec<Option<ResponseError>> {
        leaving
            .iter()
            .map(|(member_id, instance_id)| {
                let id = match instance_id {
                    Some(i) => match self.statics.get(i) {
                        None => return Some(ResponseError::UnknownMemberId),
                        Some(m) if !member_id.is_empty() && m != member_id => {
                            return Some(ResponseError::FencedInstanceId)
                        }
                        Some(m) => m.clone(),
                    },
                    None => member_id.clone(),
                };
                if self.pending.remove(&id).is_some() {
                    self.try_complete_join(now);
                    return None;
                }
                if !self.members.contains_key(&id) {
                    return Some(ResponseError::UnknownMemberId);
                }
                self.remove_member(&id, now, limits);
                None
            })
            .collect()
    }

    /// May `member_id` of `generation` commit offsets now? Refreshes its
    /// session if so. Generation -1 with no member is a client managing its
    /// own assignment, allowed while the group has no members.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Now,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if self.fenced(member_id, instance_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        self.check_member(member_id, instance_id, generation)?;
        match self.state {
            GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => {
                self.touch(member_id, now);
                Ok(())
            }
        }
    }

    /// Applies a committed offset unless a newer record already did.
    pub fn apply_offset(&mut self, topic: String, partition: i32, c: Committed) {
        match self.offsets.get(&(topic.clone(), partition)) {
            Some(old) if old.log_offset > c.log_offset => {}
            _ => {
                self.offsets.insert((topic, partition), c);
            }
        }
    }

    /// Topics the members subscribe to, from the consumer protocol metadata;
    /// `None` if the group does not use the consumer protocol or a member's
    /// metadata does not parse (then every topic counts as subscribed).
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.clone()?;
        let mut out = Vec::new();
        for m in self.members.values() {
            let mut meta = m.metadata_for(&protocol);
            if meta.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]).min(3);
            bytes::Buf::advance(&mut meta, 2);
            let s = ConsumerProtocolSubscription::decode(&mut meta, version).ok()?;
            out.extend(s.topics.into_iter().map(|t| t.to_string()));
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    pub fn mark_dead(&mut self, now: Now) {
        self.set_state(GroupState::Dead, now);
    }

    /// Undoes `mark_dead` of an Empty group whose deletion failed.
    pub fn revive(&mut self, now: Now) {
        if self.state == GroupState::Dead {
            self.set_state(GroupState::Empty, now);
        }
    }

    /// Timers: expired sessions and pending member ids, and the end of a
    /// join or sync phase that did not complete by itself.
    pub fn tick(&mut self, now: Now, limits: &GroupLimits) {
        let expired_pending: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, d)| **d <= now.at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending.remove(&id);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.deadline <= now.at)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(&id, now, limits);
        }
        let due = self.phase_deadline.is_some_and(|d| d <= now.at);
        match self.state {
            GroupState::PreparingRebalance if due => {
                if let Some(limit) = self.initial_limit {
                    if self.joined_since_delay && now.at < limit {
                        self.joined_since_delay = false;
                        self.phase_deadline = Some((now.at + limits.initial_rebalance_delay).min(limit));
                        return;
                    }
                }
                self.complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::CompletingRebalance if due && self.pending_assignment.is_none() => {
                // The leader never sent its assignments: members that did not
                // sync are dropped and the rest join again.
                let gone: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.awaiting_sync.is_none())
                    .map(|m| m.id.clone())
                    .collect();
                for id in gone {
                    self.drop_member(&id);
                }
                self.rebalance(now, limits);
            }
            _ => {}
        }
    }

    /// For DescribeGroups: (id, instance, client id, host, metadata, assignment);
    /// metadata and assignment only while Stable, as Kafka does.
    pub fn describe_members(&self) -> Vec<(String, Option<String>, String, String, Bytes, Bytes)> {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| {
                let (meta, assignment) = if stable {
                    (m.metadata_for(&protocol), m.assignment.clone())
                } else {
                    (Bytes::new(), Bytes::new())
                };
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    meta,
                    assignment,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay: Duration::ZERO,
            ..GroupLimits::default()
        }
    }

    fn at(start: Instant, ms: u64) -> Now {
        Now {
            at: start + Duration::from_millis(ms),
            ms: ms as i64,
        }
    }

    fn args(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinArgs {
        JoinArgs {
            member_id: member.to_string(),
            instance_id: instance.map(str::to_string),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            require_known_member_id: false,
        }
    }

    fn now_result<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Later(_) => panic!("expected an answer now"),
        }
    }

    fn later<T: std::fmt::Debug>(r: Reply<T>) -> oneshot::Receiver<T> {
        match r {
            Reply::Later(rx) => rx,
            Reply::Now(t) => panic!("expected to wait, got {t:?}"),
        }
    }

    fn ready<T>(rx: &mut oneshot::Receiver<T>) -> T {
        rx.try_recv().expect("not cancelled").expect("answered")
    }

    /// Joins `n` dynamic members and completes the rebalance.
    fn stable_group(n: usize, start: Instant) -> (Group, Vec<JoinResult>) {
        let l = limits();
        let mut g = Group::new("g".into(), at(start, 0));
        let mut rxs = [later(g.join(args("", None, &["range"]), at(start, 0), &l))];
        // The first member completed a generation alone; the others join and
        // it rejoins.
        let first = ready(&mut rxs[0]);
        assert_eq!(first.generation, 1);
        let mut rxs = Vec::new();
        for _ in 1..n {
            rxs.push(later(g.join(args("", None, &["range"]), at(start, 1), &l)));
        }
        if n > 1 {
            rxs.insert(
                0,
                later(g.join(args(&first.member_id, None, &["range"]), at(start, 2), &l)),
            );
        } else {
            return (g, vec![first]);
        }
        let results: Vec<JoinResult> = rxs.iter_mut().map(ready).collect();
        let leader = results[0].leader.clone();
        let step = g.sync(
            SyncArgs {
                member_id: leader.clone(),
                instance_id: None,
                generation: 2,
                protocol_type: None,
                protocol: None,
                assignments: results
                    .iter()
                    .map(|r| (r.member_id.clone(), Bytes::from(r.member_id.clone())))
                    .collect(),
            },
            at(start, 3),
        );
        let SyncStep::Persist {
            generation, mut rx, ..
        } = step
        else {
            panic!("leader sync persists")
        };
        g.finish_sync(generation, Ok(()), at(start, 4), &l);
        assert_eq!(ready(&mut rx).assignment, Bytes::from(leader));
        assert_eq!(g.state(), GroupState::Stable);
        (g, results)
    }

    #[test]
    fn members_join_get_one_leader_and_their_assignments() {
        let start = Instant::now();
        let (g, results) = stable_group(3, start);
        assert_eq!(g.generation(), 2);
        let leaders: Vec<_> = results.iter().filter(|r| r.leader == r.member_id).collect();
        assert_eq!(leaders.len(), 1);
        assert_eq!(leaders[0].members.len(), 3);
        assert!(results
            .iter()
            .filter(|r| r.leader != r.member_id)
            .all(|r| r.members.is_empty()));
        assert!(results.iter().all(|r| r.protocol.as_deref() == Some("range")));
    }

    #[test]
    fn member_id_required_then_rejoin() {
        let start = Instant::now();
        let l = limits();
        let mut g = Group::new("g".into(), at(start, 0));
        let mut a = args("", None, &["range"]);
        a.require_known_member_id = true;
        let r = now_result(g.join(a, at(start, 0), &l));
        assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
        assert!(!r.member_id.is_empty());
        // Unknown ids are refused; the handed-out one is accepted.
        let bogus = now_result(g.join(args("bogus", None, &["range"]), at(start, 1), &l));
        assert_eq!(bogus.error, Some(ResponseError::UnknownMemberId));
        let mut rx = later(g.join(args(&r.member_id, None, &["range"]), at(start, 1), &l));
        let joined = ready(&mut rx);
        assert_eq!(
            (joined.error, joined.member_id.as_str()),
            (None, r.member_id.as_str())
        );
    }

    #[test]
    fn fencing_by_generation_member_and_state() {
        let start = Instant::now();
        let (mut g, results) = stable_group(2, start);
        let m = &results[1].member_id;
        let now = at(start, 10);
        assert_eq!(g.heartbeat(m, None, 2, now), None);
        assert_eq!(
            g.heartbeat(m, None, 1, now),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat("x", None, 2, now),
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            g.check_commit(m, None, 1, now),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.check_commit("x", None, 2, now),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            g.check_commit("", None, -1, now),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(g.check_commit(m, None, 2, now), Ok(()));
        // A third member joins: the others must rejoin.
        let l = limits();
        let _rx = later(g.join(args("", None, &["range"]), now, &l));
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(m, None, 2, now),
            Some(ResponseError::RebalanceInProgress)
        );
        // Commits of the old generation are still allowed while preparing.
        assert_eq!(g.check_commit(m, None, 2, now), Ok(()));
    }

    #[test]
    fn inconsistent_protocols_and_bad_timeouts_are_refused() {
        let start = Instant::now();
        let (mut g, _) = stable_group(1, start);
        let l = limits();
        let r = now_result(g.join(args("", None, &["other"]), at(start, 5), &l));
        assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
        let mut a = args("", None, &["range"]);
        a.session_timeout = Duration::from_millis(10);
        let r = now_result(g.join(a, at(start, 5), &l));
        assert_eq!(r.error, Some(ResponseError::InvalidSessionTimeout));
        let mut a = args("", None, &["range"]);
        a.protocols[0].1 = Bytes::from(vec![0u8; l.max_metadata_bytes + 1]);
        let r = now_result(g.join(a, at(start, 5), &l));
        assert_eq!(r.error, Some(ResponseError::InvalidRequest));
    }

    #[test]
    fn expired_sessions_leave_and_last_one_empties_the_group() {
        let start = Instant::now();
        let (mut g, results) = stable_group(2, start);
        let l = limits();
        // Member 0 heartbeats, member 1 goes silent.
        let m0 = results[0].member_id.clone();
        assert_eq!(g.heartbeat(&m0, None, 2, at(start, 9_000)), None);
        g.tick(at(start, 10_500), &l);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        let mut rx = later(g.join(args(&m0, None, &["range"]), at(start, 10_600), &l));
        let r = ready(&mut rx);
        assert_eq!(
            (r.generation, r.leader.as_str(), r.members.len()),
            (3, m0.as_str(), 1)
        );
        // Now nobody syncs and the rebalance timeout passes.
        g.tick(at(start, 10_600 + 30_001), &l);
        g.tick(at(start, 10_600 + 60_002), &l);
        assert_eq!(g.state(), GroupState::Empty);
        assert!(g.take_dirty().is_some(), "an emptied group is persisted");
    }

    #[test]
    fn leave_rebalances_and_unknown_members_are_reported() {
        let start = Instant::now();
        let (mut g, results) = stable_group(2, start);
        let l = limits();
        let errs = g.leave(
            &[(results[1].member_id.clone(), None), ("nobody".into(), None)],
            at(start, 10),
            &l,
        );
        assert_eq!(errs, vec![None, Some(ResponseError::UnknownMemberId)]);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        let errs = g.leave(&[(results[0].member_id.clone(), None)], at(start, 11), &l);
        assert_eq!(errs, vec![None]);
        assert_eq!(g.state(), GroupState::Empty);
        assert_eq!(g.generation(), 3);
    }

    #[test]
    fn static_member_restart_keeps_its_assignment_and_fences_the_old_id() {
        let start = Instant::now();
        let l = limits();
        let mut g = Group::new("g".into(), at(start, 0));
        let mut rx = later(g.join(args("", Some("i1"), &["range"]), at(start, 0), &l));
        let first = ready(&mut rx);
        let SyncStep::Persist {
            generation, mut rx, ..
        } = g.sync(
            SyncArgs {
                member_id: first.member_id.clone(),
                instance_id: Some("i1".into()),
                generation: 1,
                protocol_type: Some("consumer".into()),
                protocol: Some("range".into()),
                assignments: vec![(first.member_id.clone(), Bytes::from_static(b"A"))],
            },
            at(start, 1),
        )
        else {
            panic!("leader persists")
        };
        g.finish_sync(generation, Ok(()), at(start, 2), &l);
        assert_eq!(ready(&mut rx).assignment, Bytes::from_static(b"A"));
        // The instance restarts: new member id, same generation, no rebalance.
        let again = now_result(g.join(args("", Some("i1"), &["range"]), at(start, 3), &l));
        assert_eq!(again.error, None);
        assert_ne!(again.member_id, first.member_id);
        assert_eq!(again.generation, 1);
        assert_eq!(g.state(), GroupState::Stable);
        let SyncStep::Reply(Reply::Now(s)) = g.sync(
            SyncArgs {
                member_id: again.member_id.clone(),
                instance_id: Some("i1".into()),
                generation: 1,
                protocol_type: None,
                protocol: None,
                assignments: vec![],
            },
            at(start, 4),
        ) else {
            panic!("stable sync answers now")
        };
        assert_eq!(s.assignment, Bytes::from_static(b"A"));
        assert_eq!(
            g.heartbeat(&first.member_id, Some("i1"), 1, at(start, 5)),
            Some(ResponseError::FencedInstanceId)
        );
    }

    #[test]
    fn protocol_is_chosen_by_votes_among_common_ones() {
        let start = Instant::now();
        let l = limits();
        let mut g = Group::new("g".into(), at(start, 0));
        let mut rx = later(g.join(args("", None, &["a", "b"]), at(start, 0), &l));
        let first = ready(&mut rx);
        let mut rx2 = later(g.join(args("", None, &["b", "a"]), at(start, 1), &l));
        let mut rx3 = later(g.join(args("", None, &["b"]), at(start, 1), &l));
        let mut rx1 = later(g.join(args(&first.member_id, None, &["a", "b"]), at(start, 2), &l));
        for rx in [&mut rx1, &mut rx2, &mut rx3] {
            assert_eq!(ready(rx).protocol.as_deref(), Some("b"));
        }
    }

    #[test]
    fn initial_delay_waits_for_more_members() {
        let start = Instant::now();
        let l = GroupLimits {
            initial_rebalance_delay: Duration::from_millis(100),
            ..GroupLimits::default()
        };
        let mut g = Group::new("g".into(), at(start, 0));
        let mut a = later(g.join(args("", None, &["range"]), at(start, 0), &l));
        let mut b = later(g.join(args("", None, &["range"]), at(start, 50), &l));
        g.tick(at(start, 60), &l);
        assert!(a.try_recv().expect("open").is_none(), "still waiting");
        // Someone joined during the delay: it is extended once.
        g.tick(at(start, 101), &l);
        assert!(a.try_recv().expect("open").is_none());
        g.tick(at(start, 202), &l);
        let (ra, rb) = (ready(&mut a), ready(&mut b));
        assert_eq!((ra.generation, rb.generation), (1, 1));
        assert_eq!(ra.leader, rb.leader);
    }

    #[test]
    fn restored_group_is_stable_and_members_can_heartbeat() {
        let start = Instant::now();
        let (g, results) = stable_group(2, start);
        let v = g.value();
        let mut r = Group::new("g".into(), at(start, 0));
        r.restore(v, at(start, 100));
        assert_eq!(r.state(), GroupState::Stable);
        assert_eq!(r.heartbeat(&results[0].member_id, None, 2, at(start, 200)), None);
        // Sessions restart from the restore; silence expires them.
        r.tick(at(start, 100 + 10_001), &limits());
        assert_eq!(r.state(), GroupState::PreparingRebalance);
    }
}
