//! One member of the controller's Raft group, without I/O of its own but
//! the durable log: raft-rs's `RawNode` over [`RaftLog`], the metadata
//! state machine ([`ClusterState`]) and the Ready loop.
//!
//! The caller owns time and the network: it calls [`RaftCore::tick`] on a
//! timer, [`RaftCore::step`] for every message received, then
//! [`RaftCore::handle_ready`], and sends the messages that returns. The same
//! code runs in the real node (on the control executor, messages over
//! Cap'n Proto RPC) and in the deterministic simulation (messages through a
//! seeded, lossy in-memory network).
//!
//! The Ready loop is raft-rs's, in its order: install a received snapshot,
//! apply committed entries, append new entries, store the HardState, then
//! (after `advance`) store the new commit index and apply what it committed.
//! Every store is durable (fdatasync'd) when it returns, and all the
//! messages of a round are handed to the caller only at its end, so no
//! message leaves before the state it depends on is on disk.

use crate::raft_log::{RaftLog, RaftLogError};
use crate::state::{self, Applied, ClusterState, Command, StateError};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{Config, RawNode, ReadState, StateRole, Storage};
use std::path::Path;

/// The Raft id of a node: raft-rs reserves 0 (no node), and node ids start
/// at 0, so a node's Raft id is its node id plus one.
pub fn raft_id(node: ferrolog_model::NodeId) -> u64 {
    u64::try_from(node.0).expect("node ids are not negative") + 1
}

/// The node of a Raft id (see [`raft_id`]).
pub fn node_of(raft_id: u64) -> ferrolog_model::NodeId {
    ferrolog_model::NodeId(i32::try_from(raft_id.saturating_sub(1)).unwrap_or(i32::MAX))
}

/// Timing and sizing of the group. Ticks are the caller's clock.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: u64,
    /// Ticks without a leader's heartbeat before a follower campaigns (raft
    /// randomizes it in [election_tick, max_election_tick)).
    pub election_tick: usize,
    /// The exclusive upper bound of that draw; 0 means 2 * election_tick.
    /// raft-rs draws from the thread's RNG, which no test can seed: a
    /// deterministic simulation sets election_tick + 1 (a fixed timeout) and
    /// varies timeouts itself.
    pub max_election_tick: usize,
    pub heartbeat_tick: usize,
    /// Applied entries between two snapshots (and log compactions).
    pub snapshot_every: u64,
}

impl CoreConfig {
    pub fn new(id: u64) -> CoreConfig {
        CoreConfig {
            id,
            election_tick: 10,
            max_election_tick: 0,
            heartbeat_tick: 2,
            snapshot_every: 1000,
        }
    }
}

/// How a node starts when its log is empty.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// One of the initial voters: every voter starts from the same snapshot
    /// (index 1, term 1, these voters, this state).
    /// The state is boxed: it is large, and `Join` carries nothing.
    Voter {
        voters: Vec<u64>,
        initial: Box<ClusterState>,
    },
    /// A node added later: it waits for the leader's snapshot.
    Join,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Log(#[from] RaftLogError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("{0}")]
    State(String),
}

/// What a committed entry did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// An empty entry (a new leader's first) or one skipped on replay.
    Empty,
    Command(Command, Result<Applied, StateError>),
    /// A configuration change, and the voters and learners after it.
    ConfChange(Result<ConfState, String>),
    /// Bytes that do not decode: the same on every node, so skipped alike.
    Undecodable(String),
}

#[derive(Clone, Debug)]
pub struct AppliedEntry {
    pub index: u64,
    pub term: u64,
    /// The proposer's context (its proposal id), empty if none.
    pub context: Vec<u8>,
    pub outcome: Outcome,
}

/// What one round of the Ready loop produced.
#[derive(Default, Debug)]
pub struct Round {
    /// To send now (everything they depend on is durable).
    pub messages: Vec<Message>,
    pub applied: Vec<AppliedEntry>,
    pub read_states: Vec<ReadState>,
    /// A snapshot from the leader replaced the state.
    pub snapshot_installed: bool,
}

impl Round {
    /// Whether the state changed in this round (a snapshot, or an entry
    /// applied that changed it).
    pub fn state_changed(&self) -> bool {
        self.snapshot_installed
            || self
                .applied
                .iter()
                .any(|a| matches!(a.outcome, Outcome::Command(_, Ok(_)) | Outcome::ConfChange(Ok(_))))
    }
}

pub struct RaftCore {
    node: RawNode<RaftLog>,
    state: ClusterState,
    config: CoreConfig,
    applied: u64,
    snapshot_index: u64,
}

/// Forwards raft-rs's slog records to `tracing` (debug level: raft logs
/// every election step).
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Warning | slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

