//! One AF_XDP socket: one NIC queue, one shard, its own UMEM.
//!
//! Poll-driven and single-threaded: the shard's task calls
//! [`XskSocket::poll_rx`] and [`XskSocket::poll_tx`] in its loop (busy
//! polling); [`XskSocket::send`] queues a frame and pushes what fits at
//! once. In steady state no call makes a system call except the tx kick
//! that copy mode needs (`sendto`, only while the tx ring holds unsent
//! descriptors and the kernel asks for a wakeup).
//!
//! # UMEM layout
//!
//! `rx_ring + tx_ring` chunks of `chunk_bytes`: the first `rx_ring` chunks
//! circulate between the fill ring, the kernel and the rx ring; a received
//! chunk goes back on the fill ring as soon as its datagram is copied out.
//! The other `tx_ring` chunks are the send pool: taken to write a datagram,
//! back in the pool from the completion ring. Defaults: 512 + 512 chunks of
//! 2 KiB = 2 MiB.
//!
//! The socket must be opened, and peers added, on a thread that is in the
//! network namespace of the program's interface.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use ferrolog_transport::{encode_header, split_frame, Frame, Split, EXT_BYTES_MAX, HEADER_BYTES};

use crate::error::XdpError;
use crate::program::XdpProgram;
use crate::reassembly::{Limits, Push, Reassembler, SenderKey};
use crate::sys::{self, CreateFailure, Xsk, XskSpec};
use crate::wire::{
    finish_udp_checksum, frag_count, parse_frame, write_headers, DatagramHeader, DropReason, Endpoints,
    DGRAM_HEADER_BYTES, ETH_BYTES, HEADERS_BYTES,
};

/// Bytes the kernel keeps free at the start of every UMEM chunk (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;
/// Descriptors taken from the rx ring per pass, and written to the tx ring per batch.
const RX_BATCH: u32 = 64;
const TX_BATCH: u32 = 64;
/// How often incomplete messages are checked for timeout.
const EXPIRE_EVERY: Duration = Duration::from_millis(10);
/// Pause between bind attempts while the queue is still held by a socket being torn down.
const BIND_BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Zero-copy or copy mode for the socket's bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it (native attach), else copy.
    Auto,
    ZeroCopy,
    Copy,
}

#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// The NIC queue this socket serves.
    pub queue: u32,
    /// This node's address on the interface (source of datagrams; datagrams to any other
    /// address are dropped).
    pub local_ip: Ipv4Addr,
    /// This socket's stream id on the wire: peers accept datagrams only from streams they added.
    pub stream: u32,
    /// UMEM chunk size: 2048 or 4096. A datagram fills at most `chunk_bytes - 256` bytes.
    pub chunk_bytes: u32,
    /// Receive chunks = fill ring = rx ring size (power of two).
    pub rx_ring: u32,
    /// Send chunks = tx ring = completion ring size (power of two).
    pub tx_ring: u32,
    pub bind: BindMode,
    /// The largest frame payload sent or accepted.
    pub payload_bytes_max: usize,
    pub reassembly: Limits,
    /// Frames queued for sending at most (beyond what is on the tx ring).
    pub tx_frames_queued_max: usize,
    /// Bytes of frames queued for sending at most.
    pub tx_bytes_queued_max: usize,
    /// Peers at most.
    pub peers_max: usize,
    /// How long [`XskSocket::add_peer`] waits for the kernel to resolve a peer's MAC.
    pub neighbour_wait: Duration,
    /// How long binding retries while the queue is busy (a previous socket still closing).
    pub bind_busy_wait: Duration,
}

impl SocketConfig {
    pub fn new(queue: u32, local_ip: Ipv4Addr, stream: u32) -> Self {
        SocketConfig {
            queue,
            local_ip,
            stream,
            chunk_bytes: 2048,
            rx_ring: 512,
            tx_ring: 512,
            bind: BindMode::Auto,
            payload_bytes_max: crate::PAYLOAD_BYTES_MAX,
            reassembly: Limits::default(),
            tx_frames_queued_max: 256,
            tx_bytes_queued_max: 64 << 20,
            peers_max: 256,
            neighbour_wait: Duration::from_secs(1),
            bind_busy_wait: Duration::from_secs(1),
        }
    }

    /// Bytes of UMEM this configuration maps and registers.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.chunk_bytes) * (u64::from(self.rx_ring) + u64::from(self.tx_ring))
    }
}

/// A peer: where to send (its address and the UDP port of its program) and the stream id it
/// sends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub addr: SocketAddrV4,
    pub stream: u32,
}

/// Index of a peer added to one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(u32);

#[derive(Clone, Copy, Debug)]
struct Peer {
    config: PeerConfig,
    mac: [u8; 6],
}

/// Why [`XskSocket::send`] refused a frame. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("unknown peer {0:?}")]
    UnknownPeer(PeerId),
    #[error("header extension of {len} bytes is over the {EXT_BYTES_MAX} byte limit")]
    ExtTooLong { len: usize },
    #[error("payload of {len} bytes is over the {max} byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("send queue full ({frames} frames, {bytes} bytes queued)")]
    QueueFull { frames: usize, bytes: usize },
}

