//! A view of the Kafka RecordBatch v2 header, its CRC-32C check, and the two
//! header fields the broker rewrites (base offset and partition leader epoch).
//!
//! Layout (big-endian), as the Kafka protocol defines it:
//!
//! ```text
//! 0  baseOffset           i64   <- rewritten by the broker, not covered by the CRC
//! 8  batchLength          i32   bytes after this field
//! 12 partitionLeaderEpoch i32   <- rewritten by the broker, not covered by the CRC
//! 16 magic                i8    = 2
//! 17 crc                  u32   CRC-32C of bytes 21..end
//! 21 attributes           i16
//! 23 lastOffsetDelta      i32
//! 27 baseTimestamp        i64
//! 35 maxTimestamp         i64
//! 43 producerId           i64
//! 51 producerEpoch        i16
//! 53 baseSequence         i32
//! 57 recordCount          i32
//! 61 records...
//! ```
//!
//! Records are never decoded on the produce or fetch path; the only record-level
//! parsing here is the timestamp scan used by offset-for-timestamp look-ups on
//! uncompressed batches.

use crate::{Epoch, Offset, TimestampMs};
use thiserror::Error;

/// Size of the fixed RecordBatch v2 header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the batchLength-counted part: baseOffset + batchLength.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record batch format ferrolog stores.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered region starts (attributes).
pub const CRC_START: usize = 21;

/// The broker rewrites only bytes before this (base offset, partition leader
/// epoch); the rest of a batch is stored as the producer sent it.
pub const REWRITTEN_PREFIX: usize = LEADER_EPOCH_AT + 4;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// attributes bits 0..2: the compression codec.
const COMPRESSION_MASK: i16 = 0x07;

/// Why a byte string is not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported record batch magic {0} (only v2 is stored)")]
    BadMagic(i8),
    #[error("invalid batchLength {0}")]
    BadLength(i32),
    #[error("invalid lastOffsetDelta {0}")]
    BadOffsetDelta(i32),
    #[error("CRC-32C mismatch: header says {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

/// A parsed copy of the fixed header fields of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_length: i32,
    pub partition_leader_epoch: Epoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: TimestampMs,
    pub max_timestamp: TimestampMs,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the fixed header at the start of `bytes` and checks magic and
    /// lengths. It does not require the whole batch to be present (a reader
    /// uses it to learn how many more bytes to fetch) and does not check the CRC.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        }
        let magic = bytes[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = be_i32(bytes, BATCH_LENGTH_AT);
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        let last_offset_delta = be_i32(bytes, LAST_OFFSET_DELTA_AT);
        if last_offset_delta < 0 {
            return Err(BatchError::BadOffsetDelta(last_offset_delta));
        }
        Ok(BatchHeader {
            base_offset: Offset(be_i64(bytes, BASE_OFFSET_AT)),
            batch_length,
            partition_leader_epoch: Epoch(be_i32(bytes, LEADER_EPOCH_AT)),
            magic,
            crc: be_u32(bytes, CRC_AT),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta,
            base_timestamp: TimestampMs(be_i64(bytes, BASE_TIMESTAMP_AT)),
            max_timestamp: TimestampMs(be_i64(bytes, MAX_TIMESTAMP_AT)),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            record_count: be_i32(bytes, RECORD_COUNT_AT),
        })
    }

    /// Parses the header and checks that `bytes` is exactly one whole batch
    /// whose CRC-32C matches. This is the check on the way in and on read-back.
    pub fn parse_verified(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let header = BatchHeader::parse(bytes)?;
        let total = header.total_bytes();
        if bytes.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        if bytes.len() > total {
            return Err(BatchError::BadLength(header.batch_length));
        }
        let computed = crc32c::crc32c(&bytes[CRC_START..total]);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(header)
    }

    /// Size of the whole batch on disk and on the wire.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(i64::from(self.last_offset_delta))
    }

    /// Offsets this batch occupies (lastOffsetDelta + 1).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// The compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
}

/// Rewrites the base offset. The CRC does not cover it, so nothing else changes.
pub fn set_base_offset(bytes: &mut [u8], offset: Offset) {
    bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&offset.0.to_be_bytes());
}

/// Rewrites the partition leader epoch. Not covered by the CRC either.
pub fn set_leader_epoch(bytes: &mut [u8], epoch: Epoch) {
    bytes[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.0.to_be_bytes());
}

