//! Log compaction: keep the latest record per key in the sealed segments.
//!
//! A pass (`Log::compact`) works on the *compactable prefix* of the log: the
//! sealed segments from the log start up to the first one that ends past the
//! caller's bound (the high watermark: nothing a replica may still truncate
//! is compacted) or holds a record younger than `min_compaction_lag_ms`. The
//! active segment is never touched. A pass runs only when the bytes added
//! since the last pass (the *dirty* bytes, past the saved clean point) are at
//! least `min_cleanable_dirty_ppm` of the prefix, when a dirty segment's oldest
//! record is older than `max_compaction_lag_ms`, or when a kept tombstone has
//! reached its `delete_retention_ms`.
//!
//! It reads the prefix twice: first to map every key to its latest offset
//! (bounded by `map_key_bytes_max`; a pass covers the oldest segments whose keys
//! fit), then to rewrite each segment, oldest first, keeping a record when it
//! has no key, or is its key's latest and not a tombstone older than
//! `delete_retention_ms`. Batches keep their base offset, lastOffsetDelta,
//! producer fields and attributes; only their records, length, count and CRC
//! change, so offsets stay where they were and a batch whose records are all
//! gone stays as an empty batch (61 bytes; Kafka keeps such batches for
//! producer state too). Because every batch stays, the offsets of a segment
//! remain contiguous: recovery, truncation, reads, followers catching up
//! and idempotent producer state need nothing new. A compressed batch (a
//! producer's codec, or a topic's `compression.type`) is decoded, filtered
//! and encoded again with its own codec; one that does not decode is kept as
//! it is. A LogAppendTime batch's records all carry its max timestamp (the
//! append time), as in Kafka. Transactional and control batches are left as
//! they are (their records are not decoded).
//!
//! Crash safety, per segment: the rewrite goes to `<base>.log.cleaned`, is
//! synced, and renamed to `<base>.log.swap` (the commit point; the directory
//! is synced). Then the old index files are removed, `.swap` is renamed over
//! `<base>.log` and the new indexes are written. At open,
//! `finish_interrupted_swaps` deletes any `.cleaned` (the old segment is
//! intact) and completes any `.swap` (drops stale indexes, renames). Segments
//! are swapped oldest first, so whatever step a crash interrupts, an older
//! segment is compacted before a newer one: a record dropped as superseded
//! always has its successor in the log, and a tombstone is dropped only once
//! the older values it deletes are gone.
//!
//! The passes yield to the reactor after every batch (`yield_if_needed`), and
//! the segment swap takes only the seal permit, never the flush permit, so
//! appends go on while a pass runs.

use super::*;
use crate::env::CompactStep;
use std::collections::HashMap;

/// Size of the compactor's reads and writes: small enough that an append's
/// write queued behind one does not wait long (1 MiB ones cost produce p99
/// more in docs/benchmarks.md), large enough for sequential throughput.
const COMPACTION_IO_BYTES: usize = 128 << 10;
const CLEANED_SUFFIX: &str = ".cleaned";
const SWAP_SUFFIX: &str = ".swap";
/// The clean point: where the last pass ended, in the log directory.
pub(crate) const CLEAN_POINT_FILE: &str = "compaction.checkpoint";
const CLEAN_POINT_MAGIC: &str = "ferrolog-clean-point";

/// Attribute bits of a batch that make compaction leave it alone.
const ATTR_TRANSACTIONAL: i16 = 0x10;
/// The timestamp-type bit: the batch's records have the append time.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// The codec bits of the attributes, at this position of a batch.
const ATTR_CODEC_MASK: i16 = 0x07;
const ATTRIBUTES_AT: usize = 21;
const ATTR_CONTROL: i16 = 0x20;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    /// Why the pass did nothing, if it did nothing.
    pub skipped: Option<&'static str>,
    /// Base offsets of the segments rewritten and swapped in.
    pub rewritten: Vec<Offset>,
    /// Segment bytes read by the pass (both reads).
    pub bytes_read: u64,
    /// Size of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Where the compacted prefix ends (the new clean point).
    pub clean_next: Offset,
}

impl CompactionOutcome {
    fn skipped(why: &'static str) -> Self {
        CompactionOutcome {
            skipped: Some(why),
            ..Default::default()
        }
    }
}

#[derive(Default)]
pub(super) struct CompactionState {
    running: Cell<bool>,
    /// The end of the last pass's prefix; `None` until loaded from its file.
    clean_next: Cell<Option<Offset>>,
    /// When the oldest tombstone kept by the last pass reaches its retention.
    tombstone_due_ms: Cell<Option<i64>>,
}

