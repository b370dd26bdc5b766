//! The AF_XDP path of one shard's replication frames (issue 15): an
//! [`XskSocket`] on NIC queue `first queue + shard index`, the peers it can
//! reach, and the task that polls it.
//!
//! Where it sits: [`ReplNet`](crate::replicated::ReplNet) asks
//! [`XdpPath::send`] first for every frame to a peer and falls back to the
//! TCP `Link` when this shard has no socket, the peer advertises no AF_XDP
//! endpoint (`Broker::xdp_addr`), its MAC address is not resolved yet, or the
//! frame's payload is over the datagram path's limit. Received frames go to
//! the same handler as the TCP listener's, which routes them to the
//! partition's owner shard: on a NIC with one queue (veth) every peer's
//! datagrams land on shard 0's socket.
//!
//! Streams: shard `s` sends with stream id `s`, so every socket accepts, from
//! each peer's address, streams `0..peer shards` (the socket drops datagrams
//! of streams it was not told of).
//!
//! Delivery: exact frames or nothing, in order per sending socket with gaps;
//! a lost datagram costs its frame, and the replica's go-back-N resend
//! (`retry_ticks`, 200 ms) recovers it, as for a frame lost with a TCP
//! connection.
//!
//! Polling: the socket is driven by one task on its shard. After traffic (a
//! frame received or sent) it polls every [`SPIN_POLL`] for the profile's
//! `spin_before_park` window (the executor spins through it, so this is
//! busy polling), then every `network.xdp_poll_us`, which bounds the wait of
//! a frame arriving meanwhile, at a CPU cost measured in docs/tuning.md. With
//! `spin_before_park` 0 it polls every `xdp_poll_us` only.
//!
//! Everything here lives on the shard that opened the socket (`!Send`).

use crate::manager::PartitionManager;
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_model::NodeId;
use ferrolog_transport::Frame;
use ferrolog_xdp::{Counters, PeerConfig, PeerId, SendError, SocketConfig, XdpError, XdpProgram, XskSocket};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Poll period while traffic is recent and the profile asks for spinning.
pub const SPIN_POLL: Duration = Duration::from_micros(5);
/// Receive chunks (= fill and rx ring size) of a shard's socket: 2048 chunks of 2 KiB (4 MiB of
/// UMEM) hold a burst of about 3.7 MB between two polls. The library's default of 512 dropped
/// datagrams for an empty fill ring at the max rate (one replication frame of a 1 MiB batch is
/// about 580 datagrams), and every drop costs a 200 ms resend.
const RX_RING: u32 = 2048;
/// How often the poller looks at the metadata for new or changed peers.
const PEER_REFRESH: Duration = Duration::from_millis(500);
/// A peer whose MAC address could not be resolved is tried again after this.
const PEER_RETRY: Duration = Duration::from_secs(1);
/// How long resolving a peer's MAC may block the shard: the first attempt
/// provokes the kernel's ARP resolution, a later one finds its result.
const NEIGHBOUR_WAIT: Duration = Duration::from_millis(1);

/// What a shard needs to open its socket.
#[derive(Clone, Debug)]
pub struct XdpShardConfig {
    pub program: Arc<XdpProgram>,
    /// This node's endpoint: the interface's IPv4 address and the UDP port
    /// the program redirects.
    pub local: SocketAddrV4,
    /// The NIC queue of shard 0; shard `s` uses `queue + s`.
    pub first_queue: u32,
    /// The executor's spin window (`network.spin_before_park_us`); zero: no
    /// busy polling.
    pub spin: Duration,
    /// The poll period outside the spin window (`network.xdp_poll_us`).
    pub poll: Duration,
    /// TEST ONLY: frames dropped, sent twice or held back on purpose.
    pub test_faults: TestFaults,
}

/// The node's AF_XDP setup, shared by its shards (`Send + Sync`). The
/// program handle is taken out at shutdown ([`XdpNode::release`]), so that
/// the last shard socket closed detaches the program.
#[derive(Debug)]
pub struct XdpNode {
    program: Mutex<Option<Arc<XdpProgram>>>,
    pub local: SocketAddrV4,
    pub first_queue: u32,
    pub spin: Duration,
    pub poll: Duration,
    pub test_faults: TestFaults,
}

