//! Multi-node tests: real `ferrolog start` processes on loopback forming one
//! cluster through `--seeds`, driven by confluent-kafka's AdminClient
//! (tests/clients/cluster_admin.py) and checked through every node's
//! Metadata and `GET /v1/cluster`.
//!
//! Each node has its own data directory, Kafka, RPC and admin ports; a
//! killed node is restarted on the same ports. Every wait is bounded; a
//! failure prints the tail of every node's log.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, Encodable, StrBytes};

mod common;
use common::certs::{make_ca, openssl};
use common::{free_port, free_ports, output_bounded, process_report, wait_exit};

/// Replication ports reserved per node: one per shard, more than this
/// machine's CPUs (a node runs one shard per CPU by default).
const SHARD_PORTS: u16 = 8;
const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
/// From spawn to the Kafka port accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A client script (each of its waits is bounded by 20 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// A condition on the cluster's state (an election, a catch-up, a drain).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(40);
const LOG_TAIL_LINES: usize = 60;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One node: its ports and directory outlive its processes.
struct Node {
    id: i32,
    kafka: SocketAddr,
    rpc: SocketAddr,
    admin: SocketAddr,
    /// Shard 0's replication listener; shard s listens on its port + s.
    data: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
    /// More arguments of `ferrolog start` (e.g. node TLS).
    extra: Vec<String>,
}

