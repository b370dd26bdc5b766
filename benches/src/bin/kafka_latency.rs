//! Kafka latency bench: produce and end-to-end latency of one ferrolog broker
//! through librdkafka (the `rdkafka` crate, a real client), against the
//! loopback TCP round trip measured in the same run.
//!
//! ```text
//! cargo run --release -p ferrolog-benches --bin kafka_latency -- [--quick] [--samples N]
//!     [--broker-bin PATH | --bootstrap HOST:PORT] [--cpuset LIST] [--broker-arg ARG]...
//!     [--fetch-wait-ms MS] [--client-debug CONTEXTS] [--json PATH]
//!     [--replication-factor N[,N...]] [--durability D[,D...]] [--no-minimal-client]
//! ```
//!
//! By default it starts the broker itself: the `ferrolog` binary next to this
//! one (`target/release/ferrolog`; build it first with
//! `cargo build --release -p ferrolog`), on a free port of 127.0.0.1, with a
//! data directory in a tempdir (under `FERROLOG_BENCH_DIR` if set), and stops
//! it with SIGTERM at the end. `--cpuset LIST` is passed to `ferrolog start`
//! (default: none, the broker uses every core). `--bootstrap` uses a broker
//! that is already running instead.
//!
//! What it measures, one message of 1 KiB in flight at a time (closed loop):
//!
//! - floor: a loopback TCP round trip of 1 KiB (echo thread, TCP_NODELAY);
//! - produce: `send`, then wait for the delivery report (acks=all,
//!   linger.ms=0), on a topic with `ferrolog.durability=direct` and on one
//!   with `fsync`;
//! - produce with a busy-polling client: the same, but the client waits for
//!   the delivery report by polling librdkafka's queue with a zero timeout in
//!   a loop, as an application that spins does, so the client keeps a core
//!   busy the whole time (the case of the latency-tail issue); its rows run
//!   in the same interleaved blocks as the blocking ones
//!   (`--no-busy-client` drops them);
//! - end-to-end: `send`, then wait until a consumer (`assign`ed to the
//!   partition at its end; fetch.min.bytes=1) receives the message, per
//!   durability; the next message goes out once both the consumer has it and
//!   its delivery report is in;
//! - (info) produce through a minimal client instead of librdkafka: one
//!   blocking socket, a prebuilt RecordBatch, ProduceRequest v8 encoded with
//!   `kafka-protocol`, so the broker's share of the librdkafka rows shows.
//!
//! `--replication-factor 1,3` creates the topics of every Kafka row once per
//! factor (a cluster must have that many nodes: use `--bootstrap`), so the
//! factors are compared in the same interleaved blocks; `--durability direct`
//! keeps only those rows. `--no-minimal-client` drops the minimal client rows:
//! it sends to the bootstrap broker only, which in a cluster need not lead the
//! partition.
//!
//! Every case is measured in [`BLOCKS`] interleaved blocks, so drift and
//! other load hit the floor and the broker alike. Prints a table and writes
//! JSON (default `target/kafka_latency.json`); the broker's log goes to
//! `target/kafka_latency.broker.log`.

use bytes::{Bytes, BytesMut};
use ferrolog_benches::{
    bench_dir, fmt_us, fs_description, load_average, machine_busy_seconds, make_batch, new_histogram,
    own_cpu_seconds, process_cpu_seconds, produce_answer, record, Json, Latency, ProduceFrame,
};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::ffi::CStr;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Size of every message value and of the loopback echo.
const VALUE_BYTES: usize = 1024;
/// Each case is measured in this many blocks, interleaved with the others.
const BLOCKS: usize = 10;
const SAMPLES_FULL: usize = 20_000;
const SAMPLES_QUICK: usize = 2_000;
const WARMUP_FULL: usize = 1_000;
const WARMUP_QUICK: usize = 200;
/// Unmeasured samples the busy-polling client sends at the start of each of its blocks. A
/// client that starts spinning after the other cases ran shares a CPU with its own librdkafka
/// thread until the scheduler moves one of them: on the 2-vCPU dev VM its first ~20 messages
/// waited 1-5 ms each for that thread (schedstat), while the broker answered them in under
/// 1 ms (docs/benchmarks.md). Measured apart ("first samples of each block").
const BUSY_SETTLE_FULL: usize = 200;
const BUSY_SETTLE_QUICK: usize = 50;
/// Default `fetch.wait.max.ms` of the consumer.
const FETCH_WAIT_MS_DEFAULT: u32 = 100;
/// How long the started broker may take to accept TCP connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM before SIGKILL.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Admin requests (create/delete topics) and metadata waits.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);
/// One message's delivery report or arrival at the consumer.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// librdkafka `message.timeout.ms`: below [`MESSAGE_TIMEOUT`], so a message
/// the broker never acknowledges comes back as an error, not a bench timeout.
const CLIENT_MESSAGE_TIMEOUT_MS: u64 = 15_000;
/// Client warnings and errors printed to stderr; later ones are only counted.
const CLIENT_LOG_PRINTED_MAX: usize = 40;
/// Client warnings and errors kept for the JSON report.
const CLIENT_LOG_KEPT_MAX: usize = 100;
/// Broker log lines shown when it fails, and WARN/ERROR lines shown at the end.
const BROKER_LOG_SHOWN_MAX: usize = 40;
/// The topic config that selects ferrolog's durability mode.
const DURABILITY_CONFIG: &str = "ferrolog.durability";
const DURABILITIES: [&str; 2] = ["direct", "fsync"];

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

// ---------------------------------------------------------------------------
// Options

struct Options {
    quick: bool,
    samples: usize,
    warmup: usize,
    /// Unmeasured samples at the start of each busy-polling block ([`BUSY_SETTLE_FULL`]).
    busy_settle: usize,
    json_path: PathBuf,
    broker_bin: Option<PathBuf>,
    bootstrap: Option<String>,
    cpuset: Option<String>,
    broker_args: Vec<String>,
    fetch_wait_ms: u32,
    client_debug: Option<String>,
    /// Produce with enable.idempotence=true (InitProducerId, sequence checks).
    idempotence: bool,
    /// The Kafka rows are measured once per factor, each on topics of its own.
    replication_factors: Vec<i32>,
    durabilities: Vec<&'static str>,
    minimal_client: bool,
    busy_client: bool,
}

const USAGE: &str = "usage: kafka_latency [--quick] [--samples N] [--warmup N] \
[--broker-bin PATH | --bootstrap HOST:PORT] [--cpuset LIST] [--broker-arg ARG]... \
[--fetch-wait-ms MS] [--client-debug CONTEXTS] [--idempotence] [--json PATH] \
[--replication-factor N[,N...]] [--durability direct|fsync[,...]] [--no-minimal-client] \
[--no-busy-client] [--busy-settle N]";
/// Most replication factors one run compares (each adds a set of rows).
const REPLICATION_FACTORS_MAX: usize = 4;

