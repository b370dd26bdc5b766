//! One partition's log: append, flush, read, recover, retain, truncate.
//!
//! Contract (after Redpanda's appender): `append` is logical — it validates the
//! batch, assigns offsets and queues the bytes — and its future resolves only
//! once the log's durability level covers the batch. Flushing is serialized by
//! one permit: the task holding it writes *everything* queued so far, so
//! appends that arrive while a write or fdatasync is in flight share the next
//! one (group commit). Offsets obey `dirty >= written >= durable`, asserted
//! on every update.
//!
//! Concurrency: a `Log` lives on one shard (glommio executor) and is used
//! through `Rc`. State sits in a `RefCell` whose borrows never span an await.

use crate::cache::{BatchCache, LogId};
use crate::config::{Durability, LogConfig};
use crate::env::{Clock, Faults, SystemClock};
use crate::error::{Result, StorageError};
use crate::index::{OffsetIndex, TimeIndex};
use crate::segment::{
    align_down, align_up, index_path, log_file_name, parse_log_file_name, scan, time_index_path,
    DurablePoint, FileHandle, SealedFiles, Segment, WindowReader, BLOCK_BYTES,
};
use bytes::Bytes;
use ferrolog_model::batch::{first_offset_at_or_after, set_base_offset, set_leader_epoch, REWRITTEN_PREFIX};
use ferrolog_model::{BatchHeader, Epoch, Offset, TimestampMs};
use futures_lite::StreamExt;
use glommio::io::{Directory, DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tracing::{info, warn};

mod compact;
pub use compact::CompactionOutcome;

/// The least zeros a small extending flush writes ahead (see `write_plan`).
const PREZERO_MIN_BYTES: u64 = 16 << 10;

/// Sealed segment files a shard keeps open until told otherwise
/// ([`LogContext::set_sealed_files_max`]).
pub const SEALED_FILES_DEFAULT: usize = 1024;

/// What every log of one shard shares: the batch cache, the open sealed
/// segment files, and the seams.
pub struct LogContext {
    pub clock: Rc<dyn Clock>,
    pub faults: Rc<Faults>,
    pub cache: Rc<RefCell<BatchCache>>,
    /// Sealed segments' files, opened on first read and closed least
    /// recently used first: a log keeps only its active segment's file open.
    files: RefCell<SealedFiles>,
    next_log_id: Cell<LogId>,
}

/// The state of a shard's sealed segment files (see [`LogContext`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealedFilesStats {
    pub open: usize,
    pub max: usize,
    /// Opened and closed since start.
    pub opened: u64,
    pub closed: u64,
}

impl LogContext {
    pub fn new(cache_bytes: usize) -> Rc<LogContext> {
        Self::with_clock(cache_bytes, Rc::new(SystemClock))
    }

    pub fn with_clock(cache_bytes: usize, clock: Rc<dyn Clock>) -> Rc<LogContext> {
        Rc::new(LogContext {
            clock,
            faults: Rc::new(Faults::default()),
            cache: Rc::new(RefCell::new(BatchCache::new(cache_bytes))),
            files: RefCell::new(SealedFiles::new(SEALED_FILES_DEFAULT)),
            next_log_id: Cell::new(0),
        })
    }

    /// Bounds the sealed segment files this shard keeps open (closing the
    /// least recently used ones now if more are open).
    pub fn set_sealed_files_max(&self, max: usize) {
        self.files.borrow_mut().set_max(max);
    }

    pub fn sealed_files(&self) -> SealedFilesStats {
        let f = self.files.borrow();
        SealedFilesStats {
            open: f.len(),
            max: f.max(),
            opened: f.opened,
            closed: f.closed,
        }
    }

    /// Closes the kept files of these segments (deleted, replaced, or their
    /// log closed).
    fn forget_files(&self, ids: impl IntoIterator<Item = u64>) {
        if let Ok(mut f) = self.files.try_borrow_mut() {
            for id in ids {
                f.remove(id);
            }
        }
    }

    fn new_log_id(&self) -> LogId {
        let id = self.next_log_id.get();
        self.next_log_id.set(id + 1);
        id
    }
}

/// Offsets of a log; `*_next` are exclusive ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOffsets {
    /// First offset still in the log.
    pub start: Offset,
    /// Next offset to assign: everything appended.
    pub dirty_next: Offset,
    /// Everything whose O_DIRECT write completed.
    pub written_next: Offset,
    /// Everything durable on this disk per the log's mode; reads stop here.
    /// Not "committed": that word belongs to replication (durable on a
    /// majority of the replicas), which the partition layer tracks as its
    /// high watermark.
    pub durable_next: Offset,
}

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// A read: whole batches from the one containing `offset`.
#[derive(Clone, Copy, Debug)]
pub struct ReadRequest {
    pub offset: Offset,
    /// Stop adding batches past this many bytes (the first batch always comes).
    pub max_bytes: usize,
    /// Exclusive upper bound; `None` means the durable end.
    pub end: Option<Offset>,
}

#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub batches: Vec<Bytes>,
    /// True if the batches came from the batch cache, not the disk.
    pub from_cache: bool,
}

impl ReadOutcome {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }
}

/// What retention removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: Vec<Offset>,
    pub start: Offset,
}

/// What `open` found and repaired.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub truncated: Vec<Truncation>,
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Damage found in sealed segments; reads that reach it get `Corrupt`.
    pub corrupt: Vec<(PathBuf, u64, String)>,
}

#[derive(Clone, Debug)]
pub struct Truncation {
    pub path: PathBuf,
    pub position: u64,
    pub bytes: u64,
    pub reason: String,
}

/// An appended batch waiting to be written: the producer's bytes, never
/// copied, and the rewritten prefix (base offset, leader epoch) that replaces
/// their first `REWRITTEN_PREFIX` bytes on disk.
struct Pending {
    prefix: [u8; REWRITTEN_PREFIX],
    original: Bytes,
}

impl Pending {
    fn len(&self) -> usize {
        self.original.len()
    }
}

struct LogState {
    segments: BTreeMap<Offset, Segment>,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    dirty_next: Offset,
    written_next: Offset,
    durable_next: Offset,
    /// Bumped whenever appended-but-not-durable batches are discarded, so
    /// their waiters learn that their batch is gone.
    generation: u64,
    last_flush_error: String,
    /// Set while a roll is in progress: new appends wait for the new segment.
    rolling: bool,
    closed: bool,
    /// The log start DeleteRecords set (`start_offset`), or 0.
    start_floor: Offset,
}

impl LogState {
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    fn start(&self) -> Offset {
        let first = self
            .segments
            .values()
            .next()
            .expect("a log always has a segment")
            .base;
        first.max(self.start_floor)
    }

    fn check_invariants(&self) {
        assert!(
            self.dirty_next >= self.written_next && self.written_next >= self.durable_next,
            "offset invariant broken: dirty {} written {} durable {}",
            self.dirty_next,
            self.written_next,
            self.durable_next
        );
    }
}

pub struct Log {
    dir: PathBuf,
    /// Replaced whole by `set_config`; readers take a snapshot.
    config: RefCell<Rc<LogConfig>>,
    ctx: Rc<LogContext>,
    id: LogId,
    /// No segment file exists yet, and maybe no directory: the log was
    /// opened where none was and nothing has been written since. The
    /// active segment is in memory only (empty, no file); the first flush
    /// creates both (`give_birth`).
    unborn: Cell<bool>,
    flush_permit: Semaphore,
    /// Held by the task that seals the last rolled segment (sync, trim,
    /// indexes) in the background; taken by whatever must see sealed
    /// segments at rest (a roll, retention, truncation, close). Always taken
    /// after `flush_permit`.
    seal_permit: Rc<Semaphore>,
    /// `direct` mode: bytes written to the active segment since its last
    /// background fdatasync began (`LogConfig::direct_sync_bytes`).
    unsynced: Cell<u64>,
    /// Whether a background fdatasync is running.
    background_syncing: Rc<Cell<bool>>,
    state: RefCell<LogState>,
    /// Told the first offset whenever appended batches are discarded.
    discard_listener: RefCell<Option<DiscardListener>>,
    flush_observer: RefCell<Option<FlushObserver>>,
    /// Compaction's own state (`compact.rs`).
    compaction: compact::CompactionState,
}

