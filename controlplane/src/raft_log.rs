//! The controller's Raft log on disk, behind raft-rs's `Storage` trait.
//!
//! raft-rs is sans-IO: the caller persists what each `Ready` hands it
//! (entries, HardState, a snapshot) before sending the messages that depend
//! on it. [`RaftLog`] is that persistence: every `append`, `set_hard_state`,
//! `set_conf_state`, `apply_snapshot` and `compact` is durable (written and
//! fdatasync'd, or renamed into place and the directory synced) when it
//! returns, and the in-memory copy that `Storage` reads is changed only
//! after that. Reopening the directory gives back exactly what returned.
//!
//! Files in the directory:
//! - `log.<generation>`: entries as records `[len u32][crc32c u32][Entry]`,
//!   appended in the order they were given. An append that overwrites a
//!   suffix (a new leader's entries) is just appended; replay applies the
//!   same truncation. A torn or corrupt tail (a crash mid-append: it never
//!   returned) is cut off at open.
//! - `snapshot`: the newest snapshot (a record, with the generation of the
//!   log that continues it). A received snapshot or a compaction writes the
//!   next generation's log (the entries after the snapshot), then the
//!   snapshot file naming it, then removes the old log; a crash anywhere in
//!   between reopens one whole generation, old or new.
//! - `hardstate`, `confstate`: one record each, replaced by rename.
//!
//! Sizes: a controller log holds metadata commands, small and few; the
//! whole log is kept in memory between compactions.
//!
//! Threading: used from the control executor only. The calls block (file
//! writes, fdatasync): the control executor runs nothing else on the
//! latency path of the data shards.

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Record header: payload length, then CRC-32C of the payload.
const RECORD_HEADER_BYTES: usize = 8;
/// The largest record read back: far above any controller entry or
/// snapshot of this size of metadata, and a bound on what a damaged
/// length field can make us allocate.
pub const RECORD_BYTES_MAX: usize = 256 << 20;
const SNAPSHOT_FILE: &str = "snapshot";
const HARD_STATE_FILE: &str = "hardstate";
const CONF_STATE_FILE: &str = "confstate";
const LOG_PREFIX: &str = "log.";

#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// An append that would leave a gap or rewrite compacted entries, or a
    /// snapshot older than what is held: a caller's error, refused.
    #[error("{0}")]
    Refused(String),
}

type Result<T> = std::result::Result<T, RaftLogError>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RaftLogError + 'a {
    move |source| RaftLogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub struct RaftLog {
    dir: PathBuf,
    generation: u64,
    /// `log.<generation>`, opened for appending.
    log: File,
    hard_state: HardState,
    conf_state: ConfState,
    /// The index of the entry whose application gave `conf_state` (the
    /// snapshot's index when it came from the snapshot).
    conf_index: u64,
    /// The newest snapshot; its index is the entry before the first held.
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits `bytes` into record payloads; returns them and the length of the
/// valid prefix (where a torn or corrupt record starts, if any).
fn records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + RECORD_HEADER_BYTES;
        if len > RECORD_BYTES_MAX || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        out.push(payload);
        at = start + len;
    }
    (out, at)
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("raft messages always encode (no required fields)")
}

fn decode<M: Message>(path: &Path, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| RaftLogError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Replaces `name` in `dir` with one record holding `payload`, durably.
fn replace_file(dir: &Path, name: &str, payload: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&record(payload)).map_err(io("write", &tmp))?;
    f.sync_data().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    sync_dir(dir)
}

/// The one record of a file written by `replace_file`; `None` if absent.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    let (recs, valid) = records(&bytes);
    match (recs.as_slice(), valid == bytes.len()) {
        ([one], true) => Ok(Some(one.to_vec())),
        _ => Err(RaftLogError::Corrupt {
            path: path.to_path_buf(),
            reason: "not one whole record (files are replaced by rename, never torn)".into(),
        }),
    }
}

