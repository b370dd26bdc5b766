//! A bounded cache of recently appended batches, shared by the logs of one
//! shard. Tail reads (consumers keeping up with producers) are served from it
//! without touching the disk. Owned by one shard; not thread-safe by design.
//!
//! Eviction is oldest-inserted first: the tail is what is read most.

use bytes::Bytes;
use ferrolog_model::{BatchHeader, Offset};
use std::collections::{BTreeMap, VecDeque};

/// Identifies one log among those sharing a cache.
pub type LogId = u64;

#[derive(Debug)]
pub struct BatchCache {
    max_bytes: usize,
    bytes: usize,
    batches: BTreeMap<(LogId, i64), Bytes>,
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
        if batch.len() > self.max_bytes {
            return;
        }
        self.bytes += batch.len();
        if let Some(old) = self.batches.insert((log, base.0), batch) {
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
    pub fn read(&self, log: LogId, offset: Offset, end: Offset, max_bytes: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let Some((_, first)) = self.batches.range((log, i64::MIN)..=(log, offset.0)).next_back() else {
            return out;
        };
        let Ok(h) = BatchHeader::parse(first) else {
            return out;
        };
        if h.last_offset() < offset {
            return out;
        }
        let mut expected = h.base_offset;
        let mut total = 0usize;
        for (&(_, base), batch) in self.batches.range((log, h.base_offset.0)..(log, end.0)) {
            if base != expected.0 || (!out.is_empty() && total + batch.len() > max_bytes) {
                break;
            }
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