impl Node {
    fn new(id: i32) -> Node {
        Node {
            id,
            kafka: loopback(free_port()),
            rpc: loopback(free_port()),
            admin: loopback(free_port()),
            // One port per shard: the machine's CPU count bounds the shards.
            data: loopback(free_ports(SHARD_PORTS)),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            starts: 0,
            extra: Vec::new(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's log of its `n`th start: in its temporary directory, or in
    /// `FERROLOG_TEST_LOG_DIR` when set (kept after the test, for debugging).
    fn log_path(&self, n: usize) -> PathBuf {
        let name = format!("node{}.{n}.log", self.id);
        match std::env::var_os("FERROLOG_TEST_LOG_DIR") {
            Some(dir) => {
                let tmp = self.dir.path().file_name().unwrap_or_default().to_string_lossy();
                PathBuf::from(dir).join(format!("{tmp}-{name}"))
            }
            None => self.dir.path().join(name),
        }
    }

    fn command(&self, seeds: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["start", "--node-id", &self.id.to_string(), "--data-dir"])
            .arg(self.data())
            .args(["--kafka-addr", &self.kafka.to_string()])
            .args(["--rpc-addr", &self.rpc.to_string()])
            .args(["--data-addr", &self.data.to_string()])
            .args(["--admin-addr", &self.admin.to_string()])
            .args(["--seeds", seeds])
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("FERROLOG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts the node; returns once its Kafka port accepts connections.
    fn start(&mut self, seeds: &str) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("log file");
        let child = self.command(seeds).stderr(log).spawn().expect("spawn ferrolog");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                panic!(
                    "node {} exited during start with {status}\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.kafka, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not serving within {READY_TIMEOUT:?}\n{}\n{}",
                self.id,
                self.log_tail(),
                process_report(self.child.as_ref().expect("child").id())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `ferrolog start` expecting it to refuse; returns its stderr.
    fn start_refused(&self, seeds: &str) -> String {
        // A start that is not refused runs on: killed after a bound, and failed.
        let (status, _, err) = output_bounded(self.command(seeds), READY_TIMEOUT);
        assert!(
            !status.success(),
            "node {} started with seeds {seeds}: {err}",
            self.id
        );
        err
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn sigterm(&mut self) {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "node {} exited with {status}\n{}",
                    self.id,
                    self.log_tail()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {} did not exit after SIGTERM\n{}", self.id, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- node {} log (last {} lines) ---\n{}",
            self.id,
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// `GET /v1/cluster` from this node, parsed.
    fn metrics(&self) -> Result<String, String> {
        let (code, body) = http(self.admin, "GET", "/metrics")?;
        if code != 200 {
            return Err(format!("{code}: {}", body.trim_end()));
        }
        Ok(body)
    }

    fn cluster(&self) -> Result<serde_json::Value, String> {
        let (code, body) = http(self.admin, "GET", "/v1/cluster")?;
        if code != 200 {
            return Err(format!("{code}: {}", body.trim_end()));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not HTTP")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad status")?;
    Ok((code, body.to_string()))
}

struct Cluster {
    nodes: Vec<Node>,
    seeds: String,
}

impl Cluster {
    /// `voters` nodes with ids 1..=voters, all seeds, started together.
    fn start(voters: i32) -> Cluster {
        Cluster::start_nodes((1..=voters).map(Node::new).collect())
    }

    /// `nodes` as the voters, all seeds, started together.
    fn start_nodes(mut nodes: Vec<Node>) -> Cluster {
        let seeds = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.rpc))
            .collect::<Vec<_>>()
            .join(",");
        // Spawned at once: a node's start waits for its first metadata, which
        // needs a quorum.
        for n in &mut nodes {
            n.starts += 1;
            let log = File::create(n.log_path(n.starts)).expect("log file");
            n.child = Some(n.command(&seeds).stderr(log).spawn().expect("spawn"));
        }
        let c = Cluster { nodes, seeds };
        for n in &c.nodes {
            c.wait_serving(n);
        }
        c
    }

    fn node(&mut self, id: i32) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(Node::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_serving(&self, n: &Node) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&n.kafka, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "node {} not serving\n{}\n{}",
                n.id,
                self.logs(),
                n.child
                    .as_ref()
                    .map_or("not started".into(), |c| process_report(c.id()))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `GET /v1/cluster` on node `on` until `check` holds.
    fn wait_until(
        &self,
        on: i32,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let n = self.nodes.iter().find(|n| n.id == on).expect("node");
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let mut last;
        loop {
            match n.cluster() {
                Ok(v) if check(&v) => return v,
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            assert!(
                Instant::now() < deadline,
                "node {on}: {what} not reached within {CONVERGE_TIMEOUT:?}; last /v1/cluster: {last}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node agrees on one leader; returns its id.
    fn leader(&mut self) -> i32 {
        let running: Vec<i32> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.running().then_some(n.id))
            .collect();
        let first = self.wait_until(running[0], "a leader", |v| {
            v["leader_id"].as_i64().unwrap_or(-1) >= 0
        });
        let leader = first["leader_id"].as_i64().expect("leader") as i32;
        for id in &running[1..] {
            self.wait_until(*id, "the same leader", |v| {
                v["leader_id"].as_i64() == Some(i64::from(leader))
            });
        }
        leader
    }

    fn python(&self, bootstrap_node: i32, args: &[&str]) -> String {
        let n = self.nodes.iter().find(|n| n.id == bootstrap_node).expect("node");
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(CLIENTS).join("cluster_admin.py"))
            .args(["--bootstrap", &n.kafka.to_string()])
            .args(args)
            .current_dir(CLIENTS)
            .env_remove("LD_LIBRARY_PATH")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
        let (status, out, err) = output_bounded(cmd, SCRIPT_TIMEOUT);
        let fails: Vec<&str> = err.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert!(
            status.success(),
            "cluster_admin.py {args:?} on node {bootstrap_node} failed ({status}): {}\n{out}\n{}",
            fails.join("\n"),
            self.logs()
        );
        println!("{}", out.trim_end());
        out
    }

    fn assert_running(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                assert!(n.running(), "node {} exited\n{}", n.id, n.log_tail());
            }
        }
    }
}

fn member(v: &serde_json::Value, id: i32) -> Option<&serde_json::Value> {
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"].as_i64() == Some(i64::from(id)))
}

fn alive_members(v: &serde_json::Value) -> usize {
    v["members"].as_array().map_or(0, |m| {
        m.iter().filter(|m| m["alive"].as_bool() == Some(true)).count()
    })
}

#[test]
fn three_nodes_agree_on_topics_through_leader_kills_full_restarts_a_join_and_a_decommission() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);

    // Topics created through any node show on every node.
    c.python(2, &["create", "orders", "3", "1"]);
    c.python(3, &["create", "events", "2", "3"]);
    for id in 1..=3 {
        c.python(id, &["wait-topics", "3", "orders:3", "events:2"]);
    }
    c.python(1, &["describe-cluster", "3"]);
    c.python(
        1,
        &[
            "expect-create-error",
            "too-wide",
            "1",
            "4",
            "INVALID_REPLICATION_FACTOR",
        ],
    );
    c.python(1, &["roundtrip", "orders"]);

    // kill -9 of the controller leader: another is elected, admin works again.
    c.node(leader).kill9();
    let next = c.leader();
    assert_ne!(next, leader);
    // Without waiting out an election timeout and a session: the connection
    // that carried the old leader's Raft messages ended and its control port
    // refuses connections, so a survivor campaigned at once, and the new
    // leader's probe of every member marked the old one down.
    c.wait_until(next, "the killed controller leader marked down", |v| {
        member(v, leader).is_some_and(|m| m["alive"] == false)
    });
    let survivors_log: String = c
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| std::fs::read_to_string(n.log_path(n.starts)).expect("node log"))
        .collect();
    assert!(
        survivors_log.contains(&format!("campaigning now leader={leader} ")),
        "no survivor campaigned at once after node {leader} died\n{}",
        c.logs()
    );
    let about_leader =
        |l: &&str| l.contains(&format!("node={leader} ")) || l.ends_with(&format!("node={leader}"));
    assert!(
        survivors_log.lines().filter(about_leader).any(
            |l| l.contains("member probed and its control port refuses connections; marking it down now")
        ),
        "the new controller leader did not mark node {leader} down by its probe\n{}",
        c.logs()
    );
    assert!(
        !survivors_log
            .lines()
            .filter(about_leader)
            .any(|l| l.contains("missed its session")),
        "node {leader} was marked down by its session timeout\n{}",
        c.logs()
    );
    let survivor = (1..=3).find(|id| *id != leader).expect("a survivor");
    c.python(survivor, &["create", "after-failover", "1", "1"]);
    // The killed node restarts and catches up.
    let seeds = c.seeds.clone();
    c.node(leader).start(&seeds);
    c.python(
        leader,
        &["wait-topics", "3", "orders:3", "events:2", "after-failover:1"],
    );
    c.python(leader, &["verify", "orders"]);
    c.assert_running();

    // All three killed together recover their state from disk.
    for id in 1..=3 {
        c.node(id).kill9();
    }
    for n in &mut c.nodes {
        n.starts += 1;
        let log = File::create(n.log_path(n.starts)).expect("log file");
        n.child = Some(n.command(&seeds).stderr(log).spawn().expect("spawn"));
    }
    for n in &c.nodes {
        c.wait_serving(n);
    }
    let leader = c.leader();
    for id in 1..=3 {
        c.python(
            id,
            &["wait-topics", "3", "orders:3", "events:2", "after-failover:1"],
        );
    }
    c.python(leader, &["create", "after-restart", "2", "2"]);
    // The messages acknowledged before the kills are all still there.
    c.python(leader, &["verify", "orders"]);

    // A fourth node, not a seed, joins as a broker and learns everything.
    let mut four = Node::new(4);
    four.start(&seeds);
    c.nodes.push(four);
    c.wait_until(leader, "node 4 registered and alive", |v| {
        member(v, 4).is_some_and(|m| m["alive"].as_bool() == Some(true))
    });
    let v = c.wait_until(4, "node 4 as a learner", |v| {
        v["learners"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_i64() == Some(4)))
    });
    assert_eq!(v["voters"].as_array().map(Vec::len), Some(3), "{v}");
    c.python(
        4,
        &[
            "wait-topics",
            "4",
            "orders:3",
            "events:2",
            "after-failover:1",
            "after-restart:2",
        ],
    );
    // Admin requests on the new node are forwarded to the leader.
    c.python(4, &["create", "from-four", "4", "1"]);
    for id in 1..=4 {
        c.python(id, &["wait-topics", "4", "from-four:4"]);
    }

    // Decommission node 4: drained of every replica, then removed.
    let (code, body) = http(c.node(1).admin, "POST", "/v1/cluster/decommission/4").expect("decommission");
    assert_eq!(code, 200, "{body}");
    let v = c.wait_until(1, "node 4 removed", |v| {
        member(v, 4).is_some_and(|m| m["state"] == "removed")
    });
    assert_eq!(member(&v, 4).expect("node 4")["partitions_led"], 0, "{v}");
    for id in 1..=3 {
        c.python(id, &["wait-topics", "3", "from-four:4", "orders:3"]);
    }
    // The removed node hears it at its next heartbeat and stops.
    let four = c.node(4);
    let status = wait_exit(four.child.as_mut().expect("node 4 runs"), CONVERGE_TIMEOUT);
    assert!(!status.success(), "a removed node exits with an error");
    four.child = None;
    let log = std::fs::read_to_string(four.log_path(four.starts)).expect("node 4 log");
    assert!(
        log.contains("was removed from the cluster"),
        "{}",
        four.log_tail()
    );
    c.assert_running();
}

#[test]
fn a_killed_broker_is_marked_down_its_partitions_move_and_it_comes_back_as_a_new_incarnation() {
    // Leaderships go back to the victim by ElectLeaders only: the
    // controller's own rebalancing would race it (and has won).
    let no_rebalance = || vec!["--auto-leader-rebalance".to_string(), "false".to_string()];
    let nodes = (1..=3)
        .map(|id| {
            let mut n = Node::new(id);
            n.extra = no_rebalance();
            n
        })
        .collect();
    let mut c = Cluster::start_nodes(nodes);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    c.python(leader, &["create", "moving", "6", "3"]);
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let before = c.wait_until(leader, "leaders spread", |v| {
        member(v, victim).is_some_and(|m| m["partitions_led"].as_u64() > Some(0))
    });
    let incarnation = member(&before, victim).expect("victim")["incarnation"]
        .as_u64()
        .expect("incarnation");
    // The probe follows a connection that carried the victim's heartbeats:
    // give the victim a few heartbeats to the current controller leader first
    // (on an idle machine the leaders spread within its first one).
    std::thread::sleep(Duration::from_secs(1));
    c.node(victim).kill9();
    // Marked down after its session, and every partition it led moves.
    let v = c.wait_until(leader, "the victim marked down and drained of leadership", |v| {
        member(v, victim).is_some_and(|m| m["alive"] == false && m["partitions_led"] == 0)
    });
    assert_eq!(alive_members(&v), 2, "{v}");
    // By the controller leader's probe of the closed heartbeat connection
    // (the port refuses: the process is gone), not by its session timeout.
    let log = std::fs::read_to_string(c.node(leader).log_path(1)).expect("leader log");
    let victim_down =
        |l: &&str| l.contains(&format!("node={victim}")) || l.contains(&format!("node {victim}"));
    assert!(
        log.lines()
            .filter(victim_down)
            .any(|l| l.contains("marking it down now")),
        "node {victim} was not marked down by the probe\n{}",
        c.node(leader).log_tail()
    );
    assert!(
        !log.lines()
            .filter(victim_down)
            .any(|l| l.contains("missed its session")),
        "node {victim} was marked down by its session timeout\n{}",
        c.node(leader).log_tail()
    );
    let other = (1..=3)
        .find(|id| *id != leader && *id != victim)
        .expect("the third node");
    // Clients are told of two brokers, and every leader is one of them.
    c.python(other, &["wait-topics", "2", "moving:6"]);
    c.python(other, &["roundtrip", "moving"]);
    // A second process with the id of a live node (another address, another
    // data directory) is refused by the cluster and exits.
    let seeds = c.seeds.clone();
    let mut seven = Node::new(7);
    seven.extra = no_rebalance();
    seven.start(&seeds);
    c.wait_until(leader, "node 7 alive", |v| {
        member(v, 7).is_some_and(|m| m["alive"] == true)
    });
    let err = Node::new(7).start_refused(&seeds);
    assert!(err.contains("is in use by a live node"), "{err}");
    let v = c.node(leader).cluster().expect("status");
    assert_eq!(
        member(&v, 7).expect("node 7")["rpc_addr"],
        seven.rpc.to_string(),
        "{v}"
    );
    c.nodes.push(seven);
    // The victim restarts as a new incarnation and is alive again.
    c.node(victim).start(&seeds);
    c.wait_until(leader, "the victim back", |v| {
        member(v, victim).is_some_and(|m| m["alive"] == true && m["incarnation"].as_u64() > Some(incarnation))
    });
    c.python(victim, &["wait-topics", "4", "moving:6"]);
    // Node 7 joined after the last snapshot of the controller's state: it
    // has the topics too (every client may ask it for metadata).
    c.python(7, &["wait-topics", "4", "moving:6"]);
    // ElectLeaders moves leadership back to each partition's first replica
    // (the victim's among them) once it has caught up.
    c.python(victim, &["elect-preferred", "moving"]);
    c.python(other, &["roundtrip", "moving"]);
    c.assert_running();
}

/// ACLs are cluster metadata: created through any node, every node lists them, and a
/// node killed and restarted still has them (Raft log and snapshot).
#[test]
fn acls_created_on_one_node_are_listed_by_every_node_and_survive_a_restart() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    c.python(follower, &["create-acl", "User:alice", "orders"]);
    c.python(leader, &["create-acl", "User:alice", "events"]);
    for id in 1..=3 {
        c.python(id, &["wait-acls", "User:alice", "orders", "events"]);
    }
    let seeds = c.seeds.clone();
    c.node(leader).kill9();
    c.node(leader).start(&seeds);
    c.leader();
    for id in 1..=3 {
        c.python(id, &["wait-acls", "User:alice", "orders", "events"]);
    }
}

#[test]
fn a_seed_list_that_disagrees_with_the_stored_voters_is_refused() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let seeds = c.seeds.clone();
    // A learner joins first: the stored configuration has changed since the
    // start, and its voters must still match the seeds.
    let mut four = Node::new(4);
    four.start(&seeds);
    c.nodes.push(four);
    for id in [leader, 3] {
        c.wait_until(id, "node 4 a learner", |v| {
            v["learners"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x.as_i64() == Some(4)))
        });
    }
    c.node(3).kill9();
    let n3 = c.node(3);
    // Only two of the three voters: this data directory was started with three.
    let two: String = seeds.split(',').take(2).collect::<Vec<_>>().join(",");
    let err = n3.start_refused(&two);
    assert!(err.contains("--seeds names voters"), "{err}");
    // No seeds at all: refused too (it is not a one-voter group).
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "--node-id", "3", "--data-dir"])
        .arg(n3.data())
        .args(["--kafka-addr", &n3.kafka.to_string(), "--admin-addr", "none"]);
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start it with --seeds"), "{err}");
    // Nothing stored changed: the right seeds start it again.
    n3.start(&seeds);
    c.python(3, &["create", "still-works", "1", "3"]);
}

