//! The leader-epoch map of one replica's log: for every epoch that wrote
//! into the log, the offset of its first entry (Kafka's leader-epoch
//! checkpoint, KIP-101), plus the log end.
//!
//! Epochs in a log never decrease with the offset, and one epoch's entries
//! are contiguous, so the map is a short sorted vector (one element per
//! leadership change that wrote, not per entry) and the epoch of any offset
//! is a binary search. It is all a replica needs to know of its log's
//! contents: replication compares logs by (offset, epoch) only, since one
//! epoch has one leader and that leader never writes two different entries
//! at one offset.

use ferrolog_model::{Epoch, Offset};

/// The first offset of an epoch's run of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub start: Offset,
}

/// An epoch and the offset just past its last entry in some log (the answer
/// of Kafka's OffsetForLeaderEpoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEnd {
    pub epoch: Epoch,
    pub end: Offset,
}

/// A map that does not describe a log (decoded from a checkpoint or a
/// request): an operating error of its source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad epoch map: {0}")]
pub struct EpochMapError(pub String);

/// The epochs of a log that starts at offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochMap {
    starts: Vec<EpochStart>,
    end: Offset,
}

impl Default for EpochMap {
    fn default() -> Self {
        EpochMap::new()
    }
}

impl EpochMap {
    /// An empty log.
    pub fn new() -> EpochMap {
        EpochMap {
            starts: Vec::new(),
            end: Offset(0),
        }
    }

    /// A map rebuilt from storage (the durable log's batch headers or its
    /// epoch checkpoint), checked: the first run starts at 0, runs are
    /// non-empty, epochs increase.
    pub fn from_parts(starts: Vec<EpochStart>, end: Offset) -> Result<EpochMap, EpochMapError> {
        validate_runs(&starts, Offset(0), end)?;
        Ok(EpochMap { starts, end })
    }

    pub fn end(&self) -> Offset {
        self.end
    }

    pub fn starts(&self) -> &[EpochStart] {
        &self.starts
    }

    pub fn last_epoch(&self) -> Option<Epoch> {
        self.starts.last().map(|s| s.epoch)
    }

    /// The epoch of the entry at `offset`, if the log holds it.
    pub fn epoch_at(&self, offset: Offset) -> Option<Epoch> {
        if offset.0 < 0 || offset >= self.end {
            return None;
        }
        let i = self.starts.partition_point(|s| s.start <= offset);
        Some(self.starts[i - 1].epoch)
    }

    /// The end of the run of entries that holds `offset`.
    fn run_end_at(&self, offset: Offset) -> Offset {
        let i = self.starts.partition_point(|s| s.start <= offset);
        self.starts.get(i).map_or(self.end, |s| s.start)
    }

    /// Appends `n` entries of `epoch`. Panics if the epoch goes back: only
    /// the leader of the newest epoch writes.
    pub fn append(&mut self, epoch: Epoch, n: u64) {
        assert!(n > 0, "appending no entries");
        let n = i64::try_from(n).expect("an append count fits an offset");
        match self.last_epoch() {
            Some(last) if last == epoch => {}
            Some(last) => {
                assert!(epoch > last, "epoch {epoch} appended after epoch {last}");
                self.starts.push(EpochStart {
                    epoch,
                    start: self.end,
                });
            }
            None => self.starts.push(EpochStart {
                epoch,
                start: self.end,
            }),
        }
        self.end = self.end.plus(n);
    }

    /// Drops the entries at `to` and after.
    pub fn truncate(&mut self, to: Offset) {
        assert!(
            to.0 >= 0 && to <= self.end,
            "truncate to {to} outside [0, {}]",
            self.end
        );
        while self.starts.last().is_some_and(|s| s.start >= to) {
            self.starts.pop();
        }
        self.end = to;
    }

    /// The largest epoch at or below `epoch` in this log and where it ends:
    /// what a leader answers a follower that asks about `epoch` (KIP-101).
    pub fn end_for_epoch(&self, epoch: Epoch) -> Option<EpochEnd> {
        let i = self.starts.partition_point(|s| s.epoch <= epoch);
        if i == 0 {
            return None;
        }
        Some(EpochEnd {
            epoch: self.starts[i - 1].epoch,
            end: self.starts.get(i).map_or(self.end, |s| s.start),
        })
    }

