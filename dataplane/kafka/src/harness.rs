//! A one-shard node driven without sockets, for fuzzing and hostile-input
//! tests.
//!
//! [`Harness::start`] runs a real node (the same `Shard`, controller and
//! handlers as `run_shard`, on a fresh data directory) on one pinned glommio
//! executor in a background thread. [`Harness::feed`] hands it the whole byte
//! stream of one client connection; the node cuts it into frames with
//! `frame::split_frame` and runs each through `server::handle_frame`, the
//! exact per-frame path of a real connection, and stops at the first frame a
//! real connection would be closed for. Nothing listens on the network.
//!
//! Threading: the node's state lives on its shard thread only; callers on any
//! thread talk to it over a bounded channel and wait for a oneshot reply, one
//! feed at a time (a mutex serializes them, like requests on one connection).
//! A frame that takes longer than [`FRAME_DEADLINE`] is a hang: `feed`
//! panics, which is what a fuzzer or a test should report.

use crate::config::ServerConfig;
use crate::topics::{TopicDefaults, DEFAULT_MAX_MESSAGE_BYTES};
use crate::{frame, registry, server, shard};
use bytes::{Bytes, BytesMut};
use ferrolog_model::NodeId;
use ferrolog_shard::{ControlConfig, RuntimeConfig, Smp};
use ferrolog_storage::LogConfig;
use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::warn;

/// Largest request frame the harness node accepts.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Partitions of auto-created topics.
pub const DEFAULT_PARTITIONS: i32 = 2;
/// Longest max_wait_ms honoured for a fetch: short, so fuzzed long-polls
/// cost little.
pub const FETCH_MAX_WAIT: Duration = Duration::from_millis(100);
/// Most record bytes in one fetch response (the broker's default).
pub const FETCH_RESPONSE_MAX_BYTES: usize = 55 << 20;
/// Segment size of every partition.
pub const SEGMENT_BYTES: u64 = 1 << 20;
/// The node's batch cache.
pub const BATCH_CACHE_BYTES: usize = 1 << 20;
/// Fetches one partition remembers as long-poll waiters.
pub const FETCH_WAITERS_PER_PARTITION_MAX: usize = 16;
/// DMA buffer memory of the shard (counts against the 8 MiB memlock limit).
pub const IO_MEMORY_BYTES: usize = 1 << 20;
/// io_uring submission queue depth.
pub const RING_DEPTH: usize = 64;
/// Cross-shard call queue (unused with one shard, but bounded all the same).
pub const CHANNEL_CAPACITY: usize = 64;
/// How often the control executor looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(5);
/// Feeds queued for the node; `feed` serializes callers, so one is enough
/// and a few leave room for the shutdown.
pub const FEED_QUEUE_DEPTH: usize = 4;
/// One frame taking longer than this is reported as a hang. Far above the
/// slowest ordinary frame (a fetch long-poll waits at most
/// [`FETCH_MAX_WAIT`], an fsync a few milliseconds); but creating a topic
/// costs about 10 ms per partition here, so one CreateTopics of as many
/// partitions as the harness's fd budget allows (4,096) comes within a
/// factor of three.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(120);

/// What a node did with one client byte stream.
#[derive(Debug, Default)]
pub struct FeedOutcome {
    /// Encoded response frames (size prefix included), in order.
    pub responses: Vec<BytesMut>,
    /// Frames handled without closing (a Produce with acks=0 has no
    /// response, so this can exceed `responses.len()`).
    pub frames: usize,
    /// Why the connection would have been closed; `None` if every frame was
    /// handled and no partial frame was left over.
    pub closed: Option<String>,
}