impl RaftCore {
    /// Opens (or creates) the Raft log in `dir`, bootstraps it if it is
    /// empty, and recovers the state machine from its snapshot. Committed
    /// entries after the snapshot are applied again by the first rounds.
    pub fn open(dir: &Path, config: CoreConfig, bootstrap: Bootstrap) -> Result<RaftCore, CoreError> {
        let mut log = RaftLog::open(dir)?;
        let empty = log.latest_snapshot().get_metadata().index == 0
            && log.last_index().unwrap_or(0) == 0
            && log.hard_state().term == 0;
        if empty {
            if let Bootstrap::Voter { voters, initial } = &bootstrap {
                let mut snap = Snapshot::default();
                snap.set_data(initial.encode().into());
                let meta = snap.mut_metadata();
                meta.index = 1;
                meta.term = 1;
                meta.mut_conf_state().voters = voters.clone();
                log.apply_snapshot(snap)?;
            }
        }
        let snapshot = log.latest_snapshot().clone();
        let state = ClusterState::decode(snapshot.get_data()).map_err(CoreError::State)?;
        let applied = snapshot.get_metadata().index;
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_tick,
            max_election_tick: config.max_election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate()?;
        let node = RawNode::new(&raft_config, log, &logger())?;
        Ok(RaftCore {
            node,
            state,
            config,
            applied,
            snapshot_index: applied,
        })
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The leader this node knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Voters and learners as this node last applied them.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// The durable log (for tests and status).
    pub fn log(&self) -> &RaftLog {
        self.node.store()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Whether this node campaigns when it hears no leader: it is a voter
    /// (a learner or a node still waiting for its first snapshot never does).
    pub fn is_voter(&self) -> bool {
        self.conf_state().voters.contains(&self.config.id)
    }

    /// Entries not yet replicated to the given peer's match index (leader).
    pub fn match_index(&self, peer: u64) -> Option<u64> {
        self.node.raft.prs().get(peer).map(|p| p.matched)
    }

    /// Campaigns at once (a one-voter group need not wait out an election
    /// timeout).
    pub fn campaign(&mut self) -> Result<(), CoreError> {
        Ok(self.node.campaign()?)
    }

    /// Campaigns at once because the leader `dead` is known to be gone (its
    /// connection ended and its control port refuses connections), the way
    /// a leadership transfer does (raft-rs's MsgTimeoutNow): without the
    /// pre-vote, and asking voters to set aside the leader lease that would
    /// otherwise hold them for an election timeout after the leader's last
    /// message. Raft's safety does not rest on either (votes still go only
    /// to a log at least as up to date, one per term); they keep a live
    /// leader from being disturbed, which is why this runs only for a leader
    /// whose process is gone. Does nothing (false) unless this node is a
    /// voter that still follows `dead` in `term`.
    pub fn campaign_after_leader_died(&mut self, dead: u64, term: u64) -> Result<bool, CoreError> {
        if self.is_leader() || self.leader() != dead || self.term() != term || !self.is_voter() {
            return Ok(false);
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgTimeoutNow);
        m.from = dead;
        m.to = self.config.id;
        m.term = term;
        self.node.step(m)?;
        Ok(true)
    }

    /// Whether a configuration change is proposed and not yet applied
    /// (raft takes one at a time).
    pub fn has_pending_conf(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// Asks `to` to take over leadership (leader only).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    pub fn step(&mut self, msg: Message) -> Result<(), CoreError> {
        Ok(self.node.step(msg)?)
    }

    /// Proposes a command; `context` comes back with the applied entry.
    /// Fails at once if there is no leader to take it (raft drops it).
    pub fn propose(&mut self, context: Vec<u8>, cmd: &Command) -> Result<(), CoreError> {
        Ok(self.node.propose(context, cmd.encode())?)
    }

    pub fn propose_conf_change(&mut self, context: Vec<u8>, cc: ConfChangeV2) -> Result<(), CoreError> {
        Ok(self.node.propose_conf_change(context, cc)?)
    }

    /// Asks for a read index; the answer arrives in a later round's
    /// `read_states` with the same context (or never: raft drops a request
    /// while there is no leader, or the leader has not committed in its term).
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.node.read_index(context);
    }

    pub fn report_unreachable(&mut self, peer: u64) {
        self.node.report_unreachable(peer);
    }

    pub fn report_snapshot(&mut self, peer: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(peer, status);
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// One round of the Ready loop (see the module doc). An error leaves
    /// the node unusable: the caller stops it (its durable state is whole).
    pub fn handle_ready(&mut self) -> Result<Round, CoreError> {
        let mut round = Round::default();
        if !self.node.has_ready() {
            return Ok(round);
        }
        let mut rd = self.node.ready();
        round.messages.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            let state = ClusterState::decode(snap.get_data()).map_err(CoreError::State)?;
            self.node.mut_store().apply_snapshot(snap)?;
            self.state = state;
            self.applied = index;
            self.snapshot_index = index;
            round.snapshot_installed = true;
        }
        self.apply(rd.take_committed_entries(), &mut round)?;
        if !rd.entries().is_empty() {
            self.node.mut_store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs.clone())?;
        }
        round.messages.extend(rd.take_persisted_messages());
        round.read_states.extend(rd.take_read_states());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.node.store().hard_state().clone();
            hs.commit = commit;
            self.node.mut_store().set_hard_state(hs)?;
        }
        round.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries(), &mut round)?;
        self.node.advance_apply();
        self.maybe_snapshot()?;
        self.refresh_stale_snapshots(&mut round.messages)?;
        Ok(round)
    }

    /// raft-rs's `restore` ignores a snapshot whose configuration does not
    /// name the node it is sent to, and a node added since the last snapshot
    /// needs one (the log before it is gone): it would wait, installing
    /// nothing, until `snapshot_every` more entries made a new snapshot.
    /// Such a message gets a snapshot taken now instead, whose configuration
    /// has the node (its progress exists because the change that added it is
    /// applied here).
    fn refresh_stale_snapshots(&mut self, messages: &mut [Message]) -> Result<(), CoreError> {
        for m in messages.iter_mut() {
            if m.get_msg_type() != MessageType::MsgSnapshot
                || names(m.get_snapshot().get_metadata().get_conf_state(), m.to)
            {
                continue;
            }
            self.snapshot_now()?;
            let fresh = self.node.store().snapshot(0, m.to)?;
            if names(fresh.get_metadata().get_conf_state(), m.to) {
                m.set_snapshot(fresh);
            }
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>, round: &mut Round) -> Result<(), CoreError> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.applied = e.index;
            let outcome = if e.data.is_empty() {
                Outcome::Empty
            } else {
                match e.get_entry_type() {
                    EntryType::EntryNormal => match Command::decode(&e.data) {
                        Ok(cmd) => {
                            let r = state::apply(&mut self.state, &cmd);
                            Outcome::Command(cmd, r)
                        }
                        Err(err) => Outcome::Undecodable(err),
                    },
                    EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&e.data) {
                        Ok(cc) => self.apply_conf_change(|n| n.apply_conf_change(&cc)),
                        Err(err) => Outcome::Undecodable(err.to_string()),
                    },
                    EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(&e.data) {
                        Ok(cc) => self.apply_conf_change(|n| n.apply_conf_change(&cc)),
                        Err(err) => Outcome::Undecodable(err.to_string()),
                    },
                }
            };
            round.applied.push(AppliedEntry {
                index: e.index,
                term: e.term,
                context: e.context.to_vec(),
                outcome,
            });
        }
        Ok(())
    }

    /// Applies a configuration change to raft and copies the voters into
    /// the state. raft restarts from the snapshot's configuration (nothing
    /// else records one), so a replay after a restart applies each change
    /// again to the configuration it was first applied to: the same outcome,
    /// and the same voters for the commands after it that consult them.
    fn apply_conf_change(
        &mut self,
        change: impl FnOnce(&mut RawNode<RaftLog>) -> raft::Result<ConfState>,
    ) -> Outcome {
        match change(&mut self.node) {
            Ok(cs) => {
                self.state.voters = cs.voters.iter().map(|v| node_of(*v)).collect();
                Outcome::ConfChange(Ok(cs))
            }
            // Refused the same way on every node (e.g. a second change while
            // one is in progress): nothing changes.
            Err(e) => Outcome::ConfChange(Err(e.to_string())),
        }
    }

    /// Every `snapshot_every` applied entries: a snapshot of the state at
    /// the applied index replaces the log up to it.
    fn maybe_snapshot(&mut self) -> Result<(), CoreError> {
        if self.applied < self.snapshot_index + self.config.snapshot_every {
            return Ok(());
        }
        self.snapshot_now()
    }

    /// Snapshots the state at the applied index and compacts the log to it.
    pub fn snapshot_now(&mut self) -> Result<(), CoreError> {
        if self.applied <= self.snapshot_index {
            return Ok(());
        }
        let term = self.node.store().term(self.applied)?;
        let mut snap = Snapshot::default();
        snap.set_data(self.state.encode().into());
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state());
        self.node.mut_store().compact(snap)?;
        self.snapshot_index = self.applied;
        Ok(())
    }
}

/// Whether `cs` names `id` in any role (as raft-rs's `restore` asks).
fn names(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .any(|v| *v == id)
}