/// Received datagrams dropped as invalid, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvalidCounters {
    pub short: u64,
    pub not_udp: u64,
    pub wrong_destination: u64,
    pub bad_checksum: u64,
    pub unknown_version: u64,
    pub unknown_stream: u64,
    pub oversized: u64,
    pub inconsistent: u64,
    /// Fragments of messages already delivered or overtaken, and such messages dropped whole.
    pub stale: u64,
    /// Incomplete messages evicted to make room.
    pub reassembly_overflow: u64,
    /// Incomplete messages timed out.
    pub reassembly_timeout: u64,
    /// Reassembled bytes that are not a valid frame.
    pub bad_frame: u64,
}

impl InvalidCounters {
    fn add(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Short => &mut self.short,
            DropReason::NotUdp => &mut self.not_udp,
            DropReason::WrongDestination => &mut self.wrong_destination,
            DropReason::BadChecksum => &mut self.bad_checksum,
            DropReason::UnknownVersion => &mut self.unknown_version,
            DropReason::UnknownStream => &mut self.unknown_stream,
            DropReason::Oversized => &mut self.oversized,
            DropReason::Inconsistent => &mut self.inconsistent,
            DropReason::Stale => &mut self.stale,
            DropReason::ReassemblyOverflow => &mut self.reassembly_overflow,
            DropReason::ReassemblyTimeout => &mut self.reassembly_timeout,
            DropReason::BadFrame => &mut self.bad_frame,
        };
        *c += 1;
    }
}

/// Counters of one socket. `kernel` is read from the socket (XDP_STATISTICS) by
/// [`XskSocket::counters`]: `rx_fill_ring_empty_descs` and `rx_ring_full` are the kernel's drops
/// for lack of a fill chunk and for a full rx ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_frames: u64,
    /// Frame bytes (transport header, extension, payload) sent.
    pub tx_bytes: u64,
    pub tx_datagrams: u64,
    /// Frames refused because the send queue was full.
    pub tx_queue_full: u64,
    /// tx kicks that failed with an error other than "try again".
    pub tx_kick_errors: u64,
    pub rx_frames: u64,
    /// Frame bytes received.
    pub rx_bytes: u64,
    pub rx_datagrams: u64,
    pub rx_duplicates: u64,
    pub invalid: InvalidCounters,
    pub kernel: sys::XdpStatistics,
}

struct Outgoing {
    peer: usize,
    header: [u8; HEADER_BYTES],
    frame: Frame,
    msg_id: u64,
    total: usize,
    frag_count: u16,
    next_frag: u16,
}

/// One AF_XDP socket with its UMEM, bound to one queue.
pub struct XskSocket {
    program: Arc<XdpProgram>,
    xsk: Xsk,
    config: SocketConfig,
    zero_copy: bool,
    local_mac: [u8; 6],
    frag_bytes: usize,
    session: u32,
    next_msg_id: u64,
    ip_id: u16,
    peers: Vec<Peer>,
    free_tx: Vec<u64>,
    pending: VecDeque<Outgoing>,
    pending_bytes: usize,
    fill_backlog: Vec<u64>,
    reassembler: Reassembler,
    counters: Counters,
    next_expire: Instant,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("ifname", &self.program.ifname())
            .field("queue", &self.config.queue)
            .field("zero_copy", &self.zero_copy)
            .finish()
    }
}

impl XskSocket {
    /// Creates the UMEM and socket for `config.queue` of the program's interface, binds it
    /// (zero-copy first if [`BindMode::Auto`]) and puts it in the program's XSKMAP.
    pub fn open(program: &Arc<XdpProgram>, config: SocketConfig) -> Result<XskSocket, XdpError> {
        check_config(&config)?;
        let ifname = program.ifname().to_owned();
        let here = sys::current_netns()
            .ok()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.ino());
        if here != program.netns_ino() {
            return Err(XdpError::Config(
                "open the socket on a thread in the network namespace of the program's interface".into(),
            ));
        }
        let ifname_c =
            sys::cstring(&ifname).ok_or_else(|| XdpError::NoSuchInterface { name: ifname.clone() })?;
        if sys::ifindex(&ifname_c).is_none() {
            return Err(XdpError::NoSuchInterface { name: ifname });
        }
        let queues = sys::if_queue_count(&ifname_c)
            .map_err(|e| XdpError::from_call("ETHTOOL_GCHANNELS", e.raw_os_error().unwrap_or(libc::EIO)))?
            .unwrap_or(u32::MAX)
            .min(program.queues_max());
        if config.queue >= queues {
            return Err(XdpError::QueueOutOfRange {
                ifname,
                queue: config.queue,
                queues,
            });
        }
        let mtu = sys::if_mtu(&ifname_c)
            .map_err(|e| XdpError::from_call("SIOCGIFMTU", e.raw_os_error().unwrap_or(libc::EIO)))?;
        let local_mac = sys::if_hwaddr(&ifname_c)
            .map_err(|e| XdpError::from_call("SIOCGIFHWADDR", e.raw_os_error().unwrap_or(libc::EIO)))?;
        // The largest Ethernet frame: the MTU, or what a chunk holds after the kernel's headroom.
        let frame_max = (mtu as usize + ETH_BYTES).min((config.chunk_bytes - XDP_PACKET_HEADROOM) as usize);
        let frag_bytes = frame_max.saturating_sub(HEADERS_BYTES).min(usize::from(u16::MAX));
        let message_max = HEADER_BYTES + EXT_BYTES_MAX + config.payload_bytes_max;
        if frag_bytes < 256 || frag_count(message_max, frag_bytes) > usize::from(u16::MAX) {
            return Err(XdpError::Config(format!(
                "MTU {mtu} leaves {frag_bytes} bytes per datagram: too few for {message_max} byte messages"
            )));
        }

