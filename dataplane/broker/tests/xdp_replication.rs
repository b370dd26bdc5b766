//! Replication frames over AF_XDP between real broker processes, each in
//! its own network namespace on a veth into a bridge (tests/common/netns.rs),
//! the XDP program in generic (SKB) mode on each node's `eth0`.
//!
//! - Every node on AF_XDP, with one of every 40 frames a shard sends over
//!   it dropped on purpose: a real client's acks=all writes are read back
//!   byte-exact, every replica's log holds the same batches (`ferrolog log
//!   dump` CRCs), the AF_XDP frame counters of every node are non-zero (the
//!   test fails if replication silently went over TCP) and the leaders'
//!   resends recovered the dropped frames.
//! - A node whose profile names a missing interface logs one warning naming
//!   the reason and replicates over TCP, while the two others still use
//!   AF_XDP between themselves (a mixed cluster).
//!
//! The nodes run two shards on a one-queue veth: shard 0 has the socket
//! (queue 0), shard 1 sends over TCP (docs/replication.md). Needs root,
//! iproute2, nftables and libxdp (tools/setup.sh).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::netns::{alive_members, leader_of, python_bounded, seeds, wait_until, Net, Node, BIN};

const TOPIC: &str = "xdp";
const PARTITIONS: u32 = 3;
const MESSAGES: u32 = 600;
const DROP_EVERY: u32 = 40;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
const FALLBACK_LINE: &str = "AF_XDP is not available";

/// A profile with the AF_XDP path on `interface`, generic mode.
fn profile(root: &Path, name: &str, interface: &str) -> String {
    profile_in_mode(root, name, interface, "generic")
}

/// A profile with the AF_XDP path on `interface` in `mode` (native or generic).
fn profile_in_mode(root: &Path, name: &str, interface: &str, mode: &str) -> String {
    let path = root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[network]\nxdp_interface = \"{interface}\"\nxdp_queue = 0\nxdp_mode = \"{mode}\"\n"),
    )
    .expect("write profile");
    path.to_string_lossy().into_owned()
}