/// Reads a zigzag varint (Kafka's varint/varlong) at `*pos`, advancing it.
fn read_varlong(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        raw |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// For an uncompressed batch, the offset of the first record whose timestamp is
/// at least `target`. Returns `None` if no record qualifies or the batch is
/// compressed or its records do not parse (the caller then falls back to the
/// batch's base offset, which is never later than the exact answer).
pub fn first_offset_at_or_after(bytes: &[u8], target: TimestampMs) -> Option<Offset> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.compression() != 0 || bytes.len() < header.total_bytes() {
        return None;
    }
    let end = header.total_bytes();
    let mut pos = HEADER_BYTES;
    for _ in 0..header.record_count.max(0) {
        let len = usize::try_from(read_varlong(bytes, &mut pos)?).ok()?;
        let record_end = pos.checked_add(len)?;
        if record_end > end {
            return None;
        }
        let mut p = pos + 1; // attributes
        let ts_delta = read_varlong(bytes, &mut p)?;
        let offset_delta = read_varlong(bytes, &mut p)?;
        if header.base_timestamp.0.saturating_add(ts_delta) >= target.0 {
            return Some(header.base_offset.plus(offset_delta));
        }
        pos = record_end;
    }
    None
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub value: Option<&'a [u8]>,
}

fn read_nullable<'a>(bytes: &'a [u8], pos: &mut usize, end: usize) -> Option<Option<&'a [u8]>> {
    let len = read_varlong(bytes, pos)?;
    if len < 0 {
        return Some(None);
    }
    let stop = pos.checked_add(usize::try_from(len).ok()?)?;
    if stop > end {
        return None;
    }
    let out = &bytes[*pos..stop];
    *pos = stop;
    Some(Some(out))
}

/// The keys and values of an uncompressed batch (headers are skipped). For
/// batches the broker writes itself, such as the group coordinator's log;
/// client batches are never decoded. `None` if the batch is compressed or a
/// record does not parse.
pub fn records(bytes: &[u8]) -> Option<Vec<RecordView<'_>>> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.compression() != 0 || bytes.len() < header.total_bytes() {
        return None;
    }
    let end = header.total_bytes();
    let mut pos = HEADER_BYTES;
    let mut out = Vec::new();
    for _ in 0..header.record_count.max(0) {
        let len = usize::try_from(read_varlong(bytes, &mut pos)?).ok()?;
        let record_end = pos.checked_add(len)?;
        if record_end > end {
            return None;
        }
        let mut p = pos + 1; // attributes
        read_varlong(bytes, &mut p)?; // timestamp delta
        let offset_delta = read_varlong(bytes, &mut p)?;
        let key = read_nullable(bytes, &mut p, record_end)?;
        let value = read_nullable(bytes, &mut p, record_end)?;
        out.push(RecordView {
            offset: header.base_offset.plus(offset_delta),
            key,
            value,
        });
        pos = record_end;
    }
    Some(out)
}

/// Builds uncompressed RecordBatch v2 byte strings. Used by tests, benchmarks
/// and tools that need real batches without a Kafka client.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_timestamp: TimestampMs,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    count: i32,
    max_timestamp: TimestampMs,
    attributes: i16,
}

/// The control bit of a batch's attributes: its records are control records
/// (transaction and leader change markers), which consumers skip.
pub const ATTR_CONTROL: i16 = 0x20;

fn write_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

impl BatchBuilder {
    pub fn new(base_timestamp: TimestampMs) -> BatchBuilder {
        BatchBuilder {
            base_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            count: 0,
            max_timestamp: base_timestamp,
            attributes: 0,
        }
    }

