//! The controller: this node's member of the controller Raft group, on the
//! node's control executor (never a data shard).
//!
//! It drives a [`RaftCore`] (ticks, received messages, proposals, the Ready
//! loop), sends Raft messages to the other nodes over Cap'n Proto RPC
//! ([`crate::rpc`]), and publishes an immutable [`MetadataSnapshot`] of
//! every applied change to the node's shards through the `Publish` hook. A
//! proposal is answered once its entry is applied and the snapshot that
//! holds it is published here, so the next request on any shard of this
//! node sees it.
//!
//! Any node takes admin operations: the leader proposes them; another node
//! forwards them to the leader (RPC `propose`) and answers once it applied
//! them itself. Every node registers itself with the leader at start (a new
//! incarnation each time) and heartbeats it; the leader marks a member
//! down when its session expires and elects new leaders for the partitions
//! it led ([`crate::elections`]: a majority of each replica set prepares the
//! next epoch, the best log wins), adds registered nodes that are not voters as
//! Raft learners (so they receive every committed change, in order: the
//! metadata watch), and drains decommissioned members before removing them.
//!
//! Without seeds the node is a one-voter group: today's single-node broker,
//! on the same path (no RPC listener is needed for it).

use crate::commands::{self, CommandError, TopicChange, TopicCommand, TopicDelta};
use crate::elections::{self, Election, LocalReplicas, PartitionKey};
use crate::metadata::{Broker, MetadataSnapshot};
use crate::peer_hints::PeerHints;
use crate::producer_ids::{ProducerIdAllocator, ProducerIdError};
use crate::raft_core::{AppliedEntry, Bootstrap, CoreConfig, CoreError, Outcome, RaftCore};
use crate::rpc::{self, HeartbeatReply, MemberInfo, Peer, PrepareReply, RegisterReply, RpcError};
use crate::state::{
    Applied, ClusterState, Command, MemberState, Reassignment, ReassignmentState, Registration, StateError,
};
use crate::topics::{self, TableFileError, TopicTable, TOPICS_FILE};
use ferrolog_model::{Epoch, NodeId, PartitionId};
use ferrolog_replication::{majority, ElectionInfo};
use ferrolog_transport::tls::NodeTls;
use futures::future::LocalBoxFuture;
use futures_channel::oneshot;
use glommio::sync::Semaphore;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, MessageType};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Hands a new snapshot to every shard and resolves once they applied it.
pub type Publish = Rc<dyn Fn(Arc<MetadataSnapshot>) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Where the Raft log lives, under the data directory.
pub const RAFT_DIR: &str = "controller";
/// Producer ids a node takes from the cluster at a time.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// How long the leader waits for a lost member's control port to answer
/// before it leaves the member to its session timeout.
const LOST_MEMBER_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Pauses before each probe of a lost member's control port.
const LOST_MEMBER_PROBE_PAUSES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// A member's place in `Controller::probing`, given back on drop.
struct ProbeSlot<'a>(&'a RefCell<BTreeSet<NodeId>>, NodeId);