struct Cluster {
    nodes: Vec<Node>,
    net: Net,
    root: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes; node `i` starts with `extra(i)`.
    fn start(extra: impl Fn(&Path, usize) -> Vec<String>) -> Cluster {
        let net = Net::create(3);
        let root = tempfile::tempdir().expect("tempdir");
        let seeds = seeds(3);
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node::start_with(&net, i, &seeds, root.path(), &extra(root.path(), i)))
            .collect();
        wait_until(&nodes, 1, "a controller leader and three live nodes", |v| {
            leader_of(v) > 0 && alive_members(v) == 3
        });
        Cluster { nodes, net, root }
    }

    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(Node::log).collect::<Vec<_>>().join("\n")
    }

    fn client(&self, script: &str, args: &[&str]) {
        let mut all = vec!["--bootstrap".to_string(), self.bootstrap()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, out, err) = python_bounded(self.net.hub(), script, &all, SCRIPT_TIMEOUT);
        assert!(ok, "{script} {args:?}: {err}\n{out}\n{}", self.logs());
        println!("{}", out.trim_end());
    }

    /// Creates the topic (replication factor 3), then acks=all produces and
    /// reads back with confluent-kafka.
    fn produce(&self) {
        let spec = format!("{TOPIC}:{PARTITIONS}");
        self.client(
            "cluster_admin.py",
            &["create", TOPIC, &PARTITIONS.to_string(), "3"],
        );
        self.client("cluster_admin.py", &["wait-topics", "3", &spec]);
        self.client(
            "xdp_replication.py",
            &[
                "--topic",
                TOPIC,
                "--partitions",
                &PARTITIONS.to_string(),
                "--messages",
                &MESSAGES.to_string(),
            ],
        );
    }

    /// Until every node's copy of every partition holds the same batches
    /// (offsets and CRC-32C), covering every message; fails after
    /// `CATCH_UP_TIMEOUT`.
    fn assert_identical_replicas(&self) {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let dumps: Vec<_> = self.nodes.iter().map(|n| dump(&n.data())).collect();
            let records: u64 = dumps[0].values().flatten().map(|b| b.1 - b.0 + 1).sum();
            let same = dumps.iter().all(|d| *d == dumps[0]);
            // The leaders' epoch markers are batches too: at least the messages.
            if same && dumps[0].len() == PARTITIONS as usize && records >= u64::from(MESSAGES) {
                println!("every replica holds the same {records} records in {PARTITIONS} partitions");
                return;
            }
            if Instant::now() > deadline {
                let ends: Vec<Vec<(u32, Option<u64>)>> = dumps
                    .iter()
                    .map(|d| d.iter().map(|(p, b)| (*p, b.last().map(|x| x.1))).collect())
                    .collect();
                panic!(
                    "replicas differ after {CATCH_UP_TIMEOUT:?}: last offsets per node {ends:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// (first offset, last offset, crc32c) of every good batch, by partition of
/// the topic, from `ferrolog log dump`.
type Batches = Vec<(u64, u64, String)>;

fn dump(data: &Path) -> BTreeMap<u32, Batches> {
    let out = std::process::Command::new(BIN)
        .args(["log", "dump"])
        .arg(data)
        .output()
        .expect("ferrolog log dump");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts: BTreeMap<u32, Batches> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(dir) = line.strip_prefix("log ") {
            current = Path::new(dir)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('-'))
                .filter(|(t, _)| *t == TOPIC)
                .and_then(|(_, p)| p.parse().ok());
            if let Some(p) = current {
                parts.insert(p, Batches::new());
            }
            continue;
        }
        let (Some(p), Some(rest)) = (current, line.trim().strip_prefix("offsets=")) else {
            continue;
        };
        if !line.ends_with("crc=ok") {
            continue;
        }
        let range = rest.split_whitespace().next().expect("offsets field");
        let (a, b) = range.split_once("..=").expect("offsets=A..=B");
        let crc = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("crc32c="))
            .expect("log dump prints crc32c=");
        parts.get_mut(&p).expect("partition").push((
            a.parse().expect("base offset"),
            b.parse().expect("last offset"),
            crc.to_string(),
        ));
    }
    parts
}

/// The sum of a metric's samples whose labels contain every `labels` item.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

fn af_xdp_frames(node: &Node, direction: &str) -> u64 {
    let text = node
        .metrics()
        .unwrap_or_else(|e| panic!("node {}: /metrics: {e}", node.id));
    let dir = format!("direction=\"{direction}\"");
    metric_sum(
        &text,
        "ferrolog_replication_frames_total",
        &["transport=\"af_xdp\"", &dir],
    )
}

#[test]
fn three_nodes_replicate_over_af_xdp_and_recover_dropped_frames() {
    replicate_with_faults("generic", &[("drop", DROP_EVERY)]);
}

/// Native (driver) mode on veth, with frames lost, sent twice and reordered on every sender:
/// replicas still end byte for byte identical.
#[test]
fn native_af_xdp_replication_survives_lost_duplicated_and_reordered_frames() {
    replicate_with_faults(
        "native",
        &[("drop", DROP_EVERY), ("duplicate", 7), ("reorder", 5)],
    );
}

