//! Offline inspection of log directories: what `ferrolog log dump` lists and
//! `ferrolog log verify` checks. Plain blocking file I/O: this runs in a tool,
//! never on a shard, and must work on a directory no broker has open.
//!
//! Verify checks every batch (magic, length, CRC-32C), offset continuity within
//! and across segments, and that index files, where present, decode and point
//! at the batches they name. Zero bytes after the last batch are unwritten
//! block padding (left by an unclean stop) and are reported, not flagged.

use crate::index::{OffsetIndex, TimeIndex};
use crate::segment::{index_path, parse_log_file_name, time_index_path};
use ferrolog_model::{BatchHeader, Offset, TimestampMs};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How deep `find_log_dirs` looks below the directory it is given.
const MAX_SEARCH_DEPTH: usize = 3;

#[derive(Clone, Debug)]
pub struct BatchInfo {
    pub position: u64,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub records: i32,
    pub bytes: usize,
    pub max_timestamp: TimestampMs,
    pub compression: i16,
    /// The CRC-32C stored in the header (replicas holding the same batch
    /// hold the same value).
    pub crc: u32,
    pub crc_ok: bool,
    /// The batch's records (decoded with its codec), when asked for
    /// ([`inspect_log_records`]); `Err` says why they could not be read.
    pub record_list: Option<Result<Vec<RecordInfo>, String>>,
}

/// One record of a batch, as `ferrolog log dump --records` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    /// `None`: a null value (a tombstone).
    pub value_len: Option<usize>,
    /// CRC-32C of the value's bytes (0 for a null value).
    pub value_crc: u32,
}

/// The records of the whole batch `whole`, decoded with its codec.
pub fn batch_records(whole: &[u8]) -> Result<Vec<RecordInfo>, String> {
    let header = BatchHeader::parse(whole).map_err(|e| e.to_string())?;
    let end = header.total_bytes().min(whole.len());
    let head = ferrolog_model::batch::HEADER_BYTES;
    let plain: Vec<u8> = if header.compression() == 0 {
        whole[..end].to_vec()
    } else {
        let section =
            bytes::Bytes::copy_from_slice(whole.get(head..end).ok_or("batch shorter than its header")?);
        let decoded = crate::codec::decode(header.compression(), section)?;
        // The same header with no codec bits and the length of the plain
        // records, so the model's record reader takes it.
        let mut b = whole[..head].to_vec();
        let attributes = i16::from_be_bytes([b[21], b[22]]) & !0x07;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        let length = i32::try_from(head - 12 + decoded.len()).map_err(|_| "decoded batch too large")?;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&decoded);
        b
    };
    let records = ferrolog_model::batch::records(&plain).ok_or("the records do not parse")?;
    Ok(records
        .into_iter()
        .map(|r| RecordInfo {
            offset: r.offset,
            key: r.key.map(<[u8]>::to_vec),
            value_len: r.value.map(<[u8]>::len),
            value_crc: r.value.map_or(0, crc32c::crc32c),
        })
        .collect())
}

#[derive(Clone, Debug)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub base: Offset,
    pub file_bytes: u64,
    pub batches: Vec<BatchInfo>,
    /// Zero bytes after the last batch.
    pub padding_bytes: u64,
    /// Offset index entries, if the index file is present and valid.
    pub index_entries: Option<usize>,
}

/// One piece of damage: the file, the byte position, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub position: u64,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.path.display(),
            self.position,
            self.reason
        )
    }
}

#[derive(Clone, Debug)]
pub struct LogReport {
    pub dir: PathBuf,
    pub segments: Vec<SegmentReport>,
    pub problems: Vec<Problem>,
}

impl LogReport {
    pub fn batch_count(&self) -> usize {
        self.segments.iter().map(|s| s.batches.len()).sum()
    }

    /// First and one-past-last offsets of valid batches, if any.
    pub fn offset_range(&self) -> Option<(Offset, Offset)> {
        let mut valid = self
            .segments
            .iter()
            .flat_map(|s| s.batches.iter())
            .filter(|b| b.crc_ok);
        let first = valid.next()?;
        let last = valid.next_back().unwrap_or(first);
        Some((first.base_offset, last.last_offset.plus(1)))
    }
}

