//! End-to-end tests with real Kafka clients against the `ferrolog` binary over TCP:
//! librdkafka (through confluent-kafka and kcat) and kafka-python, plus raw sockets.
//!
//! Each test starts its own broker (fresh data directory, free port), runs one client
//! script from `tests/clients/` and asserts that it exits 0. A script checks its whole
//! scenario itself and exits non-zero with a `FAIL: ...` line on the first mismatch;
//! `tests/clients/e2e.py` holds what the scripts share. The clients are installed by
//! `tools/setup.sh`; a missing one fails the test, it never skips it. A failing test
//! prints the script's output and the tail of the broker's log.

mod common;

use common::free_port;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
/// How long a broker may take from spawn to accepting TCP connections: a bound
/// that catches a hang, not a speed check. A restart after kill -9 serves only
/// once every partition has recovered its active segment (about 0.5 s per
/// 90 MiB segment in a debug build, one partition at a time per shard), which
/// on a loaded 2-core CI machine took over 20 s once.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one client script; each also bounds its own waits (20 s each).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of the broker's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Lines of a failed script's output in the panic message (librdkafka logs a lot).
const SCRIPT_TAIL_LINES: usize = 60;
/// The --max-request-bytes of the bad-input test.
const MAX_REQUEST_BYTES: &str = "1048576";
/// Group coordinator settings of the consumer-group tests: a short initial rebalance
/// delay keeps them fast; the session timeout bounds are Kafka's defaults, spelled
/// out because the scripts send timeouts just outside them.
const GROUP_FLAGS: [&str; 6] = [
    "--group-initial-rebalance-delay-ms",
    "200",
    "--group-min-session-timeout-ms",
    "6000",
    "--group-max-session-timeout-ms",
    "1800000",
];
/// --offsets-retention-ms of the offsets-expiry test.
const OFFSETS_RETENTION_MS: &str = "3000";

/// A node's directory, which outlives its broker processes: `data/` is the data
/// directory, and the broker logs and script outputs sit beside it.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `ferrolog log verify` of the data directory (with no broker running) must pass.
    fn log_verify(&self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["log", "verify"]).arg(self.data());
        let (status, output) = run_bounded(
            cmd,
            &unused_path(self.dir.path(), "verify", "out"),
            SCRIPT_TIMEOUT,
        );
        assert!(
            status.success(),
            "ferrolog log verify failed ({status}):\n{output}"
        );
    }

    /// Starts `ferrolog start` on this node's data directory and a free port, with
    /// `extra` flags, and returns once the Kafka port accepts connections.
    fn start(&self, extra: &[&str]) -> Broker {
        self.start_at(SocketAddr::from(([127, 0, 0, 1], free_port())), extra)
    }

    /// `start` on the given address (a restart where the clients expect the broker).
    fn start_at(&self, addr: SocketAddr, extra: &[&str]) -> Broker {
        let log = unused_path(self.dir.path(), "broker", "log");
        let stderr = File::create(&log).expect("broker log file");
        let child = Command::new(BIN)
            .args(["start", "--data-dir"])
            .arg(self.data())
            .args(["--kafka-addr", &addr.to_string()])
            .args(extra)
            // Brokers of other tests run beside this one: unless the test picks an admin
            // address, a free port instead of the default 127.0.0.1:9644.
            .args(if extra.contains(&"--admin-addr") {
                &[][..]
            } else {
                &["--admin-addr", "127.0.0.1:0"][..]
            })
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ferrolog");
        let mut broker = Broker {
            child,
            addr,
            log,
            dir: self.dir.path().to_path_buf(),
            exit: None,
        };
        broker.wait_ready();
        broker
    }
}

/// A running `ferrolog start` process. Dropping it kills the process; a test that
/// panics first gets the broker's log tail printed.
struct Broker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    exit: Option<ExitStatus>,
}