/// Paces a pass to `CompactionConfig::io_bytes_per_sec`.
struct Throttle {
    started: std::time::Instant,
    bytes: Cell<u64>,
    bytes_per_sec: u64,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            started: std::time::Instant::now(),
            bytes: Cell::new(0),
            bytes_per_sec,
        }
    }

    /// Counts `n` bytes of I/O and sleeps while the pass is ahead of its rate.
    async fn charge(&self, n: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let bytes = self.bytes.get() + n;
        self.bytes.set(bytes);
        let due = std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            glommio::timer::sleep(ahead).await;
        }
    }
}

/// Clears `running` however the pass ends.
struct Running<'a>(&'a Cell<bool>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// A sealed segment as the pass saw it.
struct Candidate {
    base: Offset,
    /// The next segment's base: every offset of this segment is below it.
    end: Offset,
    next_offset: Offset,
    /// The segment's id: a segment swapped in since has another.
    id: u64,
    file: Rc<DmaFile>,
    path: PathBuf,
    size: u64,
    max_timestamp: i64,
    created_ms: i64,
}

/// Where a segment rewrite reports to.
struct Sinks<'a> {
    outcome: &'a mut CompactionOutcome,
    tombstone_due: &'a mut Option<i64>,
    throttle: &'a Throttle,
}

/// A rewritten segment, synced under its `.cleaned` name.
struct Rewritten {
    cleaned: PathBuf,
    seg: Segment,
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Completes or rolls back the segment swaps a crash interrupted (see the
/// module doc). Runs at open, before the segments are listed; blocking (the
/// caller runs it on the blocking pool). Returns whether it changed anything
/// (and then synced the directory).
pub(super) fn finish_interrupted_swaps(dir: &Path) -> Result<bool> {
    let finish = || -> std::io::Result<bool> {
        let mut changed = false;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(log_name) = name.strip_suffix(CLEANED_SUFFIX) {
                if parse_log_file_name(log_name).is_some() {
                    warn!(file = %path.display(), "removing an unfinished compacted segment");
                    std::fs::remove_file(&path)?;
                    changed = true;
                }
            } else if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX) {
                if parse_log_file_name(log_name).is_some() {
                    let log_path = dir.join(log_name);
                    for p in [index_path(&log_path), time_index_path(&log_path)] {
                        match std::fs::remove_file(&p) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    warn!(file = %path.display(), "completing an interrupted compaction swap");
                    std::fs::rename(&path, &log_path)?;
                    changed = true;
                }
            }
        }
        if changed {
            std::fs::File::open(dir)?.sync_all()?;
            info!(log = %dir.display(), "finished interrupted compaction swaps");
        }
        Ok(changed)
    };
    finish().map_err(|e| StorageError::io("finish compaction swaps", dir, e))
}

/// Reads the saved clean point; a missing or unreadable file means none.
async fn load_clean_point(dir: &Path) -> Offset {
    let path = dir.join(CLEAN_POINT_FILE);
    let p = path.clone();
    let bytes = match off_reactor(move || std::fs::read(p)).await {
        Ok(b) => b,
        Err(_) => return Offset(i64::MIN),
    };
    let text = String::from_utf8_lossy(&bytes);
    let parsed = text
        .trim_end_matches('\0')
        .trim()
        .strip_prefix(CLEAN_POINT_MAGIC)
        .and_then(|rest| rest.trim().parse::<i64>().ok());
    match parsed {
        Some(o) => Offset(o),
        None => {
            warn!(file = %path.display(), "ignoring an unreadable compaction clean point");
            Offset(i64::MIN)
        }
    }
}

/// Reads a zigzag varint at `*pos`, advancing it.
fn varlong(bytes: &[u8], pos: &mut usize) -> Option<i64> {
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

/// One record of a batch's (decoded) records section, with its encoded bytes.
struct RawRecord<'a> {
    bytes: &'a [u8],
    offset: Offset,
    timestamp: i64,
    key: Option<&'a [u8]>,
    tombstone: bool,
}

/// The records section of a batch, decoded with its codec; `None` if it does
/// not decode (the batch is then kept as it is).
fn plain_section<'a>(batch: &'a [u8], h: &BatchHeader) -> Option<std::borrow::Cow<'a, [u8]>> {
    let section = batch.get(ferrolog_model::batch::HEADER_BYTES..h.total_bytes().min(batch.len()))?;
    if h.compression() == 0 {
        return Some(std::borrow::Cow::Borrowed(section));
    }
    let plain = crate::codec::decode(h.compression(), Bytes::copy_from_slice(section)).ok()?;
    Some(std::borrow::Cow::Owned(Vec::from(plain)))
}