    /// Kafka's answer to a client's OffsetForLeaderEpoch for `requested`
    /// (KIP-101, KIP-320): the log's last epoch ends at the log end; an
    /// older epoch gives the largest epoch at or below it and the start of
    /// the next one; an epoch below every epoch of the log gives itself and
    /// the start of the first (its entries, if any, are gone). None (Kafka's
    /// UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET) for an empty log, a
    /// negative epoch, or one past the log's last.
    pub fn offset_for_leader_epoch(&self, requested: Epoch) -> Option<EpochEnd> {
        let last = self.last_epoch()?;
        if requested.0 < 0 || requested > last {
            return None;
        }
        let i = self.starts.partition_point(|s| s.epoch <= requested);
        if i == 0 {
            return Some(EpochEnd {
                epoch: requested,
                end: self.starts[0].start,
            });
        }
        Some(EpochEnd {
            epoch: self.starts[i - 1].epoch,
            end: self.starts.get(i).map_or(self.end, |s| s.start),
        })
    }

    /// Within the prefix `[0, limit)`, the last run of an epoch at or below
    /// `epoch`, and where that run ends inside the prefix: the mismatch hint
    /// a follower gives for a request whose previous entry is (`limit - 1`,
    /// `epoch`). None when no such entry exists (the leader resends from 0).
    pub fn last_at_or_below(&self, limit: Offset, epoch: Epoch) -> Option<EpochEnd> {
        let limit = limit.min(self.end);
        let k = self.starts.partition_point(|s| s.start < limit);
        let j = self.starts[..k].partition_point(|s| s.epoch <= epoch);
        if j == 0 {
            return None;
        }
        Some(EpochEnd {
            epoch: self.starts[j - 1].epoch,
            end: if j < k { self.starts[j].start } else { limit },
        })
    }

    /// The runs that cover `[start, end)`, the first one starting at `start`:
    /// what an append request carries so the follower learns the epochs of
    /// the entries it writes.
    pub fn slice(&self, start: Offset, end: Offset) -> Vec<EpochStart> {
        assert!(
            start.0 >= 0 && start <= end && end <= self.end,
            "slice [{start}, {end}) outside [0, {})",
            self.end
        );
        if start == end {
            return Vec::new();
        }
        let first = self.starts.partition_point(|s| s.start <= start) - 1;
        let mut runs: Vec<EpochStart> = self.starts[first..]
            .iter()
            .take_while(|s| s.start < end)
            .copied()
            .collect();
        runs[0].start = start;
        runs
    }

    /// The first offset in `[start, end)` where this log holds an entry of
    /// another epoch than `runs` (a slice of another log) says, if any.
    /// Offsets past this log's end do not conflict: they are missing.
    pub fn first_conflict(&self, runs: &[EpochStart], end: Offset) -> Option<Offset> {
        for (i, run) in runs.iter().enumerate() {
            let run_end = runs.get(i + 1).map_or(end, |s| s.start);
            let hi = run_end.min(self.end);
            if run.start >= hi {
                return None;
            }
            if self.epoch_at(run.start) != Some(run.epoch) {
                return Some(run.start);
            }
            let own_end = self.run_end_at(run.start);
            if own_end < hi {
                return Some(own_end);
            }
        }
        None
    }
}