impl Broker {
    fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()));
        tail(
            &text,
            LOG_TAIL_LINES,
            &format!("broker log {}", self.log.display()),
        )
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                panic!("broker exited during startup with {status}\n{}", self.log_tail());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not accept connections on {} within {READY_TIMEOUT:?}\n{}",
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_running(&mut self, after: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.exit = Some(status);
            panic!("broker exited with {status} during {after}\n{}", self.log_tail());
        }
    }

    /// Runs `python3 tests/clients/SCRIPT --bootstrap ADDR ARGS...`, prints its
    /// output, and asserts that it exited 0 and that the broker is still running.
    fn python(&mut self, script: &str, args: &[&str]) -> String {
        self.python_within(script, args, SCRIPT_TIMEOUT)
    }

    /// `python` with its own bound on the script's run time.
    fn python_within(&mut self, script: &str, args: &[&str], within: Duration) -> String {
        let name = script.trim_end_matches(".py");
        let (status, output) = run_bounded(
            self.python_command(script, args),
            &unused_path(&self.dir, name, "out"),
            within,
        );
        if !status.success() {
            let fails: Vec<&str> = output.lines().filter(|l| l.starts_with("FAIL: ")).collect();
            let broker = match self.child.try_wait().expect("try_wait") {
                Some(exit) => {
                    self.exit = Some(exit);
                    format!("the broker exited with {exit}")
                }
                None => "the broker is still running".to_owned(),
            };
            panic!(
                "{script} failed ({status}); {broker}\n{}\n{}\n(the broker log follows on stderr)",
                fails.join("\n"),
                tail(&output, SCRIPT_TAIL_LINES, script)
            );
        }
        println!("--- {script} ---\n{output}");
        self.assert_running(script);
        output
    }

    fn python_command(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(CLIENTS).join(script))
            .args(["--bootstrap", &self.bootstrap()])
            .args(args)
            .current_dir(CLIENTS)
            // cargo puts the workspace's native build outputs on LD_LIBRARY_PATH, among
            // them rdkafka-sys's librdkafka.so.1 (built without zlib); kcat would load
            // it instead of the system one and lose gzip.
            .env_remove("LD_LIBRARY_PATH")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }

    /// Starts a client script that keeps running beside the test; it is killed on drop.
    fn python_background(&self, script: &str, args: &[&str]) -> Background {
        let out = unused_path(&self.dir, script.trim_end_matches(".py"), "out");
        let file = File::create(&out).expect("output file");
        let child = self
            .python_command(script, args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone output file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3: {e} (tools/setup.sh installs the test clients)"));
        Background {
            child,
            out,
            script: script.to_owned(),
        }
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate_within(&mut self, within: Duration) -> ExitStatus {
        // SAFETY: sending a signal to a child process this test spawned and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0,
            "kill -TERM"
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within {within:?} of SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL (no shutdown at all: what was not written is lost, what was
    /// written stays in the page cache) and waits for the process to go.
    fn kill(&mut self) {
        // SAFETY: sending a signal to a child process this test spawned and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) },
            0,
            "kill -KILL"
        );
        self.exit = Some(self.child.wait().expect("wait after SIGKILL"));
    }

    fn terminate_cleanly(&mut self) {
        self.terminate_cleanly_within(EXIT_TIMEOUT);
    }

    /// `terminate_cleanly` with its own bound on the time to exit.
    fn terminate_cleanly_within(&mut self, within: Duration) {
        let status = self.terminate_within(within);
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must exit 0, got {status}\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// A client script running beside the test (see `Broker::python_background`).
struct Background {
    child: Child,
    out: PathBuf,
    script: String,
}

impl Background {
    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// Waits until the script printed the line `line`; fails if it exits first.
    fn wait_for_line(&mut self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.output().lines().any(|l| l == line) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{} exited with {status} before printing {line:?}\n{}",
                    self.script,
                    tail(&self.output(), SCRIPT_TAIL_LINES, &self.script)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {line:?} within {within:?}\n{}",
                self.script,
                tail(&self.output(), SCRIPT_TAIL_LINES, &self.script)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the script to exit and asserts that it exited 0; returns its output.
    fn wait_success(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {within:?}\n{}",
                self.script,
                tail(&self.output(), SCRIPT_TAIL_LINES, &self.script)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = self.output();
        if !status.success() {
            let fails: Vec<&str> = output.lines().filter(|l| l.starts_with("FAIL: ")).collect();
            panic!(
                "{} failed ({status})\n{}\n{}",
                self.script,
                fails.join("\n"),
                tail(&output, SCRIPT_TAIL_LINES, &self.script)
            );
        }
        println!("--- {} ---\n{output}", self.script);
        output
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of `text`, framed and titled.
fn tail(text: &str, n: usize, title: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "--- {title} (last {} of {} lines) ---\n{}\n--- end of {title} ---",
        lines.len() - from,
        lines.len(),
        lines[from..].join("\n")
    )
}

/// `dir/STEM-N.EXT` for the first N not taken yet.
fn unused_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .expect("a free file name")
}

/// Runs `cmd` with stdout and stderr into the file `out`, killing it after `limit`;
/// returns its status and output.
fn run_bounded(mut cmd: Command, out: &Path, limit: Duration) -> (ExitStatus, String) {
    let file = File::create(out).expect("output file");
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone output file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (tools/setup.sh installs the test clients)"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(out).unwrap_or_default();
            panic!("{program} did not finish within {limit:?}; its output:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = String::from_utf8_lossy(&std::fs::read(out).expect("read output")).into_owned();
    (status, output)
}

#[test]
fn confluent_admin_creates_alters_describes_and_deletes_topics() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("admin_topics.py", &[]);
}

#[test]
fn describe_cluster_metadata_and_replication_factor_with_three_clients() {
    const NODE_ID: &str = "3";
    let node = Node::new();
    let mut broker = node.start(&["--node-id", NODE_ID]);
    // The cluster id the broker recorded at first start, in `node.meta`.
    let meta = std::fs::read_to_string(node.data().join("node.meta")).expect("node.meta");
    let cluster_id = meta
        .lines()
        .find_map(|l| l.strip_prefix("cluster_id="))
        .expect("node.meta records the cluster id");
    broker.python(
        "cluster_describe.py",
        &["--cluster-id", cluster_id, "--node-id", NODE_ID],
    );
}

#[test]
fn confluent_produce_consume_every_codec_keys_headers_byte_exact() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("produce_codecs.py", &[]);
}

#[test]
fn kcat_auto_creates_produces_consumes_and_lists_metadata() {
    let node = Node::new();
    let mut broker = node.start(&["--auto-create-topics", "true", "--default-partitions", "3"]);
    broker.python("kcat_roundtrip.py", &["--partitions", "3"]);
}

#[test]
fn list_offsets_by_timestamp_earliest_and_latest() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("offsets_by_time.py", &[]);
}

#[test]
fn fetch_long_poll_is_woken_by_produce() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("long_poll.py", &[]);
}

/// A cleanup.policy=compact topic read back by a consumer holds exactly the latest
/// value per key, at its original offset, and loses its tombstones after
/// delete.retention.ms; cleanup.policy takes APPEND and SUBTRACT. The compacted log
/// verifies offline after a clean stop.
#[test]
fn compacted_topic_keeps_the_latest_value_per_key() {
    let node = Node::new();
    let mut broker = node.start(&["--log-cleaner-backoff-ms", "200"]);
    broker.python("compaction.py", &[]);
    broker.terminate_cleanly();
    node.log_verify();
}

#[test]
fn topics_configs_and_messages_survive_sigterm_and_restart() {
    let node = Node::new();
    let mut first = node.start(&[]);
    first.python("persist.py", &["--phase", "produce"]);
    first.terminate_cleanly();

    node.log_verify();

    let mut second = node.start(&[]);
    second.python("persist.py", &["--phase", "verify"]);
    second.terminate_cleanly();
}

/// A SIGKILL in the middle of topic creation and deletion: after the restart the
/// acknowledged messages of another topic read back byte for byte (persist.py), every
/// topic the broker lists is whole, and the logs verify. Directories of a delete the
/// kill cut short are set aside, never served.
#[test]
fn acked_messages_and_topics_survive_a_sigkill_during_topic_churn() {
    let node = Node::new();
    let mut first = node.start(&[]);
    first.python("persist.py", &["--phase", "produce"]);
    let mut churn = first.python_background("topic_churn.py", &["--phase", "churn"]);
    churn.wait_for_line("churning", SCRIPT_TIMEOUT);
    first.kill();
    churn.wait_success(SCRIPT_TIMEOUT);

    let mut second = node.start_at(first.addr, &[]);
    second.python("persist.py", &["--phase", "verify"]);
    second.python("topic_churn.py", &["--phase", "check"]);
    second.terminate_cleanly();
    node.log_verify();
}

#[test]
fn sigterm_under_produce_and_fetch_load_exits_cleanly() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    let mut clients = broker.python_background("busy_at_stop.py", &[]);
    clients.wait_for_line("busy", SCRIPT_TIMEOUT);
    broker.terminate_cleanly();
    drop(clients);

    // The data written before the stop is intact, and the node starts again.
    node.log_verify();
    let mut again = node.start(&[]);
    again.terminate_cleanly();
}

#[test]
fn kafka_python_admin_produce_and_assigned_consume() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("kafka_python_roundtrip.py", &[]);
}

