//! The node-to-node RPC transport of the control plane: Cap'n Proto RPC
//! (`schema/control.capnp`) over glommio TCP.
//!
//! It knows nothing of Raft or of the metadata state machine: Raft messages,
//! proposed commands and their results are opaque bytes. The node plugs its
//! logic in through [`Handler`] (server side) and talks to one other node
//! through a [`Peer`] (client side).
//!
//! Threading: everything lives on the one executor that created it (the
//! node's control executor). Handlers, clients and connection tasks are `Rc`
//! and `!Send`; capnp-rpc needs no compat layer on glommio's `TcpStream`. Each
//! connection's `RpcSystem` runs as a task of that executor; its stream is
//! split into halves wrapped in `BufReader`/`BufWriter`, because capnp writes a
//! frame's segment table and segments separately.
//!
//! Limits (capnp-rpc bounds none of them itself):
//! - an incoming frame is at most [`MESSAGE_BYTES_MAX`] (the capnp traversal
//!   limit, checked against the segment table before anything is allocated);
//! - a server holds at most [`CONNECTIONS_MAX`] connections, each with at most
//!   [`CALLS_IN_FLIGHT_MAX`] unanswered calls (more are refused as overloaded);
//! - a peer's Raft queue holds at most [`RAFT_QUEUE_MESSAGES_MAX`] messages and
//!   [`RAFT_QUEUE_BYTES_MAX`] bytes; beyond that messages are dropped and
//!   counted (Raft tolerates loss and resends), and one Raft call is in flight
//!   per peer, so capnp's own unbounded write queue holds at most one batch.
//!
//! Errors: a handler's refusal and a cluster id mismatch travel as capnp
//! exceptions (kind "failed"); the client maps them back to
//! [`RpcError::Remote`] and [`RpcError::ClusterMismatch`]. A frame that cannot
//! be parsed ends its connection (logged with the peer's address); the server
//! keeps serving the others.

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use ferrolog_model::{Epoch, NodeId, Offset};
use ferrolog_transport::tls::{host_of, NodeStream, NodeTls};
use futures::future::{Either, LocalBoxFuture};
use futures::io::{AsyncReadExt, BufReader, BufWriter};
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

#[allow(clippy::all, clippy::unwrap_used, unused_qualifications, dead_code)]
mod control_capnp {
    include!(concat!(env!("OUT_DIR"), "/control_capnp.rs"));
}
use control_capnp::control;

/// The largest frame a node reads (a capnp traversal limit): a hostile or
/// corrupt length cannot make it allocate more.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// The largest payload a peer sends in one request (a Raft message, a
/// proposal's commands): half a frame, which leaves room for the rest of a
/// Raft batch and the envelope, so the receiver never refuses the frame.
pub const PAYLOAD_BYTES_MAX: usize = MESSAGE_BYTES_MAX / 2;
/// Raft messages waiting for one peer, by count and by bytes.
pub const RAFT_QUEUE_MESSAGES_MAX: usize = 1024;
pub const RAFT_QUEUE_BYTES_MAX: usize = 64 << 20;
/// One Raft call carries at most this many messages and (unless a single
/// message is larger) this many bytes.
const RAFT_BATCH_MESSAGES_MAX: usize = 256;
const RAFT_BATCH_BYTES_MAX: usize = 8 << 20;
/// Open connections per server. A cluster has a few controllers and, at
/// most, some hundreds of brokers, each holding one connection to a node.
pub const CONNECTIONS_MAX: usize = 1024;
/// Unanswered calls per server connection.
pub const CALLS_IN_FLIGHT_MAX: usize = 256;
/// Waits between failed connection attempts to a peer: doubles from the
/// minimum to the maximum, back to the minimum once connected.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) so the accept
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Nesting of structs in a frame; ours nest two deep.
const NESTING_LIMIT: i32 = 16;

const REMOTE_PREFIX: &str = "remote exception: ";
const MISMATCH_PREFIX: &str = "cluster id mismatch: this node is in cluster ";
const MISMATCH_SEPARATOR: &str = ", the request names cluster ";

/// A node as it registers with the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub node_id: u64,
    pub kafka_host: String,
    pub kafka_port: u16,
    pub rpc_addr: String,
    pub rack: Option<String>,
    pub shards: u32,
    /// HOST:PORT of shard 0's replication listener.
    pub data_addr: Option<String>,
    /// IPV4:PORT of the AF_XDP replication endpoint.
    pub xdp_addr: Option<String>,
}

