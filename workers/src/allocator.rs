//! Process-wide allocator settings for CPU inference.
//!
//! A BLIP-large encoder pass on the CPU allocates and frees buffers of 2 to 21 MB per operation.
//! glibc serves blocks above its mmap threshold (dynamic, 128 KiB to 32 MiB) with a fresh
//! `mmap` and returns them with `munmap`, and it trims freed memory at the top of its heaps.
//! The kernel then faults in and zeroes every such buffer page by page on its next use. On a
//! 2-core EPYC VM that kernel time was 13 of 85 CPU seconds of an 8-image encode
//! (`generate_tokens --mode encoder`).

/// Largest block glibc serves from its heaps after [`tune_for_inference`]: 32 MiB, the maximum
/// glibc accepts for threads other than the main one (half its 64 MiB per-thread heap).
pub const HEAP_BLOCK_LIMIT: usize = 32 << 20;

/// Free memory glibc keeps at the top of a heap before returning it to the kernel.
const TRIM_THRESHOLD: usize = 256 << 20;

/// Keeps blocks up to [`HEAP_BLOCK_LIMIT`] in glibc's heaps and lets each heap keep up to
/// 256 MiB of freed memory, so that buffers are recycled instead of being unmapped and faulted
/// in again. Call it once at start-up, before other threads allocate. Returns whether the
/// settings took effect; other C libraries keep their defaults and it returns false.
pub fn tune_for_inference() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; it is called before the
        // process starts other threads.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT as libc::c_int) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_settings() {
        assert!(tune_for_inference());
    }
}