/// A record's timestamp: the batch's max timestamp (the append time) for a
/// LogAppendTime batch, else its base timestamp plus the record's delta.
fn record_timestamp(h: &BatchHeader, delta: i64) -> i64 {
    if h.attributes & ATTR_LOG_APPEND_TIME != 0 {
        h.max_timestamp.0
    } else {
        h.base_timestamp.0.saturating_add(delta)
    }
}

/// The records of a batch's plain records `section` (see `plain_section`),
/// or `None` if they do not parse (the batch is then kept as it is).
fn raw_records<'a>(section: &'a [u8], h: &BatchHeader) -> Option<Vec<RawRecord<'a>>> {
    let batch = section;
    let end = section.len();
    let mut pos = 0;
    let mut out = Vec::with_capacity(usize::try_from(h.record_count).ok()?.min(1 << 16));
    for _ in 0..h.record_count.max(0) {
        let start = pos;
        let len = usize::try_from(varlong(batch, &mut pos)?).ok()?;
        let record_end = pos.checked_add(len).filter(|&e| e <= end)?;
        let mut p = pos + 1; // attributes
        let ts_delta = varlong(batch, &mut p)?;
        let offset_delta = varlong(batch, &mut p)?;
        let key_len = varlong(batch, &mut p)?;
        let key = if key_len < 0 {
            None
        } else {
            let k_end = p
                .checked_add(usize::try_from(key_len).ok()?)
                .filter(|&e| e <= record_end)?;
            let k = &batch[p..k_end];
            p = k_end;
            Some(k)
        };
        let value_len = varlong(batch, &mut p)?;
        if p > record_end {
            return None;
        }
        out.push(RawRecord {
            bytes: &batch[start..record_end],
            offset: h.base_offset.plus(offset_delta),
            timestamp: record_timestamp(h, ts_delta),
            key,
            tombstone: value_len < 0,
        });
        pos = record_end;
    }
    (pos == end).then_some(out)
}

/// Whether compaction decodes this batch's records at all.
fn compactable(h: &BatchHeader) -> bool {
    h.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) == 0
}

/// `batch` with only the records `keep` names (encoded with the batch's
/// codec again), same header otherwise, with length, count and CRC
/// recomputed; `None` if the codec fails (the batch is then kept).
fn rebuild_batch(batch: &[u8], h: &BatchHeader, kept: &[&[u8]]) -> Option<Vec<u8>> {
    use ferrolog_model::batch::{CRC_START, HEADER_BYTES, LOG_OVERHEAD_BYTES};
    let body: usize = kept.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + body);
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    if kept.is_empty() {
        // An empty batch carries no codec, as Kafka writes it (clients
        // refuse a compressed section that decodes to nothing).
        let attributes = h.attributes & !ATTR_CODEC_MASK;
        out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    } else if h.compression() == 0 {
        for r in kept {
            out.extend_from_slice(r);
        }
    } else {
        let plain: Vec<u8> = kept.concat();
        let mut encoded = bytes::BytesMut::with_capacity(body);
        crate::codec::encode(h.compression(), &plain, &mut encoded).ok()?;
        out.extend_from_slice(&encoded);
    }
    let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// Walks the batches of a sealed segment, CRC-checking each.
struct BatchCursor<'a> {
    reader: WindowReader<'a>,
    path: &'a Path,
    pos: u64,
    limit: u64,
}

impl<'a> BatchCursor<'a> {
    async fn next(&mut self) -> Result<Option<(BatchHeader, &[u8])>> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let pos = self.pos;
        let head = self.reader.get(pos, ferrolog_model::batch::HEADER_BYTES).await?;
        let h = BatchHeader::parse(head).map_err(|e| corrupt(self.path, pos, e))?;
        let size = h.total_bytes();
        let whole = self.reader.get(pos, size).await?;
        let h = BatchHeader::parse_verified(whole).map_err(|e| corrupt(self.path, pos, e))?;
        self.pos += size as u64;
        Ok(Some((h, whole)))
    }
}

