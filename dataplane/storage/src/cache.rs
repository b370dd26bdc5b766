//! A bounded cache of recently appended batches, shared by the logs of one
//! shard. Tail reads (consumers keeping up with producers) are served from it
//! without touching the disk. Owned by one shard; not thread-safe by design.
//!
//! Eviction is oldest-inserted first: the tail is what is read most.

use bytes::{BufMut, Bytes, BytesMut};
use ferrolog_model::batch::REWRITTEN_PREFIX;
use ferrolog_model::{BatchHeader, Offset};
use std::collections::{BTreeMap, VecDeque};

/// Identifies one log among those sharing a cache.
pub type LogId = u64;

/// A cached batch: whole, or as the producer's bytes plus the rewritten
/// prefix (base offset, leader epoch), joined into one buffer on its first
/// read so that appending never copies a batch.
#[derive(Debug)]
enum Entry {
    Whole(Bytes),
    Patched {
        prefix: [u8; REWRITTEN_PREFIX],
        original: Bytes,
    },
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Whole(b) => b.len(),
            Entry::Patched { original, .. } => original.len(),
        }
    }

    fn whole(&mut self) -> &Bytes {
        if let Entry::Patched { prefix, original } = self {
            let mut joined = BytesMut::with_capacity(original.len());
            joined.put_slice(prefix);
            joined.put_slice(&original[REWRITTEN_PREFIX..]);
            *self = Entry::Whole(joined.freeze());
        }
        match self {
            Entry::Whole(b) => b,
            Entry::Patched { .. } => unreachable!("joined above"),
        }
    }
}

#[derive(Debug)]
pub struct BatchCache {
    max_bytes: usize,
    bytes: usize,
    batches: BTreeMap<(LogId, i64), Entry>,
    insertion_order: VecDeque<(LogId, i64)>,
}

