//! One replica of one partition: a sans-IO state machine, inputs in and
//! actions out (raft-rs's `Ready` without the library doing any I/O).
//!
//! Inputs are method calls: the controller's [`Replica::prepare_election`],
//! [`Replica::become_leader`] and [`Replica::become_follower`]; a client's
//! [`Replica::append`] on the leader; [`Replica::step`] for a message from
//! another replica; [`Replica::durable`] when the adapter's write or sync
//! completes; [`Replica::tick`] on a timer. Every input queues [`Action`]s,
//! which the adapter takes with [`Replica::take_actions`] and carries out in
//! order: an action may depend on the ones before it (a `PersistEpoch` must be
//! durable before any later `Send` leaves; a `Truncate` comes before the
//! `AppendFromRequest` that rewrites the same offsets).
//!
//! The log. The adapter owns the bytes; the replica keeps the log's shape as
//! an [`EpochMap`] (epoch -> first offset, and the log end), which it updates
//! as it emits the actions that change the log, plus the durable end the
//! adapter reports. After a restart the adapter rebuilds that map from the
//! durable log (storage's epoch map, or the batches' leader epochs).
//!
//! Persisted state, all of it written by the adapter:
//! - the log, durable up to what [`Replica::durable`] was told (a crash loses
//!   the rest; a truncation is durable when its action is carried out);
//! - the epoch and its leader ([`Action::PersistEpoch`]), durable before any
//!   later action of the same round is carried out: like Raft's term, it is
//!   what fences an old leader across a restart;
//! - a high watermark checkpoint, written whenever the adapter likes (it may
//!   lag). On restart the high watermark is min(checkpoint, durable log end)
//!   and grows again from the leader's.
//!
//! Commit rule. The leader's high watermark is the greatest offset such that
//! a majority of the replica set (the leader included) holds the entries
//! below it durably and matching the leader's log, and it moves only once
//! that offset is past the leader's own first entry of its epoch (the
//! leader-epoch marker it appends on election, like KRaft's leader change
//! record; Raft §5.4.2 and its Figure 8). It never moves back while the
//! replica lives. A follower's high watermark is the leader's, capped by the
//! prefix of its log known to match the leader's.
//!
//! Flow control: per follower at most `in_flight_entries_max` entries past
//! what it acknowledged, in requests of at most `entries_per_request_max`;
//! after `retry_ticks` without progress the leader resends from the last
//! acknowledged offset (go-back-N). Bytes are not counted here: the adapter
//! knows the batch sizes, this state machine only counts entries.
//!
//! In sync (for `min.insync.replicas`): the leader itself, and every follower
//! that answered within `insync_ticks_max` ticks and has acknowledged a
//! matching log within `insync_lag_entries_max` entries of the leader's end.
//!
//! Memory: the epoch map (one element per leadership change that wrote) and
//! one progress record per follower.

use crate::election::{majority, ElectionInfo};
use crate::epochs::{validate_runs, EpochEnd, EpochMap, EpochStart};
use ferrolog_model::{Epoch, NodeId, Offset};
use std::collections::BTreeMap;
use std::ops::Range;

/// Sizing and timing of one replica. Ticks are the adapter's clock.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub node: NodeId,
    /// `min.insync.replicas`: an append is refused while fewer replicas (the
    /// leader included) are in sync.
    pub min_insync: usize,
    /// How far behind the leader's log end an in-sync follower may be.
    pub insync_lag_entries_max: u64,
    /// How long ago an in-sync follower last answered.
    pub insync_ticks_max: u64,
    pub entries_per_request_max: u64,
    /// Entries sent to one follower past what it acknowledged.
    pub in_flight_entries_max: u64,
    /// Ticks without progress before the leader resends.
    pub retry_ticks: u64,
    /// Ticks without a request before the leader sends an empty one (which
    /// carries its high watermark and probes the follower's log).
    pub heartbeat_ticks: u64,
    /// Breaks the commit rule on purpose: a new leader advances the high
    /// watermark over older epochs' entries before its own is on a majority.
    /// Only for the tests that show the simulation's checker catches it.
    #[doc(hidden)]
    pub unsafe_commit_before_own_epoch: bool,
}

impl ReplicaConfig {
    pub fn new(node: NodeId) -> ReplicaConfig {
        ReplicaConfig {
            node,
            min_insync: 1,
            insync_lag_entries_max: 10_000,
            insync_ticks_max: 30,
            entries_per_request_max: 64,
            in_flight_entries_max: 256,
            retry_ticks: 10,
            heartbeat_ticks: 3,
            unsafe_commit_before_own_epoch: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower {
        leader: NodeId,
    },
    /// Knows no leader it may follow: prepared for an election, restarted
    /// after leading, or saw a newer epoch than it was told about.
    Unattached,
}

/// What must survive a restart besides the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochState {
    pub epoch: Epoch,
    /// The leader of `epoch` as the controller told it, if it did.
    pub leader: Option<NodeId>,
}

/// What a replica starts from: nothing for a new replica, else what was
/// durable.
#[derive(Clone, Debug)]
pub struct Restart {
    pub epoch: EpochState,
    /// The durable log's epochs and end.
    pub log: EpochMap,
    pub hw_checkpoint: Offset,
}

impl Restart {
    pub fn empty() -> Restart {
        Restart {
            epoch: EpochState {
                epoch: Epoch(0),
                leader: None,
            },
            log: EpochMap::new(),
            hw_checkpoint: Offset(0),
        }
    }
}

/// An entry's position and epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryId {
    pub offset: Offset,
    pub epoch: Epoch,
}

