//! Broker nodes in Linux network namespaces, and the faults the netns tests
//! inject: a hub namespace holds a bridge (10.99.0.254, where clients run so
//! that they reach every node), and per node a namespace with a veth pair
//! into the bridge (10.99.0.N/24). Faults are nftables rules in one table of
//! a node's namespace (cut off, one-way or partial loss, a split by peer
//! address) and signals to its process (kill -9, SIGSTOP/SIGCONT, SIGTERM).
//!
//! Everything created is removed on `Drop`, also when a test panics. Needs
//! root, iproute2 and nftables (tools/setup.sh); without them the first
//! step fails loudly instead of skipping.

use super::output_bounded;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");

/// The broker binary nodes run: [`BIN`], or FERROLOG_BIN (a measurement against a release
/// build).
pub fn bin() -> String {
    std::env::var("FERROLOG_BIN").unwrap_or_else(|_| BIN.to_string())
}
pub const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
/// An election, a catch-up, a node marked down or live again.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(40);
/// SIGTERM to exit: a clean stop flushes and closes every log.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
pub const KAFKA_PORT: u16 = 9092;
pub const RPC_PORT: u16 = 9093;
pub const ADMIN_PORT: u16 = 9644;
/// The nftables table every fault of a node lives in; healing deletes it.
const TABLE: &str = "ferrolog_test";
const LOG_TAIL_LINES: usize = 40;

/// Namespaces made by this process so far: two tests of one process (cargo
/// test runs them on threads) get different names.
static NETS: AtomicUsize = AtomicUsize::new(0);

pub fn run(args: &[&str]) -> Result<String, String> {
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

pub fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// Which packets of a node's veth a loss rule drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving at the node (its input hook).
    In,
    /// Packets the node sends (its output hook).
    Out,
}

/// The namespaces, bridge and veth pairs of one test.
pub struct Net {
    hub: String,
    nodes: Vec<String>,
    /// Faults are also rules on the hub's bridge (see [`Net::mirror_faults_on_bridge`]).
    bridge_faults: bool,
}

impl Net {
    pub fn create(nodes: usize) -> Net {
        for tool in [["ip", "-V"], ["nft", "--version"]] {
            if let Err(e) = run(&tool) {
                panic!("the netns tests need root, iproute2 and nftables (tools/setup.sh): {e}");
            }
        }
        let tag = format!(
            "fl{}x{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            hub: format!("{tag}h"),
            nodes: (1..=nodes).map(|i| format!("{tag}n{i}")).collect(),
            bridge_faults: false,
        };
        must(&["ip", "netns", "add", &net.hub]);
        must(&["ip", "-n", &net.hub, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &net.hub,
            "addr",
            "add",
            &format!("{}/24", Net::hub_ip()),
            "dev",
            "br0",
        ]);
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

    pub fn ip(node: usize) -> String {
        format!("10.99.0.{node}")
    }

    /// The bridge's address in the hub namespace, where clients run.
    pub fn hub_ip() -> &'static str {
        "10.99.0.254"
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    pub fn ns(&self, node: usize) -> &str {
        &self.nodes[node - 1]
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// From now on every fault is also a rule on the hub's bridge, on the
    /// node's port: AF_XDP traffic passes neither the node's input hook (the
    /// XDP program redirects it before netfilter) nor its output hook (AF_XDP
    /// sends bypass it), but it crosses the bridge like any frame. Partial
    /// loss then applies twice to node-to-node kernel traffic.
    pub fn mirror_faults_on_bridge(&mut self) {
        self.bridge_faults = true;
    }

    /// The bridge table of `node`'s faults in the hub namespace.
    fn bridge_table(node: usize) -> String {
        format!("{TABLE}_n{node}")
    }

    /// The bridge rule (forward chain, on the node's port `e<node>`) for a
    /// rule of the node's own chains.
    fn bridge_rule(node: usize, chain: &str, rule: &str) -> String {
        let (ours, port_match) = match chain {
            "in" => ("iifname \"eth0\" ", "oifname"),
            _ => ("oifname \"eth0\" ", "iifname"),
        };
        format!("{port_match} \"e{node}\" {}", rule.replace(ours, ""))
    }

    /// Adds rules to the fault table of `node` (created with an input and
    /// an output chain if absent). Each rule is (chain "in"|"out", rule).
    fn add_rules(&self, node: usize, rules: &[(&str, String)]) {
        if self.bridge_faults {
            let table = Net::bridge_table(node);
            let mut script = format!(
                "table bridge {table} {{\n\
                 chain ports {{ type filter hook forward priority 0; policy accept; }}\n}}\n"
            );
            for (chain, rule) in rules {
                let rule = Net::bridge_rule(node, chain, rule);
                script.push_str(&format!("add rule bridge {table} ports {rule}\n"));
            }
            self.nft_in(&self.hub, &format!("hub-{node}"), &script);
        }
        let mut script = format!(
            "table inet {TABLE} {{\n\
             chain in {{ type filter hook input priority 0; policy accept; }}\n\
             chain out {{ type filter hook output priority 0; policy accept; }}\n}}\n"
        );
        for (chain, rule) in rules {
            script.push_str(&format!("add rule inet {TABLE} {chain} {rule}\n"));
        }
        self.nft(node, &script);
    }

    fn nft(&self, node: usize, script: &str) {
        self.nft_in(self.ns(node), &format!("node {node}"), script);
    }

    fn nft_in(&self, ns: &str, what: &str, script: &str) {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.hub, what.replace(' ', "")));
        std::fs::write(&path, script).expect("write nft script");
        let file = path.to_string_lossy().into_owned();
        let r = run(&["ip", "netns", "exec", ns, "nft", "-f", &file]);
        let _ = std::fs::remove_file(&path);
        if let Err(e) = r {
            panic!("{what}: nft {script}: {e}");
        }
    }

