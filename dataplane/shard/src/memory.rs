//! A shard's heap: faulted in at start and kept, not grown page by page in
//! the request path.
//!
//! A shard's heap grows for its first minutes: the batch cache keeps the
//! produce requests' read buffers (zero-copy append), up to
//! `storage.batch_cache_bytes`. Every page of that growth is a page fault
//! taken by whichever request touches it first, about one every two or
//! three 1 KiB messages. A fault costs 1.3 us at p50 on the VM this was
//! measured on, but 50-250 us at p99-p99.9 (the host backs the page), and
//! those land in a request's latency (docs/benchmarks.md, "Page faults on
//! the produce path"). Seastar owns all of a shard's memory from the start
//! for the same reason; here glibc's malloc is told to keep what it frees
//! ([`keep_freed_memory`]) and each shard faults in its expected heap once,
//! before it serves ([`prefault_heap`]).

use std::time::{Duration, Instant};

/// Allocations at least this large are mmapped by malloc (and unmapped when
/// freed, so faulted in again on every use); below it they come from the
/// thread's arena. 32 MiB is the largest glibc allows on 64-bit.
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free memory at the top of an arena's heap beyond which malloc returns it
/// to the kernel: 1 GiB, so that a shard keeps the heap it used.
const TRIM_THRESHOLD_BYTES: i32 = 1 << 30;
/// The size of one prefault allocation (below the mmap threshold, so it is
/// carved from the shard's arena).
const PREFAULT_CHUNK_BYTES: usize = 1 << 20;
const PAGE_BYTES: usize = 4096;

/// Tells glibc's malloc to keep memory a thread frees for that thread's
/// later allocations: no trimming of a heap's free top (by default anything
/// over 128 KiB is returned with MADV_DONTNEED and faulted in again on the
/// next use) and a fixed mmap threshold of 32 MiB (setting the trim
/// threshold turns off glibc's adaptive one, which would leave every
/// allocation of 128 KiB or more to a fresh mmap). Process-wide; call it
/// once, before the shards start. Returns false if malloc refused.
pub fn keep_freed_memory() -> bool {
    // SAFETY: mallopt only sets allocator parameters; both values are in
    // the ranges glibc documents for them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    }
}

/// Allocates `bytes` on the calling thread's heap in 1 MiB pieces, writes one
/// byte to every page (calloc would not: fresh memory from the kernel is
/// known to be zero), then frees it all. With [`keep_freed_memory`] the pages
/// stay mapped in the thread's arena for its later allocations. Returns how
/// long it took. Note that glibc unmaps a secondary heap of an arena (64 MiB
/// each) once it is entirely free, so what is kept is at most about one
/// heap's worth per arena.
pub fn prefault_heap(bytes: usize) -> Duration {
    let started = Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(bytes.div_ceil(PREFAULT_CHUNK_BYTES));
    let mut left = bytes;
    while left > 0 {
        let len = left.min(PREFAULT_CHUNK_BYTES);
        let mut chunk: Vec<u8> = Vec::with_capacity(len);
        let base = chunk.spare_capacity_mut();
        for page in base.chunks_mut(PAGE_BYTES) {
            page[0].write(0);
        }
        // Keep the writes: nothing reads the chunk.
        std::hint::black_box(&mut chunk);
        held.push(chunk);
        left -= len;
    }
    drop(held);
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor faults of the calling thread (getrusage RUSAGE_THREAD).
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
            u.ru_minflt
        }
    }

    #[test]
    fn a_prefaulted_heap_serves_later_allocations_without_faults() {
        // Its own thread: a fresh arena, as a shard's executor thread has.
        std::thread::spawn(|| {
            assert!(keep_freed_memory());
            const BYTES: usize = 16 << 20;
            // Without the prefault, 16 MiB of 64 KiB buffers, kept and
            // written, fault in page by page.
            let cold = {
                let before = thread_minor_faults();
                let bufs: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
                std::hint::black_box(&bufs);
                let faults = thread_minor_faults() - before;
                drop(bufs);
                faults
            };
            // The same again reuses the freed (kept) memory.
            let warm = {
                let before = thread_minor_faults();
                let bufs: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
                std::hint::black_box(&bufs);
                thread_minor_faults() - before
            };
            assert!(cold >= (BYTES / PAGE_BYTES) as i64 / 2, "cold: {cold} faults");
            assert!(
                warm < cold / 10,
                "kept memory faulted again: {warm} against {cold}"
            );
            // And prefaulting the next 16 MiB makes the growth beyond it free
            // of faults too.
            prefault_heap(2 * BYTES);
            let before = thread_minor_faults();
            let bufs: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 << 10]).collect();
            std::hint::black_box(&bufs);
            let after_prefault = thread_minor_faults() - before;
            assert!(
                after_prefault < cold / 10,
                "allocations after prefault_heap faulted {after_prefault} times (cold: {cold})"
            );
        })
        .join()
        .expect("the test thread panicked");
    }
}
