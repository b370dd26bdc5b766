//! Reassembly of messages from checked fragments, with bounded memory.
//! Pure: no I/O; the caller passes the time.
//!
//! Contract: a message comes out only when every one of its fragments
//! arrived, each with a valid header and data CRC (checked by
//! [`crate::wire::DatagramHeader::decode`] and here) and with the same
//! (total length, fragment count, fragment size) as the first. So the bytes
//! out are the bytes sent, or nothing.
//!
//! Delivery per sender (address, stream) is in order with gaps, the
//! contract of the TCP `Link`: a message is delivered only if its id is above
//! the last delivered one; when one completes, that sender's older
//! incomplete messages are dropped ([`DropReason::Stale`]). Duplicates are
//! ignored. A new session id from a sender (it restarted) starts its
//! sequence afresh.
//!
//! Bounds ([`Limits`]): at most `messages_max` incomplete messages holding
//! at most `bytes_max` bytes (each buffer is allocated whole at the
//! message's first fragment); making room evicts the oldest incomplete
//! message ([`DropReason::ReassemblyOverflow`]). An incomplete message older
//! than `timeout` is dropped by [`Reassembler::expire`]
//! ([`DropReason::ReassemblyTimeout`]). At most `senders_max` senders are
//! tracked (one small entry each).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wire::{frag_count, DatagramHeader, DropReason};

/// Bounds of one reassembler (one socket).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Incomplete messages held at once.
    pub messages_max: usize,
    /// Bytes of incomplete messages held at once.
    pub bytes_max: usize,
    /// The largest message accepted.
    pub message_bytes_max: usize,
    /// How long an incomplete message is kept.
    pub timeout: Duration,
    /// Senders tracked at once.
    pub senders_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages_max: 64,
            bytes_max: 64 << 20,
            message_bytes_max: crate::MESSAGE_BYTES_MAX,
            timeout: Duration::from_millis(500),
            senders_max: 1024,
        }
    }
}

/// Who sent a fragment: IPv4 address and stream id.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct SenderKey {
    pub addr: u32,
    pub stream: u32,
}

/// What became of one fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The message is complete: all of its bytes.
    Complete(Vec<u8>),
    /// Kept; the message is still incomplete.
    Pending,
    /// A fragment already held: ignored.
    Duplicate,
    /// Dropped, for this reason (the fragment; for overflow and stale, counted per message in
    /// [`Reassembler::take_evictions`]).
    Dropped(DropReason),
}

struct Partial {
    buf: Vec<u8>,
    have: Vec<u64>,
    received: u16,
    frag_count: u16,
    frag_bytes: u16,
    first_seen: Instant,
}

struct SenderState {
    session: u32,
    /// Ids at or below this were delivered or given up: `None` until the first delivery.
    delivered: Option<u64>,
}

/// Drops of whole incomplete messages since the last [`Reassembler::take_evictions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub overflow: u64,
    pub timeout: u64,
    pub stale: u64,
}

