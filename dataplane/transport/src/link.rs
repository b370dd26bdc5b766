//! The sending side: a [`Link`] to one peer address, with a bounded queue
//! drained by one writer task.
//!
//! [`Link::send`] never waits: it checks the frame, queues it or refuses it
//! with [`SendError::Full`], and wakes the writer. The writer connects on the
//! first frame (lazily), then writes queued frames in order, several per
//! `sendmsg` (header, extension and payload of each as separate iovecs: the
//! payload is never copied into a new buffer). Delivery is best effort, in
//! order, with gaps: frames are lost when a connection breaks (those being
//! written) or cannot be made (all queued), and counted in
//! [`Link::dropped`]. The replication layer resends from the follower's
//! acknowledged offset, so it needs no more than that.
//!
//! Reconnection: a failed connect waits [`RECONNECT_BACKOFF_MIN`], doubling up
//! to [`RECONNECT_BACKOFF_MAX`], before the next attempt; a connect that
//! succeeds resets the wait. While idle, the writer watches the connection,
//! so a peer that restarted is noticed before the next frame is written to a
//! dead socket.

use crate::codec::{encode_header, Frame, EXT_BYTES_MAX, HEADER_BYTES};
use crate::tls::{NodeStream, NodeTls};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Waits between failed connection attempts: doubles from the minimum to the
/// maximum, back to the minimum once connected.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// One connection attempt gives up after this long (a host that drops SYNs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames coalesced into one `sendmsg`: three iovecs each, under Linux's
/// IOV_MAX of 1024.
const FRAMES_PER_WRITE_MAX: usize = 256;
const IOV_MAX: usize = 1024;

/// Why [`Link::send`] refused a frame. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue is at its frame or byte bound; try again later (the
    /// replication layer resends on its own schedule).
    #[error("queue full: {frames} frames, {bytes} bytes queued")]
    Full { frames: usize, bytes: usize },
    #[error("header extension of {len} bytes is over the {EXT_BYTES_MAX} byte limit")]
    ExtTooLong { len: usize },
    #[error("payload of {len} bytes is over the {max} byte limit")]
    PayloadTooLarge { len: usize, max: usize },
}

/// A link to the transport listener at one address. Lives on the executor
/// that created it (`Rc`, `!Send`); dropping it stops its writer, and frames
/// still queued are lost.
pub struct Link {
    inner: Rc<Inner>,
    writer: JoinHandle<()>,
}

/// A frame as queued: its encoded header and the caller's buffers, untouched.
struct Queued {
    header: [u8; HEADER_BYTES],
    ext: Bytes,
    payload: Bytes,
}

impl Queued {
    fn wire_bytes(&self) -> usize {
        HEADER_BYTES + self.ext.len() + self.payload.len()
    }
}

struct Inner {
    addr: SocketAddr,
    /// The TLS configuration and the name the peer's certificate must have.
    tls: Option<(Arc<NodeTls>, String)>,
    max_payload: usize,
    queue_frames_max: usize,
    queue_bytes_max: usize,
    state: RefCell<State>,
    sent: Cell<u64>,
    dropped: Cell<u64>,
    /// Told when an established connection ends (see [`Link::on_peer_events`]).
    events: RefCell<Option<PeerEvents>>,
}

/// What a link tells its owner about its peer: `lost` when an established
/// connection ends (closed or reset by the peer while idle, or broken while
/// writing). A failed connection attempt is not a loss, and a connection
/// made is not a sign of life: a dying process's listen backlog still
/// completes handshakes, and the peer never writes on a link.
#[derive(Clone)]
pub struct PeerEvents {
    pub lost: Rc<dyn Fn()>,
}

impl Inner {
    fn tell_lost(&self) {
        let events = self.events.borrow().clone();
        if let Some(e) = events {
            (e.lost)()
        }
    }
}

#[derive(Default)]
struct State {
    /// Frames not yet taken by the writer.
    queue: VecDeque<Queued>,
    /// Frames the writer has taken and is writing.
    writing: usize,
    /// Wire bytes of the queued and the writing frames: the bound covers
    /// both, so the link never holds more than `queue_bytes_max`.
    bytes: usize,
    /// The writer, waiting for frames.
    waker: Option<Waker>,
}