/// A replica's answer to `prepareElection`: its durable log's last epoch
/// (None for an empty log) and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareReply {
    pub last_epoch: Option<Epoch>,
    pub log_end: Offset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterReply {
    pub cluster_id: String,
    pub incarnation: u64,
    /// The controller leader's node id, 0 when none is known.
    pub leader: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub leader: u64,
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection to the peer (refused, unreachable, or backing off after
    /// such a failure).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No reply within the call timeout; the connection is closed, since a
    /// peer that stopped answering may be gone without a reset.
    #[error("no reply within the call timeout")]
    Timeout,
    /// The connection ended before the reply came.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The peer refused the call (its handler's error, or overloaded).
    #[error("refused by the peer: {0}")]
    Remote(String),
    /// The peer belongs to another cluster; it did not act on the call.
    #[error("cluster id mismatch: we are in cluster {ours}, the peer is in cluster {theirs}")]
    ClusterMismatch { ours: String, theirs: String },
    /// A request over [`PAYLOAD_BYTES_MAX`]; not sent.
    #[error("{bytes} bytes is over the {limit} byte limit of a request")]
    TooLarge { bytes: usize, limit: usize },
    /// A reply that does not decode.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The node's side of the RPCs. Called on the executor that runs the server;
/// a call that carries a cluster id reaches the handler only when that id
/// matches [`Handler::cluster_id`] (or either is empty).
pub trait Handler: 'static {
    /// The cluster id this node knows ("" = none yet).
    fn cluster_id(&self) -> String;
    /// Raft messages from node `from`, in the order it sent them.
    fn raft(&self, from: u64, messages: Vec<Vec<u8>>);
    /// Admin commands forwarded to the controller leader: the index they were
    /// committed at and their results.
    fn propose(
        &self,
        from: u64,
        commands: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(u64, Vec<u8>), String>>;
    fn register(&self, member: MemberInfo) -> LocalBoxFuture<'static, Result<RegisterReply, String>>;
    fn heartbeat(
        &self,
        from: u64,
        incarnation: u64,
    ) -> LocalBoxFuture<'static, Result<HeartbeatReply, String>>;
    /// The node's view of the cluster as JSON, for operators.
    fn status(&self) -> LocalBoxFuture<'static, Result<String, String>>;
    /// The controller leader (`from`) asks this node's replica of
    /// `topic`/`partition` to prepare `epoch`.
    fn prepare_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> LocalBoxFuture<'static, Result<PrepareReply, String>>;
    /// Node `from` asks for an election of `topic`/`partition`'s leader
    /// (`preferred`: a balancing election, see `elections::Election`);
    /// answered once the controller leader holds the request.
    fn request_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        preferred: bool,
    ) -> LocalBoxFuture<'static, Result<(), String>>;
    /// The controller leader (`from`) asks which replicas of
    /// `topic`/`partition` are in sync with this node's replica, which must
    /// lead: its leader epoch and the in-sync nodes, itself included.
    fn insync_replicas(
        &self,
        from: u64,
        topic: String,
        partition: i32,
    ) -> LocalBoxFuture<'static, Result<(Epoch, Vec<NodeId>), String>>;
    /// A connection that carried heartbeats of node `from` ended (the peer
    /// closed it or its process died).
    fn heartbeats_lost(&self, _from: u64) {}
    /// A connection that carried Raft messages of node `from` ended (the
    /// peer closed it or its process died).
    fn raft_peer_lost(&self, _from: u64) {}
}

fn reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(MESSAGE_BYTES_MAX / 8))
        .nesting_limit(NESTING_LIMIT);
    options
}

/// Wraps a stream into a two-party network for one side of a connection.
fn vat_network(stream: NodeStream, side: Side) -> Box<twoparty::VatNetwork<impl futures::AsyncRead + Unpin>> {
    let (read, write) = stream.split();
    Box::new(twoparty::VatNetwork::new(
        BufReader::new(read),
        BufWriter::new(write),
        side,
        reader_options(),
    ))
}

// ---- server ----

/// Binds `addr` (port 0 picks one) and serves `handler` until the returned
/// task is cancelled (`JoinHandle::cancel`), which closes the listener and
/// every connection. Returns the bound address.
pub fn serve(addr: SocketAddr, handler: Rc<dyn Handler>) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    serve_with_tls(addr, handler, None)
}

/// As [`serve`]; with `tls`, a connection is served only after a mutual TLS
/// handshake (the peer's certificate must chain to the cluster's CA).
pub fn serve_with_tls(
    addr: SocketAddr,
    handler: Rc<dyn Handler>,
    tls: Option<Arc<NodeTls>>,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    // Not glommio's `TcpListener::bind`: without SO_REUSEADDR it fails while
    // a connection on this port from a listener without SO_REUSEPORT (the
    // replication transport's, a previous run's) is in TIME_WAIT.
    let listener = ferrolog_transport::bind(addr)?;
    let local = listener.local_addr().map_err(std::io::Error::from)?;
    let task = glommio::spawn_local(accept_loop(listener, handler, tls)).detach();
    Ok((task, local))
}

