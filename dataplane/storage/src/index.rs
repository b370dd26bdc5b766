//! Sparse per-segment indexes, kept in memory and persisted as small files.
//!
//! `.index` maps a relative offset to the file position of the batch that
//! starts there; `.timeindex` maps "newest timestamp of every batch before
//! this point" to the relative offset of the batch at that point. Both get an
//! entry every `index_interval_bytes` of batches, at the same batches.
//!
//! File format (big-endian): a 16-byte header — magic (4), version (2),
//! entry size (2), entry count (4), CRC-32C of the entries (4) — then the
//! entries. Files are written padded to the device block; the count in the
//! header says where entries end. A file that fails any check is rebuilt from
//! the segment, never trusted.

const HEADER_BYTES: usize = 16;
const VERSION: u16 = 1;
const OFFSET_MAGIC: &[u8; 4] = b"FLOI";
const TIME_MAGIC: &[u8; 4] = b"FLTI";
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;

/// One `.index` entry: the batch starting at `base + rel_offset` is at `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
}

/// One `.timeindex` entry: every batch before `rel_offset` has a max timestamp
/// of at most `max_timestamp_before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_before: i64,
    pub rel_offset: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

fn encode_header(out: &mut Vec<u8>, magic: &[u8; 4], entry_bytes: usize, count: usize, body: &[u8]) {
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(entry_bytes as u16).to_be_bytes());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
}

/// Checks the header and CRC and returns the entry bytes.
fn decode_body<'a>(bytes: &'a [u8], magic: &[u8; 4], entry_bytes: usize) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "index file of {} bytes is shorter than its header",
            bytes.len()
        ));
    }
    if &bytes[0..4] != magic {
        return Err("bad index magic".into());
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(format!("unknown index version {version}"));
    }
    let esize = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
    if esize != entry_bytes {
        return Err(format!("index entry size {esize}, expected {entry_bytes}"));
    }
    let count = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let end = count
        .checked_mul(entry_bytes)
        .and_then(|n| n.checked_add(HEADER_BYTES))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "index says {count} entries but the file has {} bytes",
                bytes.len()
            )
        })?;
    let body = &bytes[HEADER_BYTES..end];
    let crc = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32c::crc32c(body) != crc {
        return Err("index CRC mismatch".into());
    }
    Ok(body)
}

impl OffsetIndex {
    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry; entries must be strictly increasing in both fields.
    pub fn push(&mut self, e: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                e.rel_offset > last.rel_offset && e.position > last.position,
                "offset index entries out of order: {last:?} then {e:?}"
            );
        }
        self.entries.push(e);
    }

    /// The entry with the largest relative offset <= `rel`, or the segment start.
    pub fn lookup(&self, rel: u32) -> OffsetEntry {
        let i = self.entries.partition_point(|e| e.rel_offset <= rel);
        if i == 0 {
            OffsetEntry {
                rel_offset: 0,
                position: 0,
            }
        } else {
            self.entries[i - 1]
        }
    }

    /// Drops entries at or after relative offset `rel`.
    pub fn truncate_from(&mut self, rel: u32) {
        let i = self.entries.partition_point(|e| e.rel_offset < rel);
        self.entries.truncate(i);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            body.extend_from_slice(&e.rel_offset.to_be_bytes());
            body.extend_from_slice(&e.position.to_be_bytes());
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        encode_header(
            &mut out,
            OFFSET_MAGIC,
            OFFSET_ENTRY_BYTES,
            self.entries.len(),
            &body,
        );
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks an index file: header, CRC, strictly increasing
    /// entries, and every position below `segment_bytes`.
    pub fn decode(bytes: &[u8], segment_bytes: u64) -> Result<OffsetIndex, String> {
        let body = decode_body(bytes, OFFSET_MAGIC, OFFSET_ENTRY_BYTES)?;
        let mut index = OffsetIndex::default();
        for c in body.chunks_exact(OFFSET_ENTRY_BYTES) {
            let e = OffsetEntry {
                rel_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            };
            if u64::from(e.position) >= segment_bytes {
                return Err(format!(
                    "index entry {e:?} points past the segment end {segment_bytes}"
                ));
            }
            if let Some(last) = index.entries.last() {
                if e.rel_offset <= last.rel_offset || e.position <= last.position {
                    return Err(format!("index entries out of order: {last:?} then {e:?}"));
                }
            }
            index.entries.push(e);
        }
        Ok(index)
    }
}

