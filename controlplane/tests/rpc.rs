//! The control plane's RPC transport over loopback TCP, on a real glommio
//! executor: round trips (election prepares and requests included), Raft
//! message order, cluster id checks, malformed frames, reconnection and the
//! bounded Raft queue. Every test runs under a
//! deadline, so a bug fails it instead of hanging it.

use ferrolog_controlplane::rpc::{
    serve, Handler, HeartbeatReply, MemberInfo, Peer, PrepareReply, RegisterReply, RpcError,
    PAYLOAD_BYTES_MAX, RAFT_QUEUE_BYTES_MAX, RAFT_QUEUE_MESSAGES_MAX,
};
use ferrolog_model::{Epoch, NodeId, Offset};
use futures::future::{Either, LocalBoxFuture};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

const TEST_DEADLINE: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `f` on a fresh executor sized for an 8 MiB memlock limit, failing
/// the test if it takes longer than `TEST_DEADLINE`.
fn run<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let sleep = glommio::timer::sleep(TEST_DEADLINE);
            if let Either::Right(_) = futures::future::select(pin!(f()), pin!(sleep)).await {
                panic!("test did not finish within {TEST_DEADLINE:?}");
            }
        });
}

/// Polls `done` every few milliseconds until it holds, or panics after `within`.
async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Propose(u64, Vec<u8>),
    Register(MemberInfo),
    Heartbeat(u64, u64),
    Status,
    Prepare(u64, String, i32, Epoch),
    RequestElection(u64, String, i32),
}

/// Records every call; raft messages separately, with their sender.
#[derive(Default)]
struct Recorder {
    cluster_id: RefCell<String>,
    raft: RefCell<Vec<(u64, Vec<u8>)>>,
    calls: RefCell<Vec<Call>>,
    /// When set, propose never answers.
    propose_hangs: bool,
}

impl Recorder {
    fn new(cluster_id: &str) -> Rc<Recorder> {
        Rc::new(Recorder {
            cluster_id: RefCell::new(cluster_id.to_string()),
            ..Recorder::default()
        })
    }
}

impl Handler for Recorder {
    fn cluster_id(&self) -> String {
        self.cluster_id.borrow().clone()
    }

    fn raft(&self, from: u64, messages: Vec<Vec<u8>>) {
        self.raft
            .borrow_mut()
            .extend(messages.into_iter().map(|m| (from, m)));
    }

    fn propose(
        &self,
        from: u64,
        commands: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(u64, Vec<u8>), String>> {
        self.calls
            .borrow_mut()
            .push(Call::Propose(from, commands.clone()));
        if self.propose_hangs {
            return futures::future::pending().boxed_local();
        }
        let reply = if commands == b"refuse" {
            Err("topic exists".to_string())
        } else {
            Ok((42, commands.iter().rev().copied().collect()))
        };
        async move { reply }.boxed_local()
    }

    fn register(&self, member: MemberInfo) -> LocalBoxFuture<'static, Result<RegisterReply, String>> {
        self.calls.borrow_mut().push(Call::Register(member.clone()));
        let reply = RegisterReply {
            cluster_id: "c-1".into(),
            incarnation: member.node_id * 10,
            leader: 1,
        };
        async move { Ok(reply) }.boxed_local()
    }

