//! Jepsen-style chaos tests of partition replication: real broker processes,
//! each in its own network namespace (common::netns), a workload of
//! idempotent acks=all producers (tests/clients/chaos_workload.py) running
//! while a seeded schedule injects faults, then a checker of what the
//! clients were acknowledged against what a reader finds, and a comparison
//! of every replica's log, batch by batch.
//!
//! Faults, one at a time, each touching a minority of the nodes: kill -9 of
//! the node leading the most partitions (restarted on the same directory
//! after a delay), SIGSTOP/SIGCONT of a node, isolating the busiest leader,
//! a minority/majority split, one-way (or partial) packet loss on a node,
//! a clean restart. After each, the test waits (bounded) for every node to
//! be live again before the next.
//!
//! The seed comes from FERROLOG_CHAOS_SEED, else the clock, and is printed:
//! `FERROLOG_CHAOS_SEED=<seed> cargo nextest run -p ferrolog --test chaos`
//! replays the same schedule (the timing of the cluster is not replayed).
//! FERROLOG_CHAOS_SECS sets how long the workload runs (default 60 s).
//! FERROLOG_CHAOS_XDP=1 starts every node with replication over AF_XDP
//! (generic mode on its veth) and mirrors every network fault on the hub's
//! bridge, which AF_XDP traffic crosses but the nodes' netfilter hooks do
//! not see.
//! Needs root, iproute2, nftables and the Python clients (tools/setup.sh);
//! without them the test fails, it does not skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::netns::{
    alive_members, leader_of, python_bounded, python_in, seeds, wait_until, Direction, Net, Node, BIN,
};
use common::output_bounded;

const TOPIC: &str = "chaos";
const WORKLOAD: &str = "chaos_workload.py";
const REPLICATION_FACTOR: usize = 3;
const DEFAULT_WORKLOAD_SECS: u64 = 60;
/// Producers of the workload, each with its own connections.
const PRODUCERS: usize = 3;
/// Before the first fault, and after the last heal until the workload ends:
/// acknowledgements from a healthy cluster on both sides of the faults.
const CALM_SECS: u64 = 8;
/// Beyond the workload's duration: its flush (message.timeout.ms + 15 s).
const WORKLOAD_SLACK: Duration = Duration::from_secs(75);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// After a heal, until every node is live again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the workload, until every replica has the leader's log end.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fault holds, and the pause between two faults (seconds).
const HOLD_SECS: (u64, u64) = (3, 8);
const GAP_SECS: (u64, u64) = (2, 5);

/// splitmix64: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn node(&mut self, n: usize) -> usize {
        self.range(1, n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    Pause,
    IsolateLeader,
    Split,
    OneWayLoss,
    CleanRestart,
}

const FAULTS: [Fault; 6] = [
    Fault::KillLeader,
    Fault::Pause,
    Fault::IsolateLeader,
    Fault::Split,
    Fault::OneWayLoss,
    Fault::CleanRestart,
];

/// Per partition: its leader and replicas, from Metadata.
type Placement = BTreeMap<u32, (i64, Vec<usize>)>;
/// A replica's log of the topic, per partition: (base, last, crc32c) per batch.
type Batches = Vec<(i64, i64, String)>;

/// One test's cluster. Fields drop in order: processes, then namespaces,
/// then the directories.
struct Chaos {
    nodes: Vec<Node>,
    net: Net,
    root: tempfile::TempDir,
    started: Instant,
    faults: Vec<String>,
    /// FERROLOG_CHAOS_XDP=1: the nodes replicate over AF_XDP.
    xdp: bool,
}

impl Drop for Chaos {
    /// FERROLOG_CHAOS_KEEP=1 keeps the nodes' data and logs for a post
    /// mortem (the path is printed); by default they go with the test.
    fn drop(&mut self) {
        if std::env::var_os("FERROLOG_CHAOS_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.root, tempfile::tempdir().expect("tempdir"));
            println!("kept the nodes' directories in {}", kept.keep().display());
        }
    }
}