impl Options {
    fn parse() -> io::Result<Option<Options>> {
        let mut quick = false;
        let mut samples = None;
        let mut warmup = None;
        let mut busy_settle = None;
        let mut json_path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/kafka_latency.json"
        ));
        let mut broker_bin = None;
        let mut bootstrap = None;
        let mut cpuset = None;
        let mut broker_args = Vec::new();
        let mut fetch_wait_ms = FETCH_WAIT_MS_DEFAULT;
        let mut client_debug = None;
        let mut idempotence = false;
        let mut replication_factors = vec![1];
        let mut durabilities = DURABILITIES.to_vec();
        let mut minimal_client = true;
        let mut busy_client = true;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| other(format!("{name} needs a value\n{USAGE}")))
            };
            let number = |name: &str, v: String| {
                v.parse::<usize>()
                    .map_err(|_| other(format!("{name}: {v:?} is not a number")))
            };
            match arg.as_str() {
                "--quick" => quick = true,
                "--idempotence" => idempotence = true,
                "--samples" => samples = Some(number("--samples", value("--samples")?)?),
                "--warmup" => warmup = Some(number("--warmup", value("--warmup")?)?),
                "--busy-settle" => busy_settle = Some(number("--busy-settle", value("--busy-settle")?)?),
                "--json" => json_path = PathBuf::from(value("--json")?),
                "--broker-bin" => broker_bin = Some(PathBuf::from(value("--broker-bin")?)),
                "--bootstrap" => bootstrap = Some(value("--bootstrap")?),
                "--cpuset" => cpuset = Some(value("--cpuset")?),
                "--broker-arg" => broker_args.push(value("--broker-arg")?),
                "--fetch-wait-ms" => {
                    let v = value("--fetch-wait-ms")?;
                    fetch_wait_ms = v
                        .parse()
                        .map_err(|_| other(format!("--fetch-wait-ms: {v:?} is not a number")))?;
                }
                "--client-debug" => client_debug = Some(value("--client-debug")?),
                "--no-minimal-client" => minimal_client = false,
                "--no-busy-client" => busy_client = false,
                "--replication-factor" => {
                    let v = value("--replication-factor")?;
                    replication_factors = v
                        .split(',')
                        .map(|f| match f.parse::<i32>() {
                            Ok(n) if n >= 1 => Ok(n),
                            _ => Err(other(format!("--replication-factor: {f:?} is not a factor >= 1"))),
                        })
                        .collect::<io::Result<_>>()?;
                    if replication_factors.len() > REPLICATION_FACTORS_MAX {
                        return Err(other(format!(
                            "--replication-factor: at most {REPLICATION_FACTORS_MAX} factors"
                        )));
                    }
                }
                "--durability" => {
                    let v = value("--durability")?;
                    durabilities = v
                        .split(',')
                        .map(|d| {
                            DURABILITIES.into_iter().find(|known| *known == d).ok_or_else(|| {
                                other(format!("--durability: {d:?} is not one of {DURABILITIES:?}"))
                            })
                        })
                        .collect::<io::Result<_>>()?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                // `cargo bench` passes --bench; ignore it.
                "--bench" => {}
                other_arg => return Err(other(format!("unexpected argument {other_arg:?}\n{USAGE}"))),
            }
        }
        if bootstrap.is_some() && (broker_bin.is_some() || cpuset.is_some() || !broker_args.is_empty()) {
            return Err(other(
                "--bootstrap uses a running broker: --broker-bin, --cpuset and --broker-arg do not apply",
            ));
        }
        let samples = samples.unwrap_or(if quick { SAMPLES_QUICK } else { SAMPLES_FULL });
        if samples < BLOCKS {
            return Err(other(format!("--samples must be at least {BLOCKS}")));
        }
        Ok(Some(Options {
            quick,
            samples,
            warmup: warmup.unwrap_or(if quick { WARMUP_QUICK } else { WARMUP_FULL }),
            busy_settle: busy_settle.unwrap_or(if quick {
                BUSY_SETTLE_QUICK
            } else {
                BUSY_SETTLE_FULL
            }),
            json_path,
            broker_bin,
            bootstrap,
            cpuset,
            broker_args,
            fetch_wait_ms,
            client_debug,
            idempotence,
            replication_factors,
            durabilities,
            minimal_client,
            busy_client,
        }))
    }
}

// ---------------------------------------------------------------------------
// The broker process

/// A `ferrolog start` child process; stopped (SIGTERM, then SIGKILL after
/// [`BROKER_STOP_TIMEOUT`]) when dropped if [`Broker::stop`] was not called.
struct Broker {
    child: Child,
    addr: SocketAddr,
    /// Its admin listener, where this bench chose it.
    admin: Option<SocketAddr>,
    log_path: PathBuf,
    command_line: String,
    stopped: Option<BrokerExit>,
}

#[derive(Clone, Debug)]
struct BrokerExit {
    status: Option<ExitStatus>,
    /// It had exited on its own before the bench stopped it.
    exited_before: bool,
    killed: bool,
    stop_ms: f64,
}

impl std::fmt::Display for BrokerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.status, self.killed) {
            (_, true) => write!(
                f,
                "did not exit within {BROKER_STOP_TIMEOUT:?} of SIGTERM; killed"
            ),
            (Some(s), false) if self.exited_before => {
                write!(f, "had exited on its own before the bench stopped it ({s})")
            }
            (Some(s), false) => write!(f, "exited {s} {:.0} ms after SIGTERM", self.stop_ms),
            (None, false) => write!(f, "exit status unknown"),
        }
    }
}

