//! The `ferrolog` binary as an operator uses it: start on a data directory
//! holding a log, refuse a second process on it, shut down cleanly on SIGTERM,
//! and `log verify` / `log dump` the result, before and after damage.

use bytes::Bytes;
use ferrolog_model::{BatchBuilder, Offset, TimestampMs};
use ferrolog_storage::{Durability, Log, LogConfig, LogContext};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{free_port, spawn_with_stderr, wait_exit, wait_for_line, SERVING};

const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
/// Tests run brokers side by side: each gets an admin listener on a free
/// port instead of the default 127.0.0.1:9644.
const ADMIN_ANY_PORT: [&str; 2] = ["--admin-addr", "127.0.0.1:0"];

/// The topic table that names `orders` (one partition), as an operator's
/// earlier broker left it.
const ORDERS_TABLE: &str =
    "revision = 1\n\n[topics.orders]\nid = \"6f1c0de5a4d94e3b8a0f2c6d7e8f9a01\"\npartitions = 1\n";

/// Writes `batches` batches of 3 records into `<data>/orders-0` with the
/// storage crate, and the topic table that names it.
fn populate(data: &Path, batches: usize) {
    std::fs::write(data.join("topics.toml"), ORDERS_TABLE).expect("write topics.toml");
    write_log(&data.join("orders-0"), batches);
}

/// Writes `batches` batches of 3 records into the log at `dir`.
fn write_log(dir: &Path, batches: usize) {
    let dir = dir.to_path_buf();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor");
    ex.run(async move {
        let config = LogConfig {
            segment_bytes: 16 << 10,
            durability: Durability::Fsync,
            ..LogConfig::default()
        };
        let (log, _) = Log::open(&dir, config, LogContext::new(1 << 20))
            .await
            .expect("open");
        for i in 0..batches {
            let mut b = BatchBuilder::new(TimestampMs(1_700_000_000_000 + i as i64));
            for r in 0..3 {
                b = b.record(
                    TimestampMs(1_700_000_000_000 + i as i64),
                    None,
                    format!("value {i}.{r} {}", "x".repeat(200)).as_bytes(),
                );
            }
            log.append(Bytes::from(b.build())).await.expect("append");
        }
        assert_eq!(log.offsets().durable_next, Offset(3 * batches as i64));
        log.close().await.expect("close");
    });
}

/// Starts a broker; returns it once it logged that it listens, with a
/// channel of its remaining stderr lines.
fn start(data: &Path, port: u16, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "--data-dir"])
        .arg(data)
        .args(["--kafka-addr", &format!("127.0.0.1:{port}")])
        .args(ADMIN_ANY_PORT)
        .args(extra);
    let (child, rx) = spawn_with_stderr(cmd);
    let seen = wait_for_line(&rx, SERVING, Duration::from_secs(20));
    assert!(
        seen.iter()
            .any(|l| l.contains("opened partition") && l.contains("orders/0") && l.contains("end=30")),
        "startup did not recover the log: {seen:#?}"
    );
    (child, rx)
}

fn run(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg(dir)
        .output()
        .expect("run ferrolog");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn start_recovers_listens_refuses_second_process_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    populate(data.path(), 10);
    // A partition directory no topic names (an interrupted delete, or copied
    // in by hand): never adopted as a topic, never deleted, set aside.
    write_log(&data.path().join("stray-0"), 2);
    let port = free_port();
    let (mut broker, _rx) = start(data.path(), port, &[]);
    TcpStream::connect(("127.0.0.1", port)).expect("the Kafka port accepts connections");
    assert!(
        !data.path().join("stray-0").exists(),
        "the stray directory is moved"
    );
    let aside: Vec<_> = std::fs::read_dir(data.path().join("set-aside"))
        .expect("set-aside exists")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let (code, out) = run(&["log", "verify"], &aside[0]);
    assert_eq!(code, 0, "the set-aside log is intact: {out}");
    assert!(out.contains("offsets 0..6"), "{out}");

    let second = Command::new(BIN)
        .args(["start", "--data-dir"])
        .arg(data.path())
        .args(["--kafka-addr", &format!("127.0.0.1:{}", free_port())])
        .args(ADMIN_ANY_PORT)
        .env("NO_COLOR", "1")
        .output()
        .expect("second broker");
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another ferrolog process"));

    // SAFETY: sending a signal to a child we spawned.
    assert_eq!(unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut broker, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0");

    let (code, out) = run(&["log", "verify"], data.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK") && out.contains("offsets 0..30"), "{out}");
    let (code, out) = run(&["log", "dump"], data.path());
    assert_eq!(code, 0, "{out}");
    // orders' 10 batches and the 2 of the set-aside log.
    assert_eq!(out.matches("crc=ok").count(), 12, "{out}");
    assert!(out.contains("offsets=27..=29"), "{out}");

    // Restart on the same directory serves the same log.
    let (mut broker, _rx) = start(data.path(), free_port(), &[]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(broker.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(wait_exit(&mut broker, Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn verify_names_the_file_and_position_of_a_flipped_byte() {
    let data = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    populate(data.path(), 10);
    let (code, out) = run(&["log", "verify"], data.path());
    assert_eq!(code, 0, "{out}");
    let seg = data.path().join("orders-0").join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let batch_len = {
        let h = ferrolog_model::BatchHeader::parse(&bytes).expect("header");
        h.total_bytes()
    };
    bytes[batch_len + 100] ^= 0x20;
    std::fs::write(&seg, &bytes).expect("write");
    let (code, out) = run(&["log", "verify"], data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CORRUPT"), "{out}");
    assert!(out.contains("00000000000000000000.log"), "{out}");
    assert!(out.contains(&format!("at byte {batch_len}:")), "{out}");
    let (code, out) = run(&["log", "dump"], data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("crc=BAD"), "{out}");
}

/// Runs `ferrolog start` with a profile file holding `profile`.
fn start_with_profile(data: &Path, profile: &str) -> std::process::Output {
    let path = data.join("p.toml");
    std::fs::write(&path, profile).expect("write profile");
    Command::new(BIN)
        .args(["start", "--data-dir"])
        .arg(data.join("d"))
        .args(ADMIN_ANY_PORT)
        .args(["--kafka-addr", "127.0.0.1:1", "--profile"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .expect("run")
}

#[test]
fn bad_profile_and_bad_arguments_fail_with_a_clear_message() {
    let data = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let out = start_with_profile(data.path(), "[shards]\ncpuset = \"0,4096\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cpuset"), "{err}");

    let out = start_with_profile(data.path(), "[io]\nring_depth = 100\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("io.ring_depth: 100"));

    let (code, out) = run(&["log", "verify"], data.path());
    assert_eq!(code, 2, "no segments is a usage error: {out}");
}

/// `tools/dev broker` passes `--data-dir ./data`: a relative directory must
/// work (glommio opens directories without a base, so start makes it absolute).
#[test]
fn start_with_a_relative_data_dir_serves_and_stops_cleanly() {
    let parent = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(parent.path())
        .args(["start", "--data-dir", "./data", "--kafka-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--admin-addr", "none"]);
    let (mut child, rx) = spawn_with_stderr(cmd);
    // Its own log line, not a connect: another test's broker could hold the port too.
    let mut seen = wait_for_line(&rx, SERVING, Duration::from_secs(20));
    // SAFETY: signalling a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    seen.extend(rx.try_iter());
    assert_eq!(status.code(), Some(0), "stderr: {seen:#?}");
    assert!(
        parent.path().join("data/node.meta").exists(),
        "the data dir is under the working dir"
    );
}
