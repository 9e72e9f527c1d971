//! Process-wide memory settings that keep resident memory close to what is live.
//!
//! Transfers allocate and free part buffers of several MiB all the time, on many
//! threads. glibc's allocator, left to itself, raises its mmap threshold to the size of
//! the first such buffer freed, after which part buffers come from the per-thread heaps
//! (arenas), where freed memory can fragment and stay resident. With a fixed threshold,
//! every buffer of 256 KiB or more is its own mapping and goes back to the system when
//! freed. The cost is a fresh mapping (and its page faults) per part: microseconds per
//! MiB, next to milliseconds to send that MiB. (Issue 13 measured exports into S3 at
//! 2.7 times part size × (parts in flight + 1) per transfer; with this setting they
//! measured 1.4 times, see tests/s3_memory.rs: the rest is still to be found.)

/// Buffers at least this large are mapped on their own (fixed, so glibc does not move it).
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// One allocator heap per core, at least two.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arena_count() -> libc::c_int {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX)
}

/// Applies the settings; call once at the start of the process, before threads start.
/// A no-op where the C library is not glibc.
pub fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before other
        // threads exist. A refused setting (returns 0) leaves glibc's defaults.
        unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 0 {
                tracing::debug!("glibc refused the mmap threshold; keeping its default");
            }
            // Return freed memory at the top of a heap once 1 MiB is free there.
            libc::mallopt(libc::M_TRIM_THRESHOLD, (1024 * 1024) as libc::c_int);
            // One heap per core rather than glibc's eight: each heap keeps its own free
            // memory resident, and tokio's workers (one per core) and the blocking pool's
            // threads would otherwise spread the same allocations over more of them.
            libc::mallopt(libc::M_ARENA_MAX, arena_count());
        }
    }
}
