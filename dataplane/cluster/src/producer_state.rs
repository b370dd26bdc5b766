//! Idempotent-producer state of one partition (Kafka KIP-98, without
//! transactions), after Kafka's `ProducerStateManager`.
//!
//! For every producer id that wrote to the partition it keeps the epoch and
//! the sequence numbers and offsets of its last [`BATCHES_PER_PRODUCER`]
//! batches, and decides for a new batch: append it, answer it as a
//! duplicate of a batch already in the log, or refuse it (stale epoch,
//! sequence gap). Sans-IO: the partition (`shard::Partition`) calls
//! [`ProducerStateTable::check_and_record`] from inside the log's append
//! section, so the decision and the batch's offsets are one atomic step, and
//! [`ProducerStateTable::discard_from`] when the log discards batches that a
//! failed flush never made durable. It lives on the partition's owner shard.
//!
//! At startup the partition rebuilds the table from the log's batch headers,
//! or takes it from the snapshot its last clean close wrote
//! ([`ProducerStateTable::encode_snapshot`], [`decode_snapshot`]; CRC-checked
//! and used only if taken at the log's current end).
//!
//! Bound: at most [`PRODUCERS_PER_PARTITION_MAX`] producers per partition; a
//! new one beyond that evicts the one that appended least recently. An
//! evicted producer is unknown again, and an unknown producer's next batch is
//! accepted whatever its sequence (as Kafka does once a producer's state has
//! expired), so a retry of its last batch after eviction would be appended
//! twice. At ~250 bytes a producer the bound costs at most ~2.5 MB per
//! partition.

use ferrolog_model::{BatchHeader, Offset};
use std::collections::{BTreeMap, HashMap, VecDeque};
use thiserror::Error;

/// Batches remembered per producer: Kafka's limit on in-flight requests of
/// an idempotent producer (max.in.flight.requests.per.connection <= 5), so
/// any retry a client can send is one of these.
pub const BATCHES_PER_PRODUCER: usize = 5;

/// Producers remembered per partition; see the module doc.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

/// The idempotence fields of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl ProducerBatch {
    /// The batch's producer fields; `None` for a batch of a producer without
    /// an id (not idempotent: nothing is checked). The header must have
    /// passed `shard::check_producer_batch` (at least one record).
    pub fn from_header(h: &BatchHeader) -> Option<ProducerBatch> {
        if h.producer_id < 0 {
            return None;
        }
        Some(ProducerBatch {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: seq_plus(h.base_sequence, i64::from(h.record_count) - 1),
        })
    }
}

/// `seq + n` in the sequence space, which wraps from `i32::MAX` to 0.
pub fn seq_plus(seq: i32, n: i64) -> i32 {
    let space = i64::from(i32::MAX) + 1;
    (i64::from(seq) + n).rem_euclid(space) as i32
}

/// Where a producer's batch went in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new batch, in sequence: append it.
    Append,
    /// A retry of a batch the log already has: do not append; answer with
    /// the original's offsets.
    Duplicate(BatchMeta),
}

/// Why a batch is refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    StaleEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: the first batch of new epoch {epoch} has sequence {first_seq}, not 0")]
    NewEpochNotAtZero {
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
    },
    #[error("producer {producer_id} epoch {epoch}: sequence {first_seq} out of order, expected {expected}")]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        expected: i32,
    },
}

struct ProducerEntry {
    epoch: i16,
    /// Oldest first; never empty (an entry whose last batch is discarded is
    /// removed).
    batches: VecDeque<BatchMeta>,
    /// Key of this producer in `ProducerStateTable::recency`.
    used: u64,
}

impl ProducerEntry {
    fn last_seq(&self) -> i32 {
        self.batches
            .back()
            .expect("a producer entry always holds a batch")
            .last_seq
    }
}

/// One producer as DescribeProducers shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_seq: i32,
    pub last_offset: Offset,
}

/// The producers of one partition; see the module doc.
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Producer ids by last use, oldest first, for eviction.
    recency: BTreeMap<u64, i64>,
    next_use: u64,
    producers_max: usize,
}