/// The `ferrolog` binary next to this executable (same target dir and
/// profile), else the release build under the workspace.
fn default_broker_bin() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("ferrolog");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/ferrolog"))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_local_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Broker {
    fn start(
        bin: &Path,
        data_dir: &Path,
        log_path: &Path,
        cpuset: Option<&str>,
        extra: &[String],
    ) -> io::Result<Broker> {
        if !bin.is_file() {
            return Err(other(format!(
                "broker binary {} not found: build it with `cargo build --release -p ferrolog`, \
                 or pass --broker-bin PATH or --bootstrap HOST:PORT",
                bin.display()
            )));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_local_port()?));
        let mut args: Vec<String> = vec![
            "start".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--kafka-addr".into(),
            addr.to_string(),
        ];
        if let Some(cpuset) = cpuset {
            args.push("--cpuset".into());
            args.push(cpuset.into());
        }
        let admin = if extra.iter().any(|a| a == "--admin-addr") {
            None
        } else {
            // Leave the default admin port to a broker someone runs by hand;
            // a known one, for the /metrics read at the end.
            let admin = SocketAddr::from(([127, 0, 0, 1], free_local_port()?));
            args.extend(["--admin-addr".into(), admin.to_string()]);
            Some(admin)
        };
        args.extend(extra.iter().cloned());
        let log = std::fs::File::create(log_path)?;
        let child = Command::new(bin)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| other(format!("starting {}: {e}", bin.display())))?;
        let command_line = format!("{} {}", bin.display(), args.join(" "));
        let mut broker = Broker {
            child,
            addr,
            admin,
            log_path: log_path.to_path_buf(),
            command_line,
            stopped: None,
        };
        broker.wait_listening()?;
        Ok(broker)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the Kafka address accepts TCP connections.
    fn wait_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(other(format!(
                    "the broker exited ({status}) before listening on {}; its log:\n{}",
                    self.addr,
                    self.log_tail(BROKER_LOG_SHOWN_MAX)
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(other(format!(
                    "the broker does not accept connections on {} after {BROKER_START_TIMEOUT:?}; its log:\n{}",
                    self.addr,
                    self.log_tail(BROKER_LOG_SHOWN_MAX)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the broker has exited.
    fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(other(format!(
                "the broker exited ({status}); its log:\n{}",
                self.log_tail(BROKER_LOG_SHOWN_MAX)
            ))),
        }
    }

    /// SIGTERM, then wait up to [`BROKER_STOP_TIMEOUT`], then SIGKILL.
    fn stop(&mut self) -> BrokerExit {
        if let Some(exit) = &self.stopped {
            return exit.clone();
        }
        let start = Instant::now();
        let exit = match self.child.try_wait() {
            Ok(Some(status)) => BrokerExit {
                status: Some(status),
                exited_before: true,
                killed: false,
                stop_ms: 0.0,
            },
            _ => {
                let pid = libc::pid_t::try_from(self.pid()).unwrap_or(libc::pid_t::MAX);
                // SAFETY: kill has no memory-safety preconditions; `pid` is our
                // own child, not yet reaped (so the id is not reused).
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = start + BROKER_STOP_TIMEOUT;
                loop {
                    match self.child.try_wait() {
                        Ok(Some(status)) => {
                            break BrokerExit {
                                status: Some(status),
                                exited_before: false,
                                killed: false,
                                stop_ms: start.elapsed().as_secs_f64() * 1e3,
                            }
                        }
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        _ => {
                            let _ = self.child.kill();
                            let status = self.child.wait().ok();
                            break BrokerExit {
                                status,
                                exited_before: false,
                                killed: true,
                                stop_ms: start.elapsed().as_secs_f64() * 1e3,
                            };
                        }
                    }
                }
            }
        };
        self.stopped = Some(exit.clone());
        exit
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::File::open(&self.log_path)
            .map(|f| {
                io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .map(|l| strip_ansi(&l))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The sums over shards of the broker's counters `names` (from its
    /// /metrics), where it has an admin listener this bench knows; zero for
    /// a name it does not report.
    fn counter_totals(&self, names: &[&str]) -> Option<Vec<(String, f64)>> {
        let admin = self.admin?;
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(
            names
                .iter()
                .map(|name| {
                    let total = text
                        .lines()
                        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    (name.to_string(), total)
                })
                .collect(),
        )
    }

    /// `(partition, shard)` from the broker's "opened partition" log lines
    /// (`partition=TOPIC/0 shard=N`), in log order; empty if it logs none.
    fn partition_shards(&self) -> Vec<(String, String)> {
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        self.log_lines()
            .iter()
            .filter(|l| l.contains("opened partition"))
            .filter_map(|l| Some((field(l, "partition=")?, field(l, "shard=")?)))
            .collect()
    }

    fn log_problems(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .collect()
    }
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// The floor: loopback TCP round trip

/// An echo server on 127.0.0.1 (one thread, one connection) and its client.
struct Loopback {
    client: TcpStream,
    buf: Vec<u8>,
    server: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Loopback {
    fn start() -> io::Result<Loopback> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server =
            std::thread::Builder::new()
                .name("loopback-echo".into())
                .spawn(move || -> io::Result<()> {
                    let (mut s, _) = listener.accept()?;
                    s.set_nodelay(true)?;
                    let mut buf = vec![0u8; VALUE_BYTES];
                    loop {
                        match s.read_exact(&mut buf) {
                            Ok(()) => s.write_all(&buf)?,
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                })?;
        let client = TcpStream::connect(addr)?;
        client.set_nodelay(true)?;
        let buf = (0..VALUE_BYTES).map(|i| (i % 251) as u8).collect();
        Ok(Loopback {
            client,
            buf,
            server: Some(server),
        })
    }

    fn round_trip(&mut self) -> io::Result<Duration> {
        let start = Instant::now();
        self.client.write_all(&self.buf)?;
        self.client.read_exact(&mut self.buf)?;
        Ok(start.elapsed())
    }

    fn finish(mut self) -> io::Result<()> {
        self.client.shutdown(std::net::Shutdown::Both)?;
        match self.server.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(other("the loopback echo thread panicked")),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Kafka clients

/// librdkafka callbacks: warnings and errors go to stderr (the first
/// [`CLIENT_LOG_PRINTED_MAX`] of them) and into the report.
struct BenchContext {
    role: &'static str,
    verbose: bool,
    count: AtomicUsize,
    kept: Mutex<Vec<String>>,
}

impl BenchContext {
    fn new(role: &'static str, verbose: bool) -> BenchContext {
        BenchContext {
            role,
            verbose,
            count: AtomicUsize::new(0),
            kept: Mutex::new(Vec::new()),
        }
    }

    fn problem(&self, line: String) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if n < CLIENT_LOG_PRINTED_MAX {
            eprintln!("{line}");
        } else if n == CLIENT_LOG_PRINTED_MAX {
            eprintln!("[client] (further client warnings are only counted)");
        }
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() < CLIENT_LOG_KEPT_MAX {
                kept.push(line);
            }
        }
    }

    fn problems(&self) -> (usize, Vec<String>) {
        let kept = self.kept.lock().map(|k| k.clone()).unwrap_or_default();
        (self.count.load(Ordering::Relaxed), kept)
    }
}

impl ClientContext for BenchContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if serious {
            self.problem(format!("[{} {level:?}] {fac}: {log_message}", self.role));
        } else if self.verbose {
            eprintln!("[{} {level:?}] {fac}: {log_message}", self.role);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.problem(format!("[{} error] {error}: {reason}", self.role));
    }
}

impl ConsumerContext for BenchContext {}

impl ProducerContext for BenchContext {
    /// The message's sequence number.
    type DeliveryOpaque = usize;

    /// Not called: [`KafkaProducer`] takes delivery reports off the main
    /// queue itself (see there).
    fn delivery(&self, _: &DeliveryResult<'_>, _: usize) {}
}

fn client_config(bootstrap: &str, debug: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "ferrolog-kafka-latency")
        .set("socket.nagle.disable", "true");
    if let Some(contexts) = debug {
        c.set("debug", contexts);
        c.set_log_level(RDKafkaLogLevel::Debug);
    }
    c
}

/// librdkafka's syslog-style level number as the crate's enum.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        i32::MIN..=0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// A `BaseProducer` whose delivery reports are taken off librdkafka's main
/// queue directly.
///
/// `BaseProducer::poll(timeout)` keeps polling until the whole timeout has
/// passed, even after a delivery report arrived, so waiting for one report
/// would cost a full timeout; a background polling thread (`ThreadedProducer`,
/// `FutureProducer`) would add a thread hand-off to every sample. Polling the
/// main queue here returns as soon as the report is there, on this thread.
struct KafkaProducer {
    inner: BaseProducer<BenchContext>,
    main_queue: *mut rdsys::rd_kafka_queue_t,
}

/// What one delivery report said.
struct Delivery {
    seq: usize,
    result: Result<i64, String>,
}

impl KafkaProducer {
    fn new(bootstrap: &str, debug: Option<&str>, idempotence: bool) -> io::Result<KafkaProducer> {
        let mut c = client_config(bootstrap, debug);
        c.set("acks", "all")
            .set("linger.ms", "0")
            .set("enable.idempotence", idempotence.to_string())
            .set("compression.type", "none")
            .set("message.timeout.ms", CLIENT_MESSAGE_TIMEOUT_MS.to_string());
        let inner: BaseProducer<BenchContext> = c
            .create_with_context(BenchContext::new("producer", debug.is_some()))
            .map_err(|e| other(format!("creating the producer: {e}")))?;
        // SAFETY: the client pointer is valid while `inner` lives; the queue
        // reference is released in `Drop`, before `inner` is dropped.
        let main_queue = unsafe { rdsys::rd_kafka_queue_get_main(inner.client().native_ptr()) };
        if main_queue.is_null() {
            return Err(other("librdkafka returned no main queue"));
        }
        Ok(KafkaProducer { inner, main_queue })
    }

    /// Enqueues one message for partition 0 of `topic`.
    fn send(&self, topic: &str, seq: usize, value: &[u8]) -> Result<(), String> {
        self.inner
            .send(
                BaseRecord::<(), [u8], usize>::with_opaque_to(topic, seq)
                    .partition(0)
                    .payload(value),
            )
            .map_err(|(e, _)| format!("send to {topic}: {e}"))
    }

    /// Waits for the delivery report of message `seq`; returns its offset.
    /// Reports of other messages (none are expected) are skipped.
    fn wait_delivery(&self, seq: usize, topic: &str) -> Result<i64, String> {
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no delivery report for message {seq} on {topic} within {MESSAGE_TIMEOUT:?}"
                ));
            }
            let slice_ms = left.as_millis().clamp(1, 100) as i32;
            for d in self.poll_events(slice_ms) {
                if d.seq == seq {
                    return d.result.map_err(|e| format!("message {seq} on {topic}: {e}"));
                }
            }
        }
    }

    /// Serves one event of the main queue (waiting up to `timeout_ms` for it)
    /// and returns the delivery reports it held.
    fn poll_events(&self, timeout_ms: i32) -> Vec<Delivery> {
        let mut out = Vec::new();
        // SAFETY: `main_queue` is a valid queue reference (see `new`); the
        // event is destroyed below and nothing borrowed from it outlives that.
        unsafe {
            let ev = rdsys::rd_kafka_queue_poll(self.main_queue, timeout_ms);
            if ev.is_null() {
                return out;
            }
            match rdsys::rd_kafka_event_type(ev) {
                rdsys::RD_KAFKA_EVENT_DR => loop {
                    let msg = rdsys::rd_kafka_event_message_next(ev);
                    if msg.is_null() {
                        break;
                    }
                    let m = &*msg;
                    // The opaque is the sequence number, stored as a pointer
                    // value by `BaseRecord::with_opaque_to` (no allocation).
                    let seq = m._private as usize;
                    let result = if m.err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                        Ok(m.offset)
                    } else {
                        Err(format!("delivery failed: {}", RDKafkaErrorCode::from(m.err)))
                    };
                    out.push(Delivery { seq, result });
                },
                rdsys::RD_KAFKA_EVENT_LOG => {
                    let (mut fac, mut text, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                    if rdsys::rd_kafka_event_log(ev, &mut fac, &mut text, &mut level) == 0 {
                        let fac = CStr::from_ptr(fac).to_string_lossy();
                        let text = CStr::from_ptr(text).to_string_lossy();
                        self.inner
                            .context()
                            .log(log_level(level), fac.trim(), text.trim());
                    }
                }
                rdsys::RD_KAFKA_EVENT_ERROR => {
                    let code = RDKafkaErrorCode::from(rdsys::rd_kafka_event_error(ev));
                    let reason = CStr::from_ptr(rdsys::rd_kafka_event_error_string(ev))
                        .to_string_lossy()
                        .into_owned();
                    self.inner
                        .context()
                        .error(KafkaError::Global(code), reason.trim());
                }
                _ => {}
            }
            rdsys::rd_kafka_event_destroy(ev);
        }
        out
    }

    /// Waits for the delivery report of message `seq` by polling the queue
    /// without blocking, in a loop: a client that keeps its core busy.
    fn wait_delivery_busy(&self, seq: usize, topic: &str) -> Result<i64, String> {
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        loop {
            for d in self.poll_events(0) {
                if d.seq == seq {
                    return d.result.map_err(|e| format!("message {seq} on {topic}: {e}"));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no delivery report for message {seq} on {topic} within {MESSAGE_TIMEOUT:?}"
                ));
            }
            std::hint::spin_loop();
        }
    }

    /// Sends one message and busy-polls for its delivery report.
    fn produce_busy(&self, topic: &str, seq: usize, value: &mut [u8]) -> Result<Duration, String> {
        stamp(value, seq);
        let start = Instant::now();
        self.send(topic, seq, value)?;
        self.wait_delivery_busy(seq, topic)?;
        Ok(start.elapsed())
    }

    /// Sends one message and waits for its delivery report.
    fn produce(&self, topic: &str, seq: usize, value: &mut [u8]) -> Result<Duration, String> {
        stamp(value, seq);
        let start = Instant::now();
        self.send(topic, seq, value)?;
        self.wait_delivery(seq, topic)?;
        Ok(start.elapsed())
    }

    /// The broker answers a Metadata request for all topics.
    fn check_metadata(&self) -> Result<(), String> {
        let result = self.inner.client().fetch_metadata(None, ADMIN_TIMEOUT);
        // Serve what the client logged meanwhile (connection errors).
        while self.main_queue_len() > 0 {
            self.poll_events(0);
        }
        match result {
            Ok(md) if !md.brokers().is_empty() => Ok(()),
            Ok(_) => Err("Metadata: the broker listed no brokers".into()),
            Err(e) => Err(format!("Metadata request failed: {e}")),
        }
    }

    fn main_queue_len(&self) -> usize {
        // SAFETY: `main_queue` is a valid queue reference (see `new`).
        unsafe { rdsys::rd_kafka_queue_length(self.main_queue) }
    }

    /// Partition 0 of `topic` has a leader in the metadata.
    fn wait_leader(&self, topic: &str) -> Result<(), String> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self
                .inner
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
            {
                Ok(md) => {
                    let p0 = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .and_then(|t| t.partitions().iter().find(|p| p.id() == 0));
                    match p0 {
                        Some(p) if p.leader() >= 0 && p.error().is_none() => return Ok(()),
                        Some(p) => last = format!("partition 0 leader {} error {:?}", p.leader(), p.error()),
                        None => last = "topic or partition 0 missing from metadata".into(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{topic}: no leader for partition 0 within {ADMIN_TIMEOUT:?} ({last})"
        ))
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        // SAFETY: obtained from `rd_kafka_queue_get_main` in `new`, released
        // once, before the client (`inner`) is destroyed.
        unsafe { rdsys::rd_kafka_queue_destroy(self.main_queue) };
    }
}

/// Writes the sequence number into the first 8 bytes of a value.
fn stamp(value: &mut [u8], seq: usize) {
    value[..8].copy_from_slice(&(seq as u64).to_le_bytes());
}

fn stamped_seq(value: &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
    usize::try_from(u64::from_le_bytes(bytes)).ok()
}

fn new_consumer(
    bootstrap: &str,
    debug: Option<&str>,
    fetch_wait_ms: u32,
    group: &str,
) -> io::Result<BaseConsumer<BenchContext>> {
    let mut c = client_config(bootstrap, debug);
    // librdkafka's assign() needs a group id, but nothing here joins the
    // group or commits: partitions are assigned by hand.
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.min.bytes", "1");
    c.create_with_context(BenchContext::new("consumer", debug.is_some()))
        .map_err(|e| other(format!("creating the consumer: {e}")))
}

/// Waits until the consumer returns message `seq` of `topic`; returns when.
fn receive(
    consumer: &BaseConsumer<BenchContext>,
    topic: &str,
    seq: usize,
    stray: &mut u64,
) -> Result<Instant, String> {
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the consumer did not receive message {seq} of {topic} within {MESSAGE_TIMEOUT:?}"
            ));
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            None => {}
            Some(Err(e)) => consumer.context().problem(format!("[consumer poll] {e}")),
            Some(Ok(m)) => {
                let at = Instant::now();
                if m.topic() == topic && m.payload().and_then(stamped_seq) == Some(seq) {
                    if m.payload().map(<[u8]>::len) != Some(VALUE_BYTES) {
                        return Err(format!(
                            "message {seq} of {topic} came back with {:?} bytes, sent {VALUE_BYTES}",
                            m.payload().map(<[u8]>::len)
                        ));
                    }
                    return Ok(at);
                }
                *stray += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The minimal wire client (diagnostic)

/// Produce version the minimal client speaks (the last non-flexible one).
const RAW_PRODUCE_VERSION: i16 = 8;
/// Largest response the minimal client accepts.
const RAW_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// One blocking TCP connection that sends ProduceRequests (acks=-1) holding
/// one prebuilt batch and waits for each response: no client library, no
/// thread hand-offs.
struct RawProducer {
    stream: TcpStream,
    correlation_id: i32,
    batch: Bytes,
    request: BytesMut,
    response: Vec<u8>,
}

impl RawProducer {
    fn connect(bootstrap: &str) -> io::Result<RawProducer> {
        let stream = TcpStream::connect(bootstrap)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        // One record with a 1 KiB value (and a 2-byte key), as in the librdkafka rows.
        let batch = make_batch(1, VALUE_BYTES, 0);
        Ok(RawProducer {
            stream,
            correlation_id: 0,
            batch,
            request: BytesMut::with_capacity(2 * VALUE_BYTES),
            response: Vec::with_capacity(256),
        })
    }

    /// Sends one ProduceRequest and waits for its response; the time covers
    /// the socket write to the end of the response read (encoding and
    /// decoding are outside it).
    fn produce(&mut self, topic: &str) -> io::Result<Duration> {
        let v = RAW_PRODUCE_VERSION;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        ProduceFrame {
            version: v,
            correlation_id: self.correlation_id,
            client_id: "ferrolog-kafka-latency-raw",
            acks: -1,
            timeout_ms: i32::try_from(CLIENT_MESSAGE_TIMEOUT_MS).unwrap_or(i32::MAX),
            topic,
            partition: 0,
            records: self.batch.clone(),
        }
        .encode(&mut self.request)?;
        let buf = &self.request;

        let start = Instant::now();
        self.stream.write_all(buf)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = u32::from_be_bytes(size) as usize;
        if size > RAW_RESPONSE_BYTES_MAX {
            return Err(other(format!("a ProduceResponse of {size} bytes")));
        }
        self.response.resize(size, 0);
        self.stream.read_exact(&mut self.response)?;
        let elapsed = start.elapsed();

        let answer = produce_answer(&self.response, v)?;
        if answer.correlation_id != self.correlation_id {
            return Err(other(format!(
                "ProduceResponse correlation id {} for request {}",
                answer.correlation_id, self.correlation_id
            )));
        }
        if answer.error_code != 0 {
            return Err(other(format!(
                "raw produce to {topic}: error code {} ({:?})",
                answer.error_code, answer.error_message
            )));
        }
        Ok(elapsed)
    }
}

// ---------------------------------------------------------------------------
// Measurement

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Floor,
    Produce,
    /// Produce, the client busy-polling for the delivery report.
    ProduceBusy,
    EndToEnd,
    /// Produce through [`RawProducer`] (diagnostic).
    RawProduce,
}

/// CPU time over the blocks of one case.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    wall_s: f64,
    own_s: f64,
    broker_s: Option<f64>,
    machine_s: f64,
}

#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    own_s: f64,
    broker_s: Option<f64>,
    machine_s: f64,
}

impl CpuMark {
    fn now(broker_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            own_s: own_cpu_seconds(),
            broker_s: broker_pid.and_then(process_cpu_seconds),
            machine_s: machine_busy_seconds().unwrap_or(0.0),
        }
    }
}