impl Chaos {
    fn start(size: usize, partitions: u32) -> Chaos {
        let mut net = Net::create(size);
        let root = tempfile::tempdir().expect("tempdir");
        let seeds = seeds(size);
        let mut extra = Vec::new();
        let xdp = std::env::var("FERROLOG_CHAOS_XDP").is_ok_and(|v| v == "1");
        if xdp {
            net.mirror_faults_on_bridge();
            let profile = root.path().join("xdp.toml");
            std::fs::write(
                &profile,
                "[network]\nxdp_interface = \"eth0\"\nxdp_mode = \"generic\"\n",
            )
            .expect("write profile");
            extra = vec!["--profile".to_string(), profile.to_string_lossy().into_owned()];
            println!("FERROLOG_CHAOS_XDP=1: replication over AF_XDP, faults mirrored on the bridge");
        }
        let nodes: Vec<Node> = (1..=size)
            .map(|i| Node::start_with(&net, i, &seeds, root.path(), &extra))
            .collect();
        let mut c = Chaos {
            nodes,
            net,
            root,
            started: Instant::now(),
            faults: Vec::new(),
            xdp,
        };
        wait_until(&c.nodes, 1, "a controller leader and every node live", |v| {
            leader_of(v) > 0 && alive_members(v) == size
        });
        let spec = format!("{TOPIC}:{partitions}");
        c.admin(&[
            "create",
            TOPIC,
            &partitions.to_string(),
            &REPLICATION_FACTOR.to_string(),
        ]);
        c.admin(&["wait-topics", &size.to_string(), &spec]);
        c.note(format!(
            "{size} nodes up, topic {TOPIC}: {partitions} partitions, replication factor {REPLICATION_FACTOR}"
        ));
        c
    }

