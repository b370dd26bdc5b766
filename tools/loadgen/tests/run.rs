//! End-to-end: the load generator against a real `ferrolog` broker (the workspace's debug
//! build), and its refusal of bad options.
//!
//! The broker binary is built by `cargo build --workspace --all-targets` (the project's test
//! command runs it first); a missing binary fails the test with a message saying so. Its data
//! directory is under CARGO_TARGET_TMPDIR, on the target directory's disk: the broker needs
//! O_DIRECT, which tmpfs lacks.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const LOADGEN: &str = env!("CARGO_BIN_EXE_ferrolog-loadgen");
/// How long the broker may take to accept connections.
const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of one load generator run (a few seconds of load, plus setup and drain).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of the broker's log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Where the `ferrolog` binary may be, most specific first: beside the load generator (same
/// target directory and profile), under CARGO_TARGET_DIR, under the workspace's target/.
fn broker_candidates() -> Vec<PathBuf> {
    let mut c = vec![Path::new(LOADGEN).with_file_name("ferrolog")];
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        c.push(PathBuf::from(dir).join("debug/ferrolog"));
    }
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        c.push(PathBuf::from(dir).join("debug/ferrolog"));
    }
    c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ferrolog"));
    c
}

fn broker_bin() -> PathBuf {
    let candidates = broker_candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the ferrolog broker binary is not built (looked at {candidates:?}); build it first with \
             `cargo build --workspace --all-targets` (or `cargo build -p ferrolog`)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A `ferrolog start` process, killed when dropped (also when the test panics, which then
/// prints the tail of its log).
struct Broker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let bin = broker_bin();
        let dir = tempfile::Builder::new()
            .prefix("loadgen-broker-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a temporary directory under CARGO_TARGET_TMPDIR");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("broker.log");
        let log_file = std::fs::File::create(&log).expect("broker log file");
        let child = Command::new(&bin)
            .arg("start")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--kafka-addr", &addr.to_string()])
            .args(["--group-initial-rebalance-delay-ms", "0"])
            // Other tests' brokers run beside this one: not the default admin port.
            .args(["--admin-addr", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut broker = Broker {
            child,
            addr,
            log,
            _dir: dir,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BROKER_READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the broker") {
                panic!("the broker exited during startup ({status})\n{}", self.log_tail());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker does not accept connections on {} after {BROKER_READY_TIMEOUT:?}\n{}",
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Runs the load generator with `args`, bounded by [`RUN_TIMEOUT`].
fn loadgen(args: &[&str]) -> Output {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrolog-loadgen");
    // Drain the pipes on threads so a chatty run cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().expect("try_wait on ferrolog-loadgen") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrolog-loadgen {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn u64_at(json: &serde_json::Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in the report"))
}

#[test]
fn a_short_run_against_the_broker_is_complete_and_consistent() {
    let broker = Broker::start();
    let out_dir = tempfile::Builder::new()
        .prefix("loadgen-out-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("output directory");
    let json_path = out_dir.path().join("report.json");
    let svg_path = out_dir.path().join("latency.svg");
    let bootstrap = broker.addr.to_string();
    let output = loadgen(&[
        "--bootstrap",
        &bootstrap,
        "--partitions",
        "3",
        "--producers",
        "2",
        "--consumers",
        "1",
        "--rate",
        "500",
        "--message-size",
        "256",
        "--warmup-s",
        "1",
        "--duration-s",
        "2",
        "--drain-timeout-s",
        "20",
        "--json",
        json_path.to_str().expect("UTF-8 path"),
        "--svg",
        svg_path.to_str().expect("UTF-8 path"),
    ]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        output.status.success(),
        "ferrolog-loadgen failed ({})\n{context}",
        output.status
    );
    assert!(stdout.contains("result: OK"), "{context}");
    assert!(
        stderr.contains(" measure "),
        "no progress line of the measurement\n{context}"
    );

    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .unwrap_or_else(|e| panic!("reading the JSON report: {e}\n{context}")),
    )
    .unwrap_or_else(|e| panic!("the JSON report does not parse: {e}\n{context}"));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["partitions"], 3);
    assert_eq!(report["workload"]["rate_msgs_per_s"], 500);

    let sent = u64_at(&report, "/counts/sent");
    let acked = u64_at(&report, "/counts/acked");
    assert!(sent > 0, "nothing sent: {report}");
    assert_eq!(u64_at(&report, "/counts/failed"), 0);
    assert_eq!(acked, sent, "every send acknowledged");
    assert_eq!(
        u64_at(&report, "/counts/consumed_unique"),
        acked,
        "every acked message consumed"
    );
    assert_eq!(u64_at(&report, "/counts/consumed"), acked, "each exactly once");
    assert_eq!(u64_at(&report, "/counts/duplicates"), 0);
    assert_eq!(u64_at(&report, "/counts/gaps"), 0);
    assert_eq!(u64_at(&report, "/counts/foreign"), 0);
    assert_eq!(report["drained"], true);
    let per_partition = report["counts"]["per_partition"]
        .as_array()
        .expect("per_partition");
    assert_eq!(per_partition.len(), 3);
    let per_partition_acked: u64 = per_partition.iter().filter_map(|p| p["acked"].as_u64()).sum();
    assert_eq!(per_partition_acked, acked);
    assert!(per_partition
        .iter()
        .all(|p| p["gaps"] == 0 && p["duplicates"] == 0));

    // Only messages sent after the warm-up count in the histograms.
    let measured = u64_at(&report, "/counts/measured_acked");
    assert!(measured > 0 && measured < acked, "measured {measured} of {acked}");
    for series in ["publish", "publish_uncorrected", "end_to_end"] {
        let at = |p: &str| u64_at(&report, &format!("/latency_us/{series}/{p}"));
        assert_eq!(at("samples"), measured, "{series} samples");
        let ordered = [
            at("p50_us"),
            at("p90_us"),
            at("p99_us"),
            at("p99_9_us"),
            at("p99_99_us"),
            at("max_us"),
        ];
        assert!(
            ordered.windows(2).all(|w| w[0] <= w[1]),
            "{series} percentiles out of order: {ordered:?}"
        );
    }
    assert!(report["throughput"]["publish_msgs_per_s"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    let series = report["time_series"].as_array().expect("time_series");
    assert!(
        series.len() >= 3,
        "one entry per second at least: {}",
        series.len()
    );

    let svg = std::fs::read_to_string(&svg_path).expect("reading the SVG");
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(r#"data-name="publish""#), "no publish series");
    assert!(svg.contains(r#"data-name="end-to-end""#), "no end-to-end series");
    drop(broker);
}

#[test]
fn bad_options_exit_non_zero_with_a_clear_message() {
    for (args, expected) in [
        (
            &["--bootstrap", "127.0.0.1:1", "--message-size", "4"][..],
            "--message-size must be at least 16",
        ),
        (
            &["--bootstrap", "127.0.0.1:1", "--compression", "bogus"][..],
            "invalid value 'bogus'",
        ),
        (&["--message-size", "100"][..], "--bootstrap"),
        (
            &["--bootstrap", "127.0.0.1:1", "--acks", "2"][..],
            "invalid value '2'",
        ),
    ] {
        let output = loadgen(args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr does not say {expected:?}:\n{stderr}"
        );
    }
}
