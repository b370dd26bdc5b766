//! The receiving side: one listener on the current executor, one task per
//! connection, frames handed to the caller's handler in the order they
//! arrived on their connection.
//!
//! A connection that sends a bad header (magic, version, a length over its
//! bound, a checksum mismatch, unknown flags), stalls mid-frame for
//! [`MID_FRAME_TIMEOUT`] or closes mid-frame is closed with one `warn!` naming
//! the peer and the reason; other connections are unaffected.

use crate::codec::{split_frame, Frame, Split};
use crate::tls::{NodeStream, NodeTls};
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// Open connections per listener. A node talks to each other node's shard
/// over a handful of links; a cluster has at most some hundreds of nodes.
pub const CONNECTIONS_MAX: usize = 1024;
/// The listener's accept backlog.
const LISTEN_BACKLOG: i32 = 1024;
/// The smallest free room the read buffer has before a read; a read never
/// asks for more than [`READ_WINDOW_BYTES`] at a time, so zeroing the room it
/// reads into costs O(frame), not O(frame^2).
const READ_CHUNK_BYTES: usize = 64 << 10;
const READ_WINDOW_BYTES: usize = 1 << 20;
/// A peer that started a frame and sends nothing more for this long is cut
/// off. An idle connection (between frames) is never timed out: replication
/// links are long-lived and may be quiet.
pub const MID_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Called for every frame, on the listener's executor, in arrival order per
/// connection, with the sending connection's address. It must not block; a
/// handler that needs to do I/O hands the frame to a task of its own.
pub type Handler = Rc<dyn Fn(SocketAddr, Frame)>;

/// Binds `addr` (port 0 picks one) on the current executor and serves frames
/// of at most `max_payload` payload bytes to `handler` until the returned
/// task is cancelled ([`JoinHandle::cancel`]), which closes the listener and
/// every connection it accepted. Returns the task and the bound address.
///
/// The socket has SO_REUSEADDR (a restarted node gets its port back while old
/// connections linger in TIME_WAIT) but not SO_REUSEPORT: each shard listens
/// on its own port, so a second bind of the same address fails rather than
/// splitting a peer's links between two shards.
pub fn listen(
    addr: SocketAddr,
    max_payload: usize,
    handler: Handler,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    listen_with_tls(addr, max_payload, handler, None)
}

/// As [`listen`]; with `tls`, a connection is served only after a mutual TLS
/// handshake (a client certificate of the CA is required). A failed or
/// stalled handshake closes that connection with one warning.
pub fn listen_with_tls(
    addr: SocketAddr,
    max_payload: usize,
    handler: Handler,
    tls: Option<Arc<NodeTls>>,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = bind(addr)?;
    let local = listener.local_addr().map_err(std::io::Error::from)?;
    let task = glommio::spawn_local(accept_loop(listener, max_payload, handler, tls)).detach();
    Ok((task, local))
}

/// A listening socket for a node-to-node listener: SO_REUSEADDR so that a
/// restarted node gets its port back while connections of its previous life
/// (or of any socket bound there without SO_REUSEPORT) linger in TIME_WAIT,
/// which glommio's own `TcpListener::bind` (SO_REUSEPORT only) refuses with
/// "address in use"; no SO_REUSEPORT, so a second listener on the same
/// address fails instead of sharing it.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the fd is a bound, listening TCP socket that we own; the
    // listener takes it over.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// The connection tasks of one listener, cancelled together when the accept
/// loop is dropped (its task cancelled).
#[derive(Default)]
struct Connections {
    next_id: u64,
    tasks: HashMap<u64, JoinHandle<()>>,
}

struct CancelOnDrop(Rc<RefCell<Connections>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut self.0.borrow_mut().tasks);
        for task in tasks.into_values() {
            task.cancel();
        }
    }
}

/// Removes a connection from its listener's table when its task ends.
struct Unregister {
    connections: Rc<RefCell<Connections>>,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.connections.borrow_mut().tasks.remove(&self.id);
    }
}