/// Entries `[start, end)` of the leader's log (the adapter attaches their
/// bytes), with the entry before them for the follower's match check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub epoch: Epoch,
    pub leader: NodeId,
    /// The entry at `start - 1`; None when `start` is 0.
    pub prev: Option<EntryId>,
    pub start: Offset,
    pub end: Offset,
    /// The epochs of `[start, end)`, the first run starting at `start`.
    pub epochs: Vec<EpochStart>,
    pub leader_hw: Offset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's below `matched_end`, and is
    /// durable below `durable_end` (at most `matched_end`).
    Accepted {
        matched_end: Offset,
        durable_end: Offset,
    },
    /// The previous entry did not match. The hint is the follower's last
    /// epoch at or below the request's previous epoch, within its log up to
    /// the previous offset, and where that epoch ends there (None: nothing
    /// matches, resend from 0). The leader finds the divergence point from it
    /// with its own epoch map (KIP-101/KIP-279, pushed instead of asked).
    Mismatch { hint: Option<EpochEnd> },
    /// The request's epoch is older than the follower's (in the response's
    /// epoch): the sender is not the leader any more.
    Fenced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    /// The responder's epoch.
    pub epoch: Epoch,
    pub from: NodeId,
    pub result: AppendResult,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Append(AppendRequest),
    Response(AppendResponse),
}

/// What the adapter must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this epoch and leader durable before carrying out later actions.
    PersistEpoch(EpochState),
    /// Append the leader-epoch marker at `offset`: a control batch of one
    /// record in `epoch`, the new leader's first entry.
    AppendMarker { offset: Offset, epoch: Epoch },
    /// Drop the log from `to` on (never below the high watermark).
    Truncate { to: Offset },
    /// Write the records `[start, end)` of the request just stepped at their
    /// offsets.
    AppendFromRequest { start: Offset, end: Offset },
    /// Send a message; for an append request, with the bytes of its range
    /// read from the log (cache or disk).
    Send { to: NodeId, message: Message },
    /// The high watermark moved up: offsets below it are committed (answer
    /// acks=all produce requests below it; consumers may read below it).
    HighWatermark(Offset),
    /// The role changed (a leader stepping down fails its waiting produce
    /// requests with NOT_LEADER_OR_FOLLOWER).
    RoleChanged(Role),
}

/// Whether a client append must find `min_insync` replicas in sync. Kafka
/// checks `min.insync.replicas` for acks=all only: an acks=1 or acks=0
/// append is taken by a leader however many followers are in sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsyncCheck {
    Enforce,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("not the leader")]
    NotLeader,
    #[error("{insync} replicas in sync, {min} required")]
    NotEnoughReplicas { insync: usize, min: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("epoch {asked} is older than the replica's epoch {current}")]
    StaleEpoch { asked: Epoch, current: Epoch },
    #[error("epoch {epoch} already has a leader here ({leader:?})")]
    EpochTaken { epoch: Epoch, leader: Option<NodeId> },
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// The next offset to send.
    next: Offset,
    /// Known to match the leader's log below this (perhaps not durably).
    acked_end: Offset,
    /// Known durable and matching below this: what counts for the HW.
    durable_end: Offset,
    /// The tick of the last send, and of the last progress of `acked_end`.
    sent_tick: u64,
    progress_tick: u64,
    hw_sent: Offset,
    heard_tick: Option<u64>,
}

#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    epoch: Epoch,
    /// The leader of `epoch` (persisted), whatever the role now.
    epoch_leader: Option<NodeId>,
    role: Role,
    log: EpochMap,
    durable_end: Offset,
    hw: Offset,
    now: u64,
    /// Follower: the log matches this epoch's leader's below this.
    matched_end: Offset,
    durable_reported: Offset,
    /// Leader: the replica set, its epoch's first offset, its followers.
    replica_set: Vec<NodeId>,
    epoch_start: Offset,
    progress: BTreeMap<NodeId, Progress>,
    actions: Vec<Action>,
    /// Times the leader went back to a follower's acknowledged offset after
    /// `retry_ticks` without progress (a request or response was lost).
    resends: u64,
}

impl Replica {
    /// A replica starting from its durable state. It leads nothing: even a
    /// former leader may have lost entries it sent, so it waits for the
    /// controller's next epoch. A former follower follows the same leader.
    pub fn new(config: ReplicaConfig, restart: Restart) -> Replica {
        let durable_end = restart.log.end();
        let role = match restart.epoch.leader {
            Some(l) if l != config.node => Role::Follower { leader: l },
            _ => Role::Unattached,
        };
        Replica {
            config,
            epoch: restart.epoch.epoch,
            epoch_leader: restart.epoch.leader,
            role,
            hw: restart.hw_checkpoint.min(durable_end),
            log: restart.log,
            durable_end,
            now: 0,
            matched_end: Offset(0),
            durable_reported: Offset(0),
            replica_set: Vec::new(),
            epoch_start: Offset(0),
            progress: BTreeMap::new(),
            actions: Vec::new(),
            resends: 0,
        }
    }