/// TEST ONLY faults on the sending side of every shard's socket: every Nth
/// frame (counting all frames the socket is asked to send) dropped, sent
/// twice, or held back and sent after the next one, to show that
/// replication survives lost, duplicated and reordered frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestFaults {
    pub drop_every: Option<u64>,
    pub duplicate_every: Option<u64>,
    pub reorder_every: Option<u64>,
}

/// [`XdpNode`]'s settings besides the program.
#[derive(Clone, Copy, Debug)]
pub struct XdpNodeConfig {
    pub local: SocketAddrV4,
    pub first_queue: u32,
    pub spin: Duration,
    pub poll: Duration,
    pub test_faults: TestFaults,
}

impl XdpNode {
    pub fn new(program: Arc<XdpProgram>, c: XdpNodeConfig) -> XdpNode {
        XdpNode {
            program: Mutex::new(Some(program)),
            local: c.local,
            first_queue: c.first_queue,
            spin: c.spin,
            poll: c.poll,
            test_faults: c.test_faults,
        }
    }

    /// What a shard opens its socket with; `None` once released.
    pub fn shard_config(&self) -> Option<XdpShardConfig> {
        let program = self.program.lock().ok()?.clone()?;
        Some(XdpShardConfig {
            program,
            local: self.local,
            first_queue: self.first_queue,
            spin: self.spin,
            poll: self.poll,
            test_faults: self.test_faults,
        })
    }

    /// Drops the node's handle on the program: it is detached when the
    /// last shard socket closes (or now, if none is open).
    pub fn release(&self) {
        if let Ok(mut p) = self.program.lock() {
            p.take();
        }
    }
}

/// A peer as this socket knows it.
#[derive(Clone, Copy, Debug)]
enum PeerState {
    Ready {
        addr: SocketAddrV4,
        streams: u32,
        id: PeerId,
    },
    /// Its MAC address (or the socket's peer table) refused; tried again at `retry_at`.
    Pending {
        addr: SocketAddrV4,
        streams: u32,
        retry_at: Instant,
    },
}

/// One shard's AF_XDP socket and peers.
pub struct XdpPath {
    socket: RefCell<XskSocket>,
    peers: RefCell<HashMap<NodeId, PeerState>>,
    node: NodeId,
    spin: Duration,
    poll: Duration,
    test_faults: TestFaults,
    /// A frame held back by `test_faults.reorder_every`, sent after the next
    /// one (or at the next poll).
    test_held: RefCell<Option<(PeerId, Frame)>>,
    last_traffic: Cell<Instant>,
    /// Frames the socket refused for a reason other than a full send queue
    /// (counted by the socket itself); the replica resends.
    pub send_errors: Cell<u64>,
    /// Frames dropped, sent twice and held back on purpose (`test_faults`).
    pub test_dropped: Cell<u64>,
    pub test_duplicated: Cell<u64>,
    pub test_reordered: Cell<u64>,
    sends: Cell<u64>,
}

/// The settings of a shard's socket (also what start opens to prove the path, so that a
/// node advertises AF_XDP only where its shards' sockets fit, memlock included).
pub fn socket_config(queue: u32, ip: std::net::Ipv4Addr, stream: u32) -> SocketConfig {
    let mut c = SocketConfig::new(queue, ip, stream);
    c.neighbour_wait = NEIGHBOUR_WAIT;
    c.rx_ring = RX_RING;
    c
}

impl XdpPath {
    /// Opens this shard's socket on queue `config.first_queue + shard`.
    pub fn open(config: &XdpShardConfig, node: NodeId, shard: u32) -> Result<XdpPath, XdpError> {
        let queue = config
            .first_queue
            .checked_add(shard)
            .ok_or_else(|| XdpError::Config("queue number overflows".into()))?;
        let socket = XskSocket::open(&config.program, socket_config(queue, *config.local.ip(), shard))?;
        Ok(XdpPath {
            socket: RefCell::new(socket),
            peers: RefCell::new(HashMap::new()),
            node,
            spin: config.spin,
            poll: config.poll,
            test_faults: config.test_faults,
            test_held: RefCell::new(None),
            last_traffic: Cell::new(Instant::now()),
            send_errors: Cell::new(0),
            test_dropped: Cell::new(0),
            test_duplicated: Cell::new(0),
            test_reordered: Cell::new(0),
            sends: Cell::new(0),
        })
    }

