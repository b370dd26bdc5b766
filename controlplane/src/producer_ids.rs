//! The producer id file of a single-node data directory from before the Raft
//! controller: when such a directory becomes a cluster's first snapshot, its
//! `next_unused` id is where the cluster's producer-id blocks start (the
//! cluster hands out ids through the Raft group since, `state.rs`). The
//! allocator below is what wrote the file.
//!
//! Ids come from blocks of [`BLOCK_IDS`]. Before the first id of a block is
//! handed out, the start of the *next* block is made durable in
//! `<data dir>/producer_ids` (written to a temporary file, fsynced, renamed
//! over the old one, directory fsynced), so a restart, even after kill -9,
//! continues past every id it may have given out. A crash skips the rest of
//! the current block; ids are 64-bit, so the waste does not matter.
//!
//! The allocator lives in the controller, on the control executor (never a
//! data shard); shards reach it with a cross-shard call. Allocating is
//! synchronous (the fsyncs block the control executor for a few
//! milliseconds once per block), so two requests can never take the same id.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Ids per block, i.e. per durable write.
pub const BLOCK_IDS: i64 = 1000;
/// The file that holds the start of the next block, in the data directory.
pub const FILE_NAME: &str = "producer_ids";

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    #[error("{} does not hold a producer id block start ({text:?}); refusing to guess", path.display())]
    Unreadable { path: PathBuf, text: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("producer ids are exhausted")]
    Exhausted,
}

/// Hands out producer ids; see the module doc.
#[derive(Debug)]
pub struct ProducerIdAllocator {
    data_dir: PathBuf,
    next: i64,
    /// First id past the current block; durable in the file.
    block_end: i64,
}

impl ProducerIdAllocator {
    /// Reads the allocator's state from `data_dir`. No file means no id was
    /// ever handed out. A file that does not parse is an error: guessing
    /// could hand out ids twice.
    pub fn open(data_dir: &Path) -> Result<ProducerIdAllocator, ProducerIdError> {
        let path = data_dir.join(FILE_NAME);
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Some(next) => next,
                None => return Err(ProducerIdError::Unreadable { path, text }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(ProducerIdError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        Ok(ProducerIdAllocator {
            data_dir: data_dir.to_path_buf(),
            next,
            block_end: next,
        })
    }

    /// The first id this directory never handed out (where a cluster-wide
    /// allocation must start when this directory becomes a cluster's).
    pub fn next_unused(&self) -> i64 {
        self.block_end
    }

    /// The next id. Fails (and hands out nothing) if the next block cannot
    /// be made durable.
    pub fn allocate(&mut self) -> Result<i64, ProducerIdError> {
        if self.next == self.block_end {
            let end = self
                .block_end
                .checked_add(BLOCK_IDS)
                .ok_or(ProducerIdError::Exhausted)?;
            store(&self.data_dir, end).map_err(|source| ProducerIdError::Io {
                op: "store the producer id block in",
                path: self.data_dir.clone(),
                source,
            })?;
            self.block_end = end;
        }
        let id = self.next;
        self.next += 1;
        assert!(self.next <= self.block_end, "producer id past its durable block");
        Ok(id)
    }
}

fn parse(text: &str) -> Option<i64> {
    let v: i64 = text.strip_suffix('\n')?.parse().ok()?;
    (v >= 0).then_some(v)
}

/// Replaces the file durably: temporary file, fsync, rename, directory fsync
/// (the pattern `TopicTable::store` uses for `topics.toml`).
fn store(data_dir: &Path, next_block_start: i64) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{next_block_start}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, data_dir.join(FILE_NAME))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..3 {
            let mut a = ProducerIdAllocator::open(dir.path()).expect("open");
            // Round 1 crosses a block boundary.
            let n = if round == 1 { BLOCK_IDS + 5 } else { 3 };
            for _ in 0..n {
                let id = a.allocate().expect("allocate");
                assert!(id >= 0);
                assert!(seen.insert(id), "id {id} handed out twice");
            }
            // Dropped without any shutdown step, like a kill -9.
        }
        let stored = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("file");
        assert_eq!(stored, format!("{}\n", 4 * BLOCK_IDS));
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "12", "-5\n", "x\n"] {
            std::fs::write(dir.path().join(FILE_NAME), bad).expect("write");
            assert!(ProducerIdAllocator::open(dir.path()).is_err(), "{bad:?}");
        }
    }
}
