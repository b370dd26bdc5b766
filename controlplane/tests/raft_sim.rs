//! A deterministic simulation of the controller's Raft group that runs the
//! real [`RaftCore`]: raft-rs's `RawNode` over the fdatasync'd [`RaftLog`]
//! (a real directory per node) and the metadata state machine.
//!
//! Everything but the disk is simulated and follows from one seed (a
//! splitmix64 generator): a network that drops, delays (by whole steps),
//! duplicates and reorders messages, which cross it as protobuf bytes, and
//! cuts links (symmetric partitions and one-way cuts, healed later); nodes
//! that crash (the `RaftCore` is dropped with every message to or from it,
//! including a round's messages not yet sent) and reopen from their
//! directory; clients that propose valid and refused commands to whichever
//! node believes it leads; configuration changes (a learner that never runs
//! is added and removed); read-index requests. raft-rs draws election
//! timeouts from the thread's RNG, which no test can seed, so each node gets
//! a fixed timeout drawn from the seed (`max_election_tick = election_tick +
//! 1`) plus seeded tick jitter; a run is then a function of its seed.
//!
//! After every step the checker verifies (each check returns a `Result`, so
//! the tests at the end can show that it fails on broken input), citing the
//! properties of the Raft paper's Figure 3 and the thesis' §6.4:
//! 1. Election Safety: at most one leader per term, over the whole run;
//! 2. Log Matching between every pair of durable logs; no durable log
//!    contradicts a committed entry at or below its own durable commit index;
//!    Leader Completeness: the leader of the newest term holds every entry
//!    committed so far;
//! 3. State Machine Safety: every node applies the same entry, with the same
//!    outcome, at each index, in order and without gaps (but for a snapshot
//!    installed), and reaches the same `ClusterState` at the same applied
//!    index (the contents of every snapshot included);
//! 4. producer-id blocks handed out never overlap;
//! 5. a read index is at or above every index committed before the request.
//!
//! After the faults the network heals and every node is up; within a bounded
//! number of steps a leader exists, a fresh proposal is applied on every node
//! and a read index issued on the leader is answered (liveness).
//!
//! Not simulated: a crash inside `handle_ready` between two of its writes
//! (the log's own tests cut torn tails), disk errors, changes of the voters.
//!
//! `FERROLOG_SIM_SEEDS=<n>` sets how many seeds each group size runs;
//! `FERROLOG_SIM_SEED=<n>` replays one. A failure prints its replay command.
//! A long soak runs the test binary directly, since nextest ends a test after
//! 300 s: `FERROLOG_SIM_SEEDS=500 target/debug/deps/raft_sim-<hash>
//! raft_sim_three_voters --nocapture`.

use ferrolog_controlplane::commands::TopicCommand;
use ferrolog_controlplane::raft_core::{
    node_of, AppliedEntry, Bootstrap, CoreConfig, CoreError, Outcome, RaftCore,
};
use ferrolog_controlplane::raft_log::RaftLog;
use ferrolog_controlplane::state::{Applied, ClusterState, Command, Registration, PRODUCER_ID_BLOCK_MAX};
use ferrolog_model::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, Message, MessageType, Snapshot};
use raft::{GetEntriesContext, ReadState, Storage};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

/// Steps with faults before the network heals and every node comes up.
const FAULT_STEPS: u64 = 400;
/// Steps after healing within which a leader must be elected, a fresh
/// proposal applied on every node and a read index answered: a few election
/// timeouts plus a snapshot transfer, with a wide margin.
const LIVENESS_STEPS_MAX: u64 = 400;
/// Steps a healed run waits for its proposal or read before asking again
/// (a leader change may have dropped it).
const RETRY_STEPS: u64 = 40;
/// Ready rounds one node runs in one step; raft keeps the rest for the next.
const ROUNDS_PER_STEP_MAX: usize = 8;
/// Packets in flight; the network drops what does not fit.
const IN_FLIGHT_MAX: usize = 20_000;
/// Election timeouts are drawn from [MIN, MIN + SPREAD) ticks per node.
const ELECTION_TICK_MIN: usize = 10;
const ELECTION_TICK_SPREAD: u64 = 10;
const HEARTBEAT_TICK: usize = 2;
/// Per mille per faulty step: a client proposes; a client reads.
const PROPOSE_PM: u64 = 350;
const READ_PM: u64 = 40;
/// Per mille per faulty step: a leader is asked to add or remove the learner.
const CONF_CHANGE_PM: u64 = 25;
/// A learner that is added and removed but never runs: configuration
/// changes go through the log, snapshots and replays without touching the
/// voters' quorum.
const LEARNER: u64 = 9;
/// Members registered by the clients get ids from here (voters are 1..=n).
const MEMBER_BASE: u64 = 100;
const MEMBERS: u64 = 4;
/// Lines of the event trace a failure prints.
const TRACE_LINES: usize = 40;
/// Seeds per group size when FERROLOG_SIM_SEEDS is unset, sized so that both
/// group sizes together (nextest runs them in parallel) take well under a
/// minute in a debug build on two cores. The time is mostly fsync latency:
/// a seed of 3 voters took 0.4 s on a quiet disk and 3 s while other builds
/// shared it; one of 5 voters 0.7 s and 6.5 s.
const SEEDS_DEFAULT_3: u64 = 20;
const SEEDS_DEFAULT_5: u64 = 10;

type Check = Result<(), String>;

/// splitmix64: small, seedable, and enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next() % n
    }

    /// True with probability per_mille / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.below(items.len() as u64) as usize])
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Fault rates of one run, drawn from its seed so that runs range from a
/// clean network to a harsh one. Rates are per mille.
#[derive(Clone, Debug)]
struct Faults {
    drop_pm: u64,
    dup_pm: u64,
    /// Most whole steps a message is held beyond the next step.
    delay_max: u64,
    /// Per step, twice: a live node crashes (at the start of the step, and
    /// between delivering messages and handling Ready).
    crash_pm: u64,
    /// Per step and crashed node: it restarts.
    restart_pm: u64,
    /// Per Ready round: the node crashes before the round's messages leave.
    unlucky_crash_pm: u64,
    /// Per step: a new cut (a partition, a one-way cut, the leader isolated).
    cut_pm: u64,
    /// Per step: every cut heals.
    heal_pm: u64,
    /// Per node and step: a tick is missed (clock jitter).
    tick_skip_pm: u64,
    /// A delivered snapshot reported as failed (the sender never heard back).
    snapshot_fail_pm: u64,
    /// A message lost to a cut or a crashed peer reported unreachable.
    unreachable_pm: u64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        Faults {
            drop_pm: rng.below(200),
            dup_pm: rng.below(100),
            delay_max: rng.below(5),
            crash_pm: 2 + rng.below(8),
            restart_pm: 20 + rng.below(60),
            unlucky_crash_pm: 1 + rng.below(5),
            cut_pm: 5 + rng.below(15),
            heal_pm: 10 + rng.below(30),
            tick_skip_pm: rng.below(100),
            snapshot_fail_pm: rng.below(300),
            unreachable_pm: 500,
        }
    }

    /// The healed network: every message arrives once, at the next step.
    fn none() -> Faults {
        Faults {
            drop_pm: 0,
            dup_pm: 0,
            delay_max: 0,
            crash_pm: 0,
            restart_pm: 0,
            unlucky_crash_pm: 0,
            cut_pm: 0,
            heal_pm: 0,
            tick_skip_pm: 0,
            snapshot_fail_pm: 0,
            unreachable_pm: 0,
        }
    }
}

