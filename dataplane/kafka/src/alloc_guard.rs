//! A global allocator that keeps hostile length prefixes from aborting the
//! process.
//!
//! kafka-protocol 0.18 sizes a decoded array with `Vec::with_capacity(n)`
//! where `n` is the count read off the wire (upstream PRs #152, #161 and #200
//! are open). Eight bytes claiming `i32::MAX` elements then ask for hundreds
//! of GiB before the decoder notices the frame is short; the system
//! allocator refuses and Rust aborts. This allocator serves every allocation
//! of `HUGE_BYTES` or more with an `mmap(MAP_NORESERVE)` mapping instead:
//! with the kernel's default heuristic overcommit (mode 0) such a mapping is
//! not charged, so the reservation succeeds, is never touched, and is
//! unmapped when the decoder returns its error. Legitimate allocations that
//! large (none on the broker's paths) behave exactly as before, page faults
//! included. Under strict overcommit (mode 2) the guard does not help; see
//! docs/operations.md.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large bypass malloc.
pub const HUGE_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

pub struct GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: huge blocks come from mmap (page-aligned, which covers every
// alignment `is_huge` admits) and go back through munmap with the same size;
// everything else is the system allocator's.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: see the impl comment.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see the impl comment.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from `map(layout.size())`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, free the old block; each
        // call follows its own contract.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