async fn accept_loop(listener: TcpListener, max_payload: usize, handler: Handler, tls: Option<Arc<NodeTls>>) {
    let connections = Rc::new(RefCell::new(Connections::default()));
    let _cancel = CancelOnDrop(connections.clone());
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "transport: accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(e) => {
                debug!(error = %e, "transport: connection gone before it was served");
                continue;
            }
        };
        let open = connections.borrow().tasks.len();
        if open >= CONNECTIONS_MAX {
            warn!(%peer, limit = CONNECTIONS_MAX, "transport: too many connections; closing the new one");
            continue;
        }
        let id = {
            let mut c = connections.borrow_mut();
            c.next_id += 1;
            c.next_id
        };
        let unregister = Unregister {
            connections: connections.clone(),
            id,
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let task = glommio::spawn_local(async move {
            let _unregister = unregister;
            match serve_connection(stream, peer, max_payload, &handler, tls.as_deref()).await {
                Ok(()) => debug!(%peer, "transport: connection closed by the peer"),
                Err(Closed::PeerGone(e)) => debug!(%peer, error = %e, "transport: connection lost"),
                Err(Closed::Protocol(reason)) => warn!(%peer, %reason, "transport: closing the connection"),
            }
        })
        .detach();
        connections.borrow_mut().tasks.insert(id, task);
    }
}

/// Why a connection ended, other than a clean close between frames.
enum Closed {
    /// Reset or broken by the peer or the network: normal for a node that
    /// restarts, logged at debug.
    PeerGone(std::io::Error),
    /// The peer broke the protocol or stalled: logged as a warning.
    Protocol(String),
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    max_payload: usize,
    handler: &Handler,
    tls: Option<&NodeTls>,
) -> Result<(), Closed> {
    // Replication waits on these frames' answers: they must not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "transport: cannot set TCP_NODELAY");
    }
    let mut stream = match tls {
        None => NodeStream::Plain(stream),
        Some(tls) => tls
            .accept(stream)
            .await
            .map_err(|e| Closed::Protocol(e.to_string()))?,
    };
    debug!(%peer, "transport: connection accepted");
    // One buffer per connection, reused: once the handler has dropped the
    // frames split off it, `reserve` reclaims the same allocation.
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        let need = match split_frame(&mut buf, max_payload) {
            Ok(Split::Frame(frame)) => {
                handler(peer, frame);
                continue;
            }
            Ok(Split::NeedMore(n)) => n,
            Err(e) => return Err(Closed::Protocol(e.to_string())),
        };
        let mid_frame = !buf.is_empty();
        let read = if mid_frame {
            let read = async { Some(read_more(&mut stream, &mut buf, need).await) };
            let timeout = async {
                glommio::timer::sleep(MID_FRAME_TIMEOUT).await;
                None
            };
            futures_lite::future::or(read, timeout).await
        } else {
            Some(read_more(&mut stream, &mut buf, need).await)
        };
        match read {
            Some(Ok(0)) if buf.is_empty() => return Ok(()),
            Some(Ok(0)) => {
                return Err(Closed::Protocol(format!(
                    "peer closed mid-frame ({} bytes of a frame received)",
                    buf.len()
                )))
            }
            // A peer that keeps the socket full would otherwise keep this
            // task running: let the shard's other tasks in.
            Some(Ok(_)) => glommio::yield_if_needed().await,
            Some(Err(e)) => return Err(Closed::PeerGone(e)),
            None => {
                return Err(Closed::Protocol(format!(
                    "stalled mid-frame for {MID_FRAME_TIMEOUT:?} ({} bytes buffered)",
                    buf.len()
                )))
            }
        }
    }
}

/// Reads once into the buffer's free room (at least `need` bytes of room,
/// at most [`READ_WINDOW_BYTES`] asked for).
async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    need: usize,
) -> std::io::Result<usize> {
    let want = need.clamp(READ_CHUNK_BYTES, READ_WINDOW_BYTES);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let start = buf.len();
    let window = (buf.capacity() - start).min(READ_WINDOW_BYTES);
    buf.resize(start + window, 0);
    let r = stream.read(&mut buf[start..]).await;
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    r
}