impl FeedOutcome {
    /// Checks the responses against the `stream` that was fed: each answers
    /// one of its whole frames, in frame order, with that frame's
    /// correlation id, and decodes (header and body, nothing left over) as a
    /// response of that frame's API and version. Returns what is wrong.
    pub fn check(&self, stream: &[u8]) -> Result<(), String> {
        let frames = request_ids(stream);
        let mut next = 0;
        for (n, r) in self.responses.iter().enumerate() {
            if r.len() < 8 {
                return Err(format!("response {n} has {} bytes", r.len()));
            }
            let size = i32::from_be_bytes([r[0], r[1], r[2], r[3]]);
            if usize::try_from(size).ok() != Some(r.len() - 4) {
                return Err(format!(
                    "response {n}: size prefix {size} for {} bytes",
                    r.len() - 4
                ));
            }
            let correlation_id = i32::from_be_bytes([r[4], r[5], r[6], r[7]]);
            let Some(at) = frames[next..]
                .iter()
                .position(|f| f.correlation_id == correlation_id)
            else {
                return Err(format!(
                    "response {n} (correlation id {correlation_id}) answers no remaining frame of {frames:?}"
                ));
            };
            let f = frames[next + at];
            next += at + 1;
            let api =
                ApiKey::try_from(f.api_key).map_err(|()| format!("response {n} to api key {}", f.api_key))?;
            // An ApiVersions request of an unsupported version is answered in v0.
            let version = match registry::versions(api) {
                Some(v) if api == ApiKey::ApiVersions && !v.contains(f.api_version) => 0,
                _ => f.api_version,
            };
            let mut body = r.clone().freeze().slice(4..);
            let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
                .map_err(|e| format!("response {n}: {api:?} v{version} header: {e:#}"))?;
            if header.correlation_id != correlation_id {
                return Err(format!("response {n}: header decodes to {header:?}"));
            }
            ResponseKind::decode(api, &mut body, version)
                .map_err(|e| format!("response {n}: {api:?} v{version} body: {e:#}"))?;
            if !body.is_empty() {
                return Err(format!(
                    "response {n}: {} bytes after the {api:?} v{version} body",
                    body.len()
                ));
            }
        }
        Ok(())
    }
}

/// The header fields every request frame starts with.
#[derive(Clone, Copy, Debug)]
struct RequestIds {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
}

/// The ids of each whole frame of `stream` long enough to have them, up to
/// the first size field the node rejects.
fn request_ids(stream: &[u8]) -> Vec<RequestIds> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(size) = rest.get(..4) {
        let size = i32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        let Some(end) = usize::try_from(size)
            .ok()
            .filter(|&s| s <= MAX_REQUEST_BYTES)
            .map(|s| 4 + s)
            .filter(|&e| e <= rest.len())
        else {
            break;
        };
        let f = &rest[4..end];
        if f.len() >= frame::MIN_REQUEST_BYTES {
            out.push(RequestIds {
                api_key: i16::from_be_bytes([f[0], f[1]]),
                api_version: i16::from_be_bytes([f[2], f[3]]),
                correlation_id: i32::from_be_bytes([f[4], f[5], f[6], f[7]]),
            });
        }
        rest = &rest[end..];
    }
    out
}

/// The node's answer to a feed: the outcome, or the frame that hung.
type Reply = Result<FeedOutcome, String>;

struct Feed {
    bytes: Bytes,
    reply: oneshot::Sender<Reply>,
}

/// A running one-shard node; see the module doc.
pub struct Harness {
    feeds: Mutex<mpsc::Sender<Feed>>,
    thread: Option<JoinHandle<()>>,
    data_dir: PathBuf,
    config: ServerConfig,
}

/// The server settings of a harness node with its data in `data_dir`.
pub fn server_config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        node_id: NodeId(0),
        data_dir: data_dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        cluster_id: "ferrolog-harness".into(),
        rack: None,
        seeds: Vec::new(),
        rpc_listen: None,
        rpc_advertised: "127.0.0.1:0".into(),
        data_listen: None,
        data_advertised: None,
        xdp: None,
        node_tls: None,
        peer_hints: Default::default(),
        control_timing: Default::default(),
        max_request_bytes: MAX_REQUEST_BYTES,
        auto_create_topics: true,
        auto_leader_rebalance: true,
        default_partitions: DEFAULT_PARTITIONS,
        topic_defaults: TopicDefaults {
            log: LogConfig {
                segment_bytes: SEGMENT_BYTES,
                ..LogConfig::default()
            },
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        },
        batch_cache_bytes: BATCH_CACHE_BYTES,
        // 4,096 partitions on the harness's one shard (plus its 64 sealed
        // files): a hostile or fuzzed CreateTopics stays within
        // FRAME_DEADLINE at about 10 ms per partition.
        fd_budget: 4096 + ferrolog_cluster::manager::SEALED_FILES_MIN_PER_SHARD,
        // No socket: the read timeouts never apply.
        request_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
        connections_per_shard_max: 1,
        fetch_waiters_per_partition_max: FETCH_WAITERS_PER_PARTITION_MAX,
        fetch_max_wait: FETCH_MAX_WAIT,
        fetch_response_max_bytes: FETCH_RESPONSE_MAX_BYTES,
        compaction_interval: Duration::from_secs(15),
        busy_poll_us: 0,
        groups: crate::groups::GroupConfig {
            limits: crate::groups::group::GroupLimits {
                initial_rebalance_delay: Duration::ZERO,
                ..Default::default()
            },
            ..Default::default()
        },
        listen_backlog: 128,
        pipeline_depth: 16,
        move_connections: true,
        admin_addr: None,
        shard_cpus: vec![ferrolog_shard::first_allowed_cpu()],
        stall_threshold: Duration::from_millis(10),
        security: Default::default(),
        authorizer: Default::default(),
        principal_from_client_id_test_only: false,
    }
}

