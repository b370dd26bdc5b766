//! The control plane under a network partition, with each node in its own
//! Linux network namespace.
//!
//! The test builds its own network: a hub namespace holding a bridge, and
//! per node a namespace with a veth pair into the bridge (10.99.0.N/24).
//! nftables rules inside a node's namespace cut it off (every packet in or
//! out of its veth dropped). Nodes, clients and `ferrolog cluster status`
//! run inside the namespaces with `ip netns exec`; traffic never leaves
//! them. Everything the test creates is removed when it ends (also on a
//! failure: `Drop`). Needs root, iproute2 and nftables (tools/setup.sh).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::output_bounded;

const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(40);
const KAFKA_PORT: u16 = 9092;
const RPC_PORT: u16 = 9093;
const ADMIN_PORT: u16 = 9644;

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// The namespaces, bridge and veth pairs of one test.
struct Net {
    hub: String,
    nodes: Vec<String>,
}

impl Net {
    fn create(nodes: usize) -> Net {
        // Names unique per test process; interface names stay short.
        let tag = format!("fl{}", std::process::id());
        let net = Net {
            hub: format!("{tag}h"),
            nodes: (1..=nodes).map(|i| format!("{tag}n{i}")).collect(),
        };
        must(&["ip", "netns", "add", &net.hub]);
        must(&["ip", "-n", &net.hub, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, ns) in net.nodes.iter().enumerate() {
            let port = format!("e{}", i + 1);
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            must(&[
                "ip", "-n", &net.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ]);
            must(&["ip", "-n", &net.hub, "link", "set", &port, "master", "br0", "up"]);
            must(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", Net::ip(i + 1)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn ip(node: usize) -> String {
        format!("10.99.0.{node}")
    }

    fn ns(&self, node: usize) -> &str {
        &self.nodes[node - 1]
    }

    /// Drops every packet into or out of `node`'s veth.
    fn isolate(&self, node: usize) {
        let ns = self.ns(node);
        must(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "add",
            "table",
            "inet",
            "ferrolog_test",
        ]);
        for (chain, hook, dir) in [("in", "input", "iifname"), ("out", "output", "oifname")] {
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "chain",
                "inet",
                "ferrolog_test",
                chain,
                &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
            ]);
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "rule",
                "inet",
                "ferrolog_test",
                chain,
                dir,
                "eth0",
                "drop",
            ]);
        }
    }

    fn heal(&self, node: usize) {
        must(&[
            "ip",
            "netns",
            "exec",
            self.ns(node),
            "nft",
            "delete",
            "table",
            "inet",
            "ferrolog_test",
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

struct Node {
    id: usize,
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("--- node {} ---\n{}", self.id, lines[from..].join("\n"))
    }

    /// `ferrolog cluster status` run inside the node's namespace.
    fn status(&self) -> Result<serde_json::Value, String> {
        let admin = format!("{}:{ADMIN_PORT}", Net::ip(self.id));
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            BIN,
            "cluster",
            "status",
            "--admin-addr",
            &admin,
        ])?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
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

fn start(net: &Net, id: usize, seeds: &str, root: &Path) -> Node {
    let dir = root.join(format!("node{id}"));
    std::fs::create_dir_all(&dir).expect("node dir");
    let log = File::create(dir.join("node.log")).expect("log");
    let ip = Net::ip(id);
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns(id),
            BIN,
            "start",
            "--node-id",
            &id.to_string(),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(["--kafka-addr", &format!("{ip}:{KAFKA_PORT}")])
        .args(["--rpc-addr", &format!("{ip}:{RPC_PORT}")])
        .args(["--admin-addr", &format!("{ip}:{ADMIN_PORT}")])
        .args(["--seeds", seeds])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn ferrolog in its namespace");
    Node {
        id,
        ns: net.ns(id).to_string(),
        dir,
        child: Some(child),
    }
}

fn wait_until(
    nodes: &[Node],
    on: usize,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match nodes[on - 1].status() {
            Ok(v) if check(&v) => return v,
            Ok(v) => last = v.to_string(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: Vec<String> = nodes.iter().map(Node::log).collect();
    panic!(
        "node {on}: {what} not reached within {CONVERGE_TIMEOUT:?}; last: {last}\n{}",
        logs.join("\n")
    );
}

/// `cluster_admin.py` inside a node's namespace, against that node.
fn admin(node: &Node, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns, "python3"])
        .arg(Path::new(CLIENTS).join("cluster_admin.py"))
        .args(["--bootstrap", &format!("{}:{KAFKA_PORT}", Net::ip(node.id))])
        .args(args)
        .current_dir(CLIENTS)
        .env_remove("LD_LIBRARY_PATH")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, out, err) = output_bounded(cmd, Duration::from_secs(90));
    assert!(
        status.success(),
        "cluster_admin.py {args:?} on node {}: {err}\n{out}\n{}",
        node.id,
        node.log()
    );
    println!("{}", out.trim_end());
}

fn leader_of(v: &serde_json::Value) -> i64 {
    v["leader_id"].as_i64().unwrap_or(-1)
}

#[test]
fn an_isolated_controller_leader_is_replaced_refuses_linearizable_reads_and_catches_up_after_healing() {
    let net = Net::create(3);
    let root = tempfile::tempdir().expect("tempdir");
    let seeds = (1..=3)
        .map(|i| format!("{i}@{}:{RPC_PORT}", Net::ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = (1..=3).map(|i| start(&net, i, &seeds, root.path())).collect();
    let v = wait_until(&nodes, 1, "a leader and three live members", |v| {
        leader_of(v) > 0
            && v["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["alive"] == true).count() == 3)
    });
    let old = leader_of(&v) as usize;
    let term = v["term"].as_u64().expect("term");
    admin(&nodes[old - 1], &["create", "before-split", "2", "3"]);

    net.isolate(old);
    let majority = (1..=3).find(|i| *i != old).expect("a majority node");
    let v = wait_until(&nodes, majority, "a new leader on the majority side", |v| {
        leader_of(v) > 0 && leader_of(v) as usize != old
    });
    assert!(v["term"].as_u64().expect("term") > term, "{v}");
    admin(&nodes[majority - 1], &["create", "during-split", "1", "1"]);
    // The isolated node cannot serve a linearizable read: its ReadIndex
    // never gets a quorum, and the status call fails instead of answering
    // from stale state.
    let stale = nodes[old - 1].status();
    assert!(
        stale.is_err(),
        "the isolated node answered a linearizable read: {stale:?}"
    );

    net.heal(old);
    let new = leader_of(&v);
    wait_until(&nodes, old, "the healed node following the new leader", |v| {
        leader_of(v) == new && v["topics"].as_u64() == Some(2)
    });
    admin(
        &nodes[old - 1],
        &["wait-topics", "3", "before-split:2", "during-split:1"],
    );
    // It was marked down while cut off; once heard again it is live, and a
    // topic on all three nodes can be placed.
    wait_until(&nodes, old, "three live members again", |v| {
        v["members"]
            .as_array()
            .is_some_and(|m| m.iter().filter(|m| m["alive"] == true).count() == 3)
    });
    admin(&nodes[old - 1], &["create", "after-heal", "1", "3"]);
}
