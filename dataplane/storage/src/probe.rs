//! Makes glommio's I/O-poll detection see the truth.
//!
//! glommio 0.9 decides, once per block device and thread, whether O_DIRECT
//! reads may go to its IOPOLL ring, by issuing a read on the first DMA file
//! opened on that device. If that file is empty the read ends at EOF without
//! reaching the device, "succeeds", and the device is marked pollable; on a
//! device without poll queues (virtio, most cloud disks) every later read then
//! fails with EOPNOTSUPP. Opening a non-empty probe file first makes the probe
//! read hit the device. Call `probe_direct_io` before the first DMA open in a
//! directory's file system; `Log::open` does.

use crate::error::{Result, StorageError};
use glommio::io::DmaFile;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

const PROBE_FILE: &str = ".ferrolog-direct-io-probe";

thread_local! {
    // glommio keeps its per-device answer per thread (one executor each), so
    // the probe runs once per device on every executor thread.
    static PROBED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
    // One probe at a time per thread: logs open many at a time, and two
    // probes of one directory would share its probe file, one truncating
    // it while glommio's detection reads it through the other.
    static PROBING: Rc<Semaphore> = Rc::new(Semaphore::new(1));
}

/// Checks that `dir` supports O_DIRECT and settles glommio's poll detection
/// for its device. Cheap after the first call per device on this thread.
pub async fn probe_direct_io(dir: &Path) -> Result<()> {
    let owned = dir.to_path_buf();
    let dev = crate::log::off_reactor(move || create_dir_and_device(&owned)).await?;
    probe_device(dir, dev).await
}

/// Creates `dir` if missing and returns the device its file system is on
/// (blocking: for the blocking pool).
pub(crate) fn create_dir_and_device(dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
    std::fs::metadata(dir)
        .map_err(|e| StorageError::io("stat", dir, e))
        .map(|m| m.dev())
}

/// `probe_direct_io` for a directory that exists on device `dev`.
pub(crate) async fn probe_device(dir: &Path, dev: u64) -> Result<()> {
    if PROBED.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probing = PROBING.with(Rc::clone);
    let _one_at_a_time = probing.acquire_permit(1).await;
    if PROBED.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    // A name of this thread's own: the shards of a node probe at the same
    // time, often in the same directory (the data directory, for new logs),
    // and one removing its probe file must not pull it from under another.
    let path = dir.join(format!("{PROBE_FILE}.{}", thread_id()));
    std::fs::write(&path, vec![0u8; 4096]).map_err(|e| StorageError::io("write", &path, e))?;
    let opened = DmaFile::open(&path).await;
    let result = match opened {
        Ok(file) => {
            let read = file.read_at(0, 4096).await.map(|r| r.len());
            let _ = file.close().await;
            match read {
                Ok(4096) => Ok(()),
                Ok(n) => Err(StorageError::io(
                    "direct read",
                    &path,
                    std::io::Error::other(format!("read {n} of 4096 bytes")),
                )),
                Err(e) => Err(StorageError::io(
                    "direct read",
                    &path,
                    crate::error::glommio_io(e),
                )),
            }
        }
        Err(e) => Err(StorageError::io(
            "open with O_DIRECT",
            &path,
            crate::error::glommio_io(e),
        )),
    };
    let _ = std::fs::remove_file(&path);
    result?;
    PROBED.with(|p| p.borrow_mut().insert(dev));
    Ok(())
}

/// The calling thread's kernel id.
fn thread_id() -> u64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u64 }
}