/// Three nodes on AF_XDP in `mode`, each sender with `faults` (kind, every Nth frame):
/// a producer's writes end identical on every replica, every node sent and received over
/// AF_XDP, and each fault happened.
fn replicate_with_faults(mode: &str, faults: &[(&str, u32)]) {
    let c = Cluster::start(|root, i| {
        let mut args = vec![
            "--profile".into(),
            profile_in_mode(root, &format!("node{i}"), "eth0", mode),
        ];
        for (kind, every) in faults {
            args.push(format!("--test-only-xdp-{kind}-every"));
            args.push(every.to_string());
        }
        args
    });
    for n in &c.nodes {
        let log = n.full_log();
        assert!(
            log.contains("AF_XDP replication path ready")
                && log.contains(&format!("mode={mode}"))
                && !log.contains(FALLBACK_LINE),
            "node {}: {}",
            n.id,
            n.log()
        );
    }
    c.produce();
    c.assert_identical_replicas();
    let mut resends = 0;
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    for n in &c.nodes {
        let (sent, received) = (af_xdp_frames(n, "sent"), af_xdp_frames(n, "received"));
        let text = n.metrics().expect("metrics");
        let tcp = metric_sum(&text, "ferrolog_replication_frames_total", &["transport=\"tcp\""]);
        println!(
            "node {}: AF_XDP frames sent {sent}, received {received}; TCP frames {tcp}",
            n.id
        );
        assert!(
            sent > 0 && received > 0,
            "node {}: no AF_XDP traffic\n{text}",
            n.id
        );
        resends += metric_sum(&text, "ferrolog_replication_resends_total", &[]);
        for (kind, _) in faults {
            let reason = match *kind {
                "drop" => "test_dropped",
                "duplicate" => "test_duplicated",
                _ => "test_reordered",
            };
            *injected.entry(reason).or_default() += metric_sum(
                &text,
                "ferrolog_xdp_drops_total",
                &[&format!("reason=\"{reason}\"")],
            );
        }
    }
    println!("faults injected {injected:?}, leader resends {resends}");
    for (reason, n) in &injected {
        assert!(*n > 0, "no {reason} fault happened");
    }
    // A lost append is recovered either by the leader's go-back-N resend (counted) or by the
    // follower's answer to the next append, which names the gap (not counted); lost answers and
    // heartbeats need neither. So resends are reported, not required.
}

#[test]
fn a_node_without_the_interface_warns_once_and_replicates_over_tcp() {
    let c = Cluster::start(|root, i| {
        let interface = if i == 3 { "nosuch0" } else { "eth0" };
        vec!["--profile".into(), profile(root, &format!("node{i}"), interface)]
    });
    let log = c.nodes[2].full_log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(FALLBACK_LINE)).collect();
    assert_eq!(warnings.len(), 1, "one fallback warning: {log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("nosuch0") && warnings[0].contains("use TCP"),
        "{}",
        warnings[0]
    );
    c.produce();
    c.assert_identical_replicas();
    let node3 = c.nodes[2].metrics().expect("metrics");
    assert_eq!(
        metric_sum(
            &node3,
            "ferrolog_replication_frames_total",
            &["transport=\"af_xdp\""]
        ),
        0,
        "node 3 has no AF_XDP socket"
    );
    assert!(
        metric_sum(
            &node3,
            "ferrolog_replication_frames_total",
            &["transport=\"tcp\""]
        ) > 0
    );
    // Nodes 1 and 2 still use AF_XDP between themselves.
    for n in &c.nodes[..2] {
        assert!(
            af_xdp_frames(n, "sent") > 0 && af_xdp_frames(n, "received") > 0,
            "node {}: no AF_XDP traffic with the other AF_XDP node",
            n.id
        );
    }
}

