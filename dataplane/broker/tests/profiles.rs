//! Hardware profiles as an operator meets them: `ferrolog start` refuses a profile that does not
//! fit this machine (missing CPUs, overlapping cpusets, too much memory) or a data directory
//! without O_DIRECT, with one line naming the field and the value and exit code 2; `ferrolog
//! tune` writes a profile that validates and starts a broker on this machine.
//!
//! Data directories live under the target directory (CARGO_TARGET_TMPDIR), on the build's disk:
//! /tmp may be tmpfs, which the broker refuses.

mod common;

use common::{free_port, wait_exit, KillOnDrop};
use ferrolog_hw_profiles::{detect, irq, Profile};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
/// A refused start must be quick: validation runs before anything else starts.
const REFUSAL_WITHIN: Duration = Duration::from_secs(10);

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir under the target dir")
}

/// Runs `ferrolog start` on `data_dir` with `profile` (TOML text, or no profile when `None`),
/// expecting it to be refused; returns its exit code and stderr.
fn refused_start(data_dir: &Path, profile: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(BIN);
    command
        .args(["start", "--data-dir"])
        .arg(data_dir)
        .args(["--kafka-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let _profile_dir;
    if let Some(text) = profile {
        let dir = scratch_dir();
        let path = dir.path().join("profile.toml");
        std::fs::write(&path, text).expect("write profile");
        command.arg("--profile").arg(&path);
        _profile_dir = dir;
    }
    let start = Instant::now();
    let mut child = command.spawn().expect("spawn ferrolog");
    let status = wait_exit(&mut child, REFUSAL_WITHIN);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(start.elapsed() < REFUSAL_WITHIN);
    (status.code(), stderr)
}

fn assert_refused(code: Option<i32>, stderr: &str, needles: &[&str]) {
    assert_eq!(code, Some(2), "bad configuration exits 2; stderr: {stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(error_lines.len(), 1, "one error line: {stderr}");
    for needle in needles {
        assert!(
            error_lines[0].contains(needle),
            "{needle:?} missing from {stderr}"
        );
    }
}

#[test]
fn start_refuses_a_cpuset_naming_a_cpu_that_does_not_exist() {
    let data = scratch_dir();
    let missing = detect().expect("detect").cpus.last().expect("a CPU") + 1;
    let (code, stderr) = refused_start(
        &data.path().join("d"),
        Some(&format!("[shards]\ncpuset = \"0,{missing}\"\n")),
    );
    assert_refused(
        code,
        &stderr,
        &[
            "shards.cpuset",
            &format!("CPU {missing} does not exist"),
            &format!("\"0,{missing}\""),
        ],
    );
    assert!(
        !data.path().join("d").exists(),
        "a refused start touches no data directory"
    );
}

#[test]
fn start_refuses_overlapping_shard_and_control_cpusets() {
    let data = scratch_dir();
    let (code, stderr) = refused_start(
        &data.path().join("d"),
        Some("[shards]\ncpuset = \"0\"\ncontrol_cpuset = \"0\"\n"),
    );
    assert_refused(
        code,
        &stderr,
        &["shards.control_cpuset", "shards.cpuset", "\"0\"", "on CPUs 0"],
    );
}

#[test]
fn start_refuses_shard_memory_beyond_the_machine() {
    let data = scratch_dir();
    // One byte more than the machine has, for a single shard: too much whatever the shard count.
    let memory = detect().expect("detect").memory_bytes + 1;
    let (code, stderr) = refused_start(
        &data.path().join("d"),
        Some(&format!("[shards]\ncpuset = \"0\"\nmemory_bytes = {memory}\n")),
    );
    assert_refused(
        code,
        &stderr,
        &["shards.memory_bytes", &memory.to_string(), "machine's memory"],
    );
}

/// /dev/shm, when it is tmpfs (as on every Linux with a standard /dev).
fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = tempfile::tempdir_in(shm).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some("/dev/shm") && line.contains(" tmpfs "))
        .then_some(dir)
}

#[test]
fn start_refuses_a_data_dir_without_o_direct() {
    // A test that skipped itself would pass without checking anything.
    let shm = tmpfs_dir().expect("/dev/shm is a tmpfs (these tests need one without O_DIRECT)");
    let data = shm.path().join("data");
    let (code, stderr) = refused_start(&data, None);
    assert_refused(
        code,
        &stderr,
        &[
            "--data-dir",
            &data.display().to_string(),
            "does not support O_DIRECT",
        ],
    );
}

#[test]
fn tune_refuses_a_data_dir_without_o_direct() {
    // A test that skipped itself would pass without checking anything.
    let shm = tmpfs_dir().expect("/dev/shm is a tmpfs (these tests need one without O_DIRECT)");
    let out_dir = scratch_dir();
    let out = out_dir.path().join("tuned.toml");
    let data = shm.path().join("data");
    let result = Command::new(BIN)
        .args(["tune", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ferrolog tune");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(stderr.contains("does not support O_DIRECT"), "{stderr}");
    assert!(!out.exists());
}

fn tune(data: &Path, out: &Path) -> Output {
    Command::new(BIN)
        .args(["tune", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--seq-bytes", "8MiB", "--samples", "50"])
        .output()
        .expect("run ferrolog tune")
}

/// Starts a broker with `profile` and waits until its Kafka port accepts connections; returns
/// it with every stderr line seen so far.
fn start_serving(
    data: &Path,
    profile: &Path,
    extra: &[&str],
) -> (KillOnDrop, Vec<String>, mpsc::Receiver<String>) {
    start_serving_limited(data, profile, extra, None)
}

/// [`start_serving`] with RLIMIT_NOFILE's soft and hard limits set to `open_files` in the child
/// when given.
fn start_serving_limited(
    data: &Path,
    profile: &Path,
    extra: &[&str],
    open_files: Option<u64>,
) -> (KillOnDrop, Vec<String>, mpsc::Receiver<String>) {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    if let Some(limit) = open_files {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args(["start", "--data-dir"])
        .arg(data)
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--kafka-addr", &format!("127.0.0.1:{port}"), "--profile"])
        .arg(profile)
        .args(extra);
    let (child, rx) = common::spawn_with_stderr(cmd);
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        while let Ok(line) = rx.try_recv() {
            seen.push(line);
        }
        if seen.iter().any(|l| l.contains(common::SERVING)) && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return (child, seen, rx);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("broker exited with {status} before listening: {seen:#?}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not listen on {port}; stderr so far: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: KillOnDrop) {
    // SAFETY: sending a signal to a child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0");
}

#[test]
fn tune_writes_a_profile_that_validates_and_starts_a_broker() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let out = dir.path().join("tuned.toml");
    let result = tune(&data, &out);
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for phase in ["[1/3]", "[2/3]", "[3/3]"] {
        assert!(stderr.contains(phase), "progress of {phase}: {stderr}");
    }
    assert!(stdout.contains("wrote"), "{stdout}");
    // Where the data disk's and the NICs' interrupts land: reported for every device found,
    // with its interrupt lines, or said to be none.
    assert!(
        stdout.contains("interrupts: none found") || stdout.contains("interrupts of the "),
        "{stdout}"
    );
    if stdout.contains("interrupts of the ") {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with("IRQ ")),
            "{stdout}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&data).expect("data dir").count(),
        0,
        "tune leaves no scratch file"
    );

    let profile = Profile::load(&out).expect("the tuned profile loads");
    profile
        .validate()
        .expect("the tuned profile validates on this machine");
    let device = profile.io.device.clone().expect("[io.device]");
    for (name, value) in [
        ("seq_write_bytes_per_s", device.seq_write_bytes_per_s),
        ("write_4k_p50_us", device.write_4k_p50_us),
        ("write_4k_p99_us", device.write_4k_p99_us),
        ("fdatasync_4k_p50_us", device.fdatasync_4k_p50_us),
        ("fdatasync_4k_p99_us", device.fdatasync_4k_p99_us),
    ] {
        assert!(value.is_some_and(|v| v > 0), "{name} = {value:?}");
    }
    assert!(device.write_4k_p50_us <= device.write_4k_p99_us);
    let text = std::fs::read_to_string(&out).expect("read profile");
    assert!(
        text.starts_with("# ferrolog hardware profile, generated by `ferrolog tune`."),
        "{text}"
    );

    // An existing --out is kept unless --force.
    let again = tune(&data, &out);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let (broker, seen, _rx) = start_serving(&data, &out, &[]);
    assert!(
        seen.iter()
            .any(|l| l.contains("device measured by ferrolog tune")),
        "start logs the measured device: {seen:#?}"
    );
    stop(broker);
}

#[test]
fn start_pins_the_main_thread_and_falls_back_to_tcp_where_af_xdp_is_not_available() {
    let machine = detect().expect("detect");
    if machine.cpus.len() < 2 {
        eprintln!("skipped: one CPU cannot hold disjoint shard and control cpusets");
        return;
    }
    let dir = scratch_dir();
    let control = machine.cpus[0];
    let shard = machine.cpus[machine.cpus.len() - 1];
    let profile: PathBuf = dir.path().join("pinned.toml");
    std::fs::write(
        &profile,
        format!(
            "[shards]\ncpuset = \"{shard}\"\ncontrol_cpuset = \"{control}\"\n\
             [network]\nxdp_interface = \"lo\"\n[storage]\ngroup_commit_window_us = 100\n"
        ),
    )
    .expect("write profile");
    // Interrupts of the data disk or a NIC that have landed on the shard's CPU by now: start
    // must warn about each such device (counts only grow, so start sees them too).
    let devices = irq::survey(Path::new("/sys"), Path::new("/proc"), dir.path());
    let shared = irq::shared_with_shards(&devices, &[shard]);
    // A replication listener (from --rpc-addr), so that the node tries AF_XDP: loopback has no
    // native-mode XDP, which is the reason the one warning must give.
    let rpc = format!("127.0.0.1:{}", common::free_ports(2));
    let (broker, seen, _rx) = start_serving(&dir.path().join("data"), &profile, &["--rpc-addr", &rpc]);
    assert!(
        seen.iter()
            .any(|l| l.contains("main thread pinned to the control CPUs")),
        "{seen:#?}"
    );
    for (what, _) in &shared {
        let needle = format!("the {what}'s interrupts land on CPUs that run shards");
        assert!(
            seen.iter().any(|l| l.contains("WARN") && l.contains(&needle)),
            "no warning {needle:?} in {seen:#?}"
        );
    }
    let fallback = the_af_xdp_fallback_line(&seen);
    assert!(
        fallback.contains("WARN") && fallback.contains("lo") && fallback.contains("use TCP"),
        "{fallback}"
    );
    stop(broker);
}

/// A hard open-files limit below the profile's `storage.fd_budget` plus the node's reserve does
/// not stop a start: the budget is lowered to fit, with one warning naming both numbers, and the
/// soft limit is what the lowered budget needs.
#[test]
fn start_lowers_an_fd_budget_that_the_open_files_limit_cannot_hold() {
    let dir = scratch_dir();
    let profile = dir.path().join("budget.toml");
    std::fs::write(&profile, "[storage]\nfd_budget = 16384\n").expect("write profile");
    let (broker, seen, _rx) = start_serving_limited(&dir.path().join("data"), &profile, &[], Some(4096));
    assert!(
        seen.iter().any(|l| l.contains("WARN")
            && l.contains("storage.fd_budget lowered from 16384 to 3072")
            && l.contains("hard limit of 4096")),
        "{seen:#?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.id())).expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    stop(broker);
}

/// A node whose profile names an AF_XDP interface but that lacks the capabilities AF_XDP needs
/// (root with CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_SYS_ADMIN dropped from its bounding
/// set by `setpriv`) starts, says why in one warning, and serves; replication would use TCP.
#[test]
fn start_without_the_permissions_af_xdp_needs_warns_once_and_serves() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to drop capabilities from");
        return;
    }
    let dir = scratch_dir();
    let profile = dir.path().join("xdp.toml");
    std::fs::write(
        &profile,
        "[network]\nxdp_interface = \"lo\"\nxdp_mode = \"generic\"\n",
    )
    .expect("write profile");
    let port = free_port();
    // A shard per CPU by default.
    let shards = u16::try_from(detect().expect("detect").cpus.len()).expect("CPU count");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        "-net_admin,-net_raw,-bpf,-sys_admin",
        BIN,
        "start",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .args(["--admin-addr", "127.0.0.1:0"])
    .args(["--kafka-addr", &format!("127.0.0.1:{port}")])
    // The RPC port and one replication port per shard (PORT + 1 + shard), all claimed: a CI run
    // once lost shard 0's unclaimed replication port to another test's process and exited.
    .args([
        "--rpc-addr",
        &format!("127.0.0.1:{}", common::free_ports(1 + shards)),
    ])
    .arg("--profile")
    .arg(&profile);
    let (child, rx) = common::spawn_with_stderr(cmd);
    let child = KillOnDrop(child);
    let seen = common::wait_for_line(&rx, common::SERVING, Duration::from_secs(30));
    let warning = the_af_xdp_fallback_line(&seen);
    assert!(
        warning.contains("WARN") && warning.contains("no permission") && warning.contains("use TCP"),
        "{warning}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the broker serves: {seen:#?}"
    );
    stop(child);
}

/// The one line of a start's log saying that AF_XDP is not available;
/// fails unless there is exactly one.
fn the_af_xdp_fallback_line(seen: &[String]) -> &str {
    let lines: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("AF_XDP is not available"))
        .collect();
    assert_eq!(lines.len(), 1, "one AF_XDP fallback line: {seen:#?}");
    lines[0]
}

/// (thread name, nice value) of every thread of `pid`, from /proc.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        // After "(comm)": state is field 3; nice is field 19.
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if let Some(nice) = fields.get(16).and_then(|f| f.parse().ok()) {
            out.push((name.trim().to_string(), nice));
        }
    }
    out
}

/// `shards.nice` is applied to every shard's executor thread and the control executor's (as
/// root here; without CAP_SYS_NICE start would warn once), and 0 leaves every thread at 0.
#[test]
fn start_sets_the_nice_value_of_the_shard_threads() {
    let machine = detect().expect("detect");
    for nice in [-5, 0] {
        let dir = scratch_dir();
        let profile: PathBuf = dir.path().join("nice.toml");
        std::fs::write(&profile, format!("[shards]\nnice = {nice}\n")).expect("write profile");
        let (broker, seen, _rx) = start_serving(&dir.path().join("data"), &profile, &[]);
        let threads = thread_nices(broker.id());
        for s in 0..machine.cpus.len() {
            let prefix = format!("shard-{s}-");
            assert!(
                threads.iter().any(|(n, v)| n.starts_with(&prefix) && *v == nice),
                "no thread {prefix}* at nice {nice}: {threads:?}"
            );
        }
        assert!(
            threads
                .iter()
                .any(|(n, v)| n.starts_with("control-") && *v == nice),
            "no control thread at nice {nice}: {threads:?}"
        );
        if nice == 0 {
            assert!(threads.iter().all(|(_, v)| *v == 0), "{threads:?}");
        }
        assert!(
            !seen
                .iter()
                .any(|l| l.contains("cannot set the shards' nice value")),
            "{seen:#?}"
        );
        stop(broker);
    }
}
