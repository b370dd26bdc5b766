//! The connection loop: one listener per shard (SO_REUSEPORT spreads
//! connections over the shards), one task per connection.
//!
//! A connection's requests are pipelined: up to `pipeline_depth` are in
//! progress at once and their answers are written in the order the
//! requests came (see [`serve_stream`]); requests that change group,
//! metadata or session state still run one at a time. Anything
//! that cannot be answered with a Kafka error closes the connection with one
//! log line; other connections are unaffected.
//!
//! With TLS the connection task first runs the rustls handshake (bounded by
//! the request read timeout), then serves the TLS stream; the loop is
//! generic over the stream, so a plain-text connection runs the same code
//! on the bare `TcpStream` with no indirection. A listener that requires
//! SASL serves only ApiVersions, SaslHandshake and SaslAuthenticate before
//! the connection authenticated; anything else closes it.

use crate::frame::{self, Decoded};
use crate::handlers;
use crate::session::Session;
use crate::shard::{local, Shard};
use bytes::BytesMut;
use ferrolog_model::{Ntp, ShardId};
use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// The smallest and largest window one read may fill (and so must zero
/// first); see [`ReadWindow`].
const READ_WINDOW_MIN: usize = 8 << 10;
const READ_WINDOW_MAX: usize = 4 * READ_CHUNK_BYTES;

/// How many bytes the next read of a connection offers the socket. A read
/// needs initialized memory, so the window is zeroed before every read: a
/// connection of small requests (one 1 KiB produce at a time) zeroes 8 KiB
/// per read instead of the whole spare capacity (64-256 KiB), which cost
/// about 1.6 us per message (perf, docs/benchmarks.md). A read that fills
/// the window doubles it, so a connection of large or pipelined requests
/// reaches READ_WINDOW_MAX within a few reads; one that uses under a
/// quarter of it halves it.
struct ReadWindow(usize);

impl ReadWindow {
    fn new() -> Self {
        Self(READ_WINDOW_MIN)
    }

    fn after_read(&mut self, n: usize, offered: usize) {
        if n >= offered {
            self.0 = (self.0 * 2).min(READ_WINDOW_MAX);
        } else if n < offered / 4 {
            self.0 = (self.0 / 2).max(READ_WINDOW_MIN);
        }
    }
}

/// Pause after a failed accept (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a connection stays open after the answer to a failed
/// authentication (Kafka's `connection.failed.authentication.delay.ms`
/// default).
const FAILED_AUTHENTICATION_CLOSE_DELAY: Duration = Duration::from_millis(100);

/// Binds this shard's listener and starts accepting.
pub fn start_listening() -> Result<glommio::task::JoinHandle<()>, String> {
    let shard = local();
    let addr = shard.config.listen;
    let listener =
        bind(addr, shard.config.listen_backlog, true).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let task = glommio::spawn_local(accept_loop(shard, listener)).detach();
    Ok(task)
}

/// A listening socket as glommio's `TcpListener::bind` makes it, but with
/// the given accept backlog. With `reuse_port` (SO_REUSEPORT) every shard
/// binds the same address and the kernel spreads connections over them.
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(reuse_port)?;
    // A restarted node gets its port back while old connections linger in
    // TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // SAFETY: the fd is a bound, listening TCP socket that we own; the
    // listener takes it over.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let m = &shard.metrics;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(shard = %shard.id(), "accept failed: {e}");
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if m.connections_open.get() as usize >= shard.config.connections_per_shard_max {
            m.connections_rejected.inc();
            warn!(
                shard = %shard.id(),
                peer = ?stream.peer_addr().ok(),
                max = shard.config.connections_per_shard_max,
                "closing new connection: too many connections on this shard"
            );
            continue;
        }
        m.connections_accepted.inc();
        spawn_connection(shard.clone(), stream, Moved::No);
    }
}

/// Whether a connection came from another shard, and with what.
enum Moved {
    No,
    /// Handed over by another shard: the bytes it had read and not yet
    /// run (a whole request first). Such a connection never moves again.
    With(BytesMut),
}