/// Accepts connections and drives them all inside this one task, so that
/// cancelling it drops every connection with it.
async fn accept_loop(listener: TcpListener, handler: Rc<dyn Handler>, tls: Option<Arc<NodeTls>>) {
    let mut connections = FuturesUnordered::new();
    // One accept stays pending across iterations: dropping a pending accept
    // could lose a connection the kernel already handed over.
    let mut accept = pin!(listener.accept());
    loop {
        let accepted = if connections.is_empty() {
            accept.as_mut().await
        } else {
            match futures::future::select(accept.as_mut(), connections.next()).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => continue,
            }
        };
        accept.set(listener.accept());
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "control rpc: accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(e) => {
                debug!(error = %e, "control rpc: connection gone before it was served");
                continue;
            }
        };
        if connections.len() >= CONNECTIONS_MAX {
            warn!(%peer, limit = CONNECTIONS_MAX, "control rpc: too many connections; closing the new one");
            continue;
        }
        connections.push(serve_connection(stream, peer, handler.clone(), tls.clone()));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Rc<dyn Handler>,
    tls: Option<Arc<NodeTls>>,
) {
    debug!(%peer, "control rpc: connection accepted");
    // Small control messages must not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "control rpc: cannot set TCP_NODELAY");
    }
    let stream = match tls {
        None => NodeStream::Plain(stream),
        Some(tls) => match tls.accept(stream).await {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "control rpc: closing a connection that failed the TLS handshake");
                return;
            }
        },
    };
    let heartbeats_from = Rc::new(Cell::new(None));
    let raft_from = Rc::new(Cell::new(None));
    let server = ConnectionServer {
        handler: handler.clone(),
        peer,
        mismatch_warned: Cell::new(false),
        calls_in_flight: Rc::new(Cell::new(0)),
        heartbeats_from: heartbeats_from.clone(),
        raft_from: raft_from.clone(),
    };
    let client: control::Client = capnp_rpc::new_client(server);
    let rpc = RpcSystem::new(vat_network(stream, Side::Server), Some(client.client));
    // A clean close and a reset by the peer both end in Ok; anything else is
    // a frame that did not parse (bad segment table, oversized, cut short) or
    // a protocol violation.
    match rpc.await {
        Ok(()) => debug!(%peer, "control rpc: connection closed"),
        Err(e) => warn!(
            %peer,
            error = %e,
            "control rpc: closed the connection on a malformed or truncated frame"
        ),
    }
    if let Some(from) = heartbeats_from.get() {
        handler.heartbeats_lost(from);
    }
    if let Some(from) = raft_from.get() {
        handler.raft_peer_lost(from);
    }
}

/// The server of one connection.
struct ConnectionServer {
    handler: Rc<dyn Handler>,
    peer: SocketAddr,
    mismatch_warned: Cell<bool>,
    calls_in_flight: Rc<Cell<usize>>,
    /// The node whose heartbeats this connection carried, if any.
    heartbeats_from: Rc<Cell<Option<u64>>>,
    /// The node whose Raft messages this connection carried, if any.
    raft_from: Rc<Cell<Option<u64>>>,
}