#[test]
fn min_insync_replicas_refuses_acks_all_only() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("min_insync.py", &[]);
}

#[test]
fn acks_0_and_acks_1_producers_land_their_data() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("acks.py", &[]);
}

#[test]
fn malformed_and_hostile_requests_leave_the_broker_serving() {
    let node = Node::new();
    let mut broker = node.start(&["--max-request-bytes", MAX_REQUEST_BYTES]);
    let pid = broker.pid();
    broker.python(
        "bad_input.py",
        &["--broker-pid", &pid, "--max-request-bytes", MAX_REQUEST_BYTES],
    );
    broker.terminate_cleanly();
}

/// Requests written back to back on one connection (an idempotent producer's Produce
/// requests with Metadata between them; acks=1 requests writing two partitions) are answered
/// in order and appended in order; /metrics counts the overlapping ones. A long poll longer
/// than the idle timeout is answered: a connection with a request in progress is not idle.
#[test]
fn pipelined_requests_are_answered_and_appended_in_order() {
    pipelined(None, "1");
}

/// The same with `network.pipeline_depth = 1`: nothing overlaps, the answers are the same.
#[test]
fn a_pipeline_depth_of_one_runs_requests_one_at_a_time() {
    pipelined(Some(1), "0");
}

fn pipelined(depth: Option<u32>, expect_pipelined: &str) {
    let node = Node::new();
    let admin = format!("127.0.0.1:{}", free_port());
    // An idle timeout shorter than the script's long poll (5 s).
    let mut flags = vec![
        "--admin-addr".to_string(),
        admin.clone(),
        "--idle-timeout-s".into(),
        "2".into(),
    ];
    if let Some(depth) = depth {
        let profile = node.dir.path().join("depth.toml");
        std::fs::write(&profile, format!("[network]\npipeline_depth = {depth}\n")).expect("profile");
        flags.push("--profile".into());
        flags.push(profile.display().to_string());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut broker = node.start(&flags);
    broker.python(
        "pipelined.py",
        &[
            "--metrics",
            &format!("http://{admin}/metrics"),
            "--expect-pipelined",
            expect_pipelined,
            "--long-poll-ms",
            "5000",
        ],
    );
    broker.terminate_cleanly();
}

/// A client that stops half-way through a request is disconnected after
/// `--request-read-timeout-s`, and one that sends nothing after
/// `--idle-timeout-s`; a well-behaved client on the same broker is unaffected.
#[test]
fn stalled_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    let node = Node::new();
    let mut broker = node.start(&["--request-read-timeout-s", "1", "--idle-timeout-s", "3"]);
    let mut stalled = TcpStream::connect(broker.addr).expect("connect");
    // A size field promising 100 bytes, then only 10 of them.
    stalled.write_all(&100i32.to_be_bytes()).expect("write size");
    stalled.write_all(&[0u8; 10]).expect("write part");
    let mut idle = TcpStream::connect(broker.addr).expect("connect");
    for (name, conn) in [("stalled", &mut stalled), ("idle", &mut idle)] {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let started = Instant::now();
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{name} connection got {n} bytes instead of being closed"),
            Err(e) => panic!(
                "{name} connection was not closed within 20 s ({e}, after {:?})\n{}",
                started.elapsed(),
                broker.log_tail()
            ),
        }
    }
    let log = std::fs::read_to_string(&broker.log).expect("broker log");
    assert!(log.contains("stalled mid-request"), "{}", broker.log_tail());
    assert!(log.contains("idle for"), "{}", broker.log_tail());
    broker.python("acks.py", &[]);
    broker.terminate_cleanly();
}