impl Log {
    /// Runs one compaction pass over the sealed segments that end at or
    /// below `below` (the high watermark), if the log's compaction settings
    /// call for one (see the module doc). A failure leaves each segment
    /// either as it was or compacted, on disk and in memory; a crash leaves
    /// what `open` completes or rolls back.
    pub async fn compact(&self, below: Offset) -> Result<CompactionOutcome> {
        let config = self.config();
        let c = config.compaction;
        if !c.enabled {
            return Ok(CompactionOutcome::skipped("compaction is off"));
        }
        if self.compaction.running.replace(true) {
            return Ok(CompactionOutcome::skipped("a pass is running"));
        }
        let _running = Running(&self.compaction.running);
        let clean_next = match self.compaction.clean_next.get() {
            Some(o) => o,
            None => {
                let o = load_clean_point(&self.dir).await;
                self.compaction.clean_next.set(Some(o));
                o
            }
        };
        let now = self.ctx.clock.now_ms();
        let lag_limit = now.saturating_sub(i64::try_from(c.min_compaction_lag_ms).unwrap_or(i64::MAX));
        let candidates = self.compactable_prefix(below, lag_limit).await?;
        if candidates.is_empty() {
            return Ok(CompactionOutcome::skipped("no sealed segment is compactable yet"));
        }
        let total: u64 = candidates.iter().map(|s| s.size).sum();
        let dirty: Vec<&Candidate> = candidates.iter().filter(|s| s.end > clean_next).collect();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
        let tombstones_due = self
            .compaction
            .tombstone_due_ms
            .get()
            .is_some_and(|due| due <= now);
        let overdue = match dirty.first() {
            Some(first) => {
                let oldest = self.first_timestamp(first).await?;
                let max_lag = i64::try_from(c.max_compaction_lag_ms).unwrap_or(i64::MAX);
                oldest < now.saturating_sub(max_lag)
            }
            None => false,
        };
        let ratio_ppm = if total == 0 {
            0
        } else {
            (u128::from(dirty_bytes) * 1_000_000 / u128::from(total)) as u64
        };
        let ratio_met = dirty_bytes > 0 && ratio_ppm >= u64::from(c.min_cleanable_dirty_ppm);
        if !(ratio_met || overdue || tombstones_due) {
            return Ok(CompactionOutcome::skipped(
                "dirty ratio below min.cleanable.dirty.ratio",
            ));
        }

        let mut outcome = CompactionOutcome::default();
        let throttle = Throttle::new(c.io_bytes_per_sec);
        let (map, covered) = self
            .build_key_map(&candidates, c.map_key_bytes_max, &mut outcome, &throttle)
            .await?;
        if covered == 0 {
            warn!(log = %self.dir.display(), "the keys of the oldest segment exceed the compaction map bound; not compacting");
            return Ok(CompactionOutcome::skipped("keys exceed map_key_bytes_max"));
        }
        let delete_before = now.saturating_sub(i64::try_from(c.delete_retention_ms).unwrap_or(i64::MAX));
        let mut tombstone_due: Option<i64> = None;
        for cand in &candidates[..covered] {
            let rewritten = self
                .rewrite_segment(
                    cand,
                    &map,
                    delete_before,
                    &mut outcome,
                    &mut tombstone_due,
                    &throttle,
                )
                .await?;
            if let Some(r) = rewritten {
                outcome.bytes_before += cand.size;
                outcome.bytes_after += r.seg.size;
                if !self.swap_in(cand, r).await? {
                    return Ok(CompactionOutcome {
                        skipped: Some("the log changed under the pass"),
                        ..outcome
                    });
                }
                outcome.rewritten.push(cand.base);
            }
        }
        let end = candidates[covered - 1].end;
        self.step(CompactStep::SaveCleanPoint, &self.dir)?;
        write_small_file(
            &self.dir.join(CLEAN_POINT_FILE),
            format!("{CLEAN_POINT_MAGIC} {}\n", end.0).as_bytes(),
        )
        .await?;
        self.compaction.clean_next.set(Some(end));
        self.compaction.tombstone_due_ms.set(
            tombstone_due
                .map(|ts| ts.saturating_add(i64::try_from(c.delete_retention_ms).unwrap_or(i64::MAX))),
        );
        outcome.clean_next = end;
        info!(
            log = %self.dir.display(),
            segments = outcome.rewritten.len(),
            before = outcome.bytes_before,
            after = outcome.bytes_after,
            removed = outcome.records_removed,
            tombstones = outcome.tombstones_removed,
            "compacted"
        );
        Ok(outcome)
    }

    fn step(&self, step: CompactStep, path: &Path) -> Result<()> {
        self.ctx
            .faults
            .before_compact_step(step)
            .map_err(|e| StorageError::io("compaction step", path, e))
    }

