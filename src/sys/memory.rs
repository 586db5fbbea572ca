//! Giving freed heap memory back to the system.

use std::time::Duration;

/// How often the daemons give freed memory back.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Returns the heap's free memory to the system where the allocator can
/// (glibc's `malloc_trim`): after thousands of connections closed, glibc
/// keeps their memory in its arenas, and a router's RSS would stay at its
/// peak. A no-op elsewhere.
pub fn trim_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer, touches only the
    // allocator's own state under its locks, and is safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