/// confluent-kafka consumers of one group join one by one and leave one by one on a
/// 6-partition topic while a producer keeps producing: no partition is ever owned by
/// two members, every message is consumed exactly once (each member commits
/// synchronously after every batch and in on_revoke), and the group ends up
/// committed at the partition ends. One test per assignment strategy.
fn group_rebalances(strategy: &str) {
    let node = Node::new();
    let mut broker = node.start(&GROUP_FLAGS);
    broker.python("group_balance.py", &["--strategy", strategy]);
    broker.terminate_cleanly();
}

#[test]
fn group_rebalances_under_load_range() {
    group_rebalances("range");
}

#[test]
fn group_rebalances_under_load_roundrobin() {
    group_rebalances("roundrobin");
}

#[test]
fn group_rebalances_under_load_cooperative_sticky() {
    group_rebalances("cooperative-sticky");
}

/// Committed offsets (and their metadata) survive a broker restart on the same data
/// directory and port, after SIGTERM or after SIGKILL once the commits were
/// acknowledged; a new member resumes exactly at them.
fn committed_offsets_survive(kill: bool) {
    let node = Node::new();
    let mut first = node.start(&GROUP_FLAGS);
    first.python("group_offsets_restart.py", &["--phase", "commit"]);
    if kill {
        first.kill();
    } else {
        first.terminate_cleanly();
        node.log_verify();
    }
    let mut second = node.start_at(first.addr, &GROUP_FLAGS);
    second.python("group_offsets_restart.py", &["--phase", "verify"]);
    second.terminate_cleanly();
}