impl ProducerStateTable {
    pub fn new(producers_max: usize) -> ProducerStateTable {
        assert!(
            producers_max > 0,
            "a producer table must hold at least one producer"
        );
        ProducerStateTable {
            producers: HashMap::new(),
            recency: BTreeMap::new(),
            next_use: 0,
            producers_max,
        }
    }

    /// Every producer the table holds, by id: its epoch and the last
    /// sequence and offset of its newest batch (DescribeProducers).
    pub fn describe(&self) -> Vec<ProducerView> {
        let mut out: Vec<ProducerView> = self
            .producers
            .iter()
            .map(|(&producer_id, e)| ProducerView {
                producer_id,
                epoch: e.epoch,
                last_seq: e.last_seq(),
                last_offset: e.batches.back().expect("never empty").last_offset,
            })
            .collect();
        out.sort_by_key(|v| v.producer_id);
        out
    }

    /// Producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The rules of Kafka's `ProducerAppendInfo`, in order: an unknown
    /// producer may start at any sequence; an older epoch is fenced; a newer
    /// epoch must start at sequence 0; within the epoch a batch equal to a
    /// remembered one is a duplicate, and any other must follow the last one.
    pub fn check(&self, b: &ProducerBatch) -> Result<Verdict, SequenceError> {
        let Some(e) = self.producers.get(&b.producer_id) else {
            return Ok(Verdict::Append);
        };
        if b.epoch < e.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id: b.producer_id,
                epoch: b.epoch,
                current: e.epoch,
            });
        }
        if b.epoch > e.epoch {
            if b.first_seq != 0 {
                return Err(SequenceError::NewEpochNotAtZero {
                    producer_id: b.producer_id,
                    epoch: b.epoch,
                    first_seq: b.first_seq,
                });
            }
            return Ok(Verdict::Append);
        }
        if let Some(m) = e
            .batches
            .iter()
            .find(|m| m.first_seq == b.first_seq && m.last_seq == b.last_seq)
        {
            return Ok(Verdict::Duplicate(*m));
        }
        let expected = seq_plus(e.last_seq(), 1);
        if b.first_seq != expected {
            return Err(SequenceError::OutOfOrder {
                producer_id: b.producer_id,
                epoch: b.epoch,
                first_seq: b.first_seq,
                expected,
            });
        }
        Ok(Verdict::Append)
    }

    /// `check`, and if the verdict is `Append`, records the batch at the
    /// given offsets (where the log is about to put it).
    pub fn check_and_record(
        &mut self,
        b: &ProducerBatch,
        base_offset: Offset,
        last_offset: Offset,
    ) -> Result<Verdict, SequenceError> {
        let verdict = self.check(b)?;
        match verdict {
            Verdict::Append => self.record(b, base_offset, last_offset),
            Verdict::Duplicate(_) => self.touch(b.producer_id),
        }
        Ok(verdict)
    }

    /// Records a batch the log holds, without checks: for appends that
    /// passed `check` and for rebuilding the table from the log at startup
    /// (the log is the truth; a batch of an older epoch than the one known
    /// is ignored, as it cannot change what later batches are checked
    /// against).
    pub fn record(&mut self, b: &ProducerBatch, base_offset: Offset, last_offset: Offset) {
        assert!(
            base_offset <= last_offset,
            "batch offsets {base_offset}..{last_offset} run backwards"
        );
        let meta = BatchMeta {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            base_offset,
            last_offset,
        };
        let used = self.next_use;
        self.next_use += 1;
        match self.producers.get_mut(&b.producer_id) {
            Some(e) => {
                if b.epoch < e.epoch {
                    return;
                }
                if b.epoch > e.epoch {
                    e.epoch = b.epoch;
                    e.batches.clear();
                }
                if e.batches.len() == BATCHES_PER_PRODUCER {
                    e.batches.pop_front();
                }
                e.batches.push_back(meta);
                self.recency.remove(&e.used);
                e.used = used;
            }
            None => {
                let mut batches = VecDeque::with_capacity(BATCHES_PER_PRODUCER);
                batches.push_back(meta);
                self.producers.insert(
                    b.producer_id,
                    ProducerEntry {
                        epoch: b.epoch,
                        batches,
                        used,
                    },
                );
            }
        }
        self.recency.insert(used, b.producer_id);
        while self.producers.len() > self.producers_max {
            let (_, oldest) = self.recency.pop_first().expect("recency lists every producer");
            self.producers.remove(&oldest);
        }
        debug_assert_eq!(self.producers.len(), self.recency.len());
    }

    fn touch(&mut self, producer_id: i64) {
        let used = self.next_use;
        self.next_use += 1;
        if let Some(e) = self.producers.get_mut(&producer_id) {
            self.recency.remove(&e.used);
            e.used = used;
            self.recency.insert(used, producer_id);
        }
    }

    /// Whether `meta` is still a remembered batch of this producer and
    /// epoch (it is gone once discarded or evicted).
    pub fn contains(&self, producer_id: i64, epoch: i16, meta: &BatchMeta) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.epoch == epoch && e.batches.contains(meta))
    }

    /// Forgets every batch at or after `from`: the log discarded them (a
    /// failed flush, a truncation). A producer left without batches becomes
    /// unknown. Linear in the producers; discards are rare.
    pub fn discard_from(&mut self, from: Offset) {
        let recency = &mut self.recency;
        self.producers.retain(|_, e| {
            e.batches.retain(|m| m.base_offset < from);
            if e.batches.is_empty() {
                recency.remove(&e.used);
            }
            !e.batches.is_empty()
        });
        debug_assert_eq!(self.producers.len(), self.recency.len());
    }

    /// The table as a snapshot taken when the log ended at `log_end`; see
    /// [`decode_snapshot`]. Producers go oldest use first, so a decoded
    /// table evicts in the same order.
    pub fn encode_snapshot(&self, log_end: Offset) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + self.producers.len() * 64);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&log_end.0.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for pid in self.recency.values() {
            let e = &self.producers[pid];
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.push(e.batches.len() as u8);
            for m in &e.batches {
                out.extend_from_slice(&m.first_seq.to_be_bytes());
                out.extend_from_slice(&m.last_seq.to_be_bytes());
                out.extend_from_slice(&m.base_offset.0.to_be_bytes());
                out.extend_from_slice(&m.last_offset.0.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }
}

const SNAPSHOT_MAGIC: [u8; 4] = *b"FLPS";
const SNAPSHOT_VERSION: u16 = 1;
/// Magic, version, log end, producer count.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 8 + 4;
const SNAPSHOT_CRC_BYTES: usize = 4;

/// Why a producer state snapshot cannot be used (the caller scans the log).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct BadSnapshot(pub String);

impl From<&str> for BadSnapshot {
    fn from(s: &str) -> BadSnapshot {
        BadSnapshot(s.to_string())
    }
}

impl From<String> for BadSnapshot {
    fn from(s: String) -> BadSnapshot {
        BadSnapshot(s)
    }
}

/// Reads fixed-width big-endian fields off the front of a byte string.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BadSnapshot> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or("producer state snapshot ends early")?;
        self.0 = rest;
        Ok(*head)
    }
}