fn has_segments(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().and_then(parse_log_file_name).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The log directories at or below `root`: `root` itself if it holds
/// segments, else its subdirectories that do (a broker data dir holds one
/// `<topic>-<partition>` directory per log).
pub fn find_log_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    find_into(root, 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn find_into(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if has_segments(dir)? {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth >= MAX_SEARCH_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            find_into(&entry.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

/// Reads and checks every segment of the log in `dir`.
pub fn inspect_log(dir: &Path) -> io::Result<LogReport> {
    inspect(dir, false)
}

/// As [`inspect_log`], with every batch's records decoded
/// ([`BatchInfo::record_list`]).
pub fn inspect_log_records(dir: &Path) -> io::Result<LogReport> {
    inspect(dir, true)
}

fn inspect(dir: &Path, records: bool) -> io::Result<LogReport> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_log_file_name) {
            bases.push((base, entry.path()));
        }
    }
    bases.sort();
    let mut report = LogReport {
        dir: dir.to_path_buf(),
        segments: Vec::new(),
        problems: Vec::new(),
    };
    let mut expected_next: Option<Offset> = None;
    for (base, path) in bases {
        let seg = inspect_segment(&path, base, records, &mut report.problems)?;
        if let (Some(expected), Some(first)) = (expected_next, seg.batches.first()) {
            if first.base_offset != expected {
                report.problems.push(Problem {
                    path: path.clone(),
                    position: 0,
                    reason: format!(
                        "segment starts at offset {} but the previous one ended at {expected}",
                        first.base_offset
                    ),
                });
            }
        }
        if let Some(last) = seg.batches.last() {
            expected_next = Some(last.last_offset.plus(1));
        }
        report.segments.push(seg);
    }
    Ok(report)
}

fn inspect_segment(
    path: &Path,
    base: Offset,
    records: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<SegmentReport> {
    let mut file = File::open(path)?;
    let file_bytes = file.metadata()?.len();
    let mut seg = SegmentReport {
        path: path.to_path_buf(),
        base,
        file_bytes,
        batches: Vec::new(),
        padding_bytes: 0,
        index_entries: None,
    };
    let mut pos = 0u64;
    let mut expected = base;
    let mut head = [0u8; ferrolog_model::batch::HEADER_BYTES];
    while pos < file_bytes {
        let available = file_bytes - pos;
        file.seek(SeekFrom::Start(pos))?;
        let n = (head.len() as u64).min(available) as usize;
        file.read_exact(&mut head[..n])?;
        let header = match BatchHeader::parse(&head[..n]) {
            Ok(h) if h.total_bytes() as u64 <= available => h,
            parsed => {
                if rest_is_zero(&mut file, pos, file_bytes)? {
                    seg.padding_bytes = file_bytes - pos;
                } else {
                    let reason = match parsed {
                        Ok(h) => format!("batch of {} bytes runs past the end of the file", h.total_bytes()),
                        Err(e) => e.to_string(),
                    };
                    problems.push(Problem {
                        path: path.to_path_buf(),
                        position: pos,
                        reason,
                    });
                }
                break;
            }
        };
        let mut whole = vec![0u8; header.total_bytes()];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut whole)?;
        let verified = BatchHeader::parse_verified(&whole);
        if let Err(e) = &verified {
            problems.push(Problem {
                path: path.to_path_buf(),
                position: pos,
                reason: format!("batch at offset {}: {e}", header.base_offset),
            });
        } else if header.base_offset != expected {
            problems.push(Problem {
                path: path.to_path_buf(),
                position: pos,
                reason: format!(
                    "batch base offset {} where {expected} was expected",
                    header.base_offset
                ),
            });
        }
        seg.batches.push(BatchInfo {
            position: pos,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            records: header.record_count,
            bytes: header.total_bytes(),
            max_timestamp: header.max_timestamp,
            compression: header.compression(),
            crc: header.crc,
            crc_ok: verified.is_ok(),
            record_list: records.then(|| batch_records(&whole)),
        });
        expected = header.last_offset().plus(1);
        pos += header.total_bytes() as u64;
    }
    check_indexes(&mut seg, problems)?;
    Ok(seg)
}

fn rest_is_zero(file: &mut File, from: u64, end: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut left = end - from;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// Index files are optional (the active segment's is written at close and
/// rebuilt on open), but one that exists must be valid and point at batches.
fn check_indexes(seg: &mut SegmentReport, problems: &mut Vec<Problem>) -> io::Result<()> {
    let ipath = index_path(&seg.path);
    match std::fs::read(&ipath) {
        Ok(bytes) => match OffsetIndex::decode(&bytes, seg.file_bytes.max(1)) {
            Ok(index) => {
                seg.index_entries = Some(index.entries().len());
                for e in index.entries() {
                    let target = seg.base.plus(i64::from(e.rel_offset));
                    let ok = seg
                        .batches
                        .iter()
                        .any(|b| b.position == u64::from(e.position) && b.base_offset == target);
                    if !ok {
                        problems.push(Problem {
                            path: ipath.clone(),
                            position: 0,
                            reason: format!(
                                "entry offset {target} -> position {} does not point at that batch",
                                e.position
                            ),
                        });
                        break;
                    }
                }
            }
            Err(reason) => problems.push(Problem {
                path: ipath.clone(),
                position: 0,
                reason,
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tpath = time_index_path(&seg.path);
    match std::fs::read(&tpath) {
        Ok(bytes) => {
            if let Err(reason) = TimeIndex::decode(&bytes) {
                problems.push(Problem {
                    path: tpath,
                    position: 0,
                    reason,
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::batch::{set_base_offset, BatchBuilder};

    fn write_segment(dir: &Path, base: i64, batches: usize) -> Vec<u8> {
        let mut data = Vec::new();
        let mut next = base;
        for i in 0..batches {
            let mut b = BatchBuilder::new(TimestampMs(i as i64))
                .record(TimestampMs(i as i64), None, b"hello")
                .record(TimestampMs(i as i64), None, b"world")
                .build();
            set_base_offset(&mut b, Offset(next));
            next += 2;
            data.extend_from_slice(&b);
        }
        std::fs::write(dir.join(crate::segment::log_file_name(Offset(base))), &data).expect("write");
        data
    }

    #[test]
    fn records_of_plain_and_compressed_batches_are_listed() {
        let plain = BatchBuilder::new(TimestampMs(1))
            .record(TimestampMs(1), Some(b"k1"), b"hello")
            .record_or_tombstone(TimestampMs(2), Some(b"k2"), None)
            .record(TimestampMs(3), None, b"world")
            .build();
        let want = vec![
            RecordInfo {
                offset: Offset(0),
                key: Some(b"k1".to_vec()),
                value_len: Some(5),
                value_crc: crc32c::crc32c(b"hello"),
            },
            RecordInfo {
                offset: Offset(1),
                key: Some(b"k2".to_vec()),
                value_len: None,
                value_crc: 0,
            },
            RecordInfo {
                offset: Offset(2),
                key: None,
                value_len: Some(5),
                value_crc: crc32c::crc32c(b"world"),
            },
        ];
        assert_eq!(batch_records(&plain), Ok(want.clone()));
        // The same records zstd-compressed (codec 4), as a producer sends them.
        let head = ferrolog_model::batch::HEADER_BYTES;
        let mut section = bytes::BytesMut::new();
        crate::codec::encode(4, &plain[head..], &mut section).expect("zstd");
        let mut zstd = plain[..head].to_vec();
        zstd[22] |= 4;
        let length = i32::try_from(head - 12 + section.len()).expect("length");
        zstd[8..12].copy_from_slice(&length.to_be_bytes());
        zstd.extend_from_slice(&section);
        assert_eq!(batch_records(&zstd), Ok(want));
        // A compressed section that does not decode (its frame magic gone)
        // is an error, not a panic.
        zstd[head..head + 4].fill(0);
        assert!(batch_records(&zstd).is_err());
    }

    #[test]
    fn clean_log_verifies_and_lists_every_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_segment(dir.path(), 0, 5);
        write_segment(dir.path(), 10, 3);
        let r = inspect_log(dir.path()).expect("inspect");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.batch_count(), 8);
        assert_eq!(r.offset_range(), Some((Offset(0), Offset(16))));
        assert_eq!(
            find_log_dirs(dir.path()).expect("find"),
            vec![dir.path().to_path_buf()]
        );
    }

    #[test]
    fn flipped_byte_is_reported_with_file_and_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = write_segment(dir.path(), 0, 5);
        let batch_len = data.len() / 5;
        let at = 2 * batch_len + 40;
        data[at] ^= 0x01;
        let path = dir.path().join(crate::segment::log_file_name(Offset(0)));
        std::fs::write(&path, &data).expect("write");
        let r = inspect_log(dir.path()).expect("inspect");
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].path, path);
        assert_eq!(r.problems[0].position, (2 * batch_len) as u64);
        assert!(r.problems[0].reason.contains("CRC"), "{}", r.problems[0]);
        assert_eq!(
            r.batch_count(),
            5,
            "scan goes on past a bad CRC when the length is sane"
        );
    }

    #[test]
    fn zero_padding_is_not_damage_but_garbage_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = write_segment(dir.path(), 0, 2);
        let path = dir.path().join(crate::segment::log_file_name(Offset(0)));
        data.extend_from_slice(&[0u8; 3000]);
        std::fs::write(&path, &data).expect("write");
        let r = inspect_log(dir.path()).expect("inspect");
        assert!(r.problems.is_empty());
        assert_eq!(r.segments[0].padding_bytes, 3000);
        let end = data.len() - 3000;
        data[end + 100] = 0x5A;
        std::fs::write(&path, &data).expect("write");
        let r = inspect_log(dir.path()).expect("inspect");
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].position, end as u64);
    }

    #[test]
    fn offset_gap_and_bad_index_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_segment(dir.path(), 0, 2);
        write_segment(dir.path(), 7, 1);
        std::fs::write(dir.path().join("00000000000000000007.index"), b"garbage").expect("write");
        let r = inspect_log(dir.path()).expect("inspect");
        let reasons: Vec<_> = r.problems.iter().map(|p| p.reason.clone()).collect();
        assert_eq!(r.problems.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("previous one ended at 4")),
            "{reasons:?}"
        );
        assert!(r
            .problems
            .iter()
            .any(|p| p.path.ends_with("00000000000000000007.index")));
    }

    #[test]
    fn finds_partition_dirs_below_a_data_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        for name in ["orders-0", "orders-1"] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).expect("mkdir");
            write_segment(&d, 0, 1);
        }
        std::fs::create_dir(root.path().join("empty")).expect("mkdir");
        let dirs = find_log_dirs(root.path()).expect("find");
        assert_eq!(dirs.len(), 2);
        assert!(dirs[0].ends_with("orders-0"));
    }
}
