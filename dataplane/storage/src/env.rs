//! Seams for time and disk faults, so tests can drive what production leaves
//! to the clock and the device.

use std::cell::Cell;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds, used for segment age and retention.
pub trait Clock {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(Cell<i64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Cell::new(now_ms))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.set(now_ms)
    }
    pub fn advance(&self, ms: i64) {
        self.0.set(self.0.get() + ms)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.get()
    }
}

/// Injected disk faults. Production uses the default (no faults); tests arm
/// one to see the error paths a full or failing disk takes.
#[derive(Debug, Default)]
pub struct Faults {
    /// Data writes fail with ENOSPC once this many more bytes were written.
    writes_left_bytes: Cell<Option<u64>>,
    /// The next fdatasync calls fail with EIO while this is non-zero.
    failing_syncs: Cell<u32>,
    /// fdatasync calls begun (failed ones included), for tests to count.
    syncs: Cell<u64>,
    /// Compaction fails at this step, after passing it this many times.
    compaction_fails_at: Cell<Option<(CompactStep, u32)>>,
}

/// The steps of a compaction pass where a test can make it fail, in order,
/// as a crash there would leave the files (see `Log::compact`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactStep {
    /// A rewritten segment is written to `<base>.log.cleaned`, not yet synced.
    SyncCleaned,
    /// `.cleaned` is synced, not yet renamed to `.swap` (the commit point).
    RenameToSwap,
    /// `.swap` exists; the old segment's index files are still there.
    RemoveOldIndexes,
    /// `.swap` exists, the old index files are gone, the old `.log` remains.
    RenameOverLog,
    /// The new `.log` is in place; its index files are not written yet.
    WriteIndexes,
    /// Every segment of the pass is swapped; the clean point is not saved.
    SaveCleanPoint,
}

impl CompactStep {
    pub const ALL: [CompactStep; 6] = [
        CompactStep::SyncCleaned,
        CompactStep::RenameToSwap,
        CompactStep::RemoveOldIndexes,
        CompactStep::RenameOverLog,
        CompactStep::WriteIndexes,
        CompactStep::SaveCleanPoint,
    ];
}

impl Faults {
    /// Makes data writes fail with ENOSPC after `bytes` more bytes.
    pub fn fail_writes_after(&self, bytes: u64) {
        self.writes_left_bytes.set(Some(bytes));
    }

    /// Makes the next `n` fdatasync calls fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.failing_syncs.set(n);
    }

    /// How many fdatasync calls were begun so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Makes compaction fail with EIO the `(skip + 1)`-th time it reaches `step`.
    pub fn fail_compaction_at(&self, step: CompactStep, skip: u32) {
        self.compaction_fails_at.set(Some((step, skip)));
    }

    pub fn clear(&self) {
        self.writes_left_bytes.set(None);
        self.failing_syncs.set(0);
        self.compaction_fails_at.set(None);
    }

    pub(crate) fn before_compact_step(&self, step: CompactStep) -> io::Result<()> {
        match self.compaction_fails_at.get() {
            Some((s, 0)) if s == step => {
                self.compaction_fails_at.set(None);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            Some((s, n)) if s == step => {
                self.compaction_fails_at.set(Some((s, n - 1)));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn before_write(&self, len: usize) -> io::Result<()> {
        match self.writes_left_bytes.get() {
            None => Ok(()),
            Some(left) if left >= len as u64 => {
                self.writes_left_bytes.set(Some(left - len as u64));
                Ok(())
            }
            Some(_) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    }

    pub(crate) fn before_sync(&self) -> io::Result<()> {
        self.syncs.set(self.syncs.get() + 1);
        let n = self.failing_syncs.get();
        if n == 0 {
            return Ok(());
        }
        self.failing_syncs.set(n - 1);
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}
