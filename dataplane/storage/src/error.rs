//! Operating errors of the storage layer. Programmer errors panic instead.

use ferrolog_model::{BatchError, Offset};
use std::io;
use std::path::PathBuf;
use thiserror::Error;

pub type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Error)]
pub enum StorageError {
    /// The batch offered to `append` is not a valid RecordBatch v2. The log is unchanged.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),

    /// The batch is larger than the log accepts. The log is unchanged.
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    /// A read below the log start or above the log end.
    #[error("offset {requested} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        requested: Offset,
        start: Offset,
        end: Offset,
    },

    /// Bytes on disk failed validation (CRC, magic, length). They are never served.
    #[error("corrupt data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    /// An I/O operation failed (ENOSPC, EIO, ...). The log stays consistent:
    /// appends that were not yet durable are rolled back, reads keep working.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The append was discarded because an earlier flush that covered it failed.
    #[error("append rolled back: the flush covering it failed ({0})")]
    FlushFailed(String),

    /// A truncation point that is not a batch boundary inside the log.
    #[error("cannot truncate to offset {0}: not a batch boundary in the log")]
    BadTruncation(Offset),

    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for errors that mean the disk is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC) || source.kind() == io::ErrorKind::StorageFull)
    }
}

/// The `io::Error` inside a glommio error, keeping the OS error code (glommio's
/// own conversion keeps only the kind, which would hide ENOSPC). Operation and
/// path travel in `StorageError::Io` instead.
pub(crate) fn glommio_io(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        glommio::GlommioError::IoError(source) => source,
        other => other.into(),
    }
}
