//! The durable Raft log against a plain model: random appends (with
//! overwritten suffixes and refused gaps), HardState and ConfState changes,
//! compactions and received snapshots, with the directory reopened at
//! random points. After every step the log, and a fresh open of its
//! directory, answer raft-rs's `Storage` calls exactly as the model does.
//! Plus a torn last record cut at every byte.

// raft's protobuf messages are built field by field, as their generated
// code expects.
#![allow(clippy::field_reassign_with_default)]

use ferrolog_controlplane::raft_log::RaftLog;
use proptest::prelude::*;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};

#[derive(Clone, Debug)]
enum Op {
    /// Entries starting `back` before the end (0: right after it; more than
    /// the log holds: a refused append below the first index), `count` of
    /// them, with `term`.
    Append {
        back: u64,
        count: u64,
        term: u64,
    },
    /// An append that leaves a gap: refused.
    Gap,
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    ConfState {
        voters: Vec<u64>,
        at: u64,
    },
    /// Compact to the entry `from_end` before the last.
    Compact {
        from_end: u64,
    },
    /// A snapshot from a leader, `ahead` entries past the last.
    Snapshot {
        ahead: u64,
        term: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 1u64..4, 1u64..5).prop_map(|(back, count, term)| Op::Append { back, count, term }),
        1 => Just(Op::Gap),
        2 => (0u64..5, 0u64..4, 0u64..20).prop_map(|(term, vote, commit)| Op::HardState { term, vote, commit }),
        1 => (prop::collection::vec(1u64..6, 1..4), 0u64..30).prop_map(|(voters, at)| Op::ConfState { voters, at }),
        1 => (0u64..4).prop_map(|from_end| Op::Compact { from_end }),
        1 => (1u64..4, 1u64..6).prop_map(|(ahead, term)| Op::Snapshot { ahead, term }),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug, Default)]
struct Model {
    snap_index: u64,
    snap_term: u64,
    snap_data: Vec<u8>,
    /// (index, term, data) after the snapshot.
    entries: Vec<(u64, u64, Vec<u8>)>,
    /// The HardState as the log in memory has it.
    hs: (u64, u64, u64),
    /// As its file has it; an open raises it to cover the snapshot.
    hs_file: (u64, u64, u64),
    voters: Vec<u64>,
}