impl CpuUse {
    fn add(&mut self, from: CpuMark, to: CpuMark) {
        self.wall_s += to.at.duration_since(from.at).as_secs_f64();
        self.own_s += to.own_s - from.own_s;
        self.machine_s += to.machine_s - from.machine_s;
        self.broker_s = match (from.broker_s, to.broker_s) {
            (Some(a), Some(b)) => Some(self.broker_s.unwrap_or(0.0) + (b - a)),
            _ => None,
        };
    }

    /// Cores used by this process (bench thread and librdkafka threads).
    fn client_cores(&self) -> f64 {
        self.own_s / self.wall_s.max(1e-9)
    }

    fn broker_cores(&self) -> Option<f64> {
        self.broker_s.map(|b| b / self.wall_s.max(1e-9))
    }

    /// Cores used by everything else (other processes, kernel threads).
    fn other_cores(&self) -> f64 {
        ((self.machine_s - self.own_s - self.broker_s.unwrap_or(0.0)) / self.wall_s.max(1e-9)).max(0.0)
    }
}

struct Case {
    kind: Kind,
    durability: Option<&'static str>,
    /// Replication factor of the topic; named in the row only when the run
    /// compares factors (`show_factor`).
    replication_factor: i32,
    show_factor: bool,
    topic: String,
    hist: Histogram<u64>,
    /// The busy-polling client's unmeasured first samples of each block.
    settle: Histogram<u64>,
    cpu: CpuUse,
}