/// Serves one connection in its own task, counted in this shard's open
/// connections while it lasts.
fn spawn_connection(shard: Rc<Shard>, stream: TcpStream, moved: Moved) {
    let open = &shard.metrics.connections_open;
    open.set(open.get() + 1);
    glommio::spawn_local(async move {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        match serve_connection(&shard, stream, moved).await {
            Ok(()) => debug!(%peer, "connection closed"),
            // A client that goes away without a goodbye is normal.
            Err(reason) if reason.starts_with(PEER_GONE) => debug!(%peer, "{reason}"),
            Err(reason) => {
                shard.metrics.connections_failed.inc();
                warn!(%peer, shard = %shard.id(), "closing connection: {reason}")
            }
        }
        let open = &shard.metrics.connections_open;
        open.set(open.get() - 1);
    })
    .detach();
}

/// A plain-TCP connection to hand to the shard that owns every partition
/// of its next request (see [`moves_to`]).
struct Handoff {
    target: ShardId,
    /// The request that decided it, with its size prefix, then the bytes
    /// read after it: the new shard takes these before reading the socket.
    pending: BytesMut,
}

/// The shard a connection should move to before `decoded` runs: another
/// shard that owns every partition (of the client's topic table) the
/// Produce or Fetch request names, so that this request and, as a client
/// mostly keeps to its partitions, the ones after it run where their
/// partitions live, without a cross-shard hop each way. Only a connection
/// with no session state beyond its peer moves (no SASL exchange begun).
fn moves_to(shard: &Shard, decoded: &Decoded, session: &Session) -> Option<ShardId> {
    let Decoded::Request(req) = decoded else {
        return None;
    };
    if shard.config.security.require_auth
        || session.raw_sasl.get()
        || !matches!(*session.sasl.borrow(), crate::sasl::SaslState::Start)
    {
        return None;
    }
    let table = shard.topics();
    let mut owner = None;
    let mut one_owner = |topic: &str, partition: i32| {
        let ntp = Ntp::new(topic.to_string(), partition);
        if !table.contains(&ntp) {
            return true;
        }
        let o = shard.cluster.owner(&ntp);
        *owner.get_or_insert(o) == o
    };
    let agree = match &req.body {
        RequestKind::Produce(r) => r
            .topic_data
            .iter()
            .all(|t| t.partition_data.iter().all(|p| one_owner(&t.name.0, p.index))),
        RequestKind::Fetch(r) => r
            .topics
            .iter()
            .all(|t| t.partitions.iter().all(|p| one_owner(&t.topic.0, p.partition))),
        _ => return None,
    };
    owner.filter(|o| agree && *o != shard.id())
}

fn is_produce_or_fetch(decoded: &Decoded) -> bool {
    matches!(decoded, Decoded::Request(r) if matches!(r.api, ApiKey::Produce | ApiKey::Fetch))
}

/// Hands `socket` (a duplicate of the connection's) and the bytes read
/// from it to `handoff.target`, which serves the connection from there on.
async fn hand_over(shard: &Shard, socket: socket2::Socket, handoff: Handoff) -> Result<(), String> {
    let Handoff { target, pending } = handoff;
    shard
        .smp
        .submit_to(target, move || async move {
            let shard = local();
            shard.metrics.connections_moved_in.inc();
            spawn_connection(shard, TcpStream::from(socket), Moved::With(pending));
        })
        .await
        .map_err(|e| format!("cannot hand the connection to shard {target}: {e}"))
}

fn set_busy_poll(stream: &TcpStream, us: u32) {
    if us == 0 {
        return;
    }
    let v = us as libc::c_int;
    // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BUSY_POLL,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!("SO_BUSY_POLL not set: {}", std::io::Error::last_os_error());
    }
}

enum Read {
    Bytes(std::io::Result<usize>),
    TimedOut,
    /// Every request of the connection was answered before bytes came.
    Answered,
}