impl<'a> ProbeSlot<'a> {
    fn take(set: &'a RefCell<BTreeSet<NodeId>>, node: NodeId) -> Option<ProbeSlot<'a>> {
        let fresh = set.borrow_mut().insert(node);
        fresh.then(|| ProbeSlot(set, node))
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().remove(&self.1);
    }
}

/// Between the campaigns of two surviving voters after the controller
/// leader's process died (see `Controller::raft_leader_lost`): time for the
/// first to win before the next one tries.
const LEADER_LOST_STAGGER: Duration = Duration::from_millis(150);

/// Timing of the control plane (profile fields; see docs/tuning.md).
#[derive(Clone, Debug)]
pub struct ControlTiming {
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a voter campaigns (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// How often a node heartbeats the controller leader.
    pub heartbeat_interval: Duration,
    /// A member not heard for this long is marked down.
    pub session_timeout: Duration,
    /// How long an admin operation waits for a leader and its answer.
    pub request_timeout: Duration,
    /// Applied entries between two snapshots of the state machine.
    pub snapshot_every: u64,
}

impl Default for ControlTiming {
    fn default() -> Self {
        ControlTiming {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            heartbeat_interval: Duration::from_millis(500),
            session_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            snapshot_every: 1000,
        }
    }
}

/// What the controller needs to know of its node.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// The cluster id this data directory recorded (node.meta): the id of a
    /// new one-voter cluster, and the one the first leader of a new
    /// multi-voter cluster proposes.
    pub local_cluster_id: String,
    /// This node as it registers.
    pub me: Registration,
    /// The initial voters by node id and RPC address; empty: a one-voter
    /// group of this node.
    pub seeds: Vec<(NodeId, String)>,
    /// Where to serve the control-plane RPC; `None`: no listener (a
    /// one-voter group needs none).
    pub rpc_listen: Option<SocketAddr>,
    pub timing: ControlTiming,
    /// Whether the leader creates the group coordinator's topic
    /// ([`topics::OFFSETS_TOPIC`]); off where no coordinator runs.
    pub offsets_topic: bool,
    /// Whether the leader moves leaderships back to preferred replicas on
    /// its own (Kafka's auto.leader.rebalance.enable); ElectLeaders works
    /// either way.
    pub auto_leader_rebalance: bool,
    /// Mutual TLS on the control-plane RPC, both ways; `None`: plain TCP.
    pub tls: Option<Arc<NodeTls>>,
    /// The node's hints about its peers (shared with its data shards): the
    /// leader records heartbeat connections that end and heartbeats that
    /// arrive.
    pub peer_hints: Arc<PeerHints>,
}

/// The outcome of a preferred-leader election (ElectLeaders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreferredOutcome {
    /// The preferred replica leads now.
    Elected,
    /// It led already.
    NotNeeded,
    /// It is down, the partition has one replica, or another replica was
    /// ahead of it (or the election did not finish in time).
    NotAvailable,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    Rejected(StateError),
    #[error("no controller leader is known; retry")]
    NoLeader,
    #[error("the operation was not applied within {0:?}; it may still be")]
    Timeout(Duration),
    #[error("forwarding to the controller leader: {0}")]
    Forward(String),
    #[error("the controller failed: {0}")]
    Failed(String),
    #[error("the controller is stopping")]
    Stopping,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot load the topic table: {0}")]
    Load(#[from] TableFileError),
    #[error("cannot read the producer id file: {0}")]
    ProducerIds(#[from] ProducerIdError),
    #[error("cannot open the controller's Raft log: {0}")]
    Core(#[from] CoreError),
    #[error("{0}")]
    Config(String),
    #[error("cannot serve the control-plane RPC on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

type Answer = (u64, Result<Applied, StateError>);

pub struct Controller {
    config: ControllerConfig,
    core: RefCell<RaftCore>,
    publish: Publish,
    /// The cluster id as applied ("" until the first leader set it).
    cluster_id: Rc<RefCell<String>>,
    /// RPC address of every node we may send to: seeds, then members.
    addrs: RefCell<BTreeMap<u64, String>>,
    peers: RefCell<HashMap<u64, Rc<Peer>>>,
    next_ctx: Cell<u64>,
    pending: RefCell<HashMap<Vec<u8>, oneshot::Sender<Answer>>>,
    reads: RefCell<HashMap<Vec<u8>, oneshot::Sender<u64>>>,
    /// The applied index of the last snapshot every shard applied.
    published: Cell<u64>,
    publish_waiters: RefCell<Vec<(u64, oneshot::Sender<()>)>>,
    kick: RefCell<Option<futures_channel::mpsc::UnboundedSender<()>>>,
    snapshot: RefCell<Arc<MetadataSnapshot>>,
    /// Leader only: when each member was last heard.
    heard: RefCell<HashMap<NodeId, Instant>>,
    leader_since: Cell<Option<Instant>>,
    /// The incarnation this process registered as (0: not yet).
    incarnation: Cell<u64>,
    producer_ids: RefCell<(i64, i64)>,
    id_permit: Semaphore,
    failed: RefCell<Option<String>>,
    /// Senders of Raft messages outside the configuration, warned about once.
    strangers: RefCell<std::collections::HashSet<u64>>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// This node's replicas, once the data plane set them.
    local_replicas: RefCell<Option<Rc<dyn LocalReplicas>>>,
    /// Leader only: partitions the data plane asked to elect, with the
    /// leader epoch each was asked at (at most
    /// [`elections::ELECTION_REQUESTS_MAX`]). Held in memory: a new
    /// controller leader starts with none.
    election_requests: RefCell<BTreeMap<PartitionKey, Epoch>>,
    /// The partitions of the election round running now (one round at a
    /// time), from its first prepare until its moves are applied or refused.
    elections_in_flight: RefCell<BTreeSet<PartitionKey>>,
    /// Election requests that are balancing ones (preferred leader), at the
    /// epoch they were made for.
    preferred_requests: RefCell<BTreeMap<PartitionKey, Epoch>>,
    /// Leader: since when each live member has been seen live.
    alive_since: RefCell<HashMap<NodeId, Instant>>,
    /// Leader: members a probe is marking down (`probe_lost_member`); the
    /// periodic liveness check leaves them alone meanwhile.
    probing_down: RefCell<BTreeSet<NodeId>>,
    /// Leader: members a probe is running for (`probe_lost_member`).
    probing: RefCell<BTreeSet<NodeId>>,
    /// Leader: balancing elections tried, and when.
    balance_tried: RefCell<HashMap<PartitionKey, Instant>>,
    last_balance: Cell<Option<Instant>>,
    election_round: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// When each partition that could not elect was last warned about.
    no_majority_warned: RefCell<HashMap<PartitionKey, Instant>>,
    /// Leader: elections that move a reassigned partition's leadership into
    /// its target set, by the epoch they were requested at, with the target.
    reassignment_elections: RefCell<BTreeMap<PartitionKey, (Epoch, Vec<NodeId>)>>,
    /// A round of reassignment checks is running.
    reassigning: Cell<bool>,
}

thread_local! {
    static CONTROLLER: RefCell<Option<Rc<Controller>>> = const { RefCell::new(None) };
}

/// The controller of this executor. Panics elsewhere: a programmer error.
pub fn local() -> Rc<Controller> {
    CONTROLLER.with(|c| {
        c.borrow()
            .clone()
            .expect("controller used off the control executor")
    })
}

/// The state a data directory of the single-node broker had before the
/// Raft controller: its topic table, producer ids and cluster id become the
/// first snapshot of its one-voter group.
fn imported_state(config: &ControllerConfig) -> Result<ClusterState, BootstrapError> {
    let dir = &config.data_dir;
    let topics = TopicTable::load(dir, config.me.id)?.unwrap_or_default();
    let next_producer_id = ProducerIdAllocator::open(dir)?.next_unused();
    Ok(ClusterState {
        cluster_id: config.local_cluster_id.clone(),
        topics,
        next_producer_id,
        ..ClusterState::default()
    })
}

use crate::raft_core::{node_of as node_id, raft_id as node_u64};

impl Controller {
    /// Opens the Raft log (bootstrapping a new one from the seeds, or from
    /// a single-node data directory), starts the RPC listener and the
    /// controller's tasks, and publishes the recovered metadata to every
    /// shard before it returns.
    pub async fn bootstrap(
        config: ControllerConfig,
        publish: Publish,
    ) -> Result<Rc<Controller>, BootstrapError> {
        let me = config.me.id;
        let voters: Vec<NodeId> = config.seeds.iter().map(|(n, _)| *n).collect();
        let raft_dir = config.data_dir.join(RAFT_DIR);
        let fresh = !raft_dir.join("hardstate").exists() && !raft_dir.join("snapshot").exists();
        let bootstrap = if config.seeds.is_empty() {
            let initial = if fresh {
                imported_state(&config)?
            } else {
                ClusterState::default()
            };
            Bootstrap::Voter {
                voters: vec![node_u64(me)],
                initial: Box::new(initial),
            }
        } else if voters.contains(&me) {
            Bootstrap::Voter {
                voters: voters.iter().map(|v| node_u64(*v)).collect(),
                initial: Box::default(),
            }
        } else {
            Bootstrap::Join
        };
        let core_config = CoreConfig {
            id: node_u64(me),
            election_tick: config.timing.election_ticks,
            max_election_tick: 0,
            heartbeat_tick: config.timing.heartbeat_ticks,
            snapshot_every: config.timing.snapshot_every,
        };
        let core = {
            let dir = raft_dir.clone();
            RaftCore::open(&dir, core_config, bootstrap)?
        };
        if fresh && config.seeds.is_empty() && config.data_dir.join(TOPICS_FILE).exists() {
            // The table is in the Raft log's first snapshot now; the file is
            // kept for the operator, renamed so that it is never read again.
            let from = config.data_dir.join(TOPICS_FILE);
            let to = config.data_dir.join(format!("{TOPICS_FILE}.imported"));
            if let Err(e) = std::fs::rename(&from, &to) {
                warn!("cannot rename {} after importing it: {e}", from.display());
            }
        }
        info!(
            applied = core.applied(),
            topics = core.state().topics.topics.len(),
            members = core.state().members.len(),
            voters = ?core.conf_state().voters,
            "controller state recovered"
        );
        let addrs = config
            .seeds
            .iter()
            .map(|(n, a)| (node_u64(*n), a.clone()))
            .collect();
        let c = Rc::new(Controller {
            cluster_id: Rc::new(RefCell::new(core.state().cluster_id.clone())),
            core: RefCell::new(core),
            publish,
            addrs: RefCell::new(addrs),
            peers: RefCell::new(HashMap::new()),
            next_ctx: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            reads: RefCell::new(HashMap::new()),
            published: Cell::new(0),
            publish_waiters: RefCell::new(Vec::new()),
            kick: RefCell::new(None),
            snapshot: RefCell::new(Arc::new(MetadataSnapshot::default())),
            heard: RefCell::new(HashMap::new()),
            leader_since: Cell::new(None),
            incarnation: Cell::new(0),
            producer_ids: RefCell::new((0, 0)),
            id_permit: Semaphore::new(1),
            failed: RefCell::new(None),
            strangers: RefCell::new(std::collections::HashSet::new()),
            tasks: RefCell::new(Vec::new()),
            local_replicas: RefCell::new(None),
            election_requests: RefCell::new(BTreeMap::new()),
            elections_in_flight: RefCell::new(BTreeSet::new()),
            preferred_requests: RefCell::new(BTreeMap::new()),
            reassignment_elections: RefCell::new(BTreeMap::new()),
            reassigning: Cell::new(false),
            alive_since: RefCell::new(HashMap::new()),
            probing_down: RefCell::new(BTreeSet::new()),
            probing: RefCell::new(BTreeSet::new()),
            balance_tried: RefCell::new(HashMap::new()),
            last_balance: Cell::new(None),
            election_round: RefCell::new(None),
            no_majority_warned: RefCell::new(HashMap::new()),
            config,
        });
        CONTROLLER.with(|slot| *slot.borrow_mut() = Some(c.clone()));
        c.learn_addresses();
        // Replays the committed entries after the snapshot (configuration
        // changes included) before the seeds are checked against the voters.
        c.drive();
        if let Err(e) = check_voters(&c.config, &c.core.borrow()) {
            CONTROLLER.with(|slot| *slot.borrow_mut() = None);
            return Err(e);
        }
        if let Some(addr) = c.config.rpc_listen {
            let handler: Rc<dyn rpc::Handler> = Rc::new(RpcHandler(c.clone()));
            let (task, bound) = rpc::serve_with_tls(addr, handler, c.config.tls.clone())
                .map_err(|source| BootstrapError::Listen { addr, source })?;
            info!(addr = %bound, "serving the control-plane RPC");
            c.tasks.borrow_mut().push(task);
        }
        // A one-voter group need not wait out an election timeout.
        if c.config.seeds.is_empty() {
            let _ = c.core.borrow_mut().campaign();
        }
        c.drive();
        let publisher = glommio::spawn_local(c.clone().publisher()).detach();
        let ticker = glommio::spawn_local(c.clone().ticker()).detach();
        let member = glommio::spawn_local(c.clone().member_loop()).detach();
        c.tasks.borrow_mut().extend([publisher, ticker, member]);
        c.publish_now().await;
        Ok(c)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.me.id
    }

    /// Why the controller stopped working, if it did (its log could not be
    /// written: the node must stop).
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Hands the controller this node's replicas: from now on prepares for
    /// leader elections reach them (before, they are refused).
    pub fn set_local_replicas(&self, r: Rc<dyn LocalReplicas>) {
        *self.local_replicas.borrow_mut() = Some(r);
    }

    /// Stops the controller's tasks (the RPC listener included).
    pub fn stop(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.cancel();
        }
        if let Some(t) = self.election_round.borrow_mut().take() {
            t.cancel();
        }
        *self.kick.borrow_mut() = None;
    }

    /// The current topic table.
    pub fn table(&self) -> Arc<TopicTable> {
        self.snapshot.borrow().topics.clone()
    }

    /// The metadata as last published.
    pub fn snapshot(&self) -> Arc<MetadataSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// The replicated state as applied here.
    pub fn state(&self) -> ClusterState {
        self.core.borrow().state().clone()
    }

    /// A user's SCRAM credential for one mechanism, as applied here.
    pub fn credential(
        &self,
        user: &str,
        mechanism: crate::credentials::ScramMechanism,
    ) -> Option<crate::credentials::ScramCredential> {
        self.core
            .borrow()
            .state()
            .credentials
            .get(user)?
            .get(&mechanism)
            .cloned()
    }

    /// The mechanisms and iterations of the named users' credentials (all
    /// users for `None`), as applied here.
    pub fn credential_infos(
        &self,
        users: Option<&[String]>,
    ) -> Vec<(String, Vec<(crate::credentials::ScramMechanism, i32)>)> {
        let core = self.core.borrow();
        let creds = &core.state().credentials;
        let info = |u: &str| {
            creds
                .get(u)
                .map(|m| m.iter().map(|(k, c)| (*k, c.iterations)).collect())
                .unwrap_or_default()
        };
        match users {
            Some(users) => users.iter().map(|u| (u.clone(), info(u))).collect(),
            None => creds.keys().map(|u| (u.clone(), info(u))).collect(),
        }
    }

    fn build_snapshot(&self) -> (u64, Arc<MetadataSnapshot>) {
        let core = self.core.borrow();
        let s = core.state();
        let mut brokers: Vec<Broker> = s.live_brokers().map(broker_of).collect();
        // This node serves whatever the others think of it: clients may be
        // told of it before its registration is applied.
        if !brokers.iter().any(|b| b.id == self.config.me.id) {
            let m = &self.config.me;
            brokers.push(Broker {
                id: m.id,
                host: m.kafka_host.clone(),
                port: i32::from(m.kafka_port),
                rack: m.rack.clone(),
                data_addr: m.data_addr.clone(),
                xdp_addr: m.xdp_addr.clone(),
                shards: m.shards,
            });
            brokers.sort_by_key(|b| b.id);
        }
        let leader = core.leader();
        let snap = MetadataSnapshot {
            cluster_id: s.cluster_id.clone(),
            controller: if leader == 0 { NodeId(-1) } else { node_id(leader) },
            brokers,
            topics: Arc::new(s.topics.clone()),
            acls: Arc::new(s.acls.clone()),
        };
        (core.applied(), Arc::new(snap))
    }

    async fn publish_now(&self) {
        let (applied, snap) = self.build_snapshot();
        *self.snapshot.borrow_mut() = snap.clone();
        (self.publish)(snap).await;
        self.published.set(self.published.get().max(applied));
        let mut waiters = self.publish_waiters.borrow_mut();
        let (done, rest): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|(i, _)| *i <= applied);
        *waiters = rest;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// Publishes the newest state whenever something changed; changes that
    /// arrive while a publish runs are coalesced into the next one.
    async fn publisher(self: Rc<Self>) {
        let (tx, mut rx) = futures_channel::mpsc::unbounded::<()>();
        *self.kick.borrow_mut() = Some(tx);
        use futures_lite::StreamExt;
        while rx.next().await.is_some() {
            while rx.try_recv().is_ok() {}
            self.publish_now().await;
        }
    }

    fn kick_publisher(&self) {
        if let Some(tx) = self.kick.borrow().as_ref() {
            let _ = tx.unbounded_send(());
        }
    }

    /// Resolves once the snapshot of applied index `index` is published on
    /// this node.
    async fn wait_published(&self, index: u64, deadline: Instant) -> Result<(), ControllerError> {
        if self.published.get() >= index {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.publish_waiters.borrow_mut().push((index, tx));
        self.kick_publisher();
        with_deadline(deadline, self.config.timing.request_timeout, async {
            rx.await.map_err(|_| ControllerError::Stopping)
        })
        .await
    }

    async fn ticker(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(self.config.timing.tick).await;
            self.core.borrow_mut().tick();
            self.drive();
        }
    }

    /// Runs Ready rounds until there is nothing left, sending their
    /// messages and answering what they applied.
    fn drive(&self) {
        loop {
            if self.failed.borrow().is_some() {
                return;
            }
            let round = {
                let mut core = self.core.borrow_mut();
                if !core.has_ready() {
                    break;
                }
                match core.handle_ready() {
                    Ok(r) => r,
                    Err(e) => {
                        error!("the controller's Raft log failed; this node stops serving: {e}");
                        *self.failed.borrow_mut() = Some(e.to_string());
                        return;
                    }
                }
            };
            self.send(round.messages);
            let changed =
                round.snapshot_installed || round.applied.iter().any(|a| a.outcome != Outcome::Empty);
            for a in round.applied {
                self.on_applied(a);
            }
            for rs in round.read_states {
                if let Some(tx) = self.reads.borrow_mut().remove(rs.request_ctx.as_slice()) {
                    let _ = tx.send(rs.index);
                }
            }
            if changed {
                self.after_change();
            }
        }
        let leader = self.core.borrow().is_leader();
        match (leader, self.leader_since.get()) {
            (true, None) => {
                info!(
                    term = self.core.borrow().term(),
                    "this node is the controller leader"
                );
                self.leader_since.set(Some(Instant::now()));
                self.heard.borrow_mut().clear();
                // This executor's controller is this one (one per executor).
                let me = CONTROLLER.with(|c| c.borrow().clone());
                if let Some(me) = me.filter(|c| std::ptr::eq(Rc::as_ptr(c), self)) {
                    me.probe_members_after_election();
                }
            }
            (false, Some(_)) => {
                info!("this node is no longer the controller leader");
                self.leader_since.set(None);
            }
            _ => {}
        }
    }

    fn after_change(&self) {
        let id = self.core.borrow().state().cluster_id.clone();
        if *self.cluster_id.borrow() != id {
            info!(cluster_id = %id, "cluster id");
            *self.cluster_id.borrow_mut() = id;
        }
        self.learn_addresses();
        self.kick_publisher();
    }

    /// Members' RPC addresses (seeds keep theirs from the command line
    /// until they register).
    fn learn_addresses(&self) {
        let core = self.core.borrow();
        let mut addrs = self.addrs.borrow_mut();
        for m in core.state().members.values() {
            if addrs.get(&node_u64(m.id)) != Some(&m.rpc_addr) {
                addrs.insert(node_u64(m.id), m.rpc_addr.clone());
                self.peers.borrow_mut().remove(&node_u64(m.id));
            }
        }
    }

    fn on_applied(&self, a: AppliedEntry) {
        match &a.outcome {
            Outcome::Command(cmd, Err(e)) => {
                debug!(index = a.index, "refused {}: {e}", describe_command(cmd))
            }
            Outcome::Command(cmd, Ok(_)) => info!(index = a.index, "applied {}", describe_command(cmd)),
            Outcome::ConfChange(Ok(cs)) => {
                info!(index = a.index, voters = ?cs.voters, learners = ?cs.learners, "configuration changed")
            }
            Outcome::ConfChange(Err(e)) => warn!(index = a.index, "configuration change refused: {e}"),
            Outcome::Undecodable(e) => error!(index = a.index, "skipped an entry that does not decode: {e}"),
            Outcome::Empty => {}
        }
        if a.context.is_empty() {
            return;
        }
        let Some(tx) = self.pending.borrow_mut().remove(&a.context) else {
            return;
        };
        let answer = match a.outcome {
            Outcome::Command(_, r) => r,
            Outcome::ConfChange(Ok(_)) | Outcome::Empty => Ok(Applied::Nothing),
            Outcome::ConfChange(Err(e)) | Outcome::Undecodable(e) => Err(StateError::NotApplied(e)),
        };
        let _ = tx.send((a.index, answer));
    }

    fn peer(&self, to: u64) -> Option<Rc<Peer>> {
        if let Some(p) = self.peers.borrow().get(&to) {
            return Some(p.clone());
        }
        let addr = self.addrs.borrow().get(&to)?.clone();
        let p = Peer::with_tls(
            node_u64(self.config.me.id),
            addr,
            self.cluster_id.clone(),
            self.config.timing.request_timeout,
            self.config.tls.clone(),
        );
        self.peers.borrow_mut().insert(to, p.clone());
        Some(p)
    }

    fn send(&self, messages: Vec<raft::eraftpb::Message>) {
        let mut by_peer: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for m in messages {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Queued for sending; a lost one is asked for again by the
                // follower's next rejection.
                self.core.borrow_mut().report_snapshot(m.to, true);
            }
            match m.write_to_bytes() {
                Ok(b) => by_peer.entry(m.to).or_default().push(b),
                Err(e) => warn!("cannot encode a Raft message: {e}"),
            }
        }
        for (to, msgs) in by_peer {
            match self.peer(to) {
                Some(p) => p.send_raft(msgs),
                None => {
                    debug!(to, "no address for a Raft peer yet");
                    self.core.borrow_mut().report_unreachable(to);
                }
            }
        }
    }

    /// Raft messages from a peer.
    fn receive(&self, from: u64, messages: Vec<Vec<u8>>) {
        {
            let mut core = self.core.borrow_mut();
            // Only members of this node's Raft configuration may speak to it
            // (a node still waiting for its first snapshot has none and
            // listens to whoever leads). A node of another group, e.g.
            // started with seeds that name this node by mistake, is dropped
            // before raft sees it and cannot disturb elections here.
            let conf = core.conf_state();
            let joining = conf.voters.is_empty() && conf.learners.is_empty();
            let known = conf.voters.contains(&from) || conf.learners.contains(&from);
            if !known && !joining {
                if self.strangers.borrow_mut().insert(from) {
                    warn!(
                        node = %node_id(from),
                        "dropping Raft messages from a node outside this cluster's configuration"
                    );
                }
                return;
            }
            for bytes in messages {
                match raft::eraftpb::Message::parse_from_bytes(&bytes) {
                    Ok(m) if m.from == from => {
                        if let Err(e) = core.step(m) {
                            debug!(from, "raft refused a message: {e}");
                        }
                    }
                    Ok(m) => warn!(
                        from,
                        claimed = m.from,
                        "dropped a Raft message whose sender is not the caller"
                    ),
                    Err(e) => warn!(from, "dropped a Raft message that does not decode: {e}"),
                }
            }
        }
        self.drive();
    }

    fn new_context(&self) -> Vec<u8> {
        let n = self.next_ctx.get();
        self.next_ctx.set(n + 1);
        let mut ctx = node_u64(self.config.me.id).to_be_bytes().to_vec();
        ctx.extend_from_slice(&n.to_be_bytes());
        // A restart reuses counters: the incarnation tells proposals apart.
        ctx.extend_from_slice(&self.incarnation.get().to_be_bytes());
        ctx.extend_from_slice(&std::process::id().to_be_bytes());
        ctx
    }

    /// Leader only: proposes `cmds` and waits until each is applied here.
    async fn propose_local(
        &self,
        cmds: &[Command],
        deadline: Instant,
    ) -> Result<Vec<Answer>, ControllerError> {
        let mut waits = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let ctx = self.new_context();
            let (tx, rx) = oneshot::channel();
            self.pending.borrow_mut().insert(ctx.clone(), tx);
            let r = self.core.borrow_mut().propose(ctx.clone(), cmd);
            if let Err(e) = r {
                self.pending.borrow_mut().remove(&ctx);
                self.drive();
                return Err(match e {
                    CoreError::Raft(raft::Error::ProposalDropped) => ControllerError::NoLeader,
                    e => ControllerError::Failed(e.to_string()),
                });
            }
            waits.push((ctx, rx));
        }
        self.drive();
        let mut out = Vec::with_capacity(waits.len());
        for (ctx, rx) in waits {
            let r = with_deadline(deadline, self.config.timing.request_timeout, async {
                rx.await.map_err(|_| ControllerError::Stopping)
            })
            .await;
            match r {
                Ok(a) => out.push(a),
                Err(e) => {
                    self.pending.borrow_mut().remove(&ctx);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Proposes `cmds` through the leader (this node or another) and waits
    /// until they are applied and published on this node. One answer per
    /// command, in order.
    pub async fn propose_commands(
        &self,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Applied, StateError>>, ControllerError> {
        let deadline = Instant::now() + self.config.timing.request_timeout;
        loop {
            if self.failed.borrow().is_some() {
                return Err(ControllerError::Stopping);
            }
            let (leader, me) = {
                let core = self.core.borrow();
                (core.leader(), core.is_leader())
            };
            let attempt = if me {
                self.propose_local(&cmds, deadline).await.map(|answers| {
                    let index = answers.iter().map(|a| a.0).max().unwrap_or(0);
                    (index, answers.into_iter().map(|a| a.1).collect::<Vec<_>>())
                })
            } else if leader != 0 {
                self.forward(leader, &cmds).await
            } else {
                Err(ControllerError::NoLeader)
            };
            match attempt {
                Ok((index, answers)) => {
                    self.wait_published(index, deadline).await?;
                    return Ok(answers);
                }
                // No leader yet, or it changed under us: wait and retry.
                Err(ControllerError::NoLeader) | Err(ControllerError::Forward(_))
                    if Instant::now() < deadline =>
                {
                    glommio::timer::sleep(self.config.timing.tick).await;
                }
                Err(ControllerError::NoLeader) => return Err(ControllerError::NoLeader),
                Err(e) => return Err(e),
            }
        }
    }

    async fn forward(
        &self,
        leader: u64,
        cmds: &[Command],
    ) -> Result<(u64, Vec<Result<Applied, StateError>>), ControllerError> {
        let peer = self.peer(leader).ok_or(ControllerError::NoLeader)?;
        let body = serde_json::to_vec(cmds).expect("commands serialize");
        let (index, results) = peer
            .propose(body)
            .await
            .map_err(|e| ControllerError::Forward(e.to_string()))?;
        let answers: Vec<Result<Applied, StateError>> = serde_json::from_slice(&results)
            .map_err(|e| ControllerError::Forward(format!("the leader's answer does not decode: {e}")))?;
        if answers.len() != cmds.len() {
            return Err(ControllerError::Forward(
                "the leader answered a different number of commands".into(),
            ));
        }
        Ok((index, answers))
    }

    /// Applies topic commands through the Raft group; one answer per
    /// command. `validate_only`: checked against the current table in order,
    /// nothing proposed.
    pub async fn propose(
        &self,
        cmds: Vec<TopicCommand>,
        validate_only: bool,
    ) -> Vec<Result<TopicDelta, ControllerError>> {
        if validate_only {
            let mut table = TopicTable::clone(&self.table());
            return cmds
                .iter()
                .map(|c| commands::apply(&mut table, c).map_err(ControllerError::from))
                .collect();
        }
        let n = cmds.len();
        let wrapped: Vec<Command> = cmds.into_iter().map(Command::Topic).collect();
        match self.propose_commands(wrapped).await {
            Ok(answers) => answers
                .into_iter()
                .map(|a| match a {
                    Ok(Applied::Topic(d)) => Ok(d),
                    Ok(other) => Err(ControllerError::Failed(format!(
                        "a topic command answered {other:?}"
                    ))),
                    Err(e) => Err(ControllerError::Rejected(e)),
                })
                .collect(),
            Err(e) => (0..n).map(|_| Err(clone_error(&e))).collect(),
        }
    }

    /// A producer id never handed out before in this cluster: from this
    /// node's block, or from a new block taken from the cluster.
    pub async fn next_producer_id(&self) -> Result<i64, ControllerError> {
        let _permit = self
            .id_permit
            .acquire_permit(1)
            .await
            .map_err(|_| ControllerError::Stopping)?;
        {
            let mut ids = self.producer_ids.borrow_mut();
            if ids.0 < ids.1 {
                ids.0 += 1;
                return Ok(ids.0 - 1);
            }
        }
        let cmd = Command::AllocateProducerIds {
            node: self.config.me.id,
            count: PRODUCER_ID_BLOCK,
        };
        let answer = self.propose_commands(vec![cmd]).await?.pop().expect("one answer");
        match answer {
            Ok(Applied::ProducerIds { start, count }) => {
                *self.producer_ids.borrow_mut() = (start + 1, start + count);
                Ok(start)
            }
            Ok(other) => Err(ControllerError::Failed(format!(
                "a producer id block answered {other:?}"
            ))),
            Err(e) => Err(ControllerError::Rejected(e)),
        }
    }

    /// A linearizable read point: resolves once this node applied (and
    /// published) everything the leader had committed when it was asked.
    /// Retried until the deadline: raft drops a ReadIndex while there is no
    /// leader or the leader has not committed in its term yet.
    pub async fn read_barrier(&self) -> Result<(), ControllerError> {
        let deadline = Instant::now() + self.config.timing.request_timeout;
        loop {
            let ctx = self.new_context();
            let (tx, rx) = oneshot::channel();
            self.reads.borrow_mut().insert(ctx.clone(), tx);
            self.core.borrow_mut().read_index(ctx.clone());
            self.drive();
            let attempt =
                glommio::timer::timeout(self.config.timing.tick * 5, async { Ok(rx.await.ok()) }).await;
            self.reads.borrow_mut().remove(&ctx);
            match attempt {
                Ok(Some(index)) => return self.wait_published(index, deadline).await,
                _ if Instant::now() >= deadline => {
                    return Err(ControllerError::Timeout(self.config.timing.request_timeout))
                }
                _ => {}
            }
        }
    }

    /// Registers this node with the leader (a new incarnation), then
    /// heartbeats it; registers again when the leader forgot it.
    async fn member_loop(self: Rc<Self>) {
        loop {
            if self.incarnation.get() == 0 {
                match self.register_self().await {
                    Ok(inc) => {
                        info!(incarnation = inc, "registered with the controller");
                        self.incarnation.set(inc);
                    }
                    Err(e) if refused_for_good(&e.to_string()) => {
                        error!("the cluster refuses this node: {e}");
                        *self.failed.borrow_mut() = Some(format!("registration refused: {e}"));
                        return;
                    }
                    Err(e) => debug!("cannot register yet: {e}"),
                }
            } else if let Err(e) = self.heartbeat_leader().await {
                debug!("heartbeat: {e}");
            }
            if self.core.borrow().is_leader() {
                self.leader_duties().await;
            }
            glommio::timer::sleep(self.config.timing.heartbeat_interval).await;
        }
    }

    async fn register_self(&self) -> Result<u64, ControllerError> {
        let mut leader = self.core.borrow().leader();
        if leader == 0 {
            // A node joining the cluster knows no leader until it is a
            // learner: it asks the seeds in turn, which forward to theirs.
            // A voter waits for its own group's leader: registering through
            // seeds would make a voter of another group a learner here.
            let seeds = &self.config.seeds;
            if seeds.is_empty() || self.core.borrow().is_voter() {
                return Err(ControllerError::NoLeader);
            }
            let n = self.next_ctx.get() as usize % seeds.len();
            self.next_ctx.set(self.next_ctx.get() + 1);
            leader = node_u64(seeds[n].0);
        }
        if leader == node_u64(self.config.me.id) {
            return self.register(self.config.me.clone()).await.map(|r| r.incarnation);
        }
        let peer = self.peer(leader).ok_or(ControllerError::NoLeader)?;
        let reply = peer
            .register(&member_info(&self.config.me))
            .await
            .map_err(|e| ControllerError::Forward(e.to_string()))?;
        if !reply.cluster_id.is_empty()
            && !self.cluster_id.borrow().is_empty()
            && *self.cluster_id.borrow() != reply.cluster_id
        {
            return Err(ControllerError::Forward(format!(
                "the leader is of cluster {}, this node of {}",
                reply.cluster_id,
                self.cluster_id.borrow()
            )));
        }
        Ok(reply.incarnation)
    }

    /// Leader side of a registration: refuses a second live node with the
    /// same id, proposes the registration.
    async fn register(&self, r: Registration) -> Result<RegisterReply, ControllerError> {
        if !self.core.borrow().is_leader() {
            return Err(ControllerError::NoLeader);
        }
        let live_elsewhere = {
            let core = self.core.borrow();
            core.state().members.get(&r.id).is_some_and(|m| {
                m.rpc_addr != r.rpc_addr
                    && m.state != MemberState::Removed
                    && self
                        .heard
                        .borrow()
                        .get(&r.id)
                        .is_some_and(|t| t.elapsed() < self.config.timing.session_timeout)
            })
        };
        if live_elsewhere {
            return Err(ControllerError::Failed(format!(
                "node id {} {ID_IN_USE} at another address",
                r.id
            )));
        }
        let id = r.id;
        // Heard now, before the registration is applied: a leader duty
        // running meanwhile must not judge the new process by the old one's
        // last heartbeat and mark it down.
        self.heard.borrow_mut().insert(id, Instant::now());
        let answer = self
            .propose_commands(vec![Command::Register(r)])
            .await?
            .pop()
            .expect("one answer");
        match answer {
            Ok(Applied::Registered { incarnation, .. }) => {
                self.heard.borrow_mut().insert(id, Instant::now());
                Ok(RegisterReply {
                    cluster_id: self.cluster_id.borrow().clone(),
                    incarnation,
                    leader: self.core.borrow().leader(),
                })
            }
            Ok(other) => Err(ControllerError::Failed(format!(
                "a registration answered {other:?}"
            ))),
            Err(e) => Err(ControllerError::Rejected(e)),
        }
    }

    async fn heartbeat_leader(&self) -> Result<(), ControllerError> {
        let leader = self.core.borrow().leader();
        if leader == 0 {
            return Err(ControllerError::NoLeader);
        }
        if leader == node_u64(self.config.me.id) {
            self.heard.borrow_mut().insert(self.config.me.id, Instant::now());
            return Ok(());
        }
        let peer = self.peer(leader).ok_or(ControllerError::NoLeader)?;
        match peer.heartbeat(self.incarnation.get()).await {
            Ok(_) => Ok(()),
            Err(RpcError::Remote(e)) if refused_for_good(&e) => {
                error!("the cluster removed this node: {e}");
                *self.failed.borrow_mut() = Some(e.clone());
                Err(ControllerError::Forward(e))
            }
            Err(RpcError::Remote(e)) if e.contains("register") => {
                // The leader does not know this incarnation: register again.
                self.incarnation.set(0);
                Err(ControllerError::Forward(e))
            }
            Err(e) => Err(ControllerError::Forward(e.to_string())),
        }
    }

    /// Whether nothing listens on a peer's control-plane address any more:
    /// `Some(true)` when a connection is refused (its process is gone, as
    /// after kill -9), `Some(false)` when connections work (tried
    /// [`LOST_MEMBER_PROBE_PAUSES`] times: a process being killed may close
    /// its connections before its listener), `None` when an attempt timed
    /// out or failed otherwise (a network fault or a pause, not a dead
    /// process).
    async fn control_port_refuses(addr: &str) -> Option<bool> {
        for pause in LOST_MEMBER_PROBE_PAUSES {
            glommio::timer::sleep(pause).await;
            let attempt = futures_lite::future::or(
                async {
                    match glommio::net::TcpStream::connect(addr).await {
                        Err(glommio::GlommioError::IoError(e))
                            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                        {
                            Some(true)
                        }
                        Ok(_) => Some(false),
                        Err(_) => None,
                    }
                },
                async {
                    glommio::timer::sleep(LOST_MEMBER_PROBE_TIMEOUT).await;
                    None
                },
            )
            .await;
            match attempt {
                Some(true) => return Some(true),
                Some(false) => continue,
                None => return None,
            }
        }
        Some(false)
    }

    /// Leader: probes `node`'s control port and marks it down at once when
    /// the port refuses connections (its process is gone), so that the
    /// elections of the partitions it led start now rather than after its
    /// session. Anything else (the connection works: it only reconnected; it
    /// times out: a network fault) is left to the session timeout, so a
    /// pause or a partition is judged as before. `why` says what started the
    /// probe: the connection that carried its heartbeats ended, or this node
    /// was just elected and the member's heartbeats went to the old leader.
    async fn probe_lost_member(self: Rc<Self>, node: NodeId, why: &'static str) {
        // One probe of a member at a time (its heartbeat and Raft
        // connections may end together).
        let Some(_slot) = ProbeSlot::take(&self.probing, node) else {
            return;
        };
        let lost_at = Instant::now();
        let addr = {
            let core = self.core.borrow();
            if !core.is_leader() || node == self.config.me.id {
                return;
            }
            match core.state().members.get(&node) {
                Some(m) if m.alive && m.state != MemberState::Removed => m.rpc_addr.clone(),
                _ => return,
            }
        };
        let refused = Self::control_port_refuses(&addr).await == Some(true);
        let heard_since = self.heard.borrow().get(&node).is_some_and(|t| *t > lost_at);
        if !refused || heard_since || !self.core.borrow().is_leader() {
            return;
        }
        warn!(node = %node, addr = %addr, "{why} and its control port refuses connections; marking it down now");
        // Its last heartbeat must not make the next duty mark it up again;
        // a restart registers and heartbeats anew.
        self.heard.borrow_mut().remove(&node);
        self.probing_down.borrow_mut().insert(node);
        let _ = self
            .propose_commands(vec![Command::SetLiveness { node, alive: false }])
            .await;
        self.probing_down.borrow_mut().remove(&node);
        self.start_elections();
    }

    /// Leader, just elected: probes every other member marked alive. A
    /// member that died with the previous leader (its heartbeats went
    /// there, so no connection here ends) would otherwise be judged by a
    /// whole session counted from this election.
    fn probe_members_after_election(self: &Rc<Self>) {
        let members: Vec<NodeId> = {
            let core = self.core.borrow();
            core.state()
                .members
                .values()
                .filter(|m| m.alive && m.state != MemberState::Removed && m.id != self.config.me.id)
                .map(|m| m.id)
                .collect()
        };
        for node in members {
            let why = "controller leader just elected; member probed";
            glommio::spawn_local(self.clone().probe_lost_member(node, why)).detach();
        }
    }

    /// Follower: the connection that carried the Raft leader `node`'s
    /// messages ended. When its control port refuses connections (its
    /// process is gone), this voter campaigns now instead of after an
    /// election timeout, as a leadership transfer would
    /// (`RaftCore::campaign_after_leader_died`). Surviving voters go in turn,
    /// [`LEADER_LOST_STAGGER`] apart by their rank (lowest id first), so that
    /// they do not split the vote; one that sees a new term by its turn does
    /// nothing. A pause or a network fault (no refusal) is left to the
    /// election timeout, as before.
    async fn raft_leader_lost(self: Rc<Self>, node: NodeId) {
        let dead = node_u64(node);
        let (term, rank, addr) = {
            let core = self.core.borrow();
            if core.is_leader() || core.leader() != dead || !core.is_voter() {
                return;
            }
            let mut survivors: Vec<u64> = core
                .conf_state()
                .voters
                .into_iter()
                .filter(|v| *v != dead)
                .collect();
            survivors.sort_unstable();
            let Some(rank) = survivors.iter().position(|v| *v == core.id()) else {
                return;
            };
            let Some(addr) = core.state().members.get(&node).map(|m| m.rpc_addr.clone()) else {
                return;
            };
            (core.term(), rank, addr)
        };
        if Self::control_port_refuses(&addr).await != Some(true) {
            return;
        }
        glommio::timer::sleep(LEADER_LOST_STAGGER * u32::try_from(rank).unwrap_or(u32::MAX)).await;
        let started = self.core.borrow_mut().campaign_after_leader_died(dead, term);
        match started {
            Ok(true) => {
                warn!(leader = %node, addr = %addr, term, "the controller leader's connection ended and its control port refuses connections; campaigning now");
                self.drive();
            }
            Ok(false) => {}
            Err(e) => warn!("cannot campaign after the controller leader died: {e}"),
        }
    }

    /// Leader side of a heartbeat.
    fn heartbeat(&self, from: NodeId, incarnation: u64) -> Result<HeartbeatReply, String> {
        let core = self.core.borrow();
        if !core.is_leader() {
            return Err(format!(
                "node {} is not the controller leader (leader: {})",
                self.config.me.id,
                node_id(core.leader())
            ));
        }
        match core.state().members.get(&from) {
            Some(m) if m.incarnation == incarnation && m.state != MemberState::Removed => {
                self.heard.borrow_mut().insert(from, Instant::now());
                self.config.peer_hints.heard_from(from);
                Ok(HeartbeatReply {
                    leader: core.leader(),
                    term: core.term(),
                })
            }
            Some(m) if m.state == MemberState::Removed => {
                Err(format!("node {from} was removed from the cluster"))
            }
            _ => Err(format!(
                "node {from} incarnation {incarnation} is not registered; register again"
            )),
        }
    }

    /// The leader's periodic work: the cluster id, liveness, partition
    /// leaders, learners, draining.
    async fn leader_duties(self: &Rc<Self>) {
        let (cluster_id_missing, members, conf) = {
            let core = self.core.borrow();
            (
                core.state().cluster_id.is_empty(),
                core.state().members.clone(),
                core.conf_state(),
            )
        };
        if cluster_id_missing {
            let id = self.config.local_cluster_id.clone();
            let _ = self
                .propose_commands(vec![Command::InitCluster { cluster_id: id }])
                .await;
            return;
        }
        self.ensure_offsets_topic().await;
        let since = self.leader_since.get().unwrap_or_else(Instant::now);
        let session = self.config.timing.session_timeout;
        let mut cmds = Vec::new();
        for m in members.values().filter(|m| m.state != MemberState::Removed) {
            if self.probing_down.borrow().contains(&m.id) {
                continue;
            }
            let heard = self.heard.borrow().get(&m.id).copied();
            let last = heard.unwrap_or(since).max(since);
            let alive = m.id == self.config.me.id || last.elapsed() < session;
            // As applied now: the snapshot above is from before an await.
            let marked_alive = self
                .core
                .borrow()
                .state()
                .members
                .get(&m.id)
                .is_some_and(|x| x.alive);
            if marked_alive && !alive {
                warn!(node = %m.id, "member missed its session; marking it down");
                cmds.push(Command::SetLiveness {
                    node: m.id,
                    alive: false,
                });
            } else if !marked_alive && alive && heard.is_some() {
                cmds.push(Command::SetLiveness {
                    node: m.id,
                    alive: true,
                });
            }
        }
        if !cmds.is_empty() {
            let _ = self.propose_commands(cmds).await;
        }
        self.balance_leaders();
        self.start_reassignments();
        self.start_elections();
        // A removed leader hands leadership to another voter, which then
        // takes it out of the configuration.
        let me = self.config.me.id;
        if members.get(&me).is_some_and(|m| m.state == MemberState::Removed) {
            if let Some(to) = conf.voters.iter().find(|v| **v != node_u64(me)) {
                info!(to = %node_id(*to), "this node was removed; handing over the leadership");
                self.core.borrow_mut().transfer_leader(*to);
                self.drive();
            }
            return;
        }
        // Raft takes one configuration change at a time.
        let pending_conf = self.core.borrow().has_pending_conf();
        if !pending_conf {
            let known =
                |n: NodeId| conf.voters.contains(&node_u64(n)) || conf.learners.contains(&node_u64(n));
            if let Some(m) = members
                .values()
                .find(|m| m.state != MemberState::Removed && !known(m.id))
            {
                info!(node = %m.id, "adding a member as a Raft learner");
                self.conf_change(ConfChangeType::AddLearnerNode, m.id).await;
                return;
            }
            if let Some(m) = members
                .values()
                .find(|m| m.state == MemberState::Removed && known(m.id) && m.id != self.config.me.id)
            {
                info!(node = %m.id, "removing a removed member from the Raft group");
                self.conf_change(ConfChangeType::RemoveNode, m.id).await;
                return;
            }
        }
        for m in members.values().filter(|m| m.state == MemberState::Draining) {
            let plan = self.drain_plan(m.id);
            match plan {
                Some(moves) if !moves.is_empty() => {
                    info!(node = %m.id, partitions = moves.len(), "draining: moving replicas");
                    let _ = self.propose_commands(vec![Command::Reassign(moves)]).await;
                }
                Some(_) => {
                    info!(node = %m.id, "drained; removing the member");
                    let _ = self
                        .propose_commands(vec![Command::SetMemberState {
                            node: m.id,
                            state: MemberState::Removed,
                        }])
                        .await;
                }
                None => warn!(node = %m.id, "cannot drain: no live member to move its replicas to"),
            }
        }
    }

    /// Creates the group coordinator's topic once, when enough members to
    /// hold its replicas (three, or every voter if fewer) are live.
    async fn ensure_offsets_topic(&self) {
        if !self.config.offsets_topic {
            return;
        }
        let command = {
            let core = self.core.borrow();
            let s = core.state();
            if s.topics.get(topics::OFFSETS_TOPIC).is_some() {
                return;
            }
            // The voters are the cluster's founding members: the factor the
            // cluster was built for (Raft's configuration is the authority).
            let voters = core.conf_state().voters.len();
            let rf = voters.clamp(1, topics::OFFSETS_REPLICATION_FACTOR);
            let brokers: Vec<(NodeId, Option<String>)> =
                s.placeable().map(|m| (m.id, m.rack.clone())).collect();
            if brokers.len() < rf {
                return;
            }
            let partitions = topics::OFFSETS_PARTITIONS as usize;
            let Ok(assignments) = crate::placement::place(&brokers, &s.topics, partitions, rf) else {
                return;
            };
            Command::Topic(TopicCommand::CreateTopic {
                name: topics::OFFSETS_TOPIC.to_string(),
                id: topics::new_topic_id(),
                config: topics::ConfigOverrides::new(),
                assignments,
            })
        };
        info!(
            topic = topics::OFFSETS_TOPIC,
            "creating the group coordinator's topic"
        );
        let _ = self.propose_commands(vec![command]).await;
    }

    async fn conf_change(&self, kind: ConfChangeType, node: NodeId) {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node_u64(node);
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        // Voter changes go through a joint configuration, left automatically.
        cc.set_transition(ConfChangeTransition::Implicit);
        let r = self.core.borrow_mut().propose_conf_change(self.new_context(), cc);
        if let Err(e) = r {
            warn!(node = %node, "configuration change not proposed: {e}");
        }
        self.drive();
    }

    /// Leader only: starts a round of partition leader elections (see
    /// [`crate::elections`]) unless one is running. The round runs as its
    /// own task, so the leader's other duties do not wait for it.
    fn start_elections(self: &Rc<Self>) {
        if !self.elections_in_flight.borrow().is_empty() {
            return;
        }
        let round = {
            let core = self.core.borrow();
            let mut requests = self.election_requests.borrow_mut();
            elections::prune_requests(core.state(), &mut requests);
            let mut preferred = self.preferred_requests.borrow_mut();
            preferred.retain(|k, e| requests.get(k) == Some(e));
            let mut reassigning = self.reassignment_elections.borrow_mut();
            reassigning.retain(|k, (e, _)| requests.get(k) == Some(e));
            let mut round = elections::plan(core.state(), &requests, &self.elections_in_flight.borrow());
            for e in &mut round {
                let key = (e.topic.clone(), e.partition);
                let at = Epoch(e.epoch.0 - 1);
                if preferred.get(&key) == Some(&at) {
                    e.prefer = e.replicas.first().copied();
                }
                if let Some((_, target)) = reassigning.get(&key).filter(|(e, _)| *e == at) {
                    e.prefer = target.first().copied();
                    e.eligible = Some(target.clone());
                }
            }
            round
        };
        if round.is_empty() {
            return;
        }
        self.elections_in_flight
            .borrow_mut()
            .extend(round.iter().map(|e| (e.topic.clone(), e.partition)));
        let task = glommio::spawn_local(self.clone().election_round(round)).detach();
        *self.election_round.borrow_mut() = Some(task);
    }

    /// One round: every election prepares its epoch on the live replicas
    /// at once (each answer waited for at most
    /// [`elections::PREPARE_TIMEOUT`]), then the decided moves are proposed,
    /// one command per partition so that a stale one refuses only itself.
    async fn election_round(self: Rc<Self>, round: Vec<Election>) {
        let _in_flight = InFlight(self.clone());
        let answers = futures::future::join_all(round.iter().map(|e| self.prepare_replicas(e))).await;
        let mut cmds = Vec::new();
        for (e, answers) in round.iter().zip(answers) {
            let key = (e.topic.clone(), e.partition);
            match elections::decide(e, &answers) {
                Some(mv) => {
                    info!(
                        topic = %e.topic,
                        partition = e.partition,
                        epoch = %e.epoch,
                        leader = %mv.leader,
                        answers = answers.len(),
                        "partition leader elected"
                    );
                    self.no_majority_warned.borrow_mut().remove(&key);
                    cmds.push(Command::MoveLeaders(vec![mv]));
                }
                None if e.eligible.is_some() && answers.len() >= majority(e.replicas.len()) => info!(
                    topic = %e.topic,
                    partition = e.partition,
                    epoch = %e.epoch,
                    "reassignment: no target replica has the best log yet; retrying"
                ),
                None => self.warn_no_majority(e, answers.len()),
            }
        }
        if cmds.is_empty() {
            return;
        }
        match self.propose_commands(cmds).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) => {}
                        // Another leadership change came first; the next
                        // round looks again from the new epoch.
                        Err(e @ StateError::StaleElection { .. }) => info!("election not applied: {e}"),
                        Err(e) => warn!("election not applied: {e}"),
                    }
                }
            }
            Err(e) => warn!("elected partition leaders not applied: {e}"),
        }
    }

    /// The answers of `e`'s live replicas to a prepare of its epoch; none
    /// are asked when fewer than a majority of the replica set is live, so
    /// that an election that cannot win fences no replica.
    async fn prepare_replicas(&self, e: &Election) -> Vec<ElectionInfo> {
        if e.ask.len() < majority(e.replicas.len()) {
            return Vec::new();
        }
        let asked = e.ask.iter().map(|node| async move {
            let answer = glommio::timer::timeout(elections::PREPARE_TIMEOUT, async {
                Ok(self.prepare_replica(*node, e).await)
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", elections::PREPARE_TIMEOUT)));
            answer.map_err(|why| {
                debug!(
                    topic = %e.topic,
                    partition = e.partition,
                    epoch = %e.epoch,
                    node = %node,
                    "prepare not answered: {why}"
                );
            })
        });
        futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One replica's answer to a prepare of `e`'s epoch: this node's
    /// through [`LocalReplicas`], another's through the RPC.
    async fn prepare_replica(&self, node: NodeId, e: &Election) -> Result<ElectionInfo, String> {
        if node == self.config.me.id {
            let info = self.prepare_local(e.topic.clone(), e.partition, e.epoch).await?;
            if info.node != node {
                return Err(format!("this node's replica answered as node {}", info.node));
            }
            return Ok(info);
        }
        let peer = self
            .peer(node_u64(node))
            .ok_or_else(|| format!("no RPC address for node {node}"))?;
        let reply = peer
            .prepare_election(&e.topic, e.partition, e.epoch)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ElectionInfo {
            node,
            epoch: e.epoch,
            last_epoch: reply.last_epoch,
            log_end: reply.log_end,
        })
    }

    /// This node's replica of the partition prepares `epoch`.
    async fn prepare_local(
        &self,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> Result<ElectionInfo, String> {
        let replicas = self
            .local_replicas
            .borrow()
            .clone()
            .ok_or_else(|| "replicas not ready".to_string())?;
        replicas.prepare(topic, partition, epoch).await
    }

    /// Warns that `e` could not elect, at most once per partition per
    /// [`elections::NO_MAJORITY_WARN_INTERVAL`].
    fn warn_no_majority(&self, e: &Election, answers: usize) {
        let now = Instant::now();
        let mut warned = self.no_majority_warned.borrow_mut();
        warned.retain(|_, at| now.duration_since(*at) < elections::NO_MAJORITY_WARN_INTERVAL);
        let key = (e.topic.clone(), e.partition);
        if warned.contains_key(&key) {
            return;
        }
        warned.insert(key, now);
        warn!(
            topic = %e.topic,
            partition = e.partition,
            epoch = %e.epoch,
            replicas = e.replicas.len(),
            live = e.ask.len(),
            answers,
            needed = majority(e.replicas.len()),
            "cannot elect a partition leader: fewer than a majority of its replicas answered; retrying"
        );
    }

    /// Asks for a new election of `topic`/`partition`'s leader: the data
    /// plane calls it when it is assigned leadership of an epoch it cannot
    /// lead (it led that epoch before a restart). On the controller leader
    /// the partition is queued for the next election round; elsewhere the
    /// request is sent to the leader (retried until the request timeout
    /// while no leader is known or it cannot be reached). Ok means the
    /// leader holds the request, in memory: if the controller leader
    /// changes before the election, the request is lost, and a node that
    /// still cannot lead asks again.
    pub async fn request_election(&self, topic: String, partition: i32) -> Result<(), ControllerError> {
        self.request_election_of(topic, partition, false).await
    }

    /// A preferred-leader election of `topic`/`partition` (ElectLeaders):
    /// the first replica of the set becomes the leader if it is live and its
    /// log is as good as the best of a majority; waits (up to `timeout`)
    /// until this node has applied the outcome.
    pub async fn elect_preferred(
        &self,
        topic: String,
        partition: i32,
        timeout: Duration,
    ) -> Result<PreferredOutcome, ControllerError> {
        let (preferred, epoch) = {
            let core = self.core.borrow();
            let a = core
                .state()
                .topics
                .get(&topic)
                .and_then(|m| m.assignment(PartitionId(partition)))
                .ok_or_else(|| {
                    ControllerError::Rejected(StateError::UnknownPartition {
                        topic: topic.clone(),
                        partition,
                    })
                })?;
            let preferred = a.replicas[0];
            if a.leader == preferred {
                return Ok(PreferredOutcome::NotNeeded);
            }
            let live = core
                .state()
                .members
                .get(&preferred)
                .is_some_and(|m| m.alive && m.state != MemberState::Removed);
            if a.replicas.len() < 2 || !live {
                return Ok(PreferredOutcome::NotAvailable);
            }
            (preferred, a.leader_epoch)
        };
        self.request_election_of(topic.clone(), partition, true).await?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let moved = {
                let core = self.core.borrow();
                core.state()
                    .topics
                    .get(&topic)
                    .and_then(|m| m.assignment(PartitionId(partition)))
                    .filter(|a| a.leader_epoch > epoch)
                    .map(|a| a.leader)
            };
            match moved {
                Some(l) if l == preferred => return Ok(PreferredOutcome::Elected),
                Some(_) => return Ok(PreferredOutcome::NotAvailable),
                None => glommio::timer::sleep(self.config.timing.tick).await,
            }
        }
        Ok(PreferredOutcome::NotAvailable)
    }

    async fn request_election_of(
        &self,
        topic: String,
        partition: i32,
        preferred: bool,
    ) -> Result<(), ControllerError> {
        let deadline = Instant::now() + self.config.timing.request_timeout;
        loop {
            if self.failed.borrow().is_some() {
                return Err(ControllerError::Stopping);
            }
            let (leader, me) = {
                let core = self.core.borrow();
                (core.leader(), core.is_leader())
            };
            let attempt = if me {
                self.queue_election(&topic, partition, preferred)
            } else if leader != 0 {
                match self.peer(leader) {
                    None => Err(ControllerError::NoLeader),
                    Some(peer) => match peer.request_election(&topic, partition, preferred).await {
                        Ok(()) => Ok(()),
                        // The leader refused the request itself: final.
                        Err(RpcError::Remote(why)) if !why.contains(NOT_LEADER) => {
                            return Err(ControllerError::Forward(why))
                        }
                        Err(e) => Err(ControllerError::Forward(e.to_string())),
                    },
                }
            } else {
                Err(ControllerError::NoLeader)
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(ControllerError::NoLeader) | Err(ControllerError::Forward(_))
                    if Instant::now() < deadline =>
                {
                    glommio::timer::sleep(self.config.timing.tick).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leader side of an election request: holds it until the partition's
    /// leader epoch moves past the current one.
    fn queue_election(&self, topic: &str, partition: i32, preferred: bool) -> Result<(), ControllerError> {
        let core = self.core.borrow();
        if !core.is_leader() {
            return Err(ControllerError::NoLeader);
        }
        let a = core
            .state()
            .topics
            .get(topic)
            .and_then(|m| m.assignment(PartitionId(partition)))
            .ok_or_else(|| {
                ControllerError::Rejected(StateError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })
            })?;
        if a.replicas.len() < 2 {
            return Err(ControllerError::Failed(format!(
                "partition {topic}/{partition} has one replica: there is no other to elect"
            )));
        }
        let mut requests = self.election_requests.borrow_mut();
        let key = (topic.to_string(), partition);
        if !requests.contains_key(&key) && requests.len() >= elections::ELECTION_REQUESTS_MAX {
            return Err(ControllerError::Failed(format!(
                "{} election requests are waiting already (the limit)",
                elections::ELECTION_REQUESTS_MAX
            )));
        }
        info!(topic, partition, epoch = %a.leader_epoch, preferred, "election requested");
        if preferred {
            self.preferred_requests
                .borrow_mut()
                .insert(key.clone(), a.leader_epoch);
        }
        requests.insert(key, a.leader_epoch);
        Ok(())
    }

    /// Leader: every [`elections::BALANCE_INTERVAL`], queues a balancing
    /// election for each partition led by a replica other than its
    /// preferred one (the first of the set, where placement spread the
    /// leaders) whose preferred replica has been live for
    /// [`elections::BALANCE_SETTLE`] (time to catch up), at most once per
    /// partition per [`elections::BALANCE_RETRY`]: the preferred replica
    /// wins only with a log as good as the best, otherwise the election
    /// keeps a leader with the best log.
    fn balance_leaders(&self) {
        if !self.config.auto_leader_rebalance {
            return;
        }
        let now = Instant::now();
        let settled: BTreeSet<NodeId> = {
            let core = self.core.borrow();
            let mut since = self.alive_since.borrow_mut();
            let members = &core.state().members;
            since.retain(|n, _| members.get(n).is_some_and(|m| m.alive));
            for m in members.values().filter(|m| m.alive) {
                since.entry(m.id).or_insert(now);
            }
            since
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= elections::BALANCE_SETTLE)
                .map(|(n, _)| *n)
                .collect()
        };
        if self
            .last_balance
            .get()
            .is_some_and(|t| now.duration_since(t) < elections::BALANCE_INTERVAL)
        {
            return;
        }
        self.last_balance.set(Some(now));
        let candidates = elections::unbalanced(self.core.borrow().state(), &settled);
        let mut tried = self.balance_tried.borrow_mut();
        tried.retain(|_, t| now.duration_since(*t) < elections::BALANCE_RETRY);
        let mut queued = 0;
        for (key, epoch) in candidates {
            if tried.contains_key(&key)
                || self.election_requests.borrow().len() >= elections::ELECTION_REQUESTS_MAX
            {
                continue;
            }
            tried.insert(key.clone(), now);
            self.preferred_requests.borrow_mut().insert(key.clone(), epoch);
            self.election_requests.borrow_mut().insert(key, epoch);
            queued += 1;
        }
        if queued > 0 {
            info!(
                partitions = queued,
                "moving leadership back to preferred replicas"
            );
        }
    }

    /// Leader: starts a round of reassignment checks unless one is running
    /// (as its own task, so the other duties do not wait for its calls).
    fn start_reassignments(self: &Rc<Self>) {
        if self.reassigning.get() || self.core.borrow().state().reassignments.is_empty() {
            return;
        }
        self.reassigning.set(true);
        let c = self.clone();
        glommio::spawn_local(async move {
            c.reassignment_round().await;
            c.reassigning.set(false);
        })
        .detach();
    }

    /// For each pending reassignment (at most
    /// [`elections::REASSIGNMENTS_PER_ROUND_MAX`]), asks the partition's
    /// leader which replicas are in sync at the current epoch. Once every
    /// target replica is: with the leader in the target, proposes
    /// `CompleteReassignment` at that epoch; else queues an election that
    /// only target replicas may win (the next round then completes).
    async fn reassignment_round(&self) {
        let pending: Vec<(PartitionKey, Vec<NodeId>, NodeId, Epoch)> = {
            let core = self.core.borrow();
            let s = core.state();
            s.reassignments
                .iter()
                .filter_map(|(key, r)| {
                    let a = s
                        .topics
                        .get(&key.0)
                        .and_then(|m| m.assignment(PartitionId(key.1)))?;
                    let live = s.members.get(&a.leader).is_some_and(|m| m.alive);
                    live.then(|| (key.clone(), r.target.clone(), a.leader, a.leader_epoch))
                })
                .take(elections::REASSIGNMENTS_PER_ROUND_MAX)
                .collect()
        };
        let asked = pending
            .iter()
            .map(|((topic, partition), _, leader, _)| async move {
                glommio::timer::timeout(elections::INSYNC_TIMEOUT, async {
                    Ok(self.insync_of(*leader, topic, *partition).await)
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", elections::INSYNC_TIMEOUT)))
            });
        let answers = futures::future::join_all(asked).await;
        let mut completes = Vec::new();
        for ((key, target, leader, epoch), answer) in pending.into_iter().zip(answers) {
            let (topic, partition) = key.clone();
            let insync = match answer {
                Ok((at, nodes)) if at == epoch => nodes,
                Ok((at, _)) => {
                    debug!(topic, partition, %epoch, leader_epoch = %at, "reassignment: the leader is at another epoch");
                    continue;
                }
                Err(why) => {
                    debug!(topic, partition, %leader, "reassignment: in-sync replicas not answered: {why}");
                    continue;
                }
            };
            let behind: Vec<NodeId> = target.iter().copied().filter(|n| !insync.contains(n)).collect();
            if !behind.is_empty() {
                debug!(
                    topic,
                    partition,
                    ?behind,
                    "reassignment: target replicas catching up"
                );
                continue;
            }
            if target.contains(&leader) {
                info!(topic, partition, %epoch, ?target, "reassignment: the target replicas are in sync; completing");
                completes.push(Command::CompleteReassignment {
                    topic,
                    partition,
                    leader_epoch: epoch,
                });
            } else {
                let mut requests = self.election_requests.borrow_mut();
                if requests.len() >= elections::ELECTION_REQUESTS_MAX && !requests.contains_key(&key) {
                    continue;
                }
                info!(topic, partition, %epoch, %leader, ?target, "reassignment: the target replicas are in sync; moving leadership into the target");
                requests.insert(key.clone(), epoch);
                self.reassignment_elections
                    .borrow_mut()
                    .insert(key, (epoch, target));
            }
        }
        if completes.is_empty() {
            return;
        }
        match self.propose_commands(completes).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) => {}
                        Err(e @ StateError::StaleElection { .. }) => info!("reassignment not completed: {e}"),
                        Err(e) => warn!("reassignment not completed: {e}"),
                    }
                }
            }
            Err(e) => warn!("reassignments not completed: {e}"),
        }
    }

    /// The in-sync replicas of `topic`/`partition` as `node` (its leader)
    /// answers: this node's through [`LocalReplicas`], another's through the
    /// RPC.
    async fn insync_of(
        &self,
        node: NodeId,
        topic: &str,
        partition: i32,
    ) -> Result<(Epoch, Vec<NodeId>), String> {
        if node == self.config.me.id {
            return self.insync_local(topic.to_string(), partition).await;
        }
        let peer = self
            .peer(node_u64(node))
            .ok_or_else(|| format!("no RPC address for node {node}"))?;
        peer.insync_replicas(topic, partition)
            .await
            .map_err(|e| e.to_string())
    }

    async fn insync_local(&self, topic: String, partition: i32) -> Result<(Epoch, Vec<NodeId>), String> {
        let replicas = self
            .local_replicas
            .borrow()
            .clone()
            .ok_or_else(|| "replicas not ready".to_string())?;
        replicas.insync(topic, partition).await
    }

    /// AlterPartitionReassignments for one partition: `Some(target)` starts
    /// (or replaces) a reassignment, `None` cancels the one in progress.
    pub async fn alter_reassignment(
        &self,
        topic: String,
        partition: i32,
        target: Option<Vec<NodeId>>,
    ) -> Result<(), ControllerError> {
        let cmd = match target {
            Some(target) => Command::StartReassignment {
                topic,
                partition,
                target,
            },
            None => Command::CancelReassignment { topic, partition },
        };
        let answer = self.propose_commands(vec![cmd]).await?.pop().expect("one answer");
        answer.map(drop).map_err(ControllerError::Rejected)
    }

    /// The reassignments in progress, with each partition's current replica
    /// set, as this node applied them.
    pub fn reassignments(&self) -> Vec<(PartitionKey, Vec<NodeId>, ReassignmentState)> {
        let core = self.core.borrow();
        let s = core.state();
        s.reassignments
            .iter()
            .filter_map(|(key, r)| {
                let a = s.topics.get(&key.0)?.assignment(PartitionId(key.1))?;
                Some((key.clone(), a.replicas.clone(), r.clone()))
            })
            .collect()
    }

    /// Replica sets without `node`: each replica of it replaced by the
    /// active member that leads the fewest partitions and is not in the set
    /// . `None` if
    /// some set has no candidate.
    fn drain_plan(&self, node: NodeId) -> Option<Vec<Reassignment>> {
        let core = self.core.borrow();
        let s = core.state();
        let mut load: BTreeMap<NodeId, usize> = s
            .placeable()
            .filter(|m| m.id != node)
            .map(|m| (m.id, 0))
            .collect();
        for meta in s.topics.topics.values() {
            for a in &meta.assignments {
                for r in &a.replicas {
                    if let Some(l) = load.get_mut(r) {
                        *l += 1;
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (name, meta) in &s.topics.topics {
            for (p, a) in meta.assignments.iter().enumerate() {
                if !a.replicas.contains(&node) {
                    continue;
                }
                let pick = least_loaded(&load, &a.replicas)?;
                *load.entry(pick).or_insert(0) += 1;
                let replicas = a
                    .replicas
                    .iter()
                    .map(|r| if *r == node { pick } else { *r })
                    .collect();
                out.push(Reassignment {
                    topic: name.clone(),
                    partition: p as i32,
                    replicas,
                });
            }
        }
        Some(out)
    }

    /// Starts draining `node` (decommission); the leader moves its replicas
    /// away, then removes it.
    pub async fn decommission(&self, node: NodeId) -> Result<(), ControllerError> {
        let answer = self
            .propose_commands(vec![Command::SetMemberState {
                node,
                state: MemberState::Draining,
            }])
            .await?
            .pop()
            .expect("one answer");
        answer.map(drop).map_err(ControllerError::Rejected)
    }

    /// The cluster as this node sees it, after a read barrier when `fresh`
    /// (linearizable); JSON for `GET /v1/cluster` and `cluster status`.
    pub async fn status(&self, fresh: bool) -> Result<serde_json::Value, ControllerError> {
        if fresh {
            self.read_barrier().await?;
        }
        let core = self.core.borrow();
        let s = core.state();
        let conf = core.conf_state();
        let led = s.leaders_per_node();
        let heard = self.heard.borrow();
        let members: Vec<serde_json::Value> = s
            .members
            .values()
            .map(|m| {
                serde_json::json!({
                    "node_id": m.id.0,
                    "kafka_addr": format!("{}:{}", m.kafka_host, m.kafka_port),
                    "rpc_addr": m.rpc_addr,
                    "data_addr": m.data_addr,
                    "xdp_addr": m.xdp_addr,
                    "rack": m.rack,
                    "shards": m.shards,
                    "state": m.state,
                    "alive": m.alive,
                    "incarnation": m.incarnation,
                    "voter": conf.voters.contains(&node_u64(m.id)),
                    "last_heard_ms": heard.get(&m.id).map(|t| t.elapsed().as_millis() as u64),
                    "partitions_led": led.get(&m.id).copied().unwrap_or(0),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "cluster_id": s.cluster_id,
            "node_id": self.config.me.id.0,
            "term": core.term(),
            "leader_id": match core.leader() {
                0 => -1,
                l => node_id(l).0,
            },
            "voters": conf.voters.iter().map(|v| node_id(*v).0).collect::<Vec<_>>(),
            "learners": conf.learners.iter().map(|v| node_id(*v).0).collect::<Vec<_>>(),
            "applied_index": core.applied(),
            "commit_index": core.commit_index(),
            "members": members,
            "topics": s.topics.topics.len(),
            "partitions": s.topics.topics.values().map(|t| t.assignments.len()).sum::<usize>(),
        }))
    }
}

/// Phrases of the refusals that retrying cannot cure: another live node
/// has this id, or the id was removed from the cluster.
const ID_IN_USE: &str = "is in use by a live node";
const ID_REMOVED: &str = "was removed from the cluster";
/// The phrase of a refusal by a node that is not the controller leader.
const NOT_LEADER: &str = "is not the controller leader";

/// Empties the controller's election in-flight set when the round that
/// filled it ends, cancelled or not.
struct InFlight(Rc<Controller>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.elections_in_flight.borrow_mut().clear();
    }
}

fn refused_for_good(error: &str) -> bool {
    error.contains(ID_IN_USE) || error.contains(ID_REMOVED)
}

/// The candidate with the fewest replicas that is not in `set` (lowest id
/// on ties).
fn least_loaded(load: &BTreeMap<NodeId, usize>, set: &[NodeId]) -> Option<NodeId> {
    load.iter()
        .filter(|(n, _)| !set.contains(n))
        .min_by_key(|(n, l)| (**l, **n))
        .map(|(n, _)| *n)
}

fn clone_error(e: &ControllerError) -> ControllerError {
    match e {
        ControllerError::NoLeader => ControllerError::NoLeader,
        ControllerError::Timeout(d) => ControllerError::Timeout(*d),
        ControllerError::Stopping => ControllerError::Stopping,
        ControllerError::Rejected(s) => ControllerError::Rejected(s.clone()),
        ControllerError::Command(c) => ControllerError::Command(c.clone()),
        ControllerError::Forward(s) => ControllerError::Forward(s.clone()),
        ControllerError::Failed(s) => ControllerError::Failed(s.clone()),
    }
}

async fn with_deadline<T>(
    deadline: Instant,
    limit: Duration,
    f: impl Future<Output = Result<T, ControllerError>>,
) -> Result<T, ControllerError> {
    let left = deadline.saturating_duration_since(Instant::now());
    glommio::timer::timeout(left, async { Ok(f.await) })
        .await
        .map_err(|_| ControllerError::Timeout(limit))?
}

fn broker_of(m: &crate::state::Member) -> Broker {
    Broker {
        id: m.id,
        host: m.kafka_host.clone(),
        port: i32::from(m.kafka_port),
        rack: m.rack.clone(),
        data_addr: m.data_addr.clone(),
        xdp_addr: m.xdp_addr.clone(),
        shards: m.shards,
    }
}

fn member_info(r: &Registration) -> MemberInfo {
    MemberInfo {
        node_id: node_u64(r.id),
        kafka_host: r.kafka_host.clone(),
        kafka_port: r.kafka_port,
        rpc_addr: r.rpc_addr.clone(),
        rack: r.rack.clone(),
        shards: r.shards,
        data_addr: r.data_addr.clone(),
        xdp_addr: r.xdp_addr.clone(),
    }
}

/// The seeds must be the voters the stored configuration has; the one
/// difference allowed is a seed that was decommissioned since (removed from
/// the cluster and the voters). Without seeds, this node must be the only
/// voter.
fn check_voters(config: &ControllerConfig, core: &RaftCore) -> Result<(), BootstrapError> {
    let mut stored: Vec<NodeId> = core.conf_state().voters.iter().map(|v| node_id(*v)).collect();
    stored.sort_unstable();
    if stored.is_empty() {
        return Ok(()); // a joining node before its first snapshot
    }
    let show = |v: &[NodeId]| v.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",");
    let mut seeds: Vec<NodeId> = config.seeds.iter().map(|(n, _)| *n).collect();
    seeds.sort_unstable();
    if seeds.is_empty() {
        if stored != [config.me.id] {
            return Err(BootstrapError::Config(format!(
                "this data directory belongs to a cluster whose voters are nodes {}; start it with --seeds",
                show(&stored)
            )));
        }
        return Ok(());
    }
    if seeds == stored {
        return Ok(());
    }
    let members = &core.state().members;
    let removed = |n: &NodeId| members.get(n).is_some_and(|m| m.state == MemberState::Removed);
    let only_removed_extra =
        stored.iter().all(|v| seeds.contains(v)) && seeds.iter().filter(|s| !stored.contains(s)).all(removed);
    if !only_removed_extra {
        return Err(BootstrapError::Config(format!(
            "--seeds names voters {} but this data directory's cluster has voters {}",
            show(&seeds),
            show(&stored)
        )));
    }
    warn!(
        seeds = %show(&seeds),
        voters = %show(&stored),
        "some seeds were decommissioned since the cluster started; the stored voters hold"
    );
    Ok(())
}

/// One line for the log about an applied command (not the whole command:
/// a topic of thousands of partitions would make a line of thousands).
fn describe_command(cmd: &Command) -> String {
    match cmd {
        Command::InitCluster { cluster_id } => format!("cluster id {cluster_id}"),
        Command::Topic(TopicCommand::CreateTopic {
            name, assignments, ..
        }) => format!(
            "create topic {name} ({} partitions, replication factor {})",
            assignments.len(),
            assignments.first().map_or(0, Vec::len)
        ),
        Command::Topic(TopicCommand::DeleteTopic { name, .. }) => format!("delete topic {name}"),
        Command::Topic(TopicCommand::CreatePartitions {
            name,
            new_assignments,
        }) => {
            format!("add {} partitions to topic {name}", new_assignments.len())
        }
        Command::Topic(TopicCommand::AlterConfig { name, .. }) => {
            format!("change the config of topic {name}")
        }
        Command::Register(r) => format!("register node {} (rpc {})", r.id, r.rpc_addr),
        Command::SetLiveness { node, alive } => format!("node {node} {}", if *alive { "up" } else { "down" }),
        Command::SetMemberState { node, state } => format!("node {node} {state:?}"),
        Command::MoveLeaders(m) => format!("move leadership of {} partitions", m.len()),
        Command::Reassign(m) => format!("reassign {} partitions", m.len()),
        Command::StartReassignment {
            topic,
            partition,
            target,
        } => format!("start reassigning {topic}/{partition} to {target:?}"),
        Command::CompleteReassignment { topic, partition, .. } => {
            format!("complete the reassignment of {topic}/{partition}")
        }
        Command::CancelReassignment { topic, partition } => {
            format!("cancel the reassignment of {topic}/{partition}")
        }
        Command::AllocateProducerIds { node, count } => format!("{count} producer ids for node {node}"),
        Command::AlterCredentials(c) => format!(
            "change SCRAM credentials of user {}",
            c.first().map_or("", |c| c.user.as_str())
        ),
        Command::CreateAcl(b) => format!(
            "create ACL {} {} on resource type {} {} (pattern {}) operation {}",
            if b.permission == crate::acls::permission::ALLOW {
                "allow"
            } else {
                "deny"
            },
            b.principal,
            b.resource_type,
            b.resource_name,
            b.pattern_type,
            b.operation
        ),
        Command::DeleteAcls(_) => "delete ACLs".into(),
    }
}

/// One line about an applied topic change.
pub fn describe(change: &TopicChange) -> String {
    match change {
        TopicChange::Created { name, meta } => format!(
            "created topic {name} ({} partitions, replication factor {})",
            meta.partitions(),
            meta.replication_factor()
        ),
        TopicChange::Deleted { name, .. } => format!("deleted topic {name}"),
        TopicChange::PartitionsAdded { name, from, to, .. } => {
            format!("added partitions {from}..{to} to topic {name}")
        }
        TopicChange::ConfigChanged { name, after, .. } => {
            format!("changed the config of topic {name}: {after:?}")
        }
    }
}

/// The RPC service of this node, answered by its controller.
struct RpcHandler(Rc<Controller>);

impl rpc::Handler for RpcHandler {
    fn cluster_id(&self) -> String {
        self.0.cluster_id.borrow().clone()
    }

    fn raft(&self, from: u64, messages: Vec<Vec<u8>>) {
        self.0.receive(from, messages);
    }

    fn heartbeats_lost(&self, from: u64) {
        self.0.config.peer_hints.connection_lost(node_id(from));
        let why = "member's heartbeat connection closed";
        glommio::spawn_local(self.0.clone().probe_lost_member(node_id(from), why)).detach();
    }

    fn raft_peer_lost(&self, from: u64) {
        self.0.config.peer_hints.connection_lost(node_id(from));
        // A follower: was it the leader? The leader: a member's Raft
        // responses came on that connection, as good a sign as heartbeats
        // (and there before a member's first heartbeat).
        glommio::spawn_local(self.0.clone().raft_leader_lost(node_id(from))).detach();
        let why = "member's Raft connection closed";
        glommio::spawn_local(self.0.clone().probe_lost_member(node_id(from), why)).detach();
    }

    fn propose(
        &self,
        from: u64,
        commands: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(u64, Vec<u8>), String>> {
        let c = self.0.clone();
        Box::pin(async move {
            let cmds: Vec<Command> = serde_json::from_slice(&commands)
                .map_err(|e| format!("commands from node {from} do not decode: {e}"))?;
            if !c.core.borrow().is_leader() {
                return Err(format!("node {} is not the controller leader", c.config.me.id));
            }
            let deadline = Instant::now() + c.config.timing.request_timeout;
            let answers = c
                .propose_local(&cmds, deadline)
                .await
                .map_err(|e| e.to_string())?;
            let index = answers.iter().map(|a| a.0).max().unwrap_or(0);
            let results: Vec<Result<Applied, StateError>> = answers.into_iter().map(|a| a.1).collect();
            Ok((index, serde_json::to_vec(&results).expect("answers serialize")))
        })
    }

    fn register(&self, member: MemberInfo) -> LocalBoxFuture<'static, Result<RegisterReply, String>> {
        let c = self.0.clone();
        Box::pin(async move {
            let leader = c.core.borrow().leader();
            if leader != node_u64(c.config.me.id) {
                // Not the leader: forward to it (a joining node only knows seeds).
                let peer = c
                    .peer(leader)
                    .ok_or_else(|| ControllerError::NoLeader.to_string())?;
                return peer.register(&member).await.map_err(|e| e.to_string());
            }
            let r = Registration {
                id: node_id(member.node_id),
                kafka_host: member.kafka_host,
                kafka_port: member.kafka_port,
                rpc_addr: member.rpc_addr,
                rack: member.rack,
                shards: member.shards,
                data_addr: member.data_addr,
                xdp_addr: member.xdp_addr,
            };
            c.register(r).await.map_err(|e| e.to_string())
        })
    }

    fn heartbeat(
        &self,
        from: u64,
        incarnation: u64,
    ) -> LocalBoxFuture<'static, Result<HeartbeatReply, String>> {
        let r = self.0.heartbeat(node_id(from), incarnation);
        Box::pin(async move { r })
    }

    fn status(&self) -> LocalBoxFuture<'static, Result<String, String>> {
        let c = self.0.clone();
        Box::pin(async move {
            c.status(false)
                .await
                .map(|v| v.to_string())
                .map_err(|e| e.to_string())
        })
    }

    fn prepare_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> LocalBoxFuture<'static, Result<PrepareReply, String>> {
        let c = self.0.clone();
        Box::pin(async move {
            debug!(from = %node_id(from), topic, partition, epoch = %epoch, "prepare asked");
            let info = c.prepare_local(topic, partition, epoch).await?;
            if info.epoch != epoch {
                return Err(format!(
                    "this node's replica prepared epoch {} when asked for {epoch}",
                    info.epoch
                ));
            }
            Ok(PrepareReply {
                last_epoch: info.last_epoch,
                log_end: info.log_end,
            })
        })
    }

    fn insync_replicas(
        &self,
        from: u64,
        topic: String,
        partition: i32,
    ) -> LocalBoxFuture<'static, Result<(Epoch, Vec<NodeId>), String>> {
        let c = self.0.clone();
        Box::pin(async move {
            debug!(from = %node_id(from), topic, partition, "in-sync replicas asked");
            c.insync_local(topic, partition).await
        })
    }

    fn request_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        preferred: bool,
    ) -> LocalBoxFuture<'static, Result<(), String>> {
        let c = self.0.clone();
        Box::pin(async move {
            let leader = c.core.borrow().leader();
            if leader != node_u64(c.config.me.id) {
                return Err(format!(
                    "node {} {NOT_LEADER} (leader: {})",
                    c.config.me.id,
                    node_id(leader)
                ));
            }
            debug!(from = %node_id(from), topic, partition, "election request");
            c.queue_election(&topic, partition, preferred)
                .map_err(|e| e.to_string())
        })
    }
}