/// See `Log::set_flush_observer`.
type FlushObserver = Rc<dyn Fn(&FlushDone)>;

/// What one successful flush did, for whoever keeps metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushDone {
    /// Batch bytes it made durable (per the log's durability mode).
    pub bytes: usize,
    /// Batches it carried: more than one is group commit at work.
    pub batches: usize,
    /// From taking the queued batches to the write (and fdatasync) done.
    pub elapsed: std::time::Duration,
}

/// See `Log::set_discard_listener`.
type DiscardListener = Rc<dyn Fn(Offset)>;

fn gio<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(glommio::GlommioError<()>) -> StorageError + 'a {
    move |e| StorageError::io(op, path, crate::error::glommio_io(e))
}

async fn open_rw(path: &Path, create_new: bool) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .dma_open(path)
        .await
        .map_err(gio("open", path))
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let d = Directory::open(dir).await.map_err(gio("open dir", dir))?;
    d.sync().await.map_err(gio("sync dir", dir))?;
    d.close().await.map_err(gio("close dir", dir))
}

async fn sync_file(faults: &Faults, file: &DmaFile, path: &Path) -> Result<()> {
    faults
        .before_sync()
        .map_err(|e| StorageError::io("fdatasync", path, e))?;
    file.fdatasync().await.map_err(gio("fdatasync", path))
}

/// A segment just rolled away from, to be sealed.
struct Sealed {
    file: Rc<DmaFile>,
    path: PathBuf,
    index: OffsetIndex,
    time_index: TimeIndex,
    size: u64,
}

impl Sealed {
    /// Syncs the segment (always: in `fsync` mode it is already durable and
    /// this is cheap; in `direct` mode, or after a durability change, it is
    /// not), drops the block padding so the file is exactly its batches, and
    /// writes its indexes.
    async fn seal(&self, faults: &Faults) -> Result<()> {
        sync_file(faults, &self.file, &self.path).await?;
        self.file
            .truncate(self.size)
            .await
            .map_err(gio("truncate", &self.path))?;
        write_small_file(&index_path(&self.path), &self.index.encode()).await?;
        write_small_file(&time_index_path(&self.path), &self.time_index.encode()).await
    }
}

/// Writes a small file (an index) whole, padded to the block size.
/// Writes a small file (an index) whole: to `<path>.<n>.tmp`, then renamed
/// over `path`, so a process killed in the middle leaves the old file or the
/// new one, never a torn or empty one. `n` is unique per write: two writes
/// of the same index can overlap (a seal and a close), and the later rename
/// wins, as the later write did before. Not synced: an index that a power
/// loss tears is checked and rebuilt at open.
async fn write_small_file(path: &Path, data: &[u8]) -> Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{n}.tmp"));
    let tmp = PathBuf::from(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(gio("create", &tmp))?;
    let len = align_up(data.len() as u64).max(BLOCK_BYTES) as usize;
    let mut buf = file.alloc_dma_buffer(len);
    let dst = buf.as_bytes_mut();
    dst[..data.len()].copy_from_slice(data);
    dst[data.len()..].fill(0);
    let n = file.write_at(buf, 0).await.map_err(gio("write", &tmp))?;
    if n != len {
        return Err(StorageError::io(
            "write",
            &tmp,
            std::io::Error::other("short write"),
        ));
    }
    file.close().await.map_err(gio("close", &tmp))?;
    let (from, to) = (tmp.clone(), path.to_path_buf());
    off_reactor(move || std::fs::rename(from, to))
        .await
        .map_err(|e| StorageError::io("rename", &tmp, e))
}