/// Reads more bytes into `buf`. Only a bounded window of spare capacity is
/// zeroed per read ([`ReadWindow`]), so a large frame costs O(size), not
/// O(size^2), and a small one does not pay for a large buffer.
/// Gives up with `give_up`'s outcome if that completes first.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    window: &mut ReadWindow,
    give_up: impl std::future::Future<Output = Read>,
) -> Read {
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    let start = buf.len();
    let offered = (buf.capacity() - start).min(window.0);
    buf.resize(start + offered, 0);
    let r = futures_lite::future::or(
        async { Read::Bytes(stream.read(&mut buf[start..]).await) },
        give_up,
    )
    .await;
    let n = match &r {
        Read::Bytes(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start + n);
    if matches!(r, Read::Bytes(Ok(_))) {
        window.after_read(n, offered);
    }
    r
}

/// How a connection error caused by the peer (reset, closed) starts.
const PEER_GONE: &str = "peer gone";

fn io_error(op: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    if matches!(e.kind(), BrokenPipe | ConnectionAborted | ConnectionReset) {
        format!("{PEER_GONE}: {op}: {e}")
    } else {
        format!("{op}: {e}")
    }
}

async fn serve_connection(shard: &Rc<Shard>, stream: TcpStream, moved: Moved) -> Result<(), String> {
    let cfg = shard.config.clone();
    // Kafka's client host format (DescribeGroups).
    let session = Session::new(match stream.peer_addr() {
        Ok(a) => format!("/{}", a.ip()).into(),
        Err(_) => "/unknown".into(),
    });
    let (buf, may_move) = match moved {
        Moved::With(pending) => (pending, false),
        Moved::No => {
            stream
                .set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            set_busy_poll(&stream, cfg.busy_poll_us);
            let may_move = cfg.move_connections && shard.smp.nr_shards() > 1;
            (BytesMut::with_capacity(READ_CHUNK_BYTES), may_move)
        }
    };
    match &cfg.security.tls {
        None => {
            let start = Start {
                buf,
                socket: may_move.then(|| stream.as_raw_fd()),
            };
            match serve_stream(shard, stream, &session, start).await? {
                None => Ok(()),
                Some((handoff, socket)) => {
                    shard.metrics.connections_moved_out.inc();
                    hand_over(shard, socket, handoff).await
                }
            }
        }
        Some(tls) => {
            let accept = futures_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
            let timeout = cfg.request_read_timeout;
            let tls_stream = futures_lite::future::or(async { Some(accept.await) }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
            let start = Start { buf, socket: None };
            match tls_stream {
                Some(Ok(s)) => serve_stream(shard, s, &session, start).await.map(|_| ()),
                Some(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                None => Err(format!("TLS handshake not done within {timeout:?}")),
            }
        }
    }
}

/// Where a connection's request loop starts.
struct Start {
    /// Bytes already read (a moved connection's), or an empty buffer.
    buf: BytesMut,
    /// The socket's fd where the connection may move to another shard
    /// (plain TCP, not moved before, `network.move_connections`).
    socket: Option<RawFd>,
}

/// A duplicate of the socket `fd` names, for another shard to own.
fn duplicate(fd: RawFd) -> std::io::Result<socket2::Socket> {
    // SAFETY: `fd` is the socket of a stream that is alive for this call
    // (the caller still holds it).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Ok(socket2::Socket::from(std::net::TcpStream::from(
        borrowed.try_clone_to_owned()?,
    )))
}

/// How a request runs beside the others of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Reads only: runs beside the others, the next may start at once.
    Beside,
    /// Produce: the next request starts once this one has its place in the
    /// order of every partition it writes (module `turns` of the cluster
    /// crate), so a producer's batches keep their order.
    Queued,
    /// Everything else (group, admin and SASL requests, anything before
    /// authentication): starts once every earlier
    /// request is answered, and the next starts once it is answered, as if
    /// the connection ran one request at a time.
    Alone,
}

/// The order of a decoded request.
fn order_of(decoded: &Decoded) -> Order {
    let Decoded::Request(req) = decoded else {
        // An ApiVersions answer with the supported versions.
        return Order::Beside;
    };
    match req.api {
        ApiKey::Produce => Order::Queued,
        ApiKey::Fetch
        | ApiKey::Metadata
        | ApiKey::ApiVersions
        | ApiKey::ListOffsets
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::FindCoordinator
        | ApiKey::DescribeCluster => Order::Beside,
        _ => Order::Alone,
    }
}

/// An answer on its way: a handler still running, or bytes to send.
enum Answer {
    Running(glommio::task::JoinHandle<Result<Option<BytesMut>, String>>),
    Ready(BytesMut),
}

/// A request in progress, in the queue of answers to write in order. Its
/// permit is the request's share of the connection's depth, returned once
/// its answer is written.
struct InFlight<'a> {
    answer: Answer,
    _permit: glommio::sync::Permit<'a>,
}