pub struct Reassembler {
    limits: Limits,
    partial: HashMap<(SenderKey, u64), Partial>,
    senders: HashMap<SenderKey, SenderState>,
    bytes: usize,
    evictions: Evictions,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        assert!(
            limits.messages_max > 0 && limits.senders_max > 0,
            "reassembly limits must be positive"
        );
        Reassembler {
            limits,
            partial: HashMap::new(),
            senders: HashMap::new(),
            bytes: 0,
            evictions: Evictions::default(),
        }
    }

    /// Incomplete messages held, and their bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.partial.len(), self.bytes)
    }

    /// Whole messages dropped since the last call.
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }

    /// Takes one fragment whose header decoded (magic, version and header CRC are checked).
    pub fn push(&mut self, now: Instant, from: SenderKey, h: &DatagramHeader, data: &[u8]) -> Push {
        let total = h.total_len as usize;
        if total > self.limits.message_bytes_max || total > self.limits.bytes_max {
            return Push::Dropped(DropReason::Oversized);
        }
        if total == 0 || h.frag_bytes == 0 || h.frag_index >= h.frag_count {
            return Push::Dropped(DropReason::Inconsistent);
        }
        let frag_bytes = usize::from(h.frag_bytes);
        if frag_count(total, frag_bytes) != usize::from(h.frag_count) {
            return Push::Dropped(DropReason::Inconsistent);
        }
        let offset = usize::from(h.frag_index) * frag_bytes;
        let len = frag_bytes.min(total - offset);
        if data.len() != len {
            return Push::Dropped(if data.len() < len {
                DropReason::Short
            } else {
                DropReason::Inconsistent
            });
        }
        if crc32c::crc32c(data) != h.data_crc {
            return Push::Dropped(DropReason::BadChecksum);
        }

        if !self.senders.contains_key(&from) && self.senders.len() >= self.limits.senders_max {
            return Push::Dropped(DropReason::UnknownStream);
        }
        let sender = self.senders.entry(from).or_insert(SenderState {
            session: h.session,
            delivered: None,
        });
        if sender.session != h.session {
            sender.session = h.session;
            sender.delivered = None;
            self.drop_older(from, u64::MAX);
        }
        let sender = self.senders.get(&from).expect("sender entry just made");
        if sender.delivered.is_some_and(|d| h.msg_id <= d) {
            return Push::Dropped(DropReason::Stale);
        }

        if h.frag_count == 1 {
            return self.deliver(from, h.msg_id, data.to_vec());
        }

        let key = (from, h.msg_id);
        if !self.partial.contains_key(&key) {
            self.make_room(total);
            self.bytes += total;
            self.partial.insert(
                key,
                Partial {
                    buf: vec![0u8; total],
                    have: vec![0u64; usize::from(h.frag_count).div_ceil(64)],
                    received: 0,
                    frag_count: h.frag_count,
                    frag_bytes: h.frag_bytes,
                    first_seen: now,
                },
            );
        }
        let p = self.partial.get_mut(&key).expect("partial entry just made");
        if p.buf.len() != total || p.frag_count != h.frag_count || p.frag_bytes != h.frag_bytes {
            return Push::Dropped(DropReason::Inconsistent);
        }
        let (word, bit) = (usize::from(h.frag_index) / 64, 1u64 << (h.frag_index % 64));
        if p.have[word] & bit != 0 {
            return Push::Duplicate;
        }
        p.have[word] |= bit;
        p.received += 1;
        p.buf[offset..offset + len].copy_from_slice(data);
        if p.received < p.frag_count {
            return Push::Pending;
        }
        let p = self.partial.remove(&key).expect("complete partial present");
        self.bytes -= p.buf.len();
        self.deliver(from, h.msg_id, p.buf)
    }

    /// Drops incomplete messages older than the timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.timeout;
        let before = self.partial.len();
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = now.saturating_duration_since(p.first_seen) <= timeout;
            if !keep {
                freed += p.buf.len();
            }
            keep
        });
        self.bytes -= freed;
        let n = before - self.partial.len();
        self.evictions.timeout += n as u64;
        n
    }

    fn deliver(&mut self, from: SenderKey, msg_id: u64, bytes: Vec<u8>) -> Push {
        let sender = self
            .senders
            .get_mut(&from)
            .expect("sender tracked before delivery");
        sender.delivered = Some(msg_id);
        self.drop_older(from, msg_id);
        Push::Complete(bytes)
    }

    /// Drops `from`'s incomplete messages with ids below `msg_id` (they can no longer be
    /// delivered in order).
    fn drop_older(&mut self, from: SenderKey, msg_id: u64) {
        let mut freed = 0;
        let mut n = 0;
        self.partial.retain(|(sender, id), p| {
            let drop = *sender == from && *id < msg_id;
            if drop {
                freed += p.buf.len();
                n += 1;
            }
            !drop
        });
        self.bytes -= freed;
        self.evictions.stale += n;
    }

    /// Evicts the oldest incomplete messages until one of `total` bytes fits.
    fn make_room(&mut self, total: usize) {
        while self.partial.len() >= self.limits.messages_max || self.bytes + total > self.limits.bytes_max {
            let oldest = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.first_seen)
                .map(|(k, _)| *k)
                .expect("over a limit with nothing held");
            let p = self.partial.remove(&oldest).expect("oldest present");
            self.bytes -= p.buf.len();
            self.evictions.overflow += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FROM: SenderKey = SenderKey {
        addr: 0x0a4d_0001,
        stream: 7,
    };

    fn limits() -> Limits {
        Limits {
            messages_max: 4,
            bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
            timeout: Duration::from_millis(100),
            senders_max: 4,
        }
    }

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// The fragments of `msg` as the sender makes them.
    fn fragments(msg: &[u8], frag_bytes: usize, session: u32, msg_id: u64) -> Vec<(DatagramHeader, Vec<u8>)> {
        let count = frag_count(msg.len(), frag_bytes);
        (0..count)
            .map(|i| {
                let data = msg[i * frag_bytes..msg.len().min((i + 1) * frag_bytes)].to_vec();
                let h = DatagramHeader {
                    stream: FROM.stream,
                    session,
                    msg_id,
                    frag_index: i as u16,
                    frag_count: count as u16,
                    frag_bytes: frag_bytes as u16,
                    total_len: msg.len() as u32,
                    data_crc: crc32c::crc32c(&data),
                };
                (h, data)
            })
            .collect()
    }

    #[test]
    fn any_order_gives_the_exact_message() {
        let msg = message(10_000, 3);
        let mut frags = fragments(&msg, 1000, 1, 0);
        frags.reverse();
        frags.swap(2, 7);
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let last = frags.len() - 1;
        for (i, (h, d)) in frags.iter().enumerate() {
            let out = r.push(now, FROM, h, d);
            if i < last {
                assert_eq!(out, Push::Pending);
            } else {
                assert_eq!(out, Push::Complete(msg.clone()));
            }
        }
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn duplicates_are_ignored_and_a_delivered_message_is_not_delivered_again() {
        let msg = message(2500, 1);
        let frags = fragments(&msg, 1000, 1, 5);
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        assert_eq!(r.push(now, FROM, &frags[0].0, &frags[0].1), Push::Pending);
        assert_eq!(r.push(now, FROM, &frags[0].0, &frags[0].1), Push::Duplicate);
        assert_eq!(r.push(now, FROM, &frags[1].0, &frags[1].1), Push::Pending);
        assert_eq!(r.push(now, FROM, &frags[2].0, &frags[2].1), Push::Complete(msg));
        for (h, d) in &frags {
            assert_eq!(r.push(now, FROM, h, d), Push::Dropped(DropReason::Stale));
        }
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn damaged_fragments_are_dropped_with_their_reason() {
        let msg = message(2500, 9);
        let frags = fragments(&msg, 1000, 1, 0);
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let (h, d) = &frags[0];
        assert_eq!(r.push(now, FROM, h, &d[..999]), Push::Dropped(DropReason::Short));
        let mut flipped = d.clone();
        flipped[500] ^= 0x10;
        assert_eq!(
            r.push(now, FROM, h, &flipped),
            Push::Dropped(DropReason::BadChecksum)
        );
        let mut longer = d.clone();
        longer.push(0);
        assert_eq!(
            r.push(now, FROM, h, &longer),
            Push::Dropped(DropReason::Inconsistent)
        );
        let wrong_count = DatagramHeader { frag_count: 4, ..*h };
        assert_eq!(
            r.push(now, FROM, &wrong_count, d),
            Push::Dropped(DropReason::Inconsistent)
        );
        let index_past = DatagramHeader { frag_index: 3, ..*h };
        assert_eq!(
            r.push(now, FROM, &index_past, d),
            Push::Dropped(DropReason::Inconsistent)
        );
        let huge = DatagramHeader {
            total_len: (2 << 20) as u32,
            ..*h
        };
        assert_eq!(r.push(now, FROM, &huge, d), Push::Dropped(DropReason::Oversized));
        let empty = DatagramHeader {
            total_len: 0,
            frag_count: 1,
            data_crc: crc32c::crc32c(&[]),
            ..*h
        };
        assert_eq!(
            r.push(now, FROM, &empty, &[]),
            Push::Dropped(DropReason::Inconsistent)
        );
        assert_eq!(r.held(), (0, 0), "nothing held for refused fragments");
        // A fragment that disagrees with the message's first one.
        assert_eq!(r.push(now, FROM, h, d), Push::Pending);
        let other_size = fragments(&message(2600, 9), 1000, 1, 0);
        assert_eq!(
            r.push(now, FROM, &other_size[1].0, &other_size[1].1),
            Push::Dropped(DropReason::Inconsistent)
        );
        assert_eq!(r.push(now, FROM, &frags[1].0, &frags[1].1), Push::Pending);
        assert_eq!(r.push(now, FROM, &frags[2].0, &frags[2].1), Push::Complete(msg));
    }

    #[test]
    fn lost_fragments_time_out() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let frags = fragments(&message(3000, 2), 1000, 1, 0);
        assert_eq!(r.push(t0, FROM, &frags[0].0, &frags[0].1), Push::Pending);
        assert_eq!(r.expire(t0 + Duration::from_millis(50)), 0);
        assert_eq!(r.expire(t0 + Duration::from_millis(150)), 1);
        assert_eq!(r.held(), (0, 0));
        assert_eq!(
            r.take_evictions(),
            Evictions {
                timeout: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn limits_evict_the_oldest() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        for id in 0..6u64 {
            let frags = fragments(&message(3000, id as u8), 1000, 1, id);
            let at = t0 + Duration::from_millis(id);
            assert_eq!(r.push(at, FROM, &frags[0].0, &frags[0].1), Push::Pending);
            assert!(r.held().0 <= 4);
        }
        assert_eq!(r.take_evictions().overflow, 2);
        // Bytes bound: a 600 KB message and a 500 KB one do not fit 1 MiB together.
        let mut r = Reassembler::new(limits());
        let big = fragments(&message(600_000, 1), 1000, 1, 0);
        let next = fragments(&message(500_000, 2), 1000, 1, 1);
        assert_eq!(r.push(t0, FROM, &big[0].0, &big[0].1), Push::Pending);
        assert_eq!(r.push(t0, FROM, &next[0].0, &next[0].1), Push::Pending);
        assert_eq!(r.held(), (1, 500_000));
        assert_eq!(r.take_evictions().overflow, 1);
    }

    #[test]
    fn a_later_message_overtakes_an_incomplete_one() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let first = fragments(&message(2000, 1), 1000, 1, 1);
        let second = message(10, 2);
        assert_eq!(r.push(now, FROM, &first[0].0, &first[0].1), Push::Pending);
        let s = fragments(&second, 1000, 1, 2);
        assert_eq!(r.push(now, FROM, &s[0].0, &s[0].1), Push::Complete(second));
        assert_eq!(
            r.push(now, FROM, &first[1].0, &first[1].1),
            Push::Dropped(DropReason::Stale)
        );
        assert_eq!(r.take_evictions().stale, 1);
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn a_new_session_starts_afresh() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let m = message(10, 1);
        let a = fragments(&m, 1000, 1, 100);
        assert_eq!(r.push(now, FROM, &a[0].0, &a[0].1), Push::Complete(m.clone()));
        // The sender restarted: ids begin at 0 again under a new session.
        let b = fragments(&m, 1000, 2, 0);
        assert_eq!(r.push(now, FROM, &b[0].0, &b[0].1), Push::Complete(m));
    }

    #[derive(Clone, Debug)]
    enum Fault {
        Drop,
        Duplicate,
        Flip(usize),
        Truncate(usize),
    }

    fn fault() -> impl Strategy<Value = Option<Fault>> {
        prop_oneof![
            8 => Just(None),
            1 => Just(Some(Fault::Drop)),
            1 => Just(Some(Fault::Duplicate)),
            1 => any::<usize>().prop_map(|b| Some(Fault::Flip(b))),
            1 => any::<usize>().prop_map(|n| Some(Fault::Truncate(n))),
        ]
    }

    proptest! {
        /// Whatever the network does to the fragments, what comes out is some sent message, in
        /// increasing id order, each at most once; and the memory bound holds throughout.
        #[test]
        fn exact_messages_or_nothing(
            lens in prop::collection::vec(1usize..5000, 1..12),
            frag_bytes in 100usize..1500,
            faults in prop::collection::vec(fault(), 0..200),
            swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..30),
        ) {
            let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| message(l, i as u8)).collect();
            let mut wire = Vec::new();
            for (id, m) in msgs.iter().enumerate() {
                wire.extend(fragments(m, frag_bytes, 1, id as u64));
            }
            let mut faulty = Vec::new();
            for (i, (h, d)) in wire.into_iter().enumerate() {
                match faults.get(i).cloned().flatten() {
                    None => faulty.push((h, d)),
                    Some(Fault::Drop) => {}
                    Some(Fault::Duplicate) => { faulty.push((h, d.clone())); faulty.push((h, d)); }
                    Some(Fault::Flip(bit)) => {
                        let mut d = d;
                        let bit = bit % (d.len() * 8);
                        d[bit / 8] ^= 1 << (bit % 8);
                        faulty.push((h, d));
                    }
                    Some(Fault::Truncate(n)) => { let n = n % d.len(); faulty.push((h, d[..n].to_vec())); }
                }
            }
            if !faulty.is_empty() {
                for (a, b) in swaps {
                    let (a, b) = (a.index(faulty.len()), b.index(faulty.len()));
                    faulty.swap(a, b);
                }
            }
            let mut r = Reassembler::new(Limits { messages_max: 3, bytes_max: 12_000, ..limits() });
            let now = Instant::now();
            let mut last: Option<u64> = None;
            for (h, d) in &faulty {
                if let Push::Complete(m) = r.push(now, FROM, h, d) {
                    prop_assert_eq!(&m, &msgs[h.msg_id as usize]);
                    prop_assert!(last.is_none_or(|l| h.msg_id > l), "delivered out of order");
                    last = Some(h.msg_id);
                }
                prop_assert!(r.held().0 <= 3 && r.held().1 <= 12_000);
            }
        }
    }
}