#[test]
fn a_node_of_another_group_naming_cluster_nodes_as_seeds_is_ignored() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let before = c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    // Node 5 believes nodes 1 and 2 are its fellow voters: a configuration
    // mistake. Their cluster must not hear it.
    let mut five = Node::new(5);
    let (one, two) = (c.node(1).rpc, c.node(2).rpc);
    five.start(&format!("5@{},1@{one},2@{two}", five.rpc));
    // Longer than an election timeout of node 5 (1-2 s) and a session.
    std::thread::sleep(Duration::from_secs(4));
    let after = c.wait_until(leader, "the same leader", |v| {
        v["leader_id"] == before["leader_id"]
    });
    assert_eq!(
        after["term"], before["term"],
        "node 5 disturbed the term: {after}"
    );
    // An idle cluster commits nothing but liveness changes: no proposal loop.
    let grew = after["applied_index"].as_u64().expect("applied")
        - before["applied_index"].as_u64().expect("applied");
    assert!(grew <= 3, "{grew} entries applied while idle: {after}");
    assert!(member(&after, 5).is_none(), "node 5 became a member: {after}");
    let five_status = five.cluster();
    assert!(
        five_status.is_err() || five_status.as_ref().is_ok_and(|v| v["leader_id"] == -1),
        "node 5 found a leader: {five_status:?}"
    );
    let log = std::fs::read_to_string(c.node(1).log_path(1)).expect("node 1 log");
    assert!(
        log.contains("outside this cluster's configuration"),
        "{}",
        c.node(1).log_tail()
    );
    five.kill9();
    c.assert_running();
}