/// The request loop of one connection, on a plain or a TLS stream.
///
/// Pipelining: up to `pipeline_depth` requests of the connection are in
/// progress at once (the reader decodes and starts the next while earlier
/// ones wait for the disk, a long poll or replicas), and their answers are
/// written strictly in the order the requests came, as Kafka clients
/// require. How a request may overlap the others is its [`Order`]. A
/// depth of 1 runs one request at a time.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    stream: S,
    session: &Rc<Session>,
    start: Start,
) -> Result<Option<(Handoff, socket2::Socket)>, String> {
    let depth = shard.config.pipeline_depth.max(1);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let slots = glommio::sync::Semaphore::new(depth as u64);
    let (queue, answers) = glommio::channels::local_channel::new_unbounded::<InFlight<'_>>();
    let read_end: RefCell<Result<Option<Handoff>, String>> = RefCell::new(Ok(None));
    let may_move = start.socket.is_some();
    let read_side = async {
        let end = read_requests(shard, &mut reader, session, &slots, queue, start.buf, may_move).await;
        *read_end.borrow_mut() = end;
        // The queue is closed now: the write side ends once it answered
        // every request before.
        std::future::pending::<Result<(), String>>().await
    };
    futures_lite::future::or(write_answers(&mut writer, session, answers), read_side).await?;
    let Some(handoff) = read_end.into_inner()? else {
        return Ok(None);
    };
    // Every answer is written and the stream is still open here: its
    // duplicate carries the connection on.
    let fd = start.socket.expect("only a connection that may move hands off");
    let socket = duplicate(fd).map_err(|e| format!("cannot duplicate the socket to move it: {e}"))?;
    Ok(Some((handoff, socket)))
}