/// A deliberate bug in the harness, for the test that the checker sees it.
#[derive(Clone, Copy, Debug)]
enum Sabotage {
    /// Node 2 reports the first two entries it applies in one round swapped.
    ReorderApplied,
}

/// One run: the seed decides everything else, but what is set here.
#[derive(Clone, Copy, Debug)]
struct Setup {
    seed: u64,
    voters: u64,
    sabotage: Option<Sabotage>,
    /// Instead of a seeded 5..=20.
    snapshot_every: Option<u64>,
}

impl Setup {
    fn new(seed: u64, voters: u64) -> Setup {
        Setup {
            seed,
            voters,
            sabotage: None,
            snapshot_every: None,
        }
    }
}

/// What a run did, summed over seeds for the coverage assertions.
#[derive(Clone, Debug, Default, PartialEq)]
struct Stats {
    seeds: u64,
    steps: u64,
    terms_with_leader: u64,
    proposals: u64,
    conf_changes: u64,
    entries_applied: u64,
    commands_refused: u64,
    producer_blocks: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    snapshots_sent: u64,
    snapshots_installed: u64,
    snapshots_checked: u64,
    crashes: u64,
    unlucky_crashes: u64,
    cuts: u64,
    reads_answered: u64,
    /// FNV-1a over the applied entries and the leaders: equal for two runs of
    /// one seed, which is what makes a seed a replay.
    fingerprint: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.terms_with_leader += o.terms_with_leader;
        self.proposals += o.proposals;
        self.conf_changes += o.conf_changes;
        self.entries_applied += o.entries_applied;
        self.commands_refused += o.commands_refused;
        self.producer_blocks += o.producer_blocks;
        self.messages += o.messages;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.snapshots_sent += o.snapshots_sent;
        self.snapshots_installed += o.snapshots_installed;
        self.snapshots_checked += o.snapshots_checked;
        self.crashes += o.crashes;
        self.unlucky_crashes += o.unlucky_crashes;
        self.cuts += o.cuts;
        self.reads_answered += o.reads_answered;
        self.fingerprint ^= o.fingerprint;
    }
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// An entry as the first node to apply it applied it.
#[derive(Clone, Debug)]
struct Committed {
    term: u64,
    context: Vec<u8>,
    outcome: Outcome,
    node: u64,
}

/// A read-index request: who was asked, the least index a correct answer
/// may carry, and whether it was answered.
#[derive(Clone, Debug)]
struct Read {
    node: u64,
    min: u64,
    answered: bool,
}

/// The invariants, fed by the simulation (or by a test directly). Every
/// method returns the first violation it finds.
#[derive(Default)]
struct Checker {
    /// term -> the one node that led it, over the whole run (crashes too).
    leaders: BTreeMap<u64, u64>,
    /// index -> the entry applied there.
    applied: BTreeMap<u64, Committed>,
    /// index -> the state after applying everything up to it.
    states: BTreeMap<u64, ClusterState>,
    /// node -> the index it applied last (set again when it restarts).
    last_applied: BTreeMap<u64, u64>,
    /// node -> the index of the last snapshot of its log that was checked.
    snapshot_checked: BTreeMap<u64, u64>,
    /// start -> (end, index) of every producer-id block handed out.
    producer_blocks: BTreeMap<i64, (i64, u64)>,
    /// The highest index any node has known committed: committed for good.
    committed_max: u64,
    /// Read-index requests by context.
    reads: BTreeMap<Vec<u8>, Read>,
}