impl BatchCache {
    pub fn new(max_bytes: usize) -> BatchCache {
        BatchCache {
            max_bytes,
            bytes: 0,
            batches: BTreeMap::new(),
            insertion_order: VecDeque::new(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Caches a batch whose base offset field is already assigned.
    pub fn insert(&mut self, log: LogId, base: Offset, batch: Bytes) {
        self.insert_entry(log, base, Entry::Whole(batch));
    }

    /// Caches a batch as the producer sent it (`original`, at least
    /// `REWRITTEN_PREFIX` bytes) with its first bytes replaced by `prefix`.
    pub fn insert_patched(
        &mut self,
        log: LogId,
        base: Offset,
        prefix: [u8; REWRITTEN_PREFIX],
        original: Bytes,
    ) {
        debug_assert!(original.len() >= REWRITTEN_PREFIX);
        self.insert_entry(log, base, Entry::Patched { prefix, original });
    }

    fn insert_entry(&mut self, log: LogId, base: Offset, entry: Entry) {
        let len = entry.len();
        if len > self.max_bytes {
            return;
        }
        self.bytes += len;
        if let Some(old) = self.batches.insert((log, base.0), entry) {
            self.bytes -= old.len();
        }
        self.insertion_order.push_back((log, base.0));
        while self.bytes > self.max_bytes {
            let Some(key) = self.insertion_order.pop_front() else {
                break;
            };
            if let Some(old) = self.batches.remove(&key) {
                self.bytes -= old.len();
            }
        }
    }

    /// Whole consecutive batches of `log` starting with the one that contains
    /// `offset`, ending before `end` (exclusive), up to `max_bytes` (the first
    /// batch is returned even if larger). Empty if that batch is not cached.
    /// Takes `&mut self` because a batch cached by `insert_patched` is joined
    /// into one buffer on its first read.
    pub fn read(&mut self, log: LogId, offset: Offset, end: Offset, max_bytes: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let Some((&(_, first_base), first)) = self
            .batches
            .range_mut((log, i64::MIN)..=(log, offset.0))
            .next_back()
        else {
            return out;
        };
        let Ok(h) = BatchHeader::parse(first.whole()) else {
            return out;
        };
        if h.last_offset() < offset {
            return out;
        }
        let mut expected = h.base_offset;
        let mut total = 0usize;
        for (&(_, base), entry) in self.batches.range_mut((log, first_base)..(log, end.0)) {
            if base != expected.0 || (!out.is_empty() && total + entry.len() > max_bytes) {
                break;
            }
            let batch = entry.whole();
            let Ok(h) = BatchHeader::parse(batch) else {
                break;
            };
            total += batch.len();
            expected = h.last_offset().plus(1);
            out.push(batch.clone());
        }
        out
    }

    /// Forgets batches of `log` with base offset >= `offset` (truncation, rollback).
    pub fn remove_from(&mut self, log: LogId, offset: Offset) {
        let keys: Vec<_> = self
            .batches
            .range((log, offset.0)..=(log, i64::MAX))
            .map(|(k, _)| *k)
            .collect();
        self.remove_keys(&keys);
    }

    /// Forgets batches of `log` with base offset < `offset` (retention).
    pub fn remove_below(&mut self, log: LogId, offset: Offset) {
        let keys: Vec<_> = self
            .batches
            .range((log, i64::MIN)..(log, offset.0))
            .map(|(k, _)| *k)
            .collect();
        self.remove_keys(&keys);
    }

    fn remove_keys(&mut self, keys: &[(LogId, i64)]) {
        for k in keys {
            if let Some(old) = self.batches.remove(k) {
                self.bytes -= old.len();
            }
        }
        // insertion_order may keep stale keys; eviction skips them.
        if self.batches.is_empty() {
            self.insertion_order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::batch::{set_base_offset, BatchBuilder};
    use ferrolog_model::TimestampMs;

    fn batch(base: i64, records: usize) -> Bytes {
        let mut b = BatchBuilder::new(TimestampMs(0));
        for _ in 0..records {
            b = b.record(TimestampMs(0), None, &[7u8; 100]);
        }
        let mut v = b.build();
        set_base_offset(&mut v, Offset(base));
        Bytes::from(v)
    }

    #[test]
    fn reads_consecutive_batches_from_containing_one() {
        let mut c = BatchCache::new(1 << 20);
        c.insert(1, Offset(0), batch(0, 2));
        c.insert(1, Offset(2), batch(2, 3));
        c.insert(1, Offset(5), batch(5, 1));
        c.insert(2, Offset(6), batch(6, 1));
        let r = c.read(1, Offset(3), Offset(100), 1 << 20);
        assert_eq!(r.len(), 2);
        let r = c.read(1, Offset(3), Offset(5), 1 << 20);
        assert_eq!(r.len(), 1, "end bound excludes the batch at 5");
        assert!(c.read(1, Offset(6), Offset(100), 1 << 20).is_empty());
        let one = c.read(1, Offset(0), Offset(100), 1);
        assert_eq!(one.len(), 1, "first batch returned even above max_bytes");
    }

    #[test]
    fn a_patched_batch_reads_back_with_its_prefix_replaced_and_the_original_untouched() {
        let original = batch(0, 3);
        let mut prefix = [0u8; REWRITTEN_PREFIX];
        prefix.copy_from_slice(&original[..REWRITTEN_PREFIX]);
        set_base_offset(&mut prefix, Offset(40));
        let mut c = BatchCache::new(1 << 20);
        c.insert_patched(1, Offset(40), prefix, original.clone());
        assert_eq!(c.bytes(), original.len());
        for _ in 0..2 {
            let r = c.read(1, Offset(41), Offset(100), 1 << 20);
            assert_eq!(r.len(), 1);
            let h = BatchHeader::parse(&r[0]).expect("parses");
            assert_eq!(h.base_offset, Offset(40));
            assert_eq!(&r[0][REWRITTEN_PREFIX..], &original[REWRITTEN_PREFIX..]);
        }
        assert_eq!(
            BatchHeader::parse(&original).expect("parses").base_offset,
            Offset(0)
        );
        assert_eq!(
            c.bytes(),
            original.len(),
            "joining does not change the accounting"
        );
        c.remove_from(1, Offset(0));
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn evicts_oldest_within_bound_and_stops_at_gaps() {
        let b = batch(0, 1);
        let mut c = BatchCache::new(b.len() * 2);
        c.insert(1, Offset(0), batch(0, 1));
        c.insert(1, Offset(1), batch(1, 1));
        c.insert(1, Offset(2), batch(2, 1));
        assert!(c.bytes() <= b.len() * 2);
        assert!(c.read(1, Offset(0), Offset(10), 1 << 20).is_empty());
        assert_eq!(c.read(1, Offset(1), Offset(10), 1 << 20).len(), 2);
        c.remove_from(1, Offset(2));
        assert_eq!(c.read(1, Offset(1), Offset(10), 1 << 20).len(), 1);
        c.remove_below(1, Offset(2));
        assert_eq!(c.bytes(), 0);
    }
}
