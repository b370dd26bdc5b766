//! One segment: a `.log` file of whole RecordBatch v2 batches plus its two
//! sparse indexes, and the scan that validates a segment's batches.

use crate::error::{Result, StorageError};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use ferrolog_model::{BatchError, BatchHeader, Offset};
use glommio::io::DmaFile;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Block size that O_DIRECT offsets, lengths and buffers are aligned to.
pub const BLOCK_BYTES: u64 = 4096;

pub fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK_BYTES - 1)
}

pub fn log_file_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

pub fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("index")
}

pub fn time_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("timeindex")
}

/// Parses `<20 digits>.log` into its base offset.
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Offset)
}

pub(crate) struct Segment {
    pub base: Offset,
    pub path: PathBuf,
    /// Names this segment's file in the shard's [`SealedFiles`] and tells a
    /// segment apart from one that replaced it (compaction); unique per
    /// process.
    pub id: u64,
    /// The open file: always for the active segment, and for a sealed one
    /// while recovery or compaction works on it. Otherwise `None`: a sealed
    /// segment's file is opened on first read and kept in [`SealedFiles`].
    pub file: Option<Rc<DmaFile>>,
    /// Logical size: every appended batch, written or not.
    pub size: u64,
    /// Offset after the last appended batch (== base when empty).
    pub next_offset: Offset,
    /// Newest batch max timestamp of appended batches (i64::MIN when empty).
    pub max_timestamp: i64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Batch bytes appended since the last index entry.
    pub bytes_since_index: u64,
    /// Clock time when the segment was created or opened, for `segment_ms`.
    pub created_ms: i64,
    /// The durable point: what a crash keeps, per the log's durability mode.
    pub durable: DurablePoint,
    /// File bytes known to be written (data or zeros), block-aligned. Writes
    /// below it overwrite written blocks, which ext4 does without a metadata
    /// update; see `LogConfig::prezero_bytes`. 0 when unknown (recovered).
    pub file_end: u64,
    /// [`Segment::indexes_digest`] of the index files on disk, where they
    /// were loaded at open: a close that would write the same bytes skips
    /// them (each write is a new file renamed over the old one, and a clean
    /// stop of thousands of partitions is mostly such writes).
    pub indexes_on_disk: Option<u32>,
}

/// The state of a segment at its last successful flush. Rollback after a
/// failed flush returns the segment to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurablePoint {
    pub size: u64,
    pub max_timestamp: i64,
    pub bytes_since_index: u64,
    /// Bytes of the partial last block, `align_down(size)..size`: rewritten in
    /// place, followed by new data, by the next flush.
    pub tail: Vec<u8>,
}

/// Segment ids: unique per process, never reused.
static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(0);

impl Segment {
    /// A segment with no batches yet over an open file.
    pub fn empty(base: Offset, path: PathBuf, file: DmaFile, now_ms: i64) -> Segment {
        Segment {
            file: Some(Rc::new(file)),
            ..Segment::unborn(base, path, now_ms)
        }
    }