#[test]
fn an_idempotent_producer_and_a_group_member_ride_through_a_kill_of_the_partition_leader() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    c.python(leader, &["create", "failover", "1", "3"]);
    let control = tempfile::tempdir().expect("control dir");
    let bootstrap = c
        .nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(CLIENTS).join("failover_client.py"))
        .args(["--bootstrap", &bootstrap, "--topic", "failover", "--control"])
        .arg(control.path())
        .current_dir(CLIENTS)
        .env_remove("LD_LIBRARY_PATH")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let client = std::thread::spawn(move || output_bounded(cmd, FAILOVER_CLIENT_TIMEOUT));
    // The script asks for each step through a file; every wait is bounded
    // and gives up early if the script has ended.
    let wait_for = |name: &str| -> Option<String> {
        let deadline = Instant::now() + FAILOVER_CLIENT_TIMEOUT;
        while Instant::now() < deadline && !client.is_finished() {
            if let Ok(text) = std::fs::read_to_string(control.path().join(name)) {
                return Some(text);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    let victim: Option<i32> = wait_for("kill").map(|t| t.trim().parse().expect("a node id"));
    if let Some(victim) = victim {
        c.node(victim).kill9();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        put(control.path(), "killed", &format!("{at:.6}"));
        if wait_for("restart").is_some() {
            let seeds = c.seeds.clone();
            c.node(victim).start(&seeds);
            put(control.path(), "restarted", "");
        }
    }
    let (status, out, err) = client.join().expect("client thread");
    println!("{}", out.trim_end());
    assert!(
        status.success(),
        "failover_client.py ({status}): {err}\n{out}\n{}",
        c.logs()
    );
    c.assert_running();
}

/// One Metadata v1 request for `topic` on an open connection, and its answer.
fn metadata_of(stream: &mut TcpStream, topic: &str) -> MetadataResponse {
    const VERSION: i16 = 1;
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("cluster-test")));
    let body =
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]));
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0; 4]);
    encode_request_header_into_buffer(&mut out, &header).expect("encode header");
    body.encode(&mut out, VERSION).expect("encode body");
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&out).expect("send Metadata");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).expect("response");
    let mut frame = Bytes::from(frame);
    let header = ResponseHeader::decode(&mut frame, ApiKey::Metadata.response_header_version(VERSION))
        .expect("response header");
    assert_eq!(header.correlation_id, 7);
    MetadataResponse::decode(&mut frame, VERSION).expect("Metadata response")
}