impl RaftLog {
    /// Opens (creating if needed) the log in `dir` and recovers what every
    /// returned call made durable.
    pub fn open(dir: impl Into<PathBuf>) -> Result<RaftLog> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let snap_path = dir.join(SNAPSHOT_FILE);
        let (generation, snapshot) = match read_file(&snap_path)? {
            None => (0, Snapshot::default()),
            Some(bytes) if bytes.len() >= 8 => {
                let generation = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                (generation, decode::<Snapshot>(&snap_path, &bytes[8..])?)
            }
            Some(_) => {
                return Err(RaftLogError::Corrupt {
                    path: snap_path,
                    reason: "snapshot record without its generation".into(),
                })
            }
        };
        let hs_path = dir.join(HARD_STATE_FILE);
        let hard_state = match read_file(&hs_path)? {
            Some(b) => decode::<HardState>(&hs_path, &b)?,
            None => HardState::default(),
        };
        let cs_path = dir.join(CONF_STATE_FILE);
        // The newer of the conf state set at an applied index and the one
        // of the snapshot.
        let snap_index = snapshot.get_metadata().index;
        let (conf_state, conf_index) = match read_file(&cs_path)? {
            Some(b) if b.len() >= 8 => {
                let at = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                if at >= snap_index {
                    (decode::<ConfState>(&cs_path, &b[8..])?, at)
                } else {
                    (snapshot.get_metadata().get_conf_state().clone(), snap_index)
                }
            }
            Some(_) => {
                return Err(RaftLogError::Corrupt {
                    path: cs_path,
                    reason: "conf state record without its index".into(),
                })
            }
            None => (snapshot.get_metadata().get_conf_state().clone(), snap_index),
        };
        // A snapshot is of committed entries: a HardState written before it
        // (a crash between the two) is raised to cover it, as raft requires.
        let mut hard_state = hard_state;
        let meta = snapshot.get_metadata();
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        // Logs of other generations are leftovers of an interrupted
        // snapshot install or compaction.
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(g) = name.strip_prefix(LOG_PREFIX).and_then(|g| g.parse::<u64>().ok()) {
                if g != generation {
                    std::fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
                }
            }
        }
        let log_path = dir.join(format!("{LOG_PREFIX}{generation}"));
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io("read", &log_path))?;
        let (recs, valid) = records(&bytes);
        let mut me = RaftLog {
            dir,
            generation,
            log,
            hard_state,
            conf_state,
            conf_index,
            snapshot,
            entries: Vec::new(),
        };
        for payload in recs {
            let e: Entry = decode(&log_path, payload)?;
            // Entries at or below the snapshot were compacted away.
            if e.index > me.snapshot_index() {
                me.splice(std::slice::from_ref(&e))?;
            }
        }
        if valid < bytes.len() {
            warn!(log = %log_path.display(), at = valid, cut = bytes.len() - valid, "cutting a torn raft log tail");
            me.log.set_len(valid as u64).map_err(io("truncate", &log_path))?;
            me.log.sync_all().map_err(io("sync", &log_path))?;
        }
        Ok(me)
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Refuses entries that would leave a gap, rewrite compacted entries or
    /// are not consecutive.
    fn check_append(&self, ents: &[Entry]) -> Result<()> {
        let Some(head) = ents.first() else { return Ok(()) };
        if head.index < self.first() || head.index > self.last() + 1 {
            return Err(RaftLogError::Refused(format!(
                "append at {} to a log holding {}..={}",
                head.index,
                self.first(),
                self.last()
            )));
        }
        if ents.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err(RaftLogError::Refused("entries out of order".into()));
        }
        Ok(())
    }

    /// Puts checked `ents` in memory, dropping any suffix they overwrite.
    fn splice(&mut self, ents: &[Entry]) -> Result<()> {
        self.check_append(ents)?;
        if let Some(head) = ents.first() {
            self.entries.truncate((head.index - self.first()) as usize);
            self.entries.extend_from_slice(ents);
        }
        Ok(())
    }

    /// Appends entries (overwriting a conflicting suffix), durably.
    pub fn append(&mut self, ents: &[Entry]) -> Result<()> {
        if ents.is_empty() {
            return Ok(());
        }
        // Checked before anything is written: a refused append changes nothing.
        self.check_append(ents)?;
        let mut buf = Vec::new();
        for e in ents {
            buf.extend_from_slice(&record(&encode(e)));
        }
        let path = self.log_path();
        self.log.write_all(&buf).map_err(io("append to", &path))?;
        self.log.sync_data().map_err(io("sync", &path))?;
        self.splice(ents)
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        replace_file(&self.dir, HARD_STATE_FILE, &encode(&hs))?;
        self.hard_state = hs;
        Ok(())
    }

    /// Records the conf state that applying the entry at `applied_index`
    /// produced.
    pub fn set_conf_state(&mut self, cs: ConfState, applied_index: u64) -> Result<()> {
        let mut payload = applied_index.to_be_bytes().to_vec();
        payload.extend_from_slice(&encode(&cs));
        replace_file(&self.dir, CONF_STATE_FILE, &payload)?;
        self.conf_state = cs;
        self.conf_index = applied_index;
        Ok(())
    }

    /// The conf state and the index of the entry (or snapshot) it is of.
    pub fn conf_state(&self) -> (&ConfState, u64) {
        (&self.conf_state, self.conf_index)
    }

    /// The newest snapshot (empty, at index 0, before the first).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{LOG_PREFIX}{}", self.generation))
    }

    /// Starts a new generation: first the new log holding `keep` (entries
    /// after the snapshot), synced; then the snapshot file that names it,
    /// renamed into place; then the old log goes. A crash before the rename
    /// reopens the old generation whole (the new log is a leftover); after
    /// it, the new one whole.
    fn new_generation(&mut self, snapshot: Snapshot, keep: Vec<Entry>) -> Result<()> {
        let next = self.generation + 1;
        let path = self.dir.join(format!("{LOG_PREFIX}{next}"));
        // Written from the start and only ever extended: the file position
        // stays at its end, as with O_APPEND.
        let mut log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io("create", &path))?;
        let mut buf = Vec::new();
        for e in &keep {
            buf.extend_from_slice(&record(&encode(e)));
        }
        log.write_all(&buf).map_err(io("write", &path))?;
        log.sync_data().map_err(io("sync", &path))?;
        let mut payload = next.to_be_bytes().to_vec();
        payload.extend_from_slice(&encode(&snapshot));
        replace_file(&self.dir, SNAPSHOT_FILE, &payload)?;
        let old = self.log_path();
        std::fs::remove_file(&old).map_err(io("remove", &old))?;
        self.log = log;
        self.generation = next;
        self.snapshot = snapshot;
        self.entries = keep;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log is replaced by
    /// it, and the HardState's commit and the ConfState follow it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot_index() {
            return Err(RaftLogError::Refused(format!(
                "snapshot at {} is not newer than the one held at {}",
                meta.index,
                self.snapshot_index()
            )));
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        let index = meta.index;
        // Once the snapshot is durable, reopening derives the raised commit
        // and (unless a conf state was recorded at or after its index, which
        // raft never does before sending a newer snapshot) the conf state
        // from it; the writes below keep the files in step.
        self.new_generation(snapshot, Vec::new())?;
        self.set_conf_state(cs, index)?;
        self.set_hard_state(hs)
    }

    /// Replaces the log up to `snapshot`'s index (the caller's own state
    /// machine snapshot, at an applied index this log holds) by the snapshot.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        if index <= self.snapshot_index() || index > self.last() {
            return Err(RaftLogError::Refused(format!(
                "compaction to {index} of a log holding {}..={}",
                self.first(),
                self.last()
            )));
        }
        let term = self.entries[(index - self.first()) as usize].term;
        if meta.term != term {
            return Err(RaftLogError::Refused(format!(
                "snapshot term {} at {index}, the log has term {term}",
                meta.term
            )));
        }
        let keep = self.entries[(index + 1 - self.first()) as usize..].to_vec();
        self.new_generation(snapshot, keep)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(unavailable());
        }
        let first = self.first();
        let mut out = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        // At least one entry, then as many as fit in max_size (raft's rule).
        if let Some(max) = max_size.into() {
            let mut size = 0u64;
            let keep = out
                .iter()
                .take_while(|e| {
                    size += u64::from(e.compute_size());
                    size <= max
                })
                .count()
                .max(1);
            out.truncate(keep);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(unavailable());
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() >= request_index {
            Ok(self.snapshot.clone())
        } else {
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        }
    }
}
