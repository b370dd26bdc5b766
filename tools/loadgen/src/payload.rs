//! What a message carries: a 16-byte header (the intended send time and the producer's
//! sequence number) followed by filler, and the message keys of the key distributions.
//!
//! The send time is nanoseconds since the run's monotonic base instant, so end-to-end latency
//! is measured within one process without trusting wall clocks. The second word packs the
//! producer's index (16 bits) above its sequence number (48 bits), which lets the consumers tell
//! duplicates and gaps per producer.

use crate::options::KeyDistribution;

/// Bytes of the header at the start of every message.
pub const HEADER_BYTES: usize = 16;
/// Bits of the sequence number in the header's second word.
pub const SEQ_BITS: u32 = 48;
/// Largest sequence number the header holds (2^48 - 1: ~9 years at a million messages/s).
pub const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;
/// Distinct keys of the `round-robin` and `random` key distributions (as in OMB).
pub const KEY_POOL_SIZE: usize = 10_000;
/// Bytes of one key (as in OMB).
pub const KEY_BYTES: usize = 7;

/// The header of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// When the message was meant to be sent, in ns since the run's base instant.
    pub send_ns: u64,
    /// Index of the producer that sent it.
    pub producer: u16,
    /// The producer's sequence number of the message, from 0, at most [`SEQ_MAX`].
    pub seq: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_BYTES`] of `buf`.
    ///
    /// Panics if `buf` is shorter than the header or `seq` exceeds [`SEQ_MAX`]: options
    /// validation and the producer loop rule both out.
    pub fn write(&self, buf: &mut [u8]) {
        assert!(
            buf.len() >= HEADER_BYTES,
            "message buffer shorter than the header"
        );
        assert!(
            self.seq <= SEQ_MAX,
            "sequence number {} overflows the header",
            self.seq
        );
        buf[..8].copy_from_slice(&self.send_ns.to_le_bytes());
        let word = (u64::from(self.producer) << SEQ_BITS) | self.seq;
        buf[8..HEADER_BYTES].copy_from_slice(&word.to_le_bytes());
    }

    /// Reads the header at the start of `buf`; `None` if `buf` is shorter than the header.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let send_ns = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
        let word = u64::from_le_bytes(buf.get(8..HEADER_BYTES)?.try_into().ok()?);
        Some(Header {
            send_ns,
            producer: (word >> SEQ_BITS) as u16,
            seq: word & SEQ_MAX,
        })
    }
}

/// SplitMix64: a small, fast, seedable generator for filler bytes, key choice and topic names
/// (no cryptographic use).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        self.next_u64() % n
    }
}

/// A message buffer of `message_bytes`: a zeroed header then pseudo-random filler. Random
/// filler (as OMB's default payload) keeps compression from shrinking the load to nothing.
pub fn message_buffer(message_bytes: usize, seed: u64) -> Vec<u8> {
    assert!(message_bytes >= HEADER_BYTES, "message smaller than its header");
    let mut rng = SplitMix64::new(seed);
    let mut buf = vec![0u8; message_bytes];
    for chunk in buf[HEADER_BYTES..].chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    buf
}

/// Picks each message's key per the key distribution: none, the next of a pool of
/// [`KEY_POOL_SIZE`] random keys in turn, or a random one of the pool. The client's
/// partitioner maps keys to partitions (librdkafka's default `consistent_random` hashes the key
/// with CRC32; `-X partitioner=murmur2_random` matches the Java client); keyless messages go
/// where librdkafka's sticky partitioning puts them.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    distribution: KeyDistribution,
    pool: Vec<[u8; KEY_BYTES]>,
    next: usize,
    rng: SplitMix64,
}

impl KeyChooser {
    pub fn new(distribution: KeyDistribution, seed: u64) -> KeyChooser {
        let mut rng = SplitMix64::new(seed);
        let pool = match distribution {
            KeyDistribution::None => Vec::new(),
            KeyDistribution::RoundRobin | KeyDistribution::Random => (0..KEY_POOL_SIZE)
                .map(|_| {
                    let mut key = [0u8; KEY_BYTES];
                    for b in &mut key {
                        *b = b'a' + rng.below(26) as u8;
                    }
                    key
                })
                .collect(),
        };
        KeyChooser {
            distribution,
            pool,
            next: 0,
            rng,
        }
    }

    /// The key of the next message.
    pub fn next_key(&mut self) -> Option<&[u8]> {
        let i = match self.distribution {
            KeyDistribution::None => return None,
            KeyDistribution::RoundRobin => {
                let i = self.next;
                self.next = (self.next + 1) % self.pool.len();
                i
            }
            KeyDistribution::Random => self.rng.below(self.pool.len() as u64) as usize,
        };
        Some(&self.pool[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut buf = message_buffer(32, 1);
        let filler = buf[HEADER_BYTES..].to_vec();
        for h in [
            Header {
                send_ns: 0,
                producer: 0,
                seq: 0,
            },
            Header {
                send_ns: u64::MAX,
                producer: u16::MAX,
                seq: SEQ_MAX,
            },
            Header {
                send_ns: 123_456_789,
                producer: 3,
                seq: 42,
            },
        ] {
            h.write(&mut buf);
            assert_eq!(Header::read(&buf), Some(h));
            assert_eq!(
                &buf[HEADER_BYTES..],
                &filler[..],
                "the header write touched the filler"
            );
        }
        assert_eq!(Header::read(&buf[..HEADER_BYTES - 1]), None);
    }

    #[test]
    #[should_panic(expected = "overflows the header")]
    fn header_rejects_a_too_large_sequence_number() {
        let mut buf = [0u8; HEADER_BYTES];
        Header {
            send_ns: 0,
            producer: 0,
            seq: SEQ_MAX + 1,
        }
        .write(&mut buf);
    }

    #[test]
    fn message_buffer_has_the_size_asked_and_random_filler() {
        let buf = message_buffer(1024, 7);
        assert_eq!(buf.len(), 1024);
        assert!(buf[..HEADER_BYTES].iter().all(|&b| b == 0));
        let distinct: std::collections::HashSet<u8> = buf[HEADER_BYTES..].iter().copied().collect();
        assert!(
            distinct.len() > 200,
            "filler looks not random: {} distinct bytes",
            distinct.len()
        );
        assert_eq!(message_buffer(HEADER_BYTES, 7).len(), HEADER_BYTES);
        assert_eq!(message_buffer(21, 7).len(), 21);
    }

    #[test]
    fn keys_follow_the_distribution() {
        let mut none = KeyChooser::new(KeyDistribution::None, 1);
        assert_eq!(none.next_key(), None);

        let mut rr = KeyChooser::new(KeyDistribution::RoundRobin, 1);
        let first: Vec<Vec<u8>> = (0..KEY_POOL_SIZE)
            .map(|_| rr.next_key().map(<[u8]>::to_vec).unwrap_or_default())
            .collect();
        assert!(first.iter().all(|k| k.len() == KEY_BYTES));
        assert_eq!(
            rr.next_key().map(<[u8]>::to_vec),
            Some(first[0].clone()),
            "round robin wraps"
        );

        let mut random = KeyChooser::new(KeyDistribution::Random, 1);
        let seen: std::collections::HashSet<Vec<u8>> = (0..1000)
            .map(|_| random.next_key().map(<[u8]>::to_vec).unwrap_or_default())
            .collect();
        assert!(
            seen.len() > 900,
            "random keys repeat too much: {} distinct of 1000",
            seen.len()
        );
    }
}