    fn note(&mut self, what: String) {
        let line = format!("[{:7.1}s] {what}", self.started.elapsed().as_secs_f64());
        println!("{line}");
        self.faults.push(line);
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

    /// cluster_admin.py from the hub, which reaches every node.
    fn admin(&self, args: &[&str]) {
        let mut all = vec!["--bootstrap".to_string(), self.bootstrap()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, out, err) = python_bounded(self.net.hub(), "cluster_admin.py", &all, SCRIPT_TIMEOUT);
        assert!(ok, "cluster_admin.py {args:?}: {err}\n{out}\n{}", self.logs());
        println!("{}", out.trim_end());
    }

    fn placement(&self) -> Option<Placement> {
        let args = ["metadata", "--bootstrap", &self.bootstrap(), "--topic", TOPIC];
        let (ok, out, _) = python_bounded(self.net.hub(), WORKLOAD, &args, Duration::from_secs(20));
        if !ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        let mut placement = Placement::new();
        for (p, info) in v.as_object()? {
            let replicas = info["replicas"]
                .as_array()?
                .iter()
                .filter_map(|r| r.as_u64().map(|r| r as usize))
                .collect();
            placement.insert(p.parse().ok()?, (info["leader"].as_i64()?, replicas));
        }
        Some(placement)
    }

    /// The node leading the most partitions of the topic (ties: lowest id);
    /// a random node if Metadata does not answer.
    fn busiest_leader(&mut self, rng: &mut Rng) -> usize {
        let size = self.nodes.len();
        match self.placement() {
            Some(p) => {
                let mut led = BTreeMap::new();
                for (leader, _) in p.values() {
                    if *leader >= 1 && *leader as usize <= size {
                        *led.entry(*leader as usize).or_insert(0) += 1;
                    }
                }
                let leaders = format!("{:?}", p.iter().map(|(k, v)| (*k, v.0)).collect::<Vec<_>>());
                match led.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n))) {
                    Some((n, _)) => {
                        self.note(format!("leaders (partition, node): {leaders}"));
                        *n
                    }
                    None => rng.node(size),
                }
            }
            None => {
                self.note("no Metadata answer: picking a random node".to_string());
                rng.node(size)
            }
        }
    }

    fn hold(&mut self, rng: &mut Rng) {
        std::thread::sleep(Duration::from_secs(rng.range(HOLD_SECS.0, HOLD_SECS.1)));
    }

    fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        let size = self.nodes.len();
        match fault {
            Fault::KillLeader => {
                let n = self.busiest_leader(rng);
                self.nodes[n - 1].kill9();
                self.note(format!("kill -9 node {n}"));
                self.hold(rng);
                self.nodes[n - 1].spawn();
                self.note(format!("restart node {n}"));
            }
            Fault::Pause => {
                let n = rng.node(size);
                self.nodes[n - 1].pause();
                self.note(format!("SIGSTOP node {n}"));
                self.hold(rng);
                self.nodes[n - 1].resume();
                self.note(format!("SIGCONT node {n}"));
            }
            Fault::IsolateLeader => {
                let n = self.busiest_leader(rng);
                self.net.isolate(n);
                self.note(format!("isolate node {n} (no packet in or out)"));
                self.hold(rng);
                self.net.heal(n);
                self.note(format!("heal node {n}"));
            }
            Fault::Split => {
                // The minority holds the busiest leader, which clients still reach.
                let minority_max = (size - 1) / 2;
                let mut side = vec![self.busiest_leader(rng)];
                let want = rng.range(1, minority_max as u64) as usize;
                while side.len() < want {
                    let n = rng.node(size);
                    if !side.contains(&n) {
                        side.push(n);
                    }
                }
                side.sort();
                let rest: Vec<usize> = (1..=size).filter(|n| !side.contains(n)).collect();
                self.net.split(&side);
                self.note(format!("split {side:?} | {rest:?}"));
                self.hold(rng);
                for n in 1..=size {
                    self.net.heal(n);
                }
                self.note("heal the split".to_string());
            }
            Fault::OneWayLoss => {
                let n = rng.node(size);
                let dir = if rng.next() % 2 == 0 {
                    Direction::In
                } else {
                    Direction::Out
                };
                let percent = if rng.next() % 2 == 0 {
                    100
                } else {
                    rng.range(30, 90) as u32
                };
                self.net.lose(n, dir, percent);
                self.note(format!("drop {percent}% of node {n}'s {dir:?} packets"));
                self.hold(rng);
                self.net.heal(n);
                self.note(format!("heal node {n}"));
            }
            Fault::CleanRestart => {
                let n = rng.node(size);
                let status = self.nodes[n - 1].stop();
                self.note(format!("SIGTERM node {n}: exited {status}"));
                std::thread::sleep(Duration::from_secs(1));
                self.nodes[n - 1].spawn();
                self.note(format!("restart node {n}"));
            }
        }
    }

    /// Waits (bounded) until every node answers and reports every node
    /// live; says so in the fault log either way.
    fn settle(&mut self) {
        let size = self.nodes.len();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            // Every node answers (a restarted one is back), and sees all live.
            let live = self.nodes.iter().all(|n| {
                n.status()
                    .is_ok_and(|v| leader_of(&v) > 0 && alive_members(&v) == size)
            });
            if live {
                self.note(format!("all {size} nodes live"));
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.note(format!("not all nodes live within {SETTLE_TIMEOUT:?}"));
    }

    fn heal_everything(&mut self) {
        self.net.heal_all();
        for n in &mut self.nodes {
            if n.running() {
                n.resume();
            } else {
                n.spawn();
            }
        }
        self.note("healed everything".to_string());
    }

    /// Each node's AF_XDP frames and resends from /metrics, for the record
    /// (a node restarted late may have little).
    fn note_af_xdp_frames(&mut self) {
        let sum = |text: &str, name: &str, label: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .map(|v| v as u64)
                .sum()
        };
        for n in 0..self.nodes.len() {
            let line = match self.nodes[n].metrics() {
                Ok(t) => format!(
                    "node {}: AF_XDP frames sent {} received {}, TCP frames {}, resends {}, AF_XDP drops {}",
                    n + 1,
                    sum(
                        &t,
                        "ferrolog_replication_frames_total",
                        "transport=\"af_xdp\",direction=\"sent\""
                    ),
                    sum(
                        &t,
                        "ferrolog_replication_frames_total",
                        "transport=\"af_xdp\",direction=\"received\""
                    ),
                    sum(&t, "ferrolog_replication_frames_total", "transport=\"tcp\""),
                    sum(&t, "ferrolog_replication_resends_total", ""),
                    sum(&t, "ferrolog_xdp_drops_total", ""),
                ),
                Err(e) => format!("node {}: no /metrics: {e}", n + 1),
            };
            self.note(line);
        }
    }

    /// `ferrolog log dump` of a node's data directory, the topic's partitions.
    fn dump(&self, node: usize) -> BTreeMap<u32, Batches> {
        let data = self.nodes[node - 1].data();
        let out = std::process::Command::new(BIN)
            .args(["log", "dump"])
            .arg(&data)
            .output()
            .expect("ferrolog log dump");
        parse_dump(&String::from_utf8_lossy(&out.stdout))
    }

    /// Until every replica's log ends where its partition's longest does,
    /// bounded; read while the brokers run (a half-written tail batch is not
    /// listed, and the next round reads again).
    fn wait_caught_up(&mut self, placement: &Placement) {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let dumps: Vec<_> = (1..=self.nodes.len()).map(|n| self.dump(n)).collect();
            let mut behind = Vec::new();
            for (p, (_, replicas)) in placement {
                let ends: Vec<i64> = replicas.iter().map(|r| log_end(&dumps[r - 1], *p)).collect();
                if ends.iter().any(|e| *e != ends[0]) {
                    behind.push(format!("{p}: {replicas:?} end at {ends:?}"));
                }
            }
            if behind.is_empty() {
                self.note("every replica has its partition's log end".to_string());
                return;
            }
            last = behind.join("; ");
            std::thread::sleep(Duration::from_secs(1));
        }
        self.note(format!(
            "replicas not caught up within {CATCH_UP_TIMEOUT:?}: {last}"
        ));
    }

    /// Every replica of a partition holds the same batches up to the
    /// smallest log end among them, and that end covers every acknowledged
    /// offset. Returns the problems found (empty: none).
    fn compare_replicas(&mut self, placement: &Placement, max_acked: &BTreeMap<u32, i64>) -> Vec<String> {
        let dumps: Vec<_> = (1..=self.nodes.len()).map(|n| self.dump(n)).collect();
        let mut problems = Vec::new();
        for (p, (_, replicas)) in placement {
            let ends: Vec<i64> = replicas.iter().map(|r| log_end(&dumps[r - 1], *p)).collect();
            let common = ends.iter().copied().min().unwrap_or(0);
            let acked_end = max_acked.get(p).map_or(0, |o| o + 1);
            self.note(format!(
                "partition {p}: replicas {replicas:?} log ends {ends:?}, highest acked offset + 1 = {acked_end}"
            ));
            if common < acked_end {
                problems.push(format!(
                    "partition {p}: replicas {replicas:?} end at {ends:?}; the acknowledged offsets reach {acked_end}"
                ));
            }
            let empty = Batches::new();
            let prefix = |r: usize| -> Vec<&(i64, i64, String)> {
                dumps[r - 1]
                    .get(p)
                    .unwrap_or(&empty)
                    .iter()
                    .filter(|b| b.1 < common)
                    .collect()
            };
            let first = prefix(replicas[0]);
            for r in &replicas[1..] {
                let other = prefix(*r);
                if other != first {
                    let at = first.iter().zip(&other).position(|(a, b)| a != b);
                    let detail = match at {
                        Some(i) => format!(
                            "batch {i}: {:?} on node {} vs {:?}",
                            first[i], replicas[0], other[i]
                        ),
                        None => format!("{} batches vs {}", first.len(), other.len()),
                    };
                    problems.push(format!(
                        "partition {p}: node {r} differs from node {} below offset {common}: {detail}",
                        replicas[0]
                    ));
                }
            }
        }
        problems
    }
}