impl Checker {
    /// Election Safety: one leader per term.
    fn leader(&mut self, term: u64, node: u64) -> Check {
        match self.leaders.get(&term) {
            Some(&other) if other != node => Err(format!(
                "election safety: nodes {other} and {node} both lead term {term}"
            )),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
                Ok(())
            }
        }
    }

    /// A node (re)opened with this applied index and state (its snapshot's).
    fn opened(&mut self, node: u64, applied: u64, state: &ClusterState) -> Check {
        self.last_applied.insert(node, applied);
        self.state(node, applied, state)
    }

    /// One Ready round of `node`: the entries it applied, in order, then the
    /// index it says it applied and its state.
    fn round(
        &mut self,
        node: u64,
        snapshot_installed: bool,
        entries: &[AppliedEntry],
        applied: u64,
        state: &ClusterState,
    ) -> Check {
        let mut last = *self
            .last_applied
            .get(&node)
            .ok_or_else(|| format!("node {node} applied entries before it was opened"))?;
        for (i, e) in entries.iter().enumerate() {
            // A snapshot installed in this round moved the node past entries
            // it never applied one by one; it can only move forward.
            let jump = snapshot_installed && i == 0;
            if e.index <= last || (e.index != last + 1 && !jump) {
                return Err(format!(
                    "state machine safety: node {node} applied {} after {last}: out of order",
                    e.index
                ));
            }
            self.entry(node, e)?;
            last = e.index;
        }
        if applied < last || (applied != last && !snapshot_installed) {
            return Err(format!(
                "node {node} says it applied up to {applied}, but its last entry applied was {last}"
            ));
        }
        self.last_applied.insert(node, applied);
        self.state(node, applied, state)
    }

    /// State Machine Safety for one entry: the same term, context and
    /// outcome at its index on every node.
    fn entry(&mut self, node: u64, e: &AppliedEntry) -> Check {
        if let Some(c) = self.applied.get(&e.index) {
            if c.term != e.term || c.context != e.context || c.outcome != e.outcome {
                return Err(format!(
                    "state machine safety: at {} node {} applied (term {}, {:?}) and node {node} (term {}, {:?})",
                    e.index, c.node, c.term, c.outcome, e.term, e.outcome
                ));
            }
            return Ok(());
        }
        if let Outcome::Command(
            Command::AllocateProducerIds { .. },
            Ok(Applied::ProducerIds { start, count }),
        ) = &e.outcome
        {
            self.producer_block(e.index, *start, *count)?;
        }
        self.applied.insert(
            e.index,
            Committed {
                term: e.term,
                context: e.context.clone(),
                outcome: e.outcome.clone(),
                node,
            },
        );
        self.committed_max = self.committed_max.max(e.index);
        Ok(())
    }

    /// Producer-id blocks never overlap.
    fn producer_block(&mut self, index: u64, start: i64, count: i64) -> Check {
        let end = start
            .checked_add(count)
            .filter(|end| count > 0 && *end > start)
            .ok_or_else(|| format!("producer ids: a bad block {start}+{count} at {index}"))?;
        let before = self.producer_blocks.range(..=start).next_back();
        let after = self.producer_blocks.range(start..).next();
        for (&s, &(e, at)) in before.into_iter().chain(after) {
            if s < end && start < e {
                return Err(format!(
                    "producer ids: block {start}..{end} applied at {index} overlaps {s}..{e} applied at {at}"
                ));
            }
        }
        self.producer_blocks.insert(start, (end, index));
        Ok(())
    }

    /// The same state at the same applied index on every node.
    fn state(&mut self, node: u64, index: u64, state: &ClusterState) -> Check {
        match self.states.get(&index) {
            Some(s) if s != state => Err(format!(
                "state machine safety: node {node} has another state at applied index {index}"
            )),
            Some(_) => Ok(()),
            None => {
                self.states.insert(index, state.clone());
                Ok(())
            }
        }
    }

    /// A snapshot in a node's log holds the state at its index.
    fn snapshot(&mut self, node: u64, snap: &Snapshot) -> Result<bool, String> {
        let index = snap.get_metadata().index;
        if self.snapshot_checked.get(&node) == Some(&index) {
            return Ok(false);
        }
        let state = ClusterState::decode(snap.get_data())
            .map_err(|e| format!("node {node}: snapshot {index}: {e}"))?;
        self.state(node, index, &state)?;
        self.snapshot_checked.insert(node, index);
        Ok(true)
    }

    /// Some node knows `commit` committed.
    fn committed(&mut self, commit: u64) {
        self.committed_max = self.committed_max.max(commit);
    }

    /// A read index asked of `node` now: its answer must cover everything
    /// committed so far.
    fn read_asked(&mut self, context: Vec<u8>, node: u64) {
        let min = self.committed_max;
        self.reads.insert(
            context,
            Read {
                node,
                min,
                answered: false,
            },
        );
    }

    fn read_answered(&mut self, node: u64, rs: &ReadState) -> Check {
        let read = self
            .reads
            .get_mut(&rs.request_ctx)
            .ok_or_else(|| format!("read index: node {node} answered a request nobody made"))?;
        if read.node != node {
            return Err(format!(
                "read index: a request made of node {} answered by node {node}",
                read.node
            ));
        }
        if rs.index < read.min {
            return Err(format!(
                "read index: node {node} answered {} for a request made when {} was committed",
                rs.index, read.min
            ));
        }
        read.answered = true;
        Ok(())
    }

    /// Log Matching over every pair of durable logs, and each log against
    /// the entries known committed.
    fn logs(&self, logs: &[(u64, &RaftLog)]) -> Check {
        for (i, &(a, la)) in logs.iter().enumerate() {
            self.log_against_committed(a, la)?;
            for &(b, lb) in &logs[i + 1..] {
                log_matching(a, la, b, lb)?;
            }
        }
        Ok(())
    }

    /// Leader Completeness: the leader of the newest term holds every entry
    /// committed so far (over the range it has not compacted). Called once
    /// its Ready is handled, when its log is durable.
    fn leader_log(&self, node: u64, term: u64, log: &RaftLog) -> Check {
        if self.leaders.keys().next_back() != Some(&term) {
            return Ok(());
        }
        let last = last_index(log);
        if let Some((index, _)) = self.applied.range(last + 1..).next() {
            return Err(format!(
                "leader completeness: node {node}, leader of term {term}, ends at {last}, {index} is committed"
            ));
        }
        for (index, c) in self.applied.range(first_index(log)..) {
            let held = term_of(log, *index)?;
            if held != c.term {
                return Err(format!(
                    "leader completeness: node {node}, leader of term {term}, holds term {held} at {index}, committed with term {}",
                    c.term
                ));
            }
        }
        Ok(())
    }

    /// Entries at or below a log's durable commit index are the committed ones.
    fn log_against_committed(&self, node: u64, log: &RaftLog) -> Check {
        let first = first_index(log);
        let last = last_index(log).min(log.hard_state().commit);
        if first > last {
            return Ok(());
        }
        for (index, c) in self.applied.range(first..=last) {
            let term = term_of(log, *index)?;
            if term != c.term {
                return Err(format!(
                    "node {node} holds term {term} at {index}, committed at or below its commit {} with term {}",
                    log.hard_state().commit,
                    c.term
                ));
            }
        }
        Ok(())
    }
}

fn first_index(log: &RaftLog) -> u64 {
    log.first_index().expect("RaftLog::first_index never fails")
}

fn last_index(log: &RaftLog) -> u64 {
    log.last_index().expect("RaftLog::last_index never fails")
}

fn term_of(log: &RaftLog, index: u64) -> Result<u64, String> {
    log.term(index).map_err(|e| format!("term of {index}: {e}"))
}

fn entries(log: &RaftLog, low: u64, high: u64) -> Result<Vec<Entry>, String> {
    log.entries(low, high, None, GetEntriesContext::empty(false))
        .map_err(|e| format!("entries {low}..{high}: {e}"))
}

/// If two logs hold an entry of the same term at some index, they hold the
/// same entries up to it (over the range both still hold).
fn log_matching(a: u64, la: &RaftLog, b: u64, lb: &RaftLog) -> Check {
    let first = first_index(la).max(first_index(lb));
    let last = last_index(la).min(last_index(lb));
    let mut top = None;
    for i in (first..=last).rev() {
        if term_of(la, i)? == term_of(lb, i)? {
            top = Some(i);
            break;
        }
    }
    let Some(top) = top else { return Ok(()) };
    let ea = entries(la, first, top + 1)?;
    let eb = entries(lb, first, top + 1)?;
    for (x, y) in ea.iter().zip(&eb) {
        let same = x.index == y.index
            && x.term == y.term
            && x.get_entry_type() == y.get_entry_type()
            && x.data == y.data
            && x.context == y.context;
        if !same {
            return Err(format!(
                "log matching: nodes {a} and {b} agree on term {} at {top} but differ at {} (terms {} and {})",
                term_of(la, top)?,
                x.index,
                x.term,
                y.term
            ));
        }
    }
    Ok(())
}

struct Packet {
    deliver_at: u64,
    from: u64,
    to: u64,
    snapshot: bool,
    bytes: Vec<u8>,
}

struct Node {
    dir: PathBuf,
    core: Option<RaftCore>,
}

/// Why a run failed, where, and what happened just before.
struct Failure {
    seed: u64,
    step: u64,
    message: String,
    trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "raft_sim seed {} step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(f, "last events:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    voters: Vec<u64>,
    initial: ClusterState,
    snapshot_every: u64,
    faults: Faults,
    sabotage: Option<Sabotage>,
    _dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    packets: Vec<Packet>,
    /// Links that carry nothing, as (from, to).
    cut: BTreeSet<(u64, u64)>,
    checker: Checker,
    /// Proposal context -> the index it was applied at.
    proposals_applied: BTreeMap<Vec<u8>, u64>,
    next_id: u64,
    /// Topics proposed (created or not), for deletes and refused duplicates.
    topics: Vec<(String, u128)>,
    trace: VecDeque<String>,
    stats: Stats,
}

/// A configuration change of one node.
fn conf_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(ConfChangeSingle {
        change_type,
        node_id,
        ..ConfChangeSingle::default()
    });
    cc
}

fn core_err(node: u64, what: &str) -> impl FnOnce(CoreError) -> String + '_ {
    move |e| format!("node {node}: {what}: {e}")
}