        let xsk = bind(&ifname, &ifname_c, &config)?;
        let zero_copy = xsk.1;
        let mut xsk = xsk.0;
        program.insert(config.queue, xsk.fd())?;

        let chunk = u64::from(config.chunk_bytes);
        let mut fill_backlog: Vec<u64> = (0..u64::from(config.rx_ring)).map(|i| i * chunk).collect();
        refill(&mut xsk, &mut fill_backlog);
        assert!(
            fill_backlog.is_empty(),
            "fill ring smaller than the receive chunks"
        );
        let free_tx = (0..u64::from(config.tx_ring))
            .map(|i| (u64::from(config.rx_ring) + i) * chunk)
            .collect();

        let mut reassembly = config.reassembly;
        reassembly.message_bytes_max = reassembly.message_bytes_max.min(message_max);
        tracing::info!(
            ifname = %program.ifname(), queue = config.queue, zero_copy, mtu, frag_bytes,
            umem_bytes = config.umem_bytes(), "AF_XDP socket open"
        );
        Ok(XskSocket {
            program: Arc::clone(program),
            xsk,
            zero_copy,
            local_mac,
            frag_bytes,
            session: random_u32(),
            next_msg_id: 0,
            ip_id: 0,
            peers: Vec::new(),
            free_tx,
            pending: VecDeque::new(),
            pending_bytes: 0,
            fill_backlog,
            reassembler: Reassembler::new(reassembly),
            counters: Counters::default(),
            next_expire: Instant::now() + EXPIRE_EVERY,
            config,
        })
    }

    /// Whether the bind got zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Data bytes per datagram (from the interface MTU and the chunk size).
    pub fn frag_bytes(&self) -> usize {
        self.frag_bytes
    }

    pub fn queue(&self) -> u32 {
        self.config.queue
    }

    /// Adds a peer: resolves its MAC through the kernel's neighbour table (waiting at most
    /// `neighbour_wait`). Adding the same peer again returns its id.
    pub fn add_peer(&mut self, peer: PeerConfig) -> Result<PeerId, XdpError> {
        if let Some(i) = self.peers.iter().position(|p| p.config == peer) {
            return Ok(PeerId(i as u32));
        }
        if self.peers.len() >= self.config.peers_max {
            return Err(XdpError::Config(format!(
                "more than {} peers",
                self.config.peers_max
            )));
        }
        let ip = *peer.addr.ip();
        let mac = crate::neigh::resolve(ip, self.config.neighbour_wait).ok_or(XdpError::NoNeighbour {
            ip,
            waited_ms: self.config.neighbour_wait.as_millis() as u64,
        })?;
        self.peers.push(Peer { config: peer, mac });
        Ok(PeerId((self.peers.len() - 1) as u32))
    }

    /// Queues `frame` for `peer` and sends what fits now. Never blocks; the rest goes out on
    /// later [`XskSocket::poll_tx`] calls.
    pub fn send(&mut self, peer: PeerId, frame: Frame) -> Result<(), SendError> {
        let peer_index = peer.0 as usize;
        if peer_index >= self.peers.len() {
            return Err(SendError::UnknownPeer(peer));
        }
        if frame.ext.len() > EXT_BYTES_MAX {
            return Err(SendError::ExtTooLong { len: frame.ext.len() });
        }
        if frame.payload.len() > self.config.payload_bytes_max {
            return Err(SendError::PayloadTooLarge {
                len: frame.payload.len(),
                max: self.config.payload_bytes_max,
            });
        }
        let total = frame.wire_bytes();
        if self.pending.len() >= self.config.tx_frames_queued_max
            || self.pending_bytes + total > self.config.tx_bytes_queued_max
        {
            self.counters.tx_queue_full += 1;
            return Err(SendError::QueueFull {
                frames: self.pending.len(),
                bytes: self.pending_bytes,
            });
        }
        let header = encode_header(frame.kind, frame.shard, &frame.ext, frame.payload.len());
        let count =
            u16::try_from(frag_count(total, self.frag_bytes)).expect("fragment count bounded at open");
        self.pending.push_back(Outgoing {
            peer: peer_index,
            header,
            frame,
            msg_id: self.next_msg_id,
            total,
            frag_count: count,
            next_frag: 0,
        });
        self.next_msg_id += 1;
        self.pending_bytes += total;
        self.poll_tx();
        Ok(())
    }

    /// Frames queued and not yet fully on the tx ring.
    pub fn tx_queued(&self) -> usize {
        self.pending.len()
    }

    /// Whether everything sent has left: nothing queued, nothing on the tx ring unconsumed.
    pub fn tx_idle(&self) -> bool {
        self.pending.is_empty() && self.xsk.tx_unconsumed() == 0
    }

    /// Takes back completed send chunks, writes queued fragments to the tx ring and kicks the
    /// kernel if it needs it. Returns the datagrams put on the ring.
    pub fn poll_tx(&mut self) -> usize {
        self.reclaim_completions();
        let mut submitted = 0usize;
        let chunk = u64::from(self.config.chunk_bytes);
        while let Some(out) = self.pending.front_mut() {
            let want = u32::from(out.frag_count - out.next_frag)
                .min(TX_BATCH)
                .min(self.free_tx.len() as u32);
            if want == 0 {
                break;
            }
            let (n, idx) = self.xsk.tx_reserve(want);
            if n == 0 {
                break;
            }
            let peer = self.peers[out.peer];
            let ep = Endpoints {
                src_mac: self.local_mac,
                dst_mac: peer.mac,
                src_ip: self.config.local_ip,
                dst_ip: *peer.config.addr.ip(),
                src_port: self.program.port(),
                dst_port: peer.config.addr.port(),
            };
            for i in 0..n {
                let addr = self.free_tx.pop().expect("counted free chunks");
                debug_assert_eq!(addr % chunk, 0, "send chunks are chunk-aligned");
                let frag_index = out.next_frag;
                out.next_frag += 1;
                let offset = usize::from(frag_index) * self.frag_bytes;
                let packet_len = HEADERS_BYTES + self.frag_bytes.min(out.total - offset);
                let fragment = Fragment {
                    endpoints: &ep,
                    ip_id: self.ip_id,
                    stream: self.config.stream,
                    session: self.session,
                    frag_bytes: self.frag_bytes,
                    frag_index,
                };
                fragment.write(self.xsk.area_mut(addr, packet_len), out);
                self.ip_id = self.ip_id.wrapping_add(1);
                self.xsk.tx_set(idx.wrapping_add(i), addr, packet_len as u32);
            }
            self.xsk.tx_submit(n);
            submitted += n as usize;
            self.counters.tx_datagrams += u64::from(n);
            if out.next_frag == out.frag_count {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += out.total as u64;
                self.pending_bytes -= out.total;
                self.pending.pop_front();
            }
        }
        self.kick();
        submitted
    }

    /// Receives what is on the rx ring: datagrams are checked and reassembled, every complete
    /// frame goes to `f`, chunks go back on the fill ring. Returns the frames delivered.
    pub fn poll_rx(&mut self, mut f: impl FnMut(Frame)) -> usize {
        let (n, idx) = self.xsk.rx_peek(RX_BATCH);
        let now = Instant::now();
        let mut delivered = 0;
        if n == 0 {
            if self.xsk.fill_needs_wakeup() {
                self.xsk.wake_rx();
            }
        } else {
            let chunk = u64::from(self.config.chunk_bytes);
            for i in 0..n {
                let (addr, len) = self.xsk.rx_desc(idx.wrapping_add(i));
                let rx = Rx {
                    local_ip: self.config.local_ip,
                    port: self.program.port(),
                    peers: &self.peers,
                    payload_bytes_max: self.config.payload_bytes_max,
                };
                let frame = rx.datagram(
                    self.xsk.area(addr, len as usize),
                    now,
                    &mut self.reassembler,
                    &mut self.counters,
                );
                if let Some(frame) = frame {
                    delivered += 1;
                    f(frame);
                }
                self.fill_backlog.push(addr - addr % chunk);
            }
            self.xsk.rx_release(n);
            refill(&mut self.xsk, &mut self.fill_backlog);
        }
        if now >= self.next_expire {
            self.next_expire = now + EXPIRE_EVERY;
            self.reassembler.expire(now);
            let e = self.reassembler.take_evictions();
            self.counters.invalid.reassembly_timeout += e.timeout;
            self.counters.invalid.reassembly_overflow += e.overflow;
            self.counters.invalid.stale += e.stale;
        }
        delivered
    }

    /// The counters, with the kernel's drop counters read now (one getsockopt).
    pub fn counters(&mut self) -> Counters {
        let e = self.reassembler.take_evictions();
        self.counters.invalid.reassembly_timeout += e.timeout;
        self.counters.invalid.reassembly_overflow += e.overflow;
        self.counters.invalid.stale += e.stale;
        if let Ok(k) = self.xsk.statistics() {
            self.counters.kernel = k;
        }
        self.counters
    }

    fn reclaim_completions(&mut self) {
        let (n, idx) = self.xsk.comp_peek(self.config.tx_ring);
        for i in 0..n {
            self.free_tx.push(self.xsk.comp_addr(idx.wrapping_add(i)));
        }
        self.xsk.comp_release(n);
    }

    fn kick(&mut self) {
        if self.xsk.tx_unconsumed() == 0 || !self.xsk.tx_needs_wakeup() {
            return;
        }
        if let Err(e) = self.xsk.kick_tx() {
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => {}
                _ => self.counters.tx_kick_errors += 1,
            }
        }
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        self.program.remove(self.config.queue);
    }
}