impl TimeIndex {
    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    pub fn push(&mut self, e: TimeEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                e.rel_offset > last.rel_offset && e.max_timestamp_before >= last.max_timestamp_before,
                "time index entries out of order: {last:?} then {e:?}"
            );
        }
        self.entries.push(e);
    }

    /// The relative offset to start scanning from when looking for the first
    /// record with a timestamp >= `ts`: every batch before it is older.
    pub fn scan_start(&self, ts: i64) -> u32 {
        let i = self.entries.partition_point(|e| e.max_timestamp_before < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].rel_offset
        }
    }

    pub fn truncate_from(&mut self, rel: u32) {
        let i = self.entries.partition_point(|e| e.rel_offset < rel);
        self.entries.truncate(i);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            body.extend_from_slice(&e.max_timestamp_before.to_be_bytes());
            body.extend_from_slice(&e.rel_offset.to_be_bytes());
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        encode_header(&mut out, TIME_MAGIC, TIME_ENTRY_BYTES, self.entries.len(), &body);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TimeIndex, String> {
        let body = decode_body(bytes, TIME_MAGIC, TIME_ENTRY_BYTES)?;
        let mut index = TimeIndex::default();
        for c in body.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[0..8]);
            let e = TimeEntry {
                max_timestamp_before: i64::from_be_bytes(ts),
                rel_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            };
            if let Some(last) = index.entries.last() {
                if e.rel_offset <= last.rel_offset || e.max_timestamp_before < last.max_timestamp_before {
                    return Err(format!("time index entries out of order: {last:?} then {e:?}"));
                }
            }
            index.entries.push(e);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OffsetIndex {
        let mut i = OffsetIndex::default();
        i.push(OffsetEntry {
            rel_offset: 10,
            position: 4100,
        });
        i.push(OffsetEntry {
            rel_offset: 25,
            position: 8300,
        });
        i.push(OffsetEntry {
            rel_offset: 40,
            position: 12500,
        });
        i
    }

    #[test]
    fn lookup_finds_floor_entry() {
        let i = sample();
        assert_eq!(
            i.lookup(0),
            OffsetEntry {
                rel_offset: 0,
                position: 0
            }
        );
        assert_eq!(i.lookup(9).position, 0);
        assert_eq!(i.lookup(10).position, 4100);
        assert_eq!(i.lookup(24).position, 4100);
        assert_eq!(i.lookup(1000).position, 12500);
    }

    #[test]
    fn encode_decode_round_trip_with_padding() {
        let i = sample();
        let mut bytes = i.encode();
        bytes.resize(4096, 0);
        assert_eq!(OffsetIndex::decode(&bytes, 1 << 20), Ok(i));
    }

    #[test]
    fn decode_rejects_garbage_and_corruption() {
        let i = sample();
        let bytes = i.encode();
        assert!(OffsetIndex::decode(&[], 1 << 20).is_err());
        assert!(OffsetIndex::decode(&[0xAB; 64], 1 << 20).is_err());
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(OffsetIndex::decode(&b, 1 << 20).is_err(), "flip at {at} accepted");
        }
        // Positions past the segment's end mean the index is stale.
        assert!(OffsetIndex::decode(&bytes, 12500).is_err());
        assert!(
            TimeIndex::decode(&bytes).is_err(),
            "offset index accepted as time index"
        );
    }

    #[test]
    fn truncate_drops_entries_at_or_after() {
        let mut i = sample();
        i.truncate_from(25);
        assert_eq!(i.entries().len(), 1);
        let mut t = TimeIndex::default();
        t.push(TimeEntry {
            max_timestamp_before: 100,
            rel_offset: 5,
        });
        t.push(TimeEntry {
            max_timestamp_before: 200,
            rel_offset: 9,
        });
        t.truncate_from(9);
        assert_eq!(t.entries().len(), 1);
    }

    #[test]
    fn time_scan_start_skips_only_older_batches() {
        let mut t = TimeIndex::default();
        t.push(TimeEntry {
            max_timestamp_before: 100,
            rel_offset: 5,
        });
        t.push(TimeEntry {
            max_timestamp_before: 200,
            rel_offset: 9,
        });
        t.push(TimeEntry {
            max_timestamp_before: 200,
            rel_offset: 12,
        });
        assert_eq!(t.scan_start(50), 0);
        assert_eq!(t.scan_start(100), 0);
        assert_eq!(t.scan_start(101), 5);
        assert_eq!(t.scan_start(200), 5);
        assert_eq!(t.scan_start(201), 12);
        let bytes = t.encode();
        assert_eq!(TimeIndex::decode(&bytes), Ok(t));
    }
}
