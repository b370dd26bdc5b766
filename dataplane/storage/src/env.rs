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

    pub fn clear(&self) {
        self.writes_left_bytes.set(None);
        self.failing_syncs.set(0);
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