impl Sim {
    fn new(setup: Setup) -> Result<Sim, String> {
        let Setup {
            seed,
            voters,
            sabotage,
            snapshot_every,
        } = setup;
        let mut rng = Rng(seed);
        let faults = Faults::draw(&mut rng);
        let drawn = 5 + rng.below(16);
        let snapshot_every = snapshot_every.unwrap_or(drawn);
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let voters: Vec<u64> = (1..=voters).collect();
        let initial = ClusterState {
            cluster_id: "sim".into(),
            voters: voters.iter().map(|v| node_of(*v)).collect(),
            ..ClusterState::default()
        };
        let nodes = voters
            .iter()
            .map(|id| {
                let node = Node {
                    dir: dir.path().join(format!("node-{id}")),
                    core: None,
                };
                (*id, node)
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            voters: voters.clone(),
            initial,
            snapshot_every,
            faults,
            sabotage,
            _dir: dir,
            nodes,
            packets: Vec::new(),
            cut: BTreeSet::new(),
            checker: Checker::default(),
            proposals_applied: BTreeMap::new(),
            next_id: 0,
            topics: Vec::new(),
            trace: VecDeque::new(),
            stats: Stats::default(),
        };
        sim.event(format!(
            "seed {seed}: {} voters, snapshot every {snapshot_every}, {:?}",
            voters.len(),
            sim.faults
        ));
        for id in voters {
            sim.start(id)?;
        }
        Ok(sim)
    }

    fn event(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>5} {line}", self.now));
    }

    fn core(&mut self, id: u64) -> Option<&mut RaftCore> {
        self.nodes.get_mut(&id).and_then(|n| n.core.as_mut())
    }

    fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn down(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.as_ref().is_some_and(RaftCore::is_leader))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Opens (or reopens) a node from its directory, as a voter of the
    /// initial group: a reopened log ignores the bootstrap.
    fn start(&mut self, id: u64) -> Check {
        let election_tick = ELECTION_TICK_MIN + self.rng.below(ELECTION_TICK_SPREAD) as usize;
        let config = CoreConfig {
            id,
            election_tick,
            max_election_tick: election_tick + 1,
            heartbeat_tick: HEARTBEAT_TICK,
            snapshot_every: self.snapshot_every,
        };
        let bootstrap = if self.voters.contains(&id) {
            Bootstrap::Voter {
                voters: self.voters.clone(),
                initial: Box::new(self.initial.clone()),
            }
        } else {
            Bootstrap::Join
        };
        let node = self.nodes.get_mut(&id).expect("a node of the group");
        let core = RaftCore::open(&node.dir, config, bootstrap).map_err(core_err(id, "open"))?;
        self.checker.opened(id, core.applied(), core.state())?;
        let line = format!(
            "node {id} up: applied {}, term {}, election tick {election_tick}",
            core.applied(),
            core.term()
        );
        self.nodes.get_mut(&id).expect("a node of the group").core = Some(core);
        self.event(line);
        Ok(())
    }