/// A slot among a connection's [`CALLS_IN_FLIGHT_MAX`], freed on drop.
struct CallSlot(Rc<Cell<usize>>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl ConnectionServer {
    fn begin_call(&self) -> Result<CallSlot, capnp::Error> {
        let n = self.calls_in_flight.get();
        if n >= CALLS_IN_FLIGHT_MAX {
            return Err(capnp::Error::overloaded(format!(
                "{n} calls in flight on this connection (limit {CALLS_IN_FLIGHT_MAX})"
            )));
        }
        self.calls_in_flight.set(n + 1);
        Ok(CallSlot(self.calls_in_flight.clone()))
    }

    /// Refuses a request from another cluster. Either id empty means "not
    /// known yet" and passes.
    fn check_cluster(&self, theirs: capnp::text::Reader<'_>) -> Result<(), capnp::Error> {
        let theirs = theirs.to_str()?;
        let ours = self.handler.cluster_id();
        if theirs.is_empty() || ours.is_empty() || theirs == ours {
            return Ok(());
        }
        if !self.mismatch_warned.replace(true) {
            warn!(
                peer = %self.peer,
                ours,
                theirs,
                "control rpc: refusing requests from another cluster (logged once per connection)"
            );
        }
        Err(capnp::Error::failed(format!(
            "{MISMATCH_PREFIX}{ours}{MISMATCH_SEPARATOR}{theirs}"
        )))
    }
}

impl control::Server for ConnectionServer {
    fn raft(
        self: Rc<Self>,
        params: control::RaftParams,
        _results: control::RaftResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let call = || -> Result<(), capnp::Error> {
            let _slot = self.begin_call()?;
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            let messages = p
                .get_messages()?
                .iter()
                .map(|m| m.map(<[u8]>::to_vec))
                .collect::<Result<Vec<_>, _>>()?;
            self.raft_from.set(Some(p.get_from()));
            self.handler.raft(p.get_from(), messages);
            Ok(())
        };
        std::future::ready(call())
    }

    async fn propose(
        self: Rc<Self>,
        params: control::ProposeParams,
        mut results: control::ProposeResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let (from, commands) = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            (p.get_from(), p.get_commands()?.to_vec())
        };
        let (index, out) = self
            .handler
            .propose(from, commands)
            .await
            .map_err(capnp::Error::failed)?;
        let mut r = results.get();
        r.set_index(index);
        r.set_results(&out);
        Ok(())
    }

    async fn register(
        self: Rc<Self>,
        params: control::RegisterParams,
        mut results: control::RegisterResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let member = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            let m = p.get_member()?;
            let rack = m.get_rack()?.to_string()?;
            let data_addr = m.get_data_addr()?.to_string()?;
            // An older node's Member has no xdpAddr: it reads as empty.
            let xdp_addr = m.get_xdp_addr()?.to_string()?;
            MemberInfo {
                node_id: m.get_node_id(),
                kafka_host: m.get_kafka_host()?.to_string()?,
                kafka_port: m.get_kafka_port(),
                rpc_addr: m.get_rpc_addr()?.to_string()?,
                rack: (!rack.is_empty()).then_some(rack),
                shards: m.get_shards(),
                data_addr: (!data_addr.is_empty()).then_some(data_addr),
                xdp_addr: (!xdp_addr.is_empty()).then_some(xdp_addr),
            }
        };
        let reply = self
            .handler
            .register(member)
            .await
            .map_err(capnp::Error::failed)?;
        let mut r = results.get();
        r.set_cluster_id(reply.cluster_id.as_str());
        r.set_incarnation(reply.incarnation);
        r.set_leader(reply.leader);
        Ok(())
    }

    async fn heartbeat(
        self: Rc<Self>,
        params: control::HeartbeatParams,
        mut results: control::HeartbeatResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let (from, incarnation) = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            (p.get_from(), p.get_incarnation())
        };
        let reply = self
            .handler
            .heartbeat(from, incarnation)
            .await
            .map_err(capnp::Error::failed)?;
        self.heartbeats_from.set(Some(from));
        let mut r = results.get();
        r.set_leader(reply.leader);
        r.set_term(reply.term);
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _params: control::StatusParams,
        mut results: control::StatusResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let json = self.handler.status().await.map_err(capnp::Error::failed)?;
        results.get().set_json(json.as_str());
        Ok(())
    }

    async fn prepare_election(
        self: Rc<Self>,
        params: control::PrepareElectionParams,
        mut results: control::PrepareElectionResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let (from, topic, partition, epoch) = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            (
                p.get_from(),
                p.get_topic()?.to_string()?,
                p.get_partition(),
                Epoch(p.get_epoch()),
            )
        };
        let reply = self
            .handler
            .prepare_election(from, topic, partition, epoch)
            .await
            .map_err(capnp::Error::failed)?;
        let mut r = results.get();
        r.set_last_epoch(reply.last_epoch.map_or(-1, |e| e.0));
        r.set_log_end(reply.log_end.0);
        Ok(())
    }

    async fn request_election(
        self: Rc<Self>,
        params: control::RequestElectionParams,
        _results: control::RequestElectionResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let (from, topic, partition, preferred) = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            (
                p.get_from(),
                p.get_topic()?.to_string()?,
                p.get_partition(),
                p.get_preferred(),
            )
        };
        self.handler
            .request_election(from, topic, partition, preferred)
            .await
            .map_err(capnp::Error::failed)
    }

    async fn insync_replicas(
        self: Rc<Self>,
        params: control::InsyncReplicasParams,
        mut results: control::InsyncReplicasResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.begin_call()?;
        let (from, topic, partition) = {
            let p = params.get()?;
            self.check_cluster(p.get_cluster_id()?)?;
            (p.get_from(), p.get_topic()?.to_string()?, p.get_partition())
        };
        let (epoch, nodes) = self
            .handler
            .insync_replicas(from, topic, partition)
            .await
            .map_err(capnp::Error::failed)?;
        let mut r = results.get();
        r.set_leader_epoch(epoch.0);
        let count = u32::try_from(nodes.len()).map_err(|_| capnp::Error::failed("too many nodes".into()))?;
        let mut list = r.init_nodes(count);
        for (i, n) in (0..).zip(&nodes) {
            list.set(i, n.0);
        }
        Ok(())
    }
}