impl Case {
    /// The case has a topic of its own (the minimal client reuses the
    /// produce topics).
    fn creates_topic(&self) -> bool {
        matches!(self.kind, Kind::Produce | Kind::EndToEnd)
    }

    fn name(&self) -> String {
        let name = self.base_name();
        if self.show_factor && self.kind != Kind::Floor {
            format!("{name}, RF={}", self.replication_factor)
        } else {
            name
        }
    }

    fn base_name(&self) -> String {
        match (self.kind, self.durability) {
            (Kind::Floor, _) => "loopback TCP round trip, 1 KiB [FLOOR]".into(),
            (Kind::Produce, Some(d)) => format!("produce, acks=all, durability={d}"),
            (Kind::ProduceBusy, Some(d)) => format!("produce, acks=all, busy-polling client, {d}"),
            (Kind::EndToEnd, Some(d)) => format!("end-to-end (produce -> fetch), {d}"),
            (Kind::RawProduce, Some(d)) => format!("(info) produce, minimal client, {d}"),
            _ => unreachable!("a Kafka case without a durability"),
        }
    }
}

struct Clients {
    producer: KafkaProducer,
    consumer: BaseConsumer<BenchContext>,
    raw: RawProducer,
    value: Vec<u8>,
    next_seq: usize,
    stray: u64,
}

