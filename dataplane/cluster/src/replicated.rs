//! The shard adapter of a replicated partition: it drives the partition's
//! [`Replica`] (the sans-IO state machine of `ferrolog-replication`) and
//! carries out its actions against the partition's log and the data
//! transport, on the partition's owner shard.
//!
//! A partition is replicated when its replica set has more than one node;
//! a single-replica partition keeps the plain path (its high watermark is
//! its durable end, no epoch marker, no state file).
//!
//! Inputs reach the replica from: the metadata (`assign`: lead or follow an
//! epoch), the controller (`prepare`: fence an epoch for an election), a
//! client append on the leader (inside the log's append section, see
//! `Partition::append_producer_batch`), a replication message from another
//! node (`on_message`), the shard's ticker, and the log reporting writes
//! durable. Actions are carried out by one task at a time per partition (a
//! permit), in the order the replica queued them: a persisted epoch is on
//! disk before a later message leaves, a truncation happens before the
//! append that rewrites the same offsets, and an append request's records
//! are written from the payload of the message that produced the action.
//!
//! Persisted besides the log, in `replica.state` in the partition's
//! directory (written to a temporary file, fsynced, renamed, directory
//! fsynced): the epoch and its leader, the epoch runs of the log (epoch ->
//! first offset) and a high watermark checkpoint. The runs file is kept a
//! superset of the log's runs that never contradicts the log: it is written
//! after a truncation and before an append that opens a new run, so after a
//! crash, cutting it at the recovered log end gives exactly the log's runs.
//!
//! When carrying out an action fails (a full disk, a batch that does not
//! fit the log), the replica is rebuilt from what is on disk, as after a
//! restart: it leads nothing until the controller's next epoch, and a
//! follower re-matches its log with the leader's.

use crate::error::PartitionError;
use crate::manager::{self, PartitionManager};
use crate::partition::Partition;
use crate::repl_wire::{self, PartitionKey};
use crate::repl_xdp::{self, XdpPath, XdpShardConfig, XdpSnapshot};
use bytes::{Bytes, BytesMut};
use ferrolog_model::{BatchHeader, Epoch, NodeId, Ntp, Offset, ShardId};
use ferrolog_replication::{
    Action, AppendError, ControlError, ElectionInfo, EpochMap, EpochStart, EpochState, InsyncCheck, Message,
    Replica, ReplicaConfig, Restart, Role,
};
use ferrolog_storage::{ReadRequest, StorageError};
use ferrolog_transport::tls::{host_of, NodeTls};
use ferrolog_transport::{Frame, Link, PeerEvents};
use futures_channel::oneshot;
use glommio::sync::Semaphore;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// The replica state file in a replicated partition's directory.
pub const STATE_FILE: &str = "replica.state";
/// The adapter's clock: every replicated partition ticks this often.
pub const TICK: Duration = Duration::from_millis(20);
/// Ticks a replica stays without a role before it asks the controller for
/// an election (1 s), and again every as many.
pub const UNATTACHED_ASK_TICKS: u64 = 50;
/// Bytes of record batches in one append request (at least one batch).
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// The largest frame payload a node accepts: a request's bound plus one
/// batch of the largest size a topic may allow.
pub const FRAME_PAYLOAD_MAX: usize = 64 << 20;
/// Per link to a peer shard: frames and bytes queued before sends are
/// refused (the replica resends on a later tick).
const LINK_FRAMES_MAX: usize = 4096;
const LINK_BYTES_MAX: usize = 2 * FRAME_PAYLOAD_MAX;