    /// Drops the node with everything not durable: its memory, the messages
    /// to and from it. Senders of snapshots to it hear of the failure, as a
    /// real transport's broken stream would tell them.
    fn crash(&mut self, id: u64, why: &str) {
        self.nodes.get_mut(&id).expect("a node of the group").core = None;
        let (lost, kept): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.packets)
            .into_iter()
            .partition(|p| p.from == id || p.to == id);
        self.packets = kept;
        for p in lost.iter().filter(|p| p.to == id && p.snapshot) {
            self.report_snapshot(p.from, id, false);
        }
        self.stats.crashes += 1;
        self.event(format!("node {id} crashed ({why}), {} packets lost", lost.len()));
    }

    fn report_snapshot(&mut self, from: u64, to: u64, ok: bool) {
        if let Some(core) = self.core(from) {
            core.report_snapshot(to, ok);
        }
    }

    /// Records a leader if `id` is one.
    fn note_leader(&mut self, id: u64) -> Check {
        let Some(core) = self.core(id) else { return Ok(()) };
        if !core.is_leader() {
            return Ok(());
        }
        let term = core.term();
        if !self.checker.leaders.contains_key(&term) {
            self.event(format!("node {id} leads term {term}"));
        }
        self.checker.leader(term, id)
    }

    /// One simulation step: faults and clients (when `faulty`), delivery,
    /// ticks, Ready rounds, then every check.
    fn step(&mut self, faulty: bool) -> Check {
        self.now += 1;
        self.stats.steps += 1;
        if faulty {
            self.faults_step()?;
            self.clients()?;
        }
        self.deliver()?;
        if faulty && self.rng.chance(self.faults.crash_pm) {
            // Stepped messages and ticks, but no Ready handled: whatever they
            // changed is lost.
            if let Some(id) = self.rng.pick(&self.live()) {
                self.crash(id, "before its Ready");
            }
        }
        self.tick()?;
        self.ready()?;
        self.check()
    }

    fn faults_step(&mut self) -> Check {
        if self.rng.chance(self.faults.crash_pm) {
            if let Some(id) = self.rng.pick(&self.live()) {
                self.crash(id, "between steps");
            }
        }
        for id in self.down() {
            if self.rng.chance(self.faults.restart_pm) {
                self.start(id)?;
            }
        }
        if self.rng.chance(self.faults.cut_pm) {
            self.new_cut();
        }
        if !self.cut.is_empty() && self.rng.chance(self.faults.heal_pm) {
            self.cut.clear();
            self.event("network healed".into());
        }
        Ok(())
    }

    fn new_cut(&mut self) {
        let all = self.voters.clone();
        let one = self.rng.pick(&all).expect("a group has voters");
        let line = match self.rng.below(3) {
            0 => {
                let mut side: Vec<u64> = all.iter().copied().filter(|_| self.rng.chance(500)).collect();
                if side.is_empty() || side.len() == all.len() {
                    side = vec![one];
                }
                for a in &side {
                    for b in all.iter().filter(|b| !side.contains(b)) {
                        self.cut.insert((*a, *b));
                        self.cut.insert((*b, *a));
                    }
                }
                format!("partition {side:?} from the rest")
            }
            1 => {
                let others: Vec<u64> = all.iter().copied().filter(|b| *b != one).collect();
                let to = self.rng.pick(&others).expect("a group has two voters or more");
                self.cut.insert((one, to));
                format!("one-way cut {one} -> {to}")
            }
            _ => {
                let leader = self.rng.pick(&self.leaders()).unwrap_or(one);
                for b in all.iter().filter(|b| **b != leader) {
                    self.cut.insert((leader, *b));
                    self.cut.insert((*b, leader));
                }
                format!("node {leader} isolated")
            }
        };
        self.stats.cuts += 1;
        self.event(line);
    }

    fn clients(&mut self) -> Check {
        if self.rng.chance(PROPOSE_PM) {
            let leaders = self.leaders();
            let target = if !leaders.is_empty() && self.rng.chance(800) {
                self.rng.pick(&leaders)
            } else {
                self.rng.pick(&self.live())
            };
            if let Some(id) = target {
                let cmd = self.command();
                let ctx = format!("p{}", self.next_id).into_bytes();
                self.propose(id, ctx, &cmd)?;
            }
        }
        if self.rng.chance(READ_PM) {
            if let Some(id) = self.rng.pick(&self.leaders()) {
                self.read(id);
            }
        }
        if self.rng.chance(CONF_CHANGE_PM) {
            if let Some(id) = self.rng.pick(&self.leaders()) {
                let change = if self.rng.chance(500) {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::RemoveNode
                };
                self.next_id += 1;
                let ctx = format!("c{}", self.next_id).into_bytes();
                let core = self.core(id).expect("a live leader");
                match core.propose_conf_change(ctx, conf_change(change, LEARNER)) {
                    Ok(()) => self.stats.conf_changes += 1,
                    Err(CoreError::Raft(raft::Error::ProposalDropped)) => {}
                    Err(e) => return Err(format!("node {id}: propose a conf change: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Proposes; false if raft dropped it at once (no leader known).
    fn propose(&mut self, id: u64, ctx: Vec<u8>, cmd: &Command) -> Result<bool, String> {
        let core = self.core(id).expect("proposing to a live node");
        match core.propose(ctx, cmd) {
            Ok(()) => {
                self.stats.proposals += 1;
                Ok(true)
            }
            Err(CoreError::Raft(raft::Error::ProposalDropped)) => Ok(false),
            Err(e) => Err(format!("node {id}: propose: {e}")),
        }
    }

    /// Asks `id` for a read index; the answer must cover everything any
    /// node knows committed now.
    fn read(&mut self, id: u64) -> Vec<u8> {
        for live in self.live() {
            let commit = self.core(live).expect("live").commit_index();
            self.checker.committed(commit);
        }
        self.next_id += 1;
        let ctx = format!("r{}", self.next_id).into_bytes();
        self.checker.read_asked(ctx.clone(), id);
        self.core(id)
            .expect("reading from a live node")
            .read_index(ctx.clone());
        ctx
    }

    fn registration(&mut self, id: u64) -> Registration {
        Registration {
            id: NodeId(id as i32),
            kafka_host: format!("broker-{id}"),
            kafka_port: 9092,
            rpc_addr: format!("broker-{id}:9093"),
            rack: None,
            shards: 1 + self.rng.below(4) as u32,
            data_addr: Some(format!("broker-{id}:9094")),
            xdp_addr: (id % 2 == 0).then(|| format!("10.0.0.{id}:9094")),
        }
    }

    fn create_topic(&mut self, name: String, id: u128) -> Command {
        let partitions = 1 + self.rng.below(3);
        let assignments = (0..partitions)
            .map(|_| vec![NodeId(self.rng.pick(&self.voters).expect("voters") as i32)])
            .collect();
        Command::Topic(TopicCommand::CreateTopic {
            name,
            id,
            config: Default::default(),
            assignments,
        })
    }

    /// A client's command: mostly valid, some that `apply` refuses (on
    /// every node alike).
    fn command(&mut self) -> Command {
        self.next_id += 1;
        let n = self.next_id;
        let fresh = (format!("topic-{n}"), 0x51_0000 + u128::from(n));
        let known = self.rng.pick(&(0..self.topics.len()).collect::<Vec<_>>());
        let known = known.map(|i| self.topics[i].clone());
        let voter = self.rng.pick(&self.voters).expect("voters");
        let member = MEMBER_BASE + self.rng.below(MEMBERS);
        match self.rng.below(12) {
            0..=3 => {
                self.topics.push(fresh.clone());
                self.create_topic(fresh.0, fresh.1)
            }
            4 => Command::Register(self.registration(member)),
            5 | 6 => Command::AllocateProducerIds {
                // A member not registered yet is refused.
                node: if self.rng.chance(500) {
                    node_of(voter)
                } else {
                    NodeId(member as i32)
                },
                count: 1 + self.rng.below(1000) as i64,
            },
            7 => match known {
                Some((name, id)) => Command::Topic(TopicCommand::DeleteTopic { name, id }),
                None => self.create_topic("not a valid name".into(), fresh.1),
            },
            // Refused: a name or an id already taken, a bad name.
            8 => match known {
                Some((name, _)) => self.create_topic(name, fresh.1),
                None => self.create_topic("../bad".into(), fresh.1),
            },
            9 => match known {
                Some((_, id)) => self.create_topic(fresh.0, id),
                None => Command::Topic(TopicCommand::CreateTopic {
                    name: fresh.0,
                    id: fresh.1,
                    config: Default::default(),
                    assignments: Vec::new(),
                }),
            },
            // Refused: blocks of no ids, too many, for an unknown node.
            10 => Command::AllocateProducerIds {
                node: node_of(voter),
                count: [0, -3, PRODUCER_ID_BLOCK_MAX + 1][self.rng.below(3) as usize],
            },
            _ => {
                if self.rng.chance(500) {
                    Command::AllocateProducerIds {
                        node: NodeId(999),
                        count: 10,
                    }
                } else {
                    // Refused once `member` is registered: its address.
                    let mut r = self.registration(member + MEMBERS);
                    r.rpc_addr = format!("broker-{member}:9093");
                    Command::Register(r)
                }
            }
        }
    }

    /// Sends what a Ready round handed out: through the cuts and the
    /// faults, as protobuf bytes.
    fn send(&mut self, from: u64, msg: Message) -> Check {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        self.stats.messages += 1;
        if snapshot {
            self.stats.snapshots_sent += 1;
        }
        let down = self.nodes.get(&to).is_none_or(|n| n.core.is_none());
        if down || self.cut.contains(&(from, to)) {
            self.lost(from, to, snapshot, true);
            return Ok(());
        }
        if self.rng.chance(self.faults.drop_pm) {
            self.lost(from, to, snapshot, false);
            return Ok(());
        }
        let bytes = msg.write_to_bytes().map_err(|e| format!("encode: {e}"))?;
        let copies = if self.rng.chance(self.faults.dup_pm) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.packets.len() >= IN_FLIGHT_MAX {
                self.stats.dropped += 1;
                continue;
            }
            let deliver_at = self.now + 1 + self.rng.below(self.faults.delay_max + 1);
            self.packets.push(Packet {
                deliver_at,
                from,
                to,
                snapshot,
                bytes: bytes.clone(),
            });
        }
        Ok(())
    }

    /// A message that never arrives: a snapshot's sender learns it failed,
    /// and a sender whose peer is cut off or down may learn it is unreachable.
    fn lost(&mut self, from: u64, to: u64, snapshot: bool, unreachable: bool) {
        self.stats.dropped += 1;
        if snapshot {
            self.report_snapshot(from, to, false);
        }
        if unreachable && self.rng.chance(self.faults.unreachable_pm) {
            if let Some(core) = self.core(from) {
                core.report_unreachable(to);
            }
        }
    }

    /// Delivers the packets due, in a random order.
    fn deliver(&mut self) -> Check {
        let now = self.now;
        let (mut due, later): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.packets)
            .into_iter()
            .partition(|p| p.deliver_at <= now);
        self.packets = later;
        self.rng.shuffle(&mut due);
        for p in due {
            if self.cut.contains(&(p.from, p.to)) {
                self.lost(p.from, p.to, p.snapshot, true);
                continue;
            }
            let msg = Message::parse_from_bytes(&p.bytes).map_err(|e| format!("decode: {e}"))?;
            let Some(core) = self.core(p.to) else {
                self.lost(p.from, p.to, p.snapshot, true);
                continue;
            };
            match core.step(msg) {
                Ok(()) => {}
                // A proposal forwarded to a node that knows no leader now.
                Err(CoreError::Raft(raft::Error::ProposalDropped)) => {}
                Err(e) => return Err(format!("node {}: step a message from {}: {e}", p.to, p.from)),
            }
            self.note_leader(p.to)?;
            if p.snapshot {
                let ok = !self.rng.chance(self.faults.snapshot_fail_pm);
                self.report_snapshot(p.from, p.to, ok);
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Check {
        for id in self.live() {
            if self.rng.chance(self.faults.tick_skip_pm) {
                continue;
            }
            self.core(id).expect("live").tick();
            self.note_leader(id)?;
        }
        Ok(())
    }

    /// Ready rounds of every live node; its messages leave after each round
    /// unless the node crashes first.
    fn ready(&mut self) -> Check {
        for id in self.live() {
            for _ in 0..ROUNDS_PER_STEP_MAX {
                let Some(core) = self.core(id) else { break };
                if !core.has_ready() {
                    break;
                }
                let mut round = core.handle_ready().map_err(core_err(id, "handle_ready"))?;
                let mut applied = std::mem::take(&mut round.applied);
                self.sabotage(id, &mut applied);
                for e in &applied {
                    self.proposals_applied.entry(e.context.clone()).or_insert(e.index);
                }
                if round.snapshot_installed {
                    self.stats.snapshots_installed += 1;
                    self.event(format!("node {id} installed a snapshot"));
                }
                let core = self.nodes[&id].core.as_ref().expect("live");
                self.checker.round(
                    id,
                    round.snapshot_installed,
                    &applied,
                    core.applied(),
                    core.state(),
                )?;
                for rs in &round.read_states {
                    self.checker.read_answered(id, rs)?;
                    self.stats.reads_answered += 1;
                }
                self.note_leader(id)?;
                if self.rng.chance(self.faults.unlucky_crash_pm) {
                    self.stats.unlucky_crashes += 1;
                    let why = format!("after a Ready round, {} messages unsent", round.messages.len());
                    self.crash(id, &why);
                    break;
                }
                for m in round.messages {
                    self.send(id, m)?;
                }
            }
        }
        Ok(())
    }

    fn sabotage(&mut self, id: u64, applied: &mut [AppliedEntry]) {
        if id == 2 && applied.len() >= 2 && self.sabotage.is_some() {
            applied.swap(0, 1);
            self.sabotage = None;
        }
    }

    /// The checks over all live nodes, after a step.
    fn check(&mut self) -> Check {
        let mut logs = Vec::new();
        for (id, node) in &self.nodes {
            if let Some(core) = &node.core {
                self.checker.committed(core.commit_index());
                if core.is_leader() && !core.has_ready() {
                    self.checker.leader_log(*id, core.term(), core.log())?;
                }
                if self.checker.snapshot(*id, core.log().latest_snapshot())? {
                    self.stats.snapshots_checked += 1;
                }
                logs.push((*id, core.log()));
            }
        }
        self.checker.logs(&logs)
    }

    fn run(&mut self) -> Check {
        for _ in 0..FAULT_STEPS {
            self.step(true)?;
        }
        self.heal()?;
        self.liveness()
    }

    /// The network becomes perfect and every node comes up.
    fn heal(&mut self) -> Check {
        self.cut.clear();
        self.faults = Faults::none();
        for id in self.down() {
            self.start(id)?;
        }
        self.event("healed: every node up, a perfect network".into());
        Ok(())
    }

    /// After healing: a leader, a fresh proposal applied on every node, and
    /// a read index answered, within LIVENESS_STEPS_MAX steps.
    fn liveness(&mut self) -> Check {
        let start = self.now;
        let mut proposed: Vec<Vec<u8>> = Vec::new();
        let mut proposed_at = None;
        let mut applied_at = None;
        let mut read: Option<(Vec<u8>, u64)> = None;
        while self.now - start <= LIVENESS_STEPS_MAX {
            let leader = self.leaders().first().copied();
            if applied_at.is_none() {
                applied_at = proposed
                    .iter()
                    .find_map(|c| self.proposals_applied.get(c))
                    .copied();
            }
            let retry = |at: Option<u64>, now: u64| at.is_none_or(|at| now - at >= RETRY_STEPS);
            match (applied_at, leader) {
                (None, Some(l)) if retry(proposed_at, self.now) => {
                    self.next_id += 1;
                    let ctx = format!("live{}", self.next_id).into_bytes();
                    let cmd = self.create_topic(
                        format!("live-{}", self.next_id),
                        0x11_0000 + u128::from(self.next_id),
                    );
                    if self.propose(l, ctx.clone(), &cmd)? {
                        proposed.push(ctx);
                        proposed_at = Some(self.now);
                    }
                }
                (Some(index), Some(l))
                    if self
                        .live()
                        .iter()
                        .all(|id| self.nodes[id].core.as_ref().is_some_and(|c| c.applied() >= index)) =>
                {
                    match &read {
                        Some((ctx, _)) if self.checker.reads[ctx].answered => return Ok(()),
                        Some((_, at)) if self.now - at < RETRY_STEPS => {}
                        _ => {
                            let ctx = self.read(l);
                            read = Some((ctx, self.now));
                        }
                    }
                }
                _ => {}
            }
            self.step(false)?;
        }
        Err(format!(
            "liveness: {LIVENESS_STEPS_MAX} steps after healing: leaders {:?}, proposal applied at {applied_at:?}, applied {:?}, read asked {}",
            self.leaders(),
            self.nodes
                .iter()
                .map(|(id, n)| (*id, n.core.as_ref().map(RaftCore::applied)))
                .collect::<Vec<_>>(),
            read.is_some()
        ))
    }

    fn finish(mut self) -> Stats {
        let mut s = std::mem::take(&mut self.stats);
        s.seeds = 1;
        s.terms_with_leader = self.checker.leaders.len() as u64;
        s.entries_applied = self.checker.applied.len() as u64;
        s.producer_blocks = self.checker.producer_blocks.len() as u64;
        s.commands_refused = self
            .checker
            .applied
            .values()
            .filter(|c| matches!(c.outcome, Outcome::Command(_, Err(_))))
            .count() as u64;
        let mut h = 0xCBF2_9CE4_8422_2325;
        for (index, c) in &self.checker.applied {
            h = fnv(h, &index.to_be_bytes());
            h = fnv(h, &c.term.to_be_bytes());
            h = fnv(h, &c.context);
        }
        for (term, leader) in &self.checker.leaders {
            h = fnv(h, &term.to_be_bytes());
            h = fnv(h, &leader.to_be_bytes());
        }
        s.fingerprint = h;
        s
    }
}

fn run(setup: Setup) -> Result<Stats, Failure> {
    let fail = |sim: Option<&Sim>, message: String| Failure {
        seed: setup.seed,
        step: sim.map_or(0, |s| s.now),
        message,
        trace: sim.map(|s| s.trace.iter().cloned().collect()).unwrap_or_default(),
    };
    let mut sim = Sim::new(setup).map_err(|m| fail(None, m))?;
    match sim.run() {
        Ok(()) => Ok(sim.finish()),
        Err(m) => Err(fail(Some(&sim), m)),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Runs the seeds the environment asks for (all of 0..FERROLOG_SIM_SEEDS, or
/// the one FERROLOG_SIM_SEED replays); panics with the replay command of the
/// first failing seed.
fn run_seeds(test: &str, voters: u64, seeds_default: u64) {
    let replay = env_u64("FERROLOG_SIM_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_u64("FERROLOG_SIM_SEEDS").unwrap_or(seeds_default)).collect(),
    };
    let started = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        match run(Setup::new(seed, voters)) {
            Ok(stats) => total.add(&stats),
            Err(f) => panic!(
                "{f}replay: FERROLOG_SIM_SEED={seed} cargo nextest run -p ferrolog-controlplane --test raft_sim {test}"
            ),
        }
    }
    println!(
        "{test}: {} seeds in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    if replay.is_none() && seeds.len() as u64 >= seeds_default {
        // The faults did happen: a simulation that exercised nothing passes
        // trivially.
        for (what, n) in [
            ("crashes", total.crashes),
            ("crashes after a Ready round", total.unlucky_crashes),
            ("cuts", total.cuts),
            ("snapshots sent", total.snapshots_sent),
            ("snapshots installed", total.snapshots_installed),
            ("refused commands", total.commands_refused),
            ("configuration changes", total.conf_changes),
            ("producer-id blocks", total.producer_blocks),
            ("duplicated messages", total.duplicated),
        ] {
            assert!(n > 0, "{test}: no {what} in {} seeds: {total:?}", seeds.len());
        }
        assert!(
            total.reads_answered >= total.seeds,
            "a read answered per seed: {total:?}"
        );
        assert!(
            total.terms_with_leader > total.seeds,
            "more than one election per seed: {total:?}"
        );
    }
}

#[test]
fn raft_sim_three_voters() {
    run_seeds("raft_sim_three_voters", 3, SEEDS_DEFAULT_3);
}

#[test]
fn raft_sim_five_voters() {
    run_seeds("raft_sim_five_voters", 5, SEEDS_DEFAULT_5);
}

#[test]
fn raft_sim_a_seed_replays_the_same_run() {
    let a = run(Setup::new(7, 3)).unwrap_or_else(|f| panic!("{f}"));
    let b = run(Setup::new(7, 3)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        a, b,
        "two runs of one seed differ: the simulation is not deterministic"
    );
}

#[test]
fn raft_sim_catches_a_node_that_applies_out_of_order() {
    let setup = Setup {
        sabotage: Some(Sabotage::ReorderApplied),
        ..Setup::new(1, 3)
    };
    match run(setup) {
        Ok(stats) => panic!("a node applied out of order, and the checker passed: {stats:?}"),
        Err(f) => assert!(f.message.contains("out of order"), "another failure: {f}"),
    }
}

fn applied(index: u64, term: u64, outcome: Outcome) -> AppliedEntry {
    AppliedEntry {
        index,
        term,
        context: Vec::new(),
        outcome,
    }
}

fn blocks(start: i64, count: i64) -> Outcome {
    Outcome::Command(
        Command::AllocateProducerIds {
            node: NodeId(1),
            count,
        },
        Ok(Applied::ProducerIds { start, count }),
    )
}

#[test]
fn raft_sim_checker_refuses_two_leaders_in_one_term() {
    let mut c = Checker::default();
    c.leader(3, 1).expect("the first leader of term 3");
    c.leader(3, 1).expect("the same leader again");
    c.leader(4, 2).expect("another term, another leader");
    let err = c.leader(3, 2).expect_err("two leaders of term 3");
    assert!(err.contains("election safety"), "{err}");
}

#[test]
fn raft_sim_checker_refuses_gaps_reorders_and_disagreement() {
    let s = ClusterState::default();
    let mut c = Checker::default();
    c.opened(1, 1, &s).expect("open");
    c.opened(2, 1, &s).expect("open");
    c.round(1, false, &[applied(2, 2, Outcome::Empty)], 2, &s)
        .expect("in order");
    let gap = c.round(1, false, &[applied(4, 2, Outcome::Empty)], 4, &s);
    assert!(gap.expect_err("a gap").contains("out of order"));
    let again = c.round(
        2,
        false,
        &[applied(2, 2, Outcome::Empty), applied(2, 2, Outcome::Empty)],
        2,
        &s,
    );
    assert!(again.expect_err("twice").contains("out of order"));
    let mut c2 = Checker::default();
    c2.opened(1, 1, &s).expect("open");
    c2.opened(2, 1, &s).expect("open");
    c2.round(1, false, &[applied(2, 2, Outcome::Empty)], 2, &s)
        .expect("node 1");
    let other = c2.round(2, false, &[applied(2, 3, Outcome::Empty)], 2, &s);
    assert!(other
        .expect_err("another term at 2")
        .contains("state machine safety"));
    // A snapshot installed moves a node forward past entries it never applied.
    c2.round(2, true, &[applied(3, 2, Outcome::Empty)], 3, &s)
        .expect("a snapshot jump");
}

#[test]
fn raft_sim_checker_refuses_different_states_at_one_index() {
    let mut c = Checker::default();
    let s = ClusterState::default();
    c.opened(1, 1, &s).expect("open");
    let mut other = s.clone();
    other.next_producer_id = 5;
    let err = c.opened(2, 1, &other).expect_err("another state at 1");
    assert!(err.contains("another state"), "{err}");
}

#[test]
fn raft_sim_checker_refuses_overlapping_producer_blocks() {
    let s = ClusterState::default();
    let mut c = Checker::default();
    c.opened(1, 1, &s).expect("open");
    c.round(
        1,
        false,
        &[applied(2, 2, blocks(0, 10)), applied(3, 2, blocks(10, 5))],
        3,
        &s,
    )
    .expect("adjacent blocks");
    let err = c
        .round(1, false, &[applied(4, 2, blocks(12, 1))], 4, &s)
        .expect_err("inside 10..15");
    assert!(err.contains("overlaps"), "{err}");
}

#[test]
fn raft_sim_checker_refuses_a_stale_read_index() {
    let mut c = Checker::default();
    c.committed(9);
    c.read_asked(b"r".to_vec(), 1);
    let stale = ReadState {
        index: 8,
        request_ctx: b"r".to_vec(),
    };
    assert!(c
        .read_answered(1, &stale)
        .expect_err("stale")
        .contains("read index"));
    let fresh = ReadState {
        index: 9,
        request_ctx: b"r".to_vec(),
    };
    assert!(c.read_answered(2, &fresh).is_err(), "answered by another node");
    c.read_answered(1, &fresh).expect("fresh");
}

fn log_entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Entry::default()
    }
}

#[test]
fn raft_sim_checker_refuses_diverging_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = RaftLog::open(dir.path().join("a")).expect("open a");
    let mut b = RaftLog::open(dir.path().join("b")).expect("open b");
    a.append(&[
        log_entry(1, 1, b"x"),
        log_entry(2, 1, b"y"),
        log_entry(3, 2, b"z"),
    ])
    .expect("append a");
    b.append(&[
        log_entry(1, 1, b"x"),
        log_entry(2, 1, b"y"),
        log_entry(3, 3, b"w"),
    ])
    .expect("append b");
    let c = Checker::default();
    c.logs(&[(1, &a), (2, &b)])
        .expect("agree up to 2, differ after: allowed");
    b.append(&[log_entry(2, 1, b"other"), log_entry(3, 2, b"z")])
        .expect("rewrite b");
    let err = c
        .logs(&[(1, &a), (2, &b)])
        .expect_err("same term at 3, different at 2");
    assert!(err.contains("log matching"), "{err}");
}

#[test]
fn raft_sim_checker_refuses_a_leader_without_a_committed_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = RaftLog::open(dir.path()).expect("open");
    log.append(&[log_entry(1, 1, b"x"), log_entry(2, 2, b"y")])
        .expect("append");
    let s = ClusterState::default();
    let mut c = Checker::default();
    c.opened(1, 0, &s).expect("open");
    c.round(
        1,
        false,
        &[applied(1, 1, Outcome::Empty), applied(2, 2, Outcome::Empty)],
        2,
        &s,
    )
    .expect("apply");
    c.leader(3, 2).expect("leader");
    c.leader_log(2, 3, &log).expect("holds both");
    c.round(1, false, &[applied(3, 3, Outcome::Empty)], 3, &s)
        .expect("apply 3");
    let err = c.leader_log(2, 3, &log).expect_err("3 is missing");
    assert!(err.contains("leader completeness"), "{err}");
    c.leader(4, 1).expect("a newer leader");
    c.leader_log(2, 3, &log)
        .expect("no longer the newest term: not checked");
}
/// A proposal to a leader, given the context to propose it with.
type Proposer<'a> = &'a dyn Fn(&mut RaftCore, Vec<u8>) -> Result<(), CoreError>;

/// Proposes (again after RETRY_STEPS if lost) until the proposal with
/// context `ctx` is applied on every live node; returns its index.
fn apply_everywhere(sim: &mut Sim, ctx: &str, propose: Proposer<'_>) -> Result<u64, String> {
    let start = sim.now;
    let mut asked = None;
    while sim.now - start <= LIVENESS_STEPS_MAX {
        if let Some(&index) = sim.proposals_applied.get(ctx.as_bytes()) {
            let live = sim.live();
            if live
                .iter()
                .all(|id| sim.nodes[id].core.as_ref().is_some_and(|c| c.applied() >= index))
            {
                return Ok(index);
            }
        } else if asked.is_none_or(|at| sim.now - at >= RETRY_STEPS) {
            if let Some(l) = sim.leaders().first().copied() {
                let core = sim.core(l).expect("a live leader");
                match propose(core, ctx.as_bytes().to_vec()) {
                    Ok(()) | Err(CoreError::Raft(raft::Error::ProposalDropped)) => asked = Some(sim.now),
                    Err(e) => return Err(format!("propose {ctx}: {e}")),
                }
            }
        }
        sim.step(false)?;
    }
    Err(format!(
        "{ctx} not applied everywhere in {LIVENESS_STEPS_MAX} steps"
    ))
}

/// A node that joins after the last snapshot (of a configuration without it)
/// catches up at once: raft-rs ignores a snapshot whose configuration does
/// not name the receiver, so the leader must send one taken after the change
/// that added it, not wait for `snapshot_every` more entries.
#[test]
fn raft_sim_a_joining_learner_installs_a_snapshot_that_names_it() {
    let setup = Setup {
        snapshot_every: Some(1000),
        ..Setup::new(12, 3)
    };
    let mut sim = Sim::new(setup).unwrap_or_else(|m| panic!("{m}"));
    let result = (|| -> Check {
        sim.heal()?;
        let joining = 4;
        sim.nodes.insert(
            joining,
            Node {
                dir: sim._dir.path().join(format!("node-{joining}")),
                core: None,
            },
        );
        sim.start(joining)?;
        let learner = conf_change(ConfChangeType::AddLearnerNode, joining);
        apply_everywhere(&mut sim, "learner", &|c, ctx| {
            c.propose_conf_change(ctx, learner.clone())
        })?;
        let core = sim.core(joining).expect("up");
        assert!(core.applied() > 1, "the learner applied {}", core.applied());
        assert!(
            core.conf_state().learners.contains(&joining),
            "the learner's configuration names it: {:?}",
            core.conf_state()
        );
        Ok(())
    })();
    if let Err(m) = result {
        let trace: Vec<String> = sim.trace.iter().cloned().collect();
        panic!("step {}: {m}\n{}", sim.now, trace.join("\n"));
    }
}

/// A restarted node replays the committed entries after its snapshot; the
/// configuration changes among them must give the outcomes (and the voters
/// that `apply` consults) they gave the first time, not those of the newest
/// configuration change on disk.
#[test]
fn raft_sim_a_restarted_node_replays_conf_changes_as_they_were() {
    let setup = Setup {
        snapshot_every: Some(1000),
        ..Setup::new(11, 3)
    };
    let mut sim = Sim::new(setup).unwrap_or_else(|m| panic!("{m}"));
    let result = (|| -> Check {
        sim.heal()?;
        let learner = conf_change(ConfChangeType::AddLearnerNode, 4);
        apply_everywhere(&mut sim, "learner", &|c, ctx| {
            c.propose_conf_change(ctx, learner.clone())
        })?;
        let ids = Command::AllocateProducerIds {
            node: NodeId(4),
            count: 10,
        };
        let at = apply_everywhere(&mut sim, "ids", &|c, ctx| c.propose(ctx, &ids))?;
        let refused = &sim.checker.applied[&at].outcome;
        assert!(
            matches!(refused, Outcome::Command(_, Err(_))),
            "a learner is not a voter: {refused:?}"
        );
        let voter = conf_change(ConfChangeType::AddNode, 4);
        let last = apply_everywhere(&mut sim, "voter", &|c, ctx| {
            c.propose_conf_change(ctx, voter.clone())
        })?;
        let follower = sim
            .live()
            .into_iter()
            .find(|id| !sim.leaders().contains(id))
            .expect("a follower");
        sim.crash(follower, "to replay");
        sim.start(follower)?;
        assert!(
            sim.core(follower).expect("up").applied() < at,
            "the restarted node replays from a snapshot before the changes"
        );
        for _ in 0..RETRY_STEPS {
            sim.step(false)?;
        }
        let replayed = sim.core(follower).expect("up").applied();
        assert!(replayed >= last, "replayed up to {replayed} of {last}");
        Ok(())
    })();
    if let Err(m) = result {
        let trace: Vec<String> = sim.trace.iter().cloned().collect();
        panic!("step {}: {m}\n{}", sim.now, trace.join("\n"));
    }
}