/// What the receive path needs besides the reassembler and counters.
struct Rx<'a> {
    local_ip: Ipv4Addr,
    port: u16,
    peers: &'a [Peer],
    payload_bytes_max: usize,
}

impl Rx<'_> {
    /// Checks one received Ethernet frame, feeds it to the reassembler and returns a completed
    /// transport frame, if any. Every drop is counted.
    fn datagram(&self, bytes: &[u8], now: Instant, r: &mut Reassembler, c: &mut Counters) -> Option<Frame> {
        c.rx_datagrams += 1;
        let result = self.check(bytes, now, r, c);
        match result {
            Ok(frame) => {
                if let Some(frame) = &frame {
                    c.rx_frames += 1;
                    c.rx_bytes += frame.wire_bytes() as u64;
                }
                frame
            }
            Err(reason) => {
                c.invalid.add(reason);
                None
            }
        }
    }

    fn check(
        &self,
        bytes: &[u8],
        now: Instant,
        r: &mut Reassembler,
        c: &mut Counters,
    ) -> Result<Option<Frame>, DropReason> {
        let p = parse_frame(bytes)?;
        if p.dst_ip != self.local_ip || p.dst_port != self.port {
            return Err(DropReason::WrongDestination);
        }
        let h = DatagramHeader::decode(p.udp_payload)?;
        if !self
            .peers
            .iter()
            .any(|peer| *peer.config.addr.ip() == p.src_ip && peer.config.stream == h.stream)
        {
            return Err(DropReason::UnknownStream);
        }
        let key = SenderKey {
            addr: u32::from(p.src_ip),
            stream: h.stream,
        };
        match r.push(now, key, &h, &p.udp_payload[DGRAM_HEADER_BYTES..]) {
            Push::Complete(message) => decode_message(message, self.payload_bytes_max).map(Some),
            Push::Pending => Ok(None),
            Push::Duplicate => {
                c.rx_duplicates += 1;
                Ok(None)
            }
            Push::Dropped(reason) => Err(reason),
        }
    }
}