impl Model {
    /// The HardState an open derives: the file's, raised to the snapshot.
    fn hs_opened(&self) -> (u64, u64, u64) {
        let (term, vote, commit) = self.hs_file;
        (term.max(self.snap_term), vote, commit.max(self.snap_index))
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index, |e| e.0)
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

fn snapshot(index: u64, term: u64, data: &[u8], voters: &[u64]) -> Snapshot {
    let mut s = Snapshot::default();
    s.data = data.to_vec().into();
    let m = s.mut_metadata();
    m.index = index;
    m.term = term;
    m.mut_conf_state().voters = voters.to_vec();
    s
}

fn check(log: &RaftLog, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_index().expect("first"), m.snap_index + 1);
    prop_assert_eq!(log.last_index().expect("last"), m.last());
    prop_assert_eq!(log.term(m.snap_index).expect("snapshot term"), m.snap_term);
    for (i, t, _) in &m.entries {
        prop_assert_eq!(log.term(*i).expect("term"), *t);
    }
    let got = log
        .entries(
            m.snap_index + 1,
            m.last() + 1,
            None,
            GetEntriesContext::empty(false),
        )
        .expect("entries");
    let got: Vec<(u64, u64, Vec<u8>)> = got.iter().map(|e| (e.index, e.term, e.data.to_vec())).collect();
    prop_assert_eq!(&got, &m.entries);
    if m.snap_index > 0 {
        prop_assert!(log.term(m.snap_index - 1).is_err(), "compacted terms are gone");
        let s = log.snapshot(m.snap_index, 0).expect("snapshot");
        prop_assert_eq!(s.get_metadata().index, m.snap_index);
        prop_assert_eq!(s.data.to_vec(), m.snap_data.clone());
    }
    let st = log.initial_state().expect("state");
    // The HardState's commit never falls below a snapshot (see RaftLog::open).
    prop_assert_eq!(
        (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
        m.hs
    );
    prop_assert_eq!(&st.conf_state.voters, &m.voters);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = RaftLog::open(dir.path()).expect("open");
    let mut m = Model::default();
    let mut conf_at = 0u64;
    for (n, op) in ops.into_iter().enumerate() {
        let tag = format!("op{n}").into_bytes();
        match op {
            Op::Append { back, count, term } => {
                let start = m.last() + 1 - back.min(m.last() + 1);
                let ents: Vec<Entry> = (start..start + count).map(|i| entry(i, term, &tag)).collect();
                let r = log.append(&ents);
                if start <= m.snap_index {
                    prop_assert!(r.is_err(), "an append below the first index is refused");
                } else {
                    r.expect("append");
                    m.entries.retain(|e| e.0 < start);
                    m.entries
                        .extend(ents.iter().map(|e| (e.index, e.term, tag.clone())));
                }
            }
            Op::Gap => {
                let at = m.last() + 2;
                prop_assert!(log.append(&[entry(at, 1, &tag)]).is_err(), "a gap is refused");
            }
            Op::HardState { term, vote, commit } => {
                let mut hs = HardState::default();
                hs.term = term;
                hs.vote = vote;
                hs.commit = commit;
                log.set_hard_state(hs).expect("hard state");
                m.hs = (term, vote, commit);
                m.hs_file = m.hs;
            }
            Op::ConfState { voters, at } => {
                let mut cs = ConfState::default();
                cs.voters = voters.clone();
                log.set_conf_state(cs, at).expect("conf state");
                m.voters = voters;
                conf_at = at;
            }
            Op::Compact { from_end } => {
                let Some(pos) = m.entries.len().checked_sub(1 + from_end as usize) else {
                    continue;
                };
                let (index, term, _) = m.entries[pos].clone();
                log.compact(snapshot(index, term, &tag, &m.voters))
                    .expect("compact");
                m.entries.drain(..=pos);
                m.snap_index = index;
                m.snap_term = term;
                m.snap_data = tag;
            }
            Op::Snapshot { ahead, term } => {
                let index = m.last() + ahead;
                let voters = vec![9, 10];
                log.apply_snapshot(snapshot(index, term, &tag, &voters))
                    .expect("install");
                m.entries.clear();
                m.snap_index = index;
                m.snap_term = term;
                m.snap_data = tag;
                m.voters = voters;
                conf_at = index;
                m.hs = (m.hs.0.max(term), m.hs.1, m.hs.2.max(index));
                m.hs_file = m.hs;
            }
            Op::Reopen => {
                drop(log);
                log = RaftLog::open(dir.path()).expect("reopen");
                m.hs = m.hs_opened();
                if conf_at < m.snap_index {
                    // The snapshot's conf state is the newer one.
                    let s = log.snapshot(m.snap_index, 0).expect("snapshot");
                    m.voters = s.get_metadata().get_conf_state().voters.clone();
                }
            }
        }
        check(&log, &m)?;
        let reopened = RaftLog::open(dir.path()).expect("open beside");
        let mut derived = m.clone();
        derived.hs = m.hs_opened();
        if conf_at < m.snap_index {
            let s = reopened.snapshot(m.snap_index, 0).expect("snapshot");
            derived.voters = s.get_metadata().get_conf_state().voters.clone();
        }
        check(&reopened, &derived)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_log_and_its_reopened_directory_agree_with_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}

/// A crash in the middle of an append (it never returned) leaves a torn last
/// record: open cuts it at any byte and keeps every whole entry before it.
#[test]
fn a_torn_last_record_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = RaftLog::open(dir.path()).expect("open");
    log.append(&[entry(1, 1, b"first"), entry(2, 1, b"second")])
        .expect("append");
    let before = std::fs::metadata(dir.path().join("log.0")).expect("log").len();
    log.append(&[entry(3, 2, b"the last one, torn")]).expect("append");
    drop(log);
    let whole = std::fs::read(dir.path().join("log.0")).expect("read");
    for cut in before..whole.len() as u64 {
        std::fs::write(dir.path().join("log.0"), &whole[..cut as usize]).expect("write");
        let log = RaftLog::open(dir.path()).expect("open a torn log");
        assert_eq!(log.last_index().expect("last"), 2, "cut at {cut}");
        assert_eq!(log.term(2).expect("term"), 1);
        // The cut is made durable: appending after it continues cleanly.
        drop(log);
        assert_eq!(
            std::fs::metadata(dir.path().join("log.0")).expect("log").len(),
            before,
            "cut at {cut}"
        );
    }
    // A flipped byte in the last record is cut the same way.
    let mut flipped = whole.clone();
    let at = whole.len() - 3;
    flipped[at] ^= 0x40;
    std::fs::write(dir.path().join("log.0"), &flipped).expect("write");
    let mut log = RaftLog::open(dir.path()).expect("open a damaged log");
    assert_eq!(log.last_index().expect("last"), 2);
    log.append(&[entry(3, 3, b"again")])
        .expect("append after the cut");
    drop(log);
    let log = RaftLog::open(dir.path()).expect("reopen");
    assert_eq!(log.term(3).expect("term"), 3);
}