impl Clients {
    fn sample(&mut self, kind: Kind, topic: &str) -> io::Result<Duration> {
        let seq = self.next_seq;
        self.next_seq += 1;
        match kind {
            Kind::Floor => unreachable!("the floor has no Kafka client"),
            Kind::Produce => self.producer.produce(topic, seq, &mut self.value).map_err(other),
            Kind::ProduceBusy => self
                .producer
                .produce_busy(topic, seq, &mut self.value)
                .map_err(other),
            Kind::RawProduce => self.raw.produce(topic),
            Kind::EndToEnd => {
                stamp(&mut self.value, seq);
                let start = Instant::now();
                self.producer.send(topic, seq, &self.value).map_err(other)?;
                let arrived = receive(&self.consumer, topic, seq, &mut self.stray).map_err(other)?;
                self.producer.wait_delivery(seq, topic).map_err(other)?;
                Ok(arrived.duration_since(start))
            }
        }
    }
}

/// One Kafka sample; when it fails, a broker that died explains the failure best.
fn sample_checked(
    clients: &mut Clients,
    broker: &mut Option<Broker>,
    kind: Kind,
    topic: &str,
) -> io::Result<Duration> {
    clients
        .sample(kind, topic)
        .map_err(|e| match broker.as_mut().map(Broker::check_alive) {
            Some(Err(dead)) => other(format!("{e}\n{dead}")),
            _ => e,
        })
}

struct Report {
    cases: Vec<Case>,
    floor_p99_us: f64,
    client_problems: (usize, Vec<String>),
    stray_messages: u64,
    load_before: f64,
    load_after: f64,
    total_cpu: CpuUse,
}