    /// The sealed segments from the log start whose offsets all lie below
    /// `below` and whose newest record is at or before `lag_limit`; taken
    /// while no seal runs, so each one is at rest.
    async fn compactable_prefix(&self, below: Offset, lag_limit: i64) -> Result<Vec<Candidate>> {
        let _sealing = self
            .seal_permit
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let found: Vec<(Offset, FileHandle, Offset, Offset, u64, i64, i64)> = {
            let st = self.state.borrow();
            if st.closed {
                return Err(StorageError::Closed);
            }
            let segs: Vec<&Segment> = st.segments.values().collect();
            segs.windows(2)
                .take_while(|pair| pair[1].base <= below && pair[0].max_timestamp <= lag_limit)
                .map(|pair| {
                    let s = pair[0];
                    (
                        s.base,
                        s.handle(),
                        pair[1].base,
                        s.next_offset,
                        s.size,
                        s.max_timestamp,
                        s.created_ms,
                    )
                })
                .collect()
        };
        // The pass holds its candidates' files open until it ends (sealed
        // files are otherwise opened on read, within the shard's budget).
        let mut out = Vec::new();
        for (base, handle, end, next_offset, size, max_timestamp, created_ms) in found {
            let (id, path) = (handle.id, handle.path.clone());
            out.push(Candidate {
                base,
                end,
                next_offset,
                id,
                file: self.resolve(handle).await?,
                path,
                size,
                max_timestamp,
                created_ms,
            });
        }
        Ok(out)
    }

    /// The base timestamp of a segment's first batch (its oldest record, as
    /// producers send records in order).
    async fn first_timestamp(&self, cand: &Candidate) -> Result<i64> {
        if cand.size == 0 {
            return Ok(cand.max_timestamp);
        }
        let mut reader = WindowReader::new(&cand.file, &cand.path, BLOCK_BYTES as usize, cand.size);
        let head = reader.get(0, ferrolog_model::batch::HEADER_BYTES).await?;
        let h = BatchHeader::parse(head).map_err(|e| corrupt(&cand.path, 0, e))?;
        Ok(record_timestamp(&h, 0))
    }