/// A measurement, not a check (ignored): a 3-node cluster (RF 3, 3 partitions), replication over
/// TCP, over AF_XDP polled every `xdp_poll_us`, and over AF_XDP with spinning shards. Per mode:
/// acks=all publish latency at 100 msg/s of 1 KiB, then the max rate for 10 s with the nodes'
/// CPU per GB published and the AF_XDP datagrams they sent per second. Needs
/// `cargo build -p ferrolog-loadgen` first (or FERROLOG_LOADGEN=path; FERROLOG_BIN=path runs
/// another broker binary, e.g. a release build):
/// `cargo test -p ferrolog --test xdp_replication -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_acks_all_latency_tcp_against_af_xdp() {
    let loadgen = std::env::var("FERROLOG_LOADGEN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/debug/ferrolog-loadgen").to_string()
    });
    let modes: [(&str, &str); 3] = [
        ("tcp", "[network]\n"),
        (
            "af_xdp (xdp_poll_us 200)",
            "[network]\nxdp_interface = \"eth0\"\nxdp_mode = \"generic\"\n",
        ),
        (
            "af_xdp + spin_before_park_us 200",
            "[network]\nxdp_interface = \"eth0\"\nxdp_mode = \"generic\"\nspin_before_park_us = 200\n",
        ),
    ];
    let mut rows = Vec::new();
    for (name, text) in modes {
        let c = Cluster::start(|root, _| {
            let path = root.join("measure.toml");
            std::fs::write(&path, text).expect("write profile");
            vec!["--profile".into(), path.to_string_lossy().into_owned()]
        });
        // The loadgen's report; a run that did not deliver everything still reports.
        let run = |topic: &str, load: &[&str]| -> serde_json::Value {
            let json = c.root.path().join(format!("{topic}.json"));
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", c.net.hub(), &loadgen])
                .args(["--bootstrap", &c.bootstrap(), "--topic", topic])
                .args([
                    "--partitions",
                    "3",
                    "--replication-factor",
                    "3",
                    "--consumers",
                    "0",
                ])
                .args(["--message-size", "1024", "--acks", "all"])
                .args(load)
                .arg("--json")
                .arg(&json);
            let (status, out, err) = common::output_bounded(cmd, Duration::from_secs(120));
            println!("== {name}, {topic} ({status})\n{}", out.trim_end());
            let report = std::fs::read_to_string(&json)
                .unwrap_or_else(|e| panic!("{name}: loadgen wrote no report ({e}): {err}\n{}", c.logs()));
            serde_json::from_str(&report).expect("json")
        };
        let latency = run(
            "latency",
            &["--rate", "100", "--warmup-s", "3", "--duration-s", "15"],
        );
        let cpu = |c: &Cluster| c.nodes.iter().map(Node::cpu_seconds).sum::<f64>();
        let datagrams = |c: &Cluster| -> u64 {
            c.nodes
                .iter()
                .map(|n| {
                    let text = n
                        .metrics()
                        .unwrap_or_else(|e| panic!("node {}: /metrics: {e}", n.id));
                    metric_sum(&text, "ferrolog_xdp_datagrams_total", &["direction=\"sent\""])
                })
                .sum()
        };
        let (cpu0, dg0, t0) = (cpu(&c), datagrams(&c), Instant::now());
        let max = run("max", &["--rate", "0", "--warmup-s", "0", "--duration-s", "10"]);
        let (cpu1, dg1, secs) = (cpu(&c), datagrams(&c), t0.elapsed().as_secs_f64());
        for n in &c.nodes {
            let text = n.metrics().unwrap_or_default();
            let drops: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("ferrolog_xdp_drops_total{") && !l.ends_with(" 0"))
                .collect();
            println!(
                "node {}: resends {}, AF_XDP drops {drops:?}",
                n.id,
                metric_sum(&text, "ferrolog_replication_resends_total", &[])
            );
        }
        let p = &latency["latency_us"]["publish"];
        let t = &max["throughput"];
        let gb =
            t["publish_mb_per_s"].as_f64().unwrap_or(0.0) * t["window_s"].as_f64().unwrap_or(0.0) / 1000.0;
        let failed = if max["ok"].as_bool() == Some(true) {
            ""
        } else {
            " (not all delivered)"
        };
        rows.push(format!(
            "| {name} | {} / {} / {} | {:.1}{failed} | {:.1} | {:.0} |",
            p["p50_us"],
            p["p99_us"],
            p["p99_9_us"],
            t["publish_mb_per_s"].as_f64().unwrap_or(0.0),
            (cpu1 - cpu0) / gb.max(1e-9),
            (dg1 - dg0) as f64 / secs,
        ));
    }
    println!("| replication | publish p50 / p99 / p99.9 at 100 msg/s (us) | max MB/s | nodes' CPU-s per GB published (whole max run) | AF_XDP datagrams sent per s |");
    println!("|---|---|---|---|---|");
    println!("{}", rows.join("\n"));
}
