//! kill -9 in the middle of concurrent appends, then recovery: every
//! acknowledged append is present with the bytes that were sent, offsets are
//! contiguous from the start to the end, and nothing follows a gap.
//!
//! The appender runs in a child process: this test binary re-executed to run
//! only `crash_child`, an ignored test that does nothing unless
//! `FERROLOG_CRASH_CHILD_DIR` is set. The child prints `ACK ...` for every
//! acknowledged append; the parent kills it with SIGKILL mid-stream, recovers
//! the log, and checks it. Three rounds per durability mode, so the later
//! rounds recover a log that was already recovered after a kill.

mod common;

use bytes::Bytes;
use common::*;
use ferrolog_model::{BatchBuilder, BatchHeader, Offset, TimestampMs};
use ferrolog_storage::{Durability, Log, LogContext, ReadRequest};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "FERROLOG_CRASH_CHILD_DIR";
const CHILD_DURABILITY_ENV: &str = "FERROLOG_CRASH_DURABILITY";
const CHILD_ROUND_ENV: &str = "FERROLOG_CRASH_ROUND";
const CHILD_TEST: &str = "crash_child";
/// Concurrent appenders in the child, so flushes are shared (group commit).
const APPENDERS: u64 = 4;
/// Bound on each child appender, in case the parent never kills it.
const CHILD_APPENDS_MAX: u64 = 50_000;
/// Acknowledgements the parent waits for before the kill.
const ACKS_PER_ROUND: usize = 300;
const ROUNDS: u64 = 3;
/// How long the parent lets the child run on after the acknowledgements it
/// waits for, per round: the kill then lands wherever the child happens to
/// be (mid-write, mid-fdatasync, mid-roll), not right after an ACK.
const KILL_DELAYS: [Duration; ROUNDS as usize] = [
    Duration::from_millis(3),
    Duration::from_millis(17),
    Duration::from_millis(41),
];
/// A round that has not seen its acknowledgements by then fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// The batch appender `task` sends as its `seq`th in `round`. Its identity
/// rides in the header's producer fields (covered by the CRC), so any batch
/// found in the log can be traced back and rebuilt for comparison.
fn crash_batch(round: u64, task: u64, seq: u64) -> Bytes {
    let mut rng = Rng::new(round << 48 ^ task << 40 ^ seq);
    let ts = 1_000_000 * round as i64 + seq as i64;
    let mut b = BatchBuilder::new(TimestampMs(ts)).producer(task as i64, round as i16, seq as i32);
    for r in 0..rng.range(1, 4) {
        let value: Vec<u8> = (0..rng.range(16, 6000)).map(|_| rng.next_u64() as u8).collect();
        b = b.record(TimestampMs(ts + r as i64), Some(&seq.to_be_bytes()), &value);
    }
    Bytes::from(b.build())
}

/// The `(round, task, seq)` a stored batch claims to be.
fn identity(h: &BatchHeader) -> (u64, u64, u64) {
    (
        h.producer_epoch as u64,
        h.producer_id as u64,
        h.base_sequence as u64,
    )
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    last: Offset,
    id: (u64, u64, u64),
}

/// Parses `ACK <base> <last> <round> <task> <seq>`.
fn parse_ack(line: &str) -> Option<(Offset, Ack)> {
    let mut w = line.strip_prefix("ACK ")?.split_whitespace();
    let mut n = || w.next()?.parse::<i64>().ok();
    let (base, last, round, task, seq) = (n()?, n()?, n()?, n()?, n()?);
    Some((
        Offset(base),
        Ack {
            last: Offset(last),
            id: (round as u64, task as u64, seq as u64),
        },
    ))
}

/// The appender. Runs only when re-executed by `kill_9_mid_append`.
#[test]
#[ignore = "child process of the crash tests; does nothing unless FERROLOG_CRASH_CHILD_DIR is set"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let durability: Durability = std::env::var(CHILD_DURABILITY_ENV)
        .expect("durability")
        .parse()
        .expect("durability");
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .expect("round")
        .parse()
        .expect("round");
    run(|| async move {
        let log = open(Path::new(&dir), small_config(durability)).await;
        let appenders: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for seq in 0..CHILD_APPENDS_MAX {
                        let a = log.append(crash_batch(round, task, seq)).await.expect("append");
                        // Printed only once the append is acknowledged, and
                        // flushed at once: the parent may kill us any time.
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "ACK {} {} {round} {task} {seq}",
                            a.base_offset, a.last_offset
                        );
                        let _ = out.flush();
                    }
                })
            })
            .collect();
        for a in appenders {
            a.await;
        }
    });
}

