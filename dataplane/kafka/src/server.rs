//! The connection loop: one listener per shard (SO_REUSEPORT spreads
//! connections over the shards), one task per connection.
//!
//! A connection's requests are handled one at a time, in order, like Kafka
//! does: the next request is decoded after the previous response was
//! written (bytes the client already sent wait in the read buffer). Anything
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
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Pause after a failed accept (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

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
    let open = Rc::new(Cell::new(0usize));
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
        if open.get() >= shard.config.connections_per_shard_max {
            m.connections_rejected.inc();
            warn!(
                shard = %shard.id(),
                peer = ?stream.peer_addr().ok(),
                max = shard.config.connections_per_shard_max,
                "closing new connection: too many connections on this shard"
            );
            continue;
        }
        open.set(open.get() + 1);
        m.connections_accepted.inc();
        m.connections_open.set(open.get() as u64);
        let open = open.clone();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            match serve_connection(&shard, stream).await {
                Ok(()) => debug!(%peer, "connection closed"),
                // A client that goes away without a goodbye is normal.
                Err(reason) if reason.starts_with(PEER_GONE) => debug!(%peer, "{reason}"),
                Err(reason) => {
                    shard.metrics.connections_failed.inc();
                    warn!(%peer, shard = %shard.id(), "closing connection: {reason}")
                }
            }
            open.set(open.get() - 1);
            shard.metrics.connections_open.set(open.get() as u64);
        })
        .detach();
    }
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
}

/// Reads more bytes into `buf`. Only a bounded window of spare capacity is
/// zeroed per read, so a large frame costs O(size), not O(size^2).
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut, timeout: Duration) -> Read {
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    let start = buf.len();
    let window = (buf.capacity() - start).min(4 * READ_CHUNK_BYTES);
    buf.resize(start + window, 0);
    let r = futures_lite::future::or(
        async { Read::Bytes(stream.read(&mut buf[start..]).await) },
        async {
            glommio::timer::sleep(timeout).await;
            Read::TimedOut
        },
    )
    .await;
    let n = match &r {
        Read::Bytes(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start + n);
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

async fn serve_connection(shard: &Rc<Shard>, stream: TcpStream) -> Result<(), String> {
    let cfg = shard.config.clone();
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    set_busy_poll(&stream, cfg.busy_poll_us);
    // Kafka's client host format (DescribeGroups).
    let session = Session::new(match stream.peer_addr() {
        Ok(a) => format!("/{}", a.ip()).into(),
        Err(_) => "/unknown".into(),
    });
    match &cfg.security.tls {
        None => serve_stream(shard, stream, &session).await,
        Some(tls) => {
            let accept = futures_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
            let timeout = cfg.request_read_timeout;
            let tls_stream = futures_lite::future::or(async { Some(accept.await) }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
            match tls_stream {
                Some(Ok(s)) => serve_stream(shard, s, &session).await,
                Some(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                None => Err(format!("TLS handshake not done within {timeout:?}")),
            }
        }
    }
}

/// The request loop of one connection, on a plain or a TLS stream.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    mut stream: S,
    session: &Rc<Session>,
) -> Result<(), String> {
    let cfg = shard.config.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
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
            match read_more(&mut stream, &mut buf, timeout).await {
                Read::Bytes(Ok(0)) if buf.is_empty() => return Ok(()),
                Read::Bytes(Ok(0)) => {
                    return Err(format!("peer closed mid-request ({} bytes buffered)", buf.len()))
                }
                Read::Bytes(Ok(_)) => {}
                Read::Bytes(Err(e)) => return Err(io_error("read", &e)),
                Read::TimedOut => return Err(format!("{waiting_for} for {timeout:?}")),
            }
        };
        if session.raw_sasl.get() {
            // SaslHandshake v0: a bare token in, a bare token out; a failure
            // just closes the connection.
            let reply = handlers::sasl_authenticate::step(shard, session, &frame)
                .await
                .map_err(|e| format!("SASL authentication failed: {e}"))?;
            session.raw_sasl.set(!session.authenticated());
            let len = u32::try_from(reply.len()).expect("SASL replies are small");
            stream
                .write_all(&len.to_be_bytes())
                .await
                .map_err(|e| io_error("write", &e))?;
            stream
                .write_all(&reply)
                .await
                .map_err(|e| io_error("write", &e))?;
            stream.flush().await.map_err(|e| io_error("write", &e))?;
            continue;
        }
        let out = handle_frame(shard, frame, session).await?;
        if let Some(out) = out {
            stream.write_all(&out).await.map_err(|e| io_error("write", &e))?;
            // TLS holds records until flushed; on TCP this is a no-op.
            stream.flush().await.map_err(|e| io_error("write", &e))?;
        }
        if let Some(reason) = session.take_close_reason() {
            let _ = stream.close().await;
            return Err(reason);
        }
    }
}

/// Decodes one request frame (without its size prefix) of the connection
/// whose state is `session`, runs its handler and encodes the response
/// frame. `Ok(None)`: nothing to send (acks=0). `Err`: the connection must
/// be closed; the text says why.
pub async fn handle_frame(
    shard: &Rc<Shard>,
    frame: bytes::Bytes,
    session: &Rc<Session>,
) -> Result<Option<BytesMut>, String> {
    // The codec is third-party code fed hostile bytes: contain a panic to
    // this request.
    let started = Instant::now();
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| frame::decode_request(frame)))
        .map_err(|_| "request decoder panicked".to_string());
    let (api, out) = match decoded {
        Ok(Ok(Decoded::Request(req))) => {
            let api = req.api;
            let version = req.header.request_api_version;
            let correlation_id = req.header.correlation_id;
            if shard.config.security.require_auth
                && !matches!(
                    api,
                    ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
                )
                && !session.authenticated()
            {
                shard.metrics.request_errors.inc();
                return Err(format!(
                    "{api:?} request before SASL authentication on a listener that requires it"
                ));
            }
            let out = match handlers::dispatch(shard.clone(), *req, session).await {
                Some(body) => frame::encode_response(api, version, correlation_id, &body).map(Some),
                None => Ok(None),
            };
            (Some(api), out)
        }
        Ok(Ok(Decoded::UnsupportedApiVersions { correlation_id })) => {
            let body = ResponseKind::ApiVersions(handlers::api_versions::unsupported_version());
            let out = frame::encode_response(ApiKey::ApiVersions, 0, correlation_id, &body).map(Some);
            (Some(ApiKey::ApiVersions), out)
        }
        Ok(Err(e)) => (None, Err(e.to_string())),
        Err(e) => (None, Err(e)),
    };
    match (&out, api) {
        (Ok(_), Some(api)) => {
            let m = shard.metrics.api(api);
            m.requests.inc();
            m.latency.record(started.elapsed());
        }
        _ => shard.metrics.request_errors.inc(),
    }
    out
}
