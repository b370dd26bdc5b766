//! The log start offset that DeleteRecords set: a floor below which the log
//! serves nothing, kept in one small file of the log's directory so it
//! survives restarts. Segments wholly below it are deleted; the one it falls
//! into stays until retention removes it, its batches below the floor no
//! longer readable.
//!
//! Written like the other small files of the broker: a temporary file,
//! fsync, rename, directory fsync. Runs on the blocking pool.

use crate::error::{Result, StorageError};
use ferrolog_model::Offset;
use std::io::Write;
use std::path::Path;

/// The file, in the log's directory. Absent: no floor (the first segment's
/// base is the start).
pub const START_OFFSET_FILE: &str = "log_start_offset";

/// The recorded floor, if any. A file that does not parse is an error: the
/// log must not silently serve records that were deleted.
pub(crate) fn load(dir: &Path) -> Result<Option<Offset>> {
    let path = dir.join(START_OFFSET_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    match text.trim().parse::<i64>() {
        Ok(v) if v >= 0 => Ok(Some(Offset(v))),
        _ => Err(StorageError::io(
            "parse",
            &path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a log start offset: {:?}", text.trim()),
            ),
        )),
    }
}

/// Records `offset` durably.
pub(crate) fn store(dir: &Path, offset: Offset) -> Result<()> {
    let path = dir.join(START_OFFSET_FILE);
    let tmp = dir.join(format!("{START_OFFSET_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", offset.0)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| StorageError::io("write", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("absent"), None);
        store(dir.path(), Offset(42)).expect("store");
        assert_eq!(load(dir.path()).expect("load"), Some(Offset(42)));
        store(dir.path(), Offset(43)).expect("store again");
        assert_eq!(load(dir.path()).expect("load"), Some(Offset(43)));
        for bad in ["", "-1", "x"] {
            std::fs::write(dir.path().join(START_OFFSET_FILE), bad).expect("write");
            assert!(load(dir.path()).is_err(), "{bad:?}");
        }
    }
}
