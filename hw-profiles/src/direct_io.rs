//! Direct I/O (O_DIRECT) support of a data directory's file system, and the aligned buffers
//! O_DIRECT needs.
//!
//! The storage engine writes every log with O_DIRECT through glommio's DMA files. A file system
//! without it fails deep inside the first partition open; [`check_direct_io`] finds out at start
//! (and in `ferrolog tune`) and says which directory is the problem. Everything here is blocking
//! std I/O for the main thread, before any shard runs.

use std::alloc::{self, Layout};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::ProfileError;

/// Alignment of O_DIRECT buffers, offsets and lengths: the largest common logical block size.
pub const DIRECT_IO_ALIGN_BYTES: usize = 4096;

/// `statfs` magic number of tmpfs (linux/magic.h; the libc crate does not export it).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A zeroed heap buffer aligned to [`DIRECT_IO_ALIGN_BYTES`], as O_DIRECT requires.
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes. Panics if `len` is zero or not a multiple of
    /// [`DIRECT_IO_ALIGN_BYTES`] (a programmer error), or if the allocation fails.
    pub fn new(len: usize) -> Self {
        assert!(
            len > 0 && len % DIRECT_IO_ALIGN_BYTES == 0,
            "an O_DIRECT buffer must be a non-zero multiple of {DIRECT_IO_ALIGN_BYTES} bytes, not {len}"
        );
        let layout = Layout::from_size_align(len, DIRECT_IO_ALIGN_BYTES)
            .expect("a multiple of the alignment below isize::MAX is a valid layout");
        // SAFETY: the layout has a non-zero size (asserted above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, layout }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in new() with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Checks that the file system of `dir` supports O_DIRECT: creates `dir` if needed, writes one
/// aligned 4 KiB block with O_DIRECT to a scratch file in it, and removes the file.
///
/// tmpfs is refused even where it accepts O_DIRECT (Linux 6.6 and later): there the flag is
/// served from the page cache, so the log's durability and latency would not be what the
/// profile says. Other file systems without O_DIRECT fail the open or the write with EINVAL.
pub fn check_direct_io(dir: &Path) -> Result<(), ProfileError> {
    let check_failed = |source: io::Error| ProfileError::DirectIoCheck {
        dir: dir.to_path_buf(),
        source,
    };
    let unsupported = |hint: &str| ProfileError::NoDirectIo {
        dir: dir.to_path_buf(),
        hint: hint.to_owned(),
    };
    std::fs::create_dir_all(dir).map_err(check_failed)?;
    if is_tmpfs(dir).map_err(check_failed)? {
        return Err(unsupported(
            "tmpfs: its O_DIRECT, where accepted, goes through the page cache",
        ));
    }

    let path = dir.join(format!(".ferrolog-direct-io-check-{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|file| {
            let block = AlignedBuffer::new(DIRECT_IO_ALIGN_BYTES);
            file.write_all_at(block.as_slice(), 0)
        });
    // Some file systems create the file before refusing O_DIRECT, so remove it either way.
    let removed = match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    match written {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Err(unsupported("tmpfs?")),
        Err(e) => return Err(check_failed(e)),
        Ok(()) => {}
    }
    removed.map_err(check_failed)
}

fn is_tmpfs(dir: &Path) -> io::Result<bool> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat is a valid, writable statfs.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // f_type is i64 on x86_64 but narrower elsewhere.
    let f_type = i64::from(stat.f_type);
    Ok(f_type == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer_is_aligned_zeroed_and_writable() {
        let mut buffer = AlignedBuffer::new(2 * DIRECT_IO_ALIGN_BYTES);
        assert_eq!(buffer.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN_BYTES, 0);
        assert!(buffer.as_slice().iter().all(|&b| b == 0));
        buffer.as_mut_slice()[8191] = 7;
        assert_eq!(buffer.as_slice()[8191], 7);
    }

    #[test]
    #[should_panic(expected = "non-zero multiple")]
    fn unaligned_length_is_a_programmer_error() {
        let _ = AlignedBuffer::new(100);
    }

    #[test]
    fn a_real_disk_directory_supports_direct_io_and_is_left_clean() {
        // The target directory is on the build's disk, never tmpfs.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&base).expect("target/tmp");
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let data = dir.path().join("data");
        check_direct_io(&data).expect("O_DIRECT on the build disk");
        assert!(data.is_dir(), "the directory is created");
        assert_eq!(std::fs::read_dir(&data).expect("read_dir").count(), 0);
    }

    #[test]
    fn tmpfs_is_refused_naming_the_directory() {
        let shm = Path::new("/dev/shm");
        if !is_tmpfs(shm).unwrap_or(false) {
            return; // No tmpfs at /dev/shm on this machine: nothing to check.
        }
        let dir = tempfile::tempdir_in(shm).expect("tempdir");
        let err = check_direct_io(dir.path()).expect_err("tmpfs");
        assert!(matches!(err, ProfileError::NoDirectIo { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "file system of {} does not support O_DIRECT",
                dir.path().display()
            )),
            "{message}"
        );
    }
}