/// Replica timing in ticks of [`TICK`] and flow control. Entries are
/// offsets; the adapter bounds requests in bytes, so the entry bounds are
/// only there to keep the arithmetic finite.
pub fn replica_config(node: NodeId) -> ReplicaConfig {
    ReplicaConfig {
        entries_per_request_max: 1 << 40,
        in_flight_entries_max: 1 << 40,
        // 200 ms without progress: resend from the acknowledged offset.
        retry_ticks: 10,
        // An empty request (carrying the high watermark) every 60 ms idle.
        heartbeat_ticks: 3,
        // In sync: heard within 2 s, and within 10,000 offsets.
        insync_ticks_max: 100,
        insync_lag_entries_max: 10_000,
        ..ReplicaConfig::new(node)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    epoch: i32,
    leader: Option<i32>,
    /// (first offset, epoch) of each run, in order.
    runs: Vec<(i64, i32)>,
    hw: i64,
}

type AckSender = oneshot::Sender<Result<(), PartitionError>>;

/// One replicated partition's adapter state; owned by its `Partition`.
pub struct Replication {
    key: PartitionKey,
    node: NodeId,
    replica: RefCell<Replica>,
    /// Held by the one task carrying out actions.
    permit: Semaphore,
    /// The log's epoch runs as written (see the module doc).
    runs: RefCell<Vec<EpochStart>>,
    /// What the state file holds now.
    persisted: RefCell<StateFile>,
    hw: Cell<Offset>,
    /// acks=all produce requests waiting for the high watermark to pass an
    /// offset.
    acks: RefCell<Vec<(Offset, AckSender)>>,
    replicas: RefCell<Vec<NodeId>>,
    /// A task to carry out queued actions is scheduled.
    kicked: Cell<bool>,
    /// A follower's task writing its queued appends runs ([`sync_queued`]).
    syncing: Cell<bool>,
    state_path: PathBuf,
    /// Times carrying out an action failed and the replica was rebuilt.
    pub resets: Cell<u64>,
    /// Ticks in a row without a role.
    unattached_ticks: Cell<u64>,
    /// The topic's `min.insync.replicas`, kept for a rebuild of the replica.
    min_insync: Cell<usize>,
    /// The ISR last sent to the shards' Metadata caches (empty: none, not
    /// leading).
    published_isr: RefCell<Vec<NodeId>>,
}

impl Replication {
    /// Loads the replica of the partition whose log is `p_log_dir` from its
    /// state file and recovered log (ends at `log_end`, batches' epochs read
    /// by `scan` when no state file exists but the log has data).
    pub async fn load(key: PartitionKey, node: NodeId, p: &Partition) -> Result<Replication, StorageError> {
        let state_path = p.log.dir().join(STATE_FILE);
        let text = crate::partition::read_if_present(&state_path).await?;
        let end = p.log.offsets().durable_next;
        let state = match text {
            Some(b) => serde_json::from_slice::<StateFile>(&b).map_err(|e| StorageError::Io {
                op: "decode",
                path: state_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            None if end > Offset(0) => {
                warn!(partition = %p.ntp, "no {STATE_FILE} beside a log with data; reading the epochs of every batch");
                StateFile {
                    runs: scan_runs(p).await?,
                    ..StateFile::default()
                }
            }
            None => StateFile::default(),
        };
        let runs: Vec<EpochStart> = state
            .runs
            .iter()
            .filter(|(start, _)| Offset(*start) < end)
            .map(|&(start, epoch)| EpochStart {
                start: Offset(start),
                epoch: Epoch(epoch),
            })
            .collect();
        let map = EpochMap::from_parts(runs.clone(), end).map_err(|e| StorageError::Io {
            op: "check epochs of",
            path: state_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let restart = Restart {
            epoch: EpochState {
                epoch: Epoch(state.epoch),
                leader: state.leader.map(NodeId),
            },
            log: map,
            hw_checkpoint: Offset(state.hw),
        };
        let replica = Replica::new(replica_config(node), restart);
        let hw = replica.high_watermark();
        Ok(Replication {
            key,
            node,
            replica: RefCell::new(replica),
            permit: Semaphore::new(1),
            runs: RefCell::new(runs),
            persisted: RefCell::new(state),
            hw: Cell::new(hw),
            acks: RefCell::new(Vec::new()),
            replicas: RefCell::new(Vec::new()),
            kicked: Cell::new(false),
            syncing: Cell::new(false),
            state_path,
            resets: Cell::new(0),
            unattached_ticks: Cell::new(0),
            min_insync: Cell::new(1),
            published_isr: RefCell::new(Vec::new()),
        })
    }

    pub fn high_watermark(&self) -> Offset {
        self.hw.get()
    }

    pub fn role(&self) -> Role {
        self.replica.borrow().role()
    }

    pub fn epoch(&self) -> Epoch {
        self.replica.borrow().epoch()
    }

    pub fn key(&self) -> PartitionKey {
        self.key
    }

    /// Replicas in sync with this leader, itself included (1 when not
    /// leading).
    pub fn insync(&self) -> usize {
        self.replica.borrow().insync()
    }

    /// Leader: its epoch and the replicas in sync with it, itself first,
    /// for a reassignment's catch-up check. A follower counts only when it
    /// is in sync (heard lately, close to the leader's end) and its durable
    /// log covers the high watermark, so that it holds every committed
    /// record. None when not leading.
    pub fn insync_replicas(&self) -> Option<(Epoch, Vec<NodeId>)> {
        let r = self.replica.borrow();
        if r.role() != Role::Leader {
            return None;
        }
        let hw = r.high_watermark();
        let mut nodes = vec![self.node];
        nodes.extend(
            r.insync_followers()
                .filter(|f| r.follower_durable_end(*f).is_some_and(|end| end >= hw)),
        );
        Some((r.epoch(), nodes))
    }

    /// The epoch runs of the log (for OffsetForLeaderEpoch).
    pub fn log(&self) -> EpochMap {
        self.replica.borrow().log().clone()
    }

    /// The followers this leader counts in sync (none when not leading).
    pub fn insync_followers(&self) -> Vec<NodeId> {
        self.replica.borrow().insync_followers().collect()
    }

    /// `min.insync.replicas` from the topic's config (through
    /// `Partition::set_min_insync`); it applies to the next acks=all append.
    pub(crate) fn set_min_insync(&self, min_insync: usize) {
        self.replica.borrow_mut().set_min_insync(min_insync);
        self.min_insync.set(min_insync);
    }

    /// Called inside the log's append section for a client batch of `n`
    /// offsets that would land at `base` in `epoch`: takes the offsets in
    /// the replica, or says why not.
    pub(crate) fn check_client_append(
        &self,
        epoch: Epoch,
        base: Offset,
        insync: InsyncCheck,
    ) -> Result<(), AppendError> {
        let r = self.replica.borrow();
        r.check_append(insync)?;
        if r.epoch() != epoch || r.log_end() != base {
            // The epoch moved, or the leader's marker is not written yet.
            return Err(AppendError::NotLeader);
        }
        Ok(())
    }

    pub(crate) fn take_client_append(&self, n: u64, insync: InsyncCheck) {
        self.replica
            .borrow_mut()
            .append(n, insync)
            .expect("checked in the same append section");
    }

    /// Fails every waiting acks=all request (the replica stopped leading or
    /// the partition closes): their batches are appended, not committed.
    pub(crate) fn fail_waiting(&self, ntp: &Ntp) {
        for (_, tx) in self.acks.borrow_mut().drain(..) {
            let _ = tx.send(Err(PartitionError::NotCommitted(ntp.clone())));
        }
    }

    /// Writes the state file now (a clean close keeps the high watermark).
    pub(crate) async fn checkpoint(&self) -> Result<(), StorageError> {
        self.persist().await
    }

    fn file_state(&self) -> StateFile {
        let r = self.replica.borrow();
        let st = r.epoch_state();
        StateFile {
            epoch: st.epoch.0,
            leader: st.leader.map(|l| l.0),
            runs: self
                .runs
                .borrow()
                .iter()
                .map(|r| (r.start.0, r.epoch.0))
                .collect(),
            hw: self.hw.get().0,
        }
    }

    async fn persist(&self) -> Result<(), StorageError> {
        let state = self.file_state();
        if *self.persisted.borrow() == state {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&state).expect("the state file encodes");
        let path = self.state_path.clone();
        ferrolog_shard::blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|source| StorageError::Io {
                op: "write",
                path: self.state_path.clone(),
                source,
            })?;
        *self.persisted.borrow_mut() = state;
        Ok(())
    }
}

/// Writes `bytes` to `path` so that after a crash the file is the old one
/// or the new one, and the new one is on disk when this returns.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        // The partition's log is unborn (nothing written yet), so its
        // directory does not exist: created here, durably.
        std::fs::create_dir_all(dir)?;
        std::fs::File::open(dir.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The epoch runs of a log, from every batch header (no state file).
async fn scan_runs(p: &Partition) -> Result<Vec<(i64, i32)>, StorageError> {
    let mut runs: Vec<(i64, i32)> = Vec::new();
    let mut at = p.log.offsets().start;
    let end = p.log.offsets().durable_next;
    while at < end {
        let r = p
            .log
            .read(ReadRequest {
                offset: at,
                max_bytes: 4 << 20,
                end: None,
            })
            .await?;
        if r.batches.is_empty() {
            break;
        }
        for b in &r.batches {
            let h = BatchHeader::parse(b).expect("the log returns whole batches");
            let epoch = h.partition_leader_epoch.0.max(0);
            if runs.last().is_none_or(|l| l.1 != epoch) {
                let start = if runs.is_empty() { 0 } else { h.base_offset.0 };
                runs.push((start, epoch));
            }
            at = h.last_offset().plus(1);
        }
    }
    Ok(runs)
}

/// What one drive round feeds the replica before carrying out its actions.
enum Input {
    None,
    Step(Message, Bytes),
    Assign {
        leader: NodeId,
        epoch: Epoch,
        replicas: Vec<NodeId>,
    },
}

fn repl(p: &Partition) -> &Replication {
    p.replication().expect("a replicated partition")
}

/// The metadata names `leader` for `epoch` over `replicas`.
pub async fn assign(p: Rc<Partition>, leader: NodeId, epoch: Epoch, replicas: Vec<NodeId>) {
    drive(
        &p,
        Input::Assign {
            leader,
            epoch,
            replicas,
        },
    )
    .await;
}

/// The controller prepares an election at `epoch`: once this returns Ok the
/// epoch is on disk and older epochs are refused here.
pub async fn prepare(p: Rc<Partition>, epoch: Epoch) -> Result<ElectionInfo, String> {
    if manager::local().stopping.get() {
        return Err("this node is stopping".into());
    }
    let r = repl(&p);
    let _permit = r
        .permit
        .acquire_permit(1)
        .await
        .map_err(|_| "closed".to_string())?;
    let info = r.replica.borrow_mut().prepare_election(epoch);
    let info = info.map_err(|e| e.to_string())?;
    carry_out(&p, None).await;
    // Answer only what is durable: the epoch must be in the state file.
    if r.persisted.borrow().epoch != epoch.0 {
        return Err(format!("epoch {epoch} could not be persisted"));
    }
    info!(partition = %p.ntp, epoch = %epoch, last_epoch = ?info.last_epoch, log_end = %info.log_end, "prepared for an election");
    Ok(info)
}

/// Starts a task that carries out the replica's queued actions (glommio
/// runs it at once, up to its first wait).
pub fn kick(p: &Rc<Partition>) {
    let r = repl(p);
    if r.kicked.replace(true) {
        return;
    }
    let p = p.clone();
    glommio::spawn_local(async move {
        repl(&p).kicked.set(false);
        drive(&p, Input::None).await;
    })
    .detach();
}

/// The leader took a client's batch into its log (in the append section,
/// before the write is durable): its followers get the batch as soon as the
/// section ends, while the leader's own write is under way, as a Raft
/// leader may (the high watermark counts durable copies only, the
/// leader's own included, and the client is answered only once the
/// leader's copy is durable too).
pub(crate) fn kick_taken(ntp: &Ntp) {
    let Some(p) = manager::local().partition(ntp) else {
        return;
    };
    if repl(&p).kicked.get() {
        return;
    }
    // glommio runs a task spawned in the same queue at once, up to its
    // first wait: carried out now, the actions would see the replica ahead
    // of the log (the section has not added the batch yet). One yield puts
    // them after the section.
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        kick(&p);
    })
    .detach();
}

/// The log holds everything appended so far durably below its durable end.
pub fn report_durable(p: &Rc<Partition>) {
    let end = p.log.offsets().durable_next;
    repl(p).replica.borrow_mut().durable(end);
    kick(p);
}

/// Waits until the high watermark passes `end` (exclusive), the replica
/// stops leading, or `timeout`. What is waited for is appended here: a
/// replica that stops leading first answers `NotCommitted`.
pub async fn wait_committed(p: &Partition, end: Offset, timeout: Duration) -> Result<(), PartitionError> {
    let r = repl(p);
    if r.hw.get() >= end {
        return Ok(());
    }
    if r.role() != Role::Leader {
        return Err(PartitionError::NotCommitted(p.ntp.clone()));
    }
    let (tx, rx) = oneshot::channel();
    r.acks.borrow_mut().push((end, tx));
    futures_lite::future::or(
        async move {
            rx.await
                .unwrap_or(Err(PartitionError::NotCommitted(p.ntp.clone())))
        },
        async move {
            glommio::timer::sleep(timeout).await;
            Err(PartitionError::TimedOut(timeout))
        },
    )
    .await
}

pub fn tick(p: &Rc<Partition>) {
    let r = repl(p);
    let resends = {
        let mut replica = r.replica.borrow_mut();
        let before = replica.resends();
        replica.tick();
        replica.resends() - before
    };
    if resends > 0 {
        let m = manager::local();
        m.repl_net.resends.set(m.repl_net.resends.get() + resends);
    }
    // A replica with no leader to follow (it led before a restart, an
    // election fenced it and did not finish, it saw a newer epoch) asks the
    // controller for one, once it has been so for a while and then every
    // UNATTACHED_ASK_TICKS.
    if r.role() == Role::Unattached && !manager::local().stopping.get() {
        let n = r.unattached_ticks.get() + 1;
        r.unattached_ticks.set(n);
        if n % UNATTACHED_ASK_TICKS == 0 {
            request_election(p);
        }
    } else {
        r.unattached_ticks.set(0);
    }
    kick(p);
}

/// One input, then every queued action, under the partition's permit.
async fn drive(p: &Rc<Partition>, input: Input) {
    let r = repl(p);
    let Ok(_permit) = r.permit.acquire_permit(1).await else {
        return;
    };
    // Between drives the log holds exactly what the replica counts. Less
    // means the log discarded appended batches (a failed flush): the
    // replica cannot take them back, so it is rebuilt from the log.
    let lost = p.log.offsets().dirty_next < r.replica.borrow().log_end();
    if lost {
        warn!(partition = %p.ntp, log_end = %p.log.offsets().dirty_next, replica_end = %r.replica.borrow().log_end(), "the log lost appended batches; rebuilding the replica from disk");
        reset(p).await;
    }
    let payload = match input {
        Input::None => None,
        Input::Step(m, payload) => {
            r.replica.borrow_mut().step(m);
            Some(payload)
        }
        Input::Assign {
            leader,
            epoch,
            replicas,
        } => {
            *r.replicas.borrow_mut() = replicas.clone();
            let done = if leader == r.node {
                r.replica.borrow_mut().become_leader(epoch, &replicas)
            } else {
                r.replica.borrow_mut().become_follower(epoch, leader)
            };
            match done {
                Ok(()) => {}
                Err(ControlError::EpochTaken { .. }) if leader == r.node => {
                    // It led this epoch before a restart and may have lost
                    // what it sent: the controller must pick a new epoch
                    // (asked for by the ticker while it stays unattached).
                    info!(partition = %p.ntp, epoch = %epoch, "assigned an epoch this node led before; an election is needed");
                }
                Err(e) => debug!(partition = %p.ntp, "assignment refused: {e}"),
            }
            None
        }
    };
    carry_out(p, payload).await;
}

fn request_election(p: &Partition) {
    let m = manager::local();
    let hook = m.election_requests.borrow().clone();
    match hook {
        Some(h) => {
            info!(partition = %p.ntp, epoch = %repl(p).epoch(), "no leader this replica may follow; asking the controller for an election");
            h(p.ntp.clone());
        }
        None => warn!(partition = %p.ntp, "no controller to ask for an election"),
    }
}

/// Carries out the queued actions (the permit is held), then any queued
/// meanwhile. `payload` is the batches of the request just stepped.
async fn carry_out(p: &Rc<Partition>, payload: Option<Bytes>) {
    let r = repl(p);
    let mut payload = payload;
    loop {
        let actions = r.replica.borrow_mut().take_actions();
        if actions.is_empty() {
            return;
        }
        for action in actions {
            if let Err(e) = execute(p, action, payload.as_ref()).await {
                warn!(partition = %p.ntp, "replication step failed, rebuilding the replica from disk: {e}");
                reset(p).await;
                return;
            }
        }
        payload = None;
    }
}

/// Rebuilds the replica from what is on disk (see the module doc).
async fn reset(p: &Rc<Partition>) {
    let r = repl(p);
    r.resets.set(r.resets.get() + 1);
    let _ = r.replica.borrow_mut().take_actions();
    // Everything still in the log is made durable, so the rebuilt replica
    // counts exactly the durable log.
    if let Err(e) = p.log.flush().await {
        warn!(partition = %p.ntp, "flush before rebuilding the replica failed: {e}");
    }
    let end = p.log.offsets().durable_next;
    let runs: Vec<EpochStart> = r
        .runs
        .borrow()
        .iter()
        .copied()
        .filter(|x| x.start < end)
        .collect();
    *r.runs.borrow_mut() = runs.clone();
    let Ok(map) = EpochMap::from_parts(runs, end) else {
        warn!(partition = %p.ntp, "the epoch runs do not describe the log; the replica stays as it is");
        return;
    };
    let st = r.replica.borrow().epoch_state();
    let restart = Restart {
        epoch: st,
        log: map,
        hw_checkpoint: r.hw.get(),
    };
    let config = ReplicaConfig {
        min_insync: r.min_insync.get(),
        ..replica_config(r.node)
    };
    *r.replica.borrow_mut() = Replica::new(config, restart);
    settle_role(p);
}

async fn execute(p: &Rc<Partition>, action: Action, payload: Option<&Bytes>) -> Result<(), String> {
    let r = repl(p);
    match action {
        Action::PersistEpoch(_) => r.persist().await.map_err(|e| e.to_string()),
        Action::AppendMarker { offset, epoch } => {
            open_run(r, offset, epoch).await?;
            let at = p.append_marker(epoch, r.node).await.map_err(|e| e.to_string())?;
            if at != offset {
                return Err(format!("the epoch marker landed at {at}, not {offset}"));
            }
            let end = p.log.offsets().durable_next;
            r.replica.borrow_mut().durable(end);
            Ok(())
        }
        Action::Truncate { to } => {
            p.truncate(to).await.map_err(|e| e.to_string())?;
            r.runs.borrow_mut().retain(|x| x.start < to);
            r.persist().await.map_err(|e| e.to_string())?;
            info!(partition = %p.ntp, to = %to, "truncated a divergent suffix");
            Ok(())
        }
        Action::AppendFromRequest { start, end } => {
            let payload = payload.ok_or("records to append without a request")?;
            append_from(p, r, payload, start, end).await?;
            sync_queued(p);
            Ok(())
        }
        Action::Send { to, message } => {
            send(p, r, to, message).await;
            Ok(())
        }
        Action::HighWatermark(hw) => {
            r.hw.set(hw);
            let mut acks = r.acks.borrow_mut();
            let mut i = 0;
            while i < acks.len() {
                if acks[i].0 <= hw {
                    let (_, tx) = acks.swap_remove(i);
                    let _ = tx.send(Ok(()));
                } else {
                    i += 1;
                }
            }
            drop(acks);
            p.wake_waiters();
            Ok(())
        }
        Action::RoleChanged(role) => {
            info!(partition = %p.ntp, role = ?role, epoch = %r.epoch(), "replica role changed");
            if role == Role::Leader {
                p.note_took_lead();
            } else {
                r.fail_waiting(&p.ntp);
            }
            p.wake_waiters();
            Ok(())
        }
    }
}

/// Role bookkeeping after a rebuild: waiting produce requests fail unless
/// this replica still leads (it never does after a rebuild).
fn settle_role(p: &Rc<Partition>) {
    let r = repl(p);
    if r.role() != Role::Leader {
        r.fail_waiting(&p.ntp);
    }
}

/// Records (and persists) a new epoch run at `offset` before the log gets
/// its first batch.
async fn open_run(r: &Replication, offset: Offset, epoch: Epoch) -> Result<(), String> {
    let opens = r.runs.borrow().last().is_none_or(|l| l.epoch != epoch);
    if opens {
        let start = if r.runs.borrow().is_empty() {
            Offset(0)
        } else {
            offset
        };
        r.runs.borrow_mut().push(EpochStart { start, epoch });
        r.persist().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Makes a follower's queued appends durable and tells the replica, which
/// reports the new durable end to the leader. One such task per partition
/// at a time; the batches of requests queued while its write runs go in its
/// next write (group commit across the leader's pipelined requests, where
/// waiting for each request's write under the permit made one write per
/// request). A failed write discards the queued batches; the next drive
/// sees the log behind the replica and rebuilds it.
fn sync_queued(p: &Rc<Partition>) {
    let r = repl(p);
    if r.syncing.replace(true) {
        return;
    }
    let p = p.clone();
    glommio::spawn_local(async move {
        loop {
            let written = p.log.flush().await;
            let o = p.log.offsets();
            if let Err(e) = &written {
                debug!(partition = %p.ntp, "writing the leader's batches failed: {e}");
            }
            if written.is_err() || o.durable_next >= o.dirty_next {
                repl(&p).syncing.set(false);
                report_durable(&p);
                return;
            }
            report_durable(&p);
        }
    })
    .detach();
}

/// Queues the batches of `payload` that cover `[start, end)` at their
/// offsets (those before `start` are already here); [`sync_queued`] writes
/// them.
async fn append_from(
    p: &Rc<Partition>,
    r: &Replication,
    payload: &Bytes,
    start: Offset,
    end: Offset,
) -> Result<(), String> {
    let batches = crate::ops::split_batches(payload).map_err(|e| e.to_string())?;
    let mut next = start;
    for batch in batches {
        let h = BatchHeader::parse(&batch).map_err(|e| e.to_string())?;
        if h.last_offset() < start {
            continue;
        }
        if h.base_offset >= end {
            break;
        }
        if h.base_offset != next || p.log.offsets().dirty_next != next {
            return Err(format!(
                "batch at {} does not continue the log at {next} (log end {})",
                h.base_offset,
                p.log.offsets().dirty_next
            ));
        }
        open_run(r, h.base_offset, h.partition_leader_epoch).await?;
        let appended = p.queue_replicated_batch(batch).await.map_err(|e| e.to_string())?;
        next = appended.plus(1);
    }
    if next != end {
        return Err(format!("the request's batches end at {next}, not {end}"));
    }
    Ok(())
}

/// Sends a message; an append request gets the batches of its range (cut
/// to whole batches within [`REQUEST_BYTES_MAX`] and [`repl_wire::RUNS_MAX`]
/// runs), and the replica hears what was really sent.
async fn send(p: &Rc<Partition>, r: &Replication, to: NodeId, message: Message) {
    let m = manager::local();
    let Message::Append(mut req) = message else {
        let _ = m.repl_net.send(&m, to, &p.ntp, r.key, &message, Bytes::new());
        return;
    };
    let asked = req.end;
    if req.start == req.end {
        let _ = m
            .repl_net
            .send(&m, to, &p.ntp, r.key, &Message::Append(req), Bytes::new());
        return;
    }
    let mut limit = req.end;
    if req.epochs.len() > repl_wire::RUNS_MAX {
        limit = req.epochs[repl_wire::RUNS_MAX].start;
    }
    let mut batches = p.log.read_cached(req.start, limit, REQUEST_BYTES_MAX);
    if batches.is_empty() {
        let read = p
            .log
            .read(ReadRequest {
                offset: req.start,
                max_bytes: REQUEST_BYTES_MAX,
                end: Some(limit),
            })
            .await;
        match read {
            Ok(o) => batches = o.batches,
            Err(e) => debug!(partition = %p.ntp, start = %req.start, "cannot read for a follower yet: {e}"),
        }
    }
    let mut sent_end = req.start;
    let mut payload = BytesMut::new();
    for b in &batches {
        let Ok(h) = BatchHeader::parse(b) else { break };
        if h.base_offset != sent_end || h.last_offset() >= limit {
            break;
        }
        sent_end = h.last_offset().plus(1);
        payload.extend_from_slice(b);
    }
    if sent_end > req.start {
        req.end = sent_end;
        req.epochs.retain(|x| x.start < sent_end);
        let ok = m.repl_net.send(
            &m,
            to,
            &p.ntp,
            r.key,
            &Message::Append(req.clone()),
            payload.freeze(),
        );
        if !ok {
            sent_end = req.start;
        }
    }
    r.replica.borrow_mut().sent(to, req.start, asked, sent_end);
}

/// Frame routing for one shard: this shard's AF_XDP socket if it has one,
/// links to peers' replication listeners, and the handler of frames that
/// arrive.
#[derive(Default)]
pub struct ReplNet {
    links: RefCell<HashMap<SocketAddr, Rc<Link>>>,
    resolved: RefCell<HashMap<String, SocketAddr>>,
    /// Mutual TLS on the data links, both ways (set by [`start_shard`]).
    tls: RefCell<Option<Arc<NodeTls>>>,
    /// This shard's AF_XDP path (set by [`start_shard`], taken by
    /// [`close_xdp`]).
    xdp: RefCell<Option<Rc<XdpPath>>>,
    /// Frames queued on TCP links, and received from TCP links.
    pub frames_sent: Cell<u64>,
    pub frames_received: Cell<u64>,
    /// Frames that could not be queued (no address, a full link or socket
    /// queue): the replica resends.
    pub frames_refused: Cell<u64>,
    /// Received frames that did not decode (either transport).
    pub frames_invalid: Cell<u64>,
    /// Received frames handed to another shard of this node (the
    /// partition's owner): a sender that routes by the default placement
    /// sends none over TCP.
    pub frames_forwarded: Cell<u64>,
    /// Go-back-N resends of this shard's leader replicas (see
    /// `Replica::resends`).
    pub resends: Cell<u64>,
}

/// A plain copy of one shard's replication transport counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplNetSnapshot {
    pub tcp_frames_sent: u64,
    pub tcp_frames_received: u64,
    pub frames_refused: u64,
    pub frames_invalid: u64,
    pub frames_forwarded: u64,
    pub resends: u64,
    /// `None`: this shard has no AF_XDP socket.
    pub xdp: Option<XdpSnapshot>,
}

impl ReplNet {
    /// This shard's AF_XDP path, if it has one.
    pub fn xdp(&self) -> Option<Rc<XdpPath>> {
        self.xdp.borrow().clone()
    }

    pub fn snapshot(&self) -> ReplNetSnapshot {
        ReplNetSnapshot {
            tcp_frames_sent: self.frames_sent.get(),
            tcp_frames_received: self.frames_received.get(),
            frames_refused: self.frames_refused.get(),
            frames_invalid: self.frames_invalid.get(),
            frames_forwarded: self.frames_forwarded.get(),
            resends: self.resends.get(),
            xdp: self.xdp().map(|x| x.snapshot()),
        }
    }

    /// Queues a message to `to`: over this shard's AF_XDP socket when the
    /// peer has an endpoint for it, else to its replication listener over
    /// TCP; false when it could not be queued (no address, a full queue).
    fn send(
        &self,
        m: &PartitionManager,
        to: NodeId,
        ntp: &Ntp,
        key: PartitionKey,
        message: &Message,
        payload: Bytes,
    ) -> bool {
        let (kind, ext) = match repl_wire::encode(key, message) {
            Ok(x) => x,
            Err(e) => {
                warn!(partition = %ntp, "cannot encode a replication message: {e}");
                return false;
            }
        };
        // The receiving node routes to the partition's owner shard.
        let mut frame = Frame {
            kind,
            shard: 0,
            ext,
            payload,
        };
        if let Some(xdp) = self.xdp() {
            match xdp.send(&m.metadata(), to, frame) {
                Ok(true) => return true,
                Ok(false) => {
                    self.frames_refused.set(self.frames_refused.get() + 1);
                    return false;
                }
                Err(back) => frame = back,
            }
        }
        let Some((addr, host)) = self.peer_addr(m, to, ntp) else {
            self.frames_refused.set(self.frames_refused.get() + 1);
            return false;
        };
        let link = self
            .links
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| {
                // The peer's certificate must name the host it registered.
                let tls = self.tls.borrow().clone().map(|t| (t, host_of(&host).to_string()));
                let link = Link::with_tls(addr, FRAME_PAYLOAD_MAX, LINK_FRAMES_MAX, LINK_BYTES_MAX, tls);
                // The node's Metadata answers use what this link sees of its peer.
                let hints = m.config.peer_hints.clone();
                link.on_peer_events(PeerEvents {
                    lost: Rc::new(move || hints.connection_lost(to)),
                });
                link
            })
            .clone();
        match link.send(frame) {
            Ok(()) => {
                self.frames_sent.set(self.frames_sent.get() + 1);
                true
            }
            Err(e) => {
                debug!(partition = %ntp, peer = %to, "replication frame not queued: {e}");
                self.frames_refused.set(self.frames_refused.get() + 1);
                false
            }
        }
    }

    /// The replication listener of the peer's shard that owns `ntp` by
    /// default (shard `s` listens on the advertised port + `s`), resolved,
    /// and the address as the peer registered it. Sent there, a frame
    /// reaches the replica without a hop between the peer's shards; a peer
    /// whose placement differs forwards it.
    fn peer_addr(&self, m: &PartitionManager, to: NodeId, ntp: &Ntp) -> Option<(SocketAddr, String)> {
        let snap = m.metadata();
        let broker = snap.broker(to)?;
        let text = broker.data_addr.clone()?;
        let shards = usize::try_from(broker.shards).unwrap_or(0);
        let cached = self.resolved.borrow().get(&text).copied();
        let mut addr = match cached {
            Some(a) => a,
            None => {
                let a = text.to_socket_addrs().ok()?.next()?;
                self.resolved.borrow_mut().insert(text.clone(), a);
                a
            }
        };
        if shards > 1 {
            let shard = crate::placement::hash_owner(ntp, shards).0;
            let port = u16::try_from(u32::from(addr.port()) + shard).ok()?;
            addr.set_port(port);
        }
        Some((addr, text))
    }
}

/// Starts this shard's replication: its listener on `listen` (shard 0's
/// address; shard s listens on its port + s), its AF_XDP socket when `xdp`
/// is given and the shard's queue exists, and the ticker. Returns the bound
/// address.
pub fn start_shard(
    m: &Rc<PartitionManager>,
    listen: SocketAddr,
    tls: Option<Arc<NodeTls>>,
    xdp: Option<&XdpShardConfig>,
) -> std::io::Result<SocketAddr> {
    m.repl_net.tls.replace(tls.clone());
    let mut addr = listen;
    if addr.port() != 0 {
        addr.set_port(addr.port() + u16::try_from(m.id().0).expect("a shard id fits a port offset"));
    }
    let handler: ferrolog_transport::Handler = Rc::new(on_frame);
    let (task, bound) = ferrolog_transport::listen_with_tls(addr, FRAME_PAYLOAD_MAX, handler, tls)?;
    m.repl_tasks.borrow_mut().push(task);
    if let Some(config) = xdp {
        start_xdp(m, config);
    }
    let ticker = glommio::spawn_local(ticker()).detach();
    m.repl_tasks.borrow_mut().push(ticker);
    info!(shard = %m.id(), addr = %bound, "replication listener");
    Ok(bound)
}

/// Opens this shard's AF_XDP socket and starts its poller. Shard 0's
/// queue was checked at start (the node advertises AF_XDP only then); a
/// later shard whose queue the interface does not have stays on TCP (its
/// peers' datagrams still arrive, on whichever queue has a socket).
fn start_xdp(m: &Rc<PartitionManager>, config: &XdpShardConfig) {
    let shard = m.id().0;
    match XdpPath::open(config, m.config.node_id, shard) {
        Ok(path) => {
            info!(shard = %m.id(), queue = path.queue(), endpoint = %config.local, "AF_XDP replication socket open");
            m.repl_net.xdp.replace(Some(Rc::new(path)));
            let deliver = |frame: Frame| handle_frame("AF_XDP", frame);
            let task = glommio::spawn_local(repl_xdp::poll_loop(m.clone(), deliver)).detach();
            m.repl_tasks.borrow_mut().push(task);
        }
        // The node's path was proven on shard 0's queue; a later queue the
        // interface does not have (or that its driver refuses) is expected.
        Err(e) if shard > 0 => {
            info!(shard = %m.id(), "this shard sends replication frames over TCP (no AF_XDP socket: {e})");
        }
        Err(e) => {
            warn!(shard = %m.id(), "AF_XDP is not available to this shard ({e}); its replication frames use TCP");
        }
    }
}

/// Closes this shard's AF_XDP socket (at shutdown): its poller ends, and
/// the XDP program is detached once every shard's socket is closed and the
/// node dropped its handle.
pub fn close_xdp(m: &PartitionManager) {
    if m.repl_net.xdp.take().is_some() {
        info!(shard = %m.id(), "AF_XDP replication socket closed");
    }
}

async fn ticker() {
    loop {
        glommio::timer::sleep(TICK).await;
        let m = manager::local();
        for p in m.replicated() {
            tick(&p);
            publish_isr(&m, &p);
        }
    }
}

/// Sends every shard this partition's in-sync replicas (the leader, then
/// the followers its replica counts in sync; none when not leading) if
/// they changed since last sent, for the Metadata answers of any shard.
fn publish_isr(m: &PartitionManager, p: &Partition) {
    let r = repl(p);
    let isr: Vec<NodeId> = if r.role() == Role::Leader {
        std::iter::once(r.node).chain(r.insync_followers()).collect()
    } else {
        Vec::new()
    };
    if *r.published_isr.borrow() == isr {
        return;
    }
    *r.published_isr.borrow_mut() = isr.clone();
    let seq = m.isr_seq.get() + 1;
    m.isr_seq.set(seq);
    let (smp, ntp) = (m.smp.clone(), p.ntp.clone());
    glommio::spawn_local(async move {
        let _ = smp
            .invoke_on_all(move || {
                let (ntp, isr) = (ntp.clone(), isr.clone());
                async move { manager::local().set_isr(ntp, seq, isr) }
            })
            .await;
    })
    .detach();
}

fn on_frame(from: SocketAddr, frame: Frame) {
    let m = manager::local();
    m.repl_net
        .frames_received
        .set(m.repl_net.frames_received.get() + 1);
    handle_frame(from, frame);
}

/// A frame from either transport (`from` names the sender for logs).
fn handle_frame(from: impl std::fmt::Display, frame: Frame) {
    let m = manager::local();
    let (key, message) = match repl_wire::decode(frame.kind, &frame.ext) {
        Ok(x) => x,
        Err(e) => {
            m.repl_net.frames_invalid.set(m.repl_net.frames_invalid.get() + 1);
            warn!(peer = %from, "invalid replication frame: {e}");
            return;
        }
    };
    if matches!(message, Message::Response(_)) && !frame.payload.is_empty() {
        m.repl_net.frames_invalid.set(m.repl_net.frames_invalid.get() + 1);
        return;
    }
    let Some(ntp) = m.ntp_of(key) else {
        debug!(peer = %from, topic_id = key.topic_id, "replication frame for a topic this node does not know");
        return;
    };
    let owner = m.owner(&ntp);
    if owner != m.id() {
        m.repl_net
            .frames_forwarded
            .set(m.repl_net.frames_forwarded.get() + 1);
        forward(&m, owner, ntp, message, frame.payload);
        return;
    }
    deliver(&m, &ntp, message, frame.payload);
}

fn deliver(m: &PartitionManager, ntp: &Ntp, message: Message, payload: Bytes) {
    let Some(p) = m.partition(ntp).filter(|p| p.replication().is_some()) else {
        return;
    };
    glommio::spawn_local(async move { drive(&p, Input::Step(message, payload)).await }).detach();
}

fn forward(m: &PartitionManager, owner: ShardId, ntp: Ntp, message: Message, payload: Bytes) {
    let smp = m.smp.clone();
    glommio::spawn_local(async move {
        let _ = smp
            .submit_to(owner, move || async move {
                let m = manager::local();
                deliver(&m, &ntp, message, payload);
            })
            .await;
    })
    .detach();
}

/// The first offset past `epoch`'s entries in this log and the epoch found
/// (OffsetForLeaderEpoch): the last epoch at or below the one asked.
pub fn end_for_epoch(p: &Partition, epoch: Epoch) -> Option<(Epoch, Offset)> {
    let r = p.replication()?;
    let log = r.replica.borrow();
    let map = log.log();
    map.end_for_epoch(epoch).map(|e| (e.epoch, e.end))
}