#[test]
fn committed_offsets_survive_sigterm_and_restart() {
    committed_offsets_survive(false);
}

#[test]
fn committed_offsets_survive_sigkill_after_the_commit() {
    committed_offsets_survive(true);
}

#[test]
fn kcat_balanced_consumer_commits_and_resumes() {
    let node = Node::new();
    let mut broker = node.start(&GROUP_FLAGS);
    broker.python("kcat_group.py", &[]);
}

#[test]
fn kafka_python_default_idempotent_producer_and_group_consumer() {
    let node = Node::new();
    let mut broker = node.start(&GROUP_FLAGS);
    broker.python("kafka_python_group.py", &[]);
}

/// librdkafka's idempotent producer; every client connection goes through a proxy
/// the script runs (the broker advertises the proxy's address), which counts the
/// batches the broker received more than once.
fn idempotent_producer_node() -> (Node, Broker, String) {
    let node = Node::new();
    let proxy_port = free_port().to_string();
    let advertised = format!("127.0.0.1:{proxy_port}");
    let broker = node.start(&["--advertised-kafka-addr", &advertised]);
    (node, broker, proxy_port)
}

/// The proxy keeps cutting every connection (dropping the answers to requests the
/// broker got first, so batches it appended are sent again): every message lands
/// exactly once, in order, at its acknowledged offset.
#[test]
fn idempotent_producer_through_cut_connections_lands_every_message_once() {
    let (_node, mut broker, proxy_port) = idempotent_producer_node();
    broker.python(
        "idempotent_produce.py",
        &["--proxy-port", &proxy_port, "--mode", "cut"],
    );
    broker.terminate_cleanly();
}

/// The broker is killed (SIGKILL) and restarted on the same data directory and port
/// in the middle of the stream: with the producer state rebuilt from the log, the
/// retried batches the old process had appended are recognized as duplicates, so
/// every message lands exactly once, in order.
#[test]
fn idempotent_producer_across_a_broker_sigkill_lands_every_message_once() {
    let (node, mut broker, proxy_port) = idempotent_producer_node();
    let advertised = format!("127.0.0.1:{proxy_port}");
    let mut producer = broker.python_background(
        "idempotent_produce.py",
        &["--proxy-port", &proxy_port, "--mode", "restart"],
    );
    producer.wait_for_line("restart-now", SCRIPT_TIMEOUT);
    broker.kill();
    let mut restarted = node.start_at(broker.addr, &["--advertised-kafka-addr", &advertised]);
    producer.wait_success(SCRIPT_TIMEOUT);
    restarted.assert_running("idempotent_produce.py");
    restarted.terminate_cleanly();
    node.log_verify();
}

#[test]
fn bad_group_requests_get_kafka_errors_and_leave_the_group_working() {
    let node = Node::new();
    let mut broker = node.start(&GROUP_FLAGS);
    broker.python("group_bad_input.py", &[]);
    broker.terminate_cleanly();
}

#[test]
fn empty_group_offsets_expire_and_active_group_offsets_stay() {
    let node = Node::new();
    let mut flags = GROUP_FLAGS.to_vec();
    flags.extend(["--offsets-retention-ms", OFFSETS_RETENTION_MS]);
    let mut broker = node.start(&flags);
    broker.python("group_retention.py", &["--retention-ms", OFFSETS_RETENTION_MS]);
}