/// Runs a blocking file system call (listing a directory, reading a small
/// file, unlinking) on the executor's blocking thread pool: such calls can
/// wait on the file system's journal, and the reactor must not.
pub(crate) async fn off_reactor<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// Unlinks `path` off the reactor.
async fn remove_if_exists(path: &Path) -> Result<()> {
    let owned = path.to_path_buf();
    let removed = off_reactor(move || std::fs::remove_file(owned)).await;
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

/// Removes a segment's index files (whichever exist).
async fn remove_index_files(log_path: &Path) -> Result<()> {
    remove_if_exists(&index_path(log_path)).await?;
    remove_if_exists(&time_index_path(log_path)).await
}

/// Removes a segment: its log file and its index files.
async fn remove_segment_files(log_path: &Path) -> Result<()> {
    remove_if_exists(log_path).await?;
    remove_index_files(log_path).await
}

/// Copies `dst.len()` bytes of the concatenation of `parts`, starting at
/// `from`, into `dst`; bytes past the end of `parts` become zero.
fn fill_from_parts(dst: &mut [u8], from: usize, parts: &[&[u8]], part_starts: &[usize]) {
    let mut written = 0;
    let mut i = part_starts.partition_point(|&s| s <= from).saturating_sub(1);
    let mut at = from;
    while written < dst.len() && i < parts.len() {
        let part = parts[i];
        let off = at - part_starts[i];
        if off >= part.len() {
            i += 1;
            continue;
        }
        let n = (part.len() - off).min(dst.len() - written);
        dst[written..written + n].copy_from_slice(&part[off..off + n]);
        written += n;
        at += n;
    }
    dst[written..].fill(0);
}

/// Settings outside these bounds are a programmer error (profiles and topic
/// configs are validated before they get here).
fn check_config(config: &LogConfig) {
    assert!(
        config.segment_bytes <= i32::MAX as u64 && config.segment_bytes >= BLOCK_BYTES,
        "segment_bytes {} outside [4096, 2^31)",
        config.segment_bytes
    );
    assert!(config.write_chunk_bytes as u64 % BLOCK_BYTES == 0 && config.write_chunk_bytes > 0);
    assert!(config.write_depth > 0 && config.read_chunk_bytes > 0);
    assert!(
        config.prezero_bytes as u64 % BLOCK_BYTES == 0,
        "prezero_bytes {} is not a multiple of 4096",
        config.prezero_bytes
    );
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it: indexes are
    /// validated and rebuilt where missing or inconsistent, the active segment
    /// is scanned from its last index entry and a torn or corrupt tail is
    /// truncated.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        ctx: Rc<LogContext>,
    ) -> Result<(Rc<Log>, RecoveryReport)> {
        let dir = dir.into();
        check_config(&config);
        let mut report = RecoveryReport::default();
        // Everything blocking that open needs, in one trip to the blocking
        // pool: with thousands of partitions opening at once, each trip is a
        // wait in the pool's one queue.
        let listed = dir.clone();
        let found = off_reactor(move || -> Result<(u64, PathBuf, Vec<Offset>, Option<Offset>)> {
            // A log without its directory (a new partition) stays unborn:
            // nothing is created until its first write (`Log::give_birth`),
            // so creating thousands of partitions costs no file system work.
            if !listed.is_dir() {
                let parent = listed.parent().unwrap_or(Path::new(".")).to_path_buf();
                let dev = crate::probe::create_dir_and_device(&parent)?;
                return Ok((dev, parent, Vec::new(), None));
            }
            let dev = crate::probe::create_dir_and_device(&listed)?;
            compact::finish_interrupted_swaps(&listed)?;
            let mut bases = Vec::new();
            let entries = std::fs::read_dir(&listed).map_err(|e| StorageError::io("list", &listed, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io("list", &listed, e))?;
                if let Some(base) = entry.file_name().to_str().and_then(parse_log_file_name) {
                    bases.push(base);
                }
            }
            bases.sort();
            let floor = crate::start_offset::load(&listed)?;
            Ok((dev, listed, bases, floor))
        })
        .await?;
        let (dev, probe_dir, bases, floor) = found;
        crate::probe::probe_device(&probe_dir, dev).await?;

        let now = ctx.clock.now_ms();
        let mut segments = BTreeMap::new();
        let unborn = bases.is_empty();
        if unborn {
            let path = dir.join(log_file_name(Offset(0)));
            segments.insert(Offset(0), Segment::unborn(Offset(0), path, now));
        }
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let last = i + 1 == count;
            let seg = recover_segment(&dir, base, last, &config, now, &mut report).await?;
            segments.insert(base, seg);
        }
        report.segments = segments.len();

        let next = segments
            .values()
            .next_back()
            .map(|s| s.next_offset)
            .unwrap_or(Offset(0));
        // A floor past the recovered end (the tail was lost) is the end.
        let start_floor = floor.map_or(Offset(0), |f| f.min(next));
        let id = ctx.new_log_id();
        let log = Rc::new(Log {
            dir,
            config: RefCell::new(Rc::new(config)),
            ctx,
            id,
            unborn: Cell::new(unborn),
            flush_permit: Semaphore::new(1),
            seal_permit: Rc::new(Semaphore::new(1)),
            unsynced: Cell::new(0),
            background_syncing: Rc::new(Cell::new(false)),
            discard_listener: RefCell::new(None),
            flush_observer: RefCell::new(None),
            compaction: compact::CompactionState::default(),
            state: RefCell::new(LogState {
                segments,
                pending: VecDeque::new(),
                pending_bytes: 0,
                dirty_next: next,
                written_next: next,
                durable_next: next,
                generation: 0,
                last_flush_error: String::new(),
                rolling: false,
                closed: false,
                start_floor,
            }),
        });
        Ok((log, report))
    }

    /// Whether nothing was ever written to this log here: it has no
    /// segment file, and its directory may not exist (see `Log::open`).
    pub fn is_unborn(&self) -> bool {
        self.unborn.get()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the current settings.
    pub fn config(&self) -> Rc<LogConfig> {
        self.config.borrow().clone()
    }

    /// Replaces the settings (a topic config change). Retention, roll,
    /// durability and batch limits apply from the next append, flush or
    /// retention pass; a flush already running finishes under the old ones.
    pub fn set_config(&self, config: LogConfig) {
        check_config(&config);
        *self.config.borrow_mut() = Rc::new(config);
    }

    pub fn offsets(&self) -> LogOffsets {
        let st = self.state.borrow();
        LogOffsets {
            start: st.start(),
            dirty_next: st.dirty_next,
            written_next: st.written_next,
            durable_next: st.durable_next,
        }
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.state.borrow().segments.keys().copied().collect()
    }

    /// Total logical bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.values().map(|s| s.size).sum()
    }

    /// Appends one RecordBatch v2, keeping the producer's bytes and rewriting
    /// only the base offset. Resolves once the batch is durable per the log's
    /// durability mode. A rejected batch leaves the log unchanged.
    pub async fn append(&self, batch: Bytes) -> Result<Appended> {
        self.append_with_epoch(batch, None).await
    }

    /// Like `append`, also stamping the partition leader epoch.
    pub async fn append_with_epoch(&self, batch: Bytes, leader_epoch: Option<Epoch>) -> Result<Appended> {
        let appended = self.append_guarded(batch, leader_epoch, |_| true).await?;
        Ok(appended.expect("an append whose guard always agrees is never refused"))
    }

    /// Like `append_with_epoch`, but `guard` decides whether the batch goes
    /// in, told where it would land. It runs in the same section without
    /// awaits that assigns the offsets (after back-pressure and rolling), so
    /// no other append can come between its decision and the batch taking
    /// those offsets: state it keeps about appended batches (an idempotent
    /// producer's sequence numbers) cannot race with the log. A refusal
    /// returns `Ok(None)` and leaves the log unchanged. `guard` must not call
    /// into this log. If the batch is later discarded by a failed flush, the
    /// discard listener hears of it (`set_discard_listener`).
    pub async fn append_guarded(
        &self,
        batch: Bytes,
        leader_epoch: Option<Epoch>,
        guard: impl FnOnce(Appended) -> bool,
    ) -> Result<Option<Appended>> {
        let Some((appended, generation)) = self.queue_guarded(batch, leader_epoch, guard).await? else {
            return Ok(None);
        };
        self.wait_durable(appended.last_offset.plus(1), generation)
            .await?;
        Ok(Some(appended))
    }

    /// Like `append_guarded`, but returns once the batch is in the log (its
    /// offsets taken, readable from the cache) without waiting for its
    /// write: the caller makes it durable with [`Log::flush`], or a later
    /// append's wait carries it. A follower queues a leader's request this
    /// way and answers as its writes complete, so that the batches of
    /// requests arriving meanwhile share one write. If the write fails, the
    /// batch is discarded like any other (the discard listener hears of it)
    /// and `dirty_next` falls back.
    pub async fn append_queued(
        &self,
        batch: Bytes,
        leader_epoch: Option<Epoch>,
        guard: impl FnOnce(Appended) -> bool,
    ) -> Result<Option<Appended>> {
        Ok(self
            .queue_guarded(batch, leader_epoch, guard)
            .await?
            .map(|(appended, _)| appended))
    }

    /// The append section shared by `append_guarded` and `append_queued`:
    /// back-pressure, rolling, the guard and the offsets, without waiting for
    /// the write. Returns the batch's place and the log's generation then.
    async fn queue_guarded(
        &self,
        batch: Bytes,
        leader_epoch: Option<Epoch>,
        guard: impl FnOnce(Appended) -> bool,
    ) -> Result<Option<(Appended, u64)>> {
        if batch.len() > self.config().max_batch_bytes {
            return Err(StorageError::BatchTooLarge {
                size: batch.len(),
                max: self.config().max_batch_bytes,
            });
        }
        let header = BatchHeader::parse_verified(&batch)?;
        let len = batch.len();

        // Back-pressure: bound the bytes queued but not yet written.
        while self.pending_over_bound(len) {
            self.flush().await?;
        }
        while self.needs_roll(len as u64)? {
            self.roll(len as u64).await?;
        }

        // From here to the wait nothing awaits: the guard's decision and the
        // append are atomic.
        let base = self.state.borrow().dirty_next;
        let proposed = Appended {
            base_offset: base,
            last_offset: base.plus(i64::from(header.last_offset_delta)),
        };
        if !guard(proposed) {
            return Ok(None);
        }
        let (appended, generation) = {
            let mut st = self.state.borrow_mut();
            assert_eq!(st.dirty_next, base, "the log moved while the append guard ran");
            // The producer's buffer is usually shared (a slice of its request):
            // rewrite a copy of the prefix only, not the whole batch.
            let mut prefix = [0u8; REWRITTEN_PREFIX];
            prefix.copy_from_slice(&batch[..REWRITTEN_PREFIX]);
            set_base_offset(&mut prefix, base);
            if let Some(epoch) = leader_epoch {
                set_leader_epoch(&mut prefix, epoch);
            }
            let interval = u64::from(self.config().index_interval_bytes);
            let seg = st.active_mut();
            let position = seg.size;
            let mut h = header;
            h.base_offset = base;
            seg.index_batch(&h, position, len as u64, interval);
            seg.size += len as u64;
            seg.next_offset = h.last_offset().plus(1);
            st.dirty_next = h.last_offset().plus(1);
            st.pending_bytes += len;
            st.pending.push_back(Pending {
                prefix,
                original: batch.clone(),
            });
            self.ctx
                .cache
                .borrow_mut()
                .insert_patched(self.id, base, prefix, batch);
            st.check_invariants();
            (
                Appended {
                    base_offset: base,
                    last_offset: h.last_offset(),
                },
                st.generation,
            )
        };
        debug_assert_eq!(appended, proposed);
        Ok(Some((appended, generation)))
    }

    /// Sets the function told `from` whenever every appended batch at or
    /// after `from` is discarded: by a failed flush (the batches were never
    /// acknowledged) or by `truncate`. It runs before any later append can
    /// reuse those offsets, must not call into this log, and replaces any
    /// earlier listener.
    pub fn set_discard_listener(&self, listener: impl Fn(Offset) + 'static) {
        *self.discard_listener.borrow_mut() = Some(Rc::new(listener));
    }

    /// Sets the function told about every successful flush (metrics). It
    /// must not call into this log; replaces any earlier observer.
    pub fn set_flush_observer(&self, observer: impl Fn(&FlushDone) + 'static) {
        *self.flush_observer.borrow_mut() = Some(Rc::new(observer));
    }

    fn notify_discard(&self, from: Offset) {
        let listener = self.discard_listener.borrow().clone();
        if let Some(l) = listener {
            l(from);
        }
    }

    fn pending_over_bound(&self, len: usize) -> bool {
        let st = self.state.borrow();
        !st.pending.is_empty() && st.pending_bytes + len > self.config().max_pending_bytes
    }

    fn needs_roll(&self, len: u64) -> Result<bool> {
        let st = self.state.borrow();
        if st.closed {
            return Err(StorageError::Closed);
        }
        if st.rolling {
            return Ok(true);
        }
        let seg = st.active();
        if seg.is_empty() {
            return Ok(false);
        }
        let too_big = seg.size + len > self.config().segment_bytes;
        let too_old = self.ctx.clock.now_ms() - seg.created_ms >= self.config().segment_ms as i64;
        let rel_full = st.dirty_next.0 - seg.base.0 > i64::from(i32::MAX);
        Ok(too_big || too_old || rel_full)
    }

    /// Waits until `end` is durable, flushing if no one else is.
    async fn wait_durable(&self, end: Offset, generation: u64) -> Result<()> {
        loop {
            if self.durable_or_lost(end, generation)? {
                return Ok(());
            }
            let _permit = self
                .flush_permit
                .acquire_permit(1)
                .await
                .map_err(|_| StorageError::Closed)?;
            if self.durable_or_lost(end, generation)? {
                return Ok(());
            }
            // Let the appends that are already runnable queue their batches, so
            // this flush carries them too (measured: half the fdatasyncs); with
            // a group-commit window, also those arriving within it.
            let window = self.config().group_commit_window;
            if window.is_zero() {
                futures_lite::future::yield_now().await;
            } else {
                glommio::timer::sleep(window).await;
            }
            self.flush_locked().await?;
        }
    }

    fn durable_or_lost(&self, end: Offset, generation: u64) -> Result<bool> {
        let st = self.state.borrow();
        if st.generation != generation {
            return Err(StorageError::FlushFailed(st.last_flush_error.clone()));
        }
        Ok(st.durable_next >= end)
    }

    /// Writes (and per durability syncs) everything appended so far.
    pub async fn flush(&self) -> Result<()> {
        let _permit = self
            .flush_permit
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.flush_locked().await
    }

    /// The flush itself; the caller holds `flush_permit`. On failure every
    /// appended-but-not-durable batch is rolled back and the log is exactly as
    /// it was after the last successful flush.
    async fn flush_locked(&self) -> Result<()> {
        if self.unborn.get() && !self.state.borrow().pending.is_empty() {
            if let Err(e) = self.give_birth().await {
                self.rollback(&e);
                return Err(e);
            }
        }
        let plan = {
            let mut st = self.state.borrow_mut();
            if st.pending.is_empty() {
                return Ok(());
            }
            let batches: Vec<Pending> = st.pending.drain(..).collect();
            st.pending_bytes = 0;
            let new_next = st.dirty_next;
            let seg = st.active();
            FlushPlan {
                file: seg.open_file().clone(),
                path: seg.path.clone(),
                start: align_down(seg.durable.size),
                tail: seg.durable.tail.clone(),
                batches,
                end_size: seg.size,
                new_next,
                max_timestamp: seg.max_timestamp,
                bytes_since_index: seg.bytes_since_index,
                file_end: seg.file_end,
            }
        };
        let started = std::time::Instant::now();
        match self.write_plan(&plan).await {
            Ok((new_tail, file_end)) => {
                let done = FlushDone {
                    bytes: plan.batches.iter().map(Pending::len).sum(),
                    batches: plan.batches.len(),
                    elapsed: started.elapsed(),
                };
                let mut st = self.state.borrow_mut();
                st.written_next = plan.new_next;
                st.durable_next = plan.new_next;
                let seg = st.active_mut();
                assert!(
                    seg.open_file().is_same(&plan.file),
                    "segment rolled during a flush"
                );
                seg.durable = DurablePoint {
                    size: plan.end_size,
                    max_timestamp: plan.max_timestamp,
                    bytes_since_index: plan.bytes_since_index,
                    tail: new_tail,
                };
                seg.file_end = file_end;
                st.check_invariants();
                drop(st);
                self.after_direct_write(&plan.file, &plan.path, done.bytes as u64);
                let observer = self.flush_observer.borrow().clone();
                if let Some(o) = observer {
                    o(&done);
                }
                Ok(())
            }
            Err(e) => {
                self.rollback(&e);
                Err(e)
            }
        }
    }

    /// Creates an unborn log's directory (durably: the data directory is
    /// synced) and its first segment file, and gives the in-memory active
    /// segment that file. The caller holds `flush_permit`.
    async fn give_birth(&self) -> Result<()> {
        let dir = self.dir.clone();
        off_reactor(move || -> Result<()> {
            if dir.is_dir() {
                return Ok(());
            }
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
            let parent = dir.parent().unwrap_or(Path::new("."));
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::io("sync dir", parent, e))
        })
        .await?;
        let path = self.state.borrow().active().path.clone();
        let file = open_rw(&path, true).await?;
        sync_dir(&self.dir).await?;
        let mut st = self.state.borrow_mut();
        let seg = st.active_mut();
        assert!(
            seg.file.is_none() && seg.durable.size == 0,
            "an unborn segment has no file and nothing durable"
        );
        seg.file = Some(Rc::new(file));
        self.unborn.set(false);
        Ok(())
    }

    /// Writes the plan's bytes in aligned chunks, `write_depth` at a time, then
    /// fdatasyncs in `fsync` mode. Returns the new partial-block tail and the
    /// segment's new `file_end`.
    async fn write_plan(&self, plan: &FlushPlan) -> Result<(Vec<u8>, u64)> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * plan.batches.len() + 1);
        parts.push(&plan.tail);
        for b in &plan.batches {
            parts.push(&b.prefix);
            parts.push(&b.original[REWRITTEN_PREFIX..]);
        }
        let mut part_starts = Vec::with_capacity(parts.len());
        let mut acc = 0;
        for p in &parts {
            part_starts.push(acc);
            acc += p.len();
        }
        let total = acc;
        assert_eq!(
            plan.start + total as u64,
            plan.end_size,
            "flush plan does not end at the segment's logical size"
        );
        let aligned_total = align_up(total as u64) as usize;
        let tail_from = align_down(plan.end_size) - plan.start;
        let new_tail_len = total - tail_from as usize;
        let mut new_tail = vec![0u8; new_tail_len];
        fill_from_parts(&mut new_tail, tail_from as usize, &parts, &part_starts);

        let config = self.config();
        // A small flush that extends the file also writes zeros ahead, up to
        // the segment's size limit (bytes past `parts` are zero-filled): as
        // many as the segment holds, at least PREZERO_MIN_BYTES and at most
        // `prezero_bytes`. A busy segment soon gets the full amount (each
        // extension doubles it); one of many idle partitions, holding a few
        // records, costs a few KiB of disk instead of `prezero_bytes`, and
        // recovery after a crash reads that much less.
        let data_end = plan.start + aligned_total as u64;
        let prezero = config.prezero_bytes as u64;
        let zeros = if prezero > 0 && total as u64 <= prezero / 8 && data_end > plan.file_end {
            prezero
                .min(data_end.max(PREZERO_MIN_BYTES))
                .min(align_up(config.segment_bytes).saturating_sub(data_end))
        } else {
            0
        };
        let write_total = aligned_total + zeros as usize;
        let file_end = plan.file_end.max(data_end + zeros);

        let chunk = config.write_chunk_bytes;
        let chunk_starts: Vec<usize> = (0..write_total).step_by(chunk).collect();
        let writes = futures_lite::stream::iter(chunk_starts).map(|from| {
            let len = chunk.min(write_total - from);
            let mut buf = plan.file.alloc_dma_buffer(len);
            fill_from_parts(buf.as_bytes_mut(), from, &parts, &part_starts);
            let pos = plan.start + from as u64;
            async move {
                self.ctx
                    .faults
                    .before_write(len)
                    .map_err(|e| StorageError::io("write", &plan.path, e))?;
                let n = plan
                    .file
                    .write_at(buf, pos)
                    .await
                    .map_err(gio("write", &plan.path))?;
                if n != len {
                    let e = std::io::Error::other(format!("short write: {n} of {len} bytes at {pos}"));
                    return Err(StorageError::io("write", &plan.path, e));
                }
                Ok(())
            }
        });
        run_bounded(writes, config.write_depth).await?;
        // Written but, in fsync mode, not yet synced: visible to `offsets()` only.
        self.state.borrow_mut().written_next = plan.new_next;
        if config.durability == Durability::Fsync {
            self.sync_file(&plan.file, &plan.path).await?;
        }
        Ok((new_tail, file_end))
    }

    async fn sync_file(&self, file: &DmaFile, path: &Path) -> Result<()> {
        sync_file(&self.ctx.faults, file, path).await
    }

    /// `direct` mode: starts a background fdatasync of the active segment
    /// once `direct_sync_bytes` were written since the last one began, unless
    /// one is still running.
    fn after_direct_write(&self, file: &Rc<DmaFile>, path: &Path, bytes: u64) {
        let config = self.config();
        if config.durability != Durability::Direct || config.direct_sync_bytes == 0 {
            return;
        }
        let unsynced = self.unsynced.get() + bytes;
        self.unsynced.set(unsynced);
        if unsynced < config.direct_sync_bytes {
            return;
        }
        if self.background_syncing.get() {
            return;
        }
        self.unsynced.set(0);
        self.background_syncing.set(true);
        let syncing = self.background_syncing.clone();
        let (faults, file, path) = (self.ctx.faults.clone(), file.clone(), path.to_path_buf());
        glommio::spawn_local(async move {
            if let Err(e) = sync_file(&faults, &file, &path).await {
                warn!(segment = %path.display(), error = %e, "background fdatasync failed");
            }
            syncing.set(false);
        })
        .detach();
    }

    /// Returns the log to its last durable point after a failed flush.
    fn rollback(&self, error: &StorageError) {
        let durable = self.rollback_state(error);
        self.notify_discard(durable);
    }

    /// The state half of `rollback`; returns the offset it rolled back to.
    fn rollback_state(&self, error: &StorageError) -> Offset {
        let mut st = self.state.borrow_mut();
        let committed = st.durable_next;
        warn!(
            log = %self.dir.display(),
            error = %error,
            discarded_from = %committed,
            discarded_to = %st.dirty_next,
            "flush failed; rolling back unacknowledged appends"
        );
        st.pending.clear();
        st.pending_bytes = 0;
        st.dirty_next = committed;
        st.written_next = committed;
        st.generation += 1;
        st.last_flush_error = error.to_string();
        let seg = st.active_mut();
        let rel = seg.rel(committed);
        seg.size = seg.durable.size;
        seg.next_offset = committed;
        seg.max_timestamp = seg.durable.max_timestamp;
        seg.bytes_since_index = seg.durable.bytes_since_index;
        seg.index.truncate_from(rel);
        seg.time_index.truncate_from(rel);
        self.ctx.cache.borrow_mut().remove_from(self.id, committed);
        st.check_invariants();
        committed
    }

    /// Seals the active segment and starts a new one at the next offset.
    async fn roll(&self, len: u64) -> Result<()> {
        let _permit = self
            .flush_permit
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        if !self.needs_roll(len)? {
            return Ok(());
        }
        self.state.borrow_mut().rolling = true;
        let result = self.roll_locked().await;
        self.state.borrow_mut().rolling = false;
        result
    }

    /// Writes what is queued to the active segment, then starts a new one at
    /// the next offset. Sealing the old one (its fdatasync, trimming the block
    /// padding, writing its indexes) runs in a background task, so appends go
    /// on into the new segment meanwhile: in `direct` mode that fdatasync
    /// covers the whole never-synced segment and took 120-150 ms with 128 MiB
    /// segments, all of it without an ack. A crash before the seal ends leaves
    /// what recovery already handles (zero padding, missing indexes); in
    /// `fsync` mode the sealed segment is durable before the new one exists.
    async fn roll_locked(&self) -> Result<()> {
        self.flush_locked().await?;
        // One seal at a time: this waits for the previous one, which bounds
        // the unsynced data of `direct` mode to about two segments.
        let sealing = self
            .seal_permit
            .acquire_static_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let (sealed, base) = {
            let st = self.state.borrow();
            assert!(st.pending.is_empty(), "appends queued during a roll");
            let s = st.active();
            let sealed = Sealed {
                file: s.open_file().clone(),
                path: s.path.clone(),
                index: s.index.clone(),
                time_index: s.time_index.clone(),
                size: s.size,
            };
            (sealed, st.dirty_next)
        };
        let seg = create_segment(&self.dir, base, self.ctx.clock.now_ms()).await?;
        sync_dir(&self.dir).await?;
        info!(log = %self.dir.display(), sealed = %sealed.path.display(), new_base = %base, "rolled segment");
        {
            // The rolled segment is sealed: its file stays open only until
            // the seal below is done with it, then reads open it again.
            let mut st = self.state.borrow_mut();
            st.active_mut().file = None;
            st.segments.insert(base, seg);
        }
        self.unsynced.set(0);
        let faults = self.ctx.faults.clone();
        // Never cancelled, not even when the log is dropped unclosed: glommio
        // runs ftruncate on a helper thread by fd number, and a cancelled
        // seal would close the fd before that runs, so the truncation could
        // hit whichever file reused the number. The task keeps the file open
        // until it is done.
        glommio::spawn_local(async move {
            let _sealing = sealing;
            if let Err(e) = sealed.seal(&faults).await {
                // The data stays readable; the next open trims the padding and
                // rebuilds the indexes. In `direct` mode a failed fdatasync
                // means the segment may not survive a power loss.
                warn!(segment = %sealed.path.display(), error = %e, "sealing a rolled segment failed");
            }
        })
        .detach();
        Ok(())
    }

    /// Waits until no flush runs and no rolled segment is being sealed, and
    /// keeps it so while the returned permits are held: for whatever touches
    /// segment files other than by appending (retention, truncation, close).
    /// The permits are taken in the order a roll takes them.
    async fn at_rest(&self) -> Result<(glommio::sync::Permit<'_>, glommio::sync::Permit<'_>)> {
        let closed = |_| StorageError::Closed;
        let flushing = self.flush_permit.acquire_permit(1).await.map_err(closed)?;
        let sealing = self.seal_permit.acquire_permit(1).await.map_err(closed)?;
        Ok((flushing, sealing))
    }

    /// Reads whole batches starting with the one containing `req.offset`.
    ///
    /// A read stays inside one segment, except that while every batch it
    /// found is empty (a batch whose records compaction removed all of) it
    /// goes on into the next segments, within `max_bytes`: a reply of empty
    /// batches alone makes librdkafka take the partition for one with a
    /// record too large to fetch, and after a few such replies it reports
    /// MSG_SIZE_TOO_LARGE to the application.
    pub async fn read(&self, req: ReadRequest) -> Result<ReadOutcome> {
        let mut out = self.read_segment(req).await?;
        loop {
            let Some(last) = out.batches.last() else {
                return Ok(out);
            };
            let all_empty = out
                .batches
                .iter()
                .all(|b| BatchHeader::parse(b).is_ok_and(|h| h.record_count == 0));
            let used = out.bytes();
            let next = BatchHeader::parse(last)
                .expect("served batches parse")
                .last_offset()
                .plus(1);
            let end = {
                let st = self.state.borrow();
                req.end.map_or(st.durable_next, |e| e.min(st.durable_next))
            };
            if !all_empty || used >= req.max_bytes || next >= end {
                return Ok(out);
            }
            let more = self
                .read_segment(ReadRequest {
                    offset: next,
                    max_bytes: req.max_bytes - used,
                    end: req.end,
                })
                .await?;
            if more.batches.is_empty() {
                return Ok(out);
            }
            out.from_cache &= more.from_cache;
            out.batches.extend(more.batches);
        }
    }

    /// `read` within the segment that holds `req.offset`.
    async fn read_segment(&self, req: ReadRequest) -> Result<ReadOutcome> {
        let (end, handle, position, limit) = {
            let st = self.state.borrow();
            let committed = st.durable_next;
            let end = req.end.map_or(committed, |e| e.min(committed));
            let start = st.start();
            if req.offset < start || req.offset > end {
                return Err(StorageError::OffsetOutOfRange {
                    requested: req.offset,
                    start,
                    end,
                });
            }
            if req.offset == end {
                return Ok(ReadOutcome::default());
            }
            let cached = self
                .ctx
                .cache
                .borrow_mut()
                .read(self.id, req.offset, end, req.max_bytes);
            if !cached.is_empty() {
                return Ok(ReadOutcome {
                    batches: cached,
                    from_cache: true,
                });
            }
            let (_, seg) = st
                .segments
                .range(..=req.offset)
                .next_back()
                .expect("offset >= start has a segment");
            let entry = seg.index.lookup(seg.rel(req.offset));
            let limit = if seg.base == st.active().base {
                seg.durable.size
            } else {
                seg.size
            };
            (end, seg.handle(), u64::from(entry.position), limit)
        };
        let path = handle.path.clone();
        let file = self.resolve(handle).await?;
        let batches = read_batches(
            &file,
            &path,
            ReadSpan {
                position,
                limit,
                offset: req.offset,
                end,
                max_bytes: req.max_bytes,
            },
            self.config().read_chunk_bytes,
        )
        .await?;
        Ok(ReadOutcome {
            batches,
            from_cache: false,
        })
    }

    /// Whole batches from the batch cache only, starting with the one that
    /// contains `offset` and ending before `end`, up to `max_bytes` (the
    /// first batch always comes), including batches appended but not yet
    /// durable: what a replication leader sends its followers while its own
    /// write is in flight. Empty when that batch is not cached (read it
    /// with [`Log::read`] once durable).
    pub fn read_cached(&self, offset: Offset, end: Offset, max_bytes: usize) -> Vec<Bytes> {
        let st = self.state.borrow();
        let end = end.min(st.dirty_next);
        if offset < st.start() || offset >= end {
            return Vec::new();
        }
        self.ctx.cache.borrow_mut().read(self.id, offset, end, max_bytes)
    }

    /// The first offset whose record timestamp is >= `ts`, or `None` if every
    /// committed record is older. For compressed batches this is the batch's
    /// base offset (records are not decompressed here).
    pub async fn offset_for_timestamp(&self, ts: TimestampMs) -> Result<Option<Offset>> {
        let candidates: Vec<(FileHandle, u64, u64, Offset)> = {
            let st = self.state.borrow();
            let active_base = st.active().base;
            st.segments
                .values()
                .filter(|s| s.max_timestamp >= ts.0)
                .map(|s| {
                    let rel = s.time_index.scan_start(ts.0);
                    let entry = s.index.lookup(rel);
                    let limit = if s.base == active_base {
                        s.durable.size
                    } else {
                        s.size
                    };
                    (s.handle(), u64::from(entry.position), limit, st.durable_next)
                })
                // Nothing durable to read (an unborn log's appended batch
                // has a timestamp but no file yet).
                .filter(|&(_, _, limit, _)| limit > 0)
                .collect()
        };
        for (handle, mut pos, limit, end) in candidates {
            let path = handle.path.clone();
            let file = self.resolve(handle).await?;
            let mut reader = WindowReader::new(&file, &path, self.config().read_chunk_bytes, limit);
            while pos < limit {
                let head = reader.get(pos, ferrolog_model::batch::HEADER_BYTES).await?;
                let h = BatchHeader::parse(head).map_err(|e| corrupt(&path, pos, e))?;
                if h.base_offset >= end {
                    return Ok(None);
                }
                if h.max_timestamp.0 >= ts.0 {
                    let whole = reader.get(pos, h.total_bytes()).await?;
                    BatchHeader::parse_verified(whole).map_err(|e| corrupt(&path, pos, e))?;
                    return Ok(Some(first_offset_at_or_after(whole, ts).unwrap_or(h.base_offset)));
                }
                pos += h.total_bytes() as u64;
            }
        }
        Ok(None)
    }

    /// Deletes the oldest segments while the log exceeds `retention_bytes`
    /// or their newest record is older than `retention_ms`. The active
    /// segment is never deleted.
    pub async fn apply_retention(&self) -> Result<RetentionOutcome> {
        let _at_rest = self.at_rest().await?;
        let now = self.ctx.clock.now_ms();
        let doomed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let mut doomed = Vec::new();
            while st.segments.len() > 1 {
                let oldest = st.segments.values().next().expect("checked len");
                let over_size = self.config().retention_bytes.is_some_and(|max| total > max);
                let too_old = self
                    .config()
                    .retention_ms
                    .is_some_and(|ms| oldest.max_timestamp < now - ms as i64);
                if !(over_size || too_old) {
                    break;
                }
                let base = oldest.base;
                let seg = st.segments.remove(&base).expect("present");
                total -= seg.size;
                doomed.push(seg);
            }
            let start = st.start();
            self.ctx.cache.borrow_mut().remove_below(self.id, start);
            doomed
        };
        let mut outcome = RetentionOutcome {
            deleted_segments: Vec::new(),
            start: self.offsets().start,
        };
        self.ctx.forget_files(doomed.iter().map(|s| s.id));
        for seg in doomed {
            info!(log = %self.dir.display(), segment = %seg.path.display(), "retention deleted segment");
            remove_segment_files(&seg.path).await?;
            outcome.deleted_segments.push(seg.base);
        }
        Ok(outcome)
    }

    /// Deletes the segments that hold only offsets below `offset` (never the
    /// active one) and moves the log start to the first remaining segment.
    /// For logs that rewrite their live content at the tail (the group
    /// coordinator's compaction). Returns how many segments were deleted.
    pub async fn delete_before(&self, offset: Offset) -> Result<usize> {
        let _at_rest = self.at_rest().await?;
        let doomed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let mut doomed = Vec::new();
            loop {
                let bases: Vec<Offset> = st.segments.keys().take(2).copied().collect();
                if bases.len() < 2 || bases[1] > offset {
                    break;
                }
                doomed.push(st.segments.remove(&bases[0]).expect("present"));
            }
            let start = st.start();
            self.ctx.cache.borrow_mut().remove_below(self.id, start);
            doomed
        };
        self.ctx.forget_files(doomed.iter().map(|s| s.id));
        for seg in &doomed {
            remove_segment_files(&seg.path).await?;
        }
        Ok(doomed.len())
    }

    /// Moves the log start up to `offset` (DeleteRecords): recorded durably
    /// first, then reads below it are refused and the segments wholly below
    /// it deleted. `offset` may be inside a batch; that batch stays stored
    /// and is still returned whole to a read at `offset`, as Kafka does.
    /// An offset at or below the start changes nothing. The caller keeps
    /// `offset` at or below what readers may see (the high watermark).
    /// Returns the new start.
    pub async fn advance_start(&self, offset: Offset) -> Result<Offset> {
        let (start, end) = {
            let st = self.state.borrow();
            (st.start(), st.durable_next)
        };
        if offset <= start {
            return Ok(start);
        }
        if offset > end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let dir = self.dir.clone();
        off_reactor(move || crate::start_offset::store(&dir, offset)).await?;
        {
            let mut st = self.state.borrow_mut();
            st.start_floor = st.start_floor.max(offset);
        }
        self.delete_before(offset).await?;
        Ok(self.offsets().start)
    }

    /// Removes every batch at or after `offset`, which must be a batch
    /// boundary (or the end). Used by replication to drop a divergent suffix.
    pub async fn truncate(&self, offset: Offset) -> Result<()> {
        let _at_rest = self.at_rest().await?;
        self.flush_locked().await?;
        let (start, dirty) = {
            let st = self.state.borrow();
            (st.start(), st.dirty_next)
        };
        if offset == dirty {
            return Ok(());
        }
        if offset < start || offset > dirty {
            return Err(StorageError::BadTruncation(offset));
        }
        // Find the byte position of the batch starting at `offset`.
        let (seg_base, handle, from, limit) = {
            let st = self.state.borrow();
            let (_, seg) = st.segments.range(..=offset).next_back().expect("offset >= start");
            let entry = seg.index.lookup(seg.rel(offset));
            (seg.base, seg.handle(), u64::from(entry.position), seg.size)
        };
        let (cut_id, path) = (handle.id, handle.path.clone());
        let file = self.resolve(handle).await?;
        let cut = {
            let mut reader = WindowReader::new(&file, &path, self.config().read_chunk_bytes, limit);
            let mut pos = from;
            loop {
                if pos >= limit {
                    return Err(StorageError::BadTruncation(offset));
                }
                let head = reader.get(pos, ferrolog_model::batch::HEADER_BYTES).await?;
                let h = BatchHeader::parse(head).map_err(|e| corrupt(&path, pos, e))?;
                if h.base_offset == offset {
                    break pos;
                }
                if h.base_offset > offset {
                    return Err(StorageError::BadTruncation(offset));
                }
                pos += h.total_bytes() as u64;
            }
        };
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let later: Vec<Offset> = st.segments.range(seg_base.plus(1)..).map(|(b, _)| *b).collect();
            later
                .iter()
                .map(|b| st.segments.remove(b).expect("present"))
                .collect()
        };
        self.ctx
            .forget_files(removed.iter().map(|s| s.id).chain([cut_id]));
        for seg in &removed {
            remove_segment_files(&seg.path).await?;
        }
        file.truncate(cut).await.map_err(gio("truncate", &path))?;
        remove_index_files(&path).await?;
        let mut report = RecoveryReport::default();
        let seg = recover_segment(
            &self.dir,
            seg_base,
            true,
            &self.config(),
            self.ctx.clock.now_ms(),
            &mut report,
        )
        .await?;
        assert_eq!(
            seg.next_offset, offset,
            "truncated segment does not end at the cut"
        );
        {
            let mut st = self.state.borrow_mut();
            st.segments.insert(seg_base, seg);
            st.dirty_next = offset;
            st.written_next = offset;
            st.durable_next = offset;
            st.generation += 1;
            st.last_flush_error = format!("log truncated to {offset}");
            self.ctx.cache.borrow_mut().remove_from(self.id, offset);
            st.check_invariants();
        }
        self.notify_discard(offset);
        info!(log = %self.dir.display(), offset = %offset, "truncated log");
        Ok(())
    }

    /// Flushes and syncs everything, persists the active segment's indexes
    /// and closes the log. Later calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let _at_rest = self.at_rest().await?;
        self.flush_locked().await?;
        if self.unborn.get() {
            // Nothing was ever written: there is no file to close.
            let mut st = self.state.borrow_mut();
            st.closed = true;
            self.ctx.forget_files(st.segments.values().map(|s| s.id));
            drop(st);
            self.flush_permit.close();
            self.seal_permit.close();
            return Ok(());
        }
        let (file, path, index, time_index, size, unchanged) = {
            let mut st = self.state.borrow_mut();
            st.closed = true;
            self.ctx.forget_files(st.segments.values().map(|s| s.id));
            let s = st.active();
            (
                s.open_file().clone(),
                s.path.clone(),
                s.index.clone(),
                s.time_index.clone(),
                s.size,
                s.indexes_on_disk == Some(s.indexes_digest()),
            )
        };
        // Drop the block padding so the next open finds the file ending at its
        // last batch and keeps the index files written below.
        file.truncate(size).await.map_err(gio("truncate", &path))?;
        self.sync_file(&file, &path).await?;
        if !unchanged {
            write_small_file(&index_path(&path), &index.encode()).await?;
            write_small_file(&time_index_path(&path), &time_index.encode()).await?;
        }
        self.ctx.cache.borrow_mut().remove_from(self.id, Offset(i64::MIN));
        self.flush_permit.close();
        self.seal_permit.close();
        Ok(())
    }
}