    /// Drops every packet into or out of `node`'s veth.
    pub fn isolate(&self, node: usize) {
        self.add_rules(
            node,
            &[
                ("in", "iifname \"eth0\" drop".to_string()),
                ("out", "oifname \"eth0\" drop".to_string()),
            ],
        );
    }

    /// Drops `percent` of the packets of `node`'s veth in one direction only.
    pub fn lose(&self, node: usize, dir: Direction, percent: u32) {
        assert!((1..=100).contains(&percent), "loss of {percent}%");
        // numgen's range is 0-99: all packets is a plain drop.
        let rule = |iface: &str| match percent {
            100 => format!("{iface} \"eth0\" drop"),
            _ => format!("{iface} \"eth0\" numgen random mod 100 < {percent} drop"),
        };
        match dir {
            Direction::In => self.add_rules(node, &[("in", rule("iifname"))]),
            Direction::Out => self.add_rules(node, &[("out", rule("oifname"))]),
        }
    }

    /// Cuts `side` off from every other node, both ways (rules on both
    /// sides, by peer address). Clients in the hub still reach every node.
    pub fn split(&self, side: &[usize]) {
        let other: Vec<usize> = (1..=self.size()).filter(|n| !side.contains(n)).collect();
        assert!(
            !side.is_empty() && !other.is_empty(),
            "a split needs two sides: {side:?}"
        );
        let set = |nodes: &[usize]| {
            let ips: Vec<String> = nodes.iter().map(|n| Net::ip(*n)).collect();
            format!("{{ {} }}", ips.join(", "))
        };
        for (mine, theirs) in [(side, &other[..]), (&other[..], side)] {
            for node in mine {
                self.add_rules(
                    *node,
                    &[
                        ("in", format!("ip saddr {} drop", set(theirs))),
                        ("out", format!("ip daddr {} drop", set(theirs))),
                    ],
                );
            }
        }
    }

    /// Removes every fault rule of `node`; a node without any is left as is.
    pub fn heal(&self, node: usize) {
        self.nft(
            node,
            &format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"),
        );
        if self.bridge_faults {
            let table = Net::bridge_table(node);
            self.nft_in(
                &self.hub,
                &format!("hub-{node}"),
                &format!("table bridge {table} {{}}\ndelete table bridge {table}\n"),
            );
        }
    }