    pub fn queue(&self) -> u32 {
        self.socket.borrow().queue()
    }

    /// Sends `frame` to `to` over AF_XDP if it can take it: `Err(frame)`
    /// hands it back for TCP (no endpoint for that peer, or a payload over
    /// the datagram path's limit); `Ok(false)` means refused (queue full),
    /// the replica resends.
    pub fn send(&self, snap: &MetadataSnapshot, to: NodeId, frame: Frame) -> Result<bool, Frame> {
        if frame.payload.len() > ferrolog_xdp::PAYLOAD_BYTES_MAX {
            return Err(frame);
        }
        let Some(id) = self.peer(snap, to) else {
            return Err(frame);
        };
        let n = self.sends.get() + 1;
        self.sends.set(n);
        let nth = |every: Option<u64>| every.is_some_and(|every| n % every == 0);
        let faults = self.test_faults;
        if nth(faults.drop_every) {
            self.test_dropped.set(self.test_dropped.get() + 1);
            return Ok(true);
        }
        self.last_traffic.set(Instant::now());
        if nth(faults.reorder_every) && self.test_held.borrow().is_none() {
            self.test_reordered.set(self.test_reordered.get() + 1);
            *self.test_held.borrow_mut() = Some((id, frame));
            return Ok(true);
        }
        if nth(faults.duplicate_every) {
            self.test_duplicated.set(self.test_duplicated.get() + 1);
            self.send_frame(to, id, frame.clone());
        }
        let sent = self.send_frame(to, id, frame);
        self.send_held();
        Ok(sent)
    }

    /// Puts one frame on the socket's send queue; false when refused.
    fn send_frame(&self, to: impl std::fmt::Display, id: PeerId, frame: Frame) -> bool {
        match self.socket.borrow_mut().send(id, frame) {
            Ok(()) => true,
            Err(SendError::QueueFull { .. }) => false,
            Err(e) => {
                debug!(peer = %to, "AF_XDP send refused: {e}");
                self.send_errors.set(self.send_errors.get() + 1);
                false
            }
        }
    }

    /// Sends the frame `test_faults.reorder_every` held back, if any.
    fn send_held(&self) {
        if let Some((id, frame)) = self.test_held.borrow_mut().take() {
            self.send_frame("(held back)", id, frame);
        }
    }

    /// The socket's id of `to`, adding it (and its streams) when the
    /// metadata gives it an AF_XDP endpoint; `None`: use TCP.
    fn peer(&self, snap: &MetadataSnapshot, to: NodeId) -> Option<PeerId> {
        let b = snap.broker(to)?;
        let addr: SocketAddrV4 = b.xdp_addr.as_deref()?.parse().ok()?;
        let streams = b.shards.max(1);
        let known = self.peers.borrow().get(&to).copied();
        match known {
            Some(PeerState::Ready {
                addr: a,
                streams: s,
                id,
            }) if a == addr && s == streams => Some(id),
            Some(PeerState::Pending {
                addr: a,
                streams: s,
                retry_at,
            }) if a == addr && s == streams && Instant::now() < retry_at => None,
            _ => self.add(to, addr, streams),
        }
    }

    fn add(&self, to: NodeId, addr: SocketAddrV4, streams: u32) -> Option<PeerId> {
        let mut socket = self.socket.borrow_mut();
        let mut first = None;
        for stream in 0..streams {
            match socket.add_peer(PeerConfig { addr, stream }) {
                Ok(id) => {
                    first.get_or_insert(id);
                }
                Err(e) => {
                    debug!(peer = %to, %addr, "AF_XDP peer not ready, TCP meanwhile: {e}");
                    self.peers.borrow_mut().insert(
                        to,
                        PeerState::Pending {
                            addr,
                            streams,
                            retry_at: Instant::now() + PEER_RETRY,
                        },
                    );
                    return None;
                }
            }
        }
        let id = first?;
        info!(peer = %to, %addr, streams, queue = socket.queue(), "AF_XDP peer ready");
        self.peers
            .borrow_mut()
            .insert(to, PeerState::Ready { addr, streams, id });
        Some(id)
    }

    /// Adds every peer of the metadata that advertises AF_XDP, so that its
    /// datagrams are accepted before this shard ever sends to it.
    fn refresh(&self, snap: &MetadataSnapshot) {
        for b in &snap.brokers {
            if b.id != self.node && b.xdp_addr.is_some() {
                self.peer(snap, b.id);
            }
        }
    }