    fn cursor<'a>(&self, cand: &'a Candidate) -> BatchCursor<'a> {
        let chunk = self.config().read_chunk_bytes.max(COMPACTION_IO_BYTES);
        BatchCursor {
            reader: WindowReader::new(&cand.file, &cand.path, chunk, cand.size),
            path: &cand.path,
            pos: 0,
            limit: cand.size,
        }
    }

    /// Maps each key to its latest offset over the oldest candidates whose
    /// keys fit in `max_key_bytes`; returns the map and how many fit.
    async fn build_key_map(
        &self,
        candidates: &[Candidate],
        max_key_bytes: usize,
        outcome: &mut CompactionOutcome,
        throttle: &Throttle,
    ) -> Result<(HashMap<Vec<u8>, Offset>, usize)> {
        let mut map: HashMap<Vec<u8>, Offset> = HashMap::new();
        let mut key_bytes = 0usize;
        for (i, cand) in candidates.iter().enumerate() {
            let mut seg_keys: Vec<(Vec<u8>, Offset)> = Vec::new();
            let mut cursor = self.cursor(cand);
            while let Some((h, batch)) = cursor.next().await? {
                if let Some(section) = compactable(&h).then(|| plain_section(batch, &h)).flatten() {
                    if let Some(records) = raw_records(&section, &h) {
                        for r in records {
                            if let Some(k) = r.key {
                                seg_keys.push((k.to_vec(), r.offset));
                            }
                        }
                    }
                }
                throttle.charge(h.total_bytes() as u64).await;
                glommio::yield_if_needed().await;
            }
            outcome.bytes_read += cand.size;
            let added: usize = seg_keys
                .iter()
                .filter(|(k, _)| !map.contains_key(k))
                .map(|(k, _)| k.len())
                .sum();
            if key_bytes + added > max_key_bytes {
                return Ok((map, i));
            }
            key_bytes += added;
            for (k, o) in seg_keys {
                map.insert(k, o);
            }
        }
        Ok((map, candidates.len()))
    }

    /// Writes the compacted copy of `cand` to `<path>.cleaned` and syncs it;
    /// `None` when compaction would not change the segment.
    async fn rewrite_segment(
        &self,
        cand: &Candidate,
        map: &HashMap<Vec<u8>, Offset>,
        delete_before: i64,
        outcome: &mut CompactionOutcome,
        tombstone_due: &mut Option<i64>,
        throttle: &Throttle,
    ) -> Result<Option<Rewritten>> {
        let cleaned = suffixed(&cand.path, CLEANED_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&cleaned)
            .await
            .map_err(gio("create", &cleaned))?;
        // Named after the segment it replaces: that is its name once swapped.
        let mut seg = Segment::empty(cand.base, cand.path.clone(), file, cand.created_ms);
        let result = self
            .write_compacted(
                cand,
                map,
                delete_before,
                Sinks {
                    outcome,
                    tombstone_due,
                    throttle,
                },
                &mut seg,
                &cleaned,
            )
            .await;
        match result {
            Ok(true) => Ok(Some(Rewritten { cleaned, seg })),
            Ok(false) => {
                if let Some(file) = seg.file.take() {
                    file.close_rc().await.map_err(gio("close", &cleaned))?;
                }
                remove_if_exists(&cleaned).await?;
                Ok(None)
            }
            Err(e) => {
                if let Some(file) = seg.file.take() {
                    let _ = file.close_rc().await;
                }
                let _ = remove_if_exists(&cleaned).await;
                Err(e)
            }
        }
    }

    async fn write_compacted(
        &self,
        cand: &Candidate,
        map: &HashMap<Vec<u8>, Offset>,
        delete_before: i64,
        sinks: Sinks<'_>,
        seg: &mut Segment,
        cleaned: &Path,
    ) -> Result<bool> {
        let config = self.config();
        let chunk = config.write_chunk_bytes.min(COMPACTION_IO_BYTES);
        let interval = u64::from(config.index_interval_bytes);
        let Sinks {
            outcome,
            tombstone_due,
            throttle,
        } = sinks;
        let file = seg.open_file().clone();
        let mut changed = false;
        let mut out: Vec<u8> = Vec::new();
        let mut written: u64 = 0;
        let mut cursor = self.cursor(cand);
        let mut next = cand.base;
        while let Some((h, batch)) = cursor.next().await? {
            assert_eq!(h.base_offset, next, "sealed segment offsets are contiguous");
            next = h.last_offset().plus(1);
            let mut replacement = None;
            let section = compactable(&h).then(|| plain_section(batch, &h)).flatten();
            if let Some(section) = &section {
                if let Some(records) = raw_records(section, &h) {
                    let mut kept: Vec<&[u8]> = Vec::with_capacity(records.len());
                    for r in &records {
                        let keep = match r.key.and_then(|k| map.get(k)) {
                            None => true,
                            Some(&latest) if latest > r.offset => false,
                            Some(_) if r.tombstone && r.timestamp < delete_before => {
                                outcome.tombstones_removed += 1;
                                false
                            }
                            Some(_) => {
                                if r.tombstone {
                                    *tombstone_due =
                                        Some(tombstone_due.map_or(r.timestamp, |t| t.min(r.timestamp)));
                                }
                                true
                            }
                        };
                        if keep {
                            kept.push(r.bytes);
                        } else {
                            outcome.records_removed += 1;
                        }
                    }
                    if kept.len() < records.len() {
                        replacement = rebuild_batch(batch, &h, &kept);
                    }
                }
            }
            let bytes: &[u8] = match &replacement {
                Some(b) => {
                    changed = true;
                    b
                }
                None => batch,
            };
            let h_out = BatchHeader::parse_verified(bytes).expect("a rebuilt batch is valid");
            let position = written + out.len() as u64;
            seg.index_batch(&h_out, position, bytes.len() as u64, interval);
            out.extend_from_slice(bytes);
            throttle.charge(h.total_bytes() as u64).await;
            if out.len() >= chunk {
                let n = align_down(out.len() as u64) as usize;
                throttle.charge(n as u64).await;
                write_aligned(&file, cleaned, written, &out[..n]).await?;
                out.drain(..n);
                written += n as u64;
            }
            glommio::yield_if_needed().await;
        }
        outcome.bytes_read += cand.size;
        assert_eq!(
            next, cand.next_offset,
            "rewritten segment ends where the old one did"
        );
        if !changed {
            return Ok(false);
        }
        let size = written + out.len() as u64;
        if !out.is_empty() {
            let padded = align_up(out.len() as u64) as usize;
            out.resize(padded, 0);
            write_aligned(&file, cleaned, written, &out).await?;
        }
        file.truncate(size).await.map_err(gio("truncate", cleaned))?;
        self.step(CompactStep::SyncCleaned, cleaned)?;
        sync_file(&self.ctx.faults, &file, cleaned).await?;
        seg.size = size;
        seg.next_offset = next;
        Ok(true)
    }

    /// Puts a rewritten segment in place of `cand` (see the module doc for
    /// the order of steps). Returns false, changing nothing, if the segment
    /// is no longer the one the pass read (retention or truncation came in
    /// between).
    async fn swap_in(&self, cand: &Candidate, r: Rewritten) -> Result<bool> {
        let _sealing = self
            .seal_permit
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let current = {
            let st = self.state.borrow();
            !st.closed
                && st.active().base != cand.base
                && st.segments.get(&cand.base).is_some_and(|s| s.id == cand.id)
        };
        if !current {
            if let Some(file) = r.seg.file {
                let _ = file.close_rc().await;
            }
            remove_if_exists(&r.cleaned).await?;
            return Ok(false);
        }
        let swap = suffixed(&cand.path, SWAP_SUFFIX);
        self.step(CompactStep::RenameToSwap, &swap)?;
        rename(&r.cleaned, &swap).await?;
        sync_dir(&self.dir).await?;
        self.step(CompactStep::RemoveOldIndexes, &cand.path)?;
        remove_index_files(&cand.path).await?;
        self.step(CompactStep::RenameOverLog, &cand.path)?;
        rename(&swap, &cand.path).await?;
        sync_dir(&self.dir).await?;

        let mut seg = r.seg;
        seg.durable = DurablePoint {
            size: seg.size,
            max_timestamp: seg.max_timestamp,
            bytes_since_index: seg.bytes_since_index,
            tail: Vec::new(),
        };
        let (index, time_index) = (seg.index.clone(), seg.time_index.clone());
        {
            // The new file stays open among the shard's sealed files, where
            // the old one's place is given up.
            self.ctx.forget_files([cand.id]);
            if let Some(file) = seg.file.take() {
                self.ctx.files.borrow_mut().insert(seg.id, file);
            }
            let mut st = self.state.borrow_mut();
            st.segments.insert(cand.base, seg);
            // Cached batches of this range hold the records just removed.
            self.ctx.cache.borrow_mut().remove_below(self.id, cand.end);
        }
        self.step(CompactStep::WriteIndexes, &cand.path)?;
        write_small_file(&index_path(&cand.path), &index.encode()).await?;
        write_small_file(&time_index_path(&cand.path), &time_index.encode()).await?;
        Ok(true)
    }
}

