//! What the broker's process tests share: spawning `ferrolog` with its
//! stderr read line by line, waiting for a log line, running a client
//! script with a time bound, and (`netns`) nodes in network namespaces.
#![allow(dead_code)]

pub mod certs;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped if it still runs, so a
/// test that fails midway leaves no broker behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The line a broker logs once every shard listens.
pub const SERVING: &str = "serving the Kafka API";

/// Spawns `cmd` with stderr piped; returns the child and a channel of its
/// stderr lines (fed by a thread until the pipe closes).
pub fn spawn_with_stderr(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrolog");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Receives lines until one contains `needle`; returns every line seen.
/// Panics, with those lines, if none comes within `within`.
pub fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} within {within:?}; stderr so far: {seen:#?}"),
        }
    }
    seen
}

/// A port nobody listens on right now (another process may take it later).
/// The first of `n` consecutive loopback ports that were all free a moment
/// ago (a node's replication listener takes one port per shard).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let all_free = (1..n).all(|i| first.checked_add(i).is_some_and(try_take));
        if all_free {
            return first;
        }
    }
    panic!("no {n} consecutive free loopback ports found");
}

/// Ports this test process has handed out: the kernel may give the same
/// ephemeral port to a later bind of port 0 once the probe socket is closed,
/// and two nodes of one cluster must never get the same port (a CI run once
/// gave one node's admin port to another node's RPC listener).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free loopback port not handed out before in this process, nor held by
/// another live test process (nextest runs every test in its own process,
/// and the kernel may give a port that one probed and closed to the next).
///
/// Taken below the kernel's ephemeral range where it leaves room: a port in
/// that range can be taken between the probe and the broker's bind by any
/// other process's bind of port 0 or outbound connection (every broker of
/// the suite makes both), which no claim here can prevent.
pub fn free_port() -> u16 {
    let (low, _) = ephemeral_range();
    const FIRST: u32 = 10_000;
    if low >= FIRST + 4_096 {
        let span = low - FIRST;
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for i in 0..span {
            let port = u16::try_from(FIRST + (seed.wrapping_add(i) % span)).expect("below 65536");
            if try_take(port) {
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if HANDED_OUT.lock().expect("port set").insert(port) && claim_across_processes(port) {
            return port;
        }
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`), Linux's
/// default where it cannot be read.
fn ephemeral_range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse().ok());
    match (it.next(), it.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32_768, 60_999),
    }
}

/// Takes `port` if no test process (this one included) holds it and it can be
/// bound now: claimed first, then probed, so that a probe never binds, even
/// for a moment, a port another test process has claimed and its broker may
/// be binding (the likely way a run of the suite once saw a node's RPC
/// listener refused with "address in use"). A port that cannot be bound is
/// given back.
fn try_take(port: u16) -> bool {
    if HANDED_OUT.lock().expect("port set").contains(&port) || !claim_across_processes(port) {
        return false;
    }
    if TcpListener::bind(("127.0.0.1", port)).is_ok() && HANDED_OUT.lock().expect("port set").insert(port) {
        return true;
    }
    release_claim(port);
    false
}

/// Gives back this process's claim of `port`.
fn release_claim(port: u16) {
    let path = std::env::temp_dir()
        .join("ferrolog-test-ports")
        .join(port.to_string());
    if std::fs::read_to_string(&path).is_ok_and(|holder| holder.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Claims `port` for this process in a directory every test process shares:
/// a file named after the port holding the claimant's pid. A claim whose
/// process is gone is taken over.
fn claim_across_processes(port: u16) -> bool {
    use std::io::Write;
    let dir = std::env::temp_dir().join("ferrolog-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => return f.write_all(me.to_string().as_bytes()).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return false;
                }
                let _ = std::fs::remove_file(&path);
            }
            // No shared directory to use: the in-process check is all there is.
            Err(_) => return true,
        }
    }
    false
}

/// What a process that should have answered by now is doing: its state and,
/// per thread, its name, where it sleeps in the kernel and its kernel stack
/// (readable as root), for the failure message of a node that does not come
/// up. Empty fields where `/proc` does not say.
pub fn process_report(pid: u32) -> String {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let base = std::path::PathBuf::from(format!("/proc/{pid}"));
    let state = read(base.join("status"))
        .lines()
        .find(|l| l.starts_with("State:"))
        .map(|l| l.to_string())
        .unwrap_or_else(|| "State: gone".into());
    let mut out = format!("process {pid}: {state}\n");
    let Ok(tasks) = std::fs::read_dir(base.join("task")) else {
        return out;
    };
    let mut tids: Vec<_> = tasks.flatten().map(|e| e.path()).collect();
    tids.sort();
    for t in tids {
        let stack: Vec<String> = read(t.join("stack"))
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_string())
            .collect();
        // After the name in parentheses: state, then CPU ticks in user
        // and system mode as fields 12 and 13.
        let stat = read(t.join("stat"));
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("?");
        out.push_str(&format!(
            "  thread {} {} state={} utime={} stime={} wchan={} kernel stack: {}\n",
            t.file_name().unwrap_or_default().to_string_lossy(),
            read(t.join("comm")).trim(),
            field(0),
            field(11),
            field(12),
            read(t.join("wchan")).trim(),
            stack.join(" < ")
        ));
    }
    out
}

/// Waits for `child` to exit, killing it and failing after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    wait_exit_named(child, within, "ferrolog")
}

/// `wait_exit` of a child that is not a broker: `what` names it in the
/// failure.
pub fn wait_exit_named(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` with stdout and stderr captured (read by threads, so a chatty
/// child never blocks on a full pipe) until it exits, killing it and failing
/// after `within`. Returns its status, stdout and stderr.
pub fn output_bounded(mut cmd: Command, within: Duration) -> (ExitStatus, String, String) {
    use std::io::Read;
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn (tools/setup.sh installs the test clients)");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_exit_named(&mut child, within, &what);
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}