/// Partition index -> leader id, from one topic's Metadata.
fn leaders(r: &MetadataResponse) -> Vec<(i32, i32, i16)> {
    r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0, p.error_code))
        .collect()
}

/// A client whose partition leader is killed asks a survivor for Metadata at
/// once (librdkafka does, and ends its fast leader query on any answer that
/// names a leader it knows; it then waits for its one-second topic scan).
/// The survivor saw its replication link to the victim end before the
/// controller's verdict: its answer waits for that verdict instead of
/// naming the dead leader, and it still lists the victim among the brokers
/// (librdkafka, seeing a broker leave the list in the same answer that moves
/// its partition, can lose the new leader; see departed_brokers).
#[test]
fn metadata_asked_of_a_survivor_right_after_a_leader_is_killed_names_no_dead_leader() {
    const TOPIC: &str = "lost-leader";
    let mut c = Cluster::start(3);
    let controller = c.leader();
    c.wait_until(controller, "three live members", |v| alive_members(v) == 3);
    c.python(controller, &["create", TOPIC, "6", "3"]);
    // The controller leader stays up: its verdict is what the answer waits for.
    let asked = (1..=3).find(|id| *id != controller).expect("a second node");
    let victim = (1..=3)
        .find(|id| *id != controller && *id != asked)
        .expect("a third node");
    c.wait_until(controller, "leaders spread", |v| {
        member(v, victim).is_some_and(|m| m["partitions_led"].as_u64() > Some(0))
    });
    c.python(asked, &["wait-topics", "3", &format!("{TOPIC}:6")]);
    let asked_node = c.nodes.iter().find(|n| n.id == asked).expect("asked node");
    let (kafka, log_path) = (asked_node.kafka, asked_node.log_path(asked_node.starts));
    let mut stream = TcpStream::connect(kafka).expect("connect to the survivor");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let before = metadata_of(&mut stream, TOPIC);
    let led: Vec<i32> = leaders(&before)
        .iter()
        .filter(|(_, l, _)| *l == victim)
        .map(|(p, _, _)| *p)
        .collect();
    assert!(!led.is_empty(), "node {victim} leads nothing: {before:?}");
    // No wait for heartbeats: the controller leader's probe also follows the
    // connection that carried the victim's Raft responses.
    c.node(victim).kill9();
    let killed = Instant::now();
    // The survivor's log says when it saw the connection end: the question
    // is asked then, well before the controller's probe, Raft commit and
    // election (tens of milliseconds) move the partitions.
    let seen = format!("a connection to node {victim} ended");
    while !std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(&seen)) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "node {asked} did not see its connections to node {victim} end\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let asked_at = killed.elapsed();
    let after = metadata_of(&mut stream, TOPIC);
    let answered_at = killed.elapsed();
    println!(
        "killed node {victim}; asked node {asked} {asked_at:?} later, answered {answered_at:?} after the kill: {:?}",
        leaders(&after)
    );
    const LEADER_NOT_AVAILABLE: i16 = 5;
    for (p, leader, error) in leaders(&after) {
        assert_ne!(
            leader,
            victim,
            "partition {p} still led by the killed node: {after:?}\n{}",
            c.logs()
        );
        if led.contains(&p) {
            assert!(
                leader == controller || leader == asked || (leader == -1 && error == LEADER_NOT_AVAILABLE),
                "partition {p}: leader {leader}, error {error}: {after:?}"
            );
        }
    }
    assert!(
        after.brokers.iter().any(|b| b.node_id.0 == victim),
        "node {victim} left the brokers list in the answer that moved its partitions: {after:?}"
    );
}