/// The first CPU this process may run on (0 if the mask cannot be read).
fn fresh_data_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "ferrolog-harness-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Harness {
    /// Starts a node on a fresh data directory under the system temp dir and
    /// waits until its topic table is up.
    pub fn start() -> Result<Harness, String> {
        Self::start_with(|_| {})
    }

    /// Like `start`, with the server settings changed by `tune`.
    pub fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Result<Harness, String> {
        let data_dir = fresh_data_dir().map_err(|e| format!("harness data dir: {e}"))?;
        let mut config = server_config(&data_dir);
        tune(&mut config);
        match Self::start_in(config.clone()) {
            Ok((feeds, thread)) => Ok(Harness {
                feeds: Mutex::new(feeds),
                thread: Some(thread),
                data_dir,
                config,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                Err(e)
            }
        }
    }

    fn start_in(config: ServerConfig) -> Result<(mpsc::Sender<Feed>, JoinHandle<()>), String> {
        let config = Arc::new(config);
        let runtime = RuntimeConfig {
            cpus: vec![ferrolog_shard::first_allowed_cpu()],
            io_memory_bytes: IO_MEMORY_BYTES,
            ring_depth: RING_DEPTH,
            spin_before_park: Duration::ZERO,
            channel_capacity: CHANNEL_CAPACITY,
        };
        let (feeds, rx) = mpsc::channel::<Feed>(FEED_QUEUE_DEPTH);
        // `run` wants a cloneable `main`; the one shard takes the receiver.
        let rx = Arc::new(Mutex::new(Some(rx)));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(2);
        // Set by the shard when its feeds end; the control executor then ends.
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("ferrolog-harness".into())
            .spawn(move || {
                let ready = ready_tx.clone();
                let shard_config = config.clone();
                let shard_stop = stop.clone();
                let result = ferrolog_shard::run_with_control(
                    runtime,
                    ControlConfig::default(),
                    move |smp| {
                        let rx = rx.lock().ok().and_then(|mut r| r.take());
                        node(smp, shard_config.clone(), rx, shard_stop.clone())
                    },
                    move |smp| control(smp, config, ready, stop),
                );
                match result {
                    Ok(outcome) => {
                        let all = outcome.shards.into_iter().chain([outcome.control]);
                        for e in all.filter_map(Result::err) {
                            warn!("harness node: {e}");
                            let _ = ready_tx.try_send(Err(e));
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.try_send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| format!("harness thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((feeds, thread)),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(format!("harness node failed to start: {e}"))
            }
            Err(_) => {
                let _ = thread.join();
                Err("harness node died while starting".into())
            }
        }
    }

    /// Feeds `bytes` as the whole byte stream of one fresh connection and
    /// returns what the node answered.
    ///
    /// # Panics
    /// If a frame hangs past [`FRAME_DEADLINE`] or the node died (a handler
    /// panicked): both are broker bugs.
    pub fn feed(&self, bytes: &[u8]) -> FeedOutcome {
        // A panic in an earlier feed leaves the sender intact: use it.
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let (reply, answer) = oneshot::channel();
        let feed = Feed {
            bytes: Bytes::copy_from_slice(bytes),
            reply,
        };
        let sent = futures_lite::future::block_on(async {
            futures_lite::future::poll_fn(|cx| feeds.poll_ready(cx)).await?;
            feeds.start_send(feed)
        });
        assert!(sent.is_ok(), "the harness node is gone (it panicked earlier)");
        match futures_lite::future::block_on(answer) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(hang)) => panic!("{hang}"),
            Err(_) => panic!("the harness node died while handling a feed (a handler panicked?)"),
        }
    }
}

impl Harness {
    /// Stops the node cleanly (logs closed) and starts it again on the same
    /// data directory, as a broker restart does.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let (feeds, thread) = Self::start_in(self.config.clone())?;
        self.feeds = Mutex::new(feeds);
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) {
        // A closed channel ends the node's serve loop; it then closes its
        // logs. A feed that panicked poisons the mutex, not the sender.
        self.feeds
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .close_channel();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("harness node thread panicked");
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.data_dir) {
            warn!(dir = %self.data_dir.display(), "cannot remove harness data dir: {e}");
        }
    }
}

