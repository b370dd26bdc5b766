//! A real full file system: a small ext4 image mounted on a loop device (the
//! tests run as root). Appends fail with a typed ENOSPC error, nothing
//! acknowledged is lost, the log stays readable, and appends resume once space
//! is freed.

mod common;

use common::*;
use ferrolog_model::Offset;
use ferrolog_storage::{Durability, LogConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted ext4 image, unmounted and removed on drop.
struct SmallFs {
    root: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        let root = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let img = root.path().join("fs.img");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image");
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)),
            "mkfs.ext4 failed (e2fsprogs is required)"
        );
        assert!(
            ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt)),
            "mounting a loop device failed (the tests run as root)"
        );
        SmallFs { root, mnt }
    }

    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for SmallFs {
    /// Unmounts before the temporary directory is removed. The logs' segment files are still
    /// open here: `Log::close` syncs but leaves the descriptor to the file's drop, which glommio
    /// turns into a close queued on the executor's ring, and the executor has ended. So the
    /// mount is busy until the process exits, and a plain unmount fails; the lazy one detaches
    /// it now and the kernel releases it, and its loop device, when the last file closes.
    /// Before, every run left two mounted images and two loop devices behind.
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("cannot unmount {}", self.mnt.display());
        }
        let _ = &self.root;
    }
}

#[test]
fn full_disk_gives_typed_error_keeps_acknowledged_data_and_recovers() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let fs = SmallFs::new(16);
        let dir = fs.path().join("orders-0");
        let ballast = fs.path().join("ballast");
        let config = LogConfig {
            segment_bytes: 4 << 20,
            ..small_config(durability)
        };
        let (d, b, c) = (dir.clone(), ballast.clone(), config.clone());
        let acked = run(|| async move {
            let log = open(&d, c).await;
            // Leave ~2 MiB free, then append 64 KiB batches until the disk is full.
            let free = {
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                // The file system's root: a new log's directory is made by its first write.
                let root = d.parent().expect("a parent");
                let p = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).expect("path");
                // SAFETY: statvfs fills the struct we pass for a NUL-terminated path.
                assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
                st.f_bavail * st.f_frsize
            };
            std::fs::write(&b, vec![1u8; (free - (2 << 20)) as usize]).expect("ballast");
            let mut acked = Vec::new();
            let err = loop {
                match log.append(batch(16, 4000, acked.len() as i64)).await {
                    Ok(a) => acked.push(a),
                    Err(e) => break e,
                }
                assert!(acked.len() < 1000, "the disk never filled up");
            };
            assert!(err.is_no_space(), "expected a typed ENOSPC error, got: {err}");
            assert!(!acked.is_empty());
            let end = acked.last().expect("acked").last_offset.plus(1);
            assert_eq!(log.offsets().durable_next, end, "the failed append moved offsets");
            assert_eq!(log.offsets().dirty_next, end);
            // Everything acknowledged is still served, from disk and cache alike.
            let all = read_all(&log, Offset(0)).await;
            assert_eq!(all.len(), acked.len());
            // Still full: fails again, cleanly.
            assert!(log.append(batch(16, 4000, 0)).await.is_err());
            // Free space: appends resume at the next offset.
            std::fs::remove_file(&b).expect("free space");
            let a = log
                .append(batch(16, 4000, 0))
                .await
                .expect("append after freeing space");
            assert_eq!(a.base_offset, end);
            acked.push(a);
            log.close().await.expect("close");
            acked
        });
        let c = config.clone();
        run(|| async move {
            let log = open(&dir, c).await;
            let end = acked.last().expect("acked").last_offset.plus(1);
            assert_eq!(log.offsets().durable_next, end);
            assert_eq!(read_all(&log, Offset(0)).await.len(), acked.len());
            log.close().await.expect("close");
        });
    }
}