    /// Go-back-N resends since this replica was built (see [`Replica::tick`]).
    pub fn resends(&self) -> u64 {
        self.resends
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The epoch and its leader as persisted.
    pub fn epoch_state(&self) -> EpochState {
        EpochState {
            epoch: self.epoch,
            leader: self.epoch_leader,
        }
    }
    pub fn high_watermark(&self) -> Offset {
        self.hw
    }
    pub fn log(&self) -> &EpochMap {
        &self.log
    }
    pub fn log_end(&self) -> Offset {
        self.log.end()
    }
    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    /// Leader: where `follower`'s log is known durable and matching this
    /// leader's (what counts for the high watermark); None when not leading
    /// or `follower` is not in the replica set.
    pub fn follower_durable_end(&self, follower: NodeId) -> Option<Offset> {
        if self.role != Role::Leader {
            return None;
        }
        self.progress.get(&follower).map(|p| p.durable_end)
    }

    /// The actions queued since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The controller prepares `epoch`: from now on this replica refuses
    /// every older epoch (a leader steps down), and it answers with its
    /// durable log's last epoch and end for [`crate::choose_leader`]. The
    /// epoch is persisted before the answer may leave.
    pub fn prepare_election(&mut self, epoch: Epoch) -> Result<ElectionInfo, ControlError> {
        if epoch < self.epoch {
            return Err(ControlError::StaleEpoch {
                asked: epoch,
                current: self.epoch,
            });
        }
        if epoch == self.epoch && self.epoch_leader.is_some() {
            return Err(ControlError::EpochTaken {
                epoch,
                leader: self.epoch_leader,
            });
        }
        self.enter_epoch(epoch, None, Role::Unattached);
        let last_epoch = if self.durable_end.0 > 0 {
            self.log.epoch_at(Offset(self.durable_end.0 - 1))
        } else {
            None
        };
        Ok(ElectionInfo {
            node: self.config.node,
            epoch,
            last_epoch,
            log_end: self.durable_end,
        })
    }

    /// The controller makes this replica the leader of `epoch` over
    /// `replica_set` (which holds it). It appends its epoch's marker first.
    pub fn become_leader(&mut self, epoch: Epoch, replica_set: &[NodeId]) -> Result<(), ControlError> {
        assert!(
            replica_set.contains(&self.config.node),
            "leader {} outside its replica set {replica_set:?}",
            self.config.node
        );
        self.check_new_epoch(epoch, self.config.node)?;
        if self.role == Role::Leader && self.epoch == epoch {
            return Ok(());
        }
        self.enter_epoch(epoch, Some(self.config.node), Role::Leader);
        self.replica_set = replica_set.to_vec();
        self.replica_set.sort();
        self.replica_set.dedup();
        self.epoch_start = self.log.end();
        self.log.append(epoch, 1);
        self.actions.push(Action::AppendMarker {
            offset: self.epoch_start,
            epoch,
        });
        let followers = self.replica_set.iter().filter(|n| **n != self.config.node);
        self.progress = followers
            .map(|&n| {
                let p = Progress {
                    next: self.epoch_start,
                    acked_end: Offset(0),
                    durable_end: Offset(0),
                    sent_tick: self.now,
                    progress_tick: self.now,
                    hw_sent: Offset(0),
                    heard_tick: None,
                };
                (n, p)
            })
            .collect();
        self.pump();
        Ok(())
    }

    /// The controller makes this replica a follower of `leader` in `epoch`.
    pub fn become_follower(&mut self, epoch: Epoch, leader: NodeId) -> Result<(), ControlError> {
        assert!(leader != self.config.node, "told to follow itself");
        self.check_new_epoch(epoch, leader)?;
        if self.epoch == epoch && self.role == (Role::Follower { leader }) {
            return Ok(());
        }
        self.enter_epoch(epoch, Some(leader), Role::Follower { leader });
        Ok(())
    }

    /// A client's append of `n` records on the leader: the offsets they get.
    /// The adapter writes them (in this replica's epoch) before it carries
    /// out the queued actions, which may already send them.
    pub fn append(&mut self, n: u64, insync: InsyncCheck) -> Result<Range<Offset>, AppendError> {
        assert!(n > 0, "an append of no records");
        self.check_append(insync)?;
        let start = self.log.end();
        self.log.append(self.epoch, n);
        self.pump();
        Ok(start..self.log.end())
    }

    /// Whether [`Replica::append`] would take records now: this replica
    /// leads and, when `insync` asks, enough replicas are in sync.
    pub fn check_append(&self, insync: InsyncCheck) -> Result<(), AppendError> {
        if self.role != Role::Leader {
            return Err(AppendError::NotLeader);
        }
        if insync == InsyncCheck::Skip {
            return Ok(());
        }
        let insync = self.insync();
        if insync < self.config.min_insync {
            return Err(AppendError::NotEnoughReplicas {
                insync,
                min: self.config.min_insync,
            });
        }
        Ok(())
    }

    /// The adapter's writes are durable below `end` (per the topic's
    /// durability). It never reports offsets truncated since the write.
    pub fn durable(&mut self, end: Offset) {
        let end = end.min(self.log.end());
        if end <= self.durable_end {
            return;
        }
        self.durable_end = end;
        match self.role {
            Role::Leader => {
                self.advance_leader_hw();
                self.pump();
            }
            Role::Follower { leader } => self.report_durable(leader),
            Role::Unattached => {}
        }
    }

    pub fn tick(&mut self) {
        self.now += 1;
        if self.role != Role::Leader {
            return;
        }
        for p in self.progress.values_mut() {
            if p.next > p.acked_end && self.now - p.progress_tick >= self.config.retry_ticks {
                p.next = p.acked_end;
                p.progress_tick = self.now;
                self.resends += 1;
            }
        }
        self.pump();
    }

    /// The adapter sent `[start, end)` of the append request to `peer` that
    /// asked for `[start, asked_end)`: whole record batches only, within its
    /// byte bound, so `end <= asked_end`; `end == start` when it could send
    /// nothing (the link was full, the bytes not readable yet), which the
    /// next tick retries. Then the next request to `peer`, if any, is queued.
    /// A report about an older request (not ending at the peer's next
    /// offset) is ignored.
    pub fn sent(&mut self, peer: NodeId, start: Offset, asked_end: Offset, end: Offset) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        if p.next != asked_end || end > asked_end || end < start || start >= asked_end {
            return;
        }
        p.next = end;
        if end > start {
            self.pump_peer(peer);
        }
    }