/// The transport frame in a reassembled message; the message must be exactly one frame.
pub(crate) fn decode_message(message: Vec<u8>, payload_bytes_max: usize) -> Result<Frame, DropReason> {
    // A Vec-backed `Bytes` converts to `BytesMut` without copying.
    let mut buf = BytesMut::from(bytes::Bytes::from(message));
    match split_frame(&mut buf, payload_bytes_max) {
        Ok(Split::Frame(frame)) if buf.is_empty() => Ok(frame),
        _ => Err(DropReason::BadFrame),
    }
}

/// One datagram of an outgoing message.
struct Fragment<'a> {
    endpoints: &'a Endpoints,
    ip_id: u16,
    stream: u32,
    session: u32,
    frag_bytes: usize,
    frag_index: u16,
}

impl Fragment<'_> {
    /// Writes the whole Ethernet frame into `buf`, which is exactly as long as the frame:
    /// headers, then the message bytes of this fragment, the datagram header's CRCs and the UDP
    /// checksum last.
    fn write(&self, buf: &mut [u8], out: &Outgoing) {
        let offset = usize::from(self.frag_index) * self.frag_bytes;
        let len = buf.len() - HEADERS_BYTES;
        debug_assert_eq!(
            len,
            self.frag_bytes.min(out.total - offset),
            "buffer sized for the fragment"
        );
        write_headers(buf, self.endpoints, self.ip_id, DGRAM_HEADER_BYTES + len);
        let data = &mut buf[HEADERS_BYTES..];
        copy_message_range(&out.header, &out.frame, offset, data);
        let header = DatagramHeader {
            stream: self.stream,
            session: self.session,
            msg_id: out.msg_id,
            frag_index: self.frag_index,
            frag_count: out.frag_count,
            frag_bytes: u16::try_from(self.frag_bytes).expect("frag_bytes bounded at open"),
            total_len: u32::try_from(out.total).expect("message length bounded by send"),
            data_crc: crc32c::crc32c(data),
        };
        header.encode(&mut buf[HEADERS_BYTES - DGRAM_HEADER_BYTES..HEADERS_BYTES]);
        finish_udp_checksum(buf);
    }
}

/// Copies bytes `offset..offset + dst.len()` of the message (frame header, extension, payload)
/// into `dst`.
fn copy_message_range(header: &[u8; HEADER_BYTES], frame: &Frame, offset: usize, dst: &mut [u8]) {
    let mut at = offset;
    let mut written = 0;
    for part in [&header[..], &frame.ext[..], &frame.payload[..]] {
        if written == dst.len() {
            break;
        }
        if at >= part.len() {
            at -= part.len();
            continue;
        }
        let n = (part.len() - at).min(dst.len() - written);
        dst[written..written + n].copy_from_slice(&part[at..at + n]);
        written += n;
        at = 0;
    }
    assert_eq!(written, dst.len(), "fragment range past the end of the message");
}