async fn write_aligned(file: &DmaFile, path: &Path, pos: u64, data: &[u8]) -> Result<()> {
    debug_assert_eq!(data.len() as u64 % BLOCK_BYTES, 0);
    let mut buf = file.alloc_dma_buffer(data.len());
    buf.as_bytes_mut().copy_from_slice(data);
    let n = file.write_at(buf, pos).await.map_err(gio("write", path))?;
    if n != data.len() {
        let e = std::io::Error::other(format!("short write: {n} of {} bytes at {pos}", data.len()));
        return Err(StorageError::io("write", path, e));
    }
    Ok(())
}

async fn rename(from: &Path, to: &Path) -> Result<()> {
    let (f, t) = (from.to_path_buf(), to.to_path_buf());
    off_reactor(move || std::fs::rename(f, t))
        .await
        .map_err(|e| StorageError::io("rename", from, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::batch::BatchBuilder;
    use ferrolog_model::TimestampMs;

    #[test]
    fn rebuilt_batch_keeps_offsets_and_passes_the_crc_check() {
        let b = BatchBuilder::new(TimestampMs(1000))
            .producer(7, 1, 40)
            .record(TimestampMs(1000), Some(b"a"), b"1")
            .record_or_tombstone(TimestampMs(1001), Some(b"b"), None)
            .record(TimestampMs(1002), Some(b"a"), b"2")
            .build();
        let h = BatchHeader::parse_verified(&b).expect("valid");
        let section = plain_section(&b, &h).expect("plain");
        let records = raw_records(&section, &h).expect("parses");
        assert_eq!(records.len(), 3);
        assert!(records[1].tombstone);
        assert_eq!(records[2].offset, Offset(2));
        assert_eq!(records[1].timestamp, 1001);
        let kept = [records[1].bytes, records[2].bytes];
        let out = rebuild_batch(&b, &h, &kept).expect("rebuilt");
        let h2 = BatchHeader::parse_verified(&out).expect("rebuilt batch verifies");
        assert_eq!(h2.record_count, 2);
        assert_eq!(h2.last_offset_delta, h.last_offset_delta);
        assert_eq!((h2.producer_id, h2.producer_epoch, h2.base_sequence), (7, 1, 40));
        let views = ferrolog_model::batch::records(&out).expect("records parse");
        assert_eq!(views[0].offset, Offset(1));
        assert_eq!(views[1].offset, Offset(2));
        assert_eq!(views[1].value, Some(&b"2"[..]));
        let empty = rebuild_batch(&b, &h, &[]).expect("rebuilt");
        let h3 = BatchHeader::parse_verified(&empty).expect("an empty batch verifies");
        assert_eq!((h3.record_count, h3.last_offset()), (0, h.last_offset()));
    }

    #[test]
    fn malformed_records_are_not_decoded() {
        let mut b = BatchBuilder::new(TimestampMs(0))
            .record(TimestampMs(0), Some(b"k"), b"v")
            .build();
        let h = BatchHeader::parse(&b).expect("header");
        // A record length past the batch end.
        b[ferrolog_model::batch::HEADER_BYTES] = 0x7e;
        assert!(raw_records(&plain_section(&b, &h).expect("plain"), &h).is_none());
        // A record count larger than the records present.
        let mut h2 = h;
        h2.record_count = 2;
        let b = BatchBuilder::new(TimestampMs(0))
            .record(TimestampMs(0), Some(b"k"), b"v")
            .build();
        assert!(raw_records(&plain_section(&b, &h2).expect("plain"), &h2).is_none());
    }

    /// `batch` with its records section encoded with `codec` (attributes,
    /// length and CRC set to match), as a producer or a topic's
    /// compression.type stores it; `log_append_time` also stamps it.
    fn stored_as(batch: &[u8], codec: i16, log_append_time: Option<i64>) -> Vec<u8> {
        use ferrolog_model::batch::{CRC_START, HEADER_BYTES};
        let mut encoded = bytes::BytesMut::new();
        crate::codec::encode(codec, &batch[HEADER_BYTES..], &mut encoded).expect("encode");
        let mut out = batch[..HEADER_BYTES].to_vec();
        out.extend_from_slice(&encoded);
        let length = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        let mut attributes = i16::from_be_bytes([out[21], out[22]]) | codec;
        if let Some(t) = log_append_time {
            attributes |= ATTR_LOG_APPEND_TIME;
            out[35..43].copy_from_slice(&t.to_be_bytes());
        }
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn compressed_batches_are_compacted_with_their_own_codec() {
        let b = BatchBuilder::new(TimestampMs(1000))
            .producer(7, 1, 40)
            .record(TimestampMs(1000), Some(b"a"), b"1")
            .record(TimestampMs(1001), Some(b"b"), b"x")
            .record(TimestampMs(1002), Some(b"a"), b"2")
            .build();
        for codec in 1..=4 {
            let stored = stored_as(&b, codec, None);
            let h = BatchHeader::parse_verified(&stored).expect("valid");
            assert!(compactable(&h), "codec {codec}");
            let section = plain_section(&stored, &h).expect("decodes");
            let records = raw_records(&section, &h).expect("parses");
            assert_eq!(records.len(), 3, "codec {codec}");
            let out = rebuild_batch(&stored, &h, &[records[1].bytes, records[2].bytes]).expect("rebuilt");
            let h2 = BatchHeader::parse_verified(&out).expect("rebuilt batch verifies");
            assert_eq!(h2.compression(), codec, "the batch keeps its codec");
            assert_eq!((h2.record_count, h2.last_offset()), (2, h.last_offset()));
            let plain = plain_section(&out, &h2).expect("decodes");
            let kept = raw_records(&plain, &h2).expect("parses");
            assert_eq!(
                kept.iter().map(|r| (r.offset, r.key)).collect::<Vec<_>>(),
                vec![(Offset(1), Some(&b"b"[..])), (Offset(2), Some(&b"a"[..]))],
                "codec {codec}"
            );
            let empty = rebuild_batch(&stored, &h, &[]).expect("rebuilt");
            let h3 = BatchHeader::parse_verified(&empty).expect("an empty batch verifies");
            assert_eq!(
                (h3.compression(), h3.record_count),
                (0, 0),
                "an empty batch is uncompressed"
            );
            assert_eq!(h3.last_offset(), h.last_offset());
        }
        // A section that does not decode is not compacted.
        let mut garbage = stored_as(&b, 4, None);
        let last = garbage.len() - 1;
        garbage[last] ^= 0xff;
        garbage[ferrolog_model::batch::HEADER_BYTES + 2] ^= 0xff;
        let h = BatchHeader::parse(&garbage).expect("header");
        assert!(plain_section(&garbage, &h).is_none_or(|s| raw_records(&s, &h).is_none()));
    }

    #[test]
    fn log_append_time_records_carry_the_append_time() {
        let b = BatchBuilder::new(TimestampMs(1000))
            .record(TimestampMs(1000), Some(b"a"), b"1")
            .record_or_tombstone(TimestampMs(1005), Some(b"a"), None)
            .build();
        let stamped = stored_as(&b, 3, Some(9_000));
        let h = BatchHeader::parse_verified(&stamped).expect("valid");
        let section = plain_section(&stamped, &h).expect("decodes");
        let records = raw_records(&section, &h).expect("parses");
        assert_eq!(
            records.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            vec![9_000, 9_000],
            "LogAppendTime: every record has the batch's max timestamp"
        );
        let h_create = BatchHeader::parse_verified(&b).expect("valid");
        let plain = plain_section(&b, &h_create).expect("plain");
        let create = raw_records(&plain, &h_create).expect("parses");
        assert_eq!(
            create.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            vec![1000, 1005]
        );
    }
}
