//! The node's claim on its data directory: an exclusive lock (two brokers on
//! one directory would corrupt it) and the node id recorded at first start
//! (restarting with another id is an operator error, caught here).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".lock";
const META_FILE: &str = "node.meta";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory {} is in use by another ferrolog process", .0.display())]
    Locked(PathBuf),
    #[error("data directory {} belongs to node {found}, not node {wanted}", dir.display())]
    WrongNode { dir: PathBuf, found: i32, wanted: i32 },
    #[error("{}: cannot parse node id from {text:?}", path.display())]
    BadMeta { path: PathBuf, text: String },
}

/// Held for the life of the process; the lock is released when it drops.
pub struct DataDirClaim {
    _lock: File,
    cluster_id: String,
}

impl DataDirClaim {
    /// The cluster id recorded at first start (Kafka's 22-character
    /// base64url form of a random UUID).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }
}

fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let id = ferrolog_kafka::topics::new_topic_id();
    // 128 bits in 22 six-bit digits, most significant first (the last digit carries 2 bits).
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let digit = if shift >= 0 {
                (id >> shift) & 63
            } else {
                (id << -shift) & 63
            };
            ALPHABET[digit as usize] as char
        })
        .collect()
}

/// Writes `node.meta` atomically and durably.
fn write_meta(dir: &Path, node_id: i32, cluster_id: &str) -> Result<(), NodeError> {
    let meta = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    std::fs::write(&tmp, format!("node_id={node_id}\ncluster_id={cluster_id}\n")).map_err(io_err(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &meta).map_err(io_err(&meta))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn claim(dir: &Path, node_id: i32) -> Result<DataDirClaim, NodeError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(NodeError::Locked(dir.to_path_buf()));
        }
        return Err(NodeError::Io {
            path: lock_path,
            source: e,
        });
    }
    let meta = dir.join(META_FILE);
    let cluster_id = match std::fs::read_to_string(&meta) {
        Ok(text) => {
            let found = text
                .lines()
                .find_map(|l| l.strip_prefix("node_id="))
                .and_then(|v| v.trim().parse::<i32>().ok())
                .ok_or_else(|| NodeError::BadMeta {
                    path: meta.clone(),
                    text: text.clone(),
                })?;
            if found != node_id {
                return Err(NodeError::WrongNode {
                    dir: dir.to_path_buf(),
                    found,
                    wanted: node_id,
                });
            }
            match text.lines().find_map(|l| l.strip_prefix("cluster_id=")) {
                Some(id) if !id.trim().is_empty() => id.trim().to_string(),
                // Written before cluster ids were recorded.
                _ => {
                    let id = new_cluster_id();
                    write_meta(dir, node_id, &id)?;
                    id
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = new_cluster_id();
            write_meta(dir, node_id, &id)?;
            id
        }
        Err(e) => {
            return Err(NodeError::Io {
                path: meta,
                source: e,
            })
        }
    };
    Ok(DataDirClaim {
        _lock: lock,
        cluster_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_refused_and_node_id_is_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = claim(dir.path(), 3).expect("claim");
        assert!(matches!(claim(dir.path(), 3), Err(NodeError::Locked(_))));
        drop(first);
        assert!(matches!(
            claim(dir.path(), 4),
            Err(NodeError::WrongNode {
                found: 3,
                wanted: 4,
                ..
            })
        ));
        claim(dir.path(), 3).expect("same node id again");
    }
}