// ---- client ----

/// A connection to one peer node. Connects lazily, reconnects after a
/// failure (after a backoff of [`RECONNECT_BACKOFF_MIN`] doubling to
/// [`RECONNECT_BACKOFF_MAX`]; calls made while backing off fail at once with
/// [`RpcError::Connect`]), and bounds every call, connecting included, by the
/// call timeout. Raft messages go through a bounded queue drained by one task.
pub struct Peer {
    inner: Rc<PeerInner>,
    raft_sender: JoinHandle<()>,
}

struct PeerInner {
    local_node: u64,
    addr: String,
    tls: Option<Arc<NodeTls>>,
    cluster_id: Rc<RefCell<String>>,
    call_timeout: Duration,
    connection: RefCell<Option<Connection>>,
    /// Held while connecting, so that concurrent calls share one attempt.
    connecting: glommio::sync::Semaphore,
    backoff: Cell<Duration>,
    /// After a failed attempt: when the next may start, and why it failed.
    retry: RefCell<Option<(Instant, String)>>,
    connections_made: Cell<u64>,
    raft_queue: RefCell<RaftQueue>,
    /// Whether the last Raft call failed, so a run of failures logs once.
    raft_failing: Cell<bool>,
    dropped: Cell<u64>,
}

struct Connection {
    id: u64,
    client: control::Client,
    /// Closes the connection, failing its calls in flight.
    disconnector: capnp_rpc::Disconnector<Side>,
    /// The task running the connection's `RpcSystem`.
    task: JoinHandle<()>,
}

#[derive(Default)]
struct RaftQueue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The sender task, waiting for messages.
    waker: Option<Waker>,
}

/// A deadline passed.
struct Elapsed;

async fn until<F: Future>(deadline: Instant, f: F) -> Result<F::Output, Elapsed> {
    let sleep = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
    match futures::future::select(pin!(f), pin!(sleep)).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(Elapsed),
    }
}

impl Peer {
    /// A peer at `addr` ("host:port"), sending as `local_node` and naming the
    /// cluster id currently in `cluster_id` on each request. Must be called on
    /// the executor that will use it: it spawns the Raft sender task there. A
    /// host name in `addr` is resolved on each connection attempt, blocking the
    /// executor meanwhile; give an IP address where that matters.
    pub fn new(
        local_node: u64,
        addr: String,
        cluster_id: Rc<RefCell<String>>,
        call_timeout: Duration,
    ) -> Rc<Peer> {
        Peer::with_tls(local_node, addr, cluster_id, call_timeout, None)
    }

    /// As [`Peer::new`]; with `tls`, connections are mutual TLS and the
    /// peer's certificate must name the host of `addr`.
    pub fn with_tls(
        local_node: u64,
        addr: String,
        cluster_id: Rc<RefCell<String>>,
        call_timeout: Duration,
        tls: Option<Arc<NodeTls>>,
    ) -> Rc<Peer> {
        let inner = Rc::new(PeerInner {
            local_node,
            addr,
            tls,
            cluster_id,
            call_timeout,
            connection: RefCell::new(None),
            connecting: glommio::sync::Semaphore::new(1),
            backoff: Cell::new(RECONNECT_BACKOFF_MIN),
            retry: RefCell::new(None),
            connections_made: Cell::new(0),
            raft_queue: RefCell::new(RaftQueue::default()),
            raft_failing: Cell::new(false),
            dropped: Cell::new(0),
        });
        let raft_sender = glommio::spawn_local(raft_sender(inner.clone())).detach();
        Rc::new(Peer { inner, raft_sender })
    }

    /// Queues Raft messages for the peer, in order; never waits. Messages
    /// beyond the queue's bounds (or larger than [`PAYLOAD_BYTES_MAX`])
    /// are dropped and counted in [`Peer::dropped`].
    pub fn send_raft(&self, messages: Vec<Vec<u8>>) {
        let mut queue = self.inner.raft_queue.borrow_mut();
        let mut dropped = 0;
        for message in messages {
            if message.len() > PAYLOAD_BYTES_MAX
                || queue.messages.len() >= RAFT_QUEUE_MESSAGES_MAX
                || queue.bytes + message.len() > RAFT_QUEUE_BYTES_MAX
            {
                dropped += 1;
                continue;
            }
            queue.bytes += message.len();
            queue.messages.push_back(message);
        }
        if dropped > 0 {
            self.inner.dropped.set(self.inner.dropped.get() + dropped);
            debug!(peer = %self.inner.addr, dropped, "control rpc: raft queue full; messages dropped");
        }
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
    }