/// The read side of a connection: splits request frames, starts each one's
/// handler when its [`Order`] allows and queues it for [`write_answers`].
/// Returns at the end of the stream or on an error (the connection is then
/// closed once the answers queued before are written).
async fn read_requests<'a, R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    reader: &mut R,
    session: &Rc<Session>,
    slots: &'a glommio::sync::Semaphore,
    queue: glommio::channels::local_channel::LocalSender<InFlight<'a>>,
    mut buf: BytesMut,
    mut may_move: bool,
) -> Result<Option<Handoff>, String> {
    let cfg = shard.config.clone();
    // The connection's slots, as `serve_stream` made them.
    let depth = cfg.pipeline_depth.max(1);
    // Whether the request before runs alone, and the produce before's
    // "placed" signal: what the next request waits for.
    let mut after_alone = false;
    let mut after_placed: Option<oneshot::Receiver<()>> = None;
    let mut window = ReadWindow::new();
    let closed = |_| "connection closing".to_string();
    loop {
        let frame = loop {
            match frame::split_frame(&mut buf, cfg.max_request_bytes) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let (timeout, waiting_for) = if buf.is_empty() {
                (cfg.idle_timeout, "idle")
            } else {
                (cfg.request_read_timeout, "stalled mid-request")
            };
            // A connection whose requests are still in progress is not idle:
            // its idle time starts once the last of them is answered.
            let in_progress = buf.is_empty() && slots.available() < depth as u64;
            let give_up = async {
                if in_progress {
                    drop(slots.acquire_permit(depth as u64).await);
                    Read::Answered
                } else {
                    glommio::timer::sleep(timeout).await;
                    Read::TimedOut
                }
            };
            match read_more(reader, &mut buf, &mut window, give_up).await {
                Read::Answered => {}
                Read::Bytes(Ok(0)) if buf.is_empty() => return Ok(None),
                Read::Bytes(Ok(0)) => {
                    return Err(format!("peer closed mid-request ({} bytes buffered)", buf.len()))
                }
                Read::Bytes(Ok(_)) => {}
                Read::Bytes(Err(e)) => return Err(io_error("read", &e)),
                Read::TimedOut => return Err(format!("{waiting_for} for {timeout:?}")),
            }
        };
        if std::mem::take(&mut after_alone) {
            // Its answer written (and the session's state it changed seen).
            drop(slots.acquire_permit(depth as u64).await.map_err(closed)?);
        }
        if let Some(placed) = after_placed.take() {
            let _ = placed.await;
        }
        if session.raw_sasl.get() {
            // SaslHandshake v0: a bare token in, a bare token out; a failure
            // just closes the connection.
            let permit = slots.acquire_permit(depth as u64).await.map_err(closed)?;
            let reply = handlers::sasl_authenticate::step(shard, session, &frame)
                .await
                .map_err(|e| format!("SASL authentication failed: {e}"))?;
            session.raw_sasl.set(!session.authenticated());
            let len = u32::try_from(reply.len()).expect("SASL replies are small");
            let mut out = BytesMut::with_capacity(4 + reply.len());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&reply);
            queue
                .try_send(InFlight {
                    answer: Answer::Ready(out),
                    _permit: permit,
                })
                .map_err(|_| "connection closing".to_string())?;
            after_alone = true;
            continue;
        }
        // Decoded here, in order: a frame that cannot be decoded (or may not
        // be sent yet) closes the connection before anything after it runs.
        let started = Instant::now();
        let decoded = decode_frame(shard, frame.clone(), session)?;
        // At its first Produce or Fetch with nothing in progress (every
        // answer written), the connection may move to the shard that
        // request's partitions live on, request included, undone; it is
        // decided then, once (no check on every request, no ping-pong).
        if may_move && slots.available() == depth as u64 && is_produce_or_fetch(&decoded) {
            may_move = false;
            if let Some(target) = moves_to(shard, &decoded, session) {
                let len = u32::try_from(frame.len()).expect("a frame's length came in 4 bytes");
                let mut pending = BytesMut::with_capacity(4 + frame.len() + buf.len());
                pending.extend_from_slice(&len.to_be_bytes());
                pending.extend_from_slice(&frame);
                pending.extend_from_slice(&buf);
                return Ok(Some(Handoff { target, pending }));
            }
        }
        let order = if shard.config.security.require_auth && !session.authenticated() {
            Order::Alone
        } else {
            order_of(&decoded)
        };
        let units = if order == Order::Alone { depth } else { 1 } as u64;
        let permit = slots.acquire_permit(units).await.map_err(closed)?;
        if slots.available() + units < depth as u64 {
            shard.metrics.requests_pipelined.inc();
        }
        let queued = if order == Order::Queued {
            let (tx, rx) = oneshot::channel();
            after_placed = Some(rx);
            Some(tx)
        } else {
            None
        };
        after_alone = order == Order::Alone;
        let (shard, session) = (shard.clone(), session.clone());
        let task =
            glommio::spawn_local(async move { answer(&shard, decoded, &session, queued, started).await })
                .detach();
        queue
            .try_send(InFlight {
                answer: Answer::Running(task),
                _permit: permit,
            })
            .map_err(|_| "connection closing".to_string())?;
    }
}

/// The write side of a connection: writes each answer in the order of the
/// requests, then returns the request's permit. Ends when the read side
/// closed the queue and every answer is written, or on the first error
/// (a handler's, which closes the connection, or the stream's).
async fn write_answers<W: AsyncWrite + Unpin>(
    writer: &mut W,
    session: &Session,
    answers: glommio::channels::local_channel::LocalReceiver<InFlight<'_>>,
) -> Result<(), String> {
    while let Some(in_flight) = answers.recv().await {
        let out = match in_flight.answer {
            Answer::Ready(bytes) => Some(bytes),
            Answer::Running(task) => task
                .await
                .unwrap_or_else(|| Err("request handler cancelled".into()))?,
        };
        if let Some(out) = out {
            writer.write_all(&out).await.map_err(|e| io_error("write", &e))?;
            // TLS holds records until flushed; on TCP this is a no-op.
            writer.flush().await.map_err(|e| io_error("write", &e))?;
        }
        drop(in_flight._permit);
        if let Some(reason) = session.take_close_reason() {
            // As Kafka's connection.failed.authentication.delay.ms: the
            // client reads the failure before the connection ends (a client
            // that sees the answer and the close in one read may report only
            // the close), and a password guesser is slowed down.
            glommio::timer::sleep(FAILED_AUTHENTICATION_CLOSE_DELAY).await;
            let _ = writer.close().await;
            return Err(reason);
        }
    }
    Ok(())
}