fn log_end(dump: &BTreeMap<u32, Batches>, partition: u32) -> i64 {
    dump.get(&partition).and_then(|b| b.last()).map_or(0, |b| b.1 + 1)
}

/// The topic's batches out of `ferrolog log dump` text: a `log DIR` line per
/// partition directory (`<topic>-<partition>`), then a line per batch with
/// `offsets=A..=B` and `crc32c=X`. Batches whose CRC check failed are left
/// out (they are a torn tail or damage; either way not replicated data).
fn parse_dump(text: &str) -> BTreeMap<u32, Batches> {
    let mut out = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        if let Some(dir) = line.strip_prefix("log ") {
            let name = Path::new(dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            current = name
                .as_deref()
                .and_then(|n| n.rsplit_once('-'))
                .filter(|(t, _)| *t == TOPIC)
                .and_then(|(_, p)| p.parse().ok());
            if let Some(p) = current {
                out.insert(p, Batches::new());
            }
            continue;
        }
        let (Some(p), Some(rest)) = (current, line.trim().strip_prefix("offsets=")) else {
            continue;
        };
        if !line.ends_with("crc=ok") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .map(str::to_string)
        };
        let range = rest.split_whitespace().next().expect("offsets field");
        let (a, b) = range.split_once("..=").expect("offsets=A..=B");
        let crc = field("crc32c=").expect("log dump prints crc32c=");
        out.get_mut(&p).expect("partition").push((
            a.parse().expect("base offset"),
            b.parse().expect("last offset"),
            crc,
        ));
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn run_chaos(size: usize, partitions: u32) {
    let seed = env_u64("FERROLOG_CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    });
    let secs = env_u64("FERROLOG_CHAOS_SECS").unwrap_or(DEFAULT_WORKLOAD_SECS);
    assert!(
        secs > 2 * CALM_SECS,
        "FERROLOG_CHAOS_SECS={secs}: at least {}",
        2 * CALM_SECS + 1
    );
    println!("FERROLOG_CHAOS_SEED={seed} FERROLOG_CHAOS_SECS={secs} ({size} nodes)");
    let mut rng = Rng(seed);
    let mut c = Chaos::start(size, partitions);
    let dir = c.root.path().to_path_buf();
    let produced = dir.join("produced.jsonl");
    let consumed = dir.join("consumed.jsonl");
    let summary = dir.join("summary.json");

    let cmd = python_in(
        c.net.hub(),
        WORKLOAD,
        &[
            "produce",
            "--bootstrap",
            &c.bootstrap(),
            "--topic",
            TOPIC,
            "--partitions",
            &partitions.to_string(),
            "--producers",
            &PRODUCERS.to_string(),
            "--duration",
            &secs.to_string(),
            "--out",
            &produced.to_string_lossy(),
        ],
    );
    let bound = Duration::from_secs(secs) + WORKLOAD_SLACK;
    let workload = std::thread::spawn(move || output_bounded(cmd, bound));
    let faults_end = Instant::now() + Duration::from_secs(secs - CALM_SECS);
    c.note(format!("workload started: {PRODUCERS} producers for {secs} s"));
    std::thread::sleep(Duration::from_secs(CALM_SECS));
    while Instant::now() < faults_end {
        let fault = FAULTS[(rng.next() % FAULTS.len() as u64) as usize];
        c.inject(fault, &mut rng);
        c.settle();
        std::thread::sleep(Duration::from_secs(rng.range(GAP_SECS.0, GAP_SECS.1)));
    }
    c.heal_everything();
    c.settle();
    let (status, out, err) = workload.join().expect("workload thread");
    c.note(format!("workload exited {status}"));
    println!("{}", out.trim_end());
    // A workload that crashed judges nothing: that is a failure of the test,
    // not evidence about the cluster.
    assert!(status.success(), "the workload failed ({status}): {err}\n{out}");

    let (ok, out, err) = python_bounded(
        c.net.hub(),
        WORKLOAD,
        &[
            "consume",
            "--bootstrap",
            &c.bootstrap(),
            "--topic",
            TOPIC,
            "--partitions",
            &partitions.to_string(),
            "--out",
            &consumed.to_string_lossy(),
        ],
        SCRIPT_TIMEOUT,
    );
    println!("{}", out.trim_end());
    assert!(ok, "the reader failed: {err}\n{out}\n{}", c.logs());
    let placement = c.placement();

    let (checked, check_out, check_err) = python_bounded(
        c.net.hub(),
        WORKLOAD,
        &[
            "check",
            "--produced",
            &produced.to_string_lossy(),
            "--consumed",
            &consumed.to_string_lossy(),
            "--summary",
            &summary.to_string_lossy(),
        ],
        SCRIPT_TIMEOUT,
    );
    println!("{}", check_out.trim_end());
    let max_acked: BTreeMap<u32, i64> = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v["max_acked_offset"].as_object().map(|m| {
                m.iter()
                    .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
                    .collect()
            })
        })
        .unwrap_or_default();

    // Replicas: every one of a partition's replica set, or every node if
    // Metadata did not answer.
    let placement =
        placement.unwrap_or_else(|| (0..partitions).map(|p| (p, (-1, (1..=size).collect()))).collect());
    c.wait_caught_up(&placement);
    if c.xdp {
        c.note_af_xdp_frames();
    }
    for n in 0..size {
        let status = c.nodes[n].stop();
        c.note(format!("SIGTERM node {}: exited {status}", n + 1));
    }
    let problems = c.compare_replicas(&placement, &max_acked);
    for p in &problems {
        println!("REPLICA {p}");
    }
    println!("fault log (seed {seed}):\n{}", c.faults.join("\n"));
    if !checked {
        // What librdkafka's idempotence did (epoch bumps, sequence errors, drains) is what
        // explains a value written twice; the file goes with the temporary directory.
        let client_log = PathBuf::from(format!("{}.client.log", produced.to_string_lossy()));
        println!(
            "librdkafka eos log ({}):\n{}",
            client_log.display(),
            eos_excerpt(&client_log)
        );
    }
    assert!(
        checked && problems.is_empty(),
        "chaos run with FERROLOG_CHAOS_SEED={seed} failed\nchecker:\n{}{check_err}\nreplicas:\n{}",
        check_out,
        problems.join("\n")
    );
}