impl Link {
    /// A link to `addr`, spawning its writer on the current executor. It
    /// accepts frames of at most `max_payload` payload bytes (match the
    /// receiver's) and holds at most `queue_frames_max` frames and
    /// `queue_bytes_max` wire bytes, counting those being written. Nothing
    /// connects until the first frame is sent.
    ///
    /// Panics if the bounds cannot hold one frame of the largest size: a
    /// configuration error.
    pub fn new(
        addr: SocketAddr,
        max_payload: usize,
        queue_frames_max: usize,
        queue_bytes_max: usize,
    ) -> Rc<Link> {
        Link::with_tls(addr, max_payload, queue_frames_max, queue_bytes_max, None)
    }

    /// As [`Link::new`]; with `tls` (a configuration and the host name or IP
    /// address the peer's certificate must name), every connection is mutual
    /// TLS.
    pub fn with_tls(
        addr: SocketAddr,
        max_payload: usize,
        queue_frames_max: usize,
        queue_bytes_max: usize,
        tls: Option<(Arc<NodeTls>, String)>,
    ) -> Rc<Link> {
        assert!(
            queue_frames_max >= 1,
            "a link's queue must hold at least one frame"
        );
        assert!(
            queue_bytes_max >= HEADER_BYTES + EXT_BYTES_MAX + max_payload,
            "queue_bytes_max ({queue_bytes_max}) cannot hold one frame of max_payload ({max_payload}) bytes"
        );
        assert!(
            u32::try_from(max_payload).is_ok(),
            "max_payload over the u32 length field"
        );
        let inner = Rc::new(Inner {
            addr,
            tls,
            max_payload,
            queue_frames_max,
            queue_bytes_max,
            state: RefCell::new(State::default()),
            sent: Cell::new(0),
            dropped: Cell::new(0),
            events: RefCell::new(None),
        });
        let writer = glommio::spawn_local(writer(inner.clone())).detach();
        Rc::new(Link { inner, writer })
    }

    /// Tells `events` about this link's connections from now on.
    pub fn on_peer_events(&self, events: PeerEvents) {
        self.inner.events.replace(Some(events));
    }

    /// Queues `frame` for the peer; never waits. The frame's buffers are kept
    /// as they are and written from there.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        let inner = &self.inner;
        if frame.ext.len() > EXT_BYTES_MAX {
            return Err(SendError::ExtTooLong { len: frame.ext.len() });
        }
        if frame.payload.len() > inner.max_payload {
            return Err(SendError::PayloadTooLarge {
                len: frame.payload.len(),
                max: inner.max_payload,
            });
        }
        let mut state = inner.state.borrow_mut();
        let frames = state.queue.len() + state.writing;
        let wire = frame.wire_bytes();
        if frames >= inner.queue_frames_max || state.bytes + wire > inner.queue_bytes_max {
            return Err(SendError::Full {
                frames,
                bytes: state.bytes,
            });
        }
        let header = encode_header(frame.kind, frame.shard, &frame.ext, frame.payload.len());
        state.bytes += wire;
        state.queue.push_back(Queued {
            header,
            ext: frame.ext,
            payload: frame.payload,
        });
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Frames accepted by [`Link::send`] and neither written nor dropped yet.
    pub fn queued(&self) -> usize {
        let state = self.inner.state.borrow();
        state.queue.len() + state.writing
    }

    /// Wire bytes of the frames counted by [`Link::queued`].
    pub fn queued_bytes(&self) -> usize {
        self.inner.state.borrow().bytes
    }

    /// Frames handed whole to the kernel's socket buffer. Not proof of
    /// delivery: a connection that breaks later loses what its buffers held.
    pub fn sent(&self) -> u64 {
        self.inner.sent.get()
    }

    /// Frames accepted and then lost: queued when a connection attempt
    /// failed, or being written when a connection broke.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.writer.cancel();
    }
}

impl Inner {
    /// Takes up to [`FRAMES_PER_WRITE_MAX`] frames off the queue; they stay
    /// counted until [`Inner::finish`].
    fn take_batch(&self) -> Vec<Queued> {
        let mut state = self.state.borrow_mut();
        let n = state.queue.len().min(FRAMES_PER_WRITE_MAX);
        let batch: Vec<Queued> = state.queue.drain(..n).collect();
        state.writing += batch.len();
        batch
    }

    /// The frames of a batch were written (`sent`) or lost.
    fn finish(&self, batch: &[Queued], sent: bool) {
        let mut state = self.state.borrow_mut();
        assert!(
            state.writing >= batch.len(),
            "finishing more frames than were taken"
        );
        state.writing -= batch.len();
        state.bytes -= batch.iter().map(Queued::wire_bytes).sum::<usize>();
        let counter = if sent { &self.sent } else { &self.dropped };
        counter.set(counter.get() + batch.len() as u64);
    }

