//! Process-wide allocator settings for CPU inference.
//!
//! A BLIP-large encoder pass on the CPU allocates and frees buffers of 2 to 21 MB per operation.
//! glibc serves blocks above its mmap threshold (dynamic, 128 KiB to 32 MiB) with a fresh
//! `mmap` and returns them with `munmap`, and it trims freed memory at the top of its heaps.
//! The kernel then faults in and zeroes every such buffer page by page on its next use. On a
//! 2-core EPYC VM that kernel time was 13 of 85 CPU seconds of an 8-image encode
//! (`generate_tokens --mode encoder`).
//!
//! Threads other than the main one get their own arenas, made of 64 MiB heaps that glibc unmaps
//! as soon as one is empty, whatever the trim threshold. `capfilt run` runs the model on its own
//! thread, where that churn made the model 13 % slower in one benchmark round than on the main
//! thread, so every thread shares the main arena. Small allocations still come from per-thread caches (tcache)
//! without taking the arena's lock.

/// Largest block glibc serves from its heap after [`tune_for_inference`]: 32 MiB, the largest
/// mmap threshold glibc accepts (half the 64 MiB heaps of its secondary arenas).
pub const HEAP_BLOCK_LIMIT: usize = 32 << 20;

/// Free memory glibc keeps at the top of a heap before returning it to the kernel.
const TRIM_THRESHOLD: usize = 256 << 20;

/// Keeps blocks up to [`HEAP_BLOCK_LIMIT`] in glibc's heap, lets it keep up to 256 MiB of freed
/// memory and gives every thread the main arena, so that buffers are recycled instead of being
/// unmapped and faulted in again. Call it once at start-up, before other threads allocate.
/// Returns whether the settings took effect. Other C libraries keep their defaults, and it then
/// returns false.
pub fn tune_for_inference() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; it is called before the
        // process starts other threads.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT as libc::c_int) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) };
        let arenas = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        mmap == 1 && trim == 1 && arenas == 1
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