/// The whole failover script: warm-up, the ride, the restart, two members.
const FAILOVER_CLIENT_TIMEOUT: Duration = Duration::from_secs(240);

/// Writes a control file whole: a temporary name, then a rename.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write control file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename control file");
}

/// A node stopped with SIGTERM hands the leadership of its replicated
/// partitions to other replicas before it exits (its replicas refuse the
/// controller's prepares, the controller elects among the others), so
/// clients find a live leader without waiting for its session to expire;
/// acknowledged messages are all there afterwards.
/// `(shard, value)` of every sample of `name` whose labels contain every
/// item of `labels`.
fn shard_samples(text: &str, name: &str, labels: &[&str]) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| {
            let shard = l.split("shard=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let value = l.rsplit_once(' ')?.1.parse::<f64>().ok()?;
            Some((shard, value as u64))
        })
        .collect()
}

/// Replication frames go to the listener of the shard that owns their
/// partition on the receiving node: none is handed between shards there,
/// and (with more than one shard) shards other than 0 receive some.
fn assert_frames_reach_owner_shards(c: &Cluster) {
    for n in &c.nodes {
        let text = n
            .metrics()
            .unwrap_or_else(|e| panic!("node {}: /metrics: {e}", n.id));
        let received = shard_samples(
            &text,
            "ferrolog_replication_frames_total",
            &["transport=\"tcp\"", "direction=\"received\""],
        );
        let forwarded = shard_samples(&text, "ferrolog_replication_frames_forwarded_total", &[]);
        assert!(
            received.iter().map(|(_, v)| v).sum::<u64>() > 0,
            "node {}: no replication frame received: {received:?}",
            n.id
        );
        assert_eq!(
            forwarded.iter().map(|(_, v)| v).sum::<u64>(),
            0,
            "node {}: frames handed between shards {forwarded:?} (received {received:?})",
            n.id
        );
        if received.len() > 1 {
            assert!(
                received.iter().any(|(s, v)| *s > 0 && *v > 0),
                "node {}: only shard 0 received frames: {received:?}",
                n.id
            );
        } else {
            println!("node {}: one shard; frames cannot miss their owner", n.id);
        }
    }
}