    /// Makes it a control batch ([`ATTR_CONTROL`]).
    pub fn control(mut self) -> Self {
        self.attributes |= ATTR_CONTROL;
        self
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Appends a record with the given timestamp, key and value (no headers).
    pub fn record(self, timestamp: TimestampMs, key: Option<&[u8]>, value: &[u8]) -> Self {
        self.record_or_tombstone(timestamp, key, Some(value))
    }

    /// Like `record`, with a null value (a tombstone) when `value` is `None`.
    pub fn record_or_tombstone(
        mut self,
        timestamp: TimestampMs,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Self {
        let value_len = value.map_or(0, <[u8]>::len);
        let mut body = Vec::with_capacity(value_len + 16);
        body.push(0); // attributes
        write_varlong(&mut body, timestamp.0 - self.base_timestamp.0);
        write_varlong(&mut body, i64::from(self.count));
        match key {
            Some(k) => {
                write_varlong(&mut body, k.len() as i64);
                body.extend_from_slice(k);
            }
            None => write_varlong(&mut body, -1),
        }
        match value {
            Some(v) => {
                write_varlong(&mut body, v.len() as i64);
                body.extend_from_slice(v);
            }
            None => write_varlong(&mut body, -1),
        }
        write_varlong(&mut body, 0); // headers
        write_varlong(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(&body);
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self
    }

    /// Encodes the batch with base offset 0 and a correct CRC.
    ///
    /// # Panics
    /// If no record was added: Kafka batches hold at least one record.
    pub fn build(self) -> Vec<u8> {
        assert!(self.count > 0, "a record batch needs at least one record");
        let total = HEADER_BYTES + self.records.len();
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
        b.push(MAGIC_V2 as u8);
        b.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
        b.extend_from_slice(&self.attributes.to_be_bytes());
        b.extend_from_slice(&(self.count - 1).to_be_bytes());
        b.extend_from_slice(&self.base_timestamp.0.to_be_bytes());
        b.extend_from_slice(&self.max_timestamp.0.to_be_bytes());
        b.extend_from_slice(&self.producer_id.to_be_bytes());
        b.extend_from_slice(&self.producer_epoch.to_be_bytes());
        b.extend_from_slice(&self.base_sequence.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&self.records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn records_round_trip_keys_values_and_tombstones() {
        let ts = TimestampMs(5);
        let mut b = BatchBuilder::new(ts)
            .record(ts, Some(b"k1"), b"v1")
            .record_or_tombstone(ts, Some(b"k2"), None)
            .record(ts, None, b"")
            .build();
        set_base_offset(&mut b, Offset(40));
        let rs = records(&b).expect("parses");
        assert_eq!(rs.len(), 3);
        assert_eq!(
            (rs[0].offset, rs[0].key, rs[0].value),
            (Offset(40), Some(&b"k1"[..]), Some(&b"v1"[..]))
        );
        assert_eq!(
            (rs[1].offset, rs[1].key, rs[1].value),
            (Offset(41), Some(&b"k2"[..]), None)
        );
        assert_eq!(
            (rs[2].offset, rs[2].key, rs[2].value),
            (Offset(42), None, Some(&b""[..]))
        );
        // A record length running past the batch does not parse.
        let cut = &b[..b.len() - 1];
        assert_eq!(records(cut), None);
    }

    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        BatchBuilder::new(TimestampMs(1_000))
            .record(TimestampMs(1_000), Some(b"k1"), b"v1")
            .record(TimestampMs(1_005), None, b"value-two")
            .record(TimestampMs(1_010), Some(b"k3"), b"")
            .build()
    }

    #[test]
    fn built_batch_parses_and_verifies() {
        let b = sample();
        let h = BatchHeader::parse_verified(&b).expect("valid batch");
        assert_eq!(h.magic, 2);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_bytes(), b.len());
        assert_eq!(h.max_timestamp, TimestampMs(1_010));
        assert_eq!(h.offset_count(), 3);
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_crc_valid() {
        let mut b = sample();
        set_base_offset(&mut b, Offset(42));
        set_leader_epoch(&mut b, Epoch(7));
        let h = BatchHeader::parse_verified(&b).expect("still valid");
        assert_eq!(h.base_offset, Offset(42));
        assert_eq!(h.last_offset(), Offset(44));
        assert_eq!(h.partition_leader_epoch, Epoch(7));
    }

    #[test]
    fn every_flipped_bit_in_crc_region_is_detected() {
        let b = sample();
        for i in CRC_START..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert!(
                    BatchHeader::parse_verified(&c).is_err(),
                    "flip of byte {i} bit {bit} not detected"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_magic_length_and_truncation() {
        let b = sample();
        let mut m = b.clone();
        m[MAGIC_AT] = 1;
        assert_eq!(BatchHeader::parse(&m), Err(BatchError::BadMagic(1)));
        let mut l = b.clone();
        l[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(BatchHeader::parse(&l), Err(BatchError::BadLength(10)));
        assert!(matches!(
            BatchHeader::parse_verified(&b[..b.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            BatchHeader::parse(&b[..20]),
            Err(BatchError::Truncated { .. })
        ));
        let mut longer = b.clone();
        longer.push(0);
        assert!(BatchHeader::parse_verified(&longer).is_err());
    }

    #[test]
    fn timestamp_scan_finds_first_record_at_or_after() {
        let mut b = sample();
        set_base_offset(&mut b, Offset(100));
        assert_eq!(first_offset_at_or_after(&b, TimestampMs(0)), Some(Offset(100)));
        assert_eq!(
            first_offset_at_or_after(&b, TimestampMs(1_001)),
            Some(Offset(101))
        );
        assert_eq!(
            first_offset_at_or_after(&b, TimestampMs(1_010)),
            Some(Offset(102))
        );
        assert_eq!(first_offset_at_or_after(&b, TimestampMs(1_011)), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = BatchHeader::parse(&data);
            let _ = BatchHeader::parse_verified(&data);
            let _ = first_offset_at_or_after(&data, TimestampMs(0));
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            let mut pos = 0;
            prop_assert_eq!(read_varlong(&out, &mut pos), Some(v));
            prop_assert_eq!(pos, out.len());
        }
    }
}