    /// An empty segment whose file does not exist yet (an unborn log's).
    pub fn unborn(base: Offset, path: PathBuf, now_ms: i64) -> Segment {
        Segment {
            base,
            path,
            id: NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed),
            file: None,
            size: 0,
            next_offset: base,
            max_timestamp: i64::MIN,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
            created_ms: now_ms,
            durable: DurablePoint {
                size: 0,
                max_timestamp: i64::MIN,
                bytes_since_index: 0,
                tail: Vec::new(),
            },
            file_end: 0,
            indexes_on_disk: None,
        }
    }

    /// CRC-32C of both index encodings, as written to their files.
    pub fn indexes_digest(&self) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&self.index.encode()), &self.time_index.encode())
    }

    /// Records a batch of `len` bytes at `position` in the indexes, adding an
    /// entry when `interval` bytes were appended since the last one.
    pub fn index_batch(&mut self, header: &BatchHeader, position: u64, len: u64, interval: u64) {
        if self.bytes_since_index >= interval {
            let rel_offset = self.rel(header.base_offset);
            self.index.push(OffsetEntry {
                rel_offset,
                position: position as u32,
            });
            self.time_index.push(TimeEntry {
                max_timestamp_before: self.max_timestamp,
                rel_offset,
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp.0);
    }

    pub fn rel(&self, offset: Offset) -> u32 {
        let rel = offset.0 - self.base.0;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&rel),
            "offset {offset} outside segment {}",
            self.base
        );
        rel as u32
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The open file of a segment that must have one (the active segment,
    /// or one being recovered or written by compaction).
    pub fn open_file(&self) -> &Rc<DmaFile> {
        self.file.as_ref().unwrap_or_else(|| {
            panic!(
                "segment {} is used as open but its file is closed",
                self.path.display()
            )
        })
    }

    /// How to get at this segment's file: the open one, or its id and path
    /// to find it in [`SealedFiles`] or open it.
    pub fn handle(&self) -> FileHandle {
        FileHandle {
            id: self.id,
            path: self.path.clone(),
            open: self.file.clone(),
        }
    }
}

/// A segment's file, open or to be opened (see [`Segment::handle`]).
pub(crate) struct FileHandle {
    pub id: u64,
    pub path: PathBuf,
    pub open: Option<Rc<DmaFile>>,
}

/// The sealed segment files one shard keeps open, at most `max`; the least
/// recently used is closed first. A file still in use by a read when it is
/// closed here stays open until that read drops it (glommio closes a
/// dropped file asynchronously).
pub(crate) struct SealedFiles {
    max: usize,
    clock: u64,
    /// id -> (file, last use).
    open: HashMap<u64, (Rc<DmaFile>, u64)>,
    /// last use -> id, oldest first.
    by_use: BTreeMap<u64, u64>,
    /// Files opened and closed here since start (for metrics and tests).
    pub opened: u64,
    pub closed: u64,
}

impl SealedFiles {
    pub fn new(max: usize) -> SealedFiles {
        SealedFiles {
            max,
            clock: 0,
            open: HashMap::new(),
            by_use: BTreeMap::new(),
            opened: 0,
            closed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The file of segment `id` if open; marks it used.
    pub fn get(&mut self, id: u64) -> Option<Rc<DmaFile>> {
        self.clock += 1;
        let (file, used) = self.open.get_mut(&id)?;
        self.by_use.remove(used);
        *used = self.clock;
        self.by_use.insert(self.clock, id);
        Some(file.clone())
    }

    /// Keeps `file` as segment `id`'s, closing the least recently used
    /// files beyond the bound.
    pub fn insert(&mut self, id: u64, file: Rc<DmaFile>) {
        self.remove(id);
        self.clock += 1;
        self.open.insert(id, (file, self.clock));
        self.by_use.insert(self.clock, id);
        self.opened += 1;
        self.trim();
    }

    /// Closes segment `id`'s file (its segment was deleted or replaced).
    pub fn remove(&mut self, id: u64) {
        if let Some((_, used)) = self.open.remove(&id) {
            self.by_use.remove(&used);
            self.closed += 1;
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
        self.trim();
    }

    fn trim(&mut self) {
        while self.open.len() > self.max {
            let (_, id) = self.by_use.pop_first().expect("by_use indexes every open file");
            self.open.remove(&id).expect("by_use names open files");
            self.closed += 1;
        }
        assert_eq!(
            self.open.len(),
            self.by_use.len(),
            "sealed file index out of step"
        );
    }
}

/// Reads a segment file through a window of aligned DMA reads.
pub(crate) struct WindowReader<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    chunk_bytes: usize,
    /// Where the bytes worth reading end (block-aligned up): a read ahead
    /// never goes past it.
    end: u64,
    window_pos: u64,
    window: Vec<u8>,
}

impl<'a> WindowReader<'a> {
    /// A reader of `file` up to `end` (the bytes its caller may ask for:
    /// the data's end or the file's size). A read ahead stops there: a
    /// direct read past the end of a file still has the kernel zero the
    /// whole buffer (ext4 fills the part past EOF as a hole, then reports
    /// only the bytes before it), so a 1 MiB chunk over a 20 KiB segment
    /// cost a fresh 1 MiB buffer faulted in and zeroed, per segment
    /// opened after a crash (about half of the shards' CPU when 10,000
    /// partitions recovered).
    pub fn new(file: &'a DmaFile, path: &'a Path, chunk_bytes: usize, end: u64) -> Self {
        WindowReader {
            file,
            path,
            chunk_bytes,
            end: align_up(end),
            window_pos: 0,
            window: Vec::new(),
        }
    }

    /// Bytes `pos..pos+len`, or fewer if the file ends first.
    pub async fn get(&mut self, pos: u64, len: usize) -> Result<&[u8]> {
        let have_from = pos >= self.window_pos;
        let have_to = pos + len as u64 <= self.window_pos + self.window.len() as u64;
        if !(have_from && have_to) {
            let ahead = usize::try_from(self.end.saturating_sub(pos)).unwrap_or(usize::MAX);
            let want = len.max(self.chunk_bytes.min(ahead));
            let r = self
                .file
                .read_at(pos, want)
                .await
                .map_err(|e| StorageError::io("read", self.path, crate::error::glommio_io(e)))?;
            self.window.clear();
            self.window.extend_from_slice(&r);
            self.window_pos = pos;
        }
        let start = (pos - self.window_pos) as usize;
        let end = (start + len).min(self.window.len());
        Ok(&self.window[start.min(end)..end])
    }
}

/// Why a scan stopped before the end of the data it was given.
#[derive(Debug, Clone)]
pub(crate) struct ScanStop {
    pub position: u64,
    pub reason: String,
    /// True if every byte from `position` to the end is zero: unwritten
    /// padding of the last block, not damage.
    pub zero_padding: bool,
}

pub(crate) struct ScanOutcome {
    pub end: u64,
    pub next_offset: Offset,
    pub stop: Option<ScanStop>,
}

/// Validates batches from `pos` (where offset `expected` must start) up to
/// `limit` bytes, indexing each into `seg`. Stops at the first batch that is
/// torn, fails its CRC, or does not continue the offsets.
pub(crate) async fn scan(
    seg: &mut Segment,
    mut pos: u64,
    mut expected: Offset,
    limit: u64,
    interval: u64,
    chunk_bytes: usize,
) -> Result<ScanOutcome> {
    let file = seg.open_file().clone();
    let path = seg.path.clone();
    let mut reader = WindowReader::new(&file, &path, chunk_bytes, limit);
    let mut stop = None;
    while pos < limit {
        let head = reader.get(pos, ferrolog_model::batch::HEADER_BYTES).await?;
        let reason = match BatchHeader::parse(head) {
            Err(e) => Some(e.to_string()),
            Ok(h) if pos + h.total_bytes() as u64 > limit => Some(
                BatchError::Truncated {
                    needed: h.total_bytes(),
                    available: (limit - pos) as usize,
                }
                .to_string(),
            ),
            Ok(h) => {
                let whole = reader.get(pos, h.total_bytes()).await?;
                match BatchHeader::parse_verified(whole) {
                    Err(e) => Some(e.to_string()),
                    Ok(h) if h.base_offset != expected => Some(format!(
                        "batch base offset {} where {} was expected",
                        h.base_offset, expected
                    )),
                    Ok(h) => {
                        let len = h.total_bytes() as u64;
                        seg.index_batch(&h, pos, len, interval);
                        pos += len;
                        expected = h.last_offset().plus(1);
                        None
                    }
                }
            }
        };
        if let Some(reason) = reason {
            let zero_padding = all_zero(&mut reader, pos, limit).await?;
            stop = Some(ScanStop {
                position: pos,
                reason,
                zero_padding,
            });
            break;
        }
    }
    Ok(ScanOutcome {
        end: pos,
        next_offset: expected,
        stop,
    })
}

async fn all_zero(reader: &mut WindowReader<'_>, mut pos: u64, limit: u64) -> Result<bool> {
    while pos < limit {
        let n = ((limit - pos) as usize).min(reader.chunk_bytes);
        let bytes = reader.get(pos, n).await?;
        if bytes.is_empty() {
            break;
        }
        if bytes.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += bytes.len() as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = log_file_name(Offset(1234));
        assert_eq!(name, "00000000000000001234.log");
        assert_eq!(parse_log_file_name(&name), Some(Offset(1234)));
        assert_eq!(parse_log_file_name("1234.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000123x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000001234.index"), None);
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