    /// Raft messages not delivered: dropped by a full queue, or lost with a
    /// failed or refused Raft call.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// Raft messages waiting in the queue.
    pub fn queued(&self) -> usize {
        self.inner.raft_queue.borrow().messages.len()
    }

    pub async fn propose(&self, commands: Vec<u8>) -> Result<(u64, Vec<u8>), RpcError> {
        if commands.len() > PAYLOAD_BYTES_MAX {
            return Err(RpcError::TooLarge {
                bytes: commands.len(),
                limit: PAYLOAD_BYTES_MAX,
            });
        }
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| async move {
                let mut request = client.propose_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                p.set_commands(&commands);
                let reply = request.send().promise.await?;
                let r = reply.get()?;
                Ok((r.get_index(), r.get_results()?.to_vec()))
            })
            .await
    }

    pub async fn register(&self, m: &MemberInfo) -> Result<RegisterReply, RpcError> {
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| {
                let mut request = client.register_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                let mut member = p.init_member();
                member.set_node_id(m.node_id);
                member.set_kafka_host(m.kafka_host.as_str());
                member.set_kafka_port(m.kafka_port);
                member.set_rpc_addr(m.rpc_addr.as_str());
                member.set_rack(m.rack.as_deref().unwrap_or(""));
                member.set_shards(m.shards);
                member.set_data_addr(m.data_addr.as_deref().unwrap_or(""));
                member.set_xdp_addr(m.xdp_addr.as_deref().unwrap_or(""));
                async move {
                    let reply = request.send().promise.await?;
                    let r = reply.get()?;
                    Ok(RegisterReply {
                        cluster_id: r.get_cluster_id()?.to_string()?,
                        incarnation: r.get_incarnation(),
                        leader: r.get_leader(),
                    })
                }
            })
            .await
    }

    pub async fn heartbeat(&self, incarnation: u64) -> Result<HeartbeatReply, RpcError> {
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| async move {
                let mut request = client.heartbeat_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                p.set_incarnation(incarnation);
                let reply = request.send().promise.await?;
                let r = reply.get()?;
                Ok(HeartbeatReply {
                    leader: r.get_leader(),
                    term: r.get_term(),
                })
            })
            .await
    }

    /// Asks the peer's replica of `topic`/`partition` to prepare `epoch`
    /// (see [`Handler::prepare_election`]).
    pub async fn prepare_election(
        &self,
        topic: &str,
        partition: i32,
        epoch: Epoch,
    ) -> Result<PrepareReply, RpcError> {
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| {
                let mut request = client.prepare_election_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                p.set_topic(topic);
                p.set_partition(partition);
                p.set_epoch(epoch.0);
                async move {
                    let reply = request.send().promise.await?;
                    let r = reply.get()?;
                    let last_epoch = r.get_last_epoch();
                    if last_epoch < -1 {
                        return Err(capnp::Error::failed(format!(
                            "a prepare answered last epoch {last_epoch}"
                        )));
                    }
                    Ok(PrepareReply {
                        last_epoch: (last_epoch >= 0).then_some(Epoch(last_epoch)),
                        log_end: Offset(r.get_log_end()),
                    })
                }
            })
            .await
    }

    /// Asks the peer, which must be the controller leader, to elect a new
    /// leader of `topic`/`partition` (see [`Handler::request_election`]).
    pub async fn request_election(
        &self,
        topic: &str,
        partition: i32,
        preferred: bool,
    ) -> Result<(), RpcError> {
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| {
                let mut request = client.request_election_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                p.set_topic(topic);
                p.set_partition(partition);
                p.set_preferred(preferred);
                async move {
                    request.send().promise.await?;
                    Ok(())
                }
            })
            .await
    }

    /// Asks the peer, which should lead `topic`/`partition`, for its
    /// leader epoch and in-sync replicas (see [`Handler::insync_replicas`]).
    pub async fn insync_replicas(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(Epoch, Vec<NodeId>), RpcError> {
        let from = self.inner.local_node;
        self.inner
            .call(|client, cluster_id| {
                let mut request = client.insync_replicas_request();
                let mut p = request.get();
                p.set_cluster_id(cluster_id.as_str());
                p.set_from(from);
                p.set_topic(topic);
                p.set_partition(partition);
                async move {
                    let reply = request.send().promise.await?;
                    let r = reply.get()?;
                    let nodes = r.get_nodes()?.iter().map(NodeId).collect();
                    Ok((Epoch(r.get_leader_epoch()), nodes))
                }
            })
            .await
    }

    pub async fn status(&self) -> Result<String, RpcError> {
        self.inner
            .call(|client, _| async move {
                let reply = client.status_request().send().promise.await?;
                Ok(reply.get()?.get_json()?.to_string()?)
            })
            .await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.raft_sender.cancel();
        // No call can be in flight (each borrows the Peer), so dropping the
        // connection's task, and with it the socket, loses nothing.
        if let Some(connection) = self.inner.connection.borrow_mut().take() {
            connection.task.cancel();
        }
    }
}