    pub fn heal_all(&self) {
        for node in 1..=self.size() {
            self.heal(node);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// One broker process in its namespace; its directory and arguments outlive
/// the process, so a restart (after a kill or a stop) runs the same command.
pub struct Node {
    pub id: usize,
    pub ns: String,
    pub dir: PathBuf,
    seeds: String,
    /// More `ferrolog start` arguments (a profile, test-only flags).
    extra: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

impl Node {
    /// Starts node `id` of `net` with its directory under `root`.
    pub fn start(net: &Net, id: usize, seeds: &str, root: &Path) -> Node {
        Node::start_with(net, id, seeds, root, &[])
    }

    /// [`Node::start`] with more `ferrolog start` arguments, kept for restarts.
    pub fn start_with(net: &Net, id: usize, seeds: &str, root: &Path, extra: &[String]) -> Node {
        let dir = root.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut node = Node {
            id,
            ns: net.ns(id).to_string(),
            dir,
            seeds: seeds.to_string(),
            extra: extra.to_vec(),
            child: None,
            starts: 0,
        };
        node.spawn();
        node
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node.{}.log", self.starts))
    }

    /// `ferrolog start` again with the same arguments and data directory.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.starts += 1;
        let log = File::create(self.log_path()).expect("log");
        let ip = Net::ip(self.id);
        // `ip netns exec` execs the broker: the child's pid is the broker's,
        // so signals reach it directly.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                &bin(),
                "start",
                "--node-id",
                &self.id.to_string(),
                "--data-dir",
            ])
            .arg(self.data())
            .args(["--kafka-addr", &format!("{ip}:{KAFKA_PORT}")])
            .args(["--rpc-addr", &format!("{ip}:{RPC_PORT}")])
            .args(["--admin-addr", &format!("{ip}:{ADMIN_PORT}")])
            .args(["--seeds", &self.seeds])
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrolog in its namespace");
        self.child = Some(child);
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds (user + system) the running broker has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.pid().expect("node runs");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // After the name in parentheses: state, ..., utime and stime (fields 12 and 13).
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        ticks as f64 / hz as f64
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("node runs").id();
        // SAFETY: a signal to a child this process spawned and has not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "signal {sig} to node {}", self.id);
    }

    /// kill -9: no flush, no clean close.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM and wait for the exit (a clean stop); kill -9 and fail after
    /// `STOP_TIMEOUT`.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().expect("node runs");
        super::wait_exit(&mut c, STOP_TIMEOUT)
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- node {} (start {}) ---\n{}",
            self.id,
            self.starts,
            lines[from..].join("\n")
        )
    }

    /// Every line this start of the node logged so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The node's GET /metrics (Prometheus text), fetched inside its namespace.
    pub fn metrics(&self) -> Result<String, String> {
        let url = format!("http://{}:{ADMIN_PORT}/metrics", Net::ip(self.id));
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "python3",
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            &url,
        ])
    }

    /// `ferrolog cluster status` run inside the node's namespace.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let admin = format!("{}:{ADMIN_PORT}", Net::ip(self.id));
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            &bin(),
            "cluster",
            "status",
            "--admin-addr",
            &admin,
        ])?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{KAFKA_PORT}", Net::ip(self.id))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process takes SIGKILL too; SIGCONT is not needed.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `id@ip:rpc` for nodes 1..=n.
pub fn seeds(n: usize) -> String {
    (1..=n)
        .map(|i| format!("{i}@{}:{RPC_PORT}", Net::ip(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Polls node `on`'s status until `check` holds; fails with every node's
/// log tail after `CONVERGE_TIMEOUT`.
pub fn wait_until(
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

pub fn leader_of(v: &serde_json::Value) -> i64 {
    v["leader_id"].as_i64().unwrap_or(-1)
}

pub fn alive_members(v: &serde_json::Value) -> usize {
    v["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["alive"] == true).count())
}

/// A python client script from tests/clients run in namespace `ns`; not
/// waited for here (see `output_bounded`).
pub fn python_in(ns: &str, script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3"])
        .arg(Path::new(CLIENTS).join(script))
        .args(args)
        .current_dir(CLIENTS)
        .env_remove("LD_LIBRARY_PATH")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Runs a client script in `ns` to completion within `within`; returns
/// whether it succeeded, and its stdout and stderr.
pub fn python_bounded(ns: &str, script: &str, args: &[&str], within: Duration) -> (bool, String, String) {
    let (status, out, err) = output_bounded(python_in(ns, script, args), within);
    (status.success(), out, err)
}