/// Decodes one request frame (without its size prefix) of the connection
/// whose state is `session`, runs its handler and encodes the response
/// frame. `Ok(None)`: nothing to send (acks=0). `Err`: the connection must
/// be closed; the text says why.
pub async fn handle_frame(
    shard: &Rc<Shard>,
    frame: bytes::Bytes,
    session: &Rc<Session>,
    queued: Option<oneshot::Sender<()>>,
) -> Result<Option<BytesMut>, String> {
    let started = Instant::now();
    let decoded = decode_frame(shard, frame, session)?;
    answer(shard, decoded, session, queued, started).await
}

/// Decodes one request frame and checks that the connection may send it.
/// `Err`: the connection must be closed (counted as a request error).
fn decode_frame(shard: &Shard, frame: bytes::Bytes, session: &Session) -> Result<Decoded, String> {
    // The codec is third-party code fed hostile bytes: contain a panic to
    // this request.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| frame::decode_request(frame)))
        .map_err(|_| "request decoder panicked".to_string())
        .and_then(|d| d.map_err(|e| e.to_string()));
    let decoded = match decoded {
        Ok(Decoded::Request(req))
            if shard.config.security.require_auth
                && !matches!(
                    req.api,
                    ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
                )
                && !session.authenticated() =>
        {
            Err(format!(
                "{:?} request before SASL authentication on a listener that requires it",
                req.api
            ))
        }
        other => other,
    };
    if decoded.is_err() {
        shard.metrics.request_errors.inc();
    }
    decoded
}

/// Runs the handler of a decoded request and encodes its response frame
/// (see [`handle_frame`]); `started` is when its frame was taken.
async fn answer(
    shard: &Rc<Shard>,
    decoded: Decoded,
    session: &Rc<Session>,
    queued: Option<oneshot::Sender<()>>,
    started: Instant,
) -> Result<Option<BytesMut>, String> {
    let (api, out) = match decoded {
        Decoded::Request(req) => {
            let api = req.api;
            let version = req.header.request_api_version;
            let correlation_id = req.header.correlation_id;
            let out = match handlers::dispatch(shard.clone(), *req, session, queued).await {
                Some(body) => frame::encode_response(api, version, correlation_id, &body).map(Some),
                None => Ok(None),
            };
            (api, out)
        }
        Decoded::UnsupportedApiVersions { correlation_id } => {
            let body = ResponseKind::ApiVersions(handlers::api_versions::unsupported_version());
            let out = frame::encode_response(ApiKey::ApiVersions, 0, correlation_id, &body).map(Some);
            (ApiKey::ApiVersions, out)
        }
    };
    if out.is_ok() {
        let m = shard.metrics.api(api);
        m.requests.inc();
        m.latency.record(started.elapsed());
    } else {
        shard.metrics.request_errors.inc();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_window_grows_with_full_reads_and_shrinks_with_small_ones() {
        let mut w = ReadWindow::new();
        assert_eq!(w.0, READ_WINDOW_MIN);
        // A 1 KiB request at a time keeps the smallest window.
        w.after_read(1100, w.0);
        assert_eq!(w.0, READ_WINDOW_MIN);
        // Reads that fill it double it, up to the largest.
        let mut seen = vec![w.0];
        for _ in 0..10 {
            let offered = w.0;
            w.after_read(offered, offered);
            seen.push(w.0);
        }
        assert_eq!(
            &seen[..7],
            &[
                8 << 10,
                16 << 10,
                32 << 10,
                64 << 10,
                128 << 10,
                256 << 10,
                256 << 10
            ]
        );
        assert_eq!(w.0, READ_WINDOW_MAX);
        // A read of a third of it keeps it; one under a quarter halves it.
        w.after_read(READ_WINDOW_MAX / 3, READ_WINDOW_MAX);
        assert_eq!(w.0, READ_WINDOW_MAX);
        w.after_read(100, READ_WINDOW_MAX);
        assert_eq!(w.0, READ_WINDOW_MAX / 2);
        for _ in 0..10 {
            let offered = w.0;
            w.after_read(0, offered);
        }
        assert_eq!(w.0, READ_WINDOW_MIN);
        // A read offered less than the window (little spare capacity) that
        // fills what it was offered still counts as full.
        w.after_read(4 << 10, 4 << 10);
        assert_eq!(w.0, 16 << 10);
    }
}