/// Runs describe `[start, end)`: the first starts at `start` (none if the
/// range is empty), starts increase strictly and stay below `end`, epochs
/// increase strictly.
pub(crate) fn validate_runs(runs: &[EpochStart], start: Offset, end: Offset) -> Result<(), EpochMapError> {
    if end < start {
        return Err(EpochMapError(format!("end {end} before start {start}")));
    }
    match runs.first() {
        None if end == start => return Ok(()),
        None => return Err(EpochMapError(format!("no epochs for [{start}, {end})"))),
        Some(first) if first.start != start => {
            return Err(EpochMapError(format!(
                "first run at {}, expected {start}",
                first.start
            )))
        }
        Some(_) => {}
    }
    for pair in runs.windows(2) {
        if pair[1].start <= pair[0].start || pair[1].epoch <= pair[0].epoch {
            return Err(EpochMapError(format!("runs out of order: {:?}", pair)));
        }
    }
    if runs.last().is_some_and(|r| r.start >= end) {
        return Err(EpochMapError(format!("a run starts at or past the end {end}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(runs: &[(i32, i64)], end: i64) -> EpochMap {
        EpochMap::from_parts(
            runs.iter()
                .map(|&(e, s)| EpochStart {
                    epoch: Epoch(e),
                    start: Offset(s),
                })
                .collect(),
            Offset(end),
        )
        .expect("a valid map")
    }

    #[test]
    fn epoch_at_and_truncate() {
        let mut m = map(&[(1, 0), (3, 4), (4, 6)], 9);
        assert_eq!(m.epoch_at(Offset(0)), Some(Epoch(1)));
        assert_eq!(m.epoch_at(Offset(5)), Some(Epoch(3)));
        assert_eq!(m.epoch_at(Offset(8)), Some(Epoch(4)));
        assert_eq!(m.epoch_at(Offset(9)), None);
        m.truncate(Offset(6));
        assert_eq!(m, map(&[(1, 0), (3, 4)], 6));
        m.append(Epoch(5), 2);
        assert_eq!(m, map(&[(1, 0), (3, 4), (5, 6)], 8));
    }

    #[test]
    fn end_for_epoch_is_kip_101() {
        let m = map(&[(1, 0), (3, 4), (4, 6)], 9);
        assert_eq!(m.end_for_epoch(Epoch(0)), None);
        assert_eq!(
            m.end_for_epoch(Epoch(2)),
            Some(EpochEnd {
                epoch: Epoch(1),
                end: Offset(4)
            })
        );
        assert_eq!(
            m.end_for_epoch(Epoch(9)),
            Some(EpochEnd {
                epoch: Epoch(4),
                end: Offset(9)
            })
        );
    }

    #[test]
    fn offset_for_leader_epoch_answers_as_kafka() {
        let m = map(&[(1, 0), (3, 4), (4, 6)], 9);
        let end = |e: i32, o: i64| {
            Some(EpochEnd {
                epoch: Epoch(e),
                end: Offset(o),
            })
        };
        assert_eq!(m.offset_for_leader_epoch(Epoch(4)), end(4, 9), "the last epoch");
        assert_eq!(m.offset_for_leader_epoch(Epoch(3)), end(3, 6));
        assert_eq!(m.offset_for_leader_epoch(Epoch(2)), end(1, 4), "no epoch 2 here");
        assert_eq!(
            m.offset_for_leader_epoch(Epoch(0)),
            end(0, 0),
            "below every epoch"
        );
        assert_eq!(m.offset_for_leader_epoch(Epoch(5)), None, "past the last epoch");
        assert_eq!(m.offset_for_leader_epoch(Epoch(-1)), None);
        assert_eq!(EpochMap::new().offset_for_leader_epoch(Epoch(0)), None);
    }

    #[test]
    fn hint_is_limited_to_the_prefix_and_epoch() {
        let m = map(&[(1, 0), (3, 4), (4, 6)], 9);
        assert_eq!(
            m.last_at_or_below(Offset(5), Epoch(4)),
            Some(EpochEnd {
                epoch: Epoch(3),
                end: Offset(5)
            })
        );
        assert_eq!(
            m.last_at_or_below(Offset(9), Epoch(2)),
            Some(EpochEnd {
                epoch: Epoch(1),
                end: Offset(4)
            })
        );
        assert_eq!(m.last_at_or_below(Offset(0), Epoch(9)), None);
    }

    #[test]
    fn slice_and_conflict() {
        let m = map(&[(1, 0), (3, 4), (4, 6)], 9);
        let s = m.slice(Offset(5), Offset(8));
        assert_eq!(s, map(&[(1, 0), (3, 5), (4, 6)], 9).starts()[1..].to_vec());
        let other = map(&[(1, 0), (2, 5)], 7);
        assert_eq!(other.first_conflict(&s, Offset(8)), Some(Offset(5)));
        let same = map(&[(1, 0), (3, 4)], 6);
        assert_eq!(same.first_conflict(&s, Offset(8)), None);
        assert!(EpochMap::from_parts(vec![], Offset(1)).is_err());
    }
}