#[test]
fn a_node_stopped_with_sigterm_hands_its_leaderships_over_before_it_exits() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    c.python(leader, &["create", "handover", "6", "3"]);
    c.python(leader, &["roundtrip", "handover"]);
    assert_frames_reach_owner_shards(&c);
    let v = c.wait_until(
        leader,
        "a node other than the controller leading partitions",
        |v| {
            (1..=3).any(|id| {
                id != leader && member(v, id).is_some_and(|m| m["partitions_led"].as_u64() > Some(0))
            })
        },
    );
    let stopping = (1..=3)
        .find(|id| *id != leader && member(&v, *id).is_some_and(|m| m["partitions_led"].as_u64() > Some(0)))
        .expect("a node that leads");
    c.node(stopping).sigterm();
    let log = std::fs::read_to_string(c.node(stopping).log_path(1)).expect("log");
    assert!(
        log.contains("stopping: leads no replicated partition"),
        "node {stopping} exited still leading:\n{}",
        c.node(stopping).log_tail()
    );
    let other = (1..=3)
        .find(|id| *id != stopping && *id != leader)
        .expect("third node");
    // Still three members (the session has not expired), but every
    // partition already has a leader on a running node.
    let v = c.node(leader).cluster().expect("status");
    assert_eq!(
        member(&v, stopping).expect("member")["partitions_led"].as_u64(),
        Some(0),
        "{v}"
    );
    c.python(other, &["verify", "handover"]);
    c.python(other, &["verify-other-clients", "handover"]);
}