/// Authorization on, User:admin a superuser, and (test only) the principal taken from
/// client.id, so the script acts as the superuser and as a principal with no ACLs.
#[test]
fn acls_refuse_an_unauthorised_client_on_every_api_until_granted() {
    let node = Node::new();
    let mut flags = GROUP_FLAGS.to_vec();
    flags.extend([
        "--authorization",
        "true",
        "--super-users",
        "User:admin",
        "--test-only-principal-from-client-id",
    ]);
    let mut broker = node.start(&flags);
    broker.python("acls.py", &[]);
    broker.terminate_cleanly();
}

/// With authorization on, the session's own principal (User:ANONYMOUS before SASL)
/// named a superuser may do everything, and with allow-everyone-if-no-acl-found any
/// client may use resources no ACL names: the topic admin script and the admin APIs
/// script (DeleteRecords, DescribeProducers, DescribeLogDirs, AlterReplicaLogDirs)
/// pass unchanged.
#[test]
fn authorization_on_lets_superusers_and_no_acl_resources_through() {
    for flags in [
        ["--authorization", "true", "--super-users", "User:ANONYMOUS"],
        [
            "--authorization",
            "true",
            "--allow-everyone-if-no-acl-found",
            "true",
        ],
    ] {
        let node = Node::new();
        let mut broker = node.start(&flags);
        broker.python("admin_topics.py", &[]);
        broker.terminate_cleanly();
        // admin_apis.py expects a broker with only its own topics.
        let node = Node::new();
        let mut broker = node.start(&flags);
        let data = std::fs::canonicalize(node.data()).expect("data dir");
        let data = data.to_str().expect("utf-8 path");
        broker.python("admin_apis.py", &["--phase", "first", "--data-dir", data]);
        broker.terminate_cleanly();
    }
}

#[test]
fn static_members_and_group_admin_apis() {
    let node = Node::new();
    let mut broker = node.start(&GROUP_FLAGS);
    broker.python("group_admin.py", &[]);
    broker.terminate_cleanly();
}