impl Log {
    /// A segment's file from its handle: already open (the active segment),
    /// kept open in the shard's [`SealedFiles`], or opened now and kept
    /// there (unless the segment went away meanwhile).
    async fn resolve(&self, handle: FileHandle) -> Result<Rc<DmaFile>> {
        if let Some(file) = handle.open {
            return Ok(file);
        }
        if let Some(file) = self.ctx.files.borrow_mut().get(handle.id) {
            return Ok(file);
        }
        let file = Rc::new(open_rw(&handle.path, false).await?);
        let current = self.state.borrow().segments.values().any(|s| s.id == handle.id);
        if current {
            self.ctx.files.borrow_mut().insert(handle.id, file.clone());
        }
        Ok(file)
    }
}

impl Drop for Log {
    /// A log dropped without `close` (a test's crash, a failed open) lets
    /// go of its kept sealed files too.
    fn drop(&mut self) {
        if let Ok(st) = self.state.try_borrow() {
            self.ctx.forget_files(st.segments.values().map(|s| s.id));
        }
    }
}

struct FlushPlan {
    file: Rc<DmaFile>,
    path: PathBuf,
    /// Aligned file position where the write starts (the partial block).
    start: u64,
    tail: Vec<u8>,
    batches: Vec<Pending>,
    end_size: u64,
    new_next: Offset,
    max_timestamp: i64,
    bytes_since_index: u64,
    /// The segment's `file_end` when the flush was planned.
    file_end: u64,
}