/// A table and the log end it was taken at, from `encode_snapshot` bytes.
/// Anything that does not check out (length, magic, version, CRC, counts,
/// offsets) is an error: the caller rebuilds from the log instead.
pub fn decode_snapshot(
    bytes: &[u8],
    producers_max: usize,
) -> Result<(ProducerStateTable, Offset), BadSnapshot> {
    let body_len = bytes
        .len()
        .checked_sub(SNAPSHOT_CRC_BYTES)
        .ok_or("producer state snapshot too short")?;
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_be_bytes(crc.try_into().expect("four bytes"));
    if crc32c::crc32c(body) != stored {
        return Err("producer state snapshot fails its CRC".into());
    }
    let mut f = Fields(body);
    if f.take::<4>()? != SNAPSHOT_MAGIC {
        return Err("not a producer state snapshot".into());
    }
    let version = u16::from_be_bytes(f.take()?);
    if version != SNAPSHOT_VERSION {
        return Err(format!("producer state snapshot version {version}").into());
    }
    let log_end = Offset(i64::from_be_bytes(f.take()?));
    let count = u32::from_be_bytes(f.take()?);
    let mut table = ProducerStateTable::new(producers_max);
    for _ in 0..count {
        let producer_id = i64::from_be_bytes(f.take()?);
        let epoch = i16::from_be_bytes(f.take()?);
        let [batches] = f.take::<1>()?;
        if producer_id < 0 || !(1..=BATCHES_PER_PRODUCER).contains(&usize::from(batches)) {
            return Err(
                format!("producer state snapshot: producer {producer_id} with {batches} batches").into(),
            );
        }
        for _ in 0..batches {
            let first_seq = i32::from_be_bytes(f.take()?);
            let last_seq = i32::from_be_bytes(f.take()?);
            let base = Offset(i64::from_be_bytes(f.take()?));
            let last = Offset(i64::from_be_bytes(f.take()?));
            if first_seq < 0 || last_seq < 0 || base > last || last >= log_end {
                return Err(format!(
                    "producer state snapshot: producer {producer_id} batch {first_seq}..{last_seq} at {base}..{last}"
                )
                .into());
            }
            let b = ProducerBatch {
                producer_id,
                epoch,
                first_seq,
                last_seq,
            };
            table.record(&b, base, last);
        }
    }
    if !f.0.is_empty() {
        return Err("producer state snapshot has trailing bytes".into());
    }
    Ok((table, log_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, records: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: seq_plus(first_seq, records - 1),
        }
    }

    /// Checks `b` and records it at `*next` if appended, as the log would.
    fn offer(t: &mut ProducerStateTable, b: ProducerBatch, next: &mut i64) -> Result<Verdict, SequenceError> {
        let count = (i64::from(b.last_seq) - i64::from(b.first_seq)).rem_euclid(1 << 31) + 1;
        let v = t.check_and_record(&b, Offset(*next), Offset(*next + count - 1))?;
        if v == Verdict::Append {
            *next += count;
        }
        Ok(v)
    }

    #[test]
    fn in_sequence_batches_append_and_a_retry_is_a_duplicate_with_its_offsets() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        assert_eq!(offer(&mut t, batch(7, 0, 0, 3), &mut next), Ok(Verdict::Append));
        assert_eq!(offer(&mut t, batch(7, 0, 3, 2), &mut next), Ok(Verdict::Append));
        assert_eq!(next, 5);
        // Both remembered batches are recognised, with their own offsets.
        let first = BatchMeta {
            first_seq: 0,
            last_seq: 2,
            base_offset: Offset(0),
            last_offset: Offset(2),
        };
        assert_eq!(
            offer(&mut t, batch(7, 0, 0, 3), &mut next),
            Ok(Verdict::Duplicate(first))
        );
        let Ok(Verdict::Duplicate(second)) = offer(&mut t, batch(7, 0, 3, 2), &mut next) else {
            panic!("not a duplicate")
        };
        assert_eq!((second.base_offset, second.last_offset), (Offset(3), Offset(4)));
        assert_eq!(next, 5, "duplicates are not appended");
        assert!(t.contains(7, 0, &first));
        assert!(!t.contains(7, 1, &first));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        for seq in 0..7 {
            assert_eq!(offer(&mut t, batch(1, 0, seq, 1), &mut next), Ok(Verdict::Append));
        }
        for seq in 2..7 {
            assert!(matches!(
                offer(&mut t, batch(1, 0, seq, 1), &mut next),
                Ok(Verdict::Duplicate(_))
            ));
        }
        // Older than the cache: out of order, as in Kafka.
        assert!(matches!(
            offer(&mut t, batch(1, 0, 1, 1), &mut next),
            Err(SequenceError::OutOfOrder { expected: 7, .. })
        ));
    }

    #[test]
    fn a_gap_or_an_overlap_is_out_of_order() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        offer(&mut t, batch(1, 0, 0, 5), &mut next).expect("first");
        assert_eq!(
            offer(&mut t, batch(1, 0, 6, 1), &mut next),
            Err(SequenceError::OutOfOrder {
                producer_id: 1,
                epoch: 0,
                first_seq: 6,
                expected: 5
            })
        );
        // Same start as a remembered batch but a different length.
        assert!(matches!(
            offer(&mut t, batch(1, 0, 0, 2), &mut next),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(next, 5);
        assert_eq!(offer(&mut t, batch(1, 0, 5, 1), &mut next), Ok(Verdict::Append));
    }

    #[test]
    fn an_older_epoch_is_fenced() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        offer(&mut t, batch(1, 3, 0, 1), &mut next).expect("first");
        assert_eq!(
            offer(&mut t, batch(1, 2, 1, 1), &mut next),
            Err(SequenceError::StaleEpoch {
                producer_id: 1,
                epoch: 2,
                current: 3
            })
        );
        // Even a batch that would be a duplicate in the old epoch.
        assert!(matches!(
            offer(&mut t, batch(1, 2, 0, 1), &mut next),
            Err(SequenceError::StaleEpoch { .. })
        ));
    }

    #[test]
    fn a_new_epoch_must_start_at_zero_and_then_resets_the_state() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        offer(&mut t, batch(1, 0, 0, 4), &mut next).expect("first");
        assert_eq!(
            offer(&mut t, batch(1, 1, 4, 1), &mut next),
            Err(SequenceError::NewEpochNotAtZero {
                producer_id: 1,
                epoch: 1,
                first_seq: 4
            })
        );
        assert_eq!(offer(&mut t, batch(1, 1, 0, 2), &mut next), Ok(Verdict::Append));
        // The old epoch's batches are forgotten and its epoch fenced.
        assert!(matches!(
            offer(&mut t, batch(1, 0, 0, 4), &mut next),
            Err(SequenceError::StaleEpoch { .. })
        ));
        assert!(matches!(
            offer(&mut t, batch(1, 1, 0, 2), &mut next),
            Ok(Verdict::Duplicate(_))
        ));
        assert_eq!(offer(&mut t, batch(1, 1, 2, 1), &mut next), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_from_i32_max_to_zero() {
        assert_eq!(seq_plus(i32::MAX, 1), 0);
        assert_eq!(seq_plus(i32::MAX - 1, 3), 1);
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        // A batch whose sequences run over the top: MAX-1, MAX, 0, 1.
        let across = batch(1, 0, i32::MAX - 1, 4);
        assert_eq!(across.last_seq, 1);
        assert_eq!(offer(&mut t, across, &mut next), Ok(Verdict::Append));
        assert_eq!(next, 4);
        assert!(matches!(
            offer(&mut t, across, &mut next),
            Ok(Verdict::Duplicate(_))
        ));
        assert_eq!(offer(&mut t, batch(1, 0, 2, 1), &mut next), Ok(Verdict::Append));
        // And a batch ending exactly at MAX is followed by 0.
        let mut t = ProducerStateTable::new(10);
        offer(&mut t, batch(2, 0, i32::MAX - 1, 2), &mut next).expect("first");
        assert!(matches!(
            offer(&mut t, batch(2, 0, 1, 1), &mut next),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(offer(&mut t, batch(2, 0, 0, 1), &mut next), Ok(Verdict::Append));
    }

    #[test]
    fn an_unknown_producer_starts_anywhere_and_producers_are_independent() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        assert_eq!(
            offer(&mut t, batch(1, 5, 1234, 1), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(offer(&mut t, batch(2, 0, 0, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(
            offer(&mut t, batch(1, 5, 1235, 1), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(offer(&mut t, batch(2, 0, 1, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_least_recently_used_producer_is_evicted_beyond_the_bound() {
        let mut t = ProducerStateTable::new(3);
        let mut next = 0;
        for pid in 1..=3 {
            offer(&mut t, batch(pid, 0, 0, 1), &mut next).expect("append");
        }
        // A duplicate counts as use: producer 1 is now the most recent.
        assert!(matches!(
            offer(&mut t, batch(1, 0, 0, 1), &mut next),
            Ok(Verdict::Duplicate(_))
        ));
        offer(&mut t, batch(4, 0, 0, 1), &mut next).expect("append");
        assert_eq!(t.len(), 3);
        // Producer 2 was evicted: unknown again, any sequence goes.
        assert_eq!(offer(&mut t, batch(2, 0, 99, 1), &mut next), Ok(Verdict::Append));
        // That evicted producer 3, and taking 3 back evicts 1; 4 is still
        // checked.
        assert_eq!(offer(&mut t, batch(3, 0, 42, 1), &mut next), Ok(Verdict::Append));
        assert!(matches!(
            offer(&mut t, batch(4, 0, 5, 1), &mut next),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(offer(&mut t, batch(1, 0, 5, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(t.len(), 3);
        assert_eq!(t.recency.len(), 3);
    }

    #[test]
    fn discarded_batches_are_forgotten_and_can_be_sent_again() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        offer(&mut t, batch(1, 0, 0, 2), &mut next).expect("append"); // 0..=1
        offer(&mut t, batch(1, 0, 2, 2), &mut next).expect("append"); // 2..=3
        offer(&mut t, batch(2, 0, 0, 1), &mut next).expect("append"); // 4
                                                                      // A failed flush loses offsets 2 and up.
        t.discard_from(Offset(2));
        next = 2;
        assert_eq!(t.len(), 1, "producer 2 has no batch left");
        assert_eq!(offer(&mut t, batch(1, 0, 2, 2), &mut next), Ok(Verdict::Append));
        assert_eq!(offer(&mut t, batch(2, 0, 7, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(t.recency.len(), t.len());
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let mut t = ProducerStateTable::new(10);
        let mut next = 0;
        for seq in 0..7 {
            offer(&mut t, batch(1, 2, seq * 2, 2), &mut next).expect("append");
        }
        offer(&mut t, batch(3, 0, i32::MAX, 2), &mut next).expect("append");
        offer(&mut t, batch(1, 2, 14, 1), &mut next).expect("append");
        let bytes = t.encode_snapshot(Offset(next));
        let (u, end) = decode_snapshot(&bytes, 10).expect("decodes");
        assert_eq!(end, Offset(next));
        assert_eq!(u.len(), 2);
        assert_eq!(
            u.recency.values().collect::<Vec<_>>(),
            vec![&3, &1],
            "use order kept"
        );
        for pid in [1, 3] {
            let (a, b) = (&t.producers[&pid], &u.producers[&pid]);
            assert_eq!((a.epoch, &a.batches), (b.epoch, &b.batches), "producer {pid}");
        }
        assert_eq!(
            ProducerStateTable::new(10).encode_snapshot(Offset(0)).len(),
            SNAPSHOT_HEADER_BYTES + SNAPSHOT_CRC_BYTES
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_snapshot(&bad, 10).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..n], 10).is_err(), "cut at {n}");
        }
        // A batch at or past the end it claims to describe.
        let lying = t.encode_snapshot(Offset(next - 1));
        assert!(decode_snapshot(&lying, 10).is_err());
    }

    #[test]
    fn replay_records_the_log_as_it_is() {
        let mut t = ProducerStateTable::new(10);
        // Recovery records batches without checks; an older epoch after a
        // newer one (cannot be appended, but must not confuse a replay) is
        // ignored.
        t.record(&batch(1, 1, 10, 1), Offset(0), Offset(0));
        t.record(&batch(1, 0, 50, 1), Offset(1), Offset(1));
        t.record(&batch(1, 1, 11, 2), Offset(2), Offset(3));
        let mut next = 4;
        assert_eq!(offer(&mut t, batch(1, 1, 13, 1), &mut next), Ok(Verdict::Append));
        assert!(matches!(
            offer(&mut t, batch(1, 1, 11, 2), &mut next),
            Ok(Verdict::Duplicate(m)) if m.base_offset == Offset(2)
        ));
    }
}