fn run(opts: &Options, bootstrap: &str, broker: &mut Option<Broker>, run_id: &str) -> io::Result<Report> {
    let load_before = load_average();
    let broker_pid = broker.as_ref().map(Broker::pid);
    let debug = opts.client_debug.as_deref();

    // Topics: one pair for produce latency, one pair read by the consumer, so
    // the produce cases run without a consumer fetching the same partition
    // and the consumer never has a backlog to skip.
    let show_factor = opts.replication_factors != [1];
    let mut cases = vec![Case {
        kind: Kind::Floor,
        durability: None,
        replication_factor: 1,
        show_factor,
        topic: String::new(),
        hist: new_histogram(),
        settle: new_histogram(),
        cpu: CpuUse::default(),
    }];
    let mut kinds = vec![Kind::Produce];
    if opts.busy_client {
        kinds.push(Kind::ProduceBusy);
    }
    kinds.push(Kind::EndToEnd);
    if opts.minimal_client {
        kinds.push(Kind::RawProduce);
    }
    for kind in kinds {
        for &d in &opts.durabilities {
            for &rf in &opts.replication_factors {
                // The minimal client appends to the produce topics.
                let prefix = if kind == Kind::EndToEnd { "e2e" } else { "produce" };
                cases.push(Case {
                    kind,
                    durability: Some(d),
                    replication_factor: rf,
                    show_factor,
                    topic: format!("kafka-latency-{prefix}-{d}-rf{rf}-{run_id}"),
                    hist: new_histogram(),
                    settle: new_histogram(),
                    cpu: CpuUse::default(),
                });
            }
        }
    }

    // The producer first: its event queue is served here, so librdkafka's
    // connection errors show if the broker does not answer.
    let producer = KafkaProducer::new(bootstrap, debug, opts.idempotence)?;
    producer.check_metadata().map_err(other)?;

    eprintln!("creating topics through the admin client");
    let admin: AdminClient<BenchContext> = client_config(bootstrap, debug)
        .create_with_context(BenchContext::new("admin", debug.is_some()))
        .map_err(|e| other(format!("creating the admin client: {e}")))?;
    let new_topics: Vec<NewTopic<'_>> = cases
        .iter()
        .filter(|c| c.creates_topic())
        .filter_map(|c| {
            c.durability.map(|d| {
                NewTopic::new(&c.topic, 1, TopicReplication::Fixed(c.replication_factor))
                    .set(DURABILITY_CONFIG, d)
            })
        })
        .collect();
    let admin_opts = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = futures_lite::future::block_on(admin.create_topics(&new_topics, &admin_opts))
        .map_err(|e| other(format!("CreateTopics failed: {e}")))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("topic {name} exists already; using it")
            }
            Err((name, code)) => return Err(other(format!("CreateTopics {name}: {code}"))),
        }
    }

    for c in cases.iter().filter(|c| c.creates_topic()) {
        producer.wait_leader(&c.topic).map_err(other)?;
    }

    // The consumer reads the e2e topics from their current end.
    let consumer = new_consumer(
        bootstrap,
        debug,
        opts.fetch_wait_ms,
        &format!("kafka-latency-{run_id}"),
    )?;
    let mut tpl = TopicPartitionList::new();
    for c in cases.iter().filter(|c| c.kind == Kind::EndToEnd) {
        let offset = match consumer.fetch_watermarks(&c.topic, 0, ADMIN_TIMEOUT) {
            Ok((_, high)) => Offset::Offset(high),
            Err(e) => {
                eprintln!(
                    "ListOffsets for {} failed ({e}); assigning at the logical end",
                    c.topic
                );
                Offset::End
            }
        };
        tpl.add_partition_offset(&c.topic, 0, offset)
            .map_err(|e| other(format!("assign {}: {e}", c.topic)))?;
    }
    consumer.assign(&tpl).map_err(|e| other(format!("assign: {e}")))?;

    let raw = RawProducer::connect(bootstrap)?;
    let mut clients = Clients {
        raw,
        producer,
        consumer,
        value: (0..VALUE_BYTES).map(|i| (i % 251) as u8).collect(),
        next_seq: 0,
        stray: 0,
    };
    let mut loopback = Loopback::start()?;

    eprintln!("warm-up: {} of each case", opts.warmup);
    for c in &cases {
        for _ in 0..opts.warmup {
            match c.kind {
                Kind::Floor => {
                    loopback.round_trip()?;
                }
                kind => {
                    clients.sample(kind, &c.topic)?;
                }
            }
        }
    }

    let total_start = CpuMark::now(broker_pid);
    for block in 0..BLOCKS {
        let n = opts.samples / BLOCKS + usize::from(block < opts.samples % BLOCKS);
        for c in cases.iter_mut() {
            if let Some(b) = broker.as_mut() {
                b.check_alive()?;
            }
            let settle = if c.kind == Kind::ProduceBusy {
                opts.busy_settle
            } else {
                0
            };
            for _ in 0..settle {
                let d = sample_checked(&mut clients, broker, c.kind, &c.topic)?;
                record(&mut c.settle, d);
            }
            let from = CpuMark::now(broker_pid);
            for _ in 0..n {
                let d = match c.kind {
                    Kind::Floor => loopback.round_trip()?,
                    kind => sample_checked(&mut clients, broker, kind, &c.topic)?,
                };
                record(&mut c.hist, d);
            }
            c.cpu.add(from, CpuMark::now(broker_pid));
        }
        eprintln!("block {}/{BLOCKS} done", block + 1);
    }
    let mut total_cpu = CpuUse::default();
    total_cpu.add(total_start, CpuMark::now(broker_pid));
    loopback.finish()?;

    // Leave nothing behind on a broker we did not start.
    if broker.is_none() {
        let names: Vec<&str> = cases
            .iter()
            .filter(|c| c.creates_topic())
            .map(|c| c.topic.as_str())
            .collect();
        match futures_lite::future::block_on(admin.delete_topics(&names, &admin_opts)) {
            Ok(results) => {
                for r in results {
                    if let Err((name, code)) = r {
                        eprintln!("could not delete topic {name}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("could not delete the bench topics: {e}"),
        }
    }

    let mut problems = admin.inner().context().problems();
    for ctx in [clients.producer.inner.context(), clients.consumer.context()] {
        let (n, lines) = ctx.problems();
        problems.0 += n;
        problems.1.extend(lines);
    }
    let floor_p99_us = Latency::from_histogram(&cases[0].hist).p99_us;
    Ok(Report {
        cases,
        floor_p99_us,
        client_problems: problems,
        stray_messages: clients.stray,
        load_before,
        load_after: load_average(),
        total_cpu,
    })
}

// ---------------------------------------------------------------------------
// Output

fn cores(v: Option<f64>) -> String {
    v.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into())
}

fn print_report(r: &Report, header: &[String]) {
    println!();
    for line in header {
        println!("{line}");
    }
    println!();
    println!("Latency, one 1 KiB message in flight (µs)");
    println!(
        "| {:<46} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>11} | {:>10} | {:>10} | {:>9} |",
        "measurement",
        "p50",
        "p99",
        "p99.9",
        "max",
        "samples",
        "p99 / floor",
        "broker CPU",
        "client CPU",
        "other CPU"
    );
    println!(
        "|{:-<48}|{:->10}|{:->10}|{:->10}|{:->10}|{:->9}|{:->13}|{:->12}|{:->12}|{:->11}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for c in &r.cases {
        let l = Latency::from_histogram(&c.hist);
        let ratio = if c.kind == Kind::Floor {
            "-".to_string()
        } else {
            format!("{:.2}x", l.p99_us / r.floor_p99_us)
        };
        println!(
            "| {:<46} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>11} | {:>10} | {:>10.2} | {:>9.2} |",
            c.name(),
            fmt_us(l.p50_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            l.samples,
            ratio,
            cores(c.cpu.broker_cores()),
            c.cpu.client_cores(),
            c.cpu.other_cores()
        );
    }
    println!(
        "(p99 / floor = p99 / loopback RTT p99 {:.1} µs; every row measured in {BLOCKS} interleaved blocks;",
        r.floor_p99_us
    );
    println!(" CPU columns in cores over the row's blocks: broker = the ferrolog process, client = this");
    println!(" process (bench thread + librdkafka threads; during the floor rows the echo thread), other = the rest;");
    println!(" (info) minimal client = ProduceRequest v8 on one blocking socket, no client library:");
    println!(" librdkafka row minus this row ~ the client's own share (its threads and queues))");
    for c in r.cases.iter().filter(|c| !c.settle.is_empty()) {
        let l = Latency::from_histogram(&c.settle);
        let slow = c.settle.len() - c.settle.count_between(0, 1_000_000);
        println!(
            "{}: the first {} samples of each block, not in the row: p50 {} / p99 {} / max {} µs, \
             {slow} of {} over 1 ms",
            c.name(),
            l.samples / BLOCKS as u64,
            fmt_us(l.p50_us),
            fmt_us(l.p99_us),
            fmt_us(l.max_us),
            l.samples
        );
    }
    let (n, _) = &r.client_problems;
    if *n > 0 {
        println!("client warnings/errors logged by librdkafka: {n} (first ones on stderr and in the JSON)");
    }
    if r.stray_messages > 0 {
        println!(
            "consumer: {} messages received that were not the one awaited",
            r.stray_messages
        );
    }
}

fn report_json(r: &Report, meta: Vec<(&str, Json)>) -> Json {
    let mut fields: Vec<(String, Json)> = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    fields.push(("load_average_before".into(), Json::Num(r.load_before)));
    fields.push(("load_average_after".into(), Json::Num(r.load_after)));
    fields.push((
        "broker_cpu_cores_whole_run".into(),
        r.total_cpu.broker_cores().map_or(Json::Null, Json::Num),
    ));
    fields.push((
        "client_cpu_cores_whole_run".into(),
        Json::Num(r.total_cpu.client_cores()),
    ));
    fields.push((
        "other_cpu_cores_whole_run".into(),
        Json::Num(r.total_cpu.other_cores()),
    ));
    fields.push(("floor_p99_us".into(), Json::Num(r.floor_p99_us)));
    fields.push((
        "cases".into(),
        Json::Arr(
            r.cases
                .iter()
                .map(|c| {
                    let l = Latency::from_histogram(&c.hist);
                    Json::obj([
                        (
                            "kind",
                            Json::str(match c.kind {
                                Kind::Floor => "loopback_rtt",
                                Kind::Produce => "produce",
                                Kind::ProduceBusy => "produce_busy_client",
                                Kind::EndToEnd => "end_to_end",
                                Kind::RawProduce => "produce_minimal_client",
                            }),
                        ),
                        ("name", Json::str(c.name())),
                        ("durability", c.durability.map_or(Json::Null, Json::str)),
                        (
                            "replication_factor",
                            if c.kind == Kind::Floor {
                                Json::Null
                            } else {
                                Json::Num(f64::from(c.replication_factor))
                            },
                        ),
                        (
                            "topic",
                            if c.topic.is_empty() {
                                Json::Null
                            } else {
                                Json::str(&c.topic)
                            },
                        ),
                        ("latency", l.into()),
                        (
                            "unmeasured_first_samples_latency",
                            if c.settle.is_empty() {
                                Json::Null
                            } else {
                                Latency::from_histogram(&c.settle).into()
                            },
                        ),
                        (
                            "p99_ratio_to_floor",
                            if c.kind == Kind::Floor {
                                Json::Null
                            } else {
                                Json::Num(l.p99_us / r.floor_p99_us)
                            },
                        ),
                        (
                            "broker_cpu_cores",
                            c.cpu.broker_cores().map_or(Json::Null, Json::Num),
                        ),
                        ("client_cpu_cores", Json::Num(c.cpu.client_cores())),
                        ("other_cpu_cores", Json::Num(c.cpu.other_cores())),
                    ])
                })
                .collect(),
        ),
    ));
    fields.push((
        "client_problem_count".into(),
        Json::Num(r.client_problems.0 as f64),
    ));
    fields.push((
        "client_problems".into(),
        Json::Arr(r.client_problems.1.iter().map(Json::str).collect()),
    ));
    fields.push(("stray_messages".into(), Json::Num(r.stray_messages as f64)));
    Json::Obj(fields)
}

fn main() -> std::process::ExitCode {
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka_latency: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> io::Result<()> {
    let Some(opts) = Options::parse()? else {
        return Ok(());
    };
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let (version_n, version) = rdkafka::util::get_rdkafka_version();
    let mut header = vec![format!(
        "kafka_latency ({} mode): librdkafka {version} ({version_n:#x}), {VALUE_BYTES} B values, acks=all, \
         linger.ms=0, one message in flight, fetch.wait.max.ms={}, {} samples per row + {} warm-up, \
         busy-polling blocks start with {} unmeasured samples",
        if opts.quick { "quick" } else { "full" },
        opts.fetch_wait_ms,
        opts.samples,
        opts.warmup,
        opts.busy_settle
    )];

    let tmp = bench_dir()?;
    let mut broker = None;
    let mut meta_broker: Vec<(&str, Json)> = Vec::new();
    let bootstrap = match &opts.bootstrap {
        Some(b) => {
            let addr = b
                .to_socket_addrs()
                .map_err(|e| other(format!("--bootstrap {b}: {e}")))?
                .next()
                .ok_or_else(|| other(format!("--bootstrap {b}: no address")))?;
            header.push(format!("broker: already running at {b} ({addr})"));
            meta_broker.push(("broker_started", Json::Bool(false)));
            b.clone()
        }
        None => {
            let bin = opts.broker_bin.clone().unwrap_or_else(default_broker_bin);
            let data_dir = tmp.path().join("data");
            std::fs::create_dir_all(&data_dir)?;
            let fs = fs_description(&data_dir);
            let log_path = tmp.path().join("broker.log");
            eprintln!("starting the broker: {}", bin.display());
            let b = Broker::start(
                &bin,
                &data_dir,
                &log_path,
                opts.cpuset.as_deref(),
                &opts.broker_args,
            )?;
            header.push(format!("broker: {}", b.command_line));
            header.push(format!(
                "        data in {} ({fs}), cpuset {}",
                data_dir.display(),
                opts.cpuset.as_deref().unwrap_or("not set (all cores)")
            ));
            meta_broker.push(("broker_started", Json::Bool(true)));
            meta_broker.push(("broker_command", Json::str(&b.command_line)));
            meta_broker.push(("data_dir_file_system", Json::str(fs)));
            meta_broker.push((
                "broker_cpuset",
                opts.cpuset.as_deref().map_or(Json::Null, Json::str),
            ));
            let addr = b.addr.to_string();
            broker = Some(b);
            addr
        }
    };
    for line in &header {
        eprintln!("{line}");
    }

    let result = run(&opts, &bootstrap, &mut broker, &run_id);

    // Stop the broker and keep its log, whatever happened.
    let broker_log_path = opts.json_path.with_extension("broker.log");
    let mut broker_exit = None;
    let mut broker_problems = Vec::new();
    let mut shards = Vec::new();
    let mut counters = None;
    if let Some(b) = broker.as_mut() {
        counters = b.counter_totals(&[
            "ferrolog_cross_shard_calls_sent_total",
            "ferrolog_connections_accepted_total",
            "ferrolog_connections_moved_out_total",
        ]);
        let exit = b.stop();
        if let Some(parent) = broker_log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::copy(&b.log_path, &broker_log_path);
        broker_problems = b.log_problems();
        shards = b.partition_shards();
        broker_exit = Some(exit);
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if let (Some(b), Some(exit)) = (broker.as_ref(), &broker_exit) {
                eprintln!(
                    "broker {exit}; last lines of its log ({}):",
                    broker_log_path.display()
                );
                eprintln!("{}", b.log_tail(BROKER_LOG_SHOWN_MAX));
            }
            return Err(e);
        }
    };

    print_report(&report, &header);
    if let Some(exit) = &broker_exit {
        println!(
            "broker {exit}; {} WARN/ERROR lines in its log",
            broker_problems.len()
        );
        for line in broker_problems.iter().take(BROKER_LOG_SHOWN_MAX) {
            println!("  {line}");
        }
        if !shards.is_empty() {
            let list: Vec<String> = shards.iter().map(|(p, s)| format!("{p} on shard {s}")).collect();
            println!("partitions (broker log): {}", list.join(", "));
        }
        if let Some(c) = &counters {
            let list: Vec<String> = c.iter().map(|(n, v)| format!("{n} {v}")).collect();
            println!("broker counters at the end (all shards): {}", list.join(", "));
        }
        println!("broker log: {}", broker_log_path.display());
    }

    let mut meta = vec![
        ("mode", Json::str(if opts.quick { "quick" } else { "full" })),
        ("idempotence", Json::Bool(opts.idempotence)),
        (
            "replication_factors",
            Json::Arr(
                opts.replication_factors
                    .iter()
                    .map(|&rf| Json::Num(f64::from(rf)))
                    .collect(),
            ),
        ),
        ("librdkafka_version", Json::str(version)),
        ("bootstrap", Json::str(&bootstrap)),
        ("value_bytes", Json::Num(VALUE_BYTES as f64)),
        ("samples_per_case", Json::Num(opts.samples as f64)),
        ("warmup_per_case", Json::Num(opts.warmup as f64)),
        ("busy_settle_per_block", Json::Num(opts.busy_settle as f64)),
        ("blocks", Json::Num(BLOCKS as f64)),
        ("fetch_wait_max_ms", Json::Num(f64::from(opts.fetch_wait_ms))),
        (
            "unix_time",
            Json::Num(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            ),
        ),
    ];
    meta.extend(meta_broker);
    if let Some(exit) = &broker_exit {
        meta.push(("broker_exit", Json::str(exit.to_string())));
        meta.push((
            "broker_exit_clean",
            Json::Bool(!exit.killed && exit.status.is_some_and(|s| s.success())),
        ));
        if let Some(c) = &counters {
            meta.push((
                "broker_counters",
                Json::obj(c.iter().map(|(n, v)| (n.clone(), Json::Num(*v)))),
            ));
        }
        meta.push((
            "partition_shards",
            Json::obj(shards.iter().map(|(p, s)| (p.clone(), Json::str(s)))),
        ));
        meta.push((
            "broker_log_problems",
            Json::Arr(
                broker_problems
                    .iter()
                    .take(BROKER_LOG_SHOWN_MAX)
                    .map(Json::str)
                    .collect(),
            ),
        ));
    }
    let json = report_json(&report, meta);
    if let Some(parent) = opts.json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&opts.json_path, format!("{json}\n"))?;
    println!();
    println!("JSON written to {}", opts.json_path.display());
    drop(broker);
    drop(tmp);
    Ok(())
}