    /// One pass: received frames to `deliver`, queued sends pushed on.
    /// Returns whether anything moved.
    fn poll(&self, deliver: &mut impl FnMut(Frame)) -> bool {
        self.send_held();
        let mut frames = Vec::new();
        let (received, sent) = {
            let mut socket = self.socket.borrow_mut();
            let received = socket.poll_rx(|f| frames.push(f));
            let sent = if socket.tx_idle() { 0 } else { socket.poll_tx() };
            (received, sent)
        };
        // Delivered outside the socket's borrow: the handler may send.
        for f in frames {
            deliver(f);
        }
        received + sent > 0
    }

    /// The counters, the kernel's read now.
    pub fn snapshot(&self) -> XdpSnapshot {
        let c = self.socket.borrow_mut().counters();
        let test = [
            self.test_dropped.get(),
            self.test_duplicated.get(),
            self.test_reordered.get(),
        ];
        XdpSnapshot::new(self.queue(), &c, self.send_errors.get(), test)
    }
}

/// The poll loop of a shard's socket (see the module doc); ends when the
/// path is taken out of the manager (shutdown).
pub(crate) async fn poll_loop(m: std::rc::Rc<PartitionManager>, mut deliver: impl FnMut(Frame)) {
    let mut next_refresh = Instant::now();
    loop {
        let Some(path) = m.repl_net.xdp() else {
            return;
        };
        let now = Instant::now();
        if now >= next_refresh {
            path.refresh(&m.metadata());
            next_refresh = now + PEER_REFRESH;
        }
        if path.poll(&mut deliver) {
            path.last_traffic.set(Instant::now());
        }
        let wait = if path.last_traffic.get().elapsed() < path.spin {
            SPIN_POLL
        } else {
            path.poll
        };
        drop(path);
        glommio::timer::sleep(wait).await;
    }
}

/// A plain copy of one socket's counters, for /metrics and /v1/status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XdpSnapshot {
    pub queue: u32,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_datagrams: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_datagrams: u64,
    pub rx_duplicates: u64,
    /// Datagrams or frames lost or refused, by reason: the receive path's
    /// checks, the kernel's (`kernel_*`, XDP_STATISTICS) and the send side's.
    pub drops: Vec<(String, u64)>,
}

impl XdpSnapshot {
    /// `test`: frames dropped, duplicated and held back on purpose (`TestFaults`).
    fn new(queue: u32, c: &Counters, send_errors: u64, test: [u64; 3]) -> XdpSnapshot {
        let i = &c.invalid;
        let k = &c.kernel;
        let drops = [
            ("short", i.short),
            ("not_udp", i.not_udp),
            ("wrong_destination", i.wrong_destination),
            ("bad_checksum", i.bad_checksum),
            ("unknown_version", i.unknown_version),
            ("unknown_stream", i.unknown_stream),
            ("oversized", i.oversized),
            ("inconsistent", i.inconsistent),
            ("stale", i.stale),
            ("reassembly_overflow", i.reassembly_overflow),
            ("reassembly_timeout", i.reassembly_timeout),
            ("bad_frame", i.bad_frame),
            ("kernel_rx_dropped", k.rx_dropped),
            ("kernel_rx_invalid_descs", k.rx_invalid_descs),
            ("kernel_tx_invalid_descs", k.tx_invalid_descs),
            ("kernel_rx_ring_full", k.rx_ring_full),
            ("kernel_rx_fill_ring_empty", k.rx_fill_ring_empty_descs),
            ("tx_queue_full", c.tx_queue_full),
            ("tx_kick_errors", c.tx_kick_errors),
            ("send_errors", send_errors),
            ("test_dropped", test[0]),
            ("test_duplicated", test[1]),
            ("test_reordered", test[2]),
        ]
        .into_iter()
        .map(|(r, n)| (r.to_owned(), n))
        .collect();
        XdpSnapshot {
            queue,
            tx_frames: c.tx_frames,
            tx_bytes: c.tx_bytes,
            tx_datagrams: c.tx_datagrams,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            rx_datagrams: c.rx_datagrams,
            rx_duplicates: c.rx_duplicates,
            drops,
        }
    }
}
