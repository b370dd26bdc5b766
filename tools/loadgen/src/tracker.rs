//! Per-message bookkeeping: which messages were acknowledged on which partition (from the
//! producers' delivery reports), how often each was received (by the consumers), and what the
//! two together say: duplicates, gaps and messages received without an acknowledgement.
//!
//! Messages are named by (producer, sequence number) from their header. A producer's
//! [`AckLog`] lives in its delivery callback's state; each consumer keeps its own
//! [`ReceiveLog`], merged at the end. Both cost a few bytes per message sent (2 per
//! acknowledgement, 1 per receipt per consumer).

use serde::Serialize;

/// Partition marker of a message with no delivery report (yet).
const NOT_REPORTED: u16 = u16::MAX;
/// Partition marker of a message whose delivery failed.
const FAILED: u16 = u16::MAX - 1;
/// Highest partition number an [`AckLog`] records.
pub const PARTITION_MAX: u16 = FAILED - 1;

/// One producer's delivery reports: the partition of each acknowledged message, by sequence
/// number.
#[derive(Clone, Debug, Default)]
pub struct AckLog {
    by_seq: Vec<u16>,
}

impl AckLog {
    fn slot(&mut self, seq: u64) -> &mut u16 {
        let i = usize::try_from(seq).unwrap_or_else(|_| panic!("sequence number {seq} exceeds memory"));
        if i >= self.by_seq.len() {
            self.by_seq.resize(i + 1, NOT_REPORTED);
        }
        &mut self.by_seq[i]
    }

    /// Message `seq` was acknowledged on `partition` (at most [`PARTITION_MAX`]).
    pub fn acked(&mut self, seq: u64, partition: u16) {
        assert!(
            partition <= PARTITION_MAX,
            "partition {partition} out of the ack log's range"
        );
        *self.slot(seq) = partition;
    }

    /// The delivery of message `seq` failed.
    pub fn failed(&mut self, seq: u64) {
        *self.slot(seq) = FAILED;
    }

    /// The partition message `seq` was acknowledged on, if it was.
    pub fn partition_of(&self, seq: u64) -> Option<u16> {
        let p = *self.by_seq.get(usize::try_from(seq).ok()?)?;
        (p <= PARTITION_MAX).then_some(p)
    }

    /// Highest sequence number with a report, plus one.
    pub fn len(&self) -> u64 {
        self.by_seq.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// How many times each message was received (saturating at 255), by producer and sequence.
#[derive(Clone, Debug, Default)]
pub struct ReceiveLog {
    by_producer: Vec<Vec<u8>>,
}

impl ReceiveLog {
    pub fn record(&mut self, producer: u16, seq: u64) {
        let p = usize::from(producer);
        if p >= self.by_producer.len() {
            self.by_producer.resize_with(p + 1, Vec::new);
        }
        let counts = &mut self.by_producer[p];
        let i = usize::try_from(seq).unwrap_or_else(|_| panic!("sequence number {seq} exceeds memory"));
        if i >= counts.len() {
            counts.resize(i + 1, 0);
        }
        counts[i] = counts[i].saturating_add(1);
    }

    /// Adds another consumer's receipts.
    pub fn merge(&mut self, other: &ReceiveLog) {
        if other.by_producer.len() > self.by_producer.len() {
            self.by_producer.resize_with(other.by_producer.len(), Vec::new);
        }
        for (mine, theirs) in self.by_producer.iter_mut().zip(&other.by_producer) {
            if theirs.len() > mine.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m = m.saturating_add(*t);
            }
        }
    }

    /// Times message (`producer`, `seq`) was received.
    pub fn count(&self, producer: u16, seq: u64) -> u8 {
        self.by_producer
            .get(usize::from(producer))
            .and_then(|c| c.get(usize::try_from(seq).ok()?))
            .copied()
            .unwrap_or(0)
    }
}

/// What the acknowledgements and receipts of one partition say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartitionIntegrity {
    pub partition: u32,
    /// Messages acknowledged on this partition.
    pub acked: u64,
    /// Of those, received at least once.
    pub consumed: u64,
    /// Receipts beyond the first of those messages.
    pub duplicates: u64,
    /// Acknowledged on this partition, never received.
    pub gaps: u64,
}

/// What the acknowledgements and receipts of the whole run say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Acknowledged messages received at least once.
    pub consumed_unique: u64,
    /// Receipts beyond the first of acknowledged messages.
    pub duplicates: u64,
    /// Acknowledged messages never received.
    pub gaps: u64,
    /// Receipts of messages of this run that were not acknowledged (failed, or a delivery
    /// report that never came, yet the broker stored them).
    pub unacked_received: u64,
    pub per_partition: Vec<PartitionIntegrity>,
}