#[test]
fn a_reassignment_moves_replicas_after_they_catch_up_and_the_node_that_left_deletes_its_copies() {
    let started = Instant::now();
    let mut c = Cluster::start(4);
    let leader = c.leader();
    c.wait_until(leader, "four live members", |v| alive_members(v) == 4);
    let out = c.python(leader, &["reassign", "moving"]);
    let left: Vec<i32> = out
        .lines()
        .find_map(|l| l.strip_prefix("left "))
        .expect("the nodes that left")
        .split(' ')
        .map(|n| n.parse().expect("a node id"))
        .collect();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    for (partition, node) in left.into_iter().enumerate() {
        let dir = c.node(node).data().join(format!("moving-{partition}"));
        while dir.exists() {
            assert!(
                Instant::now() < deadline,
                "node {node} still holds {dir:?}, a partition it left\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    c.assert_running();
    println!("reassignment test took {:?}", started.elapsed());
}

/// A node certificate `name` signed by `ca` for 127.0.0.1 (TLS server and
/// client use); returns the `--node-tls-*` arguments that use it.
fn node_tls_args(dir: &Path, ca: &str, name: &str) -> Vec<String> {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    let subj = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("extension file");
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    vec![
        "--node-tls-cert".into(),
        path(&pem),
        "--node-tls-key".into(),
        path(&key),
        "--node-tls-ca".into(),
        path(&ca_pem),
    ]
}

/// Mutual TLS between nodes (`--node-tls-*`): a three-node cluster whose
/// control-plane RPC and replication links are all TLS replicates an RF=3
/// topic (acks=all: followers got the batches over TLS links) and a follower
/// killed with -9 catches up over TLS after its restart. A node whose
/// certificate another CA signed, and a node without TLS, cannot join: the
/// cluster refuses their handshakes and they never become members.
#[test]
fn nodes_talk_mutual_tls_and_a_node_without_the_clusters_certificate_cannot_join() {
    let certs = tempfile::tempdir().expect("cert dir");
    let d = certs.path();
    make_ca(d, "ca");
    make_ca(d, "rogue-ca");
    let nodes = (1..=3)
        .map(|id| {
            let mut n = Node::new(id);
            n.extra = node_tls_args(d, "ca", &format!("node{id}"));
            n
        })
        .collect();
    let mut c = Cluster::start_nodes(nodes);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    for n in &c.nodes {
        let log = std::fs::read_to_string(n.log_path(n.starts)).expect("node log");
        assert!(
            log.lines()
                .any(|l| l.contains("node-to-node security") && l.contains("tls=true")),
            "node {} does not say it runs node TLS:\n{}",
            n.id,
            n.log_tail()
        );
    }
    c.python(leader, &["create", "secure", "2", "3"]);
    c.python(leader, &["roundtrip", "secure"]);
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    c.node(victim).kill9();
    let seeds = c.seeds.clone();
    c.node(victim).start(&seeds);
    c.wait_until(leader, "the victim back", |v| {
        member(v, victim).is_some_and(|m| m["alive"] == true)
    });
    c.python(victim, &["wait-topics", "3", "secure:2"]);
    c.python(victim, &["verify", "secure"]);

    let mut rogue = Node::new(4);
    rogue.extra = node_tls_args(d, "rogue-ca", "rogue");
    rogue.start(&seeds);
    let mut plain = Node::new(5);
    plain.start(&seeds);
    let (rogue_id, plain_id) = (rogue.id, plain.id);
    c.nodes.push(rogue);
    c.nodes.push(plain);
    // The rogue node does not trust the cluster's certificates; the cluster
    // closes the plain node's connections at the handshake.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let rogue_log = std::fs::read_to_string(c.node(rogue_id).log_path(1)).unwrap_or_default();
        let refused = c.nodes.iter().filter(|n| n.id <= 3).any(|n| {
            std::fs::read_to_string(n.log_path(n.starts))
                .unwrap_or_default()
                .contains("failed the TLS handshake")
        });
        if rogue_log.contains("TLS handshake") && refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused TLS handshake logged within {CONVERGE_TIMEOUT:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = c.node(leader).cluster().expect("status");
    assert!(member(&v, rogue_id).is_none(), "the rogue node joined: {v}");
    assert!(member(&v, plain_id).is_none(), "the plain node joined: {v}");
    c.python(leader, &["verify", "secure"]);
    c.assert_running();
}

/// The records of one partition's log on `node` below offset `end`, as
/// `ferrolog log dump --records` lists them: (offset, the rest of the line:
/// key, value length and CRC). Empty if the dump fails (the compactor may be
/// swapping files under it); the caller polls.
fn dumped_records(node: &Node, partition_dir: &str, end: i64) -> Vec<(i64, String)> {
    let out = Command::new(BIN)
        .args(["log", "dump", "--records"])
        .arg(node.data().join(partition_dir))
        .output()
        .expect("ferrolog log dump --records");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("record offset="))
        .filter_map(|rest| {
            let (offset, fields) = rest.split_once(' ')?;
            Some((offset.parse::<i64>().ok()?, fields.to_string()))
        })
        .filter(|(offset, _)| *offset < end)
        .collect()
}

/// Log compaction with replication: every replica of a compacted RF=3 topic
/// compacts its own log (up to its high watermark) and all three end with
/// the same records, one per key, the latest, at its original offset; the
/// batches are lz4 as the producer sent them, so compaction decodes and
/// re-encodes them on every replica.
#[test]
fn every_replica_of_a_compacted_topic_ends_with_the_same_records() {
    let nodes = (1..=3)
        .map(|id| {
            let mut n = Node::new(id);
            n.extra = vec!["--log-cleaner-backoff-ms".into(), "200".into()];
            n
        })
        .collect();
    let mut c = Cluster::start_nodes(nodes);
    let leader = c.leader();
    c.wait_until(leader, "three live members", |v| alive_members(v) == 3);
    let out = c.python(leader, &["compacted", "kv"]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("compacted "))
        .expect("cluster_admin.py prints `compacted END KEYS`");
    let (end, keys) = line.split_once(' ').expect("END KEYS");
    let (end, keys): (i64, usize) = (end.parse().expect("END"), keys.parse().expect("KEYS"));
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let lists: Vec<Vec<(i64, String)>> = c.nodes.iter().map(|n| dumped_records(n, "kv-0", end)).collect();
        let compacted = |l: &Vec<(i64, String)>| {
            let distinct: std::collections::BTreeSet<&str> = l
                .iter()
                .map(|(_, f)| f.split(' ').next().unwrap_or_default())
                .collect();
            // Each leader's epoch marker (a control record) is there too.
            l.len() == distinct.len() && distinct.len() >= keys
        };
        if lists.iter().all(compacted) && lists.iter().all(|l| *l == lists[0]) {
            println!(
                "kv-0: {} records below offset {end} ({keys} keys and epoch markers) on every replica, identical",
                lists[0].len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas of kv-0 did not compact to the same records within {CONVERGE_TIMEOUT:?}: {:?}\n{}",
            lists
                .iter()
                .map(|l| (l.len(), l.first().cloned(), l.last().cloned()))
                .collect::<Vec<_>>(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The replicas' logs stay valid after their rewrites.
    for n in &c.nodes {
        let out = Command::new(BIN)
            .args(["log", "verify"])
            .arg(n.data().join("kv-0"))
            .output()
            .expect("ferrolog log verify");
        assert!(
            out.status.success(),
            "node {}: log verify: {}{}",
            n.id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.assert_running();
}