impl PeerInner {
    /// Runs one call on the current connection (connecting first if needed),
    /// all within the call timeout.
    async fn call<T, F, Fut>(self: &Rc<Self>, f: F) -> Result<T, RpcError>
    where
        F: FnOnce(control::Client, String) -> Fut,
        Fut: Future<Output = Result<T, capnp::Error>>,
    {
        let deadline = Instant::now() + self.call_timeout;
        let (id, client) = until(deadline, self.client()).await.map_err(|Elapsed| {
            RpcError::Connect(format!("{}: no connection within the call timeout", self.addr))
        })??;
        let cluster_id = self.cluster_id.borrow().clone();
        match until(deadline, f(client, cluster_id.clone())).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                let e = map_error(e, &cluster_id);
                if matches!(e, RpcError::Disconnected(_)) {
                    self.close(id);
                }
                Err(e)
            }
            Err(Elapsed) => {
                self.close(id);
                Err(RpcError::Timeout)
            }
        }
    }

    /// The live connection's client, connecting if there is none.
    async fn client(self: &Rc<Self>) -> Result<(u64, control::Client), RpcError> {
        if let Some(c) = self.connection.borrow().as_ref() {
            return Ok((c.id, c.client.clone()));
        }
        let _permit = self
            .connecting
            .acquire_permit(1)
            .await
            .map_err(|e| RpcError::Connect(format!("{}: {e}", self.addr)))?;
        // Another call may have connected while this one waited.
        if let Some(c) = self.connection.borrow().as_ref() {
            return Ok((c.id, c.client.clone()));
        }
        if let Some((at, reason)) = self.retry.borrow().as_ref() {
            let now = Instant::now();
            if now < *at {
                return Err(RpcError::Connect(format!(
                    "{}: {reason} (next attempt in {} ms)",
                    self.addr,
                    (*at - now).as_millis()
                )));
            }
        }
        // Bounded here too, so that an attempt that times out (a host that
        // drops SYNs) backs off like one that is refused.
        let connect = async {
            let stream = TcpStream::connect(self.addr.as_str())
                .await
                .map_err(|e| e.to_string())?;
            // Small control messages must not wait for Nagle.
            if let Err(e) = stream.set_nodelay(true) {
                debug!(error = %e, "control rpc: cannot set TCP_NODELAY");
            }
            match &self.tls {
                None => Ok(NodeStream::Plain(stream)),
                Some(tls) => tls
                    .connect(host_of(&self.addr), stream)
                    .await
                    .map_err(|e| e.to_string()),
            }
        };
        let attempt = match until(Instant::now() + self.call_timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(Elapsed) => Err("no connection within the call timeout".to_string()),
        };
        match attempt {
            Ok(stream) => {
                self.retry.replace(None);
                self.backoff.set(RECONNECT_BACKOFF_MIN);
                Ok(self.start_connection(stream))
            }
            Err(reason) => {
                let backoff = self.backoff.get();
                self.backoff.set((backoff * 2).min(RECONNECT_BACKOFF_MAX));
                let first = self
                    .retry
                    .replace(Some((Instant::now() + backoff, reason.clone())))
                    .is_none();
                if first {
                    warn!(peer = %self.addr, error = %reason, "control rpc: cannot connect; retrying with backoff");
                }
                Err(RpcError::Connect(format!("{}: {reason}", self.addr)))
            }
        }
    }

    fn start_connection(self: &Rc<Self>, stream: NodeStream) -> (u64, control::Client) {
        let id = self.connections_made.get() + 1;
        self.connections_made.set(id);
        let mut rpc = RpcSystem::new(vat_network(stream, Side::Client), None);
        let client: control::Client = rpc.bootstrap(Side::Server);
        let disconnector = rpc.get_disconnector();
        let me = Rc::downgrade(self);
        let addr = self.addr.clone();
        let task = glommio::spawn_local(async move {
            let result = rpc.await;
            if let Some(me) = Weak::upgrade(&me) {
                me.forget(id);
            }
            match result {
                Ok(()) => debug!(peer = %addr, "control rpc: connection closed"),
                Err(e) => warn!(
                    peer = %addr,
                    error = %e,
                    "control rpc: connection ended on a malformed or truncated frame"
                ),
            }
        })
        .detach();
        debug!(peer = %self.addr, id, "control rpc: connected");
        self.connection.replace(Some(Connection {
            id,
            client: client.clone(),
            disconnector,
            task,
        }));
        (id, client)
    }

    /// Forgets connection `id` once its task has ended.
    fn forget(&self, id: u64) {
        let mut connection = self.connection.borrow_mut();
        if connection.as_ref().is_some_and(|c| c.id == id) {
            *connection = None;
        }
    }

    /// Closes connection `id` (if still current): its calls in flight fail,
    /// and the next call reconnects.
    fn close(&self, id: u64) {
        let taken = {
            let mut connection = self.connection.borrow_mut();
            if connection.as_ref().is_some_and(|c| c.id == id) {
                connection.take()
            } else {
                None
            }
        };
        if let Some(connection) = taken {
            debug!(peer = %self.addr, id, "control rpc: closing the connection");
            glommio::spawn_local(async move {
                if let Err(e) = connection.disconnector.await {
                    debug!(error = %e, "control rpc: disconnect");
                }
            })
            .detach();
        }
    }

    /// Waits until Raft messages are queued.
    async fn raft_queued(&self) {
        futures::future::poll_fn(|cx| {
            let mut queue = self.raft_queue.borrow_mut();
            if queue.messages.is_empty() {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes the next batch of queued Raft messages (none if the queue is empty).
    fn take_raft_batch(&self) -> Vec<Vec<u8>> {
        let mut queue = self.raft_queue.borrow_mut();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.messages.front() {
            let fits = batch.is_empty()
                || (batch.len() < RAFT_BATCH_MESSAGES_MAX && bytes + next.len() <= RAFT_BATCH_BYTES_MAX);
            if !fits {
                break;
            }
            bytes += next.len();
            if let Some(message) = queue.messages.pop_front() {
                batch.push(message);
            }
        }
        queue.bytes -= bytes;
        batch
    }

    fn raft_failed(&self, lost: usize, error: &RpcError) {
        self.dropped.set(self.dropped.get() + lost as u64);
        if !self.raft_failing.replace(true) {
            warn!(peer = %self.addr, %error, lost, "control rpc: raft messages lost");
        } else {
            debug!(peer = %self.addr, %error, lost, "control rpc: raft messages lost");
        }
    }
}

/// Drains a peer's Raft queue: one call in flight at a time, so messages
/// arrive in order and capnp's write queue holds at most one batch. While the
/// peer is unreachable, messages wait in the queue (and beyond its bound are
/// dropped); a batch whose call fails is lost.
async fn raft_sender(inner: Rc<PeerInner>) {
    loop {
        // Wait for messages before connecting: an idle peer holds no socket
        // open, and messages pile up in the bounded queue while connecting.
        inner.raft_queued().await;
        let deadline = Instant::now() + inner.call_timeout;
        let (id, client) = match until(deadline, inner.client()).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(_)) | Err(Elapsed) => {
                let wait = inner
                    .retry
                    .borrow()
                    .as_ref()
                    .map_or(RECONNECT_BACKOFF_MIN, |(at, _)| {
                        at.saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1))
                    });
                glommio::timer::sleep(wait).await;
                continue;
            }
        };
        let batch = inner.take_raft_batch();
        let lost = batch.len();
        let cluster_id = inner.cluster_id.borrow().clone();
        let mut request = client.raft_request();
        {
            let mut p = request.get();
            p.set_cluster_id(cluster_id.as_str());
            p.set_from(inner.local_node);
            let mut list = p.init_messages(batch.len() as u32);
            for (i, message) in batch.iter().enumerate() {
                list.set(i as u32, message);
            }
        }
        drop(batch);
        let sent = request.send().promise;
        match until(Instant::now() + inner.call_timeout, sent).await {
            Ok(Ok(_)) => inner.raft_failing.set(false),
            Ok(Err(e)) => {
                let e = map_error(e, &cluster_id);
                if matches!(e, RpcError::Disconnected(_)) {
                    inner.close(id);
                }
                inner.raft_failed(lost, &e);
            }
            Err(Elapsed) => {
                inner.close(id);
                inner.raft_failed(lost, &RpcError::Timeout);
            }
        }
    }
}

/// Maps a capnp error to the caller's terms; `ours` is the cluster id the
/// request carried.
fn map_error(e: capnp::Error, ours: &str) -> RpcError {
    if e.kind == capnp::ErrorKind::Disconnected {
        return RpcError::Disconnected(e.extra);
    }
    let Some(reason) = e.extra.strip_prefix(REMOTE_PREFIX) else {
        return RpcError::Protocol(e.to_string());
    };
    // The server's reason is "<prefix><its id><separator><the id we sent>".
    if let Some((theirs, _)) = reason
        .strip_prefix(MISMATCH_PREFIX)
        .and_then(|rest| rest.split_once(MISMATCH_SEPARATOR))
    {
        return RpcError::ClusterMismatch {
            ours: ours.to_string(),
            theirs: theirs.to_string(),
        };
    }
    RpcError::Remote(reason.to_string())
}