/// The node's one data shard: `run_shard` without the listener, serving
/// feeds instead.
async fn node(
    smp: Rc<Smp>,
    config: Arc<ServerConfig>,
    feeds: Option<mpsc::Receiver<Feed>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let Some(feeds) = feeds else {
        stop.store(true, Ordering::SeqCst);
        return Err("the harness runs one shard".into());
    };
    // Before the first await, like run_shard.
    let shard = crate::install_shard(smp, config);
    serve_feeds(&shard, feeds).await;
    stop.store(true, Ordering::SeqCst);
    crate::groups::coordinator::close_local();
    // Like run_shard, the shard stays installed until the executor ends.
    let failed = shard.cluster.close_all().await;
    if failed > 0 {
        return Err(format!("{failed} logs failed to close cleanly"));
    }
    Ok(())
}

/// The control executor: starts the controller (opening the shard's
/// partitions), says the node is ready, and ends with the shard.
async fn control(
    smp: Rc<Smp>,
    config: Arc<ServerConfig>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let started = crate::start_controller(smp.clone(), &config).await.map(drop);
    if started.is_ok() {
        coordinators_attached(&smp).await;
    }
    let _ = ready.try_send(started.clone());
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    started
}

/// Waits (up to 10 s) until the group coordinator's partitions are all
/// attached, as a node's would be a moment after start: tests then talk to
/// a coordinator at once, as clients do after retrying NOT_COORDINATOR.
async fn coordinators_attached(smp: &Rc<Smp>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let counts = smp
            .invoke_on_all(|| async { crate::groups::coordinator::attached() })
            .await;
        let n: usize = counts.into_iter().filter_map(Result::ok).sum();
        if n >= crate::groups::coordinator::PARTITIONS as usize {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    warn!("harness: the group coordinator's partitions were not all attached within 10 s");
}

async fn serve_feeds(shard: &Rc<shard::Shard>, mut feeds: mpsc::Receiver<Feed>) {
    while let Some(feed) = feeds.next().await {
        let outcome = serve_one(shard, feed.bytes).await;
        // The feeder may have panicked meanwhile; nothing to tell it then.
        let _ = feed.reply.send(outcome);
    }
}

enum Step {
    Done(Result<Option<BytesMut>, String>),
    Hung,
}

/// One connection's worth of bytes, handled like `server::serve_connection`
/// handles what it reads.
async fn serve_one(shard: &Rc<shard::Shard>, bytes: Bytes) -> Reply {
    let max = shard.config.max_request_bytes;
    let mut buf = BytesMut::from(&bytes[..]);
    let mut out = FeedOutcome::default();
    let session = crate::session::Session::new("/127.0.0.1".into());
    loop {
        let frame = match frame::split_frame(&mut buf, max) {
            Ok(Some(f)) => f,
            Ok(None) if buf.is_empty() => return Ok(out),
            Ok(None) => {
                out.closed = Some(format!("peer closed mid-request ({} bytes buffered)", buf.len()));
                return Ok(out);
            }
            Err(e) => {
                out.closed = Some(e.to_string());
                return Ok(out);
            }
        };
        let frame_bytes = frame.len();
        let step = futures_lite::future::or(
            async { Step::Done(server::handle_frame(shard, frame, &session, None).await) },
            async {
                glommio::timer::sleep(FRAME_DEADLINE).await;
                Step::Hung
            },
        )
        .await;
        match step {
            Step::Done(Ok(Some(response))) => out.responses.push(response),
            Step::Done(Ok(None)) => {}
            Step::Done(Err(reason)) => {
                out.closed = Some(reason);
                return Ok(out);
            }
            Step::Hung => {
                return Err(format!(
                    "frame {} ({frame_bytes} bytes) did not complete within {FRAME_DEADLINE:?}",
                    out.frames
                ))
            }
        }
        out.frames += 1;
    }
}