/// Runs the futures of `stream` with at most `depth` in flight; stops at the
/// first error (after the in-flight ones finish, as they own DMA buffers).
async fn run_bounded<S, F>(stream: S, depth: usize) -> Result<()>
where
    S: futures_lite::Stream<Item = F>,
    F: std::future::Future<Output = Result<()>>,
{
    let stream = std::pin::pin!(stream);
    let mut stream = stream;
    let mut in_flight = Vec::new();
    let mut first_err = None;
    loop {
        while in_flight.len() < depth && first_err.is_none() {
            match stream.next().await {
                Some(f) => in_flight.push(Box::pin(f)),
                None => break,
            }
        }
        if in_flight.is_empty() {
            break;
        }
        let (result, idx) = futures_lite::future::poll_fn(|cx| {
            for (i, f) in in_flight.iter_mut().enumerate() {
                if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                    return std::task::Poll::Ready((r, i));
                }
            }
            std::task::Poll::Pending
        })
        .await;
        drop(in_flight.swap_remove(idx));
        if let Err(e) = result {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn corrupt(path: &Path, position: u64, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason: e.to_string(),
    }
}

struct ReadSpan {
    position: u64,
    limit: u64,
    offset: Offset,
    end: Offset,
    max_bytes: usize,
}

/// Reads whole batches from a segment file, verifying each one's CRC: a batch
/// that fails is never returned.
async fn read_batches(file: &DmaFile, path: &Path, span: ReadSpan, chunk_bytes: usize) -> Result<Vec<Bytes>> {
    let mut reader = WindowReader::new(
        file,
        path,
        chunk_bytes.max(span.max_bytes.min(1 << 20)),
        span.limit,
    );
    let mut pos = span.position;
    let mut out: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while pos < span.limit {
        let head = reader.get(pos, ferrolog_model::batch::HEADER_BYTES).await?;
        let h = match BatchHeader::parse(head) {
            Ok(h) => h,
            Err(e) if out.is_empty() => return Err(corrupt(path, pos, e)),
            Err(_) => break,
        };
        let size = h.total_bytes();
        if h.base_offset >= span.end {
            break;
        }
        if h.last_offset() < span.offset {
            pos += size as u64;
            continue;
        }
        if !out.is_empty() && total + size > span.max_bytes {
            break;
        }
        let whole = reader.get(pos, size).await?;
        match BatchHeader::parse_verified(whole) {
            Ok(_) => {
                out.push(Bytes::copy_from_slice(whole));
                total += size;
                pos += size as u64;
            }
            // Serve what precedes the damage; the next read reports it.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(corrupt(path, pos, e)),
        }
    }
    Ok(out)
}

async fn create_segment(dir: &Path, base: Offset, now_ms: i64) -> Result<Segment> {
    let path = dir.join(log_file_name(base));
    let file = open_rw(&path, true).await?;
    Ok(Segment::empty(base, path, file, now_ms))
}

/// Loads a segment's indexes if they are consistent, then scans from the last
/// index entry to the end of the file. The last segment (`active`) has a torn
/// or corrupt tail truncated; a sealed one has its damage reported.
async fn recover_segment(
    dir: &Path,
    base: Offset,
    active: bool,
    config: &LogConfig,
    now_ms: i64,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let path = dir.join(log_file_name(base));
    let file = open_rw(&path, false).await?;
    let file_size = file.file_size().await.map_err(gio("stat", &path))?;
    let mut seg = Segment::empty(base, path.clone(), file, now_ms);

    let interval = u64::from(config.index_interval_bytes);
    let loaded = load_indexes(&seg, file_size).await;
    let (from_pos, from_offset) = match &loaded {
        Some((index, time_index, entry, h)) => {
            seg.index = index.clone();
            seg.time_index = time_index.clone();
            seg.max_timestamp = time_index.last().map_or(i64::MIN, |e| e.max_timestamp_before);
            seg.indexes_on_disk = Some(seg.indexes_digest());
            let _ = h;
            (
                u64::from(entry.position),
                seg.base.plus(i64::from(entry.rel_offset)),
            )
        }
        None => (0, base),
    };
    if loaded.is_none() && file_size > 0 {
        report.rebuilt_indexes.push(index_path(&path));
    }
    let outcome = scan(
        &mut seg,
        from_pos,
        from_offset,
        file_size,
        interval,
        config.read_chunk_bytes.max(256 << 10),
    )
    .await?;
    seg.size = outcome.end;
    seg.next_offset = outcome.next_offset;

    if let Some(stop) = &outcome.stop {
        if active && stop.zero_padding {
            // Zeros past the last batch of the active segment (pre-zeroed
            // space, an unwritten block tail) stay: the next flushes
            // overwrite them, close trims them, and reads and recovery stop
            // at the last batch. Not cutting them spares a restart after a
            // crash one ftruncate per partition, each a journal update that
            // glommio runs on the executor's one blocking thread.
        } else if active || stop.zero_padding {
            let bytes = file_size - stop.position;
            if !stop.zero_padding {
                warn!(
                    segment = %path.display(),
                    position = stop.position,
                    bytes,
                    reason = %stop.reason,
                    "truncating torn or corrupt tail"
                );
                report.truncated.push(Truncation {
                    path: path.clone(),
                    position: stop.position,
                    bytes,
                    reason: stop.reason.clone(),
                });
            }
            seg.open_file()
                .truncate(stop.position)
                .await
                .map_err(gio("truncate", &path))?;
            if !stop.zero_padding {
                // Every loaded entry precedes the scan start, so none is past the
                // cut; drop the files anyway after damage, to be rebuilt from the log.
                remove_index_files(&path).await?;
                seg.indexes_on_disk = None;
            }
        } else {
            tracing::error!(
                segment = %path.display(),
                position = stop.position,
                reason = %stop.reason,
                "corrupt data in sealed segment; reads that reach it will fail"
            );
            report
                .corrupt
                .push((path.clone(), stop.position, stop.reason.clone()));
            seg.size = file_size;
        }
    }

    // A sealed segment without indexes (a crash cut its seal short) gets them
    // now, once its padding is trimmed; one with damage keeps being scanned.
    let intact = outcome.stop.as_ref().is_none_or(|stop| stop.zero_padding);
    if !active && loaded.is_none() && intact {
        write_small_file(&index_path(&path), &seg.index.encode()).await?;
        write_small_file(&time_index_path(&path), &seg.time_index.encode()).await?;
    }

    let tail_start = align_down(seg.size);
    let tail = if active && seg.size > tail_start {
        let r = seg
            .open_file()
            .read_at(tail_start, (seg.size - tail_start) as usize)
            .await
            .map_err(gio("read", &path))?;
        r.to_vec()
    } else {
        Vec::new()
    };
    seg.durable = DurablePoint {
        size: seg.size,
        max_timestamp: seg.max_timestamp,
        bytes_since_index: seg.bytes_since_index,
        tail,
    };
    if !active {
        // Sealed: opened again when first read (`Log::resolve`).
        seg.file = None;
    }
    Ok(seg)
}

/// Reads and checks a segment's `.index` and `.timeindex`. Returns them with
/// their last offset entry, or `None` if either is missing or inconsistent
/// (including a last entry that does not point at the batch it names).
async fn load_indexes(
    seg: &Segment,
    file_size: u64,
) -> Option<(
    OffsetIndex,
    TimeIndex,
    crate::index::OffsetEntry,
    Option<BatchHeader>,
)> {
    let ipath = index_path(&seg.path);
    let tpath = time_index_path(&seg.path);
    let (i, t) = (ipath.clone(), tpath.clone());
    let (ibytes, tbytes) =
        off_reactor(move || Some((std::fs::read(i).ok()?, std::fs::read(t).ok()?))).await?;
    let index = match OffsetIndex::decode(&ibytes, file_size.max(1)) {
        Ok(i) => i,
        Err(reason) => {
            warn!(index = %ipath.display(), %reason, "discarding inconsistent index");
            return None;
        }
    };
    let time_index = match TimeIndex::decode(&tbytes) {
        Ok(t) => t,
        Err(reason) => {
            warn!(index = %tpath.display(), %reason, "discarding inconsistent time index");
            return None;
        }
    };
    if index.entries().len() != time_index.entries().len()
        || index
            .entries()
            .iter()
            .zip(time_index.entries())
            .any(|(o, t)| o.rel_offset != t.rel_offset)
    {
        warn!(index = %ipath.display(), "offset and time indexes disagree; rebuilding");
        return None;
    }
    let entry = index.lookup(u32::MAX);
    if entry.position == 0 {
        return Some((index, time_index, entry, None));
    }
    let r = seg
        .open_file()
        .read_at(u64::from(entry.position), ferrolog_model::batch::HEADER_BYTES)
        .await
        .ok()?;
    let h = BatchHeader::parse(&r).ok()?;
    if h.base_offset != seg.base.plus(i64::from(entry.rel_offset)) {
        warn!(index = %ipath.display(), "last index entry does not match the segment; rebuilding");
        return None;
    }
    Some((index, time_index, entry, Some(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_from_parts_copies_across_boundaries_and_zero_pads() {
        let a: &[u8] = b"abc";
        let b: &[u8] = b"defgh";
        let parts = [a, b];
        let starts = [0, 3];
        let mut dst = [9u8; 6];
        fill_from_parts(&mut dst, 2, &parts, &starts);
        assert_eq!(&dst, b"cdefgh");
        let mut dst = [9u8; 4];
        fill_from_parts(&mut dst, 6, &parts, &starts);
        assert_eq!(&dst, &[b'g', b'h', 0, 0]);
        let mut dst = [9u8; 2];
        fill_from_parts(&mut dst, 0, &[&[], a], &[0, 0]);
        assert_eq!(&dst, b"ab");
    }
}