    /// Drops every queued frame (no connection to send them on); returns how
    /// many.
    fn drop_queued(&self) -> usize {
        let mut state = self.state.borrow_mut();
        let bytes: usize = state.queue.iter().map(Queued::wire_bytes).sum();
        let n = state.queue.len();
        state.queue.clear();
        state.bytes -= bytes;
        self.dropped.set(self.dropped.get() + n as u64);
        n
    }

    /// Resolves once a frame is queued.
    async fn frames_queued(&self) {
        futures_lite::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.queue.is_empty() {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

enum Idle {
    Frames,
    Closed(String),
}

/// Waits for the connection to end while the writer has nothing to write.
/// The peer never sends on a link's connection, so any read result ends it.
async fn closed(stream: &mut NodeStream) -> String {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(0) => "closed by the peer".to_string(),
        Ok(_) => "the peer sent bytes on a send-only link".to_string(),
        Err(e) => e.to_string(),
    }
}

async fn connect(addr: SocketAddr, tls: Option<&(Arc<NodeTls>, String)>) -> std::io::Result<NodeStream> {
    let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(std::io::Error::from)?;
    // Replication's latency is the latency of these frames: no Nagle.
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    match tls {
        None => Ok(NodeStream::Plain(stream)),
        Some((tls, name)) => tls.connect(name, stream).await,
    }
}

/// The link's one writer: connects, writes batches in order, reconnects.
async fn writer(inner: Rc<Inner>) {
    let peer = inner.addr;
    let mut stream: Option<NodeStream> = None;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    // Whether the last attempt failed, so that a run of failures logs once.
    let mut failing = false;
    loop {
        if let Some(s) = stream.as_mut() {
            let idle = futures_lite::future::or(
                async {
                    inner.frames_queued().await;
                    Idle::Frames
                },
                async { Idle::Closed(closed(s).await) },
            )
            .await;
            if let Idle::Closed(reason) = idle {
                debug!(%peer, %reason, "transport: idle link disconnected");
                stream = None;
                inner.tell_lost();
                continue;
            }
        } else {
            inner.frames_queued().await;
        }
        if stream.is_none() {
            match connect(peer, inner.tls.as_ref()).await {
                Ok(s) => {
                    if failing {
                        info!(%peer, "transport: link connected again");
                    }
                    failing = false;
                    backoff = RECONNECT_BACKOFF_MIN;
                    stream = Some(s);
                }
                Err(e) => {
                    let dropped = inner.drop_queued();
                    if failing {
                        debug!(%peer, error = %e, dropped, "transport: still cannot connect");
                    } else {
                        warn!(
                            %peer,
                            error = %e,
                            dropped,
                            "transport: cannot connect; queued frames are dropped until a connection succeeds"
                        );
                    }
                    failing = true;
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let batch = inner.take_batch();
        let written = write_batch(s, &batch).await;
        inner.finish(&batch, written.is_ok());
        if let Err(e) = written {
            warn!(
                %peer,
                error = %e,
                dropped = batch.len(),
                "transport: link broken while writing; reconnecting on the next frame"
            );
            stream = None;
            inner.tell_lost();
        }
        glommio::yield_if_needed().await;
    }
}

/// Writes a batch of frames with as few `sendmsg` calls as the socket buffer
/// allows, each frame's header, extension and payload as their own iovecs.
async fn write_batch(stream: &mut NodeStream, batch: &[Queued]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 3);
    for q in batch {
        slices.push(IoSlice::new(&q.header));
        for part in [&q.ext, &q.payload] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    match stream {
        NodeStream::Plain(tcp) => write_all_vectored(tcp, &mut slices).await,
        NodeStream::Tls(tls) => {
            // rustls copies the slices into its records as it encrypts them.
            for s in &slices {
                tls.write_all(s).await?;
            }
            tls.flush().await
        }
    }
}

/// `write_all` over several slices. The fast path is a non-blocking
/// `sendmsg` of them all; when the socket buffer is full, glommio's own write
/// of the first slice waits (parked on the reactor) until there is room.
/// glommio 0.9's `TcpStream` has no vectored write of its own: its
/// `poll_write_vectored` is the default one, which writes one slice.
async fn write_all_vectored(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = match send_vectored(stream, slices) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.write(&slices[0]).await?,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// One non-blocking `sendmsg` of up to [`IOV_MAX`] slices.
fn send_vectored(stream: &TcpStream, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    let iovlen = slices.len().min(IOV_MAX);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std documents it);
    // sendmsg only reads through the pointer.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovlen as _;
    // SAFETY: a valid socket fd and a msghdr pointing at `iovlen` live
    // iovecs, borrowed for the duration of the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