/// Kills the child if the parent fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one child round on `dir` until it acknowledged `ACKS_PER_ROUND`
/// appends, kills it with SIGKILL, and returns every acknowledgement it
/// printed, including those still in the pipe at the kill.
fn child_round(dir: &Path, durability: Durability, round: u64) -> Vec<(Offset, Ack)> {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir)
            .env(CHILD_DURABILITY_ENV, durability.to_string())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // Only whole lines: a line cut by the kill was never an ACK.
        while stdout.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
            if let Some(ack) = parse_ack(line.trim_end()) {
                if tx.send(ack).is_err() {
                    break;
                }
            }
            line.clear();
        }
    });

    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut acks = Vec::new();
    while acks.len() < ACKS_PER_ROUND {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ack) => acks.push(ack),
            Err(e) => panic!(
                "{durability} round {round}: {} of {ACKS_PER_ROUND} acks before {e:?}",
                acks.len()
            ),
        }
    }
    std::thread::sleep(KILL_DELAYS[round as usize]);
    child.0.kill().expect("SIGKILL child");
    let status = child.0.wait().expect("wait child");
    assert!(!status.success(), "child should die by the kill, got {status}");
    reader.join().expect("reader thread");
    acks.extend(rx.try_iter());
    acks
}

/// Recovers the log after a kill and checks it against every ACK so far.
/// Returns the committed end.
async fn verify(dir: &Path, durability: Durability, acked: &BTreeMap<Offset, Ack>, close: bool) -> Offset {
    let (log, report) = Log::open(dir, small_config(durability), LogContext::new(1 << 20))
        .await
        .expect("open after kill -9");
    assert!(report.corrupt.is_empty(), "{report:?}");
    let offsets = log.offsets();
    assert_eq!(offsets.start, Offset(0));
    let acked_end = acked.values().map(|a| a.last.plus(1)).max().expect("acks");
    assert!(
        offsets.durable_next >= acked_end,
        "committed end {} is below acknowledged end {acked_end}",
        offsets.durable_next
    );

    let mut next = Offset(0);
    let mut found = 0;
    let mut seen = HashSet::new();
    while next < offsets.durable_next {
        let r = log
            .read(ReadRequest {
                offset: next,
                max_bytes: 64 << 10,
                end: None,
            })
            .await
            .unwrap_or_else(|e| panic!("read at {next}: {e}"));
        assert!(!r.batches.is_empty(), "read at {next} returned nothing");
        for b in &r.batches {
            let h = BatchHeader::parse_verified(b).expect("recovered batch verifies");
            assert_eq!(h.base_offset, next, "offsets are not contiguous");
            // Every batch is one the child sent, byte for byte, and only once.
            let (round, task, seq) = identity(&h);
            assert_eq!(
                strip_offset(b),
                crash_batch(round, task, seq).to_vec(),
                "batch at {next}"
            );
            assert!(
                seen.insert((round, task, seq)),
                "batch {round}/{task}/{seq} twice"
            );
            if let Some(a) = acked.get(&h.base_offset) {
                assert_eq!(a.id, (round, task, seq), "acknowledged batch at {next} replaced");
                assert_eq!(a.last, h.last_offset());
                found += 1;
            }
            next = h.last_offset().plus(1);
        }
    }
    assert_eq!(found, acked.len(), "acknowledged batches missing");
    if close {
        log.close().await.expect("close");
    }
    offsets.durable_next
}

fn kill_9_mid_append(durability: Durability) {
    let dir = tmp();
    let mut acked: BTreeMap<Offset, Ack> = BTreeMap::new();
    let mut end = Offset(0);
    for round in 0..ROUNDS {
        for (base, ack) in child_round(dir.path(), durability, round) {
            assert!(
                base >= end,
                "round {round} acked {base}, below the recovered end {end}"
            );
            assert!(
                acked.insert(base, ack).is_none(),
                "offset {base} acknowledged twice"
            );
        }
        // Leave the log unclosed (as recovery left it) for the next child.
        end = run(|| verify(dir.path(), durability, &acked, false));
    }
    assert!(
        segment_files(dir.path()).len() > 3,
        "the rounds should have rolled segments"
    );
    // A clean close after all that, and a clean open.
    run(|| verify(dir.path(), durability, &acked, true));
    let final_end = run(|| verify(dir.path(), durability, &acked, true));
    assert_eq!(final_end, end);
}

#[test]
fn kill_9_mid_append_fsync() {
    kill_9_mid_append(Durability::Fsync);
}

#[test]
fn kill_9_mid_append_direct() {
    kill_9_mid_append(Durability::Direct);
}