/// Puts the chunks of `backlog` on the fill ring (as many as it takes).
fn refill(xsk: &mut Xsk, backlog: &mut Vec<u64>) {
    while !backlog.is_empty() {
        let (n, idx) = xsk.fill_reserve(backlog.len() as u32);
        if n == 0 {
            return;
        }
        for i in 0..n {
            xsk.fill_set(idx.wrapping_add(i), backlog.pop().expect("counted backlog"));
        }
        xsk.fill_submit(n);
    }
}

fn check_config(c: &SocketConfig) -> Result<(), XdpError> {
    let pow2 = |v: u32| v.is_power_of_two();
    if c.chunk_bytes != 2048 && c.chunk_bytes != 4096 {
        return Err(XdpError::Config(format!(
            "chunk_bytes {} (2048 or 4096)",
            c.chunk_bytes
        )));
    }
    if !pow2(c.rx_ring) || !pow2(c.tx_ring) || c.rx_ring < 64 || c.tx_ring < 64 {
        return Err(XdpError::Config(format!(
            "rx_ring {} and tx_ring {} must be powers of two, at least 64",
            c.rx_ring, c.tx_ring
        )));
    }
    if c.payload_bytes_max > crate::PAYLOAD_BYTES_MAX {
        return Err(XdpError::Config(format!(
            "payload_bytes_max over {}",
            crate::PAYLOAD_BYTES_MAX
        )));
    }
    Ok(())
}

/// Creates the socket, zero-copy first where asked, retrying while the queue is busy.
fn bind(ifname: &str, ifname_c: &std::ffi::CStr, c: &SocketConfig) -> Result<(Xsk, bool), XdpError> {
    let modes: &[u16] = match c.bind {
        BindMode::Auto => &[sys::XDP_ZEROCOPY, sys::XDP_COPY],
        BindMode::ZeroCopy => &[sys::XDP_ZEROCOPY],
        BindMode::Copy => &[sys::XDP_COPY],
    };
    let spec = |mode: u16| XskSpec {
        chunk_bytes: c.chunk_bytes,
        chunks: c.rx_ring + c.tx_ring,
        fill: c.rx_ring,
        comp: c.tx_ring,
        rx: c.rx_ring,
        tx: c.tx_ring,
        bind_flags: mode | sys::XDP_USE_NEED_WAKEUP,
    };
    let mut last = None;
    for (i, &mode) in modes.iter().enumerate() {
        let deadline = Instant::now() + c.bind_busy_wait;
        let failure = loop {
            match Xsk::create(ifname_c, c.queue, spec(mode)) {
                Ok(xsk) => return Ok((xsk, mode == sys::XDP_ZEROCOPY)),
                Err(CreateFailure::Socket(libc::EBUSY)) if Instant::now() < deadline => {
                    std::thread::sleep(BIND_BUSY_PAUSE);
                }
                Err(f) => break f,
            }
        };
        let more = i + 1 < modes.len();
        match failure {
            CreateFailure::Socket(errno) if more && errno != libc::EPERM && errno != libc::EACCES => {
                tracing::debug!(
                    ifname,
                    queue = c.queue,
                    errno,
                    "zero-copy bind refused; binding in copy mode"
                );
                last = Some(failure);
            }
            f => return Err(create_error(ifname, c, f)),
        }
    }
    Err(create_error(
        ifname,
        c,
        last.expect("at least one bind mode tried"),
    ))
}

fn create_error(ifname: &str, c: &SocketConfig, f: CreateFailure) -> XdpError {
    match f {
        CreateFailure::Mmap(errno) => XdpError::from_call("mmap(UMEM)", errno),
        CreateFailure::Umem(libc::ENOBUFS | libc::ENOMEM) => XdpError::Memlock {
            bytes: c.umem_bytes(),
            limit: sys::memlock_limit(),
        },
        CreateFailure::Umem(errno) => XdpError::from_call("xsk_umem__create", errno),
        CreateFailure::Socket(errno @ (libc::EPERM | libc::EACCES)) => XdpError::NoPermission {
            what: "AF_XDP socket",
            errno,
        },
        CreateFailure::Socket(libc::ENODEV) => XdpError::NoSuchInterface {
            name: ifname.to_owned(),
        },
        CreateFailure::Socket(errno) => XdpError::DriverRefused {
            ifname: ifname.to_owned(),
            what: "AF_XDP bind",
            errno,
        },
    }
}