    /// A message from another replica. Malformed requests are dropped.
    pub fn step(&mut self, message: Message) {
        match message {
            Message::Append(req) => self.on_append(req),
            Message::Response(resp) => self.on_response(resp),
        }
    }

    /// Replicas in sync, the leader included (see the module doc).
    pub fn insync(&self) -> usize {
        1 + self.insync_followers().count()
    }

    /// The followers in sync with this leader (see the module doc), in node
    /// order; none when not leading.
    pub fn insync_followers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let end = self.log.end().0;
        let lag = i64::try_from(self.config.insync_lag_entries_max).unwrap_or(i64::MAX);
        self.progress
            .iter()
            .filter(move |(_, p)| {
                p.heard_tick
                    .is_some_and(|t| self.now - t <= self.config.insync_ticks_max)
                    && p.acked_end.0.saturating_add(lag) >= end
            })
            .map(|(n, _)| *n)
    }

    /// `min.insync.replicas` changed (the topic's config). It applies to the
    /// next append; appends already taken stay taken, as in Kafka.
    pub fn set_min_insync(&mut self, min_insync: usize) {
        assert!(min_insync >= 1, "min.insync.replicas of {min_insync}");
        self.config.min_insync = min_insync;
    }

    fn check_new_epoch(&self, epoch: Epoch, leader: NodeId) -> Result<(), ControlError> {
        if epoch < self.epoch {
            return Err(ControlError::StaleEpoch {
                asked: epoch,
                current: self.epoch,
            });
        }
        if epoch == self.epoch && self.epoch_leader.is_some_and(|l| l != leader) {
            return Err(ControlError::EpochTaken {
                epoch,
                leader: self.epoch_leader,
            });
        }
        if epoch == self.epoch && leader == self.config.node && self.role != Role::Leader {
            // It led this epoch before a restart or a step-down and may have
            // lost entries it sent: the epoch cannot be led again.
            if self.epoch_leader == Some(leader) {
                return Err(ControlError::EpochTaken {
                    epoch,
                    leader: self.epoch_leader,
                });
            }
        }
        Ok(())
    }

    fn enter_epoch(&mut self, epoch: Epoch, leader: Option<NodeId>, role: Role) {
        assert!(epoch >= self.epoch, "epoch {epoch} after {}", self.epoch);
        if epoch != self.epoch || leader != self.epoch_leader {
            self.epoch = epoch;
            self.epoch_leader = leader;
            self.actions
                .push(Action::PersistEpoch(EpochState { epoch, leader }));
        }
        self.matched_end = Offset(0);
        self.durable_reported = Offset(0);
        self.progress.clear();
        self.set_role(role);
    }

    fn set_role(&mut self, role: Role) {
        if role != self.role {
            self.role = role;
            self.actions.push(Action::RoleChanged(role));
        }
        if role != Role::Leader {
            self.progress.clear();
        }
    }

    fn set_hw(&mut self, hw: Offset) {
        if hw > self.hw {
            assert!(
                hw <= self.log.end(),
                "high watermark {hw} past the log end {}",
                self.log.end()
            );
            self.hw = hw;
            self.actions.push(Action::HighWatermark(hw));
        }
    }

    fn respond(&mut self, to: NodeId, result: AppendResult) {
        self.actions.push(Action::Send {
            to,
            message: Message::Response(AppendResponse {
                epoch: self.epoch,
                from: self.config.node,
                result,
            }),
        });
    }

    fn on_append(&mut self, req: AppendRequest) {
        if req.epoch < self.epoch {
            self.respond(req.leader, AppendResult::Fenced);
            return;
        }
        if req.epoch > self.epoch {
            // A newer epoch the controller has not told about: refuse until
            // it does. A leader steps down (it is fenced).
            if self.role == Role::Leader {
                self.set_role(Role::Unattached);
            }
            return;
        }
        if self.role != (Role::Follower { leader: req.leader }) || !well_formed(&req) {
            return;
        }
        let prev_matches = match req.prev {
            None => true,
            Some(p) => self.log.epoch_at(p.offset) == Some(p.epoch),
        };
        if !prev_matches {
            let prev = req.prev.expect("a mismatch has a previous entry");
            let hint = self.log.last_at_or_below(prev.offset.plus(1), prev.epoch);
            self.respond(req.leader, AppendResult::Mismatch { hint });
            return;
        }
        if let Some(at) = self.log.first_conflict(&req.epochs, req.end) {
            assert!(
                at >= self.hw,
                "replica {}: truncating to {at} below the high watermark {} (epoch {})",
                self.config.node,
                self.hw,
                self.epoch
            );
            debug_assert!(
                at >= self.matched_end,
                "the leader's log changed below what matched"
            );
            self.log.truncate(at);
            self.durable_end = self.durable_end.min(at);
            self.actions.push(Action::Truncate { to: at });
        }
        let end = self.log.end();
        let writes = req.end > end;
        if writes {
            for (i, run) in req.epochs.iter().enumerate() {
                let run_end = req.epochs.get(i + 1).map_or(req.end, |s| s.start);
                if run_end > end {
                    let from = run.start.max(end);
                    let n = u64::try_from(run_end.0 - from.0).expect("runs are non-empty");
                    self.log.append(run.epoch, n);
                }
            }
            self.actions.push(Action::AppendFromRequest {
                start: end,
                end: req.end,
            });
        }
        self.matched_end = self.matched_end.max(req.end);
        self.set_hw(req.leader_hw.min(self.matched_end));
        if writes {
            // The answer waits for the write: `durable` reports the match and
            // the durable end together (one answer per write instead of one
            // now and one then; a write that never completes leaves the
            // leader to resend after `retry_ticks`).
            return;
        }
        let durable_end = self.durable_end.min(self.matched_end);
        self.durable_reported = self.durable_reported.max(durable_end);
        self.respond(
            req.leader,
            AppendResult::Accepted {
                matched_end: self.matched_end,
                durable_end,
            },
        );
    }

    fn report_durable(&mut self, leader: NodeId) {
        let durable_end = self.durable_end.min(self.matched_end);
        if durable_end > self.durable_reported {
            self.durable_reported = durable_end;
            self.respond(
                leader,
                AppendResult::Accepted {
                    matched_end: self.matched_end,
                    durable_end,
                },
            );
        }
    }

    fn on_response(&mut self, resp: AppendResponse) {
        if resp.epoch > self.epoch {
            if self.role == Role::Leader {
                self.set_role(Role::Unattached);
            }
            return;
        }
        if resp.epoch < self.epoch || self.role != Role::Leader {
            return;
        }
        let log_end = self.log.end();
        let Some(p) = self.progress.get_mut(&resp.from) else {
            return;
        };
        p.heard_tick = Some(self.now);
        match resp.result {
            AppendResult::Accepted {
                matched_end,
                durable_end,
            } => {
                if matched_end > log_end || durable_end > matched_end {
                    return;
                }
                if matched_end > p.acked_end {
                    p.acked_end = matched_end;
                    p.progress_tick = self.now;
                }
                p.next = p.next.max(matched_end);
                p.durable_end = p.durable_end.max(durable_end);
                self.advance_leader_hw();
            }
            AppendResult::Mismatch { hint } => {
                let divergence = hint
                    .and_then(|h| self.log.end_for_epoch(h.epoch).map(|own| own.end.min(h.end)))
                    .unwrap_or(Offset(0));
                // Below what the follower holds durably: a stale answer.
                if divergence >= p.durable_end {
                    p.next = divergence;
                    p.acked_end = p.acked_end.min(divergence);
                    p.progress_tick = self.now;
                }
            }
            AppendResult::Fenced => {}
        }
        self.pump();
    }

    fn advance_leader_hw(&mut self) {
        let mut ends: Vec<Offset> = self
            .replica_set
            .iter()
            .map(|n| {
                if *n == self.config.node {
                    self.durable_end
                } else {
                    self.progress.get(n).map_or(Offset(0), |p| p.durable_end)
                }
            })
            .collect();
        ends.sort_by(|a, b| b.cmp(a));
        let candidate = ends[majority(self.replica_set.len()) - 1];
        if candidate > self.epoch_start || self.config.unsafe_commit_before_own_epoch {
            self.set_hw(candidate);
        }
    }

    /// Sends what each follower lacks, within its window, or an empty
    /// request when the high watermark moved or the heartbeat is due.
    fn pump(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.pump_peer(peer);
        }
    }

    /// One request to `peer` at most: the next entries it lacks within its
    /// window, else an empty one when the high watermark moved or the
    /// heartbeat is due. The next data request follows once the adapter
    /// reports what it sent ([`Replica::sent`]), so every request starts
    /// where the previous one really ended.
    fn pump_peer(&mut self, peer: NodeId) {
        {
            let mut sent = false;
            let p = &self.progress[&peer];
            let window_end = p.acked_end.plus(to_i64(self.config.in_flight_entries_max));
            let end = self
                .log
                .end()
                .min(window_end)
                .min(p.next.plus(to_i64(self.config.entries_per_request_max)));
            if end > p.next {
                let start = p.next;
                self.send_append(peer, start, end);
                sent = true;
            }
            let p = &self.progress[&peer];
            let idle = self.now - p.sent_tick >= self.config.heartbeat_ticks;
            if !sent && (p.hw_sent < self.hw || idle) {
                let at = p.acked_end;
                self.send_append(peer, at, at);
            }
        }
    }

    fn send_append(&mut self, peer: NodeId, start: Offset, end: Offset) {
        let prev = (start.0 > 0).then(|| EntryId {
            offset: Offset(start.0 - 1),
            epoch: self
                .log
                .epoch_at(Offset(start.0 - 1))
                .expect("the leader holds what it sends"),
        });
        let req = AppendRequest {
            epoch: self.epoch,
            leader: self.config.node,
            prev,
            start,
            end,
            epochs: self.log.slice(start, end),
            leader_hw: self.hw,
        };
        let p = self.progress.get_mut(&peer).expect("a follower");
        if p.next == p.acked_end && end > start {
            p.progress_tick = self.now;
        }
        if end > start {
            p.next = end;
        }
        p.sent_tick = self.now;
        p.hw_sent = self.hw;
        self.actions.push(Action::Send {
            to: peer,
            message: Message::Append(req),
        });
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A request that describes its own range (from the wire: checked, not
/// trusted).
fn well_formed(req: &AppendRequest) -> bool {
    let prev_ok = match req.prev {
        None => req.start == Offset(0),
        Some(p) => p.offset.plus(1) == req.start && req.epochs.first().is_none_or(|r| r.epoch >= p.epoch),
    };
    prev_ok
        && req.leader_hw.0 >= 0
        && req.epochs.last().is_none_or(|r| r.epoch <= req.epoch)
        && validate_runs(&req.epochs, req.start, req.end).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choose_leader;
    use std::collections::VecDeque;

    /// Replicas over a perfect network that the test drives by hand; logs
    /// are the replicas' own epoch maps (no values).
    struct Group {
        replicas: BTreeMap<NodeId, Replica>,
        queue: VecDeque<(NodeId, Message)>,
        /// Every action, by node, for the assertions.
        seen: Vec<(NodeId, Action)>,
        /// A follower makes its writes durable as soon as it takes them.
        auto_sync: bool,
    }

    fn n(i: i32) -> NodeId {
        NodeId(i)
    }

    fn log(runs: &[(i32, i64)], end: i64) -> EpochMap {
        let starts = runs
            .iter()
            .map(|&(e, s)| EpochStart {
                epoch: Epoch(e),
                start: Offset(s),
            })
            .collect();
        EpochMap::from_parts(starts, Offset(end)).expect("a valid log")
    }

    fn restart(epoch: i32, leader: Option<i32>, log: EpochMap, hw: i64) -> Restart {
        Restart {
            epoch: EpochState {
                epoch: Epoch(epoch),
                leader: leader.map(NodeId),
            },
            log,
            hw_checkpoint: Offset(hw),
        }
    }

    impl Group {
        fn new(members: Vec<(ReplicaConfig, Restart)>) -> Group {
            Group {
                replicas: members
                    .into_iter()
                    .map(|(c, r)| (c.node, Replica::new(c, r)))
                    .collect(),
                queue: VecDeque::new(),
                seen: Vec::new(),
                auto_sync: true,
            }
        }

        fn r(&mut self, node: i32) -> &mut Replica {
            self.replicas.get_mut(&n(node)).expect("a member")
        }

        fn drain(&mut self, node: NodeId) {
            let actions = self.replicas.get_mut(&node).expect("a member").take_actions();
            let mut wrote = false;
            for a in actions {
                match &a {
                    Action::Send { to, message } => self.queue.push_back((*to, message.clone())),
                    Action::AppendFromRequest { .. } | Action::AppendMarker { .. } => wrote = true,
                    _ => {}
                }
                self.seen.push((node, a));
            }
            if wrote && self.auto_sync {
                let r = self.replicas.get_mut(&node).expect("a member");
                let end = r.log_end();
                r.durable(end);
                self.drain(node);
            }
        }

        fn drain_all(&mut self) {
            let nodes: Vec<NodeId> = self.replicas.keys().copied().collect();
            for node in nodes {
                self.drain(node);
            }
        }

        /// Delivers until the network is quiet, skipping `down` nodes.
        fn run(&mut self, down: &[i32]) {
            self.drain_all();
            let mut steps = 0;
            while let Some((to, m)) = self.queue.pop_front() {
                steps += 1;
                assert!(steps < 10_000, "the group does not quiesce");
                if down.contains(&to.0) {
                    continue;
                }
                self.replicas.get_mut(&to).expect("a member").step(m);
                self.drain(to);
            }
        }

        fn truncations(&self, node: i32) -> Vec<Offset> {
            self.seen
                .iter()
                .filter_map(|(who, a)| match a {
                    Action::Truncate { to } if *who == n(node) => Some(*to),
                    _ => None,
                })
                .collect()
        }
    }

    fn cfg(node: i32) -> ReplicaConfig {
        ReplicaConfig::new(n(node))
    }

    fn elect(g: &mut Group, epoch: i32, leader: i32, set: &[i32]) {
        let set: Vec<NodeId> = set.iter().map(|&i| n(i)).collect();
        g.r(leader).become_leader(Epoch(epoch), &set).expect("leads");
        for &f in &set {
            if f != n(leader) {
                g.r(f.0)
                    .become_follower(Epoch(epoch), n(leader))
                    .expect("follows");
            }
        }
    }

    /// KIP-101: the follower's epoch-2 suffix [4, 9) never reached a majority;
    /// it truncates to 4, where its log and the leader's part, in one hint.
    #[test]
    fn a_divergent_follower_truncates_at_the_divergence_point() {
        let mut g = Group::new(vec![
            (cfg(0), restart(3, None, log(&[(1, 0), (3, 4)], 6), 0)),
            (cfg(1), restart(3, None, log(&[(1, 0), (2, 4)], 9), 4)),
        ]);
        elect(&mut g, 4, 0, &[0, 1]);
        g.run(&[]);
        assert_eq!(g.truncations(1), vec![Offset(4)]);
        assert_eq!(g.r(1).log().clone(), g.r(0).log().clone());
        assert_eq!(g.r(0).high_watermark(), Offset(7));
        assert_eq!(g.r(1).high_watermark(), Offset(7));
    }

    /// KIP-279: the leader never had the follower's last epoch (2), so the
    /// first hint only narrows the search; the second finds offset 5.
    #[test]
    fn a_follower_with_an_epoch_the_leader_lacks_truncates_below_it() {
        let mut g = Group::new(vec![
            (cfg(0), restart(3, None, log(&[(1, 0), (3, 10)], 11), 0)),
            (cfg(1), restart(3, None, log(&[(1, 0), (2, 5)], 7), 0)),
            (cfg(2), restart(3, None, log(&[(1, 0)], 5), 0)),
        ]);
        elect(&mut g, 4, 0, &[0, 1, 2]);
        g.run(&[]);
        assert_eq!(g.truncations(1), vec![Offset(5)]);
        assert!(g.truncations(2).is_empty());
        for f in [1, 2] {
            assert_eq!(g.r(f).log().clone(), g.r(0).log().clone());
        }
        assert_eq!(g.r(0).high_watermark(), Offset(12));
    }

    /// An append of an older epoch is refused with the follower's epoch, and
    /// the fenced leader steps down; prepare fences the same way.
    #[test]
    fn stale_epochs_are_refused_and_fence_the_old_leader() {
        let mut g = Group::new(vec![
            (cfg(0), Restart::empty()),
            (cfg(1), Restart::empty()),
            (cfg(2), Restart::empty()),
        ]);
        elect(&mut g, 1, 0, &[0, 1, 2]);
        g.run(&[]);
        g.r(0)
            .append(2, InsyncCheck::Enforce)
            .expect("the leader appends");
        g.run(&[]);
        assert_eq!(g.r(0).high_watermark(), Offset(3));
        // The controller prepares epoch 2 on 1 and 2; 0 does not hear of it.
        for f in [1, 2] {
            g.r(f).prepare_election(Epoch(2)).expect("prepared");
            g.r(f).take_actions();
        }
        let before = g.r(1).log().clone();
        g.r(0)
            .append(1, InsyncCheck::Enforce)
            .expect("0 still believes it leads");
        g.drain(n(0));
        let (to, m) = g.queue.pop_front().expect("a request to 1");
        assert_eq!(to, n(1));
        g.r(1).step(m);
        let actions = g.r(1).take_actions();
        assert_eq!(
            actions,
            vec![Action::Send {
                to: n(0),
                message: Message::Response(AppendResponse {
                    epoch: Epoch(2),
                    from: n(1),
                    result: AppendResult::Fenced,
                }),
            }]
        );
        assert_eq!(g.r(1).log(), &before, "a fenced request changes nothing");
        let Action::Send { message, .. } = &actions[0] else {
            panic!("a response")
        };
        g.r(0).step(message.clone());
        assert_eq!(g.r(0).role(), Role::Unattached);
        assert_eq!(
            g.r(0).append(1, InsyncCheck::Enforce),
            Err(AppendError::NotLeader)
        );
        assert_eq!(
            g.r(0).high_watermark(),
            Offset(3),
            "the unacknowledged entry stays uncommitted"
        );
        // Older controller inputs are refused too.
        assert!(matches!(
            g.r(1).become_follower(Epoch(1), n(0)),
            Err(ControlError::StaleEpoch { .. })
        ));
    }

    /// Raft's Figure 8 with three replicas. Replica 0 led epoch 2 and wrote x
    /// at offset 2 to itself only; 1 led epoch 3 and wrote only its marker.
    /// In epoch 4, 0 leads again and copies x to 2: x is now on a majority,
    /// but committing it would be wrong, since 1 can still win an election
    /// with {1, 2} (its last epoch 3 beats 2's) and overwrite it. The HW
    /// moves only when 0's epoch-4 marker is on a majority.
    #[test]
    fn a_new_leader_does_not_commit_old_epochs_before_its_own() {
        let figure_8 = |unsafe_commit: bool| {
            let mut leader_cfg = cfg(0);
            leader_cfg.unsafe_commit_before_own_epoch = unsafe_commit;
            let mut g = Group::new(vec![
                (leader_cfg, restart(3, None, log(&[(1, 0), (2, 1)], 3), 0)),
                (cfg(1), restart(3, None, log(&[(1, 0), (3, 1)], 2), 0)),
                (cfg(2), restart(3, None, log(&[(1, 0)], 1), 0)),
            ]);
            g.auto_sync = false;
            elect(&mut g, 4, 0, &[0, 1, 2]);
            g.r(0).durable(Offset(4));
            // Replica 1 is down; 2 takes everything but syncs only below the
            // marker.
            g.run(&[1]);
            assert_eq!(g.r(2).log_end(), Offset(4));
            g.r(2).durable(Offset(3));
            g.run(&[1]);
            g
        };
        let mut g = figure_8(false);
        assert_eq!(g.r(0).high_watermark(), Offset(0), "x at 2 is not committed yet");
        g.r(2).durable(Offset(4));
        g.run(&[1]);
        assert_eq!(g.r(0).high_watermark(), Offset(4), "the marker commits x with it");

        // The broken rule commits x, and the election that follows loses it.
        let mut g = figure_8(true);
        assert_eq!(g.r(0).high_watermark(), Offset(3), "the broken rule committed x");
        let answers: Vec<ElectionInfo> = [1, 2]
            .iter()
            .map(|&f| g.r(f).prepare_election(Epoch(5)).expect("prepared"))
            .collect();
        let set = [n(0), n(1), n(2)];
        assert_eq!(choose_leader(&answers, &set), Some(n(1)));
        assert_ne!(
            g.r(1).log().epoch_at(Offset(2)),
            Some(Epoch(2)),
            "the new leader lacks x"
        );
    }

    #[test]
    fn min_insync_refuses_appends_without_enough_caught_up_replicas() {
        let with_min = |node: i32| ReplicaConfig {
            min_insync: 2,
            ..cfg(node)
        };
        let mut g = Group::new(vec![
            (with_min(0), Restart::empty()),
            (with_min(1), Restart::empty()),
            (with_min(2), Restart::empty()),
        ]);
        elect(&mut g, 1, 0, &[0, 1, 2]);
        assert_eq!(
            g.r(0).append(1, InsyncCheck::Enforce),
            Err(AppendError::NotEnoughReplicas { insync: 1, min: 2 }),
            "no follower has answered a new leader yet"
        );
        g.run(&[2]);
        assert_eq!(g.r(0).insync_followers().collect::<Vec<_>>(), vec![n(1)]);
        assert_eq!(g.r(0).append(1, InsyncCheck::Enforce), Ok(Offset(1)..Offset(2)));
        g.run(&[2]);
        // Replica 1 goes silent too: after insync_ticks_max it is out.
        for _ in 0..=g.r(0).config.insync_ticks_max {
            g.r(0).tick();
        }
        g.queue.clear();
        g.drain_all();
        g.queue.clear();
        assert_eq!(g.r(0).insync_followers().count(), 0);
        assert_eq!(
            g.r(0).append(1, InsyncCheck::Enforce),
            Err(AppendError::NotEnoughReplicas { insync: 1, min: 2 })
        );
        // acks=1 does not ask for min.insync.replicas (Kafka's rule).
        assert_eq!(g.r(0).append(1, InsyncCheck::Skip), Ok(Offset(2)..Offset(3)));
        // Lowering the setting lets acks=all appends in again.
        g.r(0).set_min_insync(1);
        assert_eq!(g.r(0).append(1, InsyncCheck::Enforce), Ok(Offset(3)..Offset(4)));
        assert_eq!(g.r(1).append(1, InsyncCheck::Skip), Err(AppendError::NotLeader));
    }

    /// A lost append request (a datagram the AF_XDP path dropped) is sent
    /// again from the follower's acknowledged offset after `retry_ticks`,
    /// whatever the transport; the follower ends with every entry.
    #[test]
    fn a_lost_request_is_resent_after_retry_ticks() {
        let mut g = Group::new(vec![
            (cfg(0), Restart::empty()),
            (cfg(1), Restart::empty()),
            (cfg(2), Restart::empty()),
        ]);
        elect(&mut g, 1, 0, &[0, 1, 2]);
        g.run(&[]);
        let hw = g.r(0).high_watermark();
        g.r(0).append(2, InsyncCheck::Enforce).expect("appends");
        g.drain(n(0));
        g.queue.clear();
        g.run(&[]);
        assert_eq!(g.r(0).high_watermark(), hw, "nothing reached a follower");
        assert_eq!(g.r(0).resends(), 0);
        for _ in 0..g.r(0).config.retry_ticks {
            g.r(0).tick();
        }
        g.run(&[]);
        assert!(g.r(0).resends() >= 1, "the leader went back");
        assert_eq!(g.r(0).high_watermark(), hw.plus(2));
        for f in [1, 2] {
            assert_eq!(g.r(f).log_end(), g.r(0).log_end());
        }
    }

    #[test]
    fn a_restarted_leader_cannot_lead_its_epoch_again() {
        let mut r = Replica::new(cfg(0), restart(3, Some(0), log(&[(3, 0)], 2), 1));
        assert_eq!(r.role(), Role::Unattached);
        assert!(matches!(
            r.become_leader(Epoch(3), &[n(0), n(1), n(2)]),
            Err(ControlError::EpochTaken { .. })
        ));
        assert!(matches!(
            r.prepare_election(Epoch(3)),
            Err(ControlError::EpochTaken { .. })
        ));
        let info = r.prepare_election(Epoch(4)).expect("prepared");
        assert_eq!((info.last_epoch, info.log_end), (Some(Epoch(3)), Offset(2)));
        r.become_leader(Epoch(4), &[n(0), n(1), n(2)])
            .expect("leads epoch 4");
        assert_eq!(r.log().epoch_at(Offset(2)), Some(Epoch(4)), "its marker");
        // A restarted follower keeps following its epoch's leader.
        let f = Replica::new(cfg(1), restart(3, Some(0), EpochMap::new(), 5));
        assert_eq!(f.role(), Role::Follower { leader: n(0) });
        assert_eq!(f.high_watermark(), Offset(0), "capped by the durable log");
    }

    /// The HW reaches a follower capped by the prefix that matches the leader,
    /// and the durable end a follower reports counts only when it is synced.
    #[test]
    fn the_high_watermark_waits_for_durable_majorities() {
        let mut g = Group::new(vec![
            (cfg(0), Restart::empty()),
            (cfg(1), Restart::empty()),
            (cfg(2), Restart::empty()),
        ]);
        g.auto_sync = false;
        elect(&mut g, 1, 0, &[0, 1, 2]);
        g.r(0).append(3, InsyncCheck::Enforce).expect("appends");
        g.r(0).durable(Offset(4));
        g.run(&[]);
        assert_eq!(g.r(0).high_watermark(), Offset(0), "no follower synced");
        g.r(1).durable(Offset(2));
        g.run(&[]);
        assert_eq!(g.r(0).high_watermark(), Offset(2));
        assert_eq!(g.r(1).high_watermark(), Offset(2));
        assert_eq!(
            g.r(2).high_watermark(),
            Offset(2),
            "2 learns it though it synced nothing"
        );
        g.r(2).durable(Offset(4));
        g.run(&[]);
        assert_eq!(g.r(0).high_watermark(), Offset(4));
    }

    /// A follower answers a request that brings records once they are
    /// durable, with the match and the durable end in one answer; a request
    /// that brings nothing new (a heartbeat) is answered at once.
    #[test]
    fn a_follower_answers_new_records_once_they_are_durable() {
        let mut g = Group::new(vec![(cfg(0), Restart::empty()), (cfg(1), Restart::empty())]);
        g.auto_sync = false;
        elect(&mut g, 1, 0, &[0, 1]);
        g.r(0).append(3, InsyncCheck::Enforce).expect("appends");
        g.r(0).durable(Offset(4));
        let answers = |g: &Group| -> Vec<AppendResult> {
            g.seen
                .iter()
                .filter_map(|(who, a)| match a {
                    Action::Send {
                        message: Message::Response(r),
                        ..
                    } if *who == n(1) => Some(r.result),
                    _ => None,
                })
                .collect()
        };
        let before = answers(&g).len();
        g.run(&[]);
        assert_eq!(g.r(1).log_end(), Offset(4), "the follower took the records");
        assert_eq!(answers(&g).len(), before, "answered before the write was durable");
        assert_eq!(g.r(0).follower_durable_end(n(1)), Some(Offset(0)));
        g.r(1).durable(Offset(4));
        g.run(&[]);
        assert_eq!(
            answers(&g).get(before),
            Some(&AppendResult::Accepted {
                matched_end: Offset(4),
                durable_end: Offset(4)
            }),
            "the first answer carries the match and the durable end"
        );
        assert_eq!(g.r(0).follower_durable_end(n(1)), Some(Offset(4)));
        assert_eq!(g.r(0).high_watermark(), Offset(4));
        // A heartbeat (nothing new) is answered at once.
        let answered = answers(&g).len();
        for _ in 0..3 {
            g.r(0).tick();
        }
        g.run(&[]);
        assert!(answers(&g).len() > answered, "a heartbeat went unanswered");
    }
}