/// Compares the producers' acknowledgements (`acks[producer]`) with the receipts, for a topic of
/// `partitions` partitions. Without consumers (`consumed` false) nothing counts as a gap.
pub fn check(acks: &[AckLog], received: &ReceiveLog, partitions: u32, consumed: bool) -> Integrity {
    let mut per_partition: Vec<PartitionIntegrity> = (0..partitions)
        .map(|partition| PartitionIntegrity {
            partition,
            ..PartitionIntegrity::default()
        })
        .collect();
    let mut unacked_received = 0u64;
    for (producer, log) in acks.iter().enumerate() {
        let producer = u16::try_from(producer).unwrap_or_else(|_| panic!("producer {producer} out of range"));
        for (seq, &partition) in log.by_seq.iter().enumerate() {
            let n = u64::from(received.count(producer, seq as u64));
            if partition > PARTITION_MAX {
                unacked_received += n;
                continue;
            }
            let p = per_partition
                .get_mut(usize::from(partition))
                .unwrap_or_else(|| panic!("partition {partition} acknowledged, the topic has {partitions}"));
            p.acked += 1;
            if n == 0 {
                p.gaps += u64::from(consumed);
            } else {
                p.consumed += 1;
                p.duplicates += n - 1;
            }
        }
        // Receipts past the last report (a report that never came).
        if let Some(counts) = received.by_producer.get(usize::from(producer)) {
            unacked_received += counts
                .iter()
                .skip(log.by_seq.len())
                .map(|&c| u64::from(c))
                .sum::<u64>();
        }
    }
    // Receipts of producers with no reports at all.
    for counts in received.by_producer.iter().skip(acks.len()) {
        unacked_received += counts.iter().map(|&c| u64::from(c)).sum::<u64>();
    }
    Integrity {
        consumed_unique: per_partition.iter().map(|p| p.consumed).sum(),
        duplicates: per_partition.iter().map(|p| p.duplicates).sum(),
        gaps: per_partition.iter().map(|p| p.gaps).sum(),
        unacked_received,
        per_partition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_received_once_is_clean() {
        let mut acks = vec![AckLog::default(), AckLog::default()];
        let mut rx = ReceiveLog::default();
        for seq in 0..100 {
            for (producer, log) in acks.iter_mut().enumerate() {
                log.acked(seq, (seq % 3) as u16);
                rx.record(producer as u16, seq);
            }
        }
        let i = check(&acks, &rx, 3, true);
        assert_eq!(
            (i.consumed_unique, i.duplicates, i.gaps, i.unacked_received),
            (200, 0, 0, 0)
        );
        assert_eq!(i.per_partition.iter().map(|p| p.acked).sum::<u64>(), 200);
        assert_eq!(i.per_partition[0].acked, 2 * 34);
    }

    #[test]
    fn duplicates_gaps_and_unacked_receipts_are_attributed() {
        let mut acks = vec![AckLog::default()];
        acks[0].acked(0, 0);
        acks[0].acked(1, 1);
        acks[0].acked(2, 1);
        acks[0].failed(3);
        acks[0].acked(5, 0); // 4 has no report
        let mut a = ReceiveLog::default();
        let mut b = ReceiveLog::default();
        a.record(0, 0);
        b.record(0, 0); // duplicate on partition 0, seen by two consumers
        a.record(0, 1);
        a.record(0, 3); // failed, yet stored
        a.record(0, 4); // no report
        a.record(0, 9); // past the last report
        b.record(1, 0); // a producer that reported nothing
        a.merge(&b);
        assert_eq!(a.count(0, 0), 2);
        let i = check(&acks, &a, 2, true);
        assert_eq!(check(&acks, &a, 2, false).gaps, 0, "no gaps without consumers");
        assert_eq!(i.duplicates, 1);
        assert_eq!(i.gaps, 2, "seq 2 (partition 1) and seq 5 (partition 0)");
        assert_eq!(i.consumed_unique, 2);
        assert_eq!(i.unacked_received, 4);
        assert_eq!(
            i.per_partition,
            vec![
                PartitionIntegrity {
                    partition: 0,
                    acked: 2,
                    consumed: 1,
                    duplicates: 1,
                    gaps: 1
                },
                PartitionIntegrity {
                    partition: 1,
                    acked: 2,
                    consumed: 1,
                    duplicates: 0,
                    gaps: 1
                },
            ]
        );
    }

    #[test]
    fn ack_log_lookup() {
        let mut log = AckLog::default();
        assert!(log.is_empty());
        log.acked(3, 7);
        log.failed(1);
        assert_eq!(log.len(), 4);
        assert_eq!(log.partition_of(3), Some(7));
        assert_eq!(log.partition_of(1), None);
        assert_eq!(log.partition_of(0), None);
        assert_eq!(log.partition_of(99), None);
    }

    #[test]
    fn receipt_counts_saturate() {
        let mut rx = ReceiveLog::default();
        for _ in 0..300 {
            rx.record(0, 0);
        }
        assert_eq!(rx.count(0, 0), u8::MAX);
        let copy = rx.clone();
        rx.merge(&copy);
        assert_eq!(rx.count(0, 0), u8::MAX);
    }
}
