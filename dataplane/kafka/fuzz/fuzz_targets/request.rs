//! Fuzz target: one input is the whole byte stream of one client
//! connection to a real one-shard node (`ferrolog_kafka::harness`): framing,
//! request decoding, the handler and response encoding, exactly as a socket
//! would drive them.
//!
//! A crash is: a panic or abort anywhere in the node (including a codec
//! panic the broker would contain: libFuzzer's panic hook aborts first), a
//! frame that hangs past `harness::FRAME_DEADLINE`, or a response that does
//! not answer its request (`FeedOutcome::check`).

#![no_main]

use ferrolog_kafka::harness::Harness;
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;

// The broker binary's allocator: without it a hostile array count in a few
// bytes aborts on a failed allocation of hundreds of GiB.
#[global_allocator]
static ALLOC: ferrolog_kafka::alloc_guard::GuardedAlloc = ferrolog_kafka::alloc_guard::GuardedAlloc;

/// Inputs one node serves before it is replaced by a fresh one. State carries
/// over between inputs (auto-created topics, appended batches), which reaches
/// deeper paths; a bound keeps the data directory, the topic table and the
/// open files from growing without end over a long run.
const FEEDS_PER_NODE: u64 = 10_000;

struct Node {
    harness: Harness,
    feeds: u64,
}

/// One node per fuzzing process, started on first use.
static NODE: Mutex<Option<Node>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    if node.as_ref().is_some_and(|n| n.feeds >= FEEDS_PER_NODE) {
        // Drop the old node (it closes its logs and removes its directory)
        // before starting the next.
        *node = None;
    }
    let n = node.get_or_insert_with(|| Node {
        harness: Harness::start().unwrap_or_else(|e| panic!("harness node: {e}")),
        feeds: 0,
    });
    n.feeds += 1;
    let outcome = n.harness.feed(data);
    if let Err(e) = outcome.check(data) {
        panic!("bad response: {e}\noutcome: {outcome:?}");
    }
});
