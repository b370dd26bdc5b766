//! The segmented log of one partition, on glommio DMA files (O_DIRECT through
//! io_uring). It knows nothing of Kafka requests or of replication.
//!
//! Ownership: every `Log` and the `LogContext` (batch cache, clock, fault
//! seams) it shares with the other logs of a shard live on that shard's
//! executor and are used through `Rc`; nothing here is `Send`.
//!
//! Trade-offs, in the glommio tradition of saying why:
//! - Direct I/O, not buffered: the write path never touches the page cache, so
//!   latency does not depend on writeback, and memory is ours to bound (the
//!   batch cache). The price is alignment: writes go out in whole 4 KiB blocks
//!   and the partial last block is rewritten in place by the next flush.
//! - Group commit: a flush writes everything queued, so concurrent appends
//!   share one write and one fdatasync.
//! - Recovery trusts only what validates: indexes carry a CRC and are rebuilt
//!   when anything disagrees; batches are checked for length, magic, CRC and
//!   offset continuity; a torn tail of the active segment is cut off.

mod cache;
pub mod codec;
mod config;
mod env;
mod error;
mod index;
pub mod inspect;
mod log;
mod probe;
mod segment;
mod start_offset;

pub use cache::{BatchCache, LogId};
pub use config::{CompactionConfig, Durability, LogConfig};
pub use env::{Clock, CompactStep, Faults, ManualClock, SystemClock};
pub use error::{Result, StorageError};
pub use index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
pub use log::{
    Appended, CompactionOutcome, FlushDone, Log, LogContext, LogOffsets, ReadOutcome, ReadRequest,
    RecoveryReport, RetentionOutcome, SealedFilesStats, Truncation, SEALED_FILES_DEFAULT,
};
pub use probe::probe_direct_io;
pub use segment::{index_path, log_file_name, parse_log_file_name, time_index_path};
pub use start_offset::START_OFFSET_FILE;