/// The lines of the workload's librdkafka `eos` debug log that say what its idempotent
/// producers did about errors (epoch bumps, sequence errors, drains, retries), the last
/// [`EOS_EXCERPT_LINES`] of them.
fn eos_excerpt(path: &Path) -> String {
    const WORDS: [&str; 8] = [
        "bump",
        "Bump",
        "SEQUENCE",
        "PRODUCER_ID",
        "ERRSEQ",
        "DRAIN",
        "retry",
        "PID",
    ];
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| WORDS.iter().any(|w| l.contains(w)))
        .collect();
    lines[lines.len().saturating_sub(EOS_EXCERPT_LINES)..].join("\n")
}

/// Lines of the client's eos log printed when the checker fails.
const EOS_EXCERPT_LINES: usize = 300;

#[test]
fn the_checker_fails_on_crafted_lost_duplicated_reordered_and_phantom_histories() {
    let (ok, out, err) = python_bounded_local(&["--self-test"]);
    println!("{out}");
    assert!(ok, "chaos_workload.py --self-test: {err}\n{out}");
}

/// The checker's self-test needs no namespace.
fn python_bounded_local(args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(Path::new(common::netns::CLIENTS).join(WORKLOAD))
        .args(args)
        .current_dir(common::netns::CLIENTS)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, out, err) = output_bounded(cmd, SCRIPT_TIMEOUT);
    (status.success(), out, err)
}

#[test]
fn three_nodes_lose_no_acknowledged_write_under_kills_pauses_partitions_and_loss() {
    run_chaos(3, 4);
}

#[test]
fn five_nodes_with_three_replicas_lose_no_acknowledged_write_under_faults() {
    run_chaos(5, 6);
}

#[test]
fn dump_lines_parse_into_batches_of_the_topic() {
    let text = "log /d/node1/data/chaos-2\n  segment 00.log base=0 bytes=1 batches=2 index_entries=0 padding=0\n    \
                offsets=0..=4 position=0 bytes=90 records=5 max_timestamp=1 codec=none crc32c=0a0b0c0d crc=ok\n    \
                offsets=5..=5 position=90 bytes=70 records=1 max_timestamp=1 codec=none crc32c=ffffffff crc=BAD\n\
                log /d/node1/data/__consumer_offsets-0\n    \
                offsets=0..=0 position=0 bytes=70 records=1 max_timestamp=1 codec=none crc32c=00000001 crc=ok\n";
    let parsed = parse_dump(text);
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    assert_eq!(parsed[&2], vec![(0, 4, "0a0b0c0d".to_string())]);
}