    fn heartbeat(
        &self,
        from: u64,
        incarnation: u64,
    ) -> LocalBoxFuture<'static, Result<HeartbeatReply, String>> {
        self.calls.borrow_mut().push(Call::Heartbeat(from, incarnation));
        async move {
            Ok(HeartbeatReply {
                leader: 1,
                term: incarnation + 1,
            })
        }
        .boxed_local()
    }

    fn status(&self) -> LocalBoxFuture<'static, Result<String, String>> {
        self.calls.borrow_mut().push(Call::Status);
        async { Ok(r#"{"ok":true}"#.to_string()) }.boxed_local()
    }

    /// Topic "gone" has no replica here; partition 0's log is empty; others
    /// answer last epoch = the asked epoch - 1 and log end = 100 * partition.
    fn prepare_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> LocalBoxFuture<'static, Result<PrepareReply, String>> {
        self.calls
            .borrow_mut()
            .push(Call::Prepare(from, topic.clone(), partition, epoch));
        let reply = if topic == "gone" {
            Err(format!("no replica of {topic}/{partition} here"))
        } else if partition == 0 {
            Ok(PrepareReply {
                last_epoch: None,
                log_end: Offset(0),
            })
        } else {
            Ok(PrepareReply {
                last_epoch: Some(Epoch(epoch.0 - 1)),
                log_end: Offset(100 * i64::from(partition)),
            })
        };
        async move { reply }.boxed_local()
    }

    /// Topic "gone" is refused; any other request is taken.
    fn request_election(
        &self,
        from: u64,
        topic: String,
        partition: i32,
        _preferred: bool,
    ) -> LocalBoxFuture<'static, Result<(), String>> {
        self.calls
            .borrow_mut()
            .push(Call::RequestElection(from, topic.clone(), partition));
        let reply = if topic == "gone" {
            Err("node 2 is not the controller leader (leader: 1)".to_string())
        } else {
            Ok(())
        };
        async move { reply }.boxed_local()
    }

    /// Topic "gone" is refused; otherwise epoch 5 and nodes 1 and 3.
    fn insync_replicas(
        &self,
        _from: u64,
        topic: String,
        partition: i32,
    ) -> LocalBoxFuture<'static, Result<(Epoch, Vec<NodeId>), String>> {
        let reply = if topic == "gone" {
            Err(format!("{topic}/{partition} is not led here"))
        } else {
            Ok((Epoch(5), vec![NodeId(1), NodeId(3)]))
        };
        async move { reply }.boxed_local()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// An address nobody listens on (yet): a port the kernel just handed out.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback()).expect("bind a probe listener");
    listener.local_addr().expect("probe address")
}

fn new_peer(
    node: u64,
    addr: SocketAddr,
    cluster_id: &str,
    timeout: Duration,
) -> (Rc<Peer>, Rc<RefCell<String>>) {
    let cluster = Rc::new(RefCell::new(cluster_id.to_string()));
    (
        Peer::new(node, addr.to_string(), cluster.clone(), timeout),
        cluster,
    )
}

fn member(node_id: u64, rack: Option<&str>) -> MemberInfo {
    MemberInfo {
        node_id,
        kafka_host: "broker-1.example".into(),
        kafka_port: 9092,
        rpc_addr: "10.0.0.1:9093".into(),
        rack: rack.map(str::to_string),
        shards: 4,
        data_addr: rack.map(|_| "10.0.0.1:9094".to_string()),
        xdp_addr: rack.map(|_| "10.0.0.1:9094".to_string()),
    }
}

