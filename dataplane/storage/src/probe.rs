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
use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const PROBE_FILE: &str = ".ferrolog-direct-io-probe";

thread_local! {
    // glommio keeps its per-device answer per thread (one executor each), so
    // the probe runs once per device on every executor thread.
    static PROBED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
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
    let path = dir.join(PROBE_FILE);
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