/// A session id that differs between runs: the hasher's per-process random keys mixed with the
/// clock.
fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn copy_message_range_spans_the_parts() {
        let frame = Frame {
            kind: 1,
            shard: 2,
            ext: Bytes::from_static(b"EXT"),
            payload: Bytes::from_static(b"payload"),
        };
        let header = encode_header(1, 2, b"EXT", 7);
        let mut whole = header.to_vec();
        whole.extend_from_slice(b"EXTpayload");
        for start in 0..whole.len() {
            for end in start..=whole.len() {
                let mut dst = vec![0u8; end - start];
                copy_message_range(&header, &frame, start, &mut dst);
                assert_eq!(dst, &whole[start..end]);
            }
        }
    }

    #[test]
    fn decode_message_needs_exactly_one_frame() {
        let frame = Frame {
            kind: 9,
            shard: 3,
            ext: Bytes::from_static(b"e"),
            payload: Bytes::from_static(b"pp"),
        };
        let mut m = encode_header(9, 3, b"e", 2).to_vec();
        m.extend_from_slice(b"epp");
        assert_eq!(decode_message(m.clone(), 100), Ok(frame));
        let mut longer = m.clone();
        longer.push(0);
        assert_eq!(decode_message(longer, 100), Err(DropReason::BadFrame));
        assert_eq!(
            decode_message(m[..m.len() - 1].to_vec(), 100),
            Err(DropReason::BadFrame)
        );
        assert_eq!(decode_message(Vec::new(), 100), Err(DropReason::BadFrame));
        assert_eq!(decode_message(m, 1), Err(DropReason::BadFrame));
    }

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const PORT: u16 = 7531;
    const FRAG_BYTES: usize = 1432;

    fn test_frame(i: usize, payload_len: usize) -> Frame {
        Frame {
            kind: i as u8,
            shard: 3,
            ext: Bytes::from(vec![i as u8; i % 40]),
            payload: (0..payload_len)
                .map(|j| (j * 13 + i) as u8)
                .collect::<Vec<u8>>()
                .into(),
        }
    }

    /// The Ethernet frames the sender writes for `frame` as message `msg_id`.
    fn packets(frame: &Frame, msg_id: u64) -> Vec<Vec<u8>> {
        let total = frame.wire_bytes();
        let out = Outgoing {
            peer: 0,
            header: encode_header(frame.kind, frame.shard, &frame.ext, frame.payload.len()),
            frame: frame.clone(),
            msg_id,
            total,
            frag_count: frag_count(total, FRAG_BYTES) as u16,
            next_frag: 0,
        };
        let ep = Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: REMOTE,
            dst_ip: LOCAL,
            src_port: PORT,
            dst_port: PORT,
        };
        (0..out.frag_count)
            .map(|frag_index| {
                let len = FRAG_BYTES.min(total - usize::from(frag_index) * FRAG_BYTES);
                let mut buf = vec![0u8; HEADERS_BYTES + len];
                let f = Fragment {
                    endpoints: &ep,
                    ip_id: frag_index,
                    stream: 9,
                    session: 77,
                    frag_bytes: FRAG_BYTES,
                    frag_index,
                };
                f.write(&mut buf, &out);
                buf
            })
            .collect()
    }

    fn receiver() -> (Vec<Peer>, Reassembler, Counters) {
        let peers = vec![Peer {
            config: PeerConfig {
                addr: SocketAddrV4::new(REMOTE, PORT),
                stream: 9,
            },
            mac: [0; 6],
        }];
        let limits = Limits {
            messages_max: 4,
            bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
            ..Limits::default()
        };
        (peers, Reassembler::new(limits), Counters::default())
    }

    fn feed(packets: &[Vec<u8>], r: &mut Reassembler, peers: &[Peer], c: &mut Counters) -> Vec<Frame> {
        let rx = Rx {
            local_ip: LOCAL,
            port: PORT,
            peers,
            payload_bytes_max: 1 << 20,
        };
        let now = Instant::now();
        packets.iter().filter_map(|p| rx.datagram(p, now, r, c)).collect()
    }

    #[test]
    fn frames_survive_the_datagram_path_exactly() {
        let (peers, mut r, mut c) = receiver();
        let frames: Vec<Frame> = [0, 1, 1413, 1414, 5000, 100_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| test_frame(i, n))
            .collect();
        let mut wire = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            wire.extend(packets(f, i as u64));
        }
        assert_eq!(feed(&wire, &mut r, &peers, &mut c), frames);
        assert_eq!(c.rx_frames, frames.len() as u64);
        assert_eq!(c.invalid, InvalidCounters::default());
    }

    #[test]
    fn every_nth_datagram_lost_costs_only_its_frames() {
        let frames: Vec<Frame> = (0..20).map(|i| test_frame(i, 500 + i * 700)).collect();
        for n in [2usize, 3, 7, 11] {
            let (peers, mut r, mut c) = receiver();
            let mut wire = Vec::new();
            let mut hit = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let p = packets(f, i as u64);
                let start = wire.len();
                wire.extend(p);
                hit.push((start..wire.len()).any(|k| k % n == n - 1));
            }
            let kept: Vec<Vec<u8>> = wire
                .into_iter()
                .enumerate()
                .filter(|(k, _)| k % n != n - 1)
                .map(|(_, p)| p)
                .collect();
            let got = feed(&kept, &mut r, &peers, &mut c);
            let expected: Vec<Frame> = frames
                .iter()
                .zip(&hit)
                .filter(|(_, h)| !**h)
                .map(|(f, _)| f.clone())
                .collect();
            assert_eq!(got, expected, "every {n}th datagram lost");
        }
    }

    #[test]
    fn damaged_datagrams_are_counted_by_reason() {
        let (peers, mut r, mut c) = receiver();
        let f = test_frame(1, 3000);
        let p = packets(&f, 0);
        let truncated = p[0][..p[0].len() - 1].to_vec();
        let mut bad_data = p[1].clone();
        let last = bad_data.len() - 1;
        bad_data[last] ^= 1;
        let mut bad_ip = p[1].clone();
        bad_ip[ETH_BYTES + 12] ^= 1; // source address
        let mut unknown_stream = p[1].clone();
        unknown_stream[HEADERS_BYTES - DGRAM_HEADER_BYTES + 7] ^= 1; // stream, header CRC now wrong
        let mut other_port = p[1].clone();
        other_port[ETH_BYTES + 20 + 3] ^= 1;
        let damaged = [
            truncated,
            bad_data,
            bad_ip,
            unknown_stream,
            other_port,
            p[0][..30].to_vec(),
        ];
        assert!(feed(&damaged, &mut r, &peers, &mut c).is_empty());
        let i = c.invalid;
        assert_eq!((i.short, i.bad_checksum, i.wrong_destination), (2, 3, 1), "{i:?}");
        // The intact datagrams still make the frame, duplicates and all.
        let again = [
            p[2].clone(),
            p[0].clone(),
            p[0].clone(),
            p[1].clone(),
            p[1].clone(),
        ];
        assert_eq!(feed(&again, &mut r, &peers, &mut c), vec![f]);
        assert_eq!(c.invalid.stale, 1, "a fragment of a delivered frame");
        assert_eq!(c.rx_duplicates, 1);
    }

    #[test]
    fn unknown_streams_and_oversized_messages_are_refused() {
        let (peers, mut r, mut c) = receiver();
        let p = packets(&test_frame(1, 10), 0);
        let others = vec![Peer {
            config: PeerConfig {
                addr: SocketAddrV4::new(REMOTE, PORT),
                stream: 8,
            },
            mac: [0; 6],
        }];
        assert!(feed(&p, &mut r, &others, &mut c).is_empty());
        assert_eq!(c.invalid.unknown_stream, 1);
        let big = packets(&test_frame(2, (1 << 20) + 1), 1);
        assert!(feed(&big[..3], &mut r, &peers, &mut c).is_empty());
        assert_eq!(c.invalid.oversized, 3);
        assert_eq!(r.held(), (0, 0));
    }

    #[derive(Clone, Debug)]
    enum Fault {
        Drop,
        Duplicate,
        Flip(usize),
        Truncate(usize),
    }

    fn fault() -> impl Strategy<Value = Option<Fault>> {
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(Fault::Drop)),
            1 => Just(Some(Fault::Duplicate)),
            1 => any::<usize>().prop_map(|b| Some(Fault::Flip(b))),
            1 => any::<usize>().prop_map(|n| Some(Fault::Truncate(n))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Loss, duplication, reordering, truncation and bit flips anywhere in the Ethernet frame:
        /// every frame delivered is one that was sent, in order, at most once; no panic.
        #[test]
        fn exact_frames_or_nothing(
            lens in prop::collection::vec(0usize..9000, 1..8),
            faults in prop::collection::vec(fault(), 0..60),
            swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..10),
        ) {
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, &n)| test_frame(i, n)).collect();
            let mut wire = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                wire.extend(packets(f, i as u64));
            }
            let mut faulty = Vec::new();
            for (n, p) in wire.into_iter().enumerate() {
                match faults.get(n).cloned().flatten() {
                    None => faulty.push(p),
                    Some(Fault::Drop) => {}
                    Some(Fault::Duplicate) => { faulty.push(p.clone()); faulty.push(p); }
                    Some(Fault::Flip(bit)) => {
                        let mut p = p;
                        let bit = bit % (p.len() * 8);
                        p[bit / 8] ^= 1 << (bit % 8);
                        faulty.push(p);
                    }
                    Some(Fault::Truncate(n)) => { let n = n % p.len(); faulty.push(p[..n].to_vec()); }
                }
            }
            if !faulty.is_empty() {
                for (a, b) in swaps {
                    let (a, b) = (a.index(faulty.len()), b.index(faulty.len()));
                    faulty.swap(a, b);
                }
            }
            let (peers, mut r, mut c) = receiver();
            let got = feed(&faulty, &mut r, &peers, &mut c);
            let mut next = 0;
            for f in &got {
                let i = frames[next..].iter().position(|s| s == f).map(|p| p + next);
                prop_assert!(i.is_some(), "a frame that was not sent, or out of order");
                next = i.unwrap_or(0) + 1;
            }
            prop_assert_eq!(c.rx_datagrams, faulty.len() as u64);
        }
    }
}