/// Sends `request` to the admin listener and returns the status code and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The server may answer (and close) before it has read all of an oversized request.
    let _ = stream.write_all(request);
    // The request is complete: a server waiting for more sees EOF.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the admin response");
    let response = String::from_utf8(response).expect("an admin response is UTF-8");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response head ends with a blank line");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(body.len(), length, "Content-Length matches the body");
    (code, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Prometheus samples `name{labels}` -> value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (
                k.to_owned(),
                v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

/// The sum of every sample of metric `name` whose labels contain `label`.
fn sum_of(samples: &std::collections::BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn admin_api_serves_metrics_and_status_and_rejects_bad_http() {
    let node = Node::new();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_flag = admin.to_string();
    let mut broker = node.start(&["--admin-addr", &admin_flag, "--log-format", "json"]);
    // 300 messages over 2 partitions with acks 0, 1 and all, all read back.
    broker.python("acks.py", &[]);

    let (code, body) = get(admin, "/v1/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/v1/status is JSON");
    let shards = status["shards"].as_array().expect("shards");
    assert!(!shards.is_empty(), "{status}");
    assert_eq!(status["kafka_addr"], broker.bootstrap());
    let acks: Vec<&serde_json::Value> = status["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| p["topic"] == "acks")
        .collect();
    assert_eq!(acks.len(), 2, "{status}");
    let high: i64 = acks
        .iter()
        .map(|p| p["high_watermark"].as_i64().expect("hwm"))
        .sum();
    assert_eq!(high, 300, "the status shows every message: {status}");
    for p in &acks {
        assert_eq!(p["start_offset"], 0);
        assert_eq!(p["log_end_offset"], p["high_watermark"]);
        assert!(p["size_bytes"].as_u64().expect("size") > 0);
    }

    let (code, body) = get(admin, "/metrics");
    assert_eq!(code, 200);
    let m = samples(&body);
    let topic = "topic=\"acks\"";
    assert_eq!(sum_of(&m, "ferrolog_partition_high_watermark", topic), 300.0);
    // Two producers with acks 0/1 and one with acks=all wrote at least one batch each.
    assert!(sum_of(&m, "ferrolog_partition_produce_requests_total", topic) >= 3.0);
    let produced = sum_of(&m, "ferrolog_partition_produce_bytes_total", topic);
    assert!(produced > 300.0, "{produced}");
    assert!(sum_of(&m, "ferrolog_partition_flushed_bytes_total", topic) >= produced);
    assert_eq!(sum_of(&m, "ferrolog_partition_produce_errors_total", topic), 0.0);
    assert!(sum_of(&m, "ferrolog_partition_fetch_bytes_total", topic) >= produced);
    assert!(sum_of(&m, "ferrolog_partition_append_latency_seconds_count", topic) >= 3.0);
    assert!(sum_of(&m, "ferrolog_partition_flush_latency_seconds_count", topic) >= 1.0);
    assert!(sum_of(&m, "ferrolog_requests_total", "api=\"Produce\"") >= 3.0);
    assert!(sum_of(&m, "ferrolog_requests_total", "api=\"Fetch\"") >= 1.0);
    assert!(sum_of(&m, "ferrolog_request_latency_seconds_count", "api=\"Metadata\"") >= 1.0);
    assert!(sum_of(&m, "ferrolog_connections_accepted_total", "") >= 3.0);
    assert!(
        sum_of(&m, "ferrolog_reactor_lag_seconds_count", "") > 0.0,
        "the stall probe runs"
    );
    if shards.len() > 1 {
        assert!(sum_of(&m, "ferrolog_cross_shard_calls_served_total", "") > 0.0);
    }

    // Bad HTTP gets 4xx and the listener keeps serving.
    assert_eq!(get(admin, "/nope").0, 404);
    assert_eq!(http(admin, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(admin, b"garbage\r\n\r\n").0, 400);
    assert_eq!(
        http(admin, b"GET /metrics HTTP/1.1\r\n").0,
        400,
        "closed mid-head"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(admin, huge.as_bytes()).0, 431);
    assert_eq!(get(admin, "/metrics").0, 200);

    // A second node on the same admin address fails to start, saying why.
    let other = Node::new();
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "--data-dir"])
        .arg(other.data())
        .args(["--kafka-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &admin_flag]);
    let (status, output) = run_bounded(cmd, &other.dir.path().join("out"), SCRIPT_TIMEOUT);
    assert!(
        !status.success(),
        "a second admin listener on {admin} must fail\n{output}"
    );
    assert!(output.contains("admin address"), "{output}");

    broker.terminate_cleanly();
    // --log-format json: every log line is one JSON object.
    let log = std::fs::read_to_string(&broker.log).expect("broker log");
    assert!(log.lines().count() > 3, "{log}");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn topic_configs_recompress_stamp_bound_and_place_manually() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    broker.python("topic_configs.py", &[]);
    broker.terminate_cleanly();
    // The stored batches carry the topic's codec, whatever the producers sent.
    for (dir, codec) in [("gz-0", "gzip"), ("zs-0", "zstd"), ("lat-0", "lz4")] {
        let mut cmd = Command::new(BIN);
        cmd.args(["log", "dump"]).arg(node.data().join(dir));
        let (status, out) = run_bounded(cmd, &unused_path(node.dir.path(), "dump", "out"), SCRIPT_TIMEOUT);
        assert!(status.success(), "log dump {dir} failed ({status}):\n{out}");
        let batches: Vec<&str> = out.lines().filter(|l| l.contains("codec=")).collect();
        assert!(!batches.is_empty(), "no batches in {dir}:\n{out}");
        for b in &batches {
            assert!(b.contains(&format!("codec={codec} ")), "{dir}: {b}");
            assert!(b.contains("crc=ok"), "{dir}: {b}");
        }
    }
    node.log_verify();
}

#[test]
fn admin_apis_delete_records_producers_and_log_dirs() {
    let node = Node::new();
    let mut broker = node.start(&[]);
    let data = std::fs::canonicalize(node.data()).expect("data dir");
    let data = data.to_str().expect("utf-8 path");
    broker.python("admin_apis.py", &["--phase", "first", "--data-dir", data]);
    broker.terminate_cleanly();
    let mut broker = node.start(&[]);
    broker.python("admin_apis.py", &["--phase", "restarted", "--data-dir", data]);
}

/// Partitions of `many_partitions_serve_and_survive_restarts`;
/// `FERROLOG_MANY_PARTITIONS` overrides it. The whole test takes about 55 s here
/// with the debug build (its restarts are timed with the release build by
/// `tools/scale_bench.py` and `benches/restart-cycle.sh`, docs/benchmarks.md).
const MANY_PARTITIONS: usize = 10_000;

/// The bound on each of its client scripts' phases and on each stop: creating
/// and writing 10,000 partitions took 15-20 s here, and the first stop after
/// (a first index and snapshot file for every partition) 3-10 s with the
/// release build; on a machine shared with the rest of the suite either may
/// take several times that.
const MANY_PARTITIONS_SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// The files under `dir` that process `pid` holds open (from /proc/PID/fd).
fn open_files_under(pid: &str, dir: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Many partitions on one node (issue 16): one CreateTopics makes them all, the
/// node refuses more than its open-file budget allows (INVALID_PARTITIONS), and
/// every partition serves produce and fetch with its data intact after a clean
/// restart and after a kill -9, while the segment files the broker holds open stay
/// within `storage.fd_budget` (one active segment per partition; sealed ones are
/// opened only to be read). Bounded in time by the script and readiness timeouts.
#[test]
fn many_partitions_serve_and_survive_restarts() {
    let partitions: usize = std::env::var("FERROLOG_MANY_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MANY_PARTITIONS);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from).min(2);
    let cpuset = if cpus == 2 { "0-1" } else { "0" };
    // The topic, the group coordinator's 16 partitions, the sealed-file floor of
    // each shard (SEALED_FILES_MIN_PER_SHARD) and 50 to spare: a topic of 100 more
    // partitions does not fit.
    let budget = partitions + 16 + cpus * 64 + 50;
    let node = Node::new();
    let profile = node.dir.path().join("profile.toml");
    std::fs::write(&profile, format!("[storage]\nfd_budget = {budget}\n")).expect("profile");
    let profile = profile.to_str().expect("utf-8 path").to_owned();
    let flags = [
        "--profile",
        &profile,
        "--cpuset",
        cpuset,
        "--auto-create-topics",
        "false",
    ];
    let n = partitions.to_string();
    let data = node.data();
    let check_files = |broker: &Broker, when: &str| {
        let open = open_files_under(&broker.pid(), &data);
        println!("{when}: {open} files open under the data directory (fd_budget {budget})");
        assert!(
            (partitions..=budget).contains(&open),
            "{when}: {open} files open under the data directory, expected {partitions}..={budget}"
        );
    };

    let mut first = node.start(&flags);
    first.python_within(
        "many_partitions.py",
        &["--phase", "create", "--partitions", &n, "--over-limit", "100"],
        MANY_PARTITIONS_SCRIPT_TIMEOUT,
    );
    check_files(&first, "after create and produce");
    first.terminate_cleanly_within(MANY_PARTITIONS_SCRIPT_TIMEOUT);

    let mut second = node.start_at(first.addr, &flags);
    second.python_within(
        "many_partitions.py",
        &[
            "--phase",
            "verify",
            "--partitions",
            &n,
            "--tags",
            "first",
            "--tag",
            "clean",
        ],
        MANY_PARTITIONS_SCRIPT_TIMEOUT,
    );
    check_files(&second, "after a clean restart");
    second.kill();

    let mut third = node.start_at(first.addr, &flags);
    third.python_within(
        "many_partitions.py",
        &["--phase", "verify", "--partitions", &n, "--tags", "first,clean"],
        MANY_PARTITIONS_SCRIPT_TIMEOUT,
    );
    check_files(&third, "after a kill -9");
    third.terminate_cleanly_within(MANY_PARTITIONS_SCRIPT_TIMEOUT);
}

/// A raw client's connections write and read one partition each on a broker with two
/// shards: with the default profile every Produce and Fetch runs on the shard that owns its
/// partition (a connection accepted elsewhere moves there, pipelined bytes and all), and the
/// answers, offsets and values are as without the move.
#[test]
fn connections_move_to_the_shard_that_owns_their_partition() {
    moved_connections(None, "1");
}

/// The same with `network.move_connections = false`: nothing moves, and some requests run
/// on the shard that does not own their partition (the check above can fail).
#[test]
fn with_move_connections_off_requests_run_where_they_were_accepted() {
    moved_connections(Some(false), "0");
}

fn moved_connections(setting: Option<bool>, expect_moves: &str) {
    let node = Node::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut flags = vec![
        "--admin-addr".to_string(),
        admin.clone(),
        "--cpuset".into(),
        "0,1".into(),
    ];
    if let Some(on) = setting {
        let profile = node.dir.path().join("move.toml");
        std::fs::write(&profile, format!("[network]\nmove_connections = {on}\n")).expect("profile");
        flags.push("--profile".into());
        flags.push(profile.display().to_string());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut broker = node.start(&flags);
    broker.python(
        "moved_connections.py",
        &[
            "--metrics",
            &format!("http://{admin}/metrics"),
            "--expect-moves",
            expect_moves,
        ],
    );
    broker.terminate_cleanly();
}