#[test]
fn every_method_round_trips() {
    run(|| async {
        let handler = Recorder::new("c-1");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (peer, _) = new_peer(7, addr, "c-1", CALL_TIMEOUT);

        assert_eq!(peer.propose(b"abc".to_vec()).await, Ok((42, b"cba".to_vec())));
        assert_eq!(
            peer.register(&member(7, Some("rack-a"))).await,
            Ok(RegisterReply {
                cluster_id: "c-1".into(),
                incarnation: 70,
                leader: 1
            })
        );
        assert_eq!(
            peer.register(&member(8, None)).await.map(|r| r.incarnation),
            Ok(80),
            "an absent rack travels as empty text and comes back as None"
        );
        assert_eq!(peer.heartbeat(5).await, Ok(HeartbeatReply { leader: 1, term: 6 }));
        assert_eq!(peer.status().await, Ok(r#"{"ok":true}"#.to_string()));
        assert_eq!(
            peer.propose(b"refuse".to_vec()).await,
            Err(RpcError::Remote("topic exists".into())),
            "a handler's error comes back as Remote with its text"
        );
        assert_eq!(
            peer.propose(vec![0; PAYLOAD_BYTES_MAX + 1]).await,
            Err(RpcError::TooLarge {
                bytes: PAYLOAD_BYTES_MAX + 1,
                limit: PAYLOAD_BYTES_MAX
            }),
            "refused before sending: the receiver would refuse the frame"
        );
        assert_eq!(
            *handler.calls.borrow(),
            vec![
                Call::Propose(7, b"abc".to_vec()),
                Call::Register(member(7, Some("rack-a"))),
                Call::Register(member(8, None)),
                Call::Heartbeat(7, 5),
                Call::Status,
                Call::Propose(7, b"refuse".to_vec()),
            ]
        );
        server.cancel();
    });
}

#[test]
fn election_prepares_and_requests_round_trip_and_refusals_come_back() {
    run(|| async {
        let handler = Recorder::new("c-1");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (peer, _) = new_peer(3, addr, "c-1", CALL_TIMEOUT);

        assert_eq!(
            peer.prepare_election("orders", 2, Epoch(7)).await,
            Ok(PrepareReply {
                last_epoch: Some(Epoch(6)),
                log_end: Offset(200)
            })
        );
        assert_eq!(
            peer.prepare_election("orders", 0, Epoch(1)).await,
            Ok(PrepareReply {
                last_epoch: None,
                log_end: Offset(0)
            }),
            "an empty log travels as last epoch -1 and comes back as None"
        );
        assert_eq!(
            peer.prepare_election("gone", 1, Epoch(3)).await,
            Err(RpcError::Remote("no replica of gone/1 here".into()))
        );
        assert_eq!(
            peer.insync_replicas("orders", 2).await,
            Ok((Epoch(5), vec![NodeId(1), NodeId(3)]))
        );
        assert_eq!(
            peer.insync_replicas("gone", 1).await,
            Err(RpcError::Remote("gone/1 is not led here".into()))
        );
        assert_eq!(peer.request_election("orders", 2, false).await, Ok(()));
        assert_eq!(
            peer.request_election("gone", 0, true).await,
            Err(RpcError::Remote(
                "node 2 is not the controller leader (leader: 1)".into()
            ))
        );
        assert_eq!(
            *handler.calls.borrow(),
            vec![
                Call::Prepare(3, "orders".into(), 2, Epoch(7)),
                Call::Prepare(3, "orders".into(), 0, Epoch(1)),
                Call::Prepare(3, "gone".into(), 1, Epoch(3)),
                Call::RequestElection(3, "orders".into(), 2),
                Call::RequestElection(3, "gone".into(), 0),
            ]
        );
        server.cancel();
    });
}

#[test]
fn raft_messages_arrive_in_order_including_a_large_one() {
    run(|| async {
        let handler = Recorder::new("c-1");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (peer, _) = new_peer(3, addr, "c-1", CALL_TIMEOUT);

        let large: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut sent = Vec::new();
        for round in 0..50u32 {
            let batch: Vec<Vec<u8>> = if round == 25 {
                vec![large.clone()]
            } else {
                (0..3u32)
                    .map(|i| (round * 3 + i).to_le_bytes().to_vec())
                    .collect()
            };
            sent.extend(batch.iter().cloned());
            peer.send_raft(batch);
            if round % 10 == 0 {
                // Let some batches go out alone, others pile up and share a call.
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }
        wait_until(Duration::from_secs(10), "all raft messages", || {
            handler.raft.borrow().len() == sent.len()
        })
        .await;
        let received = handler.raft.borrow();
        assert!(received.iter().all(|(from, _)| *from == 3));
        let messages: Vec<&Vec<u8>> = received.iter().map(|(_, m)| m).collect();
        assert_eq!(
            messages,
            sent.iter().collect::<Vec<_>>(),
            "same messages, same order"
        );
        assert_eq!(peer.dropped(), 0);
        server.cancel();
    });
}

#[test]
fn a_cluster_id_mismatch_is_refused_without_calling_the_handler() {
    run(|| async {
        let handler = Recorder::new("cluster-a");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (peer, _) = new_peer(2, addr, "cluster-b", CALL_TIMEOUT);
        let mismatch = RpcError::ClusterMismatch {
            ours: "cluster-b".into(),
            theirs: "cluster-a".into(),
        };

        assert_eq!(peer.propose(b"x".to_vec()).await, Err(mismatch.clone()));
        assert_eq!(peer.register(&member(2, None)).await, Err(mismatch.clone()));
        assert_eq!(peer.heartbeat(1).await, Err(mismatch.clone()));
        assert_eq!(
            peer.prepare_election("t", 0, Epoch(1)).await,
            Err(mismatch.clone())
        );
        assert_eq!(peer.request_election("t", 0, false).await, Err(mismatch.clone()));
        let text = mismatch.to_string();
        assert!(text.contains("cluster-a") && text.contains("cluster-b"), "{text}");

        peer.send_raft(vec![b"m1".to_vec(), b"m2".to_vec()]);
        wait_until(Duration::from_secs(5), "the refused raft call", || {
            peer.dropped() == 2
        })
        .await;
        assert!(
            handler.raft.borrow().is_empty(),
            "refused raft messages reach no one"
        );
        assert!(handler.calls.borrow().is_empty(), "the handler was not called");

        // status carries no cluster id: an operator can ask any node.
        assert!(peer.status().await.is_ok());
        server.cancel();
    });
}

#[test]
fn an_empty_cluster_id_on_either_side_is_accepted() {
    run(|| async {
        let handler = Recorder::new("");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (peer, cluster) = new_peer(4, addr, "cluster-a", CALL_TIMEOUT);

        assert!(
            peer.heartbeat(1).await.is_ok(),
            "the server does not know its cluster yet"
        );
        *handler.cluster_id.borrow_mut() = "cluster-a".into();
        *cluster.borrow_mut() = String::new();
        assert!(
            peer.register(&member(4, None)).await.is_ok(),
            "the client does not know its cluster yet"
        );
        *cluster.borrow_mut() = "cluster-a".into();
        assert!(
            peer.propose(b"p".to_vec()).await.is_ok(),
            "both know it and agree"
        );
        peer.send_raft(vec![b"r".to_vec()]);
        wait_until(Duration::from_secs(5), "the raft message", || {
            handler.raft.borrow().len() == 1
        })
        .await;

        *cluster.borrow_mut() = "cluster-z".into();
        assert!(
            matches!(peer.heartbeat(2).await, Err(RpcError::ClusterMismatch { .. })),
            "the id is read on every call"
        );
        assert_eq!(handler.calls.borrow().len(), 3);
        server.cancel();
    });
}

/// Writes `bytes` on a raw connection (then, if `close_write`, half-closes
/// it) and checks that the server closes the connection.
async fn server_closes_after(addr: SocketAddr, bytes: &[u8], close_write: bool) {
    let mut stream = TcpStream::connect(addr).await.expect("raw connect");
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    if close_write {
        stream.shutdown(Shutdown::Write).await.expect("half-close");
    }
    // The server may answer with an abort message before it closes.
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the server kept the connection open");
        let read = pin!(stream.read(&mut buf));
        match futures::future::select(read, pin!(glommio::timer::sleep(Duration::from_millis(100)))).await {
            Either::Left((Ok(0) | Err(_), _)) => return,
            Either::Left((Ok(_), _)) | Either::Right(_) => {}
        }
    }
}

#[test]
fn malformed_frames_close_their_connection_and_the_server_keeps_serving() {
    run(|| async {
        let handler = Recorder::new("c-1");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let (before, _) = new_peer(1, addr, "c-1", CALL_TIMEOUT);
        assert!(before.status().await.is_ok());

        // Garbage: the segment table claims 2^32 segments.
        server_closes_after(addr, &[0xff; 64], false).await;
        // Oversized: one segment of 2^28 words (2 GiB), over the 64 MiB limit;
        // refused from the segment table, nothing allocated.
        let mut oversized = 0u32.to_le_bytes().to_vec();
        oversized.extend((1u32 << 28).to_le_bytes());
        server_closes_after(addr, &oversized, false).await;
        // Truncated: a segment of 16 words announced, 8 bytes sent, then EOF.
        let mut truncated = 0u32.to_le_bytes().to_vec();
        truncated.extend(16u32.to_le_bytes());
        truncated.extend([0u8; 8]);
        server_closes_after(addr, &truncated, true).await;

        assert_eq!(
            before.heartbeat(9).await,
            Ok(HeartbeatReply { leader: 1, term: 10 })
        );
        let (after, _) = new_peer(2, addr, "c-1", CALL_TIMEOUT);
        assert_eq!(after.propose(b"ok".to_vec()).await, Ok((42, b"ko".to_vec())));
        server.cancel();
    });
}

#[test]
fn a_peer_fails_fast_without_a_server_and_reconnects_when_one_appears() {
    run(|| async {
        let addr = free_addr();
        let timeout = Duration::from_millis(500);
        let (peer, _) = new_peer(1, addr, "", timeout);

        let started = Instant::now();
        assert!(matches!(peer.status().await, Err(RpcError::Connect(_))));
        assert!(
            matches!(peer.heartbeat(1).await, Err(RpcError::Connect(_))),
            "backing off"
        );
        assert!(started.elapsed() < timeout, "fails within the call timeout");

        let handler = Recorder::new("");
        let (server, bound) = serve(addr, handler.clone()).expect("serve on the peer's address");
        assert_eq!(bound, addr);
        retry_until_ok(&peer).await;

        // The server goes away: calls fail; it comes back: the same peer
        // reconnects.
        server.cancel();
        server.await;
        wait_until_fails(&peer).await;
        let (server, _) = serve(addr, handler.clone()).expect("serve again");
        retry_until_ok(&peer).await;
        server.cancel();
    });
}

async fn retry_until_ok(peer: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match peer.status().await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no reconnection: {e}"),
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_fails(peer: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.status().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "calls still succeed after the server stopped"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_call_without_a_reply_times_out() {
    run(|| async {
        let handler = Rc::new(Recorder {
            propose_hangs: true,
            ..Recorder::default()
        });
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        let timeout = Duration::from_millis(300);
        let (peer, _) = new_peer(1, addr, "", timeout);

        let started = Instant::now();
        assert_eq!(peer.propose(b"slow".to_vec()).await, Err(RpcError::Timeout));
        let took = started.elapsed();
        assert!(took >= timeout && took < timeout * 3, "took {took:?}");
        // The timed-out connection was closed; the next call opens another.
        assert!(peer.status().await.is_ok());
        server.cancel();
    });
}

#[test]
fn the_raft_queue_drops_beyond_its_bound_and_delivers_the_rest() {
    run(|| async {
        let addr = free_addr();
        let (peer, _) = new_peer(6, addr, "", Duration::from_millis(200));

        let total = 3 * RAFT_QUEUE_MESSAGES_MAX;
        for i in 0..total as u32 {
            peer.send_raft(vec![i.to_le_bytes().to_vec()]);
        }
        assert_eq!(
            peer.queued(),
            RAFT_QUEUE_MESSAGES_MAX,
            "the queue stops at its bound"
        );
        assert_eq!(
            peer.dropped(),
            (total - RAFT_QUEUE_MESSAGES_MAX) as u64,
            "the rest is counted"
        );

        // A byte bound too: 1 MiB messages stop well before the count bound.
        let (big_peer, _) = new_peer(7, addr, "", Duration::from_millis(200));
        for _ in 0..100 {
            big_peer.send_raft(vec![vec![0u8; 1 << 20]]);
        }
        let fit = RAFT_QUEUE_BYTES_MAX >> 20;
        assert_eq!(big_peer.queued(), fit);
        assert_eq!(big_peer.dropped(), (100 - fit) as u64);
        big_peer.send_raft(vec![vec![0u8; PAYLOAD_BYTES_MAX + 1]]);
        assert_eq!(
            big_peer.dropped(),
            (100 - fit) as u64 + 1,
            "an oversized message is dropped too"
        );
        drop(big_peer);

        // A server appears: what was queued arrives, oldest first.
        let handler = Recorder::new("");
        let (server, _) = serve(addr, handler.clone()).expect("serve on the peer's address");
        wait_until(Duration::from_secs(10), "the queued messages", || {
            handler.raft.borrow().len() == RAFT_QUEUE_MESSAGES_MAX
        })
        .await;
        let expected: Vec<(u64, Vec<u8>)> = (0..RAFT_QUEUE_MESSAGES_MAX as u32)
            .map(|i| (6, i.to_le_bytes().to_vec()))
            .collect();
        assert_eq!(*handler.raft.borrow(), expected);
        assert_eq!(peer.queued(), 0);
        server.cancel();
    });
}

/// The RPC listener is the node's alone: a second `serve` on the same
/// address fails (glommio's own bind, with SO_REUSEPORT, would share it), and
/// once the first is gone its port can be served again at once, TIME_WAIT
/// of its connections or not (SO_REUSEADDR; the transport's `bind`).
#[test]
fn a_second_listener_on_the_rpc_address_is_refused_and_a_restart_gets_it_back() {
    run(|| async {
        let handler = Recorder::new("c-1");
        let (server, addr) = serve(loopback(), handler.clone()).expect("serve");
        assert!(serve(addr, handler.clone()).is_err(), "two listeners on {addr}");
        let (peer, _) = new_peer(7, addr, "c-1", CALL_TIMEOUT);
        assert_eq!(peer.propose(b"abc".to_vec()).await, Ok((42, b"cba".to_vec())));
        server.cancel();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let (again, bound) = serve(addr, handler.clone()).expect("serve the same address again");
        assert_eq!(bound, addr);
        again.cancel();
    });
}
